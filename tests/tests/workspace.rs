//! The shape of the workspace that a new user depends on.

use std::process::Command;

/// `cargo xtask setup` installs the eBPF toolchain, so xtask must build
/// without it: it may depend, normally or at build time, on no crate of this
/// workspace (tcp-guard's build script compiles the eBPF programs).
#[test]
fn xtask_builds_without_the_ebpf_toolchain() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--package",
            "xtask",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cannot run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.starts_with("xtask v"), "{tree}");
    let ours: Vec<&str> = tree
        .lines()
        .filter(|line| line.starts_with("tcp-guard"))
        .collect();
    assert!(
        ours.is_empty(),
        "xtask depends on workspace crates, so `cargo xtask setup` cannot build on a fresh machine: {ours:?}"
    );
}
