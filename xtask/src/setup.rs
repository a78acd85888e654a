//! `cargo xtask setup`: installs what building and testing need, idempotently.
//! See ../shared/toolchain.md for why these packages and this bpf-linker.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

/// Debian packages, and what each is for.
const PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "Rust 1.96 compiler that builds the eBPF programs"),
    (
        "libstd-rust-web-dev-bpf",
        "prebuilt core library for the bpfel target",
    ),
    ("rust-web-clippy", "clippy for the eBPF crate"),
    ("llvm-22-dev", "LLVM 22, which bpf-linker links against"),
    ("libpolly-22-dev", "needed to link bpf-linker against LLVM 22"),
    ("libzstd-dev", "needed to link bpf-linker"),
    ("zlib1g-dev", "needed to link bpf-linker"),
    ("iproute2", "ip netns / veth for the test lab"),
    ("util-linux", "nsenter and setpriv for the test lab"),
    ("procps", "sysctl inside lab namespaces"),
    ("tmux", "runs `tcp-guard top` in a terminal for its test"),
    (
        "systemd",
        "systemd-analyze, which verifies the service unit and measures its exposure",
    ),
    ("nftables", "holds back a FIN in the simultaneous-close test"),
    (
        "hping3",
        "an independent SYN flood generator, to cross-check our own",
    ),
    ("fonts-dejavu-core", "the font of the flood benchmark's figure"),
    (
        "clang-19",
        "builds the kernel selftest XDP SYN proxy, the per-packet bench's peer",
    ),
    (
        "libbpf-dev",
        "bpf_helpers.h and bpf_endian.h for the per-packet bench's peer",
    ),
    (
        "bpftool",
        "vmlinux.h for the bench's peer, and loads it (aya cannot: kfunc calls)",
    ),
    (
        "xdp-tools",
        "xdp-filter, the libxdp program an interface may hold beside which tcp-guard is tested",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<()> {
    let missing: Vec<&(&str, &str)> = PACKAGES.iter().filter(|(name, _)| !installed(name)).collect();
    if missing.is_empty() {
        println!("setup: Debian packages present");
    } else {
        require_root_for("install Debian packages")?;
        if which("apt-get").is_none() {
            bail!(
                "setup: apt-get not found; this needs a Debian 12 machine (or install by hand: {})",
                missing.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" ")
            );
        }
        for (name, why) in &missing {
            println!("setup: installing {name}: {why}");
        }
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|(n, _)| *n))
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    match bpf_linker_version() {
        Some(version) if version.contains(BPF_LINKER_VERSION) => println!("setup: {version} present"),
        found => {
            if let Some(other) = found {
                println!("setup: found {other}, want {BPF_LINKER_VERSION}");
            }
            println!("setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 3 minutes)");
            run(Command::new(cargo())
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22", "--force"])
                // Without it the build looks for LLVM in /usr and fails to find -lLLVM.
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
        }
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", package])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.starts_with(b"ii"))
}

fn bpf_linker_version() -> Option<String> {
    let candidates = [Some(PathBuf::from("bpf-linker")), cargo_bin("bpf-linker")];
    candidates.into_iter().flatten().find_map(|bin| {
        let out = Command::new(bin).arg("--version").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
}

fn cargo_bin(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(home.join("bin").join(name))
}

pub fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

pub fn require_root_for(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("setup: need root to {what}; run `sudo -E cargo xtask setup` (or as root)");
    }
    Ok(())
}

/// Runs a command with inherited output; a non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
