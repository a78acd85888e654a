//! tcp-guard's fast path. Kernel glue only: packet access, maps and verdicts;
//! parsing and decisions live in `tcp-guard-common`.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::debug;
use tcp_guard_common::{
    packet::{self, Outcome, TcpClass},
    stats::Counter,
};

mod maps;
mod view;

use maps::Counters;
use view::PacketBytes;

/// Ingress: parse, classify, count. Every packet is passed for now.
#[xdp]
pub fn tcp_guard_xdp(ctx: XdpContext) -> u32 {
    let Some(mut counters) = Counters::this_cpu() else {
        return xdp_action::XDP_PASS;
    };
    let bytes = PacketBytes::new(ctx.data(), ctx.data_end());
    let dissection = packet::parse(&bytes);

    counters.bump(Counter::Packets);
    if dissection.vlan {
        counters.bump(Counter::Vlan);
    }
    match dissection.family {
        Some(packet::Family::V4) => counters.bump(Counter::Ipv4),
        Some(packet::Family::V6) => counters.bump(Counter::Ipv6),
        None => {}
    }
    counters.bump(dissection.class_counter());
    if let Outcome::Malformed(reason) = dissection.outcome {
        // Only reaches userspace when the daemon runs with -v.
        debug!(&ctx, "malformed packet: {}", reason.counter().as_str());
    }

    if let Outcome::Tcp(segment) = dissection.outcome
        && matches!(segment.flags.class(), TcpClass::Syn | TcpClass::SynAck)
        && packet::parse_tcp_options(&bytes, &segment).malformed
    {
        counters.bump(Counter::TcpBadOptions);
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
