//! `cargo xtask bench flood`: the same spoofed SYN flood, stepped up in rate,
//! against a real listener under each defence (none, kernel SYN cookies,
//! nftables synproxy, tcp-guard in each attack-mode policy with kernel
//! cookies off and on), with new real clients connecting throughout. One
//! fresh lab per run. Results: JSON, a Markdown table and a figure (PNG and
//! SVG, drawn with plotters) that `tg-bench-plot` can redraw from the JSON.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use plotters::{
    coord::{
        Shift,
        ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter},
        types::RangedCoordf64,
    },
    element::DashedPathElement,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    daemon::{Daemon, stats_json},
    flood::{FloodSpec, Sources, flood},
    inject::Injector,
    lab::{Lab, connect_from, listen, run},
    machine::Machine,
};

const PORT: u16 = 8080;
/// The listener's backlog: a common default.
const BACKLOG: i32 = 128;
/// New clients come from this many addresses, one after another, so that
/// most connects are a client's first.
const CLIENT_ADDRS: u8 = 64;
/// Clients connecting in parallel, each one new connection at a time.
const CLIENT_THREADS: usize = 6;

/// One defence under test.
#[derive(Clone, Copy, Debug)]
pub struct Defence {
    pub name: &'static str,
    /// net.ipv4.tcp_syncookies in the server namespace.
    pub syncookies: u8,
    pub synproxy: bool,
    /// tcp-guard's attack-mode policy, if tcp-guard runs; [`DEFAULTS`]: no
    /// setting at all, on the kernel's own defaults.
    pub guard: Option<&'static str>,
}

/// A [`Defence::guard`]: tcp-guard exactly as installed, with no setting
/// (the server namespace keeps the kernel's defaults but `syncookies`).
pub const DEFAULTS: &str = "defaults";

pub const DEFENCES: &[Defence] = &[
    Defence {
        name: "none (syncookies=0)",
        syncookies: 0,
        synproxy: false,
        guard: None,
    },
    Defence {
        name: "kernel syncookies=1",
        syncookies: 1,
        synproxy: false,
        guard: None,
    },
    Defence {
        name: "kernel syncookies=2",
        syncookies: 2,
        synproxy: false,
        guard: None,
    },
    Defence {
        name: "nftables synproxy",
        syncookies: 2,
        synproxy: true,
        guard: None,
    },
    Defence {
        name: "tcp-guard defaults, stock host",
        syncookies: 1,
        synproxy: false,
        guard: Some(DEFAULTS),
    },
    Defence {
        name: "tcp-guard challenge, cookies=0",
        syncookies: 0,
        synproxy: false,
        guard: Some("retransmit-challenge"),
    },
    Defence {
        name: "tcp-guard challenge, cookies=1",
        syncookies: 1,
        synproxy: false,
        guard: Some("retransmit-challenge"),
    },
    Defence {
        name: "tcp-guard syncookie, cookies=2",
        syncookies: 2,
        synproxy: false,
        guard: Some("syncookie"),
    },
    Defence {
        name: "tcp-guard verified-only, cookies=0",
        syncookies: 0,
        synproxy: false,
        guard: Some("verified-only"),
    },
    Defence {
        name: "tcp-guard verified-only, cookies=1",
        syncookies: 1,
        synproxy: false,
        guard: Some("verified-only"),
    },
    Defence {
        name: "tcp-guard pass, cookies=0",
        syncookies: 0,
        synproxy: false,
        guard: Some("pass"),
    },
    Defence {
        name: "tcp-guard pass, cookies=1",
        syncookies: 1,
        synproxy: false,
        guard: Some("pass"),
    },
];

/// What to run.
pub struct Plan {
    pub defences: Vec<Defence>,
    /// SYNs per second; 0: as fast as the generator goes.
    pub rates: Vec<u64>,
    pub duration: Duration,
}

impl Plan {
    /// The full benchmark (about 7 minutes on 2 cores).
    pub fn full() -> Plan {
        Plan {
            defences: DEFENCES.to_vec(),
            rates: vec![10_000, 50_000, 100_000, 200_000, 0],
            duration: Duration::from_secs(5),
        }
    }

    /// One short step of each kind of defence, for the test run.
    pub fn smoke() -> Plan {
        Plan {
            defences: vec![DEFENCES[1], DEFENCES[3], DEFENCES[4], DEFENCES[5], DEFENCES[7]],
            rates: vec![5_000],
            duration: Duration::from_secs(2),
        }
    }
}

/// What one run measured. Its fields are the keys of a run in the results
/// JSON (serde writes and reads them), plus `success_percent` for readers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub defence: String,
    pub rate_asked: u64,
    pub rate_reached: f64,
    pub sent: u64,
    pub connects: usize,
    pub connected: usize,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub peak_syn_recv: usize,
    /// Kernel CPU (system + irq + softirq, all CPUs) during the flood, less
    /// the background rate measured just before, per million SYNs sent. It
    /// includes the generator's own send path, the same in every run; the
    /// clock ticks in hundredths of a second, so low rates are coarse.
    pub kernel_cpu_s_per_million: f64,
    /// Packets tcp-guard dropped (all reasons), if it ran.
    pub guard_drops: Option<u64>,
}

impl Run {
    pub fn success_percent(&self) -> f64 {
        if self.connects == 0 {
            0.0
        } else {
            100.0 * self.connected as f64 / self.connects as f64
        }
    }

    /// The run as written in the results JSON.
    pub fn to_json(&self) -> Result<Value> {
        let mut value = serde_json::to_value(self)?;
        value["success_percent"] = json!(self.success_percent());
        Ok(value)
    }

    /// A run read back from the results JSON (`success_percent` is derived,
    /// so ignored).
    pub fn from_json(value: &Value) -> Result<Run> {
        Run::deserialize(value).context("not a flood benchmark run")
    }
}

/// Kernel CPU seconds so far: system + irq + softirq of all CPUs.
fn kernel_cpu_secs() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq ...; USER_HZ is 100.
    let ticks = fields.get(2).copied().unwrap_or(0)
        + fields.get(5).copied().unwrap_or(0)
        + fields.get(6).copied().unwrap_or(0);
    Ok(ticks as f64 / 100.0)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[index])
}

fn drops(stats: &Value) -> u64 {
    stats["counters"]
        .as_object()
        .map(|c| {
            c.iter()
                .filter(|(k, _)| k.starts_with("drop_"))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

fn client_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 100 + i)
}

/// Runs one defence at one rate in a fresh lab.
pub fn run_one(defence: &Defence, rate: u64, duration: Duration) -> Result<Run> {
    let lab = Lab::new()?;
    lab.server
        .sysctl("net.ipv4.tcp_syncookies", &defence.syncookies.to_string())?;
    // The syncookie policy answers from XDP: timestamps without random
    // offsets keep the options its cookies carry (tcp-guard's defaults set
    // them itself while they answer), and the client's veth end must run XDP
    // to receive what XDP sends back (a real NIC need not).
    if defence.guard == Some("syncookie") {
        lab.server.sysctl("net.ipv4.tcp_timestamps", "2")?;
    }
    let _client_xdp = if matches!(defence.guard, Some("syncookie" | DEFAULTS)) {
        Some(lab.receive_xdp_tx()?)
    } else {
        None
    };
    for i in 0..CLIENT_ADDRS {
        lab.client.ip(&[
            "addr",
            "add",
            &format!("{}/24", client_addr(i)),
            "dev",
            &lab.client_iface,
        ])?;
    }
    if defence.synproxy {
        lab.server.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")?;
        for rule in [
            "add table ip tg_synproxy".to_string(),
            "add chain ip tg_synproxy pre { type filter hook prerouting priority raw; }".to_string(),
            format!("add rule ip tg_synproxy pre tcp dport {PORT} tcp flags syn notrack"),
            "add chain ip tg_synproxy in { type filter hook input priority filter; }".to_string(),
            format!(
                "add rule ip tg_synproxy in tcp dport {PORT} ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm"
            ),
            "add rule ip tg_synproxy in ct state invalid drop".to_string(),
        ] {
            run(lab.server.command("nft").arg(rule))?;
        }
    }
    let daemon = match defence.guard {
        Some(DEFAULTS) => Some(Daemon::start(&lab.server, &lab.server_iface, &[])?),
        Some(policy) => Some(Daemon::start(
            &lab.server,
            &lab.server_iface,
            &[
                "--set",
                &format!("attack.policy={policy}"),
                // Below the listener's backlog: the kernel's queue never overflows.
                "--set",
                "limits.global_half_open=100",
                "--set",
                "attack.enter_half_open=25",
                "--set",
                "attack.leave_half_open=10",
            ],
        )?),
        None => None,
    };
    let server_addr = SocketAddr::new(lab.server_addr(false), PORT);
    let listener = listen(&lab.server, server_addr, BACKLOG)?;
    let accepting = Arc::new(AtomicBool::new(true));
    let acceptor = spawn_acceptor(listener, accepting.clone())?;
    let stats_before = daemon.as_ref().map(|_| stats_json(&lab.server_iface));

    let injector = Injector::open(&lab.client, &lab.client_iface)?;
    let spec = FloodSpec {
        dst: server_addr.ip(),
        dst_port: PORT,
        dst_mac: Lab::mac(&lab.server, &lab.server_iface)?,
        sources: Sources::Random {
            network: IpAddr::from([198, 19, 0, 0]),
            prefix_len: 16,
        },
        rate,
        count: if rate == 0 {
            10_000_000
        } else {
            rate * duration.as_secs().max(1)
        },
        duration,
    };
    let flooding = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let next_addr = Arc::new(AtomicUsize::new(0));
    // The kernel's background CPU (timers, the daemon, ...), measured in a
    // quiet second before the flood and subtracted from the flood's.
    let quiet_start = kernel_cpu_secs()?;
    std::thread::sleep(Duration::from_secs(1));
    let background_per_sec = kernel_cpu_secs()? - quiet_start;
    let cpu_before = kernel_cpu_secs()?;
    let flood_start = Instant::now();
    let report = std::thread::scope(|scope| -> Result<_> {
        // Read from the server namespace's /proc/net/tcp (request sockets
        // show as state 03) rather than by running `ss`: process spawns would
        // show up in the CPU figures.
        let sampler = scope.spawn(|| {
            lab.server.enter(|| {
                while flooding.load(Ordering::Relaxed) {
                    peak.fetch_max(syn_recv_in_this_namespace(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        });
        let clients: Vec<_> = (0..CLIENT_THREADS)
            .map(|_| {
                scope.spawn(|| {
                    // Let the flood build up first.
                    std::thread::sleep(Duration::from_millis(300));
                    while flooding.load(Ordering::Relaxed) {
                        let i = next_addr.fetch_add(1, Ordering::Relaxed) % CLIENT_ADDRS as usize;
                        let local = SocketAddr::new(IpAddr::V4(client_addr(i as u8)), 0);
                        let start = Instant::now();
                        let result = lab
                            .client
                            .enter(move || connect_from(local, server_addr, Duration::from_secs(3)));
                        attempts.fetch_add(1, Ordering::Relaxed);
                        if let Ok(Ok(_stream)) = result {
                            latencies
                                .lock()
                                .expect("latencies")
                                .push(start.elapsed().as_secs_f64() * 1000.0);
                        }
                        // Clients, not a load test: ~20 new connections a second each.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            })
            .collect();
        let report = flood(&injector, &spec, &AtomicBool::new(false));
        let cpu_after =
            kernel_cpu_secs().map(|now| now - background_per_sec * flood_start.elapsed().as_secs_f64());
        flooding.store(false, Ordering::Relaxed);
        for client in clients {
            client
                .join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        }
        sampler
            .join()
            .map_err(|_| anyhow::anyhow!("sampler thread panicked"))??;
        Ok((report?, cpu_after?))
    })?;
    let (report, cpu_after) = report;
    let guard_drops = match (&daemon, &stats_before) {
        (Some(_), Some(before)) => Some(drops(&stats_json(&lab.server_iface)) - drops(before)),
        _ => None,
    };
    accepting.store(false, Ordering::Relaxed);
    acceptor
        .join()
        .map_err(|_| anyhow::anyhow!("acceptor thread panicked"))?;
    drop(daemon);

    let mut latencies = latencies.lock().expect("latencies").clone();
    latencies.sort_by(f64::total_cmp);
    Ok(Run {
        defence: defence.name.to_string(),
        rate_asked: rate,
        rate_reached: report.rate(),
        sent: report.sent,
        connects: attempts.load(Ordering::Relaxed),
        connected: latencies.len(),
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
        peak_syn_recv: peak.load(Ordering::Relaxed),
        kernel_cpu_s_per_million: ((cpu_after - cpu_before) / (report.sent.max(1) as f64 / 1e6)).max(0.0),
        guard_drops,
    })
}

/// Sockets in SYN-RECV in the calling thread's network namespace.
fn syn_recv_in_this_namespace() -> usize {
    ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| line.split_whitespace().nth(3) == Some("03"))
                .count()
        })
        .sum()
}

fn spawn_acceptor(listener: TcpListener, accepting: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        while accepting.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => drop(conn),
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }))
}

/// Runs the plan, printing each result as it comes.
pub fn run_plan(plan: &Plan) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for defence in &plan.defences {
        for &rate in &plan.rates {
            let r = run_one(defence, rate, plan.duration)
                .with_context(|| format!("{} at {} SYN/s", defence.name, rate))?;
            println!(
                "{:<36} asked {:>7} reached {:>8.0} SYN/s: connects {:>3}/{:<3} p50 {:>6} p99 {:>6} peak SYN-RECV {:>4} CPU {:.2} s/M",
                r.defence,
                rate_label(rate),
                r.rate_reached,
                r.connected,
                r.connects,
                ms(r.latency_p50_ms),
                ms(r.latency_p99_ms),
                r.peak_syn_recv,
                r.kernel_cpu_s_per_million
            );
            runs.push(r);
        }
    }
    Ok(runs)
}

fn rate_label(rate: u64) -> String {
    if rate == 0 {
        "max".to_string()
    } else {
        format!("{}k", rate / 1000)
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.0}ms"))
}

/// The machine the run happened on.
pub fn machine() -> Value {
    let machine = Machine::read();
    json!({
        "kernel": machine.kernel,
        "cpu": machine.cpu.unwrap_or_else(|| "unknown".to_string()),
        "cores": machine.cores,
    })
}

/// Writes `flood-<stamp>.json`, `.md`, `.png` and `.svg` (the figure, see
/// [`plot`]) into `dir`; returns their paths in that order.
pub fn write_results(runs: &[Run], plan: &Plan, dir: &Path, stamp: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let base = dir.join(format!("flood-{stamp}"));
    let json_path = base.with_extension("json");
    let doc = json!({
        "machine": machine(),
        "date": stamp,
        "duration_secs": plan.duration.as_secs(),
        "runs": runs.iter().map(Run::to_json).collect::<Result<Vec<_>>>()?,
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;
    let md_path = base.with_extension("md");
    std::fs::write(&md_path, markdown(runs)?)?;
    let mut written = vec![json_path, md_path];
    written.extend(plot(runs, &plan.rates, &subtitle(&doc), &base)?);
    Ok(written)
}

/// A results JSON read back: the document and its runs.
pub fn read_results(path: &Path) -> Result<(Value, Vec<Run>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let runs = doc["runs"]
        .as_array()
        .with_context(|| format!("{} has no \"runs\" list", path.display()))?
        .iter()
        .enumerate()
        .map(|(i, run)| Run::from_json(run).with_context(|| format!("{}: run {i}", path.display())))
        .collect::<Result<Vec<_>>>()?;
    Ok((doc, runs))
}

/// The rate steps of `runs`, in the order they were run.
pub fn rates_of(runs: &[Run]) -> Vec<u64> {
    let mut rates = Vec::new();
    for run in runs {
        if !rates.contains(&run.rate_asked) {
            rates.push(run.rate_asked);
        }
    }
    rates
}

/// The figure's second line: when, how long each step, and on what.
pub fn subtitle(doc: &Value) -> String {
    let machine = &doc["machine"];
    format!(
        "{}, {} s per step; {} cores, {}, Linux {}",
        doc["date"].as_str().map_or("undated".to_string(), readable_stamp),
        doc["duration_secs"]
            .as_u64()
            .map_or("?".to_string(), |s| s.to_string()),
        machine["cores"]
            .as_u64()
            .map_or("?".to_string(), |c| c.to_string()),
        machine["cpu"].as_str().unwrap_or("unknown CPU"),
        machine["kernel"].as_str().unwrap_or("unknown kernel"),
    )
}

pub fn markdown(runs: &[Run]) -> Result<String> {
    let mut out = String::from(
        "| defence | SYN/s asked | SYN/s reached | real connects ok | p50 | p99 | peak SYN-RECV | kernel CPU s / M SYN | tcp-guard drops |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        writeln!(
            out,
            "| {} | {} | {:.0} | {}/{} ({:.0} %) | {} | {} | {} | {:.2} | {} |",
            r.defence,
            rate_label(r.rate_asked),
            r.rate_reached,
            r.connected,
            r.connects,
            r.success_percent(),
            ms(r.latency_p50_ms),
            ms(r.latency_p99_ms),
            r.peak_syn_recv,
            r.kernel_cpu_s_per_million,
            r.guard_drops.map_or("-".to_string(), |d| d.to_string())
        )?;
    }
    Ok(out)
}

/// The Debian package that holds the figure's font; `cargo xtask setup`
/// installs it.
const FONT_PACKAGE: &str = "fonts-dejavu-core";
const FONT_FILES: [(FontStyle, &str); 2] = [
    (
        FontStyle::Normal,
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    ),
    (
        FontStyle::Bold,
        "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    ),
];
/// The family the font files are registered as (and the SVG names).
const FONT: &str = "sans-serif";
/// The figure's size in pixels (PNG) or user units (SVG).
const FIGURE: (u32, u32) = (1600, 1700);
const TITLE_HEIGHT: u32 = 90;
const LEGEND_WIDTH: u32 = 470;

/// One colour per defence, qualitative: black (the first defence is no
/// defence), the ten of category10, and navy.
const PALETTE: [RGBColor; 12] = [
    RGBColor(0x00, 0x00, 0x00),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x39, 0x3b, 0x79),
];

#[derive(Clone, Copy)]
enum Shape {
    Circle,
    Square,
    TriangleUp,
    Diamond,
    TriangleDown,
    Plus,
    Cross,
}

/// One marker per defence as well, filled then hollow, so that series that
/// share a value stay told apart where their points overlap.
const MARKERS: [(Shape, bool); 12] = [
    (Shape::Circle, true),
    (Shape::Square, true),
    (Shape::TriangleUp, true),
    (Shape::Diamond, true),
    (Shape::TriangleDown, true),
    (Shape::Circle, false),
    (Shape::Square, false),
    (Shape::TriangleUp, false),
    (Shape::Diamond, false),
    (Shape::TriangleDown, false),
    (Shape::Plus, false),
    (Shape::Cross, false),
];

/// The width of a rate step over which the defences' points are spread.
const SPREAD: f64 = 0.84;

/// How one defence is drawn.
struct Series<'a> {
    name: &'a str,
    colour: RGBColor,
    marker: (Shape, bool),
    /// Dashed: a defence without tcp-guard.
    dashed: bool,
    /// Sideways from the rate step's centre, in rate steps.
    offset: f64,
}

fn series(runs: &[Run]) -> Vec<Series<'_>> {
    let mut names: Vec<&str> = Vec::new();
    for run in runs {
        if !names.contains(&run.defence.as_str()) {
            names.push(&run.defence);
        }
    }
    let n = names.len();
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| Series {
            name,
            colour: PALETTE[i % PALETTE.len()],
            // Shifted once per lap of the palette: each pair stays unique.
            marker: MARKERS[(i + i / PALETTE.len()) % MARKERS.len()],
            dashed: !name.starts_with("tcp-guard"),
            offset: if n > 1 {
                SPREAD * (i as f64 / (n - 1) as f64 - 0.5)
            } else {
                0.0
            },
        })
        .collect()
}

/// One panel: a measure against the rate step.
struct Panel {
    caption: &'static str,
    y_desc: &'static str,
    /// What is plotted of a run (a logarithm on a log axis), if anything.
    value: fn(&Run) -> Option<f64>,
    y_range: std::ops::Range<f64>,
    y_ticks: Vec<f64>,
    y_label: Box<dyn Fn(f64) -> String>,
}

fn panels(runs: &[Run]) -> [Panel; 3] {
    // p99 latency on a log axis: 1 ms (cookies) to 2 s (retransmitted
    // SYNs) in one panel. Ticks at 1, 2 and 5 times powers of ten.
    let latencies: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.latency_p99_ms)
        .filter(|ms| *ms > 0.0)
        .collect();
    let (low, high) = if latencies.is_empty() {
        (0.0, 3.0)
    } else {
        let min = latencies.iter().copied().fold(f64::INFINITY, f64::min);
        let max = latencies.iter().copied().fold(0.0, f64::max);
        ((min / 1.4).log10(), (max * 1.4).log10())
    };
    let latency_ticks = (low.floor() as i32..=high.ceil() as i32)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m: f64| m.log10() + e as f64))
        .filter(|t| (low..=high).contains(t))
        .collect();

    let max_cpu = runs
        .iter()
        .map(|r| r.kernel_cpu_s_per_million)
        .fold(0.0, f64::max);
    let max_cpu = if max_cpu > 0.0 { max_cpu } else { 1.0 };
    let step = nice_step(max_cpu / 6.0);
    let cpu_top = (max_cpu * 1.06 / step).ceil() * step;
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let cpu_ticks = (0..=(cpu_top / step).round() as u32)
        .map(|i| i as f64 * step)
        .collect();

    [
        Panel {
            caption: "(a) Real clients' connects that succeed",
            y_desc: "connects succeeding (%)",
            value: |r| Some(r.success_percent()),
            y_range: -6.0..106.0,
            y_ticks: vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0],
            y_label: Box::new(|v| format!("{v:.0}")),
        },
        Panel {
            caption: "(b) p99 latency of the connects that succeed (no point: none did)",
            y_desc: "p99 connect latency (ms, log scale)",
            value: |r| r.latency_p99_ms.filter(|ms| *ms > 0.0).map(f64::log10),
            y_range: low..high,
            y_ticks: latency_ticks,
            y_label: Box::new(|v| {
                let ms = 10f64.powf(v);
                if ms < 1.0 {
                    format!("{ms:.1}")
                } else {
                    format!("{ms:.0}")
                }
            }),
        },
        Panel {
            caption: "(c) Kernel CPU per million flood SYNs",
            y_desc: "kernel CPU (s / million SYNs)",
            value: |r| Some(r.kernel_cpu_s_per_million),
            y_range: 0.0..cpu_top,
            y_ticks: cpu_ticks,
            y_label: Box::new(move |v| format!("{v:.decimals$}")),
        },
    ]
}

/// A linear axis with its ticks where we put them: at the rate steps, or
/// at 1-2-5 on a log axis (plotters' own would pick round numbers).
#[derive(Clone)]
struct Ticked {
    linear: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: std::ops::Range<f64>, ticks: Vec<f64>) -> Ticked {
        Ticked {
            linear: range.into(),
            ticks,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // No light grid lines between the ticks.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.linear.range()
    }
}

/// Only the fallback: every panel sets its own label formatters.
impl ValueFormatter<f64> for Ticked {
    fn format(value: &f64) -> String {
        value.to_string()
    }
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice_step(x: f64) -> f64 {
    let decade = 10f64.powf(x.log10().floor());
    let mantissa = x / decade;
    decade
        * if mantissa <= 1.0 {
            1.0
        } else if mantissa <= 2.0 {
            2.0
        } else if mantissa <= 5.0 {
            5.0
        } else {
            10.0
        }
}

/// Registers the font files with plotters, once.
fn register_fonts() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            for (style, path) in FONT_FILES {
                let bytes = std::fs::read(path).map_err(|e| {
                    format!(
                        "cannot read the figure's font {path} ({e}): install the Debian package {FONT_PACKAGE} (`cargo xtask setup` does)"
                    )
                })?;
                // plotters keeps fonts for the life of the process.
                plotters::style::register_font(FONT, style, Box::leak(bytes.into_boxed_slice()))
                    .map_err(|_| format!("{path} is not a font plotters can read (from {FONT_PACKAGE})"))?;
            }
            Ok(())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Draws the figure of `runs` into `<base>.png` and `<base>.svg`; returns
/// their paths. Three panels against the rate steps `rates` (real-connect
/// success, p99 connect latency, kernel CPU per million SYNs), one colour,
/// marker and sideways offset per defence, and the legend at the right.
pub fn plot(runs: &[Run], rates: &[u64], subtitle: &str, base: &Path) -> Result<Vec<PathBuf>> {
    register_fonts()?;
    let png = base.with_extension("png");
    let svg = base.with_extension("svg");
    {
        let bitmap = BitMapBackend::new(&png, FIGURE).into_drawing_area();
        draw_figure(&bitmap, runs, rates, subtitle)?;
        bitmap
            .present()
            .with_context(|| format!("cannot write {}", png.display()))?;
    }
    {
        let vector = SVGBackend::new(&svg, FIGURE).into_drawing_area();
        draw_figure(&vector, runs, rates, subtitle)?;
        vector
            .present()
            .with_context(|| format!("cannot write {}", svg.display()))?;
    }
    Ok(vec![png, svg])
}

fn draw_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[Run],
    rates: &[u64],
    subtitle: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(TITLE_HEIGHT);
    title.draw_text(
        "Flood benchmark: real clients connecting during a spoofed SYN flood, by defence",
        &(FONT, 34, FontStyle::Bold).into_font().color(&BLACK),
        (24, 16),
    )?;
    title.draw_text(
        subtitle,
        &(FONT, 23).into_font().color(&BLACK.mix(0.75)),
        (24, 58),
    )?;
    let (plots, legend) = body.split_horizontally(FIGURE.0 - LEGEND_WIDTH);
    let series = series(runs);
    for (area, panel) in plots.split_evenly((3, 1)).iter().zip(panels(runs)) {
        draw_panel(area, &panel, runs, rates, &series)?;
    }
    draw_legend(&legend, &series)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    runs: &[Run],
    rates: &[u64],
    series: &[Series],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let steps = rates.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.caption, (FONT, 26, FontStyle::Bold))
        .margin(12)
        .margin_right(24)
        .x_label_area_size(72)
        .y_label_area_size(104)
        .build_cartesian_2d(
            Ticked::new(-0.5..steps as f64 - 0.5, (0..steps).map(|i| i as f64).collect()),
            Ticked::new(panel.y_range.clone(), panel.y_ticks.clone()),
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(BLACK.mix(0.12))
        .x_label_formatter(&|x| {
            rates
                .get(x.round().max(0.0) as usize)
                .map_or(String::new(), |rate| rate_label(*rate))
        })
        .y_label_formatter(&|y| (panel.y_label)(*y))
        .x_desc("flood rate asked (SYN/s; max: as fast as the generator goes)")
        .y_desc(panel.y_desc)
        .label_style((FONT, 21))
        .axis_desc_style((FONT, 22))
        .draw()?;
    // Rate steps apart.
    for step in 1..steps {
        let x = step as f64 - 0.5;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, panel.y_range.start), (x, panel.y_range.end)],
            BLACK.mix(0.25),
        )))?;
    }
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            rates
                .iter()
                .enumerate()
                .filter_map(|(step, rate)| {
                    runs.iter()
                        .find(|r| r.defence == s.name && r.rate_asked == *rate)
                        .and_then(|r| (panel.value)(r))
                        .map(|y| (step as f64 + s.offset, y))
                })
                .collect()
        })
        .collect();
    // Lines first, then every marker on top of every line.
    for (s, points) in series.iter().zip(&points) {
        let style = s.colour.mix(0.8).stroke_width(2);
        // Only neighbouring rate steps are joined: a missing value stays a gap.
        for pair in points.windows(2) {
            if (pair[1].0 - pair[0].0 - 1.0).abs() < 1e-9 {
                if s.dashed {
                    chart.draw_series(DashedLineSeries::new(pair.to_vec(), 9, 6, style))?;
                } else {
                    chart.draw_series(LineSeries::new(pair.to_vec(), style))?;
                }
            }
        }
    }
    for (s, points) in series.iter().zip(&points) {
        for point in points {
            marker(chart.plotting_area(), *point, s)?;
        }
    }
    Ok(())
}

/// A defence's marker at `at`, 16 pixels across.
fn marker<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    at: CT::From,
    s: &Series,
) -> Result<()>
where
    DB::ErrorType: 'static,
    CT::From: Copy,
{
    let (shape, filled) = s.marker;
    let outline = s.colour.stroke_width(2);
    let inside = if filled { s.colour.filled() } else { WHITE.filled() };
    let polygon = |mut points: Vec<(i32, i32)>| -> Result<()> {
        area.draw(&(EmptyElement::at(at) + Polygon::new(points.clone(), inside)))?;
        points.push(points[0]);
        area.draw(&(EmptyElement::at(at) + PathElement::new(points, outline)))?;
        Ok(())
    };
    let strokes = |lines: [[(i32, i32); 2]; 2]| -> Result<()> {
        for line in lines {
            area.draw(&(EmptyElement::at(at) + PathElement::new(line.to_vec(), s.colour.stroke_width(3))))?;
        }
        Ok(())
    };
    match shape {
        Shape::Circle => {
            area.draw(
                &(EmptyElement::at(at) + Circle::new((0, 0), 7, inside) + Circle::new((0, 0), 7, outline)),
            )?;
            Ok(())
        }
        Shape::Square => polygon(vec![(-6, -6), (6, -6), (6, 6), (-6, 6)]),
        Shape::TriangleUp => polygon(vec![(0, -8), (8, 6), (-8, 6)]),
        Shape::TriangleDown => polygon(vec![(0, 8), (8, -6), (-8, -6)]),
        Shape::Diamond => polygon(vec![(0, -8), (8, 0), (0, 8), (-8, 0)]),
        Shape::Plus => strokes([[(-8, 0), (8, 0)], [(0, -8), (0, 8)]]),
        Shape::Cross => strokes([[(-7, -7), (7, 7)], [(-7, 7), (7, -7)]]),
    }
}

fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, series: &[Series]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let left = |size, style| {
        // Not .style(): plotters would keep the normal face's glyphs.
        (FONT, size, style)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center))
    };
    area.draw_text("Defence", &left(25, FontStyle::Bold), (16, 40))?;
    let mut y = 84;
    for s in series {
        let line = [(16, y), (84, y)];
        if s.dashed {
            area.draw(&DashedPathElement::new(line, 9, 6, s.colour.stroke_width(2)))?;
        } else {
            area.draw(&PathElement::new(line.to_vec(), s.colour.stroke_width(2)))?;
        }
        marker(area, (50, y), s)?;
        area.draw_text(s.name, &left(21, FontStyle::Normal), (98, y))?;
        y += 38;
    }
    y += 20;
    for note in [
        "Solid lines: tcp-guard; dashed: without it.",
        "cookies=N, syncookies=N: the server's",
        "net.ipv4.tcp_syncookies.",
        "In each rate step the defences' points are",
        "spread sideways, in legend order, so that",
        "equal values (0 %, 100 %) stay apart.",
        "(c): less the idle rate; it includes the",
        "generator's own send path.",
    ] {
        area.draw_text(note, &left(20, FontStyle::Normal), (16, y))?;
        y += 28;
    }
    Ok(())
}

/// 20261128T094500Z as 2026-11-28 09:45:00 UTC; anything else as it is.
fn readable_stamp(stamp: &str) -> String {
    let b = stamp.as_bytes();
    if b.len() == 16 && b[8] == b'T' && b[15] == b'Z' && stamp.is_ascii() {
        format!(
            "{}-{}-{} {}:{}:{} UTC",
            &stamp[0..4],
            &stamp[4..6],
            &stamp[6..8],
            &stamp[9..11],
            &stamp[11..13],
            &stamp[13..15]
        )
    } else {
        stamp.to_string()
    }
}

/// A UTC timestamp for result file names: 20261128T094500Z.
pub fn stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(defence: &str, rate: u64, connected: usize, p99: Option<f64>) -> Run {
        Run {
            defence: defence.to_string(),
            rate_asked: rate,
            rate_reached: rate as f64 * 0.99,
            sent: rate * 5,
            connects: 12,
            connected,
            latency_p50_ms: p99.map(|ms| ms / 2.0),
            latency_p99_ms: p99,
            peak_syn_recv: 25,
            kernel_cpu_s_per_million: 4.5,
            guard_drops: Some(7),
        }
    }

    #[test]
    fn a_run_reads_back_from_its_json() {
        let original = run("tcp-guard challenge, cookies=0", 50_000, 9, None);
        let json = original.to_json().unwrap();
        assert_eq!(json["success_percent"], json!(75.0));
        assert!(json["latency_p99_ms"].is_null());
        let back = Run::from_json(&json).unwrap();
        assert_eq!(format!("{back:?}"), format!("{original:?}"));
        assert!(Run::from_json(&json!({"defence": "x"})).is_err());
    }

    #[test]
    fn the_figure_is_a_png_and_an_svg_naming_every_defence() {
        let runs: Vec<Run> = ["none (syncookies=0)", "tcp-guard syncookie, cookies=2"]
            .iter()
            .flat_map(|d| {
                [10_000, 0].map(|rate| run(d, rate, if d.starts_with("none") { 0 } else { 12 }, None))
            })
            .map(|mut r| {
                if r.connected > 0 {
                    r.latency_p99_ms = Some(2.0);
                }
                r
            })
            .collect();
        assert_eq!(rates_of(&runs), [10_000, 0]);
        let dir = std::env::temp_dir().join(format!("tcp-guard-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = plot(&runs, &rates_of(&runs), "test", &dir.join("flood-test")).unwrap();
        let png = std::fs::read(&written[0]).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        let svg = std::fs::read_to_string(&written[1]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains("none (syncookies=0)") && svg.contains("tcp-guard syncookie, cookies=2"));
        assert!(svg.lines().any(|l| l.trim() == "max"), "rate labels");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(6.4), 10.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert!((nice_step(0.15) - 0.2).abs() < 1e-12);
    }
}
