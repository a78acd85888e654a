//! The monitoring socket: a running daemon answers `stats`, `flows` and
//! `top` for readers who cannot open its pinned maps (the kernel lets no
//! one without CAP_BPF use them, whatever the file modes), at
//! `/run/tcp-guard-monitor/<iface>.sock`: owned root:GROUP, mode 0660,
//! where GROUP is `access.monitor_group` and exists; root's alone (0600)
//! otherwise. It serves reads only: nothing a reader sends changes the guard.
//!
//! One request line of JSON, `{"protocol": 1, "read": "stats"}` (or
//! `"top"`, or `"flows"` with `"state"` and `"limit"`), and one line of
//! JSON in reply: `{"ok": ...}` or `{"error": "..."}`; the flows follow
//! their reply line, one a line.
//!
//! What a reader may cost the daemon is bounded: at most [`CONNECTIONS`]
//! at once (a new one closes the oldest), a request of at most
//! [`MAX_REQUEST`] bytes within [`READ_TIMEOUT`], each write within
//! [`WRITE_TIMEOUT`], a whole answer within [`ANSWER_TIMEOUT`]. `stats`
//! comes from the figures the control loop gathers once a second (while
//! someone reads them), `flows` and `top` from a walk of the maps made at
//! most once every [`WALK_EVERY`], on a thread of the runtime's blocking
//! pool, whoever asks and however often.

use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    io::{self, BufRead, BufReader, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::{
        fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
        net::UnixStream,
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tcp_guard_common::{
    flow::TcpState,
    maps,
    policy::{AttackState, BlockEntry, Policy},
    stats::{COUNTER_COUNT, Stats},
};
use tokio::{io::AsyncWriteExt, sync::watch};

use crate::{
    connections::{AcceptFailures, Admission, read_request},
    control::{Cidr, Instance},
    flows::{self, FlowRow, FlowTables, Gauges, monotonic_now_ns},
    instance::remove_if_present,
    metrics::Figures,
    stats::{self, Enforcement, StatsSample},
    top::TopSample,
};

/// Where the daemons' sockets are: root's, mode 0755, holding nothing else.
/// Not in /run/tcp-guard, which is root's alone (0700) and stays so.
pub const DIR: &str = "/run/tcp-guard-monitor";

/// What a request and its reply speak; a daemon and a command of other
/// versions refuse each other by it.
const PROTOCOL: u32 = 1;
/// Connections at once: a new one closes the oldest.
pub const CONNECTIONS: usize = 16;
/// The most a request may hold; it fits in far less.
pub const MAX_REQUEST: usize = 1024;
/// How long a reader may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one write of the answer may wait for the reader.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole answer may take, waits for a walk included.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Flows and `top` are walked again only when the last walk is older
/// (a little under a second, so that `top` gets a new one each second).
pub const WALK_EVERY: Duration = Duration::from_millis(900);
/// Figures younger than this are served as they are; older ones (none
/// were gathered while no one read) are gathered at the next round.
const FRESH: Duration = Duration::from_secs(2);
/// How long after a reader last asked the control loop goes on gathering.
const DEMAND_NS: u64 = 10_000_000_000;
/// How long a command waits for the daemon's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket of the daemon on `iface` (a valid interface name).
pub fn socket_path(iface: &str) -> PathBuf {
    Path::new(DIR).join(format!("{iface}.sock"))
}

/// Whether the control loop gathers its figures (they walk both flow
/// tables): always with `--metrics`, otherwise only while someone reads
/// them through the socket.
pub struct Demand {
    always: bool,
    /// When a reader last asked (CLOCK_MONOTONIC ns; 0: never).
    asked: AtomicU64,
}

impl Demand {
    pub fn new(always: bool) -> Self {
        Demand {
            always,
            asked: AtomicU64::new(0),
        }
    }

    fn ask(&self) {
        self.asked.store(monotonic_now_ns(), Ordering::Relaxed);
    }

    /// Whether the figures are being gathered: always, or a reader asked in the last 10 s.
    pub fn wanted(&self) -> bool {
        let asked = self.asked.load(Ordering::Relaxed);
        self.always || (asked != 0 && monotonic_now_ns().saturating_sub(asked) < DEMAND_NS)
    }
}

#[derive(Serialize, Deserialize)]
struct Request {
    protocol: u32,
    #[serde(flatten)]
    read: Read,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "read", rename_all = "snake_case")]
enum Read {
    Stats,
    Flows {
        /// A state as `ss` names it.
        state: Option<String>,
        limit: Option<usize>,
    },
    Top,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply<T> {
    Ok(T),
    Error(String),
}

/// [`Enforcement`] on the wire.
#[derive(Serialize, Deserialize)]
struct EnforcementWire {
    active: u8,
    cookies_ready: u8,
    trigger: u32,
    since_ns: u64,
    policy: String,
    half_open_limit: u32,
    half_open: u64,
    monitor: u8,
}

impl From<&Enforcement> for EnforcementWire {
    fn from(e: &Enforcement) -> Self {
        EnforcementWire {
            active: e.attack.active,
            cookies_ready: e.attack.cookies_ready,
            trigger: e.attack.trigger,
            since_ns: e.attack.since_ns,
            policy: e.policy.as_str().to_string(),
            half_open_limit: e.half_open_limit,
            half_open: e.half_open,
            monitor: e.monitor,
        }
    }
}

impl EnforcementWire {
    fn into_enforcement(self) -> Result<Enforcement> {
        let policy = Policy::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == self.policy)
            .ok_or_else(|| {
                anyhow!(
                    "the daemon names a policy this tcp-guard does not know: {}",
                    self.policy
                )
            })?;
        let attack = AttackState {
            active: self.active,
            cookies_ready: self.cookies_ready,
            trigger: self.trigger,
            since_ns: self.since_ns,
            ..AttackState::default()
        };
        Ok(Enforcement::new(
            attack,
            policy,
            self.half_open_limit,
            self.half_open,
            self.monitor,
        ))
    }
}

/// What `stats` prints, on the wire.
#[derive(Serialize, Deserialize)]
struct StatsWire {
    counters: Vec<u64>,
    gauges: Gauges,
    enforcement: EnforcementWire,
}

impl StatsWire {
    fn new(counters: &Stats, gauges: &Gauges, enforcement: &Enforcement) -> Self {
        StatsWire {
            counters: counters.counters.to_vec(),
            gauges: gauges.clone(),
            enforcement: enforcement.into(),
        }
    }

    fn into_sample(self) -> Result<StatsSample> {
        let mut counters = Stats::default();
        if self.counters.len() != COUNTER_COUNT {
            bail!(
                "the daemon counts {} counters, this tcp-guard {COUNTER_COUNT}: they are different versions; \
                 restart the daemon (`systemctl restart tcp-guard@IFACE`)",
                self.counters.len()
            );
        }
        counters.counters.copy_from_slice(&self.counters);
        Ok(StatsSample {
            counters,
            gauges: self.gauges,
            enforcement: self.enforcement.into_enforcement()?,
        })
    }
}

/// What `top` shows, on the wire.
#[derive(Serialize, Deserialize)]
struct TopWire {
    stats: StatsWire,
    /// CIDR, expiry (CLOCK_MONOTONIC ns, 0: never) and reason.
    blocks: Vec<(String, u64, u32)>,
    top_half_open: Vec<(IpAddr, u64)>,
    sampled_syns: Vec<(IpAddr, u64)>,
    taken_ns: u64,
}

impl From<&TopSample> for TopWire {
    fn from(t: &TopSample) -> Self {
        TopWire {
            stats: StatsWire::new(&t.stats, &t.gauges, &t.enforcement),
            blocks: t
                .blocks
                .iter()
                .map(|(cidr, entry)| (cidr.to_string(), entry.expires_ns, entry.reason))
                .collect(),
            top_half_open: t.top_half_open.clone(),
            sampled_syns: t.sampled_syns.iter().map(|(a, n)| (*a, *n)).collect(),
            taken_ns: t.taken_ns,
        }
    }
}

impl TopWire {
    fn into_sample(self) -> Result<TopSample> {
        let stats = self.stats.into_sample()?;
        let blocks = self
            .blocks
            .into_iter()
            .map(|(cidr, expires_ns, reason)| {
                Ok((
                    Cidr::parse(&cidr)?,
                    BlockEntry {
                        expires_ns,
                        reason,
                        _pad: 0,
                    },
                ))
            })
            .collect::<Result<_>>()?;
        Ok(TopSample {
            stats: stats.counters,
            gauges: stats.gauges,
            enforcement: stats.enforcement,
            blocks,
            top_half_open: self.top_half_open,
            sampled_syns: self.sampled_syns.into_iter().collect::<HashMap<_, _>>(),
            taken_ns: self.taken_ns,
        })
    }
}

/// One flow on the wire.
#[derive(Serialize, Deserialize)]
struct FlowWire {
    state: String,
    local: SocketAddr,
    peer: SocketAddr,
    age_ns: u64,
    idle_ns: u64,
    adopted: bool,
}

impl FlowWire {
    /// `row` as walked `since` ago.
    fn new(row: &FlowRow, since: Duration) -> Self {
        let since = since.as_nanos() as u64;
        FlowWire {
            state: row.state.ss_name().to_string(),
            local: row.local,
            peer: row.peer,
            age_ns: row.age_ns + since,
            idle_ns: row.idle_ns + since,
            adopted: row.adopted,
        }
    }

    fn into_row(self) -> Result<FlowRow> {
        Ok(FlowRow {
            state: flows::parse_state(&self.state)?,
            local: self.local,
            peer: self.peer,
            age_ns: self.age_ns,
            idle_ns: self.idle_ns,
            adopted: self.adopted,
        })
    }
}

/// How many flows follow the reply line.
#[derive(Serialize, Deserialize)]
struct FlowsHeader {
    flows: usize,
}

// ---- The daemon's side ----

/// Who besides root may connect to an instance's socket.
pub enum Readers {
    Group(String),
    /// `access.monitor_group` names a group that does not exist.
    NoSuchGroup(String),
    /// `access.monitor_group` is empty.
    RootOnly,
}

impl Readers {
    /// One line for the daemon's log.
    pub fn describe(&self, iface: &str) -> String {
        let path = socket_path(iface);
        let path = path.display();
        match self {
            Readers::Group(group) => format!(
                "root and members of group {group} may read {iface}'s figures (stats, flows, top) through {path}"
            ),
            Readers::NoSuchGroup(group) => format!(
                "group {group} (access.monitor_group) does not exist, so only root may read {iface}'s figures \
                 through {path}; to let monitoring users run stats, flows and top without root: \
                 `groupadd --system {group}`, `usermod -aG {group} USER`, then `tcp-guard reload --iface {iface}`"
            ),
            Readers::RootOnly => {
                format!("access.monitor_group is empty: only root may read {iface}'s figures through {path}")
            }
        }
    }
}

/// Binds the socket of the instance on `iface`, which this daemon has
/// claimed: one a daemon that died left is replaced. Root's alone until
/// [`grant`] says otherwise.
pub fn bind(iface: &str) -> Result<std::os::unix::net::UnixListener> {
    open_dir()?;
    let path = socket_path(iface);
    remove_if_present(&path)?;
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot serve readers at {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set {} to mode 600", path.display()))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot serve readers at {}", path.display()))?;
    Ok(listener)
}

/// Makes the sockets' directory, or opens it again to the sockets' groups
/// (mode 0755): the service's `RuntimeDirectoryMode=0700` closes it each
/// time any instance starts, so each daemon opens it at start and then
/// every few seconds.
pub fn open_dir() -> Result<()> {
    let dir = Path::new(DIR);
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(e).with_context(|| format!("cannot create {DIR}"));
        }
        _ => {}
    }
    // A directory anyone else made, or a link put there, is not followed.
    let handle = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .with_context(|| format!("cannot open {DIR} as a directory (not following links)"))?;
    let meta = handle.metadata().with_context(|| format!("cannot stat {DIR}"))?;
    if meta.uid() != 0 {
        bail!(
            "{DIR} is owned by uid {}, not by root: someone else made it; remove it and start again",
            meta.uid()
        );
    }
    // The umask (the service's is 0077) must not hide the sockets from their group.
    if meta.mode() & 0o7777 != 0o755 {
        handle
            .set_permissions(fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot set {DIR} to mode 755"))?;
    }
    Ok(())
}

/// Lets `group`'s members connect to the socket of `iface` (root:GROUP,
/// 0660), or root alone (root:root, 0600) when it is empty or does not exist.
pub fn grant(iface: &str, group: &str) -> Result<Readers> {
    let path = socket_path(iface);
    let (gid, readers) = if group.is_empty() {
        (0, Readers::RootOnly)
    } else {
        match group_id(group)? {
            Some(gid) => (gid, Readers::Group(group.to_string())),
            None => (0, Readers::NoSuchGroup(group.to_string())),
        }
    };
    // Narrowed first, so that no one outside the new group passes between the two.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .and_then(|()| std::os::unix::fs::lchown(&path, Some(0), Some(gid)))
        .and_then(|()| {
            let mode = if gid == 0 { 0o600 } else { 0o660 };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        })
        .with_context(|| format!("cannot give group {group} access to {}", path.display()))?;
    Ok(readers)
}

/// Removes the socket of `iface` (the daemon stops; one that hands over
/// leaves it to its successor, which binds its own).
pub fn remove(iface: &str) -> Result<()> {
    remove_if_present(&socket_path(iface))
}

/// The last walk of a `T` and when it was made: a reader gets it while it
/// is younger than [`WALK_EVERY`]; otherwise it is walked again, one walk
/// at a time, whoever asks, and never sooner than that after the last.
/// Kept only while a reader holds it (a million flows take megabytes).
struct Walked<T> {
    last: tokio::sync::Mutex<Option<(Instant, Weak<T>)>>,
}

impl<T: Send + Sync + 'static> Walked<T> {
    fn new() -> Self {
        Walked {
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The walk and how long ago it was made.
    async fn get(&self, walk: impl FnOnce() -> Result<T> + Send + 'static) -> Result<(Arc<T>, Duration)> {
        let mut last = self.last.lock().await;
        if let Some((at, value)) = &*last
            && at.elapsed() < WALK_EVERY
        {
            if let Some(value) = value.upgrade() {
                return Ok((value, at.elapsed()));
            }
            tokio::time::sleep(WALK_EVERY.saturating_sub(at.elapsed())).await;
        }
        // Recorded before the walk: a reader whose connection is closed
        // meanwhile (the cap closes the oldest) ends this task, not the
        // walk, and the next must still wait its turn.
        *last = Some((Instant::now(), Weak::new()));
        let walked = tokio::task::spawn_blocking(walk)
            .await
            .context("the walk of the maps failed")
            .and_then(|walked| walked.map(Arc::new));
        // A failed walk counts too: a reader asking in a loop gets no more of them.
        *last = Some((
            Instant::now(),
            walked.as_ref().map_or_else(|_| Weak::new(), Arc::downgrade),
        ));
        Ok((walked?, Duration::ZERO))
    }
}

/// What the connections of one daemon share.
struct Shared {
    iface: String,
    dir: PathBuf,
    figures: watch::Receiver<Arc<Figures>>,
    demand: Arc<Demand>,
    flows: Walked<Vec<FlowRow>>,
    top: Walked<TopSample>,
}

/// Answers readers on `listener` until the daemon ends. Errors go to the
/// log; a reader is told only that the daemon could not answer.
pub async fn serve(
    listener: tokio::net::UnixListener,
    iface: String,
    dir: PathBuf,
    figures: watch::Receiver<Arc<Figures>>,
    demand: Arc<Demand>,
) {
    let shared = Arc::new(Shared {
        iface,
        dir,
        figures,
        demand,
        flows: Walked::new(),
        top: Walked::new(),
    });
    let mut held = Admission::new(CONNECTIONS);
    let mut failures = AcceptFailures::default();
    loop {
        let Some(mut stream) = failures.take("monitoring socket", listener.accept().await).await else {
            continue;
        };
        let shared = shared.clone();
        held.spawn(|place| async move {
            match tokio::time::timeout(ANSWER_TIMEOUT, answer(&mut stream, &shared)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::debug!("monitoring socket: a reader went away: {e}"),
                Err(_) => log::debug!("monitoring socket: an answer took longer than {ANSWER_TIMEOUT:?}"),
            }
            drop(place);
        });
    }
}

async fn write(stream: &mut tokio::net::UnixStream, bytes: &[u8]) -> io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the reader does not read"))?
}

fn line<T: Serialize>(reply: &Reply<T>) -> Vec<u8> {
    let mut line = serde_json::to_vec(reply).unwrap_or_else(|e| {
        format!("{{\"error\": \"tcp-guard could not write its answer: {e}\"}}").into_bytes()
    });
    line.push(b'\n');
    line
}

/// What a reader is told of a failure; the details go to the log.
fn failed<T>(iface: &str, what: &str, error: &anyhow::Error) -> Reply<T> {
    log::error!("monitoring socket: cannot read {iface}'s {what}: {error:#}");
    Reply::Error(format!(
        "the daemon on {iface} could not read its {what}; its log says why"
    ))
}

async fn answer(stream: &mut tokio::net::UnixStream, shared: &Shared) -> io::Result<()> {
    let request = read_request(stream, b"\n", MAX_REQUEST, READ_TIMEOUT).await?;
    let request = match serde_json::from_slice::<Request>(&request) {
        Ok(request) if request.protocol == PROTOCOL => request,
        Ok(request) => {
            let reply: Reply<()> = Reply::Error(format!(
                "the daemon speaks protocol {PROTOCOL}, this tcp-guard {}: they are different versions; \
                 use the daemon's binary, or restart the daemon",
                request.protocol
            ));
            return write(stream, &line(&reply)).await;
        }
        Err(e) => {
            let reply: Reply<()> = Reply::Error(format!(
                "not a request ({e}); this socket answers `tcp-guard stats`, `flows` and `top`"
            ));
            return write(stream, &line(&reply)).await;
        }
    };
    match request.read {
        Read::Stats => {
            let figures = fresh_figures(shared).await;
            let reply = Reply::Ok(StatsWire::new(
                &figures.stats,
                &figures.gauges,
                &figures.enforcement,
            ));
            write(stream, &line(&reply)).await
        }
        Read::Top => {
            let dir = shared.dir.clone();
            let reply = match shared.top.get(move || TopSample::read(&Instance::new(dir))).await {
                Ok((sample, _)) => Reply::Ok(TopWire::from(&*sample)),
                Err(e) => failed(&shared.iface, "maps", &e),
            };
            write(stream, &line(&reply)).await
        }
        Read::Flows { state, limit } => {
            let state = match state.as_deref().map(flows::parse_state).transpose() {
                Ok(state) => state,
                Err(e) => return write(stream, &line(&Reply::<()>::Error(format!("{e:#}")))).await,
            };
            let dir = shared.dir.clone();
            let walked = shared
                .flows
                .get(move || FlowTables::open(&dir)?.rows(monotonic_now_ns()))
                .await;
            let (rows, since) = match walked {
                Ok(walked) => walked,
                Err(e) => return write(stream, &line(&failed::<()>(&shared.iface, "flow tables", &e))).await,
            };
            let chosen: Vec<&FlowRow> = rows
                .iter()
                .filter(|r| state.is_none_or(|s| r.state == s))
                .take(limit.unwrap_or(usize::MAX))
                .collect();
            let mut out = line(&Reply::Ok(FlowsHeader { flows: chosen.len() }));
            for row in chosen {
                if let Ok(mut one) = serde_json::to_vec(&FlowWire::new(row, since)) {
                    one.push(b'\n');
                    out.extend_from_slice(&one);
                }
                if out.len() >= 64 * 1024 {
                    write(stream, &out).await?;
                    out.clear();
                }
            }
            write(stream, &out).await
        }
    }
}

/// The figures the control loop gathered last, if it has been gathering
/// them; otherwise it is asked to, and they are awaited for a round or two.
async fn fresh_figures(shared: &Shared) -> Arc<Figures> {
    let gathering = shared.demand.wanted();
    shared.demand.ask();
    let mut figures = shared.figures.clone();
    let latest = figures.borrow_and_update().clone();
    if gathering && latest.gathered.elapsed() < FRESH {
        return latest;
    }
    // A failing control loop gathers nothing: the reader gets the last figures.
    let _ = tokio::time::timeout(2 * FRESH, figures.changed()).await;
    figures.borrow().clone()
}

// ---- The commands' side ----

/// Where a reading command (`stats`, `flows`, `top`) gets its figures.
pub enum Reader {
    /// The pinned maps: root.
    Pins(Instance),
    /// The daemon's socket: everyone else.
    Daemon(Client),
}

impl Reader {
    /// Root reads the pins; anyone else, or root when the kernel refuses
    /// it the maps (no CAP_BPF), asks the daemon. `command` names the
    /// command in errors, e.g. `tcp-guard stats`.
    pub fn open(command: &str, iface: Option<&str>) -> Result<(String, Reader)> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let (iface, instance) = Instance::resolve(iface)?;
            let refused = stats::read_pinned(&instance.dir().join(maps::STATS))
                .err()
                .is_some_and(|e| denied(&e));
            if !refused {
                return Ok((iface, Reader::Pins(instance)));
            }
            let client = Client::new(command, &iface);
            return Ok((iface, Reader::Daemon(client)));
        }
        let iface = match iface {
            Some(iface) => iface.to_string(),
            None => only_socket(command)?,
        };
        let client = Client::new(command, &iface);
        Ok((iface, Reader::Daemon(client)))
    }

    pub fn stats(&self) -> Result<StatsSample> {
        match self {
            Reader::Pins(instance) => StatsSample::read(instance),
            Reader::Daemon(client) => client.ask::<StatsWire>(&Read::Stats)?.0.into_sample(),
        }
    }

    /// Flows sorted by local and peer address, of `state` only if given, at most `limit`.
    pub fn flows(&self, state: Option<TcpState>, limit: Option<usize>) -> Result<Vec<FlowRow>> {
        match self {
            Reader::Pins(instance) => {
                let mut rows = FlowTables::open(instance.dir())?.rows(monotonic_now_ns())?;
                rows.retain(|r| state.is_none_or(|s| r.state == s));
                rows.truncate(limit.unwrap_or(usize::MAX));
                Ok(rows)
            }
            Reader::Daemon(client) => {
                let read = Read::Flows {
                    state: state.map(|s| s.ss_name().to_string()),
                    limit,
                };
                let (header, mut lines) = client.ask::<FlowsHeader>(&read)?;
                let mut rows = Vec::with_capacity(header.flows.min(1 << 20));
                for _ in 0..header.flows {
                    let mut text = String::new();
                    if lines.read_line(&mut text).map_err(|e| client.lost(e))? == 0 {
                        bail!("the daemon on {} ended its answer early", client.iface);
                    }
                    let flow: FlowWire = serde_json::from_str(&text).with_context(|| {
                        format!("the daemon on {} answered with a bad flow", client.iface)
                    })?;
                    rows.push(flow.into_row()?);
                }
                Ok(rows)
            }
        }
    }

    pub fn top(&self) -> Result<TopSample> {
        match self {
            Reader::Pins(instance) => TopSample::read(instance),
            Reader::Daemon(client) => client.ask::<TopWire>(&Read::Top)?.0.into_sample(),
        }
    }
}

/// Whether the kernel refused an operation for want of privilege.
fn denied(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::PermissionDenied)
}

/// The interface of the only daemon serving readers.
fn only_socket(command: &str) -> Result<String> {
    let mut ifaces: Vec<String> = fs::read_dir(DIR)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".sock").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ifaces.sort();
    match ifaces.as_slice() {
        [only] => Ok(only.clone()),
        [] => bail!(
            "{command} reads the guard's pinned maps, which needs root, or asks its daemon, and no \
             daemon serves readers (nothing in {DIR}); run it as root, or start tcp-guard"
        ),
        several => bail!(
            "tcp-guard serves readers on several interfaces ({}); choose one with --iface",
            several.join(", ")
        ),
    }
}

/// Asks the daemon on one interface.
pub struct Client {
    command: String,
    iface: String,
    path: PathBuf,
}

impl Client {
    fn new(command: &str, iface: &str) -> Self {
        Client {
            command: command.to_string(),
            iface: iface.to_string(),
            path: socket_path(iface),
        }
    }

    /// Sends `read` and returns the reply line's content and the rest of the answer.
    fn ask<T: DeserializeOwned>(&self, read: &Read) -> Result<(T, BufReader<UnixStream>)> {
        let mut stream = UnixStream::connect(&self.path).map_err(|e| self.cannot_connect(e))?;
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(CLIENT_TIMEOUT)))
            .map_err(|e| self.lost(e))?;
        let mut request = serde_json::to_vec(&Request {
            protocol: PROTOCOL,
            read: read.clone(),
        })?;
        request.push(b'\n');
        stream.write_all(&request).map_err(|e| self.lost(e))?;
        let mut lines = BufReader::new(stream);
        let mut reply = String::new();
        lines.read_line(&mut reply).map_err(|e| self.lost(e))?;
        match serde_json::from_str::<Reply<T>>(&reply) {
            Ok(Reply::Ok(value)) => Ok((value, lines)),
            Ok(Reply::Error(message)) => bail!("{message}"),
            Err(_) if reply.is_empty() => bail!(
                "the daemon on {} closed the connection without an answer (too many readers at once?); \
                 try again",
                self.iface
            ),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "the daemon on {} answered what this tcp-guard cannot read",
                    self.iface
                )
            }),
        }
    }

    fn lost(&self, error: io::Error) -> anyhow::Error {
        anyhow::Error::new(error).context(format!(
            "lost the daemon on {} at {}",
            self.iface,
            self.path.display()
        ))
    }

    /// Why the socket could not be reached, and what to do.
    fn cannot_connect(&self, error: io::Error) -> anyhow::Error {
        let (command, iface, path) = (&self.command, &self.iface, self.path.display());
        match error.kind() {
            io::ErrorKind::NotFound => anyhow!(
                "{command} reads the guard's pinned maps, which needs root, or asks the daemon on {iface} at \
                 {path}, which is not there: no daemon runs on {iface}; run it as root"
            ),
            io::ErrorKind::ConnectionRefused => anyhow!(
                "{command}: the daemon on {iface} does not answer at {path} (it stopped or died); root can \
                 read the pinned state: run it as root"
            ),
            io::ErrorKind::PermissionDenied => {
                let group = fs::metadata(&self.path)
                    .ok()
                    .map(|m| m.gid())
                    .filter(|gid| *gid != 0)
                    .and_then(group_name);
                match group {
                    Some(group) => anyhow!(
                        "{command} needs root, or membership of group {group}, whose members the daemon on \
                         {iface} answers at {path}: ask an administrator to run `usermod -aG {group} USER`, then \
                         log in again"
                    ),
                    None => anyhow!(
                        "{command} needs root: the daemon on {iface} answers no group at {path} (its \
                         access.monitor_group is empty or names a group that does not exist; see \
                         docs/operations.md, \"Who may read and who may control it\")"
                    ),
                }
            }
            _ => anyhow::Error::new(error).context(format!("{command}: cannot connect to {path}")),
        }
    }
}

/// Looks up a group with getgrnam_r or getgrgid_r, into a buffer that
/// grows as they ask: its name and id, if it exists.
fn lookup_group(
    mut call: impl FnMut(&mut libc::group, &mut [u8], &mut *mut libc::group) -> i32,
) -> io::Result<Option<(String, u32)>> {
    let mut buffer = vec![0u8; 4096];
    loop {
        // SAFETY: plain data, which the call fills.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        match call(&mut group, &mut buffer, &mut result) {
            libc::ERANGE if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 2, 0),
            0 if result.is_null() => return Ok(None),
            0 => {
                // SAFETY: on success gr_name points at a NUL-terminated string in `buffer`.
                let name = unsafe { std::ffi::CStr::from_ptr(group.gr_name) };
                return Ok(Some((name.to_string_lossy().into_owned(), group.gr_gid)));
            }
            rc => return Err(io::Error::from_raw_os_error(rc)),
        }
    }
}

/// The id of group `name`, if it exists.
fn group_id(name: &str) -> Result<Option<u32>> {
    let cname = CString::new(name).with_context(|| format!("{name:?} is not a group name"))?;
    let found = lookup_group(|group, buffer, result| {
        // SAFETY: a NUL-terminated name, and a group, a buffer of the length given and a result, all ours.
        unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                group,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                result,
            )
        }
    })
    .with_context(|| format!("cannot look up group {name}"))?;
    Ok(found.map(|(_, gid)| gid))
}

/// The name of group `gid`, if it has one.
fn group_name(gid: u32) -> Option<String> {
    lookup_group(|group, buffer, result| {
        // SAFETY: a group, a buffer of the length given and a result, all ours.
        unsafe { libc::getgrgid_r(gid, group, buffer.as_mut_ptr().cast(), buffer.len(), result) }
    })
    .ok()
    .flatten()
    .map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_read_back_as_sent() {
        let request = serde_json::to_string(&Request {
            protocol: PROTOCOL,
            read: Read::Flows {
                state: Some("ESTAB".to_string()),
                limit: Some(3),
            },
        })
        .expect("JSON");
        assert_eq!(
            request,
            r#"{"protocol":1,"read":"flows","state":"ESTAB","limit":3}"#
        );
        let reply: Reply<FlowsHeader> = serde_json::from_str(r#"{"ok":{"flows":2}}"#).expect("reply");
        assert!(matches!(reply, Reply::Ok(FlowsHeader { flows: 2 })));
        let error: Reply<FlowsHeader> = serde_json::from_str(r#"{"error":"no"}"#).expect("error");
        assert!(matches!(error, Reply::Error(message) if message == "no"));
    }

    #[test]
    fn the_figures_cross_the_socket_unchanged() {
        let mut counters = Stats::default();
        for (i, counter) in counters.counters.iter_mut().enumerate() {
            *counter = i as u64 * 7;
        }
        let attack = AttackState {
            active: 1,
            cookies_ready: 1,
            trigger: AttackState::BY_SYN_RATE,
            since_ns: 42,
            ..AttackState::default()
        };
        let enforcement = Enforcement::new(
            attack,
            Policy::SynCookie,
            1024,
            17,
            tcp_guard_common::policy::Rule::SynRate as u8,
        );
        let gauges = Gauges {
            half_open_entries: 3,
            flow_max: 99,
            ..Gauges::default()
        };
        let wire: StatsWire = serde_json::from_slice(
            &serde_json::to_vec(&StatsWire::new(&counters, &gauges, &enforcement)).expect("JSON"),
        )
        .expect("read back");
        let back = wire.into_sample().expect("sample");
        assert_eq!(back.counters, counters);
        assert_eq!(back.gauges, gauges);
        assert_eq!(back.enforcement.attack, attack);
        assert_eq!(back.enforcement.policy, Policy::SynCookie);
        assert_eq!(
            (back.enforcement.half_open_limit, back.enforcement.half_open),
            (1024, 17)
        );
        assert_eq!(
            back.enforcement.monitor, enforcement.monitor,
            "the rules in monitor mode"
        );
        let short = StatsWire {
            counters: vec![1, 2],
            ..StatsWire::new(&counters, &gauges, &enforcement)
        };
        assert!(format!("{:#}", short.into_sample().err().expect("refused")).contains("different versions"));
    }

    #[test]
    fn a_flow_keeps_its_fields_and_ages_by_the_time_since_the_walk() {
        let row = FlowRow {
            state: TcpState::Established,
            local: "198.18.0.1:80".parse().expect("addr"),
            peer: "[2001:2::2]:5000".parse().expect("addr"),
            age_ns: 5_000,
            idle_ns: 1_000,
            adopted: true,
        };
        let back = FlowWire::new(&row, Duration::from_nanos(500))
            .into_row()
            .expect("row");
        assert_eq!(
            back,
            FlowRow {
                age_ns: 5_500,
                idle_ns: 1_500,
                ..row
            }
        );
    }
}
