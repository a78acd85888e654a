//! Types and pure logic shared by the tcp-guard kernel programs and the
//! controller: packet layout and parser, counters, map names.
#![cfg_attr(not(test), no_std)]

pub mod checksum;
pub mod config;
pub mod flow;
pub mod packet;
pub mod policy;
pub mod stats;
pub mod syncookie;

/// Names of the maps in the eBPF object, and of their pins under the
/// instance directory.
pub mod maps {
    /// Version of the pinned maps' layouts (keys, values, sizes). A daemon
    /// adopts pinned state only from the same version.
    pub const LAYOUT_VERSION: u64 = 14;

    pub const STATS: &str = "STATS";
    /// Every tracked flow, keyed by [`crate::flow::FlowKey`]: room for
    /// `tables.max_flows` flows and `tables.max_half_open` half-open ones
    /// (see [`crate::policy::CountHash::half_open_max`]).
    pub const FLOWS: &str = "FLOWS";
    /// Flows the controller expired, per state (`TcpState as u32`).
    pub const EXPIRED: &str = "EXPIRED";
    /// The live [`crate::policy::GuardConfig`] (one entry).
    pub const CONFIG: &str = "CONFIG";
    /// [`crate::policy::AttackState`] (one entry), written by the controller.
    pub const ATTACK: &str = "ATTACK";
    /// Half-open flows per limit, in the slots of [`crate::policy::CountHash`].
    pub const COUNTS: &str = "COUNTS";
    /// The [`crate::policy::CountHash`] `COUNTS` was filled with (one entry).
    pub const COUNT_HASH: &str = "COUNT_HASH";
    /// Per-source SYN token buckets.
    pub const RATE: &str = "RATE";
    /// LPM tries of [`crate::policy::LpmAddr`]: sources exempt from SYN limits, and blocked ones.
    pub const ALLOW: &str = "ALLOW";
    pub const BLOCK: &str = "BLOCK";
    /// Whether each list may hold an entry (two u32 entries, indexed by
    /// [`LIST_BLOCK`] and [`LIST_ALLOW`]): the fast path skips the lookup in
    /// a list marked empty. Writers mark a list before and after they add
    /// to it, and unmark it only once they find it empty.
    pub const LISTS_IN_USE: &str = "LISTS_IN_USE";
    pub const LIST_BLOCK: u32 = 0;
    pub const LIST_ALLOW: u32 = 1;
    /// First SYNs held for the retransmission challenge (a direct-mapped
    /// array of [`crate::policy::CHALLENGE_SLOTS`] slots).
    pub const CHALLENGE: &str = "CHALLENGE";
    /// Per-source drop counts for automatic blocking, read and reset by the controller.
    pub const OFFENDERS: &str = "OFFENDERS";
    /// Sampled SYNs per source (one in [`crate::policy::SYN_SAMPLE_EVERY`]),
    /// cumulative: readers take rates from differences.
    pub const SYN_SOURCES: &str = "SYN_SOURCES";
    /// When a SYN to each listener was last let through in attack mode
    /// (syncookie policy): [`crate::policy::ListenerSet`]s,
    /// [`crate::policy::LISTENER_SETS`] of them, four listeners a set.
    pub const LISTENERS: &str = "LISTENERS";
    /// [`crate::policy::ListenerLimit`] per local port (65,536 entries),
    /// written by the controller from the listeners' real queues.
    pub const LISTENER_LIMITS: &str = "LISTENER_LIMITS";
    /// Sources that completed a handshake: a Bloom filter in two
    /// generations, [`crate::policy::VERIFIED_BITS_ENTRIES`] u64 words
    /// (memory-mappable, so the daemon clears a generation in place).
    pub const VERIFIED_BITS: &str = "VERIFIED_BITS";
    /// The current generation of `VERIFIED_BITS`
    /// ([`crate::policy::VerifiedGeneration`], one entry).
    pub const VERIFIED_GEN: &str = "VERIFIED_GEN";
    /// Per local port (65,536 entries, u8): 0, the port follows `CONFIG`;
    /// n, it follows `PORT_CONFIGS[n]` (the config's `[[ports]]` policies).
    pub const PORT_POLICY: &str = "PORT_POLICY";
    /// [`crate::policy::GuardConfig`]s of the per-port policies
    /// ([`crate::policy::MAX_PORT_POLICIES`] entries; entry 0 unused): `CONFIG`
    /// with the policy's settings, kept so by the daemon.
    pub const PORT_CONFIGS: &str = "PORT_CONFIGS";
    /// CLOCK_MONOTONIC ns of the daemon's last heartbeat (one entry; 0:
    /// none yet): see [`crate::policy::CONTROLLER_STALE_NS`].
    pub const HEARTBEAT: &str = "HEARTBEAT";
    /// Ring buffer of [`crate::policy::Event`]s.
    pub const EVENTS: &str = "EVENTS";
}

/// Names of the programs in the eBPF object.
pub mod programs {
    pub const XDP: &str = "tcp_guard_xdp";
    pub const TC_EGRESS: &str = "tcp_guard_tc_egress";
    /// Removes one idle flow (and its limit counts); run by the controller
    /// through BPF_PROG_TEST_RUN, never attached.
    pub const EXPIRE: &str = "tcp_guard_expire";
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
    unsafe impl aya::Pod for crate::policy::GuardConfig {}
    unsafe impl aya::Pod for crate::policy::AttackState {}
    unsafe impl aya::Pod for crate::policy::ListenerLimit {}
    unsafe impl aya::Pod for crate::policy::CountHash {}
    unsafe impl aya::Pod for crate::policy::VerifiedGeneration {}
    unsafe impl aya::Pod for crate::policy::LpmAddr {}
    unsafe impl aya::Pod for crate::policy::BlockEntry {}
    unsafe impl aya::Pod for crate::policy::SourceKey {}
    unsafe impl aya::Pod for crate::policy::TokenBucket {}
    unsafe impl aya::Pod for crate::policy::Challenge {}
    unsafe impl aya::Pod for crate::policy::Event {}
    unsafe impl aya::Pod for crate::policy::ListenerSet {}
}
