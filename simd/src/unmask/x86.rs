//! x86_64 kernels: SSE2, AVX2, AVX-512BW.
//!
//! Each is an `unsafe fn` with `#[target_feature]`: the caller must have checked that the CPU
//! has the feature (`is_x86_feature_detected!`), which `super::kernel_fn` does before handing
//! out a pointer to the safe wrapper. Loads and stores are unaligned; the key is rotated by
//! the caller so it applies from `buf[0]`, and every vector step is a multiple of 4 bytes, so
//! the same broadcast key register serves the whole buffer and the tail restarts at phase 0.
#![allow(unsafe_code)]

use core::arch::x86_64::*;

use super::{unmask_u64, Kernel, UnmaskFn};

/// The entry point of an x86_64 `kernel`, or `None` when this CPU lacks its feature.
///
/// This is the only way out of this module for the kernels below: each safe wrapper is handed
/// out only after `is_x86_feature_detected!` confirmed its feature.
pub(super) fn kernel_fn(kernel: Kernel) -> Option<UnmaskFn> {
    match kernel {
        Kernel::Sse2 if is_x86_feature_detected!("sse2") => Some(sse2),
        Kernel::Avx2 if is_x86_feature_detected!("avx2") => Some(avx2),
        Kernel::Avx512
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") =>
        {
            Some(avx512)
        }
        _ => None,
    }
}

fn sse2(buf: &mut [u8], key: [u8; 4]) {
    // SAFETY: `kernel_fn` hands out this function only after detecting SSE2 at run time.
    unsafe { unmask_sse2(buf, key) }
}

fn avx2(buf: &mut [u8], key: [u8; 4]) {
    // SAFETY: `kernel_fn` hands out this function only after detecting AVX2 at run time.
    unsafe { unmask_avx2(buf, key) }
}

fn avx512(buf: &mut [u8], key: [u8; 4]) {
    // SAFETY: `kernel_fn` hands out this function only after detecting AVX-512F and
    // AVX-512BW at run time.
    unsafe { unmask_avx512(buf, key) }
}

/// SSE2: 64 bytes per iteration in four registers, then 16 at a time, then the `u64` tail.
///
/// # Safety
/// The CPU must support SSE2 (every x86_64 CPU does).
#[target_feature(enable = "sse2")]
unsafe fn unmask_sse2(buf: &mut [u8], key: [u8; 4]) {
    let k = _mm_set1_epi32(i32::from_ne_bytes(key));
    let len = buf.len();
    let p = buf.as_mut_ptr();
    let mut i = 0;
    while i + 64 <= len {
        // SAFETY: `i + 64 <= len`, so the four 16-byte loads and stores stay inside `buf`;
        // `loadu`/`storeu` have no alignment requirement.
        unsafe {
            let a = _mm_loadu_si128(p.add(i).cast());
            let b = _mm_loadu_si128(p.add(i + 16).cast());
            let c = _mm_loadu_si128(p.add(i + 32).cast());
            let d = _mm_loadu_si128(p.add(i + 48).cast());
            _mm_storeu_si128(p.add(i).cast(), _mm_xor_si128(a, k));
            _mm_storeu_si128(p.add(i + 16).cast(), _mm_xor_si128(b, k));
            _mm_storeu_si128(p.add(i + 32).cast(), _mm_xor_si128(c, k));
            _mm_storeu_si128(p.add(i + 48).cast(), _mm_xor_si128(d, k));
        }
        i += 64;
    }
    while i + 16 <= len {
        // SAFETY: `i + 16 <= len`: one unaligned 16-byte access inside `buf`.
        unsafe {
            let a = _mm_loadu_si128(p.add(i).cast());
            _mm_storeu_si128(p.add(i).cast(), _mm_xor_si128(a, k));
        }
        i += 16;
    }
    unmask_u64(&mut buf[i..], key);
}

/// AVX2: 128 bytes per iteration in four registers, then 32 at a time, then the `u64` tail.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn unmask_avx2(buf: &mut [u8], key: [u8; 4]) {
    let k = _mm256_set1_epi32(i32::from_ne_bytes(key));
    let len = buf.len();
    let p = buf.as_mut_ptr();
    let mut i = 0;
    while i + 128 <= len {
        // SAFETY: `i + 128 <= len`, so the four 32-byte loads and stores stay inside `buf`;
        // `loadu`/`storeu` have no alignment requirement.
        unsafe {
            let a = _mm256_loadu_si256(p.add(i).cast());
            let b = _mm256_loadu_si256(p.add(i + 32).cast());
            let c = _mm256_loadu_si256(p.add(i + 64).cast());
            let d = _mm256_loadu_si256(p.add(i + 96).cast());
            _mm256_storeu_si256(p.add(i).cast(), _mm256_xor_si256(a, k));
            _mm256_storeu_si256(p.add(i + 32).cast(), _mm256_xor_si256(b, k));
            _mm256_storeu_si256(p.add(i + 64).cast(), _mm256_xor_si256(c, k));
            _mm256_storeu_si256(p.add(i + 96).cast(), _mm256_xor_si256(d, k));
        }
        i += 128;
    }
    while i + 32 <= len {
        // SAFETY: `i + 32 <= len`: one unaligned 32-byte access inside `buf`.
        unsafe {
            let a = _mm256_loadu_si256(p.add(i).cast());
            _mm256_storeu_si256(p.add(i).cast(), _mm256_xor_si256(a, k));
        }
        i += 32;
    }
    if i + 16 <= len {
        // SAFETY: `i + 16 <= len`: one unaligned 16-byte access inside `buf` (AVX2 implies SSE2).
        unsafe {
            let a = _mm_loadu_si128(p.add(i).cast());
            _mm_storeu_si128(p.add(i).cast(), _mm_xor_si128(a, _mm256_castsi256_si128(k)));
        }
        i += 16;
    }
    unmask_u64(&mut buf[i..], key);
}

/// AVX-512BW: 256 bytes per iteration in four registers, then 64 at a time, then one masked
/// load and store for the last 0..63 bytes (no scalar tail).
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn unmask_avx512(buf: &mut [u8], key: [u8; 4]) {
    let k = _mm512_set1_epi32(i32::from_ne_bytes(key));
    let len = buf.len();
    let p = buf.as_mut_ptr();
    let mut i = 0;
    while i + 256 <= len {
        // SAFETY: `i + 256 <= len`, so the four 64-byte loads and stores stay inside `buf`;
        // `loadu`/`storeu` have no alignment requirement.
        unsafe {
            let a = _mm512_loadu_si512(p.add(i).cast());
            let b = _mm512_loadu_si512(p.add(i + 64).cast());
            let c = _mm512_loadu_si512(p.add(i + 128).cast());
            let d = _mm512_loadu_si512(p.add(i + 192).cast());
            _mm512_storeu_si512(p.add(i).cast(), _mm512_xor_si512(a, k));
            _mm512_storeu_si512(p.add(i + 64).cast(), _mm512_xor_si512(b, k));
            _mm512_storeu_si512(p.add(i + 128).cast(), _mm512_xor_si512(c, k));
            _mm512_storeu_si512(p.add(i + 192).cast(), _mm512_xor_si512(d, k));
        }
        i += 256;
    }
    while i + 64 <= len {
        // SAFETY: `i + 64 <= len`: one unaligned 64-byte access inside `buf`.
        unsafe {
            let a = _mm512_loadu_si512(p.add(i).cast());
            _mm512_storeu_si512(p.add(i).cast(), _mm512_xor_si512(a, k));
        }
        i += 64;
    }
    let rem = len - i;
    if rem > 0 {
        // `rem < 64`, so the shift does not overflow; bit j selects byte `i + j`.
        let m: __mmask64 = (1u64 << rem) - 1;
        // SAFETY: the mask enables only bytes `i..len`, which are inside `buf`; masked-off
        // bytes are neither read nor written and cannot fault (AVX-512 fault suppression).
        unsafe {
            let a = _mm512_maskz_loadu_epi8(m, p.add(i).cast());
            _mm512_mask_storeu_epi8(p.add(i).cast(), m, _mm512_xor_si512(a, k));
        }
    }
}
