//! WebSocket payload unmasking (RFC 6455 §5.3) with a kernel chosen once at run time.

use std::fmt;

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Below this length [`unmask`] runs a byte loop inline instead of dispatching: a vector
/// kernel cannot win on a payload shorter than one SSE2 register.
const INLINE_LEN_MAX: usize = 16;

/// An unmasking kernel: the instruction set one implementation of [`unmask`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable code, eight bytes at a time in a `u64`.
    Scalar,
    /// x86_64 SSE2, 16 bytes per register (every x86_64 CPU has it).
    Sse2,
    /// x86_64 AVX2, 32 bytes per register.
    Avx2,
    /// x86_64 AVX-512BW, 64 bytes per register, masked loads and stores for the tail.
    Avx512,
    /// aarch64 NEON (Advanced SIMD), 16 bytes per register.
    Neon,
}

impl Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Kernel; 5] = [
        Kernel::Scalar,
        Kernel::Sse2,
        Kernel::Avx2,
        Kernel::Avx512,
        Kernel::Neon,
    ];

    /// A short lowercase name (`"avx2"`), used in bench ids and logs.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Sse2 => "sse2",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Neon => "neon",
        }
    }

    /// Whether this CPU (and this build's target architecture) can run the kernel.
    pub fn is_supported(self) -> bool {
        kernel_fn(self).is_some()
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error [`unmask_with`] returns for a kernel this CPU or target cannot run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported {
    kernel: Kernel,
}

impl Unsupported {
    /// The kernel that was asked for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unmask kernel {} is not supported on this CPU",
            self.kernel
        )
    }
}

impl std::error::Error for Unsupported {}

/// XOR `buf` with the 4-byte masking `key`, starting at key position `offset % 4`.
///
/// Masking and unmasking are the same operation. `offset` is the number of payload bytes of
/// this frame already processed, so a payload that arrives in several reads is unmasked piece
/// by piece: `unmask(&mut p[..n], key, 0); unmask(&mut p[n..], key, n)` equals
/// `unmask(&mut p, key, 0)`.
///
/// The fastest kernel the CPU supports ([`selected_kernel`]) is chosen on the first call and
/// reused; payloads shorter than 16 bytes are handled inline without dispatch.
#[inline]
pub fn unmask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    if buf.len() < INLINE_LEN_MAX {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset.wrapping_add(i)) & 3];
        }
        return;
    }
    selected().1(buf, rotate_key(key, offset));
}

/// [`unmask`] on a given kernel, for tests and benches; `Err` when the CPU cannot run it.
pub fn unmask_with(
    kernel: Kernel,
    buf: &mut [u8],
    key: [u8; 4],
    offset: usize,
) -> Result<(), Unsupported> {
    let f = kernel_fn(kernel).ok_or(Unsupported { kernel })?;
    f(buf, rotate_key(key, offset));
    Ok(())
}

/// The kernel [`unmask`] uses on this CPU: the widest one supported.
pub fn selected_kernel() -> Kernel {
    selected().0
}

/// Every kernel this CPU supports, slowest first ([`Kernel::Scalar`] is always there).
pub fn available_kernels() -> Vec<Kernel> {
    Kernel::ALL
        .into_iter()
        .filter(|k| k.is_supported())
        .collect()
}

/// A kernel entry point: XOR `buf` with `key` repeated from its first byte.
type UnmaskFn = fn(&mut [u8], [u8; 4]);

/// The kernel chosen once per process, with its entry point.
fn selected() -> (Kernel, UnmaskFn) {
    static SELECTED: std::sync::OnceLock<(Kernel, UnmaskFn)> = std::sync::OnceLock::new();
    *SELECTED.get_or_init(|| {
        Kernel::ALL
            .into_iter()
            .rev()
            .find_map(|k| kernel_fn(k).map(|f| (k, f)))
            .unwrap_or((Kernel::Scalar, unmask_u64 as UnmaskFn))
    })
}

/// The entry point of `kernel`, or `None` when this CPU or target cannot run it.
fn kernel_fn(kernel: Kernel) -> Option<UnmaskFn> {
    match kernel {
        Kernel::Scalar => Some(unmask_u64),
        #[cfg(target_arch = "x86_64")]
        Kernel::Sse2 | Kernel::Avx2 | Kernel::Avx512 => x86::kernel_fn(kernel),
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => neon::kernel_fn(kernel),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The key as it applies from the byte at `offset` on: `key[offset % 4]` first.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let s = offset & 3;
    [key[s], key[(s + 1) & 3], key[(s + 2) & 3], key[(s + 3) & 3]]
}

/// Portable kernel: eight bytes at a time in a `u64`, then the tail byte by byte.
///
/// `key` applies from `buf[0]`. Every eight-byte step is a multiple of four, so the key phase
/// of the tail is again 0.
pub(crate) fn unmask_u64(buf: &mut [u8], key: [u8; 4]) {
    let k = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ k).to_ne_bytes());
    }
    unmask_bytes(chunks.into_remainder(), key);
}

/// Plain byte loop; the reference every kernel is tested against, and the tail of the others.
#[inline]
pub(crate) fn unmask_bytes(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_key_starts_at_offset_modulo_4() {
        let k = [1, 2, 3, 4];
        assert_eq!(rotate_key(k, 0), [1, 2, 3, 4]);
        assert_eq!(rotate_key(k, 1), [2, 3, 4, 1]);
        assert_eq!(rotate_key(k, 2), [3, 4, 1, 2]);
        assert_eq!(rotate_key(k, 7), [4, 1, 2, 3]);
        assert_eq!(rotate_key(k, usize::MAX), [4, 1, 2, 3]);
    }

    #[test]
    fn u64_kernel_matches_byte_loop_for_lengths_up_to_64() {
        let key = [0x11, 0x22, 0x44, 0x88];
        for len in 0..=64 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut want = data.clone();
            unmask_bytes(&mut want, key);
            let mut got = data.clone();
            unmask_u64(&mut got, key);
            assert_eq!(got, want, "len {len}");
        }
    }

    #[test]
    fn inline_path_for_short_frames_continues_the_key_at_offset() {
        let mut b = [0u8; 15];
        unmask(&mut b, [1, 2, 3, 4], 3);
        assert_eq!(b, [4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2]);
        let mut b = [0u8; 16];
        unmask(&mut b, [1, 2, 3, 4], 3);
        assert_eq!(b, [4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3]);
    }

    #[test]
    fn kernel_names_are_distinct() {
        let mut names: Vec<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
        names.dedup();
        assert_eq!(names.len(), Kernel::ALL.len());
        assert_eq!(Kernel::Avx512.to_string(), "avx512");
    }
}
