//! tcp-guard's fast path. Kernel glue only: packet access, maps and verdicts;
//! parsing and decisions live in `tcp-guard-common`.
#![no_std]
#![no_main]
// Atomic fetch-and-add for the limit counters (see maps::atomic_add).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics is the only way to atomic RMW on bpf"
)]

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use tcp_guard_common::{
    flow::{Flow, FlowKey},
    packet::{self, ByteView, Dissection, Outcome, TcpClass},
    policy::{Rule, SYN_SAMPLE_EVERY},
    stats::Counter,
};

mod cookie;
mod flow;
mod guard;
mod maps;
mod options;
mod view;

use flow::{NoteCheck, Verdict};
use maps::{CONFIG, Counters, EXPIRED, SCRATCH, atomic_add};
use view::{PacketBytes, SkbBytes};

/// CLOCK_MONOTONIC, to the kernel's tick (a few ms): what the fast path
/// times is seconds and milliseconds (timeouts, TTLs, rates, the challenge
/// window). The coarse clock moves only at a tick, when jiffies move: each
/// CPU keeps its last reading with the jiffies it was taken at and calls
/// the helper again only when they moved (a jiffies read, which the
/// verifier inlines, costs a fraction of the helper call on every TCP
/// packet). A reading taken between a tick's jiffies update and its clock
/// update stays one tick behind until the next tick.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return coarse_clock();
    };
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let clock = unsafe { &mut (*scratch).clock };
    if clock.jiffies != jiffies || clock.ns == 0 {
        clock.ns = coarse_clock();
        clock.jiffies = jiffies;
    }
    clock.ns
}

/// CLOCK_MONOTONIC to the kernel's tick, read now.
#[inline(always)]
fn coarse_clock() -> u64 {
    // SAFETY: a helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Parses into this CPU's scratch slot. A BPF function of its own, and the
/// result off the stack: the program's frame, the tracker's and the
/// transition's must fit in 512 bytes together.
#[inline(never)]
fn parse<V: ByteView>(bytes: &V) -> Option<&'static Dissection> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let dissection = unsafe { &mut (*scratch).dissection };
    *dissection = packet::parse(bytes);
    Some(dissection)
}

/// Ingress: parse, classify, count; drop what the block list, the SYN
/// limits and the attack-mode policy say to drop; track every flow.
#[xdp]
pub fn tcp_guard_xdp(ctx: XdpContext) -> u32 {
    let Some(mut counters) = Counters::this_cpu() else {
        return xdp_action::XDP_PASS;
    };
    let bytes = PacketBytes::new(ctx.data(), ctx.data_end());
    let Some(dissection) = parse(&bytes) else {
        return xdp_action::XDP_PASS;
    };

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
        Outcome::Tcp => {
            let segment = &dissection.segment;
            let now = now();
            // The CPU's SYN count picks the sample: no helper call, no
            // extra lookup for the other 63 (a random pick cost ~40 ns per SYN).
            if segment.flags.class() == TcpClass::Syn
                && counters.get(Counter::Syn).is_multiple_of(SYN_SAMPLE_EVERY.into())
            {
                guard::sample_syn(segment.family as u8, &segment.src);
            }
            if guard::blocked(
                segment.family as u8,
                &segment.src,
                segment.flags.class() == TcpClass::Syn,
                now,
            ) && enforced(
                &mut counters,
                Rule::BlockList,
                Counter::DropBlocked,
                Counter::WouldDropBlocked,
            ) {
                return xdp_action::XDP_DROP;
            }
            // Before the tracker: most of what a server receives is its
            // peers' ACKs, and a busy flow's need nothing more.
            let mut how = flow::INGRESS;
            if segment.flags.class() == TcpClass::Ack {
                match flow::check_note(segment, now) {
                    NoteCheck::Absorbed => {
                        counters.bump(Counter::AckRecentFlow);
                        return xdp_action::XDP_PASS;
                    }
                    NoteCheck::Absent => how |= flow::NO_NOTE,
                    NoteCheck::Kept => {}
                }
            }
            match flow::tcp_guard_track(counters.as_ptr(), segment, how, flow::NO_WINDOW_SCALE, now) {
                Verdict::PASS => {}
                Verdict::ANSWER_WITH_COOKIE => return cookie::answer(&ctx, &mut counters, now),
                Verdict::CHECK_COOKIE => return cookie::check_ack(&ctx, &mut counters, now),
                _ => return xdp_action::XDP_DROP,
            }
            // Last: the verifier walks the rest of the program once per state
            // the options loop ends in, so keep the rest short.
            if matches!(segment.flags.class(), TcpClass::Syn | TcpClass::SynAck)
                && options::parse(&bytes, segment).malformed
            {
                counters.bump(Counter::TcpBadOptions);
            }
        }
        Outcome::Ipv4Fragment | Outcome::Ipv6Extension if dissection.unparsed_tcp => {
            let segment = &dissection.segment;
            let now = now();
            // The operator's blocks hold for all of a source's TCP.
            if guard::blocked(segment.family as u8, &segment.src, false, now)
                && enforced(
                    &mut counters,
                    Rule::BlockList,
                    Counter::DropBlocked,
                    Counter::WouldDropBlocked,
                )
            {
                return xdp_action::XDP_DROP;
            }
            if guard::unparsed_tcp_dropped(segment.family as u8, segment.src, now)
                && enforced(
                    &mut counters,
                    Rule::UnparsedTcp,
                    Counter::DropUnparsedTcp,
                    Counter::WouldDropUnparsedTcp,
                )
            {
                return xdp_action::XDP_DROP;
            }
        }
        Outcome::Malformed(reason) => {
            // Only reaches userspace when the daemon runs with -v.
            debug!(&ctx, "malformed packet: {}", reason.counter().as_str());
        }
        _ => {}
    }
    xdp_action::XDP_PASS
}

/// A packet `rule` drops: counts the drop and returns true, or, in the
/// rule's monitor mode, counts what it would drop and returns false.
#[inline(always)]
fn enforced(counters: &mut Counters, rule: Rule, drop: Counter, would: Counter) -> bool {
    if guard::monitored(rule) {
        counters.bump(would);
        return false;
    }
    counters.bump(drop);
    true
}

/// Egress: what the host's own TCP stack sends moves its flows (SYN-ACKs,
/// its SYNs and FINs). Observes only; the packet continues unchanged.
#[classifier]
pub fn tcp_guard_tc_egress(ctx: TcContext) -> i32 {
    if let Some(mut counters) = Counters::this_cpu() {
        counters.bump(Counter::EgressPackets);
        let skb = SkbBytes::new(ctx.data(), ctx.data_end(), ctx.len() as usize);
        let dissection = parse(&skb);
        if let Some(dissection) = dissection {
            if dissection.big_tcp() {
                counters.bump(Counter::EgressBigTcp);
            }
            // The host's own stack sends nothing malformed: a count here is
            // the guard misreading it (as it once did GSO packets).
            if matches!(dissection.outcome, Outcome::Malformed(_)) {
                counters.bump(Counter::EgressMalformed);
            }
        }
        if let Some(segment) = dissection.and_then(Dissection::tcp) {
            // The host's window scale, for checking the peer's RSTs.
            let window_scale = match segment.flags.class() {
                TcpClass::Syn | TcpClass::SynAck => options::parse(&skb.bytes, segment)
                    .window_scale()
                    .map_or(flow::NO_WINDOW_SCALE, u32::from),
                _ => flow::NO_WINDOW_SCALE,
            };
            let now = now();
            // Egress is never dropped: the host's own segments only inform.
            let _verdict = flow::tcp_guard_track(counters.as_ptr(), segment, flow::EGRESS, window_scale, now);
        }
    }
    TC_ACT_UNSPEC
}

/// Removes one flow if it has been idle past its state's timeout, releasing
/// its half-open counts. The controller runs it with BPF_PROG_TEST_RUN, the
/// packet data being the flow's key; it is never attached. Returns XDP_DROP
/// when it removed the flow, XDP_PASS when it kept it.
#[xdp]
pub fn tcp_guard_expire(ctx: XdpContext) -> u32 {
    let bytes = PacketBytes::new(ctx.data(), ctx.data_end());
    let (Some(key), Some(config)) = (bytes.read::<FlowKey>(0), CONFIG.get(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(entry) = flow::lookup(&key) else {
        return xdp_action::XDP_PASS;
    };
    let mut stored = Flow::default();
    flow::read_flow(entry, &mut stored);
    // Not `now()`: this program runs in the daemon's context, where a
    // packet program may interrupt it, and keeps out of their scratch.
    let now = coarse_clock();
    // Indexed by the raw state byte through the optimisation barrier, so the
    // bounds check stays on the register the verifier sees used.
    let index = view::opaque(stored.state as usize).wrapping_sub(1);
    let timeout_ns = config
        .timeout_secs
        .get(index)
        .map_or(0, |secs| *secs as u64 * 1_000_000_000);
    if now.saturating_sub(stored.last_ns) <= timeout_ns {
        return xdp_action::XDP_PASS;
    }
    // Only the CPU whose claim succeeds removes it and releases its counts.
    if !flow::claim(entry, stored.generation) || !flow::remove(&key) {
        return xdp_action::XDP_PASS;
    }
    if flow::holds_counts(&stored) {
        guard::release(&key, stored.prefix_len);
    }
    if let Some(count) = EXPIRED.get_ptr_mut(stored.state as u32) {
        atomic_add(count, 1);
    }
    xdp_action::XDP_DROP
}

/// A trivial XDP_PASS program: the benchmarks' baseline, measured beside
/// tcp_guard_xdp in the same run. Never attached.
#[xdp]
pub fn baseline_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The kernel's SYN-cookie helpers are GPL-only; the fast path is offered
/// under the MIT license too (see README).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
