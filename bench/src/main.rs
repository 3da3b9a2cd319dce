//! `percore`: echo/broadcast server, load generator, benchmark driver and host tuning checker.
// One `unsafe` call, in `sys::release_startup_pages` (madvise), with its reasoning.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use clap::{Parser, Subcommand};

mod bench;
mod cert;
mod load;
mod serve;
mod soak;
mod sys;

/// percore: WebSocket engine benchmark server, load generator and kernel tuning reference.
#[derive(Parser)]
#[command(name = "percore", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version and exit.
    Version,
    /// Check this host's limits for a target connection count and say what to change.
    Tune(percore_tune::TuneArgs),
    /// Run an echo server until SIGINT/SIGTERM (prints `listening on ADDR backend=B shards=N`).
    Serve(serve::ServeArgs),
    /// WebSocket load generator (echo / broadcast / idle), many connections per thread.
    Load(load::LoadArgs),
    /// Start servers and the load generator, run the benchmark matrix, print one table.
    Bench(bench::BenchArgs),
    /// Long mixed run of well-behaved and hostile clients against an echo and a broadcast
    /// server per backend: nothing lost, expected close codes, servers up, memory flat.
    Soak(soak::SoakArgs),
    /// Memory after a storm of connections that send half a large frame and reset.
    Storm(soak::storm::StormArgs),
    /// Make a test CA and a server certificate signed by it (PEM files) for `serve --tls-cert`.
    Cert(cert::CertArgs),
    /// Replace this process with PROGRAM (used by `percore bench` to start peer servers that
    /// die with it and stay on their CPU).
    #[command(hide = true)]
    Exec {
        /// Program to run.
        program: std::path::PathBuf,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn main() {
    // First, before any thread starts: a child of `percore bench` / `percore load` dies with
    // its parent and takes its CPU restriction.
    sys::guard_child();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("percore {}", env!("CARGO_PKG_VERSION")),
        Command::Tune(a) => std::process::exit(percore_tune::run(a)),
        Command::Serve(args) => serve::main(args),
        Command::Load(args) => std::process::exit(load::main(args)),
        Command::Bench(args) => std::process::exit(bench::main(args)),
        Command::Soak(args) => std::process::exit(soak::main(args)),
        Command::Storm(args) => std::process::exit(soak::storm::main(args)),
        Command::Cert(args) => std::process::exit(cert::main(args)),
        Command::Exec { program, args } => {
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new(&program).args(args).exec();
            eprintln!("percore exec {}: {e}", program.display());
            std::process::exit(127);
        }
    }
}
