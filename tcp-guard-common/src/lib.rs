//! Types and pure logic shared by the tcp-guard kernel programs and the
//! controller: packet layout and parser, counters, map names.
#![no_std]

pub mod packet;
pub mod stats;

/// Names of the maps in the eBPF object, and of their pins under the
/// instance directory.
pub mod maps {
    pub const STATS: &str = "STATS";
}

/// Names of the programs in the eBPF object.
pub mod programs {
    pub const XDP: &str = "tcp_guard_xdp";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C) arrays of u64, valid for any bit pattern, no padding.
    unsafe impl aya::Pod for crate::stats::Stats {}
}
