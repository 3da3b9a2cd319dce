//! Graceful shutdown: stop accepting, abort the handshakes in progress, send close 1001 to every
//! open connection and give the close handshakes until the shutdown deadline; past it, drop
//! whatever is left.
//!
//! The closes begin in batches, at most `shutdown_close_batch` per loop turn: each close queues
//! a frame (a send queue with its chunk list, a deadline), and a million of them queued in one
//! turn held ~630 bytes each at once and kept the shard from everything else until all were
//! queued. A batch begins only as far as the closes begun before it have been written out
//! ([`Closing::unsent`]), so the memory the closes hold at once is bounded by the batch, not by
//! the connection count. The connections waiting for their turn stay open and served; the
//! shutdown deadline ends them like the others (`drop_all`), whether or not their close began.
//! The frame itself is encoded once per shard ([`SharedClose`]): each queue holds a reference.

use std::time::Instant;

use super::ctx::Out;
use super::entry::DEAD;
#[cfg(feature = "tls")]
use super::entry::TLS;
use super::{Handler, Shard};
use crate::io::Driver;
use crate::proto::{CloseCode, SharedClose};
use crate::stats::ShardStats;

/// Where a graceful shutdown is in beginning its close handshakes.
pub(super) struct Closing {
    /// The next slab key to begin closing: every key below it has begun (or was not open).
    /// No connection joins the shard during a shutdown, so no key below it fills again.
    next: usize,
    /// Connections whose close frame was queued and may not be written out yet (at most
    /// `shutdown_close_batch`): the next batch begins only in the room they leave.
    unsent: Vec<u32>,
    /// The 1001 every connection gets, encoded once: each send queue holds a reference.
    frame: SharedClose,
}

impl<H: Handler> Shard<H> {
    pub(super) fn begin_shutdown<D: Driver>(&mut self, driver: &mut D, at: Instant) {
        if self.shutdown_at.is_some() {
            return;
        }
        self.shutdown_at = Some(at);
        driver.stop_accepting();
        // The close handshakes begun from now on may take until the shutdown deadline rather
        // than close_timeout: a large shard's replies can arrive slower than that (500,000
        // connections on two starved shards took 24 s), and a reply after close_timeout would
        // otherwise end the connection as a timeout (1006) though the peer did answer. A close
        // begun in a later batch gets the same allowance; the deadline ends it all the same.
        let left = at.saturating_duration_since(Instant::now());
        self.ep.extend_close_timeout(self.wheel.ticks(left));
        self.closing = Some(Closing {
            next: 0,
            unsent: Vec::new(),
            frame: SharedClose::new(CloseCode::GOING_AWAY, "server shutting down"),
        });
    }

    /// Begin the next batch of close handshakes of a shutdown in progress (called once per loop
    /// turn, before the flush that writes them).
    pub(super) fn close_batch(&mut self) {
        if !self.closing_has_room() {
            return;
        }
        let Some(mut closing) = self.closing.take() else {
            return;
        };
        let mut room = self
            .ctx
            .config
            .shutdown_close_batch
            .saturating_sub(closing.unsent.len());
        let end = self.slab.capacity();
        let now = self.ctx.now;
        let mut begun = 0;
        while room > 0 && closing.next < end {
            let key = closing.next;
            closing.next += 1;
            let Some(e) = self.slab.get_mut(key) else {
                continue;
            };
            if e.flags & DEAD != 0 {
                continue;
            }
            if e.conn.is_handshaking() {
                e.conn.abort();
            } else if e.conn.is_open() {
                let mut out = Out {
                    key: key as u32,
                    queue: &mut e.queue,
                    flags: &mut e.flags,
                    ctx: &mut self.ctx,
                };
                e.conn
                    .send_half()
                    .close_shared(now, &mut self.ep, &mut out, &closing.frame);
                begun += 1;
            } else {
                continue;
            }
            room -= 1;
            self.settle(key);
            if self.close_unsent(key) {
                closing.unsent.push(key as u32);
            }
        }
        if closing.next >= end {
            // All begun: nothing more to make room for.
            closing.unsent = Vec::new();
        }
        if begun > 0 {
            ShardStats::bump(&self.ctx.stats.shutdown_closes, begun);
            ShardStats::bump(&self.ctx.stats.shutdown_close_turns, 1);
        }
        self.closing = Some(closing);
    }

    /// Can a shutdown in progress begin more closes now? Forgets the closes whose frame is
    /// written out (or whose connection ended) first.
    pub(super) fn closing_has_room(&mut self) -> bool {
        let Some(mut unsent) = self.closing.as_mut().map(|c| std::mem::take(&mut c.unsent)) else {
            return false;
        };
        unsent.retain(|&k| self.close_unsent(k as usize));
        let room = unsent.len() < self.ctx.config.shutdown_close_batch;
        let Some(c) = self.closing.as_mut() else {
            return false;
        };
        c.unsent = unsent;
        room && c.next < self.slab.capacity()
    }

    /// Does a shutdown in progress have closes still to begin?
    pub(super) fn closing_waits(&self) -> bool {
        self.closing
            .as_ref()
            .is_some_and(|c| c.next < self.slab.capacity())
    }

    /// Is connection `key` live with bytes not yet written out (its send queue, or what its
    /// TLS session sealed)?
    fn close_unsent(&self, key: usize) -> bool {
        let Some(e) = self.slab.get(key) else {
            return false;
        };
        if e.flags & DEAD != 0 {
            return false;
        }
        #[cfg(feature = "tls")]
        if e.flags & TLS != 0 {
            if let Some(t) = self.tls.conns.get(e.tls().get()) {
                if !t.wire.is_empty() || t.wire.in_flight() {
                    return true;
                }
            }
        }
        !e.queue.is_empty() || e.queue.in_flight()
    }

    pub(super) fn drop_all(&mut self) {
        let keys: Vec<usize> = self
            .slab
            .iter()
            .filter(|(_, e)| e.flags & DEAD == 0)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.finalize(key);
        }
    }
}
