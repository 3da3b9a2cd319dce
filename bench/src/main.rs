//! `percore`: echo/broadcast server, load generator, benchmark driver and host tuning checker.

use clap::{Parser, Subcommand};

mod serve;

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
    /// Run an echo server until SIGINT/SIGTERM (prints `listening on ADDR backend=B shards=N`).
    Serve(serve::ServeArgs),
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("percore {}", env!("CARGO_PKG_VERSION")),
        Command::Serve(args) => serve::main(args),
    }
}
