//! Prometheus metrics of an instance: `run --metrics ADDR` serves them at
//! `/metrics`, from the figures the daemon's control loop gathered last.
//! Every counter comes from the one `Counter` list; families with a
//! dimension (drops by reason, packets by class, ...) become labels.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tcp_guard_common::{
    flow::TcpState,
    maps,
    policy::Rule,
    stats::{Counter, Stats},
};
use tokio::{io::AsyncWriteExt, sync::watch};

use crate::{
    connections::{AcceptFailures, Admission, read_request},
    control::Instance,
    flows::{FlowTables, Gauges},
    stats::{self, Enforcement},
};

/// How a counter is exported: metric name and, for families, a label.
fn family(counter: Counter) -> (&'static str, Option<(&'static str, &'static str)>) {
    let name = counter.as_str();
    let labelled = [
        ("drop_", "tcp_guard_drops_total", "reason"),
        ("would_drop_", "tcp_guard_would_drop_total", "reason"),
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
        "tcp_guard_would_drop_total",
        "Packets a rule in monitor mode would have dropped, by reason (passed).",
    ),
    (
        "tcp_guard_would_answer_with_cookie_total",
        "SYNs the attack policy in monitor mode would have answered with a cookie (passed).",
    ),
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

/// What a scrape serves: the figures of the control loop's last gathering.
pub struct Figures {
    pub stats: Stats,
    pub gauges: Gauges,
    pub enforcement: Enforcement,
    pub blocked: usize,
    /// Whether the kernel counts the `run_times` now.
    pub bpf_stats: bool,
    pub run_times: Vec<RunTime>,
    pub gathered: Instant,
}

impl Figures {
    /// Reads them from the instance's pins (the flow gauges walk both
    /// tables), for the programs with these kernel ids;
    /// `bpf_stats_held`: the daemon has the kernel count run time.
    pub fn gather(
        instance: &Instance,
        tables: &FlowTables,
        programs: &[(&'static str, u32)],
        bpf_stats_held: bool,
    ) -> Result<Figures> {
        Ok(Figures {
            stats: stats::read_pinned(&instance.dir().join(maps::STATS))?,
            gauges: tables.gauges()?,
            enforcement: Enforcement::read(instance)?,
            blocked: instance.blocks()?.len(),
            bpf_stats: bpf_stats_held || bpf_stats_sysctl()?,
            run_times: run_times(programs)?,
            gathered: Instant::now(),
        })
    }
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Whether the sysctl has the kernel count BPF run time. (Descriptors from
/// BPF_ENABLE_STATS, as `--bpf-stats` holds, do not show there.)
fn bpf_stats_sysctl() -> Result<bool> {
    let value = std::fs::read_to_string(BPF_STATS_SYSCTL)
        .with_context(|| format!("cannot read {BPF_STATS_SYSCTL}"))?;
    Ok(value.trim() != "0")
}

fn run_times(programs: &[(&'static str, u32)]) -> Result<Vec<RunTime>> {
    let mut found = Vec::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("cannot list the kernel's BPF programs")?;
        if let Some((label, _)) = programs.iter().find(|(_, id)| *id == info.id()) {
            found.push(RunTime {
                program: label,
                runs: info.run_count(),
                nanoseconds: info.run_time().as_nanos() as u64,
            });
        }
    }
    Ok(found)
}

/// The exposition text for `iface`.
pub fn render(iface: &str, figures: &Figures) -> Result<String> {
    let Figures {
        stats,
        gauges,
        enforcement,
        blocked,
        bpf_stats,
        run_times,
        gathered,
    } = figures;
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
        enforcement.half_open_limit
    )?;
    gauge(&mut out, "tcp_guard_attack_mode", "1 while in attack mode.")?;
    writeln!(
        out,
        "tcp_guard_attack_mode{{iface=\"{iface}\"}} {}",
        u8::from(enforcement.attack.active != 0)
    )?;
    gauge(
        &mut out,
        "tcp_guard_monitor",
        "1 for each rule in monitor mode (monitor.*): it counts what it would drop and drops nothing.",
    )?;
    for rule in Rule::ALL.iter().filter(|r| **r != Rule::All) {
        writeln!(
            out,
            "tcp_guard_monitor{{iface=\"{iface}\",rule=\"{}\"}} {}",
            rule.as_str(),
            u8::from(enforcement.monitor & (*rule as u8 | Rule::All as u8) != 0)
        )?;
    }
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
        u8::from(*bpf_stats)
    )?;
    gauge(
        &mut out,
        "tcp_guard_figures_age_seconds",
        "Seconds since the daemon gathered these figures (about once a second while its control loop runs).",
    )?;
    writeln!(
        out,
        "tcp_guard_figures_age_seconds{{iface=\"{iface}\"}} {:.3}",
        gathered.elapsed().as_secs_f64()
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
        for run_time in run_times.iter() {
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

/// Connections waiting for their request line at once; the oldest of them
/// is closed to make room for a new one.
const WAITING: usize = 64;
/// How long a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Answers `GET /metrics` with the figures the control loop published last
/// (a scrape reads no map). Anyone who can reach the address may connect,
/// so: at most `WAITING` connections wait for their request at once (a new
/// one closes the oldest: idle clients cannot lock scrapers out, nor use up
/// the daemon's descriptors), each for at most `READ_TIMEOUT`. Errors go to
/// the log, not to the client.
pub async fn serve(listener: tokio::net::TcpListener, iface: String, figures: watch::Receiver<Arc<Figures>>) {
    let mut waiting = Admission::new(WAITING);
    let mut failures = AcceptFailures::default();
    loop {
        let Some(mut socket) = failures.take("metrics", listener.accept().await).await else {
            continue;
        };
        let iface = iface.clone();
        let figures = figures.clone();
        waiting.spawn(|place| async move {
            let read = read_request(&mut socket, b"\r\n", 4096, READ_TIMEOUT).await;
            drop(place);
            let request = match read {
                Ok(request) => request,
                Err(e) => {
                    log::debug!("metrics: cannot read a request: {e}");
                    return;
                }
            };
            let (status, body) = if request.starts_with(b"GET /metrics ") {
                let latest = figures.borrow().clone();
                match render(&iface, &latest) {
                    Ok(body) => ("200 OK", body),
                    // The details are for the operator, not for whoever connected.
                    Err(e) => {
                        log::error!("metrics: cannot render the figures: {e:#}");
                        (
                            "500 Internal Server Error",
                            "tcp-guard could not render its figures; its log says why\n".to_string(),
                        )
                    }
                }
            } else {
                ("404 Not Found", "tcp-guard serves /metrics only\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = socket.write_all(response.as_bytes()).await {
                log::warn!("metrics: cannot answer: {e}");
            }
        });
    }
}
