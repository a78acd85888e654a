//! tcp-guard's controller: loads the eBPF programs, attaches them, and reads
//! what they count. The binary's subcommands are thin layers over this.

pub mod attach;
pub mod connections;
pub mod control;
pub mod cookies;
pub mod daemon;
pub mod flows;
pub mod instance;
pub mod journald;
pub mod listeners;
pub mod metrics;
pub mod monitor;
pub mod mount_ns;
pub mod pidfd;
pub mod program;
pub mod sd_notify;
pub mod settings;
pub mod stats;
pub mod sysctls;
pub mod top;
