//! The flow tracker in the kernel: the XDP (ingress) and TC (egress) programs
//! run with BPF_PROG_TEST_RUN on the segments of one connection, and the
//! tables and counters are read back after each. Needs root.

use std::net::IpAddr;

use aya::{
    maps::{
        Array, HashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{TestRun, TestRunOptions},
};
use tcp_guard::{control::Instance, program, settings::Settings, stats};
use tcp_guard_common::{
    config::TableSizes,
    flow::{Flow, FlowKey, TcpState},
    maps,
    policy::{AttackState, BlockEntry, CountHash, LpmAddr, VERIFIED_MARKS},
    stats::{Counter, Stats},
};
use tcp_guard_tests::{
    lab::require_root,
    machine::pin_to_cpu,
    packets::{ACK, FIN, PSH, RST, SYN, TcpPacket},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Tracker(aya::Ebpf);

impl Tracker {
    fn new(tables: TableSizes) -> Self {
        require_root();
        let settings = Settings {
            tables,
            ..Settings::default()
        };
        Tracker(program::load(log::LevelFilter::Off, &settings, None).expect("load the tcp-guard object"))
    }

    /// Runs the XDP program on `pkt`; its verdict (1 drop, 2 pass).
    fn verdict(&mut self, pkt: &TcpPacket) -> u32 {
        let frame = pkt.frame();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        let xdp = program::xdp_program(&mut self.0).expect("xdp");
        xdp.test_run(opts).expect("xdp test run").return_value
    }

    fn ingress(&mut self, pkt: &TcpPacket) {
        assert_eq!(self.verdict(pkt), XDP_PASS, "{pkt:?}");
    }

    fn egress(&mut self, pkt: &TcpPacket) {
        self.egress_frame(&pkt.frame());
    }

    fn egress_frame(&mut self, frame: &[u8]) {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        let tc = program::tc_egress_program(&mut self.0).expect("tc");
        assert_eq!(
            tc.test_run(opts).expect("tc test run").return_value as i32,
            -1,
            "TC_ACT_UNSPEC"
        );
    }

    fn stats(&self) -> Stats {
        stats::read(self.0.map(maps::STATS).expect("STATS")).expect("read STATS")
    }

    /// Every flow in `FLOWS`.
    fn flows(&self) -> Vec<(FlowKey, Flow)> {
        let table: HashMap<&MapData, FlowKey, Flow> =
            HashMap::try_from(self.0.map(maps::FLOWS).expect("FLOWS")).expect("hash map");
        table.iter().map(|kv| kv.expect("entry")).collect()
    }

    /// The flows in a half-open state.
    fn half_open(&self) -> Vec<(FlowKey, Flow)> {
        let mut flows = self.flows();
        flows.retain(|(_, f)| f.state().is_some_and(TcpState::is_half_open));
        flows
    }

    /// The only flow, and its state.
    fn only_flow(&self) -> (TcpState, Flow) {
        match self.flows().as_slice() {
            [(_, f)] => (f.state().expect("state"), *f),
            flows => panic!("expected one flow, found {flows:?}"),
        }
    }

    /// Attack mode on, as the daemon turns it on.
    fn attack_mode_on(&mut self) {
        let mut attack: Array<&mut MapData, AttackState> =
            Array::try_from(self.0.map_mut(maps::ATTACK).expect("ATTACK")).expect("array");
        let on = AttackState {
            active: 1,
            trigger: AttackState::BY_SYN_RATE,
            since_ns: 1,
            ..AttackState::default()
        };
        attack.set(0, on, 0).expect("attack mode");
    }

    fn is_empty(&self) -> bool {
        self.flows().is_empty()
    }
}

fn addrs(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        ("2001:2:0:1::5".parse().unwrap(), "2001:2::1".parse().unwrap())
    } else {
        ("198.19.0.5".parse().unwrap(), "198.18.0.1".parse().unwrap())
    }
}

const J: u32 = 0xffff_fff0; // the peer's ISN, close to wrapping
const K: u32 = 7_000_000; // the host's ISN

/// From the peer to the host.
fn from_peer(v6: bool, flags: u8, seq: u32, ack: u32) -> TcpPacket {
    let (peer, host) = addrs(v6);
    let mut pkt = TcpPacket::new(peer, host, 40000, 80, flags);
    pkt.seq = seq;
    pkt.ack = ack;
    pkt
}

/// From the host to the peer.
fn from_host(v6: bool, flags: u8, seq: u32, ack: u32) -> TcpPacket {
    let (peer, host) = addrs(v6);
    let mut pkt = TcpPacket::new(host, peer, 80, 40000, flags);
    pkt.seq = seq;
    pkt.ack = ack;
    pkt
}

fn delta(before: &Stats, after: &Stats, counter: Counter) -> u64 {
    after.get(counter) - before.get(counter)
}

fn handshake_is_validated_and_followed(v6: bool) {
    let mut t = Tracker::new(TableSizes::default());
    let s0 = t.stats();
    t.ingress(&from_peer(v6, SYN, J, 0));
    assert_eq!(t.only_flow().0, TcpState::SynRcvd);
    t.egress(&from_host(v6, SYN | ACK, K, J.wrapping_add(1)));
    let (state, flow) = t.only_flow();
    assert_eq!((state, flow.host_isn, flow.peer_isn), (TcpState::SynRcvd, K, J));

    // A spoofed final ACK that does not acknowledge K.
    t.ingress(&from_peer(v6, ACK, J.wrapping_add(1), K + 5));
    assert_eq!(t.only_flow().0, TcpState::SynRcvd);
    assert_eq!(delta(&s0, &t.stats(), Counter::InvalidBadHandshakeAck), 1);

    t.ingress(&from_peer(v6, ACK, J.wrapping_add(1), K + 1));
    assert_eq!(t.only_flow().0, TcpState::Established);

    // Acknowledging bytes the host never sent; an RST far out of window.
    t.ingress(&from_peer(v6, ACK, J.wrapping_add(1), K + 1000));
    t.ingress(&from_peer(v6, RST, J.wrapping_add(1_000_000), 0));
    assert_eq!(t.only_flow().0, TcpState::Established);
    // The peer's FIN, the host's FIN, the peer's last ACK.
    t.ingress(&from_peer(v6, FIN | ACK, J.wrapping_add(1), K + 1));
    assert_eq!(t.only_flow().0, TcpState::CloseWait);
    t.egress(&from_host(v6, FIN | ACK, K + 1, J.wrapping_add(2)));
    assert_eq!(t.only_flow().0, TcpState::LastAck);
    t.ingress(&from_peer(v6, ACK, J.wrapping_add(2), K + 2));
    assert!(t.is_empty(), "closed flows are removed");
    // Late segments of the closed flow.
    t.ingress(&from_peer(v6, ACK, J.wrapping_add(2), K + 2));

    let s = t.stats();
    for (counter, n) in [
        (Counter::ToSynRcvd, 1),
        (Counter::ToEstablished, 1),
        (Counter::ToCloseWait, 1),
        (Counter::ToLastAck, 1),
        (Counter::ToClosed, 1),
        (Counter::InvalidBadHandshakeAck, 1),
        (Counter::InvalidAckNotSent, 1),
        (Counter::InvalidRstOutOfWindow, 1),
        (Counter::InvalidNoFlow, 1),
        (Counter::EgressPackets, 2),
    ] {
        assert_eq!(delta(&s0, &s, counter), n, "{}", counter.as_str());
    }
}

#[test]
fn ipv4_handshake_is_validated_and_followed() {
    handshake_is_validated_and_followed(false);
}

#[test]
fn ipv6_handshake_is_validated_and_followed() {
    handshake_is_validated_and_followed(true);
}

/// The host's own frames, should the parser take one for malformed, are
/// counted (`egress_malformed`) and left untracked; well-formed ones are not
/// counted there. (Two such misreadings, of GSO and BIG TCP packets, once
/// left flows behind the kernel's without a trace.)
#[test]
fn a_malformed_frame_from_the_host_is_counted_and_not_tracked() {
    let mut t = Tracker::new(TableSizes::default());
    t.ingress(&from_peer(false, SYN, J, 0));
    let s0 = t.stats();
    // The SYN-ACK cut inside its TCP header, its IP length saying so.
    let mut cut = from_host(false, SYN | ACK, K, J.wrapping_add(1)).frame();
    cut.truncate(40);
    cut[16..18].copy_from_slice(&26u16.to_be_bytes());
    t.egress_frame(&cut);
    let s1 = t.stats();
    assert_eq!(delta(&s0, &s1, Counter::EgressMalformed), 1);
    let (state, flow) = t.only_flow();
    assert_eq!(state, TcpState::SynRcvd);
    assert!(
        !flow.has(Flow::HOST_SEQ_KNOWN),
        "nothing read from the malformed frame"
    );
    t.egress(&from_host(false, SYN | ACK, K, J.wrapping_add(1)));
    assert_eq!(delta(&s1, &t.stats(), Counter::EgressMalformed), 0);
    assert_eq!(t.only_flow().1.host_isn, K);
}

#[test]
fn in_window_rst_removes_the_flow() {
    let mut t = Tracker::new(TableSizes::default());
    t.ingress(&from_peer(false, SYN, J, 0));
    t.egress(&from_host(false, SYN | ACK, K, J.wrapping_add(1)));
    t.ingress(&from_peer(false, ACK, J.wrapping_add(1), K + 1));
    let before = t.stats();
    t.ingress(&from_peer(false, RST, J.wrapping_add(1), 0));
    assert!(t.is_empty());
    assert_eq!(delta(&before, &t.stats(), Counter::FlowReset), 1);
}

/// A busy flow's ACKs skip the flow table after the CPU notes it
/// (`RecentFlow`), and nothing they would have stored is lost: the peer's
/// RST at its next sequence number, past the window the table alone would
/// check it against, closes the flow; and on another flow the ACK of the
/// host's FIN still moves it to FIN-WAIT-2.
#[test]
fn a_busy_flows_acks_skip_the_table_and_lose_nothing() {
    pin_to_cpu(0);
    let mut t = Tracker::new(TableSizes::default());
    let (j1, k1) = (J.wrapping_add(1), K + 1);
    // The host offers a window of 1,000 bytes: one absorbed segment puts
    // the peer's next sequence number past the table's window.
    let open = |t: &mut Tracker| {
        t.ingress(&from_peer(false, SYN, J, 0));
        let mut syn_ack = from_host(false, SYN | ACK, K, j1);
        syn_ack.window = 1000;
        t.egress(&syn_ack);
        t.ingress(&from_peer(false, ACK, j1, k1));
        assert_eq!(t.only_flow().0, TcpState::Established);
    };
    let data = |seq: u32| {
        let mut pkt = from_peer(false, ACK | PSH, seq, k1);
        pkt.payload = vec![0x5a; 1400];
        pkt
    };
    // Data until the last segment sent was absorbed (the first two of each
    // tick go to the table): the note is in place. Returns the peer's next
    // sequence number and how many were sent.
    let busy = |t: &mut Tracker, at_least: u64| {
        let mut next = j1;
        let mut sent = 0;
        loop {
            let before = t.stats();
            t.ingress(&data(next));
            next = next.wrapping_add(1400);
            sent += 1;
            if sent >= at_least && delta(&before, &t.stats(), Counter::AckRecentFlow) == 1 {
                return (next, sent);
            }
            assert!(sent < 1000, "never absorbed");
        }
    };
    open(&mut t);
    let start = t.stats();
    let (next, sent) = busy(&mut t, 50);
    let absorbed = delta(&start, &t.stats(), Counter::AckRecentFlow);
    // A call takes well under a tick (4 ms at most here).
    assert!(absorbed >= sent * 2 / 3, "{absorbed} of {sent} absorbed");
    let stored = t.only_flow().1.peer_next;
    assert!(
        next.wrapping_sub(stored) >= 1400,
        "the table trails: {stored} against {next}"
    );
    t.ingress(&from_peer(false, RST, next, 0));
    assert!(
        t.is_empty(),
        "the RST at the peer's next sequence number closed it"
    );

    // The host's FIN, then in the same tick an ACK of what it sent before
    // (the note absorbs it: it is in place) and the ACK of the FIN (the
    // note must not). Tried until one tick holds all four.
    let mut in_one_tick = false;
    for _ in 0..20 {
        open(&mut t);
        let (next, _) = busy(&mut t, 3);
        t.egress(&from_host(false, FIN | ACK, k1, next));
        assert_eq!(t.only_flow().0, TcpState::FinWait1);
        let before = t.stats();
        t.ingress(&from_peer(false, ACK, next, k1));
        let control = delta(&before, &t.stats(), Counter::AckRecentFlow);
        let before = t.stats();
        t.ingress(&from_peer(false, ACK, next, k1 + 1));
        assert_eq!(t.only_flow().0, TcpState::FinWait2, "the ACK of the host's FIN");
        assert_eq!(
            delta(&before, &t.stats(), Counter::AckRecentFlow),
            0,
            "not absorbed"
        );
        t.ingress(&from_peer(false, RST, next, 0));
        assert!(t.is_empty(), "reset");
        if control == 1 {
            in_one_tick = true;
            break;
        }
    }
    assert!(in_one_tick, "the note never held through the FIN's ACK");
}

/// A flow new to the table starts at a random even generation and each
/// rewrite moves it on by two: a CPU still holding a removed flow's
/// generation cannot win the claim on the flow the kernel stores next in the
/// same memory (it would, were every flow to start at 0).
#[test]
fn new_flows_start_at_random_even_generations() {
    let mut t = Tracker::new(TableSizes::default());
    let mut starts = std::collections::BTreeSet::new();
    for _ in 0..8 {
        t.ingress(&from_peer(false, SYN, J, 0));
        let start = t.only_flow().1.generation;
        assert_eq!(start % 2, 0, "even: not claimed");
        t.egress(&from_host(false, SYN | ACK, K, J.wrapping_add(1)));
        assert_eq!(t.only_flow().1.generation, start.wrapping_add(2), "one rewrite");
        t.ingress(&from_peer(false, ACK, J.wrapping_add(1), K + 1));
        t.ingress(&from_peer(false, RST, J.wrapping_add(1), 0));
        assert!(t.is_empty(), "reset");
        starts.insert(start);
    }
    assert!(starts.len() > 1, "every flow started at {starts:?}");
}

/// CLOCK_MONOTONIC and its coarse form's resolution (the kernel's tick), in ns.
fn monotonic_ns() -> (u64, u64) {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut tick = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: two valid timespec out-pointers.
    let ok = unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) == 0
            && libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut tick) == 0
    };
    assert!(ok, "clock_gettime: {}", std::io::Error::last_os_error());
    let ns = |t: libc::timespec| t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
    (ns(now), ns(tick))
}

/// The fast path stamps flows with CLOCK_MONOTONIC to the kernel's tick,
/// the clock the daemon compares them with. Each CPU reuses its last
/// reading until jiffies move: a stamp may trail the clock by about three
/// ticks (the coarse clock advances in whole intervals not in phase with
/// the tick, and a reading taken as a tick lands waits for the next), with
/// 2 ms more for a late tick on a busy machine, and moves on with time.
#[test]
fn flows_are_stamped_with_the_monotonic_clock_to_a_tick() {
    let mut t = Tracker::new(TableSizes::default());
    let mut stamps = Vec::new();
    for round in 0..5 {
        let (before, tick) = monotonic_ns();
        let seq = J.wrapping_add(round);
        t.ingress(&from_peer(false, SYN, seq, 0));
        let stamp = t.only_flow().1.last_ns;
        let (after, _) = monotonic_ns();
        assert!(
            stamp + 3 * tick + 2_000_000 >= before && stamp <= after,
            "round {round}: stamp {stamp} outside {before} - 3 x {tick} - 2 ms ..= {after}"
        );
        t.ingress(&from_peer(false, RST, seq.wrapping_add(1), 0));
        assert!(t.is_empty(), "reset");
        stamps.push(stamp);
        // Longer than the bound above: a reading never renewed fails it.
        std::thread::sleep(std::time::Duration::from_nanos((4 * tick).max(30_000_000)));
    }
    assert!(stamps.windows(2).all(|w| w[1] > w[0]), "moving on: {stamps:?}");
}

/// The fast path looks in the block list only while it is marked in use
/// (`LISTS_IN_USE`), which is why every writer marks it: an entry written
/// behind the mark's back is not seen.
#[test]
fn the_block_list_is_looked_in_only_while_marked_in_use() {
    let mut t = Tracker::new(TableSizes::default());
    let mut peer = [0u8; 16];
    peer[..4].copy_from_slice(&[198, 19, 0, 5]);
    let mut block: LpmTrie<&mut MapData, LpmAddr, BlockEntry> =
        LpmTrie::try_from(t.0.map_mut(maps::BLOCK).expect("BLOCK")).expect("LPM trie");
    let entry = BlockEntry {
        reason: BlockEntry::MANUAL,
        ..BlockEntry::default()
    };
    block
        .insert(&Key::new(128, LpmAddr::new(4, peer)), entry, 0)
        .expect("block the peer");
    assert_eq!(t.verdict(&from_peer(false, SYN, J, 0)), XDP_PASS, "not looked in");
    let mut marks: Array<&mut MapData, u32> =
        Array::try_from(t.0.map_mut(maps::LISTS_IN_USE).expect("LISTS_IN_USE")).expect("array");
    marks.set(maps::LIST_BLOCK, 1, 0).expect("mark the block list");
    assert_eq!(t.verdict(&from_peer(false, SYN, J, 0)), XDP_DROP, "blocked");
}

#[test]
fn host_connections_and_adopted_flows_are_tracked_from_egress() {
    let mut t = Tracker::new(TableSizes::default());
    t.egress(&from_host(false, SYN, K, 0));
    assert_eq!(t.only_flow().0, TcpState::SynSent);
    t.ingress(&from_peer(false, SYN | ACK, J, K + 7));
    assert_eq!(
        t.only_flow().0,
        TcpState::SynSent,
        "SYN-ACK acknowledging the wrong ISN"
    );
    t.ingress(&from_peer(false, SYN | ACK, J, K + 1));
    assert_eq!(t.only_flow().0, TcpState::Established);

    let mut other = Tracker::new(TableSizes::default());
    other.egress(&from_host(false, ACK, K, J));
    let (state, flow) = other.only_flow();
    assert_eq!(state, TcpState::Established);
    assert_ne!(flow.flags & Flow::ADOPTED, 0);
}

#[test]
fn half_open_flows_take_their_share_of_the_table_and_no_more() {
    let mut t = Tracker::new(TableSizes {
        half_open: 4,
        flows: 16,
    });
    t.ingress(&from_peer(false, SYN, J, 0));
    t.egress(&from_host(false, SYN | ACK, K, J.wrapping_add(1)));
    t.ingress(&from_peer(false, ACK, J.wrapping_add(1), K + 1));
    let before = t.stats();
    for i in 0..10u8 {
        let mut syn = from_peer(false, SYN, u32::from(i), 0);
        syn.src = IpAddr::from([198, 19, 1, i]);
        let expected = if i < 4 { XDP_PASS } else { XDP_DROP };
        assert_eq!(t.verdict(&syn), expected, "SYN {i}");
    }
    assert_eq!(t.half_open().len(), 4);
    assert_eq!(
        delta(&before, &t.stats(), Counter::DropTableFull),
        6,
        "SYNs that cannot be tracked are dropped"
    );
    // The host's SYN-ACKs to SYNs that went by untracked are held to the
    // share too: not stored while it is taken.
    let before = t.stats();
    for i in 4..7u8 {
        let mut syn_ack = from_host(false, SYN | ACK, K, u32::from(i) + 1);
        syn_ack.dst = IpAddr::from([198, 19, 1, i]);
        t.egress(&syn_ack);
    }
    assert_eq!(t.half_open().len(), 4, "the share holds");
    assert_eq!(delta(&before, &t.stats(), Counter::HalfOpenTableFull), 3);
    // The rest of the table is the other flows': 15 more, picked up
    // mid-connection from the host's segments, all tracked.
    for port in 1..16 {
        let mut ack = from_host(false, ACK, K, J);
        ack.dst_port = 50_000 + port;
        t.egress(&ack);
    }
    let established: Vec<_> = t
        .flows()
        .into_iter()
        .filter(|(_, f)| f.state() == Some(TcpState::Established))
        .collect();
    assert_eq!(established.len(), 16);
    assert_eq!(t.stats().get(Counter::FlowTableFull), 0);
}

#[test]
fn the_pass_policy_drops_nothing_in_attack_mode() {
    let mut settings = Settings::default();
    settings.live.global_half_open = 2;
    settings.live.attack_enter_half_open = 1;
    settings.live.attack_leave_half_open = 0;
    settings.live.policy = tcp_guard_common::policy::Policy::Pass as u8;
    let mut t = Tracker(program::load(log::LevelFilter::Off, &settings, None).expect("load"));
    for i in 0..10u8 {
        let mut syn = from_peer(false, SYN, u32::from(i), 0);
        syn.src = IpAddr::from([198, 19, 2, i]);
        assert_eq!(t.verdict(&syn), XDP_PASS, "SYN {i} passes: the kernel decides");
    }
    let s = t.stats();
    assert_eq!(s.get(Counter::DropGlobalHalfOpen), 0);
    assert_eq!(t.half_open().len(), 10, "all counted and tracked");
}

#[test]
fn other_policies_enforce_the_global_limit() {
    let mut settings = Settings::default();
    settings.live.global_half_open = 2;
    settings.live.attack_enter_half_open = 0;
    let mut t = Tracker(program::load(log::LevelFilter::Off, &settings, None).expect("load"));
    let mut passed = 0;
    for i in 0..10u8 {
        let mut syn = from_peer(false, SYN, u32::from(i), 0);
        syn.src = IpAddr::from([198, 19, 3, i]);
        passed += usize::from(t.verdict(&syn) == XDP_PASS);
    }
    assert_eq!(passed, 2);
    assert_eq!(t.stats().get(Counter::DropGlobalHalfOpen), 8);
}

/// Monitor mode for the half-open limits: the SYNs over a limit are
/// admitted, tracked where there is room, and counted as what the limit
/// would drop; a full table is monitored too, for SYNs within the limits.
#[test]
fn monitored_half_open_limits_admit_and_count_what_they_would_drop() {
    let monitored = |global: u32, per_source: u32, table: u32| {
        let mut settings = Settings::default();
        settings.live.global_half_open = global;
        settings.live.per_source_half_open = per_source;
        settings.live.attack_enter_half_open = 0;
        settings.live.monitor = tcp_guard_common::policy::Rule::HalfOpen as u8;
        settings.tables.half_open = table;
        Tracker(program::load(log::LevelFilter::Off, &settings, None).expect("load"))
    };
    // Three SYNs from each of four sources, 12 flows, into a table of 8.
    let mut t = monitored(0, 2, 8);
    for i in 0..12u8 {
        let mut syn = from_peer(false, SYN, u32::from(i), 0);
        syn.src = IpAddr::from([198, 19, 4, i / 3]);
        syn.src_port = 40_000 + u16::from(i);
        assert_eq!(t.verdict(&syn), XDP_PASS, "SYN {i} passes");
    }
    let s = t.stats();
    assert_eq!(
        s.get(Counter::DropSourceHalfOpen) + s.get(Counter::DropTableFull),
        0
    );
    // The first three sources' third SYNs are over their limit (counted
    // once, though the third one finds the table full too); the fourth
    // source's SYNs find it full (and so are never counted against it).
    assert_eq!(s.get(Counter::WouldDropSourceHalfOpen), 3);
    assert_eq!(s.get(Counter::WouldDropTableFull), 3);
    assert_eq!(t.half_open().len(), 8);

    let mut t = monitored(2, 0, 64);
    for i in 0..5u8 {
        let mut syn = from_peer(false, SYN, u32::from(i), 0);
        syn.src = IpAddr::from([198, 19, 5, i]);
        assert_eq!(t.verdict(&syn), XDP_PASS, "SYN {i} passes");
    }
    let s = t.stats();
    assert_eq!(s.get(Counter::DropGlobalHalfOpen), 0);
    assert_eq!(s.get(Counter::WouldDropGlobalHalfOpen), 3);
    assert_eq!(t.half_open().len(), 5, "all tracked");
}

/// A source that completes a handshake is marked in `VERIFIED_BITS`, and
/// its SYNs in attack mode pass as verified through the next turn of the
/// generations (the daemon's, once `attack.verified_ttl` has passed); the
/// turn after clears its marks, and its SYNs are challenged again.
#[test]
fn verified_sources_pass_until_the_second_turn_of_the_generations() {
    require_root();
    let dir = PinDir::new("verified-bits");
    let mut settings = Settings::default();
    settings.live.attack_enter_half_open = 0;
    settings.live.policy = tcp_guard_common::policy::Policy::RetransmitChallenge as u8;
    let mut t = Tracker(program::load(log::LevelFilter::Off, &settings, Some(&dir.0)).expect("load"));
    let instance = Instance::new(dir.0.clone());
    const TTL: u32 = 60;
    let second = 1_000_000_000;
    assert!(
        !instance.turn_verified_generation(second, TTL).expect("start"),
        "the first call starts the clock"
    );
    t.ingress(&from_peer(false, SYN, J, 0));
    t.egress(&from_host(false, SYN | ACK, K, J.wrapping_add(1)));
    t.ingress(&from_peer(false, ACK, J.wrapping_add(1), K + 1));
    let marked: usize = {
        let bits: Array<&MapData, u64> =
            Array::try_from(t.0.map(maps::VERIFIED_BITS).expect("VERIFIED_BITS")).expect("array");
        bits.iter()
            .map(|word| word.expect("a word").count_ones() as usize)
            .sum()
    };
    let hash: Array<&MapData, CountHash> =
        Array::try_from(t.0.map(maps::COUNT_HASH).expect("COUNT_HASH")).expect("array");
    let hash = hash.get(&0, 0).expect("COUNT_HASH");
    let IpAddr::V4(peer) = addrs(false).0 else {
        unreachable!("an IPv4 peer")
    };
    let mut peer_addr = [0u8; 16];
    peer_addr[..4].copy_from_slice(&peer.octets());
    let its_bits: usize = (0..VERIFIED_MARKS)
        .map(|i| hash.verified_mark(4, &peer_addr, i).1.count_ones() as usize)
        .sum();
    assert_eq!(marked, its_bits, "the handshake marked its source");
    t.attack_mode_on();
    let syn = |port: u16| {
        let mut syn = from_peer(false, SYN, 77, 0);
        syn.src_port = port;
        syn
    };
    let passes_as_verified = |t: &mut Tracker, port: u16| {
        let before = t.stats();
        let verdict = t.verdict(&syn(port));
        let verified = delta(&before, &t.stats(), Counter::SynVerified);
        match (verdict, verified) {
            (XDP_PASS, 1) => true,
            (XDP_DROP, 0) => {
                assert_eq!(
                    delta(&before, &t.stats(), Counter::DropChallenge),
                    1,
                    "challenged"
                );
                false
            }
            other => panic!("SYN from port {port}: {other:?}"),
        }
    };
    assert!(passes_as_verified(&mut t, 41_000));
    assert!(
        !instance
            .turn_verified_generation(second + u64::from(TTL - 1) * second, TTL)
            .expect("turn"),
        "not before the TTL"
    );
    assert!(
        instance
            .turn_verified_generation(second + u64::from(TTL) * second, TTL)
            .expect("turn")
    );
    assert!(
        passes_as_verified(&mut t, 41_001),
        "still verified: its generation is the older one now"
    );
    assert!(
        instance
            .turn_verified_generation(second + u64::from(2 * TTL) * second, TTL)
            .expect("turn")
    );
    assert!(!passes_as_verified(&mut t, 41_002), "forgotten two TTLs on");
}

/// A source counts as verified only with every bit of every mark set: the
/// first mark is two bits of one word, and one of them is not enough.
#[test]
fn a_source_is_verified_only_with_both_bits_of_its_first_mark() {
    require_root();
    let mut settings = Settings::default();
    settings.live.attack_enter_half_open = 0;
    settings.live.policy = tcp_guard_common::policy::Policy::RetransmitChallenge as u8;
    let mut t = Tracker(program::load(log::LevelFilter::Off, &settings, None).expect("load"));
    t.attack_mode_on();
    let hash: Array<&MapData, CountHash> =
        Array::try_from(t.0.map(maps::COUNT_HASH).expect("COUNT_HASH")).expect("array");
    let hash = hash.get(&0, 0).expect("COUNT_HASH");
    // A source whose first mark's two bits differ (they meet for 1 in 64).
    let (peer, addr) = (1..=255u8)
        .map(|last| {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&[198, 19, 7, last]);
            (IpAddr::from([198, 19, 7, last]), addr)
        })
        .find(|(_, addr)| hash.verified_mark(4, addr, 0).1.count_ones() == 2)
        .expect("a source with two first bits");
    let mark = |t: &mut Tracker, i: u32, bits: u64| {
        let (slot, _) = hash.verified_mark(4, &addr, i);
        // Generation 0 is current in a fresh load: its words are the even slots.
        let mut words: Array<&mut MapData, u64> =
            Array::try_from(t.0.map_mut(maps::VERIFIED_BITS).expect("VERIFIED_BITS")).expect("array");
        let was = words.get(&slot, 0).expect("a word");
        words.set(slot, was | bits, 0).expect("mark");
    };
    let (_, first) = hash.verified_mark(4, &addr, 0);
    let one_bit = first & first.wrapping_neg();
    mark(&mut t, 0, one_bit);
    for i in 1..VERIFIED_MARKS {
        let (_, bits) = hash.verified_mark(4, &addr, i);
        mark(&mut t, i, bits);
    }
    let (_, host) = addrs(false);
    let syn = |port: u16| TcpPacket::new(peer, host, port, 80, SYN);
    let before = t.stats();
    assert_eq!(t.verdict(&syn(41_000)), XDP_DROP, "one first bit short");
    assert_eq!(
        delta(&before, &t.stats(), Counter::DropChallenge),
        1,
        "challenged"
    );
    mark(&mut t, 0, first);
    let before = t.stats();
    assert_eq!(t.verdict(&syn(41_001)), XDP_PASS, "every bit set");
    assert_eq!(delta(&before, &t.stats(), Counter::SynVerified), 1, "verified");
}

/// A directory of pins in bpffs for one test, removed on drop.
struct PinDir(std::path::PathBuf);

impl PinDir {
    fn new(name: &str) -> Self {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/tcp-guard-test-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("pin directory");
        PinDir(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Attack mode on with the retransmit challenge, one SYN a second per
/// source (burst 1), and the rules `monitor` names in monitor mode.
fn challenge_and_rate_of_one(monitor: u8) -> Tracker {
    require_root();
    let mut settings = Settings::default();
    settings.live.attack_enter_half_open = 0;
    settings.live.policy = tcp_guard_common::policy::Policy::RetransmitChallenge as u8;
    settings.live.syn_rate = 1;
    settings.live.syn_burst = 1;
    settings.live.monitor = monitor;
    let mut t = Tracker(program::load(log::LevelFilter::Off, &settings, None).expect("load"));
    t.attack_mode_on();
    t
}

/// Monitor mode for every rule in attack mode (retransmit challenge), with
/// a SYN rate every SYN after the first is over: each SYN is counted once,
/// as what the first check would drop it for, and no later check sees the
/// challenge it was just given as passed.
#[test]
fn a_monitored_syn_is_counted_once_at_its_first_check() {
    let mut t = challenge_and_rate_of_one(tcp_guard_common::policy::Rule::All as u8);
    for i in 0..3u16 {
        let mut syn = from_peer(false, SYN, 1000 + u32::from(i), 0);
        syn.src_port = 42_000 + i;
        assert_eq!(t.verdict(&syn), XDP_PASS, "SYN {i}");
    }
    let s = t.stats();
    assert_eq!(s.get(Counter::WouldDropChallenge), 3, "each challenged, once");
    assert_eq!(
        s.get(Counter::WouldDropSynRate),
        0,
        "and counted for nothing else"
    );
    assert_eq!(
        s.get(Counter::SynChallengePassed),
        0,
        "no challenge passed without a retransmission"
    );
    assert_eq!(s.get(Counter::DropChallenge) + s.get(Counter::DropSynRate), 0);
}

/// In attack mode with the retransmit challenge, a source that is also over
/// its SYN rate: a retransmission that passed the attack-mode challenge is
/// not challenged again for the rate (it was, and the second challenge,
/// in the slot the first had just cleared, dropped it again and again).
#[test]
fn a_retransmission_that_passed_the_challenge_is_not_challenged_again_for_the_rate() {
    let mut t = challenge_and_rate_of_one(0);
    // Two connections from one source within a second: the second is over
    // the rate (one SYN a second, burst 1).
    for port in [43_000u16, 43_001] {
        let mut syn = from_peer(false, SYN, u32::from(port), 0);
        syn.src_port = port;
        assert_eq!(
            t.verdict(&syn),
            XDP_DROP,
            "the first SYN of :{port} is challenged"
        );
        assert_eq!(t.verdict(&syn), XDP_PASS, "its retransmission passes");
    }
    let s = t.stats();
    assert_eq!(s.get(Counter::SynChallengePassed), 2);
    assert_eq!(s.get(Counter::DropSynRate), 0);
}
