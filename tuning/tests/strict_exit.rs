//! --strict exits 2 when a knob must be raised, 0 otherwise; without it always 0.
mod common;

use common::run;

#[test]
fn strict_on_a_tuned_host_exits_0() {
    let (code, out, _) = run("tuned", &["--connections", "1000000", "--strict"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn strict_with_a_knob_to_raise_exits_2() {
    let (code, _, _) = run("default", &["--connections", "100000", "--strict"]);
    assert_eq!(code, percore_tune::EXIT_STRICT_RAISE);
    let (code, _, _) = run(
        "container",
        &["--connections", "1000000", "--strict", "--json"],
    );
    assert_eq!(code, 2);
}

#[test]
fn without_strict_a_knob_to_raise_exits_0() {
    let (code, out, _) = run("container", &["--connections", "1000000"]);
    assert_eq!(code, 0);
    assert!(out.contains("raise"));
}

#[test]
fn strict_applies_to_emit_and_dry_run_too() {
    let (code, _, _) = run("default", &["--strict", "--emit", "sysctl"]);
    assert_eq!(code, 2);
    let (code, _, _) = run("default", &["--strict", "--apply"]);
    assert_eq!(code, 2);
    let (code, _, _) = run("tuned", &["--strict", "--apply"]);
    assert_eq!(code, 0);
}

#[test]
fn strict_on_this_machines_limits_passes_at_10k_and_fails_at_1m() {
    let (code, out, _) = run("container", &["--connections", "10000", "--strict"]);
    assert_eq!(code, 0, "{out}");
    let (code, _, _) = run("container", &["--connections", "1000000", "--strict"]);
    assert_eq!(code, 2);
}

#[test]
fn connections_beyond_the_maximum_are_rejected_and_the_maximum_checks() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: percore_tune::TuneArgs,
    }
    assert!(Cli::try_parse_from(["tune", "--connections", "1000000001"]).is_err());
    assert!(Cli::try_parse_from(["tune", "--connections", "-1"]).is_err());
    let (code, out, _) = run("tuned", &["--connections", "1000000000"]);
    assert_eq!(code, 0);
    assert!(out.contains("1000000000 connections"));
    let (code, _, _) = run("tuned", &["--connections", "0", "--strict"]);
    assert_eq!(code, 0);
}
