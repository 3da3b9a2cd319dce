//! aarch64 NEON kernel.
//!
//! NEON (Advanced SIMD) is part of the aarch64 base architecture that Rust targets, so it is
//! always available there; it is still detected at run time like the x86 features. The key is
//! rotated by the caller so it applies from `buf[0]`; every step is a multiple of 4 bytes.
#![allow(unsafe_code)]

use core::arch::aarch64::*;

use super::{unmask_u64, Kernel, UnmaskFn};

/// The entry point of an aarch64 `kernel`, or `None` when this CPU lacks its feature.
pub(super) fn kernel_fn(kernel: Kernel) -> Option<UnmaskFn> {
    match kernel {
        Kernel::Neon if std::arch::is_aarch64_feature_detected!("neon") => Some(neon),
        _ => None,
    }
}

fn neon(buf: &mut [u8], key: [u8; 4]) {
    // SAFETY: `kernel_fn` hands out this function only after detecting NEON at run time.
    unsafe { unmask_neon(buf, key) }
}

/// NEON: 64 bytes per iteration in four registers, then 16 at a time, then the `u64` tail.
///
/// # Safety
/// The CPU must support NEON (every aarch64 CPU Rust targets does).
#[target_feature(enable = "neon")]
unsafe fn unmask_neon(buf: &mut [u8], key: [u8; 4]) {
    let k = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_ne_bytes(key)));
    let len = buf.len();
    let p = buf.as_mut_ptr();
    let mut i = 0;
    while i + 64 <= len {
        // SAFETY: `i + 64 <= len`, so the four 16-byte loads and stores stay inside `buf`;
        // `vld1q_u8`/`vst1q_u8` need only byte alignment.
        unsafe {
            let a = vld1q_u8(p.add(i));
            let b = vld1q_u8(p.add(i + 16));
            let c = vld1q_u8(p.add(i + 32));
            let d = vld1q_u8(p.add(i + 48));
            vst1q_u8(p.add(i), veorq_u8(a, k));
            vst1q_u8(p.add(i + 16), veorq_u8(b, k));
            vst1q_u8(p.add(i + 32), veorq_u8(c, k));
            vst1q_u8(p.add(i + 48), veorq_u8(d, k));
        }
        i += 64;
    }
    while i + 16 <= len {
        // SAFETY: `i + 16 <= len`: one 16-byte access inside `buf`.
        unsafe {
            let a = vld1q_u8(p.add(i));
            vst1q_u8(p.add(i), veorq_u8(a, k));
        }
        i += 16;
    }
    unmask_u64(&mut buf[i..], key);
}
