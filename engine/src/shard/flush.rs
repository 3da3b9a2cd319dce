//! The end of a loop turn: every dirty connection's send queue written once (one `write` /
//! `writev` on epoll, one SQE on io_uring), then `on_drain` and what the protocol says to do
//! with a transport that has nothing left to send. On epoll the replies to received frames
//! have mostly left already, written during the receive ([`write_during_recv`]): the turn's
//! flush then writes only what the socket did not take and runs the steps after it.

use std::io::IoSlice;
use std::os::fd::RawFd;

use super::ctx::{Ctx, Out};
#[cfg(feature = "tls")]
use super::entry::TLS;
use super::entry::{Entry, Queue, DEAD, DIRTY, DRAIN_WANTED};
use super::{Conn, Handler, Shard};
use crate::io::{sys, Driver, Token, IOV_MAX};
use crate::proto::AfterFlush;
use crate::stats::ShardStats;

/// With a backend that [`Driver::WRITES_AT_ONCE`] (epoll), at the end of a `Recv` callback:
/// write what the received frames queued on a queue that was empty and not in flight when the
/// callback began, through the descriptor the completion lends (`fd`), as the end-of-turn
/// flush would have (one `send` of a lone chunk, else one `sendmsg`), and give the drained
/// queue's storage back to the stock at once.
///
/// Why not at the end of the turn: a turn that echoes a large message on each of N
/// connections would hold N reply buffers until then (N × 64 KiB for 64 KiB messages: past the
/// stock's bound they go back to the allocator, which trims and faults them in again every
/// turn), and write each from memory long out of cache. Written here, the reply leaves while
/// it is in cache and the next connection's reply reuses its buffer. No write is added: the
/// backend would write this queue in a call of its own anyway.
///
/// The connection stays dirty: the end-of-turn flush writes whatever the socket did not take
/// (arming writability), meets a failed write's error again and ends the connection, and in
/// any case runs what follows a flush (`on_drain`, the protocol's closing steps).
pub(super) fn write_during_recv(fd: RawFd, queue: &mut Queue, ctx: &mut Ctx) {
    let res = match queue.single_slice() {
        Some(b) => sys::send_nowait(fd, b),
        None => {
            let mut slices = [IoSlice::new(&[]); IOV_MAX];
            let n = queue.io_slices(&mut slices);
            sys::send_vectored_nowait(fd, &slices[..n])
        }
    };
    // `WouldBlock` or a failure: left to the end-of-turn flush (see above).
    let Ok(written) = res else {
        return;
    };
    queue.advance(written);
    ShardStats::bump(&ctx.stats.bytes_sent, written as u64);
    if queue.is_empty() {
        queue.recycle(&mut ctx.pool);
    }
}

impl<H: Handler> Shard<H> {
    /// Write every dirty connection's queue and act on what the writes finished.
    pub(super) fn flush<D: Driver>(&mut self, driver: &mut D) {
        // Callbacks run here (on_drain, on_close) may dirty connections again: a few rounds.
        for _ in 0..4 {
            if self.ctx.dirty.is_empty() {
                return;
            }
            let mut dirty = std::mem::take(&mut self.ctx.dirty);
            for key in dirty.drain(..) {
                self.flush_one(driver, key as usize);
            }
            if self.ctx.dirty.is_empty() {
                self.ctx.dirty = dirty;
            }
        }
    }

    fn flush_one<D: Driver>(&mut self, driver: &mut D, key: usize) {
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        #[cfg(feature = "tls")]
        if e.flags & TLS != 0 {
            self.flush_tls(driver, key);
            return;
        }
        e.flags &= !DIRTY;
        if e.flags & DEAD != 0 || e.queue.in_flight() {
            return;
        }
        if !e.queue.is_empty() {
            let before = e.queue.len();
            let res = driver.send(Token(key), &mut e.queue);
            let written = (before - e.queue.len()) as u64;
            ShardStats::bump(&self.ctx.stats.bytes_sent, written);
            if res.is_err() {
                e.conn.abort();
                self.finalize(key);
                return;
            }
        }
        // Empty and not in flight (written now, or a completion came): its storage goes back
        // to the stock (the queue keeps no heap memory).
        e.queue.recycle(&mut self.ctx.pool);
        self.after_flush(driver, key, true);
    }

    /// The end of a flush of connection `key`: `on_drain` when its queue fell below the
    /// low-water mark, and, once everything is out (the queue and, `transport_idle`, whatever
    /// the transport still holds), what the protocol says to do with the transport.
    #[inline(always)]
    pub(super) fn after_flush<D: Driver>(
        &mut self,
        driver: &mut D,
        key: usize,
        transport_idle: bool,
    ) {
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        let mut settle = false;
        if e.queue.len() >= self.ctx.config.send_queue_low_water_bytes {
            e.flags |= DRAIN_WANTED;
        } else if e.flags & DRAIN_WANTED != 0 {
            e.flags &= !DRAIN_WANTED;
            if let (true, Some(state)) = (e.conn.can_send(), e.state.as_mut()) {
                let now = self.ctx.now;
                let Entry {
                    conn,
                    queue,
                    peer,
                    generation,
                    flags,
                    ..
                } = e;
                let handler = &mut self.handler;
                Conn {
                    half: conn.send_half(),
                    ep: &mut self.ep,
                    out: Out {
                        key: key as u32,
                        queue,
                        flags,
                        ctx: &mut self.ctx,
                    },
                    state,
                    peer,
                    now,
                    generation: *generation,
                }
                .guard(|c| handler.on_drain(c));
                settle = true;
            }
        }
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        if transport_idle && e.queue.is_empty() && !e.queue.in_flight() {
            match e.conn.handle_flushed() {
                AfterFlush::Continue => {}
                AfterFlush::ShutdownWrite => {
                    driver.shutdown_write(Token(key));
                    settle = true;
                }
                _ => settle = true,
            }
        }
        if settle {
            self.settle(key);
        }
    }
}
