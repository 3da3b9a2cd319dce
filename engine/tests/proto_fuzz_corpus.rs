//! Runs the cargo-fuzz target bodies (engine/fuzz/src/lib.rs) over the committed seed corpus and
//! a few thousand deterministic mutations of it, so every test run exercises them on stable.

#[path = "../fuzz/src/lib.rs"]
mod bodies;

use std::path::Path;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(seeds.len() >= 3, "seed corpus for {target} is missing");
    seeds
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Seeds, then mutations of them (byte flips, insertions, truncations, splices), then noise.
fn inputs(seeds: &[Vec<u8>], count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out: Vec<Vec<u8>> = seeds.to_vec();
    for i in 0..count {
        let mut v = seeds[i % seeds.len()].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(6) {
                0 if !v.is_empty() => {
                    let at = rng.below(v.len());
                    v[at] ^= 1 << rng.below(8);
                }
                1 if !v.is_empty() => {
                    let at = rng.below(v.len());
                    v[at] = rng.next() as u8;
                }
                2 => {
                    let at = rng.below(v.len() + 1);
                    v.insert(at, rng.next() as u8);
                }
                3 => v.truncate(rng.below(v.len() + 1)),
                4 => {
                    let other = &seeds[rng.below(seeds.len())];
                    let from = rng.below(other.len() + 1);
                    v.extend_from_slice(&other[from..]);
                }
                _ => {
                    let n = rng.below(64);
                    v.extend((0..n).map(|_| rng.next() as u8));
                }
            }
        }
        out.push(v);
    }
    for _ in 0..count / 4 {
        let n = rng.below(300);
        out.push((0..n).map(|_| rng.next() as u8).collect());
    }
    out
}

#[test]
fn handshake_fuzz_body_survives_seeds_and_mutations() {
    for input in inputs(&seeds("handshake"), 3000) {
        bodies::handshake(&input);
    }
}

#[test]
fn decode_frames_fuzz_body_survives_seeds_and_mutations() {
    for input in inputs(&seeds("decode_frames"), 3000) {
        bodies::decode_frames(&input);
    }
}
