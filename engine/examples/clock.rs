//! What the shard's clock costs: `Instant::now()` (a vDSO `clock_gettime(CLOCK_MONOTONIC)`)
//! and turning an instant into the microseconds the loop-turn histogram and the idle-ping clock
//! take. The shard reads the clock at the top of each loop turn, at the first completion of a
//! poll and after the poll (for the timer wheel's tick); the metrics reuse those reads.
//!
//! `cargo run --release -p percore --example clock`

use std::hint::black_box;
use std::time::Instant;

fn main() {
    const N: u32 = 10_000_000;
    for round in 1..=3 {
        let start = Instant::now();
        let mut sink = 0u64;
        for _ in 0..N {
            sink = sink
                .wrapping_add(black_box(Instant::now()).duration_since(start).as_nanos() as u64);
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(N);
        println!(
            "round {round}: Instant::now() {ns:.1} ns per call ({})",
            sink & 1
        );
    }
    let epoch = Instant::now();
    let instants: Vec<Instant> = (0..1000).map(|_| Instant::now()).collect();
    let start = Instant::now();
    let mut sink = 0u32;
    for _ in 0..10_000 {
        for t in &instants {
            let us = black_box(*t).saturating_duration_since(epoch).as_micros() as u32;
            sink = sink.wrapping_add(us);
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / 1e7;
    println!(
        "instant -> microseconds since the shard's start: {ns:.1} ns ({})",
        sink & 1
    );
}
