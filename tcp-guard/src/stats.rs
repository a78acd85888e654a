//! Reading the per-CPU counters and showing them.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use serde_json::{Map as JsonMap, Value, json};
use tcp_guard_common::{
    policy::{AttackState, Policy, Rule},
    stats::{Counter, Stats},
};

use crate::{
    control::Instance,
    flows::{self, FlowTables, Gauges, monotonic_now_ns},
};

/// Sums every CPU's counters in a `STATS` map.
pub fn read(map: &Map) -> Result<Stats> {
    let array: PerCpuArray<&MapData, Stats> =
        PerCpuArray::try_from(map).context("STATS is not a per-CPU array")?;
    sum(&array)
}

/// Sums every CPU's counters in the `STATS` map pinned at `path`.
pub fn read_pinned(path: &Path) -> Result<Stats> {
    let data =
        MapData::from_pin(path).with_context(|| format!("cannot open pinned map {}", path.display()))?;
    let map = Map::from_map_data(data)
        .with_context(|| format!("{} is not a map tcp-guard knows", path.display()))?;
    read(&map)
}

fn sum(array: &PerCpuArray<&MapData, Stats>) -> Result<Stats> {
    let per_cpu = array.get(&0, 0).context("cannot read the STATS map")?;
    let mut total = Stats::default();
    for cpu in per_cpu.iter() {
        total.add(cpu);
    }
    Ok(total)
}

/// `{"iface": ..., "counters": {"packets": N, ...}}`, every counter present.
pub fn to_json(iface: &str, stats: &Stats) -> Value {
    let counters: JsonMap<String, Value> = Counter::ALL
        .iter()
        .map(|c| (c.as_str().to_string(), json!(stats.get(*c))))
        .collect();
    json!({ "iface": iface, "counters": counters })
}

/// Two aligned columns, one counter a line.
pub fn to_text(iface: &str, stats: &Stats) -> String {
    let width = Counter::ALL.iter().map(|c| c.as_str().len()).max().unwrap_or(0);
    let mut out = format!("tcp-guard on {iface}\n");
    for counter in Counter::ALL {
        out.push_str(&format!(
            "  {:<width$}  {:>14}\n",
            counter.as_str(),
            stats.get(counter)
        ));
    }
    out
}

/// The rules in monitor mode (`monitor.*`, the bits of
/// `GuardConfig::monitor`), by name; `all` alone when all are.
pub fn monitored_rules(monitor: u8) -> Vec<&'static str> {
    if monitor & Rule::All as u8 != 0 {
        return vec![Rule::All.as_str()];
    }
    Rule::ALL
        .iter()
        .filter(|rule| monitor & **rule as u8 != 0)
        .map(|rule| rule.as_str())
        .collect()
}

/// What `tcp-guard stats` prints: the counters, the flows per state and
/// table fill, attack mode and the half-open count.
pub struct StatsSample {
    pub counters: Stats,
    pub gauges: Gauges,
    pub enforcement: Enforcement,
}

impl StatsSample {
    /// Reads them from the instance's pins (the gauges walk both flow tables).
    pub fn read(instance: &Instance) -> Result<Self> {
        Ok(StatsSample {
            counters: read_pinned(&instance.dir().join(tcp_guard_common::maps::STATS))?,
            gauges: FlowTables::open(instance.dir())?.gauges()?,
            enforcement: Enforcement::read(instance)?,
        })
    }

    /// The schema in docs/metrics.md: the counters, the gauges and enforcement in one object.
    pub fn to_json(&self, iface: &str) -> Value {
        let mut value = to_json(iface, &self.counters);
        if let Some(all) = value.as_object_mut() {
            for extra in [flows::gauges_to_json(&self.gauges), self.enforcement.to_json()] {
                if let Value::Object(extra) = extra {
                    all.extend(extra);
                }
            }
        }
        value
    }

    pub fn to_text(&self, iface: &str) -> String {
        format!(
            "{}{}{}",
            to_text(iface, &self.counters),
            flows::gauges_to_text(&self.gauges),
            self.enforcement.to_text()
        )
    }
}

/// Attack mode and the half-open count against its limit.
pub struct Enforcement {
    pub attack: AttackState,
    pub policy: Policy,
    /// `limits.global_half_open`.
    pub half_open_limit: u32,
    pub half_open: u64,
    /// `GuardConfig::monitor`: the rules in monitor mode.
    pub monitor: u8,
    now_ns: u64,
}

impl Enforcement {
    pub fn read(instance: &Instance) -> Result<Self> {
        let config = instance.config()?;
        Ok(Enforcement::new(
            instance.attack()?,
            config.policy(),
            config.global_half_open,
            instance.half_open()?,
            config.monitor,
        ))
    }

    /// As read now (how long attack mode has lasted counts from now).
    pub fn new(
        attack: AttackState,
        policy: Policy,
        half_open_limit: u32,
        half_open: u64,
        monitor: u8,
    ) -> Self {
        Enforcement {
            attack,
            policy,
            half_open_limit,
            half_open,
            monitor,
            now_ns: monotonic_now_ns(),
        }
    }

    fn attack_secs(&self) -> Option<f64> {
        (self.attack.active != 0).then(|| self.now_ns.saturating_sub(self.attack.since_ns) as f64 / 1e9)
    }

    /// `{"attack": {"active", "for_secs", "policy"}, "half_open": {"count", "limit"}, "monitor": [rules]}`
    pub fn to_json(&self) -> Value {
        json!({
            "attack": {
                "active": self.attack.active != 0,
                "for_secs": self.attack_secs(),
                "policy": self.policy.as_str(),
            },
            "half_open": { "count": self.half_open, "limit": self.half_open_limit },
            "monitor": monitored_rules(self.monitor),
        })
    }

    pub fn to_text(&self) -> String {
        let attack = match self.attack_secs() {
            Some(secs) => format!("ON for {secs:.0}s"),
            None => "off".to_string(),
        };
        let monitored = monitored_rules(self.monitor);
        let monitor = if monitored.is_empty() {
            String::new()
        } else {
            format!(
                "monitor      {} (counted as would_drop_*, not dropped)\n",
                monitored.join(", ")
            )
        };
        format!(
            "attack mode  {attack} (policy {})\nhalf-open    {} of {}\n{monitor}",
            self.policy.as_str(),
            self.half_open,
            self.half_open_limit
        )
    }
}
