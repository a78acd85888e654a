//! Two CPUs on one flow at once: the tracker (XDP) completing handshakes on
//! one CPU while the expiry program removes the same flows on the other.
//! Whichever wins, a flow's half-open counts are released once, and the
//! counts end equal to the half-open flows that hold them. Needs root and
//! two CPUs.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{Program, TestRun, TestRunOptions, Xdp},
};
use tcp_guard::{program, settings::Settings, stats};
use tcp_guard_common::{
    flow::{Direction, Flow, FlowKey, TcpState},
    maps,
    packet::parse,
    policy::{COUNT_GLOBAL_SLOT, COUNT_PORT_BASE},
    programs,
    stats::Counter,
};
use tcp_guard_tests::{
    lab::require_root,
    machine::pin_to_cpu,
    packets::{ACK, SYN, TcpPacket},
    scenario::without_limits,
};

const XDP_PASS: u32 = 2;
/// Flows opened and left half-open: the counts must still hold them at the end.
const KEPT: u16 = 50;
/// Flows completed on one CPU while the other expires them.
const CONTESTED: usize = 20_000;
const PORT: u16 = 8080;

fn run(xdp: &Xdp, frame: &[u8]) -> u32 {
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    xdp.test_run(opts).expect("xdp test run").return_value
}

/// The SYN and the handshake's ACK of flow `i` to `dst`, and its key.
fn segment_pair(i: usize, dst: &str) -> (Vec<u8>, Vec<u8>, FlowKey) {
    let src: IpAddr = format!("198.18.{}.{}", (i / 250) % 250, 1 + i % 250)
        .parse()
        .unwrap();
    let dst: IpAddr = dst.parse().unwrap();
    let sport = 10_000 + (i % 50_000) as u16;
    let mut syn = TcpPacket::new(src, dst, sport, PORT, SYN);
    syn.seq = 7_000;
    let mut ack = TcpPacket::new(src, dst, sport, PORT, ACK);
    ack.seq = 7_001;
    ack.ack = 1;
    let syn = syn.frame();
    let key = FlowKey::new(
        parse(syn.as_slice()).tcp().expect("a TCP frame"),
        Direction::Ingress,
    );
    (syn, ack.frame(), key)
}

#[test]
fn a_flow_contested_by_two_cpus_releases_its_counts_once() {
    require_root();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "this test needs two CPUs, the machine has {cpus}");
    let mut settings = Settings::default();
    // ACKs complete handshakes without the host's SYN-ACK; half-open flows
    // are idle past their timeout at once; no limit drops a SYN.
    settings.live.egress = 0;
    settings.live.timeout_secs[TcpState::SynRcvd as usize - 1] = 0;
    without_limits(&mut settings);
    let mut ebpf = program::load(log::LevelFilter::Off, &settings, None).expect("load the tcp-guard object");

    let mut xdp = None;
    let mut expire = None;
    for (name, prog) in ebpf.programs_mut() {
        match (name, prog) {
            (programs::XDP, Program::Xdp(p)) => xdp = Some(p),
            (programs::EXPIRE, Program::Xdp(p)) => expire = Some(p),
            _ => {}
        }
    }
    let (xdp, expire) = (
        &*xdp.expect("the XDP program"),
        &*expire.expect("the expire program"),
    );

    // Kept flows: to an address of their own, never expired.
    for i in 0..KEPT as usize {
        let (syn, _, _) = segment_pair(i, "198.19.0.2");
        assert_eq!(run(xdp, &syn), XDP_PASS);
    }

    let flows: Vec<_> = (0..CONTESTED).map(|i| segment_pair(i, "198.19.0.1")).collect();
    let current = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            pin_to_cpu(0);
            for (i, (syn, ack, _)) in flows.iter().enumerate() {
                current.store(i, Ordering::SeqCst);
                assert_eq!(run(xdp, syn), XDP_PASS);
                assert_eq!(run(xdp, ack), XDP_PASS);
            }
            done.store(true, Ordering::SeqCst);
        });
        scope.spawn(|| {
            pin_to_cpu(1);
            while !done.load(Ordering::SeqCst) {
                let (_, _, key) = &flows[current.load(Ordering::SeqCst)];
                program::expire(expire, key).expect("run the expire program");
            }
        });
    });

    let flows: HashMap<&MapData, FlowKey, Flow> =
        HashMap::try_from(ebpf.map(maps::FLOWS).expect("FLOWS")).expect("a hash map");
    let holding = flows
        .iter()
        .map(|entry| entry.expect("a flow").1)
        .filter(|flow| flow.has(Flow::COUNTED) && flow.state() == Some(TcpState::SynRcvd))
        .count() as u64;
    let counts: Array<&MapData, u64> =
        Array::try_from(ebpf.map(maps::COUNTS).expect("COUNTS")).expect("an array");
    let global = counts.get(&COUNT_GLOBAL_SLOT, 0).expect("the global count");
    let port = counts
        .get(&(COUNT_PORT_BASE + u32::from(PORT)), 0)
        .expect("the port's count");
    let stats = stats::read(ebpf.map(maps::STATS).expect("STATS")).expect("read STATS");
    assert!(
        holding >= u64::from(KEPT),
        "the kept flows are gone: {holding} hold counts"
    );
    assert_eq!(
        (global, port),
        (holding, holding),
        "the global and port counts differ from the {holding} half-open flows holding counts \
         ({} segments met a flow another CPU was changing)",
        stats.get(Counter::FlowBusy)
    );
}
