//! Packet counters: one enum, one name per counter, used by the kernel side,
//! `tcp-guard stats`, its JSON and any exporter alike.

use crate::packet::{Dissection, Malformed, Outcome, TcpClass};

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
}

impl Counter {
    /// Counters of malformed packets, one per [`Malformed`] reason.
    pub const fn is_malformed(self) -> bool {
        self as u32 >= Counter::MalformedEthernetTruncated as u32
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
            Outcome::Tcp(segment) => segment.flags.class().counter(),
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
    fn every_malformed_reason_has_a_malformed_counter() {
        for reason in Malformed::ALL {
            assert!(reason.counter().is_malformed(), "{reason:?}");
        }
        let malformed = Counter::ALL.iter().filter(|c| c.is_malformed()).count();
        assert_eq!(malformed, Malformed::ALL.len());
    }
}
