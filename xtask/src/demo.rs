//! `cargo xtask demo`: the lab, tcp-guard attached to the server's veth, a
//! client connecting a few times a second, counters shown every second.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tcp_guard_tests::{
    daemon::{Daemon, counter, stats_json, tcp_guard},
    lab::Lab,
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn demo(seconds: u64) -> Result<()> {
    crate::require_root("demo")?;
    crate::setup::setup()?;
    let bin = crate::build_tcp_guard()?;
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t) };
    // The lab's helpers find the binary through this variable.
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("TCP_GUARD_BIN", &bin) };

    let lab = Lab::new()?;
    println!(
        "lab: server namespace {} ({}, {}) <-veth-> client namespace {} ({})",
        lab.server.name(),
        lab.server_iface,
        lab.server_addr(false),
        lab.client.name(),
        lab.client_addr(false)
    );
    let daemon = Daemon::start(&lab.server, &lab.server_iface, &[])?;
    println!("tcp-guard: {}", daemon.log().lines().last().unwrap_or_default());

    let addr = SocketAddr::new(lab.server_addr(false), 8080);
    let listener = lab.server.enter(move || TcpListener::bind(addr))??;
    listener.set_nonblocking(true)?;
    println!("server listens on {addr}; the client connects, says hello, and closes, 5 times a second\n");
    println!(
        "{:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "secs", "syn", "syn_ack", "ack", "fin", "rst", "malformed"
    );

    let start = Instant::now();
    let mut next_report = Duration::from_secs(1);
    let mut connections = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) && !STOP.load(Ordering::Relaxed) {
        lab.client.enter(move || hello(addr))??;
        serve_pending(&listener)?;
        connections += 1;
        if start.elapsed() >= next_report {
            let stats = stats_json(&lab.server_iface);
            let malformed: u64 = stats["counters"]
                .as_object()
                .map(|c| {
                    c.iter()
                        .filter(|(k, _)| k.starts_with("malformed"))
                        .filter_map(|(_, v)| v.as_u64())
                        .sum()
                })
                .unwrap_or(0);
            println!(
                "{:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
                next_report.as_secs(),
                counter(&stats, "syn"),
                counter(&stats, "syn_ack"),
                counter(&stats, "ack"),
                counter(&stats, "fin"),
                counter(&stats, "rst"),
                malformed
            );
            next_report += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    println!("\n{connections} connections made. Final `tcp-guard stats`:\n");
    let out = tcp_guard(&["stats", "--iface", &lab.server_iface]);
    std::io::stdout().write_all(&out.stdout)?;
    let status = daemon.stop()?;
    println!("\ntcp-guard stopped ({status}); removing the lab");
    drop(lab);
    println!("done: namespaces, veth, XDP program and pins removed");
    Ok(())
}

fn hello(addr: SocketAddr) -> Result<()> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).context("client connect")?;
    conn.write_all(b"hello")?;
    Ok(())
}

/// Accepts and drains what the client sent, then closes.
fn serve_pending(listener: &TcpListener) -> Result<()> {
    loop {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false)?;
                let mut buf = Vec::new();
                conn.read_to_end(&mut buf)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}
