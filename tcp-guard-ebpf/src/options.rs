//! TCP options, walked with `bpf_loop`: the verifier checks one step of the
//! walk (shared with userspace: `OptionWalk::step`) instead of every path
//! through 40 option bytes, which multiplied the whole program's states.
//! Linux's own layout is read in one piece first.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_loop;
use tcp_guard_common::packet::{
    ByteView, LinuxSynOptions, MAX_TCP_OFFSET, OptionWalk, TCP_HDR_LEN, TCP_MAX_OPTIONS_LEN, TcpOptions,
    TcpSegment,
};

use crate::view::{PacketBytes, opaque};

/// `tcp_guard_common::packet::linux_syn_options`, its offset bounded on
/// the register the read uses (the compiler otherwise checks a copy the
/// verifier does not connect to it).
#[inline(always)]
fn linux_layout(bytes: &PacketBytes, segment: &TcpSegment) -> Option<TcpOptions> {
    let offset = opaque(segment.tcp_offset as usize);
    if segment.tcp_header_len as usize != LinuxSynOptions::HEADER_LEN || offset > MAX_TCP_OFFSET {
        return None;
    }
    bytes.read::<LinuxSynOptions>(offset + TCP_HDR_LEN)?.options()
}

struct Walk {
    walk: OptionWalk,
    bytes: PacketBytes,
}

extern "C" fn step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` passed to bpf_loop below, on its caller's stack.
    let walk = unsafe { &mut *ctx.cast::<Walk>() };
    // 0: go on; 1: stop.
    if walk.walk.step(&walk.bytes) { 0 } else { 1 }
}

/// The options of `segment`, read in one piece where Linux laid them out
/// (the walk's `bpf_loop` costs a callback per option and one to stop: see
/// docs/benchmarks.md for what that saves). (A BPF function of its own, so
/// the walk's state is not in the stack frame of the program that also
/// calls `tcp_guard_track`.)
#[inline(never)]
pub fn parse(bytes: &PacketBytes, segment: &TcpSegment) -> TcpOptions {
    if let Some(options) = linux_layout(bytes, segment) {
        return options;
    }
    let mut walk = Walk {
        walk: OptionWalk::new(segment),
        bytes: *bytes,
    };
    // SAFETY: a helper call with a callback of the required signature and a
    // context pointer to a live local. Its result (iterations run, or an
    // error for bad flags) is not needed: the walk records what it found.
    let _iterations = unsafe {
        bpf_loop(
            TCP_MAX_OPTIONS_LEN as u32,
            step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        )
    };
    walk.walk.options
}
