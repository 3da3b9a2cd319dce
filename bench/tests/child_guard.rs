//! Children of `percore bench` / `percore load` die with their parent: `PERCORE_PARENT_PID`
//! names the parent they expect, `PERCORE_CPUS` the CPUs they are restricted to. Each run
//! lasts a fraction of a second.

use std::process::{Command, Stdio};

fn percore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_percore"))
}

#[test]
fn child_whose_named_parent_is_already_gone_exits_before_doing_anything() {
    // pid 1 is never the test's own pid, so the child sees a different parent than named.
    let out = percore()
        .arg("version")
        .env("PERCORE_PARENT_PID", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn child_started_by_the_named_parent_runs_normally() {
    let out = percore()
        .arg("version")
        .env("PERCORE_PARENT_PID", std::process::id().to_string())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("percore "));
}

#[test]
fn exec_runs_the_program_on_the_named_cpu_without_passing_the_variables_on() {
    let out = percore()
        .args(["exec", "/bin/sh", "-c"])
        .arg("grep Cpus_allowed_list /proc/self/status; echo parent=${PERCORE_PARENT_PID:-none}")
        .env("PERCORE_PARENT_PID", std::process::id().to_string())
        .env("PERCORE_CPUS", "0")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let cpus = text
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim);
    assert_eq!(cpus, Some("0"), "{text}");
    assert!(text.contains("parent=none"), "{text}");
}
