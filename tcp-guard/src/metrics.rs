//! Prometheus text exposition of an instance: `run --metrics ADDR` serves it
//! at `/metrics`. Every counter comes from the one `Counter` list; families
//! with a dimension (drops by reason, packets by class, ...) become labels.

use std::{fmt::Write as _, net::SocketAddr};

use anyhow::{Context, Result};
use tcp_guard_common::{
    flow::TcpState,
    stats::{Counter, Stats},
};

use crate::{flows::Gauges, stats::Enforcement};

/// How a counter is exported: metric name and, for families, a label.
fn family(counter: Counter) -> (&'static str, Option<(&'static str, &'static str)>) {
    let name = counter.as_str();
    let labelled = [
        ("drop_", "tcp_guard_drops_total", "reason"),
        ("malformed_", "tcp_guard_malformed_total", "reason"),
        ("invalid_", "tcp_guard_invalid_segments_total", "reason"),
        ("to_", "tcp_guard_flow_transitions_total", "to"),
    ];
    for (prefix, metric, label) in labelled {
        if let Some(value) = name.strip_prefix(prefix) {
            return (metric, Some((label, value)));
        }
    }
    match counter {
        Counter::NonIp
        | Counter::NonTcp
        | Counter::Ipv4Fragment
        | Counter::Ipv6Extension
        | Counter::Syn
        | Counter::SynAck
        | Counter::Ack
        | Counter::Fin
        | Counter::Rst
        | Counter::TcpOtherFlags => ("tcp_guard_packets_total", Some(("class", name))),
        Counter::Packets => ("tcp_guard_frames_total", None),
        _ => ("", None),
    }
}

/// Help text of each exported family.
const HELP: &[(&str, &str)] = &[
    ("tcp_guard_frames_total", "Frames the XDP program saw."),
    (
        "tcp_guard_packets_total",
        "Frames by what they are (one class each).",
    ),
    ("tcp_guard_drops_total", "Packets dropped, by reason."),
    (
        "tcp_guard_malformed_total",
        "Frames the parser gave up on, by reason (passed).",
    ),
    (
        "tcp_guard_invalid_segments_total",
        "Peer segments that did not fit their flow, by reason.",
    ),
    ("tcp_guard_flow_transitions_total", "Flows entering each state."),
];

/// The HELP and TYPE lines that open a metric family.
fn header(out: &mut String, name: &str, kind: &str, help: &str) -> std::fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
}

/// Time the kernel spent in one attached program, counted only while BPF
/// run-time statistics are on (`run --bpf-stats`, or
/// `sysctl kernel.bpf_stats_enabled=1`).
#[derive(Clone, Copy, Debug)]
pub struct RunTime {
    /// `xdp` or `tc_egress`.
    pub program: &'static str,
    pub runs: u64,
    pub nanoseconds: u64,
}

/// The exposition text for `iface`. `bpf_stats` says whether the kernel
/// counts the `run_times` now.
pub fn render(
    iface: &str,
    stats: &Stats,
    gauges: &Gauges,
    enforcement: &Enforcement,
    blocked: usize,
    bpf_stats: bool,
    run_times: &[RunTime],
) -> Result<String> {
    let mut out = String::new();
    let mut seen: Vec<String> = Vec::new();
    for counter in Counter::ALL {
        let (family_name, label) = family(counter);
        let metric = if family_name.is_empty() {
            format!("tcp_guard_{}_total", counter.as_str())
        } else {
            family_name.to_string()
        };
        if !seen.contains(&metric) {
            let help = HELP.iter().find(|(m, _)| *m == metric).map_or(
                "A tcp-guard counter (see docs/metrics.md, Counters).",
                |(_, h)| *h,
            );
            header(&mut out, &metric, "counter", help)?;
            seen.push(metric.clone());
        }
        let value = stats.get(counter);
        match label {
            Some((key, label_value)) => writeln!(
                out,
                "{metric}{{iface=\"{iface}\",{key}=\"{label_value}\"}} {value}"
            )?,
            None => writeln!(out, "{metric}{{iface=\"{iface}\"}} {value}")?,
        }
    }
    let gauge = |out: &mut String, name: &str, help: &str| header(out, name, "gauge", help);
    gauge(&mut out, "tcp_guard_flows", "Tracked flows by TCP state.")?;
    for state in TcpState::STORED {
        writeln!(
            out,
            "tcp_guard_flows{{iface=\"{iface}\",state=\"{}\"}} {}",
            state.as_str(),
            gauges.per_state[state as usize - 1]
        )?;
    }
    header(
        &mut out,
        "tcp_guard_expired_total",
        "counter",
        "Flows the controller expired, by state.",
    )?;
    for state in TcpState::STORED {
        writeln!(
            out,
            "tcp_guard_expired_total{{iface=\"{iface}\",state=\"{}\"}} {}",
            state.as_str(),
            gauges.expired[state as usize - 1]
        )?;
    }
    gauge(&mut out, "tcp_guard_table_entries", "Entries in each flow table.")?;
    writeln!(
        out,
        "tcp_guard_table_entries{{iface=\"{iface}\",table=\"half_open\"}} {}",
        gauges.half_open_entries
    )?;
    writeln!(
        out,
        "tcp_guard_table_entries{{iface=\"{iface}\",table=\"flows\"}} {}",
        gauges.flow_entries
    )?;
    gauge(
        &mut out,
        "tcp_guard_table_capacity",
        "Capacity of each flow table.",
    )?;
    writeln!(
        out,
        "tcp_guard_table_capacity{{iface=\"{iface}\",table=\"half_open\"}} {}",
        gauges.half_open_max
    )?;
    writeln!(
        out,
        "tcp_guard_table_capacity{{iface=\"{iface}\",table=\"flows\"}} {}",
        gauges.flow_max
    )?;
    gauge(
        &mut out,
        "tcp_guard_half_open",
        "Half-open flows counted against the global limit.",
    )?;
    writeln!(
        out,
        "tcp_guard_half_open{{iface=\"{iface}\"}} {}",
        enforcement.half_open
    )?;
    gauge(
        &mut out,
        "tcp_guard_half_open_limit",
        "The global half-open limit (0: none).",
    )?;
    writeln!(
        out,
        "tcp_guard_half_open_limit{{iface=\"{iface}\"}} {}",
        enforcement.config.global_half_open
    )?;
    gauge(&mut out, "tcp_guard_attack_mode", "1 while in attack mode.")?;
    writeln!(
        out,
        "tcp_guard_attack_mode{{iface=\"{iface}\"}} {}",
        u8::from(enforcement.attack.active != 0)
    )?;
    gauge(
        &mut out,
        "tcp_guard_blocked_sources",
        "Entries on the block list.",
    )?;
    writeln!(out, "tcp_guard_blocked_sources{{iface=\"{iface}\"}} {blocked}")?;
    gauge(
        &mut out,
        "tcp_guard_bpf_stats_enabled",
        "1 while the kernel counts program run time (run --bpf-stats, or sysctl kernel.bpf_stats_enabled=1).",
    )?;
    writeln!(
        out,
        "tcp_guard_bpf_stats_enabled{{iface=\"{iface}\"}} {}",
        u8::from(bpf_stats)
    )?;
    for (name, help, value) in [
        (
            "tcp_guard_program_runs_total",
            "Runs of each attached program, counted while BPF statistics are on.",
            (|r: &RunTime| r.runs.to_string()) as fn(&RunTime) -> String,
        ),
        (
            "tcp_guard_program_run_seconds_total",
            "Time spent in each attached program, counted while BPF statistics are on.",
            |r: &RunTime| format!("{:.9}", r.nanoseconds as f64 / 1e9),
        ),
    ] {
        header(&mut out, name, "counter", help)?;
        for run_time in run_times {
            writeln!(
                out,
                "{name}{{iface=\"{iface}\",program=\"{}\"}} {}",
                run_time.program,
                value(run_time)
            )?;
        }
    }
    Ok(out)
}

/// Binds the metrics address, which a start-up does before it asks a
/// running daemon to hand over or attaches anything, so that a bad address
/// fails it cleanly. `SO_REUSEPORT` lets a successor (`run --replace`) bind
/// the address its predecessor still serves; only the same user may share
/// it. Otherwise an address in use is refused, even by another interface's
/// daemon of the same user.
pub fn bind(addr: SocketAddr, replacing: bool) -> Result<tokio::net::TcpListener> {
    let context = || format!("cannot serve metrics on {addr} (--metrics)");
    match std::net::TcpListener::bind(addr) {
        Ok(_free) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && replacing => {}
        Err(e) => return Err(e).with_context(context),
    }
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .with_context(context)?;
    socket.set_reuseaddr(true).with_context(context)?;
    socket.set_reuseport(true).with_context(context)?;
    match socket.bind(addr) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(e).with_context(|| {
                format!(
                    "cannot serve metrics on {addr} (--metrics): a process that does not share it holds it, \
                     a tcp-guard daemon from before metrics addresses were handed over or another program; \
                     to upgrade from such a daemon, let it hand over without --replace (`systemctl kill -s \
                     SIGUSR2 tcp-guard@IFACE`, and the service starts the new one), or serve metrics on \
                     another address"
                )
            });
        }
        Err(e) => return Err(e).with_context(context),
    }
    socket.listen(1024).with_context(context)
}
