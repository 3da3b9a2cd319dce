//! Giving memory back after a burst. A storm of connections that die holding partial messages
//! frees many large buffers at once; the allocator keeps freed memory for reuse (glibc keeps it
//! in its arenas, and pages pinned by a few live objects among freed ones stay resident), so
//! RSS would stay at the storm's level. After frees of at least [`TRIM_FREED_BYTES`] within
//! [`TRIM_FREED_WINDOW`] (a burst, not the churn of a steady load: trimming that would only
//! give back pages the next connections fault in again) the shard trims, at most once per
//! [`TRIM_INTERVAL`]: it frees its stock of send-queue storage, the slab's table if no
//! connection is left, and asks the allocator to return free pages to the system
//! (`malloc_trim`). While the buffer pool of large message buffers (or the stock of large send
//! buffers) holds anything the shard wakes every [`TRIM_INTERVAL`] to look at it; a receive
//! pool that no message used for [`POOL_IDLE_LOOKS`] looks in a row is freed (large messages a
//! few seconds apart keep it, so that RSS does not follow each of them down and up again), and
//! when the pools a burst left behind are freed, the shard trims once more. The send stock is
//! trimmed at every look, busy or not: a buffer no frame took for [`STOCK_AGE_LOOKS`] looks is
//! freed, so that under a steady load the stock holds what the load of the last second or two
//! used and does not fill to its bound with buffers of sizes no frame asks for.
//!
//! Only memory that goes back to the allocator counts as freed: a dead connection's message
//! buffer that the pool keeps does not (see `Shard::finalize`). Blocks of 128 KiB or more are
//! unmapped as they are freed (`fix_malloc_thresholds`, on by default), so a trim is for the
//! free pages among smaller blocks.

use std::time::{Duration, Instant};

use slab::Slab;

use crate::io::sys::malloc_trim;
use crate::proto::Endpoint;
use crate::send_queue::QueuePool;

/// Bytes freed (by capacity, approximately) that make a trim worth its cost: a `malloc_trim`
/// walks every arena's free chunks (tens of microseconds to a millisecond on a large heap), and
/// the pages it gives back are faulted in again by whatever allocates next. 8 MiB is a burst
/// (a storm of 1,000 connections with 64 KiB partial frames frees 64 MiB); a steady load with
/// hostile clients frees a few hundred KiB a second, far from it within [`TRIM_FREED_WINDOW`],
/// and does not trim: the pages it frees are the ones its next connections take again.
pub(super) const TRIM_FREED_BYTES: usize = 8 << 20;

/// Frees count towards [`TRIM_FREED_BYTES`] for this long: past it without a trim, the count
/// starts again (the steady churn of a long run adds up to any figure; a burst frees its
/// megabytes within a second or two).
pub(super) const TRIM_FREED_WINDOW: Duration = Duration::from_secs(5);

/// Least time between two trims, and how often an unused buffer pool is looked at.
pub(super) const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Looks ([`TRIM_INTERVAL`] apart) in a row that must find the buffer pool unused before it
/// is freed.
pub(super) const POOL_IDLE_LOOKS: u8 = 5;

/// Looks a large send buffer may sit in the send stock untaken before it is freed: a buffer
/// given back is freed at the second look after, if no frame took it in between (1 to 2 s).
/// A steady load takes the buffers it needs again within milliseconds; what it leaves for a
/// second is surplus (frames in flight at a peak, or sizes no frame asks for), and kept for
/// longer it would only pin heap pages among the buffers that come and go.
pub(super) const STOCK_AGE_LOOKS: u32 = 2;

/// What the shard knows about memory it could give back.
#[derive(Debug, Default)]
pub(super) struct MemoryTrim {
    /// Bytes freed since the last trim, or since `window_end - TRIM_FREED_WINDOW`.
    freed: usize,
    /// Bytes freed since the last end of turn (added to `freed` there).
    just_freed: usize,
    /// When `freed` starts again unless it reached [`TRIM_FREED_BYTES`].
    window_end: Option<Instant>,
    /// When the next trim is due (`None`: nothing to do).
    at: Option<Instant>,
    /// When the last one ran.
    last: Option<Instant>,
    /// A burst's trim found the buffer pool in use: trim again once it is freed.
    after_burst: bool,
    /// Looks in a row that found the buffer pool unused.
    pool_idle: u8,
}

impl MemoryTrim {
    /// `bytes` of heap memory were freed (a dead connection's buffers).
    pub(super) fn freed(&mut self, bytes: usize) {
        self.just_freed += bytes;
    }

    /// When the loop must wake for a trim.
    pub(super) fn due(&self) -> Option<Instant> {
        self.at
    }
}

impl MemoryTrim {
    /// End of a loop turn: schedule a trim if one is worth it, run it if it is due. `ep` holds
    /// the buffer pool, `queues` the stock of send-queue storage, `slab` the connections.
    pub(super) fn end_of_turn<E>(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        queues: &mut QueuePool,
        slab: &mut Slab<E>,
    ) {
        let pool = ep.pool();
        let pooled = pool.bytes() > 0 || queues.large_bytes() > 0;
        if self.freed < TRIM_FREED_BYTES && self.window_end.is_none_or(|end| now >= end) {
            self.freed = 0;
            self.window_end = Some(now + TRIM_FREED_WINDOW);
        }
        self.freed +=
            std::mem::take(&mut self.just_freed) + pool.take_released() + queues.take_released();
        if self.at.is_none() && (self.freed >= TRIM_FREED_BYTES || pooled) {
            let earliest = self.last.map_or(now, |l| l + TRIM_INTERVAL);
            self.at = Some(earliest.max(now));
        }
        match self.at {
            Some(at) if now >= at => {}
            _ => return,
        }
        self.at = None;
        let pool = ep.pool();
        // The receive pool's own use only: frames sent keep the send stock (below), not the
        // receive pool, which would otherwise keep buffers of sizes no message takes again
        // (a fragmented message grown past 64 KiB) for as long as large frames are sent.
        self.pool_idle = if pool.take_used() {
            0
        } else {
            self.pool_idle.saturating_add(1)
        };
        let idle_drained = self.pool_idle >= POOL_IDLE_LOOKS && pool.drain() > 0;
        let aged = queues.age_large(STOCK_AGE_LOOKS);
        let pooled = pool.bytes() > 0 || queues.large_bytes() > 0;
        let drained = idle_drained || (aged > 0 && !pooled);
        self.freed += pool.take_released() + queues.take_released();
        if self.freed >= TRIM_FREED_BYTES || (drained && self.after_burst) {
            self.freed = 0;
            self.last = Some(now);
            self.after_burst = pooled;
            // What a burst of connections left: refilled by the next sends.
            queues.clear();
            if slab.is_empty() {
                *slab = Slab::new();
            }
            malloc_trim();
        }
        if pooled {
            self.at = Some(now + TRIM_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Settings;
    use crate::send_queue::SendQueue;

    #[test]
    fn a_pool_used_every_few_seconds_is_kept_one_idle_for_longer_is_freed() {
        let mut ep = Endpoint::new(Settings::default());
        let (mut queues, mut slab) = (QueuePool::default(), Slab::<()>::new());
        let mut m = MemoryTrim::default();
        let mut now = Instant::now();
        let buf = ep.pool().take(64 << 10);
        ep.pool().give(buf);
        // A message every POOL_IDLE_LOOKS - 1 looks: the pool stays.
        for round in 0..3 {
            for look in 0..POOL_IDLE_LOOKS {
                m.end_of_turn(now, &mut ep, &mut queues, &mut slab);
                assert_eq!(ep.pool().bytes(), 64 << 10, "round {round}, look {look}");
                now += TRIM_INTERVAL;
                if look + 2 == POOL_IDLE_LOOKS {
                    let buf = ep.pool().take(64 << 10);
                    ep.pool().give(buf);
                }
            }
        }
        // Then none: freed at the POOL_IDLE_LOOKS-th look in a row that found it unused.
        let mut looks = 0;
        while ep.pool().bytes() > 0 {
            assert!(m.due().is_some_and(|at| at <= now), "a look is scheduled");
            m.end_of_turn(now, &mut ep, &mut queues, &mut slab);
            now += TRIM_INTERVAL;
            looks += 1;
            assert!(
                looks <= POOL_IDLE_LOOKS + 1,
                "not freed after {looks} looks"
            );
        }
        assert!(looks >= POOL_IDLE_LOOKS, "freed after {looks} looks only");
    }

    /// Sends a frame of `n` bytes on `q` and writes it, as a connection's flush does.
    fn send_large(q: &mut SendQueue, queues: &mut QueuePool, n: usize) {
        q.reuse(queues);
        q.reserve_large(n, queues);
        q.push(&vec![0u8; n]);
        q.advance(n);
        q.recycle(queues);
    }

    #[test]
    fn send_stock_keeps_what_a_busy_load_takes_and_frees_the_rest() {
        let mut ep = Endpoint::new(Settings::default());
        let (mut queues, mut slab) = (QueuePool::new(4 << 20), Slab::<()>::new());
        let mut m = MemoryTrim::default();
        let mut now = Instant::now();
        let mut q = SendQueue::default();
        // A burst left a 200 KiB buffer in the stock; then 16 KiB frames every second, and
        // large messages coming in: both pools are in use at every look.
        send_large(&mut q, &mut queues, 200 << 10);
        let mut looks = 0;
        while queues.large_bytes() > 16 << 10 || looks == 0 {
            send_large(&mut q, &mut queues, 16 << 10);
            let buf = ep.pool().take(64 << 10);
            ep.pool().give(buf);
            let freed = m.freed;
            m.end_of_turn(now, &mut ep, &mut queues, &mut slab);
            now += TRIM_INTERVAL;
            looks += 1;
            assert!(
                looks <= STOCK_AGE_LOOKS,
                "{} bytes still kept after {looks} busy looks",
                queues.large_bytes()
            );
            if queues.large_bytes() <= 16 << 10 {
                assert!(m.freed >= freed + (200 << 10), "the trim accounting saw it");
            }
        }
        // The buffer the load takes stays, and so does the busy receive pool.
        assert_eq!(queues.large_bytes(), 16 << 10);
        assert_eq!(ep.pool().bytes(), 64 << 10);
        assert_eq!(queues.take_released(), 0, "counted by the shard already");
    }

    #[test]
    fn an_unused_receive_pool_is_freed_while_large_frames_are_sent() {
        let mut ep = Endpoint::new(Settings::default());
        let (mut queues, mut slab) = (QueuePool::new(4 << 20), Slab::<()>::new());
        let mut m = MemoryTrim::default();
        let mut now = Instant::now();
        let mut q = SendQueue::default();
        // A fragmented message left a 64 KiB buffer in the receive pool that no message takes;
        // 16 KiB frames go out all the while.
        let buf = ep.pool().take(64 << 10);
        ep.pool().give(buf);
        let mut looks = 0;
        while ep.pool().bytes() > 0 {
            send_large(&mut q, &mut queues, 16 << 10);
            m.end_of_turn(now, &mut ep, &mut queues, &mut slab);
            now += TRIM_INTERVAL;
            looks += 1;
            assert!(
                looks <= POOL_IDLE_LOOKS + 1,
                "receive pool kept after {looks} looks"
            );
        }
        assert_eq!(queues.large_bytes(), 16 << 10, "the send stock is in use");
    }

    #[test]
    fn steady_frees_do_not_trim_a_burst_does() {
        let mut ep = Endpoint::new(Settings::default());
        let (mut queues, mut slab) = (QueuePool::default(), Slab::<()>::new());
        let mut m = MemoryTrim::default();
        let mut now = Instant::now();
        // 1 MiB a second for a minute: never 8 MiB within the window.
        for _ in 0..60 {
            m.freed(1 << 20);
            m.end_of_turn(now, &mut ep, &mut queues, &mut slab);
            now += Duration::from_secs(1);
        }
        assert!(m.last.is_none(), "a steady churn trimmed");
        // A burst of 8 MiB within a second: trimmed.
        for _ in 0..8 {
            m.freed(1 << 20);
            m.end_of_turn(now, &mut ep, &mut queues, &mut slab);
            now += Duration::from_millis(100);
        }
        assert!(m.last.is_some(), "a burst was not trimmed");
    }
}
