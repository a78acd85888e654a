//! tcp-guard's fast path. Kernel glue only: packet access, maps and verdicts;
//! parsing and decisions live in `tcp-guard-common`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use tcp_guard_common::{
    flow::Direction,
    packet::{self, Outcome, TcpClass},
    stats::Counter,
};

mod flow;
mod maps;
mod view;

use maps::Counters;
use view::PacketBytes;

/// Ingress: parse, classify, count, track the flow. Every packet is passed for now.
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
    match dissection.outcome {
        Outcome::Tcp(segment) => {
            if matches!(segment.flags.class(), TcpClass::Syn | TcpClass::SynAck)
                && packet::parse_tcp_options(&bytes, &segment).malformed
            {
                counters.bump(Counter::TcpBadOptions);
            }
            flow::track(&mut counters, &segment, Direction::Ingress, None);
        }
        Outcome::Malformed(reason) => {
            // Only reaches userspace when the daemon runs with -v.
            debug!(&ctx, "malformed packet: {}", reason.counter().as_str());
        }
        _ => {}
    }
    xdp_action::XDP_PASS
}

/// Egress: what the host's own TCP stack sends moves its flows (SYN-ACKs,
/// its SYNs and FINs). Observes only; the packet continues unchanged.
#[classifier]
pub fn tcp_guard_tc_egress(ctx: TcContext) -> i32 {
    if let Some(mut counters) = Counters::this_cpu() {
        counters.bump(Counter::EgressPackets);
        let bytes = PacketBytes::new(ctx.data(), ctx.data_end());
        if let Outcome::Tcp(segment) = packet::parse(&bytes).outcome {
            // The host's window scale, for checking the peer's RSTs.
            let window_scale = match segment.flags.class() {
                TcpClass::Syn | TcpClass::SynAck => packet::parse_tcp_options(&bytes, &segment).window_scale,
                _ => None,
            };
            flow::track(&mut counters, &segment, Direction::Egress, window_scale);
        }
    }
    TC_ACT_UNSPEC
}

/// A trivial XDP_PASS program: the benchmarks' baseline, measured beside
/// tcp_guard_xdp in the same run. Never attached.
#[xdp]
pub fn baseline_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
