//! Enforcement: the live configuration both sides read, the keys of the
//! limit counters and lists, and the pure decisions (token bucket, SYN
//! retransmission challenge, attack-mode hysteresis) the kernel and the
//! controller share.

use crate::flow::{FlowKey, TcpState};

/// Attack-mode policy.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Count only; leave the flood to the kernel's own defences.
    Pass = 0,
    /// SYNs pass only from sources that completed a handshake recently.
    VerifiedOnly = 1,
    /// As verified-only, and an unknown source's SYN passes when it is
    /// retransmitted (same ports and sequence number) within the window.
    RetransmitChallenge = 2,
    /// As verified-only, and an unknown source's SYN is answered from XDP
    /// with a SYN cookie; its valid ACK is handed to the listener.
    SynCookie = 3,
    /// The default: the daemon picks `SynCookie` where the kernel issues
    /// cookies itself (`tcp_syncookies` 1 or 2), `RetransmitChallenge` where
    /// it does not. The programs never see it.
    Auto = 4,
}

impl Policy {
    pub const ALL: [Policy; 5] = [
        Policy::Auto,
        Policy::RetransmitChallenge,
        Policy::SynCookie,
        Policy::VerifiedOnly,
        Policy::Pass,
    ];

    pub const fn from_u8(value: u8) -> Option<Policy> {
        match value {
            0 => Some(Policy::Pass),
            1 => Some(Policy::VerifiedOnly),
            2 => Some(Policy::RetransmitChallenge),
            3 => Some(Policy::SynCookie),
            4 => Some(Policy::Auto),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Policy::Pass => "pass",
            Policy::VerifiedOnly => "verified-only",
            Policy::RetransmitChallenge => "retransmit-challenge",
            Policy::SynCookie => "syncookie",
            Policy::Auto => "auto",
        }
    }
}

/// The live configuration: one entry of the `CONFIG` array map. Written by
/// the controller (start, reload, `limits set`), read by the programs on
/// every SYN and by the controller every tick. A limit of 0 means no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardConfig {
    /// Half-open (SYN-RECV) flows, all sources together.
    pub global_half_open: u32,
    /// Half-open flows per source address.
    pub per_source_half_open: u32,
    /// Half-open flows per source prefix (`prefix_len_v4` / `prefix_len_v6`).
    pub per_prefix_half_open: u32,
    /// Half-open flows per local (destination) port, or
    /// [`GuardConfig::PER_PORT_AUTO`]: each port's own limit in the
    /// `LISTENER_LIMITS` map, from its listeners' real queues.
    pub per_port_half_open: u32,
    /// SYNs per second per source address (token bucket refill rate).
    pub syn_rate: u32,
    /// Bucket depth: SYNs a source may send at once.
    pub syn_burst: u32,
    /// Attack mode starts at this many half-open flows...
    pub attack_enter_half_open: u32,
    /// ...or this many SYNs per second (all sources),
    pub attack_enter_syn_rate: u32,
    /// and ends once both stay at or below these for `attack_cooldown_secs`.
    pub attack_leave_half_open: u32,
    pub attack_leave_syn_rate: u32,
    pub attack_cooldown_secs: u32,
    /// How long after a dropped first SYN its retransmission is let through.
    pub challenge_window_ms: u32,
    /// How long a source stays verified after completing a handshake.
    pub verified_ttl_secs: u32,
    /// A source whose SYNs hit a per-source limit this often within one
    /// second is blocked for `block_ttl_secs` (0: never block automatically).
    pub block_after_drops: u32,
    pub block_ttl_secs: u32,
    /// Idle timeouts per stored state, indexed by `TcpState as usize - 1`.
    pub timeout_secs: [u32; 9],
    pub prefix_len_v4: u8,
    pub prefix_len_v6: u8,
    /// A [`Policy`] as u8.
    pub policy: u8,
    /// Non-zero when the egress program is attached (set by the daemon):
    /// half-open flows then wait for the host's SYN-ACK (`Flow::AWAIT_SYN_ACK`).
    pub egress: u8,
    /// What a cookie SYN-ACK (policy syncookie) offers, set by the daemon
    /// from the interface's MTU and the kernel's TCP settings, so that the
    /// listener's cookie check agrees: the MSS per family, the window scale
    /// the listener computes for itself, and [`GuardConfig::COOKIE_TIMESTAMPS`],
    /// [`GuardConfig::COOKIE_SACK`], [`GuardConfig::COOKIE_WSCALE`].
    pub cookie_mss_v4: u16,
    pub cookie_mss_v6: u16,
    pub cookie_wscale: u8,
    pub cookie_options: u8,
    /// Non-zero: the daemon may set `tcp_syncookies` and `tcp_timestamps`
    /// to 2 in its network namespace while the syncookie policy answers
    /// SYNs, and restores them after (`attack.manage_sysctls`). Read by the
    /// daemon only.
    pub manage_sysctls: u8,
    /// Non-zero: in attack mode, TCP the parser cannot fully see (IPv4
    /// fragments of TCP, TCP behind IPv6 extension headers) is dropped, as
    /// no limit, challenge or cookie can apply to it (`attack.drop_unparsed_tcp`).
    pub drop_unparsed_tcp: u8,
    /// Rules in monitor mode ([`Rule`] bits, `monitor.*`): what they would
    /// drop is counted (`would_drop_*`) and passed on.
    pub monitor: u8,
    pub _pad: [u8; 3],
    /// Automatic blocks kept at most; a new one evicts the oldest. Read by
    /// the daemon only.
    pub block_max_automatic: u32,
}

impl GuardConfig {
    /// The kernel keeps no random timestamp offset (`tcp_timestamps=2`): a
    /// cookie SYN-ACK may carry the timestamp option, and window scale and
    /// SACK encoded in it.
    pub const COOKIE_TIMESTAMPS: u8 = 0x01;
    /// The kernel accepts SACK (`tcp_sack=1`).
    pub const COOKIE_SACK: u8 = 0x02;
    /// The kernel accepts window scaling (`tcp_window_scaling=1`).
    pub const COOKIE_WSCALE: u8 = 0x04;
    /// `per_port_half_open`: follow each port's listeners.
    pub const PER_PORT_AUTO: u32 = u32::MAX;

    pub const fn timeout_secs(&self, state: TcpState) -> u32 {
        match state {
            TcpState::Closed => 0,
            other => self.timeout_secs[other as usize - 1],
        }
    }

    /// Whether `rule` is in monitor mode (on its own or with all of them).
    pub const fn monitors(&self, rule: Rule) -> bool {
        self.monitor & (rule as u8 | Rule::All as u8) != 0
    }

    /// The policy in force; `auto` (which the daemon resolves before the
    /// programs see it) and unknown values read as the retransmit challenge.
    pub const fn policy(&self) -> Policy {
        match Policy::from_u8(self.policy) {
            Some(Policy::Auto) | None => Policy::RetransmitChallenge,
            Some(p) => p,
        }
    }
}

/// The rules monitor mode can hold back: each drops for its own reasons
/// (see [`DropReason::rule`]), and in monitor mode counts what it would
/// drop and passes it. Bits of `GuardConfig::monitor`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The block list, the operator's entries and the automatic ones.
    BlockList = 0x01,
    /// The per-source SYN rate.
    SynRate = 0x02,
    /// The half-open limits (global, per source, per prefix, per port) and
    /// the half-open flows' share of the flow table.
    HalfOpen = 0x04,
    /// What attack mode does to SYNs from unverified sources: drop them,
    /// challenge them, or answer them with cookies.
    Attack = 0x08,
    /// Dropping TCP the parser cannot see whole in attack mode.
    UnparsedTcp = 0x10,
    /// Every rule.
    All = 0x80,
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::All,
        Rule::BlockList,
        Rule::SynRate,
        Rule::HalfOpen,
        Rule::Attack,
        Rule::UnparsedTcp,
    ];

    /// Its settings key is `monitor.<name>`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Rule::BlockList => "block_list",
            Rule::SynRate => "syn_rate",
            Rule::HalfOpen => "half_open",
            Rule::Attack => "attack",
            Rule::UnparsedTcp => "unparsed_tcp",
            Rule::All => "all",
        }
    }
}

/// Entries of `PORT_CONFIGS`: at most one less per-port policies (entry 0
/// stands for `CONFIG`).
pub const MAX_PORT_POLICIES: u32 = 64;

/// What the controller tells the programs about attack mode: one entry of
/// the `ATTACK` array map, written only by the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttackState {
    /// Non-zero while in attack mode.
    pub active: u8,
    /// Non-zero while the listener accepts the fast path's cookies (the
    /// daemon has the kernel settings they need in place): only then does
    /// the syncookie policy answer SYNs; until then they go on to the limits.
    pub cookies_ready: u8,
    pub _pad: [u8; 2],
    /// What started it: [`AttackState::BY_HALF_OPEN`] or [`AttackState::BY_SYN_RATE`].
    pub trigger: u32,
    /// CLOCK_MONOTONIC ns when it started (0 when not active).
    pub since_ns: u64,
}

impl AttackState {
    pub const BY_HALF_OPEN: u32 = 1;
    pub const BY_SYN_RATE: u32 = 2;
    /// A listener's half-open connections reached its `ListenerLimit::enter_attack`.
    pub const BY_LISTENER: u32 = 3;
    /// The kernel's own overflow counters moved (ListenOverflows,
    /// ListenDrops, SyncookiesSent).
    pub const BY_KERNEL: u32 = 4;

    pub const fn trigger_name(&self) -> &'static str {
        match self.trigger {
            Self::BY_HALF_OPEN => "half-open",
            Self::BY_SYN_RATE => "SYN rate",
            Self::BY_LISTENER => "listener",
            Self::BY_KERNEL => "kernel",
            _ => "-",
        }
    }
}

/// How long the fast path trusts a daemon it has not heard from (its
/// heartbeat, `maps::HEARTBEAT`, written twice a second). Past that, only
/// the daemon could undo what the fast path would do (end attack mode,
/// expire half-open counts), so the fast path leaves attack mode and stops
/// dropping SYNs for half-open limits: the kernel's own defences answer, as
/// without tcp-guard, until a daemon adopts the state.
pub const CONTROLLER_STALE_NS: u64 = 30_000_000_000;

/// What the fast path allows one local port, from its listeners' queues as
/// the daemon reads them from the kernel: one entry of the
/// `LISTENER_LIMITS` array, indexed by port. Zero: no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerLimit {
    /// Half-open flows the fast path admits for the port.
    pub half_open: u32,
    /// Attack mode starts when the port has this many.
    pub enter_attack: u32,
}

/// Which limit a `COUNTS` slot counts for.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountKind {
    Global = 0,
    Source = 1,
    Prefix = 2,
    Port = 3,
}

impl CountKind {
    /// Every kind, in the order limits are checked.
    pub const ALL: [CountKind; 4] = [
        CountKind::Global,
        CountKind::Source,
        CountKind::Prefix,
        CountKind::Port,
    ];

    /// The configured limit for this kind (0: none).
    pub const fn limit(self, config: &GuardConfig) -> u32 {
        match self {
            CountKind::Global => config.global_half_open,
            CountKind::Source => config.per_source_half_open,
            CountKind::Prefix => config.per_prefix_half_open,
            CountKind::Port => config.per_port_half_open,
        }
    }
}

/// The `COUNTS` array: half-open flows per limit, in fixed slots that are
/// never created or deleted (a hash map's delete at zero raced another
/// CPU's increment, and a full one left flows uncounted). Slot 0 is the
/// global count; then one slot per local port; then `slots` slots for
/// sources and `slots` for prefixes, picked by a keyed hash. Sources that
/// share a slot share a count: a collision can only make a limit stricter,
/// and the secret seed keeps anyone from aiming one at a chosen address.
pub const COUNT_GLOBAL_SLOT: u32 = 0;
/// First port slot (port 0).
pub const COUNT_PORT_BASE: u32 = 1;
/// First hashed slot: the source region, then the prefix region.
pub const COUNT_HASHED_BASE: u32 = COUNT_PORT_BASE + 65_536;

/// The sources that completed a handshake, as a Bloom filter in two
/// generations (`VERIFIED_BITS`). A verified source sets [`VERIFIED_MARKS`]
/// marks in the current generation (see [`CountHash::verified_mark`]): the
/// first, two bits of one word, in a small region of
/// [`VERIFIED_FIRST_WORDS`] words (2^17 bits, 16 KiB, 32 KiB with both
/// generations: small enough to stay in a CPU's nearest caches), the
/// others, one bit each, in a large one of [`VERIFIED_WORDS`] (2^23 bits,
/// 1 MiB). It counts as verified while all its marks are set in either
/// generation. The generations are interleaved word by word, so a flood's
/// SYN, from a source never verified, reads one word of the small region,
/// finds its first mark clear in both generations (in each, in 95 % of
/// cases with 16,384 sources verified, 60 % with 65,536) and stops. A
/// first region of 2^20 bits (256 KiB with both generations) missed the
/// cache on every flood SYN, about 45 ns (docs/benchmarks.md); the third
/// mark in the large region makes up for the smaller first one. No hash map on either path.
/// The daemon turns the generations every `attack.verified_ttl` (see
/// [`VerifiedGeneration`]), so a source stays verified for one to two TTLs.
/// A source never verified passes as verified when other sources set all
/// its marks: with n sources verified per TTL, about
/// (1 - e^(-2n/2^17))^2 (1 - e^(-3n/2^23))^3 per generation (65,536
/// sources: 0.0005 %; 262,144: 0.07 %; 1,048,576: 3 %). What that lets
/// through is still held to the half-open limits and the kernel's own
/// defences.
pub const VERIFIED_FIRST_WORDS: u32 = 1 << 11;

/// Words of the large region of each generation of `VERIFIED_BITS`.
pub const VERIFIED_WORDS: u32 = 1 << 17;

/// Entries (u64 words) of `VERIFIED_BITS`: both regions, both generations.
pub const VERIFIED_BITS_ENTRIES: u32 = 2 * (VERIFIED_FIRST_WORDS + VERIFIED_WORDS);

/// Marks a verified source sets in its generation: one in the small region,
/// the others in the large one.
pub const VERIFIED_MARKS: u32 = 4;

const VERIFIED_SALT: u32 = 0x5645_5249;

/// Which generation of `VERIFIED_BITS` verified sources are marked in, and
/// since when (one entry of `VERIFIED_GEN`, written by the daemon).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifiedGeneration {
    /// 0 or 1: the current generation, the words whose index has this low bit.
    pub current: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns when it became current; 0: not yet started.
    pub since_ns: u64,
}

impl VerifiedGeneration {
    /// Whether the generations turn at `now_ns`: the current one has
    /// marked sources for `ttl_secs`. The other one, whose sources have
    /// been verified for at least that long, is cleared and becomes current.
    pub const fn due(&self, now_ns: u64, ttl_secs: u32) -> bool {
        self.since_ns != 0 && now_ns.saturating_sub(self.since_ns) >= ttl_secs as u64 * 1_000_000_000
    }

    /// The `VERIFIED_BITS` index of a mark's `slot` (see
    /// [`CountHash::verified_mark`]) in the current generation (`other`
    /// false) or the other one.
    #[inline(always)]
    pub const fn index(&self, slot: u32, other: bool) -> u32 {
        slot | ((self.current ^ other as u32) & 1)
    }
}

/// How sources and prefixes map to `COUNTS` slots: one entry of the
/// `COUNT_HASH` array, written once when `COUNTS` is created (a daemon
/// adopting pinned counts keeps it: the counts were taken with it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountHash {
    /// Random, from the daemon that created `COUNTS`.
    pub seed: u32,
    /// Slots per hashed region, less one (a power of two, less one).
    pub mask: u32,
    /// Half-open flows `FLOWS` takes (`tables.max_half_open` when `COUNTS`
    /// was created): a SYN that would open one more is refused as if the
    /// table were full, so a flood of them leaves the rest of the table to
    /// other flows. 0: no such cap (a table loaded without a daemon).
    pub half_open_max: u32,
    pub _pad: u32,
}

impl CountHash {
    /// Slots per hashed region for a half-open share of `half_open`
    /// entries: twice as many, at least 65,536, a power of two, so that a
    /// full table of distinct sources leaves most slots of other sources empty.
    pub const fn slots_for(half_open: u32) -> u32 {
        let wanted = if half_open > (1 << 30) {
            1 << 31
        } else {
            half_open * 2
        };
        let wanted = if wanted < 65_536 { 65_536 } else { wanted };
        wanted.next_power_of_two()
    }

    /// Entries of the `COUNTS` array for regions of `slots` slots.
    pub const fn entries(slots: u32) -> u32 {
        COUNT_HASHED_BASE.saturating_add(slots.saturating_mul(2))
    }

    /// The hash of an address (and, for prefixes, its length).
    #[inline(always)]
    fn hash(&self, family: u8, addr: &[u8; 16], salt: u32) -> u32 {
        let mut h = self.seed ^ salt.wrapping_mul(0x85eb_ca6b) ^ family as u32;
        let mut i = 0;
        while i < 4 {
            let word = u32::from_le_bytes([addr[4 * i], addr[4 * i + 1], addr[4 * i + 2], addr[4 * i + 3]]);
            h = (h ^ word).wrapping_mul(0x9e37_79b1);
            h ^= h >> 15;
            i += 1;
        }
        h.wrapping_mul(0xc2b2_ae35) ^ (h >> 13)
    }

    /// Mark `i` (below [`VERIFIED_MARKS`]) of a verified source: the slot
    /// of its word (even; [`VerifiedGeneration::index`] picks the
    /// generation), and its bits there, all of which must be set: two for
    /// the first mark (in the small region), one for the others.
    #[inline(always)]
    pub fn verified_mark(&self, family: u8, addr: &[u8; 16], i: u32) -> (u32, u64) {
        // Salts no count slot uses (theirs are 0 to 129).
        let h = self.hash(family, addr, VERIFIED_SALT + i);
        if i == 0 {
            let word = (h >> 12) & (VERIFIED_FIRST_WORDS - 1);
            (2 * word, 1 << (h & 63) | 1 << ((h >> 6) & 63))
        } else {
            let word = VERIFIED_FIRST_WORDS + ((h >> 6) & (VERIFIED_WORDS - 1));
            (2 * word, 1 << (h & 63))
        }
    }

    /// The `LISTENERS` set of the listener `key`'s SYN is for (its local
    /// address and port), and the tag that tells it from others there.
    #[inline(always)]
    pub fn listener_slot(&self, key: &FlowKey) -> (u32, u32) {
        let h = self.hash(key.family, &key.local_addr, LISTENER_SALT + key.local_port as u32);
        (h & (LISTENER_SETS - 1), (h >> 10) | 1 << 31)
    }

    /// The slot a half-open flow of `key` is counted in for `kind`.
    #[inline(always)]
    pub fn slot(&self, key: &FlowKey, prefix_len: u8, kind: CountKind) -> u32 {
        match kind {
            CountKind::Global => COUNT_GLOBAL_SLOT,
            CountKind::Port => COUNT_PORT_BASE + key.local_port as u32,
            CountKind::Source => COUNT_HASHED_BASE + (self.hash(key.family, &key.remote_addr, 0) & self.mask),
            CountKind::Prefix => {
                let mut prefix = key.remote_addr;
                mask(&mut prefix, prefix_len);
                let region = self.mask.wrapping_add(1);
                COUNT_HASHED_BASE
                    + region
                    + (self.hash(key.family, &prefix, 1 + prefix_len as u32) & self.mask)
            }
        }
    }
}

/// Clears all but the first `prefix_len` bits of `addr`, in place, on two
/// 64-bit halves (no loop, no copies, and a BPF function of its own: in the
/// kernel every byte of stack and every branch counts).
#[inline(never)]
pub fn mask(addr: &mut [u8; 16], prefix_len: u8) {
    let len = prefix_len as u32;
    let keep = |bits: u32| -> u64 {
        match bits {
            0 => 0,
            64.. => u64::MAX,
            n => u64::MAX << (64 - n),
        }
    };
    let mut high = [0u8; 8];
    let mut low = [0u8; 8];
    high.copy_from_slice(&addr[..8]);
    low.copy_from_slice(&addr[8..]);
    let high = u64::from_be_bytes(high) & keep(len);
    let low = u64::from_be_bytes(low) & keep(len.saturating_sub(64));
    addr[..8].copy_from_slice(&high.to_be_bytes());
    addr[8..].copy_from_slice(&low.to_be_bytes());
}

/// Value of an `ALLOW` entry added with `tcp-guard allow add`. The fast
/// path only looks the key up; the value says where the entry came from.
pub const ALLOW_BY_OPERATOR: u8 = 1;
/// Value of an `ALLOW` entry from the config file's `lists.allow`: a reload
/// that no longer lists it removes it.
pub const ALLOW_BY_CONFIG: u8 = 2;

/// Key of the `ALLOW` and `BLOCK` LPM tries: one trie for both families, an
/// IPv4 address mapped into IPv6 (::ffff:a.b.c.d, prefix length + 96).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpmAddr(pub [u8; 16]);

impl LpmAddr {
    /// The trie form of an address from a packet or [`FlowKey`].
    pub const fn new(family: u8, addr: [u8; 16]) -> LpmAddr {
        if family == 4 {
            LpmAddr([
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
            ])
        } else {
            LpmAddr(addr)
        }
    }
}

/// Value of a `BLOCK` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// CLOCK_MONOTONIC ns after which the entry no longer applies; 0: never.
    pub expires_ns: u64,
    /// Why: [`BlockEntry::MANUAL`], [`BlockEntry::AUTOMATIC`] or
    /// [`BlockEntry::CONFIG`].
    pub reason: u32,
    pub _pad: u32,
}

impl BlockEntry {
    pub const MANUAL: u32 = 0;
    /// Added by the controller for exceeding per-source limits.
    pub const AUTOMATIC: u32 = 1;
    /// From the config file's `lists.block`: a reload that no longer lists
    /// it removes it. The fast path treats it as [`BlockEntry::MANUAL`].
    pub const CONFIG: u32 = 2;

    pub const fn applies(&self, now_ns: u64) -> bool {
        self.expires_ns == 0 || now_ns < self.expires_ns
    }
}

/// Source key of the `RATE`, `OFFENDERS` and `SYN_SOURCES` maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

impl SourceKey {
    pub const fn new(family: u8, addr: [u8; 16]) -> SourceKey {
        SourceKey {
            addr,
            family,
            _pad: [0; 3],
        }
    }

    /// A `RATE` key: the source's bucket for the port policy `policy` (0:
    /// the global settings), so that a port's own rate counts the SYNs to
    /// its ports only, and the SYNs to them count against no other rate.
    pub const fn with_policy(family: u8, addr: [u8; 16], policy: u8) -> SourceKey {
        SourceKey {
            addr,
            family,
            _pad: [policy, 0, 0],
        }
    }
}

/// A per-source SYN token bucket (value of the `RATE` map). Tokens are kept
/// in millitokens so slow rates refill smoothly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub millitokens: u64,
    pub last_ns: u64,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub const fn full(burst: u32, now_ns: u64) -> TokenBucket {
        TokenBucket {
            millitokens: burst as u64 * 1000,
            last_ns: now_ns,
        }
    }

    /// Refills by the time elapsed and takes one token; false when empty.
    #[inline(always)]
    pub fn take(&mut self, rate: u32, burst: u32, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        // rate tokens/s = rate millitokens/ms; elapsed capped so the product cannot overflow.
        let elapsed_ms = if elapsed > 1 << 40 { 1 << 40 } else { elapsed } / 1_000_000;
        let refill = elapsed_ms * rate as u64;
        let cap = burst as u64 * 1000;
        let mut tokens = self.millitokens + refill;
        if tokens > cap {
            tokens = cap;
        }
        if refill > 0 {
            self.last_ns = now_ns;
        }
        if tokens >= 1000 {
            self.millitokens = tokens - 1000;
            true
        } else {
            self.millitokens = tokens;
            false
        }
    }
}

/// Every this-many-th SYN a CPU sees is counted against its source in
/// `SYN_SOURCES`: enough to name the sources sending hundreds of SYNs per
/// second, for a map update on one SYN in 64 instead of every one.
pub const SYN_SAMPLE_EVERY: u32 = 64;

/// Slots of the `CHALLENGE` array (a power of two; 16 bytes each, 32 MiB).
/// A client's record must survive the flood SYNs that hash to its slot until
/// its retransmission, one RTO (1 s) later: at a flood of R SYN/s it does
/// with probability exp(-R / slots), 92 % at 185,000 SYN/s (the benchmark
/// measured 4x fewer slots losing about half).
pub const CHALLENGE_SLOTS: u32 = 1 << 21;

/// A slot of the `CHALLENGE` array: the first SYN of a flow seen in attack
/// mode. The array is direct-mapped (a flow's slot comes from a hash of its
/// key; a newer flow overwrites an older one): no allocation and no lock per
/// flood packet, unlike a hash map insert. The tag tells flows sharing a
/// slot apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Challenge {
    pub first_ns: u64,
    pub seq: u32,
    pub tag: u32,
}

/// The slot index and tag of a flow in the `CHALLENGE` array (FNV-1a over
/// the key's words, then a 64-bit finaliser).
#[inline(always)]
pub fn challenge_slot(key: &FlowKey) -> (u32, u32) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |word: u32| {
        hash ^= word as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for chunk in [&key.local_addr, &key.remote_addr] {
        mix(u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
        mix(u32::from_ne_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]));
        mix(u32::from_ne_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]));
        mix(u32::from_ne_bytes([chunk[12], chunk[13], chunk[14], chunk[15]]));
    }
    mix(((key.local_port as u32) << 16) | key.remote_port as u32);
    mix(key.family as u32);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    ((hash as u32) & (CHALLENGE_SLOTS - 1), (hash >> 32) as u32)
}

/// Whether a SYN passes the retransmission challenge: it must repeat a SYN
/// recorded for the same flow (`tag`), with the same sequence number, no
/// longer than `window_ms` ago. A SYN that does not pass is recorded for next time.
#[inline(always)]
pub fn challenge_passes(recorded: &Challenge, tag: u32, seq: u32, now_ns: u64, window_ms: u32) -> bool {
    recorded.first_ns != 0
        && recorded.tag == tag
        && recorded.seq == seq
        && now_ns.saturating_sub(recorded.first_ns) <= window_ms as u64 * 1_000_000
}

/// How often, in attack mode with the syncookie policy, one SYN per
/// listener is let through to the kernel. The kernel checks a cookie only
/// for a listener that issued one itself within the last two minutes
/// (`tcp_synq_no_recent_overflow`); with `tcp_syncookies=2` the SYN let
/// through makes it issue one, so the mark never lapses.
pub const COOKIE_REFRESH_NS: u64 = 10_000_000_000;

/// Sets of the `LISTENERS` array, picked by a hash of the listening address
/// and port (see [`CountHash::listener_slot`]).
pub const LISTENER_SETS: u32 = 1_024;

/// Listeners a set holds (one 64-byte cache line of [`ListenerStamp`]s).
pub const LISTENER_WAYS: usize = 4;

const LISTENER_SALT: u32 = 0x4c53_0000;

/// When a SYN to a listener was last let through in attack mode (syncookie
/// policy) to keep its cookie mark fresh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStamp {
    /// Which listener this is (never 0; 0: a free way).
    pub tag: u32,
    pub _pad: u32,
    pub last_ns: u64,
}

/// An entry of `LISTENERS`: up to [`LISTENER_WAYS`] listeners whose hash
/// picks this set. A fifth replaces the one refreshed longest ago, which
/// then gets its next SYN through early: harmless, its listener answers it
/// with a cookie of its own. (Direct-mapped, two flooded listeners sharing
/// a slot would each have taken it from the other on every SYN, and sent
/// half the flood to the kernel.)
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerSet {
    pub ways: [ListenerStamp; LISTENER_WAYS],
}

impl ListenerSet {
    /// Whether the listener `tag` is due a SYN of its own at `now_ns` (see
    /// [`cookie_refresh_due`]); if so, it is recorded as refreshed now.
    #[inline(always)]
    pub fn refresh_due(&mut self, tag: u32, now_ns: u64) -> bool {
        let mut oldest = 0;
        for i in 0..LISTENER_WAYS {
            let way = self.ways[i];
            if way.tag == tag {
                if !cookie_refresh_due(way.last_ns, now_ns) {
                    return false;
                }
                oldest = i;
                break;
            }
            if way.last_ns < self.ways[oldest].last_ns {
                oldest = i;
            }
        }
        self.ways[oldest] = ListenerStamp {
            tag,
            _pad: 0,
            last_ns: now_ns,
        };
        true
    }
}

/// Whether a listener last refreshed at `last_ns` (0: never) needs a SYN let through now.
#[inline(always)]
pub const fn cookie_refresh_due(last_ns: u64, now_ns: u64) -> bool {
    last_ns == 0 || now_ns.saturating_sub(last_ns) >= COOKIE_REFRESH_NS
}

/// Attack-mode hysteresis, run by the controller every tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttackDetector {
    pub active: bool,
    /// When both signals first fell to the leave thresholds (ns), while active.
    pub calm_since_ns: Option<u64>,
}

/// Why attack mode started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttackTrigger {
    HalfOpen,
    SynRate,
    /// The kernel's own overflow counters moved.
    Kernel,
}

/// A change of attack mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttackChange {
    Entered(AttackTrigger),
    Left,
}

impl AttackDetector {
    /// Takes note that the fast path entered attack mode on its own.
    pub fn entered_by_kernel(&mut self) {
        if !self.active {
            self.active = true;
            self.calm_since_ns = None;
        }
    }

    /// Takes note that the kernel's listeners overflowed (or answered with
    /// cookies of their own): attack mode starts, or its cooldown starts over.
    pub fn kernel_overflowed(&mut self) -> Option<AttackChange> {
        self.calm_since_ns = None;
        if self.active {
            return None;
        }
        self.active = true;
        Some(AttackChange::Entered(AttackTrigger::Kernel))
    }

    /// Feeds one observation; returns the change it causes, if any.
    pub fn observe(
        &mut self,
        config: &GuardConfig,
        half_open: u64,
        syn_rate: u64,
        now_ns: u64,
    ) -> Option<AttackChange> {
        let over = |value: u64, threshold: u32| threshold != 0 && value >= threshold as u64;
        if !self.active {
            let trigger = if over(half_open, config.attack_enter_half_open) {
                AttackTrigger::HalfOpen
            } else if over(syn_rate, config.attack_enter_syn_rate) {
                AttackTrigger::SynRate
            } else {
                return None;
            };
            self.active = true;
            self.calm_since_ns = None;
            return Some(AttackChange::Entered(trigger));
        }
        let calm = half_open <= config.attack_leave_half_open as u64
            && syn_rate <= config.attack_leave_syn_rate as u64;
        if !calm {
            self.calm_since_ns = None;
            return None;
        }
        let since = *self.calm_since_ns.get_or_insert(now_ns);
        if now_ns.saturating_sub(since) >= config.attack_cooldown_secs as u64 * 1_000_000_000 {
            self.active = false;
            self.calm_since_ns = None;
            return Some(AttackChange::Left);
        }
        None
    }
}

/// Why a SYN was dropped; each has a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The source is on the block list.
    Blocked,
    /// The source sent SYNs faster than its token bucket allows.
    SynRate,
    GlobalHalfOpen,
    SourceHalfOpen,
    PrefixHalfOpen,
    PortHalfOpen,
    /// Attack mode: the source is not verified (verified-only policy).
    Unverified,
    /// Attack mode: an unknown source's first SYN (retransmit-challenge).
    Challenge,
    /// The flow table has no room for it (the half-open flows' share is taken).
    TableFull,
    /// Attack mode, syncookie policy: an ACK for no known flow whose cookie
    /// is not valid (a forged or stale ACK).
    BadCookie,
    /// Attack mode, syncookie policy: a SYN the program could not answer
    /// with a cookie (the kernel's cookie helper refused it).
    CookieUnanswered,
}

impl DropReason {
    /// The reason a limit on this counter gives.
    pub const fn for_count(kind: CountKind) -> DropReason {
        match kind {
            CountKind::Global => DropReason::GlobalHalfOpen,
            CountKind::Source => DropReason::SourceHalfOpen,
            CountKind::Prefix => DropReason::PrefixHalfOpen,
            CountKind::Port => DropReason::PortHalfOpen,
        }
    }

    /// The rule that drops for this reason. (A bad cookie and an unanswered
    /// SYN belong to the attack rule: in its monitor mode no cookie is sent.)
    pub const fn rule(self) -> Rule {
        match self {
            DropReason::Blocked => Rule::BlockList,
            DropReason::SynRate => Rule::SynRate,
            DropReason::GlobalHalfOpen
            | DropReason::SourceHalfOpen
            | DropReason::PrefixHalfOpen
            | DropReason::PortHalfOpen
            | DropReason::TableFull => Rule::HalfOpen,
            DropReason::Unverified
            | DropReason::Challenge
            | DropReason::BadCookie
            | DropReason::CookieUnanswered => Rule::Attack,
        }
    }

    /// Drops the source alone is to blame for: they count toward blocking it.
    pub const fn is_per_source(self) -> bool {
        matches!(self, DropReason::SynRate | DropReason::SourceHalfOpen)
    }
}

/// An event the programs send the controller through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// [`Event::SOURCE_OVER_LIMIT`]
    pub kind: u32,
    /// A [`crate::stats::Counter`] index: the drop counter involved.
    pub counter: u32,
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 7],
}

impl Event {
    /// A source's SYN was dropped for a per-source reason and it had no
    /// offence on record: sent once per source per controller tick.
    pub const SOURCE_OVER_LIMIT: u32 = 1;
    /// The fast path entered attack mode: half-open flows reached
    /// `attack_enter_half_open` (`counter` holds their number).
    pub const ATTACK_MODE_ON: u32 = 2;
    /// The fast path entered attack mode: a port's half-open flows reached
    /// its `ListenerLimit::enter_attack` (`counter` holds their number, the
    /// first two bytes of `addr` the port, in network order).
    pub const ATTACK_MODE_ON_BY_LISTENER: u32 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash with a fixed seed, for tests of what it spreads.
    const TEST_HASH: CountHash = CountHash {
        seed: 0x1234_5678,
        mask: 65_535,
        half_open_max: 0,
        _pad: 0,
    };

    fn flow_key(remote: [u8; 16], port: u16) -> FlowKey {
        FlowKey {
            local_addr: [0; 16],
            remote_addr: remote,
            local_port: port,
            remote_port: 40_000,
            family: 6,
            _pad: [0; 3],
        }
    }

    /// The Bloom filter's false positives, measured: 65,536 sources
    /// marked in one generation, 1,000,000 others checked.
    #[test]
    fn verified_marks_spread_and_rarely_cover_an_unverified_source() {
        let hash = TEST_HASH;
        let addr = |i: u32| {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
            addr
        };
        let generation = VerifiedGeneration::default();
        let mut bits = vec![0u64; VERIFIED_BITS_ENTRIES as usize];
        for i in 0..65_536 {
            for mark in 0..VERIFIED_MARKS {
                let (slot, bit) = hash.verified_mark(4, &addr(i), mark);
                assert!(slot % 2 == 0 && slot < VERIFIED_BITS_ENTRIES);
                assert!(
                    bit.count_ones() == 1 || (mark == 0 && bit.count_ones() == 2),
                    "two bits in the first mark (one if they meet), one in the others"
                );
                assert_eq!(
                    hash.verified_mark(4, &addr(i), mark),
                    (slot, bit),
                    "the same each time"
                );
                assert_eq!(
                    slot < 2 * VERIFIED_FIRST_WORDS,
                    mark == 0,
                    "the first mark in the small region, the others in the large one"
                );
                bits[generation.index(slot, false) as usize] |= bit;
            }
        }
        let marked = |i: u32, other: bool| {
            (0..VERIFIED_MARKS).all(|mark| {
                let (slot, bit) = hash.verified_mark(4, &addr(i), mark);
                bits[generation.index(slot, other) as usize] & bit == bit
            })
        };
        assert!(
            (0..65_536).all(|i| marked(i, false)),
            "every verified source is found"
        );
        assert!(
            (0..65_536).all(|i| !marked(i, true)),
            "in its own generation only"
        );
        let false_positives = (65_536..1_065_536).filter(|&i| marked(i, false)).count();
        // (1 - e^(-2 * 65,536 / 2^17))^2 (1 - e^(-3 * 65,536 / 2^23))^3: about 5 in a million.
        assert!(
            false_positives < 15,
            "{false_positives} of 1,000,000 pass as verified"
        );
        let first: u32 = bits[..2 * VERIFIED_FIRST_WORDS as usize]
            .iter()
            .map(|w| w.count_ones())
            .sum();
        assert!(
            first > 80_000,
            "the first marks spread over their region: {first} bits set"
        );
    }

    #[test]
    fn the_generations_turn_after_the_ttl_and_index_their_words() {
        let generation = VerifiedGeneration {
            current: 1,
            _pad: 0,
            since_ns: 5_000_000_000,
        };
        assert!(!generation.due(6_000_000_000, 2));
        assert!(generation.due(7_000_000_000, 2));
        assert!(!VerifiedGeneration::default().due(u64::MAX, 0), "not started");
        assert_eq!(generation.index(6, false), 7);
        assert_eq!(generation.index(6, true), 6);
    }

    #[test]
    fn a_listener_has_one_slot_and_a_tag_that_tells_it_from_others() {
        let hash = TEST_HASH;
        let mut slots = std::collections::HashSet::new();
        let mut listeners = std::collections::HashSet::new();
        for port in 0..2_000u16 {
            let key = flow_key([7; 16], port);
            let (slot, tag) = hash.listener_slot(&key);
            assert!(slot < LISTENER_SETS && tag != 0);
            let mut other_peer = key;
            other_peer.remote_addr = [9; 16];
            other_peer.remote_port = 1;
            assert_eq!(
                hash.listener_slot(&other_peer),
                (slot, tag),
                "the peer plays no part"
            );
            slots.insert(slot);
            listeners.insert((slot, tag));
        }
        assert!(slots.len() > 800, "spread: {} sets", slots.len());
        assert_eq!(listeners.len(), 2_000, "slot and tag tell listeners apart");
    }

    #[test]
    fn a_listener_set_holds_four_listeners_and_replaces_the_longest_refreshed() {
        let second = 1_000_000_000;
        let mut set = ListenerSet::default();
        for tag in 1..=4u32 {
            assert!(
                set.refresh_due(tag | 1 << 31, u64::from(tag) * second),
                "listener {tag}: first SYN"
            );
        }
        for tag in 1..=4u32 {
            assert!(
                !set.refresh_due(tag | 1 << 31, 5 * second),
                "listener {tag} kept its way: not due again"
            );
        }
        assert!(set.refresh_due(5 | 1 << 31, 6 * second), "a fifth listener");
        assert!(
            set.refresh_due(1 | 1 << 31, 7 * second),
            "it took the way of the first, refreshed longest ago"
        );
        assert!(!set.refresh_due(3 | 1 << 31, 7 * second), "the others stay");
        assert!(
            set.refresh_due(3 | 1 << 31, 3 * second + COOKIE_REFRESH_NS),
            "due after COOKIE_REFRESH_NS"
        );
    }

    #[test]
    fn count_slots_stay_in_their_region_of_the_array() {
        for half_open in [1, 65_536, 100_000, 4_000_000] {
            let slots = CountHash::slots_for(half_open);
            assert!(slots.is_power_of_two() && slots >= 2 * half_open.min(1 << 30));
            let hash = CountHash {
                seed: 0x1234_5678,
                mask: slots - 1,
                ..CountHash::default()
            };
            let entries = CountHash::entries(slots);
            for i in 0u32..2_000 {
                let mut remote = [0u8; 16];
                remote[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
                let key = flow_key(remote, i as u16);
                let source = hash.slot(&key, 64, CountKind::Source);
                let prefix = hash.slot(&key, 64, CountKind::Prefix);
                assert!((COUNT_HASHED_BASE..COUNT_HASHED_BASE + slots).contains(&source));
                assert!((COUNT_HASHED_BASE + slots..entries).contains(&prefix));
                assert_eq!(hash.slot(&key, 64, CountKind::Port), COUNT_PORT_BASE + i);
                assert_eq!(hash.slot(&key, 64, CountKind::Global), COUNT_GLOBAL_SLOT);
            }
        }
    }

    #[test]
    fn addresses_in_one_prefix_share_its_slot_and_the_seed_moves_slots() {
        let hash = CountHash {
            seed: 7,
            mask: CountHash::slots_for(65_536) - 1,
            ..CountHash::default()
        };
        let mut a = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let first = hash.slot(&flow_key(a, 80), 64, CountKind::Prefix);
        a[15] = 2;
        assert_eq!(hash.slot(&flow_key(a, 80), 64, CountKind::Prefix), first);
        let reseeded = CountHash { seed: 8, ..hash };
        let moved = (0u8..64)
            .filter(|&i| {
                a[15] = i;
                let key = flow_key(a, 80);
                hash.slot(&key, 128, CountKind::Source) != reseeded.slot(&key, 128, CountKind::Source)
            })
            .count();
        assert!(moved > 60, "only {moved} of 64 sources moved with the seed");
    }

    #[test]
    fn mask_keeps_exactly_the_prefix() {
        let all = [0xffu8; 16];
        for len in 0..=128u8 {
            let mut addr = all;
            mask(&mut addr, len);
            let ones: u32 = addr.iter().map(|b| b.count_ones()).sum();
            assert_eq!(ones, len as u32, "prefix {len}");
            assert_eq!(
                u128::from_be_bytes(addr).leading_ones(),
                len as u32,
                "prefix {len}"
            );
        }
    }

    #[test]
    fn token_bucket_refills_at_its_rate_and_caps_at_its_burst() {
        let mut bucket = TokenBucket::full(3, 0);
        assert!((0..3).all(|_| bucket.take(10, 3, 0)));
        assert!(!bucket.take(10, 3, 0), "empty after the burst");
        assert!(
            !bucket.take(10, 3, 50_000_000),
            "half a token after 50 ms at 10/s"
        );
        assert!(bucket.take(10, 3, 100_000_000), "one token after 100 ms");
        assert!((0..3).all(|_| bucket.take(10, 3, 60_000_000_000)));
        assert!(
            !bucket.take(10, 3, 60_000_000_000),
            "capped at the burst after a minute"
        );
    }

    #[test]
    fn challenge_passes_only_a_retransmission_within_the_window() {
        let first = Challenge {
            first_ns: 1_000_000_000,
            seq: 42,
            tag: 7,
        };
        assert!(
            !challenge_passes(&Challenge::default(), 0, 0, 2_000_000_000, 5_000),
            "an empty slot"
        );
        assert!(challenge_passes(&first, 7, 42, 2_000_000_000, 5_000));
        assert!(
            !challenge_passes(&first, 8, 42, 2_000_000_000, 5_000),
            "another flow in the slot"
        );
        assert!(
            !challenge_passes(&first, 7, 43, 2_000_000_000, 5_000),
            "another sequence number"
        );
        assert!(!challenge_passes(&first, 7, 42, 7_000_000_001, 5_000), "too late");
    }

    #[test]
    fn challenge_slots_spread_flows_and_tell_them_apart() {
        let mut key = FlowKey {
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: 80,
            remote_port: 0,
            family: 4,
            _pad: [0; 3],
        };
        let mut slots = std::collections::HashSet::new();
        let mut tags = std::collections::HashSet::new();
        for port in 0..4096u16 {
            key.remote_port = port;
            let (slot, tag) = challenge_slot(&key);
            assert!(slot < CHALLENGE_SLOTS);
            slots.insert(slot);
            tags.insert(tag);
        }
        assert!(
            slots.len() > 4000,
            "few collisions among 4096 flows: {}",
            slots.len()
        );
        assert!(tags.len() > 4090);
    }

    fn config() -> GuardConfig {
        GuardConfig {
            attack_enter_half_open: 100,
            attack_leave_half_open: 20,
            attack_enter_syn_rate: 1000,
            attack_leave_syn_rate: 100,
            attack_cooldown_secs: 5,
            ..GuardConfig::default()
        }
    }

    #[test]
    fn attack_mode_enters_on_either_signal_and_leaves_after_a_calm_cooldown() {
        let c = config();
        let s = 1_000_000_000;
        let mut d = AttackDetector::default();
        assert_eq!(d.observe(&c, 99, 999, 0), None);
        assert_eq!(
            d.observe(&c, 100, 0, s),
            Some(AttackChange::Entered(AttackTrigger::HalfOpen))
        );
        assert_eq!(d.observe(&c, 20, 100, 2 * s), None, "calm starts");
        assert_eq!(
            d.observe(&c, 21, 100, 4 * s),
            None,
            "not calm: the cooldown restarts"
        );
        assert_eq!(d.observe(&c, 20, 100, 5 * s), None);
        assert_eq!(d.observe(&c, 0, 0, 9 * s), None, "4 s calm");
        assert_eq!(d.observe(&c, 0, 0, 10 * s), Some(AttackChange::Left));
        let mut r = AttackDetector::default();
        assert_eq!(
            r.observe(&c, 0, 1000, s),
            Some(AttackChange::Entered(AttackTrigger::SynRate))
        );
    }

    #[test]
    fn kernel_overflows_enter_attack_mode_and_hold_off_its_end() {
        let c = config();
        let s = 1_000_000_000;
        let mut d = AttackDetector::default();
        assert_eq!(
            d.kernel_overflowed(),
            Some(AttackChange::Entered(AttackTrigger::Kernel))
        );
        assert_eq!(d.observe(&c, 0, 0, 0), None, "calm starts");
        assert_eq!(d.kernel_overflowed(), None, "already on");
        assert_eq!(
            d.observe(&c, 0, 0, 4 * s),
            None,
            "the overflow restarted the cooldown"
        );
        assert_eq!(d.observe(&c, 0, 0, 9 * s), Some(AttackChange::Left));
    }

    #[test]
    fn hysteresis_keeps_attack_mode_between_the_thresholds() {
        let c = config();
        let mut d = AttackDetector::default();
        d.observe(&c, 100, 0, 0);
        for t in 1..100u64 {
            assert_eq!(
                d.observe(&c, 50, 500, t * 1_000_000_000),
                None,
                "between leave and enter"
            );
        }
        assert!(d.active);
    }
}
