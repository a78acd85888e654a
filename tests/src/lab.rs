//! A two-host lab: a server and a client namespace joined by one veth pair,
//! addressed from the benchmarking ranges (198.18.0.0/15, 2001:2::/48).
//!
//! Names carry the pid and a counter, so concurrent runs never collide;
//! [`Lab`]'s Drop deletes the namespaces (and with them the veth and any XDP
//! attachment) and the instance's pins, and [`sweep_leftovers`] removes what
//! dead runs left behind.

use std::{
    fs::{self, File},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::{Context, Result, bail};

/// Prefix of every namespace the lab creates.
pub const NETNS_PREFIX: &str = "tg-";
/// Prefix of every interface the lab creates.
pub const IFACE_PREFIX: &str = "tg";

pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);

/// Fails the calling test, with the reason, unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test needs root (it creates network namespaces and loads BPF programs); \
             run the suite with `sudo cargo xtask test`"
        );
    }
}

static SWEEP: Once = Once::new();
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// One namespace; deleted on drop if this process created it.
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns {
            name: name.to_string(),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace made by someone else (`ip netns add`); left alone on drop.
    pub fn existing(name: &str) -> Result<Self> {
        let ns = Netns {
            name: name.to_string(),
            owned: false,
        };
        if !ns.path().exists() {
            bail!("no network namespace {name} (see `ip netns list`)");
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command run inside the namespace (network only; mounts are shared,
    /// so bpffs stays visible).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Sets a per-namespace sysctl, e.g. `net.ipv4.tcp_syncookies`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run(self
            .command("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")]))?;
        Ok(())
    }

    /// Turns on BIG TCP for both families on `iface`: the stack may build
    /// packets of up to `size` bytes (GSO and GRO), IPv6's set by `ip link`,
    /// IPv4's by rtnetlink directly (iproute2 before 6.3, Debian 12's, has
    /// no `gso_ipv4_max_size`). A kernel before 6.3 ignores IPv4's without
    /// an error: a test must check BIG TCP was used.
    pub fn big_tcp(&self, iface: &str, size: u32) -> Result<()> {
        let size_arg = size.to_string();
        self.ip(&[
            "link",
            "set",
            "dev",
            iface,
            "gso_max_size",
            &size_arg,
            "gro_max_size",
            &size_arg,
        ])?;
        self.enter(|| {
            let index = if_index(iface)?;
            set_link_u32s(
                index,
                &[(IFLA_GSO_IPV4_MAX_SIZE, size), (IFLA_GRO_IPV4_MAX_SIZE, size)],
            )
        })?
        .with_context(|| format!("cannot set BIG TCP for IPv4 on {iface} in {}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// creates belong to the namespace and may be used from any thread after.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = File::open(self.path()).with_context(|| format!("cannot open {}", self.path().display()))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns on an fd we own; affects this thread only.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error()).context("setns failed");
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("lab cleanup: {e:#}");
        }
    }
}

/// Server and client namespaces joined by a veth pair; the guard attaches to
/// the server's end.
pub struct Lab {
    // Dropped in field order: pins first, then the namespaces.
    _pins: PinCleanup,
    pub server: Netns,
    pub client: Netns,
    /// The server's end of the veth pair.
    pub server_iface: String,
    pub client_iface: String,
}

impl Lab {
    pub fn new() -> Result<Self> {
        require_root();
        SWEEP.call_once(|| {
            if let Err(e) = sweep_leftovers() {
                eprintln!("lab: sweeping leftovers failed: {e:#}");
            }
        });
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let server = Netns::create(&format!("{NETNS_PREFIX}{pid}-{n}-srv"))?;
        let client = Netns::create(&format!("{NETNS_PREFIX}{pid}-{n}-cli"))?;
        // IFNAMSIZ is 16: "tg" + 6 hex digits of pid + 3 digits + role.
        let server_iface = format!("{IFACE_PREFIX}{pid:06x}{n:03}s");
        let client_iface = format!("{IFACE_PREFIX}{pid:06x}{n:03}c");
        let lab = Lab {
            _pins: PinCleanup(server_iface.clone()),
            server,
            client,
            server_iface,
            client_iface,
        };
        lab.wire()?;
        Ok(lab)
    }

    /// A veth pair from the server's namespace to the client's, down.
    fn veth(&self, server_end: &str, client_end: &str) -> Result<()> {
        run(Command::new("ip").args([
            "link",
            "add",
            server_end,
            "netns",
            self.server.name(),
            "type",
            "veth",
            "peer",
            "name",
            client_end,
            "netns",
            self.client.name(),
        ]))?;
        Ok(())
    }

    fn wire(&self) -> Result<()> {
        let (s, c) = (&self.server_iface, &self.client_iface);
        self.veth(s, c)?;
        for (ns, iface, v4, v6) in [
            (&self.server, s, SERVER_V4, SERVER_V6),
            (&self.client, c, CLIENT_V4, CLIENT_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", iface])?;
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", iface, "nodad"])?;
            ns.ip(&["link", "set", iface, "up"])?;
        }
        // Replies to spoofed sources go back into the pair, where the client
        // (not a router) drops them: nothing leaves the lab.
        self.server
            .ip(&["route", "add", "default", "via", &CLIENT_V4.to_string()])?;
        self.server
            .ip(&["-6", "route", "add", "default", "via", &CLIENT_V6.to_string()])?;
        Ok(())
    }

    /// The MAC address of `iface` in `ns`.
    pub fn mac(ns: &Netns, iface: &str) -> Result<[u8; 6]> {
        let out = ns.ip(&["-br", "link", "show", iface])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = text
            .split_whitespace()
            .nth(2)
            .with_context(|| format!("no MAC in `ip -br link show {iface}`: {text}"))?;
        let mut mac = [0u8; 6];
        let parts: Vec<&str> = field.split(':').collect();
        if parts.len() != 6 {
            bail!("cannot parse MAC {field:?}");
        }
        for (byte, part) in mac.iter_mut().zip(parts) {
            *byte = u8::from_str_radix(part, 16).with_context(|| format!("cannot parse MAC {field:?}"))?;
        }
        Ok(mac)
    }

    /// `ss -tan` in the server namespace: every socket but listeners, as
    /// (state, local, peer).
    pub fn server_sockets(&self) -> Result<Vec<(String, SocketAddr, SocketAddr)>> {
        let out = run(self.server.command("ss").args(["-tanH"]))?;
        let mut sockets = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [state, _, _, local, peer, ..] = fields.as_slice() else {
                bail!("unexpected ss line: {line}");
            };
            if *state == "LISTEN" {
                continue;
            }
            let parse = |a: &str| a.parse::<SocketAddr>().with_context(|| format!("ss address {a}"));
            sockets.push((state.to_string(), parse(local)?, parse(peer)?));
        }
        sockets.sort();
        Ok(sockets)
    }

    pub fn server_addr(&self, v6: bool) -> IpAddr {
        if v6 { SERVER_V6.into() } else { SERVER_V4.into() }
    }

    pub fn client_addr(&self, v6: bool) -> IpAddr {
        if v6 { CLIENT_V6.into() } else { CLIENT_V4.into() }
    }

    /// Another veth pair between the namespaces, both ends up: `server_end`
    /// in the server's, `client_end` in the client's, each with `addresses`
    /// (server's, client's; IPv4 /24) if given.
    pub fn add_link(
        &self,
        server_end: &str,
        client_end: &str,
        addresses: Option<(&str, &str)>,
    ) -> Result<()> {
        self.veth(server_end, client_end)?;
        for (ns, end, address) in [
            (&self.server, server_end, addresses.map(|a| a.0)),
            (&self.client, client_end, addresses.map(|a| a.1)),
        ] {
            if let Some(address) = address {
                ns.ip(&["addr", "add", &format!("{address}/24"), "dev", end])?;
            }
            ns.ip(&["link", "set", end, "up"])?;
        }
        Ok(())
    }

    /// A connection from the client namespace to `listener`, bound at `addr`
    /// in the server namespace: the client's end and the accepted server end.
    pub fn connect_pair(
        &self,
        listener: &std::net::TcpListener,
        addr: SocketAddr,
    ) -> Result<(std::net::TcpStream, std::net::TcpStream)> {
        let client = self
            .client
            .enter(move || std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)))?
            .with_context(|| format!("connect to {addr}"))?;
        let (server, _) = listener.accept().context("accept")?;
        Ok((client, server))
    }

    /// Lets the client's veth end receive what an XDP program on the
    /// server's end sends back (XDP_TX, e.g. cookie SYN-ACKs): veth delivers
    /// such frames only to a peer that runs an XDP program itself. A real NIC
    /// needs nothing of the kind. Detached when the returned value drops.
    pub fn receive_xdp_tx(&self) -> Result<ClientXdp> {
        let iface = self.client_iface.clone();
        let ebpf = self.client.enter(move || -> Result<aya::Ebpf> {
            // Only the trivial program is loaded; the object's maps come along unused.
            let mut ebpf = aya::EbpfLoader::new()
                .load(tcp_guard::program::OBJECT)
                .context("cannot load the tcp-guard object")?;
            let program: &mut aya::programs::Xdp = ebpf
                .program_mut(tcp_guard_common::programs::BASELINE)
                .context("no baseline program in the object")?
                .try_into()
                .context("the baseline program is not XDP")?;
            program.load().context("cannot load the baseline program")?;
            program
                .attach(&iface, aya::programs::xdp::XdpMode::Driver)
                .with_context(|| format!("cannot attach the baseline program to {iface}"))?;
            Ok(ebpf)
        })??;
        Ok(ClientXdp { _attached: ebpf })
    }
}

/// A trivial XDP_PASS program on the client's veth end (see
/// [`Lab::receive_xdp_tx`]), attached while this lives.
pub struct ClientXdp {
    _attached: aya::Ebpf,
}

/// Removes the instance directory of an interface the lab made, in case the
/// daemon died without cleaning up.
struct PinCleanup(String);

impl Drop for PinCleanup {
    fn drop(&mut self) {
        let dir = Path::new(PIN_ROOT).join(&self.0);
        if dir.exists()
            && let Err(e) = fs::remove_dir_all(&dir)
        {
            eprintln!("lab cleanup: cannot remove {}: {e}", dir.display());
        }
        // A daemon killed with -9 leaves its monitoring socket too.
        let socket = Path::new(MONITOR_SOCKETS).join(format!("{}.sock", self.0));
        if let Err(e) = fs::remove_file(&socket)
            && e.kind() != io::ErrorKind::NotFound
        {
            eprintln!("lab cleanup: cannot remove {}: {e}", socket.display());
        }
        // A daemon killed with -9 while it held the kernel settings leaves
        // its namespace's record (a successor or `detach` would restore
        // them); the namespace goes with the lab, so the record does too.
        let Ok(records) = fs::read_dir(SYSCTL_RECORDS) else {
            return;
        };
        for record in records.flatten().map(|entry| entry.path()) {
            let held_by_this_lab = record.extension().is_some_and(|ext| ext == "json")
                && fs::read_to_string(&record)
                    .ok()
                    .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                    .is_some_and(|value| value["holders"] == serde_json::json!([self.0]));
            if held_by_this_lab {
                for path in [record.clone(), record.with_extension("lock")] {
                    if let Err(e) = fs::remove_file(&path) {
                        eprintln!("lab cleanup: cannot remove {}: {e}", path.display());
                    }
                }
            }
        }
    }
}

/// Where the daemon records the kernel settings it changed, per namespace.
const SYSCTL_RECORDS: &str = "/run/tcp-guard";

const PIN_ROOT: &str = "/sys/fs/bpf/tcp-guard";

/// Where the daemons' monitoring sockets are.
const MONITOR_SOCKETS: &str = "/run/tcp-guard-monitor";

/// Deletes namespaces and pin directories of lab runs whose process is gone.
pub fn sweep_leftovers() -> Result<()> {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !alive(pid) {
            eprintln!("lab: removing leftover namespace {name}");
            run(Command::new("ip").args(["netns", "del", name]))?;
        }
    }
    if let Ok(entries) = fs::read_dir(PIN_ROOT) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(IFACE_PREFIX)
                .filter(|rest| rest.len() == 10)
                .and_then(|rest| u32::from_str_radix(&rest[..6], 16).ok());
            if let Some(pid) = pid
                && !alive(pid)
            {
                eprintln!("lab: removing leftover pins {}", entry.path().display());
                fs::remove_dir_all(entry.path())?;
            }
        }
    }
    Ok(())
}

/// Runs a command to completion; a non-zero exit is an error carrying stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Makes `close()` of this socket send an RST instead of a FIN (SO_LINGER 0).
pub fn reset_on_close(stream: &std::net::TcpStream) -> Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we borrow, with a properly sized value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("SO_LINGER");
    }
    Ok(())
}

impl Lab {
    /// How many sockets the server namespace has in SYN-RECV (`ss -tan state syn-recv`).
    pub fn server_syn_recv(&self) -> Result<usize> {
        let out = run(self.server.command("ss").args(["-tanH", "state", "syn-recv"]))?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().count())
    }
}

/// A listening socket in `ns` with an explicit `listen()` backlog (std uses 128).
pub fn listen(ns: &Netns, addr: std::net::SocketAddr, backlog: i32) -> Result<std::net::TcpListener> {
    ns.enter(move || -> Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        // Listening again only changes the backlog.
        // SAFETY: listen on a socket we own.
        if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
            return Err(io::Error::last_os_error()).context("listen");
        }
        Ok(listener)
    })?
}

/// A TCP connection from a chosen local address (the namespace of the
/// calling thread must own it), within `timeout`.
pub fn connect_from(
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let family = if remote.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh socket we own; TcpStream closes it.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let (local, local_len) = sockaddr(local);
    let (remote, remote_len) = sockaddr(remote);
    // SAFETY: bind and connect with properly sized socket addresses.
    if unsafe { libc::bind(fd, (&raw const local).cast(), local_len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if unsafe { libc::connect(fd, (&raw const remote).cast(), remote_len) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(error);
        }
    }
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) };
    if ready == 0 {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
    }
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(error) = stream.take_error()? {
        return Err(error);
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn sockaddr(addr: std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        std::net::SocketAddr::V4(a) => {
            // SAFETY: storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(a) => {
            // SAFETY: storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// rtnetlink attributes of a link (linux/if_link.h, Linux 6.3).
const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
const IFLA_GRO_IPV4_MAX_SIZE: u16 = 64;

/// The index of `iface` in the calling thread's namespace.
pub fn if_index(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no interface {iface} in this namespace"),
        index => Ok(index),
    }
}

/// Sets u32 attributes of link `index` (RTM_NEWLINK on an existing link)
/// in the calling thread's namespace, and waits for the kernel's answer.
fn set_link_u32s(index: u32, attrs: &[(u16, u32)]) -> Result<()> {
    const NLMSG_HDR: usize = 16;
    const IFINFO: usize = 16;
    let len = NLMSG_HDR + IFINFO + attrs.len() * 8;
    let mut msg = Vec::with_capacity(len);
    msg.extend((len as u32).to_ne_bytes());
    msg.extend(libc::RTM_NEWLINK.to_ne_bytes());
    msg.extend(((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend(1u32.to_ne_bytes());
    msg.extend(0u32.to_ne_bytes());
    // ifinfomsg: family, pad, type, index, flags, change.
    msg.extend([libc::AF_UNSPEC as u8, 0]);
    msg.extend(0u16.to_ne_bytes());
    msg.extend((index as i32).to_ne_bytes());
    msg.extend(0u32.to_ne_bytes());
    msg.extend(0u32.to_ne_bytes());
    for &(kind, value) in attrs {
        msg.extend(8u16.to_ne_bytes());
        msg.extend(kind.to_ne_bytes());
        msg.extend(value.to_ne_bytes());
    }
    // SAFETY: plain socket calls on buffers we own, of the lengths passed.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("netlink socket");
        }
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        if libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) != msg.len() as isize {
            return Err(io::Error::last_os_error()).context("netlink send");
        }
        let mut answer = [0u8; 1024];
        let got = libc::recv(fd.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len(), 0);
        if got < 0 {
            return Err(io::Error::last_os_error()).context("netlink answer");
        }
        // The acknowledgement: an NLMSG_ERROR message, its error 0.
        let kind = u16::from_ne_bytes([answer[4], answer[5]]);
        if got < (NLMSG_HDR + 4) as isize || kind != libc::NLMSG_ERROR as u16 {
            bail!(
                "netlink answered the link change with message type {kind}, {got} bytes, not an acknowledgement"
            );
        }
        let error = i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]);
        if error != 0 {
            bail!(
                "the kernel refused the link change: {}",
                io::Error::from_raw_os_error(-error)
            );
        }
    }
    Ok(())
}
