//! Pieces of the flood scenarios the enforcement and syncookie tests share:
//! a real listener, a background flood, real connecting clients.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    daemon::stats_json,
    flood::{FloodReport, FloodSpec, Sources, flood},
    inject::Injector,
    lab::{Lab, connect_from},
};

/// The port the scenarios' listener uses.
pub const PORT: u16 = 8080;

/// Settings under which no SYN is dropped for a limit and attack mode never
/// starts by itself: for driving the programs directly with many flows from
/// few sources (BPF_PROG_TEST_RUN).
pub fn without_limits(settings: &mut tcp_guard::settings::Settings) {
    let live = &mut settings.live;
    live.global_half_open = 0;
    live.per_source_half_open = 0;
    live.per_prefix_half_open = 0;
    live.per_port_half_open = 0;
    live.syn_rate = 0;
    live.attack_enter_half_open = 0;
}

/// Daemon options for a lab attack: attack mode from 4 half-open flows on,
/// left when they fall to 2 (and the SYN rate is low enough).
pub const ATTACK_AT_4_HALF_OPEN: &[&str] = &[
    "--set",
    "attack.enter_half_open=4",
    "--set",
    "attack.leave_half_open=2",
];

/// With [`ATTACK_AT_4_HALF_OPEN`]: attack mode left 2 s after the flood
/// stops (below 1,000 SYN/s).
pub const QUICK_LEAVE: &[&str] = &[
    "--set",
    "attack.leave_syn_rate=1000",
    "--set",
    "attack.cooldown=2s",
];

/// One SYN a second per source, and no automatic blocks: a source's
/// second SYN in a second meets the rate limit, again and again.
pub const ONE_SYN_A_SECOND: &[&str] = &[
    "--set",
    "limits.syn_rate=1",
    "--set",
    "limits.syn_burst=1",
    "--set",
    "blocking.block_after_drops=0",
];

/// A global half-open limit of 12, below the lab listener's backlog of 16.
pub const GLOBAL_12: &[&str] = &["--set", "limits.global_half_open=12"];

/// Half-open flows unanswered for 4 s expire (the lab's tests outlast that).
pub const SYN_RCVD_4S: &[&str] = &["--set", "timeouts.syn_rcvd=4s"];

/// A server that accepts connections until dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    /// Accepts and closes every connection.
    pub fn start(listener: TcpListener) -> Server {
        Server::serve(listener, drop)
    }

    /// Sends every connection its bytes back, each on a thread of its own.
    pub fn echo(listener: TcpListener) -> Server {
        Server::serve(listener, |mut conn| {
            std::thread::spawn(move || {
                conn.set_nonblocking(false).expect("blocking");
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        })
    }

    fn serve(listener: TcpListener, handle_connection: fn(TcpStream)) -> Server {
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => handle_connection(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.join().expect("server thread");
        }
    }
}

/// A flood running in the background until stopped (or its bounds).
pub struct Flood {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<FloodReport>>,
}

impl Flood {
    pub fn start(lab: &Lab, dst: IpAddr, sources: Sources, rate: u64, duration: Duration) -> Flood {
        let injector = Injector::open(&lab.client, &lab.client_iface).expect("injector");
        let spec = FloodSpec {
            dst,
            dst_port: PORT,
            dst_mac: Lab::mac(&lab.server, &lab.server_iface).expect("MAC"),
            sources,
            rate,
            count: rate * duration.as_secs().max(1),
            duration,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || flood(&injector, &spec, &flag).expect("flood"));
        Flood {
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("flood").join().expect("flood thread")
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _report = handle.join();
        }
    }
}

pub fn random_sources(v6: bool) -> Sources {
    if v6 {
        Sources::Random {
            network: "2001:2:0:8000::".parse().unwrap(),
            prefix_len: 49,
        }
    } else {
        Sources::Random {
            network: "198.19.0.0".parse().unwrap(),
            prefix_len: 16,
        }
    }
}

/// `n` connects from the client namespace, in `threads` parallel series;
/// how many succeeded within `timeout` each.
pub fn connects(lab: &Lab, addr: SocketAddr, n: usize, threads: usize, timeout: Duration) -> usize {
    let ok = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..n / threads {
                    let result = lab
                        .client
                        .enter(move || TcpStream::connect_timeout(&addr, timeout))
                        .expect("enter");
                    if result.is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    ok.load(Ordering::Relaxed)
}

/// Waits until `done`, failing the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Client addresses nothing has connected from yet, so the guard has not
/// verified them: in attack mode their SYNs get a cookie or the challenge.
pub struct FreshAddresses {
    v6: bool,
    next: u16,
}

impl FreshAddresses {
    pub fn new(v6: bool) -> Self {
        FreshAddresses { v6, next: 100 }
    }

    pub fn take(&mut self, lab: &Lab) -> IpAddr {
        let n = self.next;
        self.next += 1;
        let (addr, prefix): (IpAddr, u8) = if self.v6 {
            (Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, n).into(), 64)
        } else {
            (Ipv4Addr::new(198, 18, 0, n as u8).into(), 24)
        };
        let mut args = vec!["addr", "add"];
        let cidr = format!("{addr}/{prefix}");
        args.push(&cidr);
        args.extend(["dev", &lab.client_iface]);
        if self.v6 {
            args.push("nodad");
        }
        lab.client.ip(&args).expect("add a client address");
        addr
    }
}

/// Connects from `local` and times it.
pub fn timed_connect(lab: &Lab, local: IpAddr, server: SocketAddr) -> (TcpStream, Duration) {
    let start = Instant::now();
    let stream = lab
        .client
        .enter(move || connect_from(SocketAddr::new(local, 0), server, Duration::from_secs(5)))
        .expect("enter")
        .unwrap_or_else(|e| {
            panic!(
                "connect from {local} to {server}: {e}; guard: {}",
                stats_json(&lab.server_iface)
            )
        });
    (stream, start.elapsed())
}
