//! The transition function, proven in userspace: every transition of the TCP
//! state machine as a table test, and property tests over honest and hostile
//! segment sequences. The same function runs in the XDP and TC programs.

use proptest::prelude::*;
use tcp_guard_common::{
    flow::{Direction, Event, Flow, Invalid, Seg, Step, TcpState, cookie_established, transition},
    packet::TcpFlags,
};

const SYN: u8 = TcpFlags::SYN;
const ACK: u8 = TcpFlags::ACK;
const FIN: u8 = TcpFlags::FIN;
const RST: u8 = TcpFlags::RST;
const PSH: u8 = TcpFlags::PSH;

/// One flow and the segments applied to it.
#[derive(Default)]
struct Conn {
    flow: Option<Flow>,
    now: u64,
    events: Vec<Event>,
    invalid: Vec<Invalid>,
}

impl Conn {
    fn send(&mut self, direction: Direction, flags: u8, seq: u32, ack: u32, len: u32) -> Step {
        self.now += 1_000;
        let seg = Seg {
            direction,
            flags: TcpFlags(flags),
            seq,
            ack,
            payload_len: len,
            window: 64_000,
            window_scale: if flags & SYN != 0 { Some(7) } else { None },
        };
        let mut out = Flow::default();
        let step = transition(self.flow.as_ref(), &seg, self.now, &mut out);
        match step {
            Step::Store(event) => {
                self.flow = Some(out);
                self.events.push(event);
            }
            Step::Remove(event) => {
                self.flow = None;
                self.events.push(event);
            }
            Step::Keep(event) => self.events.push(event),
            Step::Invalid(reason) => self.invalid.push(reason),
        }
        step
    }

    /// A segment from the peer (ingress).
    fn peer(&mut self, flags: u8, seq: u32, ack: u32) -> Step {
        self.send(Direction::Ingress, flags, seq, ack, 0)
    }

    /// A segment from the host (egress).
    fn host(&mut self, flags: u8, seq: u32, ack: u32) -> Step {
        self.send(Direction::Egress, flags, seq, ack, 0)
    }

    fn state(&self) -> Option<TcpState> {
        self.flow.and_then(|f| f.state())
    }
}

const J: u32 = 1_000; // peer ISN
const K: u32 = 5_000; // host ISN

/// Peer opens, host answers, peer completes: ESTABLISHED.
fn established() -> Conn {
    let mut c = Conn::default();
    c.peer(SYN, J, 0);
    c.host(SYN | ACK, K, J + 1);
    c.peer(ACK, J + 1, K + 1);
    assert_eq!(c.state(), Some(TcpState::Established));
    c
}

#[test]
fn three_way_handshake_establishes() {
    let mut c = Conn::default();
    c.peer(SYN, J, 0);
    assert_eq!(c.state(), Some(TcpState::SynRcvd));
    c.host(SYN | ACK, K, J + 1);
    assert_eq!(c.state(), Some(TcpState::SynRcvd));
    let flow = c.flow.unwrap();
    assert_eq!((flow.peer_isn, flow.host_isn, flow.host_next), (J, K, K + 1));
    c.peer(ACK, J + 1, K + 1);
    assert_eq!(c.state(), Some(TcpState::Established));
    assert!(c.invalid.is_empty());
    assert_eq!(
        c.events,
        [
            Event::Entered(TcpState::SynRcvd),
            Event::NoChange,
            Event::Entered(TcpState::Established)
        ]
    );
}

#[test]
fn a_cookie_ack_opens_the_flow_a_full_handshake_would() {
    // The SYN was answered from XDP with cookie K: nothing was stored.
    let ack = Seg {
        direction: Direction::Ingress,
        flags: TcpFlags(ACK),
        seq: J + 1,
        ack: K + 1,
        payload_len: 0,
        window: 64_000,
        window_scale: None,
    };
    let mut out = Flow::default();
    let step = cookie_established(&ack, 7, 9_000, &mut out);
    assert_eq!(step, Step::Store(Event::Entered(TcpState::Established)));
    let full = established().flow.unwrap();
    assert_eq!(
        (
            out.peer_isn,
            out.host_isn,
            out.host_next,
            out.peer_next,
            out.host_wscale
        ),
        (
            full.peer_isn,
            full.host_isn,
            full.host_next,
            full.peer_next,
            full.host_wscale
        )
    );
    assert!(out.has(Flow::HOST_SEQ_KNOWN));
    // It closes like any other: the peer's FIN, the host's FIN, the last ACK.
    let mut c = Conn {
        flow: Some(out),
        ..Conn::default()
    };
    c.peer(FIN | ACK, J + 1, K + 1);
    assert_eq!(c.state(), Some(TcpState::CloseWait));
    c.host(FIN | ACK, K + 1, J + 2);
    assert_eq!(c.state(), Some(TcpState::LastAck));
    c.peer(ACK, J + 2, K + 2);
    assert_eq!(c.state(), None);
    assert!(c.invalid.is_empty(), "{:?}", c.invalid);
}

#[test]
fn a_stored_closed_value_counts_as_no_flow() {
    // Found by transition_is_total: the programs never store CLOSED, but a
    // value that says so must not be kept in CLOSED by a host segment.
    let mut c = Conn {
        flow: Some(Flow {
            state: TcpState::Closed as u8,
            ..Flow::default()
        }),
        ..Conn::default()
    };
    c.host(ACK | PSH, K, J);
    assert_eq!(
        c.state(),
        Some(TcpState::Established),
        "adopted as any unknown flow"
    );
    assert_eq!(c.events, [Event::Adopted]);
    let mut c = Conn {
        flow: Some(Flow {
            state: TcpState::Closed as u8,
            ..Flow::default()
        }),
        ..Conn::default()
    };
    assert_eq!(c.peer(ACK, J, K), Step::Invalid(Invalid::NoFlow));
}

#[test]
fn active_open_establishes() {
    let mut c = Conn::default();
    c.host(SYN, K, 0);
    assert_eq!(c.state(), Some(TcpState::SynSent));
    c.peer(SYN | ACK, J, K + 1);
    assert_eq!(c.state(), Some(TcpState::Established));
    c.host(ACK, K + 1, J + 1);
    assert_eq!(c.state(), Some(TcpState::Established));
    assert!(c.invalid.is_empty());
}

#[test]
fn simultaneous_open_establishes() {
    let mut c = Conn::default();
    c.host(SYN, K, 0);
    c.peer(SYN, J, 0);
    assert_eq!(c.state(), Some(TcpState::SynRcvd));
    c.host(SYN | ACK, K, J + 1);
    c.peer(SYN | ACK, J, K + 1);
    assert_eq!(c.state(), Some(TcpState::Established));
    assert!(c.invalid.is_empty());
}

#[test]
fn retransmitted_syn_keeps_syn_rcvd() {
    let mut c = Conn::default();
    c.peer(SYN, J, 0);
    c.host(SYN | ACK, K, J + 1);
    c.peer(SYN, J, 0);
    assert_eq!(c.state(), Some(TcpState::SynRcvd));
    assert_eq!(c.events.last(), Some(&Event::SynRetransmit));
    assert_eq!(
        c.flow.unwrap().host_isn,
        K,
        "the retransmission keeps what the host sent"
    );
}

#[test]
fn syn_with_another_isn_in_syn_rcvd_is_invalid() {
    let mut c = Conn::default();
    c.peer(SYN, J, 0);
    assert_eq!(c.peer(SYN, J + 99, 0), Step::Invalid(Invalid::UnexpectedSyn));
}

#[test]
fn final_ack_must_acknowledge_the_syn_ack() {
    let mut c = Conn::default();
    c.peer(SYN, J, 0);
    c.host(SYN | ACK, K, J + 1);
    for bad in [K, K + 2, 0, u32::MAX] {
        assert_eq!(c.peer(ACK, J + 1, bad), Step::Invalid(Invalid::BadHandshakeAck));
    }
    assert_eq!(c.state(), Some(TcpState::SynRcvd));
}

#[test]
fn with_egress_watched_no_ack_completes_a_handshake_the_host_never_answered() {
    let mut c = Conn::default();
    c.peer(SYN, J, 0);
    // What the kernel side does for a flow opened while egress is watched.
    c.flow.as_mut().unwrap().flags |= Flow::AWAIT_SYN_ACK;
    assert_eq!(c.peer(ACK, J + 1, 12345), Step::Invalid(Invalid::BadHandshakeAck));
    assert_eq!(
        c.peer(FIN | ACK, J + 1, 12345),
        Step::Invalid(Invalid::BadHandshakeAck)
    );
    assert_eq!(c.state(), Some(TcpState::SynRcvd));
    c.host(SYN | ACK, K, J + 1);
    c.peer(ACK, J + 1, K + 1);
    assert_eq!(c.state(), Some(TcpState::Established), "once answered, as usual");
}

#[test]
fn ack_fin_rst_without_a_flow_are_invalid() {
    for flags in [ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN | ACK] {
        let mut c = Conn::default();
        assert_eq!(
            c.peer(flags, J, K),
            Step::Invalid(Invalid::NoFlow),
            "flags {flags:#x}"
        );
        assert!(c.flow.is_none());
    }
}

#[test]
fn syn_ack_for_a_syn_never_sent_is_invalid() {
    let mut c = Conn::default();
    c.host(SYN, K, 0);
    assert_eq!(c.peer(SYN | ACK, J, K + 2), Step::Invalid(Invalid::BadSynAck));
    let mut e = established();
    assert_eq!(
        e.peer(SYN | ACK, J + 77, K + 1),
        Step::Invalid(Invalid::BadSynAck)
    );
}

#[test]
fn flag_combinations_no_stack_sends_are_invalid_both_ways() {
    for flags in [0, FIN, SYN | FIN, SYN | RST, SYN | FIN | RST | ACK | PSH] {
        let mut c = established();
        assert_eq!(c.peer(flags, J + 1, K + 1), Step::Invalid(Invalid::BadFlags));
        assert_eq!(c.host(flags, K + 1, J + 1), Step::Invalid(Invalid::BadFlags));
        assert_eq!(c.state(), Some(TcpState::Established));
    }
}

#[test]
fn data_moves_the_sequence_space() {
    let mut c = established();
    c.send(Direction::Egress, ACK | PSH, K + 1, J + 1, 100);
    assert_eq!(c.flow.unwrap().host_next, K + 101);
    // The peer may acknowledge all of it, not more.
    assert!(matches!(
        c.peer(ACK, J + 1, K + 101),
        Step::Store(Event::NoChange)
    ));
    assert_eq!(c.peer(ACK, J + 1, K + 102), Step::Invalid(Invalid::AckNotSent));
    c.send(Direction::Ingress, ACK | PSH, J + 1, K + 101, 50);
    assert_eq!(c.flow.unwrap().peer_next, J + 51);
}

#[test]
fn four_way_close_from_the_host_goes_through_fin_wait_and_time_wait() {
    let mut c = established();
    c.host(FIN | ACK, K + 1, J + 1);
    assert_eq!(c.state(), Some(TcpState::FinWait1));
    c.peer(ACK, J + 1, K + 1);
    assert_eq!(c.state(), Some(TcpState::FinWait1), "an ACK not covering the FIN");
    c.peer(ACK, J + 1, K + 2);
    assert_eq!(c.state(), Some(TcpState::FinWait2));
    c.peer(FIN | ACK, J + 1, K + 2);
    assert_eq!(c.state(), Some(TcpState::TimeWait));
    c.host(ACK, K + 2, J + 2);
    assert_eq!(c.state(), Some(TcpState::TimeWait));
    assert!(c.invalid.is_empty());
}

#[test]
fn peer_fin_acking_host_fin_goes_straight_to_time_wait() {
    let mut c = established();
    c.host(FIN | ACK, K + 1, J + 1);
    c.peer(FIN | ACK, J + 1, K + 2);
    assert_eq!(c.state(), Some(TcpState::TimeWait));
}

#[test]
fn four_way_close_from_the_peer_goes_through_close_wait_and_last_ack() {
    let mut c = established();
    c.peer(FIN | ACK, J + 1, K + 1);
    assert_eq!(c.state(), Some(TcpState::CloseWait));
    c.host(ACK, K + 1, J + 2);
    assert_eq!(c.state(), Some(TcpState::CloseWait));
    c.host(FIN | ACK, K + 1, J + 2);
    assert_eq!(c.state(), Some(TcpState::LastAck));
    assert!(matches!(c.peer(ACK, J + 2, K + 1), Step::Store(Event::NoChange)));
    assert_eq!(c.state(), Some(TcpState::LastAck), "an ACK not covering the FIN");
    assert_eq!(
        c.peer(ACK, J + 2, K + 2),
        Step::Remove(Event::Entered(TcpState::Closed))
    );
    assert!(c.flow.is_none());
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let mut c = established();
    c.host(FIN | ACK, K + 1, J + 1);
    // The peer's FIN crossed ours: it does not acknowledge our FIN.
    c.peer(FIN | ACK, J + 1, K + 1);
    assert_eq!(c.state(), Some(TcpState::Closing));
    c.host(ACK, K + 2, J + 2);
    assert_eq!(c.state(), Some(TcpState::Closing));
    c.peer(ACK, J + 2, K + 2);
    assert_eq!(c.state(), Some(TcpState::TimeWait));
    assert!(c.invalid.is_empty());
}

#[test]
fn duplicate_fins_are_retransmissions() {
    let mut c = established();
    c.peer(FIN | ACK, J + 1, K + 1);
    c.peer(FIN | ACK, J + 1, K + 1);
    assert_eq!(c.state(), Some(TcpState::CloseWait));
    assert_eq!(c.events.last(), Some(&Event::FinRetransmit));
    c.host(FIN | ACK, K + 1, J + 2);
    c.host(FIN | ACK, K + 1, J + 2);
    assert_eq!(c.state(), Some(TcpState::LastAck));
    assert_eq!(c.events.last(), Some(&Event::FinRetransmit));
}

/// Drives a fresh connection into `state` (host side), with J and K as ISNs.
fn in_state(state: TcpState) -> Conn {
    let mut c = Conn::default();
    match state {
        TcpState::SynSent => {
            c.host(SYN, K, 0);
        }
        TcpState::SynRcvd => {
            c.peer(SYN, J, 0);
            c.host(SYN | ACK, K, J + 1);
        }
        _ => {
            c = established();
            match state {
                TcpState::FinWait1 => {
                    c.host(FIN | ACK, K + 1, J + 1);
                }
                TcpState::FinWait2 => {
                    c.host(FIN | ACK, K + 1, J + 1);
                    c.peer(ACK, J + 1, K + 2);
                }
                TcpState::CloseWait => {
                    c.peer(FIN | ACK, J + 1, K + 1);
                }
                TcpState::Closing => {
                    c.host(FIN | ACK, K + 1, J + 1);
                    c.peer(FIN | ACK, J + 1, K + 1);
                }
                TcpState::LastAck => {
                    c.peer(FIN | ACK, J + 1, K + 1);
                    c.host(FIN | ACK, K + 1, J + 2);
                }
                TcpState::TimeWait => {
                    c.host(FIN | ACK, K + 1, J + 1);
                    c.peer(FIN | ACK, J + 1, K + 2);
                }
                _ => {}
            }
        }
    }
    assert_eq!(c.state(), Some(state), "setting up {state:?}");
    c
}

#[test]
fn rst_in_each_state_closes_only_when_in_window() {
    for state in TcpState::STORED {
        let mut c = in_state(state);
        let next = c.flow.unwrap().peer_next;
        if state == TcpState::SynSent {
            assert_eq!(c.peer(RST, 0, 0), Step::Invalid(Invalid::RstOutOfWindow));
            assert_eq!(
                c.peer(RST | ACK, 0, K + 5),
                Step::Invalid(Invalid::RstOutOfWindow)
            );
            assert_eq!(c.peer(RST | ACK, 0, K + 1), Step::Remove(Event::Reset));
            continue;
        }
        assert_eq!(
            c.peer(RST, next.wrapping_sub(1), 0),
            Step::Invalid(Invalid::RstOutOfWindow),
            "{state:?}: before the window"
        );
        assert_eq!(
            c.peer(RST, next.wrapping_add(64_000 << 7), 0),
            Step::Invalid(Invalid::RstOutOfWindow),
            "{state:?}: past the window"
        );
        assert_eq!(c.state(), Some(state));
        assert_eq!(c.peer(RST, next + 10, 0), Step::Remove(Event::Reset), "{state:?}");
    }
}

/// The host's ACK number is where its window starts: an RST there is in
/// the window even when the table missed the peer's segments before it
/// (a CPU's note absorbed them, see `RecentFlow`).
#[test]
fn the_hosts_ack_moves_the_window_an_rst_is_checked_against() {
    let mut c = established();
    // More than the host's window (64,000 << 7) the table did not see.
    let unseen = 9_000_000;
    c.host(ACK, K + 1, J + 1 + unseen);
    assert_eq!(c.flow.unwrap().peer_next, J + 1 + unseen);
    assert_eq!(c.peer(RST, J + 1 + unseen, 0), Step::Remove(Event::Reset));
}

#[test]
fn host_rst_closes_in_every_state() {
    for state in TcpState::STORED {
        let mut c = in_state(state);
        assert_eq!(
            c.host(RST | ACK, K + 1, J + 1),
            Step::Remove(Event::Reset),
            "{state:?}"
        );
    }
}

#[test]
fn syn_on_an_open_flow_is_invalid_but_reopens_time_wait() {
    for state in [
        TcpState::Established,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::CloseWait,
        TcpState::Closing,
        TcpState::LastAck,
    ] {
        let mut c = in_state(state);
        assert_eq!(
            c.peer(SYN, J + 500, 0),
            Step::Invalid(Invalid::UnexpectedSyn),
            "{state:?}"
        );
    }
    let mut c = in_state(TcpState::TimeWait);
    assert_eq!(
        c.peer(SYN, J, 0),
        Step::Invalid(Invalid::UnexpectedSyn),
        "an old SYN"
    );
    let step = c.peer(SYN, J + 100_000, 0);
    assert!(matches!(step, Step::Store(Event::Reopened)), "{step:?}");
    assert_eq!(c.state(), Some(TcpState::SynRcvd));
}

#[test]
fn egress_adopts_connections_that_predate_the_guard() {
    let mut c = Conn::default();
    c.host(ACK | PSH, K, J);
    let flow = c.flow.unwrap();
    assert_eq!(c.state(), Some(TcpState::Established));
    assert_ne!(flow.flags & Flow::ADOPTED, 0);
    assert_eq!(c.events, [Event::Adopted]);
    // Any RST is believed on an adopted flow: its window is unknown.
    assert_eq!(c.peer(RST, 12345, 0), Step::Remove(Event::Reset));
    let mut f = Conn::default();
    f.host(FIN | ACK, K, J);
    assert_eq!(f.state(), Some(TcpState::FinWait1));
}

#[test]
fn without_egress_the_peer_alone_moves_the_flow() {
    // XDP-only mode: the host's segments are never seen.
    let mut c = Conn::default();
    c.peer(SYN, J, 0);
    assert_eq!(c.state(), Some(TcpState::SynRcvd));
    c.peer(ACK, J + 1, 987_654);
    assert_eq!(
        c.state(),
        Some(TcpState::Established),
        "ack numbers cannot be checked"
    );
    c.peer(FIN | ACK, J + 1, 987_654);
    assert_eq!(c.state(), Some(TcpState::CloseWait));
    assert_eq!(c.peer(RST, J + 2, 0), Step::Remove(Event::Reset));
}

#[test]
fn sequence_numbers_wrap() {
    let j = u32::MAX - 1;
    let k = u32::MAX;
    let mut c = Conn::default();
    c.peer(SYN, j, 0);
    c.host(SYN | ACK, k, j.wrapping_add(1));
    c.peer(ACK, j.wrapping_add(1), k.wrapping_add(1));
    assert_eq!(c.state(), Some(TcpState::Established));
    c.send(Direction::Egress, ACK, k.wrapping_add(1), j.wrapping_add(1), 10);
    c.peer(ACK, j.wrapping_add(1), 10);
    assert!(c.invalid.is_empty(), "{:?}", c.invalid);
    assert_eq!(
        c.peer(ACK, j.wrapping_add(1), 11),
        Step::Invalid(Invalid::AckNotSent)
    );
}

/// How an honest conversation ends.
#[derive(Clone, Copy, Debug)]
enum Close {
    HostFirst,
    PeerFirst,
    Simultaneous,
    HostReset,
    PeerReset,
}

fn close_strategy() -> impl Strategy<Value = Close> {
    prop_oneof![
        Just(Close::HostFirst),
        Just(Close::PeerFirst),
        Just(Close::Simultaneous),
        Just(Close::HostReset),
        Just(Close::PeerReset),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Any flow value and any segment: no panic, and a step that keeps the
    /// state byte valid.
    #[test]
    fn transition_is_total(
        state in any::<u8>(), flags in any::<u8>(), seq in any::<u32>(), ack in any::<u32>(),
        len in 0u32..70_000, fields in any::<[u32; 5]>(), window in any::<u16>(), scale in any::<u8>(),
        known in any::<u8>(), ingress in any::<bool>(), present in any::<bool>(),
    ) {
        let flow = Flow {
            created_ns: 1, last_ns: 1, host_isn: fields[0], peer_isn: fields[1], host_next: fields[2],
            peer_next: fields[3], host_fin: fields[4], generation: 0, host_window: window, host_wscale: scale,
            state, flags: known, prefix_len: 0, _pad: [0; 2],
        };
        let seg = Seg {
            direction: if ingress { Direction::Ingress } else { Direction::Egress },
            flags: TcpFlags(flags), seq, ack, payload_len: len, window, window_scale: Some(scale),
        };
        let mut next = Flow::default();
        if let Step::Store(_) = transition(present.then_some(&flow), &seg, 2, &mut next) {
            prop_assert!(next.state().is_some_and(|s| s != TcpState::Closed));
            prop_assert_eq!(next.last_ns, 2);
        }
    }

    /// Honest peers with random ISNs, data in both directions and any way of
    /// closing: never an invalid segment, and the end state TCP prescribes.
    #[test]
    fn honest_conversations_are_never_invalid(
        j in any::<u32>(), k in any::<u32>(),
        exchanges in prop::collection::vec((any::<bool>(), 1u32..3000), 0..12),
        close in close_strategy(),
    ) {
        let mut c = Conn::default();
        c.peer(SYN, j, 0);
        c.host(SYN | ACK, k, j.wrapping_add(1));
        let (mut p, mut h) = (j.wrapping_add(1), k.wrapping_add(1));
        c.peer(ACK, p, h);
        for (from_host, len) in exchanges {
            if from_host {
                c.send(Direction::Egress, ACK | PSH, h, p, len);
                h = h.wrapping_add(len);
                c.peer(ACK, p, h);
            } else {
                c.send(Direction::Ingress, ACK | PSH, p, h, len);
                p = p.wrapping_add(len);
                c.host(ACK, h, p);
            }
        }
        let end = match close {
            Close::HostFirst => {
                c.host(FIN | ACK, h, p);
                c.peer(ACK, p, h.wrapping_add(1));
                c.peer(FIN | ACK, p, h.wrapping_add(1));
                c.host(ACK, h.wrapping_add(1), p.wrapping_add(1));
                Some(TcpState::TimeWait)
            }
            Close::PeerFirst => {
                c.peer(FIN | ACK, p, h);
                c.host(ACK, h, p.wrapping_add(1));
                c.host(FIN | ACK, h, p.wrapping_add(1));
                c.peer(ACK, p.wrapping_add(1), h.wrapping_add(1));
                None
            }
            Close::Simultaneous => {
                c.host(FIN | ACK, h, p);
                c.peer(FIN | ACK, p, h);
                c.host(ACK, h.wrapping_add(1), p.wrapping_add(1));
                c.peer(ACK, p.wrapping_add(1), h.wrapping_add(1));
                Some(TcpState::TimeWait)
            }
            Close::HostReset => {
                c.host(RST | ACK, h, p);
                None
            }
            Close::PeerReset => {
                c.peer(RST, p, 0);
                None
            }
        };
        prop_assert!(c.invalid.is_empty(), "{:?} gave {:?}", close, c.invalid);
        prop_assert_eq!(c.state(), end);
    }

    /// A blind attacker who does not know K cannot complete a handshake.
    #[test]
    fn spoofed_handshake_acks_never_establish(k in any::<u32>(), guess in any::<u32>()) {
        prop_assume!(guess != k.wrapping_add(1));
        let mut c = Conn::default();
        c.peer(SYN, J, 0);
        c.host(SYN | ACK, k, J + 1);
        prop_assert_eq!(c.peer(ACK, J + 1, guess), Step::Invalid(Invalid::BadHandshakeAck));
        prop_assert_eq!(c.state(), Some(TcpState::SynRcvd));
    }

    /// Blind ACKs and RSTs against an established flow: an ACK for bytes
    /// never sent, or an RST outside the window, changes nothing.
    #[test]
    fn blind_segments_do_not_move_established_flows(ack in any::<u32>(), seq in any::<u32>(), sent in 0u32..100_000) {
        let mut c = established();
        c.send(Direction::Egress, ACK | PSH, K + 1, J + 1, sent);
        let host_next = K + 1 + sent;
        let in_flight = ack.wrapping_sub(K + 1) <= host_next.wrapping_sub(K + 1);
        let step = c.peer(ACK, J + 1, ack);
        if !in_flight {
            prop_assert_eq!(step, Step::Invalid(Invalid::AckNotSent));
        }
        prop_assert_eq!(c.state(), Some(TcpState::Established));
        let window = 64_000u32 << 7;
        let in_window = seq.wrapping_sub(J + 1) < window;
        let rst = c.peer(RST, seq, 0);
        prop_assert_eq!(rst == Step::Remove(Event::Reset), in_window);
    }
}
