//! The real XDP program, loaded into the kernel and run on crafted frames with
//! BPF_PROG_TEST_RUN: every class and malformation bumps exactly the expected
//! counters, and every frame is passed. Needs root.
//!
//! (BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, so a
//! truncated Ethernet header is covered by the userspace parser tests only.)

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use tcp_guard::{program, stats};
use tcp_guard_common::{
    maps,
    stats::{Counter, Stats},
};
use tcp_guard_tests::{
    lab::require_root,
    packets::{ACK, FIN, PSH, RST, SYN, TcpPacket, ethernet, linux_syn_options},
};

const XDP_PASS: u32 = 2;

struct Loaded(aya::Ebpf);

impl Loaded {
    fn new() -> Self {
        require_root();
        Loaded(
            program::load(log::LevelFilter::Off, &Default::default(), None)
                .expect("load the tcp-guard object"),
        )
    }

    fn stats(&self) -> Stats {
        stats::read(self.0.map(maps::STATS).expect("STATS map")).expect("read STATS")
    }

    /// Runs `frame` once and asserts the verdict and the exact packet
    /// counters bumped (flow counters are the flow tests' business).
    fn expect(&mut self, what: &str, frame: &[u8], counters: &[Counter]) {
        let before = self.stats();
        let xdp = program::xdp_program(&mut self.0).expect("xdp program");
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        let result = xdp
            .test_run(opts)
            .unwrap_or_else(|e| panic!("{what}: test run failed: {e}"));
        assert_eq!(result.return_value, XDP_PASS, "{what}: verdict");
        let after = self.stats();
        for counter in Counter::ALL.into_iter().filter(|c| is_packet_counter(*c)) {
            let expected = counters.iter().filter(|c| **c == counter).count() as u64;
            let delta = after.get(counter) - before.get(counter);
            assert_eq!(delta, expected, "{what}: counter {}", counter.as_str());
        }
    }
}

/// Counters of what frames are, as opposed to what they do to flows.
fn is_packet_counter(counter: Counter) -> bool {
    (counter as u32) < Counter::EgressPackets as u32
}

fn v4() -> (IpAddr, IpAddr) {
    ("198.19.7.9".parse().unwrap(), "198.18.0.1".parse().unwrap())
}

fn v6() -> (IpAddr, IpAddr) {
    ("2001:2::2".parse().unwrap(), "2001:2::1".parse().unwrap())
}

fn tcp(ipv6: bool, flags: u8) -> TcpPacket {
    let (src, dst) = if ipv6 { v6() } else { v4() };
    TcpPacket::new(src, dst, 40000, 80, flags)
}

#[test]
fn every_tcp_class_is_counted_once() {
    let mut prog = Loaded::new();
    for ipv6 in [false, true] {
        let family = if ipv6 { Counter::Ipv6 } else { Counter::Ipv4 };
        for (flags, class) in [
            (SYN, Counter::Syn),
            (SYN | ACK, Counter::SynAck),
            (ACK, Counter::Ack),
            (PSH | ACK, Counter::Ack),
            (FIN | ACK, Counter::Fin),
            (RST, Counter::Rst),
            (RST | ACK, Counter::Rst),
            (SYN | FIN, Counter::TcpOtherFlags),
            (0, Counter::TcpOtherFlags),
        ] {
            let mut pkt = tcp(ipv6, flags);
            if flags & SYN != 0 {
                pkt.tcp_options = linux_syn_options(1460, 1, 7);
            }
            prog.expect(
                &format!("ipv6={ipv6} flags={flags:#04x}"),
                &pkt.frame(),
                &[Counter::Packets, family, class],
            );
        }
    }
}

#[test]
fn vlan_tagged_and_ip_options_frames_are_parsed() {
    let mut prog = Loaded::new();
    let mut tagged = tcp(false, SYN);
    tagged.vlan = Some(100);
    prog.expect(
        "vlan syn",
        &tagged.frame(),
        &[Counter::Packets, Counter::Vlan, Counter::Ipv4, Counter::Syn],
    );
    let mut options = tcp(false, FIN | ACK);
    options.ip_options = vec![0x94, 4, 0, 0]; // router alert
    prog.expect(
        "ip options fin",
        &options.frame(),
        &[Counter::Packets, Counter::Ipv4, Counter::Fin],
    );
    let mut tagged6 = tcp(true, ACK);
    tagged6.vlan = Some(7);
    tagged6.payload = vec![0xab; 100];
    prog.expect(
        "vlan ipv6 data",
        &tagged6.frame(),
        &[Counter::Packets, Counter::Vlan, Counter::Ipv6, Counter::Ack],
    );
}

#[test]
fn non_tcp_fragments_and_extension_headers_are_counted_and_passed() {
    let mut prog = Loaded::new();
    prog.expect(
        "arp",
        &ethernet(0x0806, None, &[0; 28]),
        &[Counter::Packets, Counter::NonIp],
    );
    let mut udp = tcp(false, SYN).ip_packet();
    udp[9] = 17;
    prog.expect(
        "udp",
        &ethernet(0x0800, None, &udp),
        &[Counter::Packets, Counter::Ipv4, Counter::NonTcp],
    );
    let mut fragment = tcp(false, SYN).ip_packet();
    fragment[6] = 0x20;
    prog.expect(
        "ipv4 fragment",
        &ethernet(0x0800, None, &fragment),
        &[Counter::Packets, Counter::Ipv4, Counter::Ipv4Fragment],
    );
    let mut extension = tcp(true, SYN).ip_packet();
    extension[6] = 60;
    prog.expect(
        "ipv6 destination options",
        &ethernet(0x86dd, None, &extension),
        &[Counter::Packets, Counter::Ipv6, Counter::Ipv6Extension],
    );
}

#[test]
fn malformed_frames_are_counted_by_reason() {
    let mut prog = Loaded::new();
    let good4 = tcp(false, SYN).ip_packet();
    let good6 = tcp(true, SYN).ip_packet();
    let with = |ip: &[u8], at: usize, byte: u8| {
        let mut ip = ip.to_vec();
        ip[at] = byte;
        ip
    };
    let v4 = |ip: Vec<u8>| ethernet(0x0800, None, &ip);
    let v6 = |ip: Vec<u8>| ethernet(0x86dd, None, &ip);
    let cases = [
        (
            "vlan truncated",
            ethernet(0x8100, None, &[0, 1]),
            Some(Counter::Vlan),
            Counter::MalformedVlanTruncated,
        ),
        (
            "ipv4 truncated",
            v4(good4[..19].to_vec()),
            Some(Counter::Ipv4),
            Counter::MalformedIpv4Truncated,
        ),
        (
            "ipv4 version",
            v4(with(&good4, 0, 0x65)),
            Some(Counter::Ipv4),
            Counter::MalformedIpv4BadVersion,
        ),
        (
            "ipv4 ihl 4",
            v4(with(&good4, 0, 0x44)),
            Some(Counter::Ipv4),
            Counter::MalformedIpv4BadHeaderLength,
        ),
        (
            "ipv4 ihl 15",
            v4(with(&good4, 0, 0x4f)),
            Some(Counter::Ipv4),
            Counter::MalformedIpv4BadHeaderLength,
        ),
        (
            "ipv4 total short",
            v4(with(&good4, 3, 10)),
            Some(Counter::Ipv4),
            Counter::MalformedIpv4BadTotalLength,
        ),
        (
            "ipv4 total long",
            v4(with(&good4, 3, 200)),
            Some(Counter::Ipv4),
            Counter::MalformedIpv4BadTotalLength,
        ),
        (
            "tcp truncated",
            v4(with(&good4, 3, 30)),
            Some(Counter::Ipv4),
            Counter::MalformedTcpTruncated,
        ),
        (
            "tcp doff 4",
            v4(with(&good4, 32, 0x40)),
            Some(Counter::Ipv4),
            Counter::MalformedTcpBadDataOffset,
        ),
        (
            "tcp doff 15",
            v4(with(&good4, 32, 0xf0)),
            Some(Counter::Ipv4),
            Counter::MalformedTcpBadDataOffset,
        ),
        (
            "ipv6 truncated",
            v6(good6[..39].to_vec()),
            Some(Counter::Ipv6),
            Counter::MalformedIpv6Truncated,
        ),
        (
            "ipv6 version",
            v6(with(&good6, 0, 0x40)),
            Some(Counter::Ipv6),
            Counter::MalformedIpv6BadVersion,
        ),
        (
            "ipv6 payload",
            v6(with(&good6, 5, 200)),
            Some(Counter::Ipv6),
            Counter::MalformedIpv6BadPayloadLength,
        ),
        (
            "ipv6 tcp truncated",
            v6(with(&good6, 5, 8)),
            Some(Counter::Ipv6),
            Counter::MalformedTcpTruncated,
        ),
    ];
    for (what, frame, layer, reason) in cases {
        let mut expected = vec![Counter::Packets, reason];
        expected.extend(layer);
        prog.expect(what, &frame, &expected);
    }
}

#[test]
fn syn_with_broken_options_is_flagged() {
    let mut prog = Loaded::new();
    let mut pkt = tcp(false, SYN);
    pkt.tcp_options = vec![2, 4, 5, 0xb4, 3, 9, 1, 1];
    let flagged = [
        Counter::Packets,
        Counter::Ipv4,
        Counter::Syn,
        Counter::TcpBadOptions,
    ];
    prog.expect("syn bad options", &pkt.frame(), &flagged);
    // Linux's layout but for the window scale's length, which runs past the
    // area: not read in one piece, walked, and flagged.
    let mut pkt = tcp(false, SYN);
    pkt.src_port += 1;
    pkt.tcp_options = linux_syn_options(1460, 1, 7);
    pkt.tcp_options[18] = 4;
    prog.expect("syn with linux options, one length bad", &pkt.frame(), &flagged);
}

#[test]
fn every_truncation_of_a_syn_is_passed_and_counted_once() {
    let mut prog = Loaded::new();
    for ipv6 in [false, true] {
        let mut pkt = tcp(ipv6, SYN);
        pkt.vlan = Some(3);
        pkt.tcp_options = linux_syn_options(1460, 1, 7);
        let frame = pkt.frame();
        for cut in 14..frame.len() {
            let before = prog.stats();
            let xdp = program::xdp_program(&mut prog.0).expect("xdp program");
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&frame[..cut]);
            assert_eq!(xdp.test_run(opts).expect("test run").return_value, XDP_PASS);
            let after = prog.stats();
            let malformed: u64 = Counter::ALL
                .iter()
                .filter(|c| c.is_malformed())
                .map(|c| after.get(*c) - before.get(*c))
                .sum();
            assert_eq!(malformed, 1, "ipv6={ipv6} cut at {cut}: one malformed counter");
            assert_eq!(
                after.get(Counter::Syn),
                before.get(Counter::Syn),
                "cut at {cut}: not a SYN"
            );
        }
    }
}
