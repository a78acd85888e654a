//! Configuration both sides agree on: flow table sizes (fixed at load) and
//! the defaults of the live [`GuardConfig`].

use crate::{
    flow::TcpState,
    policy::{GuardConfig, Policy},
};

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

/// Default idle timeout of a state, in seconds. Kernel-like where the kernel
/// has a timer.
pub const fn default_timeout_secs(state: TcpState) -> u32 {
    match state {
        // The kernel gives up after 6 SYN retries (tcp_syn_retries).
        TcpState::SynSent => 127,
        // The kernel gives up after 5 SYN-ACK retries (tcp_synack_retries).
        TcpState::SynRcvd => 63,
        // Idle connections: 5 days, as conntrack.
        TcpState::Established => 5 * 24 * 3600,
        // FIN retransmissions: as conntrack.
        TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck => 120,
        // tcp_fin_timeout.
        TcpState::FinWait2 => 60,
        // The kernel has no timer; the application closes.
        TcpState::CloseWait => 12 * 3600,
        // TCP_TIMEWAIT_LEN.
        TcpState::TimeWait => 60,
        TcpState::Closed => 0,
    }
}

impl Default for GuardConfig {
    fn default() -> Self {
        let mut timeout_secs = [0u32; 9];
        for state in TcpState::STORED {
            timeout_secs[state as usize - 1] = default_timeout_secs(state);
        }
        GuardConfig {
            global_half_open: 1024,
            per_source_half_open: 64,
            per_prefix_half_open: 256,
            per_port_half_open: GuardConfig::PER_PORT_AUTO,
            syn_rate: 200,
            syn_burst: 400,
            attack_enter_half_open: 256,
            attack_enter_syn_rate: 10_000,
            attack_leave_half_open: 64,
            attack_leave_syn_rate: 2_000,
            attack_cooldown_secs: 10,
            challenge_window_ms: 5_000,
            verified_ttl_secs: 3600,
            block_after_drops: 100,
            block_ttl_secs: 600,
            timeout_secs,
            prefix_len_v4: 24,
            prefix_len_v6: 64,
            policy: Policy::Auto as u8,
            egress: 0,
            cookie_mss_v4: 1460,
            cookie_mss_v6: 1440,
            cookie_wscale: 7,
            cookie_options: GuardConfig::COOKIE_SACK | GuardConfig::COOKIE_WSCALE,
            manage_sysctls: 1,
            drop_unparsed_tcp: 1,
            monitor: 0,
            _pad: [0; 3],
            block_max_automatic: 4096,
        }
    }
}
