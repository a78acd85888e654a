//! `cargo xtask bench prog`: the per-packet cost of the fast path by path,
//! against a trivial XDP_PASS program in the same run, and the cookie paths
//! against the kernel's selftest XDP SYN proxy (see prog_impl.rs).
//! TG_BENCH_CASES=substring runs only the matching cases (`xdp_synproxy`:
//! the selftest's rows and the cookie cases they are compared with). Needs
//! root, clang-19 and bpftool (`cargo xtask setup`).

#[path = "prog_impl.rs"]
mod prog_impl;

/// About 2 minutes on 2 cores.
const FULL: prog_impl::Params = prog_impl::Params {
    rounds: 40,
    chunk: 250,
    warmup: 2_000,
};

fn main() {
    tcp_guard_tests::lab::require_root();
    let only = std::env::var("TG_BENCH_CASES").unwrap_or_default();
    let rows = prog_impl::measure(&FULL, &only);
    print!("{}", prog_impl::markdown(&rows, &FULL));
}
