//! The syncookie path of the real XDP program, run with BPF_PROG_TEST_RUN:
//! SYNs of every shape are answered with a well-formed SYN-ACK carrying a
//! kernel cookie, the ACK that returns the cookie opens the flow, and a bad
//! cookie is dropped. Needs root.

use std::net::IpAddr;

use aya::{
    maps::Array,
    programs::{TestRun, TestRunOptions},
};
use tcp_guard::{program, stats};
use tcp_guard_common::{
    maps,
    packet::{self, Outcome, TcpClass},
    policy::{AttackState, GuardConfig, Policy, Rule},
    stats::{Counter, Stats},
    syncookie::cookie_ts_decode,
};
use tcp_guard_tests::{
    lab::require_root,
    packets::{
        ACK, SYN, TcpPacket, checksum, ethernet, linux_syn_options, qinq, transport_checksum,
        with_ipv6_extension,
    },
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

struct Loaded(aya::Ebpf);

impl Loaded {
    /// The object, in attack mode with the syncookie policy and the cookie
    /// options a `tcp_timestamps=2` host offers.
    fn in_attack_mode() -> Self {
        require_root();
        let mut ebpf = program::load(log::LevelFilter::Off, &Default::default(), None).expect("load");
        let config = GuardConfig {
            policy: Policy::SynCookie as u8,
            cookie_options: GuardConfig::COOKIE_TIMESTAMPS
                | GuardConfig::COOKIE_SACK
                | GuardConfig::COOKIE_WSCALE,
            cookie_wscale: 9,
            ..GuardConfig::default()
        };
        let mut map: Array<_, GuardConfig> = ebpf
            .map_mut(maps::CONFIG)
            .expect("CONFIG")
            .try_into()
            .expect("array");
        map.set(0, config, 0).expect("set CONFIG");
        let mut attack: Array<_, AttackState> = ebpf
            .map_mut(maps::ATTACK)
            .expect("ATTACK")
            .try_into()
            .expect("array");
        attack
            .set(
                0,
                AttackState {
                    active: 1,
                    cookies_ready: 1,
                    trigger: AttackState::BY_SYN_RATE,
                    since_ns: 1,
                    ..AttackState::default()
                },
                0,
            )
            .expect("set ATTACK");
        Loaded(ebpf)
    }

    /// Attack mode as it is before the daemon has the listener ready for
    /// cookies (or after someone changed its settings).
    fn cookies_not_ready(&mut self) {
        self.change_attack(|state| AttackState {
            cookies_ready: 0,
            ..state
        });
    }

    fn attack_off(&mut self) {
        self.change_attack(|_| AttackState::default());
    }

    /// Puts `rules` in monitor mode, as `limits set monitor.*` would.
    fn monitor(&mut self, rules: &[Rule]) {
        let mut map: Array<_, GuardConfig> = self
            .0
            .map_mut(maps::CONFIG)
            .expect("CONFIG")
            .try_into()
            .expect("array");
        let config = map.get(&0, 0).expect("CONFIG");
        let monitor = rules.iter().fold(0, |bits, rule| bits | *rule as u8);
        map.set(0, GuardConfig { monitor, ..config }, 0)
            .expect("set CONFIG");
    }

    /// Rewrites ATTACK as the daemon would.
    fn change_attack(&mut self, change: impl FnOnce(AttackState) -> AttackState) {
        let mut attack: Array<_, AttackState> = self
            .0
            .map_mut(maps::ATTACK)
            .expect("ATTACK")
            .try_into()
            .expect("array");
        let state = attack.get(&0, 0).expect("ATTACK");
        attack.set(0, change(state), 0).expect("set ATTACK");
    }

    fn stats(&self) -> Stats {
        stats::read(self.0.map(maps::STATS).expect("STATS")).expect("read STATS")
    }

    /// Runs `frame` once: the verdict, the frame as the program left it,
    /// and what the run did to the counters.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>, Moved) {
        let before = self.stats();
        let xdp = program::xdp_program(&mut self.0).expect("xdp program");
        let mut out = vec![0u8; 4096];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let result = xdp.test_run(opts).expect("test run");
        out.truncate(result.data_size_out as usize);
        let moved = Moved {
            before,
            after: self.stats(),
        };
        (result.return_value, out, moved)
    }
}

/// The counters before and after one run.
struct Moved {
    before: Stats,
    after: Stats,
}

impl Moved {
    /// How much `counter` grew.
    fn by(&self, counter: Counter) -> u64 {
        self.after.get(counter) - self.before.get(counter)
    }

    /// The names of the counters that moved, for failure messages.
    fn names(&self) -> Vec<&'static str> {
        Counter::ALL
            .into_iter()
            .filter(|c| self.by(*c) != 0)
            .map(Counter::as_str)
            .collect()
    }
}

/// The first SYN to a listener in attack mode goes to the kernel, so that
/// the listener issues a cookie itself and keeps accepting ours; cookies
/// follow (for the next 10 s).
fn refresh_listener(prog: &mut Loaded, v6: bool) {
    let mut first = syn(v6, 1);
    first.src_port = 1;
    let (verdict, _, moved) = prog.run(&first.frame());
    assert_eq!(verdict, XDP_PASS, "the listener's first SYN passes");
    assert_eq!(moved.by(Counter::SynCookieRefresh), 1, "{:?}", moved.names());
    assert_eq!(moved.by(Counter::SynCookieSent), 0);
}

/// The unverified client of each case, sending to the guarded host.
fn syn(v6: bool, seq: u32) -> TcpPacket {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        ("2001:2:0:8000::7".parse().unwrap(), "2001:2::1".parse().unwrap())
    } else {
        ("198.19.7.9".parse().unwrap(), "198.18.0.1".parse().unwrap())
    };
    let mut pkt = TcpPacket::new(src, dst, 40_000, 8080, SYN);
    pkt.seq = seq;
    pkt
}

/// Checks that `reply` is the SYN-ACK answering `syn`, and returns its
/// (cookie, TSval, TCP options).
fn check_syn_ack(what: &str, syn: &TcpPacket, reply: &[u8]) -> (u32, Option<u32>, packet::TcpOptions) {
    let d = packet::parse(reply);
    assert_eq!(d.outcome, Outcome::Tcp, "{what}: the reply is TCP");
    let seg = d.segment;
    assert_eq!(seg.flags.class(), TcpClass::SynAck, "{what}");
    assert_eq!(seg.ack, syn.seq.wrapping_add(1), "{what}: acknowledges the SYN");
    assert_eq!(
        (seg.src_port, seg.dst_port),
        (syn.dst_port, syn.src_port),
        "{what}"
    );
    let addr = |a: [u8; 16]| -> IpAddr {
        if syn.src.is_ipv4() {
            IpAddr::from([a[0], a[1], a[2], a[3]])
        } else {
            IpAddr::from(a)
        }
    };
    assert_eq!((addr(seg.src), addr(seg.dst)), (syn.dst, syn.src), "{what}");
    assert_eq!(&reply[..6], &syn.src_mac, "{what}: back to the sender's MAC");
    assert_eq!(&reply[6..12], &syn.dst_mac, "{what}");
    assert_eq!(d.vlan, syn.vlan.is_some(), "{what}: the VLAN tag stays");
    let tcp = &reply[seg.tcp_offset as usize..];
    assert_eq!(
        tcp.len(),
        seg.tcp_header_len as usize,
        "{what}: no payload, no padding"
    );
    assert_eq!(
        transport_checksum(syn.dst, syn.src, tcp),
        0,
        "{what}: TCP checksum"
    );
    if syn.src.is_ipv4() {
        let l3 = seg.tcp_offset as usize - 20;
        assert_eq!(
            checksum(&reply[l3..l3 + 20], 0),
            0,
            "{what}: IPv4 header checksum"
        );
    }
    let options = packet::parse_tcp_options(reply, &seg);
    assert!(!options.malformed, "{what}");
    (seg.seq, options.timestamp().map(|(tsval, _)| tsval), options)
}

#[test]
fn syns_of_every_shape_are_answered_with_a_cookie() {
    let mut prog = Loaded::in_attack_mode();
    refresh_listener(&mut prog, false);
    refresh_listener(&mut prog, true);
    let mut linux = syn(false, 1000);
    linux.tcp_options = linux_syn_options(1460, 0x0102_0304, 7);
    let bare = syn(false, 2000);
    let mut v6 = syn(true, 3000);
    v6.tcp_options = linux_syn_options(1440, 77, 10);
    let mut tagged = linux.clone();
    tagged.vlan = Some(5);
    tagged.seq = 4000;
    let mut ip_options = linux.clone();
    ip_options.ip_options = vec![1, 1, 1, 0];
    ip_options.seq = 5000;
    let mut with_data = linux.clone();
    with_data.payload = vec![0x55; 300];
    with_data.seq = 6000;
    for (what, pkt) in [
        ("Linux SYN", &linux),
        ("SYN without options", &bare),
        ("IPv6 SYN", &v6),
        ("VLAN-tagged SYN", &tagged),
        ("SYN with IPv4 options", &ip_options),
        ("SYN with data", &with_data),
    ] {
        let (verdict, reply, moved) = prog.run(&pkt.frame());
        assert_eq!(verdict, XDP_TX, "{what}: answered in place");
        assert_eq!(moved.by(Counter::SynCookieSent), 1, "{what}: {:?}", moved.names());
        let (_, tsval, options) = check_syn_ack(what, pkt, &reply);
        let client_ts = pkt.tcp_options.len() > 4;
        assert_eq!(
            options.mss().is_some(),
            !pkt.tcp_options.is_empty(),
            "{what}: MSS offered, unless the SYN had no options (then no reply is longer than its SYN)"
        );
        assert!(
            reply.len() <= pkt.frame().len(),
            "{what}: the reply needs no room the SYN did not have"
        );
        assert_eq!(
            tsval.is_some(),
            client_ts,
            "{what}: timestamps only if the client sent them"
        );
        if let Some(tsval) = tsval {
            let client_wscale = pkt.tcp_options[19];
            assert_eq!(
                cookie_ts_decode(tsval),
                (Some(client_wscale), true),
                "{what}: the client's window scale and SACK ride in the timestamp"
            );
            assert_eq!(options.window_scale(), Some(9), "{what}: the host's window scale");
            assert!(options.sack_permitted(), "{what}");
            let client_tsval = u32::from_be_bytes(pkt.tcp_options[8..12].try_into().unwrap());
            assert_eq!(
                options.timestamp().map(|(_, ecr)| ecr),
                Some(client_tsval),
                "{what}: echoes the client's TSval"
            );
        } else {
            assert_eq!(
                options.window_scale(),
                None,
                "{what}: no scale without a timestamp to carry it"
            );
            assert!(!options.sack_permitted(), "{what}");
        }
    }
}

#[test]
fn until_the_listener_is_ready_for_cookies_syns_go_on_to_the_limits() {
    let mut prog = Loaded::in_attack_mode();
    prog.cookies_not_ready();
    for v6 in [false, true] {
        let (verdict, _, moved) = prog.run(&syn(v6, 77).frame());
        assert_eq!(verdict, XDP_PASS, "to the listener, counted as a new flow");
        assert_eq!(moved.by(Counter::SynCookieSent), 0, "{:?}", moved.names());
        assert_eq!(moved.by(Counter::SynCookieRefresh), 0, "{:?}", moved.names());
        assert_eq!(moved.by(Counter::Syn), 1, "{:?}", moved.names());
    }
}

#[test]
fn a_syn_with_timestamps_alone_gets_a_longer_reply() {
    let mut prog = Loaded::in_attack_mode();
    refresh_listener(&mut prog, false);
    // NOP, NOP, timestamps: a 32-byte TCP header, the reply's is 40.
    let mut pkt = syn(false, 7000);
    pkt.tcp_options = vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0];
    let (verdict, reply, moved) = prog.run(&pkt.frame());
    assert_eq!(verdict, XDP_TX, "{:?}", moved.names());
    let (_, tsval, options) = check_syn_ack("SYN with timestamps alone", &pkt, &reply);
    assert_eq!(reply.len(), pkt.frame().len() + 8, "the frame grew for the reply");
    assert_eq!(options.timestamp().map(|(_, ecr)| ecr), Some(9));
    assert_eq!(cookie_ts_decode(tsval.expect("timestamps")), (None, false));
}

#[test]
fn the_ack_returning_a_cookie_opens_the_flow_and_a_bad_one_is_dropped() {
    let mut prog = Loaded::in_attack_mode();
    for v6 in [false, true] {
        refresh_listener(&mut prog, v6);
        let mut client = syn(v6, 0x7000_0000);
        client.tcp_options = linux_syn_options(1460, 1234, 7);
        let (verdict, reply, _) = prog.run(&client.frame());
        assert_eq!(verdict, XDP_TX);
        let (cookie, tsval, _) = check_syn_ack("SYN", &client, &reply);

        let mut ack = TcpPacket::new(client.src, client.dst, client.src_port, client.dst_port, ACK);
        ack.seq = client.seq.wrapping_add(1);
        ack.tcp_options = vec![1, 1, 8, 10];
        ack.tcp_options.extend_from_slice(&1235u32.to_be_bytes());
        ack.tcp_options
            .extend_from_slice(&tsval.expect("timestamps").to_be_bytes());

        // (Not cookie + 2: the low bits of a kernel cookie are its MSS
        // index, so a neighbour may pass as the same cookie with another MSS.)
        let mut forged = ack.clone();
        forged.ack = cookie.wrapping_add(1) ^ 0x0100_0000;
        let (verdict, _, moved) = prog.run(&forged.frame());
        assert_eq!(verdict, XDP_DROP, "a bad cookie is dropped: {:?}", moved.names());
        assert_eq!(moved.by(Counter::DropBadCookie), 1);

        ack.ack = cookie.wrapping_add(1);
        let (verdict, _, moved) = prog.run(&ack.frame());
        assert_eq!(verdict, XDP_PASS, "a valid cookie goes to the listener");
        assert_eq!(moved.by(Counter::CookieAckValid), 1, "{:?}", moved.names());
        assert_eq!(moved.by(Counter::ToEstablished), 1);
        // The flow is now known: its next segment is tracked, not cookie-checked.
        let mut data = ack.clone();
        data.payload = vec![1; 100];
        let (verdict, _, moved) = prog.run(&data.frame());
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(moved.by(Counter::CookieAckValid), 0);
        assert_eq!(moved.by(Counter::InvalidNoFlow), 0, "{:?}", moved.names());
    }
}

#[test]
fn a_qinq_syn_is_answered_with_both_tags_kept() {
    let mut prog = Loaded::in_attack_mode();
    refresh_listener(&mut prog, false);
    let mut linux = syn(false, 7000);
    linux.tcp_options = linux_syn_options(1460, 9, 7);
    let (verdict, reply, moved) = prog.run(&qinq(&linux.frame(), 3, 5));
    assert_eq!(verdict, XDP_TX, "{:?}", moved.names());
    assert_eq!(&reply[12..14], &0x88a8u16.to_be_bytes(), "the outer tag stays");
    assert_eq!(&reply[16..18], &0x8100u16.to_be_bytes(), "the inner tag stays");
    let d = packet::parse(reply.as_slice());
    let seg = d.tcp().expect("a TCP reply");
    assert_eq!(seg.flags.class(), TcpClass::SynAck);
    assert_eq!(seg.tcp_offset, 42);
    assert_eq!(transport_checksum(linux.dst, linux.src, &reply[42..]), 0);
}

#[test]
fn tcp_the_parser_cannot_see_whole_is_dropped_in_attack_mode_only() {
    let mut prog = Loaded::in_attack_mode();
    let v4 = syn(false, 8000);
    let mut fragment = v4.ip_packet();
    fragment[6] = 0x20; // more fragments
    let v6 = syn(true, 9000);
    let hop_by_hop = with_ipv6_extension(&v6.ip_packet(), 0);
    let mut icmp = v6.ip_packet();
    icmp[6] = 58;
    let mut udp_fragment = fragment.clone();
    udp_fragment[9] = 17;
    let unparsed = [
        (
            "a first fragment carrying a SYN",
            ethernet(0x0800, None, &fragment),
        ),
        (
            "a SYN behind hop-by-hop options",
            ethernet(0x86dd, None, &hop_by_hop),
        ),
    ];
    let other = [
        (
            "ICMPv6 behind hop-by-hop options",
            ethernet(0x86dd, None, &with_ipv6_extension(&icmp, 0)),
        ),
        ("a UDP fragment", ethernet(0x0800, None, &udp_fragment)),
    ];
    for (what, frame) in &unparsed {
        let (verdict, _, moved) = prog.run(frame);
        assert_eq!(verdict, XDP_DROP, "{what} in attack mode: {:?}", moved.names());
        assert_eq!(moved.by(Counter::DropUnparsedTcp), 1, "{what}");
    }
    for (what, frame) in &other {
        let (verdict, _, moved) = prog.run(frame);
        assert_eq!(verdict, XDP_PASS, "{what} in attack mode: {:?}", moved.names());
    }
    prog.attack_off();
    for (what, frame) in &unparsed {
        let (verdict, _, moved) = prog.run(frame);
        assert_eq!(
            verdict,
            XDP_PASS,
            "{what} outside attack mode: {:?}",
            moved.names()
        );
        assert_eq!(moved.by(Counter::DropUnparsedTcp), 0, "{what}");
    }
}

/// `pkt`'s frame with its TCP checksum in the form a local sender over veth
/// leaves it (CHECKSUM_PARTIAL): the pseudo-header's sum alone.
fn partial_checksum_frame(pkt: &TcpPacket) -> Vec<u8> {
    let mut frame = pkt.frame();
    let segment_len = pkt.tcp_segment().len();
    let at = frame.len() - segment_len + 16;
    let partial = !transport_checksum(pkt.src, pkt.dst, &vec![0; segment_len]);
    frame[at..at + 2].copy_from_slice(&partial.to_be_bytes());
    frame
}

#[test]
fn checksums_are_checked_before_a_syn_is_answered_or_a_cookie_accepted() {
    let mut prog = Loaded::in_attack_mode();
    for v6 in [false, true] {
        refresh_listener(&mut prog, v6);
        let mut client = syn(v6, 0x1000_0000);
        client.tcp_options = linux_syn_options(1460, 99, 7);
        let tcp_at = client.frame().len() - client.tcp_segment().len();

        let mut corrupt = client.frame();
        corrupt[tcp_at + 14] ^= 0x01; // the window, under a checksum that no longer holds
        let (verdict, _, moved) = prog.run(&corrupt);
        assert_eq!(verdict, XDP_DROP, "v6={v6}: a corrupt SYN: {:?}", moved.names());
        assert_eq!(moved.by(Counter::DropBadChecksum), 1);
        assert_eq!(moved.by(Counter::SynCookieSent), 0);
        if !v6 {
            let mut bad_ip = client.frame();
            bad_ip[14 + 8] -= 1; // the TTL, under the old header checksum
            let (verdict, _, moved) = prog.run(&bad_ip);
            assert_eq!(
                verdict,
                XDP_DROP,
                "a bad IPv4 header checksum: {:?}",
                moved.names()
            );
            assert_eq!(moved.by(Counter::DropBadChecksum), 1);
        }

        let (verdict, reply, moved) = prog.run(&partial_checksum_frame(&client));
        assert_eq!(
            verdict,
            XDP_TX,
            "v6={v6}: a SYN sent over veth: {:?}",
            moved.names()
        );
        let (cookie, tsval, _) = check_syn_ack("SYN", &client, &reply);

        let mut big = client.clone();
        big.seq = 0x2000_0000;
        big.payload = vec![0xa5; 1201]; // three chunks of the sum, an odd length
        let (verdict, _, moved) = prog.run(&big.frame());
        assert_eq!(
            verdict,
            XDP_TX,
            "v6={v6}: a SYN with 1,201 bytes of data: {:?}",
            moved.names()
        );

        let mut ack = TcpPacket::new(client.src, client.dst, client.src_port, client.dst_port, ACK);
        ack.seq = client.seq.wrapping_add(1);
        ack.ack = cookie.wrapping_add(1);
        ack.tcp_options = vec![1, 1, 8, 10];
        ack.tcp_options.extend_from_slice(&100u32.to_be_bytes());
        ack.tcp_options
            .extend_from_slice(&tsval.expect("timestamps").to_be_bytes());
        let mut corrupt_ack = ack.frame();
        corrupt_ack[tcp_at + 14] ^= 0x01;
        let (verdict, _, moved) = prog.run(&corrupt_ack);
        assert_eq!(
            verdict,
            XDP_DROP,
            "v6={v6}: a corrupt ACK with a valid cookie: {:?}",
            moved.names()
        );
        assert_eq!(moved.by(Counter::DropBadChecksum), 1);
        assert_eq!(moved.by(Counter::ToEstablished), 0, "no flow opens");

        let (verdict, _, moved) = prog.run(&partial_checksum_frame(&ack));
        assert_eq!(
            verdict,
            XDP_PASS,
            "v6={v6}: the ACK sent over veth: {:?}",
            moved.names()
        );
        assert_eq!(moved.by(Counter::CookieAckValid), 1);
        assert_eq!(moved.by(Counter::ToEstablished), 1);
    }
}

/// Monitor mode for the attack policy and for unparsed TCP: in attack mode
/// a new source's SYN goes to the listener instead of getting a cookie, an
/// ACK for no flow goes there unchecked, a fragment carrying a SYN passes;
/// each counted as what would have been done.
#[test]
fn monitored_attack_policy_and_unparsed_tcp_pass_what_they_would_stop() {
    let mut prog = Loaded::in_attack_mode();
    prog.monitor(&[Rule::Attack, Rule::UnparsedTcp]);
    let (verdict, _, moved) = prog.run(&syn(false, 1000).frame());
    assert_eq!(verdict, XDP_PASS, "{:?}", moved.names());
    assert_eq!(moved.by(Counter::WouldAnswerWithCookie), 1);
    assert_eq!(moved.by(Counter::SynCookieSent), 0);

    let mut stray = syn(false, 5000);
    stray.src_port = 40_001;
    stray.flags = ACK;
    stray.ack = 12345;
    let (verdict, _, moved) = prog.run(&stray.frame());
    assert_eq!(verdict, XDP_PASS, "{:?}", moved.names());
    assert_eq!(moved.by(Counter::DropBadCookie), 0);

    let mut fragment = syn(false, 8000).ip_packet();
    fragment[6] = 0x20; // more fragments
    let (verdict, _, moved) = prog.run(&ethernet(0x0800, None, &fragment));
    assert_eq!(verdict, XDP_PASS, "{:?}", moved.names());
    assert_eq!(moved.by(Counter::WouldDropUnparsedTcp), 1);
    assert_eq!(moved.by(Counter::DropUnparsedTcp), 0);

    // Back in force (the listener first gets a SYN of its own).
    prog.monitor(&[]);
    refresh_listener(&mut prog, false);
    let (verdict, _, moved) = prog.run(&syn(false, 2000).frame());
    assert_eq!(verdict, XDP_TX, "{:?}", moved.names());
    let (verdict, _, _) = prog.run(&ethernet(0x0800, None, &fragment));
    assert_eq!(verdict, XDP_DROP);
}
