//! The per-packet bench's peer: the Linux kernel's BPF selftest XDP SYN proxy
//! (`bench/peers/xdp_synproxy_kern.c`, unmodified). Built at bench time with
//! clang-19 against the running kernel's BTF, loaded and pinned with bpftool
//! (aya 0.14 cannot load it: it calls kfuncs), configured the way the
//! selftest's control program does, and run with BPF_PROG_TEST_RUN through the
//! pinned program. The pins are removed on drop, and [`XdpSynproxy::load`]
//! first removes those of runs whose process is gone. A benchmark peer only:
//! nothing of it is linked into tcp-guard.

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use aya::{
    maps::{Array, Map, MapData},
    programs::{TestRun, TestRunOptions, Xdp},
};
use aya_obj::programs::XdpAttachType;

use tcp_guard_common::packet::{TcpFlags, TcpSegment, parse, parse_tcp_options};

use crate::{
    lab::run,
    packets::{ACK, TcpPacket},
};

/// The selftest's source, as copied into the repository.
pub const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/peers/xdp_synproxy_kern.c");

/// The one port it answers SYNs on here (its `allowed_ports`).
pub const PORT: u16 = 8080;

/// XDP verdicts, as the program returns them.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Its `values` map, key 0, as the selftest's control program writes it:
/// IPv6 MSS 1440, TTL 64, window scale 7, IPv4 MSS 1460.
const TCPIPOPTS: u64 = (1440 << 32) | (64 << 24) | (7 << 16) | 1460;

const PIN_PREFIX: &str = "tg-bench-xdp_synproxy-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The loaded, pinned and configured peer.
pub struct XdpSynproxy {
    prog: Xdp,
    // Dropped after the program's descriptor: removes the pins.
    _pins: Pins,
}

impl XdpSynproxy {
    /// Builds the object into `build_dir` (the bench's target directory),
    /// loads it with bpftool and configures it. Every failure names what is
    /// missing or what failed.
    pub fn load(build_dir: &Path) -> Result<XdpSynproxy> {
        let object = build(build_dir)
            .context("cannot build the kernel selftest xdp_synproxy (the per-packet bench's peer)")?;
        load_object(&object).with_context(|| {
            format!(
                "cannot load the kernel selftest xdp_synproxy (the per-packet bench's peer) from {}",
                object.display()
            )
        })
    }

    /// One BPF_PROG_TEST_RUN on a fresh copy of `frame`: the program's run
    /// time and its verdict.
    pub fn run(&self, frame: &[u8]) -> (Duration, u32) {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        let result = self
            .prog
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN of xdp_synproxy");
        (result.duration, result.return_value)
    }

    /// Runs `frame` and returns the verdict and the frame as the program left it.
    pub fn run_out(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let result = self
            .prog
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN of xdp_synproxy");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Answers `syn` (to [`PORT`], with the options [`parse_syn_ack`]
    /// expects) and returns the ACK a Linux client sends back: the cookie of
    /// the SYN-ACK acknowledged, its timestamp echoed. Panics unless the SYN
    /// was answered with XDP_TX and that SYN-ACK.
    pub fn cookie_ack(&self, syn: &TcpPacket) -> TcpPacket {
        let (verdict, reply) = self.run_out(&syn.frame());
        assert_eq!(verdict, XDP_TX, "xdp_synproxy answers a SYN with XDP_TX");
        let (syn_ack, tsval) = parse_syn_ack(syn, &reply);
        let mut ack = TcpPacket::new(syn.src, syn.dst, syn.src_port, syn.dst_port, ACK);
        ack.seq = syn.seq.wrapping_add(1);
        ack.ack = syn_ack.seq.wrapping_add(1);
        ack.tcp_options = vec![1, 1, 8, 10];
        ack.tcp_options.extend_from_slice(&2u32.to_be_bytes());
        ack.tcp_options.extend_from_slice(&tsval.to_be_bytes());
        ack
    }

    /// Where this load is pinned (removed on drop).
    pub fn pin_dir(&self) -> &Path {
        &self._pins.0
    }
}

/// Checks that `reply` is the SYN-ACK answering `syn`, with the options a
/// SYN carrying MSS, SACK, timestamps and window scale gets (so the
/// timestamp cookie path was taken), and returns its TCP segment and TSval.
pub fn parse_syn_ack(syn: &TcpPacket, reply: &[u8]) -> (TcpSegment, u32) {
    let d = parse(reply);
    let s = *d.tcp().expect("the reply is TCP");
    assert_eq!(s.flags.0, TcpFlags::SYN | TcpFlags::ACK, "the reply is a SYN-ACK");
    assert_eq!(
        (s.src_port, s.dst_port),
        (syn.dst_port, syn.src_port),
        "ports swapped"
    );
    assert_eq!(ip(&s.src, syn.dst), syn.dst, "source: the SYN's destination");
    assert_eq!(ip(&s.dst, syn.src), syn.src, "destination: the SYN's source");
    assert_eq!(s.ack, syn.seq.wrapping_add(1), "acknowledges the SYN");
    let opts = parse_tcp_options(reply, &s);
    assert_eq!(opts.mss(), Some(1460), "MSS from its values map");
    assert_eq!(opts.window_scale(), Some(7), "window scale from its values map");
    assert!(opts.sack_permitted(), "SACK permitted");
    let (tsval, tsecr) = opts.timestamp().expect("timestamp cookie");
    let sent = syn_tsval(syn).expect("the SYN carries timestamps");
    assert_eq!(tsecr, sent, "echoes the SYN's TSval");
    (s, tsval)
}

/// The TSval of `syn`'s options, if it has one.
fn syn_tsval(syn: &TcpPacket) -> Option<u32> {
    let frame = syn.frame();
    let s = *parse(&frame[..]).tcp()?;
    parse_tcp_options(&frame[..], &s)
        .timestamp()
        .map(|(tsval, _)| tsval)
}

/// The address in `raw` (16 bytes, IPv4 in the first four), of `like`'s family.
fn ip(raw: &[u8; 16], like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from([raw[0], raw[1], raw[2], raw[3]]),
        IpAddr::V6(_) => IpAddr::from(*raw),
    }
}

/// The pin directory of one load, removed with everything in it on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("xdp_synproxy: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// `bpftool btf dump` of the running kernel into vmlinux.h, then the
/// selftest's recipe (peers/README.md); the object lands in `build_dir`.
fn build(build_dir: &Path) -> Result<PathBuf> {
    let (target_arch, multiarch) = match std::env::consts::ARCH {
        "x86_64" => ("x86", "x86_64-linux-gnu"),
        "aarch64" => ("arm64", "aarch64-linux-gnu"),
        other => bail!("no build recipe for {other}"),
    };
    let clang = tool("clang-19", "clang-19")?;
    let bpftool = tool("bpftool", "bpftool")?;
    for (header, package) in [
        ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
        (&format!("/usr/include/{multiarch}/asm/errno.h"), "linux-libc-dev"),
    ] {
        if !Path::new(header).exists() {
            bail!("{header} is missing: run `cargo xtask setup` (Debian package {package})");
        }
    }
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    if !btf.exists() {
        bail!(
            "{} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF",
            btf.display()
        );
    }
    if !Path::new(SOURCE).exists() {
        bail!("{SOURCE} is missing");
    }
    // A directory of this process's own, so that concurrent runs never
    // write each other's files; the object is then renamed into place.
    let work = build_dir.join(format!("xdp_synproxy.{}.{}", std::process::id(), next()));
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let vmlinux = run(Command::new(&bpftool)
        .args(["btf", "dump", "file"])
        .arg(btf)
        .args(["format", "c"]))?;
    fs::write(work.join("vmlinux.h"), &vmlinux.stdout).context("cannot write vmlinux.h")?;
    let object = work.join("xdp_synproxy.o");
    run(Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf"])
        .arg(format!("-D__TARGET_ARCH_{target_arch}"))
        .arg("-I")
        .arg(&work)
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-Wno-compare-distinct-pointer-types", "-c", SOURCE, "-o"])
        .arg(&object))?;
    let built = build_dir.join("xdp_synproxy.o");
    fs::rename(&object, &built).with_context(|| format!("cannot move the object to {}", built.display()))?;
    fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    Ok(built)
}

/// The path of `name`, searched in PATH and the sbin directories (bpftool
/// lives in /usr/sbin), or an error naming the Debian package.
fn tool(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found: run `cargo xtask setup` (Debian package {package})"))
}

fn next() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Loads and pins the object under a name of this process's own, then
/// writes its configuration.
fn load_object(object: &Path) -> Result<XdpSynproxy> {
    sweep_leftovers();
    let bpffs = Path::new("/sys/fs/bpf");
    let dir = bpffs.join(format!("{PIN_PREFIX}{}-{}", std::process::id(), next()));
    fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| {
        format!(
            "cannot create {} (is bpffs mounted at /sys/fs/bpf?)",
            dir.display()
        )
    })?;
    let pins = Pins(dir);
    let (progs, maps) = (pins.0.join("progs"), pins.0.join("maps"));
    let bpftool = tool("bpftool", "bpftool")?;
    run(Command::new(bpftool)
        .args(["prog", "loadall"])
        .arg(object)
        .arg(&progs)
        .arg("pinmaps")
        .arg(&maps))?;

    let map = |name: &str| -> Result<Map> {
        let data = MapData::from_pin(maps.join(name)).with_context(|| format!("pinned map {name}"))?;
        Map::from_map_data(data).with_context(|| format!("pinned map {name}"))
    };
    let mut values: Array<MapData, u64> = map("values")?.try_into().context("values: an array of u64")?;
    values.set(0, TCPIPOPTS, 0).context("write values[0]")?;
    let mut ports: Array<MapData, u16> = map("allowed_ports")?
        .try_into()
        .context("allowed_ports: an array of u16")?;
    ports.set(0, PORT, 0).context("write allowed_ports[0]")?;
    ports.set(1, 0, 0).context("write allowed_ports[1]")?;

    let prog = Xdp::from_pin(progs.join("syncookie_xdp"), XdpAttachType::Interface)
        .context("pinned program syncookie_xdp")?;
    Ok(XdpSynproxy { prog, _pins: pins })
}

/// Removes the pins of loads whose process is gone (killed before its drop).
fn sweep_leftovers() {
    let Ok(entries) = fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PIN_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("xdp_synproxy: removing leftover pins {}", entry.path().display());
            drop(Pins(entry.path()));
        }
    }
}
