//! `percore`: echo/broadcast server, load generator, benchmark driver and host tuning checker.

use clap::{Parser, Subcommand};

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
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("percore {}", env!("CARGO_PKG_VERSION")),
        Command::Tune(a) => std::process::exit(percore_tune::run(a)),
    }
}
