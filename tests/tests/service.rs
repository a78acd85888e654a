//! The systemd service: the unit passes `systemd-analyze verify` and keeps
//! its `security` exposure, and the daemon speaks sd_notify and journald
//! priorities as systemd expects. No systemd runs units in the test
//! container, so the daemon is started by hand with the environment systemd
//! would give it. The daemon tests need root.

use std::{
    fs,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use tcp_guard_tests::{
    daemon::{Daemon, tcp_guard, tcp_guard_bin},
    lab::Lab,
    scenario::wait_for,
};

/// `systemd-analyze security` of the unit, measured when it was hardened
/// (systemd 252): root, CAP_BPF/NET_ADMIN/PERFMON/SYS_ADMIN, the host's
/// network, writable /proc/sys and no system-call filter are what remain.
const MAX_EXPOSURE: f64 = 3.9;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/tcp-guard@.service");

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tcp-guard-{what}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The unit as an instance for `lab0`, running the binary under test
/// (verify checks that ExecStart exists).
fn unit_instance(dir: &Path) -> PathBuf {
    let text = fs::read_to_string(UNIT).expect("read the unit");
    assert!(
        text.contains("/usr/local/sbin/tcp-guard "),
        "the unit runs /usr/local/sbin/tcp-guard"
    );
    let path = dir.join("tcp-guard@lab0.service");
    fs::write(
        &path,
        text.replace(
            "/usr/local/sbin/tcp-guard",
            &tcp_guard_bin().display().to_string(),
        ),
    )
    .expect("write the unit");
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .current_dir(unit.parent().expect("unit dir"))
        .output()
        .expect("systemd-analyze not found: install the systemd package (`cargo xtask setup`)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_unit_verifies_and_keeps_its_exposure() {
    let dir = TempDir::new("unit");
    let unit = unit_instance(&dir.0);
    let (ok, text) = systemd_analyze(&["verify"], &unit);
    assert!(ok, "systemd-analyze verify failed:\n{text}");
    assert!(
        !text.contains("tcp-guard"),
        "systemd-analyze verify complained:\n{text}"
    );

    let (ok, text) = systemd_analyze(&["security", "--offline=true"], &unit);
    assert!(ok, "systemd-analyze security failed:\n{text}");
    let exposure: f64 = text
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for tcp-guard@lab0.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|figure| figure.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{text}"));
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} above {MAX_EXPOSURE}; what it flags:\n{}",
        text.lines()
            .filter(|l| l.starts_with('✗'))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The datagrams a socket receives, as they come, read on a thread so the
/// daemon's queue never fills.
fn notifications(socket: UnixDatagram) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    if tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                        return;
                    }
                }
                // Timed out: go on unless the test is done.
                Err(_) => {
                    if tx.send(String::new()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// The next message other than a watchdog ping, within `within`.
fn next_besides_pings(rx: &Receiver<String>, within: Duration) -> String {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let message = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("the reader thread ended");
        if !message.is_empty() && message != "WATCHDOG=1" {
            return message;
        }
    }
    panic!("no notification besides WATCHDOG=1 within {within:?}")
}

#[test]
fn the_daemon_notifies_readiness_watchdog_reloads_and_stopping() {
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("notify");
    let config = dir.0.join("config.toml");
    fs::write(&config, "[limits]\nsyn_rate = 200\n").expect("config");
    let socket_path = dir.0.join("notify.sock");
    let rx = notifications(UnixDatagram::bind(&socket_path).expect("bind the notify socket"));
    let iface = lab.server_iface.clone();
    let daemon = Daemon::start_as_service(
        &lab.server,
        &iface,
        &["--config", config.to_str().expect("utf-8")],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().expect("utf-8")),
            ("WATCHDOG_USEC", "2000000"),
        ],
        false,
    )
    .expect("start");

    let ready = next_besides_pings(&rx, Duration::from_secs(10));
    assert!(
        ready.starts_with(&format!("READY=1\nSTATUS=guarding {iface} (XDP, ")),
        "first notification: {ready:?}"
    );
    let link = lab.server.ip(&["link", "show", &iface]).expect("ip link");
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "READY=1 before the XDP program is attached"
    );

    // WATCHDOG_USEC=2 s: a ping at least every second, for 3 s.
    let mut pings = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        match rx.recv_timeout(Duration::from_secs(2)).expect("reader").as_str() {
            "WATCHDOG=1" => pings.push(Instant::now()),
            "" => {}
            other => panic!("unexpected notification {other:?}"),
        }
    }
    assert!(pings.len() >= 4, "{} WATCHDOG=1 in 3 s", pings.len());
    let longest = pings.windows(2).map(|w| w[1] - w[0]).max().expect("two pings");
    assert!(
        longest <= Duration::from_secs(1),
        "{longest:?} between pings, half the period is 1 s"
    );

    for (content, accepted) in [("[limits]\nsyn_rate = 300\n", true), ("[limits\n", false)] {
        fs::write(&config, content).expect("config");
        let out = tcp_guard(&["reload", "--iface", &iface]);
        assert_eq!(
            out.status.success(),
            accepted,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reloading = next_besides_pings(&rx, Duration::from_secs(5));
        let usec = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("reload (accepted: {accepted}) began with {reloading:?}"));
        assert!(usec.parse::<u64>().is_ok(), "MONOTONIC_USEC={usec}");
        let after = next_besides_pings(&rx, Duration::from_secs(5));
        assert!(after.starts_with("READY=1\n"), "after the reload: {after:?}");
    }

    assert!(daemon.stop().expect("stop").success());
    assert_eq!(next_besides_pings(&rx, Duration::from_secs(5)), "STOPPING=1");
}

#[test]
fn log_lines_carry_journald_priorities_when_stderr_is_the_journal() {
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("journal");
    let config = dir.0.join("config.toml");
    fs::write(&config, "[limits]\nsyn_rate = 200\n").expect("config");
    let iface = lab.server_iface.clone();
    let mut daemon = Daemon::start_as_service(
        &lab.server,
        &iface,
        &["--config", config.to_str().expect("utf-8")],
        &[],
        true,
    )
    .expect("start");
    assert!(
        daemon
            .log()
            .lines()
            .any(|l| l.starts_with(&format!("<6>guarding {iface} "))),
        "{}",
        daemon.log()
    );

    fs::write(&config, "[limits\n").expect("config");
    assert!(
        !tcp_guard(&["reload", "--iface", &iface]).status.success(),
        "a bad config is refused"
    );
    wait_for(
        "a <3> line for the refused reload",
        Duration::from_secs(5),
        || daemon.log().contains("<3>reload refused"),
    );

    lab.server
        .ip(&["link", "del", &iface])
        .expect("delete the interface");
    let gone = format!("<4>{iface} is gone");
    wait_for(&gone, Duration::from_secs(5), || daemon.log().contains(&gone));

    daemon.end(libc::SIGTERM).expect("stop");
    let log = daemon.log();
    for line in log.lines() {
        let priority = line.get(..3);
        assert!(
            matches!(priority, Some("<3>" | "<4>" | "<6>" | "<7>")),
            "a line without a priority, or with a timestamp: {line:?}\n{log}"
        );
    }
}
