//! One short step of each benchmark, so that `cargo xtask bench prog` and
//! `cargo xtask bench flood` cannot silently rot. Needs root.

#[path = "../benches/prog_impl.rs"]
mod prog_impl;

use tcp_guard_tests::{flood_bench, lab::require_root};

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
    assert_eq!(rows.len(), 14, "every case measured");
    for row in &rows {
        // A single run can read 0 ns where the clock is coarse: the
        // figures must be sane, and each case's path is proven by its counter.
        assert!(
            row.guard_ns.is_finite()
                && row.guard_ns >= 0.0
                && row.baseline_ns.is_finite()
                && row.baseline_ns >= 0.0,
            "{}",
            row.name
        );
    }
    let table = prog_impl::markdown(&rows, &SMOKE);
    assert!(
        table.contains("| SYN in attack mode, unknown source (challenged) |")
            && table.contains("| ACK with a valid cookie (syncookie) |"),
        "{table}"
    );
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
