//! The sd_notify(3) protocol, for a daemon that systemd runs as `Type=notify`:
//! datagrams of `KEY=VALUE` lines to the Unix socket `$NOTIFY_SOCKET` names
//! (a leading `@` means the abstract namespace). Without that variable every
//! call does nothing. A failed send is logged once and never ends the
//! daemon: guarding matters more than telling systemd about it.

use std::{
    os::{linux::net::SocketAddrExt, unix::net::SocketAddr, unix::net::UnixDatagram},
    time::Duration,
};

pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    /// `$WATCHDOG_USEC`, when it is meant for this process.
    watchdog: Option<Duration>,
    /// Whether a failed send was logged already.
    failed: bool,
}

impl Notifier {
    /// From the environment systemd gives the main process.
    pub fn from_env() -> Notifier {
        let mut notifier = Notifier {
            socket: None,
            watchdog: watchdog_period(),
            failed: false,
        };
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return notifier;
        };
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None => SocketAddr::from_pathname(&path),
        };
        // Non-blocking: a full queue (systemd busy) must not stall the
        // control loop; the message is dropped and the failure logged.
        let socket = UnixDatagram::unbound().and_then(|socket| socket.set_nonblocking(true).map(|()| socket));
        match addr.and_then(|addr| Ok((socket?, addr))) {
            Ok(socket) => notifier.socket = Some(socket),
            Err(e) => notifier.log_failure(&format!("cannot use NOTIFY_SOCKET={path}: {e}")),
        }
        notifier
    }

    /// The period systemd's watchdog expects pings within, if it watches.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Attached, and the control loop runs.
    pub fn ready(&mut self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload starts; `ready` says when it is over (refused or not).
    pub fn reloading(&mut self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    pub fn stopping(&mut self) {
        self.send("STOPPING=1");
    }

    /// The control loop is alive; does nothing unless systemd watches.
    pub fn watchdog_ping(&mut self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }

    fn send(&mut self, message: &str) {
        let Some((socket, addr)) = &self.socket else {
            return;
        };
        if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
            self.log_failure(&format!("cannot notify systemd ({}): {e}", first_line(message)));
        }
    }

    fn log_failure(&mut self, what: &str) {
        if !self.failed {
            self.failed = true;
            log::error!("{what}; tcp-guard goes on guarding (later failures are not logged)");
        }
    }
}

/// `$WATCHDOG_USEC` unless `$WATCHDOG_PID` names another process (a child
/// that inherited the variables), as sd_watchdog_enabled(3) decides.
fn watchdog_period() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or_default()
}

/// CLOCK_MONOTONIC in microseconds, which systemd compares with its own.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the owned timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notifier_to(addr: SocketAddr) -> Notifier {
        Notifier {
            socket: Some((UnixDatagram::unbound().unwrap(), addr)),
            watchdog: Some(Duration::from_secs(2)),
            failed: false,
        }
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_reach_a_socket_in_the_file_system() {
        let path = std::env::temp_dir().join(format!("tcp-guard-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        let mut notifier = notifier_to(SocketAddr::from_pathname(&path).unwrap());
        notifier.ready("guarding eth0");
        notifier.watchdog_ping();
        notifier.stopping();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=guarding eth0");
        assert_eq!(receive(&socket), "WATCHDOG=1");
        assert_eq!(receive(&socket), "STOPPING=1");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn reloading_carries_the_monotonic_clock_and_abstract_names_work() {
        let name = format!("tcp-guard-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        let before = monotonic_usec();
        notifier_to(addr).reloading();
        let message = receive(&socket);
        let usec: u64 = message
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{message:?}"))
            .parse()
            .unwrap();
        assert!(
            (before..=monotonic_usec()).contains(&usec),
            "{usec} not in [{before}, now]"
        );
    }

    #[test]
    fn a_failed_send_is_remembered_and_not_fatal() {
        let name = format!("tcp-guard-notify-nobody-{}", std::process::id());
        let mut notifier = notifier_to(SocketAddr::from_abstract_name(name.as_bytes()).unwrap());
        notifier.ready("guarding eth0");
        assert!(notifier.failed, "nobody listens: the send fails");
        notifier.watchdog_ping();
    }
}
