//! The daemon attached to a real veth in a namespace, real kernel TCP on both
//! ends, and the counters `tcp-guard stats --json` reports. Needs root.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use tcp_guard_common::stats::Counter;
use tcp_guard_tests::{
    daemon::{Daemon, counter, stats_json, tcp_guard},
    lab::{Lab, Netns},
};

const PORT: u16 = 8080;

/// A listener in `ns` that answers each connection's "ping" with "pong",
/// then waits for the client to close first. Serves `n` connections.
fn spawn_ping_server(ns: &Netns, addr: SocketAddr, n: usize) -> std::thread::JoinHandle<()> {
    let listener = ns
        .enter(move || TcpListener::bind(addr))
        .expect("enter")
        .expect("bind");
    std::thread::spawn(move || {
        for _ in 0..n {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).expect("read ping");
            conn.write_all(b"pong").expect("write pong");
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).expect("read until the client's FIN");
            assert!(rest.is_empty());
        }
    })
}

/// From `ns`: connect, send "ping", read "pong", close first.
fn ping(ns: &Netns, addr: SocketAddr) {
    ns.enter(move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        conn.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"pong");
        conn.shutdown(Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).expect("read the server's FIN");
    })
    .expect("enter client namespace");
}

fn connections_are_counted_exactly(v6: bool) {
    const N: u64 = 10;
    let lab = Lab::new().expect("lab");
    let daemon = Daemon::start(&lab.server, &lab.server_iface, &[]).expect("start tcp-guard");
    let addr = SocketAddr::new(lab.server_addr(v6), PORT);
    let server = spawn_ping_server(&lab.server, addr, N as usize);
    for _ in 0..N {
        ping(&lab.client, addr);
    }
    server.join().expect("server thread");

    let stats = stats_json(&lab.server_iface);
    assert_eq!(counter(&stats, "syn"), N, "one SYN per connection: {stats}");
    assert_eq!(
        counter(&stats, "fin"),
        N,
        "one FIN per connection, the client's: {stats}"
    );
    assert_eq!(
        counter(&stats, "syn_ack"),
        0,
        "the server sends SYN-ACKs, it does not receive them"
    );
    assert_eq!(counter(&stats, "rst"), 0);
    assert_eq!(counter(&stats, "tcp_other_flags"), 0);
    // Handshake ACK and the "ping" segment at least; delayed ACKs vary.
    assert!(counter(&stats, "ack") >= 2 * N, "{stats}");
    let family = if v6 { "ipv6" } else { "ipv4" };
    assert!(counter(&stats, family) >= 4 * N, "{stats}");
    for c in Counter::ALL.iter().filter(|c| c.is_malformed()) {
        assert_eq!(counter(&stats, c.as_str()), 0, "{}", c.as_str());
    }

    let status = daemon.stop().expect("stop tcp-guard");
    assert!(status.success(), "tcp-guard exited with {status}");
    assert_detached(&lab);
}

fn assert_detached(lab: &Lab) {
    let link = lab
        .server
        .ip(&["link", "show", &lab.server_iface])
        .expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "XDP still attached after exit: {link}");
    let pins = Path::new("/sys/fs/bpf/tcp-guard").join(&lab.server_iface);
    assert!(!pins.exists(), "{} left behind", pins.display());
}

#[test]
fn ipv4_connections_are_counted_exactly() {
    connections_are_counted_exactly(false);
}

#[test]
fn ipv6_connections_are_counted_exactly() {
    connections_are_counted_exactly(true);
}

#[test]
fn outbound_connections_show_syn_ack_and_rst() {
    const N: u64 = 3;
    let lab = Lab::new().expect("lab");
    let _daemon = Daemon::start(&lab.server, &lab.server_iface, &[]).expect("start tcp-guard");
    // The guarded host connects out: the replies it receives are SYN-ACKs.
    let listen = SocketAddr::new(lab.client_addr(false), PORT);
    let listener = lab
        .client
        .enter(move || TcpListener::bind(listen))
        .unwrap()
        .expect("bind");
    for _ in 0..N {
        lab.server
            .enter(move || TcpStream::connect_timeout(&listen, Duration::from_secs(5)).expect("connect"))
            .expect("enter");
        listener.accept().expect("accept");
    }
    // A closed port answers with RST.
    let closed = SocketAddr::new(lab.client_addr(false), PORT + 1);
    let refused = lab
        .server
        .enter(move || TcpStream::connect_timeout(&closed, Duration::from_secs(5)))
        .expect("enter");
    assert_eq!(
        refused.expect_err("closed port").kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    let stats = stats_json(&lab.server_iface);
    assert_eq!(counter(&stats, "syn_ack"), N, "{stats}");
    assert_eq!(counter(&stats, "rst"), 1, "{stats}");
    assert_eq!(counter(&stats, "syn"), 0, "{stats}");
}

#[test]
fn flows_filters_limits_and_prints_like_ss() {
    let lab = Lab::new().expect("lab");
    let _daemon = Daemon::start(&lab.server, &lab.server_iface, &[]).expect("start tcp-guard");
    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let listener = lab
        .server
        .enter(move || TcpListener::bind(addr))
        .unwrap()
        .expect("bind");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(lab.connect_pair(&listener, addr).expect("connect"));
    }
    let iface = lab.server_iface.as_str();
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["flows", "--iface", iface, "--json"];
        all.extend_from_slice(args);
        let out = tcp_guard(&all);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    assert_eq!(json(&[])["flows"].as_array().expect("array").len(), 3);
    assert_eq!(
        json(&["--state", "estab"])["flows"]
            .as_array()
            .expect("array")
            .len(),
        3
    );
    assert_eq!(
        json(&["--state", "TIME_WAIT"])["flows"]
            .as_array()
            .expect("array")
            .len(),
        0
    );
    assert_eq!(
        json(&["--limit", "2"])["flows"].as_array().expect("array").len(),
        2
    );
    let first = &json(&[])["flows"][0];
    assert_eq!(first["local"], "198.18.0.1:8080");
    assert_eq!(first["adopted"], false);
    assert!(first["age_secs"].as_f64().expect("age") >= 0.0);

    let text = tcp_guard(&["flows", "--iface", iface]);
    let text = String::from_utf8_lossy(&text.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("State"), "{text}");
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[1].starts_with("ESTAB") && lines[1].contains("198.18.0.1:8080"),
        "{text}"
    );
}
