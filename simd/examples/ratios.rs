//! Noise-resistant throughput ratios for a shared machine.
//!
//! Criterion measures one function after another, so load from other processes that comes and
//! goes between them skews their ratio. This runs all variants of one size in interleaved
//! rounds and keeps each one's fastest round (the run least disturbed), then prints GiB/s and
//! the ratios the README quotes. Run: `cargo run --profile bench -p percore-simd --example ratios`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use percore_simd::{available_kernels, unmask, unmask_with, validate_utf8, Utf8Validator};

const SIZES: [(usize, &str); 3] = [(4 << 10, "4KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];
const ROUNDS: usize = 40;
const ROUND_TIME: Duration = Duration::from_millis(4);

type Variant<'a> = (String, Box<dyn FnMut() + 'a>);

/// Fastest per-call time of each variant over interleaved rounds.
/// Seconds per call.
fn race(variants: &mut [Variant<'_>]) -> Vec<f64> {
    let mut iters = Vec::new();
    for (_, f) in variants.iter_mut() {
        let t = Instant::now();
        let mut n = 0u32;
        while t.elapsed() < ROUND_TIME / 4 {
            f();
            n += 1;
        }
        iters.push((n * 4).max(1));
    }
    let mut best = vec![f64::MAX; variants.len()];
    for _ in 0..ROUNDS {
        for (i, (_, f)) in variants.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..iters[i] {
                f();
            }
            best[i] = best[i].min(t.elapsed().as_secs_f64() / f64::from(iters[i]));
        }
    }
    best
}

fn report(title: &str, size: usize, label: &str, variants: &mut [Variant<'_>], base: &str) {
    let best = race(variants);
    let gib = |secs: f64| size as f64 / secs / (1u64 << 30) as f64;
    let base_i = variants.iter().position(|(n, _)| n == base).unwrap_or(0);
    for (i, (name, _)) in variants.iter().enumerate() {
        println!(
            "| {title} | {label} | {name} | {:.1} | {:.2}× |",
            gib(best[i]),
            best[base_i] / best[i]
        );
    }
}

fn text(pattern: &str, len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len);
    'fill: loop {
        for ch in pattern.chars() {
            if s.len() + ch.len_utf8() > len {
                break 'fill;
            }
            s.push(ch);
        }
    }
    while s.len() < len {
        s.push(' ');
    }
    s.into_bytes()
}

fn main() {
    println!("| group | size | variant | GiB/s (best round) | ratio to baseline |");
    println!("|---|---|---|---:|---:|");
    for (size, label) in SIZES {
        let src = vec![0xa5u8; size];
        let mut dst = vec![0u8; size];
        let mut storage = vec![0x5au8; size + 128];
        let start = (64 - (storage.as_ptr() as usize & 63)) % 64 + 8;
        let buf = std::cell::RefCell::new(&mut storage[start..start + size]);
        let mut variants: Vec<Variant<'_>> = vec![
            (
                "copy_from_slice".into(),
                Box::new(|| black_box(&mut dst[..]).copy_from_slice(black_box(&src))),
            ),
            (
                "unmask".into(),
                Box::new(|| unmask(black_box(&mut buf.borrow_mut()), [1, 2, 3, 4], 1)),
            ),
        ];
        for k in available_kernels() {
            let buf = &buf;
            variants.push((
                k.name().into(),
                Box::new(move || {
                    let _ = unmask_with(k, black_box(&mut buf.borrow_mut()), [1, 2, 3, 4], 1);
                }),
            ));
        }
        report("unmask", size, label, &mut variants, "copy_from_slice");
    }
    for (group, pattern) in [
        (
            "utf8_ascii",
            "The quick brown fox jumps over the lazy dog; {\"id\": 12345}\n",
        ),
        (
            "utf8_mixed",
            "Grüße, κόσμε! Привет, мир. 日本語のテキスト 😀🎉 naïve café €12 — ok\n",
        ),
    ] {
        for (size, label) in SIZES {
            let msg = text(pattern, size);
            let m = &msg;
            let mut variants: Vec<Variant<'_>> = vec![
                (
                    "simdutf8_basic".into(),
                    Box::new(move || {
                        black_box(simdutf8::basic::from_utf8(black_box(m)).is_ok());
                    }),
                ),
                (
                    "simdutf8_basic_4KiB_chunks".into(),
                    Box::new(move || {
                        // Every chunk, whatever the verdict: cuts split code points.
                        for c in black_box(m).chunks(4096) {
                            black_box(simdutf8::basic::from_utf8(c).is_ok());
                        }
                    }),
                ),
                (
                    "validate_utf8".into(),
                    Box::new(move || {
                        black_box(validate_utf8(black_box(m)).is_ok());
                    }),
                ),
                (
                    "stream_1_chunk".into(),
                    Box::new(move || {
                        let mut v = Utf8Validator::new();
                        black_box(v.feed(black_box(m)).is_ok() && v.finish().is_ok());
                    }),
                ),
                (
                    "stream_4KiB_chunks".into(),
                    Box::new(move || {
                        let mut v = Utf8Validator::new();
                        let ok = black_box(m).chunks(4096).all(|c| v.feed(c).is_ok());
                        black_box(ok && v.finish().is_ok());
                    }),
                ),
            ];
            report(group, size, label, &mut variants, "simdutf8_basic");
        }
    }
}
