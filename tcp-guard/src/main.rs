//! `tcp-guard`: the daemon and its command-line interface.

use std::io::Write;

use anyhow::{Context, Result, bail};
use aya_log::EbpfLogger;
use clap::{Parser, Subcommand};
use tcp_guard::{
    attach::{self, Mode},
    instance::{self, InstanceLock},
    program, stats,
};
use tcp_guard_common::maps;
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
/// counts every TCP segment, and the controller that runs it.
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
    Run {
        /// The interface to guard (e.g. eth0).
        #[arg(long, short)]
        iface: String,
        /// XDP attach mode.
        #[arg(long, short, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
    },
    /// Print the counters of a running instance.
    Stats {
        /// Interface of the instance; may be left out when only one runs.
        #[arg(long, short)]
        iface: Option<String>,
        /// Print JSON: {"iface": IFACE, "counters": {NAME: VALUE, ...}}.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Run { iface, mode } => run(&iface, mode),
        Command::Stats { iface, json } => print_stats(iface.as_deref(), json),
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

fn run(iface: &str, mode: Mode) -> Result<()> {
    require_root("tcp-guard run")?;
    attach::if_index(iface)?;
    let lock = InstanceLock::claim(iface)?;
    let mut ebpf = program::load(log::max_level())?;
    let stats_pin = lock.path(maps::STATS);
    ebpf.map(maps::STATS)
        .context("map STATS missing from the eBPF object")?
        .pin(&stats_pin)
        .with_context(|| format!("cannot pin STATS at {}", stats_pin.display()))?;
    let logger = EbpfLogger::init(&mut ebpf).context("cannot read the eBPF programs' log ring")?;

    let (link, mode) = attach::attach_xdp(&mut ebpf, iface, mode)?;
    log::info!(
        "guarding {iface} (XDP, {mode} mode); counters: `tcp-guard stats --iface {iface}`, state in {}",
        instance::dir(iface).display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let signal_name = runtime.block_on(serve(logger))?;
    log::info!("{signal_name} received; detaching from {iface}");
    attach::detach_xdp(&mut ebpf, link, iface)?;
    drop(lock);
    Ok(())
}

/// Forwards kernel-side log records until SIGINT or SIGTERM; returns which.
async fn serve(logger: EbpfLogger<&'static dyn log::Log>) -> Result<&'static str> {
    // SAFETY: the logger owns the ring buffer's fd, which stays open and
    // unchanged for as long as the AsyncFd owns the logger.
    let mut logs = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("cannot poll the eBPF log ring")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok("SIGINT"),
            _ = terminate.recv() => return Ok("SIGTERM"),
            ready = logs.readable_mut() => {
                let mut guard = ready.context("polling the eBPF log ring failed")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    }
}

fn print_stats(iface: Option<&str>, json: bool) -> Result<()> {
    let iface = instance::resolve(iface)?;
    let counters = stats::read_pinned(&instance::dir(&iface).join(maps::STATS))?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", stats::to_json(&iface, &counters))?;
    } else {
        write!(out, "{}", stats::to_text(&iface, &counters))?;
    }
    Ok(())
}
