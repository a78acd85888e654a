//! Settings: every tunable has one key (`limits.per_source_half_open`), one
//! parser and one validator, used alike by the TOML config file, `run --set`
//! and `tcp-guard limits set`. Table sizes are fixed at start; everything
//! else lives in the pinned `CONFIG` map and can change while running.
//! The `[lists]` section is apart: lists of sources, read from the file
//! only, which the daemon puts on its allow and block lists. So are the
//! `[[ports]]` policies: settings that differ for some local ports. So is
//! `[access]`: who besides root may read the daemon's figures, which the
//! daemon applies to its monitoring socket, not to the fast path.

use std::{collections::HashSet, path::Path, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use tcp_guard_common::{
    config::TableSizes,
    flow::TcpState,
    policy::{GuardConfig, MAX_PORT_POLICIES, Policy, Rule},
};

use crate::control::Cidr;

/// Everything a running instance is configured with.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    pub live: GuardConfig,
    pub tables: TableSizes,
    pub lists: Lists,
    pub ports: Vec<PortPolicy>,
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

/// One of the config's `[[ports]]`: for SYNs to these local ports, these
/// settings instead of the global ones (the rest follow the global ones,
/// also as `limits set` changes them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    /// Inclusive ranges.
    pub ports: Vec<(u16, u16)>,
    /// Keys (of [`PORT_KEYS`]) and their values, as given.
    pub settings: Vec<(&'static str, u64)>,
}

/// What a `[[ports]]` policy may set: what the fast path decides per SYN.
/// (Attack mode, the tables and the timeouts are the interface's.)
pub const PORT_KEYS: &[&str] = &[
    "limits.per_source_half_open",
    "limits.per_prefix_half_open",
    "limits.per_port_half_open",
    "limits.syn_rate",
    "limits.syn_burst",
    "attack.policy",
    "attack.challenge_window",
    "monitor.all",
    "monitor.syn_rate",
    "monitor.half_open",
    "monitor.attack",
];

/// Most `[[ports]]` policies (`PORT_CONFIGS` has one more entry, for none).
pub const MAX_PORTS_POLICIES: usize = MAX_PORT_POLICIES as usize - 1;

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

const SECTIONS: &str =
    "sections are limits, attack, blocking, monitor, timeouts, tables, lists, access, [[ports]]";

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

/// `monitor.<rule>`: one bit of `GuardConfig::monitor`.
macro_rules! monitor_switch {
    ($name:literal, $rule:expr, $help:literal) => {
        Key {
            name: $name,
            kind: Kind::Switch,
            help: $help,
            get: |s| u64::from(s.live.monitor & $rule as u8 != 0),
            set: |s, v| {
                if v != 0 {
                    s.live.monitor |= $rule as u8;
                } else {
                    s.live.monitor &= !($rule as u8);
                }
            },
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
        "how long a source that completed a handshake stays verified, at least (at most twice that)"
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
    monitor_switch!(
        "monitor.all",
        Rule::All,
        "monitor mode for every rule: count what each would drop (the would_drop_* counters) and drop nothing; to tune limits on real traffic first"
    ),
    monitor_switch!(
        "monitor.block_list",
        Rule::BlockList,
        "monitor mode for the block list (the operator's entries and the automatic ones): counted as would_drop_blocked, passed"
    ),
    monitor_switch!(
        "monitor.syn_rate",
        Rule::SynRate,
        "monitor mode for limits.syn_rate: SYNs over their source's rate counted as would_drop_syn_rate, passed"
    ),
    monitor_switch!(
        "monitor.half_open",
        Rule::HalfOpen,
        "monitor mode for the half-open limits and a full table: counted as would_drop_*_half_open and would_drop_table_full, admitted"
    ),
    monitor_switch!(
        "monitor.attack",
        Rule::Attack,
        "monitor mode for attack.policy: SYNs it would drop counted as would_drop_unverified or would_drop_challenge, those it would answer with a cookie as would_answer_with_cookie; all passed to the listener (attack mode itself still starts and ends, and the kernel settings for cookies are left alone)"
    ),
    monitor_switch!(
        "monitor.unparsed_tcp",
        Rule::UnparsedTcp,
        "monitor mode for attack.drop_unparsed_tcp: counted as would_drop_unparsed_tcp, passed"
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
        help: "half-open (SYN-RECV) flows the flow table holds (preallocated, ~160 bytes a flow)",
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
        help: "room for all other flows in the flow table (preallocated, ~160 bytes a flow)",
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

/// A value as `limits show --json` gives it: counts and switches as JSON
/// numbers and booleans, the rest in the text form `limits set` takes.
fn json_value(key: &Key, value: u64) -> serde_json::Value {
    match key.kind {
        Kind::Count { .. } => serde_json::Value::from(value),
        Kind::Switch => serde_json::Value::Bool(value != 0),
        _ => serde_json::Value::String(format_value(key, value)),
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

impl PortPolicy {
    /// `ports[index]` of the config file.
    fn from_toml(index: usize, table: &toml::Table) -> Result<PortPolicy> {
        let at = format!("ports[{index}]");
        let mut policy = PortPolicy {
            ports: Vec::new(),
            settings: Vec::new(),
        };
        for (name, value) in table {
            if name == "ports" {
                let entries = match value {
                    toml::Value::Array(entries) => entries.clone(),
                    single => vec![single.clone()],
                };
                for entry in &entries {
                    policy
                        .ports
                        .push(parse_port_range(entry).with_context(|| format!("{at}.ports"))?);
                }
                continue;
            }
            let section = value.as_table().ok_or_else(|| {
                anyhow!("{at}.{name}: expected `ports = ...` or a section of settings, e.g. [ports.limits] syn_rate = 20")
            })?;
            for (key, value) in section {
                let full = format!("{name}.{key}");
                let Some(key) = PORT_KEYS.iter().find(|k| **k == full) else {
                    bail!(
                        "{at}: {full} is not set per port; a [[ports]] policy may set {}",
                        PORT_KEYS.join(", ")
                    );
                };
                let parsed = parse_value(find(key)?, &toml_text(&format!("{at}.{full}"), value)?)
                    .with_context(|| format!("{at}.{full}"))?;
                policy.settings.push((key, parsed));
            }
        }
        if policy.ports.is_empty() {
            bail!("{at}: no ports; add e.g. ports = \"22\" or ports = [\"8000-8099\", \"8443\"]");
        }
        if policy.settings.is_empty() {
            bail!("{at}: sets nothing; add e.g. [ports.limits] syn_rate = 20");
        }
        // In PORT_KEYS order, as `in_force` reads them back.
        policy
            .settings
            .sort_by_key(|(name, _)| PORT_KEYS.iter().position(|k| k == name));
        Ok(policy)
    }

    /// `base` (the running global configuration) with this policy's settings.
    /// `auto` keeps the policy the daemon resolved for `base`.
    pub fn apply(&self, base: &GuardConfig) -> GuardConfig {
        let mut settings = Settings {
            live: *base,
            ..Settings::default()
        };
        for (name, value) in &self.settings {
            let key = find(name).expect("PORT_KEYS are keys");
            if matches!(key.kind, Kind::Policy) && *value == Policy::Auto as u64 {
                continue;
            }
            (key.set)(&mut settings, *value);
        }
        settings.live
    }

    /// A policy as the maps hold it: `ports` follow `config`, which differs
    /// from `global` in the settings returned.
    pub fn in_force(ports: Vec<(u16, u16)>, config: &GuardConfig, global: &GuardConfig) -> PortPolicy {
        let (ours, theirs) = (
            Settings {
                live: *config,
                ..Settings::default()
            },
            Settings {
                live: *global,
                ..Settings::default()
            },
        );
        let settings = PORT_KEYS
            .iter()
            .map(|name| (*name, find(name).expect("PORT_KEYS are keys")))
            .filter(|(_, key)| (key.get)(&ours) != (key.get)(&theirs))
            .map(|(name, key)| (name, (key.get)(&ours)))
            .collect();
        PortPolicy { ports, settings }
    }

    /// `22, 8000-8099`
    pub fn ports_text(&self) -> String {
        self.ports
            .iter()
            .map(|(first, last)| {
                if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `limits.syn_rate=20 attack.policy=verified-only`
    pub fn settings_text(&self) -> String {
        self.settings
            .iter()
            .map(|(name, value)| format!("{name}={}", format_value(find(name).expect("a key"), *value)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `{"ports": ["22"], "settings": {"limits.syn_rate": 20}}`
    pub fn to_json(&self) -> serde_json::Value {
        let settings: serde_json::Map<String, serde_json::Value> = self
            .settings
            .iter()
            .map(|(name, value)| (name.to_string(), json_value(find(name).expect("a key"), *value)))
            .collect();
        serde_json::json!({
            "ports": self.ports_text().split(", ").collect::<Vec<_>>(),
            "settings": settings,
        })
    }
}

/// `"22"`, `22` or `"8000-8099"`.
fn parse_port_range(value: &toml::Value) -> Result<(u16, u16)> {
    let text = match value {
        toml::Value::String(s) => s.trim().to_string(),
        toml::Value::Integer(i) => i.to_string(),
        other => bail!("{other}: expected a port or a range, e.g. \"22\" or \"8000-8099\""),
    };
    let port = |part: &str| -> Result<u16> {
        match part.trim().parse::<u16>() {
            Ok(port) if port != 0 => Ok(port),
            _ => bail!("{text:?}: ports are 1 to 65535, a range is \"FIRST-LAST\""),
        }
    };
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (port(first)?, port(last)?),
        None => (port(&text)?, port(&text)?),
    };
    if first > last {
        bail!("{text:?}: the range runs backwards; write it \"{last}-{first}\"");
    }
    Ok((first, last))
}

/// The TOML value of `key` in the text form the settings parse.
fn toml_text(key: &str, value: &toml::Value) -> Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("{key} = {other}: expected a whole number, a string or true/false"),
    })
}

/// What each port follows: 0, the global settings; n, `ports[n - 1]`.
pub fn port_index(ports: &[PortPolicy]) -> Vec<u8> {
    let mut index = vec![0u8; 65_536];
    for (n, policy) in ports.iter().enumerate() {
        for (first, last) in &policy.ports {
            for port in *first..=*last {
                index[usize::from(port)] = n as u8 + 1;
            }
        }
    }
    index
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
        if self.ports.len() > MAX_PORTS_POLICIES {
            bail!(
                "{} [[ports]] policies, more than the {MAX_PORTS_POLICIES} the fast path holds; give policies with the same settings one entry with several ports",
                self.ports.len()
            );
        }
        let mut claimed: Vec<(u16, u16, usize)> = Vec::new();
        for (i, policy) in self.ports.iter().enumerate() {
            for &(first, last) in &policy.ports {
                if let Some((_, _, other)) = claimed.iter().find(|(f, l, _)| first <= *l && *f <= last) {
                    bail!(
                        "ports[{i}] and ports[{other}] both claim ports in {first}-{last}; a port follows one policy"
                    );
                }
                claimed.push((first, last, i));
            }
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
            if section == "ports" {
                let policies = entries.as_array().ok_or_else(|| {
                    anyhow!(
                        "{}: ports must be [[ports]] tables, one per policy",
                        path.display()
                    )
                })?;
                self.ports = policies
                    .iter()
                    .enumerate()
                    .map(|(i, policy)| {
                        policy
                            .as_table()
                            .ok_or_else(|| anyhow!("ports[{i}] must be a [[ports]] table"))
                            .and_then(|table| PortPolicy::from_toml(i, table))
                    })
                    .collect::<Result<_>>()
                    .with_context(|| format!("in {}", path.display()))?;
                continue;
            }
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
                let text = toml_text(&key, value).with_context(|| format!("in {}", path.display()))?;
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
            .map(|k| (k.name.to_string(), json_value(k, (k.get)(self))))
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
    fn ports_policies_set_their_keys_for_their_ports_only() {
        let settings = load(
            "[limits]\nsyn_rate = 100\n\n\
             [[ports]]\nports = \"22\"\n[ports.limits]\nsyn_rate = 5\nper_source_half_open = 2\n\
             [ports.attack]\npolicy = \"verified-only\"\n\n\
             [[ports]]\nports = [\"8000-8002\", 8443]\n[ports.monitor]\nall = true\n",
        )
        .expect("valid");
        assert_eq!(settings.ports.len(), 2);
        assert_eq!(settings.ports[0].ports_text(), "22");
        assert_eq!(settings.ports[1].ports_text(), "8000-8002, 8443");
        let ssh = settings.ports[0].apply(&settings.live);
        assert_eq!((ssh.syn_rate, ssh.per_source_half_open), (5, 2));
        assert_eq!(ssh.policy(), Policy::VerifiedOnly);
        assert_eq!(
            ssh.syn_burst, settings.live.syn_burst,
            "the rest as for every port"
        );
        let web = settings.ports[1].apply(&settings.live);
        assert!(web.monitors(Rule::SynRate) && web.syn_rate == 100);
        let index = port_index(&settings.ports);
        assert_eq!((index[22], index[8001], index[8443], index[80]), (1, 2, 2, 0));
        // What the maps hold reads back as the policy.
        let back = PortPolicy::in_force(vec![(22, 22)], &ssh, &settings.live);
        assert_eq!(back.settings_text(), settings.ports[0].settings_text());
    }

    #[test]
    fn bad_ports_policies_are_named_with_the_fix() {
        for (text, expected) in [
            ("[[ports]]\n[ports.limits]\nsyn_rate = 5\n", "ports[0]: no ports"),
            ("[[ports]]\nports = \"22\"\n", "ports[0]: sets nothing"),
            (
                "[[ports]]\nports = \"0\"\n[ports.limits]\nsyn_rate = 5\n",
                "ports are 1 to 65535",
            ),
            (
                "[[ports]]\nports = \"90-80\"\n[ports.limits]\nsyn_rate = 5\n",
                "write it \"80-90\"",
            ),
            (
                "[[ports]]\nports = \"22\"\n[ports.limits]\nglobal_half_open = 5\n",
                "limits.global_half_open is not set per port",
            ),
            (
                "[[ports]]\nports = \"20-30\"\n[ports.limits]\nsyn_rate = 5\n\
                 [[ports]]\nports = \"22\"\n[ports.limits]\nsyn_rate = 6\n",
                "ports[1] and ports[0] both claim ports in 22-22",
            ),
            ("[ports]\nlimits = 1\n", "ports must be [[ports]] tables"),
            (
                "[[ports]]\nports = \"22\"\n[ports.limits]\nsyn_rate = \"fast\"\n",
                "ports[0].limits.syn_rate",
            ),
        ] {
            let error = format!("{:#}", load(text).expect_err(text));
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        let many: String = (1..=MAX_PORTS_POLICIES + 1)
            .map(|port| format!("[[ports]]\nports = {port}\n[ports.limits]\nsyn_rate = 5\n"))
            .collect();
        let error = format!("{:#}", load(&many).expect_err("too many"));
        assert!(error.contains("more than the 63"), "{error}");
    }

    #[test]
    fn every_monitor_key_sets_its_rule_alone() {
        for rule in Rule::ALL {
            let mut settings = Settings::default();
            settings
                .set(&format!("monitor.{}", rule.as_str()), "true")
                .expect("a monitor key per rule");
            for other in Rule::ALL {
                assert_eq!(
                    settings.live.monitors(other),
                    rule == Rule::All || other == rule,
                    "monitor.{} = true: {}",
                    rule.as_str(),
                    other.as_str()
                );
            }
            settings
                .set(&format!("monitor.{}", rule.as_str()), "false")
                .expect("and off again");
            assert_eq!(settings.live.monitor, 0);
        }
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
