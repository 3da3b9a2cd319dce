//! The open-loop send schedule: a constant rate on a fixed timetable, independent of what the
//! server does.
//!
//! Message `k` of a thread is due at `start + k / rate`. Each message carries its *intended*
//! send time (its due time), not the time it actually left: when the thread falls behind (the
//! server stalls it, the scheduler preempts it, a burst of echoes keeps it busy), the messages
//! it owes are sent at once, each stamped with the time it should have left, so the delay shows
//! up as latency instead of silently lowering the offered rate (coordinated omission).

/// Highest rate one load thread is allowed to offer, messages per second. A message costs at
/// least one `write` system call plus the echo's read (a few µs of loopback TCP each on current
/// hardware), so a thread cannot send a million messages per second; asking for more would
/// only measure the generator.
pub const MAX_RATE_PER_THREAD: f64 = 1_000_000.0;

/// The timetable of one thread.
#[derive(Clone, Debug)]
pub struct Schedule {
    start_ns: u64,
    period_ns: f64,
    next: u64,
}

impl Schedule {
    /// Messages due every `1 / rate_per_s` seconds from `start_ns` on. `rate_per_s` must be
    /// positive and finite.
    pub fn new(start_ns: u64, rate_per_s: f64) -> Schedule {
        Schedule {
            start_ns,
            period_ns: 1e9 / rate_per_s,
            next: 0,
        }
    }

    /// Intended send time of message `k` (rounded down to a nanosecond; computed from `k`,
    /// so rounding never accumulates).
    pub fn due_ns(&self, k: u64) -> u64 {
        self.start_ns + (k as f64 * self.period_ns) as u64
    }

    /// Intended send time of the next message not yet taken.
    pub fn next_due_ns(&self) -> u64 {
        self.due_ns(self.next)
    }

    /// Messages taken so far.
    #[cfg(test)]
    pub fn taken(&self) -> u64 {
        self.next
    }

    /// If the next message is due at `now` and before `end_ns`, take it and return its
    /// intended send time. Call until None to catch up after a stall.
    pub fn take_due(&mut self, now: u64, end_ns: u64) -> Option<u64> {
        let due = self.next_due_ns();
        if due <= now && due < end_ns {
            self.next += 1;
            Some(due)
        } else {
            None
        }
    }

    /// Messages whose intended send time falls in `[start, end_ns)`.
    #[cfg(test)]
    pub fn count_before(&self, end_ns: u64) -> u64 {
        if end_ns <= self.start_ns {
            return 0;
        }
        // Smallest k with due_ns(k) >= end_ns, found from the estimate and corrected for
        // rounding.
        let mut k = ((end_ns - self.start_ns) as f64 / self.period_ns).ceil() as u64;
        while k > 0 && self.due_ns(k - 1) >= end_ns {
            k -= 1;
        }
        while self.due_ns(k) < end_ns {
            k += 1;
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_follow_the_rate_without_accumulating_rounding() {
        let s = Schedule::new(1_000, 3.0);
        assert_eq!(s.due_ns(0), 1_000);
        assert_eq!(s.due_ns(1), 1_000 + 333_333_333);
        assert_eq!(s.due_ns(2), 1_000 + 666_666_666);
        assert_eq!(s.due_ns(3), 1_000 + 1_000_000_000);
        // A period that is not a whole number of ns: message 3,000,000 is still on time.
        let s = Schedule::new(0, 300_000.0);
        assert_eq!(s.due_ns(3_000_000), 10_000_000_000);
    }

    #[test]
    fn a_stalled_thread_catches_up_with_intended_stamps_not_send_times() {
        // 1000 msg/s; the thread wakes up 100 ms late.
        let mut s = Schedule::new(0, 1000.0);
        let now = 100_500_000;
        let mut stamps = Vec::new();
        while let Some(ts) = s.take_due(now, u64::MAX) {
            stamps.push(ts);
        }
        assert_eq!(stamps.len(), 101);
        // Each owed message carries the time it should have left: its latency will include
        // the stall, as a user of the server would have seen it.
        for (k, ts) in stamps.iter().enumerate() {
            assert_eq!(*ts, k as u64 * 1_000_000);
        }
        assert_eq!(s.next_due_ns(), 101_000_000);
        assert_eq!(s.take_due(now, u64::MAX), None);
    }

    #[test]
    fn nothing_due_at_or_after_the_end_of_the_window_is_taken() {
        let mut s = Schedule::new(0, 1000.0);
        let end = 5_000_000;
        let mut n = 0;
        while s.take_due(u64::MAX, end).is_some() {
            n += 1;
        }
        assert_eq!(n, 5);
        assert_eq!(s.taken(), s.count_before(end));
    }

    #[test]
    fn count_before_matches_taking_one_by_one() {
        for (rate, end) in [
            (3.0, 1_000_000_000),
            (7.0, 999_999_999),
            (300_000.0, 10_000_000_000),
            (123_457.0, 2_000_000_001),
            (1.0, 0),
        ] {
            let mut s = Schedule::new(0, rate);
            let expect = s.count_before(end);
            let mut n = 0;
            while s.take_due(u64::MAX, end).is_some() {
                n += 1;
            }
            assert_eq!(n, expect, "rate {rate} end {end}");
        }
    }
}
