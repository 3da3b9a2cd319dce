//! Every unmasking kernel against a plain byte loop: all lengths up to 4096, all key phases,
//! unaligned starts, random keys.

use percore_simd::{available_kernels, selected_kernel, unmask, unmask_with, Kernel};
use proptest::prelude::*;

/// The definition of RFC 6455 §5.3, byte by byte.
fn reference(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

/// The lengths the exhaustive tests go through: every length up to 4096. Miri interprets every
/// instruction, so there: every length up to 96 (each kernel's main loop, steps and tail) and a
/// few past the wide kernels' alignment threshold (256) and around their block sizes.
fn lengths() -> Vec<usize> {
    if cfg!(miri) {
        (0..=96)
            .chain([127, 128, 129, 255, 256, 257, 300, 383, 511, 700])
            .collect()
    } else {
        (0..=4096).collect()
    }
}

/// The longest of [`lengths`].
fn len_max() -> usize {
    lengths().into_iter().max().unwrap_or(0)
}

/// xorshift64*: deterministic pseudo-random bytes, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn key(&mut self) -> [u8; 4] {
        (self.next() as u32).to_le_bytes()
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

/// `kernel` equals the reference for every length of [`lengths`], every offset phase (and offsets
/// past 4), on a slice that starts at a varying misalignment inside a larger buffer, leaving the
/// bytes around the slice untouched. Returns false when the CPU cannot run the kernel.
fn check_kernel(kernel: Kernel) -> bool {
    if !kernel.is_supported() {
        println!("note: {kernel} is not supported on this CPU; skipped");
        assert!(!available_kernels().contains(&kernel));
        assert!(unmask_with(kernel, &mut [0u8; 64], [1, 2, 3, 4], 0).is_err());
        return false;
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ kernel as u64);
    let mut data = vec![0u8; len_max() + 128];
    rng.fill(&mut data);
    for len in lengths() {
        for offset in [0usize, 1, 2, 3, 4 + (len & 3), 1_000_003] {
            let key = rng.key();
            let start = (len * 7 + offset) % 64;
            let mut want = data.clone();
            reference(&mut want[start..start + len], key, offset);
            let mut got = data.clone();
            unmask_with(kernel, &mut got[start..start + len], key, offset).unwrap();
            assert!(
                got == want,
                "{kernel}: len {len} offset {offset} start {start} key {key:?}"
            );
        }
    }
    true
}

macro_rules! kernel_test {
    ($name:ident, $kernel:expr) => {
        #[test]
        fn $name() {
            check_kernel($kernel);
        }
    };
}

kernel_test!(
    scalar_matches_reference_for_all_lengths_offsets_and_alignments,
    Kernel::Scalar
);
kernel_test!(
    sse2_matches_reference_for_all_lengths_offsets_and_alignments,
    Kernel::Sse2
);
kernel_test!(
    avx2_matches_reference_for_all_lengths_offsets_and_alignments,
    Kernel::Avx2
);
kernel_test!(
    avx512_matches_reference_for_all_lengths_offsets_and_alignments,
    Kernel::Avx512
);
kernel_test!(
    neon_matches_reference_for_all_lengths_offsets_and_alignments,
    Kernel::Neon
);

#[test]
fn selected_kernel_is_available_and_the_widest() {
    let avail = available_kernels();
    assert!(avail.contains(&Kernel::Scalar));
    assert!(avail.contains(&selected_kernel()));
    assert_eq!(avail.last(), Some(&selected_kernel()));
    #[cfg(target_arch = "x86_64")]
    assert!(avail.contains(&Kernel::Sse2));
    #[cfg(target_arch = "aarch64")]
    assert!(avail.contains(&Kernel::Neon));
}

#[test]
fn dispatched_unmask_matches_reference_for_all_lengths_and_offsets() {
    let mut rng = Rng(42);
    let mut data = vec![0u8; len_max() + 64];
    rng.fill(&mut data);
    for len in lengths() {
        for offset in 0..4 {
            let key = rng.key();
            let start = len % 61;
            let mut want = data.clone();
            reference(&mut want[start..start + len], key, offset);
            let mut got = data.clone();
            unmask(&mut got[start..start + len], key, offset);
            assert!(got == want, "len {len} offset {offset} start {start}");
        }
    }
}

/// Exact-size allocations, so a sanitizer run sees any access past the end of the slice.
#[test]
fn kernels_touch_nothing_outside_an_exact_size_buffer() {
    let mut rng = Rng(3);
    for kernel in available_kernels() {
        for len in lengths().into_iter().filter(|&l| l <= 600) {
            let mut data = vec![0u8; len].into_boxed_slice();
            rng.fill(&mut data);
            let key = rng.key();
            let mut want = data.clone();
            reference(&mut want, key, len);
            unmask_with(kernel, &mut data, key, len).unwrap();
            assert!(data == want, "{kernel}: len {len}");
        }
    }
}

#[test]
fn unmasking_twice_restores_the_payload() {
    let mut rng = Rng(7);
    let mut data = vec![0u8; 70_000];
    rng.fill(&mut data);
    let orig = data.clone();
    for kernel in available_kernels() {
        unmask_with(kernel, &mut data, [0xde, 0xad, 0xbe, 0xef], 5).unwrap();
        assert_ne!(data, orig, "{kernel}");
        unmask_with(kernel, &mut data, [0xde, 0xad, 0xbe, 0xef], 5).unwrap();
        assert_eq!(data, orig, "{kernel}");
    }
}

#[test]
fn unsupported_kernel_leaves_the_buffer_untouched() {
    for kernel in Kernel::ALL {
        if kernel.is_supported() {
            continue;
        }
        let mut buf = [7u8; 100];
        let err = unmask_with(kernel, &mut buf, [1, 2, 3, 4], 0).unwrap_err();
        assert_eq!(err.kernel(), kernel);
        assert_eq!(buf, [7u8; 100]);
    }
}

proptest! {
    /// A frame unmasked in pieces (as reads deliver it), each piece continuing the key where
    /// the previous one stopped, equals the frame unmasked at once, on every kernel.
    #[test]
    fn unmasking_in_pieces_equals_unmasking_at_once(
        payload in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        key in any::<[u8; 4]>(),
    ) {
        let mut want = payload.clone();
        reference(&mut want, key, 0);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (payload.len() + 1)).collect();
        cuts.push(0);
        cuts.push(payload.len());
        cuts.sort_unstable();
        for kernel in available_kernels() {
            let mut got = payload.clone();
            for w in cuts.windows(2) {
                unmask_with(kernel, &mut got[w[0]..w[1]], key, w[0]).unwrap();
            }
            prop_assert_eq!(&got, &want, "{}", kernel);
        }
        let mut got = payload.clone();
        for w in cuts.windows(2) {
            unmask(&mut got[w[0]..w[1]], key, w[0]);
        }
        prop_assert_eq!(&got, &want);
    }
}
