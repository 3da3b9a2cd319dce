//! --emit sysctl and --emit systemd content.
mod common;

use common::run;

#[test]
fn sysctl_file_sets_only_values_below_target() {
    let (code, out, _) = run("default", &["--connections", "1000000", "--emit", "sysctl"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("# /etc/sysctl.d/90-percore.conf"));
    for line in [
        "net.core.somaxconn = 65535",
        "net.ipv4.tcp_mem = 500000 1000000 2000000",
        "net.core.netdev_max_backlog = 16384",
        "net.ipv4.tcp_max_orphans = 1000000",
        "net.netfilter.nf_conntrack_max = 2097152",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
    }
    // Already high enough: only a comment, never a line that would lower it.
    assert!(out.contains("# ok: fs.file-max = 9223372036854775807"));
    assert!(!out.lines().any(|l| l.starts_with("fs.file-max")));
    assert!(out.contains("# info: net.ipv4.ip_local_port_range"));
    assert!(out.contains("# info: net.ipv4.tcp_max_syn_backlog = 1024"));
    assert!(!out.contains("RLIMIT_NOFILE soft"));
}

#[test]
fn sysctl_file_for_a_tuned_host_sets_nothing() {
    let (_, out, _) = run("tuned", &["--connections", "1000000", "--emit", "sysctl"]);
    let active: Vec<&str> = out
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(active.is_empty(), "{active:?}");
}

#[test]
fn systemd_dropin_has_service_limits_and_affinity() {
    let (code, out, _) = run(
        "default",
        &["--connections", "1000000", "--emit", "systemd"],
    );
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"[Service]"));
    assert!(lines.contains(&"LimitNOFILE=1048576"));
    assert!(lines.contains(&"LimitMEMLOCK=64M"));
    assert!(lines.contains(&"CPUAffinity=0-3"));
    assert!(!out.contains("fs.nr_open is"), "nr_open 1048576 is enough");
}

#[test]
fn systemd_dropin_warns_when_nr_open_blocks_limit_nofile() {
    let (_, out, _) = run(
        "default",
        &["--connections", "2000000", "--emit", "systemd"],
    );
    assert!(out.contains("LimitNOFILE=2097152"));
    assert!(out.contains("fs.nr_open is 1048576 < 2097152"), "{out}");
}
