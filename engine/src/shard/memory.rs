//! Giving memory back after a burst. A storm of connections that die holding partial messages
//! frees many large buffers at once; the allocator keeps freed memory for reuse (glibc keeps it
//! in its arenas, and pages pinned by a few live objects among freed ones stay resident), so
//! RSS would stay at the storm's level. After frees of at least [`TRIM_FREED_BYTES`] (a burst,
//! not the churn of a steady load: trimming that would only give back pages the next
//! connections fault in again) the shard trims, at most once per [`TRIM_INTERVAL`]: it frees its
//! pool of large message buffers if no message used it since the last look, its stock of
//! send-queue storage, the slab's table if no connection is left, and asks the allocator to
//! return free pages to the system (`malloc_trim`). While the buffer pool holds anything the
//! shard wakes every [`TRIM_INTERVAL`] to look again; when the pool a burst left behind goes
//! idle and is freed, the shard trims once more.

use std::time::{Duration, Instant};

use slab::Slab;

use crate::io::sys::malloc_trim;
use crate::proto::Endpoint;
use crate::send_queue::QueuePool;

/// Bytes freed (by capacity, approximately) that make a trim worth its cost: a `malloc_trim`
/// walks every arena's free chunks (tens of microseconds to a millisecond on a large heap), and
/// the pages it gives back are faulted in again by whatever allocates next. 8 MiB is a burst
/// (a storm of 1,000 connections with 64 KiB partial frames frees 64 MiB); a steady load with
/// hostile clients frees a few hundred KiB a second and trims every few minutes.
pub(super) const TRIM_FREED_BYTES: usize = 8 << 20;

/// Least time between two trims, and how often an unused buffer pool is looked at.
pub(super) const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// What the shard knows about memory it could give back.
#[derive(Debug, Default)]
pub(super) struct MemoryTrim {
    /// Bytes freed since the last trim.
    freed: usize,
    /// When the next trim is due (`None`: nothing to do).
    at: Option<Instant>,
    /// When the last one ran.
    last: Option<Instant>,
    /// A burst's trim found the buffer pool in use: trim again once it is freed.
    after_burst: bool,
}

impl MemoryTrim {
    /// `bytes` of heap memory were freed (a dead connection's buffers).
    pub(super) fn freed(&mut self, bytes: usize) {
        self.freed += bytes;
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
        let pooled = pool.bytes() > 0;
        self.freed += pool.take_released();
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
        let drained = pool.drain_if_idle() > 0;
        let pooled = pool.bytes() > 0;
        self.freed += pool.take_released();
        if self.freed >= TRIM_FREED_BYTES || (drained && self.after_burst) {
            self.freed = 0;
            self.last = Some(now);
            self.after_burst = pooled;
            // What a burst of connections left: refilled by the next sends.
            *queues = QueuePool::default();
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
