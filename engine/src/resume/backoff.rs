//! Reconnect delays: exponential backoff with full jitter (each delay uniform in
//! `[0, min(cap, base * 2^attempt)]`), so clients dropped together come back spread out
//! instead of all at once.

use std::time::Duration;

use crate::proto::MaskRng;

/// The reconnect schedule of a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
    /// The first retry waits up to this long. Default 500 ms: 100,000 clients dropped at once
    /// come back at about 200,000 per second at worst in the first round, then half that per
    /// round while the server refuses them.
    pub base: Duration,
    /// No wait is longer than this. Default 30 s: what a client may lose after a long outage.
    pub cap: Duration,
    /// Give up after this many failed attempts in a row (`None`: never). Default `None`.
    pub attempts_max: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            attempts_max: None,
        }
    }
}

impl Backoff {
    /// A schedule with these bounds.
    pub const fn new(base: Duration, cap: Duration, attempts_max: Option<u32>) -> Self {
        Self {
            base,
            cap,
            attempts_max,
        }
    }

    /// The longest wait before retry number `attempt` (0 = the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry `attempt`: uniform in `[0, ceiling(attempt)]` (`None`: give up).
    pub fn delay(&self, attempt: u32, rng: &mut Jitter) -> Option<Duration> {
        if self.attempts_max.is_some_and(|m| attempt >= m) {
            return None;
        }
        let ceiling = self.ceiling(attempt).as_nanos() as u64;
        Some(Duration::from_nanos(rng.below(ceiling.saturating_add(1))))
    }
}

/// The random source of the jitter: SplitMix64, seeded once (no system call per delay).
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the operating system.
    pub fn from_os() -> Self {
        let mut r = MaskRng::from_os();
        let (a, b) = (r.mask(), r.mask());
        Self(u64::from(u32::from_ne_bytes(a)) << 32 | u64::from(u32::from_ne_bytes(b)))
    }

    /// Seeded with `seed` (reproducible schedules).
    pub const fn from_seed(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_backoff_grows_to_the_cap_with_full_jitter() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), None);
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        let mut rng = Jitter::from_seed(1);
        let mut low = 0;
        for _ in 0..10_000 {
            let d = b.delay(2, &mut rng).unwrap();
            assert!(d <= Duration::from_millis(400));
            low += usize::from(d < Duration::from_millis(200));
        }
        // Uniform: about half below the middle.
        assert!((4_500..5_500).contains(&low), "{low}");
    }

    #[test]
    fn resume_backoff_gives_up_after_attempts_max() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), Some(3));
        let mut rng = Jitter::from_seed(2);
        assert!(b.delay(2, &mut rng).is_some());
        assert_eq!(b.delay(3, &mut rng), None);
    }
}
