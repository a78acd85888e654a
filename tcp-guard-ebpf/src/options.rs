//! TCP options, walked with `bpf_loop`: the verifier checks one step of the
//! walk (shared with userspace: `OptionWalk::step`) instead of every path
//! through 40 option bytes, which multiplied the whole program's states.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_loop;
use tcp_guard_common::packet::{OptionWalk, TCP_MAX_OPTIONS_LEN, TcpOptions, TcpSegment};

use crate::view::PacketBytes;

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

/// The options of `segment`. (A BPF function of its own, so the walk's state
/// is not in the stack frame of the program that also calls `tcp_guard_track`.)
#[inline(never)]
pub fn parse(bytes: &PacketBytes, segment: &TcpSegment) -> TcpOptions {
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
