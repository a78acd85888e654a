//! One short step of each benchmark, so that `cargo xtask bench prog` and
//! `cargo xtask bench flood` cannot silently rot. Needs root.

#[path = "../benches/prog_impl.rs"]
mod prog_impl;

use std::path::Path;

use prog_impl::{PeerPath, Program};
use tcp_guard_tests::{
    flood_bench,
    lab::require_root,
    packets::{SYN, TcpPacket, linux_syn_options},
    xdp_synproxy::{self, XdpSynproxy},
};

/// One short step of each case.
const SMOKE: prog_impl::Params = prog_impl::Params {
    rounds: 2,
    chunk: 20,
    warmup: 20,
};

#[test]
fn per_packet_benchmark_runs_one_short_step_of_each_case() {
    require_root();
    let rows = prog_impl::measure(&SMOKE, "");
    assert_eq!(
        rows.len(),
        16 + 3,
        "every case measured, and the selftest's three paths"
    );
    for row in &rows {
        // A single run can read 0 ns where the clock is coarse: the
        // figures must be sane, and each case's path is proven by its
        // counter, each of the selftest's calls by its verdict.
        assert!(
            row.ns.is_finite() && row.ns >= 0.0 && row.baseline_ns.is_finite() && row.baseline_ns >= 0.0,
            "{}",
            row.name
        );
    }
    let table = prog_impl::markdown(&rows, &SMOKE);
    assert!(
        table.contains("| SYN in attack mode, unknown source (challenged) |")
            && table.contains("| ACK with a valid cookie (syncookie) |")
            && table.contains("| ACK with a bogus cookie (xdp_synproxy) | DROP |")
            && table.contains("| cookie ACK |"),
        "{table}"
    );
}

/// The selftest's rows come with the cookie cases they are compared with,
/// each with its verdict, and the ratios are printed. A few seconds.
#[test]
fn per_packet_benchmark_measures_the_kernel_selftest_beside_the_cookie_cases() {
    require_root();
    let rows = prog_impl::measure(&SMOKE, "xdp_synproxy");
    let measured: Vec<Program> = rows.iter().map(|r| r.program).collect();
    assert_eq!(
        measured,
        [
            Program::TcpGuard,
            Program::Selftest(PeerPath::Syn),
            Program::TcpGuard,
            Program::Selftest(PeerPath::CookieAck),
            Program::Selftest(PeerPath::BogusCookieAck),
        ]
    );
    assert_eq!(rows[0].name, prog_impl::COOKIE_SYN);
    assert_eq!(rows[2].name, prog_impl::COOKIE_ACK);
    let ratios = prog_impl::ratios(&rows);
    assert_eq!(
        ratios.iter().map(|r| r.path).collect::<Vec<_>>(),
        ["SYN answered with a cookie", "cookie ACK"]
    );
    assert!(
        ratios
            .iter()
            .all(|r| r.tcp_guard_ns.is_finite() && r.selftest_ns.is_finite())
    );
    let table = prog_impl::markdown(&rows, &SMOKE);
    for line in [
        "| SYN with MSS/SACK/TS/WS options (xdp_synproxy) | TX (SYN-ACK cookie) |",
        "| ACK with a valid cookie (xdp_synproxy) | PASS |",
        "| ACK with a bogus cookie (xdp_synproxy) | DROP |",
        "| SYN answered with a cookie |",
        "| cookie ACK |",
    ] {
        assert!(table.contains(line), "{line} missing from:\n{table}");
    }
}

/// The selftest itself, without the bench: a SYN answered with a SYN-ACK
/// cookie, the ACK returning it passed, a bogus one dropped; its pins
/// removed when it is dropped.
#[test]
fn kernel_selftest_peer_gives_each_verdict_and_leaves_no_pins() {
    require_root();
    let selftest =
        XdpSynproxy::load(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap_or_else(|e| panic!("{e:#}"));
    let pins = selftest.pin_dir().to_path_buf();
    assert!(pins.join("progs/syncookie_xdp").exists(), "{}", pins.display());
    let mut syn = TcpPacket::new(
        [198, 19, 1, 1].into(),
        [198, 18, 0, 1].into(),
        40_000,
        xdp_synproxy::PORT,
        SYN,
    );
    syn.tcp_options = linux_syn_options(1460, 77, 7);
    let (verdict, reply) = selftest.run_out(&syn.frame());
    assert_eq!(verdict, xdp_synproxy::XDP_TX);
    xdp_synproxy::parse_syn_ack(&syn, &reply);
    let mut ack = selftest.cookie_ack(&syn);
    assert_eq!(
        selftest.run(&ack.frame()).1,
        xdp_synproxy::XDP_PASS,
        "valid cookie"
    );
    ack.ack ^= 0xff00_0000;
    assert_eq!(
        selftest.run(&ack.frame()).1,
        xdp_synproxy::XDP_DROP,
        "bogus cookie"
    );
    // Another port: not one it answers.
    syn.dst_port = 8081;
    assert_eq!(
        selftest.run(&syn.frame()).1,
        xdp_synproxy::XDP_DROP,
        "port not allowed"
    );
    drop(selftest);
    assert!(!pins.exists(), "{} left behind", pins.display());
}

#[test]
fn flood_benchmark_runs_one_short_step_of_each_defence() {
    require_root();
    let plan = flood_bench::Plan::smoke();
    let runs = flood_bench::run_plan(&plan).expect("benchmark");
    assert_eq!(runs.len(), 5);
    for run in &runs {
        assert!(run.sent > 1000, "{run:?}");
        assert!(run.connects > 0, "{run:?}");
        assert!(run.kernel_cpu_s_per_million >= 0.0);
    }
    let guard = runs
        .iter()
        .find(|r| r.defence.starts_with("tcp-guard challenge"))
        .expect("tcp-guard challenge run");
    assert!(guard.guard_drops.is_some_and(|d| d > 0), "{guard:?}");
    for answered_at_once in ["tcp-guard syncookie", "tcp-guard defaults, stock host"] {
        let cookies = runs
            .iter()
            .find(|r| r.defence.starts_with(answered_at_once))
            .expect("cookie run");
        assert_eq!(cookies.connected, cookies.connects, "{cookies:?}");
        assert!(
            cookies.latency_p50_ms.is_some_and(|ms| ms < 100.0),
            "no retransmission wait: {cookies:?}"
        );
    }
    let dir = std::env::temp_dir().join(format!("tcp-guard-bench-{}", std::process::id()));
    let written = flood_bench::write_results(&runs, &plan, &dir, "smoke").expect("write results");
    let extensions: Vec<_> = written
        .iter()
        .map(|p| p.extension().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(extensions, ["json", "md", "png", "svg"]);
    for path in &written {
        if path.extension().is_some_and(|e| e == "png") {
            let png = std::fs::read(path).expect("read back");
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", path.display());
            continue;
        }
        let text = std::fs::read_to_string(path).expect("read back");
        assert!(text.contains("tcp-guard challenge"), "{}", path.display());
    }
    let svg = std::fs::read_to_string(&written[3]).unwrap();
    assert!(
        svg.trim_start().starts_with("<svg") || svg.trim_start().starts_with("<?xml"),
        "not SVG: {}",
        &svg[..svg.len().min(80)]
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&written[0]).unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().map(Vec::len), Some(runs.len()));
    assert!(json["machine"]["cores"].as_u64().is_some_and(|c| c > 0));
    std::fs::remove_dir_all(&dir).expect("clean up");
}
