//! How many io_uring direct descriptors (fixed file slots) a ring may have under the current
//! RLIMIT_NOFILE, and whether a second ring gets its own table.
//!
//! `cargo run -p percore-tune --example fixed_file_table` — no sockets, bounded, stops by itself.

use io_uring::IoUring;

fn main() -> std::io::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("Max open files: unknown");
    println!(
        "{}",
        nofile.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let soft: u32 = nofile
        .split_whitespace()
        .nth(3)
        .and_then(|w| w.parse().ok())
        .unwrap_or(1024);
    for n in [soft - 1000, soft, soft + 1, soft * 2] {
        let ring = IoUring::new(8)?;
        let r = ring.submitter().register_files_sparse(n);
        println!(
            "one ring, {n} sparse fixed-file slots: {}",
            r.map_or_else(|e| e.to_string(), |()| "ok".into())
        );
    }
    let a = IoUring::new(8)?;
    let b = IoUring::new(8)?;
    let n = soft - 1000;
    let ra = a.submitter().register_files_sparse(n);
    let rb = b.submitter().register_files_sparse(n);
    println!(
        "two rings in one process, {n} slots each ({} in total): {} / {}",
        2 * n,
        ra.map_or_else(|e| e.to_string(), |()| "ok".into()),
        rb.map_or_else(|e| e.to_string(), |()| "ok".into())
    );
    Ok(())
}
