//! Helpers shared by the fixture tests: run `percore tune` against a fixture tree.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use clap::Parser;
use percore_tune::{check, Host, Report, Roots, TuneArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TuneArgs,
}

/// The directory of a fixture host (`tuned`, `default`, `container`, `broken`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Roots of a host directory (its `proc/` and `sys/`).
pub fn roots(dir: &Path) -> Roots {
    Roots {
        proc_root: dir.join("proc"),
        sys_root: dir.join("sys"),
    }
}

/// The report for a fixture host and a target.
pub fn report(name: &str, connections: u64) -> Report {
    check(&Host::read(&roots(&fixture(name))), connections)
}

/// Runs `percore tune <extra> --proc-root <dir>/proc --sys-root <dir>/sys`; returns
/// (exit code, stdout, stderr).
pub fn run_dir(dir: &Path, extra: &[&str]) -> (i32, String, String) {
    let proc_root = dir.join("proc");
    let sys_root = dir.join("sys");
    let mut argv: Vec<String> = vec!["tune".into()];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv.push("--proc-root".into());
    argv.push(proc_root.display().to_string());
    argv.push("--sys-root".into());
    argv.push(sys_root.display().to_string());
    let cli = Cli::try_parse_from(argv).expect("arguments parse");
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = percore_tune::run_to(&cli.args, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).expect("utf-8 stdout"),
        String::from_utf8(err).expect("utf-8 stderr"),
    )
}

/// [`run_dir`] on a named fixture.
pub fn run(name: &str, extra: &[&str]) -> (i32, String, String) {
    run_dir(&fixture(name), extra)
}

/// The knob called `name` in a report.
pub fn knob<'a>(report: &'a Report, name: &str) -> &'a percore_tune::Knob {
    report
        .knobs
        .iter()
        .find(|k| k.name == name)
        .unwrap_or_else(|| panic!("no knob {name}"))
}

/// A private copy of a fixture host that a test may write to.
pub fn scratch_copy(name: &str, test: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("percore-tune-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dst);
    copy_dir(&fixture(name), &dst);
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("create scratch dir");
    for entry in fs::read_dir(src).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            fs::copy(entry.path(), &to).expect("copy fixture file");
        }
    }
}
