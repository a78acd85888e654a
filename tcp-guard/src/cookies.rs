//! What the syncookie policy needs from the host. The fast path answers SYNs
//! with the kernel's own cookies and the listener checks the ACKs, so the
//! SYN-ACK must offer what the listener will decode: this reads the
//! kernel's TCP settings (in the daemon's network namespace) and the
//! interface's MTU into the cookie fields of [`GuardConfig`], and refuses
//! the policy where the listener would not accept the cookies. While cookies
//! are answered, the daemon may hold `tcp_syncookies` and `tcp_timestamps`
//! at 2 ([`crate::sysctls`]): the options are then those of that setting.

use std::path::Path;

use anyhow::{Context, Result, bail};
use tcp_guard_common::policy::{GuardConfig, Policy};

use crate::sysctls::Values;

/// The kernel settings the cookie SYN-ACK depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSettings {
    /// net.ipv4.tcp_syncookies
    pub syncookies: u32,
    /// net.ipv4.tcp_timestamps (2: timestamps without random per-connection offsets)
    pub timestamps: u32,
    pub sack: u32,
    pub window_scaling: u32,
    /// The largest receive buffer a socket may have: max(tcp_rmem[2], rmem_max).
    pub max_rcvbuf: u64,
}

impl TcpSettings {
    /// Reads them from /proc/sys (of the calling process's network namespace).
    pub fn read() -> Result<TcpSettings> {
        Self::read_from(Path::new("/proc/sys/net"))
    }

    fn read_from(net: &Path) -> Result<TcpSettings> {
        let field = |name: &str, index: usize| -> Result<u64> {
            let path = net.join(name);
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            text.split_whitespace()
                .nth(index)
                .and_then(|value| value.parse().ok())
                .with_context(|| format!("{} holds {:?}, not a number", path.display(), text.trim()))
        };
        let small = |name: &str| -> Result<u32> { Ok(u32::try_from(field(name, 0)?).unwrap_or(u32::MAX)) };
        Ok(TcpSettings {
            syncookies: small("ipv4/tcp_syncookies")?,
            timestamps: small("ipv4/tcp_timestamps")?,
            sack: small("ipv4/tcp_sack")?,
            window_scaling: small("ipv4/tcp_window_scaling")?,
            max_rcvbuf: field("ipv4/tcp_rmem", 2)?.max(field("core/rmem_max", 0)?),
        })
    }

    /// The window scale the kernel gives a listener's connections
    /// (`tcp_select_initial_window`): the largest receive buffer, in 64 KiB units.
    pub fn window_scale(&self) -> u8 {
        let bits = self.max_rcvbuf.max(1).ilog2();
        bits.saturating_sub(15).min(14) as u8
    }
}

/// Resolves `attack.policy = "auto"`, fills the cookie fields of `config`
/// for interface `iface`, and refuses the syncookie policy where the
/// listener would reject the cookies. Run in the interface's network
/// namespace (the daemon is). Returns what `auto` chose and why, if it was set.
pub fn prepare(config: &mut GuardConfig, iface: &str) -> Result<Option<String>> {
    let tcp = TcpSettings::read()?;
    let chosen = resolve_auto(config, &tcp);
    prepare_with(config, &tcp, interface_mtu(iface)?)?;
    Ok(chosen)
}

/// Resolves `auto` and refuses the syncookie policy where the listener would
/// reject the cookies, leaving the cookie fields as the daemon set them
/// (`limits set`: it reads the kernel settings of the namespace it runs in).
pub fn check_policy(config: &mut GuardConfig) -> Result<Option<String>> {
    let tcp = TcpSettings::read()?;
    let chosen = resolve_auto(config, &tcp);
    if config.policy() == Policy::SynCookie {
        require_listener_cookies(&tcp.while_answering(config))?;
    }
    Ok(chosen)
}

impl TcpSettings {
    fn sysctls(&self) -> Values {
        Values {
            syncookies: self.syncookies,
            timestamps: self.timestamps,
        }
    }

    /// The settings in force while the fast path answers cookies: those the
    /// daemon holds, where it manages them ([`crate::sysctls`]).
    fn while_answering(&self, config: &GuardConfig) -> TcpSettings {
        if config.manage_sysctls == 0 || self.syncookies == 0 {
            return *self;
        }
        let held = self.sysctls().for_cookies();
        TcpSettings {
            syncookies: held.syncookies,
            timestamps: held.timestamps,
            ..*self
        }
    }
}

/// `auto`: where the kernel issues cookies itself (tcp_syncookies 1 or 2),
/// the syncookie policy: no new client waits longer than with the kernel
/// alone. It needs both settings at 2 while it answers; where the daemon may
/// not set them and they are not so, `pass` (the kernel's own cookies
/// answer). Where the kernel issues none, the retransmit challenge. Returns
/// the choice and why, if `auto` was set.
fn resolve_auto(config: &mut GuardConfig, tcp: &TcpSettings) -> Option<String> {
    if Policy::from_u8(config.policy) != Some(Policy::Auto) {
        return None;
    }
    let (policy, why) = if tcp.syncookies == 0 {
        (
            Policy::RetransmitChallenge,
            "net.ipv4.tcp_syncookies is 0: the kernel issues no cookies, so none from XDP either".to_string(),
        )
    } else if tcp.sysctls().ready_for_cookies() {
        (
            Policy::SynCookie,
            format!("{}: cookies from XDP lose nothing here", tcp.sysctls()),
        )
    } else if config.manage_sysctls != 0 {
        (
            Policy::SynCookie,
            format!(
                "{}: while attack mode answers SYNs with cookies the daemon sets {} and restores them after \
                 (attack.manage_sysctls)",
                tcp.sysctls(),
                tcp.sysctls().for_cookies()
            ),
        )
    } else {
        (
            Policy::Pass,
            format!(
                "{} and attack.manage_sysctls is false: the kernel's own cookies answer floods",
                tcp.sysctls()
            ),
        )
    };
    config.policy = policy as u8;
    Some(format!("attack.policy auto: {} ({why})", policy.as_str()))
}

/// The MTU of `iface` in this process's network namespace (SIOCGIFMTU:
/// /sys/class/net shows the namespace sysfs was mounted in, not ours).
fn interface_mtu(iface: &str) -> Result<u32> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if iface.len() >= request.ifr_name.len() {
        bail!("interface name {iface:?} is too long");
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(iface.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: a datagram socket only to ask the kernel; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot open a socket to read the MTU");
    }
    // SAFETY: SIOCGIFMTU fills the ifreq we pass, which outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &raw mut request) };
    let error = std::io::Error::last_os_error();
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(error).with_context(|| format!("cannot read the MTU of {iface}"));
    }
    // SAFETY: SIOCGIFMTU sets the mtu member of the union.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).with_context(|| format!("{iface} reports MTU {mtu}"))
}

/// The cookie fields of `config` for the kernel settings and the MTU as
/// they are now, if they differ from what it has: the MTU and the settings
/// may change while the daemon runs, and a cookie SYN-ACK that offers what
/// the listener no longer accepts fails every handshake it answers.
pub fn refreshed(config: &GuardConfig, iface: &str) -> Result<Option<GuardConfig>> {
    let mut fresh = *config;
    fill_cookie_fields(&mut fresh, &TcpSettings::read()?, interface_mtu(iface)?);
    Ok((fresh != *config).then_some(fresh))
}

/// The cookie fields for these kernel settings and MTU; refuses the
/// syncookie policy where the listener would reject the cookies.
fn prepare_with(config: &mut GuardConfig, found: &TcpSettings, mtu: u32) -> Result<()> {
    fill_cookie_fields(config, found, mtu);
    if config.policy() == Policy::SynCookie {
        require_listener_cookies(&found.while_answering(config))?;
    }
    Ok(())
}

fn fill_cookie_fields(config: &mut GuardConfig, found: &TcpSettings, mtu: u32) {
    let tcp = &found.while_answering(config);
    let mss = |headers: u32| u16::try_from(mtu.saturating_sub(headers).max(536)).unwrap_or(u16::MAX);
    config.cookie_mss_v4 = mss(40);
    config.cookie_mss_v6 = mss(60);
    config.cookie_wscale = tcp.window_scale();
    let mut options = 0;
    if tcp.timestamps == 2 {
        options |= GuardConfig::COOKIE_TIMESTAMPS;
    }
    if tcp.sack != 0 {
        options |= GuardConfig::COOKIE_SACK;
    }
    if tcp.window_scaling != 0 {
        options |= GuardConfig::COOKIE_WSCALE;
    }
    config.cookie_options = options;
}

/// `tcp` as it will be while cookies are answered.
fn require_listener_cookies(tcp: &TcpSettings) -> Result<()> {
    if tcp.syncookies != 2 {
        bail!(
            "attack.policy = \"syncookie\" needs net.ipv4.tcp_syncookies = 2 while it answers (it is {}): \
             the listener accepts cookies only if it issued one itself within two minutes, and only with 2 \
             does it issue one for the SYN tcp-guard lets through to keep that so. Let the daemon set it \
             during attack mode (attack.manage_sysctls = true; it does so where it is 1), run \
             `sysctl -w net.ipv4.tcp_syncookies=2` in the interface's network namespace, or choose \
             another attack.policy",
            tcp.syncookies
        );
    }
    Ok(())
}

/// Says how cookies will be answered, once at start or reload.
pub fn describe(config: &GuardConfig, tcp: &TcpSettings) -> String {
    let has = |option: u8| config.cookie_options & option != 0;
    let mut text = format!(
        "syncookie policy: in attack mode SYNs from unverified sources are answered from XDP with \
         the kernel's own SYN cookies (bpf_tcp_raw_gen_syncookie), and the listener checks the ACKs \
         itself (tcp_syncookies=2); SYN-ACKs offer MSS {} (IPv4) / {} (IPv6)",
        config.cookie_mss_v4, config.cookie_mss_v6
    );
    if has(GuardConfig::COOKIE_TIMESTAMPS) {
        text.push_str(", timestamps");
        if has(GuardConfig::COOKIE_WSCALE) {
            text.push_str(&format!(", window scale {}", config.cookie_wscale));
        }
        if has(GuardConfig::COOKIE_SACK) {
            text.push_str(", SACK");
        }
    } else {
        text.push_str(&format!(
            "; no timestamps, so no window scaling or SACK either: net.ipv4.tcp_timestamps is {} \
             (set it to 2, timestamps without random offsets, to keep them on cookie connections)",
            tcp.timestamps
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux_defaults() -> TcpSettings {
        TcpSettings {
            syncookies: 1,
            timestamps: 1,
            sack: 1,
            window_scaling: 1,
            max_rcvbuf: 6_291_456,
        }
    }

    #[test]
    fn window_scale_follows_the_largest_receive_buffer() {
        assert_eq!(linux_defaults().window_scale(), 7);
        let scale = |max_rcvbuf| {
            TcpSettings {
                max_rcvbuf,
                ..linux_defaults()
            }
            .window_scale()
        };
        assert_eq!(scale(65_535), 0);
        assert_eq!(scale(1 << 16), 1);
        assert_eq!(scale(u64::MAX), 14);
    }

    #[test]
    fn the_syncookie_policy_needs_tcp_syncookies_2_while_it_answers() {
        let managed = GuardConfig {
            policy: Policy::SynCookie as u8,
            ..GuardConfig::default()
        };
        assert_eq!(managed.manage_sysctls, 1, "the default");
        prepare_with(&mut managed.clone(), &linux_defaults(), 1500)
            .expect("the daemon sets 2 while it answers");
        let mut unmanaged = GuardConfig {
            manage_sysctls: 0,
            ..managed
        };
        let error = prepare_with(&mut unmanaged, &linux_defaults(), 1500)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("net.ipv4.tcp_syncookies = 2 while it answers (it is 1)")
                && error.contains("attack.manage_sysctls = true"),
            "{error}"
        );
        let tcp = TcpSettings {
            syncookies: 2,
            ..linux_defaults()
        };
        prepare_with(&mut unmanaged, &tcp, 1500).unwrap();
        // A host whose kernel issues no cookies is not changed.
        let off = TcpSettings {
            syncookies: 0,
            ..linux_defaults()
        };
        assert!(prepare_with(&mut managed.clone(), &off, 1500).is_err());
        // Other policies do not care.
        unmanaged.policy = Policy::RetransmitChallenge as u8;
        prepare_with(&mut unmanaged, &linux_defaults(), 1500).unwrap();
    }

    #[test]
    fn auto_picks_syncookie_wherever_the_kernel_issues_cookies() {
        let auto = GuardConfig::default();
        assert_eq!(Policy::from_u8(auto.policy), Some(Policy::Auto), "the default");
        let pick = |manage_sysctls, syncookies, timestamps| {
            let mut config = GuardConfig {
                manage_sysctls,
                ..auto
            };
            let tcp = TcpSettings {
                syncookies,
                timestamps,
                ..linux_defaults()
            };
            let why = resolve_auto(&mut config, &tcp).expect("auto resolved");
            prepare_with(&mut config, &tcp, 1500).expect("a policy that works here");
            (config.policy(), why)
        };
        let (policy, why) = pick(1, 1, 1);
        assert_eq!(policy, Policy::SynCookie, "a stock host");
        assert!(
            why.contains("the daemon sets net.ipv4.tcp_syncookies=2 net.ipv4.tcp_timestamps=2"),
            "{why}"
        );
        assert_eq!(pick(1, 2, 2).0, Policy::SynCookie);
        assert_eq!(pick(1, 2, 1).0, Policy::SynCookie);
        assert_eq!(pick(1, 0, 2).0, Policy::RetransmitChallenge, "cookies off");
        // Not allowed to change them: the kernel's own cookies, unless they are so already.
        let (policy, why) = pick(0, 1, 1);
        assert_eq!(policy, Policy::Pass);
        assert!(why.contains("attack.manage_sysctls is false"), "{why}");
        assert_eq!(pick(0, 2, 2).0, Policy::SynCookie);
        assert_eq!(pick(0, 2, 0).0, Policy::SynCookie);
        assert_eq!(pick(0, 0, 1).0, Policy::RetransmitChallenge);
        // An explicit policy stays as it is.
        let mut pass = GuardConfig {
            policy: Policy::Pass as u8,
            ..auto
        };
        assert_eq!(resolve_auto(&mut pass, &linux_defaults()), None);
        assert_eq!(pass.policy(), Policy::Pass);
    }

    #[test]
    fn options_follow_the_kernel_settings_and_the_mtu() {
        let mut config = GuardConfig::default();
        prepare_with(&mut config, &linux_defaults(), 9000).unwrap();
        assert_eq!((config.cookie_mss_v4, config.cookie_mss_v6), (8960, 8940));
        assert_eq!(
            config.cookie_options,
            GuardConfig::COOKIE_TIMESTAMPS | GuardConfig::COOKIE_SACK | GuardConfig::COOKIE_WSCALE,
            "a stock host, with the timestamps the daemon sets to 2 while cookies are answered"
        );
        let mut config = GuardConfig {
            manage_sysctls: 0,
            ..GuardConfig::default()
        };
        prepare_with(&mut config, &linux_defaults(), 9000).unwrap();
        assert_eq!(
            config.cookie_options,
            GuardConfig::COOKIE_SACK | GuardConfig::COOKIE_WSCALE
        );
        assert!(describe(&config, &linux_defaults()).contains("tcp_timestamps is 1"));
        let tcp = TcpSettings {
            timestamps: 2,
            sack: 0,
            ..linux_defaults()
        };
        prepare_with(&mut config, &tcp, 1500).unwrap();
        assert_eq!(
            config.cookie_options,
            GuardConfig::COOKIE_TIMESTAMPS | GuardConfig::COOKIE_WSCALE
        );
        assert!(describe(&config, &tcp).contains("timestamps, window scale 7"));
    }
}
