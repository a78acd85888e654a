//! The flow table as the controller sees it: listing, gauges, expiry.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use crate::control::array;
use anyhow::{Context, Result, bail};
use aya::maps::{Array, HashMap, Map, MapData};
use serde_json::{Value, json};
use tcp_guard_common::{
    flow::{Flow, FlowKey, TcpState},
    maps,
    policy::{CountHash, GuardConfig},
};

/// Open handles on an instance's flow table.
pub struct FlowTables {
    flows: HashMap<MapData, FlowKey, Flow>,
    /// The half-open flows' share of the table, and the rest.
    half_open_max: u32,
    flow_max: u32,
    expired: Array<MapData, u64>,
}

/// One tracked flow, ready to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRow {
    pub state: TcpState,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub age_ns: u64,
    pub idle_ns: u64,
    /// Picked up mid-connection (handshake not seen).
    pub adopted: bool,
}

/// Flows per state, plus table fill.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Gauges {
    /// Indexed by `TcpState as usize - 1`.
    pub per_state: [u64; 10],
    pub half_open_entries: u64,
    pub half_open_max: u32,
    pub flow_entries: u64,
    pub flow_max: u32,
    /// Entries the controller expired, per state, since the instance started.
    pub expired: [u64; 10],
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The pinned flow table and its capacity.
fn open_hash(dir: &Path, name: &str) -> Result<(HashMap<MapData, FlowKey, Flow>, u32)> {
    let path = dir.join(name);
    let data =
        MapData::from_pin(&path).with_context(|| format!("cannot open pinned map {}", path.display()))?;
    let max = data
        .info()
        .with_context(|| format!("cannot query {}", path.display()))?
        .max_entries();
    let table = HashMap::try_from(Map::HashMap(data))
        .with_context(|| format!("{} is not a flow table", path.display()))?;
    Ok((table, max))
}

impl FlowTables {
    /// Opens the pinned tables of the instance whose directory is `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let (flows, capacity) = open_hash(dir, maps::FLOWS)?;
        let half_open_max = array::<CountHash>(dir, maps::COUNT_HASH)?
            .get(&0, 0)
            .context("cannot read COUNT_HASH")?
            .half_open_max;
        Ok(FlowTables {
            flows,
            half_open_max,
            flow_max: capacity.saturating_sub(half_open_max),
            expired: array(dir, maps::EXPIRED)?,
        })
    }

    /// Every tracked flow.
    pub fn entries(&self) -> Result<Vec<(FlowKey, Flow)>> {
        read_table(&self.flows)
    }

    /// Half-open flows counted against the limits, per peer address, most
    /// first. (The fast path's counts are hashed slots, which name no
    /// address; the flows themselves do.)
    pub fn half_open_sources(&self, n: usize) -> Result<Vec<(IpAddr, u64)>> {
        let mut sources = std::collections::HashMap::<IpAddr, u64>::new();
        for (key, flow) in self.entries()? {
            if flow.has(Flow::COUNTED)
                && flow.state() == Some(TcpState::SynRcvd)
                && let Some(peer) = addr(&key.remote_addr, key.family)
            {
                *sources.entry(peer).or_default() += 1;
            }
        }
        let mut sources: Vec<_> = sources.into_iter().collect();
        sources.sort_by_key(|&(peer, count)| (std::cmp::Reverse(count), peer));
        sources.truncate(n);
        Ok(sources)
    }

    pub fn rows(&self, now_ns: u64) -> Result<Vec<FlowRow>> {
        let mut rows: Vec<FlowRow> = self
            .entries()?
            .into_iter()
            .filter_map(|(key, flow)| row(&key, &flow, now_ns))
            .collect();
        rows.sort_by_key(|r| (r.local, r.peer));
        Ok(rows)
    }

    pub fn gauges(&self) -> Result<Gauges> {
        let mut g = Gauges {
            half_open_max: self.half_open_max,
            flow_max: self.flow_max,
            ..Gauges::default()
        };
        for (_, flow) in self.entries()? {
            let state = flow.state();
            if state.is_some_and(TcpState::is_half_open) {
                g.half_open_entries += 1;
            } else {
                g.flow_entries += 1;
            }
            if let Some(state) = state {
                g.per_state[state as usize - 1] += 1;
            }
        }
        for state in TcpState::STORED {
            g.expired[state as usize - 1] = expired_count(&self.expired, state)?;
        }
        Ok(g)
    }

    /// Flows idle longer than their state's timeout: candidates for the
    /// kernel's expire program, which checks again before removing.
    pub fn stale(&self, config: &GuardConfig, now_ns: u64) -> Result<Vec<FlowKey>> {
        let mut stale = Vec::new();
        for (key, flow) in self.entries()? {
            let limit = flow.state().map_or(0, |s| config.timeout_secs(s)) as u64 * 1_000_000_000;
            if now_ns.saturating_sub(flow.last_ns) > limit {
                stale.push(key);
            }
        }
        Ok(stale)
    }
}

fn expired_count(expired: &Array<MapData, u64>, state: TcpState) -> Result<u64> {
    expired.get(&(state as u32), 0).context("cannot read EXPIRED")
}

/// A table's entries; one removed while being listed is skipped.
fn read_table(table: &HashMap<MapData, FlowKey, Flow>) -> Result<Vec<(FlowKey, Flow)>> {
    let mut entries = Vec::new();
    for entry in table.iter() {
        match entry {
            Ok(kv) => entries.push(kv),
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("cannot read a flow table"),
        }
    }
    Ok(entries)
}

fn addr(bytes: &[u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

fn row(key: &FlowKey, flow: &Flow, now_ns: u64) -> Option<FlowRow> {
    Some(FlowRow {
        state: flow.state()?,
        local: SocketAddr::new(addr(&key.local_addr, key.family)?, key.local_port),
        peer: SocketAddr::new(addr(&key.remote_addr, key.family)?, key.remote_port),
        age_ns: now_ns.saturating_sub(flow.created_ns),
        idle_ns: now_ns.saturating_sub(flow.last_ns),
        adopted: flow.flags & Flow::ADOPTED != 0,
    })
}

/// A state named as `ss` does (`SYN-RECV`, `ESTAB`) or as TCP does
/// (`syn_rcvd`, `established`), in any case.
pub fn parse_state(name: &str) -> Result<TcpState> {
    let wanted = name.to_ascii_lowercase().replace('-', "_");
    for state in TcpState::ALL {
        if state.as_str() == wanted || state.ss_name().to_ascii_lowercase().replace('-', "_") == wanted {
            return Ok(state);
        }
    }
    let names: Vec<&str> = TcpState::STORED.iter().map(|s| s.ss_name()).collect();
    bail!(
        "unknown state {name:?}; use one of {} (or the RFC names, e.g. syn_rcvd)",
        names.join(", ")
    )
}

fn secs(ns: u64) -> f64 {
    (ns / 1_000_000) as f64 / 1000.0
}

pub fn rows_to_json(iface: &str, rows: &[FlowRow]) -> Value {
    let flows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "state": r.state.ss_name(),
                "local": r.local.to_string(),
                "peer": r.peer.to_string(),
                "age_secs": secs(r.age_ns),
                "idle_secs": secs(r.idle_ns),
                "adopted": r.adopted,
            })
        })
        .collect();
    json!({ "iface": iface, "flows": flows })
}

pub fn rows_to_text(rows: &[FlowRow]) -> String {
    let mut out = format!(
        "{:<11} {:<47} {:<47} {:>10}\n",
        "State", "Local Address:Port", "Peer Address:Port", "Age"
    );
    for r in rows {
        let age = humantime::format_duration(std::time::Duration::from_secs(r.age_ns / 1_000_000_000));
        out.push_str(&format!(
            "{:<11} {:<47} {:<47} {:>10}\n",
            r.state.ss_name(),
            r.local.to_string(),
            r.peer.to_string(),
            age.to_string()
        ));
    }
    out
}

pub fn gauges_to_json(g: &Gauges) -> Value {
    let by_state = |values: &[u64; 10]| -> Value {
        TcpState::STORED
            .iter()
            .map(|s| (s.as_str().to_string(), json!(values[*s as usize - 1])))
            .collect::<serde_json::Map<String, Value>>()
            .into()
    };
    json!({
        "flows": by_state(&g.per_state),
        "expired": by_state(&g.expired),
        "tables": {
            "half_open": { "entries": g.half_open_entries, "max": g.half_open_max },
            "flows": { "entries": g.flow_entries, "max": g.flow_max },
        },
    })
}

pub fn gauges_to_text(g: &Gauges) -> String {
    let mut out = String::from("flows by state (now / expired so far)\n");
    for state in &TcpState::STORED {
        let i = *state as usize - 1;
        out.push_str(&format!(
            "  {:<12} {:>12} {:>14}\n",
            state.ss_name(),
            g.per_state[i],
            g.expired[i]
        ));
    }
    out.push_str(&format!(
        "tables\n  half_open    {:>12} of {}\n  flows        {:>12} of {}\n",
        g.half_open_entries,
        crate::settings::format_count(g.half_open_max.into()),
        g.flow_entries,
        crate::settings::format_count(g.flow_max.into())
    ));
    out
}
