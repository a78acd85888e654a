//! Enforcement on the fast path: block and allow lists, per-source SYN rate,
//! the attack-mode policy and the half-open limits. Decisions that need no
//! map live in `tcp_guard_common::policy`; this is the map glue around them.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::lpm_trie::Key};
use tcp_guard_common::{
    flow::FlowKey,
    maps::{LIST_ALLOW, LIST_BLOCK},
    policy::{
        AttackState, BlockEntry, CONTROLLER_STALE_NS, COUNT_GLOBAL_SLOT, COUNT_PORT_BASE, Challenge,
        CountKind, DropReason, Event, GuardConfig, LpmAddr, Policy, Rule, SourceKey, TokenBucket,
        VERIFIED_MARKS, VerifiedGeneration, challenge_passes, challenge_slot,
    },
    stats::Counter,
};

use crate::maps::{
    ALLOW, ATTACK, BLOCK, CHALLENGE, CONFIG, COUNT_HASH, COUNTS, Counters, EVENTS, HEARTBEAT,
    LISTENER_LIMITS, LISTENERS, LISTS_IN_USE, OFFENDERS, RATE, SYN_SOURCES, VERIFIED_BITS, VERIFIED_GEN,
    atomic_add, atomic_or,
};

/// Whether a segment from `addr` is dropped for the block list: every
/// segment of a source the operator blocked; of a source blocked
/// automatically, only SYNs, and only while it has not completed a
/// handshake. An automatic block rests on SYNs, which prove nothing about
/// their sender: a flood spoofing a real peer's address must cut neither
/// that peer's connections nor its new ones.
#[inline(always)]
pub fn blocked(family: u8, addr: &[u8; 16], syn: bool, now: u64) -> bool {
    in_use(LIST_BLOCK) && blocked_by_list(family, addr, syn, now)
}

/// Whether list `index` may hold an entry. An empty LPM trie still costs
/// a helper call and its key (about 20 ns on the data ACK), on every TCP
/// segment for the block list and every SYN for the allow list.
#[inline(always)]
fn in_use(index: u32) -> bool {
    LISTS_IN_USE.get(index).is_none_or(|marked| *marked != 0)
}

/// [`blocked`]'s lookup. (Its own BPF function, the address passed by
/// reference: its keys, and a copy of the address, stay off the stack of
/// the program, which calls the tracker too.)
#[inline(never)]
fn blocked_by_list(family: u8, addr: &[u8; 16], syn: bool, now: u64) -> bool {
    let Some(entry) = BLOCK.get(Key::new(128, LpmAddr::new(family, *addr))) else {
        return false;
    };
    if !entry.applies(now) {
        return false;
    }
    if entry.reason != BlockEntry::AUTOMATIC {
        return true;
    }
    syn && !verified(family, addr)
}

/// Whether the source completed a handshake within `attack.verified_ttl`
/// (one to two TTLs: see `policy::VERIFIED_FIRST_WORDS`): all its marks set
/// in either generation. Each mark is looked for in both generations at
/// once (their words share a cache line). A flood's source, never verified,
/// is nearly always refused at its first mark, in a region small enough
/// to stay in the cache.
#[inline(always)]
fn verified(family: u8, addr: &[u8; 16]) -> bool {
    let (Some(hash), Some(generation)) = (COUNT_HASH.get(0), generation()) else {
        return false;
    };
    let (mut in_current, mut in_other) = (true, true);
    for i in 0..VERIFIED_MARKS {
        let (slot, bits) = hash.verified_mark(family, addr, i);
        in_current = in_current && all_set(generation.index(slot, false), bits);
        in_other = in_other && all_set(generation.index(slot, true), bits);
        if !in_current && !in_other {
            return false;
        }
    }
    true
}

/// Whether every one of `bits` is set in word `index` of `VERIFIED_BITS`.
#[inline(always)]
fn all_set(index: u32, bits: u64) -> bool {
    VERIFIED_BITS.get(index).is_some_and(|word| *word & bits == bits)
}

/// The current generation of `VERIFIED_BITS`, read once: every mark of one
/// source goes to (and is looked for in) the same generation, even if the
/// daemon turns them meanwhile.
#[inline(always)]
fn generation() -> Option<VerifiedGeneration> {
    let generation = VERIFIED_GEN.get_ptr(0)?;
    // SAFETY: a live array slot, read once.
    Some(unsafe { core::ptr::read_volatile(generation) })
}

/// Counts a sampled SYN against its source, for the controller's "top
/// sources by SYN rate" (the caller picks one SYN in `SYN_SAMPLE_EVERY`).
/// (Its own BPF function: keeps its locals out of the caller's frame.)
#[inline(never)]
pub fn sample_syn(family: u8, addr: &[u8; 16]) {
    let source = SourceKey::new(family, *addr);
    match SYN_SOURCES.get_ptr_mut(source) {
        Some(syns) => {
            atomic_add(syns, 1);
        }
        None => {
            // A full LRU map evicts its oldest source: no error to handle.
            let _inserted = SYN_SOURCES.insert(source, 1, BPF_NOEXIST as u64);
        }
    }
}

/// Whether `addr` is on the allow list.
#[inline(always)]
pub fn allowed(family: u8, addr: [u8; 16]) -> bool {
    in_use(LIST_ALLOW) && allowed_by_list(family, addr)
}

/// [`allowed`]'s lookup. (Its own BPF function: its key stays off the
/// tracker's stack.)
#[inline(never)]
fn allowed_by_list(family: u8, addr: [u8; 16]) -> bool {
    ALLOW.get(Key::new(128, LpmAddr::new(family, addr))).is_some()
}

/// Takes a token from the bucket of `key`'s source for the port policy
/// `policy`; false when it is empty. (Its own BPF function, the bucket's
/// key included: keeps its locals out of the tracker's frame.)
#[inline(never)]
pub fn within_rate(key: &FlowKey, policy: u8, config: &GuardConfig, now: u64) -> bool {
    if config.syn_rate == 0 {
        return true;
    }
    let source = &SourceKey::with_policy(key.family, key.remote_addr, policy);
    match RATE.get_ptr_mut(source) {
        // SAFETY: a live map value; a racing CPU may lose a token update.
        Some(bucket) => unsafe { (*bucket).take(config.syn_rate, config.syn_burst, now) },
        None => {
            let mut bucket = TokenBucket::full(config.syn_burst, now);
            let ok = bucket.take(config.syn_rate, config.syn_burst, now);
            // A full LRU map evicts its oldest source: no error to handle.
            let _inserted = RATE.insert(source, bucket, 0);
            ok
        }
    }
}

/// What the attack-mode gate found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attack {
    Off,
    On,
    /// On, and the listener accepts the fast path's cookies.
    OnCookiesReady,
}

/// Enters attack mode the moment half-open flows reach the threshold: the
/// controller's tick would let a fast flood take every half-open slot first.
/// (Leaving, with hysteresis, is the controller's.) Returns whether attack
/// mode is on. (Its own BPF function: keeps the event record off the stack
/// of the call chain through `admit`.)
#[inline(never)]
fn attack_mode(counters: &mut Counters, now: u64, config: &GuardConfig) -> Attack {
    if !controller_alive(now) {
        return Attack::Off;
    }
    let Some(attack) = ATTACK.get_ptr_mut(0) else {
        return Attack::Off;
    };
    // SAFETY: a live array map value; racing writers all write "on".
    let attack = unsafe { &mut *attack };
    if attack.active != 0 {
        return if attack.cookies_ready != 0 {
            Attack::OnCookiesReady
        } else {
            Attack::On
        };
    }
    let half_open = COUNTS.get(COUNT_GLOBAL_SLOT).copied().unwrap_or(0);
    if config.attack_enter_half_open == 0 || half_open < config.attack_enter_half_open as u64 {
        return Attack::Off;
    }
    enter_attack(
        counters,
        attack,
        AttackState::BY_HALF_OPEN,
        half_open as u32,
        0,
        now,
    );
    Attack::On
}

/// Turns attack mode on and tells the controller.
#[inline(always)]
fn enter_attack(
    counters: &mut Counters,
    attack: &mut AttackState,
    trigger: u32,
    count: u32,
    port: u16,
    now: u64,
) {
    attack.active = 1;
    attack.trigger = trigger;
    attack.since_ns = now;
    let mut addr = [0; 16];
    let kind = if trigger == AttackState::BY_LISTENER {
        addr[..2].copy_from_slice(&port.to_be_bytes());
        Event::ATTACK_MODE_ON_BY_LISTENER
    } else {
        Event::ATTACK_MODE_ON
    };
    let event = Event {
        kind,
        counter: count,
        addr,
        family: 0,
        _pad: [0; 7],
    };
    if EVENTS.output::<Event>(&event, 0).is_err() {
        counters.bump(Counter::EventsLost);
    }
}

/// A port's half-open flows reached what its listeners allow before attack
/// mode: enter it, unless it is on already. (Its own BPF function: keeps the
/// event record off the admission path's stack.)
#[inline(never)]
pub fn listener_under_attack(counters: &mut Counters, port: u16, count: u32) {
    let Some(attack) = ATTACK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a live array map value; racing writers all write "on".
    let attack = unsafe { &mut *attack };
    if attack.active == 0 {
        // (Read here, once per attack, rather than passed down: BPF
        // functions take at most 5 arguments.)
        let now = crate::now();
        enter_attack(counters, attack, AttackState::BY_LISTENER, count, port, now);
    }
}

/// What the attack-mode gate decides for a SYN.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// On to the rate limit, admission and tracking.
    Open,
    /// A retransmission that passed the challenge: on to the rate limit,
    /// admission and tracking, and over its source's rate it is not
    /// challenged again (it has just shown what that challenge asks).
    Retransmitted,
    Drop(DropReason),
    /// Answer it with a cookie SYN-ACK; keep nothing.
    Cookie,
    /// Straight to the listener, untracked, so that it issues a cookie of
    /// its own and keeps accepting ours (`policy::COOKIE_REFRESH_NS`).
    Refresh,
}

/// The attack-mode gate for a SYN from a source not on the allow list, run
/// before anything else looks at the SYN: in a flood nearly every SYN is
/// stopped here, and each map a flood SYN touches with its random key
/// costs a cache miss (about 200 ns each on the project's machines). So a
/// flood SYN costs one verified-source lookup and one challenge slot (or
/// one listener lookup), and never reaches the flow tables or the rate buckets.
///
/// (A retransmitted SYN of a flow already admitted is challenged again;
/// harmless: the kernel retransmits its SYN-ACK by itself.)
#[inline(never)]
pub fn attack_gate(counters: &mut Counters, key: &FlowKey, seq: u32, now: u64, config: &GuardConfig) -> Gate {
    let attack = attack_mode(counters, now, config);
    if attack == Attack::Off {
        return Gate::Open;
    }
    let policy = config.policy();
    if policy == Policy::Pass {
        return Gate::Open;
    }
    if verified(key.family, &key.remote_addr) {
        counters.bump(Counter::SynVerified);
        return Gate::Open;
    }
    match policy {
        Policy::VerifiedOnly => Gate::Drop(DropReason::Unverified),
        // Monitor mode sends no cookie: the daemon holds no kernel settings
        // for them, so the listener would refuse them.
        Policy::SynCookie if config.monitors(Rule::Attack) => {
            counters.bump(Counter::WouldAnswerWithCookie);
            Gate::Open
        }
        // Until the daemon has the listener ready for our cookies, the
        // limits stand in (a cookie it would refuse is worse than none).
        Policy::SynCookie if attack != Attack::OnCookiesReady => Gate::Open,
        Policy::SynCookie => cookie_gate(key, now),
        _ => challenge(counters, key, seq, now, config),
    }
}

/// The syncookie policy: answer with a cookie, unless the listener is due a
/// SYN of its own.
#[inline(always)]
fn cookie_gate(key: &FlowKey, now: u64) -> Gate {
    let Some(hash) = COUNT_HASH.get(0) else {
        return Gate::Cookie;
    };
    let (set, tag) = hash.listener_slot(key);
    let Some(set) = LISTENERS.get_ptr_mut(set) else {
        return Gate::Cookie;
    };
    // SAFETY: a live array slot. Two CPUs may both let a SYN through, or
    // write the set at once: harmless (see `ListenerSet`).
    if unsafe { (*set).refresh_due(tag, now) } {
        Gate::Refresh
    } else {
        Gate::Cookie
    }
}

/// A SYN over its source's rate: a flood may be claiming the address of a
/// real peer, whose own SYNs would then be dropped with the flood's. So it
/// gets the retransmit challenge: dropped, but its retransmission passes,
/// which a real sender makes and a spoofed flood does not. (Its own BPF
/// function: keeps the challenge's record off the tracker's stack.)
#[inline(never)]
pub fn over_rate_passes(
    counters: &mut Counters,
    key: &FlowKey,
    seq: u32,
    now: u64,
    config: &GuardConfig,
) -> bool {
    challenge(counters, key, seq, now, config) == Gate::Retransmitted
}

/// The retransmit-challenge policy: an unknown flow's first SYN is recorded
/// and dropped; its retransmission within the window passes.
#[inline(always)]
fn challenge(counters: &mut Counters, key: &FlowKey, seq: u32, now: u64, config: &GuardConfig) -> Gate {
    let (slot, tag) = challenge_slot(key);
    let Some(recorded) = CHALLENGE.get_ptr_mut(slot) else {
        return Gate::Drop(DropReason::Challenge);
    };
    // SAFETY: a live array slot; a racing CPU may overwrite it, which at
    // worst costs a client one more retransmission.
    let recorded = unsafe { &mut *recorded };
    if challenge_passes(recorded, tag, seq, now, config.challenge_window_ms) {
        recorded.first_ns = 0;
        counters.bump(Counter::SynChallengePassed);
        return Gate::Retransmitted;
    }
    *recorded = Challenge {
        first_ns: now,
        seq,
        tag,
    };
    Gate::Drop(DropReason::Challenge)
}

/// Whether TCP the parser cannot see whole (see `Dissection::unparsed_tcp`)
/// from `addr` is dropped: in attack mode, unless the source is allow-listed
/// or `attack.drop_unparsed_tcp` is off. A SYN carried that way would
/// otherwise escape every limit, challenge and cookie. (Its own BPF
/// function: keeps its key off the program's stack.)
#[inline(never)]
pub fn unparsed_tcp_dropped(family: u8, addr: [u8; 16], now: u64) -> bool {
    CONFIG.get(0).is_some_and(|config| config.drop_unparsed_tcp != 0)
        && attack_active(now)
        && !allowed(family, addr)
}

/// Whether `rule` is in monitor mode.
#[inline(always)]
pub fn monitored(rule: Rule) -> bool {
    CONFIG.get(0).is_some_and(|config| config.monitors(rule))
}

/// In monitor mode for `reason`'s rule, counts what it would drop and
/// returns true: the caller passes the SYN on instead of dropping it.
#[inline(always)]
pub fn monitor_holds(counters: &mut Counters, config: &GuardConfig, reason: DropReason) -> bool {
    match reason.would_counter() {
        Some(would) if config.monitors(reason.rule()) => {
            counters.bump(would);
            true
        }
        _ => false,
    }
}

/// Whether the daemon showed it is alive recently (or has not started
/// beating yet: a program run without a daemon, in tests).
#[inline(always)]
pub fn controller_alive(now: u64) -> bool {
    HEARTBEAT
        .get(0)
        .is_none_or(|beat| *beat == 0 || now.saturating_sub(*beat) < CONTROLLER_STALE_NS)
}

/// Whether the fast path is in attack mode now.
#[inline(always)]
pub fn attack_active(now: u64) -> bool {
    controller_alive(now) && ATTACK.get(0).is_some_and(|a| a.active != 0)
}

/// The `COUNTS` slot of `kind` for a flow of `key`.
#[inline(always)]
fn count_of(key: &FlowKey, prefix_len: u8, kind: CountKind) -> Option<*mut u64> {
    let slot = COUNT_HASH.get(0)?.slot(key, prefix_len, kind);
    COUNTS.get_ptr_mut(slot)
}

/// Releases the half-open counts of a flow that leaves SYN-RECV. The
/// caller owns the release: it claimed the flow (see `flow::claim`).
#[inline(never)]
pub fn release(key: &FlowKey, prefix_len: u8) {
    release_first(key, prefix_len, CountKind::ALL.len());
}

/// Releases the first `n` of a flow's counts (in `CountKind::ALL` order).
#[inline(always)]
fn release_first(key: &FlowKey, prefix_len: u8, n: usize) {
    for (i, kind) in CountKind::ALL.into_iter().enumerate() {
        if i >= n {
            break;
        }
        if let Some(count) = count_of(key, prefix_len, kind)
            && atomic_add(count, u64::MAX) == 0
        {
            // Never below zero: a wrapped count would keep attack mode on
            // and drop every SYN. (Only a bug could get here; the claim
            // makes each release the only one.)
            atomic_add(count, 1);
        }
    }
}

/// Counts a new half-open flow against every limit, or none of them.
/// (`PER_PORT_AUTO` is never reached here: `admit` checks ports then.)
/// Every slot exists; None only if `COUNT_HASH` sent a slot past the end,
/// which the daemon's sizing rules out: then nothing is counted.
#[inline(always)]
fn reserve(key: &FlowKey, config: &GuardConfig, enforce: bool) -> Result<Option<u8>, DropReason> {
    let prefix_len = if key.family == 4 {
        config.prefix_len_v4
    } else {
        config.prefix_len_v6
    };
    for (i, kind) in CountKind::ALL.into_iter().enumerate() {
        let Some(count) = count_of(key, prefix_len, kind) else {
            release_first(key, prefix_len, i);
            return Ok(None);
        };
        let before = atomic_add(count, 1);
        let limit = kind.limit(config);
        if enforce && limit != 0 && before >= limit as u64 {
            atomic_add(count, u64::MAX);
            release_first(key, prefix_len, i);
            return Err(DropReason::for_count(kind));
        }
    }
    Ok(Some(prefix_len))
}

/// Whether tcp-guard leaves floods to the kernel's own defences now and
/// drops nothing for being over a half-open limit (it still counts): in
/// attack mode with the `pass` policy, and while the daemon is gone (its
/// counts would never come down).
#[inline(always)]
pub fn leaving_floods_to_the_kernel(config: &GuardConfig, now: u64) -> bool {
    !controller_alive(now) || (config.policy() == Policy::Pass && attack_active(now))
}

/// Whether the listener answers every SYN with a cookie of its own now
/// (attack mode with the syncookie policy, and the kernel settings for it in
/// place): the SYNs let through then hold no place in its queue, so the
/// half-open limits count them but do not drop them.
#[inline(always)]
pub fn kernel_answers_with_cookies() -> bool {
    ATTACK
        .get(0)
        .is_some_and(|a| a.active != 0 && a.cookies_ready != 0)
}

/// Counts a SYN that opens a half-open flow against the limits (enforced
/// unless its source is allow-listed); on success returns the prefix length
/// used ([`UNCOUNTED`] if nothing was counted), and the port's
/// half-open count if it is enough for attack mode (the caller enters it: a
/// call from here would take the verifier's stack budget past 512 bytes).
#[inline(never)]
pub fn admit(key: &FlowKey, config: &GuardConfig, enforce: bool) -> Result<(u8, u32), DropReason> {
    let Some(prefix_len) = reserve(key, config, enforce)? else {
        return Ok((UNCOUNTED, 0));
    };
    if config.per_port_half_open != GuardConfig::PER_PORT_AUTO {
        return Ok((prefix_len, 0));
    }
    // The port's own limits, from its listeners; checked after the count
    // went up (the counter just touched is cheap to read again).
    let Some(listener) = LISTENER_LIMITS.get(key.local_port as u32) else {
        return Ok((prefix_len, 0));
    };
    let Some(count) = COUNTS.get(COUNT_PORT_BASE + key.local_port as u32).copied() else {
        return Ok((prefix_len, 0));
    };
    if enforce && listener.half_open != 0 && count > listener.half_open as u64 {
        release_first(key, prefix_len, CountKind::ALL.len());
        return Err(DropReason::PortHalfOpen);
    }
    let attack_at = if listener.enter_attack != 0 && count >= listener.enter_attack as u64 {
        count as u32
    } else {
        0
    };
    Ok((prefix_len, attack_at))
}

/// The half-open limit, if any, that a flow `admit` just counted without
/// enforcing is over: the one that would have dropped its SYN (monitor
/// mode). (Its own BPF function: inlined, the chain from the program
/// through the tracker took more than the verifier's 512 bytes of stack.)
#[inline(never)]
pub fn half_open_limit_reached(key: &FlowKey, prefix_len: u8, config: &GuardConfig) -> Option<DropReason> {
    for kind in CountKind::ALL {
        let limit = kind.limit(config);
        // SAFETY: a live array slot, read once.
        let count = count_of(key, prefix_len, kind).map_or(0, |count| unsafe { *count });
        if limit != 0 && count > limit as u64 {
            return Some(DropReason::for_count(kind));
        }
    }
    if config.per_port_half_open != GuardConfig::PER_PORT_AUTO {
        return None;
    }
    let listener = LISTENER_LIMITS.get(key.local_port as u32)?;
    let count = *COUNTS.get(COUNT_PORT_BASE + key.local_port as u32)?;
    (listener.half_open != 0 && count > listener.half_open as u64).then_some(DropReason::PortHalfOpen)
}

/// Whether the counted half-open flows, and `more` not counted, are more
/// than their share of the flow table (`CountHash::half_open_max`): then
/// the new one is not stored, as if the table were full, and a flood of
/// them leaves the rest of the table to other flows.
#[inline(always)]
pub fn half_open_share_taken(more: u64) -> bool {
    let max = COUNT_HASH.get(0).map_or(0, |hash| hash.half_open_max);
    max != 0
        && COUNTS
            .get(COUNT_GLOBAL_SLOT)
            .is_some_and(|count| *count + more > max as u64)
}

/// `admit`'s prefix length when it counted nothing (no prefix is longer than 128).
pub const UNCOUNTED: u8 = u8::MAX;

/// Records a source that earns its drop, and tells the controller the first time.
/// (Its own BPF function: keeps the event record out of the tracker's frame.)
#[inline(never)]
pub fn note_offence(counters: &mut Counters, family: u8, addr: [u8; 16], reason: DropReason) {
    let source = SourceKey::new(family, addr);
    if let Some(drops) = OFFENDERS.get_ptr_mut(source) {
        atomic_add(drops, 1);
        return;
    }
    if OFFENDERS.insert(source, 1, BPF_NOEXIST as u64).is_ok() {
        let event = Event {
            kind: Event::SOURCE_OVER_LIMIT,
            counter: reason.counter() as u32,
            addr,
            family,
            _pad: [0; 7],
        };
        if EVENTS.output::<Event>(&event, 0).is_err() {
            counters.bump(Counter::EventsLost);
        }
    }
}

/// Marks the peer of a flow that completed its handshake as verified, in
/// the current generation. (Its own BPF function: keeps its locals out of
/// the tracker's frame.)
#[inline(never)]
pub fn verify(key: &FlowKey) {
    let (Some(hash), Some(generation)) = (COUNT_HASH.get(0), generation()) else {
        return;
    };
    for i in 0..VERIFIED_MARKS {
        let (slot, bits) = hash.verified_mark(key.family, &key.remote_addr, i);
        // A returning source's bits are set already: no locked write then.
        if let Some(word) = VERIFIED_BITS.get_ptr_mut(generation.index(slot, false))
            // SAFETY: a live array slot, read once.
            && unsafe { *word } & bits != bits
        {
            atomic_or(word, bits);
        }
    }
}
