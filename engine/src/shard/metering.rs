//! What a shard measures about itself, beside the counters bumped where things happen: how long
//! each loop turn works, io_uring's submissions and completions per turn, the fine clock it
//! lends the protocol layer (idle-ping round trips), and the gauges it samples by sweeping its
//! slab in bounded slices (send-queue bytes, their sum and the largest queue; bytes held
//! between receives).
//!
//! # What it costs
//!
//! - **Clock reads: none added.** The loop already reads the clock at its top (for the wheel's
//!   timeout), at the first completion of a poll and after the poll (to stamp the tick). A turn
//!   runs from the first completion (or the poll's return when there is none) to the next top
//!   of the loop: both ends are instants the loop reads anyway. Each is turned into
//!   microseconds (a subtraction and a multiply-shift), and a turn is recorded into a histogram
//!   with two relaxed load+store pairs.
//! - **Sampling: bounded slices.** Walking every connection per scrape would put a scraper's
//!   cost on the shard at the scraper's rate. Instead the shard sweeps its own slab once per
//!   [`SWEEP_INTERVAL`], [`SWEEP_SLICE`] slots per loop turn (a few microseconds: two lengths
//!   read per slot), and publishes the sums when a sweep ends. While a sweep runs the loop
//!   sleeps at most [`SWEEP_WAKE`], so 100 000 connections are swept in about 25 turns; an idle
//!   shard wakes once per interval for it, and not at all when it holds no connection. The
//!   gauges are therefore up to one interval (plus a sweep) old.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use slab::Slab;

use super::entry::Entry;
use crate::counters::{self, ShardMetrics};
use crate::io::Driver;

/// Time from the end of one sweep to the start of the next.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Slab slots looked at per loop turn during a sweep.
pub(super) const SWEEP_SLICE: usize = 4096;
/// Longest sleep while a sweep is under way.
pub(super) const SWEEP_WAKE: Duration = Duration::from_millis(1);

/// The shard's own measurements (see the module docs). Times are microseconds since the
/// shard started (the timer wheel's start too, so one clock subtraction gives both the tick and
/// these).
pub(super) struct Meter {
    /// Origin of the fine clock (the timer wheel's start).
    epoch: Instant,
    /// When the current turn's work began (`None` before the first turn).
    turn_start: Option<u64>,
    /// The sweep under way, if any.
    sweep: Option<Sweep>,
    /// When the next sweep starts.
    next_sweep: u64,
    /// The last sweep published zeros (an empty slab needs no new one).
    published_zero: bool,
}

/// A sweep's position and partial sums.
#[derive(Default)]
struct Sweep {
    next: usize,
    queued: u64,
    largest: u64,
    held: u64,
}

impl Meter {
    /// A meter whose clock starts at `epoch` (the timer wheel's start).
    pub(super) fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            turn_start: None,
            sweep: None,
            next_sweep: 0,
            published_zero: true,
        }
    }

    /// Time from the shard's start to `t`.
    #[inline]
    pub(super) fn since_start(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.epoch)
    }

    /// A turn's work begins `d` after the shard's start (the first completion, or the poll's
    /// return); returns the fine clock then (microseconds, wrapping at 2^32).
    #[inline]
    pub(super) fn start_turn(&mut self, d: Duration) -> u32 {
        let us = micros(d);
        self.turn_start = Some(us);
        us as u32
    }

    /// Has the current turn begun?
    #[inline]
    pub(super) fn turn_started(&self) -> bool {
        self.turn_start.is_some()
    }

    /// The loop came back to its top, `now_us` after the shard's start: record the turn that
    /// ended, and what the driver queued and reaped during it (io_uring).
    #[inline]
    pub(super) fn end_turn<D: Driver>(&mut self, now_us: u64, driver: &mut D, m: &ShardMetrics) {
        if let Some(start) = self.turn_start.take() {
            m.loop_turn_us.record(now_us.saturating_sub(start));
        }
        if let Some((submitted, completed)) = driver.take_turn_counts() {
            m.uring_submissions.record(u64::from(submitted));
            m.uring_completions.record(u64::from(completed));
        }
    }

    /// The poll timeout, shortened so that a sweep under way goes on soon and the next one
    /// starts in time (`now_us`: the top of this turn). `holds_any`: the slab is not empty.
    #[inline]
    pub(super) fn bound_timeout(
        &self,
        now_us: u64,
        holds_any: bool,
        timeout: Option<Duration>,
    ) -> Option<Duration> {
        let wake = if self.sweep.is_some() {
            SWEEP_WAKE
        } else if holds_any || !self.published_zero {
            Duration::from_micros(self.next_sweep.saturating_sub(now_us))
        } else {
            return timeout;
        };
        Some(timeout.map_or(wake, |t| t.min(wake)))
    }
}

/// `d` in whole microseconds, in 64-bit arithmetic (`Duration::as_micros` works in 128 bits).
#[inline]
pub(super) fn micros(d: Duration) -> u64 {
    d.as_secs()
        .wrapping_mul(1_000_000)
        .wrapping_add(u64::from(d.subsec_micros()))
}

impl Meter {
    /// One slice of the sampling sweep over `slab`, when one is due or under way (see the
    /// module docs); `now_us`: this turn's time since the shard's start.
    pub(super) fn sample<S>(&mut self, now_us: u64, slab: &Slab<Entry<S>>, m: &ShardMetrics) {
        if self.sweep.is_none() {
            if now_us < self.next_sweep {
                return;
            }
            self.sweep = Some(Sweep::default());
        }
        let Some(sweep) = self.sweep.as_mut() else {
            return;
        };
        let slots = slab.capacity();
        let end = sweep.next.saturating_add(SWEEP_SLICE).min(slots);
        for key in sweep.next..end {
            if let Some(e) = slab.get(key) {
                let q = e.queue.len() as u64;
                sweep.queued += q;
                sweep.largest = sweep.largest.max(q);
                sweep.held += e.conn.held_bytes() as u64;
            }
        }
        sweep.next = end;
        if end < slots {
            return;
        }
        m.send_queue_bytes.store(sweep.queued, Ordering::Relaxed);
        m.send_queue_bytes_max
            .store(sweep.largest, Ordering::Relaxed);
        m.held_bytes.store(sweep.held, Ordering::Relaxed);
        counters::bump(&m.sweeps, 1);
        self.published_zero = sweep.queued == 0 && sweep.held == 0;
        self.sweep = None;
        self.next_sweep = now_us + SWEEP_INTERVAL.as_micros() as u64;
    }
}
