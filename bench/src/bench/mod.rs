//! `percore bench`: servers and load generator, one table.

/// Arguments of `percore bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Seconds per cell.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
}

/// Run `percore bench`; returns the exit code.
pub fn main(_args: BenchArgs) -> i32 {
    eprintln!("percore bench: not implemented yet");
    2
}
