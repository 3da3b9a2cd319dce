//! --apply: dry run by default; --yes writes /proc/sys values under the (injected) proc root.
mod common;

use std::fs;

use common::{run, run_dir, scratch_copy};

#[test]
fn apply_without_yes_prints_changes_and_writes_nothing() {
    let dir = scratch_copy("container", "dry-run");
    let path = dir.join("proc/sys/net/core/somaxconn");
    let (code, out, _) = run_dir(&dir, &["--connections", "1000000", "--apply"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("dry run"), "{out}");
    assert!(out.contains(&format!(
        "would set net.core.somaxconn = 65535 (now 4096) in {}",
        path.display()
    )));
    assert!(out.contains(
        "would set net.ipv4.tcp_mem = 500000 1000000 2000000 (now 287898 383867 575796)"
    ));
    assert!(out.contains("not changed by --apply: RLIMIT_NOFILE hard"));
    assert_eq!(fs::read_to_string(&path).unwrap(), "4096\n");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn apply_yes_as_non_root_refuses_and_writes_nothing() {
    let dir = scratch_copy("default", "non-root");
    let path = dir.join("proc/sys/net/core/somaxconn");
    let (code, out, err) = run_dir(&dir, &["--connections", "1000000", "--apply", "--yes"]);
    assert_eq!(code, 1);
    assert!(err.contains("needs root (effective uid 1000)"), "{err}");
    assert!(!out.contains("set "), "{out}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "4096\n");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn apply_yes_as_root_writes_each_value_then_the_host_checks_ok() {
    let dir = scratch_copy("container", "root");
    let (code, out, err) = run_dir(&dir, &["--connections", "1000000", "--apply", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("set net.core.somaxconn = 65535 (was 4096)"),
        "{out}"
    );
    assert!(out.contains("set net.netfilter.nf_conntrack_max = 2097152 (was 262144)"));
    assert_eq!(
        fs::read_to_string(dir.join("proc/sys/net/core/somaxconn")).unwrap(),
        "65535\n"
    );
    assert_eq!(
        fs::read_to_string(dir.join("proc/sys/net/ipv4/tcp_mem")).unwrap(),
        "500000 1000000 2000000\n"
    );
    // Every sysctl now meets the target; only the rlimit is left.
    let (_, again, _) = run_dir(&dir, &["--connections", "1000000", "--apply"]);
    assert!(!again.contains("would set"), "{again}");
    assert!(again.contains("not changed by --apply: RLIMIT_NOFILE hard"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn apply_yes_reports_a_failed_write_and_exits_1() {
    let dir = scratch_copy("container", "fail");
    let roots = common::roots(&dir);
    let host = percore_tune::Host::read(&roots);
    let mut report = percore_tune::check(&host, 1_000_000);
    // A sysctl whose file does not exist: --apply never creates files, so the write fails.
    let mut k = report.knobs[0].clone();
    k.name = "net.core.no_such_knob".into();
    k.set = Some(("net.core.no_such_knob".into(), "1".into()));
    report.knobs.push(k);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code =
        percore_tune::render::apply(&report, &host, &roots, true, &mut out, &mut err).unwrap();
    assert_eq!(code, 1);
    let err = String::from_utf8(err).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        err.contains("FAILED to set net.core.no_such_knob = 1"),
        "{err}"
    );
    assert!(!dir.join("proc/sys/net/core/no_such_knob").exists());
    // The other changes are still made, one by one.
    assert!(
        out.contains("set net.core.somaxconn = 65535 (was 4096)"),
        "{out}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn yes_without_apply_and_mixed_output_modes_are_argument_errors() {
    // `requires = "apply"`: clap rejects --yes alone.
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: percore_tune::TuneArgs,
    }
    assert!(Cli::try_parse_from(["tune", "--yes"]).is_err());
    assert!(Cli::try_parse_from(["tune", "--apply", "--emit", "sysctl"]).is_err());
    assert!(Cli::try_parse_from(["tune", "--apply", "--json"]).is_err());
    assert!(Cli::try_parse_from(["tune", "--json", "--emit", "systemd"]).is_err());
    let (code, _, _) = run("tuned", &["--apply"]);
    assert_eq!(code, 0);
}
