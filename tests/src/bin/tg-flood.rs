//! `tg-flood`: the project's bounded SYN flood generator, for labs made of
//! network namespaces. Sources must lie in the benchmarking ranges
//! (198.18.0.0/15, 2001:2::/48); every flood stops by itself.

use std::{net::IpAddr, sync::atomic::AtomicBool, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tcp_guard_tests::{
    flood::{FloodSpec, Sources, flood},
    inject::Injector,
    lab::Netns,
};

#[derive(Parser)]
#[command(about = "Bounded SYN flood from a lab namespace (sources in 198.18.0.0/15 or 2001:2::/48)")]
struct Args {
    /// Namespace to send from (as `ip netns list` names it).
    #[arg(long)]
    netns: String,
    /// Interface in that namespace to send through.
    #[arg(long)]
    iface: String,
    /// Destination MAC (the target interface's), e.g. 02:00:00:00:00:01.
    #[arg(long, value_parser = parse_mac)]
    dst_mac: [u8; 6],
    /// Destination address.
    #[arg(long)]
    dst: IpAddr,
    /// Destination port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// Random sources from this network, e.g. 198.19.0.0/16 (default), 2001:2:0:8000::/49.
    #[arg(long, conflicts_with = "source")]
    random_sources: Option<String>,
    /// Every SYN from this one address instead.
    #[arg(long)]
    source: Option<IpAddr>,
    /// SYNs per second; 0: as fast as possible.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Stop after this many SYNs.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Stop after this long (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!(
            "{text:?} is not a MAC address (six hex bytes with colons)"
        ));
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).map_err(|_| format!("{text:?} is not a MAC address"))?;
    }
    Ok(mac)
}

fn parse_network(text: &str) -> Result<(IpAddr, u8)> {
    let (addr, len) = text
        .split_once('/')
        .context("expected ADDRESS/PREFIX, e.g. 198.19.0.0/16")?;
    Ok((
        addr.parse().context("bad network address")?,
        len.parse().context("bad prefix length")?,
    ))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let sources = match (&args.random_sources, args.source) {
        (_, Some(addr)) => Sources::Fixed(addr),
        (Some(net), None) => {
            let (network, prefix_len) = parse_network(net)?;
            Sources::Random { network, prefix_len }
        }
        (None, None) if args.dst.is_ipv4() => Sources::Random {
            network: "198.19.0.0".parse()?,
            prefix_len: 16,
        },
        (None, None) => bail!("for IPv6, say --random-sources (e.g. 2001:2:0:8000::/49) or --source"),
    };
    let ns = Netns::existing(&args.netns)?;
    let injector = Injector::open(&ns, &args.iface)?;
    let spec = FloodSpec {
        dst: args.dst,
        dst_port: args.port,
        dst_mac: args.dst_mac,
        sources,
        rate: args.rate,
        count: args.count,
        duration: args.duration,
    };
    let report = flood(&injector, &spec, &AtomicBool::new(false))?;
    println!(
        "{}",
        serde_json::json!({
            "sent": report.sent,
            "secs": report.elapsed.as_secs_f64(),
            "rate": report.rate(),
        })
    );
    Ok(())
}
