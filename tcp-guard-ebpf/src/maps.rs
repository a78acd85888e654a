//! The maps the programs share with the controller. Sizes here are defaults;
//! the controller sets the flow tables and their companions at load time.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use tcp_guard_common::{
    flow::{Flow, FlowKey, RecentFlows},
    packet::Dissection,
    policy::{
        AttackState, BlockEntry, CHALLENGE_SLOTS, Challenge, CountHash, GuardConfig, LISTENER_SETS,
        ListenerLimit, ListenerSet, LpmAddr, MAX_PORT_POLICIES, SourceKey, TokenBucket,
        VERIFIED_BITS_ENTRIES, VerifiedGeneration,
    },
    stats::{Counter, Stats},
    syncookie::{ReplyBytes, SynAck},
};

use crate::view::opaque;

/// Every tracked flow, in one table: a segment finds its flow with one
/// lookup, and a handshake completes in place. Half-open flows take at most
/// `CountHash::half_open_max` of it, so their floods cannot displace others.
#[map]
pub static FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(262_144 + 65_536, 0);

/// Each CPU's notes of the busy established flows it stored last (see
/// `RecentFlow`): hints of one clock tick, so not pinned; a program loaded
/// afterwards starts with none.
#[map]
pub static RECENT_FLOWS: PerCpuArray<RecentFlows> = PerCpuArray::with_max_entries(1, 0);

/// Flows removed for idleness, per state (`TcpState as u32`).
#[map]
pub static EXPIRED: Array<u64> = Array::with_max_entries(16, 0);

/// The live configuration (one entry).
#[map]
pub static CONFIG: Array<GuardConfig> = Array::with_max_entries(1, 0);

/// Attack mode, as the controller decided it (one entry).
#[map]
pub static ATTACK: Array<AttackState> = Array::with_max_entries(1, 0);

/// Half-open flows per global / port / hashed source and prefix slot (see
/// `policy::CountHash`); sized by the controller from `tables.max_half_open`.
#[map]
pub static COUNTS: Array<u64> = Array::with_max_entries(CountHash::entries(65_536), 0);

/// How sources and prefixes map to `COUNTS` slots (one entry).
#[map]
pub static COUNT_HASH: Array<CountHash> = Array::with_max_entries(1, 0);

/// Per-source SYN token buckets; the least recently seen source goes first.
#[map]
pub static RATE: LruHashMap<SourceKey, TokenBucket> = LruHashMap::with_max_entries(65_536, 0);

/// Sources exempt from SYN limits and attack mode.
#[map]
pub static ALLOW: LpmTrie<LpmAddr, u8> = LpmTrie::with_max_entries(16_384, 0);

/// Blocked sources: all their TCP is dropped until the entry expires.
#[map]
pub static BLOCK: LpmTrie<LpmAddr, BlockEntry> = LpmTrie::with_max_entries(65_536, 0);

/// Whether `BLOCK` and `ALLOW` may hold an entry: see
/// `tcp_guard_common::maps::LISTS_IN_USE`.
#[map]
pub static LISTS_IN_USE: Array<u32> = Array::with_max_entries(2, 0);

/// Sources that completed a handshake, in two generations: see
/// `policy::VERIFIED_FIRST_WORDS`. Memory-mappable, for the daemon to clear
/// a generation in place.
#[map]
pub static VERIFIED_BITS: Array<u64> = Array::with_max_entries(VERIFIED_BITS_ENTRIES, BPF_F_MMAPABLE);

/// The generation verified sources are marked in now.
#[map]
pub static VERIFIED_GEN: Array<VerifiedGeneration> = Array::with_max_entries(1, 0);

/// First SYNs of unknown sources in attack mode, awaiting their
/// retransmission: direct-mapped, see `policy::Challenge`.
#[map]
pub static CHALLENGE: Array<Challenge> = Array::with_max_entries(CHALLENGE_SLOTS, 0);

/// SYNs dropped per source for per-source reasons since the controller last looked.
#[map]
pub static OFFENDERS: LruHashMap<SourceKey, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Sampled SYNs per source, cumulative (see `policy::SYN_SAMPLE_EVERY`).
#[map]
pub static SYN_SOURCES: LruHashMap<SourceKey, u64> = LruHashMap::with_max_entries(16_384, 0);

/// When a SYN to each listener was last let through in attack mode
/// (syncookie policy): see `policy::COOKIE_REFRESH_NS`.
#[map]
pub static LISTENERS: Array<ListenerSet> = Array::with_max_entries(LISTENER_SETS, 0);

/// When the daemon last showed it is alive: see `policy::CONTROLLER_STALE_NS`.
#[map]
pub static HEARTBEAT: Array<u64> = Array::with_max_entries(1, 0);

/// What each local port's listeners hold, by port: see `policy::ListenerLimit`.
#[map]
pub static LISTENER_LIMITS: Array<ListenerLimit> = Array::with_max_entries(65_536, 0);

/// Which configuration each local port follows: 0, `CONFIG`; n, `PORT_CONFIGS[n]`.
#[map]
pub static PORT_POLICY: Array<u8> = Array::with_max_entries(65_536, 0);

/// The per-port policies' configurations (see `PORT_POLICY`).
#[map]
pub static PORT_CONFIGS: Array<GuardConfig> = Array::with_max_entries(MAX_PORT_POLICIES, 0);

/// Working space of the programs, kept off the 512-byte stack.
pub struct Scratch {
    /// The packet being handled, as parsed.
    pub dissection: Dissection,
    pub key: FlowKey,
    /// The flow as found, copied once (see `Flow::generation`).
    pub old: Flow,
    /// The flow a transition produces.
    pub flow: Flow,
    /// A cookie SYN-ACK, and its IP and TCP headers before they are copied
    /// into the packet.
    pub syn_ack: SynAck,
    pub reply: ReplyBytes,
    /// Packet bytes being summed for a checksum, one chunk at a time, with
    /// room for the zeros that pad a chunk to 32 bits.
    pub csum: [u8; CSUM_CHUNK + 4],
    /// This CPU's last reading of the coarse clock (see `crate::now`).
    pub clock: CoarseClock,
    /// The segment being tracked may have a note on this CPU (see
    /// `flow::NO_NOTE`).
    pub note_kept: bool,
}

/// The coarse clock as last read on this CPU, and the jiffies it was read at.
pub struct CoarseClock {
    pub jiffies: u64,
    pub ns: u64,
}

/// Bytes summed per `bpf_csum_diff` call (it takes at most 512).
pub const CSUM_CHUNK: usize = 512;

/// One [`Scratch`] per CPU: the programs never nest on one CPU (both run
/// with bottom halves disabled).
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Events for the controller.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per-CPU packet counters: a single entry holding every counter, so a packet
/// costs one map lookup however many counters it bumps.
#[map]
static STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's counters, for the duration of one program run.
pub struct Counters(*mut Stats);

impl Counters {
    #[inline(always)]
    pub fn this_cpu() -> Option<Self> {
        STATS.get_ptr_mut(0).map(Counters)
    }

    /// This CPU's counters, as handed to a global function by its caller.
    #[inline(always)]
    pub fn from_ptr(stats: *mut Stats) -> Self {
        Counters(stats)
    }

    pub fn as_ptr(&self) -> *mut Stats {
        self.0
    }

    /// This CPU's count so far.
    #[inline(always)]
    pub fn get(&self, counter: Counter) -> u64 {
        let index = opaque(counter as usize);
        // SAFETY: as in `bump`.
        let stats = unsafe { &*self.0 };
        stats.counters.get(index).copied().unwrap_or(0)
    }

    #[inline(always)]
    pub fn bump(&mut self, counter: Counter) {
        // The counter may come from an enum read back from the stack; LLVM
        // trusts its range and would drop the check below, the verifier won't.
        let index = opaque(counter as usize);
        // SAFETY: the pointer comes from a per-CPU map lookup and is only
        // used by this program run on this CPU.
        let stats = unsafe { &mut *self.0 };
        if let Some(slot) = stats.counters.get_mut(index) {
            *slot += 1;
        }
    }
}

/// Atomically adds `delta` (two's complement) to a shared u64 and returns the
/// old value (BPF_ATOMIC | BPF_FETCH, Linux 5.12+).
///
/// `core::sync::atomic` has no read-modify-write ops on this target
/// (atomic-cas is off), hence the intrinsic. SeqCst, not Relaxed: LLVM 22
/// lowers a relaxed fetch-add to the non-fetching `lock +=`, returning garbage.
#[inline(always)]
pub fn atomic_or(value: *mut u64, bits: u64) {
    // SAFETY: `value` points into a live map value; map values are 8-byte aligned.
    unsafe {
        core::intrinsics::atomic_or::<u64, u64, { core::intrinsics::AtomicOrdering::SeqCst }>(value, bits);
    }
}

/// Atomic fetch-and-add on a map value; returns the value before.
#[inline(always)]
pub fn atomic_add(value: *mut u64, delta: u64) -> u64 {
    // SAFETY: `value` points into a live map value; map values are 8-byte aligned.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::SeqCst }>(value, delta)
    }
}
