//! A hashed timer wheel for one shard's connection deadlines.
//!
//! Each entry names a connection slot (its key) and the tick it fires at, in 8 bytes. Slots are
//! `Vec`s that keep their capacity, so scheduling allocates nothing once the wheel has warmed
//! up. There is no cancellation: the connection remembers which tick its live entry fires at,
//! and an entry whose tick no longer matches (or whose slot was reused) is simply dropped when
//! it expires. Activity only stamps a time on the connection; when its entry fires the shard
//! recomputes the real deadline and schedules again if it moved (no timer churn per message).

use std::time::{Duration, Instant};

/// One scheduled deadline: 8 bytes, one per connection with a deadline (100k connections:
/// 800 KB plus the slots' spare capacity). No generation: a connection's entry is cancelled
/// when it finishes, before its slot can be reused, and the shard checks `at` against the
/// tick the connection's live entry fires at (a stale entry is dropped; a deadline checked
/// early only answers "not due").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Scheduled {
    /// Connection slot.
    pub(crate) key: u32,
    /// Tick the entry fires at.
    pub(crate) at: u32,
}

/// How many slots [`TimerWheel::next_timeout`] looks ahead.
const SCAN_SLOTS: u32 = 64;

/// A partly drained slot keeps its buffer while it holds at least a quarter of this many
/// entries (no reallocation churn for small slots).
const SLOT_MIN_CAPACITY: usize = 8;

/// The wheel. Ticks count from the wheel's creation.
pub(crate) struct TimerWheel {
    slots: Box<[Vec<Scheduled>]>,
    start: Instant,
    tick: Duration,
    /// Every tick `<= now` has been processed.
    now: u32,
    len: usize,
    /// `tick` in nanoseconds (tick arithmetic in `u64`, not `u128`).
    tick_ns: u64,
    /// The last scan of [`TimerWheel::next_timeout`]: `(now, ahead)`. Still right while `now`
    /// has not moved and nothing was scheduled since (entries leave slots only when `now`
    /// moves past them), so the scan runs once per tick instead of once per loop turn.
    scanned: Option<(u32, u32)>,
}

impl TimerWheel {
    /// A wheel with `slots` slots (rounded up to a power of two) of `tick` each.
    pub(crate) fn new(start: Instant, tick: Duration, slots: usize) -> Self {
        let n = slots.max(2).next_power_of_two();
        Self {
            slots: (0..n).map(|_| Vec::new()).collect(),
            start,
            tick: tick.max(Duration::from_micros(100)),
            now: 0,
            len: 0,
            tick_ns: tick.max(Duration::from_micros(100)).as_nanos() as u64,
            scanned: None,
        }
    }

    /// The tick containing `t` (rounded down).
    pub(crate) fn tick_of(&self, t: Instant) -> u32 {
        self.tick_at(t.saturating_duration_since(self.start))
    }

    /// The tick containing the instant `d` after the wheel's start (rounded down).
    #[inline]
    pub(crate) fn tick_at(&self, d: Duration) -> u32 {
        // u64 nanoseconds cover 584 years of uptime.
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        (ns / self.tick_ns).min(u64::from(u32::MAX)) as u32
    }

    /// Number of ticks covering `d`, rounded up (a deadline never fires early).
    pub(crate) fn ticks(&self, d: Duration) -> u32 {
        d.as_nanos()
            .div_ceil(self.tick.as_nanos())
            .min(u32::MAX as u128 / 2) as u32
    }

    /// Entries scheduled (live or stale).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Entries the slots have room for (their buffers' total capacity).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.slots.iter().map(Vec::capacity).sum()
    }

    /// Schedule `key` at tick `at` (at the next tick if `at` has passed). Returns the tick it
    /// will actually fire at.
    pub(crate) fn schedule(&mut self, key: u32, at: u32) -> u32 {
        let at = at.max(self.now.saturating_add(1));
        self.scanned = None;
        let mask = self.slots.len() - 1;
        self.slots[at as usize & mask].push(Scheduled { key, at });
        self.len += 1;
        at
    }

    /// Remove the entry of `key` scheduled at tick `at` (a connection that is gone:
    /// its entry would otherwise sit in the wheel, stale, until its tick). An emptied slot gives
    /// its buffer back.
    pub(crate) fn cancel(&mut self, key: u32, at: u32) {
        let mask = self.slots.len() - 1;
        let slot = &mut self.slots[at as usize & mask];
        let found = slot.iter().position(|e| e.key == key && e.at == at);
        if let Some(i) = found {
            slot.swap_remove(i);
            self.len -= 1;
            self.scanned = None;
            if slot.is_empty() {
                *slot = Vec::new();
            }
        }
    }

    /// Process every tick up to the one containing `now`, appending the entries that expired
    /// to `out`.
    pub(crate) fn advance(&mut self, now: Instant, out: &mut Vec<Scheduled>) {
        let target = self.tick_of(now);
        if self.len == 0 {
            self.now = self.now.max(target);
            return;
        }
        let mask = self.slots.len() - 1;
        // A full revolution visits every slot: no need to walk more ticks than that.
        let from = if target - self.now.min(target) > self.slots.len() as u32 {
            target - self.slots.len() as u32
        } else {
            self.now
        };
        let len = &mut self.len;
        for t in from + 1..=target {
            let slot = &mut self.slots[t as usize & mask];
            if slot.is_empty() {
                continue;
            }
            slot.retain(|e| {
                let due = e.at <= target;
                if due {
                    *len -= 1;
                    out.push(*e);
                }
                !due
            });
            // Keep the wheel's memory proportional to the live entries: an emptied slot gives
            // its buffer back, and one mostly drained keeps at most twice what it still holds.
            if slot.is_empty() {
                *slot = Vec::new();
            } else if slot.capacity() > 4 * slot.len().max(SLOT_MIN_CAPACITY) {
                slot.shrink_to(2 * slot.len());
            }
        }
        self.now = self.now.max(target);
    }

    /// How long until the first tick whose slot holds an entry (`None`: nothing scheduled).
    /// The entries found there may belong to a later round: the wake-up is then early, never
    /// late. Looks at most `SCAN_SLOTS` ticks ahead (it runs every loop turn), so an idle
    /// shard wakes at least every `SCAN_SLOTS` ticks while anything is scheduled.
    pub(crate) fn next_timeout(&mut self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let ahead = match self.scanned {
            Some((at, ahead)) if at == self.now => ahead,
            _ => {
                let mask = self.slots.len() - 1;
                let scan = (self.slots.len() as u32).min(SCAN_SLOTS);
                let ahead = (1..=scan)
                    .find(|d| !self.slots[(self.now.wrapping_add(*d)) as usize & mask].is_empty())
                    .unwrap_or(scan);
                self.scanned = Some((self.now, ahead));
                ahead
            }
        };
        let next = self.start + self.tick * self.now.saturating_add(ahead);
        Some(next.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel() -> (TimerWheel, Instant) {
        let t0 = Instant::now();
        (TimerWheel::new(t0, Duration::from_millis(10), 8), t0)
    }

    #[test]
    fn entry_fires_at_its_tick_and_not_before() {
        let (mut w, t0) = wheel();
        w.schedule(1, 3);
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_millis(29), &mut out);
        assert!(out.is_empty());
        w.advance(t0 + Duration::from_millis(30), &mut out);
        assert_eq!(out, vec![Scheduled { key: 1, at: 3 }]);
        assert_eq!(std::mem::size_of::<Scheduled>(), 8);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_cancelled_entry_never_fires_and_only_it_is_removed() {
        let (mut w, t0) = wheel();
        let at = w.schedule(1, 3);
        w.schedule(2, 3);
        w.cancel(1, at + 8); // another tick of the same slot: not this entry
        assert_eq!(w.len(), 2);
        w.cancel(1, at);
        assert_eq!(w.len(), 1);
        w.cancel(1, at); // already gone: nothing happens
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_millis(100), &mut out);
        assert_eq!(out.iter().map(|e| e.key).collect::<Vec<_>>(), vec![2]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn deadline_beyond_one_revolution_waits_its_rounds() {
        let (mut w, t0) = wheel();
        // 8 slots of 10 ms: tick 20 shares slot 4 with tick 4 and tick 12.
        w.schedule(1, 20);
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_millis(120), &mut out);
        assert!(out.is_empty());
        w.advance(t0 + Duration::from_millis(200), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn long_jump_fires_everything_due_once() {
        let (mut w, t0) = wheel();
        for k in 0..20 {
            w.schedule(k, k + 1);
        }
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_secs(5), &mut out);
        let mut keys: Vec<u32> = out.iter().map(|e| e.key).collect();
        keys.sort_unstable();
        assert_eq!(keys, (0..20).collect::<Vec<_>>());
        assert_eq!(w.len(), 0);
        assert!(w.next_timeout(t0).is_none());
    }

    #[test]
    fn past_deadline_is_scheduled_for_the_next_tick() {
        let (mut w, t0) = wheel();
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_millis(50), &mut out);
        assert_eq!(w.schedule(1, 2), 6);
        w.advance(t0 + Duration::from_millis(60), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn next_timeout_skips_empty_slots() {
        let (mut w, t0) = wheel();
        assert_eq!(w.next_timeout(t0), None);
        w.schedule(1, 5);
        assert_eq!(w.next_timeout(t0), Some(Duration::from_millis(50)));
        // A later round in an earlier slot: wake at that slot, early rather than late.
        w.schedule(2, 11);
        assert_eq!(w.next_timeout(t0), Some(Duration::from_millis(30)));
    }

    #[test]
    fn fired_slots_give_their_memory_back() {
        let (mut w, t0) = wheel();
        let mut out = Vec::new();
        // A burst of 10,000 deadlines in every slot, then every one fires and none is re-armed.
        for round in 0..3u32 {
            for k in 0..10_000u32 {
                w.schedule(k, round * 8 + 1 + k % 8);
            }
            out.clear();
            w.advance(
                t0 + Duration::from_millis(u64::from(round * 8 + 8) * 10),
                &mut out,
            );
            assert_eq!(out.len(), 10_000);
            assert_eq!(w.len(), 0);
            assert_eq!(
                w.capacity(),
                0,
                "round {round}: the wheel kept empty buffers"
            );
        }
        // A slot mostly drained keeps at most four times what it still holds.
        for k in 0..1000u32 {
            // Slot 1: 990 entries at tick 25, 10 a revolution later (tick 33).
            w.schedule(k, if k < 990 { 25 } else { 33 });
        }
        out.clear();
        w.advance(t0 + Duration::from_millis(250), &mut out);
        assert_eq!((out.len(), w.len()), (990, 10));
        assert!(
            w.capacity() <= 4 * 10.max(SLOT_MIN_CAPACITY),
            "{}",
            w.capacity()
        );
    }

    #[test]
    fn next_timeout_sees_entries_scheduled_or_expired_after_the_last_call() {
        let (mut w, t0) = wheel();
        w.schedule(1, 5);
        assert_eq!(w.next_timeout(t0), Some(Duration::from_millis(50)));
        w.schedule(2, 2);
        assert_eq!(w.next_timeout(t0), Some(Duration::from_millis(20)));
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_millis(20), &mut out);
        assert_eq!(out.len(), 1);
        let at = t0 + Duration::from_millis(20);
        assert_eq!(w.next_timeout(at), Some(Duration::from_millis(30)));
        w.advance(t0 + Duration::from_millis(50), &mut out);
        assert_eq!(w.next_timeout(t0 + Duration::from_millis(50)), None);
    }

    #[test]
    fn ticks_round_up_so_deadlines_never_fire_early() {
        let (w, _) = wheel();
        assert_eq!(w.ticks(Duration::from_millis(10)), 1);
        assert_eq!(w.ticks(Duration::from_millis(11)), 2);
        assert_eq!(w.ticks(Duration::ZERO), 0);
    }
}
