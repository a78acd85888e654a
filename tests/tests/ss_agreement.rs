//! The flow table against the kernel's own view: real connections opened,
//! held, closed from each side, closed simultaneously, reset, and left
//! half-open by spoofed SYNs; after each step `tcp-guard flows --json` and
//! `ss -tan` in the server namespace must list the same flows in the same
//! states. Needs root.

use std::{
    io::{Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use tcp_guard_tests::{
    daemon::{Daemon, counter, flows, stats_json},
    inject::Injector,
    lab::{Lab, reset_on_close, run},
    packets::{SYN, TcpPacket},
};

const PORT: u16 = 8080;

type Sockets = Vec<(String, SocketAddr, SocketAddr)>;

/// Waits (up to 10 s: a dropped FIN is retransmitted with backoff) until the
/// kernel shows `expected` flows per state and tcp-guard shows exactly the
/// same flows; fails with both views otherwise.
fn agree(lab: &Lab, step: &str, expected: &[(&str, usize)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kernel = lab.server_sockets().expect("ss");
        let guard = flows(&lab.server_iface);
        let total: usize = expected.iter().map(|(_, n)| n).sum();
        let as_expected =
            kernel.len() == total && expected.iter().all(|(state, n)| count(&kernel, state) == *n);
        if as_expected && kernel == guard {
            return;
        }
        if Instant::now() > deadline {
            // The counters tell why a segment did not move a flow.
            let stats = stats_json(&lab.server_iface);
            let counters: Vec<(&String, &serde_json::Value)> = stats["counters"]
                .as_object()
                .expect("counters")
                .iter()
                .filter(|(_, v)| v.as_u64() != Some(0))
                .collect();
            panic!(
                "{step}: expected {expected:?}\n  ss:        {kernel:?}\n  tcp-guard: {guard:?}\n  counters:  {counters:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(sockets: &Sockets, state: &str) -> usize {
    sockets.iter().filter(|(s, _, _)| s == state).count()
}

/// A client connection and the server's end of it.
struct Pair {
    client: TcpStream,
    server: TcpStream,
}

/// 4 MiB from `from` to `to`, read in full.
fn exchange(from: &TcpStream, to: &TcpStream) {
    const BYTES: usize = 4 << 20;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut got = vec![0u8; BYTES];
            (&*to).read_exact(&mut got).expect("read");
            got
        });
        (&*from).write_all(&vec![0x5a; BYTES]).expect("write");
        assert!(reader.join().expect("reader").iter().all(|&b| b == 0x5a));
    });
}

fn nft(lab: &Lab, rule: &str) {
    run(lab.client.command("nft").arg(rule)).expect("nft");
}

/// tcp-guard started on the lab's server, a listener on PORT, and `n`
/// connections to it.
fn guarded_connections(lab: &Lab, v6: bool, n: usize) -> (Daemon, TcpListener, Vec<Pair>) {
    let daemon = Daemon::start(&lab.server, &lab.server_iface, &[]).expect("start tcp-guard");
    let addr = SocketAddr::new(lab.server_addr(v6), PORT);
    let listener = lab
        .server
        .enter(move || TcpListener::bind(addr))
        .unwrap()
        .expect("bind");
    let pairs = (0..n)
        .map(|_| {
            let (client, server) = lab.connect_pair(&listener, addr).expect("connect");
            Pair { client, server }
        })
        .collect();
    (daemon, listener, pairs)
}

fn kernel_and_guard_agree_through_a_connections_life(v6: bool) {
    let lab = Lab::new().expect("lab");
    let (_daemon, _listener, mut pairs) = guarded_connections(&lab, v6, 8);
    agree(&lab, "8 connections open", &[("ESTAB", 8)]);

    // Data both ways on each: fast enough that the CPUs' notes of the
    // flows absorb ACKs (`RecentFlow`), which must change none of what follows.
    for p in &pairs {
        exchange(&p.client, &p.server);
        exchange(&p.server, &p.client);
    }
    let stats = stats_json(&lab.server_iface);
    assert!(
        counter(&stats, "ack_recent_flow") > 0,
        "no ACK absorbed by a note"
    );
    assert_eq!(
        counter(&stats, "egress_malformed"),
        0,
        "the host's packets misread"
    );
    agree(&lab, "data exchanged", &[("ESTAB", 8)]);

    // Two closed by the client: the server holds them in CLOSE-WAIT...
    let peer_closed: Vec<Pair> = pairs.drain(..2).collect();
    for p in &peer_closed {
        p.client.shutdown(Shutdown::Both).expect("client close");
    }
    agree(&lab, "client closed 2", &[("ESTAB", 6), ("CLOSE-WAIT", 2)]);
    // ...until it closes them too: LAST-ACK, then gone.
    drop(peer_closed);
    agree(&lab, "server closed its CLOSE-WAIT sockets", &[("ESTAB", 6)]);

    // Two closed by the server: FIN-WAIT-2 while the client holds them...
    let host_closed: Vec<Pair> = pairs.drain(..2).collect();
    for p in &host_closed {
        p.server.shutdown(Shutdown::Write).expect("server close");
    }
    agree(&lab, "server closed 2", &[("ESTAB", 4), ("FIN-WAIT-2", 2)]);
    // ...and TIME-WAIT once the client closes too.
    for p in &host_closed {
        p.client.shutdown(Shutdown::Write).expect("client close");
    }
    agree(
        &lab,
        "client closed after the server",
        &[("ESTAB", 4), ("TIME-WAIT", 2)],
    );

    // One reset by the client (SO_LINGER 0).
    let reset = pairs.remove(0);
    reset_on_close(&reset.client).expect("SO_LINGER 0");
    drop(reset.client);
    agree(&lab, "client reset 1", &[("ESTAB", 3), ("TIME-WAIT", 2)]);

    // A simultaneous close: the server's FIN is held back at the client, so
    // the client's FIN crosses it.
    let both = pairs.remove(0);
    let client_port = both.client.local_addr().expect("addr").port();
    nft(&lab, "add table inet tg");
    nft(
        &lab,
        "add chain inet tg in { type filter hook input priority 0; }",
    );
    nft(
        &lab,
        &format!("add rule inet tg in tcp sport {PORT} tcp dport {client_port} drop"),
    );
    both.server.shutdown(Shutdown::Write).expect("server FIN");
    both.client.shutdown(Shutdown::Write).expect("client FIN");
    agree(
        &lab,
        "FINs crossed",
        &[("ESTAB", 2), ("TIME-WAIT", 2), ("CLOSING", 1)],
    );
    nft(&lab, "delete table inet tg");
    agree(
        &lab,
        "simultaneous close finished",
        &[("ESTAB", 2), ("TIME-WAIT", 3)],
    );

    // Half-open: spoofed SYNs from outside the lab's subnet, no final ACK.
    let injector = Injector::open(&lab.client, &lab.client_iface).expect("injector");
    let dst_mac = Lab::mac(&lab.server, &lab.server_iface).expect("server MAC");
    for i in 1..=5u8 {
        let src: IpAddr = if v6 {
            format!("2001:2:0:99::{i}").parse().unwrap()
        } else {
            IpAddr::from([198, 19, 0, i])
        };
        let mut syn = TcpPacket::new(src, lab.server_addr(v6), 30000 + u16::from(i), PORT, SYN);
        syn.seq = 77_000 * u32::from(i);
        syn.dst_mac = dst_mac;
        injector.send(&syn.frame()).expect("send SYN");
    }
    agree(
        &lab,
        "5 spoofed SYNs",
        &[("ESTAB", 2), ("TIME-WAIT", 3), ("SYN-RECV", 5)],
    );

    // Data still flows on the connections left open.
    pairs[0].client.write_all(b"still here").expect("write");
}

/// With BIG TCP on the server's link (GSO past 64 KiB, off by default), the
/// host hands its stack's segments over in socket buffers of up to 256 KiB,
/// whose IP length field is 0 (it cannot hold their length): the egress
/// program must take their length from the socket buffer, or it skips every
/// such segment and the flows fall behind the kernel's.
fn big_tcp_segments_are_tracked(v6: bool) {
    let lab = Lab::new().expect("lab");
    lab.server
        .big_tcp(&lab.server_iface, 256 << 10)
        .expect("BIG TCP on the server's link");
    let (_daemon, _listener, pairs) = guarded_connections(&lab, v6, 2);
    for p in &pairs {
        exchange(&p.server, &p.client);
    }
    let stats = stats_json(&lab.server_iface);
    assert_eq!(
        counter(&stats, "egress_malformed"),
        0,
        "the host's packets misread"
    );
    assert_eq!(
        counter(&stats, "invalid_ack_not_sent"),
        0,
        "the peer acknowledged data the guard did not see the host send"
    );
    agree(&lab, "data sent in BIG TCP segments", &[("ESTAB", 2)]);
    for p in &pairs {
        p.client.shutdown(Shutdown::Both).expect("client close");
    }
    agree(&lab, "client closed both", &[("CLOSE-WAIT", 2)]);
    assert!(
        counter(&stats, "egress_big_tcp") > 0,
        "no BIG TCP packet left the host (IPv4 BIG TCP needs Linux 6.3): the test proved nothing"
    );
}

#[test]
fn ipv4_big_tcp_segments_are_tracked() {
    big_tcp_segments_are_tracked(false);
}

#[test]
fn ipv6_big_tcp_segments_are_tracked() {
    big_tcp_segments_are_tracked(true);
}

#[test]
fn ipv4_kernel_and_guard_agree_through_a_connections_life() {
    kernel_and_guard_agree_through_a_connections_life(false);
}

#[test]
fn ipv6_kernel_and_guard_agree_through_a_connections_life() {
    kernel_and_guard_agree_through_a_connections_life(true);
}
