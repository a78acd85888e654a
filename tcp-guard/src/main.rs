//! `tcp-guard`: the daemon and its command-line interface.

use std::io::Write;

use anyhow::{Context, Result, bail};
use aya_log::EbpfLogger;
use clap::{Parser, Subcommand};
use std::time::Duration;

use tcp_guard::{
    attach::{self, Mode},
    flows::{self, FlowTables},
    instance::{self, InstanceLock},
    program, stats,
};
use tcp_guard_common::{
    config::{TableSizes, Timeouts},
    flow::TcpState,
    maps,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\neBPF programs built with ",
    env!("TCP_GUARD_EBPF_TOOLCHAIN")
);

/// SYN-flood guard for Linux hosts: an XDP fast path that classifies and
/// counts every TCP segment and tracks every TCP flow's state, and the
/// controller that runs it.
///
/// State of a running instance lives in pinned BPF maps under
/// /sys/fs/bpf/tcp-guard/<IFACE>/, so `stats` reads it directly.
#[derive(Parser)]
#[command(version, long_version = LONG_VERSION, propagate_version = true)]
struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG, if set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output (warnings and errors only).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the programs, attach them to an interface and run until SIGINT or
    /// SIGTERM, then detach and remove the pinned state. Needs root.
    Run(RunArgs),
    /// Print the counters, flows per state and table fill of a running instance.
    Stats {
        /// Interface of the instance; may be left out when only one runs.
        #[arg(long, short)]
        iface: Option<String>,
        /// Print JSON: {"iface", "counters": {NAME: N}, "flows": {STATE: N},
        /// "expired": {STATE: N}, "tables": {"half_open"|"flows": {"entries", "max"}}}.
        #[arg(long)]
        json: bool,
    },
    /// List tracked flows, like `ss -tan`: state, local and peer address, age.
    Flows {
        /// Interface of the instance; may be left out when only one runs.
        #[arg(long, short)]
        iface: Option<String>,
        /// Only flows in this state: an `ss` name (SYN-RECV, ESTAB, TIME-WAIT, ...)
        /// or the RFC name (syn_rcvd, established, ...), any case.
        #[arg(long, short, value_parser = flows::parse_state)]
        state: Option<TcpState>,
        /// Print at most N flows.
        #[arg(long, short = 'n')]
        limit: Option<usize>,
        /// Print JSON: {"iface", "flows": [{"state", "local", "peer", "age_secs", "idle_secs", "adopted"}]}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The interface to guard (e.g. eth0).
    #[arg(long, short)]
    iface: String,
    /// XDP attach mode.
    #[arg(long, short, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    /// Attach only the XDP (ingress) program. Without the egress program the
    /// host's SYN-ACKs, SYNs and FINs are not seen: flows go SYN-RECV ->
    /// ESTAB -> CLOSE-WAIT from the peer's segments alone, acknowledgement
    /// numbers are not checked, and host-initiated closes are not tracked.
    #[arg(long)]
    no_egress: bool,
    /// Capacity of the half-open flow table (SYN-SENT, SYN-RECV), in flows.
    #[arg(long, default_value_t = TableSizes::default().half_open,
          value_parser = clap::value_parser!(u32).range(1..=MAX_TABLE_SIZE))]
    max_half_open: u32,
    /// Capacity of the table of all other flows, in flows. Half-open floods
    /// never take room from it.
    #[arg(long, default_value_t = TableSizes::default().flows,
          value_parser = clap::value_parser!(u32).range(1..=MAX_TABLE_SIZE))]
    max_flows: u32,
    /// Idle time after which a flow in STATE is forgotten, as STATE=DURATION
    /// (e.g. syn_rcvd=30s, time_wait=1m); repeatable. Defaults: syn_sent=127s,
    /// syn_rcvd=63s, established=5days, fin_wait_1=120s, fin_wait_2=60s,
    /// close_wait=12h, closing=120s, last_ack=120s, time_wait=60s.
    #[arg(long = "timeout", value_name = "STATE=DURATION", value_parser = parse_timeout)]
    timeouts: Vec<(TcpState, Duration)>,
}

/// 16 Mi flows: about 2.5 GiB of kernel memory in one table.
const MAX_TABLE_SIZE: i64 = 1 << 24;

fn parse_timeout(value: &str) -> Result<(TcpState, Duration), String> {
    let (state, duration) = value
        .split_once('=')
        .ok_or_else(|| format!("expected STATE=DURATION (e.g. syn_rcvd=30s), got {value:?}"))?;
    let state = flows::parse_state(state).map_err(|e| e.to_string())?;
    if state == TcpState::Closed {
        return Err("closed flows are removed at once; they have no timeout".to_string());
    }
    let duration = humantime::parse_duration(duration).map_err(|e| {
        format!(
            "bad duration {duration:?} for {}: {e} (e.g. 30s, 5m, 2h)",
            state.as_str()
        )
    })?;
    if duration < Duration::from_secs(1) {
        return Err(format!("timeout for {} must be at least 1s", state.as_str()));
    }
    Ok((state, duration))
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Stats { iface, json } => print_stats(iface.as_deref(), json),
        Command::Flows {
            iface,
            state,
            limit,
            json,
        } => print_flows(iface.as_deref(), state, limit, json),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (it loads BPF programs and attaches them to interfaces); run it with sudo");
    }
    Ok(())
}

fn run(args: &RunArgs) -> Result<()> {
    require_root("tcp-guard run")?;
    let iface = args.iface.as_str();
    attach::if_index(iface)?;
    let sizes = TableSizes {
        half_open: args.max_half_open,
        flows: args.max_flows,
    };
    let mut timeouts = Timeouts::default();
    for (state, duration) in &args.timeouts {
        timeouts.set(*state, duration.as_secs());
    }

    let lock = InstanceLock::claim(iface)?;
    let mut ebpf = program::load(log::max_level(), sizes)?;
    for name in [maps::STATS, maps::HALF_OPEN, maps::FLOWS] {
        let pin = lock.path(name);
        ebpf.map(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))?
            .pin(&pin)
            .with_context(|| format!("cannot pin {name} at {}", pin.display()))?;
    }
    flows::create_expired(&instance::dir(iface))?;
    let tables = FlowTables::open(&instance::dir(iface))?;
    let logger = EbpfLogger::init(&mut ebpf).context("cannot read the eBPF programs' log ring")?;

    let (xdp_link, mode) = attach::attach_xdp(&mut ebpf, iface, args.mode)?;
    let egress_link = if args.no_egress {
        None
    } else {
        Some(attach::attach_tc_egress(&mut ebpf, iface)?)
    };
    log::info!(
        "guarding {iface} (XDP, {mode} mode; {}); counters: `tcp-guard stats --iface {iface}`, state in {}",
        if egress_link.is_some() {
            "TC egress"
        } else {
            "no egress program"
        },
        instance::dir(iface).display()
    );
    log::info!(
        "flow tables: {} half-open, {} others; timeouts: {}",
        sizes.half_open,
        sizes.flows,
        TcpState::STORED
            .iter()
            .map(|s| format!("{}={}s", s.as_str(), timeouts.get(*s)))
            .collect::<Vec<_>>()
            .join(" ")
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let signal_name = runtime.block_on(serve(logger, tables, timeouts))?;
    log::info!("{signal_name} received; detaching from {iface}");
    if let Some(link) = egress_link {
        attach::detach_tc_egress(&mut ebpf, link, iface)?;
    }
    attach::detach_xdp(&mut ebpf, xdp_link, iface)?;
    drop(lock);
    Ok(())
}

/// Forwards kernel-side log records and expires idle flows every second,
/// until SIGINT or SIGTERM; returns which.
async fn serve(
    logger: EbpfLogger<&'static dyn log::Log>,
    mut tables: FlowTables,
    timeouts: Timeouts,
) -> Result<&'static str> {
    // SAFETY: the logger owns the ring buffer's fd, which stays open and
    // unchanged for as long as the AsyncFd owns the logger.
    let mut logs = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("cannot poll the eBPF log ring")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok("SIGINT"),
            _ = terminate.recv() => return Ok("SIGTERM"),
            ready = logs.readable_mut() => {
                let mut guard = ready.context("polling the eBPF log ring failed")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = expiry.tick() => {
                let removed = tables.expire(&timeouts, flows::monotonic_now_ns())?;
                if removed > 0 {
                    log::debug!("expired {removed} idle flow(s)");
                }
            }
        }
    }
}

fn print_stats(iface: Option<&str>, json: bool) -> Result<()> {
    let iface = instance::resolve(iface)?;
    let dir = instance::dir(&iface);
    let counters = stats::read_pinned(&dir.join(maps::STATS))?;
    let gauges = FlowTables::open(&dir)?.gauges()?;
    let mut out = std::io::stdout().lock();
    if json {
        let mut value = stats::to_json(&iface, &counters);
        if let (Some(all), serde_json::Value::Object(extra)) =
            (value.as_object_mut(), flows::gauges_to_json(&gauges))
        {
            all.extend(extra);
        }
        writeln!(out, "{value}")?;
    } else {
        write!(
            out,
            "{}{}",
            stats::to_text(&iface, &counters),
            flows::gauges_to_text(&gauges)
        )?;
    }
    Ok(())
}

fn print_flows(iface: Option<&str>, state: Option<TcpState>, limit: Option<usize>, json: bool) -> Result<()> {
    let iface = instance::resolve(iface)?;
    let mut rows = FlowTables::open(&instance::dir(&iface))?.rows(flows::monotonic_now_ns())?;
    rows.retain(|r| state.is_none_or(|s| r.state == s));
    rows.truncate(limit.unwrap_or(usize::MAX));
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", flows::rows_to_json(&iface, &rows))?;
    } else {
        write!(out, "{}", flows::rows_to_text(&rows))?;
    }
    Ok(())
}
