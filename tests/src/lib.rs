//! The lab every tcp-guard test, demo and benchmark runs in: namespaces
//! joined by veth pairs, the real daemon, real kernel TCP, crafted packets.
//! Rules: ../shared/test-network.md (own namespaces, benchmarking address
//! ranges, bounded traffic, cleanup even on failure).

pub mod accounts;
pub mod daemon;
pub mod flood;
pub mod flood_bench;
pub mod inject;
pub mod lab;
pub mod machine;
pub mod packets;
pub mod scenario;
pub mod xdp_synproxy;
