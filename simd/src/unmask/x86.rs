//! x86_64 kernels: SSE2, AVX2, AVX-512.
//!
//! Each is an `unsafe fn` with `#[target_feature]`: the caller must have checked that the CPU
//! has the feature (`is_x86_feature_detected!`), which `super::kernel_fn` does before handing
//! out a pointer to the safe wrapper. Loads and stores are unaligned; the key is rotated by
//! the caller so it applies from `buf[0]`, and every vector step is a multiple of 4 bytes, so
//! the same broadcast key register serves the whole buffer and the tail restarts at phase 0.
#![allow(unsafe_code)]

use core::arch::x86_64::*;

use super::{rotate_key, unmask_u64, Kernel, UnmaskFn};

/// From this length on, the wide kernels first unmask a few bytes so that the main loop's
/// stores are aligned: a store that crosses a cache line costs two, and a payload after a
/// frame header rarely starts on a 32- or 64-byte boundary.
const ALIGN_FROM_LEN: usize = 256;

/// The entry point of an x86_64 `kernel`, or `None` when this CPU lacks its feature.
///
/// This is the only way out of this module for the kernels below: each safe wrapper is handed
/// out only after `is_x86_feature_detected!` confirmed its feature.
pub(super) fn kernel_fn(kernel: Kernel) -> Option<UnmaskFn> {
    match kernel {
        Kernel::Sse2 if is_x86_feature_detected!("sse2") => Some(sse2),
        Kernel::Avx2 if is_x86_feature_detected!("avx2") => Some(avx2),
        Kernel::Avx512
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx2") =>
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
    // SAFETY: `kernel_fn` hands out this function only after detecting AVX-512F and AVX2 at
    // run time.
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

/// AVX2: on long buffers first the bytes up to a 32-byte boundary, then 128 bytes per
/// iteration in four registers, then [`unmask_short_avx2`] for the rest.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn unmask_avx2(buf: &mut [u8], key: [u8; 4]) {
    let len = buf.len();
    let mut i = 0;
    let mut key = key;
    if len >= ALIGN_FROM_LEN {
        i = (32 - (buf.as_ptr() as usize & 31)) & 31;
        // SAFETY: AVX2 is enabled in this function, as the callee requires.
        unsafe { unmask_short_avx2(&mut buf[..i], key) };
        key = rotate_key(key, i);
    }
    let k = _mm256_set1_epi32(i32::from_ne_bytes(key));
    let p = buf.as_mut_ptr();
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
    // SAFETY: AVX2 is enabled in this function, as the callee requires.
    unsafe { unmask_short_avx2(&mut buf[i..], key) }
}

/// AVX2 for short pieces (heads, tails, small frames): 32 bytes at a time, then at most one
/// 16-byte step, then the `u64` tail. No masked stores: they cost more than this on AMD Zen.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn unmask_short_avx2(buf: &mut [u8], key: [u8; 4]) {
    let k = _mm256_set1_epi32(i32::from_ne_bytes(key));
    let len = buf.len();
    let p = buf.as_mut_ptr();
    let mut i = 0;
    while i + 32 <= len {
        // SAFETY: `i + 32 <= len`: one unaligned 32-byte access inside `buf`.
        unsafe {
            let a = _mm256_loadu_si256(p.add(i).cast());
            _mm256_storeu_si256(p.add(i).cast(), _mm256_xor_si256(a, k));
        }
        i += 32;
    }
    if i + 16 <= len {
        // SAFETY: `i + 16 <= len`: one unaligned 16-byte access inside `buf`.
        unsafe {
            let a = _mm_loadu_si128(p.add(i).cast());
            _mm_storeu_si128(p.add(i).cast(), _mm_xor_si128(a, _mm256_castsi256_si128(k)));
        }
        i += 16;
    }
    unmask_u64(&mut buf[i..], key);
}

/// AVX-512: on long buffers first the bytes up to a 64-byte boundary, then 256 bytes per
/// iteration in four registers, then 64 at a time, then [`unmask_short_avx2`] for the last
/// 0..63 bytes. Only AVX-512F instructions: the AVX-512BW masked byte loads and stores that
/// could do the edges were measured slower than the AVX2 edge code on AMD Zen 4.
///
/// # Safety
/// The CPU must support AVX-512F and AVX2.
#[target_feature(enable = "avx512f,avx2")]
unsafe fn unmask_avx512(buf: &mut [u8], key: [u8; 4]) {
    let len = buf.len();
    let mut i = 0;
    let mut key = key;
    if len >= ALIGN_FROM_LEN {
        i = (64 - (buf.as_ptr() as usize & 63)) & 63;
        // SAFETY: AVX2 is enabled in this function, as the callee requires.
        unsafe { unmask_short_avx2(&mut buf[..i], key) };
        key = rotate_key(key, i);
    }
    let k = _mm512_set1_epi32(i32::from_ne_bytes(key));
    let p = buf.as_mut_ptr();
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
    // SAFETY: AVX2 is enabled in this function, as the callee requires.
    unsafe { unmask_short_avx2(&mut buf[i..], key) }
}
