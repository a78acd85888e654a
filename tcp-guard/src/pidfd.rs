//! Signalling an instance's daemon, and no other process. The pid its INFO
//! records may belong to someone else by now (the daemon died and the pid
//! was reused, or a starting daemon has not written its own yet), so the
//! process is pinned down with a pidfd, and signalled only if it holds the
//! instance's lock, which only its daemon does.

use std::{
    fs,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::Path,
};

use anyhow::{Context, Result, bail};

use crate::instance;

/// The daemon of one instance, by pidfd.
pub struct DaemonProcess {
    pid: u32,
    fd: OwnedFd,
}

impl DaemonProcess {
    /// The daemon of `iface`'s instance, which its INFO records as `pid`;
    /// refused unless that process holds the instance's lock.
    pub fn open(iface: &str, pid: u32) -> Result<Self> {
        let dir = instance::dir(iface);
        let refused = |what: &str| -> Result<Self> {
            let holder = match lock_holders(&dir)?.as_slice() {
                [] => "no process holds it, so no daemon runs there (see `tcp-guard status`)".to_string(),
                holders => format!(
                    "it is held by pid {}, a daemon that may be starting up: try again in a moment",
                    holders.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
                ),
            };
            bail!(
                "pid {pid}, recorded as the tcp-guard daemon of {iface} in {}, {what}; nothing was signalled. \
                 The instance's lock: {holder}",
                dir.join(crate::control::INFO).display()
            )
        };
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if raw < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ESRCH) {
                return refused("is gone");
            }
            return Err(error).with_context(|| format!("pidfd_open({pid}) failed (needs Linux 5.3)"));
        }
        // SAFETY: a descriptor pidfd_open just returned, owned by nothing else.
        let process = DaemonProcess {
            pid,
            fd: unsafe { OwnedFd::from_raw_fd(raw as i32) },
        };
        if !lock_holders(&dir)?.contains(&i64::from(pid)) {
            return refused("does not hold the instance's lock (the pid belongs to another process now)");
        }
        // Alive after the check: so the pid was not reused while it ran.
        if process.signal(0).is_err() {
            return refused("is gone");
        }
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` (0: only checks that the process is alive).
    pub fn signal(&self, signal: i32) -> Result<()> {
        // SAFETY: pidfd_send_signal on a pidfd we own, without siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot signal the tcp-guard daemon (pid {})", self.pid));
        }
        Ok(())
    }
}

const PROC_LOCKS: &str = "/proc/locks";

/// Pids holding a flock on `path` (a daemon locks its instance's directory).
fn lock_holders(path: &Path) -> Result<Vec<i64>> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    let locks = fs::read_to_string(PROC_LOCKS).with_context(|| format!("cannot read {PROC_LOCKS}"))?;
    Ok(flock_holders(&locks, &lock_id(meta.dev(), meta.ino())))
}

/// A file as /proc/locks names it: `MAJOR:MINOR:INODE`, the device numbers
/// in hex of at least two digits.
fn lock_id(dev: u64, ino: u64) -> String {
    format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev))
}

/// From /proc/locks, the pids holding a flock on the file `id` (lines such
/// as `1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF`; waiters' lines,
/// `1: -> FLOCK ...`, hold nothing).
fn flock_holders(locks: &str, id: &str) -> Vec<i64> {
    locks
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, "FLOCK", _, _, pid, file, ..] if *file == id => pid.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flock_holders_are_read_from_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 00:1f:77 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 5151 00:1f:77 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 6161 00:1f:77 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 7171 00:1f:770 0 EOF\n\
                     4: FLOCK  ADVISORY  READ 8181 fe:00:77 0 EOF\n";
        assert_eq!(flock_holders(locks, "00:1f:77"), vec![4242]);
        assert_eq!(flock_holders(locks, "fe:00:77"), vec![8181]);
        assert!(flock_holders(locks, "00:1f:78").is_empty());
    }

    #[test]
    fn files_are_named_as_proc_locks_names_them() {
        let st_dev = libc::makedev(0xfe, 0);
        assert_eq!(lock_id(st_dev, 5513578), "fe:00:5513578");
        assert_eq!(lock_id(libc::makedev(0, 0x1f), 77), "00:1f:77");
    }
}
