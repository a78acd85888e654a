//! The real `tcp-guard` binary, run as the tests and the demo run it.

use std::{
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::lab::Netns;

/// Path of the `tcp-guard` binary: `$TCP_GUARD_BIN`, or the one cargo built
/// next to the running test executable.
pub fn tcp_guard_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TCP_GUARD_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/tcp-guard
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("tcp-guard"))
        .expect("test executable has no grandparent directory");
    assert!(
        bin.is_file(),
        "{} not found: build it first (`cargo build -p tcp-guard`) or set TCP_GUARD_BIN; `cargo xtask test` does both",
        bin.display()
    );
    bin
}

/// Runs `tcp-guard ARGS` in the root namespace and returns its output,
/// whatever its exit status.
pub fn tcp_guard(args: &[&str]) -> Output {
    Command::new(tcp_guard_bin())
        .args(args)
        .output()
        .expect("cannot start tcp-guard")
}

/// `tcp-guard stats --iface IFACE --json`, parsed; panics with the error text on failure.
pub fn stats_json(iface: &str) -> serde_json::Value {
    let out = tcp_guard(&["stats", "--iface", iface, "--json"]);
    assert!(
        out.status.success(),
        "tcp-guard stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats --json is not JSON")
}

/// One counter from `stats --json`.
pub fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// A `tcp-guard run` process in a namespace. Drop stops it (SIGTERM, then
/// SIGKILL after 15 s).
pub struct Daemon {
    child: Option<Child>,
    log_path: PathBuf,
}

impl Daemon {
    /// Starts `tcp-guard run --iface IFACE EXTRA...` inside `ns` and waits
    /// until it reports that it guards the interface.
    pub fn start(ns: &Netns, iface: &str, extra: &[&str]) -> Result<Self> {
        let mut daemon = Self::launch(ns, iface, extra)?;
        daemon.wait_guarding()?;
        Ok(daemon)
    }

    /// The same, started the way most people run a program in a namespace:
    /// `ip netns exec NS tcp-guard run ...`, in a mount namespace of its own.
    pub fn start_ip_netns_exec(ns: &Netns, iface: &str, extra: &[&str]) -> Result<Self> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()]).arg(tcp_guard_bin());
        let mut daemon = Self::spawn(cmd, iface, extra, |_, _| Ok(()))?;
        daemon.wait_guarding()?;
        Ok(daemon)
    }

    /// Starts `tcp-guard run --iface IFACE EXTRA...` inside `ns` and returns
    /// at once, while it starts up.
    pub fn launch(ns: &Netns, iface: &str, extra: &[&str]) -> Result<Self> {
        Self::spawn(ns.command(tcp_guard_bin()), iface, extra, |_, _| Ok(()))
    }

    /// Starts it as systemd would: with `env` (e.g. NOTIFY_SOCKET) and, if
    /// `journal`, JOURNAL_STREAM naming its stderr (the log file) as it
    /// names the journal's stream.
    pub fn start_as_service(
        ns: &Netns,
        iface: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        journal: bool,
    ) -> Result<Self> {
        let mut daemon = Self::spawn(ns.command(tcp_guard_bin()), iface, extra, |cmd, log| {
            cmd.envs(env.iter().copied());
            if journal {
                let meta = log.metadata()?;
                cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
            }
            Ok(())
        })?;
        daemon.wait_guarding()?;
        Ok(daemon)
    }

    fn spawn(
        mut cmd: Command,
        iface: &str,
        extra: &[&str],
        prepare: impl FnOnce(&mut Command, &File) -> Result<()>,
    ) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = std::env::temp_dir().join(format!("tcp-guard-{iface}-{}-{n}.log", std::process::id()));
        let log = File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        prepare(&mut cmd, &log)?;
        let child = cmd
            .args(["run", "--iface", iface])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start tcp-guard run")?;
        Ok(Daemon {
            child: Some(child),
            log_path,
        })
    }

    /// Waits until it reports that it guards the interface.
    fn wait_guarding(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.log().contains("guarding ") {
                return Ok(());
            }
            if let Some(status) = self.child_mut().try_wait()? {
                bail!("tcp-guard run exited with {status}: {}", self.log());
            }
            if Instant::now() > deadline {
                bail!("tcp-guard run did not attach within 30 s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child_mut().try_wait(), Ok(None))
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits up to `limit` for a line containing `text`. The daemon logs
    /// what it did after doing it, so a test that saw the effect may be
    /// ahead of the line.
    pub fn wait_for_line(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no line with {text:?} within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&mut self) -> u32 {
        self.child_mut().id()
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("daemon already stopped")
    }

    /// Sends `signal` and waits for the daemon to exit.
    pub fn stop_with(mut self, signal: i32) -> Result<ExitStatus> {
        self.end(signal)
    }

    /// The same, keeping its log readable.
    pub fn end(&mut self, signal: i32) -> Result<ExitStatus> {
        let mut child = self.child.take().expect("daemon already stopped");
        terminate(&mut child, signal)
    }

    /// SIGTERM, and the exit status.
    pub fn stop(self) -> Result<ExitStatus> {
        self.stop_with(libc::SIGTERM)
    }
}

fn terminate(child: &mut Child, signal: i32) -> Result<ExitStatus> {
    // SAFETY: kill on a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, signal) };
    // As long as the service gives it (TimeoutStopSec): one signalled during
    // start-up on a loaded machine finishes starting first.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    let status = child.wait()?;
    bail!("tcp-guard did not exit within 15 s of signal {signal}; killed ({status})")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(e) = terminate(&mut child, libc::SIGTERM)
        {
            eprintln!("daemon cleanup: {e:#}");
        }
        if let Err(e) = fs::remove_file(&self.log_path) {
            eprintln!("daemon cleanup: {}: {e}", self.log_path.display());
        }
    }
}

/// `tcp-guard flows --iface IFACE --json` as sorted (state, local, peer), the shape of
/// [`crate::lab::Lab::server_sockets`].
pub fn flows(iface: &str) -> Vec<(String, std::net::SocketAddr, std::net::SocketAddr)> {
    let out = tcp_guard(&["flows", "--iface", iface, "--json"]);
    assert!(
        out.status.success(),
        "tcp-guard flows failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("flows --json is not JSON");
    let mut rows: Vec<_> = value["flows"]
        .as_array()
        .expect("flows array")
        .iter()
        .map(|f| {
            let addr = |k: &str| f[k].as_str().and_then(|a| a.parse().ok()).expect("address");
            (
                f["state"].as_str().expect("state").to_string(),
                addr("local"),
                addr("peer"),
            )
        })
        .collect();
    rows.sort();
    rows
}
