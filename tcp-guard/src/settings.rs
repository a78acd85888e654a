//! Settings: every tunable has one key (`limits.per_source_half_open`), one
//! parser and one validator, used alike by the TOML config file, `run --set`
//! and `tcp-guard limits set`. Table sizes are fixed at start; everything
//! else lives in the pinned `CONFIG` map and can change while running.
//! The `[lists]` section is apart: lists of sources, read from the file
//! only, which the daemon puts on its allow and block lists. So is
//! `[access]`: who besides root may read the daemon's figures, which the
//! daemon applies to its monitoring socket, not to the fast path.

use std::{collections::HashSet, path::Path, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use tcp_guard_common::{
    config::TableSizes,
    flow::TcpState,
    policy::{GuardConfig, Policy},
};

use crate::control::Cidr;

/// Everything a running instance is configured with.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    pub live: GuardConfig,
    pub tables: TableSizes,
    pub lists: Lists,
    pub access: Access,
}

/// The config file's `[access]`: read at start and on every reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The group whose members may run `stats`, `flows` and `top` through
    /// the daemon's socket; empty: root only.
    pub monitor_group: String,
}

/// The group `access.monitor_group` names unless told otherwise.
pub const DEFAULT_MONITOR_GROUP: &str = "tcp-guard-monitor";

const MONITOR_GROUP: &str = "access.monitor_group";

impl Default for Access {
    fn default() -> Self {
        Access {
            monitor_group: DEFAULT_MONITOR_GROUP.to_string(),
        }
    }
}

/// The config file's `[lists]`: sources the daemon keeps on its allow and
/// block lists, marked as from the config, at start and on every reload.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Lists {
    pub allow: Vec<Cidr>,
    pub block: Vec<Cidr>,
}

/// The default config file, read if present when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/tcp-guard/config.toml";

/// Entries of the block list kept for the operator's own (the config's and
/// `tcp-guard block add`'s), and the most `lists.block` may hold.
pub const MAX_OPERATOR_BLOCKS: usize = 1_024;

/// Most automatic blocks: the block list holds 65,536 entries.
pub const MAX_AUTOMATIC_BLOCKS: u32 = 65_536 - MAX_OPERATOR_BLOCKS as u32;

/// Most entries of `lists.allow`: the allow list holds 16,384.
pub const MAX_CONFIG_ALLOWS: usize = 16_384;

const SECTIONS: &str = "sections are limits, attack, blocking, timeouts, tables, lists, access";

/// Largest flow table: 16 Mi flows, about 2.5 GiB of kernel memory.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

#[derive(Clone, Copy)]
enum Kind {
    /// A count in `min..=max`, with a unit for help text.
    Count {
        min: u32,
        max: u32,
        unit: &'static str,
    },
    /// A duration, stored in whole seconds (or milliseconds).
    Duration {
        millis: bool,
        min_ms: u64,
        max_ms: u64,
    },
    Policy,
    /// On or off: `true` or `false`.
    Switch,
    /// `auto` (stored as `GuardConfig::PER_PORT_AUTO`), or a count in `0..=max`.
    AutoOrCount {
        max: u32,
        unit: &'static str,
    },
}

/// One settable key.
struct Key {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    get: fn(&Settings) -> u64,
    set: fn(&mut Settings, u64),
    /// Takes effect only at start (`run`), not through `limits set`.
    restart: bool,
}

const COUNT: u32 = u32::MAX;
const DAY_MS: u64 = 24 * 3600 * 1000;

macro_rules! live_count {
    ($name:literal, $field:ident, $min:expr, $max:expr, $unit:literal, $help:literal) => {
        Key {
            name: $name,
            kind: Kind::Count {
                min: $min,
                max: $max,
                unit: $unit,
            },
            help: $help,
            get: |s| s.live.$field as u64,
            set: |s, v| s.live.$field = v as _,
            restart: false,
        }
    };
}

macro_rules! live_switch {
    ($name:literal, $field:ident, $help:literal) => {
        Key {
            name: $name,
            kind: Kind::Switch,
            help: $help,
            get: |s| s.live.$field as u64,
            set: |s, v| s.live.$field = v as u8,
            restart: false,
        }
    };
}

macro_rules! live_secs {
    ($name:literal, $field:ident, $min_ms:expr, $max_ms:expr, $help:literal) => {
        Key {
            name: $name,
            kind: Kind::Duration {
                millis: false,
                min_ms: $min_ms,
                max_ms: $max_ms,
            },
            help: $help,
            get: |s| s.live.$field as u64,
            set: |s, v| s.live.$field = v as u32,
            restart: false,
        }
    };
}

macro_rules! timeout {
    ($name:literal, $state:expr) => {
        Key {
            name: $name,
            kind: Kind::Duration {
                millis: false,
                min_ms: 1000,
                max_ms: 30 * DAY_MS,
            },
            help: "idle time after which a flow in this state is forgotten",
            get: |s| s.live.timeout_secs($state) as u64,
            set: |s, v| s.live.timeout_secs[$state as usize - 1] = v as u32,
            restart: false,
        }
    };
}

static KEYS: &[Key] = &[
    live_count!(
        "limits.global_half_open",
        global_half_open,
        0,
        COUNT,
        "flows",
        "half-open (SYN-RECV) flows, all sources together; 0: no limit"
    ),
    live_count!(
        "limits.per_source_half_open",
        per_source_half_open,
        0,
        COUNT,
        "flows",
        "half-open flows per source address; 0: no limit"
    ),
    live_count!(
        "limits.per_prefix_half_open",
        per_prefix_half_open,
        0,
        COUNT,
        "flows",
        "half-open flows per source prefix (prefix_len_v4 / prefix_len_v6); 0: no limit"
    ),
    Key {
        name: "limits.per_port_half_open",
        kind: Kind::AutoOrCount {
            max: GuardConfig::PER_PORT_AUTO - 1,
            unit: "flows",
        },
        help: "half-open flows per local port; auto: from the port's listeners as the kernel reports them (their backlog; with SYN cookies off also three quarters of tcp_max_syn_backlog): attack mode at a quarter of it and, with SYN cookies off, at most half of it admitted; a number: that many for every port; 0: no limit",
        get: |s| s.live.per_port_half_open as u64,
        set: |s, v| s.live.per_port_half_open = v as u32,
        restart: false,
    },
    live_count!(
        "limits.prefix_len_v4",
        prefix_len_v4,
        1,
        32,
        "bits",
        "IPv4 source prefix for per_prefix_half_open"
    ),
    live_count!(
        "limits.prefix_len_v6",
        prefix_len_v6,
        1,
        128,
        "bits",
        "IPv6 source prefix for per_prefix_half_open"
    ),
    live_count!(
        "limits.syn_rate",
        syn_rate,
        0,
        10_000_000,
        "SYN/s",
        "SYNs per second per source (token bucket, in the kernel); 0: no limit"
    ),
    live_count!(
        "limits.syn_burst",
        syn_burst,
        1,
        10_000_000,
        "SYNs",
        "SYNs a source may send at once (bucket depth)"
    ),
    Key {
        name: "attack.policy",
        kind: Kind::Policy,
        help: "what attack mode does: auto (syncookie where the kernel issues cookies, tcp_syncookies 1 or 2; retransmit-challenge where it does not), retransmit-challenge, syncookie, verified-only or pass",
        get: |s| s.live.policy as u64,
        set: |s, v| s.live.policy = v as u8,
        restart: false,
    },
    live_switch!(
        "attack.manage_sysctls",
        manage_sysctls,
        "while the syncookie policy answers SYNs, set net.ipv4.tcp_syncookies and tcp_timestamps to 2 in the interface's namespace (what the listener needs to accept the cookies with their options) and restore them after; false: never touch them (auto then picks pass where they are not so)"
    ),
    live_switch!(
        "attack.drop_unparsed_tcp",
        drop_unparsed_tcp,
        "in attack mode, drop TCP the fast path cannot see whole (IPv4 fragments of TCP, TCP behind IPv6 extension headers), which no limit, challenge or cookie can check; counted as drop_unparsed_tcp; false: pass it to the kernel"
    ),
    live_count!(
        "attack.enter_half_open",
        attack_enter_half_open,
        0,
        COUNT,
        "flows",
        "attack mode starts at this many half-open flows; 0: never on this signal"
    ),
    live_count!(
        "attack.enter_syn_rate",
        attack_enter_syn_rate,
        0,
        COUNT,
        "SYN/s",
        "attack mode starts at this many SYNs per second (all sources); 0: never on this signal"
    ),
    live_count!(
        "attack.leave_half_open",
        attack_leave_half_open,
        0,
        COUNT,
        "flows",
        "attack mode ends once half-open flows stay at or below this..."
    ),
    live_count!(
        "attack.leave_syn_rate",
        attack_leave_syn_rate,
        0,
        COUNT,
        "SYN/s",
        "...and SYNs per second at or below this..."
    ),
    live_secs!(
        "attack.cooldown",
        attack_cooldown_secs,
        0,
        DAY_MS,
        "...for this long"
    ),
    Key {
        name: "attack.challenge_window",
        kind: Kind::Duration {
            millis: true,
            min_ms: 100,
            max_ms: 600_000,
        },
        help: "how long after a challenged SYN (retransmit-challenge policy, or over its source's rate) its retransmission passes",
        get: |s| s.live.challenge_window_ms as u64,
        set: |s, v| s.live.challenge_window_ms = v as u32,
        restart: false,
    },
    live_secs!(
        "attack.verified_ttl",
        verified_ttl_secs,
        1000,
        30 * DAY_MS,
        "how long a source that completed a handshake stays verified"
    ),
    live_count!(
        "blocking.block_after_drops",
        block_after_drops,
        0,
        COUNT,
        "drops/s",
        "block a source whose SYNs are dropped this often in one second for per-source reasons; 0: never"
    ),
    live_count!(
        "blocking.max_automatic",
        block_max_automatic,
        1,
        MAX_AUTOMATIC_BLOCKS,
        "entries",
        "automatic blocks kept at most (a spoofed flood can put many sources over their limits); a new one evicts the oldest"
    ),
    live_secs!(
        "blocking.block_ttl",
        block_ttl_secs,
        1000,
        365 * DAY_MS,
        "how long an automatic block lasts"
    ),
    timeout!("timeouts.syn_sent", TcpState::SynSent),
    timeout!("timeouts.syn_rcvd", TcpState::SynRcvd),
    timeout!("timeouts.established", TcpState::Established),
    timeout!("timeouts.fin_wait_1", TcpState::FinWait1),
    timeout!("timeouts.fin_wait_2", TcpState::FinWait2),
    timeout!("timeouts.close_wait", TcpState::CloseWait),
    timeout!("timeouts.closing", TcpState::Closing),
    timeout!("timeouts.last_ack", TcpState::LastAck),
    timeout!("timeouts.time_wait", TcpState::TimeWait),
    Key {
        name: "tables.max_half_open",
        kind: Kind::Count {
            min: 1,
            max: MAX_TABLE_SIZE,
            unit: "flows",
        },
        help: "capacity of the half-open flow table (preallocated, ~150 bytes a flow)",
        get: |s| s.tables.half_open as u64,
        set: |s, v| s.tables.half_open = v as u32,
        restart: true,
    },
    Key {
        name: "tables.max_flows",
        kind: Kind::Count {
            min: 1,
            max: MAX_TABLE_SIZE,
            unit: "flows",
        },
        help: "capacity of the table of all other flows (preallocated, ~150 bytes a flow)",
        get: |s| s.tables.flows as u64,
        set: |s, v| s.tables.flows = v as u32,
        restart: true,
    },
];

fn find(name: &str) -> Result<&'static Key> {
    KEYS.iter().find(|k| k.name == name).ok_or_else(|| {
        let section = name.split('.').next().unwrap_or_default();
        if section == "access" {
            return anyhow!("unknown setting {name:?}; access has: {MONITOR_GROUP}");
        }
        if section == "lists" {
            return anyhow!(
                "{name:?} is a list, read from the config file's [lists] only (then `tcp-guard reload`); \
                 `limits set` and `--set` take single values; `tcp-guard block add` and `allow add` change \
                 a running instance's lists"
            );
        }
        let near: Vec<&str> = KEYS
            .iter()
            .filter(|k| k.name.starts_with(&format!("{section}.")))
            .map(|k| k.name)
            .collect();
        if near.is_empty() {
            anyhow!("unknown setting {name:?}; {SECTIONS}")
        } else {
            anyhow!("unknown setting {name:?}; {section} has: {}", near.join(", "))
        }
    })
}

/// Suffixes of counts: SI for rates and limits (10k SYN/s), binary for
/// table sizes (64Ki entries).
const COUNT_UNITS: [(&str, u64); 6] = [
    ("Gi", 1 << 30),
    ("G", 1_000_000_000),
    ("Mi", 1 << 20),
    ("M", 1_000_000),
    ("Ki", 1 << 10),
    ("k", 1_000),
];

/// A count in human form: 4096, 10k (10,000), 2M, 64Ki (65,536), 1Mi.
pub fn parse_count(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let scale = match unit {
        "" => 1,
        "K" => 1_000,
        unit => COUNT_UNITS.iter().find(|(u, _)| *u == unit)?.1,
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// The shortest exact human form of a count: 65536 is 64Ki, 10000 is 10k.
pub fn format_count(value: u64) -> String {
    COUNT_UNITS
        .iter()
        .find(|(_, scale)| value >= *scale && value.is_multiple_of(*scale))
        .map_or_else(
            || value.to_string(),
            |(unit, scale)| format!("{}{unit}", value / scale),
        )
}

fn parse_value(key: &Key, text: &str) -> Result<u64> {
    let text = text.trim().trim_matches('"');
    match key.kind {
        Kind::Count { min, max, .. } => {
            let value = parse_count(text).ok_or_else(|| {
                anyhow!(
                    "{} = {text:?}: expected a whole number from {} to {} (such as 4096, 10k, 64Ki)",
                    key.name,
                    format_count(min.into()),
                    format_count(max.into())
                )
            })?;
            if value < min as u64 || value > max as u64 {
                bail!(
                    "{} = {value}: must be from {} to {}",
                    key.name,
                    format_count(min.into()),
                    format_count(max.into())
                );
            }
            Ok(value)
        }
        Kind::Duration {
            millis,
            min_ms,
            max_ms,
        } => {
            let duration = humantime::parse_duration(text).map_err(|e| {
                anyhow!(
                    "{} = {text:?}: {e} (a duration such as 500ms, 30s, 10m, 2h)",
                    key.name
                )
            })?;
            // Past u64 milliseconds is past every maximum; `as` would wrap it into range.
            let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            if ms < min_ms || ms > max_ms {
                bail!(
                    "{} = {text}: must be from {} to {}",
                    key.name,
                    humantime::format_duration(Duration::from_millis(min_ms)),
                    humantime::format_duration(Duration::from_millis(max_ms))
                );
            }
            if !millis && !ms.is_multiple_of(1000) {
                bail!("{} = {text}: whole seconds only", key.name);
            }
            Ok(if millis { ms } else { ms / 1000 })
        }
        Kind::Policy => Policy::ALL
            .iter()
            .find(|p| p.as_str() == text)
            .map(|p| *p as u64)
            .ok_or_else(|| {
                anyhow!(
                    "{} = {text:?}: one of auto, retransmit-challenge, syncookie, verified-only, pass",
                    key.name
                )
            }),
        Kind::Switch => match text {
            "true" => Ok(1),
            "false" => Ok(0),
            _ => bail!("{} = {text:?}: true or false", key.name),
        },
        Kind::AutoOrCount { .. } if text == "auto" => Ok(GuardConfig::PER_PORT_AUTO as u64),
        Kind::AutoOrCount { max, .. } => match parse_count(text) {
            Some(value) if value <= max as u64 => Ok(value),
            _ => bail!(
                "{} = {text:?}: auto, or a whole number from 0 to {} (such as 512, 10k)",
                key.name,
                format_count(max.into())
            ),
        },
    }
}

fn format_value(key: &Key, value: u64) -> String {
    match key.kind {
        Kind::Count { .. } => format_count(value),
        Kind::Duration { millis: true, .. } => {
            humantime::format_duration(Duration::from_millis(value)).to_string()
        }
        Kind::Duration { millis: false, .. } => {
            humantime::format_duration(Duration::from_secs(value)).to_string()
        }
        Kind::Policy => Policy::from_u8(value as u8)
            .map_or("?", Policy::as_str)
            .to_string(),
        Kind::Switch => (value != 0).to_string(),
        Kind::AutoOrCount { .. } if value == GuardConfig::PER_PORT_AUTO as u64 => "auto".to_string(),
        Kind::AutoOrCount { .. } => format_count(value),
    }
}

impl Lists {
    /// `allow = ["203.0.113.0/24", "2001:db8::/32"]`, `block = ["198.51.100.7"]`:
    /// addresses and CIDRs, IPv4 and IPv6; an entry listed twice counts once.
    fn from_toml(table: &toml::Table) -> Result<Lists> {
        let mut lists = Lists::default();
        for (name, value) in table {
            let (list, max) = match name.as_str() {
                "allow" => (&mut lists.allow, MAX_CONFIG_ALLOWS),
                "block" => (&mut lists.block, MAX_OPERATOR_BLOCKS),
                _ => bail!("unknown setting \"lists.{name}\"; lists has: lists.allow, lists.block"),
            };
            let entries = value.as_array().ok_or_else(|| {
                anyhow!(
                    "lists.{name} = {value}: expected a list of addresses and CIDRs, \
                     e.g. {name} = [\"198.51.100.7\", \"203.0.113.0/24\", \"2001:db8::/32\"]"
                )
            })?;
            let mut seen = HashSet::new();
            for entry in entries {
                let text = entry.as_str().ok_or_else(|| {
                    anyhow!("lists.{name}: {entry} is not a string; quote each entry, e.g. \"198.51.100.7\"")
                })?;
                let cidr = Cidr::parse(text).with_context(|| format!("lists.{name}"))?;
                if seen.insert(cidr) {
                    list.push(cidr);
                }
            }
            if list.len() > max {
                bail!(
                    "lists.{name} has {} entries, more than the {max} it may hold; list wider prefixes instead",
                    list.len()
                );
            }
        }
        Ok(lists)
    }
}

impl Access {
    /// `monitor_group = "tcp-guard-monitor"`.
    fn from_toml(table: &toml::Table) -> Result<Access> {
        let mut access = Access::default();
        for (name, value) in table {
            if format!("access.{name}") != MONITOR_GROUP {
                bail!("unknown setting \"access.{name}\"; access has: {MONITOR_GROUP}");
            }
            let text = value.as_str().ok_or_else(|| {
                anyhow!(
                    "{MONITOR_GROUP} = {value}: expected a group name in quotes, e.g. \
                     monitor_group = \"{DEFAULT_MONITOR_GROUP}\" (\"\": root only)"
                )
            })?;
            access.monitor_group = parse_group(text)?;
        }
        Ok(access)
    }
}

/// A group name as `groupadd` takes it, or "" (root only).
fn parse_group(text: &str) -> Result<String> {
    let all_digits = !text.is_empty() && text.chars().all(|c| c.is_ascii_digit());
    let valid = text.len() <= 32
        && !text.starts_with('-')
        && !all_digits
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !valid {
        bail!(
            "{MONITOR_GROUP} = {text:?}: not a group name: up to 32 letters, digits, '_', '-' or '.', not \
             starting with '-' and not all digits (as `groupadd` takes them); \"\" lets root alone read"
        );
    }
    Ok(text.to_string())
}

impl Settings {
    /// Sets `name` from its text form, validating the value on its own.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        if name == MONITOR_GROUP {
            self.access.monitor_group = parse_group(value.trim().trim_matches('"'))?;
            return Ok(());
        }
        let key = find(name)?;
        let value = parse_value(key, value)?;
        (key.set)(self, value);
        Ok(())
    }

    /// Applies `KEY=VALUE` pairs; with `live_only`, refuses keys that need a restart.
    pub fn apply(&mut self, assignments: &[String], live_only: bool) -> Result<()> {
        for assignment in assignments {
            let (name, value) = assignment.split_once('=').ok_or_else(|| {
                anyhow!("expected KEY=VALUE (e.g. limits.syn_rate=100), got {assignment:?}")
            })?;
            let name = name.trim();
            if live_only && name == MONITOR_GROUP {
                bail!(
                    "{name} is the daemon's, not the fast path's: set it in the config file (or with \
                     `run --monitor-group`), then `tcp-guard reload`"
                );
            }
            if live_only && find(name)?.restart {
                bail!(
                    "{name} is fixed while running: set it in the config file (or with `run --set`) and restart"
                );
            }
            self.set(name, value)?;
        }
        self.validate()
    }

    /// Checks the rules that tie settings together.
    pub fn validate(&self) -> Result<()> {
        let c = &self.live;
        if c.attack_leave_half_open > c.attack_enter_half_open && c.attack_enter_half_open != 0 {
            bail!(
                "attack.leave_half_open ({}) must not exceed attack.enter_half_open ({}), or attack mode would flap",
                c.attack_leave_half_open,
                c.attack_enter_half_open
            );
        }
        if c.attack_leave_syn_rate > c.attack_enter_syn_rate && c.attack_enter_syn_rate != 0 {
            bail!(
                "attack.leave_syn_rate ({}) must not exceed attack.enter_syn_rate ({}), or attack mode would flap",
                c.attack_leave_syn_rate,
                c.attack_enter_syn_rate
            );
        }
        if c.global_half_open != 0 && c.global_half_open > self.tables.half_open {
            bail!(
                "limits.global_half_open ({}) exceeds tables.max_half_open ({}): the table would fill first",
                c.global_half_open,
                self.tables.half_open
            );
        }
        Ok(())
    }

    /// Reads a TOML config file: sections of keys, e.g. `[limits] syn_rate = 100`.
    pub fn load_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        self.load_text(path, &text)
    }

    /// Reads the text of the config file `path` (which errors name): what
    /// [`Settings::load_file`] does once the file is read, so that `check`
    /// tells a file it cannot read from one that is invalid.
    pub fn load_text(&mut self, path: &Path, text: &str) -> Result<()> {
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        for (section, entries) in &table {
            let entries = entries
                .as_table()
                .ok_or_else(|| anyhow!("{}: {section} must be a [section] of settings", path.display()))?;
            if section == "lists" {
                self.lists = Lists::from_toml(entries).with_context(|| format!("in {}", path.display()))?;
                continue;
            }
            if section == "access" {
                self.access = Access::from_toml(entries).with_context(|| format!("in {}", path.display()))?;
                continue;
            }
            // A misspelt section with nothing in it would otherwise pass unseen.
            if !KEYS
                .iter()
                .any(|k| k.name.split_once('.').is_some_and(|(s, _)| s == section))
            {
                bail!("{}: unknown section [{section}]; {SECTIONS}", path.display());
            }
            for (name, value) in entries {
                let key = format!("{section}.{name}");
                find(&key).with_context(|| format!("in {}", path.display()))?;
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => bail!(
                        "{}: {key} = {other}: expected a whole number, a string or true/false",
                        path.display()
                    ),
                };
                self.set(&key, &text)
                    .with_context(|| format!("in {}", path.display()))?;
            }
        }
        self.validate().with_context(|| format!("in {}", path.display()))
    }

    /// Every setting, its value and what it means.
    pub fn describe(&self) -> Vec<(&'static str, String, &'static str)> {
        KEYS.iter()
            .map(|k| {
                let value = format_value(k, (k.get)(self));
                let shown = match k.kind {
                    Kind::Count { unit, .. } => format!("{value} {unit}"),
                    Kind::AutoOrCount { unit, .. } if value != "auto" => format!("{value} {unit}"),
                    _ => value,
                };
                (k.name, shown, k.help)
            })
            .collect()
    }

    /// `{"limits.global_half_open": 1024, "attack.cooldown": "10s", ...}`: values
    /// in the form `limits set` takes back (counts as numbers).
    pub fn to_json(&self) -> serde_json::Value {
        KEYS.iter()
            .map(|k| {
                let value = (k.get)(self);
                let json = match k.kind {
                    Kind::Count { .. } => serde_json::Value::from(value),
                    Kind::Switch => serde_json::Value::Bool(value != 0),
                    _ => serde_json::Value::String(format_value(k, value)),
                };
                (k.name.to_string(), json)
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    pub fn to_text(&self) -> String {
        self.describe()
            .into_iter()
            .map(|(name, value, help)| format!("{name:<28} {value:<18} {help}\n"))
            .collect()
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn load(text: &str) -> Result<Settings> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tcp-guard-settings-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text)?;
        let mut settings = Settings::default();
        let result = settings.load_file(&path).map(|()| settings);
        std::fs::remove_file(&path)?;
        result
    }

    #[test]
    fn the_example_config_is_the_defaults() {
        let example = include_str!("../../docs/config.example.toml");
        assert_eq!(load(example).expect("example parses"), Settings::default());
    }

    /// docs/configuration.md's table names every key, and the defaults it
    /// gives are the defaults.
    #[test]
    fn the_configuration_reference_names_every_key_with_its_default() {
        let doc = include_str!("../../docs/configuration.md");
        let defaults = Settings::default();
        let mut documented = Vec::new();
        for row in doc.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let mut section = "";
            let keys: Vec<String> = cells[1]
                .split(", ")
                .map(|k| {
                    let k = k.trim_matches('`');
                    match k.split_once('.') {
                        Some((s, _)) => {
                            section = s;
                            k.to_string()
                        }
                        None => format!("{section}.{k}"),
                    }
                })
                .collect();
            let values: Vec<&str> = cells[2].split(", ").map(|v| v.trim_matches('`')).collect();
            if values.len() == keys.len() {
                for (key, value) in keys.iter().zip(&values) {
                    let mut set = Settings::default();
                    set.set(key, value)
                        .unwrap_or_else(|e| panic!("docs/configuration.md: {key} = {value}: {e:#}"));
                    assert_eq!(
                        set, defaults,
                        "docs/configuration.md gives {key} the default {value}"
                    );
                }
            }
            documented.extend(keys);
        }
        for key in defaults.to_json().as_object().expect("object").keys() {
            assert!(
                documented.contains(key),
                "docs/configuration.md does not name {key}"
            );
        }
    }

    #[test]
    fn every_key_round_trips_through_show_and_set() {
        let defaults = Settings::default();
        let json = defaults.to_json();
        let mut again = Settings::default();
        for (key, value) in json.as_object().expect("object") {
            let text = value.as_str().map_or_else(|| value.to_string(), str::to_string);
            again
                .set(key, &text)
                .unwrap_or_else(|e| panic!("{key} = {text}: {e:#}"));
        }
        assert_eq!(again, defaults);
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let cases = [
            (
                "[limits]\nsyn_rte = 5\n",
                "unknown setting \"limits.syn_rte\"; limits has:",
            ),
            (
                "[limit]\nsyn_rate = 5\n",
                "unknown section [limit]; sections are limits",
            ),
            (
                "[limits]\nsyn_rate = -1\n",
                "limits.syn_rate = \"-1\": expected a whole number",
            ),
            (
                "[limits]\nprefix_len_v4 = 33\n",
                "limits.prefix_len_v4 = 33: must be from 1 to 32",
            ),
            (
                "[attack]\npolicy = \"drop\"\n",
                "one of auto, retransmit-challenge, syncookie, verified-only, pass",
            ),
            ("[attack]\ncooldown = \"soon\"\n", "attack.cooldown = \"soon\""),
            ("[timeouts]\ntime_wait = \"1500ms\"\n", "whole seconds only"),
            (
                "[attack]\nchallenge_window = \"18446744073709552s\"\n",
                "attack.challenge_window = 18446744073709552s: must be from 100ms to 10m",
            ),
            ("limits = 5\n", "limits must be a [section] of settings"),
            ("[limit]\n", "unknown section [limit]; sections are limits"),
            (
                "[limits]\nsyn_rate = 1.5\n",
                "limits.syn_rate = 1.5: expected a whole number",
            ),
            (
                "[limits]\nsyn_rte = { a = 1 }\n",
                "unknown setting \"limits.syn_rte\"; limits has:",
            ),
            ("[limits\n", "is not valid TOML"),
            (
                "[attack]\nenter_half_open = 10\nleave_half_open = 20\n",
                "must not exceed attack.enter_half_open",
            ),
            (
                "[limits]\nglobal_half_open = 100000\n",
                "exceeds tables.max_half_open",
            ),
            (
                "[lists]\nblock = [\"10.0.0.0/33\"]\n",
                "lists.block: \"10.0.0.0/33\": prefix length must be from 0 to 32",
            ),
            (
                "[lists]\nallow = [\"2001:db8::/129\"]\n",
                "lists.allow: \"2001:db8::/129\": prefix length must be from 0 to 128",
            ),
            (
                "[lists]\nallow = [\"203.0.113.1/24\"]\n",
                "lists.allow: \"203.0.113.1/24\" has host bits set; did you mean 203.0.113.0/24?",
            ),
            (
                "[lists]\nblock = [\"example.com\"]\n",
                "lists.block: \"example.com\" is not an address or CIDR",
            ),
            (
                "[lists]\nblock = [7]\n",
                "lists.block: 7 is not a string; quote each entry",
            ),
            (
                "[lists]\nallow = \"203.0.113.0/24\"\n",
                "lists.allow = \"203.0.113.0/24\": expected a list of addresses and CIDRs",
            ),
            (
                "[lists]\nblocked = []\n",
                "unknown setting \"lists.blocked\"; lists has: lists.allow, lists.block",
            ),
            (
                "[access]\nmonitor_group = \"-x\"\n",
                "access.monitor_group = \"-x\": not a group name",
            ),
            (
                "[access]\nmonitor_group = 1000\n",
                "access.monitor_group = 1000: expected a group name in quotes",
            ),
            (
                "[access]\ngroup = \"adm\"\n",
                "unknown setting \"access.group\"; access has: access.monitor_group",
            ),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", load(text).expect_err(text));
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn lists_hold_addresses_and_cidrs_of_both_families_once_each() {
        let settings = load(
            "[lists]\nallow = [\"203.0.113.0/24\", \"2001:db8::/32\", \"203.0.113.0/24\"]\n\
             block = [\"198.51.100.7\", \"2001:db8:1::5\"]\n",
        )
        .expect("lists");
        let cidrs = |list: &[&str]| -> Vec<Cidr> { list.iter().map(|c| Cidr::parse(c).expect(c)).collect() };
        assert_eq!(
            settings.lists,
            Lists {
                allow: cidrs(&["203.0.113.0/24", "2001:db8::/32"]),
                block: cidrs(&["198.51.100.7/32", "2001:db8:1::5/128"]),
            }
        );
        assert_eq!(
            settings.live,
            Settings::default().live,
            "lists are apart from the settings"
        );
        let too_many: Vec<String> = (0..=MAX_OPERATOR_BLOCKS)
            .map(|n| format!("\"10.0.{}.{}\"", n / 256, n % 256))
            .collect();
        let error = load(&format!("[lists]\nblock = [{}]\n", too_many.join(", "))).expect_err("too many");
        assert!(
            format!("{error:#}").contains("lists.block has 1025 entries, more than the 1024 it may hold"),
            "{error:#}"
        );
    }

    #[test]
    fn the_monitoring_group_is_read_from_the_file_and_run_but_not_changed_live() {
        let settings = load("[access]\nmonitor_group = \"ops.read-1\"\n").expect("access");
        assert_eq!(settings.access.monitor_group, "ops.read-1");
        assert_eq!(Settings::default().access.monitor_group, DEFAULT_MONITOR_GROUP);
        let mut settings = Settings::default();
        settings
            .apply(&["access.monitor_group=\"\"".to_string()], false)
            .expect("empty: root only");
        assert_eq!(settings.access.monitor_group, "");
        for bad in ["a b", "1000", "x/y", &"g".repeat(33)] {
            assert!(
                Settings::default().set(MONITOR_GROUP, bad).is_err(),
                "{bad:?} accepted"
            );
        }
        let error = Settings::default()
            .apply(&["access.monitor_group=adm".to_string()], true)
            .expect_err("not through limits set");
        assert!(
            format!("{error:#}").contains("set it in the config file"),
            "{error:#}"
        );
    }

    #[test]
    fn lists_are_not_single_settings() {
        let error = Settings::default()
            .apply(&["lists.block=198.51.100.7".to_string()], true)
            .expect_err("lists are file only");
        assert!(
            format!("{error:#}")
                .contains("\"lists.block\" is a list, read from the config file's [lists] only"),
            "{error:#}"
        );
    }

    #[test]
    fn counts_read_and_print_in_human_form() {
        for (text, value) in [
            ("4096", 4096),
            ("10k", 10_000),
            ("10K", 10_000),
            ("2M", 2_000_000),
            ("64Ki", 65_536),
            ("1Mi", 1 << 20),
            ("0", 0),
        ] {
            assert_eq!(parse_count(text), Some(value), "{text}");
        }
        for bad in ["", "k", "1.5k", "-1", "10 k", "10kb", "99999999999G"] {
            assert_eq!(parse_count(bad), None, "{bad}");
        }
        for (value, text) in [
            (65_536, "64Ki"),
            (262_144, "256Ki"),
            (10_000, "10k"),
            (4_097, "4097"),
            (0, "0"),
        ] {
            assert_eq!(format_count(value), text);
            assert_eq!(parse_count(text), Some(value));
        }
    }

    #[test]
    fn live_changes_refuse_restart_only_keys() {
        let mut settings = Settings::default();
        let error = settings
            .apply(&["tables.max_flows=10".to_string()], true)
            .expect_err("tables are fixed");
        assert!(format!("{error:#}").contains("fixed while running"));
        settings
            .apply(
                &["limits.syn_rate=5".to_string(), "attack.policy=pass".to_string()],
                true,
            )
            .expect("live keys");
        assert_eq!(settings.live.syn_rate, 5);
        assert_eq!(settings.live.policy(), Policy::Pass);
    }
}
