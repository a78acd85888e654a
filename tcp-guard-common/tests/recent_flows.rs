//! A CPU's notes of established flows (`RecentFlow`), proven against the
//! flow table alone: the peer's ACKs a note absorbs would have changed the
//! stored flow in nothing but `peer_next`, and once the note is merged back
//! the flow is the one the table alone would hold. The fast path applies the
//! same functions (`tcp-guard-ebpf/src/flow.rs`), in the same order as
//! [`Cpu::segment`] here.

use proptest::prelude::*;
use tcp_guard_common::{
    flow::{Direction, Event, Flow, RECENT_FLOW_SLOTS, RecentFlow, Seg, Step, TcpState, transition},
    packet::{Family, TcpClass, TcpFlags, TcpSegment},
};

const SYN: u8 = TcpFlags::SYN;
const ACK: u8 = TcpFlags::ACK;
const FIN: u8 = TcpFlags::FIN;
const RST: u8 = TcpFlags::RST;
const PSH: u8 = TcpFlags::PSH;

/// The tick of the coarse clock, in ns.
const TICK: u64 = 4_000_000;

fn segment(direction: Direction, flags: u8, seq: u32, ack: u32, len: u32) -> TcpSegment {
    let (peer, host) = ([198, 18, 0, 7], [198, 19, 0, 1]);
    let (src, dst, src_port, dst_port) = match direction {
        Direction::Ingress => (peer, host, 40_000, 443),
        Direction::Egress => (host, peer, 443, 40_000),
    };
    let mut s = TcpSegment::NONE;
    s.src[..4].copy_from_slice(&src);
    s.dst[..4].copy_from_slice(&dst);
    s.src_port = src_port;
    s.dst_port = dst_port;
    s.seq = seq;
    s.ack = ack;
    s.payload_len = len;
    s.window = 64_000;
    s.flags = TcpFlags(flags);
    s.family = Family::V4;
    s
}

/// One flow as the table alone holds it.
struct Table {
    flow: Option<Flow>,
}

impl Table {
    fn segment(&mut self, s: &TcpSegment, direction: Direction, now: u64) -> Step {
        let mut out = Flow::default();
        let step = transition(self.flow.as_ref(), &Seg::new(s, direction, None), now, &mut out);
        match step {
            Step::Store(_) => self.flow = Some(out),
            Step::Remove(_) => self.flow = None,
            Step::Keep(_) | Step::Invalid(_) => {}
        }
        step
    }
}

/// One flow as the fast path holds it: the table, and one CPU's note.
struct Cpu {
    table: Table,
    note: RecentFlow,
}

impl Cpu {
    /// A CPU with no note yet, and `flow` in the table.
    fn with(flow: Flow) -> Cpu {
        Cpu {
            table: Table { flow: Some(flow) },
            note: RecentFlow::default(),
        }
    }

    /// A segment `direction` takes, at `now`: whether the note absorbed it.
    fn send(&mut self, direction: Direction, flags: u8, seq: u32, ack: u32, len: u32, now: u64) -> bool {
        self.segment(&segment(direction, flags, seq, ack, len), direction, now)
    }

    /// Whether the note absorbed it; else the table took it. In the order
    /// of the fast path: the XDP program's look at the note
    /// (`check_note`), then the tracker's merge, transition and store, and
    /// the note made again or dropped after a store (`renote`) or removal.
    fn segment(&mut self, s: &TcpSegment, direction: Direction, now: u64) -> bool {
        let class = s.flags.class();
        let ingress_ack = direction == Direction::Ingress && class == TcpClass::Ack;
        let kept = self.note.is_for(s, direction);
        if ingress_ack && kept && self.note.absorbs(&Seg::new(s, direction, None), now) {
            return true;
        }
        // The XDP program tells the tracker when it found no note
        // (`NO_NOTE`); a SYN changes no flow a note is kept of.
        let note_kept = (!ingress_ack || kept) && class != TcpClass::Syn;
        let mut old = self.table.flow;
        if let Some(old) = old.as_mut()
            && note_kept
            && self.note.is_for(s, direction)
        {
            self.note.merge_into(old);
            if direction == Direction::Egress && self.note.bounded == 0 {
                self.note.clear();
            }
        }
        let busy = old.is_some_and(|o| o.last_ns == now);
        let mut out = Flow::default();
        match transition(old.as_ref(), &Seg::new(s, direction, None), now, &mut out) {
            Step::Store(_) => {
                self.table.flow = Some(out);
                if direction == Direction::Ingress
                    && (busy || note_kept)
                    && !(busy && self.note.note(s, direction, &out))
                    && self.note.is_for(s, direction)
                {
                    self.note.clear();
                }
            }
            Step::Remove(_) => {
                self.table.flow = None;
                if self.note.is_for(s, direction) {
                    self.note.clear();
                }
            }
            Step::Keep(_) | Step::Invalid(_) => {}
        }
        false
    }

    /// The flow as the CPU's next table update of it starts from.
    fn flow(&self) -> Option<Flow> {
        let mut flow = self.table.flow?;
        self.note.merge_into(&mut flow);
        Some(flow)
    }
}

/// What happens next on the connection.
#[derive(Clone, Copy, Debug)]
enum Next {
    /// The peer sends this many bytes (0: a pure ACK), acknowledging all
    /// the host sent.
    PeerData(u32),
    /// The peer acknowledges this many bytes fewer than the host sent.
    PeerAckBehind(u32),
    /// A blind ACK number.
    PeerAckAny(u32),
    HostData(u32),
    HostFin,
    PeerFin,
    /// The peer's RST at its next sequence number.
    PeerRst,
    /// The clock moves on a tick.
    Tick,
}

fn next_strategy() -> impl Strategy<Value = Next> {
    prop_oneof![
        6 => (0u32..3000).prop_map(Next::PeerData),
        2 => (0u32..5000).prop_map(Next::PeerAckBehind),
        1 => any::<u32>().prop_map(Next::PeerAckAny),
        3 => (1u32..3000).prop_map(Next::HostData),
        1 => Just(Next::HostFin),
        1 => Just(Next::PeerFin),
        1 => Just(Next::PeerRst),
        2 => Just(Next::Tick),
    ]
}

/// An established flow at `now`, the handshake seen both ways.
fn established(j: u32, k: u32, now: u64) -> Flow {
    established_seen(j, k, now, true)
}

/// An established flow at `now`; with `syn_ack` false the host's SYN-ACK
/// went unseen (no egress program yet): its sequence numbers are unknown.
fn established_seen(j: u32, k: u32, now: u64, syn_ack: bool) -> Flow {
    let mut table = Table { flow: None };
    table.segment(
        &segment(Direction::Ingress, SYN, j, 0, 0),
        Direction::Ingress,
        now,
    );
    if syn_ack {
        table.segment(
            &segment(Direction::Egress, SYN | ACK, k, j.wrapping_add(1), 0),
            Direction::Egress,
            now,
        );
    }
    table.segment(
        &segment(Direction::Ingress, ACK, j.wrapping_add(1), k.wrapping_add(1), 0),
        Direction::Ingress,
        now,
    );
    let flow = table.flow.expect("established");
    assert_eq!(flow.state(), Some(TcpState::Established));
    flow
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Any conversation, honest or blind, in and across ticks: what a note
    /// absorbs the table alone would have stored unchanged but for
    /// `peer_next`, and after every segment the flow the CPU holds (its
    /// note merged) is the one the table alone holds.
    #[test]
    fn a_note_absorbs_only_what_the_table_would_store_unchanged(
        j in any::<u32>(), k in any::<u32>(), syn_ack_seen in any::<bool>(),
        steps in prop::collection::vec(next_strategy(), 1..40),
    ) {
        let mut now = 1_000 * TICK;
        let start = established_seen(j, k, now, syn_ack_seen);
        let mut alone = Table { flow: Some(start) };
        let mut cpu = Cpu::with(start);
        let (mut p, mut h) = (j.wrapping_add(1), k.wrapping_add(1));
        for next in steps {
            let (direction, s) = match next {
                Next::Tick => {
                    now += TICK;
                    continue;
                }
                Next::PeerData(len) => {
                    let s = segment(Direction::Ingress, if len == 0 { ACK } else { ACK | PSH }, p, h, len);
                    p = p.wrapping_add(len);
                    (Direction::Ingress, s)
                }
                Next::PeerAckBehind(behind) => {
                    (Direction::Ingress, segment(Direction::Ingress, ACK, p, h.wrapping_sub(behind), 0))
                }
                Next::PeerAckAny(ack) => (Direction::Ingress, segment(Direction::Ingress, ACK, p, ack, 0)),
                Next::HostData(len) => {
                    let s = segment(Direction::Egress, ACK | PSH, h, p, len);
                    h = h.wrapping_add(len);
                    (Direction::Egress, s)
                }
                Next::HostFin => {
                    let s = segment(Direction::Egress, FIN | ACK, h, p, 0);
                    h = h.wrapping_add(1);
                    (Direction::Egress, s)
                }
                Next::PeerFin => {
                    let s = segment(Direction::Ingress, FIN | ACK, p, h, 0);
                    p = p.wrapping_add(1);
                    (Direction::Ingress, s)
                }
                Next::PeerRst => (Direction::Ingress, segment(Direction::Ingress, RST, p, 0, 0)),
            };
            let before = alone.flow;
            let step = alone.segment(&s, direction, now);
            if cpu.segment(&s, direction, now) {
                prop_assert_eq!(step, Step::Store(Event::NoChange), "absorbed {:?}", next);
                let (before, after) = (before.expect("a flow"), alone.flow.expect("stored"));
                prop_assert_eq!(after.state, before.state);
                prop_assert_eq!(Flow { peer_next: before.peer_next, last_ns: before.last_ns, ..after }, before);
            }
            prop_assert_eq!(cpu.flow(), alone.flow, "after {:?}", next);
        }
    }
}

/// A busy flow's ACKs are absorbed from its third segment in a tick; a
/// merged `peer_next` is what an RST at the peer's next sequence number is
/// checked against; the ACK of the host's FIN is never absorbed.
#[test]
fn a_busy_flow_is_noted_and_the_ack_of_the_hosts_fin_goes_to_the_table() {
    let (j, k, now) = (10, 20, 1_000 * TICK);
    let mut cpu = Cpu::with(established(j, k, now - TICK));
    let (mut p, h) = (j + 1, k + 1);
    let mut absorbed = Vec::new();
    for _ in 0..5 {
        absorbed.push(cpu.send(Direction::Ingress, ACK | PSH, p, h, 100, now));
        p += 100;
    }
    assert_eq!(
        absorbed,
        [false, false, true, true, true],
        "noted by the second of its tick"
    );
    assert_eq!(
        cpu.table.flow.unwrap().peer_next,
        j + 1 + 200,
        "the table as of the note"
    );
    assert_eq!(cpu.flow().unwrap().peer_next, p, "the note's ACKs merged");

    // The host's FIN (egress): the peer's ACK of it moves the flow on.
    assert!(!cpu.send(Direction::Egress, FIN | ACK, h, p, 0, now));
    assert_eq!(cpu.flow().unwrap().state(), Some(TcpState::FinWait1));
    assert!(!cpu.send(Direction::Ingress, ACK, p, h + 1, 0, now));
    assert_eq!(cpu.flow().unwrap().state(), Some(TcpState::FinWait2));
}

#[test]
fn an_rst_is_checked_against_the_peer_next_the_note_absorbed() {
    let (j, k, now) = (10, 20, 1_000 * TICK);
    let mut cpu = Cpu::with(established(j, k, now - TICK));
    let (mut p, h) = (j + 1, k + 1);
    // Far more than the host's window (64,000 unscaled) absorbed in one tick.
    for _ in 0..100 {
        cpu.send(Direction::Ingress, ACK | PSH, p, h, 1400, now);
        p += 1400;
    }
    assert!(
        cpu.table.flow.unwrap().peer_next.wrapping_add(64_000) < p,
        "the table trails"
    );
    assert!(!cpu.send(Direction::Ingress, RST, p, 0, 0, now));
    assert_eq!(
        cpu.flow(),
        None,
        "the RST in the window the note kept closed the flow"
    );
}

#[test]
fn a_note_is_only_for_its_own_flow_and_tick() {
    let (j, k, now) = (10, 20, 1_000 * TICK);
    let flow = established(j, k, now);
    let s = segment(Direction::Ingress, ACK, j + 1, k + 1, 0);
    let mut note = RecentFlow::default();
    assert!(
        !note.is_for(&s, Direction::Ingress),
        "an empty slot notes nothing"
    );
    assert!(note.note(&s, Direction::Ingress, &flow));
    assert!(note.is_for(&s, Direction::Ingress));
    assert!(note.is_for(
        &segment(Direction::Egress, ACK, k + 1, j + 1, 0),
        Direction::Egress
    ));
    let mut other = s;
    other.src_port += 1;
    assert!(!note.is_for(&other, Direction::Ingress));
    assert!(RecentFlow::slot(&s, Direction::Ingress) < RECENT_FLOW_SLOTS);
    assert_eq!(
        RecentFlow::slot(&s, Direction::Ingress),
        RecentFlow::slot(&segment(Direction::Egress, ACK, 0, 0, 0), Direction::Egress),
        "both directions find the same slot"
    );
    assert!(
        !note
            .clone()
            .absorbs(&Seg::new(&s, Direction::Ingress, None), now + TICK),
        "a later tick"
    );
    assert!(note.absorbs(&Seg::new(&s, Direction::Ingress, None), now));
    let fin = segment(Direction::Ingress, FIN | ACK, j + 1, k + 1, 0);
    assert!(
        !note.absorbs(&Seg::new(&fin, Direction::Ingress, None), now),
        "FIN"
    );
    let beyond = segment(Direction::Ingress, ACK, j + 1, k + 2, 0);
    assert!(
        !note.absorbs(&Seg::new(&beyond, Direction::Ingress, None), now),
        "acks unsent bytes"
    );

    let mut syn_rcvd = flow;
    syn_rcvd.state = TcpState::SynRcvd as u8;
    let mut fresh = RecentFlow::default();
    assert!(
        !fresh.note(&s, Direction::Ingress, &syn_rcvd),
        "only established flows"
    );
    // A later connection on the same ports, even in the same tick, takes
    // nothing from an old note, nor do its segments pass by it.
    let mut later = flow;
    later.peer_isn = j + 1_000_000;
    later.peer_next = 0;
    note.merge_into(&mut later);
    assert_eq!(later.peer_next, 0, "another connection");
    let handshake = segment(Direction::Ingress, ACK, j + 1_000_001, k + 1, 0);
    assert!(
        !note.absorbs(&Seg::new(&handshake, Direction::Ingress, None), now),
        "another ISN"
    );
    // A note older than the flow's last store is spent.
    let mut stored_later = flow;
    stored_later.last_ns = now + TICK;
    stored_later.peer_next = 0;
    note.merge_into(&mut stored_later);
    assert_eq!(stored_later.peer_next, 0, "spent");
    let mut behind = flow;
    behind.peer_next = 0;
    note.merge_into(&mut behind);
    assert_eq!(behind.peer_next, j + 1, "merged");
    note.clear();
    assert!(!note.is_for(&s, Direction::Ingress));
}
