//! Attaching the XDP program to an interface, with errors that say what to do.

use std::{ffi::CString, fmt};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{ProgramError, TcAttachType, XdpMode, tc::SchedClassifierLinkId, xdp::XdpLinkId},
};

use crate::program;

/// How the XDP program runs on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Native (driver) mode where the driver supports it, generic (skb) mode otherwise.
    Auto,
    /// In the driver, before the kernel allocates an skb: fastest.
    Native,
    /// Generic XDP, after skb allocation: works on every interface, costs more.
    Skb,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Native => "native",
            Mode::Skb => "skb",
        })
    }
}

/// The index of `iface`, or an error naming it.
pub fn if_index(iface: &str) -> Result<u32> {
    let name = CString::new(iface).map_err(|_| anyhow!("interface name {iface:?} contains a NUL byte"))?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("interface {iface} does not exist (list interfaces with `ip -br link`)");
    }
    Ok(index)
}

/// Attaches the loaded XDP program to `iface`; returns the link and the mode
/// actually in use (never `Auto`).
pub fn attach_xdp(ebpf: &mut Ebpf, iface: &str, mode: Mode) -> Result<(XdpLinkId, Mode)> {
    let index = if_index(iface)?;
    let xdp = program::xdp_program(ebpf)?;
    match mode {
        Mode::Native | Mode::Skb => {
            let link = xdp
                .attach_to_if_index(index, xdp_mode(mode))
                .map_err(|e| explain(e, iface, mode))?;
            Ok((link, mode))
        }
        Mode::Auto => match xdp.attach_to_if_index(index, XdpMode::Driver) {
            Ok(link) => Ok((link, Mode::Native)),
            Err(e) if is_errno(&e, &[libc::EOPNOTSUPP, libc::EINVAL]) => {
                log::info!("{iface} has no native XDP support; attaching in skb (generic) mode");
                let link = xdp
                    .attach_to_if_index(index, XdpMode::Skb)
                    .map_err(|e| explain(e, iface, Mode::Skb))?;
                Ok((link, Mode::Skb))
            }
            Err(e) => Err(explain(e, iface, Mode::Native)),
        },
    }
}

fn xdp_mode(mode: Mode) -> XdpMode {
    match mode {
        Mode::Native => XdpMode::Driver,
        Mode::Skb => XdpMode::Skb,
        Mode::Auto => XdpMode::Default,
    }
}

fn errno(error: &ProgramError) -> Option<i32> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        source = e.source();
    }
    None
}

fn is_errno(error: &ProgramError, codes: &[i32]) -> bool {
    errno(error).is_some_and(|code| codes.contains(&code))
}

fn explain(error: ProgramError, iface: &str, mode: Mode) -> anyhow::Error {
    let hint = match errno(&error) {
        Some(libc::EBUSY | libc::EEXIST) => format!(
            "another XDP program is already attached to {iface} (see `ip link show {iface}`); \
             detach it first (`ip link set dev {iface} xdp off`) or stop the tcp-guard that owns it"
        ),
        Some(libc::EOPNOTSUPP | libc::EINVAL) if mode == Mode::Native => {
            format!("the driver of {iface} does not support native XDP; try --mode skb")
        }
        Some(libc::EPERM | libc::EACCES) => {
            "attaching XDP programs needs root (CAP_NET_ADMIN and CAP_BPF)".to_string()
        }
        _ => format!("failed to attach XDP in {mode} mode to {iface}"),
    };
    anyhow::Error::new(error).context(hint)
}

/// Attaches the TC egress program to `iface` (TCX, kernel 6.6 or later).
pub fn attach_tc_egress(ebpf: &mut Ebpf, iface: &str) -> Result<SchedClassifierLinkId> {
    program::tc_egress_program(ebpf)?
        .attach(iface, TcAttachType::Egress)
        .with_context(|| {
            format!(
                "failed to attach the TC egress program to {iface} (needs TCX, Linux 6.6 or later); \
                 --no-egress runs with XDP alone"
            )
        })
}

/// Detaches the TC egress program from `iface`.
pub fn detach_tc_egress(ebpf: &mut Ebpf, link: SchedClassifierLinkId, iface: &str) -> Result<()> {
    program::tc_egress_program(ebpf)?
        .detach(link)
        .with_context(|| format!("failed to detach the TC egress program from {iface}"))
}

/// Detaches the XDP program from `iface`.
pub fn detach_xdp(ebpf: &mut Ebpf, link: XdpLinkId, iface: &str) -> Result<()> {
    program::xdp_program(ebpf)?
        .detach(link)
        .with_context(|| format!("failed to detach XDP from {iface}"))
}
