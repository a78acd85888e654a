//! Configuration both sides agree on: flow table sizes and per-state timeouts.

use crate::flow::TcpState;

/// Sizes of the flow tables (entries). Both are preallocated hash maps, about
/// 150 bytes an entry in kernel memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSizes {
    pub half_open: u32,
    pub flows: u32,
}

impl Default for TableSizes {
    fn default() -> Self {
        TableSizes {
            half_open: 65_536,
            flows: 262_144,
        }
    }
}

/// How long a flow may stay idle in each state before the controller
/// removes it, in seconds. Defaults follow the kernel where it has a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Indexed by `TcpState as usize - 1`.
    secs: [u64; 10],
}

impl Timeouts {
    pub const fn get(&self, state: TcpState) -> u64 {
        self.secs[state as usize - 1]
    }

    pub fn set(&mut self, state: TcpState, secs: u64) {
        self.secs[state as usize - 1] = secs;
    }

    /// Why each default is what it is, for `--help` and the README.
    pub const fn default_reason(state: TcpState) -> &'static str {
        match state {
            TcpState::SynSent => "the kernel gives up after 6 SYN retries (tcp_syn_retries), about 127 s",
            TcpState::SynRcvd => {
                "the kernel gives up after 5 SYN-ACK retries (tcp_synack_retries), about 63 s"
            }
            TcpState::Established => "idle connections: 5 days, as conntrack",
            TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck => {
                "FIN retransmissions: 120 s, as conntrack"
            }
            TcpState::FinWait2 => "tcp_fin_timeout, 60 s",
            TcpState::CloseWait => "the kernel has no timer (the application closes); 12 h",
            TcpState::TimeWait => "TCP_TIMEWAIT_LEN, 60 s",
            TcpState::Closed => "never stored",
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        let mut t = Timeouts { secs: [0; 10] };
        t.set(TcpState::SynSent, 127);
        t.set(TcpState::SynRcvd, 63);
        t.set(TcpState::Established, 5 * 24 * 3600);
        t.set(TcpState::FinWait1, 120);
        t.set(TcpState::FinWait2, 60);
        t.set(TcpState::CloseWait, 12 * 3600);
        t.set(TcpState::Closing, 120);
        t.set(TcpState::LastAck, 120);
        t.set(TcpState::TimeWait, 60);
        t.set(TcpState::Closed, 0);
        t
    }
}
