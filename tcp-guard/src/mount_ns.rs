//! `ip netns exec NS tcp-guard ...` runs us in a mount namespace of its own,
//! with /sys remounted for NS: the host's bpffs at /sys/fs/bpf is not there.
//! Pins made in a bpffs mounted there would die with that namespace (a
//! `kill -9` would detach the guard) and other commands would not see them.
//! So every command first moves back to the mount namespace `ip netns exec`
//! was started from, keeping its network namespace: state then lives in the
//! host's bpffs whichever way a command was started. Where that namespace
//! cannot be reached, the command refuses and says how to run it instead.

use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
};

use anyhow::{Context, Result, bail};

/// How many `ip netns exec` made namespaces may be nested.
const MAX_NESTING: usize = 4;

/// Leaves the mount namespaces `ip netns exec` made, if any. Must run while
/// the process has one thread: setns(CLONE_NEWNS) refuses a process that
/// shares its filesystem context.
pub fn leave_ip_netns_exec() -> Result<()> {
    for _ in 0..MAX_NESTING {
        let Some(netns) = ip_netns_exec_name()? else {
            return Ok(());
        };
        let Some(pid) = ancestor_in_other_mount_ns()? else {
            bail!(
                "this runs in the private mount namespace of `ip netns exec {netns}`, and no process of the \
                 namespace it came from is visible, so tcp-guard cannot reach the host's bpffs: state pinned \
                 here would vanish with this process and other commands would not find it. Run it as \
                 `nsenter --net=/run/netns/{netns} tcp-guard ...` instead"
            );
        };
        join_mount_ns_of(pid).with_context(|| {
            format!(
                "cannot leave the private mount namespace of `ip netns exec {netns}` for the host's (that of \
                 pid {pid}); run it as `nsenter --net=/run/netns/{netns} tcp-guard ...` instead"
            )
        })?;
        log::debug!("left the mount namespace of `ip netns exec {netns}` for that of pid {pid}");
    }
    bail!(
        "more than {MAX_NESTING} nested `ip netns exec` mount namespaces; use `nsenter --net=/run/netns/NAME`"
    )
}

/// The network namespace's name when this mount namespace is one
/// `ip netns exec NAME` made: its /sys is a sysfs mounted with the source
/// NAME, and this process's network namespace is /run/netns/NAME.
fn ip_netns_exec_name() -> Result<Option<String>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let Some(source) = sys_mount_source(&mountinfo) else {
        return Ok(None);
    };
    if source.is_empty() || source.contains('/') {
        return Ok(None);
    }
    let named = match fs::metadata(Path::new("/run/netns").join(source)) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot stat /run/netns/{source}")),
    };
    let ours = fs::metadata("/proc/self/ns/net").context("cannot stat /proc/self/ns/net")?;
    Ok((named.dev() == ours.dev() && named.ino() == ours.ino()).then(|| source.to_string()))
}

/// The source of the sysfs mounted on /sys last (the one visible), from
/// /proc/self/mountinfo: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS] - FSTYPE SOURCE SUPER`.
fn sys_mount_source(mountinfo: &str) -> Option<&str> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            let mut fs = after.split(' ');
            let (fstype, source) = (fs.next()?, fs.next()?);
            (mount_point == "/sys" && fstype == "sysfs").then_some(source)
        })
        .next_back()
}

/// The nearest ancestor process in another mount namespace than ours.
fn ancestor_in_other_mount_ns() -> Result<Option<u32>> {
    let ours = fs::read_link("/proc/self/ns/mnt").context("cannot read /proc/self/ns/mnt")?;
    let mut pid = parent_of("self")?;
    while pid > 0 {
        match fs::read_link(format!("/proc/{pid}/ns/mnt")) {
            Ok(theirs) if theirs != ours => return Ok(Some(pid)),
            Ok(_) => pid = parent_of(&pid.to_string())?,
            // Gone, or not ours to look into: nothing further up is reachable.
            Err(_) => return Ok(None),
        }
    }
    Ok(None)
}

fn parent_of(pid: &str) -> Result<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    parse_ppid(&stat).with_context(|| format!("cannot parse /proc/{pid}/stat"))
}

/// The parent pid from /proc/PID/stat: `PID (COMM) STATE PPID ...`, where
/// COMM may hold spaces and parentheses.
fn parse_ppid(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// setns(CLONE_NEWNS) into `pid`'s mount namespace, staying in the same
/// working directory (setns moves it to the namespace's root).
fn join_mount_ns_of(pid: u32) -> Result<()> {
    let ns = File::open(format!("/proc/{pid}/ns/mnt"))
        .with_context(|| format!("cannot open /proc/{pid}/ns/mnt"))?;
    let cwd = File::open(".").context("cannot open the working directory")?;
    // SAFETY: setns on an fd we own; the process is still single-threaded.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(io::Error::last_os_error()).context("setns(CLONE_NEWNS)");
    }
    // SAFETY: fchdir on a directory fd we own.
    if unsafe { libc::fchdir(cwd.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error()).context("cannot return to the working directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_visible_sys_mount_is_the_last_one() {
        let mountinfo = "\
22 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/bpf rw shared:8 - bpf bpf rw,mode=700
41 29 0:40 / /sys rw,relatime - sysfs blue rw
";
        assert_eq!(sys_mount_source(mountinfo), Some("blue"));
        assert_eq!(sys_mount_source("22 1 0:21 / /proc rw - proc proc rw\n"), None);
    }

    #[test]
    fn ppid_survives_odd_command_names() {
        assert_eq!(parse_ppid("123 (a) b (c)) S 45 123 123 0"), Some(45));
        assert_eq!(parse_ppid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parse_ppid("garbage"), None);
    }
}
