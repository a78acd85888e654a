//! `tg-demo`, run by `cargo xtask demo`: the lab, tcp-guard attached to the server's veth, a
//! client connecting a few times a second; midway a spoofed SYN flood and
//! one noisy source start, attack mode engages, the noisy source is blocked,
//! the client keeps connecting; the flood stops and attack mode ends. The
//! figures are shown every second; everything is removed at exit.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use tcp_guard_tests::{
    daemon::{Daemon, counter, stats_json, tcp_guard},
    flood::{FloodSpec, Sources, flood},
    inject::Injector,
    lab::{Lab, listen},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

const PORT: u16 = 8080;

/// The demo's settings: small enough to see every mechanism act in seconds.
const SETTINGS: &[&str] = &[
    "--set",
    "limits.global_half_open=32",
    "--set",
    "limits.syn_rate=20",
    "--set",
    "limits.syn_burst=20",
    "--set",
    "attack.enter_half_open=8",
    "--set",
    "attack.leave_half_open=4",
    "--set",
    "attack.cooldown=3s",
    "--set",
    "blocking.block_after_drops=50",
    "--set",
    "blocking.block_ttl=20s",
    "--set",
    "timeouts.syn_rcvd=4s",
];

#[derive(Parser)]
#[command(about = "tcp-guard on a built-in two-namespace lab, under a spoofed SYN flood and a noisy source")]
struct Args {
    /// How long to run; Ctrl-C ends it early. Everything is removed at exit.
    #[arg(long, default_value_t = 25)]
    seconds: u64,
}

fn main() {
    if let Err(e) = demo(Args::parse().seconds) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn demo(seconds: u64) -> Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t) };

    let lab = Lab::new()?;
    // As a server without SYN cookies and with a short backlog: a flood hurts.
    lab.server.sysctl("net.ipv4.tcp_syncookies", "0")?;
    lab.server.sysctl("net.ipv4.tcp_synack_retries", "1")?;
    println!(
        "lab: server namespace {} ({}, {}) <-veth-> client namespace {} ({})",
        lab.server.name(),
        lab.server_iface,
        lab.server_addr(false),
        lab.client.name(),
        lab.client_addr(false)
    );
    let daemon = Daemon::start(&lab.server, &lab.server_iface, SETTINGS)?;
    println!("tcp-guard: {}", daemon.log().lines().last().unwrap_or_default());

    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let listener = listen(&lab.server, addr, 64)?;
    let accepting = Arc::new(AtomicBool::new(true));
    let server = spawn_server(listener, accepting.clone())?;
    let flood_from = Duration::from_secs(seconds / 5);
    let flood_until = Duration::from_secs(seconds * 3 / 5);
    println!(
        "server listens on {addr} (backlog 64, SYN cookies off); a client connects 5 times a second;\n\
         from {}s to {}s a spoofed SYN flood (20k SYN/s, random sources in 198.19.0.0/16) and a\n\
         noisy source (198.18.99.99, 2k SYN/s) hit it.\n",
        flood_from.as_secs(),
        flood_until.as_secs()
    );
    println!(
        "{:>4} {:>9} {:>9} {:>8} {:>9} {:>10} {:>7} {:>8}",
        "secs", "connects", "SYN/s", "dropped", "half-open", "attack", "blocked", "flood"
    );

    let ok = Arc::new(AtomicU64::new(0));
    let tried = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let flood_stop = Arc::new(AtomicBool::new(false));
    let mut last = stats_json(&lab.server_iface);
    let mut next_report = Duration::from_secs(1);
    std::thread::scope(|scope| -> Result<()> {
        let mut floods = Vec::new();
        let client = scope.spawn(|| {
            while !STOP.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(seconds) {
                let connected = lab
                    .client
                    .enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok())
                    .unwrap_or(false);
                tried.fetch_add(1, Ordering::Relaxed);
                ok.fetch_add(u64::from(connected), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        while !STOP.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(seconds) {
            let elapsed = start.elapsed();
            if floods.is_empty() && elapsed >= flood_from {
                let length = flood_until.saturating_sub(flood_from).max(Duration::from_secs(1));
                for (sources, rate) in [
                    (
                        Sources::Random {
                            network: "198.19.0.0".parse()?,
                            prefix_len: 16,
                        },
                        20_000,
                    ),
                    (Sources::Fixed("198.18.99.99".parse::<IpAddr>()?), 2_000),
                ] {
                    let injector = Injector::open(&lab.client, &lab.client_iface)?;
                    let spec = FloodSpec {
                        dst: addr.ip(),
                        dst_port: PORT,
                        dst_mac: Lab::mac(&lab.server, &lab.server_iface)?,
                        sources,
                        rate,
                        count: rate * length.as_secs(),
                        duration: length,
                    };
                    let stop = flood_stop.clone();
                    floods.push(scope.spawn(move || flood(&injector, &spec, &stop)));
                }
            }
            if elapsed >= next_report {
                let now = stats_json(&lab.server_iface);
                let delta = |name: &str| counter(&now, name) - counter(&last, name);
                let dropped: u64 = now["counters"]
                    .as_object()
                    .context("counters")?
                    .keys()
                    .filter(|k| k.starts_with("drop_"))
                    .map(|k| delta(k))
                    .sum();
                let blocked = tcp_guard(&["block", "list", "--iface", &lab.server_iface, "--json"]);
                let blocked: serde_json::Value = serde_json::from_slice(&blocked.stdout)?;
                let flooding = !floods.is_empty() && elapsed < flood_until;
                println!(
                    "{:>4} {:>4}/{:<4} {:>9} {:>8} {:>9} {:>10} {:>7} {:>8}",
                    next_report.as_secs(),
                    ok.load(Ordering::Relaxed),
                    tried.load(Ordering::Relaxed),
                    delta("syn"),
                    dropped,
                    format!("{}/{}", now["half_open"]["count"], now["half_open"]["limit"]),
                    if now["attack"]["active"] == true {
                        "ON"
                    } else {
                        "off"
                    },
                    blocked["blocked"].as_array().map_or(0, Vec::len),
                    if flooding { "flooding" } else { "" }
                );
                last = now;
                next_report += Duration::from_secs(1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        flood_stop.store(true, Ordering::Relaxed);
        for f in floods.drain(..) {
            f.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        }
        client
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        Ok(())
    })?;
    accepting.store(false, Ordering::Relaxed);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?;

    println!(
        "\n{} of {} client connects succeeded. The daemon's events:",
        ok.load(Ordering::Relaxed),
        tried.load(Ordering::Relaxed)
    );
    for line in daemon.log().lines().filter(|l| l.contains("event=")) {
        println!("  {line}");
    }
    println!("\nBlock list:");
    print!(
        "{}",
        String::from_utf8_lossy(&tcp_guard(&["block", "list", "--iface", &lab.server_iface]).stdout)
    );
    let status = daemon.stop()?;
    println!("\ntcp-guard stopped ({status}); removing the lab");
    drop(lab);
    println!("done: namespaces, veth, programs and pins removed");
    Ok(())
}

fn spawn_server(listener: TcpListener, accepting: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        while accepting.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => drop(conn),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }))
}
