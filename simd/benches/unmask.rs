//! Unmasking throughput: the dispatched `unmask`, every kernel this CPU runs, and
//! `copy_from_slice` of the same size as the memory-bandwidth yardstick.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use percore_simd::{available_kernels, selected_kernel, unmask, unmask_with};

const SIZES: [(usize, &str); 3] = [(4 << 10, "4KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn bench_unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (size, label) in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let src = vec![0xa5u8; size];
        let mut dst = vec![0u8; size];
        g.bench_function(BenchmarkId::new("copy_from_slice", label), |b| {
            b.iter(|| black_box(&mut dst[..]).copy_from_slice(black_box(&src)))
        });
        let mut buf = vec![0x5au8; size];
        let name = format!("unmask({})", selected_kernel());
        g.bench_function(BenchmarkId::new(name, label), |b| {
            b.iter(|| unmask(black_box(&mut buf[..]), black_box(KEY), black_box(1)))
        });
        for kernel in available_kernels() {
            g.bench_function(BenchmarkId::new(kernel.name(), label), |b| {
                b.iter(|| unmask_with(kernel, black_box(&mut buf[..]), black_box(KEY), 1))
            });
        }
    }
    g.finish();
}

/// Per-call cost on the frame sizes a chat or game server sees most.
fn bench_unmask_small(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask_small");
    g.measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    for size in [8usize, 125] {
        g.throughput(Throughput::Bytes(size as u64));
        let src = vec![0xa5u8; size];
        let mut dst = vec![0u8; size];
        g.bench_function(BenchmarkId::new("copy_from_slice", size), |b| {
            b.iter(|| black_box(&mut dst[..]).copy_from_slice(black_box(&src)))
        });
        let mut buf = vec![0x5au8; size];
        g.bench_function(BenchmarkId::new("unmask", size), |b| {
            b.iter(|| unmask(black_box(&mut buf[..]), black_box(KEY), black_box(1)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_unmask, bench_unmask_small);
criterion_main!(benches);
