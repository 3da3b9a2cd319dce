//! Runs the cargo-fuzz target bodies (engine/fuzz/src/lib.rs) over the committed seed corpus and
//! a few thousand deterministic mutations of it, and over every regression input (a crash,
//! timeout or out-of-memory input `scripts/fuzz.sh` found, kept in `engine/fuzz/regressions/`),
//! so every test run exercises them on stable.

#[path = "../fuzz/src/lib.rs"]
mod bodies;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// A fuzz target body.
type Body = fn(&[u8]);

/// The fuzz targets, with their bodies; a regression folder must name one of them.
const TARGETS: [(&str, Body); 4] = [
    ("handshake", bodies::handshake),
    ("decode_frames", bodies::decode_frames),
    ("permessage_deflate", bodies::permessage_deflate),
    ("connection", bodies::connection),
];

/// Targets whose bodies (and regression inputs) another test file runs: `tls_records`
/// (engine/tests/tls_fuzz_corpus.rs).
const OTHER_TARGETS: [&str; 1] = ["tls_records"];

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

/// Where the regression inputs of `target` live: `engine/fuzz/regressions/<target>/`.
fn regression_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target)
}

/// Run `body` over every file of `dir` except dot files and READMEs (a missing folder holds no
/// input: nothing was found yet). Ok(inputs replayed), or Err(the files whose run panicked).
fn replay(dir: &Path, body: Body) -> Result<usize, Vec<String>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.starts_with('.') && !name.starts_with("README")
        })
        .collect();
    files.sort();
    let failed: Vec<String> = files
        .iter()
        .filter(|p| {
            let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            catch_unwind(AssertUnwindSafe(|| body(&bytes))).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    if failed.is_empty() {
        Ok(files.len())
    } else {
        Err(failed)
    }
}

/// Mutations per target: a few thousand; a hundred under Miri, which interprets every step.
const MUTATIONS: usize = if cfg!(miri) { 100 } else { 3000 };

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
    for input in inputs(&seeds("handshake"), MUTATIONS) {
        bodies::handshake(&input);
    }
}

#[test]
fn decode_frames_fuzz_body_survives_seeds_and_mutations() {
    for input in inputs(&seeds("decode_frames"), MUTATIONS) {
        bodies::decode_frames(&input);
    }
}

#[test]
fn connection_fuzz_body_survives_seeds_and_mutations() {
    for input in inputs(&seeds("connection"), MUTATIONS) {
        bodies::connection(&input);
    }
}

#[test]
fn every_regression_input_passes_its_target() {
    let mut replayed = 0;
    for (target, body) in TARGETS {
        match replay(&regression_dir(target), body) {
            Ok(n) => replayed += n,
            Err(failed) => panic!("{target}: regression inputs fail again: {failed:?}"),
        }
    }
    println!("replayed {replayed} regression inputs");
}

#[test]
fn regression_folders_name_existing_targets() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                TARGETS.iter().any(|(t, _)| *t == name) || OTHER_TARGETS.contains(&&*name),
                "{}: no fuzz target is named {name}",
                p.display()
            );
        }
    }
}

#[test]
fn replay_reports_the_input_files_that_fail() {
    fn panics_on_x(b: &[u8]) {
        assert!(b != b"x", "the input that fails");
    }
    let dir = std::env::temp_dir().join(format!("percore-regress-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("crash-1"), b"x").unwrap();
    std::fs::write(dir.join("timeout-2"), b"y").unwrap();
    std::fs::write(dir.join(".hidden"), b"x").unwrap();
    std::fs::write(dir.join("README.md"), b"x").unwrap();
    let got = replay(&dir, panics_on_x);
    assert_eq!(
        replay(&dir, |_| {}),
        Ok(2),
        "dot files and READMEs are skipped"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let failed = got.unwrap_err();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].ends_with("crash-1"), "{failed:?}");
    assert_eq!(
        replay(&dir, panics_on_x),
        Ok(0),
        "a missing folder holds nothing"
    );
}

#[test]
fn permessage_deflate_fuzz_body_survives_seeds_and_mutations() {
    for input in inputs(&seeds("permessage_deflate"), 2000) {
        bodies::permessage_deflate(&input);
    }
}
