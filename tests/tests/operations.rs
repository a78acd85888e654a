//! Operating tcp-guard: surviving its daemon (kill -9, hand-over), detach,
//! status, several interfaces, refusing unprivileged users, hostile packets,
//! and bounded resources under millions of spoofed sources. Needs root.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::atomic::AtomicBool,
    time::Duration,
};

use tcp_guard_tests::{
    daemon::{Daemon, counter, stats_json, tcp_guard, tcp_guard_bin},
    flood::{FloodSpec, Sources, flood},
    inject::Injector,
    lab::{Lab, listen, run},
    packets::{ACK, FIN, PSH, RST, SYN, TcpPacket, ethernet},
    scenario::{ATTACK_AT_4_HALF_OPEN, FreshAddresses, GLOBAL_12, PORT, timed_connect, wait_for},
};

fn xdp_prog_id(lab: &Lab) -> Option<String> {
    let out = lab
        .server
        .ip(&["link", "show", &lab.server_iface])
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("prog/xdp id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

fn status_json() -> serde_json::Value {
    let out = tcp_guard(&["status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn instance<'a>(status: &'a serde_json::Value, iface: &str) -> &'a serde_json::Value {
    status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["iface"] == iface)
        .unwrap_or_else(|| panic!("{iface} not in {status}"))
}

/// A held connection that must keep working through whatever the test does.
struct Held {
    client: TcpStream,
    server: TcpStream,
}

impl Held {
    fn open(lab: &Lab, listener: &TcpListener, addr: SocketAddr) -> Held {
        let (client, server) = lab.connect_pair(listener, addr).expect("connect");
        Held { client, server }
    }

    fn exchange(&mut self) {
        let mut buf = [0u8; 4];
        self.client.write_all(b"ping").expect("client write");
        self.server.read_exact(&mut buf).expect("server read");
        self.server.write_all(b"pong").expect("server write");
        self.client.read_exact(&mut buf).expect("client read");
        assert_eq!(&buf, b"pong");
    }
}

#[test]
fn a_killed_daemon_leaves_the_host_protected_and_its_successor_adopts_the_state() {
    let lab = Lab::new().expect("lab");
    lab.server.sysctl("net.ipv4.tcp_syncookies", "0").expect("sysctl");
    let settings = [GLOBAL_12, ATTACK_AT_4_HALF_OPEN].concat();
    let mut daemon = Daemon::start(&lab.server, &lab.server_iface, &settings).expect("start");
    let iface = lab.server_iface.clone();
    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let listener = listen(&lab.server, addr, 16).expect("listen");
    let mut held = Held::open(&lab, &listener, addr);
    let block = tcp_guard(&["block", "add", "--iface", &iface, "198.19.77.0/24"]);
    assert!(
        block.status.success(),
        "{}",
        String::from_utf8_lossy(&block.stderr)
    );

    // A flood puts it in attack mode; then the daemon dies hard.
    let injector = Injector::open(&lab.client, &lab.client_iface).expect("injector");
    let spec = FloodSpec {
        dst: addr.ip(),
        dst_port: PORT,
        dst_mac: Lab::mac(&lab.server, &iface).expect("MAC"),
        sources: Sources::Random {
            network: "198.19.0.0".parse().unwrap(),
            prefix_len: 16,
        },
        rate: 10_000,
        count: 30_000,
        duration: Duration::from_secs(3),
    };
    flood(&injector, &spec, &AtomicBool::new(false)).expect("flood");
    let before = stats_json(&iface);
    assert_eq!(before["attack"]["active"], true, "{before}");
    let pid = daemon.pid();
    let status = daemon.stop_with(libc::SIGKILL).expect("kill -9");
    assert!(!status.success());

    // Still attached, still enforcing, and status says the daemon is gone.
    assert!(
        xdp_prog_id(&lab).is_some(),
        "XDP must stay attached after kill -9"
    );
    let orphan = status_json();
    assert_eq!(instance(&orphan, &iface)["daemon"]["running"], false, "{orphan}");
    assert_eq!(instance(&orphan, &iface)["daemon"]["pid"], pid);
    let report = flood(&injector, &spec, &AtomicBool::new(false)).expect("flood without a daemon");
    let during = stats_json(&iface);
    let dropped = counter(&during, "drop_challenge") - counter(&before, "drop_challenge");
    assert!(
        report.sent > 1000 && dropped * 100 >= report.sent * 99,
        "the flood is still dropped without a daemon: {dropped} of {} SYNs; {during}",
        report.sent
    );
    listener.set_nonblocking(false).expect("blocking");
    let fresh = lab
        .client
        .enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap();
    assert!(
        fresh.is_ok(),
        "a real client still connects (verified source) without a daemon"
    );
    held.exchange();

    // The successor adopts flows, blocks and counters.
    let successor = Daemon::start(&lab.server, &iface, &settings).expect("restart");
    assert!(
        successor.log().contains("adopted the state"),
        "{}",
        successor.log()
    );
    let after = stats_json(&iface);
    assert!(
        counter(&after, "syn") >= counter(&during, "syn"),
        "counters kept: {after}"
    );
    assert!(
        after["flows"]["established"].as_u64().expect("flows") >= 1,
        "{after}"
    );
    let blocks = tcp_guard(&["block", "list", "--iface", &iface, "--json"]);
    let blocks: serde_json::Value = serde_json::from_slice(&blocks.stdout).expect("JSON");
    assert_eq!(blocks["blocked"][0]["cidr"], "198.19.77.0/24", "{blocks}");
    assert_eq!(instance(&status_json(), &iface)["daemon"]["running"], true);
    held.exchange();
}

#[test]
fn replace_hands_over_without_detaching_and_detach_removes_everything() {
    let lab = Lab::new().expect("lab");
    let first = Daemon::start(&lab.server, &lab.server_iface, &[]).expect("start");
    let iface = lab.server_iface.clone();
    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let listener = listen(&lab.server, addr, 16).expect("listen");
    let mut held = Held::open(&lab, &listener, addr);
    let old_prog = xdp_prog_id(&lab).expect("attached");

    let second = Daemon::start(&lab.server, &iface, &["--replace"]).expect("take over");
    assert!(second.log().contains("adopted the state"), "{}", second.log());
    assert!(first.log().contains("handing"), "{}", first.log());
    let new_prog = xdp_prog_id(&lab).expect("still attached");
    assert_ne!(old_prog, new_prog, "the new program runs in the same link");
    held.exchange();
    let flows = tcp_guard(&["flows", "--iface", &iface, "--json", "--state", "estab"]);
    let flows: serde_json::Value = serde_json::from_slice(&flows.stdout).expect("JSON");
    assert_eq!(
        flows["flows"].as_array().expect("flows").len(),
        1,
        "the flow table came along: {flows}"
    );

    // detach with a daemon running: it is stopped and everything goes.
    let out = tcp_guard(&["detach", "--iface", &iface]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(xdp_prog_id(&lab).is_none());
    assert!(!Path::new("/sys/fs/bpf/tcp-guard").join(&iface).exists());
    drop(second);

    // detach with no daemon left (killed): the pinned links are removed too.
    let third = Daemon::start(&lab.server, &iface, &[]).expect("start again");
    third.stop_with(libc::SIGKILL).expect("kill -9");
    assert!(xdp_prog_id(&lab).is_some());
    let out = tcp_guard(&["detach", "--iface", &iface]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no daemon was running"));
    assert!(xdp_prog_id(&lab).is_none(), "detached");
    let egress = run(lab
        .server
        .command("tc")
        .args(["filter", "show", "dev", &iface, "egress"]))
    .expect("tc");
    assert!(String::from_utf8_lossy(&egress.stdout).trim().is_empty());
    assert!(!Path::new("/sys/fs/bpf/tcp-guard").join(&iface).exists());
    let again = tcp_guard(&["detach", "--iface", &iface]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not attached"));
}

#[test]
fn several_interfaces_each_have_their_own_state_and_limits() {
    let lab = Lab::new().expect("lab");
    // A second pair on the same server namespace.
    let second = format!("{}x", &lab.server_iface[..lab.server_iface.len() - 1]);
    let peer = format!("{}y", &lab.server_iface[..lab.server_iface.len() - 1]);
    lab.add_link(&second, &peer, None).expect("second veth");
    let a = Daemon::start(&lab.server, &lab.server_iface, &["--set", "limits.syn_rate=11"]).expect("first");
    let b = Daemon::start(&lab.server, &second, &["--set", "limits.syn_rate=22"]).expect("second");
    let rate = |iface: &str| {
        let out = tcp_guard(&["limits", "show", "--iface", iface, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")["limits.syn_rate"].clone()
    };
    assert_eq!(rate(&lab.server_iface), 11);
    assert_eq!(rate(&second), 22);
    let status = status_json();
    assert_eq!(instance(&status, &lab.server_iface)["daemon"]["running"], true);
    assert_eq!(instance(&status, &second)["daemon"]["running"], true);
    let ambiguous = tcp_guard(&["stats"]);
    assert!(String::from_utf8_lossy(&ambiguous.stderr).contains("choose one with --iface"));
    drop(b);
    drop(a);
}

#[test]
fn unprivileged_users_cannot_read_or_change_the_guard() {
    let lab = Lab::new().expect("lab");
    let _daemon = Daemon::start(&lab.server, &lab.server_iface, &[]).expect("start");
    for args in [
        vec!["stats", "--iface", &lab.server_iface],
        vec!["block", "add", "--iface", &lab.server_iface, "198.19.0.0/16"],
        vec!["limits", "set", "--iface", &lab.server_iface, "limits.syn_rate=1"],
        vec!["detach", "--iface", &lab.server_iface],
    ] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(tcp_guard_bin())
            .args(&args)
            .output()
            .expect("setpriv");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("root"), "{args:?} must say it needs root: {err}");
    }
    let limits = tcp_guard(&["limits", "show", "--iface", &lab.server_iface, "--json"]);
    let limits: serde_json::Value = serde_json::from_slice(&limits.stdout).expect("JSON");
    assert_eq!(limits["limits.syn_rate"], 200, "nothing changed");
}

#[test]
fn hostile_packets_are_counted_passed_and_leave_real_connections_alone() {
    let lab = Lab::new().expect("lab");
    let _daemon = Daemon::start(&lab.server, &lab.server_iface, &[]).expect("start");
    let iface = lab.server_iface.clone();
    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let listener = listen(&lab.server, addr, 16).expect("listen");
    let mut held = Held::open(&lab, &listener, addr);
    let injector = Injector::open(&lab.client, &lab.client_iface).expect("injector");
    let mac = Lab::mac(&lab.server, &iface).expect("MAC");
    let spoof: IpAddr = "198.19.66.1".parse().unwrap();
    // Each packet its own flow: none may build on another's state.
    let next_port = std::cell::Cell::new(5000u16);
    let pkt = |flags: u8| {
        next_port.set(next_port.get() + 1);
        let mut p = TcpPacket::new(spoof, addr.ip(), next_port.get(), PORT, flags);
        p.dst_mac = mac;
        p
    };
    let send = |frame: Vec<u8>| injector.send(&frame).expect("send");
    let before = stats_json(&iface);

    for flags in [SYN | FIN, SYN | RST, 0, 0xff, FIN] {
        send(pkt(flags).frame());
    }
    let mut bad_checksum = pkt(SYN).frame();
    bad_checksum[14 + 20 + 16] ^= 0xff;
    send(bad_checksum);
    let mut zero_window = pkt(ACK | PSH);
    zero_window.window = 0;
    send(zero_window.frame());
    let mut fragment = pkt(SYN).ip_packet();
    fragment[6] = 0x20; // more fragments
    fragment[10..12].copy_from_slice(&[0, 0]);
    let sum = tcp_guard_tests::packets::checksum(&fragment[..20], 0);
    fragment[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = ethernet(0x0800, None, &fragment);
    frame[..6].copy_from_slice(&mac);
    send(frame);
    let mut fragment6 = TcpPacket::new(
        "2001:2:0:66::1".parse().unwrap(),
        lab.server_addr(true),
        5555,
        PORT,
        SYN,
    )
    .ip_packet();
    fragment6[6] = 44; // a fragment header comes first
    let mut frame6 = ethernet(0x86dd, None, &fragment6);
    frame6[..6].copy_from_slice(&mac);
    send(frame6);
    send(pkt(RST | ACK).frame());

    wait_for("the odd packets to be counted", Duration::from_secs(2), || {
        let now = stats_json(&iface);
        counter(&now, "ipv6_extension") > counter(&before, "ipv6_extension")
    });
    let after = stats_json(&iface);
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    assert_eq!(
        delta("tcp_other_flags"),
        5,
        "SYN+FIN, SYN+RST, none, all, FIN alone: {after}"
    );
    assert_eq!(delta("ipv4_fragment"), 1);
    assert_eq!(delta("ipv6_extension"), 1);
    assert_eq!(delta("invalid_bad_flags"), 5);
    assert_eq!(
        delta("invalid_no_flow"),
        2,
        "the zero-window ACK and the RST: no such flow"
    );
    assert_eq!(
        delta("syn"),
        1,
        "the SYN with a bad checksum (checksums are the kernel's to check)"
    );
    assert_eq!(
        delta("drop_blocked") + delta("drop_challenge"),
        0,
        "passed: the kernel drops them"
    );
    held.exchange();
}

/// VmRSS of a process, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_million_spoofed_sources_stay_within_the_tables_and_established_flows_survive() {
    const HALF_OPEN: u64 = 4096;
    let lab = Lab::new().expect("lab");
    lab.server.sysctl("net.ipv4.tcp_syncookies", "0").expect("sysctl");
    lab.server
        .sysctl("net.ipv4.tcp_synack_retries", "0")
        .expect("sysctl");
    // No limits and no attack mode: every spoofed SYN goes into the half-open
    // table, which fills, and expires behind the flood.
    let mut daemon = Daemon::start(
        &lab.server,
        &lab.server_iface,
        &[
            "--max-half-open",
            "4096",
            "--set",
            "limits.global_half_open=0",
            "--set",
            "attack.enter_half_open=0",
            "--set",
            "attack.leave_half_open=0",
            "--set",
            "attack.enter_syn_rate=0",
            "--set",
            "attack.leave_syn_rate=0",
            "--set",
            "limits.per_prefix_half_open=0",
            "--set",
            "limits.per_port_half_open=0",
            "--set",
            "timeouts.syn_rcvd=2s",
        ],
    )
    .expect("start");
    let iface = lab.server_iface.clone();
    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let listener = listen(&lab.server, addr, 4096).expect("listen");
    let mut held = Held::open(&lab, &listener, addr);
    let pid = daemon.pid();
    let rss_before = rss_kb(pid);

    let injector = Injector::open(&lab.client, &lab.client_iface).expect("injector");
    let spec = FloodSpec {
        dst: addr.ip(),
        dst_port: PORT,
        dst_mac: Lab::mac(&lab.server, &iface).expect("MAC"),
        sources: Sources::Random {
            network: "198.19.0.0".parse().unwrap(),
            prefix_len: 16,
        },
        rate: 0,
        count: 2_500_000,
        duration: Duration::from_secs(120),
    };
    let report = flood(&injector, &spec, &AtomicBool::new(false)).expect("flood");
    let stats = stats_json(&iface);
    assert!(report.sent >= 2_000_000, "the soak sent {report:?}");
    assert!(
        stats["tables"]["half_open"]["entries"].as_u64().expect("entries") <= HALF_OPEN,
        "{stats}"
    );
    assert!(
        counter(&stats, "drop_table_full") > 0,
        "the half-open table filled: {stats}"
    );
    assert!(
        counter(&stats, "to_syn_rcvd") > HALF_OPEN,
        "and was refilled as it expired: {stats}"
    );
    assert_eq!(
        stats["flows"]["established"], 1,
        "the established flow was never evicted: {stats}"
    );
    held.exchange();
    let rss_after = rss_kb(pid);
    assert!(
        rss_after < rss_before + 16 * 1024,
        "daemon memory stays flat: {rss_before} kB before, {rss_after} kB after"
    );
    wait_for("the half-open table to drain", Duration::from_secs(15), || {
        stats_json(&iface)["tables"]["half_open"]["entries"] == 0
    });
    assert!(daemon.stop().expect("stop").success());
}

/// One failed control-loop round once ended the daemon; it carries on now,
/// logs and counts the failure, and retries less often.
#[test]
fn a_failing_control_loop_round_does_not_end_the_daemon() {
    let lab = Lab::new().expect("lab");
    let mut daemon = Daemon::start(&lab.server, &lab.server_iface, &[]).expect("start");
    // A pin removed by hand: the round that reads it fails from now on.
    let pin = Path::new("/sys/fs/bpf/tcp-guard")
        .join(&lab.server_iface)
        .join("OFFENDERS");
    std::fs::remove_file(&pin).expect("remove a pin");
    wait_for("a failed round logged", Duration::from_secs(10), || {
        daemon.log().contains("event=tick_failed")
    });
    std::thread::sleep(Duration::from_secs(2));
    let status = status_json();
    let me = instance(&status, &lab.server_iface);
    assert_eq!(me["daemon"]["running"], true, "{status}\n{}", daemon.log());
    assert!(
        me["daemon"]["tick_errors"].as_u64().is_some_and(|n| n >= 1),
        "{status}"
    );
    assert!(daemon.pid() > 0);
    let stopped = daemon.stop().expect("stop");
    assert!(stopped.success(), "it still stops cleanly: {stopped}");
}

/// Without its daemon, nothing the fast path does could be undone: attack
/// mode would never end and half-open counts would never come down. So past
/// 30 s without a heartbeat it stands aside and the kernel answers alone: new
/// clients then connect without waiting for a retransmission. On a host with
/// SYN cookies off (the retransmit challenge) and on a stock host (cookies
/// from XDP, the kernel's own after).
fn without_its_daemon_the_fast_path_stands_aside(stock: bool) {
    let lab = Lab::new().expect("lab");
    if !stock {
        lab.server.sysctl("net.ipv4.tcp_syncookies", "0").expect("sysctl");
    }
    // The kernel gives up the flood's handshakes within seconds, so that
    // what the client meets later is tcp-guard, not a full queue.
    lab.server
        .sysctl("net.ipv4.tcp_synack_retries", "1")
        .expect("sysctl");
    let settings = [GLOBAL_12, ATTACK_AT_4_HALF_OPEN].concat();
    let daemon = Daemon::start(&lab.server, &lab.server_iface, &settings).expect("start");
    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let _listener = listen(&lab.server, addr, 16).expect("listen");
    let _client_xdp = lab.receive_xdp_tx().expect("XDP on the client's end");
    let injector = Injector::open(&lab.client, &lab.client_iface).expect("injector");
    let spec = FloodSpec {
        dst: addr.ip(),
        dst_port: PORT,
        dst_mac: Lab::mac(&lab.server, &lab.server_iface).expect("MAC"),
        sources: Sources::Random {
            network: "198.19.0.0".parse().unwrap(),
            prefix_len: 16,
        },
        rate: 10_000,
        count: 20_000,
        duration: Duration::from_secs(2),
    };
    flood(&injector, &spec, &AtomicBool::new(false)).expect("flood");
    assert_eq!(stats_json(&lab.server_iface)["attack"]["active"], true);
    daemon.stop_with(libc::SIGKILL).expect("kill -9");

    let mut fresh = FreshAddresses::new(false);
    if !stock {
        let (_, challenged) = timed_connect(&lab, fresh.take(&lab), addr);
        assert!(
            challenged >= Duration::from_millis(900),
            "right after the daemon died the fast path still challenges: {challenged:?}"
        );
    }
    std::thread::sleep(Duration::from_secs(32));
    for _ in 0..5 {
        let (_, took) = timed_connect(&lab, fresh.take(&lab), addr);
        assert!(
            took < Duration::from_millis(500),
            "30 s after its daemon died (stock host: {stock}), a new client connects at once: {took:?}"
        );
    }
}

#[test]
fn without_its_daemon_the_fast_path_stands_aside_after_30_s() {
    without_its_daemon_the_fast_path_stands_aside(false);
}

#[test]
fn on_a_stock_host_without_its_daemon_new_clients_connect_at_once() {
    without_its_daemon_the_fast_path_stands_aside(true);
}

/// Nothing tcp-guard left on the lab's server interface: no program
/// attached, no pins.
fn assert_nothing_left(lab: &Lab, what: &str) {
    assert!(
        xdp_prog_id(lab).is_none(),
        "{what}: an XDP program stays attached"
    );
    let egress = run(lab
        .server
        .command("tc")
        .args(["filter", "show", "dev", &lab.server_iface, "egress"]))
    .expect("tc");
    assert!(
        String::from_utf8_lossy(&egress.stdout).trim().is_empty(),
        "{what}: a TC program stays attached"
    );
    assert!(
        !Path::new("/sys/fs/bpf/tcp-guard")
            .join(&lab.server_iface)
            .exists(),
        "{what}: pins are left"
    );
    assert!(
        !Path::new("/run/tcp-guard-monitor")
            .join(format!("{}.sock", lab.server_iface))
            .exists(),
        "{what}: the monitoring socket is left"
    );
}

/// The pinned INFO array of the lab's instance, writable.
fn info_map(lab: &Lab) -> aya::maps::Array<aya::maps::MapData, u64> {
    let path = Path::new("/sys/fs/bpf/tcp-guard")
        .join(&lab.server_iface)
        .join("INFO");
    let data = aya::maps::MapData::from_pin(&path).expect("open INFO");
    aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("INFO is an array")
}

/// INFO's entries (tcp-guard/src/control.rs): the daemon's pid, the layout.
const INFO_PID: u32 = 0;
const INFO_LAYOUT: u32 = 4;

/// `run --replace` once asked the running daemon to hand over before it had
/// checked the pinned state or bound its metrics address: one that then
/// failed left the interface without a daemon. Now it fails first.
#[test]
fn a_replace_that_fails_leaves_the_running_daemon_guarding() {
    let lab = Lab::new().expect("lab");
    let iface = lab.server_iface.clone();
    let mut first = Daemon::start(&lab.server, &iface, &[]).expect("start");
    let prog = xdp_prog_id(&lab).expect("attached");
    let replace = |extra: &[&str]| {
        let out = lab
            .server
            .command(tcp_guard_bin())
            .args(["run", "--iface", &iface, "--replace"])
            .args(extra)
            .output()
            .expect("run --replace");
        assert_eq!(out.status.code(), Some(1), "{extra:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // A metrics address another program holds.
    let taken: SocketAddr = "127.0.0.1:9967".parse().unwrap();
    let holder = listen(&lab.server, taken, 1).expect("hold the address");
    let err = replace(&["--metrics", "127.0.0.1:9967"]);
    assert!(err.contains("cannot serve metrics on 127.0.0.1:9967"), "{err}");
    drop(holder);

    // Pinned state of another layout.
    let mut info = info_map(&lab);
    let layout = info.get(&INFO_LAYOUT, 0).expect("layout");
    info.set(INFO_LAYOUT, 1, 0).expect("write layout");
    let err = replace(&[]);
    assert!(err.contains("is from an incompatible tcp-guard"), "{err}");
    info.set(INFO_LAYOUT, layout, 0).expect("restore layout");

    assert!(first.running(), "the running daemon goes on: {}", first.log());
    assert!(!first.log().contains("handing"), "{}", first.log());
    assert_eq!(xdp_prog_id(&lab), Some(prog), "its program stays attached");
    assert_eq!(instance(&status_json(), &iface)["daemon"]["running"], true);

    // Nothing stands in the way any more: the hand-over happens.
    let second =
        Daemon::start(&lab.server, &iface, &["--replace", "--metrics", "127.0.0.1:9967"]).expect("take over");
    assert!(first.log().contains("handing"), "{}", first.log());
    assert!(second.log().contains("adopted the state"), "{}", second.log());
}

/// A signal during start-up once killed the daemon half-way, its programs
/// attached or its maps pinned with nobody to remove them. Now it waits
/// for the control loop, which stops as it would later: at whatever point
/// of the start-up SIGTERM comes, nothing is left.
#[test]
fn a_sigterm_during_start_up_leaves_nothing_behind() {
    let lab = Lab::new().expect("lab");
    for delay_ms in [0, 5, 20, 50, 100, 150, 200, 300, 400, 500, 650, 800] {
        let mut daemon = Daemon::launch(&lab.server, &lab.server_iface, &[]).expect("launch");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let status = daemon.end(libc::SIGTERM).unwrap_or_else(|e| {
            panic!(
                "SIGTERM {delay_ms} ms after the start: {e:#}; its log:\n{}",
                daemon.log()
            )
        });
        let what = format!(
            "SIGTERM {delay_ms} ms after the start ({status}); its log:\n{}",
            daemon.log()
        );
        assert_nothing_left(&lab, &what);
    }
}

/// The daemon logs to stderr; a reader that went away (a log collector
/// restarting) once killed it with SIGPIPE at its next line.
#[test]
fn the_daemon_outlives_the_reader_of_its_log() {
    let lab = Lab::new().expect("lab");
    let iface = lab.server_iface.clone();
    let mut child = lab
        .server
        .command(tcp_guard_bin())
        .args(["run", "--iface", &iface])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let mut log = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("guarding ") {
        line.clear();
        let read = std::io::BufRead::read_line(&mut log, &mut line).expect("read the log");
        assert!(read > 0, "tcp-guard run ended before it attached");
    }
    drop(log);
    // A reload logs what it does: into the closed pipe.
    let out = tcp_guard(&["reload", "--iface", &iface]);
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the daemon must go on without a reader"
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // SAFETY: kill on a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "it stops cleanly: {status}");
    assert_nothing_left(&lab, "after SIGTERM");
}

/// `reload`, `detach` and `run --replace` signal the daemon by the pid its
/// INFO records, which may belong to another process by now; they signal it
/// only if it holds the instance's lock.
#[test]
fn a_recorded_pid_that_is_not_the_daemon_is_never_signalled() {
    let lab = Lab::new().expect("lab");
    let iface = lab.server_iface.clone();
    let mut daemon = Daemon::start(&lab.server, &iface, &[]).expect("start");
    let mut bystander = Command::new("sleep").arg("60").spawn().expect("sleep");
    let mut info = info_map(&lab);
    info.set(INFO_PID, u64::from(bystander.id()), 0)
        .expect("write INFO");

    let refused = |out: std::process::Output, what: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains(&format!("pid {}", bystander.id()))
                && err.contains("does not hold the instance's lock")
                && err.contains("nothing was signalled"),
            "{what}: {err}"
        );
    };
    refused(tcp_guard(&["reload", "--iface", &iface]), "reload");
    refused(tcp_guard(&["detach", "--iface", &iface]), "detach");
    let replace = lab
        .server
        .command(tcp_guard_bin())
        .args(["run", "--iface", &iface, "--replace"])
        .output()
        .expect("run --replace");
    refused(replace, "run --replace");
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "the process the pid belongs to was not signalled"
    );
    assert!(daemon.running(), "{}", daemon.log());
    assert!(xdp_prog_id(&lab).is_some());
    assert_eq!(
        instance(&status_json(), &iface)["daemon"]["running"],
        false,
        "status does not take a live pid that holds no lock for the daemon"
    );

    // With the daemon's own pid, both reach it.
    info.set(INFO_PID, u64::from(daemon.pid()), 0)
        .expect("restore INFO");
    assert_eq!(instance(&status_json(), &iface)["daemon"]["running"], true);
    let out = tcp_guard(&["reload", "--iface", &iface]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tcp_guard(&["detach", "--iface", &iface]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_nothing_left(&lab, "after detach");
    bystander.kill().expect("kill sleep");
    bystander.wait().expect("reap sleep");
}

/// `reload --json` says what changed, or why the daemon refused: from a bad
/// file, and from what only the daemon can judge (table sizes, fixed while
/// it runs). The reason is left in /run/tcp-guard, root's only, until stop.
#[test]
fn reload_json_says_what_changed_or_why_it_was_refused() {
    use std::os::unix::fs::PermissionsExt;

    let lab = Lab::new().expect("lab");
    let iface = lab.server_iface.clone();
    let config = std::env::temp_dir().join(format!("tcp-guard-reload-{iface}.toml"));
    std::fs::write(&config, "[limits]\nsyn_rate = 100\n").expect("config");
    let config_arg = config.to_string_lossy().into_owned();
    let daemon = Daemon::start(&lab.server, &iface, &["--config", &config_arg]).expect("start");
    let reload = || {
        let out = tcp_guard(&["reload", "--iface", &iface, "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (
            out.status.code(),
            json,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    std::fs::write(&config, "[limits]\nsyn_rate = 77\n[attack]\ncooldown = \"20s\"\n").expect("config");
    let (code, json, err) = reload();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        json,
        serde_json::json!({
            "iface": iface,
            "reloaded": true,
            "changed": {
                "limits.syn_rate": { "from": 100, "to": 77 },
                "attack.cooldown": { "from": "10s", "to": "20s" },
            },
            "error": null,
        })
    );
    let out = tcp_guard(&["reload", "--iface", &iface]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{iface}: configuration reloaded; no setting changed\n")
    );

    for (text, reason) in [
        (
            "[limits]\nsyn_rate = 5\nbogus = 1\n",
            format!("in {config_arg}: unknown setting \"limits.bogus\"; limits has:"),
        ),
        (
            "[tables]\nmax_flows = 1024\n",
            "tables.* cannot change while running".to_string(),
        ),
    ] {
        std::fs::write(&config, text).expect("config");
        let (code, json, err) = reload();
        assert_eq!(code, Some(1), "a refused reload is an error: {err}");
        assert_eq!(json["iface"], iface.as_str());
        assert_eq!(json["reloaded"], false, "{json}");
        assert_eq!(json["changed"], serde_json::json!({}), "{json}");
        let error = json["error"].as_str().expect("error");
        assert!(error.contains(&reason), "{text:?}: {error}");
        assert!(err.contains(&reason), "and on stderr: {err}");
    }
    let note = tcp_guard::instance::reload_error_path(&iface);
    let mode = std::fs::metadata(&note)
        .expect("the reason is left")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let limits = tcp_guard(&["limits", "show", "--iface", &iface, "--json"]);
    let limits: serde_json::Value = serde_json::from_slice(&limits.stdout).expect("JSON");
    assert_eq!(limits["limits.syn_rate"], 77, "the running configuration stays");

    assert!(daemon.stop().expect("stop").success());
    assert!(!note.exists(), "a stop removes the reason");
    std::fs::remove_file(&config).expect("remove config");
}

/// aya reuses a pinned map of the right name whatever it holds; a daemon
/// checks every one against the programs' definitions before it adopts the
/// state, and refuses, naming the map, the field and the fix. The flow
/// tables may keep another size than the settings ask.
#[test]
fn pinned_maps_that_do_not_fit_are_refused_and_left_alone() {
    let lab = Lab::new().expect("lab");
    let iface = lab.server_iface.clone();
    let dir = Path::new("/sys/fs/bpf/tcp-guard").join(&iface);
    Daemon::start(
        &lab.server,
        &iface,
        &["--max-flows", "1Ki", "--max-half-open", "2Ki"],
    )
    .expect("start")
    .stop_with(libc::SIGKILL)
    .expect("kill -9");
    let successor = Daemon::start(&lab.server, &iface, &[]).expect("adopt tables of other sizes");
    assert!(
        successor
            .log()
            .contains("the adopted flow tables keep their sizes (2048 half-open, 1024 others)"),
        "{}",
        successor.log()
    );
    successor.stop_with(libc::SIGKILL).expect("kill -9");

    // A HEARTBEAT of 4-byte values where the programs keep 8.
    let pin = dir.join("HEARTBEAT");
    std::fs::remove_file(&pin).expect("remove HEARTBEAT");
    let planted: aya::maps::Array<aya::maps::MapData, u32> =
        aya::maps::Array::create(1, 0).expect("create a map");
    planted.pin(&pin).expect("pin it");
    let planted_id = aya::maps::MapInfo::from_pin(&pin).expect("info").id();
    let out = lab
        .server
        .command(tcp_guard_bin())
        .args(["run", "--iface", &iface])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for expected in [
        format!("the pinned map {} does not fit this tcp-guard", pin.display()),
        "its value size is 4 bytes, this tcp-guard's HEARTBEAT needs 8 bytes".to_string(),
        format!("run `tcp-guard detach --iface {iface}`"),
    ] {
        assert!(err.contains(&expected), "{expected:?} missing from: {err}");
    }
    assert_eq!(
        aya::maps::MapInfo::from_pin(&pin).expect("still pinned").id(),
        planted_id,
        "the map is left as it was"
    );
    assert!(xdp_prog_id(&lab).is_some(), "and so is the attached program");

    // The fix the message names.
    let out = tcp_guard(&["detach", "--iface", &iface]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fresh = Daemon::start(&lab.server, &iface, &[]).expect("start afresh");
    assert!(!fresh.log().contains("adopted"), "{}", fresh.log());
}

/// An interface deleted and created again under the same name (a
/// container's veth, a reloaded driver) takes the programs with the old
/// one: the daemon attaches to the new one by itself, keeping its state,
/// and cookie SYN-ACKs follow a changed MTU.
#[test]
fn a_recreated_interface_is_guarded_again_and_a_new_mtu_followed() {
    let lab = Lab::new().expect("lab");
    let (guarded, peer) = (format!("{}a", lab.server_iface), format!("{}b", lab.server_iface));
    let create = || {
        lab.add_link(&guarded, &peer, Some(("198.18.99.1", "198.18.99.2")))
            .expect("veth pair")
    };
    let packets = || counter(&stats_json(&guarded), "packets");
    // A SYN to a closed port: the kernel answers with a reset.
    let ping = || {
        let to: SocketAddr = "198.18.99.1:9".parse().unwrap();
        let refused = lab
            .client
            .enter(move || TcpStream::connect_timeout(&to, Duration::from_millis(300)))
            .expect("enter the client's namespace");
        assert!(refused.is_err(), "nothing listens on port 9");
    };
    create();
    let daemon = Daemon::start(&lab.server, &guarded, &[]).expect("start");
    ping();
    let before = packets();
    assert!(before > 0, "the guard sees the interface's traffic");

    run(lab.server.command("ip").args(["link", "del", &guarded])).expect("delete the interface");
    create();
    wait_for(
        "the daemon to attach to the new interface",
        Duration::from_secs(10),
        || {
            ping();
            packets() > before
        },
    );
    daemon.wait_for_line("was created again", Duration::from_secs(2));

    run(lab
        .server
        .command("ip")
        .args(["link", "set", &guarded, "mtu", "1400"]))
    .expect("MTU");
    wait_for("cookies to follow the MTU", Duration::from_secs(10), || {
        daemon
            .log()
            .contains("cookie SYN-ACKs now offer MSS 1360 (IPv4) / 1340 (IPv6)")
    });
    daemon.stop().expect("stop");
    let gone = lab.server.ip(&["link", "show", &guarded]).expect("ip link");
    assert!(
        !String::from_utf8_lossy(&gone.stdout).contains("xdp"),
        "stopping detaches from the new interface too"
    );
}

/// The config's `[lists]`: at start the daemon puts them on its allow and
/// block lists, marked as from the config; a reload follows the file and
/// leaves what was added at runtime; `check` refuses a bad entry; a restart
/// brings them back from the file.
#[test]
fn lists_in_the_config_follow_the_file_through_reloads_and_restarts() {
    let lab = Lab::new().expect("lab");
    let iface = lab.server_iface.clone();
    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let _listener = listen(&lab.server, addr, 16).expect("listen");
    let mut fresh = FreshAddresses::new(false);
    let blocked = fresh.take(&lab);
    let other = fresh.take(&lab);
    let config = std::env::temp_dir().join(format!("tcp-guard-lists-{iface}.toml"));
    let config_arg = config.to_string_lossy().into_owned();
    let write_config = |allow: &[&str], block: &[String]| {
        let quoted = |list: Vec<String>| {
            list.iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let allow = quoted(allow.iter().map(|c| c.to_string()).collect());
        let block = quoted(block.to_vec());
        std::fs::write(
            &config,
            format!("[lists]\nallow = [{allow}]\nblock = [{block}]\n"),
        )
        .expect("config");
    };
    let list = |which: &str| -> Vec<(String, String)> {
        let out = tcp_guard(&[which, "list", "--iface", &iface, "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let key = if which == "allow" { "allowed" } else { "blocked" };
        json[key]
            .as_array()
            .unwrap_or_else(|| panic!("{json}"))
            .iter()
            .map(|e| {
                (
                    e["cidr"].as_str().expect("cidr").to_string(),
                    e["origin"].as_str().expect("origin").to_string(),
                )
            })
            .collect()
    };
    let entry = |cidr: &str, origin: &str| (cidr.to_string(), origin.to_string());
    let connects = |local: IpAddr| {
        lab.client
            .enter(move || {
                tcp_guard_tests::lab::connect_from(SocketAddr::new(local, 0), addr, Duration::from_secs(2))
                    .is_ok()
            })
            .expect("enter")
    };
    let blocked_host = format!("{blocked}/32");

    write_config(&["203.0.113.0/24", "2001:db8::/32"], &[blocked.to_string()]);
    let daemon = Daemon::start(&lab.server, &iface, &["--config", &config_arg]).expect("start");
    assert_eq!(
        list("allow"),
        [
            entry("2001:db8::/32", "config"),
            entry("203.0.113.0/24", "config")
        ]
    );
    assert_eq!(list("block"), [entry(&blocked_host, "config")]);
    let before = stats_json(&iface);
    assert!(!connects(blocked), "{blocked} is blocked by the config");
    assert!(
        counter(&stats_json(&iface), "drop_blocked") > counter(&before, "drop_blocked"),
        "its SYNs are dropped for the block list"
    );
    assert!(connects(other), "{other} is not listed");
    assert!(connects(lab.client_addr(false)));

    let added = tcp_guard(&["block", "add", "--iface", &iface, "198.19.60.0/24"]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    write_config(&["203.0.113.0/24", "2001:db8::/32", "198.51.100.0/24"], &[]);
    let reload = tcp_guard(&["reload", "--iface", &iface, "--json"]);
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    let reload: serde_json::Value = serde_json::from_slice(&reload.stdout).expect("JSON");
    assert_eq!(
        reload["changed"],
        serde_json::json!({
            "lists.allow": {
                "from": ["2001:db8::/32", "203.0.113.0/24"],
                "to": ["198.51.100.0/24", "2001:db8::/32", "203.0.113.0/24"],
            },
            "lists.block": { "from": [blocked_host], "to": [] },
        })
    );
    assert_eq!(
        list("allow"),
        [
            entry("198.51.100.0/24", "config"),
            entry("2001:db8::/32", "config"),
            entry("203.0.113.0/24", "config")
        ]
    );
    assert_eq!(
        list("block"),
        [entry("198.19.60.0/24", "operator")],
        "the reload removed the config's block and left the runtime one"
    );
    assert!(connects(blocked), "{blocked} is no longer blocked");

    let bad = std::env::temp_dir().join(format!("tcp-guard-lists-bad-{iface}.toml"));
    std::fs::write(&bad, "[lists]\nblock = [\"10.0.0.0/33\"]\n").expect("bad config");
    let check = tcp_guard(&["check", "--config", &bad.to_string_lossy()]);
    assert_eq!(check.status.code(), Some(3), "an invalid configuration");
    assert!(
        String::from_utf8_lossy(&check.stderr)
            .contains("lists.block: \"10.0.0.0/33\": prefix length must be from 0 to 32"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    std::fs::remove_file(&bad).expect("remove bad config");

    write_config(&["203.0.113.0/24"], &[blocked.to_string()]);
    assert!(daemon.stop().expect("stop").success());
    let _daemon = Daemon::start(&lab.server, &iface, &["--config", &config_arg]).expect("restart");
    assert_eq!(list("allow"), [entry("203.0.113.0/24", "config")]);
    assert_eq!(
        list("block"),
        [entry(&blocked_host, "config")],
        "back from the file; the runtime block went with the stop"
    );
    assert!(!connects(blocked), "{blocked} is blocked again");
    std::fs::remove_file(&config).expect("remove config");
}
