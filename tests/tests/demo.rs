//! `cargo xtask demo` is the first thing a user runs: it must show what the
//! README says, every run. The demo checks its own story (noisy source
//! blocked before the flood, attack mode on and off, every client connected)
//! and exits 1 otherwise. Needs root.

use std::process::Command;

use tcp_guard_tests::{daemon::tcp_guard_bin, lab::require_root};

#[test]
fn the_demo_goes_as_the_readme_says() {
    require_root();
    let out = Command::new(env!("CARGO_BIN_EXE_tg-demo"))
        .args(["--seconds", "25"])
        .env("TCP_GUARD_BIN", tcp_guard_bin())
        .output()
        .expect("cannot start tg-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("as it should:"),
        "tg-demo: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("198.18.99.99/32") && stdout.contains("automatic"),
        "the block list shows the noisy source: {stdout}"
    );
}
