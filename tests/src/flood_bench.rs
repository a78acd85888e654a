//! `cargo xtask bench flood`: the same spoofed SYN flood, stepped up in rate,
//! against a real listener under each defence (none, kernel SYN cookies,
//! nftables synproxy, tcp-guard in each attack-mode policy with kernel
//! cookies off and on), with new real clients connecting throughout. One
//! fresh lab per run. Results: JSON, a Markdown table and an SVG plot.

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
    /// tcp-guard's attack-mode policy, if tcp-guard runs.
    pub guard: Option<&'static str>,
}

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
            defences: vec![DEFENCES[1], DEFENCES[3], DEFENCES[4], DEFENCES[6]],
            rates: vec![5_000],
            duration: Duration::from_secs(2),
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Run {
    pub defence: &'static str,
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

    fn to_json(&self) -> Value {
        json!({
            "defence": self.defence,
            "rate_asked": self.rate_asked,
            "rate_reached": self.rate_reached,
            "sent": self.sent,
            "connects": self.connects,
            "connected": self.connected,
            "success_percent": self.success_percent(),
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p99_ms": self.latency_p99_ms,
            "peak_syn_recv": self.peak_syn_recv,
            "kernel_cpu_s_per_million": self.kernel_cpu_s_per_million,
            "guard_drops": self.guard_drops,
        })
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
    // offsets keep the options its cookies carry, and the client's veth end
    // must run XDP to receive what XDP sends back (a real NIC need not).
    let _client_xdp = if defence.guard == Some("syncookie") {
        lab.server.sysctl("net.ipv4.tcp_timestamps", "2")?;
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
        defence: defence.name,
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

/// Writes `flood-<stamp>.json`, `.md` and `.svg` into `dir`; returns their paths.
pub fn write_results(runs: &[Run], plan: &Plan, dir: &Path, stamp: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let base = dir.join(format!("flood-{stamp}"));
    let json_path = base.with_extension("json");
    let doc = json!({
        "machine": machine(),
        "date": stamp,
        "duration_secs": plan.duration.as_secs(),
        "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;
    let md_path = base.with_extension("md");
    std::fs::write(&md_path, markdown(runs)?)?;
    let svg_path = base.with_extension("svg");
    std::fs::write(&svg_path, svg(runs, &plan.rates)?)?;
    Ok(vec![json_path, md_path, svg_path])
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

/// Two panels against the rate step: real-connect success, and kernel CPU per million SYNs.
pub fn svg(runs: &[Run], rates: &[u64]) -> Result<String> {
    const W: f64 = 920.0;
    const PANEL_H: f64 = 260.0;
    const LEFT: f64 = 60.0;
    const PLOT_W: f64 = 560.0;
    let colours = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
        "#17becf",
    ];
    let max_cpu = runs
        .iter()
        .map(|r| r.kernel_cpu_s_per_million)
        .fold(0.1, f64::max);
    let x = |i: usize| LEFT + PLOT_W * (i as f64 + 0.5) / rates.len().max(1) as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * PANEL_H + 60.0
    );
    for (panel, (title, max, value)) in [
        (
            "real connects succeeding (%)",
            100.0,
            Box::new(|r: &Run| r.success_percent()) as Box<dyn Fn(&Run) -> f64>,
        ),
        (
            "kernel CPU s per million SYNs",
            max_cpu,
            Box::new(|r: &Run| r.kernel_cpu_s_per_million),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let top = 30.0 + panel as f64 * (PANEL_H + 20.0);
        let bottom = top + PANEL_H - 30.0;
        let y = |v: f64| bottom - (bottom - top - 20.0) * (v / max).clamp(0.0, 1.0);
        writeln!(
            out,
            "<text x=\"{LEFT}\" y=\"{}\" font-weight=\"bold\">{title}</text>",
            top + 10.0
        )?;
        writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"black\"/>",
            LEFT + PLOT_W
        )?;
        writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{}\" x2=\"{LEFT}\" y2=\"{bottom}\" stroke=\"black\"/>",
            top + 20.0
        )?;
        writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1}</text>",
            LEFT - 4.0,
            y(max) + 4.0,
            max
        )?;
        writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>",
            LEFT - 4.0,
            bottom + 4.0
        )?;
        for (i, rate) in rates.iter().enumerate() {
            writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{} SYN/s</text>",
                x(i),
                bottom + 16.0,
                rate_label(*rate)
            )?;
        }
        let mut names: Vec<&str> = runs.iter().map(|r| r.defence).collect();
        names.dedup();
        for (n, name) in names.iter().enumerate() {
            let colour = colours[n % colours.len()];
            let points: Vec<String> = rates
                .iter()
                .enumerate()
                .filter_map(|(i, rate)| {
                    runs.iter()
                        .find(|r| r.defence == *name && r.rate_asked == *rate)
                        .map(|r| format!("{:.1},{:.1}", x(i), y(value(r))))
                })
                .collect();
            writeln!(
                out,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                points.join(" ")
            )?;
            if panel == 0 {
                let ly = 50.0 + n as f64 * 18.0;
                writeln!(
                    out,
                    "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{colour}\"/>",
                    LEFT + PLOT_W + 20.0,
                    ly - 10.0
                )?;
                writeln!(
                    out,
                    "<text x=\"{}\" y=\"{ly}\">{name}</text>",
                    LEFT + PLOT_W + 38.0
                )?;
            }
        }
    }
    out.push_str("</svg>\n");
    Ok(out)
}

/// A UTC timestamp for result file names: 20261128T094500Z.
pub fn stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
}
