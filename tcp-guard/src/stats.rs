//! Reading the per-CPU counters and showing them.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use serde_json::{Map as JsonMap, Value, json};
use tcp_guard_common::{
    policy::{AttackState, GuardConfig, Rule},
    stats::{Counter, Stats},
};

use crate::{control::Instance, flows::monotonic_now_ns};

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

/// The rules in monitor mode (`monitor.*`), by name; `all` alone when all are.
pub fn monitored_rules(config: &GuardConfig) -> Vec<&'static str> {
    if config.monitors(Rule::All) {
        return vec![Rule::All.as_str()];
    }
    Rule::ALL
        .iter()
        .filter(|rule| config.monitors(**rule))
        .map(|rule| rule.as_str())
        .collect()
}

/// Attack mode and the half-open count against its limit.
pub struct Enforcement {
    pub attack: AttackState,
    pub config: GuardConfig,
    pub half_open: u64,
    now_ns: u64,
}

impl Enforcement {
    pub fn read(instance: &Instance) -> Result<Self> {
        Ok(Enforcement {
            attack: instance.attack()?,
            config: instance.config()?,
            half_open: instance.half_open()?,
            now_ns: monotonic_now_ns(),
        })
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
                "policy": self.config.policy().as_str(),
            },
            "half_open": { "count": self.half_open, "limit": self.config.global_half_open },
            "monitor": monitored_rules(&self.config),
        })
    }

    pub fn to_text(&self) -> String {
        let attack = match self.attack_secs() {
            Some(secs) => format!("ON for {secs:.0}s"),
            None => "off".to_string(),
        };
        let monitored = monitored_rules(&self.config);
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
            self.config.policy().as_str(),
            self.half_open,
            self.config.global_half_open
        )
    }
}
