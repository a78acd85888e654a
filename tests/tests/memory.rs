//! What the maps cost the kernel at their default sizes, as the kernel
//! reports it for each map (bpftool's `bytes_memlock`), with the block and
//! allow lists full (their tries allocate per entry): within 256 MiB in
//! all, and each large map within what docs/design.md gives it. Needs root.

use std::{
    os::fd::{AsFd, AsRawFd},
    process::Command,
};

use aya::maps::{
    Map,
    lpm_trie::{Key, LpmTrie},
};
use tcp_guard::{program, settings::Settings};
use tcp_guard_common::{
    flow::RecentFlows,
    maps,
    policy::{BlockEntry, LpmAddr},
};
use tcp_guard_tests::lab::require_root;

/// Most the defaults may lock: issue 16's bound.
const BUDGET: u64 = 256 << 20;

/// The maps that hold most of it, and the most each may take at the
/// defaults (docs/design.md, "Memory").
const LARGEST: &[(&str, u64)] = &[
    ("FLOWS", 51 << 20),
    ("CHALLENGE", 33 << 20),
    ("BLOCK", 4 << 20),
    ("RATE", 7 << 20),
    ("VERIFIED_BITS", 3 << 20),
    ("ALLOW", 1 << 20),
    ("COUNTS", 3 << 20),
];

#[test]
fn the_maps_lock_at_most_256_mib_at_the_default_sizes() {
    require_root();
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/tcp-guard-test-memory-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("pin directory");
    let measured = measure(&dir);
    std::fs::remove_dir_all(&dir).expect("remove the pins");
    let measured = measured.expect("measure");
    // The notes once per CPU, and a page more at most.
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u64;
    let recent_most = size_of::<RecentFlows>() as u64 * cpus + 4096;
    let total: u64 = measured.iter().map(|(_, bytes)| bytes).sum();
    let table: String = measured
        .iter()
        .map(|(name, bytes)| format!("{name}: {:.2} MiB\n", *bytes as f64 / (1 << 20) as f64))
        .collect();
    assert!(
        total <= BUDGET,
        "{:.1} MiB locked at the defaults:\n{table}",
        total as f64 / (1 << 20) as f64
    );
    for (name, most) in LARGEST.iter().copied().chain([("RECENT_FLOWS", recent_most)]) {
        let bytes = measured
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| *b)
            .unwrap_or_else(|| panic!("{name} not measured:\n{table}"));
        assert!(
            bytes <= most,
            "{name} takes {bytes} bytes, more than documented:\n{table}"
        );
    }
    println!("{table}total: {:.2} MiB", total as f64 / (1 << 20) as f64);
}

/// Each map's name and the bytes the kernel charges for it: the pinned
/// ones, and the per-CPU ones each program has of its own.
fn measure(dir: &std::path::Path) -> anyhow::Result<Vec<(String, u64)>> {
    let mut ebpf = program::load(log::LevelFilter::Off, &Settings::default(), Some(dir))?;
    fill(&mut ebpf, maps::BLOCK, 65_536, BlockEntry::default())?;
    fill(&mut ebpf, maps::ALLOW, 16_384, 1u8)?;
    let unpinned = ["SCRATCH", "RECENT_FLOWS"].map(|name| Ok((name.to_string(), memlock(&ebpf, name)?)));
    program::PINNED_MAPS
        .iter()
        .map(|name| {
            let out = Command::new("bpftool")
                .args(["-j", "map", "show", "pinned"])
                .arg(dir.join(name))
                .output()?;
            let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let bytes = info["bytes_memlock"]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("bpftool gives no bytes_memlock for {name}: {info}"))?;
            Ok((name.to_string(), bytes))
        })
        .chain(unpinned)
        .collect()
}

/// What the kernel charges for a map that is not pinned, from its file
/// descriptor's `memlock` line (where bpftool reads `bytes_memlock`).
fn memlock(ebpf: &aya::Ebpf, name: &str) -> anyhow::Result<u64> {
    let map = ebpf
        .map(name)
        .ok_or_else(|| anyhow::anyhow!("no map {name} in the object"))?;
    let data = match map {
        Map::PerCpuArray(data) => data,
        _ => anyhow::bail!("{name} is not a per-CPU array"),
    };
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", data.fd().as_fd().as_raw_fd()))?;
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no memlock in the fdinfo of {name}: {fdinfo}"))
}

/// Puts `n` distinct IPv6 /128 entries on the list `name`.
fn fill<V: aya::Pod>(ebpf: &mut aya::Ebpf, name: &str, n: u32, value: V) -> anyhow::Result<()> {
    let mut trie: LpmTrie<_, LpmAddr, V> = ebpf
        .map_mut(name)
        .ok_or_else(|| anyhow::anyhow!("no map {name}"))?
        .try_into()?;
    for i in 0..n {
        let mut addr = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        addr[12..].copy_from_slice(&i.to_be_bytes());
        trie.insert(&Key::new(128, LpmAddr::new(6, addr)), value, 0)?;
    }
    Ok(())
}
