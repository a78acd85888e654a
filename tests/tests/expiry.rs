//! The controller expires idle flows by their state's timeout, and counts it.
//! Needs root.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    path::Path,
    time::Duration,
};

use tcp_guard_common::maps;

use tcp_guard_tests::{
    daemon::{Daemon, flows, stats_json},
    inject::Injector,
    lab::Lab,
    packets::{SYN, TcpPacket},
    scenario::wait_for,
};

#[test]
fn unanswered_half_open_flows_expire_in_both_views() {
    let lab = Lab::new().expect("lab");
    let _daemon = start(&lab);
    three_unanswered_syns_expire(&lab);
}

/// A round whose first step fails (the block and allow lists' marks cannot
/// be settled: their pin was removed by hand) still expires flows, and
/// reports the failure.
#[test]
fn a_round_that_cannot_settle_the_list_marks_still_expires_flows() {
    let lab = Lab::new().expect("lab");
    let daemon = start(&lab);
    let pin = Path::new("/sys/fs/bpf/tcp-guard")
        .join(&lab.server_iface)
        .join(maps::LISTS_IN_USE);
    std::fs::remove_file(&pin).expect("remove the pin");
    three_unanswered_syns_expire(&lab);
    assert!(daemon.log().contains("event=tick_failed"), "{}", daemon.log());
}

/// The lab's daemon with a 2 s SYN-RECV timeout, the kernel sending one
/// SYN-ACK and giving up on a request after about a second.
fn start(lab: &Lab) -> Daemon {
    lab.server
        .sysctl("net.ipv4.tcp_synack_retries", "0")
        .expect("sysctl");
    let daemon = Daemon::start(&lab.server, &lab.server_iface, &["--timeout", "syn_rcvd=2s"]).expect("start");
    wait_for("the daemon to log its timeouts", Duration::from_secs(5), || {
        daemon.log().contains("syn_rcvd=2s")
    });
    daemon
}

/// Three spoofed SYNs to a listener open three SYN-RECV flows, which the
/// daemon expires as the kernel drops their requests.
fn three_unanswered_syns_expire(lab: &Lab) {
    let addr = SocketAddr::new(lab.server_addr(false), 8080);
    let _listener = lab
        .server
        .enter(move || TcpListener::bind(addr))
        .unwrap()
        .expect("bind");

    let injector = Injector::open(&lab.client, &lab.client_iface).expect("injector");
    let dst_mac = Lab::mac(&lab.server, &lab.server_iface).expect("MAC");
    for i in 1..=3u8 {
        let mut syn = TcpPacket::new(IpAddr::from([198, 19, 5, i]), addr.ip(), 20000, 8080, SYN);
        syn.dst_mac = dst_mac;
        injector.send(&syn.frame()).expect("send");
    }
    wait_for("3 SYN-RECV flows", Duration::from_secs(15), || {
        flows(&lab.server_iface)
            .iter()
            .filter(|(s, _, _)| s == "SYN-RECV")
            .count()
            == 3
    });
    wait_for("both views empty", Duration::from_secs(15), || {
        flows(&lab.server_iface).is_empty() && lab.server_sockets().expect("ss").is_empty()
    });
    let stats = stats_json(&lab.server_iface);
    assert_eq!(stats["expired"]["syn_rcvd"], 3, "{stats}");
    assert_eq!(stats["flows"]["syn_rcvd"], 0, "{stats}");
    assert_eq!(stats["tables"]["half_open"]["entries"], 0, "{stats}");
    assert_eq!(stats["counters"]["to_syn_rcvd"], 3, "{stats}");
}
