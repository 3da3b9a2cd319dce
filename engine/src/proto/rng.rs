//! Randomness: the operating system's for the few values made once (a client's handshake key,
//! a shard's RNG seed), and [`MaskRng`] for the masking key of every client frame.

use core::fmt;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;

/// Masking keys for client frames (RFC 6455 §5.3: "unpredictable", derived from a strong
/// source): ChaCha12 seeded once from the operating system, so no frame costs a system call.
/// One per shard ([`super::Endpoint`]); 12 rounds is what `rand`'s `StdRng` uses.
pub struct MaskRng(ChaCha12Rng);

impl MaskRng {
    /// Seeded from the operating system (one `getrandom` call).
    pub fn from_os() -> Self {
        let mut seed = [0u8; 32];
        fill_random(&mut seed);
        Self::from_seed(seed)
    }

    /// Seeded with `seed` (tests, reproducible runs).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ChaCha12Rng::from_seed(seed))
    }

    /// The next masking key. Not inlined: only clients mask, and the send path of a server
    /// (where the call sits, never taken) stays small enough to be inlined into its callers.
    #[inline(never)]
    pub fn mask(&mut self) -> [u8; 4] {
        self.0.next_u32().to_ne_bytes()
    }
}

impl fmt::Debug for MaskRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The state is the secret: never print it.
        f.write_str("MaskRng")
    }
}

/// OS randomness; if the OS source fails (it does not on Linux ≥ 3.17), std's per-process
/// random hash keys, which are also seeded from the OS, fill the buffer instead.
pub(crate) fn fill_random(out: &mut [u8]) {
    if getrandom::getrandom(out).is_ok() {
        return;
    }
    use std::hash::{BuildHasher, Hasher};
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(chunk.as_ptr() as usize);
        let v = h.finish().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}
