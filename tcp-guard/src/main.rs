//! `tcp-guard`: the daemon and its command-line interface.

use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use tcp_guard::{
    attach::{self, Mode},
    control::{self, Cidr, Instance},
    cookies,
    daemon::{self, RunOptions, SettingsSource},
    flows::{self, FlowTables, monotonic_now_ns},
    instance::{Claim, InstanceLock},
    monitor::Reader,
    pidfd::DaemonProcess,
    settings::{self, MAX_TABLE_SIZE, PortPolicy, Settings},
    stats,
};
use tcp_guard_common::{
    config::TableSizes,
    flow::TcpState,
    maps,
    policy::{ALLOW_BY_OPERATOR, BlockEntry},
};

#[cfg(test)]
mod cli_fuzz;

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\neBPF programs built with ",
    env!("TCP_GUARD_EBPF_TOOLCHAIN")
);

/// SYN-flood guard for Linux hosts: an XDP fast path that tracks every TCP
/// flow and enforces half-open limits, and the controller that runs it.
///
/// A running instance keeps its state in pinned BPF maps under
/// /sys/fs/bpf/tcp-guard/<IFACE>/; every other command reads or changes
/// that state directly, as root. `stats`, `flows` and `top` also run as a
/// member of the monitoring group (`access.monitor_group`,
/// tcp-guard-monitor by default): they ask the daemon. Exit codes: 0
/// success, 1 error, 2 bad command line, 3 invalid configuration (`check`).
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

#[derive(Args)]
struct Target {
    /// Interface of the instance; may be left out when only one runs.
    #[arg(long, short, value_parser = tcp_guard::instance::valid_name)]
    iface: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Load the programs, attach them to an interface and enforce until
    /// SIGINT or SIGTERM, then detach and remove the pinned state. SIGHUP
    /// reloads the configuration. Serves `stats`, `flows` and `top` to the
    /// monitoring group at /run/tcp-guard-monitor/<IFACE>.sock. Needs root.
    Run(RunArgs),
    /// Print the counters, flows per state, attack mode and table fill. Root
    /// reads the pinned maps; a member of the monitoring group gets the same
    /// from the daemon, as it gathered them at most about a second before.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Print JSON (schema in docs/metrics.md).
        #[arg(long)]
        json: bool,
    },
    /// List tracked flows, like `ss -tan`: state, local and peer address, age.
    /// Root or a member of the monitoring group (see `stats`).
    Flows {
        #[command(flatten)]
        target: Target,
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
    /// Show or change the running limits, attack-mode settings and timeouts.
    Limits {
        #[command(subcommand)]
        action: LimitsAction,
    },
    /// The block list: all TCP from a listed source is dropped.
    Block {
        #[command(subcommand)]
        action: ListAction,
    },
    /// The allow list: listed sources bypass SYN limits and attack mode.
    Allow {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Check a config file with no instance running and without root: every
    /// section, key and value, and the rules that tie them together, as `run`
    /// and a reload read them. It does not resolve `attack.policy = auto` nor
    /// check a policy against the kernel settings: the daemon does, on the
    /// host it runs on, when it reads the file. Exit codes: 0 valid, 1 the
    /// file cannot be read, 3 the configuration is invalid.
    Check(CheckArgs),
    /// Ask the running daemon to re-read its configuration (as SIGHUP does),
    /// and report whether it accepted it and what changed. A refused reload
    /// exits 1 with the daemon's reason; the running configuration stays.
    Reload {
        #[command(flatten)]
        target: Target,
        /// Print JSON: {"iface", "reloaded", "changed", "error"}: changed
        /// {"KEY": {"from", "to"}} (values as `limits show --json` prints them)
        /// and error null, or, when the daemon refused or did not answer,
        /// reloaded false, changed {} and the error.
        #[arg(long)]
        json: bool,
    },
    /// Remove tcp-guard from an interface: stop its daemon if one runs, detach
    /// the programs, delete the pinned state (flows, blocks, counters).
    Detach {
        /// The interface.
        #[arg(long, short, value_parser = tcp_guard::instance::valid_name)]
        iface: String,
    },
    /// What is attached where: daemon, mode, since when, attack mode, limits.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live view: rates, half-open count, flows, attack mode, top sources,
    /// blocks, drops. Plain terminal, 80x24 is enough; q or Ctrl-C quits.
    /// Root or a member of the monitoring group (see `stats`).
    Top {
        #[command(flatten)]
        target: Target,
    },
    /// Print a shell completion script, e.g. `tcp-guard completions bash >
    /// /etc/bash_completion.d/tcp-guard`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `tcp-guard man | man -l -`.
    Man,
}

#[derive(Subcommand)]
enum LimitsAction {
    /// Every setting with its value, unit and meaning.
    Show {
        #[command(flatten)]
        target: Target,
        /// Print JSON: {"KEY": VALUE, ...}, values as `limits set` takes them.
        #[arg(long)]
        json: bool,
    },
    /// Change settings of the running instance at once, e.g.
    /// `limits set limits.per_source_half_open=10 attack.policy=verified-only`.
    /// Lasts until the next reload or restart, which read the config file.
    Set {
        #[command(flatten)]
        target: Target,
        /// KEY=VALUE pairs; keys as `limits show` lists them.
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ListAction {
    /// Add a source: an address or a CIDR (198.19.0.0/16, 2001:2::/48).
    Add {
        #[command(flatten)]
        target: Target,
        #[arg(value_parser = Cidr::parse)]
        cidr: Cidr,
        /// Block list only: remove the entry after this long (e.g. 10m, 2h; 1s to
        /// 365days); default never.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Remove an entry, given exactly as listed.
    Del {
        #[command(flatten)]
        target: Target,
        #[arg(value_parser = Cidr::parse)]
        cidr: Cidr,
    },
    /// Print the entries.
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The interface to guard (e.g. eth0).
    #[arg(long, short, value_parser = tcp_guard::instance::valid_name)]
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
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9966).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Have the kernel count the programs' run time while the daemon runs
    /// (for the metrics' tcp_guard_program_run_seconds_total). Costs two
    /// clock reads per packet; `sysctl kernel.bpf_stats_enabled=1` does the
    /// same for every BPF program on the host.
    #[arg(long)]
    bpf_stats: bool,
    /// Take over from the daemon running on this interface (an upgrade): it
    /// hands over (SIGUSR2) without detaching, and this one adopts the
    /// attached programs' links and the pinned state. Without a running
    /// daemon, pinned state left by one that died is adopted in any case.
    #[arg(long)]
    replace: bool,
    /// TOML config file. Default: /etc/tcp-guard/config.toml if it exists,
    /// else built-in defaults (see `tcp-guard limits show`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Set one setting, overriding the config file, e.g. --set limits.syn_rate=50; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// The group whose members may run `stats`, `flows` and `top` without
    /// root, through the daemon's socket; "" for root alone. Default:
    /// tcp-guard-monitor, if it exists [= access.monitor_group].
    #[arg(long, value_name = "GROUP", value_parser = parse_monitor_group)]
    monitor_group: Option<String>,
    /// Half-open (SYN-RECV) flows the flow table holds, e.g. 64Ki
    /// [= tables.max_half_open].
    #[arg(long, value_name = "COUNT", value_parser = parse_table_size)]
    max_half_open: Option<u32>,
    /// Room for all other flows in the flow table, e.g. 1Mi [= tables.max_flows].
    /// Half-open floods never take room from it.
    #[arg(long, value_name = "COUNT", value_parser = parse_table_size)]
    max_flows: Option<u32>,
    /// Idle time after which a flow in STATE is forgotten, as STATE=DURATION
    /// (e.g. syn_rcvd=30s) [= timeouts.STATE]; repeatable.
    #[arg(long = "timeout", value_name = "STATE=DURATION", value_parser = parse_timeout)]
    timeouts: Vec<String>,
}

#[derive(Args)]
struct CheckArgs {
    /// The TOML config file to check.
    #[arg(long, short, default_value = settings::DEFAULT_PATH)]
    config: PathBuf,
    /// A setting as `run --set` gives it, applied after the file, e.g.
    /// --set limits.syn_rate=50; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Print JSON: {"config", "valid", "settings", "error"}: settings
    /// {"KEY": VALUE, ...} as `limits show --json` prints them and error null,
    /// or, when invalid, settings null and the error.
    #[arg(long)]
    json: bool,
}

/// The exit code of `check` for a configuration that is invalid, apart from
/// 1 (it could not check) and 2 (clap: bad command line).
const EXIT_INVALID_CONFIG: i32 = 3;

/// An invalid configuration, as opposed to a failure to read or check it.
#[derive(Debug)]
struct InvalidConfig(anyhow::Error);

impl std::fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for InvalidConfig {}

/// A table size in human form (`64Ki`), 1 to [`MAX_TABLE_SIZE`].
fn parse_table_size(text: &str) -> Result<u32, String> {
    settings::parse_count(text)
        .filter(|n| (1..=u64::from(MAX_TABLE_SIZE)).contains(n))
        .map(|n| n as u32)
        .ok_or_else(|| {
            format!(
                "expected a table size from 1 to {} (such as 65536 or 64Ki)",
                settings::format_count(MAX_TABLE_SIZE.into())
            )
        })
}

/// Longest `block add --ttl`, as for automatic blocks (`blocking.block_ttl`).
/// Far longer ones would overflow the entry's expiry time in nanoseconds.
const MAX_BLOCK_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// `--ttl`: from 1s (0 would expire the entry at once) to [`MAX_BLOCK_TTL`].
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl =
        humantime::parse_duration(text).map_err(|e| format!("{e} (a duration such as 10m, 2h, 7days)"))?;
    if !(Duration::from_secs(1)..=MAX_BLOCK_TTL).contains(&ttl) {
        return Err("must be from 1s to 365days; leave --ttl out to block until `block del`".to_string());
    }
    Ok(ttl)
}

/// `--monitor-group NAME` as the setting `access.monitor_group=NAME`.
fn parse_monitor_group(group: &str) -> Result<String, String> {
    let assignment = format!("access.monitor_group={group}");
    Settings::default()
        .apply(std::slice::from_ref(&assignment), false)
        .map_err(|e| e.to_string())?;
    Ok(assignment)
}

/// `syn_rcvd=30s` (or `SYN-RECV=30s`) as the setting `timeouts.syn_rcvd=30s`.
fn parse_timeout(value: &str) -> Result<String, String> {
    let (state, duration) = value
        .split_once('=')
        .ok_or_else(|| format!("expected STATE=DURATION (e.g. syn_rcvd=30s), got {value:?}"))?;
    let state = flows::parse_state(state).map_err(|e| e.to_string())?;
    if state == TcpState::Closed {
        return Err("closed flows are removed at once; they have no timeout".to_string());
    }
    let assignment = format!("timeouts.{}={duration}", state.as_str());
    Settings::default()
        .apply(std::slice::from_ref(&assignment), false)
        .map_err(|e| e.to_string())?;
    Ok(assignment)
}

fn main() {
    // Like other command-line tools, end quietly when the reader of our
    // output goes away (`tcp-guard flows | head`) instead of panicking.
    // (`run` ignores it again: a daemon outlives the reader of its log.)
    // SAFETY: restores the default disposition of a signal; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Completions { .. } | Command::Man => Ok(()),
        // Before any thread starts: see mount_ns.
        _ => tcp_guard::mount_ns::leave_ip_netns_exec(),
    }
    .and_then(|()| dispatch(cli.command));
    if let Err(error) = result {
        let message = format!("error: {error:#}");
        if tcp_guard::journald::stderr_is_journal() {
            eprint!(
                "{}",
                tcp_guard::journald::prefix_lines(tcp_guard::journald::priority(log::Level::Error), &message)
            );
        } else {
            eprintln!("{message}");
        }
        std::process::exit(if error.is::<InvalidConfig>() {
            EXIT_INVALID_CONFIG
        } else {
            1
        });
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => run(args),
        Command::Stats { target, json } => print_stats(target.iface.as_deref(), json),
        Command::Flows {
            target,
            state,
            limit,
            json,
        } => print_flows(target.iface.as_deref(), state, limit, json),
        Command::Limits { action } => limits(action),
        Command::Block { action } => list(maps::BLOCK, action),
        Command::Allow { action } => list(maps::ALLOW, action),
        Command::Check(args) => check(args),
        Command::Reload { target, json } => reload(target.iface.as_deref(), json),
        Command::Detach { iface } => detach(&iface),
        Command::Status { json } => status(json),
        Command::Top { target } => {
            let (iface, reader) = Reader::open("tcp-guard top", target.iface.as_deref())?;
            tcp_guard::top::run(&iface, &reader)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tcp-guard", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("cannot write the manual page"),
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if tcp_guard::journald::stderr_is_journal() {
        builder.format(|out, record| {
            let text = record.args().to_string();
            let prefix = tcp_guard::journald::priority(record.level());
            write!(out, "{}", tcp_guard::journald::prefix_lines(prefix, &text))
        });
    } else {
        builder.format_timestamp_millis();
    }
    builder.init();
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (it loads BPF programs and attaches them to interfaces); run it with sudo");
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    require_root("tcp-guard run")?;
    let mut overrides = Vec::new();
    if let Some(n) = args.max_half_open {
        overrides.push(format!("tables.max_half_open={n}"));
    }
    if let Some(n) = args.max_flows {
        overrides.push(format!("tables.max_flows={n}"));
    }
    overrides.extend(args.timeouts);
    overrides.extend(args.monitor_group);
    overrides.extend(args.sets);
    if let Some(path) = &args.config
        && !path.exists()
    {
        bail!("config file {} does not exist", path.display());
    }
    daemon::run(RunOptions {
        iface: args.iface,
        mode: args.mode,
        egress: !args.no_egress,
        replace: args.replace,
        metrics: args.metrics,
        bpf_stats: args.bpf_stats,
        settings: SettingsSource {
            file: args.config,
            overrides,
        },
    })
}

fn check(args: CheckArgs) -> Result<()> {
    let path = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("cannot read config {path}"))?;
    let mut settings = Settings::default();
    let checked = settings
        .load_text(&args.config, &text)
        .and_then(|()| settings.apply(&args.sets, false).context("in --set"));
    match checked {
        Ok(()) if args.json => println!(
            "{}",
            serde_json::json!({ "config": path, "valid": true, "settings": settings_json(&settings), "error": null })
        ),
        Ok(()) => println!("{path}: valid"),
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "config": path, "valid": false, "settings": null, "error": format!("{e:#}") })
                );
            }
            return Err(InvalidConfig(e).into());
        }
    }
    Ok(())
}

fn print_stats(iface: Option<&str>, json: bool) -> Result<()> {
    let (iface, reader) = Reader::open("tcp-guard stats", iface)?;
    let sample = reader.stats()?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", sample.to_json(&iface))?;
    } else {
        write!(out, "{}", sample.to_text(&iface))?;
    }
    Ok(())
}

fn print_flows(iface: Option<&str>, state: Option<TcpState>, limit: Option<usize>, json: bool) -> Result<()> {
    let (iface, reader) = Reader::open("tcp-guard flows", iface)?;
    let rows = reader.flows(state, limit)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", flows::rows_to_json(&iface, &rows))?;
    } else {
        write!(out, "{}", flows::rows_to_text(&rows))?;
    }
    Ok(())
}

/// The running settings: the live CONFIG, the table sizes and the list
/// entries from the config.
fn running_settings(instance: &Instance) -> Result<Settings> {
    let gauges = FlowTables::open(instance.dir())?.gauges()?;
    let live = instance.config()?;
    Ok(Settings {
        live,
        tables: TableSizes {
            half_open: gauges.half_open_max,
            flows: gauges.flow_max,
        },
        lists: instance.config_lists()?,
        ports: instance.port_policies(&live)?,
        // The daemon's alone, in no map: nothing shown from here names it.
        access: Default::default(),
    })
}

fn limits(action: LimitsAction) -> Result<()> {
    match action {
        LimitsAction::Show { target, json } => {
            let (_, instance) = Instance::resolve(target.iface.as_deref())?;
            let settings = running_settings(&instance)?;
            if json {
                println!("{}", settings_json(&settings));
            } else {
                print!("{}", settings.to_text());
                for policy in &settings.ports {
                    println!("ports {}: {}", policy.ports_text(), policy.settings_text());
                }
            }
        }
        LimitsAction::Set { target, assignments } => {
            let (iface, instance) = Instance::resolve(target.iface.as_deref())?;
            let mut settings = running_settings(&instance)?;
            settings.apply(&assignments, true)?;
            let chosen = cookies::check_policy(&mut settings.live)?;
            instance.set_config(&settings.live)?;
            instance.follow_global(&settings.ports, &settings.live)?;
            println!(
                "{iface}: set {}; in force now, until the next reload or restart",
                assignments.join(" ")
            );
            if let Some(chosen) = chosen {
                println!("{iface}: {chosen}");
            }
        }
    }
    Ok(())
}

fn list(map: &str, action: ListAction) -> Result<()> {
    let name = if map == maps::BLOCK { "block" } else { "allow" };
    match action {
        ListAction::Add { target, cidr, ttl } => {
            let (iface, instance) = Instance::resolve(target.iface.as_deref())?;
            if map == maps::BLOCK {
                instance.block(&cidr, ttl, BlockEntry::MANUAL)?;
            } else if ttl.is_some() {
                bail!("--ttl applies to the block list only");
            } else {
                instance.allow(&cidr, ALLOW_BY_OPERATOR)?;
            }
            let until = ttl.map_or(String::new(), |t| {
                format!(" for {}", humantime::format_duration(t))
            });
            println!("{iface}: {cidr} added to the {name} list{until}");
        }
        ListAction::Del { target, cidr } => {
            let (iface, instance) = Instance::resolve(target.iface.as_deref())?;
            instance.unlist(map, &cidr)?;
            println!("{iface}: {cidr} removed from the {name} list");
        }
        ListAction::List { target, json } => {
            let (iface, instance) = Instance::resolve(target.iface.as_deref())?;
            let now = monotonic_now_ns();
            if map == maps::BLOCK {
                let blocks = instance.blocks()?;
                if json {
                    println!("{}", control::blocks_to_json(&iface, &blocks, now));
                } else {
                    print!("{}", control::blocks_to_text(&blocks, now));
                }
            } else {
                let allows = instance.allows()?;
                if json {
                    println!("{}", control::allows_to_json(&iface, &allows));
                } else {
                    print!("{}", control::allows_to_text(&allows));
                }
            }
        }
    }
    Ok(())
}

/// Every setting as `limits show --json` prints it, and under "ports" the
/// `[[ports]]` policies: `[{"ports": ["22"], "settings": {"limits.syn_rate": 20}}]`.
fn settings_json(settings: &Settings) -> serde_json::Value {
    let mut json = settings.to_json();
    json["ports"] = settings.ports.iter().map(|p| p.to_json()).collect();
    json
}

/// Settings whose values differ: {"KEY": {"from", "to"}}; the lists as
/// arrays of CIDRs; the `[[ports]]` policies as a whole.
fn changed_settings(before: &Settings, after: &Settings) -> serde_json::Map<String, serde_json::Value> {
    let after_json = after.to_json();
    let mut changed = serde_json::Map::new();
    if let serde_json::Value::Object(before) = before.to_json() {
        for (key, from) in before {
            let to = &after_json[&key];
            if from != *to {
                changed.insert(key, serde_json::json!({ "from": from, "to": to }));
            }
        }
    }
    for (key, from, to) in [
        ("lists.allow", &before.lists.allow, &after.lists.allow),
        ("lists.block", &before.lists.block, &after.lists.block),
    ] {
        if from != to {
            let cidrs = |list: &[Cidr]| list.iter().map(Cidr::to_string).collect::<Vec<_>>();
            changed.insert(
                key.to_string(),
                serde_json::json!({ "from": cidrs(from), "to": cidrs(to) }),
            );
        }
    }
    if before.ports != after.ports {
        let policies = |ports: &[PortPolicy]| ports.iter().map(|p| p.to_json()).collect::<Vec<_>>();
        changed.insert(
            "ports".to_string(),
            serde_json::json!({ "from": policies(&before.ports), "to": policies(&after.ports) }),
        );
    }
    changed
}

/// A setting's value as `limits show` prints it: strings without quotes.
fn plain(value: &serde_json::Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

fn reload(iface: Option<&str>, json: bool) -> Result<()> {
    let (iface, instance) = Instance::resolve(iface)?;
    let info = instance.info()?;
    let pid = info.pid;
    let counts = (info.reloads, info.reloads_refused);
    // What ran before, to say what the reload changed (`limits set` changes undone too).
    let before = running_settings(&instance)?;
    DaemonProcess::open(&iface, pid)?.signal(libc::SIGHUP)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let error = loop {
        let now = instance.info()?;
        if now.reloads > counts.0 {
            let changed = changed_settings(&before, &running_settings(&instance)?);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "iface": iface, "reloaded": true, "changed": changed, "error": null })
                );
            } else if changed.is_empty() {
                println!("{iface}: configuration reloaded; no setting changed");
            } else {
                println!("{iface}: configuration reloaded; changed:");
                for (key, change) in &changed {
                    println!("  {key}: {} -> {}", plain(&change["from"]), plain(&change["to"]));
                }
            }
            return Ok(());
        }
        if now.reloads_refused > counts.1 {
            break match tcp_guard::instance::reload_error(&iface)? {
                Some(reason) => {
                    format!("the daemon refused the new configuration and kept the running one: {reason}")
                }
                None => "the daemon refused the new configuration and kept the running one; its log says why"
                    .to_string(),
            };
        }
        if Instant::now() >= deadline {
            break format!("the daemon (pid {pid}) did not answer the reload within 5 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "iface": iface, "reloaded": false, "changed": {}, "error": error })
        );
    }
    bail!("{iface}: {error}")
}

fn detach(iface: &str) -> Result<()> {
    require_root("tcp-guard detach")?;
    if !tcp_guard::instance::dir(iface).exists() {
        bail!(
            "tcp-guard is not attached to {iface} (nothing at {})",
            tcp_guard::instance::dir(iface).display()
        );
    }
    match InstanceLock::try_claim(iface)? {
        Claim::Busy => {
            let info = Instance::new(tcp_guard::instance::dir(iface)).info()?;
            DaemonProcess::open(iface, info.pid)?.signal(libc::SIGTERM)?;
            let deadline = Instant::now() + Duration::from_secs(15);
            while tcp_guard::instance::dir(iface).exists() {
                if Instant::now() > deadline {
                    bail!(
                        "the daemon (pid {}) did not detach from {iface} within 15 s",
                        info.pid
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            println!(
                "{iface}: stopped the tcp-guard daemon (pid {}), which detached",
                info.pid
            );
        }
        Claim::Claimed(lock) => {
            for link in [attach::XDP_LINK, attach::TC_LINK] {
                attach::detach_pinned(&lock.path(link))?;
            }
            lock.remove_all()?;
            tcp_guard::instance::clear_reload_error(iface)?;
            tcp_guard::monitor::remove(iface)?;
            println!("{iface}: detached (no daemon was running) and removed the pinned state");
            // A daemon killed during attack mode leaves them changed.
            match tcp_guard::sysctls::Manager::for_this_netns(iface)?.release()? {
                tcp_guard::sysctls::Change::Restored { from, to } => {
                    println!("{iface}: restored the kernel settings it had changed: {from} -> {to}")
                }
                tcp_guard::sysctls::Change::LeftAlone { found, now } => println!(
                    "{iface}: left the kernel settings as they are ({now}): changed by someone else since \
                     tcp-guard found {found}"
                ),
                tcp_guard::sysctls::Change::None | tcp_guard::sysctls::Change::Set { .. } => {}
            }
        }
    }
    Ok(())
}

/// One instance as `status` shows it.
struct Snapshot {
    info: control::DaemonInfo,
    /// The recorded daemon is alive and holds the instance's lock (a pid
    /// alone may belong to another process by now).
    running: bool,
    enforcement: stats::Enforcement,
    gauges: flows::Gauges,
    blocked: usize,
}

impl Snapshot {
    fn read(iface: &str, instance: &Instance) -> Result<Snapshot> {
        let info = instance.info()?;
        Ok(Snapshot {
            running: tcp_guard::pidfd::DaemonProcess::open(iface, info.pid).is_ok(),
            info,
            enforcement: stats::Enforcement::read(instance)?,
            gauges: FlowTables::open(instance.dir())?.gauges()?,
            blocked: instance.blocks()?.len(),
        })
    }

    fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::json!({
            "daemon": {
                "pid": self.info.pid,
                "running": self.running,
                "tick_errors": self.info.tick_errors,
            },
            "mode": self.info.mode.to_string(),
            "egress": self.info.egress,
            "started_unix": self.info.started_unix,
            "flows": self.gauges.half_open_entries + self.gauges.flow_entries,
            "blocked": self.blocked,
        });
        if let (Some(all), serde_json::Value::Object(extra)) =
            (value.as_object_mut(), self.enforcement.to_json())
        {
            all.extend(extra);
        }
        value
    }

    fn to_text(&self, iface: &str) -> String {
        let info = &self.info;
        let since =
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(info.started_unix));
        let daemon = if self.running {
            format!("running (pid {})", info.pid)
        } else {
            format!(
                "NO DAEMON (pid {} is gone, or holds the instance no more): the programs stay attached; 30 s after its last heartbeat they \
                 stand aside (no attack mode, no half-open limit: nothing would expire) and the kernel answers \
                 alone; restart tcp-guard to adopt the state, or `tcp-guard detach --iface {iface}`",
                info.pid
            )
        };
        format!(
            "{iface}: {daemon}\n  XDP {} mode, egress {}, since {since}\n  {}\n  flows        {} (+{} half-open), blocked sources {}\n",
            info.mode,
            if info.egress { "on" } else { "off" },
            self.enforcement.to_text().trim_end().replace('\n', "\n  "),
            self.gauges.flow_entries,
            self.gauges.half_open_entries,
            self.blocked
        )
    }
}

fn status(json: bool) -> Result<()> {
    // One unreadable instance (one starting up, say) does not hide the others.
    let entries: Vec<(String, Result<Snapshot>)> = tcp_guard::instance::list()?
        .into_iter()
        .map(|iface| {
            let snapshot = Snapshot::read(&iface, &Instance::new(tcp_guard::instance::dir(&iface)));
            (iface, snapshot)
        })
        .collect();
    if json {
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|(iface, snapshot)| {
                let mut value = match snapshot {
                    Ok(snapshot) => snapshot.to_json(),
                    Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
                };
                value["iface"] = serde_json::json!(iface);
                value
            })
            .collect();
        println!("{}", serde_json::json!({ "instances": list }));
        return Ok(());
    }
    if entries.is_empty() {
        println!("tcp-guard is not attached anywhere");
    }
    for (iface, snapshot) in entries {
        match snapshot {
            Ok(snapshot) => print!("{}", snapshot.to_text(&iface)),
            Err(e) => println!("{iface}: cannot read its state: {e:#}"),
        }
    }
    Ok(())
}
