//! Runs the TLS record-layer fuzz body (engine/fuzz/src/tls_records.rs) over its seed corpus, a
//! few thousand deterministic mutations of it and any regression inputs, on stable, in every
//! test run.

#[path = "../fuzz/src/tls_records.rs"]
mod body;

use std::path::Path;

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn tls_records_body_holds_over_the_seeds_their_mutations_and_the_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = files(&root.join("corpus/tls_records"));
    assert!(seeds.len() >= 5, "seed corpus for tls_records is missing");
    for s in &seeds {
        check(s);
    }
    for r in files(&root.join("regressions/tls_records")) {
        check(&r);
    }
    // xorshift64*: deterministic, so a failure reproduces.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for i in 0..3000 {
        let mut m = seeds[i % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % m.len().max(1);
            match next() % 3 {
                0 if !m.is_empty() => m[at] ^= 1 << (next() % 8),
                1 => m.insert(at.min(m.len()), next() as u8),
                _ if m.len() > 6 => {
                    m.remove(at.max(5).min(m.len() - 1));
                }
                _ => {}
            }
        }
        check(&m);
    }
}

/// Run the body; on a failure, print the input (hex) so it can be kept as a regression.
fn check(input: &[u8]) {
    if let Err(p) = std::panic::catch_unwind(|| body::tls_records(input)) {
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!("tls_records failed on input {hex}");
        std::panic::resume_unwind(p);
    }
}
