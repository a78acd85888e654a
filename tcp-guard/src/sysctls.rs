//! The kernel settings the syncookie policy needs while the fast path answers
//! SYNs with cookies, managed for exactly that long.
//!
//! The listener accepts a cookie it did not send only if it sent one itself
//! in the last two minutes; with `tcp_syncookies=2` it answers every SYN
//! with a cookie, so the one SYN per listener the fast path lets through
//! keeps it so. With `tcp_timestamps=1` the kernel subtracts a secret
//! per-connection offset from the echoed timestamp before decoding the
//! cookie's options from it, which XDP cannot know; with 2 there is none.
//! Stock hosts have 1 and 1, so the daemon sets 2 and 2 while attack mode
//! answers cookies, and restores what it found after.
//!
//! Sysctls belong to a network namespace, where several daemons (one per
//! interface) may need them at once: a record per namespace under
//! /run/tcp-guard, changed under a lock, says what was found and who holds
//! the change. The last holder to let go restores the settings it found,
//! unless someone changed them since. A daemon that died holding them is
//! found in the record by its successor, or by `tcp-guard detach`. /run is
//! emptied at boot, as the sysctls are.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Where the records live.
pub const RUN_DIR: &str = "/run/tcp-guard";

/// Makes `dir` ours alone (mode 0700): creates it, or takes group and
/// other access away from one that exists (a directory an earlier version
/// or another tool made open), not following a link.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .with_context(|| {
            format!(
                "cannot open {} as a directory (not following links)",
                dir.display()
            )
        })?;
    let mode = handle
        .metadata()
        .with_context(|| format!("cannot stat {}", dir.display()))?
        .mode();
    if mode & 0o077 != 0 {
        handle
            .set_permissions(fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))?;
    }
    Ok(())
}

/// Writes `contents` to `path` (root's alone, mode 0600), whole or not at
/// all: written aside (`PATH.new`, not following a link), then renamed
/// into place.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temporary)
        .and_then(|mut file| file.write_all(contents))
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// The two settings, as found or as set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Values {
    /// net.ipv4.tcp_syncookies
    pub syncookies: u32,
    /// net.ipv4.tcp_timestamps
    pub timestamps: u32,
}

impl Values {
    /// What the listener needs to accept the fast path's cookies with their
    /// options: cookies for every SYN, and no random timestamp offset
    /// (timestamps off stay off: cookies then carry no options, as the
    /// kernel's own do there).
    pub fn for_cookies(self) -> Values {
        Values {
            syncookies: 2,
            timestamps: if self.timestamps == 1 { 2 } else { self.timestamps },
        }
    }

    pub fn ready_for_cookies(self) -> bool {
        self == self.for_cookies()
    }
}

/// What a namespace's record holds.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The settings found before the first holder changed them.
    found: Values,
    /// The settings the holders put in place.
    set: Values,
    /// Interfaces whose daemons need them.
    holders: Vec<String>,
}

/// One interface's share in its network namespace's settings.
pub struct Manager {
    iface: String,
    /// /proc/sys/net of the namespace (the daemon runs in it).
    proc_net: PathBuf,
    record: PathBuf,
    lock: PathBuf,
}

/// What a call changed, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    None,
    Set {
        from: Values,
        to: Values,
    },
    Restored {
        from: Values,
        to: Values,
    },
    /// The last holder let go, but someone changed the settings since.
    LeftAlone {
        found: Values,
        now: Values,
    },
}

impl Manager {
    /// The manager for `iface` in the calling process's network namespace.
    pub fn for_this_netns(iface: &str) -> Result<Manager> {
        let netns = fs::metadata("/proc/self/ns/net").context("cannot stat /proc/self/ns/net")?;
        Ok(Self::new(
            iface,
            Path::new("/proc/sys/net"),
            Path::new(RUN_DIR),
            &format!("netns-{}-{}", netns.dev(), netns.ino()),
        ))
    }

    fn new(iface: &str, proc_net: &Path, run_dir: &Path, netns: &str) -> Manager {
        Manager {
            iface: iface.to_string(),
            proc_net: proc_net.to_path_buf(),
            record: run_dir.join(format!("sysctls-{netns}.json")),
            lock: run_dir.join(format!("sysctls-{netns}.lock")),
        }
    }

    /// Another number under /proc/sys/net of the namespace, e.g. `ipv4/tcp_max_syn_backlog`.
    pub fn read_net(&self, name: &str) -> Result<u32> {
        read_sysctl(&self.proc_net.join(name))
    }

    /// The settings now.
    pub fn read(&self) -> Result<Values> {
        Ok(Values {
            syncookies: read_sysctl(&self.proc_net.join("ipv4/tcp_syncookies"))?,
            timestamps: read_sysctl(&self.proc_net.join("ipv4/tcp_timestamps"))?,
        })
    }

    fn write(&self, values: Values, now: Values) -> Result<()> {
        if values.syncookies != now.syncookies {
            write_sysctl(&self.proc_net.join("ipv4/tcp_syncookies"), values.syncookies)?;
        }
        if values.timestamps != now.timestamps {
            write_sysctl(&self.proc_net.join("ipv4/tcp_timestamps"), values.timestamps)?;
        }
        Ok(())
    }

    /// Whether this interface holds the settings (a daemon that died may
    /// have left it so).
    pub fn held(&self) -> Result<bool> {
        self.locked(|record, _| {
            let held = record.as_ref().is_some_and(|r| r.holders.contains(&self.iface));
            Ok((record, held))
        })
    }

    /// Puts the settings cookies need in place, recording what was found,
    /// and holds them for this interface.
    pub fn acquire(&self) -> Result<Change> {
        self.locked(|record, now| {
            let mut record = record.unwrap_or(Record {
                found: now,
                set: now.for_cookies(),
                holders: Vec::new(),
            });
            if !record.holders.contains(&self.iface) {
                record.holders.push(self.iface.clone());
            }
            // A holder keeps what it needs in place even if someone changed
            // it back meanwhile.
            let to = now.for_cookies();
            record.set = to;
            let change = if to == now {
                Change::None
            } else {
                self.write(to, now)?;
                Change::Set { from: now, to }
            };
            Ok((Some(record), change))
        })
    }

    /// Lets go; the last holder restores what was found.
    pub fn release(&self) -> Result<Change> {
        self.locked(|record, now| {
            let Some(mut record) = record else {
                return Ok((None, Change::None));
            };
            record.holders.retain(|h| *h != self.iface);
            if !record.holders.is_empty() {
                return Ok((Some(record), Change::None));
            }
            let change = if now != record.set {
                Change::LeftAlone {
                    found: record.found,
                    now,
                }
            } else if now == record.found {
                Change::None
            } else {
                self.write(record.found, now)?;
                Change::Restored {
                    from: now,
                    to: record.found,
                }
            };
            Ok((None, change))
        })
    }

    /// Runs `f` on the record (None: no holder) and the settings now, under
    /// the namespace's lock, and stores the record it returns.
    /// The lock file goes with the record, so that namespaces that come and
    /// go leave nothing behind; a process that locked a file removed
    /// meanwhile sees it and takes the new one.
    fn locked<T>(&self, f: impl FnOnce(Option<Record>, Values) -> Result<(Option<Record>, T)>) -> Result<T> {
        let dir = self.lock.parent().context("the lock has no directory")?;
        create_private_dir(dir)?;
        let _lock = loop {
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&self.lock)
                .with_context(|| format!("cannot open {}", self.lock.display()))?;
            flock(&lock).with_context(|| format!("cannot lock {}", self.lock.display()))?;
            let locked = lock
                .metadata()
                .with_context(|| format!("cannot stat {}", self.lock.display()))?;
            match fs::symlink_metadata(&self.lock) {
                Ok(now) if (now.dev(), now.ino()) == (locked.dev(), locked.ino()) => break lock,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot stat {}", self.lock.display())),
            }
        };
        let record = match fs::read_to_string(&self.record) {
            Ok(text) => Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a tcp-guard sysctl record", self.record.display()))?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.record.display())),
        };
        let (record, result) = f(record, self.read()?)?;
        match record {
            Some(record) => {
                write_private(&self.record, serde_json::to_string(&record)?.as_bytes())?;
            }
            None => {
                for path in [&self.record, &self.lock] {
                    match fs::remove_file(path) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => {
                            return Err(e).with_context(|| format!("cannot remove {}", path.display()));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(result)
    }
}

fn flock(file: &File) -> io::Result<()> {
    // SAFETY: flock on a descriptor we own; released when it is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn read_sysctl(path: &Path) -> Result<u32> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} holds {:?}, not a number", path.display(), text.trim()))
}

fn write_sysctl(path: &Path, value: u32) -> Result<()> {
    fs::write(path, format!("{value}\n"))
        .with_context(|| format!("cannot write {value} to {}", path.display()))?;
    let now = read_sysctl(path)?;
    if now != value {
        bail!("{} is {now} after writing {value}", path.display());
    }
    Ok(())
}

impl std::fmt::Display for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "net.ipv4.tcp_syncookies={} net.ipv4.tcp_timestamps={}",
            self.syncookies, self.timestamps
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc/sys/net and run directory in a temporary directory.
    struct Host {
        root: PathBuf,
    }

    impl Host {
        fn new(syncookies: u32, timestamps: u32) -> Host {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let root = std::env::temp_dir().join(format!("tcp-guard-sysctls-{}-{n}", std::process::id()));
            fs::create_dir_all(root.join("net/ipv4")).unwrap();
            let host = Host { root };
            host.set(syncookies, timestamps);
            host
        }

        fn set(&self, syncookies: u32, timestamps: u32) {
            fs::write(
                self.root.join("net/ipv4/tcp_syncookies"),
                format!("{syncookies}\n"),
            )
            .unwrap();
            fs::write(
                self.root.join("net/ipv4/tcp_timestamps"),
                format!("{timestamps}\n"),
            )
            .unwrap();
        }

        fn manager(&self, iface: &str) -> Manager {
            Manager::new(iface, &self.root.join("net"), &self.root.join("run"), "test")
        }

        fn values(&self) -> Values {
            self.manager("any").read().unwrap()
        }
    }

    impl Drop for Host {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    const STOCK: Values = Values {
        syncookies: 1,
        timestamps: 1,
    };
    const COOKIES: Values = Values {
        syncookies: 2,
        timestamps: 2,
    };

    #[test]
    fn what_cookies_need() {
        assert_eq!(STOCK.for_cookies(), COOKIES);
        assert!(!STOCK.ready_for_cookies());
        assert!(COOKIES.ready_for_cookies());
        let no_timestamps = Values {
            syncookies: 1,
            timestamps: 0,
        };
        assert_eq!(
            no_timestamps.for_cookies().timestamps,
            0,
            "timestamps off stay off"
        );
    }

    #[test]
    fn an_open_run_directory_is_made_private() {
        let host = Host::new(1, 1);
        let run = host.root.join("open-run");
        fs::DirBuilder::new().mode(0o755).create(&run).unwrap();
        fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&run).unwrap();
        assert_eq!(fs::metadata(&run).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_stock_host_is_changed_while_held_and_restored_after() {
        let host = Host::new(1, 1);
        let eth0 = host.manager("eth0");
        assert!(!eth0.held().unwrap());
        assert_eq!(
            eth0.acquire().unwrap(),
            Change::Set {
                from: STOCK,
                to: COOKIES
            }
        );
        assert_eq!(host.values(), COOKIES);
        assert!(eth0.held().unwrap());
        let run = host.root.join("run");
        assert_eq!(
            fs::metadata(&run).unwrap().mode() & 0o777,
            0o700,
            "the run directory is root's alone"
        );
        for entry in fs::read_dir(&run).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(
                fs::metadata(&path).unwrap().mode() & 0o777,
                0o600,
                "{} is root's alone",
                path.display()
            );
        }
        assert_eq!(
            eth0.acquire().unwrap(),
            Change::None,
            "holding twice changes nothing"
        );
        assert_eq!(
            eth0.release().unwrap(),
            Change::Restored {
                from: COOKIES,
                to: STOCK
            }
        );
        assert_eq!(host.values(), STOCK);
        assert!(!eth0.held().unwrap());
        assert_eq!(
            eth0.release().unwrap(),
            Change::None,
            "releasing twice changes nothing"
        );
        assert_eq!(
            fs::read_dir(host.root.join("run")).unwrap().count(),
            0,
            "nothing is left in the run directory"
        );
    }

    #[test]
    fn the_last_of_several_holders_restores() {
        let host = Host::new(1, 1);
        let (eth0, eth1) = (host.manager("eth0"), host.manager("eth1"));
        eth0.acquire().unwrap();
        assert_eq!(eth1.acquire().unwrap(), Change::None);
        assert_eq!(eth0.release().unwrap(), Change::None);
        assert_eq!(host.values(), COOKIES, "eth1 still needs them");
        assert_eq!(
            eth1.release().unwrap(),
            Change::Restored {
                from: COOKIES,
                to: STOCK
            }
        );
        assert_eq!(host.values(), STOCK);
    }

    #[test]
    fn a_host_that_already_has_them_is_left_as_it_is() {
        let host = Host::new(2, 2);
        let eth0 = host.manager("eth0");
        assert_eq!(eth0.acquire().unwrap(), Change::None);
        assert_eq!(eth0.release().unwrap(), Change::None);
        assert_eq!(host.values(), COOKIES);
    }

    #[test]
    fn settings_someone_else_changed_meanwhile_are_left_alone() {
        let host = Host::new(1, 1);
        let eth0 = host.manager("eth0");
        eth0.acquire().unwrap();
        host.set(2, 0);
        assert_eq!(
            eth0.release().unwrap(),
            Change::LeftAlone {
                found: STOCK,
                now: Values {
                    syncookies: 2,
                    timestamps: 0
                }
            }
        );
        assert_eq!(host.values().timestamps, 0);
    }

    #[test]
    fn a_successor_finds_what_a_dead_holder_left() {
        let host = Host::new(1, 1);
        host.manager("eth0").acquire().unwrap();
        // The daemon is killed; its successor opens a new manager.
        let successor = host.manager("eth0");
        assert!(successor.held().unwrap());
        assert_eq!(
            successor.release().unwrap(),
            Change::Restored {
                from: COOKIES,
                to: STOCK
            }
        );
    }
}
