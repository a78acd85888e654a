//! What an operator sees when something is wrong: each error names the
//! problem and the fix. Needs root (it sets up the conditions for real).

use std::process::Command;

use tcp_guard::{attach, program};
use tcp_guard_tests::{
    daemon::{Daemon, counter, stats_json, tcp_guard, tcp_guard_bin},
    lab::Lab,
};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_interface_is_named() {
    let lab = Lab::new().expect("lab");
    let out = lab
        .server
        .command(tcp_guard_bin())
        .args(["run", "--iface", "nosuch0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("interface nosuch0 does not exist"), "{err}");
}

#[test]
fn second_instance_on_the_same_interface_is_refused() {
    let lab = Lab::new().expect("lab");
    let _first = Daemon::start(&lab.server, &lab.server_iface, &[]).expect("first instance");
    let second = Daemon::start(&lab.server, &lab.server_iface, &[])
        .err()
        .expect("second must fail");
    let err = format!("{second:#}");
    assert!(
        err.contains(&format!("tcp-guard is already running on {}", lab.server_iface)),
        "{err}"
    );
}

#[test]
fn foreign_xdp_program_is_reported_with_the_fix() {
    let lab = Lab::new().expect("lab");
    let iface = lab.server_iface.clone();
    // Another program holds the interface: attach one from this process.
    let mut other = program::load(log::LevelFilter::Off, &Default::default(), None).expect("load");
    lab.server
        .enter(|| attach::attach_xdp(&mut other, &iface, attach::Mode::Native).map(|_| ()))
        .expect("enter")
        .expect("attach the other program");
    let err = format!(
        "{:#}",
        Daemon::start(&lab.server, &iface, &[]).err().expect("must fail")
    );
    assert!(err.contains("another XDP program is already attached"), "{err}");
    assert!(err.contains(&format!("ip link set dev {iface} xdp off")), "{err}");
}

/// Debian's xdp-tools beside tcp-guard, both ways round: whichever comes
/// second is refused with a message that says why, and the first keeps
/// working. (libxdp's multi-program dispatcher needs freplace programs,
/// which the kernel of the project's machines refuses: xdp-filter falls
/// back to a program of its own here, and tcp-guard keeps the interface to
/// itself anyway; see docs/operations.md, "Beside other XDP programs".)
#[test]
fn beside_xdp_tools_the_second_is_refused_and_the_first_keeps_working() {
    let lab = Lab::new().expect("lab");
    let iface = lab.server_iface.clone();
    let filter = XdpFilter::new(&lab, &iface);
    filter.load().expect("xdp-filter load");
    let err = format!(
        "{:#}",
        Daemon::start(&lab.server, &iface, &[]).err().expect("must fail")
    );
    assert!(
        err.contains("xdpfilt_") && err.contains(&format!("xdp-loader unload {iface} --all")),
        "names the program and the fix: {err}"
    );
    assert!(
        xdp_prog_name(&lab, &iface).starts_with("xdpfilt_"),
        "xdp-filter stays attached"
    );
    filter.unload();

    let _daemon = Daemon::start(&lab.server, &iface, &[]).expect("start");
    let refused = filter.load().expect_err("xdp-filter must not replace tcp-guard");
    assert!(!refused.is_empty());
    assert_eq!(
        xdp_prog_name(&lab, &iface),
        "tcp_guard_xdp",
        "tcp-guard stays attached"
    );
    let before = counter(&stats_json(&iface), "packets");
    // A SYN to a closed port, which the kernel answers with a reset.
    let to = std::net::SocketAddr::new(lab.server_addr(false), 9);
    let _refused = lab
        .client
        .enter(move || std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_millis(300)))
        .expect("enter");
    assert!(
        counter(&stats_json(&iface), "packets") > before,
        "and still sees the traffic"
    );
}

/// The name of the XDP program attached to `iface`, as `ip` reports it.
fn xdp_prog_name(lab: &Lab, iface: &str) -> String {
    let out = lab
        .server
        .ip(&["-details", "-json", "link", "show", "dev", iface])
        .expect("ip");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    links[0]["xdp"]["prog"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// xdp-filter on one interface of the lab; unloaded on drop, with the pins
/// and directories it made under /sys/fs/bpf (shared with the host).
struct XdpFilter<'a> {
    lab: &'a Lab,
    iface: String,
    made: Vec<&'static str>,
}

impl<'a> XdpFilter<'a> {
    fn new(lab: &'a Lab, iface: &str) -> Self {
        let made = ["/sys/fs/bpf/xdp", "/sys/fs/bpf/xdp-filter"]
            .into_iter()
            .filter(|dir| !std::path::Path::new(dir).exists())
            .collect();
        XdpFilter {
            lab,
            iface: iface.to_string(),
            made,
        }
    }

    /// Its stderr if it fails.
    fn load(&self) -> Result<(), String> {
        let out = self
            .lab
            .server
            .command("xdp-filter")
            .args(["load", &self.iface, "--mode", "native"])
            .output()
            .expect("xdp-filter (cargo xtask setup installs xdp-tools)");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn unload(&self) {
        let out = self
            .lab
            .server
            .command("xdp-filter")
            .args(["unload", &self.iface])
            .output()
            .expect("xdp-filter");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for XdpFilter<'_> {
    fn drop(&mut self) {
        let _unloaded = self
            .lab
            .server
            .command("xdp-filter")
            .args(["unload", &self.iface])
            .output();
        for dir in &self.made {
            let _removed = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn skb_mode_is_honoured() {
    let lab = Lab::new().expect("lab");
    let daemon = Daemon::start(&lab.server, &lab.server_iface, &["--mode", "skb"]).expect("start");
    assert!(daemon.log().contains("skb mode"), "{}", daemon.log());
    let link = lab
        .server
        .ip(&["link", "show", &lab.server_iface])
        .expect("ip link");
    assert!(String::from_utf8_lossy(&link.stdout).contains("xdpgeneric"));
}

#[test]
fn stats_without_an_instance_says_how_to_start_one() {
    let out = tcp_guard(&["stats", "--iface", "tgnothing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("no tcp-guard instance on tgnothing"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn run_without_root_is_refused_clearly() {
    tcp_guard_tests::lab::require_root();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(tcp_guard_bin())
        .args(["run", "--iface", "lo"])
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("needs root"), "{}", stderr_of(&out));
}

#[test]
fn bad_mode_names_the_choices() {
    let out = tcp_guard(&["run", "--iface", "lo", "--mode", "fast"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(err.contains("invalid value 'fast' for '--mode <MODE>'"), "{err}");
    assert!(err.contains("auto, native, skb"), "{err}");
}

#[test]
fn bad_run_options_name_the_option_and_the_fix() {
    for (args, expected) in [
        (&["--timeout", "syn_rcvd=abc"][..], "timeouts.syn_rcvd = \"abc\""),
        (&["--timeout", "listen=10s"][..], "unknown state \"listen\""),
        (&["--timeout", "syn_rcvd"][..], "expected STATE=DURATION"),
        (
            &["--timeout", "time_wait=10ms"][..],
            "timeouts.time_wait = 10ms: must be from 1s",
        ),
        (
            &["--max-flows", "0"][..],
            "invalid value '0' for '--max-flows <COUNT>': expected a table size from 1 to 16Mi",
        ),
        (&["--max-half-open", "99999999999"][..], "--max-half-open"),
        (&["--max-half-open", "1.5k"][..], "(such as 65536 or 64Ki)"),
    ] {
        let mut all = vec!["run", "--iface", "lo"];
        all.extend_from_slice(args);
        let out = tcp_guard(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr_of(&out);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let out = tcp_guard(&["run", "--iface", "lo", "--set", "limits.syn_rate=ten"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains(
            "limits.syn_rate = \"ten\": expected a whole number from 0 to 10M (such as 4096, 10k, 64Ki)"
        ),
        "{err}"
    );
}

#[test]
fn flows_state_filter_accepts_ss_and_rfc_names_only() {
    let out = tcp_guard(&["flows", "--state", "half-closed"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(err.contains("unknown state \"half-closed\""), "{err}");
    assert!(err.contains("SYN-RECV, ESTAB"), "{err}");
}

/// An interface name never becomes a path: `detach --iface /tmp/x` once
/// deleted that directory and its files.
#[test]
fn names_that_are_no_interface_names_are_refused_before_they_touch_a_path() {
    let victim = std::env::temp_dir().join(format!("tcp-guard-victim-{}", std::process::id()));
    std::fs::create_dir_all(&victim).expect("victim dir");
    std::fs::write(victim.join("keep"), b"keep").expect("victim file");
    let victim_arg = victim.to_string_lossy().into_owned();
    for command in ["detach", "stats", "run"] {
        for name in [victim_arg.as_str(), "..", "eth0:1", ""] {
            let out = tcp_guard(&[command, "--iface", name]);
            let err = stderr_of(&out);
            assert_eq!(out.status.code(), Some(2), "{command} --iface {name:?}: {err}");
            assert!(
                err.contains("is not an interface name"),
                "{command} --iface {name:?}: {err}"
            );
        }
    }
    assert!(victim.join("keep").exists(), "the directory named was left alone");
    std::fs::remove_dir_all(&victim).expect("clean up");
}

/// A link planted where an instance's directory goes is not followed.
#[test]
fn a_link_in_place_of_the_instance_directory_is_refused() {
    let lab = Lab::new().expect("lab");
    let victim = std::env::temp_dir().join(format!("tcp-guard-link-victim-{}", std::process::id()));
    std::fs::create_dir_all(&victim).expect("victim dir");
    tcp_guard::instance::ensure_bpffs().expect("bpffs");
    std::fs::create_dir_all("/sys/fs/bpf/tcp-guard").expect("pin root");
    let planted = std::path::Path::new("/sys/fs/bpf/tcp-guard").join(&lab.server_iface);
    std::os::unix::fs::symlink(&victim, &planted).expect("plant a link on bpffs");
    let out = lab
        .server
        .command(tcp_guard_bin())
        .args(["run", "--iface", &lab.server_iface])
        .output()
        .expect("run");
    let err = stderr_of(&out);
    std::fs::remove_file(&planted).expect("remove the link");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not following links"), "{err}");
    assert_eq!(
        std::fs::read_dir(&victim).expect("victim").count(),
        0,
        "nothing was pinned there"
    );
    std::fs::remove_dir_all(&victim).expect("clean up");
}

/// `check` validates a file as `run` reads it, with no instance and
/// without root; an invalid configuration exits 3, apart from runtime errors.
#[test]
fn check_names_what_is_wrong_and_exits_3_for_an_invalid_configuration() {
    let dir = std::env::temp_dir().join(format!("tcp-guard-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("config");
        path.to_string_lossy().into_owned()
    };
    let valid = file("valid.toml", "[limits]\nsyn_rate = 77\n");

    let out = tcp_guard(&["check", "--config", &valid]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{valid}: valid\n"));
    let out = tcp_guard(&[
        "check",
        "--config",
        &valid,
        "--set",
        "attack.policy=pass",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["config"], valid.as_str());
    assert_eq!(json["valid"], true);
    assert_eq!(json["settings"]["limits.syn_rate"], 77, "from the file");
    assert_eq!(json["settings"]["attack.policy"], "pass", "from --set");
    assert_eq!(json["settings"]["limits.syn_burst"], 400, "the default");
    assert_eq!(json["error"], serde_json::Value::Null);

    // Without root: nobody checks a file anyone may read.
    tcp_guard_tests::lab::require_root();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(tcp_guard_bin())
        .args(["check", "--config", &valid])
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));

    for (name, text, sets, expected) in [
        (
            "value.toml",
            "[limits]\nprefix_len_v4 = 33\n",
            &[][..],
            "limits.prefix_len_v4 = 33: must be from 1 to 32",
        ),
        (
            "section.toml",
            "[limit]\nsyn_rate = 5\n",
            &[][..],
            "unknown section [limit]; sections are limits, attack, blocking, monitor, timeouts, tables",
        ),
        (
            "key.toml",
            "[limits]\nsyn_rte = 5\n",
            &[][..],
            "unknown setting \"limits.syn_rte\"; limits has:",
        ),
        (
            "set.toml",
            "",
            &["--set", "limits.syn_rate=ten"][..],
            "in --set: limits.syn_rate = \"ten\": expected a whole number",
        ),
    ] {
        let path = file(name, text);
        let mut args = vec!["check", "--config", &path];
        args.extend_from_slice(sets);
        let out = tcp_guard(&args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(3), "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
        args.push("--json");
        let out = tcp_guard(&args);
        assert_eq!(out.status.code(), Some(3), "{name} --json");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(json["valid"], false, "{name}: {json}");
        assert_eq!(json["settings"], serde_json::Value::Null, "{name}: {json}");
        assert!(
            json["error"].as_str().expect("error").contains(expected),
            "{name}: {json}"
        );
    }

    let missing = dir.join("missing.toml").to_string_lossy().into_owned();
    let out = tcp_guard(&["check", "--config", &missing]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a file it cannot read is a runtime error"
    );
    assert!(
        stderr_of(&out).contains(&format!("cannot read config {missing}: No such file")),
        "{}",
        stderr_of(&out)
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}
