//! `tcp-guard run`: load, pin, attach, then run the enforcement loop until
//! SIGINT or SIGTERM. SIGHUP reloads the configuration.

use std::{
    collections::{BTreeMap, HashSet},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, RingBuf},
};
use aya_log::EbpfLogger;
use tcp_guard_common::{
    flow::TcpState,
    maps,
    policy::{
        ALLOW_BY_CONFIG, AttackChange, AttackDetector, AttackState, AttackTrigger, BlockEntry, Event,
        GuardConfig, ListenerLimit, Policy, Rule, SourceKey,
    },
    stats::Counter,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
    sync::watch,
};

use crate::{
    attach::{self, Mode},
    control::{self, Cidr, Instance, Origin},
    cookies,
    flows::{FlowTables, monotonic_now_ns},
    instance::{self, Claim, InstanceLock},
    listeners, metrics, monitor,
    pidfd::DaemonProcess,
    program,
    sd_notify::Notifier,
    settings::{self, Lists, PortPolicy, Settings},
    stats, sysctls,
};

/// The control loop's period. Expiry, automatic blocks and block expiry run
/// every second tick.
const TICK: Duration = Duration::from_millis(500);

/// Where the settings come from, so SIGHUP can read them again.
pub struct SettingsSource {
    /// An explicit `--config`; it must exist.
    pub file: Option<PathBuf>,
    /// `KEY=VALUE` from the command line, applied after the file.
    pub overrides: Vec<String>,
}

impl SettingsSource {
    pub fn resolve(&self) -> Result<Settings> {
        let mut settings = Settings::default();
        match &self.file {
            Some(path) => settings.load_file(path)?,
            None => {
                let default = PathBuf::from(settings::DEFAULT_PATH);
                if default.exists() {
                    settings.load_file(&default)?;
                }
            }
        }
        settings.apply(&self.overrides, false)?;
        Ok(settings)
    }

    fn describe(&self) -> String {
        match &self.file {
            Some(path) => path.display().to_string(),
            None if PathBuf::from(settings::DEFAULT_PATH).exists() => settings::DEFAULT_PATH.to_string(),
            None => "built-in defaults".to_string(),
        }
    }
}

pub struct RunOptions {
    pub iface: String,
    pub mode: Mode,
    pub egress: bool,
    /// Take over from a running daemon on the same interface.
    pub replace: bool,
    pub settings: SettingsSource,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    pub metrics: Option<std::net::SocketAddr>,
    /// Have the kernel count program run time while the daemon runs.
    pub bpf_stats: bool,
}

/// How the control loop ended.
enum Exit {
    /// SIGINT or SIGTERM: detach and remove everything.
    Stop(&'static str),
    /// SIGUSR2 (`run --replace` from a new daemon): leave the programs
    /// attached and the state pinned, for the new daemon to adopt.
    HandOver,
}

pub fn run(options: RunOptions) -> Result<()> {
    // Its stderr may be a pipe whose reader goes away (a log collector that
    // restarts): a failed write must not end the daemon. (main restores the
    // default for the other commands.)
    // SAFETY: sets the disposition of a signal; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Taken first: a signal during start-up then waits for the control loop,
    // which stops (detach, remove the pins) or hands over as it would later,
    // instead of killing a daemon whose programs are attached.
    let mut signals = {
        let _in_runtime = runtime.enter();
        Signals::hold()?
    };
    let mut notifier = Notifier::from_env();
    if let Some(period) = notifier.watchdog()
        && period < 2 * TICK
    {
        log::warn!(
            "the systemd watchdog expects a ping every {period:?}; the control loop pings every {TICK:?}, \
             so set WatchdogSec to at least {:?}",
            2 * TICK
        );
    }
    let iface = options.iface.as_str();
    attach::if_index(iface)?;
    let mut settings = options.settings.resolve()?;
    settings.live.egress = u8::from(options.egress);
    if let Some(chosen) = cookies::prepare(&mut settings.live, iface)? {
        log::info!("{chosen}");
    }
    port_configs(&settings.ports, &settings.live, iface)?;
    // What may fail is done before a running daemon is asked to hand over
    // and before anything is attached: a start that fails leaves the
    // interface as it found it.
    // Counting lasts while this descriptor is open, and ends with the daemon.
    let _bpf_stats = options
        .bpf_stats
        .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
        .transpose()
        .context("the kernel refused to count BPF program run time (--bpf-stats; needs Linux 5.8)")?;
    let metrics_listener = {
        let _in_runtime = runtime.enter();
        options
            .metrics
            .map(|addr| metrics::bind(addr, options.replace))
            .transpose()?
    };
    let Claimed { lock, ebpf, adopting } = claim(iface, &settings, options.replace)?;
    // The socket once the instance is this daemon's: a stale one is replaced.
    let readers = match monitor::bind(iface) {
        Ok(readers) => readers,
        Err(e) => {
            if !adopting {
                abandon(lock);
            }
            return Err(e);
        }
    };
    let started = monitor::grant(iface, &settings.access.monitor_group).and_then(|granted| {
        let started = start(
            &lock,
            ebpf,
            &settings,
            &options,
            adopting,
            metrics_listener.is_some(),
        )?;
        Ok((granted, started))
    });
    let (granted, (mut ebpf, logger, mut control)) = match started {
        Ok(started) => started,
        Err(e) => {
            if let Err(e) = monitor::remove(iface) {
                log::warn!("{e:#}");
            }
            // A fresh start that failed leaves nothing behind.
            if !adopting {
                abandon(lock);
            }
            return Err(e);
        }
    };
    signals.release()?;
    let exit = runtime.block_on(async {
        let readers = tokio::net::UnixListener::from_std(readers).with_context(|| {
            format!(
                "cannot serve readers at {}",
                monitor::socket_path(iface).display()
            )
        })?;
        tokio::spawn(monitor::serve(
            readers,
            iface.to_string(),
            control.instance.dir().to_path_buf(),
            control.figures.sender.subscribe(),
            control.figures.demand.clone(),
        ));
        control.readers = granted.describe(iface);
        log::info!("{}", control.readers);
        if let (Some(listener), Some(addr)) = (metrics_listener, options.metrics) {
            tokio::spawn(metrics::serve(
                listener,
                iface.to_string(),
                control.figures.sender.subscribe(),
            ));
            log::info!("serving Prometheus metrics at http://{addr}/metrics");
        }
        serve(
            logger,
            &mut ebpf,
            &mut control,
            &options.settings,
            &mut signals,
            &mut notifier,
        )
        .await
    });
    notifier.stopping();
    match exit {
        Ok(Exit::Stop(signal_name)) => {
            log::info!("{signal_name} received; detaching from {iface} and removing the pinned state");
            for link in [attach::XDP_LINK, attach::TC_LINK] {
                attach::detach_pinned(&lock.path(link))?;
            }
            drop(ebpf);
            control.release_sysctls()?;
            for cleared in [instance::clear_reload_error(iface), monitor::remove(iface)] {
                if let Err(e) = cleared {
                    log::warn!("{e:#}");
                }
            }
            lock.remove_all()
        }
        Ok(Exit::HandOver) => {
            log::info!(
                "handing {iface} over to a new daemon: the programs stay attached and the state pinned"
            );
            Ok(())
        }
        Err(e) => {
            log::error!(
                "the control loop failed; the fast path stays attached with the last limits \
                 (restart tcp-guard to adopt it, or `tcp-guard detach --iface {iface}`)"
            );
            Err(e)
        }
    }
}

/// The signals the daemon answers, registered at the very start of `run`.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    hand_over: Signal,
}

const HANDLED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR2];

impl Signals {
    /// Registers them (the runtime entered) and holds them pending until
    /// [`Signals::release`]: one that came during start-up would interrupt
    /// the kernel's verifier (it gives up with EAGAIN, and aya retries with
    /// ever larger logs, for seconds, or fails).
    fn hold() -> Result<Signals> {
        let signals = Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
            hand_over: signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?,
        };
        mask(libc::SIG_BLOCK)?;
        Ok(signals)
    }

    /// Delivers what came during start-up, to the control loop.
    fn release(&self) -> Result<()> {
        mask(libc::SIG_UNBLOCK)
    }
}

/// Blocks or unblocks the handled signals in this thread (the only one
/// during start-up; threads made meanwhile inherit the mask).
fn mask(how: i32) -> Result<()> {
    // SAFETY: sigset_t is plain data, filled by sigemptyset and sigaddset
    // with valid signal numbers, and read by pthread_sigmask.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in HANDLED {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc)).context("cannot mask the daemon's signals");
    }
    Ok(())
}

/// Removes what a fresh start made (links, pins, the directory); a failure
/// is logged, the error that ended the start is what the operator needs.
fn abandon(lock: InstanceLock) {
    let removed = [attach::XDP_LINK, attach::TC_LINK]
        .iter()
        .try_for_each(|link| attach::detach_pinned(&lock.path(link)).map(drop))
        .and_then(|()| lock.remove_all());
    if let Err(e) = removed {
        log::error!("cannot remove what the failed start made: {e:#}");
    }
}

/// An instance claimed, its programs loaded on its pinned maps (not
/// attached, the configuration not written yet).
struct Claimed {
    lock: InstanceLock,
    ebpf: Ebpf,
    /// Whether a previous daemon left its state pinned.
    adopting: bool,
}

/// Claims `iface`'s instance and loads the programs with its pinned maps,
/// after checking they fit. With `replace`, a daemon running there is
/// asked to hand over once this one has done so: until then it runs on.
fn claim(iface: &str, settings: &Settings, replace: bool) -> Result<Claimed> {
    let lock = if replace {
        match InstanceLock::try_claim(iface)? {
            Claim::Claimed(lock) => lock,
            Claim::Busy => return take_over(iface, settings),
        }
    } else {
        InstanceLock::claim(iface)?
    };
    let instance = Instance::new(instance::dir(iface));
    let adopting = lock.has_pins()?;
    let loaded = if adopting {
        check_adoptable(iface, &instance)
    } else {
        Ok(())
    }
    .and_then(|()| program::load_programs(log::max_level(), settings, Some(instance.dir())));
    match loaded {
        Ok(ebpf) => Ok(Claimed { lock, ebpf, adopting }),
        Err(e) => {
            if !adopting {
                abandon(lock);
            }
            Err(e)
        }
    }
}

/// Refuses pinned state this build cannot adopt: another layout, or maps
/// that are not what its programs expect.
fn check_adoptable(iface: &str, instance: &Instance) -> Result<()> {
    instance.check_layout()?;
    program::check_pinned(iface, instance.dir())
}

/// `run --replace` with a daemon running: checks the pinned state and loads
/// the programs on it while that daemon carries on, then asks it to hand
/// over (SIGUSR2) and claims the instance once it has exited.
fn take_over(iface: &str, settings: &Settings) -> Result<Claimed> {
    let instance = Instance::new(instance::dir(iface));
    let info = instance.info().with_context(|| {
        format!(
            "the daemon holding {} has not recorded itself yet (it may be starting up); try again in a moment",
            instance.dir().display()
        )
    })?;
    check_adoptable(iface, &instance)?;
    let ebpf = program::load_programs(log::max_level(), settings, Some(instance.dir()))?;
    let daemon = DaemonProcess::open(iface, info.pid)?;
    log::info!(
        "asking the tcp-guard daemon on {iface} (pid {}) to hand over",
        daemon.pid()
    );
    daemon.signal(libc::SIGUSR2)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Claim::Claimed(lock) = InstanceLock::try_claim(iface)? {
            if !lock.has_pins()? {
                // Stopped meanwhile instead (SIGTERM): it removed everything.
                if let Err(e) = lock.remove_all() {
                    log::error!("cannot remove {}: {e:#}", instance.dir().display());
                }
                bail!(
                    "the daemon on {iface} (pid {}) stopped and detached instead of handing over; \
                     start tcp-guard again",
                    daemon.pid()
                );
            }
            return Ok(Claimed {
                lock,
                ebpf,
                adopting: true,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "the daemon on {iface} (pid {}) did not hand over within 15 s; this one gives up and leaves it as it is",
        daemon.pid()
    )
}

/// Writes the configuration, attaches (adopting pinned links) and prepares
/// the control loop, which gathers the figures a scrape (with `metrics`)
/// and the monitoring socket serve.
fn start(
    lock: &InstanceLock,
    mut ebpf: Ebpf,
    settings: &Settings,
    options: &RunOptions,
    adopting: bool,
    metrics: bool,
) -> Result<(Ebpf, EbpfLogger<&'static dyn log::Log>, Control)> {
    let iface = options.iface.as_str();
    let instance = Instance::new(instance::dir(iface));
    program::write_config(&mut ebpf, &settings.live)?;
    let port_configs = port_configs(&settings.ports, &settings.live, iface)?;
    let port_index = settings::port_index(&settings.ports);
    instance.set_port_policies(&port_configs, &instance.port_index()?, &port_index)?;
    let logger = EbpfLogger::init(&mut ebpf).context("cannot read the eBPF programs' log ring")?;
    let events: RingBuf<MapData> = ebpf
        .take_map(maps::EVENTS)
        .context("map EVENTS missing from the eBPF object")?
        .try_into()
        .context("EVENTS is not a ring buffer")?;

    let ifindex = attach::if_index(iface)?;
    if let Ok(info) = instance.info()
        && adopting
        && info.ifindex != ifindex
    {
        log::warn!(
            "{iface} was created again since the last daemon attached to it (index {} then, {ifindex} now): \
             its pinned links went with the old one; attaching anew",
            info.ifindex
        );
        for link in [attach::XDP_LINK, attach::TC_LINK] {
            attach::detach_pinned(&lock.path(link))?;
        }
    }
    let (mode, xdp_adopted) =
        attach::attach_xdp_pinned(&mut ebpf, iface, options.mode, &lock.path(attach::XDP_LINK))?;
    let mode = if xdp_adopted {
        instance.info().map_or(mode, |info| info.mode)
    } else {
        mode
    };
    if options.egress {
        attach::attach_tc_pinned(&mut ebpf, iface, &lock.path(attach::TC_LINK))?;
    } else if attach::detach_pinned(&lock.path(attach::TC_LINK))? {
        log::info!("detached the egress program a previous instance left on {iface} (--no-egress)");
    }
    instance.create_info(mode, options.egress, ifindex)?;
    let tables = FlowTables::open(instance.dir())?;
    if adopting {
        let gauges = tables.gauges()?;
        let blocks = instance.blocks()?.len();
        log::info!(
            "adopted the state a previous instance pinned in {}: {} half-open and {} other flows, {blocks} \
             block(s), its counters; the new programs replaced the old in the attached links",
            instance.dir().display(),
            gauges.half_open_entries,
            gauges.flow_entries
        );
        if (gauges.half_open_max, gauges.flow_max) != (settings.tables.half_open, settings.tables.flows) {
            log::warn!(
                "the adopted flow tables keep their sizes ({} half-open, {} others); detach and restart to resize",
                gauges.half_open_max,
                gauges.flow_max
            );
        }
    }
    apply_lists(iface, &instance, &settings.lists)?;
    // Adopted lists may come without their marks (a pin removed by hand).
    instance.settle_lists()?;
    log::info!(
        "guarding {iface} (XDP, {mode} mode; {}); config from {}; state in {}",
        if options.egress {
            "TC egress"
        } else {
            "no egress program"
        },
        options.settings.describe(),
        instance.dir().display()
    );
    log_settings(settings);
    let sysctls = sysctls::Manager::for_this_netns(iface)?;
    let sysctls_held = sysctls.held()?;
    if sysctls_held {
        log::info!(
            "a previous daemon on {iface} left the kernel settings for cookies changed ({}); \
             they are restored once attack mode is over",
            sysctls.read()?
        );
    }
    let figures = {
        let programs = program::attached_ids(&ebpf, options.egress)?;
        let bpf_stats_held = options.bpf_stats;
        let first = metrics::Figures::gather(&instance, &tables, &programs, bpf_stats_held)?;
        FiguresOut {
            sender: watch::channel(Arc::new(first)).0,
            programs,
            bpf_stats_held,
            demand: Arc::new(monitor::Demand::new(metrics)),
        }
    };
    let control = Control {
        iface: iface.to_string(),
        ifindex: Some(ifindex),
        mode,
        figures,
        readers: String::new(),
        tables,
        instance,
        events,
        detector: AttackDetector::default(),
        last_syns: None,
        ticks: 0,
        running_tables: settings.tables,
        egress: settings.live.egress,
        sysctls,
        sysctls_held,
        cookies_ended: None,
        listener_limits: BTreeMap::new(),
        syn_queues: BTreeMap::new(),
        overflows: None,
        over_limit_logged: 0,
        over_limit_unlogged: 0,
        ports: settings.ports.clone(),
        port_index,
        port_configs,
    };
    Ok((ebpf, logger, control))
}

/// The configurations of the `[[ports]]` policies: `config` (the global
/// one, its policy resolved) with each policy's settings. A policy of its
/// own is checked as the global one is.
fn port_configs(ports: &[PortPolicy], config: &GuardConfig, iface: &str) -> Result<Vec<GuardConfig>> {
    ports
        .iter()
        .enumerate()
        .map(|(i, policy)| {
            let ours = policy.apply(config);
            if ours.policy != config.policy {
                cookies::prepare(&mut ours.clone(), iface)
                    .with_context(|| format!("ports[{i}] (ports {})", policy.ports_text()))?;
            }
            Ok(ours)
        })
        .collect()
}

/// Puts the config's `[lists]` on the allow and block lists, marked as from
/// the config (an entry added at runtime for the same CIDR becomes the
/// config's), and removes the config's entries the file no longer lists.
/// Entries added with `block add`/`allow add` and automatic blocks stay.
fn apply_lists(iface: &str, instance: &Instance, lists: &Lists) -> Result<()> {
    let blocks = instance
        .blocks()?
        .into_iter()
        .map(|(cidr, entry)| (cidr, Origin::of_block(&entry)))
        .collect();
    apply_list(iface, instance, maps::BLOCK, blocks, &lists.block, |cidr| {
        instance.block(cidr, None, BlockEntry::CONFIG)
    })?;
    apply_list(
        iface,
        instance,
        maps::ALLOW,
        instance.allows()?,
        &lists.allow,
        |cidr| instance.allow(cidr, ALLOW_BY_CONFIG),
    )
}

/// One list of [`apply_lists`]: `present` is what map `map` holds now.
fn apply_list(
    iface: &str,
    instance: &Instance,
    map: &str,
    present: Vec<(Cidr, Origin)>,
    wanted: &[Cidr],
    add: impl Fn(&Cidr) -> Result<()>,
) -> Result<()> {
    let list = if map == maps::BLOCK { "block" } else { "allow" };
    let wanted_set: HashSet<&Cidr> = wanted.iter().collect();
    let mut kept = HashSet::new();
    for (cidr, origin) in present {
        if origin != Origin::Config {
            continue;
        }
        if wanted_set.contains(&cidr) {
            kept.insert(cidr);
        } else {
            instance.unlist(map, &cidr)?;
            log::info!(
                "event=list_entry_removed iface={iface} list={list} source={cidr} (no longer in the config)"
            );
        }
    }
    for cidr in wanted.iter().filter(|cidr| !kept.contains(*cidr)) {
        add(cidr)?;
        log::info!("event=list_entry_added iface={iface} list={list} source={cidr} (from the config)");
    }
    Ok(())
}

fn log_settings(settings: &Settings) {
    for (name, value, _) in settings.describe() {
        log::debug!("setting {name} = {value}");
    }
    if settings.live.policy() == Policy::SynCookie {
        match cookies::TcpSettings::read() {
            Ok(tcp) => log::info!("{}", cookies::describe(&settings.live, &tcp)),
            Err(e) => log::warn!("{e:#}"),
        }
    }
    let c = &settings.live;
    for policy in &settings.ports {
        log::info!(
            "ports {}: {} (the rest as for every port)",
            policy.ports_text(),
            policy.settings_text()
        );
    }
    let monitored = stats::monitored_rules(c.monitor);
    if !monitored.is_empty() {
        log::warn!(
            "monitor mode for {}: what they would drop is counted (would_drop_* in stats and metrics) and passed",
            monitored.join(", ")
        );
    }
    log::info!(
        "limits: half-open {} global, {} per source, {} per /{} (v4) or /{} (v6), {} per port; \
         {} SYN/s per source (burst {}); attack mode ({}) at {} half-open or {} SYN/s; timeouts: {}",
        c.global_half_open,
        c.per_source_half_open,
        c.per_prefix_half_open,
        c.prefix_len_v4,
        c.prefix_len_v6,
        match c.per_port_half_open {
            GuardConfig::PER_PORT_AUTO => "as its listeners hold".to_string(),
            n => n.to_string(),
        },
        c.syn_rate,
        c.syn_burst,
        c.policy().as_str(),
        c.attack_enter_half_open,
        c.attack_enter_syn_rate,
        TcpState::STORED
            .iter()
            .map(|s| format!("{}={}s", s.as_str(), c.timeout_secs(*s)))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// Forwards kernel log records and runs the control loop until SIGINT,
/// SIGTERM or SIGUSR2 (also those that came during start-up); SIGHUP reloads.
async fn serve(
    logger: EbpfLogger<&'static dyn log::Log>,
    ebpf: &mut Ebpf,
    control: &mut Control,
    source: &SettingsSource,
    signals: &mut Signals,
    notifier: &mut Notifier,
) -> Result<Exit> {
    // SAFETY: the logger owns the ring buffer's fd, which stays open and
    // unchanged for as long as the AsyncFd owns the logger.
    let mut logs = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("cannot poll the eBPF log ring")?;
    // SAFETY: the events ring's fd is owned by `control`, which outlives
    // this poll and keeps the fd open and unchanged.
    let events = unsafe {
        AsyncFd::register_with_interest(RawFdOf(control.events.as_raw_fd()), tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
    .context("cannot poll the events ring")?;
    let mut tick = tokio::time::interval(TICK);
    let mut failing = Backoff::default();
    let status = format!("guarding {} (XDP, {} mode)", control.iface, control.mode);
    notifier.ready(&status);
    loop {
        tokio::select! {
            _ = signals.interrupt.recv() => return Ok(Exit::Stop("SIGINT")),
            _ = signals.terminate.recv() => return Ok(Exit::Stop("SIGTERM")),
            _ = signals.hand_over.recv() => return Ok(Exit::HandOver),
            _ = signals.hangup.recv() => {
                notifier.reloading();
                control.reload(source);
                notifier.ready(&status);
            }
            ready = logs.readable_mut() => {
                let mut guard = ready.context("polling the eBPF log ring failed")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            ready = events.readable() => {
                ready.context("polling the events ring failed")?.clear_ready();
                if let Err(e) = control.on_events() {
                    control.instance.note_tick_error();
                    failing.failed(&control.iface, &e);
                }
            }
            _ = tick.tick() => {
                // Whatever else fails: the fast path trusts a daemon that beats.
                if let Err(e) = control.instance.beat() {
                    log::error!("event=heartbeat_failed iface={}: {e:#}", control.iface);
                }
                // The loop runs, even if its round fails: the watchdog is
                // there to catch a loop that hangs.
                notifier.watchdog_ping();
                if failing.due() {
                    match control.tick(ebpf) {
                        Ok(()) => failing.recovered(&control.iface),
                        Err(e) => {
                            control.instance.note_tick_error();
                            failing.failed(&control.iface, &e);
                        }
                    }
                }
            }
        }
    }
}

/// After a control-loop round fails, the daemon carries on: the fast path
/// keeps enforcing, and the next rounds are tried less and less often (up
/// to every 32 s) until one succeeds. (A full block list, running out of
/// file descriptors or a pin removed by hand once ended the daemon.)
#[derive(Default)]
struct Backoff {
    /// Rounds failed in a row.
    failures: u32,
    /// Ticks to skip before the next try.
    skip: u32,
}

impl Backoff {
    fn due(&mut self) -> bool {
        if self.skip == 0 {
            return true;
        }
        self.skip -= 1;
        false
    }

    fn failed(&mut self, iface: &str, error: &anyhow::Error) {
        self.failures += 1;
        self.skip = (1u32 << self.failures.min(6)) - 1;
        log::error!(
            "event=tick_failed iface={iface} failures_in_a_row={} next_try_in={}ms: {error:#}",
            self.failures,
            (u64::from(self.skip) + 1) * TICK.as_millis() as u64
        );
    }

    fn recovered(&mut self, iface: &str) {
        if self.failures > 0 {
            log::warn!(
                "event=tick_recovered iface={iface} after {} failed round(s)",
                self.failures
            );
        }
        *self = Backoff::default();
    }
}

/// A descriptor owned elsewhere (the events ring, owned by `Control`, which
/// outlives the poll).
struct RawFdOf(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for RawFdOf {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Where the control loop puts the figures the metrics endpoint and the
/// monitoring socket serve.
struct FiguresOut {
    sender: watch::Sender<Arc<metrics::Figures>>,
    /// Kernel ids of the attached programs, for their run times.
    programs: Vec<(&'static str, u32)>,
    /// Whether `--bpf-stats` has the kernel count run time.
    bpf_stats_held: bool,
    /// Whether they are gathered: always with `--metrics`, else while the
    /// monitoring socket's readers ask.
    demand: Arc<monitor::Demand>,
}

struct Control {
    iface: String,
    /// The interface's index while it exists (None: it is gone).
    ifindex: Option<u32>,
    /// The XDP mode in use.
    mode: Mode,
    figures: FiguresOut,
    /// Who may read through the monitoring socket, as last logged.
    readers: String,
    instance: Instance,
    tables: FlowTables,
    events: RingBuf<MapData>,
    detector: AttackDetector,
    /// SYN counter and when it was read, for the SYN rate.
    last_syns: Option<(u64, Instant)>,
    ticks: u64,
    running_tables: tcp_guard_common::config::TableSizes,
    /// `GuardConfig::egress` of this daemon, kept across reloads.
    egress: u8,
    /// The kernel settings the fast path's cookies need (see sysctls).
    sysctls: sysctls::Manager,
    /// Whether this interface holds them changed (a daemon before this one
    /// may have left it so).
    sysctls_held: bool,
    /// When the fast path was last seen to stop answering cookies.
    cookies_ended: Option<Instant>,
    /// What `LISTENER_LIMITS` holds, by port (ports not here hold zeroes).
    listener_limits: BTreeMap<u16, ListenerLimit>,
    /// The kernel's SYN queue per port at the last tick.
    syn_queues: BTreeMap<u16, u32>,
    /// The kernel's overflow counters at the last tick.
    overflows: Option<KernelOverflows>,
    /// Sources over their limits logged one by one this second, and not.
    over_limit_logged: u32,
    over_limit_unlogged: u64,
    /// The config's `[[ports]]` policies, which port follows which
    /// (`PORT_POLICY`), and their configurations as last written.
    ports: Vec<PortPolicy>,
    port_index: Vec<u8>,
    port_configs: Vec<GuardConfig>,
}

/// Sources over their limits logged one by one a second: a spoofed flood
/// can put thousands over, which would trip journald's rate limit and hide
/// the lines that matter.
const OVER_LIMIT_LINES: u32 = 10;

/// The kernel's own signs that a listener's queue overflowed, from
/// /proc/net/netstat (of the daemon's network namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KernelOverflows {
    listen_overflows: u64,
    listen_drops: u64,
    syncookies_sent: u64,
    /// net.ipv4.tcp_syncookies when they were read.
    syncookies: u32,
}

impl KernelOverflows {
    fn read(syncookies: u32) -> Result<KernelOverflows> {
        let text = std::fs::read_to_string("/proc/net/netstat").context("cannot read /proc/net/netstat")?;
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            bail!("/proc/net/netstat has no TcpExt lines");
        };
        let field = |name: &str| -> Result<u64> {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.parse().ok())
                .with_context(|| format!("/proc/net/netstat has no TcpExt {name}"))
        };
        Ok(KernelOverflows {
            listen_overflows: field("ListenOverflows")?,
            listen_drops: field("ListenDrops")?,
            syncookies_sent: field("SyncookiesSent")?,
            syncookies,
        })
    }

    /// What rose since `before`, in words. Cookies the kernel sends count
    /// only where it sends them on overflow alone (`tcp_syncookies` 1, then
    /// and now): with 2 it answers every SYN that way.
    fn rose_since(&self, before: &KernelOverflows) -> Option<String> {
        let mut rose = Vec::new();
        for (name, now, then) in [
            ("ListenOverflows", self.listen_overflows, before.listen_overflows),
            ("ListenDrops", self.listen_drops, before.listen_drops),
        ] {
            if now > then {
                rose.push(format!("{name}+{}", now - then));
            }
        }
        if self.syncookies == 1 && before.syncookies == 1 && self.syncookies_sent > before.syncookies_sent {
            rose.push(format!(
                "SyncookiesSent+{}",
                self.syncookies_sent - before.syncookies_sent
            ));
        }
        (!rose.is_empty()).then(|| rose.join(" "))
    }
}

/// How long the settings cookies need stay after attack mode ends: the ACKs
/// of the last cookies answered are still on their way.
const SYSCTL_GRACE: Duration = Duration::from_secs(10);

impl Control {
    fn tick(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.ticks += 1;
        let config = self.instance.config()?;
        let now = monotonic_now_ns();
        let filling_queues = self.update_listener_limits(&config)?;
        self.detect_attack(&config, now, filling_queues)?;
        self.drain_events();
        self.follow_port_configs(&config)?;
        self.steer_cookies(&config)?;
        if self.ticks.is_multiple_of(2) {
            // First, as the steps below may fail (an unmarked list that
            // holds an entry goes unenforced); its own failure is reported
            // after them, so that it stops neither expiry nor blocking.
            let settled = self.instance.settle_lists();
            let expire = program::expire_program(ebpf)?;
            let mut removed = 0;
            for key in self.tables.stale(&config, now)? {
                removed += u64::from(program::expire(expire, &key)?);
            }
            if removed > 0 {
                log::debug!("expired {removed} idle flow(s)");
            }
            self.block_offenders(&config)?;
            self.unblock_expired(now)?;
            self.summarize_over_limit();
            self.publish_figures()?;
            settled?;
        }
        if self
            .instance
            .turn_verified_generation(now, config.verified_ttl_secs)?
        {
            log::debug!(
                "verified sources: a new generation; those verified over attack.verified_ttl ago forgotten"
            );
        }
        if self.ticks.is_multiple_of(4) {
            monitor::open_dir()?;
            self.follow_the_interface(ebpf)?;
            self.follow_the_cookie_settings(&config)?;
        }
        Ok(())
    }

    /// An interface deleted and created again under the same name (a
    /// container's veth, a reloaded driver) loses the programs with the old
    /// one: attach to the new one, with the state the pins keep.
    fn follow_the_interface(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        let Ok(index) = attach::if_index(&self.iface) else {
            if self.ifindex.take().is_some() {
                log::warn!(
                    "{} is gone, and its programs with it; tcp-guard attaches again when it comes back",
                    self.iface
                );
            }
            return Ok(());
        };
        if self.ifindex == Some(index) {
            return Ok(());
        }
        let dir = self.instance.dir().to_path_buf();
        for link in [attach::XDP_LINK, attach::TC_LINK] {
            attach::detach_pinned(&dir.join(link))?;
        }
        let (mode, _) = attach::attach_xdp_pinned(ebpf, &self.iface, self.mode, &dir.join(attach::XDP_LINK))?;
        if self.egress != 0 {
            attach::attach_tc_pinned(ebpf, &self.iface, &dir.join(attach::TC_LINK))?;
        }
        self.instance.set_info_ifindex(index)?;
        self.ifindex = Some(index);
        log::warn!(
            "{} was created again (index {index}): attached to it anew ({mode} mode), with the state kept",
            self.iface
        );
        Ok(())
    }

    /// The MTU and the kernel's TCP settings that the cookie SYN-ACKs
    /// follow may change while the daemon runs: the cookie fields follow.
    fn follow_the_cookie_settings(&self, config: &GuardConfig) -> Result<()> {
        if self.ifindex.is_none() {
            return Ok(());
        }
        if let Some(fresh) = cookies::refreshed(config, &self.iface)? {
            self.instance.set_config(&fresh)?;
            log::info!(
                "the interface's MTU or the kernel's TCP settings changed: cookie SYN-ACKs now offer MSS {} \
                 (IPv4) / {} (IPv6), window scale {}, options {:#x} (was MSS {} / {}, window scale {}, options {:#x})",
                fresh.cookie_mss_v4,
                fresh.cookie_mss_v6,
                fresh.cookie_wscale,
                fresh.cookie_options,
                config.cookie_mss_v4,
                config.cookie_mss_v6,
                config.cookie_wscale,
                config.cookie_options
            );
        }
        Ok(())
    }

    /// Gathers the figures a scrape or `stats` through the monitoring
    /// socket serves: once a second, since the flow gauges walk both tables,
    /// and never for a reader, who may ask as often as they like; without
    /// `--metrics` only while readers ask. Last in the round: a failure here
    /// holds up nothing the fast path needs.
    fn publish_figures(&self) -> Result<()> {
        let out = &self.figures;
        if out.demand.wanted() {
            let figures =
                metrics::Figures::gather(&self.instance, &self.tables, &out.programs, out.bpf_stats_held)?;
            out.sender.send_replace(Arc::new(figures));
        }
        Ok(())
    }

    fn detect_attack(
        &mut self,
        config: &GuardConfig,
        now: u64,
        filling_queues: Option<String>,
    ) -> Result<()> {
        // SYNs of blocked sources are dropped before anything else and ask
        // for no attack mode: they would keep it on after the flood it is
        // for has gone.
        let counters = stats::read_pinned(&self.instance.dir().join(maps::STATS))?;
        let syns = counters
            .get(Counter::Syn)
            .saturating_sub(counters.get(Counter::DropBlocked));
        let at = Instant::now();
        let rate = match self.last_syns.replace((syns, at)) {
            Some((before, then)) => {
                let secs = at.duration_since(then).as_secs_f64().max(0.001);
                (syns.saturating_sub(before) as f64 / secs) as u64
            }
            None => 0,
        };
        let half_open = self.instance.half_open()?;
        if self.instance.attack()?.active != 0 {
            // The fast path may have entered it (its event says so in the log).
            self.detector.entered_by_kernel();
        }
        let overflows = KernelOverflows::read(self.sysctls.read()?.syncookies)?;
        let overflowed = match self.overflows.replace(overflows) {
            Some(before) => overflows.rose_since(&before),
            None => None,
        }
        .into_iter()
        .chain(filling_queues)
        .reduce(|a, b| format!("{a} {b}"));
        let change = match &overflowed {
            Some(_) => self.detector.kernel_overflowed(),
            None => self.detector.observe(config, half_open, rate, now),
        };
        match change {
            Some(AttackChange::Entered(trigger)) => {
                self.instance.set_attack(&AttackState {
                    active: 1,
                    trigger: match trigger {
                        AttackTrigger::HalfOpen => AttackState::BY_HALF_OPEN,
                        AttackTrigger::SynRate => AttackState::BY_SYN_RATE,
                        AttackTrigger::Kernel => AttackState::BY_KERNEL,
                    },
                    since_ns: now,
                    ..AttackState::default()
                })?;
                let why = match trigger {
                    AttackTrigger::HalfOpen => "half_open".to_string(),
                    AttackTrigger::SynRate => "syn_rate".to_string(),
                    AttackTrigger::Kernel => format!("kernel ({})", overflowed.unwrap_or_default()),
                };
                log::warn!(
                    "event=attack_mode_on iface={} trigger={why} half_open={half_open} syn_rate={rate}/s policy={}",
                    self.iface,
                    config.policy().as_str()
                );
            }
            Some(AttackChange::Left) => {
                self.instance.set_attack(&AttackState::default())?;
                log::warn!(
                    "event=attack_mode_off iface={} half_open={half_open} syn_rate={rate}/s",
                    self.iface
                );
            }
            None => {}
        }
        Ok(())
    }

    /// Events from the fast path: logged; attack mode entered there gets
    /// its cookies ready at once, not at the next tick.
    fn on_events(&mut self) -> Result<()> {
        if self.drain_events() {
            self.steer_cookies(&self.instance.config()?)?;
        }
        Ok(())
    }

    /// Logs the fast path's events; returns whether it entered attack mode.
    fn drain_events(&mut self) -> bool {
        let mut attack_entered = false;
        while let Some(item) = self.events.next() {
            if item.len() < std::mem::size_of::<Event>() {
                log::error!("event of {} bytes is too short; ignored", item.len());
                continue;
            }
            // SAFETY: at least size_of::<Event>() bytes, read unaligned; Event is plain data.
            let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            match event.kind {
                Event::SOURCE_OVER_LIMIT if self.over_limit_logged >= OVER_LIMIT_LINES => {
                    self.over_limit_unlogged += 1;
                }
                Event::SOURCE_OVER_LIMIT => {
                    self.over_limit_logged += 1;
                    let reason = Counter::ALL
                        .get(event.counter as usize)
                        .map_or("unknown", |c| c.as_str());
                    log::warn!(
                        "event=source_over_limit iface={} source={} reason={reason}",
                        self.iface,
                        control::addr_of(event.family, event.addr)
                    );
                }
                Event::ATTACK_MODE_ON => {
                    attack_entered = true;
                    log::warn!(
                        "event=attack_mode_on iface={} trigger=half_open half_open={} (entered by the fast path)",
                        self.iface,
                        event.counter
                    );
                }
                Event::ATTACK_MODE_ON_BY_LISTENER => {
                    attack_entered = true;
                    log::warn!(
                        "event=attack_mode_on iface={} trigger=listener port={} half_open={} (entered by the fast path)",
                        self.iface,
                        u16::from_be_bytes([event.addr[0], event.addr[1]]),
                        event.counter
                    );
                }
                other => log::error!("event of unknown kind {other}; ignored"),
            }
        }
        attack_entered
    }

    /// The `[[ports]]` policies follow the global configuration in all
    /// they do not set, as `limits set` and the daemon itself change it.
    fn follow_port_configs(&mut self, config: &GuardConfig) -> Result<()> {
        let configs: Vec<GuardConfig> = self.ports.iter().map(|policy| policy.apply(config)).collect();
        if configs != self.port_configs {
            self.instance.set_port_configs(&configs, &self.port_configs)?;
            self.port_configs = configs;
        }
        Ok(())
    }

    /// While attack mode answers SYNs with cookies, the kernel settings they
    /// need are held in place (where the daemon may), and the fast path
    /// answers only while they are: `AttackState::cookies_ready`. They are
    /// let go `SYSCTL_GRACE` after it stops.
    fn steer_cookies(&mut self, config: &GuardConfig) -> Result<()> {
        let attack = self.instance.attack()?;
        let answers = |c: &GuardConfig| c.policy() == Policy::SynCookie && !c.monitors(Rule::Attack);
        if attack.active == 0 || !(answers(config) || self.port_configs.iter().any(answers)) {
            if self.sysctls_held {
                let ended = *self.cookies_ended.get_or_insert_with(Instant::now);
                if ended.elapsed() >= SYSCTL_GRACE {
                    self.release_sysctls()?;
                }
            }
            return Ok(());
        }
        self.cookies_ended = None;
        let mut now = self.sysctls.read()?;
        if config.manage_sysctls != 0 && now.syncookies != 0 && !now.ready_for_cookies() {
            let change = self.sysctls.acquire()?;
            self.sysctls_held = true;
            self.log_sysctls(&change);
            now = self.sysctls.read()?;
        }
        // Timestamps in the SYN-ACK only where the kernel keeps no random offset.
        let ready = now.syncookies == 2
            && (config.cookie_options & GuardConfig::COOKIE_TIMESTAMPS == 0 || now.timestamps == 2);
        if ready != (attack.cookies_ready != 0) {
            self.instance.set_attack(&AttackState {
                cookies_ready: u8::from(ready),
                ..attack
            })?;
            if !ready {
                log::warn!(
                    "event=cookies_held_back iface={} {now}: the listener would refuse the fast path's cookies, \
                     so SYNs go on to the limits (see attack.manage_sysctls)",
                    self.iface
                );
            }
        }
        Ok(())
    }

    /// Keeps `LISTENER_LIMITS` as the listeners of this namespace are now
    /// (with `limits.per_port_half_open = "auto"`): they come and go. Returns,
    /// in words, the ports whose kernel SYN queue grew since the last tick
    /// to as many handshakes as should start attack mode (SYNs that did not
    /// come through this interface fill it too; a queue that only holds old
    /// handshakes, which the kernel keeps for a minute of SYN-ACK retries,
    /// does not grow).
    fn update_listener_limits(&mut self, config: &GuardConfig) -> Result<Option<String>> {
        let mut filling = Vec::new();
        let wanted = if config.per_port_half_open == GuardConfig::PER_PORT_AUTO {
            let ports = listeners::read()?;
            for (port, queued) in &ports.syn_queue {
                let before = self.syn_queues.get(port).copied().unwrap_or(0);
                if let Some(limit) = self.listener_limits.get(port)
                    && *queued >= limit.enter_attack
                    && *queued > before
                {
                    filling.push(format!(":{port} SYN queue {before} -> {queued}"));
                }
            }
            self.syn_queues = ports.syn_queue.clone();
            let max_syn_backlog = self.sysctls.read_net("ipv4/tcp_max_syn_backlog")?;
            let syncookies = self.sysctls.read()?.syncookies;
            ports
                .backlog
                .iter()
                .map(|(port, backlog)| {
                    let capacity = listeners::capacity(*backlog, max_syn_backlog, syncookies);
                    (
                        *port,
                        (listeners::limit_for(capacity, syncookies), *backlog, capacity),
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        for (port, (limit, backlog, capacity)) in &wanted {
            if self.listener_limits.get(port) != Some(limit) {
                self.instance.set_listener_limit(*port, *limit)?;
                let admitted = match limit.half_open {
                    0 => "the kernel answers the rest with cookies".to_string(),
                    n => format!("up to {n} half-open"),
                };
                log::info!(
                    "listener :{port} holds {capacity} handshakes (backlog {backlog}): {admitted}, \
                     attack mode at {}",
                    limit.enter_attack
                );
            }
        }
        let gone: Vec<u16> = self
            .listener_limits
            .keys()
            .filter(|port| !wanted.contains_key(port))
            .copied()
            .collect();
        for port in gone {
            self.instance.set_listener_limit(port, ListenerLimit::default())?;
            log::info!("listener :{port} is gone");
        }
        self.listener_limits = wanted
            .into_iter()
            .map(|(port, (limit, ..))| (port, limit))
            .collect();
        Ok((!filling.is_empty()).then(|| filling.join(" ")))
    }

    /// Once a second: how many sources went over their limits beyond the
    /// lines logged for them, in one line.
    fn summarize_over_limit(&mut self) {
        if self.over_limit_unlogged > 0 {
            log::warn!(
                "event=sources_over_limit iface={} more={} (at most {OVER_LIMIT_LINES} logged one by one a second)",
                self.iface,
                self.over_limit_unlogged
            );
        }
        self.over_limit_logged = 0;
        self.over_limit_unlogged = 0;
    }

    /// Restores the kernel settings, unless another interface still needs them.
    fn release_sysctls(&mut self) -> Result<()> {
        let change = self.sysctls.release()?;
        self.sysctls_held = false;
        self.cookies_ended = None;
        self.log_sysctls(&change);
        Ok(())
    }

    fn log_sysctls(&self, change: &sysctls::Change) {
        match change {
            sysctls::Change::None => {}
            sysctls::Change::Set { from, to } => log::warn!(
                "event=sysctls_set iface={} {from} -> {to}: the listener accepts the fast path's cookies \
                 with their options only so; restored {}s after attack mode ends",
                self.iface,
                SYSCTL_GRACE.as_secs()
            ),
            sysctls::Change::Restored { from, to } => {
                log::warn!("event=sysctls_restored iface={} {from} -> {to}", self.iface)
            }
            sysctls::Change::LeftAlone { found, now } => log::warn!(
                "event=sysctls_left iface={} {now}: changed by someone else since tcp-guard found {found}; \
                 left as they are",
                self.iface
            ),
        }
    }

    /// Blocks sources whose per-source drops in the last second reached the
    /// threshold, and starts a new second.
    fn block_offenders(&self, config: &tcp_guard_common::policy::GuardConfig) -> Result<()> {
        let path = self.instance.dir().join(maps::OFFENDERS);
        let data = MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut offenders: HashMap<MapData, SourceKey, u64> =
            HashMap::try_from(Map::LruHashMap(data)).context("OFFENDERS is not an LRU hash map")?;
        let mut entries: Vec<(SourceKey, u64)> = Vec::new();
        for entry in offenders.iter() {
            match entry {
                Ok(kv) => entries.push(kv),
                // Evicted between listing and reading.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("cannot read OFFENDERS"),
            }
        }
        // The config's and the operator's blocks, and the automatic ones.
        let mut listed: HashSet<Cidr> = HashSet::new();
        let mut automatic: Option<Vec<(Cidr, BlockEntry)>> = None;
        for (source, drops) in &entries {
            // A new second for the source. Gone already (LRU): nothing to reset.
            let _removed = offenders.remove(source);
            if config.block_after_drops != 0 && *drops >= config.block_after_drops as u64 {
                let cidr = Cidr::host(control::addr_of(source.family, source.addr));
                let ttl = Duration::from_secs(config.block_ttl_secs as u64);
                // Read once per round, kept up to date below.
                let automatic = match &mut automatic {
                    Some(list) => list,
                    none => {
                        let (automatic, lasting): (Vec<_>, Vec<_>) = self
                            .instance
                            .blocks()?
                            .into_iter()
                            .partition(|(_, entry)| entry.reason == BlockEntry::AUTOMATIC);
                        listed.extend(lasting.into_iter().map(|(cidr, _)| cidr));
                        none.insert(automatic)
                    }
                };
                // The config's and the operator's blocks last longer, and
                // drop more: an automatic one must not replace them.
                if listed.contains(&cidr) {
                    continue;
                }
                if !automatic.iter().any(|(c, _)| *c == cidr) {
                    while automatic.len() >= config.block_max_automatic.max(1) as usize {
                        let Some(oldest) = control::oldest_block(automatic) else {
                            break;
                        };
                        let (evicted, _) = automatic.remove(oldest);
                        self.instance.unlist(maps::BLOCK, &evicted)?;
                        log::warn!(
                            "event=source_unblocked iface={} source={evicted} reason=evicted (blocking.max_automatic = {})",
                            self.iface,
                            config.block_max_automatic
                        );
                    }
                }
                self.instance.block(&cidr, Some(ttl), BlockEntry::AUTOMATIC)?;
                automatic.retain(|(c, _)| *c != cidr);
                automatic.push((
                    cidr,
                    BlockEntry {
                        expires_ns: monotonic_now_ns() + ttl.as_nanos() as u64,
                        reason: BlockEntry::AUTOMATIC,
                        _pad: 0,
                    },
                ));
                log::warn!(
                    "event=source_blocked iface={} source={cidr} drops={drops} ttl={}",
                    self.iface,
                    humantime::format_duration(ttl)
                );
            }
        }
        Ok(())
    }

    fn unblock_expired(&self, now: u64) -> Result<()> {
        for (cidr, entry) in self.instance.blocks()? {
            if !entry.applies(now) {
                self.instance.unlist(maps::BLOCK, &cidr)?;
                log::warn!(
                    "event=source_unblocked iface={} source={cidr} reason={}",
                    self.iface,
                    Origin::of_block(&entry).as_str()
                );
            }
        }
        Ok(())
    }

    /// Re-reads the settings; a bad configuration is refused and the running one stays.
    fn reload(&mut self, source: &SettingsSource) {
        let outcome = source.resolve().and_then(|mut settings| {
            settings.live.egress = self.egress;
            if let Some(chosen) = cookies::prepare(&mut settings.live, &self.iface)? {
                log::info!("{chosen}");
            }
            if settings.tables != self.running_tables {
                bail!("tables.* cannot change while running (restart tcp-guard to resize the flow tables)");
            }
            let port_configs = port_configs(&settings.ports, &settings.live, &self.iface)?;
            apply_lists(&self.iface, &self.instance, &settings.lists)?;
            self.instance.set_config(&settings.live)?;
            let port_index = settings::port_index(&settings.ports);
            self.instance
                .set_port_policies(&port_configs, &self.port_index, &port_index)?;
            self.ports = settings.ports.clone();
            self.port_index = port_index;
            self.port_configs = port_configs;
            Ok(settings)
        });
        // The note comes before the count: `tcp-guard reload` reads it once the count moves.
        match outcome {
            Ok(settings) => {
                if let Err(e) = instance::clear_reload_error(&self.iface) {
                    log::warn!("{e:#}");
                }
                // A group created since the start counts from now on.
                match monitor::grant(&self.iface, &settings.access.monitor_group) {
                    Ok(readers) => {
                        let readers = readers.describe(&self.iface);
                        if readers != self.readers {
                            log::info!("{readers}");
                            self.readers = readers;
                        }
                    }
                    Err(e) => log::error!("{e:#}"),
                }
                self.instance.note_reload(true);
                log::info!("reloaded the configuration from {}", source.describe());
                log_settings(&settings);
            }
            Err(e) => {
                if let Err(e) = instance::record_reload_error(&self.iface, &format!("{e:#}")) {
                    log::warn!("cannot leave the reason for `tcp-guard reload`: {e:#}");
                }
                self.instance.note_reload(false);
                log::error!("reload refused, the running configuration stays: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_rounds_are_retried_less_and_less_often_until_one_succeeds() {
        let mut backoff = Backoff::default();
        let error = anyhow::anyhow!("a failed round");
        let tries_in = |backoff: &mut Backoff, ticks: usize| (0..ticks).filter(|_| backoff.due()).count();
        assert_eq!(tries_in(&mut backoff, 3), 3, "every tick while all is well");
        backoff.failed("eth0", &error);
        assert_eq!(tries_in(&mut backoff, 2), 1, "then every second tick");
        backoff.failed("eth0", &error);
        assert_eq!(tries_in(&mut backoff, 4), 1, "then every fourth");
        for _ in 0..10 {
            backoff.failed("eth0", &error);
        }
        assert_eq!(tries_in(&mut backoff, 64), 1, "at most every 64 ticks (32 s)");
        backoff.recovered("eth0");
        assert_eq!(tries_in(&mut backoff, 3), 3, "every tick again");
    }
}
