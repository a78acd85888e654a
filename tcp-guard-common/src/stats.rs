//! Packet counters: one enum, one name per counter, used by the kernel side,
//! `tcp-guard stats`, its JSON and any exporter alike.

use crate::{
    flow::{Event, Invalid, TcpState},
    packet::{Dissection, Malformed, Outcome, TcpClass},
    policy::DropReason,
};

macro_rules! counters {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, )*) => {
        /// Number of counters, the length of [`Stats::counters`].
        pub const COUNTER_COUNT: usize = [$( stringify!($variant), )*].len();

        /// Index of a counter in [`Stats::counters`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Counter {
            $( $(#[$doc])* $variant, )*
        }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: [Counter; COUNTER_COUNT] = [ $( Counter::$variant, )* ];

            /// Stable name: used in plain and JSON output and metrics.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Counter::$variant => $name, )*
                }
            }
        }
    };
}

counters! {
    /// Every frame the XDP program saw.
    Packets => "packets",
    Ipv4 => "ipv4",
    Ipv6 => "ipv6",
    /// Frames with an 802.1Q/802.1ad tag.
    Vlan => "vlan",
    /// Not IPv4 or IPv6 (ARP, ...).
    NonIp => "non_ip",
    /// IP, not TCP.
    NonTcp => "non_tcp",
    Ipv4Fragment => "ipv4_fragment",
    /// IPv6 with extension headers: passed without a look at the transport.
    Ipv6Extension => "ipv6_extension",
    Syn => "syn",
    SynAck => "syn_ack",
    Ack => "ack",
    Fin => "fin",
    Rst => "rst",
    /// TCP with a flag combination no stack sends.
    TcpOtherFlags => "tcp_other_flags",
    /// A SYN or SYN-ACK whose option list is cut short or has bad lengths.
    TcpBadOptions => "tcp_bad_options",
    MalformedEthernetTruncated => "malformed_ethernet_truncated",
    MalformedVlanTruncated => "malformed_vlan_truncated",
    MalformedIpv4Truncated => "malformed_ipv4_truncated",
    MalformedIpv4BadVersion => "malformed_ipv4_bad_version",
    MalformedIpv4BadHeaderLength => "malformed_ipv4_bad_header_length",
    MalformedIpv4BadTotalLength => "malformed_ipv4_bad_total_length",
    MalformedIpv6Truncated => "malformed_ipv6_truncated",
    MalformedIpv6BadVersion => "malformed_ipv6_bad_version",
    MalformedIpv6BadPayloadLength => "malformed_ipv6_bad_payload_length",
    MalformedTcpTruncated => "malformed_tcp_truncated",
    MalformedTcpBadDataOffset => "malformed_tcp_bad_data_offset",
    /// Every frame the TC egress program saw.
    EgressPackets => "egress_packets",
    /// BIG TCP packets the host sent (GSO past 64 KiB, the IP length field
    /// 0), each tracked as one segment at its socket buffer's length.
    EgressBigTcp => "egress_big_tcp",
    /// Frames the host sent that the parser took for malformed, untracked.
    EgressMalformed => "egress_malformed",
    /// Flows entering each state (the per-transition counters).
    ToSynSent => "to_syn_sent",
    ToSynRcvd => "to_syn_rcvd",
    ToEstablished => "to_established",
    ToFinWait1 => "to_fin_wait_1",
    ToFinWait2 => "to_fin_wait_2",
    ToCloseWait => "to_close_wait",
    ToClosing => "to_closing",
    ToLastAck => "to_last_ack",
    ToTimeWait => "to_time_wait",
    /// Closed by the last ACK of a close.
    ToClosed => "to_closed",
    /// Closed by a valid RST, either way.
    FlowReset => "flow_reset",
    /// An unknown flow picked up from a segment the host sent.
    FlowAdopted => "flow_adopted",
    /// A SYN on a TIME-WAIT flow opened a new connection on the same tuple.
    FlowReopened => "flow_reopened",
    SynRetransmit => "syn_retransmit",
    FinRetransmit => "fin_retransmit",
    InvalidNoFlow => "invalid_no_flow",
    InvalidBadHandshakeAck => "invalid_bad_handshake_ack",
    InvalidBadSynAck => "invalid_bad_syn_ack",
    InvalidUnexpectedSyn => "invalid_unexpected_syn",
    InvalidAckNotSent => "invalid_ack_not_sent",
    InvalidRstOutOfWindow => "invalid_rst_out_of_window",
    InvalidBadFlags => "invalid_bad_flags",
    /// A half-open flow not tracked: the half-open flows' share of the flow table was taken, or the table was full.
    HalfOpenTableFull => "half_open_table_full",
    /// Any other flow not tracked: the flow table was full.
    FlowTableFull => "flow_table_full",
    /// Packets dropped: the source is on the block list (any IP packet).
    DropBlocked => "drop_blocked",
    /// SYNs dropped: the source's token bucket was empty.
    DropSynRate => "drop_syn_rate",
    /// SYNs dropped: a half-open limit was reached.
    DropGlobalHalfOpen => "drop_global_half_open",
    DropSourceHalfOpen => "drop_source_half_open",
    DropPrefixHalfOpen => "drop_prefix_half_open",
    DropPortHalfOpen => "drop_port_half_open",
    /// SYNs dropped in attack mode: unverified source (verified-only).
    DropUnverified => "drop_unverified",
    /// SYNs dropped in attack mode: an unknown source's first SYN (retransmit-challenge).
    DropChallenge => "drop_challenge",
    /// SYNs dropped: the flow table had no room for their half-open flow.
    DropTableFull => "drop_table_full",
    /// ACKs dropped in attack mode (syncookie): no flow, and no valid cookie.
    DropBadCookie => "drop_bad_cookie",
    /// SYNs dropped in attack mode (syncookie): the kernel's cookie helper refused them.
    DropCookieUnanswered => "drop_cookie_unanswered",
    /// TCP the parser cannot fully see (an IPv4 fragment, IPv6 behind
    /// extension headers), dropped in attack mode (`attack.drop_unparsed_tcp`).
    DropUnparsedTcp => "drop_unparsed_tcp",
    /// SYNs not answered with a cookie and ACKs whose cookie was not
    /// accepted: their IPv4 or TCP checksum was wrong.
    DropBadChecksum => "drop_bad_checksum",
    /// SYNs exempt from limits: the source is on the allow list.
    SynAllowlisted => "syn_allowlisted",
    /// SYNs passed in attack mode because the source is verified.
    SynVerified => "syn_verified",
    /// SYNs passed in attack mode as retransmissions of a challenged SYN.
    SynChallengePassed => "syn_challenge_passed",
    /// SYNs answered from XDP with a cookie SYN-ACK (syncookie policy).
    SynCookieSent => "syn_cookie_sent",
    /// SYNs let through to a listener in attack mode (syncookie policy) so
    /// that it keeps accepting cookies (see `policy::COOKIE_REFRESH_NS`).
    SynCookieRefresh => "syn_cookie_refresh",
    /// ACKs with a valid cookie: the flow is tracked and handed to the listener.
    CookieAckValid => "cookie_ack_valid",
    /// Events the ring buffer had no room for.
    EventsLost => "events_lost",
    /// Segments whose flow another CPU was updating at the same moment:
    /// not applied to the flow (the flow's next segment is).
    FlowBusy => "flow_busy",
    /// The peer's ACKs on an established flow checked against the note this
    /// CPU made of the flow within the same clock tick, without a flow-table
    /// update (see `flow::RecentFlow`).
    AckRecentFlow => "ack_recent_flow",
    /// Packets a rule in monitor mode (`monitor.*`) would have dropped and
    /// passed instead, one per drop reason a monitored rule can give.
    WouldDropBlocked => "would_drop_blocked",
    WouldDropSynRate => "would_drop_syn_rate",
    WouldDropGlobalHalfOpen => "would_drop_global_half_open",
    WouldDropSourceHalfOpen => "would_drop_source_half_open",
    WouldDropPrefixHalfOpen => "would_drop_prefix_half_open",
    WouldDropPortHalfOpen => "would_drop_port_half_open",
    WouldDropUnverified => "would_drop_unverified",
    WouldDropChallenge => "would_drop_challenge",
    WouldDropTableFull => "would_drop_table_full",
    WouldDropUnparsedTcp => "would_drop_unparsed_tcp",
    /// SYNs the attack rule in monitor mode would have answered with a
    /// cookie, passed to the listener instead.
    WouldAnswerWithCookie => "would_answer_with_cookie",
}

impl Counter {
    /// Counters of malformed packets, one per [`Malformed`] reason.
    pub const fn is_malformed(self) -> bool {
        let index = self as u32;
        index >= Counter::MalformedEthernetTruncated as u32
            && index <= Counter::MalformedTcpBadDataOffset as u32
    }

    /// Counters of packets dropped, one per [`DropReason`].
    pub const fn is_drop(self) -> bool {
        let index = self as u32;
        index >= Counter::DropBlocked as u32 && index <= Counter::DropBadChecksum as u32
    }

    /// Counters of packets a rule in monitor mode would have dropped.
    pub const fn is_would_drop(self) -> bool {
        let index = self as u32;
        index >= Counter::WouldDropBlocked as u32 && index <= Counter::WouldDropUnparsedTcp as u32
    }

    /// Counters of ingress segments rejected by the flow tracker, one per [`Invalid`] reason.
    pub const fn is_invalid(self) -> bool {
        let index = self as u32;
        index >= Counter::InvalidNoFlow as u32 && index <= Counter::InvalidBadFlags as u32
    }
}

impl Malformed {
    pub const fn counter(self) -> Counter {
        match self {
            Malformed::EthernetTruncated => Counter::MalformedEthernetTruncated,
            Malformed::VlanTruncated => Counter::MalformedVlanTruncated,
            Malformed::Ipv4Truncated => Counter::MalformedIpv4Truncated,
            Malformed::Ipv4BadVersion => Counter::MalformedIpv4BadVersion,
            Malformed::Ipv4BadHeaderLength => Counter::MalformedIpv4BadHeaderLength,
            Malformed::Ipv4BadTotalLength => Counter::MalformedIpv4BadTotalLength,
            Malformed::Ipv6Truncated => Counter::MalformedIpv6Truncated,
            Malformed::Ipv6BadVersion => Counter::MalformedIpv6BadVersion,
            Malformed::Ipv6BadPayloadLength => Counter::MalformedIpv6BadPayloadLength,
            Malformed::TcpTruncated => Counter::MalformedTcpTruncated,
            Malformed::TcpBadDataOffset => Counter::MalformedTcpBadDataOffset,
        }
    }
}

impl TcpState {
    /// The counter of flows entering this state.
    pub const fn entered_counter(self) -> Counter {
        match self {
            TcpState::SynSent => Counter::ToSynSent,
            TcpState::SynRcvd => Counter::ToSynRcvd,
            TcpState::Established => Counter::ToEstablished,
            TcpState::FinWait1 => Counter::ToFinWait1,
            TcpState::FinWait2 => Counter::ToFinWait2,
            TcpState::CloseWait => Counter::ToCloseWait,
            TcpState::Closing => Counter::ToClosing,
            TcpState::LastAck => Counter::ToLastAck,
            TcpState::TimeWait => Counter::ToTimeWait,
            TcpState::Closed => Counter::ToClosed,
        }
    }
}

impl Event {
    /// The counter this event bumps; plain data and ACKs bump none.
    pub const fn counter(self) -> Option<Counter> {
        Some(match self {
            Event::Entered(state) => state.entered_counter(),
            Event::Reset => Counter::FlowReset,
            Event::Adopted => Counter::FlowAdopted,
            Event::Reopened => Counter::FlowReopened,
            Event::SynRetransmit => Counter::SynRetransmit,
            Event::FinRetransmit => Counter::FinRetransmit,
            Event::NoChange => return None,
        })
    }
}

impl Invalid {
    pub const fn counter(self) -> Counter {
        match self {
            Invalid::NoFlow => Counter::InvalidNoFlow,
            Invalid::BadHandshakeAck => Counter::InvalidBadHandshakeAck,
            Invalid::BadSynAck => Counter::InvalidBadSynAck,
            Invalid::UnexpectedSyn => Counter::InvalidUnexpectedSyn,
            Invalid::AckNotSent => Counter::InvalidAckNotSent,
            Invalid::RstOutOfWindow => Counter::InvalidRstOutOfWindow,
            Invalid::BadFlags => Counter::InvalidBadFlags,
        }
    }
}

impl DropReason {
    pub const fn counter(self) -> Counter {
        match self {
            DropReason::Blocked => Counter::DropBlocked,
            DropReason::SynRate => Counter::DropSynRate,
            DropReason::GlobalHalfOpen => Counter::DropGlobalHalfOpen,
            DropReason::SourceHalfOpen => Counter::DropSourceHalfOpen,
            DropReason::PrefixHalfOpen => Counter::DropPrefixHalfOpen,
            DropReason::PortHalfOpen => Counter::DropPortHalfOpen,
            DropReason::Unverified => Counter::DropUnverified,
            DropReason::Challenge => Counter::DropChallenge,
            DropReason::TableFull => Counter::DropTableFull,
            DropReason::BadCookie => Counter::DropBadCookie,
            DropReason::CookieUnanswered => Counter::DropCookieUnanswered,
        }
    }

    /// What monitor mode counts instead of dropping for this reason; None
    /// for the reasons of the cookie path, which monitor mode never takes
    /// (while the attack rule is monitored no cookie is sent or checked).
    pub const fn would_counter(self) -> Option<Counter> {
        Some(match self {
            DropReason::Blocked => Counter::WouldDropBlocked,
            DropReason::SynRate => Counter::WouldDropSynRate,
            DropReason::GlobalHalfOpen => Counter::WouldDropGlobalHalfOpen,
            DropReason::SourceHalfOpen => Counter::WouldDropSourceHalfOpen,
            DropReason::PrefixHalfOpen => Counter::WouldDropPrefixHalfOpen,
            DropReason::PortHalfOpen => Counter::WouldDropPortHalfOpen,
            DropReason::Unverified => Counter::WouldDropUnverified,
            DropReason::Challenge => Counter::WouldDropChallenge,
            DropReason::TableFull => Counter::WouldDropTableFull,
            DropReason::BadCookie | DropReason::CookieUnanswered => return None,
        })
    }
}

impl TcpClass {
    pub const fn counter(self) -> Counter {
        match self {
            TcpClass::Syn => Counter::Syn,
            TcpClass::SynAck => Counter::SynAck,
            TcpClass::Ack => Counter::Ack,
            TcpClass::Fin => Counter::Fin,
            TcpClass::Rst => Counter::Rst,
            TcpClass::Other => Counter::TcpOtherFlags,
        }
    }
}

impl Dissection {
    /// The one counter that says what this frame was.
    pub const fn class_counter(&self) -> Counter {
        match self.outcome {
            Outcome::NonIp => Counter::NonIp,
            Outcome::NonTcp => Counter::NonTcp,
            Outcome::Ipv4Fragment => Counter::Ipv4Fragment,
            Outcome::Ipv6Extension => Counter::Ipv6Extension,
            Outcome::Tcp => self.segment.flags.class().counter(),
            Outcome::Malformed(reason) => reason.counter(),
        }
    }
}

/// The value of the per-CPU `STATS` map's single entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub counters: [u64; COUNTER_COUNT],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            counters: [0; COUNTER_COUNT],
        }
    }
}

impl Stats {
    #[inline(always)]
    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize]
    }

    /// Adds another CPU's (or snapshot's) counts to these.
    pub fn add(&mut self, other: &Stats) {
        for (mine, theirs) in self.counters.iter_mut().zip(other.counters.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_counter_and_only_those_count_as_drops() {
        for counter in Counter::ALL {
            assert_eq!(
                counter.is_drop(),
                counter.as_str().starts_with("drop_"),
                "{}",
                counter.as_str()
            );
        }
    }

    #[test]
    fn every_would_drop_counter_and_only_those_count_as_would_drops() {
        for counter in Counter::ALL {
            assert_eq!(
                counter.is_would_drop(),
                counter.as_str().starts_with("would_drop_"),
                "{}",
                counter.as_str()
            );
        }
    }

    #[test]
    fn a_would_drop_counter_names_its_drop_counter() {
        for counter in Counter::ALL.iter().filter(|c| c.is_would_drop()) {
            let drop = format!("drop_{}", &counter.as_str()["would_drop_".len()..]);
            assert!(
                Counter::ALL.iter().any(|c| c.as_str() == drop),
                "{} has no {drop}",
                counter.as_str()
            );
        }
    }

    #[test]
    fn counter_indices_follow_all() {
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, i);
        }
    }

    #[test]
    fn counter_names_are_unique() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }

    #[test]
    fn every_invalid_reason_has_an_invalid_counter() {
        for reason in Invalid::ALL {
            assert!(reason.counter().is_invalid(), "{reason:?}");
        }
        let invalid = Counter::ALL.iter().filter(|c| c.is_invalid()).count();
        assert_eq!(invalid, Invalid::ALL.len());
    }

    #[test]
    fn every_malformed_reason_has_a_malformed_counter() {
        for reason in Malformed::ALL {
            assert!(reason.counter().is_malformed(), "{reason:?}");
        }
        let malformed = Counter::ALL.iter().filter(|c| c.is_malformed()).count();
        assert_eq!(malformed, Malformed::ALL.len());
    }
}
