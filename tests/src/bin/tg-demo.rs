//! `tg-demo`, run by `cargo xtask demo`: the lab, tcp-guard attached to the
//! server's veth with its default protection, on the kernel settings nearly
//! every host has (`tcp_syncookies=1`, `tcp_timestamps=1`), a client
//! connecting a few times a second. At a fifth of the run a noisy source
//! starts and is blocked; three seconds later a spoofed SYN flood starts,
//! attack mode engages and the flood's SYNs are answered with cookies from
//! XDP, the client keeps connecting; the flood stops and attack mode ends.
//! The figures are shown every second; at the end the demo checks that each
//! of those things happened (exit 1 if not), and removes everything.
//!
//! The noisy source comes first and may hold only 4 half-open connections,
//! fewer than attack mode's threshold (8): in attack mode its SYNs would be
//! answered with cookies like the flood's, never seen as over its limits.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tcp_guard_tests::{
    daemon::{Daemon, counter, stats_json, tcp_guard},
    flood::{FloodSpec, Sources, flood},
    inject::Injector,
    lab::{Lab, listen, run},
    scenario::Server,
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
    "limits.per_source_half_open=4",
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
    "blocking.block_ttl=10m",
    "--set",
    "timeouts.syn_rcvd=4s",
];

#[derive(Parser)]
#[command(about = "tcp-guard on a built-in two-namespace lab, under a spoofed SYN flood and a noisy source")]
struct Args {
    /// How long to run; Ctrl-C ends it early. Everything is removed at exit.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(15..))]
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

    // The server namespace keeps the kernel's defaults, but for one: the
    // kernel gives up a half-open connection after one SYN-ACK retry (3 s)
    // instead of five (a minute), so that the few it took in before attack
    // mode began are gone, and attack mode ends, within the demo.
    let lab = Lab::new()?;
    lab.server.sysctl("net.ipv4.tcp_synack_retries", "1")?;
    // A veth end receives what XDP sends back out of its peer (the cookie
    // SYN-ACKs) only while it runs an XDP program itself; a real NIC need not.
    let _client_xdp = lab.receive_xdp_tx()?;
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
    let settings_before = cookie_sysctls(&lab)?;
    let server = Server::start(listener);
    let noisy_from = Duration::from_secs(seconds / 5);
    let flood_from = noisy_from + Duration::from_secs(3);
    let flood_until = Duration::from_secs(seconds * 3 / 5);
    println!(
        "server listens on {addr} (backlog 64, the kernel's defaults: {}); a client connects 5 times a second;\n\
         from {}s a noisy source (198.18.99.99, 2k SYN/s), from {}s to {}s also a spoofed SYN flood\n\
         (20k SYN/s, random sources in 198.19.0.0/16).\n",
        cookie_sysctls(&lab)?,
        noisy_from.as_secs(),
        flood_from.as_secs(),
        flood_until.as_secs()
    );
    println!(
        "{:>4} {:>9} {:>9} {:>8} {:>8} {:>9} {:>6} {:>7} {:>8}",
        "secs", "connects", "SYN/s", "cookies", "dropped", "half-open", "attack", "blocked", "flood"
    );

    let ok = Arc::new(AtomicU64::new(0));
    let tried = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let flood_stop = Arc::new(AtomicBool::new(false));
    let noisy: IpAddr = "198.18.99.99".parse()?;
    // Each starts at its time and stops at `flood_until`.
    let mut pending = vec![
        (noisy_from, Sources::Fixed(noisy), 2_000),
        (
            flood_from,
            Sources::Random {
                network: "198.19.0.0".parse()?,
                prefix_len: 16,
            },
            20_000,
        ),
    ];
    let mut seen = Seen::default();
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
            while let Some(at) = pending.first().map(|p| p.0)
                && elapsed >= at
            {
                let (at, sources, rate) = pending.remove(0);
                let length = flood_until.saturating_sub(at).max(Duration::from_secs(1));
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
                let blocked = blocked["blocked"].as_array().map_or(0, Vec::len);
                let attack = now["attack"]["active"] == true;
                let traffic = match elapsed {
                    e if e < noisy_from || e >= flood_until => "",
                    e if e < flood_from => "noisy",
                    _ => "flooding",
                };
                let cookies = delta("syn_cookie_sent");
                seen.report(traffic, blocked, attack, cookies);
                println!(
                    "{:>4} {:>4}/{:<4} {:>9} {:>8} {:>8} {:>9} {:>6} {:>7} {:>8}",
                    next_report.as_secs(),
                    ok.load(Ordering::Relaxed),
                    tried.load(Ordering::Relaxed),
                    delta("syn"),
                    cookies,
                    dropped,
                    format!("{}/{}", now["half_open"]["count"], now["half_open"]["limit"]),
                    if attack { "ON" } else { "off" },
                    blocked,
                    traffic
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
    drop(server);

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
    let settings_after = cookie_sysctls(&lab)?;
    println!("\ntcp-guard stopped ({status}); the kernel's settings are {settings_after}; removing the lab");
    seen.restored = settings_after == settings_before;
    drop(lab);
    println!("done: namespaces, veth, programs and pins removed");
    if STOP.load(Ordering::Relaxed) {
        return Ok(());
    }
    let connects = (ok.load(Ordering::Relaxed), tried.load(Ordering::Relaxed));
    let missed = seen.missed(connects);
    if !missed.is_empty() {
        bail!("the demo did not go as it should: {}", missed.join("; "));
    }
    println!(
        "as it should: the noisy source was blocked before the flood, attack mode came and went, the \
         flood was answered with cookies, every client connected, the kernel's settings were restored"
    );
    Ok(())
}

/// The two settings tcp-guard holds while it answers cookies, in the server namespace.
fn cookie_sysctls(lab: &Lab) -> Result<String> {
    let out = run(lab
        .server
        .command("sysctl")
        .args(["net.ipv4.tcp_syncookies", "net.ipv4.tcp_timestamps"]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.replace(' ', ""))
        .collect::<Vec<_>>()
        .join(" "))
}

/// What the per-second reports showed, for the demo's closing check.
#[derive(Default)]
struct Seen {
    blocked_before_flood: bool,
    attack_during_flood: bool,
    cookies_during_flood: bool,
    attack_at_end: bool,
    /// The kernel's settings after the daemon stopped are those before it ran.
    restored: bool,
}

impl Seen {
    fn report(&mut self, traffic: &str, blocked: usize, attack: bool, cookies: u64) {
        match traffic {
            "noisy" => self.blocked_before_flood |= blocked > 0,
            "flooding" => {
                self.attack_during_flood |= attack;
                self.cookies_during_flood |= cookies > 0;
            }
            _ => {}
        }
        self.attack_at_end = attack;
    }

    /// What did not happen, in words; empty when the demo went as described.
    fn missed(&self, (ok, tried): (u64, u64)) -> Vec<String> {
        let mut missed = Vec::new();
        if !self.blocked_before_flood {
            missed.push("the noisy source was not blocked before the flood began".to_string());
        }
        if !self.attack_during_flood {
            missed.push("attack mode never came on during the flood".to_string());
        }
        if !self.cookies_during_flood {
            missed.push("the flood was not answered with cookies".to_string());
        }
        if self.attack_at_end {
            missed.push("attack mode was still on at the end".to_string());
        }
        if !self.restored {
            missed.push("the kernel's settings were not restored".to_string());
        }
        if tried == 0 || ok < tried {
            missed.push(format!("{ok} of {tried} client connects succeeded"));
        }
        missed
    }
}
