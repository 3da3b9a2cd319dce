//! UTF-8 validation throughput: raw `simdutf8`, `validate_utf8`, and the streaming validator
//! fed the whole message at once and in 4 KiB chunks, on ASCII and on mixed-script text,
//! next to `copy_from_slice` of the same size.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use percore_simd::{validate_utf8, Utf8Validator};

const SIZES: [(usize, &str); 3] = [(4 << 10, "4KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];

/// `len` bytes of valid UTF-8 repeating `pattern`, padded with spaces where a code point
/// would cross the end.
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

fn bench_text(c: &mut Criterion, group: &str, pattern: &str) {
    let mut g = c.benchmark_group(group);
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (size, label) in SIZES {
        let msg = text(pattern, size);
        assert!(std::str::from_utf8(&msg).is_ok());
        g.throughput(Throughput::Bytes(size as u64));
        let mut dst = vec![0u8; size];
        g.bench_function(BenchmarkId::new("copy_from_slice", label), |b| {
            b.iter(|| black_box(&mut dst[..]).copy_from_slice(black_box(&msg)))
        });
        g.bench_function(BenchmarkId::new("simdutf8_basic", label), |b| {
            b.iter(|| simdutf8::basic::from_utf8(black_box(&msg)).is_ok())
        });
        g.bench_function(BenchmarkId::new("validate_utf8", label), |b| {
            b.iter(|| validate_utf8(black_box(&msg)).is_ok())
        });
        g.bench_function(BenchmarkId::new("stream_1_chunk", label), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                v.feed(black_box(&msg)).is_ok() && v.finish().is_ok()
            })
        });
        g.bench_function(BenchmarkId::new("stream_4KiB_chunks", label), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                black_box(&msg).chunks(4096).all(|c| v.feed(c).is_ok()) && v.finish().is_ok()
            })
        });
    }
    g.finish();
}

fn bench_utf8(c: &mut Criterion) {
    bench_text(
        c,
        "utf8_ascii",
        "The quick brown fox jumps over the lazy dog; {\"id\": 12345, \"ok\": true}\n",
    );
    bench_text(
        c,
        "utf8_mixed",
        "Grüße, κόσμε! Привет, мир. 日本語のテキスト 😀🎉 naïve café €12 — ok\n",
    );
}

criterion_group!(benches, bench_utf8);
criterion_main!(benches);
