//! Attaching the XDP program to an interface, with errors that say what to do.

use std::{ffi::CString, fmt, io, path::Path};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{
        ProgramError, TcAttachType, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
        xdp::{XdpLink, XdpLinkId},
    },
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
        Some(libc::EBUSY | libc::EEXIST) => match attached_program(iface) {
            Some((name, id)) if name == LIBXDP_DISPATCHER => format!(
                "{iface} has libxdp's multi-program dispatcher (program {name}, id {id}: xdp-loader, \
                 xdp-filter): tcp-guard does not take part in it and keeps one interface to itself; \
                 unload the others first (`xdp-loader unload {iface} --all`), see docs/operations.md, \
                 \"Beside other XDP programs\""
            ),
            Some((name, id)) => format!(
                "another XDP program is already attached to {iface} ({name}, id {id}); tcp-guard keeps one \
                 interface to itself: detach it first (`ip link set dev {iface} xdp off`, or \
                 `xdp-loader unload {iface} --all` if xdp-loader put it there) or stop the tcp-guard that owns it"
            ),
            None => format!(
                "another XDP program is already attached to {iface} (see `ip link show {iface}`); \
                 detach it first (`ip link set dev {iface} xdp off`) or stop the tcp-guard that owns it"
            ),
        },
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

/// The program name of libxdp's dispatcher (xdp-loader, xdp-filter).
const LIBXDP_DISPATCHER: &str = "xdp_dispatcher";

/// The name and id of the XDP program attached to `iface`, as `ip` reports
/// it; None if it cannot tell (for an error message only).
fn attached_program(iface: &str) -> Option<(String, u64)> {
    let out = std::process::Command::new("ip")
        .args(["-details", "-json", "link", "show", "dev", iface])
        .output()
        .ok()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let prog = &links.get(0)?["xdp"]["prog"];
    Some((prog["name"].as_str()?.to_string(), prog["id"].as_u64()?))
}

/// Pin names of the links that keep the programs attached without the daemon.
pub const XDP_LINK: &str = "link_xdp";
pub const TC_LINK: &str = "link_tc_egress";

/// The link pinned at `pin`, if any.
fn pinned(pin: &Path) -> Result<Option<FdLink>> {
    match PinnedLink::from_pin(pin) {
        Ok(link) => Ok(Some(FdLink::from(link))),
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot open the pinned link {}", pin.display())),
    }
}

/// Attaches the XDP program to `iface` and pins the link at `pin`, or, when
/// a previous instance left a link there, swaps the program into it
/// atomically (no packet goes unprocessed). Returns the mode, and whether a
/// link was adopted (its mode is kept).
pub fn attach_xdp_pinned(ebpf: &mut Ebpf, iface: &str, mode: Mode, pin: &Path) -> Result<(Mode, bool)> {
    if let Some(link) = pinned(pin)? {
        let link = XdpLink::try_from(link).context("the pinned XDP link is not an XDP link")?;
        program::xdp_program(ebpf)?
            .attach_to_link(link)
            .with_context(|| format!("cannot replace the program in the pinned XDP link of {iface}"))?;
        return Ok((mode, true));
    }
    let (link_id, mode) = attach_xdp(ebpf, iface, mode)?;
    let link = program::xdp_program(ebpf)?.take_link(link_id)?;
    FdLink::try_from(link)
        .context("the XDP attachment is not a BPF link (kernel before 5.9?); it cannot survive the daemon")?
        .pin(pin)
        .with_context(|| format!("cannot pin the XDP link at {}", pin.display()))?;
    Ok((mode, false))
}

/// Attaches the TC egress program (TCX, Linux 6.6+) and pins its link, or
/// swaps the program into a pinned one. Returns whether one was adopted.
pub fn attach_tc_pinned(ebpf: &mut Ebpf, iface: &str, pin: &Path) -> Result<bool> {
    if let Some(link) = pinned(pin)? {
        let link = SchedClassifierLink::try_from(link).context("the pinned TC link is not a TC link")?;
        program::tc_egress_program(ebpf)?
            .attach_to_link(link)
            .with_context(|| format!("cannot replace the program in the pinned TC link of {iface}"))?;
        return Ok(true);
    }
    let link_id = attach_tc_egress(ebpf, iface)?;
    let link = program::tc_egress_program(ebpf)?.take_link(link_id)?;
    FdLink::try_from(link)
        .context("the TC attachment is not a TCX link (kernel before 6.6?); it cannot survive the daemon")?
        .pin(pin)
        .with_context(|| format!("cannot pin the TC link at {}", pin.display()))?;
    Ok(false)
}

/// Unpins the link at `pin`, which detaches its program (nothing else holds
/// it). False if there was none.
pub fn detach_pinned(pin: &Path) -> Result<bool> {
    match pinned(pin)? {
        Some(link) => {
            drop(link);
            std::fs::remove_file(pin).with_context(|| format!("cannot unpin {}", pin.display()))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Attaches the TC egress program to `iface` (TCX, kernel 6.6 or later).
fn attach_tc_egress(ebpf: &mut Ebpf, iface: &str) -> Result<aya::programs::tc::SchedClassifierLinkId> {
    program::tc_egress_program(ebpf)?
        .attach(iface, TcAttachType::Egress)
        .with_context(|| {
            format!(
                "failed to attach the TC egress program to {iface} (needs TCX, Linux 6.6 or later); \
                 --no-egress runs with XDP alone"
            )
        })
}
