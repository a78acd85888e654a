//! Seeing what it sees: Prometheus metrics scraped while traffic runs, the
//! live view driven in a real 80x24 terminal (tmux) during a flood, what
//! members of the monitoring group read without root, shell completions and
//! the man page. Needs root.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    process::{Command, Output},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use tcp_guard_tests::{
    accounts::Account,
    daemon::{Daemon, counter, flows, stats_json, tcp_guard, tcp_guard_bin},
    flood::{FloodSpec, Sources, flood},
    inject::Injector,
    lab::{Lab, listen, run},
    scenario::{
        ATTACK_AT_4_HALF_OPEN, FreshAddresses, ONE_SYN_A_SECOND, SYN_RCVD_4S, Server, connects,
        timed_connect, wait_for,
    },
};

const PORT: u16 = 8080;
const METRICS: &str = "127.0.0.1:9966";

/// GET `path` from the metrics endpoint inside the server namespace.
fn get(lab: &Lab, path: &str) -> String {
    let path = path.to_string();
    lab.server
        .enter(move || {
            let mut stream = TcpStream::connect(METRICS).expect("connect to the metrics endpoint");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("read timeout");
            write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
            let mut response = String::new();
            stream.read_to_string(&mut response).expect("response");
            response
        })
        .expect("enter")
}

/// The value of one sample line, e.g. `tcp_guard_packets_total{iface="x",class="syn"}`.
fn sample(metrics: &str, name: &str, label: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} with {label} in:\n{metrics}"))
}

/// `tcp_guard_figures_age_seconds`: how old the served figures are.
fn age(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with("tcp_guard_figures_age_seconds{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tcp_guard_figures_age_seconds in:\n{metrics}"))
}

/// Attack mode quickly, with the policy whose drops these views show
/// (`auto` picks syncookie on the lab's stock settings).
fn attack_settings() -> Vec<&'static str> {
    [
        ATTACK_AT_4_HALF_OPEN,
        SYN_RCVD_4S,
        &["--set", "attack.policy=retransmit-challenge"],
    ]
    .concat()
}

/// A flood from random 198.19.0.0/16 sources at 10,000 SYN/s.
fn spoofed() -> (Sources, u64) {
    let network = "198.19.0.0".parse().unwrap();
    (
        Sources::Random {
            network,
            prefix_len: 16,
        },
        10_000,
    )
}

/// Sends the floods in parallel for `secs` seconds.
fn flood_for(lab: &Lab, floods: &[(Sources, u64)], secs: u64) {
    let dst_mac = Lab::mac(&lab.server, &lab.server_iface).expect("MAC");
    std::thread::scope(|scope| {
        for (sources, rate) in floods {
            let injector = Injector::open(&lab.client, &lab.client_iface).expect("injector");
            let spec = FloodSpec {
                dst: lab.server_addr(false),
                dst_port: PORT,
                dst_mac,
                sources: *sources,
                rate: *rate,
                count: rate * secs,
                duration: Duration::from_secs(secs),
            };
            scope.spawn(move || flood(&injector, &spec, &AtomicBool::new(false)).expect("flood"));
        }
    });
}

#[test]
fn metrics_move_with_the_traffic() {
    let lab = Lab::new().expect("lab");
    let mut args = vec!["--metrics", METRICS, "--bpf-stats"];
    args.extend(attack_settings());
    let daemon = Daemon::start(&lab.server, &lab.server_iface, &args).expect("start");
    // The daemon says it guards the interface before it opens the endpoint.
    wait_for("the metrics endpoint", Duration::from_secs(5), || {
        daemon.log().contains("serving Prometheus metrics")
    });
    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let listener = listen(&lab.server, addr, 64).expect("listen");

    let before = get(&lab, "/metrics");
    assert!(before.starts_with("HTTP/1.1 200 OK"), "{before}");
    assert!(
        before.contains("# TYPE tcp_guard_drops_total counter"),
        "{before}"
    );
    let iface = format!("iface=\"{}\"", lab.server_iface);
    assert_eq!(sample(&before, "tcp_guard_attack_mode", &iface), 0);

    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(lab.connect_pair(&listener, addr).expect("connect"));
    }
    flood_for(&lab, &[spoofed()], 2);
    let syn = |m: &str| sample(m, "tcp_guard_packets_total", "class=\"syn\"");
    // The figures are those of the control loop's last gathering, at most
    // a second old.
    let mut after = String::new();
    wait_for("the figures to take in the flood", Duration::from_secs(5), || {
        after = get(&lab, "/metrics");
        syn(&after) >= syn(&before) + 10_000
    });
    assert!(age(&after) < 2.0, "{after}");
    assert!(
        sample(&after, "tcp_guard_drops_total", "reason=\"challenge\"") > 1000,
        "{after}"
    );
    assert_eq!(sample(&after, "tcp_guard_attack_mode", &iface), 1);
    assert_eq!(sample(&after, "tcp_guard_flows", "state=\"established\""), 10);
    assert!(sample(&after, "tcp_guard_flow_transitions_total", "to=\"established\"") >= 10);
    assert!(sample(&after, "tcp_guard_table_capacity", "table=\"flows\"") > 0);
    assert!(get(&lab, "/other").starts_with("HTTP/1.1 404"));

    // The example dashboard only asks for what is served.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/grafana-dashboard.json")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets"))
        .map(|t| t["expr"].as_str().expect("expr"));
    for expr in exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tcp_guard_"))
        {
            assert!(
                after.contains(&format!("\n{name}{{")),
                "the dashboard's {name} is not served:\n{after}"
            );
        }
    }

    // Program run time (run --bpf-stats).
    let xdp = "program=\"xdp\"";
    let runs = |m: &str| sample(m, "tcp_guard_program_runs_total", xdp);
    assert_eq!(
        sample(&after, "tcp_guard_bpf_stats_enabled", &iface),
        1,
        "{after}"
    );
    assert!(
        runs(&after) >= runs(&before) + 10_000,
        "every SYN ran the program:\n{after}"
    );
    assert!(
        after.contains("tcp_guard_program_run_seconds_total{") && after.contains("program=\"tc_egress\""),
        "{after}"
    );
}

/// A tmux session, killed on drop.
struct Tmux(String);

impl Tmux {
    /// Runs `command` in a new 80x24 session named `name`.
    fn start(name: String, command: &str) -> Tmux {
        let session = Tmux(name);
        run(Command::new("tmux").args([
            "new-session",
            "-d",
            "-s",
            &session.0,
            "-x",
            "80",
            "-y",
            "24",
            command,
        ]))
        .expect("start tmux");
        session
    }

    /// Types q, which must end the program (and the session) within 5 s.
    fn quit(&self) {
        run(Command::new("tmux").args(["send-keys", "-t", &self.0, "q"])).expect("q");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.alive() {
            assert!(Instant::now() < deadline, "it did not quit on q");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn capture(&self) -> String {
        let out = run(Command::new("tmux").args(["capture-pane", "-p", "-t", &self.0])).expect("capture");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if self.alive()
            && let Err(e) = run(Command::new("tmux").args(["kill-session", "-t", &self.0]))
        {
            eprintln!("tmux cleanup: {e:#}");
        }
    }
}

#[test]
fn top_shows_a_flood_in_an_80x24_terminal_and_quits_on_q() {
    let lab = Lab::new().expect("lab");
    let _daemon = Daemon::start(&lab.server, &lab.server_iface, &attack_settings()).expect("start");
    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let _listener = listen(&lab.server, addr, 64).expect("listen");
    let session = Tmux::start(
        format!("tg-top-{}", lab.server_iface),
        &format!("{} top --iface {}", tcp_guard_bin().display(), lab.server_iface),
    );
    // Read the screen while the floods run: rates fall to zero after.
    let heavy: IpAddr = "198.19.255.7".parse().unwrap();
    let heavy_tops_the_rate_list = |screen: &str| {
        let lines: Vec<&str> = screen.lines().collect();
        lines
            .iter()
            .position(|l| l.contains("by SYN/s"))
            .and_then(|at| lines.get(at + 1))
            .is_some_and(|l| l.contains(&heavy.to_string()))
    };
    let screen = std::thread::scope(|scope| {
        scope.spawn(|| flood_for(&lab, &[spoofed(), (Sources::Fixed(heavy), 3_000)], 6));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let screen = session.capture();
            if (screen.contains("attack mode: ON") && heavy_tops_the_rate_list(&screen))
                || Instant::now() > deadline
            {
                return screen;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert!(
        heavy_tops_the_rate_list(&screen),
        "the 3,000 SYN/s source tops the SYN rate list:\n{screen}"
    );
    for expected in [
        "tcp-guard top",
        "attack mode: ON (half-open)",
        "per second",
        "half-open",
        "SYN/s",
        "challenge",
        "top sources",
        "blocked",
    ] {
        assert!(screen.contains(expected), "{expected:?} missing from:\n{screen}");
    }
    assert!(
        screen.lines().count() <= 24 && screen.lines().all(|l| l.chars().count() <= 80),
        "{screen}"
    );
    // docs/metrics.md shows this screen; TOP_CAPTURE=path keeps a fresh copy of it.
    if let Some(path) = std::env::var_os("TOP_CAPTURE") {
        std::fs::write(path, &screen).expect("write TOP_CAPTURE");
    }
    session.quit();
}

/// `tcp-guard ARGS` run with `setpriv IDS`, as another user.
fn tcp_guard_as(ids: &[String], args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(ids)
        .arg("--")
        .arg(tcp_guard_bin())
        .args(args)
        .output()
        .expect("setpriv")
}

/// Every key path of a JSON value (objects' keys, arrays' elements' keys).
fn shape(value: &serde_json::Value, at: &str, paths: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let path = format!("{at}.{key}");
                paths.push(path.clone());
                shape(inner, &path, paths);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                shape(item, &format!("{at}[]"), paths);
            }
        }
        _ => {}
    }
}

fn paths(value: &serde_json::Value) -> Vec<String> {
    let mut paths = Vec::new();
    shape(value, "", &mut paths);
    paths.sort();
    paths.dedup();
    paths
}

/// A plain-text output with its numbers (counts, ages) taken out.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| match w.trim_end_matches('s').parse::<f64>() {
            Ok(_) => "N".to_string(),
            Err(_) => w.to_string(),
        })
        .collect()
}

/// A member of the monitoring group runs `stats`, `flows` and `top` as
/// root does, through the daemon's socket, and is refused every change; a
/// user outside the group is told which group would let them read.
#[test]
fn members_of_the_monitoring_group_read_what_root_reads_and_change_nothing() {
    let lab = Lab::new().expect("lab");
    let account = Account::create().expect("a group and a user");
    let daemon = Daemon::start(
        &lab.server,
        &lab.server_iface,
        &["--monitor-group", &account.group],
    )
    .expect("start");
    daemon.wait_for_line(
        &format!("root and members of group {} may read", account.group),
        Duration::from_secs(5),
    );
    let iface = lab.server_iface.clone();
    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let listener = listen(&lab.server, addr, 16).expect("listen");
    let _held: Vec<_> = (0..3)
        .map(|_| lab.connect_pair(&listener, addr).expect("connect"))
        .collect();
    let member = account.setpriv();
    let read = |args: &[&str]| {
        let out = tcp_guard_as(&member, args);
        assert!(
            out.status.success(),
            "{args:?} as a member: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    };

    // stats: the daemon's figures are at most about a second old; the
    // connections are quiet by now, so the TCP figures are root's.
    let theirs: serde_json::Value =
        serde_json::from_str(&read(&["stats", "--iface", &iface, "--json"])).expect("JSON");
    let roots = stats_json(&iface);
    assert_eq!(paths(&theirs), paths(&roots), "{theirs}\n{roots}");
    for counter in ["syn", "syn_ack", "to_established"] {
        assert_eq!(
            theirs["counters"][counter], roots["counters"][counter],
            "{counter}: {theirs}\n{roots}"
        );
    }
    assert_eq!(theirs["counters"]["to_established"], 3, "{theirs}");
    for same in ["iface", "flows", "tables", "attack", "half_open"] {
        assert_eq!(theirs[same], roots[same], "{same}: {theirs}\n{roots}");
    }
    let text = read(&["stats", "--iface", &iface]);
    let root_text = String::from_utf8(tcp_guard(&["stats", "--iface", &iface]).stdout).expect("UTF-8");
    assert_eq!(words(&text), words(&root_text), "{text}\n{root_text}");

    // flows: the same flows, in the same order and form.
    let theirs: serde_json::Value =
        serde_json::from_str(&read(&["flows", "--iface", &iface, "--json"])).expect("JSON");
    let listed: Vec<(String, String, String)> = theirs["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| {
            let field = |k: &str| f[k].as_str().expect("string").to_string();
            (field("state"), field("local"), field("peer"))
        })
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    let roots: Vec<(String, String, String)> = flows(&iface)
        .into_iter()
        .map(|(state, local, peer)| (state, local.to_string(), peer.to_string()))
        .collect();
    assert_eq!(sorted, roots);
    assert_eq!(roots.len(), 3, "{roots:?}");
    assert_eq!(
        paths(&theirs),
        paths(
            &serde_json::from_slice(&tcp_guard(&["flows", "--iface", &iface, "--json"]).stdout)
                .expect("JSON")
        )
    );
    let one = read(&["flows", "--iface", &iface, "--state", "ESTAB", "-n", "1"]);
    assert_eq!(one.lines().count(), 2, "a header and one flow:\n{one}");
    assert_eq!(
        words(&one),
        words(&String::from_utf8_lossy(
            &tcp_guard(&["flows", "--iface", &iface, "--state", "ESTAB", "-n", "1"]).stdout
        )),
    );

    // top, in a real terminal.
    let session = Tmux::start(
        format!("tg-top-{iface}"),
        &format!(
            "setpriv {} -- {} top --iface {iface}",
            member.join(" "),
            tcp_guard_bin().display()
        ),
    );
    let estab = |screen: &str| {
        screen
            .split("ESTAB")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let screen = loop {
        let screen = session.capture();
        if estab(&screen).is_some() || Instant::now() > deadline {
            break screen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(estab(&screen), Some(3), "{screen}");
    for expected in [
        "tcp-guard top",
        "attack mode: off",
        "per second",
        "top sources",
        "blocked (0)",
    ] {
        assert!(screen.contains(expected), "{expected:?} missing from:\n{screen}");
    }
    session.quit();

    // Changes stay root's.
    for args in [
        vec!["block", "add", "--iface", &iface, "198.19.0.0/16"],
        vec!["limits", "set", "--iface", &iface, "limits.syn_rate=1"],
        vec!["detach", "--iface", &iface],
    ] {
        let out = tcp_guard_as(&member, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("root"), "{args:?} must say it needs root: {err}");
    }
    let limits = tcp_guard(&["limits", "show", "--iface", &iface, "--json"]);
    let limits: serde_json::Value = serde_json::from_slice(&limits.stdout).expect("JSON");
    assert_eq!(limits["limits.syn_rate"], 200, "nothing changed");
    let blocks = tcp_guard(&["block", "list", "--iface", &iface, "--json"]);
    let blocks: serde_json::Value = serde_json::from_slice(&blocks.stdout).expect("JSON");
    assert_eq!(blocks["blocked"].as_array().map(Vec::len), Some(0), "{blocks}");
    assert_eq!(flows(&iface).len(), 3, "still attached, still tracking");

    // Outside the group: told which group would do.
    let outsider = ["--reuid=65534", "--regid=65534", "--clear-groups"].map(str::to_string);
    let out = tcp_guard_as(&outsider, &["stats", "--iface", &iface]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("root") && err.contains(&format!("membership of group {}", account.group)),
        "{err}"
    );
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let bash = tcp_guard(&["completions", "bash"]);
    assert!(bash.status.success());
    let text = String::from_utf8_lossy(&bash.stdout);
    assert!(
        text.contains("tcp-guard") && text.contains("block") && text.contains("--metrics"),
        "{text}"
    );
    let man = tcp_guard(&["man"]);
    assert!(man.status.success());
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH tcp-guard"), "{page}");
    let bad = tcp_guard(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// Idle connections to the metrics endpoint hold up neither the daemon nor
/// its scrapes: at most 64 wait for their request at once, a new one closes
/// the oldest, and each has 5 s to ask.
#[test]
fn a_thousand_idle_connections_stop_neither_the_daemon_nor_its_scrapes() {
    // SAFETY: raises this process's own descriptor limit; no pointers kept.
    unsafe {
        let limit = libc::rlimit {
            rlim_cur: 4096,
            rlim_max: 4096,
        };
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
            0,
            "raise RLIMIT_NOFILE"
        );
    }
    let lab = Lab::new().expect("lab");
    let mut daemon = Daemon::start(&lab.server, &lab.server_iface, &["--metrics", METRICS]).expect("start");
    wait_for("the metrics endpoint", Duration::from_secs(5), || {
        daemon.log().contains("serving Prometheus metrics")
    });
    // A daemon with the usual 1024 descriptors or fewer, fewer than the
    // connections below.
    run(Command::new("prlimit").args(["--pid", &daemon.pid().to_string(), "--nofile=512:512"]))
        .expect("prlimit");
    let idle: Vec<TcpStream> = lab
        .server
        .enter(|| {
            (0..1000)
                .filter_map(|_| TcpStream::connect(METRICS).ok())
                .collect()
        })
        .expect("enter");
    assert!(idle.len() >= 900, "{} idle connections opened", idle.len());
    let scraped = get(&lab, "/metrics");
    assert!(scraped.starts_with("HTTP/1.1 200 OK"), "{scraped}");
    let out = tcp_guard(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let me = status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["iface"] == lab.server_iface.as_str())
        .unwrap_or_else(|| panic!("no instance in {status}"));
    assert_eq!(me["daemon"]["running"], true, "{}", daemon.log());
    drop(idle);
}

/// A scrape serves what the control loop gathered last and reads no map
/// itself (it once walked both flow tables, for anyone who asked): with a
/// pin gone, so that the rounds fail, scrapes still answer with the last
/// figures, and say how old they are.
#[test]
fn scrapes_serve_the_figures_the_control_loop_gathered() {
    let lab = Lab::new().expect("lab");
    let daemon = Daemon::start(&lab.server, &lab.server_iface, &["--metrics", METRICS]).expect("start");
    wait_for("the metrics endpoint", Duration::from_secs(5), || {
        daemon.log().contains("serving Prometheus metrics")
    });
    let fresh = get(&lab, "/metrics");
    assert!(fresh.starts_with("HTTP/1.1 200 OK"), "{fresh}");

    let pin = std::path::Path::new("/sys/fs/bpf/tcp-guard")
        .join(&lab.server_iface)
        .join("STATS");
    std::fs::remove_file(&pin).expect("remove the STATS pin");
    wait_for("a failed round", Duration::from_secs(10), || {
        daemon.log().contains("event=tick_failed")
    });
    std::thread::sleep(Duration::from_secs(2));
    let stale = get(&lab, "/metrics");
    assert!(stale.starts_with("HTTP/1.1 200 OK"), "{stale}");
    let iface = format!("iface=\"{}\"", lab.server_iface);
    assert_eq!(sample(&stale, "tcp_guard_attack_mode", &iface), 0);
    assert!(
        sample(&stale, "tcp_guard_table_capacity", "table=\"flows\"") > 0,
        "{stale}"
    );
    assert!(age(&fresh) < 2.0, "{fresh}");
    assert!(age(&stale) >= 2.0, "the figures say they are old: {stale}");
}

/// Monitor mode (`monitor.*`): a rule counts what it would drop, in stats,
/// metrics and `top`, and drops nothing; switched off, the same traffic is
/// dropped again. Rule by rule: the SYN rate, the block list, the attack
/// policy during a flood.
#[test]
fn monitor_mode_counts_what_a_rule_would_drop_and_drops_nothing() {
    let lab = Lab::new().expect("lab");
    let iface = lab.server_iface.clone();
    let mut args = vec!["--metrics", METRICS, "--set", "monitor.syn_rate=true"];
    args.extend(ONE_SYN_A_SECOND);
    args.extend(attack_settings());
    let daemon = Daemon::start(&lab.server, &iface, &args).expect("start");
    daemon.wait_for_line("serving Prometheus metrics", Duration::from_secs(5));
    daemon.wait_for_line("monitor mode for syn_rate", Duration::from_secs(1));
    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let _server = Server::start(listen(&lab.server, addr, 64).expect("listen"));
    let set = |setting: &str| {
        let out = tcp_guard(&["limits", "set", "--iface", &iface, setting]);
        assert!(
            out.status.success(),
            "{setting}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let count = |name: &str| counter(&stats_json(&iface), name);
    // Connects that must not wait for a retransmitted SYN (1 s).
    let quick = |n: usize| connects(&lab, addr, n, 1, Duration::from_millis(900));

    // One token a second: five of six SYNs in a row are over the rate.
    assert_eq!(
        quick(6),
        6,
        "monitored, the rate holds back no SYN: {}",
        stats_json(&iface)
    );
    assert_eq!(count("drop_syn_rate"), 0);
    let would_rate = count("would_drop_syn_rate");
    assert!(
        would_rate >= 4,
        "the SYNs over the rate are counted: {would_rate}"
    );

    set("monitor.block_list=true");
    let client = lab.client_addr(false).to_string();
    let out = tcp_guard(&["block", "add", "--iface", &iface, &client]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(quick(2), 2, "monitored, the block list holds back nothing");
    assert_eq!(count("drop_blocked"), 0);
    assert!(count("would_drop_blocked") >= 2);

    // Visible where operators look: metrics and top.
    let stats = stats_json(&iface);
    assert_eq!(
        stats["monitor"],
        serde_json::json!(["block_list", "syn_rate"]),
        "{stats}"
    );
    wait_for("metrics to show the stats", Duration::from_secs(5), || {
        let metrics = get(&lab, "/metrics");
        sample(&metrics, "tcp_guard_would_drop_total", "reason=\"syn_rate\"") == count("would_drop_syn_rate")
            && sample(&metrics, "tcp_guard_monitor", "rule=\"block_list\"") == 1
            && sample(&metrics, "tcp_guard_monitor", "rule=\"half_open\"") == 0
    });
    let session = Tmux::start(
        format!("tg-mon-{iface}"),
        &format!("{} top --iface {iface}", tcp_guard_bin().display()),
    );
    let shows = |screen: &str| {
        screen.contains("MONITOR") && screen.contains("drops · monitor") && screen.contains("would syn_rate")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut screen = session.capture();
    while !shows(&screen) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        screen = session.capture();
    }
    assert!(shows(&screen), "top shows what would be dropped:\n{screen}");

    // In force again: the same traffic is dropped.
    set("monitor.block_list=false");
    assert_eq!(quick(1), 0, "blocked again");
    assert!(count("drop_blocked") > 0);
    let out = tcp_guard(&["block", "del", "--iface", &iface, &client]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    set("monitor.syn_rate=false");
    assert!(quick(6) < 6, "the rate holds back SYNs again");
    assert!(count("drop_syn_rate") > 0);

    // The attack policy: a flood starts attack mode; new clients meet no
    // challenge, which counts what it would have dropped.
    set("limits.syn_rate=0");
    set("monitor.attack=true");
    let mut fresh = FreshAddresses::new(false);
    let clients: Vec<IpAddr> = (0..4).map(|_| fresh.take(&lab)).collect();
    let challenged = count("drop_challenge");
    std::thread::scope(|scope| {
        scope.spawn(|| flood_for(&lab, &[(spoofed().0, 300)], 4));
        wait_for("attack mode", Duration::from_secs(3), || {
            stats_json(&iface)["attack"]["active"] == true
        });
        let before = count("would_drop_challenge");
        for local in &clients {
            let (_stream, took) = timed_connect(&lab, *local, addr);
            assert!(took < Duration::from_millis(900), "{local} waited {took:?}");
        }
        assert!(count("would_drop_challenge") >= before + clients.len() as u64);
    });
    assert_eq!(
        count("drop_challenge"),
        challenged,
        "the challenge dropped nothing"
    );
}

/// `[access] monitor_group` follows the config file through a reload: a
/// daemon started with root alone reading lets the group's members read
/// once the file names the group and it reloads.
#[test]
fn a_reload_lets_the_monitoring_group_read() {
    let lab = Lab::new().expect("lab");
    let iface = lab.server_iface.clone();
    let account = Account::create().expect("a group and a user");
    let config = std::env::temp_dir().join(format!("tcp-guard-access-{iface}.toml"));
    std::fs::write(&config, "[access]\nmonitor_group = \"\"\n").expect("config");
    let config_arg = config.to_string_lossy().into_owned();
    let daemon = Daemon::start(&lab.server, &iface, &["--config", &config_arg]).expect("start");
    daemon.wait_for_line("only root may read", Duration::from_secs(5));
    let member = account.setpriv();
    let stats = |who: &[String]| tcp_guard_as(who, &["stats", "--iface", &iface, "--json"]);
    let refused = stats(&member);
    assert!(
        !refused.status.success(),
        "root alone reads: {}",
        String::from_utf8_lossy(&refused.stdout)
    );

    std::fs::write(
        &config,
        format!("[access]\nmonitor_group = \"{}\"\n", account.group),
    )
    .expect("config");
    let reload = tcp_guard(&["reload", "--iface", &iface]);
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    daemon.wait_for_line(
        &format!("root and members of group {} may read", account.group),
        Duration::from_secs(5),
    );
    let out = stats(&member);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["iface"], iface.as_str(), "{json}");
    std::fs::remove_file(&config).expect("remove the config");
}
