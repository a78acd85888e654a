//! `tcp-guard run`: load, pin, attach, then run the enforcement loop until
//! SIGINT or SIGTERM. SIGHUP reloads the configuration.

use std::{
    path::PathBuf,
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
    policy::{AttackChange, AttackDetector, AttackState, AttackTrigger, BlockEntry, Event, SourceKey},
    stats::Counter,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    attach::{self, Mode},
    control::{Cidr, Instance, reason_name},
    flows::{FlowTables, monotonic_now_ns},
    instance::{self, InstanceLock},
    program,
    settings::{self, Settings},
    stats,
};

/// Every map the programs use, pinned under the instance directory.
const PINNED: &[&str] = &[
    maps::STATS,
    maps::HALF_OPEN,
    maps::FLOWS,
    maps::EXPIRED,
    maps::CONFIG,
    maps::ATTACK,
    maps::COUNTS,
    maps::RATE,
    maps::ALLOW,
    maps::BLOCK,
    maps::VERIFIED,
    maps::CHALLENGE,
    maps::OFFENDERS,
];

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
    pub settings: SettingsSource,
}

pub fn run(options: RunOptions) -> Result<()> {
    let iface = options.iface.as_str();
    attach::if_index(iface)?;
    let settings = options.settings.resolve()?;

    let lock = InstanceLock::claim(iface)?;
    let mut ebpf = program::load(log::max_level(), &settings)?;
    for name in PINNED {
        let pin = lock.path(name);
        ebpf.map(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))?
            .pin(&pin)
            .with_context(|| format!("cannot pin {name} at {}", pin.display()))?;
    }
    let instance = Instance::new(instance::dir(iface));
    instance.create_info()?;
    let logger = EbpfLogger::init(&mut ebpf).context("cannot read the eBPF programs' log ring")?;
    let events: RingBuf<MapData> = ebpf
        .take_map(maps::EVENTS)
        .context("map EVENTS missing from the eBPF object")?
        .try_into()
        .context("EVENTS is not a ring buffer")?;

    let (xdp_link, mode) = attach::attach_xdp(&mut ebpf, iface, options.mode)?;
    let egress_link = if options.egress {
        Some(attach::attach_tc_egress(&mut ebpf, iface)?)
    } else {
        None
    };
    log::info!(
        "guarding {iface} (XDP, {mode} mode; {}); config from {}; state in {}",
        if egress_link.is_some() {
            "TC egress"
        } else {
            "no egress program"
        },
        options.settings.describe(),
        instance::dir(iface).display()
    );
    log_settings(&settings);

    let mut control = Control {
        iface: iface.to_string(),
        tables: FlowTables::open(instance.dir())?,
        instance,
        events,
        detector: AttackDetector::default(),
        last_syns: None,
        ticks: 0,
        running_tables: settings.tables,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let signal_name = runtime.block_on(serve(logger, &mut ebpf, &mut control, &options.settings))?;
    log::info!("{signal_name} received; detaching from {iface}");
    if let Some(link) = egress_link {
        attach::detach_tc_egress(&mut ebpf, link, iface)?;
    }
    attach::detach_xdp(&mut ebpf, xdp_link, iface)?;
    drop(lock);
    Ok(())
}

fn log_settings(settings: &Settings) {
    for (name, value, _) in settings.describe() {
        log::debug!("setting {name} = {value}");
    }
    let c = &settings.live;
    log::info!(
        "limits: half-open {} global, {} per source, {} per /{} (v4) or /{} (v6), {} per port; \
         {} SYN/s per source (burst {}); attack mode ({}) at {} half-open or {} SYN/s; timeouts: {}",
        c.global_half_open,
        c.per_source_half_open,
        c.per_prefix_half_open,
        c.prefix_len_v4,
        c.prefix_len_v6,
        c.per_port_half_open,
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

/// Forwards kernel log records and runs the control loop until SIGINT or
/// SIGTERM (returned); SIGHUP reloads.
async fn serve(
    logger: EbpfLogger<&'static dyn log::Log>,
    ebpf: &mut Ebpf,
    control: &mut Control,
    source: &SettingsSource,
) -> Result<&'static str> {
    // SAFETY: the logger owns the ring buffer's fd, which stays open and
    // unchanged for as long as the AsyncFd owns the logger.
    let mut logs = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("cannot poll the eBPF log ring")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok("SIGINT"),
            _ = terminate.recv() => return Ok("SIGTERM"),
            _ = hangup.recv() => control.reload(source),
            ready = logs.readable_mut() => {
                let mut guard = ready.context("polling the eBPF log ring failed")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tick.tick() => control.tick(ebpf)?,
        }
    }
}

struct Control {
    iface: String,
    instance: Instance,
    tables: FlowTables,
    events: RingBuf<MapData>,
    detector: AttackDetector,
    /// SYN counter and when it was read, for the SYN rate.
    last_syns: Option<(u64, Instant)>,
    ticks: u64,
    running_tables: tcp_guard_common::config::TableSizes,
}

impl Control {
    fn tick(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.ticks += 1;
        let config = self.instance.config()?;
        let now = monotonic_now_ns();
        self.detect_attack(&config, now)?;
        self.drain_events();
        if self.ticks.is_multiple_of(2) {
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
        }
        Ok(())
    }

    fn detect_attack(&mut self, config: &tcp_guard_common::policy::GuardConfig, now: u64) -> Result<()> {
        let syns = stats::read_pinned(&self.instance.dir().join(maps::STATS))?.get(Counter::Syn);
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
        match self.detector.observe(config, half_open, rate, now) {
            Some(AttackChange::Entered(trigger)) => {
                self.instance.set_attack(&AttackState {
                    active: 1,
                    _pad: 0,
                    since_ns: now,
                })?;
                let why = match trigger {
                    AttackTrigger::HalfOpen => "half_open",
                    AttackTrigger::SynRate => "syn_rate",
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

    fn drain_events(&mut self) {
        while let Some(item) = self.events.next() {
            if item.len() < std::mem::size_of::<Event>() {
                log::error!("event of {} bytes is too short; ignored", item.len());
                continue;
            }
            // SAFETY: at least size_of::<Event>() bytes, read unaligned; Event is plain data.
            let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            match event.kind {
                Event::SOURCE_OVER_LIMIT => {
                    let reason = Counter::ALL
                        .get(event.counter as usize)
                        .map_or("unknown", |c| c.as_str());
                    log::warn!(
                        "event=source_over_limit iface={} source={} reason={reason}",
                        self.iface,
                        source_addr(&SourceKey::new(event.family, event.addr))
                    );
                }
                Event::ATTACK_MODE_ON => log::warn!(
                    "event=attack_mode_on iface={} trigger=half_open half_open={} (entered by the fast path)",
                    self.iface,
                    event.counter
                ),
                other => log::error!("event of unknown kind {other}; ignored"),
            }
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
        for (source, drops) in &entries {
            if config.block_after_drops != 0 && *drops >= config.block_after_drops as u64 {
                let cidr = Cidr::host(source_addr(source));
                let ttl = Duration::from_secs(config.block_ttl_secs as u64);
                self.instance.block(&cidr, Some(ttl), BlockEntry::AUTOMATIC)?;
                log::warn!(
                    "event=source_blocked iface={} source={cidr} drops={drops} ttl={}",
                    self.iface,
                    humantime::format_duration(ttl)
                );
            }
            // Gone already (LRU): nothing to reset.
            let _removed = offenders.remove(source);
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
                    reason_name(entry.reason)
                );
            }
        }
        Ok(())
    }

    /// Re-reads the settings; a bad configuration is refused and the running one stays.
    fn reload(&mut self, source: &SettingsSource) {
        let outcome = source.resolve().and_then(|settings| {
            if settings.tables != self.running_tables {
                bail!("tables.* cannot change while running (restart tcp-guard to resize the flow tables)");
            }
            self.instance.set_config(&settings.live)?;
            Ok(settings)
        });
        match outcome {
            Ok(settings) => {
                self.instance.note_reload(true);
                log::info!("reloaded the configuration from {}", source.describe());
                log_settings(&settings);
            }
            Err(e) => {
                self.instance.note_reload(false);
                log::error!("reload refused, the running configuration stays: {e:#}");
            }
        }
    }
}

fn source_addr(source: &SourceKey) -> std::net::IpAddr {
    if source.family == 4 {
        std::net::IpAddr::from([source.addr[0], source.addr[1], source.addr[2], source.addr[3]])
    } else {
        std::net::IpAddr::from(source.addr)
    }
}
