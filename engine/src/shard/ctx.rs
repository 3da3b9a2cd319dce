//! The shard state that handler callbacks reach ([`Ctx`]), and [`Out`]: one connection's
//! output as the protocol layer writes it (its send queue, with the shard's accounting) and the
//! send-queue limit with its slow-consumer policy.

use std::io::IoSlice;
use std::os::fd::RawFd;
use std::sync::{Arc, Weak};

use super::entry::{mark_reason, Queue, DIRTY, DRAIN_WANTED};
use super::topics::Topics;
use crate::config::{Config, SlowConsumer};
use crate::counters::{self, CloseReason};
use crate::io::sys;
use crate::proto::{CloseCode, Endpoint, Output, SendHalf};
use crate::pubsub::PublishOptions;
use crate::send_queue::QueuePool;
use crate::stats::ShardStats;

/// Shard state reachable from handler callbacks (through [`crate::Conn`]).
pub(crate) struct Ctx {
    pub(crate) config: Arc<Config>,
    pub(crate) stats: Arc<ShardStats>,
    pub(crate) shard: u32,
    /// Connections whose queue changed this turn (flushed at its end).
    pub(crate) dirty: Vec<u32>,
    /// The current tick (stamped once per batch of completions).
    pub(crate) now: u32,
    /// This shard's topic table (publish/subscribe).
    pub(crate) topics: Topics,
    /// Frames to broadcast at the end of this loop turn (serialized once each).
    pub(crate) broadcasts: Vec<Arc<[u8]>>,
    /// Send-queue storage of written-out queues, for the next frames queued.
    pub(crate) pool: QueuePool,
    /// While a plain connection's received bytes are decoded: its key and socket, which a
    /// large frame may be written to at once (see [`Out::push_frame_parts`]).
    pub(crate) direct: Option<(u32, RawFd)>,
}

/// One connection's output: its send queue, plus the shard's accounting (dirty list, frames
/// counter, low-water mark). The protocol layer writes through it ([`Output`]); a TLS session
/// would sit between the two.
pub(crate) struct Out<'a> {
    pub(crate) key: u32,
    pub(crate) queue: &'a mut Queue,
    pub(crate) flags: &'a mut u16,
    pub(crate) ctx: &'a mut Ctx,
}

/// What happened to one shared frame offered to one connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Offered {
    Queued,
    Conflated,
    Dropped,
    /// The queue was full: the slow-consumer policy closed the connection.
    Closed,
    /// The connection does not take shared frames (not open, closing, or a client).
    Skipped,
}

impl Output for Out<'_> {
    #[inline]
    fn push_frame(&mut self, len_max: usize, encode: impl FnOnce(&mut Vec<u8>)) {
        counters::bump(&self.ctx.stats.metrics.messages_sent, 1);
        self.push_encoded(len_max, encode);
    }

    fn push_control(&mut self, len_max: usize, encode: impl FnOnce(&mut Vec<u8>)) {
        self.push_encoded(len_max, encode);
    }

    /// A large payload onto an empty queue while its connection's socket is at hand: header
    /// and payload go out in one vectored write, and only what the socket did not take is
    /// copied into the queue (so frames keep their order: anything pushed later follows it).
    #[inline]
    fn push_frame_parts(&mut self, header: &[u8], payload: &[u8]) {
        counters::bump(&self.ctx.stats.metrics.messages_sent, 1);
        let len = header.len() + payload.len();
        match self.ctx.direct {
            Some((key, fd))
                if key == self.key
                    && payload.len() >= self.ctx.config.send_direct_bytes_min
                    && self.queue.is_empty()
                    && !self.queue.in_flight() =>
            {
                self.push_direct(fd, header, payload)
            }
            _ => self.push_encoded(len, |v| {
                v.extend_from_slice(header);
                v.extend_from_slice(payload);
            }),
        }
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        self.queue.push(bytes);
        self.queued();
    }

    fn push_shared(&mut self, frame: &Arc<[u8]>) {
        self.queue.push_shared(frame.clone());
        ShardStats::bump(&self.ctx.stats.frames_sent, 1);
        counters::bump(&self.ctx.stats.metrics.messages_sent, 1);
        self.queued();
    }

    fn push_shared_control(&mut self, frame: &Arc<[u8]>) {
        // An idle ping or empty pong to a connection with nothing queued takes no memory of
        // the queue's (a thin reference from the stock); behind other bytes, the queue's
        // storage comes from the stock when there is some.
        self.queue.push_shared_control(frame, &mut self.ctx.pool);
        ShardStats::bump(&self.ctx.stats.frames_sent, 1);
        self.queued();
    }
}

impl Out<'_> {
    /// The same output, borrowed for a shorter time (to lend it to a callback).
    #[inline]
    pub(crate) fn reborrow(&mut self) -> Out<'_> {
        Out {
            key: self.key,
            queue: self.queue,
            flags: self.flags,
            ctx: self.ctx,
        }
    }

    /// Queue one frame `encode` writes (data or control).
    #[inline]
    fn push_encoded(&mut self, len_max: usize, encode: impl FnOnce(&mut Vec<u8>)) {
        self.queue.reuse(&mut self.ctx.pool);
        self.queue.reserve_large(len_max, &mut self.ctx.pool);
        self.queue.push_with(len_max, encode);
        ShardStats::bump(&self.ctx.stats.frames_sent, 1);
        self.queued();
    }

    /// [`Output::push_frame_parts`]'s write to the socket `fd` (the queue is empty and not in
    /// flight). A failed write queues it all: the flush meets the error and ends the
    /// connection as for any other write.
    #[inline(never)]
    fn push_direct(&mut self, fd: RawFd, header: &[u8], payload: &[u8]) {
        let stats = &self.ctx.stats;
        ShardStats::bump(&stats.frames_sent, 1);
        ShardStats::bump(&stats.frames_sent_direct, 1);
        let frame_len = header.len() + payload.len();
        let parts = [IoSlice::new(header), IoSlice::new(payload)];
        let written = sys::send_vectored_nowait(fd, &parts).unwrap_or(0);
        ShardStats::bump(&stats.bytes_sent, written as u64);
        let (header, payload) = match written.checked_sub(header.len()) {
            Some(past) => (&[][..], payload.get(past..).unwrap_or_default()),
            None => (&header[written..], payload),
        };
        let rest = header.len() + payload.len();
        if rest == 0 {
            return;
        }
        // The rest goes into a buffer sized for the whole frame, as without the direct write:
        // see `SendQueue::push_rest`.
        self.queue.reuse(&mut self.ctx.pool);
        self.queue.reserve_large(frame_len, &mut self.ctx.pool);
        // The frame's start is on the wire: the queue must never drop its rest.
        self.queue.push_rest(header, payload, frame_len);
        self.queued();
    }

    /// Bytes were queued: the queue is due for a flush, and `on_drain` once it falls below the
    /// low-water mark again (whether or not the next flush writes it all at once).
    #[inline]
    fn queued(&mut self) {
        if self.queue.len() >= self.ctx.config.send_queue_low_water_bytes {
            *self.flags |= DRAIN_WANTED;
        }
        if *self.flags & DIRTY == 0 {
            *self.flags |= DIRTY;
            self.ctx.dirty.push(self.key);
        }
    }

    /// Would `extra` more bytes take the queue past `send_queue_bytes_max`? A message always
    /// fits an empty queue (its size is bounded by the application), so one message larger than
    /// the limit still goes out; what the limit stops is a backlog.
    #[inline]
    pub(crate) fn over_limit(&self, extra: usize) -> bool {
        !self.queue.is_empty() && self.queue.len() + extra > self.ctx.config.send_queue_bytes_max
    }

    /// Apply the slow-consumer policy: drop what is queued, fail the connection with the
    /// configured code.
    pub(crate) fn slow_consumer(&mut self, half: &mut SendHalf, ep: &mut Endpoint, now: u32) {
        ShardStats::bump(&self.ctx.stats.slow_consumers, 1);
        mark_reason(self.flags, CloseReason::SlowConsumer);
        let code = match self.ctx.config.slow_consumer {
            SlowConsumer::Close1013 => CloseCode::TRY_AGAIN_LATER,
            _ => CloseCode::POLICY_VIOLATION,
        };
        // Keep a partly written frame whole: the close frame must follow a frame boundary.
        self.queue.discard_unsent();
        half.fail(now, ep, self, code, "send queue full");
    }

    /// Queue a shared frame under the send-queue limit and the publish's options. `last` is the
    /// subscriber's last conflated frame of the topic (replaced while unsent).
    pub(crate) fn offer(
        &mut self,
        half: &mut SendHalf,
        ep: &mut Endpoint,
        frame: &Arc<[u8]>,
        opts: PublishOptions,
        last: Option<&mut Option<Weak<[u8]>>>,
    ) -> Offered {
        // Outbound (client) connections mask every frame: a shared server frame is not for them.
        if !half.can_send() || half.is_client() {
            return Offered::Skipped;
        }
        let variant = half.deflated_variant(ep, frame);
        let frame = variant.as_ref().unwrap_or(frame);
        let mut last = last;
        if opts.conflate {
            if let Some(Some(w)) = last.as_deref() {
                if self.queue.replace_shared(w, frame.clone()) {
                    if let Some(l) = last.as_deref_mut() {
                        *l = Some(Arc::downgrade(frame));
                    }
                    return Offered::Conflated;
                }
            }
        }
        if self.over_limit(frame.len()) {
            if opts.droppable || opts.conflate {
                counters::bump(&self.ctx.stats.metrics.dropped_queue_full, 1);
                return Offered::Dropped;
            }
            let now = self.ctx.now;
            self.slow_consumer(half, ep, now);
            return Offered::Closed;
        }
        half.send_shared(self, frame);
        if opts.conflate {
            if let Some(l) = last {
                *l = Some(Arc::downgrade(frame));
            }
        }
        Offered::Queued
    }
}
