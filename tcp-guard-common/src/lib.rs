//! Types and pure logic shared by the tcp-guard kernel programs and the
//! controller: packet layout and parser, counters, map names.
#![no_std]

pub mod config;
pub mod flow;
pub mod packet;
pub mod stats;

/// Names of the maps in the eBPF object, and of their pins under the
/// instance directory.
pub mod maps {
    pub const STATS: &str = "STATS";
    /// Half-open flows (SYN-SENT, SYN-RECV), keyed by [`crate::flow::FlowKey`].
    pub const HALF_OPEN: &str = "HALF_OPEN";
    /// Every other tracked flow.
    pub const FLOWS: &str = "FLOWS";
    /// Flows the controller expired, per state (`TcpState as u32`); written by userspace only.
    pub const EXPIRED: &str = "EXPIRED";
}

/// Names of the programs in the eBPF object.
pub mod programs {
    pub const XDP: &str = "tcp_guard_xdp";
    pub const TC_EGRESS: &str = "tcp_guard_tc_egress";
    /// A trivial XDP_PASS program, the benchmarks' baseline.
    pub const BASELINE: &str = "baseline_xdp_pass";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C) arrays of u64, valid for any bit pattern, no padding.
    unsafe impl aya::Pod for crate::stats::Stats {}
    // SAFETY: repr(C), explicit padding fields, any bit pattern is valid.
    unsafe impl aya::Pod for crate::flow::FlowKey {}
    unsafe impl aya::Pod for crate::flow::Flow {}
}
