//! The machine a benchmark ran on, as both benchmarks record it.

/// The kernel release, the CPU's model name and the cores the kernel lists.
pub struct Machine {
    pub kernel: String,
    pub cpu: Option<String>,
    pub cores: usize,
}

impl Machine {
    /// Reads /proc; what cannot be read stays empty.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            cpu: cpuinfo.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            }),
            cores: cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
        }
    }
}

/// Keeps the calling thread, and so the programs it runs with
/// BPF_PROG_TEST_RUN, on one CPU: per-CPU state (scratch, notes of flows,
/// counters) is then the one CPU's.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "cannot pin a thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}
