//! The syncookie attack-mode policy against real floods: SYNs from unknown
//! sources answered from XDP with the kernel's own cookies, the ACKs checked
//! by the real listener, real clients connecting from fresh (so unverified)
//! addresses, the kernel's own counters and `ss` as the oracles. Needs root.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use tcp_guard_tests::{
    daemon::{Daemon, counter, stats_json, tcp_guard_bin},
    inject::Injector,
    lab::{ClientXdp, Lab, Netns, connect_from, listen, run},
    packets::{ACK, TcpPacket},
    scenario::{
        ATTACK_AT_4_HALF_OPEN, Flood, FreshAddresses, PORT, QUICK_LEAVE, SYN_RCVD_4S, Server, random_sources,
        timed_connect, wait_for,
    },
};

/// The kernel forgets that a listener issued cookies after two minutes
/// (`tcp_synq_no_recent_overflow`); the long attack outlasts that.
const LONG_ATTACK: Duration = Duration::from_secs(150);

/// No SYN of a client was retransmitted if its connect took less than the
/// initial retransmission timeout.
const INITIAL_RTO: Duration = Duration::from_secs(1);

/// Clients of one run that may wait for a SYN retransmission. The test
/// machine has 2 shared cores and runs other tests' floods at the same time,
/// so a lab's veth loses a client's SYN now and then (about one run in three
/// of the whole suite saw one client late), whatever defends the listener;
/// run alone, the flood benchmark had no client late in 552. The retransmit
/// challenge makes every new client late.
const LATE_ALLOWED: usize = 1;

/// The typical client, under the flood, waits no longer than this (about
/// 0.3 ms measured; the challenge's clients wait 1 s).
const MEDIAN_LIMIT: Duration = Duration::from_millis(20);

/// Tests here measure latency and throughput under floods: run one at a
/// time, or one test's flood makes another's clients wait (two floods and a
/// long attack at once on 2 cores lose SYNs on the lab's veth).
fn one_flood_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static FLOODS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FLOODS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A lab whose server accepts cookie ACKs: `tcp_syncookies=2` (the listener
/// issues cookies itself, which keeps its cookie check open) and
/// `tcp_timestamps=2` (no random timestamp offsets, so the options encoded
/// in a cookie's timestamp survive); its client receives XDP_TX frames.
fn cookie_lab() -> (Lab, ClientXdp) {
    let lab = Lab::new().expect("lab");
    lab.server.sysctl("net.ipv4.tcp_syncookies", "2").expect("sysctl");
    lab.server.sysctl("net.ipv4.tcp_timestamps", "2").expect("sysctl");
    let client_xdp = lab.receive_xdp_tx().expect("XDP on the client's end");
    (lab, client_xdp)
}

fn cookie_daemon(lab: &Lab) -> Daemon {
    let args = [
        &["--set", "attack.policy=syncookie"],
        ATTACK_AT_4_HALF_OPEN,
        QUICK_LEAVE,
    ]
    .concat();
    Daemon::start(&lab.server, &lab.server_iface, &args).expect("start tcp-guard")
}

/// Sends `len` bytes and reads them back: data flows both ways.
fn echo_round_trip(stream: &mut TcpStream, len: usize) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let sent: Vec<u8> = (0..len).map(|i| (i * 7 + i / 256) as u8).collect();
    let mut writer = stream.try_clone().expect("clone");
    let data = sent.clone();
    let send = std::thread::spawn(move || writer.write_all(&data).expect("send"));
    let mut received = vec![0u8; len];
    stream.read_exact(&mut received).expect("echo");
    send.join().expect("sender");
    assert!(received == sent, "the echo differs from what was sent");
}

/// What a connection negotiated, as the kernel's TCP_INFO of one end says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Negotiated {
    timestamps: bool,
    sack: bool,
    /// (send, receive) window scales, when window scaling is on.
    wscale: Option<(u8, u8)>,
    snd_mss: u32,
}

fn negotiated(stream: &TcpStream) -> Negotiated {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 104];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: TCP_INFO into a buffer of the given length, on a socket we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    // struct tcp_info: tcpi_options at 5, the two 4-bit scales at 6, tcpi_snd_mss at 16.
    let options = info[5];
    Negotiated {
        timestamps: options & 1 != 0,
        sack: options & 2 != 0,
        wscale: (options & 4 != 0).then_some((info[6] & 0x0f, info[6] >> 4)),
        snd_mss: u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes")),
    }
}

/// The window scales (send, receive) of the server's socket for the
/// connection from `client`, as `ss -ti` in the server namespace shows them.
fn server_wscale(lab: &Lab, client: SocketAddr) -> Option<(u8, u8)> {
    let out = run(lab.server.command("ss").args(["-tinH", "state", "established"])).expect("ss");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let info = lines.next().unwrap_or("");
        // Without a state column: Recv-Q Send-Q Local Peer.
        if line.split_whitespace().nth(3) == Some(client.to_string().as_str()) {
            return info.split_whitespace().find_map(|t| {
                let (snd, rcv) = t.strip_prefix("wscale:")?.split_once(',')?;
                Some((snd.parse().ok()?, rcv.parse().ok()?))
            });
        }
    }
    panic!("no established socket for {client} in the server namespace: {text}");
}

/// A TcpExt counter of the kernel in `ns` (/proc/net/netstat is per namespace).
fn tcp_ext(ns: &Netns, name: &str) -> u64 {
    let out = run(ns.command("cat").arg("/proc/net/netstat")).expect("netstat");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (
        lines.next().expect("TcpExt names"),
        lines.next().expect("TcpExt values"),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExt {name} in {text}"))
}

fn attack_active(lab: &Lab) -> bool {
    stats_json(&lab.server_iface)["attack"]["active"] == true
}

fn syncookie_serves_fresh_clients_at_once_under_a_flood(v6: bool) {
    const CLIENTS: usize = 20;
    const FORGED_ACKS: u64 = 1000;
    let (lab, _client_xdp) = cookie_lab();
    let _daemon = cookie_daemon(&lab);
    let server = SocketAddr::new(lab.server_addr(v6), PORT);
    let _echo = Server::echo(listen(&lab.server, server, 128).expect("listen"));
    let mut fresh = FreshAddresses::new(v6);

    // Before the flood: the kernel answers (with its own cookies, as
    // tcp_syncookies=2 has it), and the options it negotiates are the reference.
    let local = fresh.take(&lab);
    let (reference_stream, _) = timed_connect(&lab, local, server);
    let reference = negotiated(&reference_stream);
    assert!(
        reference.timestamps && reference.sack && reference.wscale.is_some(),
        "the lab negotiates timestamps, SACK and window scaling: {reference:?}"
    );
    drop(reference_stream);

    let flood = Flood::start(
        &lab,
        server.ip(),
        random_sources(v6),
        20_000,
        Duration::from_secs(60),
    );
    wait_for("attack mode", Duration::from_secs(10), || attack_active(&lab));
    // Clients come while the flood is in full swing.
    std::thread::sleep(Duration::from_secs(1));
    let failed_before = tcp_ext(&lab.server, "SyncookiesFailed");
    let received_before = tcp_ext(&lab.server, "SyncookiesRecv");

    let mut latencies = Vec::new();
    let mut max_syn_recv = 0;
    for i in 0..CLIENTS {
        let local = fresh.take(&lab);
        let (mut stream, took) = timed_connect(&lab, local, server);
        latencies.push(took);
        echo_round_trip(&mut stream, 256 * 1024);
        if i == 0 {
            let ours = negotiated(&stream);
            assert_eq!(
                ours, reference,
                "a cookie connection negotiates what the listener itself does"
            );
            let (snd, rcv) = ours.wscale.expect("window scaling");
            assert_eq!(
                server_wscale(&lab, stream.local_addr().expect("addr")),
                Some((rcv, snd)),
                "the server's socket scales windows as the client expects"
            );
        }
        max_syn_recv = max_syn_recv.max(lab.server_syn_recv().expect("ss"));
    }

    // Forged ACKs from spoofed sources: no flow, no valid cookie.
    let injector = Injector::open(&lab.client, &lab.client_iface).expect("injector");
    let dst_mac = Lab::mac(&lab.server, &lab.server_iface).expect("MAC");
    let dropped_before = counter(&stats_json(&lab.server_iface), "drop_bad_cookie");
    for i in 0..FORGED_ACKS {
        let src: IpAddr = if v6 {
            Ipv6Addr::new(0x2001, 2, 0, 0x8000, 0, 0, 7, i as u16).into()
        } else {
            Ipv4Addr::new(198, 19, 7, i as u8).into()
        };
        let mut ack = TcpPacket::new(src, server.ip(), 40_000 + i as u16, PORT, ACK);
        ack.seq = 0x1000_0000 + i as u32 * 7919;
        ack.ack = 0x2000_0000 + i as u32 * 104_729;
        ack.dst_mac = dst_mac;
        injector.send(&ack.frame()).expect("send");
    }
    wait_for("the forged ACKs to be counted", Duration::from_secs(5), || {
        counter(&stats_json(&lab.server_iface), "drop_bad_cookie") >= dropped_before + FORGED_ACKS
    });
    let report = flood.stop();
    let stats = stats_json(&lab.server_iface);

    latencies.sort();
    let median = latencies[CLIENTS / 2];
    let slowest = *latencies.last().expect("latencies");
    let late = latencies.iter().filter(|t| **t >= INITIAL_RTO).count();
    assert!(report.sent > 10_000, "the flood ran: {report:?}");
    assert!(
        median < MEDIAN_LIMIT && late <= LATE_ALLOWED,
        "clients connect without waiting for a SYN retransmission: median {median:?}, \
         {late} of {CLIENTS} late, slowest {slowest:?}"
    );
    assert_eq!(max_syn_recv, 0, "the listener keeps no half-open connections");
    assert_eq!(
        counter(&stats, "drop_bad_cookie") - dropped_before,
        FORGED_ACKS,
        "every forged ACK, and nothing else, dropped for its cookie: {stats}"
    );
    assert_eq!(
        tcp_ext(&lab.server, "SyncookiesFailed"),
        failed_before,
        "the listener never saw a bad cookie"
    );
    assert!(
        tcp_ext(&lab.server, "SyncookiesRecv") - received_before >= CLIENTS as u64,
        "the listener accepted the clients' cookies itself"
    );
    assert!(counter(&stats, "cookie_ack_valid") >= CLIENTS as u64, "{stats}");
    assert!(
        counter(&stats, "syn_cookie_sent") >= report.sent / 2,
        "the flood was answered from XDP: {report:?} {stats}"
    );
    assert_eq!(counter(&stats, "drop_cookie_unanswered"), 0, "{stats}");
    eprintln!(
        "syncookie {}: {CLIENTS} fresh clients under {} SYN/s, connect median {median:?}, slowest {slowest:?}",
        if v6 { "IPv6" } else { "IPv4" },
        report.rate() as u64
    );
}

#[test]
fn ipv4_syncookie_serves_fresh_clients_at_once_under_a_flood() {
    let _serial = one_flood_at_a_time();
    syncookie_serves_fresh_clients_at_once_under_a_flood(false);
}

#[test]
fn ipv6_syncookie_serves_fresh_clients_at_once_under_a_flood() {
    let _serial = one_flood_at_a_time();
    syncookie_serves_fresh_clients_at_once_under_a_flood(true);
}

#[test]
fn the_listener_keeps_accepting_cookies_through_an_attack_longer_than_its_memory() {
    let _serial = one_flood_at_a_time();
    let (lab, _client_xdp) = cookie_lab();
    let _daemon = cookie_daemon(&lab);
    let server = SocketAddr::new(lab.server_addr(false), PORT);
    let _echo = Server::echo(listen(&lab.server, server, 128).expect("listen"));
    let mut fresh = FreshAddresses::new(false);
    let flood = Flood::start(
        &lab,
        server.ip(),
        random_sources(false),
        5_000,
        LONG_ATTACK + Duration::from_secs(30),
    );
    wait_for("attack mode", Duration::from_secs(10), || attack_active(&lab));
    let received_before = tcp_ext(&lab.server, "SyncookiesRecv");
    let started = Instant::now();
    let mut rounds = 0;
    let mut late = Vec::new();
    while started.elapsed() < LONG_ATTACK {
        // Not every 10 s: a client in step with the listener's refresh
        // (a SYN let through every 10 s) would be the one let through,
        // round after round, and that is not what this test is about.
        std::thread::sleep(Duration::from_millis(11_500));
        let local = fresh.take(&lab);
        // Without a fresh cookie mark the listener resets the client here.
        let (mut stream, took) = timed_connect(&lab, local, server);
        echo_round_trip(&mut stream, 1024);
        if took >= INITIAL_RTO {
            late.push((started.elapsed(), took));
        }
        assert!(attack_active(&lab), "still in attack mode");
        rounds += 1;
    }
    assert!(late.len() <= LATE_ALLOWED, "clients late (after, took): {late:?}");
    let report = flood.stop();
    let stats = stats_json(&lab.server_iface);
    assert!(report.sent > 500_000, "the flood ran throughout: {report:?}");
    // A client's SYN may be the one let through to the listener (below),
    // which then answers it with a cookie of its own: the listener's count
    // covers both kinds.
    assert!(
        tcp_ext(&lab.server, "SyncookiesRecv") - received_before >= rounds,
        "every client came through a cookie the listener accepted: {stats}"
    );
    assert!(
        counter(&stats, "cookie_ack_valid") + 1 >= rounds,
        "all clients but at most the one let through got the fast path's cookie: {stats}"
    );
    // One SYN per listener every 10 s keeps its cookie check open.
    assert!(
        counter(&stats, "syn_cookie_refresh") >= LONG_ATTACK.as_secs() / 10 - 1,
        "{stats}"
    );
}

#[test]
fn the_policy_is_refused_where_the_listener_would_reject_its_cookies_and_auto_picks_what_fits() {
    let _serial = one_flood_at_a_time();
    let lab = Lab::new().expect("lab");
    const UNMANAGED: [&str; 2] = ["--set", "attack.manage_sysctls=false"];
    // A new namespace has the kernel's defaults, tcp_syncookies = 1 and
    // tcp_timestamps = 1; the daemon may not change them here.
    let refused = Daemon::start(
        &lab.server,
        &lab.server_iface,
        &[&UNMANAGED[..], &["--set", "attack.policy=syncookie"]].concat(),
    )
    .err()
    .expect("the daemon refuses the policy");
    let message = format!("{refused:#}");
    assert!(
        message.contains("needs net.ipv4.tcp_syncookies = 2 while it answers (it is 1)")
            && message.contains("attack.manage_sysctls = true")
            && message.contains("sysctl -w net.ipv4.tcp_syncookies=2"),
        "{message}"
    );

    // auto leaves floods to the kernel's own cookies then.
    let daemon = Daemon::start(&lab.server, &lab.server_iface, &UNMANAGED).expect("start tcp-guard");
    assert!(
        daemon
            .log()
            .contains("attack.policy auto: pass (net.ipv4.tcp_syncookies=1 net.ipv4.tcp_timestamps=1 and attack.manage_sysctls is false"),
        "{}",
        daemon.log()
    );
    let limits_set = |setting: &str| {
        run(lab.server.command(tcp_guard_bin()).args([
            "limits",
            "set",
            "--iface",
            &lab.server_iface,
            setting,
        ]))
    };
    let refused = limits_set("attack.policy=syncookie").expect_err("limits set refuses the policy");
    assert!(
        format!("{refused:#}").contains("tcp_syncookies = 2 while it answers (it is 1)"),
        "{refused:#}"
    );
    assert_eq!(
        stats_json(&lab.server_iface)["attack"]["policy"],
        "pass",
        "the running policy stays"
    );
    lab.server.sysctl("net.ipv4.tcp_syncookies", "2").expect("sysctl");
    limits_set("attack.policy=syncookie").expect("accepted with tcp_syncookies = 2");
    assert_eq!(stats_json(&lab.server_iface)["attack"]["policy"], "syncookie");

    // A reload goes back to the configured auto, which decides anew.
    let policy_after_reload = || {
        run(lab
            .server
            .command(tcp_guard_bin())
            .args(["reload", "--iface", &lab.server_iface]))
        .expect("reload");
        stats_json(&lab.server_iface)["attack"]["policy"].clone()
    };
    assert_eq!(
        policy_after_reload(),
        "pass",
        "auto, unmanaged: timestamps with random offsets would cost cookie connections their options"
    );
    lab.server.sysctl("net.ipv4.tcp_timestamps", "2").expect("sysctl");
    assert_eq!(
        policy_after_reload(),
        "syncookie",
        "auto where cookies lose nothing"
    );
    drop(daemon);

    // Where the kernel issues no cookies, auto challenges, managed or not.
    lab.server.sysctl("net.ipv4.tcp_syncookies", "0").expect("sysctl");
    let daemon = Daemon::start(&lab.server, &lab.server_iface, &[]).expect("start tcp-guard");
    assert!(
        daemon
            .log()
            .contains("attack.policy auto: retransmit-challenge (net.ipv4.tcp_syncookies is 0"),
        "{}",
        daemon.log()
    );
}

/// A sysctl of the server namespace.
fn server_sysctl(lab: &Lab, key: &str) -> String {
    let out = run(lab.server.command("sysctl").args(["-n", key])).expect("sysctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn cookie_sysctls(lab: &Lab) -> (String, String) {
    (
        server_sysctl(lab, "net.ipv4.tcp_syncookies"),
        server_sysctl(lab, "net.ipv4.tcp_timestamps"),
    )
}

fn stock() -> (String, String) {
    ("1".to_string(), "1".to_string())
}

fn held_for_cookies() -> (String, String) {
    ("2".to_string(), "2".to_string())
}

/// Connect times of `n` clients, each from an address the guard has never
/// seen, sorted; the first one's stream is returned too.
fn fresh_clients(
    lab: &Lab,
    fresh: &mut FreshAddresses,
    server: SocketAddr,
    n: usize,
) -> (Vec<Duration>, TcpStream) {
    let mut first = None;
    let mut latencies = Vec::new();
    for _ in 0..n {
        let local = fresh.take(lab);
        let (stream, took) = timed_connect(lab, local, server);
        latencies.push(took);
        first.get_or_insert(stream);
    }
    latencies.sort();
    (latencies, first.expect("at least one client"))
}

/// The 99th percentile of sorted samples, leaving out `outliers` of the slowest.
fn p99(sorted: &[Duration], outliers: usize) -> Duration {
    let kept = &sorted[..sorted.len() - outliers.min(sorted.len() - 1)];
    kept[(kept.len() * 99).div_ceil(100) - 1]
}

/// The main promise on the settings nearly every host has: with tcp-guard's
/// defaults, new clients under a spoofed flood connect as fast as with the
/// kernel alone, measured in the same lab, and with the options the kernel
/// itself would negotiate.
fn a_stock_host_serves_new_clients_no_slower_than_the_kernel_alone(v6: bool) {
    const CLIENTS: usize = 32;
    let lab = Lab::new().expect("lab");
    assert_eq!(
        cookie_sysctls(&lab),
        stock(),
        "a new namespace has the kernel's defaults"
    );
    // Frames the guard answers with XDP_TX reach the client's veth end only so.
    let _client_xdp = lab.receive_xdp_tx().expect("XDP on the client's end");
    let server = SocketAddr::new(lab.server_addr(v6), PORT);
    let _echo = Server::echo(listen(&lab.server, server, 128).expect("listen"));
    let mut fresh = FreshAddresses::new(v6);
    let (_, reference) = fresh_clients(&lab, &mut fresh, server, 1);
    let reference = negotiated(&reference);

    // The kernel alone, its own SYN cookies answering the flood.
    let flood = Flood::start(
        &lab,
        server.ip(),
        random_sources(v6),
        20_000,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(1));
    let (kernel, _) = fresh_clients(&lab, &mut fresh, server, CLIENTS);
    let kernel_report = flood.stop();

    // tcp-guard with its defaults.
    let daemon = Daemon::start(&lab.server, &lab.server_iface, &[]).expect("start tcp-guard");
    assert!(
        daemon
            .log()
            .contains("attack.policy auto: syncookie (net.ipv4.tcp_syncookies=1"),
        "{}",
        daemon.log()
    );
    let flood = Flood::start(
        &lab,
        server.ip(),
        random_sources(v6),
        20_000,
        Duration::from_secs(30),
    );
    wait_for("attack mode", Duration::from_secs(10), || attack_active(&lab));
    wait_for(
        "the settings held while cookies are answered",
        Duration::from_secs(5),
        || cookie_sysctls(&lab) == held_for_cookies(),
    );
    cookies_answered(&lab);
    let (guarded, mut first) = fresh_clients(&lab, &mut fresh, server, CLIENTS);
    echo_round_trip(&mut first, 256 * 1024);
    let ours = negotiated(&first);
    let server_side = server_wscale(&lab, first.local_addr().expect("addr"));
    let guard_report = flood.stop();
    let stats = stats_json(&lab.server_iface);

    let late = |l: &[Duration]| l.iter().filter(|t| **t >= INITIAL_RTO).count();
    eprintln!(
        "stock host {}: kernel alone p50 {:?} p99 {:?} ({} late, flood {} SYN/s); \
         tcp-guard p50 {:?} p99 {:?} ({} late, flood {} SYN/s)",
        if v6 { "IPv6" } else { "IPv4" },
        kernel[CLIENTS / 2],
        p99(&kernel, 0),
        late(&kernel),
        kernel_report.rate() as u64,
        guarded[CLIENTS / 2],
        p99(&guarded, 0),
        late(&guarded),
        guard_report.rate() as u64,
    );
    // Each ran for as long as its clients took, which is speed-dependent:
    // what matters is that it was in full swing meanwhile.
    assert!(
        [&kernel_report, &guard_report]
            .iter()
            .all(|r| r.sent > 1_000 && r.rate() > 10_000.0),
        "both floods ran: {kernel_report:?} {guard_report:?}"
    );
    // A veth may lose a client's SYN now and then on these shared cores,
    // whatever defends the listener: one such client is allowed beyond the
    // kernel's own, and left out of the percentile.
    assert!(
        late(&guarded) <= late(&kernel) + LATE_ALLOWED,
        "no client waits for a SYN retransmission that the kernel alone would not: {guarded:?} vs {kernel:?}"
    );
    // Below a SYN retransmission (1 s), what differs here is the scheduling
    // of two shared cores running other tests' floods too.
    let slack = Duration::from_millis(50);
    assert!(
        p99(&guarded, LATE_ALLOWED) <= p99(&kernel, 0) + slack,
        "p99 no worse than the kernel alone: {guarded:?} vs {kernel:?}"
    );
    assert_eq!(
        ours, reference,
        "a cookie connection negotiates what the listener itself does"
    );
    let (snd, rcv) = ours.wscale.expect("window scaling");
    assert_eq!(
        server_side,
        Some((rcv, snd)),
        "the server's socket scales windows as the client expects"
    );
    assert!(ours.sack, "SACK, as the kernel's own cookies keep it");
    assert!(
        counter(&stats, "syn_cookie_sent") >= guard_report.sent / 2,
        "answered from XDP: {stats}"
    );
    assert!(counter(&stats, "cookie_ack_valid") >= CLIENTS as u64, "{stats}");

    // Stopping the daemon restores what it changed.
    daemon.stop().expect("stop");
    assert_eq!(cookie_sysctls(&lab), stock(), "restored when the daemon stops");
}

#[test]
fn ipv4_a_stock_host_serves_new_clients_no_slower_than_the_kernel_alone() {
    let _serial = one_flood_at_a_time();
    a_stock_host_serves_new_clients_no_slower_than_the_kernel_alone(false);
}

#[test]
fn ipv6_a_stock_host_serves_new_clients_no_slower_than_the_kernel_alone() {
    let _serial = one_flood_at_a_time();
    a_stock_host_serves_new_clients_no_slower_than_the_kernel_alone(true);
}

/// Waits until the fast path answers the flood with cookies (the daemon
/// has the kernel settings for them in place).
fn cookies_answered(lab: &Lab) {
    let before = counter(&stats_json(&lab.server_iface), "syn_cookie_sent");
    wait_for("the flood answered with cookies", Duration::from_secs(5), || {
        counter(&stats_json(&lab.server_iface), "syn_cookie_sent") > before + 1000
    });
}

/// Waits until the server namespace has the stock settings again.
fn restored_within(lab: &Lab, daemon: &Daemon, limit: Duration) {
    let deadline = Instant::now() + limit;
    while cookie_sysctls(lab) != stock() {
        assert!(
            Instant::now() < deadline,
            "the settings restored within {limit:?}: {}\n{}",
            daemon.log(),
            stats_json(&lab.server_iface)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The settings are held exactly while cookies are answered: restored after
/// attack mode, by the successor of a daemon killed during an attack, and
/// by `detach` where no daemon followed.
#[test]
fn the_kernel_settings_are_held_only_while_cookies_are_answered() {
    let _serial = one_flood_at_a_time();
    let lab = Lab::new().expect("lab");
    let _client_xdp = lab.receive_xdp_tx().expect("XDP on the client's end");
    let server = SocketAddr::new(lab.server_addr(false), PORT);
    let _listener = Server::start(listen(&lab.server, server, 128).expect("listen"));
    // Half-open flows admitted before attack mode expire quickly, so that it ends.
    let settings = [ATTACK_AT_4_HALF_OPEN, QUICK_LEAVE, SYN_RCVD_4S].concat();
    let attack = |seconds: u64| {
        let flood = Flood::start(
            &lab,
            server.ip(),
            random_sources(false),
            5_000,
            Duration::from_secs(seconds),
        );
        wait_for("attack mode", Duration::from_secs(10), || attack_active(&lab));
        wait_for("the settings cookies need", Duration::from_secs(5), || {
            cookie_sysctls(&lab) == held_for_cookies()
        });
        flood
    };

    let daemon = Daemon::start(&lab.server, &lab.server_iface, &settings).expect("start");
    let flood = attack(3);
    daemon.wait_for_line("event=sysctls_set", Duration::from_secs(2));
    flood.stop();
    // Attack mode ends 2 s after the flood; the settings 10 s after that.
    wait_for("attack mode to end", Duration::from_secs(20), || {
        !attack_active(&lab)
    });
    assert_eq!(
        cookie_sysctls(&lab),
        held_for_cookies(),
        "kept for the last cookies' ACKs"
    );
    restored_within(&lab, &daemon, Duration::from_secs(20));
    daemon.wait_for_line("event=sysctls_restored", Duration::from_secs(2));

    // Killed during an attack: the successor restores them once it is over.
    let flood = attack(3);
    daemon.stop_with(libc::SIGKILL).expect("kill -9");
    assert_eq!(
        cookie_sysctls(&lab),
        held_for_cookies(),
        "the fast path still answers cookies"
    );
    let successor = Daemon::start(&lab.server, &lab.server_iface, &settings).expect("restart");
    // Logged after "guarding", which is all `start` waits for.
    successor.wait_for_line("a previous daemon on", Duration::from_secs(5));
    flood.stop();
    restored_within(&lab, &successor, Duration::from_secs(40));

    // Killed again, and detached by hand: detach restores them.
    let flood = attack(2);
    successor.stop_with(libc::SIGKILL).expect("kill -9");
    flood.stop();
    let out = run(lab
        .server
        .command(tcp_guard_bin())
        .args(["detach", "--iface", &lab.server_iface]))
    .expect("detach");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restored the kernel settings"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(cookie_sysctls(&lab), stock());
}

/// Connections a few clients complete (connect, 1 KiB each way, close)
/// within `window`, each client from its own addresses in turn: real load
/// comes from many clients, and one address alone would meet the per-source
/// SYN rate limit (200/s by default).
fn throughput(lab: &Lab, addresses: &[IpAddr], server: SocketAddr, window: Duration) -> usize {
    const CLIENTS: usize = 4;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let until = Instant::now() + window;
    std::thread::scope(|scope| {
        for own in addresses.chunks(addresses.len().div_ceil(CLIENTS)) {
            let done = &done;
            scope.spawn(move || {
                for local in own.iter().cycle() {
                    if Instant::now() >= until {
                        break;
                    }
                    let local = SocketAddr::new(*local, 0);
                    let connected = lab
                        .client
                        .enter(move || connect_from(local, server, Duration::from_secs(1)))
                        .expect("enter");
                    if let Ok(mut stream) = connected {
                        echo_round_trip(&mut stream, 1024);
                        if Instant::now() < until {
                            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    done.into_inner()
}

/// Under two floods at once, tcp-guard's defaults on a stock host keep the
/// legitimate throughput the kernel's own cookies keep, measured in
/// alternating rounds in one lab (the machine is shared and noisy: one round
/// of either can be far off; the sums over the rounds are compared, within
/// a tenth).
#[test]
fn under_two_floods_the_defaults_keep_at_least_what_kernel_cookies_keep() {
    let _serial = one_flood_at_a_time();
    const ROUNDS: usize = 3;
    const WINDOW: Duration = Duration::from_secs(3);
    let lab = Lab::new().expect("lab");
    let _client_xdp = lab.receive_xdp_tx().expect("XDP on the client's end");
    let server = SocketAddr::new(lab.server_addr(false), PORT);
    let _echo = Server::echo(listen(&lab.server, server, 128).expect("listen"));
    let mut fresh = FreshAddresses::new(false);
    let addresses: Vec<IpAddr> = (0..32).map(|_| fresh.take(&lab)).collect();
    let calm = throughput(&lab, &addresses, server, WINDOW);
    let floods = || {
        [0, 1].map(|_| {
            Flood::start(
                &lab,
                server.ip(),
                random_sources(false),
                100_000,
                Duration::from_secs(20),
            )
        })
    };
    let (mut kernel, mut guarded) = (0, 0);
    for _ in 0..ROUNDS {
        let running = floods();
        std::thread::sleep(Duration::from_millis(500));
        kernel += throughput(&lab, &addresses, server, WINDOW);
        drop(running);

        let daemon = Daemon::start(&lab.server, &lab.server_iface, &[]).expect("start tcp-guard");
        let running = floods();
        wait_for("attack mode", Duration::from_secs(10), || attack_active(&lab));
        cookies_answered(&lab);
        guarded += throughput(&lab, &addresses, server, WINDOW);
        drop(running);
        daemon.stop().expect("stop");
    }
    eprintln!(
        "two floods: {} connections in {WINDOW:?} without a flood; per round under the floods, \
         kernel cookies alone {:.0}, tcp-guard's defaults {:.0}",
        calm,
        kernel as f64 / ROUNDS as f64,
        guarded as f64 / ROUNDS as f64
    );
    assert!(calm > 0 && kernel > 0, "the lab serves clients");
    // Measured 5509 against 5244 a round here; a round of either can be
    // 10 % off on these shared cores, the sums less so.
    assert!(
        guarded * 10 >= kernel * 9,
        "tcp-guard keeps the kernel's throughput: {guarded} vs {kernel} connections over {ROUNDS} rounds"
    );
}
