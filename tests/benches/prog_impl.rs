//! Per-packet cost of the fast path, measured with BPF_PROG_TEST_RUN beside a
//! trivial XDP_PASS program in the same run (../shared/benchmarking.md):
//! one run per call on a fresh copy of the packet, calls interleaved in small
//! chunks with the baseline, medians reported. Paths that create or move flow
//! state get a distinct flow per call. Shared by the benchmark (benches/prog.rs,
//! `cargo xtask bench prog`) and its smoke test (tests/bench_smoke.rs).

use std::{net::IpAddr, time::Duration};

use aya::{
    Ebpf,
    maps::{
        Array,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{TestRun, TestRunOptions, Xdp},
};
use tcp_guard::{program, settings::Settings};
use tcp_guard_common::{
    config::TableSizes,
    maps,
    policy::{AttackState, BlockEntry, LpmAddr},
    programs,
};
use tcp_guard_tests::packets::{ACK, PSH, SYN, TcpPacket, ethernet, linux_syn_options};

/// How much to measure.
pub struct Params {
    pub rounds: usize,
    pub chunk: usize,
    pub warmup: usize,
}

impl Params {
    /// Flows a case may create: warm-up plus every measured call (each case
    /// has 16,384 source addresses of its own).
    fn flows_per_case(&self) -> usize {
        let n = self.warmup + self.rounds * self.chunk;
        assert!(n < 16_384, "{n} flows per case exceed a case's source range");
        n
    }
}

/// One case's medians, in ns per packet.
pub struct Row {
    pub name: &'static str,
    pub guard_ns: f64,
    pub baseline_ns: f64,
}

fn run_once(prog: &Xdp, frame: &[u8]) -> Duration {
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    prog.test_run(opts).expect("BPF_PROG_TEST_RUN").duration
}

fn tc_once(ebpf: &mut Ebpf, frame: &[u8]) {
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    program::tc_egress_program(ebpf)
        .expect("tc")
        .test_run(opts)
        .expect("tc test run");
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Source `i` of 198.19.0.0/16. Cases take disjoint ranges (see their
/// bases): a source verified by one case must not shortcut another.
fn peer(i: usize) -> IpAddr {
    assert!(i < 65_536, "source {i} outside 198.19.0.0/16");
    IpAddr::from([198, 19, (i >> 8) as u8, i as u8])
}

const HOST: [u8; 4] = [198, 18, 0, 1];
const K: u32 = 90_000;

fn syn(i: usize) -> TcpPacket {
    let mut pkt = TcpPacket::new(peer(i), IpAddr::from(HOST), 10_000 + (i % 50_000) as u16, 80, SYN);
    pkt.seq = i as u32 * 1000;
    pkt.tcp_options = linux_syn_options(1460, 1, 7);
    pkt
}

fn syn_ack(i: usize) -> TcpPacket {
    let s = syn(i);
    let mut pkt = TcpPacket::new(s.dst, s.src, s.dst_port, s.src_port, SYN | ACK);
    pkt.seq = K;
    pkt.ack = s.seq + 1;
    pkt
}

fn final_ack(i: usize) -> TcpPacket {
    let s = syn(i);
    let mut pkt = TcpPacket::new(s.src, s.dst, s.src_port, s.dst_port, ACK);
    pkt.seq = s.seq + 1;
    pkt.ack = K + 1;
    pkt
}

struct Case {
    name: &'static str,
    /// The frame for call `i` (distinct flows where state changes).
    frames: Vec<Vec<u8>>,
}

/// Measures every case whose name contains `only`.
pub fn measure(params: &Params, only: &str) -> Vec<Row> {
    #[expect(non_snake_case, reason = "reads as the constant it used to be")]
    let FLOWS_PER_CASE = params.flows_per_case();
    let mut settings = Settings {
        tables: TableSizes {
            half_open: 4 * FLOWS_PER_CASE as u32,
            flows: 4 * FLOWS_PER_CASE as u32,
        },
        ..Settings::default()
    };
    // Distinct flows per call come from few sources: no per-source limits here.
    settings.live.per_source_half_open = 0;
    settings.live.per_prefix_half_open = 0;
    settings.live.per_port_half_open = 0;
    settings.live.global_half_open = 0;
    settings.live.syn_rate = 0;
    // Attack mode only where a case turns it on.
    settings.live.attack_enter_half_open = 0;
    let mut ebpf = program::load(log::LevelFilter::Off, &settings, None).expect("load tcp-guard");
    let baseline: &mut Xdp = ebpf
        .program_mut(programs::BASELINE)
        .expect("baseline program")
        .try_into()
        .expect("XDP");
    baseline.load().expect("load baseline");

    // Flows for the final-ACK case: SYN in, SYN-ACK out, before measuring.
    // Source ranges: new SYNs 0.., final ACKs 16384.., the established flow
    // 32768, challenged SYNs 40000.. (each case uses FLOWS_PER_CASE < 16384).
    let offset = 16_384;
    for i in 0..FLOWS_PER_CASE {
        let xdp = program::xdp_program(&mut ebpf).expect("xdp");
        run_once(xdp, &syn(offset + i).frame());
        tc_once(&mut ebpf, &syn_ack(offset + i).frame());
    }
    // One established flow for the data case.
    let est = 32_768;
    run_once(program::xdp_program(&mut ebpf).expect("xdp"), &syn(est).frame());
    tc_once(&mut ebpf, &syn_ack(est).frame());
    run_once(
        program::xdp_program(&mut ebpf).expect("xdp"),
        &final_ack(est).frame(),
    );
    let mut data = final_ack(est);
    data.flags = ACK | PSH;
    data.payload = vec![0x5a; 100];

    let mut udp = syn(0).ip_packet();
    udp[9] = 17;
    let udp = ethernet(0x0800, None, &udp);
    let mut truncated = syn(0).frame();
    truncated.truncate(40);
    let same = |frame: Vec<u8>| vec![frame; FLOWS_PER_CASE];
    // Sources 198.18.200.0/24 are blocked below, before their case.
    let blocked = |i: usize| {
        let mut pkt = syn(i);
        pkt.src = IpAddr::from([198, 18, 200, i as u8]);
        pkt.frame()
    };
    let cases = [
        Case {
            name: "SYN, new flow",
            frames: (0..FLOWS_PER_CASE).map(|i| syn(i).frame()).collect(),
        },
        Case {
            name: "final ACK of a handshake",
            frames: (0..FLOWS_PER_CASE)
                .map(|i| final_ack(offset + i).frame())
                .collect(),
        },
        Case {
            name: "data ACK, established flow",
            frames: same(data.frame()),
        },
        Case {
            name: "non-TCP (UDP)",
            frames: same(udp),
        },
        Case {
            name: "malformed (truncated TCP)",
            frames: same(truncated),
        },
        Case {
            name: "SYN from a blocked source",
            frames: (0..FLOWS_PER_CASE).map(blocked).collect(),
        },
        // Last: attack mode stays on from here.
        Case {
            name: "SYN in attack mode, unknown source (challenged)",
            frames: (0..FLOWS_PER_CASE).map(|i| syn(40_000 + i).frame()).collect(),
        },
    ];

    let mut rows = Vec::new();
    for case in cases.iter().filter(|c| c.name.contains(only)) {
        if case.name.starts_with("SYN from a blocked") {
            block(&mut ebpf, [198, 18, 200, 0], 24);
        }
        if case.name.starts_with("SYN in attack mode") {
            let mut attack: Array<_, AttackState> = ebpf
                .map_mut(maps::ATTACK)
                .expect("ATTACK")
                .try_into()
                .expect("array");
            let on = AttackState {
                active: 1,
                trigger: AttackState::BY_HALF_OPEN,
                since_ns: 1,
            };
            attack.set(0, on, 0).expect("attack mode on");
        }
        let baseline_frame = &case.frames[0];
        let mut frames = case.frames.iter();
        for frame in frames.by_ref().take(params.warmup) {
            run_once(program::xdp_program(&mut ebpf).expect("xdp"), frame);
            run_once(baseline_program(&mut ebpf), baseline_frame);
        }
        let (mut guard, mut base) = (Vec::new(), Vec::new());
        for _ in 0..params.rounds {
            let mut g: Vec<f64> = Vec::with_capacity(params.chunk);
            let mut b: Vec<f64> = Vec::with_capacity(params.chunk);
            for _ in 0..params.chunk {
                b.push(run_once(baseline_program(&mut ebpf), baseline_frame).as_nanos() as f64);
            }
            let xdp = program::xdp_program(&mut ebpf).expect("xdp");
            for frame in frames.by_ref().take(params.chunk) {
                g.push(run_once(xdp, frame).as_nanos() as f64);
            }
            guard.push(median(&mut g));
            base.push(median(&mut b));
        }
        rows.push(Row {
            name: case.name,
            guard_ns: median(&mut guard),
            baseline_ns: median(&mut base),
        });
    }
    rows
}

/// The rows as a Markdown table, and how they were measured.
pub fn markdown(rows: &[Row], params: &Params) -> String {
    let mut out = String::from(
        "| packet | tcp-guard ns/pkt | XDP_PASS ns/pkt | difference | ratio |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} |\n",
            r.name,
            r.guard_ns,
            r.baseline_ns,
            r.guard_ns - r.baseline_ns,
            r.guard_ns / r.baseline_ns
        ));
    }
    out.push_str(&format!(
        "\n{} rounds of {} calls per case, one run per call (repeat = 1), medians; kernel {}, {}\n",
        params.rounds,
        params.chunk,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        cpu_model()
    ));
    out
}

/// Blocks an IPv4 network, as `tcp-guard block add` would.
fn block(ebpf: &mut Ebpf, network: [u8; 4], prefix_len: u32) {
    let mut trie: LpmTrie<_, LpmAddr, BlockEntry> = ebpf
        .map_mut(maps::BLOCK)
        .expect("BLOCK")
        .try_into()
        .expect("LPM trie");
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&network);
    trie.insert(
        &Key::new(prefix_len + 96, LpmAddr::new(4, addr)),
        BlockEntry::default(),
        0,
    )
    .expect("block");
}

fn baseline_program(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(programs::BASELINE)
        .expect("baseline program")
        .try_into()
        .expect("XDP")
}

fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    format!("{model}, {cores} cores")
}
