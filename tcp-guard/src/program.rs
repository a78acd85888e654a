//! The embedded eBPF object: loading it, with clear errors.

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    programs::{ProgramError, SchedClassifier, Xdp},
};
use tcp_guard_common::{config::TableSizes, maps, programs};

/// The eBPF object built by build.rs from `tcp-guard-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp-guard-ebpf.o"));

/// The toolchain build.rs used for [`OBJECT`].
pub const EBPF_TOOLCHAIN: &str = env!("TCP_GUARD_EBPF_TOOLCHAIN");

/// Opens the object, sizes its flow tables, and loads its programs into the
/// kernel (not attached).
///
/// `log_level` is the most verbose level the kernel side may emit through
/// aya-log; records above it cost the program one comparison.
pub fn load(log_level: log::LevelFilter, sizes: TableSizes) -> Result<Ebpf> {
    let level = log_level as u8;
    let mut ebpf = EbpfLoader::new()
        .override_global(aya_log::LEVEL, &level, true)
        .map_max_entries(maps::HALF_OPEN, sizes.half_open)
        .map_max_entries(maps::FLOWS, sizes.flows)
        .load(OBJECT)
        .map_err(explain_load_error)
        .context("failed to load the tcp-guard eBPF object")?;
    xdp_program(&mut ebpf)?
        .load()
        .map_err(explain_program_error)
        .with_context(|| format!("the kernel refused to load program {}", programs::XDP))?;
    tc_egress_program(&mut ebpf)?
        .load()
        .map_err(explain_program_error)
        .with_context(|| format!("the kernel refused to load program {}", programs::TC_EGRESS))?;
    Ok(ebpf)
}

/// The TC egress program of a loaded object.
pub fn tc_egress_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(programs::TC_EGRESS)
        .with_context(|| format!("program {} missing from the eBPF object", programs::TC_EGRESS))?
        .try_into()
        .with_context(|| format!("program {} is not a TC classifier", programs::TC_EGRESS))
}

/// The XDP ingress program of a loaded object.
pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(programs::XDP)
        .with_context(|| format!("program {} missing from the eBPF object", programs::XDP))?
        .try_into()
        .with_context(|| format!("program {} is not an XDP program", programs::XDP))
}

fn explain_load_error(error: EbpfError) -> anyhow::Error {
    match error {
        EbpfError::MapError(ref map_error) if is_permission_error(map_error) => {
            anyhow::Error::new(error).context("creating BPF maps needs root (CAP_BPF and CAP_NET_ADMIN)")
        }
        other => other.into(),
    }
}

fn is_permission_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Puts the verifier's log on its own lines, where an operator can read it.
/// (The verifier rejects with EACCES or EINVAL, so the errno alone says little.)
fn explain_program_error(error: ProgramError) -> anyhow::Error {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            anyhow::anyhow!(
                "BPF_PROG_LOAD failed: {io_error}\n--- verifier log ---\n{verifier_log}\n--- end of verifier log ---"
            )
        }
        other => other.into(),
    }
}
