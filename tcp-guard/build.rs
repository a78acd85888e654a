//! Builds the eBPF object (`tcp-guard-ebpf`) and leaves it in OUT_DIR for
//! `include_bytes_aligned!`, so the `tcp-guard` binary carries its programs.
//!
//! Two toolchains can build for `bpfel-unknown-none`; the first that is
//! present is used, and the build says which:
//! 1. Debian's `rustc-web` with its prebuilt `core` for BPF
//!    (`libstd-rust-web-dev-bpf`), the one `cargo xtask setup` installs;
//! 2. a rustup nightly with the `rust-src` component (`-Z build-std=core`).
//!
//! `TCP_GUARD_EBPF_TOOLCHAIN=debian` or `=rustup:<toolchain>` forces a choice.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const TARGET: &str = "bpfel-unknown-none";
const EBPF_PACKAGE: &str = "tcp-guard-ebpf";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_BPF_SYSROOT: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const SETUP_HINT: &str = "run `cargo xtask setup` to install it";

enum Toolchain {
    Debian,
    Rustup(String),
}

impl Toolchain {
    fn describe(&self) -> String {
        match self {
            Toolchain::Debian => format!("Debian rustc ({DEBIAN_RUSTC}, prebuilt core for {TARGET})"),
            Toolchain::Rustup(name) => format!("rustup toolchain `{name}` with rust-src (-Z build-std=core)"),
        }
    }
}

fn main() {
    if let Err(message) = build() {
        // Cargo shows build-script stderr on failure; keep the reason last.
        eprintln!("error: failed to build the eBPF programs: {message}");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir.parent().ok_or("tcp-guard has no parent directory")?;
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    for input in ["tcp-guard-ebpf", "tcp-guard-common", "Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }
    println!("cargo:rerun-if-env-changed=TCP_GUARD_EBPF_TOOLCHAIN");

    let toolchain = choose_toolchain()?;
    let linker_dir = find_bpf_linker()?;
    println!(
        "cargo:warning=building eBPF programs with {}",
        toolchain.describe()
    );
    println!(
        "cargo:rustc-env=TCP_GUARD_EBPF_TOOLCHAIN={}",
        toolchain.describe()
    );

    // A target dir of its own: the outer cargo holds the lock on the usual one.
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = match &toolchain {
        Toolchain::Debian => {
            let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            cmd.env("RUSTC", DEBIAN_RUSTC)
                // aya-ebpf uses #![feature(asm_experimental_arch)].
                .env("RUSTC_BOOTSTRAP", "1")
                .arg("build")
                // aya-build, a build-dependency of aya-ebpf, declares a newer
                // rust-version than Debian's compiler; it builds fine.
                .arg("--ignore-rust-version");
            cmd
        }
        Toolchain::Rustup(name) => {
            let mut cmd = Command::new("rustup");
            cmd.args(["run", name, "cargo", "build", "-Z", "build-std=core"]);
            cmd
        }
    };
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "RUSTDOC",
    ] {
        cmd.env_remove(var);
    }
    if matches!(toolchain, Toolchain::Rustup(_)) {
        cmd.env_remove("RUSTC");
    }
    // CPU v3 for atomic fetch-and-add (limit counters; Linux 5.12+).
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        "-Ctarget-cpu=v3",
        // Keep the BPF global functions global (see tcp_guard_track).
        "-Clink-arg=--export=tcp_guard_track",
    ]
    .join("\x1f");
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env("PATH", path_with(&linker_dir))
        .current_dir(workspace)
        .args([
            "--package",
            EBPF_PACKAGE,
            "--release",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());

    let output = cmd
        .output()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("{stderr}");
        return Err(format!("{} exited with {}", toolchain.describe(), output.status));
    }
    for line in stderr.lines().filter(|l| l.starts_with("warning")) {
        println!("cargo:warning=eBPF: {line}");
    }

    let object = target_dir.join(TARGET).join("release").join(EBPF_PACKAGE);
    fs::copy(&object, out_dir.join("tcp-guard-ebpf.o"))
        .map_err(|e| format!("could not copy {}: {e}", object.display()))?;
    Ok(())
}

fn choose_toolchain() -> Result<Toolchain, String> {
    if let Ok(forced) = env::var("TCP_GUARD_EBPF_TOOLCHAIN") {
        return match forced.as_str() {
            "debian" if debian_available() => Ok(Toolchain::Debian),
            "debian" => Err(format!(
                "TCP_GUARD_EBPF_TOOLCHAIN=debian, but {DEBIAN_RUSTC} or {DEBIAN_BPF_SYSROOT} is missing; {SETUP_HINT}"
            )),
            other => match other.strip_prefix("rustup:") {
                Some(name) if rustup_has_rust_src(name) => Ok(Toolchain::Rustup(name.to_string())),
                Some(name) => Err(format!(
                    "TCP_GUARD_EBPF_TOOLCHAIN={other}, but rustup toolchain `{name}` is missing or has no rust-src \
                     (rustup component add rust-src --toolchain {name})"
                )),
                None => Err(format!(
                    "TCP_GUARD_EBPF_TOOLCHAIN={other} is not understood; use `debian` or `rustup:<toolchain>`"
                )),
            },
        };
    }
    if debian_available() {
        return Ok(Toolchain::Debian);
    }
    if rustup_has_rust_src("nightly") {
        return Ok(Toolchain::Rustup("nightly".to_string()));
    }
    Err(format!(
        "no Rust toolchain that can build for {TARGET}: neither Debian's rustc-web with libstd-rust-web-dev-bpf \
         ({DEBIAN_BPF_SYSROOT}) nor a rustup nightly with rust-src was found; {SETUP_HINT}"
    ))
}

fn debian_available() -> bool {
    Path::new(DEBIAN_RUSTC).exists()
        && fs::read_dir(DEBIAN_BPF_SYSROOT).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
}

fn rustup_has_rust_src(toolchain: &str) -> bool {
    let Ok(output) = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    output.status.success()
        && Path::new(&sysroot)
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .exists()
}

/// The directory holding bpf-linker: on PATH, or cargo's install directory.
fn find_bpf_linker() -> Result<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(cargo_home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(cargo_home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .find(|dir| dir.join("bpf-linker").is_file())
        .ok_or_else(|| format!("bpf-linker not found on PATH or in ~/.cargo/bin; {SETUP_HINT}"))
}

fn path_with(dir: &Path) -> OsString {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).unwrap_or_default()
}
