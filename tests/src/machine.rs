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
