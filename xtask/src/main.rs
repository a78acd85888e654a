//! Project tasks: `cargo xtask setup | lint | test | demo | bench`.
//!
//! xtask must build on a machine that has nothing but rustup's Rust: it is
//! what installs the eBPF toolchain. So it depends on no crate of ours (the
//! test `xtask_builds_without_the_ebpf_toolchain` holds it to that) and runs
//! the lab's programs (tg-demo, tg-bench-flood) as built binaries.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod setup;

use setup::{cargo, run};

#[derive(Parser)]
#[command(about = "tcp-guard project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the Debian packages and bpf-linker the build needs (a quick
    /// no-op when present). Needs root to install.
    Setup,
    /// rustfmt check, and clippy -D warnings on every crate (the eBPF crate
    /// with Debian's clippy for the bpf target).
    Lint,
    /// Set up, build, and run every test (unit, property, BPF_PROG_TEST_RUN,
    /// veth lab). Needs root.
    Test {
        /// Passed to the test binaries, e.g. a test name filter.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, then run tcp-guard on a built-in two-namespace lab: a client
    /// connects to a server while a spoofed SYN flood and a noisy source come
    /// and go; live figures every second. Needs root.
    Demo {
        /// How long to run; Ctrl-C ends it early. Everything is removed at exit.
        #[arg(long, default_value_t = 25)]
        seconds: u64,
    },
    /// Benchmarks (not part of the tests). Needs root.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Per-packet cost of the XDP program by path, with BPF_PROG_TEST_RUN,
    /// against a trivial XDP_PASS program in the same run, and the cookie
    /// paths against the kernel's selftest XDP SYN proxy (bench/peers/).
    Prog,
    /// The same spoofed SYN flood, rates stepped up, against a real listener
    /// under each defence (none, kernel SYN cookies, nftables synproxy,
    /// tcp-guard's policies); results in bench/results/. About 7 minutes.
    Flood,
}

fn main() {
    let result = match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Lint => lint(),
        Task::Test { args } => test(&args),
        Task::Demo { seconds } => demo(seconds),
        Task::Bench { which: Bench::Prog } => bench_prog(),
        Task::Bench { which: Bench::Flood } => bench_flood(),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

/// Builds the tcp-guard binary and the lab binaries named; returns the
/// directory holding them.
fn build(lab_bins: &[&str]) -> Result<PathBuf> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace())
        .args(["build", "--package", "tcp-guard", "--bin", "tcp-guard"]);
    if !lab_bins.is_empty() {
        cmd.args(["--package", "tcp-guard-tests"]);
    }
    for bin in lab_bins {
        cmd.args(["--bin", bin]);
    }
    run(&mut cmd)?;
    Ok(target_dir().join("debug"))
}

/// Replaces this process with a lab binary, so that Ctrl-C reaches the
/// binary alone and its clean-up runs before the shell prompt returns.
fn exec_lab_bin(task: &str, bin: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    require_root(task)?;
    setup::setup()?;
    let dir = build(&[bin])?;
    let error = Command::new(dir.join(bin))
        .args(args)
        // The lab finds the daemon's binary through this variable.
        .env("TCP_GUARD_BIN", dir.join("tcp-guard"))
        .exec();
    Err(error).with_context(|| format!("cannot start {}", dir.join(bin).display()))
}

fn demo(seconds: u64) -> Result<()> {
    exec_lab_bin(
        "demo",
        "tg-demo",
        &["--seconds".as_ref(), seconds.to_string().as_ref()],
    )
}

fn require_root(task: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask {task}` needs root (network namespaces, BPF programs); run it as root or with `sudo -E`"
        );
    }
    Ok(())
}

fn lint() -> Result<()> {
    let ws = workspace();
    run(Command::new(cargo())
        .current_dir(&ws)
        .args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new(cargo())
        .current_dir(&ws)
        .args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    let clippy = Path::new("/usr/bin/cargo-clippy");
    if !clippy.exists() {
        bail!(
            "{} is missing: run `cargo xtask setup` (package rust-web-clippy)",
            clippy.display()
        );
    }
    run(Command::new(clippy)
        .current_dir(&ws)
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\"")
        .args([
            "clippy",
            "--package",
            "tcp-guard-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["--ignore-rust-version", "--target-dir"])
        .arg(target_dir().join("clippy-ebpf"))
        .args(["--", "-D", "warnings"]))
}

fn bench_prog() -> Result<()> {
    require_root("bench prog")?;
    setup::setup()?;
    run(Command::new(cargo()).current_dir(workspace()).args([
        "bench",
        "--package",
        "tcp-guard-tests",
        "--bench",
        "prog",
    ]))
}

fn bench_flood() -> Result<()> {
    let out = workspace().join("bench/results");
    exec_lab_bin(
        "bench flood",
        "tg-bench-flood",
        &["--out".as_ref(), out.as_os_str()],
    )
}

fn test(args: &[String]) -> Result<()> {
    require_root("test")?;
    setup::setup()?;
    let dir = build(&[])?;
    run(Command::new(cargo())
        .current_dir(workspace())
        .env("TCP_GUARD_BIN", dir.join("tcp-guard"))
        .arg("test")
        .arg("--")
        .args(args))
}
