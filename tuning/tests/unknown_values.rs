//! Missing files and garbage values give status "unknown", never a panic.
mod common;

use common::{knob, report, run};
use percore_tune::Status;

#[test]
fn garbage_and_missing_values_are_unknown_with_the_reason() {
    let r = report("broken", 1_000_000);
    for (name, reason) in [
        ("RLIMIT_NOFILE soft", "unparsable"),
        ("RLIMIT_NOFILE hard", "unparsable"),
        ("RLIMIT_MEMLOCK", "unparsable"),
        ("fs.nr_open", "cannot read"),
        ("fs.file-max", "unparsable"),
        ("net.core.somaxconn", "unparsable \"banana\""),
        ("net.ipv4.tcp_max_syn_backlog", "unparsable \"-5\""),
        ("net.ipv4.ip_local_port_range", "unparsable"),
        ("net.ipv4.tcp_mem", "unparsable"),
        ("net.ipv4.tcp_rmem", "unparsable"),
        ("net.ipv4.tcp_wmem", "cannot read"),
        ("net.netfilter.nf_conntrack_max", "unparsable"),
        ("kernel.io_uring_disabled", "unparsable"),
        ("CPUs (online)", "unparsable"),
        ("NUMA nodes", "cannot read"),
        ("transparent_hugepage", "unparsable"),
        ("memory (MemTotal)", "cannot read"),
    ] {
        let k = knob(&r, name);
        assert_eq!(k.status, Status::Unknown, "{name}: {k:?}");
        assert_eq!(k.current, "?", "{name}");
        assert!(
            k.why.contains(reason),
            "{name}: {:?} lacks {reason:?}",
            k.why
        );
        assert!(
            k.set.is_none(),
            "{name}: nothing to write for an unknown value"
        );
    }
    assert!(
        r.blockers.is_empty(),
        "unknown is not a blocker: {:?}",
        r.blockers
    );
}

#[test]
fn empty_directory_host_is_all_unknown_and_prints() {
    let empty = std::env::temp_dir().join(format!("percore-tune-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let (code, out, err) = common::run_dir(&empty, &["--connections", "1000000", "--strict"]);
    assert_eq!(code, 0, "nothing known to raise: {err}");
    assert!(out.contains("unknown"));
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn broken_host_renders_every_output_without_panicking() {
    for extra in [
        &["--json"][..],
        &["--emit", "sysctl"][..],
        &["--emit", "systemd"][..],
        &["--apply"][..],
        &[][..],
    ] {
        let (code, out, _) = run("broken", extra);
        assert_eq!(code, 0, "{extra:?}");
        assert!(!out.is_empty(), "{extra:?}");
    }
    let (_, sysctl, _) = run("broken", &["--emit", "sysctl"]);
    assert!(sysctl.contains("# unknown: net.core.somaxconn"));
    let (_, systemd, _) = run("broken", &["--emit", "systemd"]);
    assert!(systemd.contains("# CPUAffinity= (online CPUs unknown"));
}

#[test]
fn apply_yes_with_unknown_uid_refuses() {
    let (code, _, err) = run("broken", &["--apply", "--yes"]);
    assert_eq!(code, 1);
    assert!(err.contains("needs root"), "{err}");
}
