//! `percore tune`: reads the host's limits and says what to change for a target connection count.
//!
//! It reads RLIMIT_NOFILE/RLIMIT_MEMLOCK, the sysctls that bound 100k–1M TCP connections, the
//! CPU/NUMA/THP layout, and probes the io_uring features the engine uses; then prints, for each
//! knob, the current value, the value the target needs, a status and why. It changes nothing
//! unless `--apply --yes` is given. `tuning/README.md` is the reference document behind it.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod check;
pub mod host;
mod probe;
pub mod render;

use std::io::{self, Write};
use std::path::PathBuf;

pub use check::{check, Knob, MemoryEstimate, Report, Status};
pub use host::{Host, Roots};
pub use probe::UringProbe;

/// Largest `--connections` accepted: far beyond any single host, small enough that every
/// estimate (bytes, pages, fds) stays within `u64`.
pub const CONNECTIONS_MAX: u64 = 1_000_000_000;

/// Exit code of `--strict` when a knob must be raised.
pub const EXIT_STRICT_RAISE: i32 = 2;

/// Which file `--emit` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// A sysctl.d file (/etc/sysctl.d/90-percore.conf).
    Sysctl,
    /// A systemd unit drop-in: LimitNOFILE, LimitMEMLOCK, CPUAffinity.
    Systemd,
}

/// Arguments of `percore tune`.
#[derive(Debug, Clone, clap::Args)]
pub struct TuneArgs {
    /// Target number of concurrent connections on this host (at most 1e9).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(0..=CONNECTIONS_MAX))]
    pub connections: u64,
    /// Print a JSON object instead of the table.
    #[arg(long, conflicts_with = "emit")]
    pub json: bool,
    /// Print a configuration file instead of the table.
    #[arg(long, value_enum)]
    pub emit: Option<Emit>,
    /// Show the sysctl writes needed (dry run); with --yes, make them (root only).
    #[arg(long, conflicts_with_all = ["emit", "json"])]
    pub apply: bool,
    /// With --apply: really write /proc/sys values.
    #[arg(long, requires = "apply")]
    pub yes: bool,
    /// Exit with status 2 when any knob must be raised.
    #[arg(long)]
    pub strict: bool,
    /// procfs root to read (and write with --apply --yes).
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// sysfs root to read.
    #[arg(long, default_value = "/sys")]
    pub sys_root: PathBuf,
}

/// Runs `percore tune` on stdout/stderr and returns the process exit code.
pub fn run(args: TuneArgs) -> i32 {
    let stdout = io::stdout();
    let stderr = io::stderr();
    run_to(&args, &mut stdout.lock(), &mut stderr.lock())
}

/// Runs `percore tune`, writing to `out`/`err`; returns the exit code: 0, 2 with `--strict`
/// when a knob must be raised, 1 when `--apply --yes` is refused or a write fails.
pub fn run_to(args: &TuneArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let roots = Roots {
        proc_root: args.proc_root.clone(),
        sys_root: args.sys_root.clone(),
    };
    let host = Host::read(&roots);
    let report = check(&host, args.connections);
    let written = if args.apply {
        render::apply(&report, &host, &roots, args.yes, out, err)
    } else {
        match args.emit {
            Some(Emit::Sysctl) => render::sysctl_file(&report, out).map(|()| 0),
            Some(Emit::Systemd) => render::systemd_dropin(&report, &host, out).map(|()| 0),
            None if args.json => render::json(&report, out).map(|()| 0),
            None => render::table(&report, &roots, out).map(|()| 0),
        }
    };
    match written {
        Ok(0) if args.strict && report.needs_raise() => EXIT_STRICT_RAISE,
        Ok(code) => code,
        Err(e) => {
            // A closed pipe (`percore tune | head`) is not worth more than a line.
            let _ = writeln!(err, "percore tune: {e}");
            1
        }
    }
}
