//! Where a running instance keeps its state: one directory per interface on
//! bpffs, `/sys/fs/bpf/tcp-guard/<iface>/`, holding the pinned maps. The
//! daemon holds an exclusive `flock` on that directory while it runs, so a
//! second `run` on the same interface is refused, and other commands (`stats`)
//! open the pins without talking to the daemon.

use std::{
    fs::{self, File},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

pub const BPFFS: &str = "/sys/fs/bpf";
/// The directory holding one subdirectory per guarded interface.
pub const ROOT: &str = "/sys/fs/bpf/tcp-guard";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// `name` if the kernel would take it as an interface name (as
/// `dev_valid_name` checks): every command's `--iface` goes through here
/// before it names a directory, so `..` or `/tmp/x` never becomes a path.
pub fn valid_name(name: &str) -> Result<String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name == "." || name == ".." {
        bail!("{name:?} is not an interface name: 1 to 15 bytes, not \".\" or \"..\" (see `ip link`)");
    }
    if let Some(bad) = name.chars().find(|c| *c == '/' || *c == ':' || c.is_whitespace()) {
        bail!(
            "{name:?} is not an interface name: it holds {bad:?}, which interface names cannot (see `ip link`)"
        );
    }
    Ok(name.to_string())
}

/// The pin directory of the instance guarding `iface` (a [`valid_name`]).
pub fn dir(iface: &str) -> PathBuf {
    Path::new(ROOT).join(iface)
}

/// Where the daemon on `iface` leaves why it refused its last reload, for
/// `tcp-guard reload` to report. Not in the instance's directory: bpffs
/// holds no regular files.
pub fn reload_error_path(iface: &str) -> PathBuf {
    Path::new(crate::sysctls::RUN_DIR).join(format!("{iface}.reload-error"))
}

/// Records why a reload was refused (root only, mode 0600), whole or not
/// at all: written aside, then renamed into place.
pub fn record_reload_error(iface: &str, message: &str) -> Result<()> {
    crate::sysctls::create_private_dir(Path::new(crate::sysctls::RUN_DIR))?;
    crate::sysctls::write_private(&reload_error_path(iface), message.as_bytes())
}

/// Why the daemon on `iface` refused its last reload, if it recorded it.
pub fn reload_error(iface: &str) -> Result<Option<String>> {
    let path = reload_error_path(iface);
    match fs::read_to_string(&path) {
        Ok(message) => Ok(Some(message)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Forgets the last refusal (an accepted reload, a stop, a detach).
pub fn clear_reload_error(iface: &str) -> Result<()> {
    remove_if_present(&reload_error_path(iface))
}

/// Removes the file at `path`, if there is one.
pub fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Interfaces that have an instance directory, sorted.
pub fn list() -> Result<Vec<String>> {
    let entries = match fs::read_dir(ROOT) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            bail!("cannot read {ROOT}: permission denied (tcp-guard's pinned state is readable by root only)")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {ROOT}")),
    };
    let mut ifaces: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ifaces.sort();
    Ok(ifaces)
}

/// The interface whose instance a command should read: `requested`, or the
/// only one running.
pub fn resolve(requested: Option<&str>) -> Result<String> {
    let running = list()?;
    match requested {
        Some(iface) if running.iter().any(|r| r == iface) => Ok(iface.to_string()),
        Some(iface) => bail!(
            "no tcp-guard instance on {iface} (nothing at {}); running on: {}",
            dir(iface).display(),
            describe_list(&running)
        ),
        None => match running.as_slice() {
            [only] => Ok(only.clone()),
            [] => bail!(
                "no tcp-guard instance is running (nothing under {ROOT}); start one with `tcp-guard run --iface IF`"
            ),
            several => bail!(
                "tcp-guard runs on several interfaces ({}); choose one with --iface",
                several.join(", ")
            ),
        },
    }
}

fn describe_list(ifaces: &[String]) -> String {
    if ifaces.is_empty() {
        "none".to_string()
    } else {
        ifaces.join(", ")
    }
}

/// Mounts bpffs on /sys/fs/bpf unless it is there already (as systemd does at boot).
pub fn ensure_bpffs() -> Result<()> {
    let path = std::ffi::CString::new(BPFFS)?;
    // SAFETY: statfs on a NUL-terminated path into a zeroed, owned struct.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } == 0 && stat.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = std::ffi::CString::new("bpf")?;
    let options = std::ffi::CString::new("mode=0700")?;
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| {
            format!(
                "bpffs is not mounted on {BPFFS} and mounting it failed (try: mount -t bpf -o mode=0700 bpf {BPFFS})"
            )
        });
    }
    log::info!("mounted bpffs on {BPFFS}");
    Ok(())
}

/// Creates `path` (mode 0700) unless it exists, and opens it, refusing
/// anything but a directory owned by root (on a bpffs mounted for all,
/// another user could have made it, or put a symlink there for tcp-guard to
/// follow), and making sure no one else may read or write it (earlier
/// versions left the root directory at the umask's 755).
fn private_dir(path: &Path) -> Result<File> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(e).with_context(|| format!("cannot create {}", path.display()));
        }
        _ => {}
    }
    let handle = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| {
            format!(
                "cannot open {} as a directory (not following links)",
                path.display()
            )
        })?;
    let meta = handle
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if meta.uid() != 0 {
        bail!(
            "{} is owned by uid {}, not by root: someone else made it; remove it (and mount bpffs with \
             -o mode=0700)",
            path.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        handle
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("cannot restrict {} to mode 700", path.display()))?;
    }
    Ok(handle)
}

/// Exclusive ownership of an interface's instance directory, for as long as
/// the daemon runs. Dropping it releases the lock and leaves the pins: they
/// are what keeps the fast path running when the daemon is gone.
pub struct InstanceLock {
    dir: PathBuf,
    // Keeps the flock; closed on drop.
    _handle: File,
}

/// Why a directory could not be locked.
pub enum Claim {
    Claimed(InstanceLock),
    /// Another process (a running daemon) holds it.
    Busy,
}

impl InstanceLock {
    /// Claims `iface`'s directory, creating it (mode 0700) if needed.
    pub fn try_claim(iface: &str) -> Result<Claim> {
        ensure_bpffs()?;
        private_dir(Path::new(ROOT))?;
        let dir = dir(iface);
        let handle = private_dir(&dir)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(Claim::Busy);
            }
            return Err(error).with_context(|| format!("cannot lock {}", dir.display()));
        }
        // A daemon that stopped meanwhile may have removed the directory we
        // locked: a lock on a deleted directory guards nothing.
        let locked = handle
            .metadata()
            .with_context(|| format!("cannot stat {}", dir.display()))?;
        let now = fs::symlink_metadata(&dir).with_context(|| format!("cannot stat {}", dir.display()))?;
        if (locked.dev(), locked.ino()) != (now.dev(), now.ino()) {
            bail!(
                "{} was removed and made again while tcp-guard locked it (another instance stopped just then); try again",
                dir.display()
            );
        }
        Ok(Claim::Claimed(InstanceLock { dir, _handle: handle }))
    }

    /// Claims `iface`'s directory, or explains who holds it.
    pub fn claim(iface: &str) -> Result<Self> {
        match Self::try_claim(iface)? {
            Claim::Claimed(lock) => Ok(lock),
            Claim::Busy => bail!(
                "tcp-guard is already running on {iface} (it holds {}); stop it first, take over with \
                 `tcp-guard run --iface {iface} --replace`, or read it with `tcp-guard status`",
                dir(iface).display()
            ),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether a previous instance left pinned state here.
    pub fn has_pins(&self) -> Result<bool> {
        Ok(fs::read_dir(&self.dir)
            .with_context(|| format!("cannot read {}", self.dir.display()))?
            .next()
            .is_some())
    }

    /// Removes every pin and the directory (and the parent once empty).
    /// Pinned links must have been unpinned first, or the programs stay attached.
    pub fn remove_all(self) -> Result<()> {
        for entry in fs::read_dir(&self.dir).with_context(|| format!("cannot read {}", self.dir.display()))? {
            let path = entry?.path();
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
        fs::remove_dir(&self.dir).with_context(|| format!("cannot remove {}", self.dir.display()))?;
        match fs::remove_dir(ROOT) {
            Err(e) if e.raw_os_error() != Some(libc::ENOTEMPTY) => {
                Err(e).with_context(|| format!("cannot remove {ROOT}"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_the_kernel_takes_become_paths() {
        for good in ["eth0", "veth-a.1", "enp3s0f1", "x234567890123456"[..15].as_ref()] {
            assert_eq!(valid_name(good).unwrap(), good);
        }
        for bad in [
            "",
            ".",
            "..",
            "/tmp/x",
            "a/b",
            "eth0:1",
            "a b",
            "x234567890123456",
        ] {
            assert!(valid_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
