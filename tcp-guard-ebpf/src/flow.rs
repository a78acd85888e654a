//! Applies the shared transition function to the flow tables, with
//! admission control for SYNs that would open a half-open flow.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use tcp_guard_common::{
    flow::{Direction, Event, Flow, FlowKey, Invalid, RecentFlow, Seg, Step, TcpState, transition},
    packet::{TcpClass, TcpSegment},
    policy::{DropReason, GuardConfig, Policy, Rule},
    stats::{Counter, Stats},
};

use crate::{
    guard::{self, Gate},
    maps::{CONFIG, Counters, FLOWS, PORT_CONFIGS, PORT_POLICY, RECENT_FLOWS, SCRATCH},
    view::opaque,
};

/// What to do with the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// A SYN to answer with a cookie SYN-ACK (syncookie policy, attack mode).
    AnswerWithCookie,
    /// An ACK for no known flow, under the syncookie policy: its cookie
    /// decides (the tracker has not counted it).
    CheckCookie,
}

impl Verdict {
    /// [`tcp_guard_track`]'s return values.
    pub const PASS: u32 = 0;
    pub const DROP: u32 = 1;
    pub const ANSWER_WITH_COOKIE: u32 = 2;
    pub const CHECK_COOKIE: u32 = 3;
}

#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<*mut Flow> {
    FLOWS.get_ptr_mut(key)
}

/// Copies a stored flow to `out`, a word at a time (a plain copy compiles to
/// a call of a byte-by-byte memmove on BPF), with the generation read
/// before the rest: a claim with it fails if the flow was rewritten while
/// being copied (a seqlock's read).
#[inline(always)]
pub fn read_flow(entry: *const Flow, out: &mut Flow) {
    const WORDS: usize = size_of::<Flow>() / 8;
    const _: () = assert!(size_of::<Flow>().is_multiple_of(8) && align_of::<Flow>() == 8);
    // SAFETY: a live map value (valid for the program run: RCU), 8-byte
    // aligned, copied to a Flow of the same size; any bits are a valid Flow.
    unsafe {
        let generation = core::ptr::read_volatile(core::ptr::addr_of!((*entry).generation));
        let (from, to) = (entry.cast::<u64>(), (out as *mut Flow).cast::<u64>());
        for i in 0..WORDS {
            to.add(i).write(from.add(i).read_volatile());
        }
        out.generation = generation;
    }
}

/// The generation a flow new to the table starts at: even, and random.
/// The kernel hands a removed entry's memory to the next insert at once,
/// and a CPU still holding the removed flow's generation (it read the flow
/// just before another CPU removed it) must not win a claim on the flow
/// now stored there, as it would if every flow started at 0.
#[inline(always)]
pub fn fresh_generation() -> u32 {
    // SAFETY: a helper without preconditions.
    unsafe { bpf_get_prandom_u32() & !1 }
}

/// `-EEXIST`, as a map insert returns it.
pub const EEXIST: i32 = 17;

/// Removes a flow; false if another CPU removed it first.
#[inline(always)]
pub fn remove(key: &FlowKey) -> bool {
    FLOWS.remove(key).is_ok()
}

/// Whether this flow holds half-open counts (see `Flow::COUNTED`).
#[inline(always)]
pub fn holds_counts(flow: &Flow) -> bool {
    flow.has(Flow::COUNTED) && flow.state() == Some(TcpState::SynRcvd)
}

/// This CPU's slot for a note of `segment`'s flow (see `RecentFlow`).
#[inline(always)]
fn recent_slot(segment: &TcpSegment, direction: Direction) -> Option<*mut RecentFlow> {
    let notes = RECENT_FLOWS.get_ptr_mut(0)?;
    let index = opaque(RecentFlow::slot(segment, direction) as usize);
    // SAFETY: this CPU's notes, used by one program run at a time.
    unsafe { (*notes).slots.get_mut(index).map(|slot| slot as *mut RecentFlow) }
}

/// This CPU's note of `segment`'s flow, if its slot holds one.
#[inline(always)]
fn note_of(segment: &TcpSegment, direction: Direction) -> Option<&'static mut RecentFlow> {
    let slot = recent_slot(segment, direction)?;
    // SAFETY: this CPU's slot, used by one program run at a time.
    let note = unsafe { &mut *slot };
    note.is_for(segment, direction).then_some(note)
}

/// What this CPU's note says of a segment from the peer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NoteCheck {
    /// It absorbed the segment: it would change the stored flow in nothing
    /// but what the note keeps, so the flow table is left alone.
    Absorbed,
    /// A note of the segment's flow is kept, but could not absorb it.
    Kept,
    /// No note of the segment's flow is kept.
    Absent,
}

/// Checks the peer's `segment`, arriving at `now`, against this CPU's note
/// of its flow. A BPF function of its own: the programs' frames must fit in
/// 512 bytes together.
#[inline(never)]
pub fn check_note(segment: &TcpSegment, now: u64) -> NoteCheck {
    let Some(note) = note_of(segment, Direction::Ingress) else {
        return NoteCheck::Absent;
    };
    if note.absorbs(&Seg::new(segment, Direction::Ingress, None), now) {
        NoteCheck::Absorbed
    } else {
        NoteCheck::Kept
    }
}

/// Merges this CPU's note of `segment`'s flow, if it keeps one, into the
/// flow as read (`Scratch::old`), and leaves in `Scratch::note_kept`
/// whether it keeps one. The note stays until the flow is stored or removed
/// (see `renote`, `forget_note`). A BPF function of its own, as are the two
/// below, and what it needs from the tracker read from the scratch slot:
/// the programs' frames must fit in 512 bytes together.
#[inline(never)]
fn merge_note(segment: &TcpSegment, direction: Direction) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let scratch = unsafe { &mut *scratch };
    if !scratch.note_kept {
        return;
    }
    let note = note_of(segment, direction);
    scratch.note_kept = note.is_some();
    if let Some(note) = note {
        note.merge_into(&mut scratch.old);
        // A note made before the host's sequence numbers were known bounds
        // no ACK number; the host's segment makes them known. Its peer_next
        // is merged, and the host's ACK numbers move the flow's from now on.
        if direction == Direction::Egress && note.bounded == 0 {
            note.clear();
        }
    }
}

/// Drops this CPU's note of `segment`'s flow, removed.
#[inline(never)]
fn forget_note(segment: &TcpSegment, direction: Direction) {
    if let Some(note) = note_of(segment, direction) {
        note.clear();
    }
}

/// After `flow` was stored from the peer's `segment`: notes it in this
/// CPU's slot if it is established and `busy` (stored in this tick already:
/// its segments come faster than the tick, and the note may absorb the next
/// ones), else drops this CPU's note of it (its `peer_next` is in the table
/// now).
#[inline(never)]
fn renote(segment: &TcpSegment, flow: &Flow, busy: bool) {
    if let Some(slot) = recent_slot(segment, Direction::Ingress) {
        // SAFETY: this CPU's slot, used by one program run at a time.
        let slot = unsafe { &mut *slot };
        if !(busy && slot.note(segment, Direction::Ingress, flow)) && slot.is_for(segment, Direction::Ingress)
        {
            slot.clear();
        }
    }
}

/// `window_scale` argument of [`tcp_guard_track`] when the segment has none.
pub const NO_WINDOW_SCALE: u32 = 0x100;

/// [`tcp_guard_track`]'s `how`: a segment from the peer (XDP).
pub const INGRESS: u32 = 0;
/// A segment from the host (TC egress).
pub const EGRESS: u32 = 1;
/// Or'ed in by a caller that found no note of the segment's flow kept on
/// this CPU (see `check_note`).
pub const NO_NOTE: u32 = 2;

/// Tracks one segment of a flow, [`INGRESS`] or [`EGRESS`] as `how` says;
/// ingress SYNs that would open a flow must pass admission first. Returns
/// one of the `Verdict` constants.
///
/// A BPF global function (exported, `extern "C"`, scalar and pointer
/// arguments): the kernel verifies it once, on its own, instead of once per
/// state of every caller, which took the programs near the verifier's
/// instruction limit.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcp_guard_track(
    stats: *mut Stats,
    segment: *const TcpSegment,
    how: u32,
    window_scale: u32,
    now: u64,
) -> u32 {
    // Global functions get their pointer arguments unchecked.
    if stats.is_null() || segment.is_null() {
        return 0;
    }
    let mut counters = Counters::from_ptr(stats);
    // SAFETY: checked non-null; the caller passes its own live segment.
    let segment = unsafe { &*segment };
    let direction = if how & EGRESS == 0 {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    // A SYN changes no flow a note is kept of.
    let note_kept = how & NO_NOTE == 0 && segment.flags.class() != TcpClass::Syn;
    let Some(config) = CONFIG.get(0) else {
        return 0;
    };
    let window_scale = (window_scale < NO_WINDOW_SCALE).then_some(window_scale as u8);
    match track(
        &mut counters,
        segment,
        direction,
        note_kept,
        window_scale,
        now,
        config,
    ) {
        Verdict::Pass => Verdict::PASS,
        Verdict::Drop => Verdict::DROP,
        Verdict::AnswerWithCookie => Verdict::ANSWER_WITH_COOKIE,
        Verdict::CheckCookie => Verdict::CHECK_COOKIE,
    }
}

#[inline(always)]
fn track(
    counters: &mut Counters,
    segment: &TcpSegment,
    direction: Direction,
    note_kept: bool,
    window_scale: Option<u8>,
    now: u64,
    config: &'static GuardConfig,
) -> Verdict {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Verdict::Pass;
    };
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let scratch = unsafe { &mut *scratch };
    // Read by the note's functions (`merge_note`, `renote`) from the
    // scratch slot: held as a value across the tracker, it took the
    // programs' frames past 512 bytes.
    scratch.note_kept = note_kept;
    scratch.key = FlowKey::new(segment, direction);
    let (key, flow) = (&scratch.key, &mut scratch.flow);
    let (policy, config) = port_config(key.local_port, config);
    let syn_in = direction == Direction::Ingress && segment.flags.class() == TcpClass::Syn;
    let allowlisted = syn_in && guard::allowed(key.family, key.remote_addr);
    // A rule in monitor mode counted what it would drop: the SYN is
    // counted once, at the first check that would drop it.
    let mut held = false;
    // The attack-mode challenge passed it as a retransmission.
    let mut retransmitted = false;
    if syn_in {
        if allowlisted {
            counters.bump(Counter::SynAllowlisted);
        } else {
            match guard::attack_gate(counters, key, segment.seq, now, config) {
                Gate::Open => {}
                Gate::Retransmitted => retransmitted = true,
                Gate::Drop(reason) => {
                    if !guard::monitor_holds(counters, config, reason) {
                        return drop_syn(counters, key, reason);
                    }
                    held = true;
                }
                Gate::Cookie => return Verdict::AnswerWithCookie,
                Gate::Refresh => {
                    counters.bump(Counter::SynCookieRefresh);
                    return Verdict::Pass;
                }
            }
            if !held
                && !guard::within_rate(key, policy, config, now)
                && !retransmitted
                && !guard::over_rate_passes(counters, key, segment.seq, now, config)
            {
                if !guard::monitor_holds(counters, config, DropReason::SynRate) {
                    return drop_syn(counters, key, DropReason::SynRate);
                }
                held = true;
            }
        }
    }

    let found = lookup(key);
    // A copy, taken once: another CPU may rewrite the entry meanwhile, and
    // the claim below tells whether it did.
    if let Some(entry) = found {
        read_flow(entry, &mut scratch.old);
        if scratch.old.generation & 1 != 0 {
            counters.bump(Counter::FlowBusy);
            return Verdict::Pass;
        }
        // The ACKs this CPU's note absorbed moved `peer_next`, which this
        // update must start from.
        merge_note(segment, direction);
    }
    let old: Option<&Flow> = found.map(|_| &scratch.old);
    let counted = old.is_some_and(holds_counts);
    let old_prefix_len = old.map_or(0, |f| f.prefix_len);
    let generation = old.map_or(0, |f| f.generation);
    let was_syn_rcvd = old.is_some_and(|o| o.state() == Some(TcpState::SynRcvd));
    match transition(old, &Seg::new(segment, direction, window_scale), now, flow) {
        Step::Store(event) => {
            let entering_syn_rcvd = flow.state() == Some(TcpState::SynRcvd) && !was_syn_rcvd;
            let opening = syn_in && entering_syn_rcvd;
            if opening {
                let counted_only = allowlisted
                    || guard::leaving_floods_to_the_kernel(config, now)
                    || guard::kernel_answers_with_cookies();
                // Monitor mode counts the flow without enforcing, then
                // looks at which limit it is over.
                let monitored = !counted_only && config.monitors(Rule::HalfOpen);
                match guard::admit(key, config, !counted_only && !monitored) {
                    Ok((guard::UNCOUNTED, _)) => {}
                    Ok((prefix_len, attack_at)) => {
                        if attack_at != 0 {
                            guard::listener_under_attack(counters, key.local_port, attack_at);
                        }
                        if monitored
                            && !held
                            && let Some(reason) = guard::half_open_limit_reached(key, prefix_len, config)
                        {
                            held = guard::monitor_holds(counters, config, reason);
                        }
                        flow.flags |= Flow::COUNTED;
                        flow.prefix_len = prefix_len;
                    }
                    Err(reason) => return drop_syn(counters, key, reason),
                }
                if config.egress != 0 {
                    flow.flags |= Flow::AWAIT_SYN_ACK;
                }
            } else if counted && flow.state() != Some(TcpState::SynRcvd) {
                flow.flags &= !Flow::COUNTED;
            }
            let counts_taken = opening && flow.has(Flow::COUNTED);
            if found.is_none() {
                flow.generation = fresh_generation();
            }
            // Half-open flows take at most their share of the table: those
            // a peer's SYN opens (counted), and those first seen in the
            // host's SYN-ACK, their SYN having gone by untracked (not
            // counted: the kernel may hold nothing for them, a cookie, and
            // they must not start attack mode; but not stored past the share).
            let no_room = if counts_taken {
                guard::half_open_share_taken(0)
            } else {
                entering_syn_rcvd && found.is_none() && guard::half_open_share_taken(1)
            };
            let stored = if no_room {
                counters.bump(Counter::HalfOpenTableFull);
                Stored::Full
            } else {
                store(counters, key, flow, found, generation)
            };
            match stored {
                Stored::Yes => {
                    // The claim made this CPU the one to release them.
                    if counted && !flow.has(Flow::COUNTED) {
                        guard::release(key, old_prefix_len);
                    }
                    // A stored flow's `last_ns` is the tick it was stored at.
                    let busy = old.is_some_and(|o| o.last_ns == flow.last_ns);
                    if direction == Direction::Ingress && (busy || scratch.note_kept) {
                        renote(segment, flow, busy);
                    }
                }
                Stored::Busy => {
                    if counts_taken {
                        guard::release(key, flow.prefix_len);
                    }
                    counters.bump(Counter::FlowBusy);
                    return Verdict::Pass;
                }
                Stored::Full => {
                    if counts_taken {
                        guard::release(key, flow.prefix_len);
                    }
                    // Untracked: dropped, unless tcp-guard is leaving the
                    // flood to the kernel (pass policy, or no daemon), which
                    // then decides.
                    if opening
                        && !guard::leaving_floods_to_the_kernel(config, now)
                        && !held
                        && !guard::monitor_holds(counters, config, DropReason::TableFull)
                    {
                        return drop_syn(counters, key, DropReason::TableFull);
                    }
                }
            }
            if event == Event::Entered(TcpState::Established) {
                guard::verify(key);
            }
            if let Some(counter) = event.counter() {
                counters.bump(counter);
            }
        }
        Step::Remove(event) => {
            if let Some(entry) = found {
                if claim(entry, generation) {
                    forget_note(segment, direction);
                    if remove(key) && counted {
                        guard::release(key, old_prefix_len);
                    }
                } else {
                    counters.bump(Counter::FlowBusy);
                }
            }
            if let Some(counter) = event.counter() {
                counters.bump(counter);
            }
        }
        Step::Keep(event) => {
            if let Some(counter) = event.counter() {
                counters.bump(counter);
            }
        }
        Step::Invalid(Invalid::NoFlow)
            if direction == Direction::Ingress
                && segment.flags.class() == TcpClass::Ack
                && config.policy() == Policy::SynCookie
                && !config.monitors(Rule::Attack) =>
        {
            return Verdict::CheckCookie;
        }
        Step::Invalid(reason) => counters.bump(reason.counter()),
    }
    Verdict::Pass
}

/// The `[[ports]]` policy `port` follows (0: none) and its configuration,
/// or the global one.
#[inline(always)]
fn port_config(port: u16, global: &'static GuardConfig) -> (u8, &'static GuardConfig) {
    match PORT_POLICY.get(u32::from(port)) {
        Some(&policy) if policy != 0 => match PORT_CONFIGS.get(u32::from(policy)) {
            Some(config) => (policy, config),
            None => (0, global),
        },
        _ => (0, global),
    }
}

#[inline(always)]
fn drop_syn(counters: &mut Counters, key: &FlowKey, reason: DropReason) -> Verdict {
    counters.bump(reason.counter());
    if reason.is_per_source() {
        guard::note_offence(counters, key.family, key.remote_addr, reason);
    }
    Verdict::Drop
}

/// What became of a flow to store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stored {
    Yes,
    /// Another CPU changed or created it first: this segment's update is
    /// not applied (the next segment's is).
    Busy,
    /// Its table was full.
    Full,
}

/// Takes the right to rewrite or remove a flow that was read with
/// `generation` (see `Flow::generation`); false if another CPU has changed
/// it since, or is changing it.
#[inline(always)]
pub fn claim(entry: *mut Flow, generation: u32) -> bool {
    if generation & 1 != 0 {
        return false;
    }
    // SAFETY: a live map value; `generation` is 4-byte aligned in it.
    let (_, claimed) = unsafe {
        core::intrinsics::atomic_cxchg::<
            u32,
            { core::intrinsics::AtomicOrdering::SeqCst },
            { core::intrinsics::AtomicOrdering::SeqCst },
        >(
            core::ptr::addr_of_mut!((*entry).generation),
            generation,
            generation.wrapping_add(1),
        )
    };
    claimed
}

/// Writes a claimed flow's new contents, then ends the claim.
#[inline(always)]
fn publish(entry: *mut Flow, flow: &Flow, generation: u32) {
    let mut written = *flow;
    written.generation = generation.wrapping_add(1);
    // SAFETY: a live map value this CPU claimed.
    unsafe {
        *entry = written;
        // The fields before the generation that ends the claim. (BPF has
        // no fences, and x86, where the programs are JIT-compiled, keeps
        // stores in order; the compiler must not reorder them either.)
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*entry).generation),
            generation.wrapping_add(2),
        );
    }
}

/// Writes `flow` (read with `generation`) to its entry, or creates it.
#[inline(always)]
fn store(
    counters: &mut Counters,
    key: &FlowKey,
    flow: &Flow,
    found: Option<*mut Flow>,
    generation: u32,
) -> Stored {
    let Some(entry) = found else {
        return match FLOWS.insert(key, flow, BPF_NOEXIST as u64) {
            Ok(()) => Stored::Yes,
            // Created by another CPU since the lookup.
            Err(error) if error == -EEXIST => Stored::Busy,
            Err(_) => {
                let half_open = flow.state().is_some_and(|s| s.is_half_open());
                counters.bump(if half_open {
                    Counter::HalfOpenTableFull
                } else {
                    Counter::FlowTableFull
                });
                Stored::Full
            }
        };
    };
    if !claim(entry, generation) {
        return Stored::Busy;
    }
    publish(entry, flow, generation);
    Stored::Yes
}
