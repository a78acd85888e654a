//! The control plane: typed access to an instance's pinned maps, so the CLI
//! and the daemon change the same state the fast path reads, and nothing
//! else. Every write goes through here.

use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{
    Array, HashMap, Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use serde_json::{Value, json};
use tcp_guard_common::{
    maps,
    policy::{
        ALLOW_BY_CONFIG, AttackState, BlockEntry, COUNT_GLOBAL_SLOT, GuardConfig, ListenerLimit, LpmAddr,
        SourceKey, VERIFIED_BITS_ENTRIES, VerifiedGeneration,
    },
};

use crate::{
    attach::Mode,
    flows::monotonic_now_ns,
    instance,
    settings::{Lists, PortPolicy},
};

/// What the daemon records about itself, for `reload`, `status` and the
/// next daemon (which adopts the state only from the same layout).
pub const INFO: &str = "INFO";
const INFO_PID: u32 = 0;
const INFO_STARTED_NS: u32 = 1;
const INFO_RELOADS: u32 = 2;
const INFO_RELOADS_REFUSED: u32 = 3;
const INFO_LAYOUT: u32 = 4;
const INFO_MODE: u32 = 5;
const INFO_EGRESS: u32 = 6;
const INFO_STARTED_UNIX: u32 = 7;
const INFO_TICK_ERRORS: u32 = 8;
const INFO_IFINDEX: u32 = 9;
const INFO_LEN: u32 = 10;

/// What `INFO` says about the daemon of an instance.
#[derive(Clone, Copy, Debug)]
pub struct DaemonInfo {
    pub pid: u32,
    /// XDP mode: `Mode::Native` or `Mode::Skb`.
    pub mode: Mode,
    pub egress: bool,
    /// Seconds since the Unix epoch.
    pub started_unix: u64,
    pub reloads: u64,
    pub reloads_refused: u64,
    /// Control-loop rounds that failed (logged; the daemon carries on).
    pub tick_errors: u64,
    /// The interface's index when the daemon attached: an interface created
    /// again under the same name has another, and the pinned links are stale.
    pub ifindex: u32,
}

/// An instance's pinned maps, by interface.
pub struct Instance {
    dir: PathBuf,
}

fn open(dir: &Path, name: &str) -> Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path).with_context(|| format!("cannot open pinned map {}", path.display()))
}

/// Ascending ports as inclusive ranges.
fn ranges(ports: impl Iterator<Item = u16>) -> Vec<(u16, u16)> {
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for port in ports {
        match ranges.last_mut() {
            Some((_, last)) if u32::from(*last) + 1 == u32::from(port) => *last = port,
            _ => ranges.push((port, port)),
        }
    }
    ranges
}

/// A pinned array of the instance whose directory is `dir`.
pub(crate) fn array<V: aya::Pod>(dir: &Path, name: &str) -> Result<Array<MapData, V>> {
    Array::try_from(Map::Array(open(dir, name)?)).with_context(|| format!("{name} is not an array"))
}

fn trie<V: aya::Pod>(dir: &Path, name: &str) -> Result<LpmTrie<MapData, LpmAddr, V>> {
    LpmTrie::try_from(Map::LpmTrie(open(dir, name)?)).with_context(|| format!("{name} is not an LPM trie"))
}

/// Of `blocks`, the index of the one that expires first (the oldest of
/// blocks that were given the same time to live); never a block without expiry.
pub fn oldest_block(blocks: &[(Cidr, BlockEntry)]) -> Option<usize> {
    blocks
        .iter()
        .enumerate()
        .filter(|(_, (_, entry))| entry.expires_ns != 0)
        .min_by_key(|(_, (_, entry))| entry.expires_ns)
        .map(|(index, _)| index)
}

impl Instance {
    pub fn new(dir: PathBuf) -> Self {
        Instance { dir }
    }

    /// The running instance on `iface` (or the only one running).
    pub fn resolve(iface: Option<&str>) -> Result<(String, Instance)> {
        let iface = instance::resolve(iface)?;
        let dir = instance::dir(&iface);
        Ok((iface, Instance { dir }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> Result<GuardConfig> {
        array::<GuardConfig>(&self.dir, maps::CONFIG)?
            .get(&0, 0)
            .context("cannot read CONFIG")
    }

    pub fn set_config(&self, config: &GuardConfig) -> Result<()> {
        array::<GuardConfig>(&self.dir, maps::CONFIG)?
            .set(0, *config, 0)
            .context("cannot write CONFIG")
    }

    /// Puts the `[[ports]]` policies in force: `configs[i]` is `ports[i]`'s
    /// (entry `i + 1`), and each port whose policy changes from `was` to
    /// `index` follows its new one. The ports that change follow the global
    /// settings while the configurations are rewritten: no port follows
    /// another policy's, even for a moment.
    pub fn set_port_policies(&self, configs: &[GuardConfig], was: &[u8], index: &[u8]) -> Result<()> {
        let mut map = array::<u8>(&self.dir, maps::PORT_POLICY)?;
        let mut set = |port: usize, policy: u8| {
            map.set(port as u32, policy, 0)
                .with_context(|| format!("cannot write PORT_POLICY[{port}]"))
        };
        for (port, (old, new)) in was.iter().zip(index).enumerate() {
            if old != new && *old != 0 {
                set(port, 0)?;
            }
        }
        self.set_port_configs(configs, &[])?;
        for (port, (old, new)) in was.iter().zip(index).enumerate() {
            if old != new && *new != 0 {
                set(port, *new)?;
            }
        }
        Ok(())
    }

    /// After `limits set` changed the global settings to `new`: each of
    /// `policies` (as [`Instance::port_policies`] read them against the old
    /// global settings) follows `new` in all but its own settings, as the
    /// daemon keeps it (this also holds while its control loop fails). A
    /// policy's setting equal to the old global value reads as not its own
    /// until the daemon's next round restores it.
    pub fn follow_global(&self, policies: &[PortPolicy], new: &GuardConfig) -> Result<()> {
        let index = array::<u8>(&self.dir, maps::PORT_POLICY)?;
        let mut configs = array::<GuardConfig>(&self.dir, maps::PORT_CONFIGS)?;
        for policy in policies {
            // Every port of a policy follows the same entry: its first says which.
            let Some(&(port, _)) = policy.ports.first() else {
                continue;
            };
            let n = index
                .get(&u32::from(port), 0)
                .with_context(|| format!("cannot read PORT_POLICY[{port}]"))?;
            if n == 0 {
                continue;
            }
            configs
                .set(u32::from(n), policy.apply(new), 0)
                .with_context(|| format!("cannot write PORT_CONFIGS[{n}]"))?;
        }
        Ok(())
    }

    /// Writes the policies' configurations that differ from `written`.
    pub fn set_port_configs(&self, configs: &[GuardConfig], written: &[GuardConfig]) -> Result<()> {
        let mut map = array::<GuardConfig>(&self.dir, maps::PORT_CONFIGS)?;
        for (i, config) in configs.iter().enumerate() {
            if written.get(i) != Some(config) {
                map.set(i as u32 + 1, *config, 0)
                    .with_context(|| format!("cannot write PORT_CONFIGS[{}]", i + 1))?;
            }
        }
        Ok(())
    }

    /// Which policy each port follows (0: none), as `PORT_POLICY` holds it.
    pub fn port_index(&self) -> Result<Vec<u8>> {
        let map = array::<u8>(&self.dir, maps::PORT_POLICY)?;
        (0..=u16::MAX as u32)
            .map(|port| {
                map.get(&port, 0)
                    .with_context(|| format!("cannot read PORT_POLICY[{port}]"))
            })
            .collect()
    }

    /// The `[[ports]]` policies in force: from the maps, each policy's
    /// ports and the settings in which it differs from `global`.
    pub fn port_policies(&self, global: &GuardConfig) -> Result<Vec<PortPolicy>> {
        let index = self.port_index()?;
        let configs = array::<GuardConfig>(&self.dir, maps::PORT_CONFIGS)?;
        let mut policies = Vec::new();
        for n in 1..=index.iter().copied().max().unwrap_or(0) {
            let ports = ranges(
                index
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| **p == n)
                    .map(|(port, _)| port as u16),
            );
            if ports.is_empty() {
                continue;
            }
            let config = configs
                .get(&u32::from(n), 0)
                .with_context(|| format!("cannot read PORT_CONFIGS[{n}]"))?;
            policies.push(PortPolicy::in_force(ports, &config, global));
        }
        Ok(policies)
    }

    /// Tells the fast path the daemon is alive (see `CONTROLLER_STALE_NS`).
    pub fn beat(&self) -> Result<()> {
        array::<u64>(&self.dir, maps::HEARTBEAT)?
            .set(0, monotonic_now_ns(), 0)
            .context("cannot write HEARTBEAT")
    }

    /// What the fast path allows `port`, from its listeners.
    pub fn set_listener_limit(&self, port: u16, limit: ListenerLimit) -> Result<()> {
        array::<ListenerLimit>(&self.dir, maps::LISTENER_LIMITS)?
            .set(u32::from(port), limit, 0)
            .with_context(|| format!("cannot write LISTENER_LIMITS[{port}]"))
    }

    pub fn attack(&self) -> Result<AttackState> {
        array::<AttackState>(&self.dir, maps::ATTACK)?
            .get(&0, 0)
            .context("cannot read ATTACK")
    }

    pub fn set_attack(&self, state: &AttackState) -> Result<()> {
        array::<AttackState>(&self.dir, maps::ATTACK)?
            .set(0, *state, 0)
            .context("cannot write ATTACK")
    }

    /// Sources with the most half-open flows now, most first.
    pub fn top_half_open_sources(&self, n: usize) -> Result<Vec<(IpAddr, u64)>> {
        crate::flows::FlowTables::open(&self.dir)?.half_open_sources(n)
    }

    /// Turns the generations of verified sources once the current one has
    /// marked sources for `ttl_secs` (see `policy::VerifiedGeneration`):
    /// clears the other, whose sources were verified at least that long ago,
    /// and makes it current. The first call only starts the clock. Returns
    /// whether they turned.
    pub fn turn_verified_generation(&self, now_ns: u64, ttl_secs: u32) -> Result<bool> {
        let mut generations = array::<VerifiedGeneration>(&self.dir, maps::VERIFIED_GEN)?;
        let generation = generations.get(&0, 0).context("cannot read VERIFIED_GEN")?;
        let next = if generation.since_ns == 0 {
            VerifiedGeneration {
                since_ns: now_ns,
                ..generation
            }
        } else if generation.due(now_ns, ttl_secs) {
            let next = generation.current ^ 1;
            self.clear_verified_generation(next)?;
            VerifiedGeneration {
                current: next,
                _pad: 0,
                since_ns: now_ns,
            }
        } else {
            return Ok(false);
        };
        generations.set(0, next, 0).context("cannot write VERIFIED_GEN")?;
        Ok(next.current != generation.current)
    }

    /// Zeroes one generation of `VERIFIED_BITS` in place, through a shared
    /// mapping of the array (its words are every other one: no map update
    /// per word). The programs write only the current generation, never
    /// this one.
    fn clear_verified_generation(&self, generation: u32) -> Result<()> {
        let path = self.dir.join(maps::VERIFIED_BITS);
        let map = open(&self.dir, maps::VERIFIED_BITS)?;
        let words = map
            .info()
            .with_context(|| format!("cannot query {}", path.display()))?
            .max_entries();
        if words != VERIFIED_BITS_ENTRIES {
            bail!(
                "{} holds {words} words, not {VERIFIED_BITS_ENTRIES}: run `tcp-guard detach` for this interface first",
                path.display()
            );
        }
        let len = words as usize * size_of::<u64>();
        // SAFETY: maps the array's own pages (BPF_F_MMAPABLE, a whole number
        // of pages), shared with the programs; only this function uses it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot map {}", path.display()));
        }
        let bits = base.cast::<u64>();
        for word in (generation as usize % 2..words as usize).step_by(2) {
            // SAFETY: an aligned word inside the mapping. Volatile: memory the
            // programs read meanwhile (never this generation's words).
            unsafe { bits.add(word).write_volatile(0) };
        }
        // SAFETY: the mapping made above, no longer used.
        if unsafe { libc::munmap(base, len) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot unmap {}", path.display()));
        }
        Ok(())
    }

    /// Sampled SYNs per source so far (one SYN in
    /// [`tcp_guard_common::policy::SYN_SAMPLE_EVERY`] is counted); rates
    /// come from the difference of two reads.
    pub fn sampled_syns(&self) -> Result<StdHashMap<IpAddr, u64>> {
        let syns: HashMap<MapData, SourceKey, u64> =
            HashMap::try_from(Map::LruHashMap(open(&self.dir, maps::SYN_SOURCES)?))
                .context("SYN_SOURCES is not an LRU hash map")?;
        let mut sources = StdHashMap::new();
        for entry in syns.iter() {
            match entry {
                Ok((key, count)) => {
                    sources.insert(addr_of(key.family, key.addr), count);
                }
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("cannot read SYN_SOURCES"),
            }
        }
        Ok(sources)
    }

    /// Half-open flows counted against the global limit now.
    pub fn half_open(&self) -> Result<u64> {
        array::<u64>(&self.dir, maps::COUNTS)?
            .get(&COUNT_GLOBAL_SLOT, 0)
            .context("cannot read COUNTS")
    }

    /// Creates and pins the INFO map of a starting daemon, replacing any a
    /// previous one left.
    pub fn create_info(&self, mode: Mode, egress: bool, ifindex: u32) -> Result<()> {
        let mut info: Array<MapData, u64> =
            Array::create(INFO_LEN, 0).context("cannot create the INFO map")?;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (index, value) in [
            (INFO_PID, std::process::id() as u64),
            (INFO_STARTED_NS, monotonic_now_ns()),
            (INFO_LAYOUT, maps::LAYOUT_VERSION),
            (INFO_MODE, if mode == Mode::Skb { 2 } else { 1 }),
            (INFO_EGRESS, u64::from(egress)),
            (INFO_STARTED_UNIX, unix),
            (INFO_IFINDEX, u64::from(ifindex)),
        ] {
            info.set(index, value, 0)?;
        }
        let path = self.dir.join(INFO);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot replace {}", path.display()));
            }
            _ => {}
        }
        info.pin(&path)
            .with_context(|| format!("cannot pin INFO at {}", path.display()))
    }

    /// Records the interface's new index (it was created again).
    pub fn set_info_ifindex(&self, ifindex: u32) -> Result<()> {
        array::<u64>(&self.dir, INFO)?
            .set(INFO_IFINDEX, u64::from(ifindex), 0)
            .context("cannot write INFO")
    }

    /// What the daemon recorded about itself.
    pub fn info(&self) -> Result<DaemonInfo> {
        let info = array::<u64>(&self.dir, INFO)?;
        let get = |index| info.get(&index, 0).context("cannot read INFO");
        Ok(DaemonInfo {
            pid: get(INFO_PID)? as u32,
            mode: if get(INFO_MODE)? == 2 {
                Mode::Skb
            } else {
                Mode::Native
            },
            egress: get(INFO_EGRESS)? != 0,
            started_unix: get(INFO_STARTED_UNIX)?,
            reloads: get(INFO_RELOADS)?,
            reloads_refused: get(INFO_RELOADS_REFUSED)?,
            tick_errors: get(INFO_TICK_ERRORS)?,
            ifindex: get(INFO_IFINDEX)? as u32,
        })
    }

    /// Refuses pinned state this version cannot adopt.
    pub fn check_layout(&self) -> Result<()> {
        let layout = array::<u64>(&self.dir, INFO)
            .and_then(|info| info.get(&INFO_LAYOUT, 0).context("cannot read INFO"))
            .unwrap_or(0);
        if layout != maps::LAYOUT_VERSION {
            bail!(
                "the state pinned in {} is from an incompatible tcp-guard (layout {layout}, this one uses {}); \
                 run `tcp-guard detach` for this interface first (its flows and blocks are dropped)",
                self.dir.display(),
                maps::LAYOUT_VERSION
            );
        }
        Ok(())
    }

    /// Counts a reload, accepted or refused, so `tcp-guard reload` can report it.
    pub fn note_reload(&self, accepted: bool) {
        let index = if accepted {
            INFO_RELOADS
        } else {
            INFO_RELOADS_REFUSED
        };
        self.count_in_info(index, "the reload");
    }

    /// Counts a failed control-loop round, for `status`.
    pub fn note_tick_error(&self) {
        self.count_in_info(INFO_TICK_ERRORS, "the failed round");
    }

    fn count_in_info(&self, index: u32, what: &str) {
        let result = array::<u64>(&self.dir, INFO).and_then(|mut info| {
            let count = info.get(&index, 0)?;
            Ok(info.set(index, count + 1, 0)?)
        });
        if let Err(e) = result {
            log::error!("cannot record {what} in INFO: {e:#}");
        }
    }

    pub fn block(&self, cidr: &Cidr, ttl: Option<Duration>, reason: u32) -> Result<()> {
        let entry = BlockEntry {
            expires_ns: ttl.map_or(0, |t| monotonic_now_ns() + t.as_nanos() as u64),
            reason,
            _pad: 0,
        };
        self.add_to_list(maps::BLOCK, maps::LIST_BLOCK, cidr, entry)
    }

    /// `by`: `ALLOW_BY_OPERATOR` or `ALLOW_BY_CONFIG`.
    pub fn allow(&self, cidr: &Cidr, by: u8) -> Result<()> {
        self.add_to_list(maps::ALLOW, maps::LIST_ALLOW, cidr, by)
    }

    /// Adds `cidr` to list `name` (its mark: `index`), marked in use before
    /// and after: a writer that found the list empty may have unmarked it
    /// between the first mark and the insert (see `settle_list`).
    fn add_to_list<V: aya::Pod>(&self, name: &str, index: u32, cidr: &Cidr, value: V) -> Result<()> {
        self.mark_in_use(index)?;
        trie::<V>(&self.dir, name)?
            .insert(&cidr.key(), value, 0)
            .with_context(|| format!("cannot add {cidr} to the {} list (is it full?)", list_name(name)))?;
        self.mark_in_use(index)
    }

    /// Marks list `index` as one the fast path must look in.
    fn mark_in_use(&self, index: u32) -> Result<()> {
        array::<u32>(&self.dir, maps::LISTS_IN_USE)?
            .set(index, 1, 0)
            .context("cannot write LISTS_IN_USE")
    }

    /// Unmarks list `index` (`maps::LIST_BLOCK`, `maps::LIST_ALLOW`) if it
    /// is empty, so the fast path skips it, and marks it if it is not.
    /// Against a writer adding to it meanwhile: this looks again after
    /// unmarking (and marks again if it cannot tell), and the writer marks
    /// again after adding, so whichever comes last leaves it marked. (An
    /// entry added in that instant may pass a packet or two unenforced, as
    /// it would have a moment earlier.)
    fn settle_list(&self, index: u32) -> Result<()> {
        let mut marks = array::<u32>(&self.dir, maps::LISTS_IN_USE)?;
        let marked = marks.get(&index, 0).context("cannot read LISTS_IN_USE")? != 0;
        let mut mark = |in_use: bool| {
            marks
                .set(index, u32::from(in_use), 0)
                .context("cannot write LISTS_IN_USE")
        };
        let empty = self.list_is_empty(index)?;
        if marked != empty {
            return Ok(());
        }
        mark(!empty)?;
        if empty && !self.list_is_empty(index).unwrap_or(false) {
            mark(true)?;
        }
        Ok(())
    }

    /// [`Self::settle_list`] for both lists. The daemon runs it at start and
    /// every second, which also marks a list whose writer died between its
    /// insert and its second mark.
    pub fn settle_lists(&self) -> Result<()> {
        self.settle_list(maps::LIST_BLOCK)?;
        self.settle_list(maps::LIST_ALLOW)
    }

    /// Whether list `index` has no entry.
    fn list_is_empty(&self, index: u32) -> Result<bool> {
        fn empty<V: aya::Pod>(dir: &Path, name: &str) -> Result<bool> {
            let first = trie::<V>(dir, name)?
                .keys()
                .next()
                .transpose()
                .with_context(|| format!("cannot read {name}"))?;
            Ok(first.is_none())
        }
        if index == maps::LIST_BLOCK {
            empty::<BlockEntry>(&self.dir, maps::BLOCK)
        } else {
            empty::<u8>(&self.dir, maps::ALLOW)
        }
    }

    /// Removes `cidr` from list `name` (`maps::BLOCK` or `maps::ALLOW`).
    pub fn unlist(&self, name: &str, cidr: &Cidr) -> Result<()> {
        let (removed, index) = if name == maps::BLOCK {
            (
                trie::<BlockEntry>(&self.dir, name)?.remove(&cidr.key()),
                maps::LIST_BLOCK,
            )
        } else {
            (trie::<u8>(&self.dir, name)?.remove(&cidr.key()), maps::LIST_ALLOW)
        };
        match removed {
            // Removed either way: a list left marked only costs a lookup,
            // and the daemon settles it within a second.
            Ok(()) => {
                if let Err(e) = self.settle_list(index) {
                    log::warn!("removed {cidr}, but could not unmark the emptied list: {e:#}");
                }
                Ok(())
            }
            Err(aya::maps::MapError::KeyNotFound) => bail!("{cidr} is not on the {} list", list_name(name)),
            Err(e) => Err(e).with_context(|| format!("cannot remove {cidr}")),
        }
    }

    pub fn blocks(&self) -> Result<Vec<(Cidr, BlockEntry)>> {
        let trie = trie::<BlockEntry>(&self.dir, maps::BLOCK)?;
        let mut entries = Vec::new();
        for entry in trie.iter() {
            let (key, value) = entry.context("cannot read the block list")?;
            entries.push((Cidr::from_key(&key), value));
        }
        entries.sort_by_key(|(c, _)| c.to_string());
        Ok(entries)
    }

    /// The allow list, each entry with its origin.
    pub fn allows(&self) -> Result<Vec<(Cidr, Origin)>> {
        let mut entries = Vec::new();
        for entry in trie::<u8>(&self.dir, maps::ALLOW)?.iter() {
            let (key, by) = entry.context("cannot read the allow list")?;
            entries.push((Cidr::from_key(&key), Origin::of_allow(by)));
        }
        entries.sort_by_key(|(c, _)| c.to_string());
        Ok(entries)
    }

    /// The entries that came from the config file's `[lists]`.
    pub fn config_lists(&self) -> Result<Lists> {
        Ok(Lists {
            allow: self
                .allows()?
                .into_iter()
                .filter(|(_, origin)| *origin == Origin::Config)
                .map(|(cidr, _)| cidr)
                .collect(),
            block: self
                .blocks()?
                .into_iter()
                .filter(|(_, entry)| Origin::of_block(entry) == Origin::Config)
                .map(|(cidr, _)| cidr)
                .collect(),
        })
    }
}

/// Where a list entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The config file's `[lists]`: a reload that no longer lists it removes it.
    Config,
    /// `tcp-guard block add` or `allow add`.
    Operator,
    /// The daemon, for a source over its limits.
    Automatic,
}

impl Origin {
    pub fn of_block(entry: &BlockEntry) -> Origin {
        match entry.reason {
            BlockEntry::AUTOMATIC => Origin::Automatic,
            BlockEntry::CONFIG => Origin::Config,
            _ => Origin::Operator,
        }
    }

    pub fn of_allow(by: u8) -> Origin {
        if by == ALLOW_BY_CONFIG {
            Origin::Config
        } else {
            Origin::Operator
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Operator => "operator",
            Origin::Automatic => "automatic",
        }
    }
}

/// An address as the maps hold it (IPv4 in the first 4 bytes).
pub fn addr_of(family: u8, addr: [u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(addr)
    }
}

fn list_name(map: &str) -> &'static str {
    if map == maps::BLOCK { "block" } else { "allow" }
}

/// A network: address and prefix length, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// `198.19.0.0/16`, `2001:2::/48`, or a bare address (a single host).
    pub fn parse(text: &str) -> Result<Cidr> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| anyhow!("{text:?} is not an address or CIDR (e.g. 198.19.0.0/16, 2001:2::/48)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| anyhow!("{text:?}: prefix length must be from 0 to {max}"))?,
        };
        let masked = Cidr { addr, prefix_len }.masked();
        if masked.addr != addr {
            bail!("{text:?} has host bits set; did you mean {masked}?");
        }
        Ok(masked)
    }

    fn masked(self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a) & u32::MAX.checked_shl(32 - self.prefix_len as u32).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(bits))
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a) & u128::MAX.checked_shl(128 - self.prefix_len as u32).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        };
        Cidr { addr, ..self }
    }

    /// A single host.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    /// The key in the kernel's tries (IPv4 mapped into IPv6).
    pub fn key(&self) -> Key<LpmAddr> {
        match self.addr {
            IpAddr::V4(a) => {
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&a.octets());
                Key::new(self.prefix_len as u32 + 96, LpmAddr::new(4, addr))
            }
            IpAddr::V6(a) => Key::new(self.prefix_len as u32, LpmAddr::new(6, a.octets())),
        }
    }

    fn from_key(key: &Key<LpmAddr>) -> Cidr {
        let data = key.data().0;
        let mapped = Ipv6Addr::from(data);
        match mapped.to_ipv4_mapped() {
            Some(v4) if key.prefix_len() >= 96 => Cidr {
                addr: IpAddr::V4(v4),
                prefix_len: (key.prefix_len() - 96) as u8,
            },
            _ => Cidr {
                addr: IpAddr::V6(mapped),
                prefix_len: key.prefix_len() as u8,
            },
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Time left on a block entry, or None if permanent; `Some(ZERO)` if expired.
pub fn time_left(entry: &BlockEntry, now_ns: u64) -> Option<Duration> {
    (entry.expires_ns != 0).then(|| Duration::from_nanos(entry.expires_ns.saturating_sub(now_ns)))
}

pub fn blocks_to_json(iface: &str, blocks: &[(Cidr, BlockEntry)], now_ns: u64) -> Value {
    let entries: Vec<Value> = blocks
        .iter()
        .map(|(cidr, entry)| {
            json!({
                "cidr": cidr.to_string(),
                "expires_in_secs": time_left(entry, now_ns).map(|d| d.as_secs()),
                "origin": Origin::of_block(entry).as_str(),
            })
        })
        .collect();
    json!({ "iface": iface, "blocked": entries })
}

pub fn allows_to_json(iface: &str, allows: &[(Cidr, Origin)]) -> Value {
    let entries: Vec<Value> = allows
        .iter()
        .map(|(cidr, origin)| json!({ "cidr": cidr.to_string(), "origin": origin.as_str() }))
        .collect();
    json!({ "iface": iface, "allowed": entries })
}

pub fn allows_to_text(allows: &[(Cidr, Origin)]) -> String {
    let mut out = format!("{:<44} {}\n", "CIDR", "Origin");
    for (cidr, origin) in allows {
        out.push_str(&format!("{:<44} {}\n", cidr.to_string(), origin.as_str()));
    }
    out
}

pub fn blocks_to_text(blocks: &[(Cidr, BlockEntry)], now_ns: u64) -> String {
    let mut out = format!("{:<44} {:>14} {}\n", "CIDR", "Expires in", "Origin");
    for (cidr, entry) in blocks {
        let left = match time_left(entry, now_ns) {
            None => "never".to_string(),
            Some(d) => humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
        };
        out.push_str(&format!(
            "{:<44} {:>14} {}\n",
            cidr.to_string(),
            left,
            Origin::of_block(entry).as_str()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(expires_ns: u64) -> BlockEntry {
        BlockEntry {
            expires_ns,
            reason: BlockEntry::AUTOMATIC,
            _pad: 0,
        }
    }

    #[test]
    fn the_oldest_block_is_the_one_that_expires_first_and_never_a_lasting_one() {
        let host = |last: u8| Cidr::host(IpAddr::V4(Ipv4Addr::new(198, 19, 0, last)));
        let blocks = [
            (host(1), entry(30)),
            (host(2), entry(10)),
            (host(3), entry(0)),
            (host(4), entry(20)),
        ];
        assert_eq!(oldest_block(&blocks), Some(1));
        assert_eq!(oldest_block(&blocks[2..3]), None);
        assert_eq!(oldest_block(&[]), None);
    }
}
