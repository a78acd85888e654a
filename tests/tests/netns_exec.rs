//! `ip netns exec NS tcp-guard ...`, the way most people run a program in a
//! namespace: it gives the program a mount namespace of its own with /sys
//! remounted, so the host's bpffs is not there. tcp-guard keeps its state in
//! the host's bpffs all the same, or refuses where it cannot reach it.
//! Needs root.

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use tcp_guard_tests::{
    daemon::{Daemon, counter, tcp_guard_bin},
    lab::{Lab, listen},
    scenario::PORT,
};

/// `ip netns exec NS tcp-guard ARGS...`
fn tcp_guard_ip_netns_exec(lab: &Lab, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", lab.server.name()])
        .arg(tcp_guard_bin())
        .args(args)
        .output()
        .expect("cannot start ip netns exec")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn xdp_attached(lab: &Lab) -> bool {
    let out = lab
        .server
        .ip(&["link", "show", &lab.server_iface])
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp id ")
}

#[test]
fn a_daemon_started_by_ip_netns_exec_pins_in_the_host_bpffs_and_survives_kill_9() {
    let lab = Lab::new().expect("lab");
    let iface = lab.server_iface.clone();
    let mut daemon = Daemon::start_ip_netns_exec(&lab.server, &iface, &[]).expect("start");
    let pin_dir = Path::new("/sys/fs/bpf/tcp-guard").join(&iface);
    assert!(
        pin_dir.is_dir(),
        "the pins are in the host's bpffs ({}): {}",
        pin_dir.display(),
        daemon.log()
    );

    // Commands started either way see the same instance.
    let addr = SocketAddr::new(lab.server_addr(false), PORT);
    let listener = listen(&lab.server, addr, 16).expect("listen");
    let connected = lab
        .client
        .enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .expect("enter");
    assert!(connected.is_ok(), "a client connects through the guard");
    drop(listener);
    let stats = json(&tcp_guard_ip_netns_exec(
        &lab,
        &["stats", "--iface", &iface, "--json"],
    ));
    assert!(
        counter(&stats, "syn") >= 1,
        "ip netns exec ... stats reads the daemon's counters: {stats}"
    );
    let pid = daemon.pid();
    let status = json(&tcp_guard_ip_netns_exec(&lab, &["status", "--json"]));
    let instance = status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["iface"] == iface.as_str())
        .unwrap_or_else(|| panic!("{iface} not in {status}"));
    assert_eq!(instance["daemon"]["pid"], pid, "{status}");
    assert_eq!(instance["daemon"]["running"], true, "{status}");

    // kill -9 releases nothing: the pins live outside the daemon's namespace.
    let killed = daemon.stop_with(libc::SIGKILL).expect("kill -9");
    assert!(!killed.success());
    assert!(xdp_attached(&lab), "XDP must stay attached after kill -9");
    assert!(pin_dir.is_dir(), "the pins outlive the daemon");

    let detach = tcp_guard_ip_netns_exec(&lab, &["detach", "--iface", &iface]);
    assert!(
        detach.status.success(),
        "ip netns exec ... detach finds the instance: {}",
        String::from_utf8_lossy(&detach.stderr)
    );
    assert!(!xdp_attached(&lab), "detach removes the program");
    assert!(!pin_dir.exists(), "detach removes the pins");
}

#[test]
fn where_the_host_mount_namespace_is_out_of_reach_run_refuses_and_names_nsenter() {
    let lab = Lab::new().expect("lab");
    // A new PID namespace with its own /proc: no process of the namespace
    // `ip netns exec` came from is visible any more.
    // Bounded, should it ever start guarding instead of refusing.
    let out = Command::new("timeout")
        .args(["30", "ip", "netns", "exec", lab.server.name()])
        .args(["unshare", "--pid", "--fork", "--mount-proc"])
        .arg(tcp_guard_bin())
        .args(["run", "--iface", &lab.server_iface])
        .output()
        .expect("cannot start ip netns exec");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "run must refuse: {stderr}");
    let fix = format!("nsenter --net=/run/netns/{}", lab.server.name());
    assert!(
        stderr.contains("ip netns exec") && stderr.contains(&fix),
        "the error names the problem and the fix ({fix}): {stderr}"
    );
    assert!(!xdp_attached(&lab), "nothing was attached");
    assert!(
        !Path::new("/sys/fs/bpf/tcp-guard")
            .join(&lab.server_iface)
            .exists()
    );
}
