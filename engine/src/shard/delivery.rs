//! Work that reaches a shard's connections from elsewhere: its mailbox (sends, publishes and
//! broadcasts from other shards and threads, outbound connections, deferred upgrade decisions,
//! shutdown) and this turn's publishes and broadcasts by its own handlers. Delivery runs no
//! handler callback (an accepted upgrade decision does: `on_open`).

use std::sync::Arc;

use super::ctx::{Offered, Out};
use super::entry::{Entry, DEAD};
use super::mailbox::Mail;
use super::{Handler, Shard};
use crate::counters;
use crate::io::Driver;
use crate::pubsub::PublishOptions;
use crate::stats::ShardStats;

/// Mail handled per loop turn (the rest waits for the next turn, which does not block), so a
/// publish storm cannot starve the shard's sockets.
const MAIL_PER_TURN: usize = 4096;

impl<H: Handler> Shard<H> {
    /// Read the mailbox (bounded per turn).
    pub(super) fn read_mail<D: Driver>(&mut self, driver: &mut D) {
        let shard = self.ctx.shard as usize;
        self.hub.mail().clear_wake(shard);
        let mut budget = MAIL_PER_TURN;
        while budget > 0 {
            let Ok(m) = self.mail.try_recv() else {
                break;
            };
            budget -= 1;
            match m {
                Mail::Publish { topic, frame, opts } => self.deliver_topic(&topic, &frame, opts),
                Mail::Send { id, frame } => {
                    let key = id.key();
                    if !matches!(self.slab.get(key), Some(e) if e.generation == id.generation()) {
                        continue;
                    }
                    let out = self.offer(key, &frame, PublishOptions::default(), None);
                    self.ep.end_delivery();
                    let st = &self.ctx.stats;
                    match out {
                        Offered::Queued => ShardStats::bump(&st.delivered, 1),
                        Offered::Dropped => ShardStats::bump(&st.dropped, 1),
                        _ => {}
                    }
                }
                Mail::Broadcast(frame) => self.fan_out(&frame),
                Mail::Connect(out) => self.register_outbound(driver, *out),
                Mail::Decide { id, verdict } => self.decide(id, verdict),
                Mail::Shutdown(at) => self.begin_shutdown(driver, at),
            }
        }
        self.mail_backlog = budget == 0 && !self.mail.is_empty();
    }

    /// Deliver this turn's publishes and broadcasts by this shard's handlers: locally, and
    /// broadcasts through the other shards' mailboxes.
    pub(super) fn deliver_local(&mut self) {
        if self.ctx.topics.has_pending() {
            let mut batch = self.ctx.topics.take_pending();
            for p in batch.drain(..) {
                self.deliver_topic(&p.topic, &p.frame, p.opts);
            }
            self.ctx.topics.restore_pending(batch);
        }
        if self.ctx.broadcasts.is_empty() {
            return;
        }
        let frames = std::mem::take(&mut self.ctx.broadcasts);
        let shard = self.ctx.shard as usize;
        for f in &frames {
            self.fan_out(f);
            let full = self.hub.broadcast(Some(shard), f);
            ShardStats::bump(&self.ctx.stats.dropped, full);
            counters::bump(&self.ctx.stats.metrics.dropped_mailbox_full, full);
        }
    }

    /// Queue `frame` on every open accepted connection of this shard.
    fn fan_out(&mut self, frame: &Arc<[u8]>) {
        let mut closed = Vec::new();
        for (key, e) in self.slab.iter_mut() {
            if e.flags & DEAD != 0 {
                continue;
            }
            let Entry {
                conn, queue, flags, ..
            } = e;
            let mut out = Out {
                key: key as u32,
                queue,
                flags,
                ctx: &mut self.ctx,
            };
            let opts = PublishOptions::default();
            if out.offer(conn.send_half(), &mut self.ep, frame, opts, None) == Offered::Closed {
                closed.push(key);
            }
        }
        self.ep.end_delivery();
        for key in closed {
            self.settle(key);
        }
    }

    /// Queue `frame` to every local subscriber of `topic`.
    fn deliver_topic(&mut self, topic: &[u8], frame: &Arc<[u8]>, opts: PublishOptions) {
        let Some((id, mut subs)) = self.ctx.topics.take_subscribers(topic) else {
            return;
        };
        let (mut queued, mut conflated, mut dropped) = (0, 0, 0);
        for s in &mut subs {
            match self.offer(s.key as usize, frame, opts, Some(&mut s.last)) {
                Offered::Queued => queued += 1,
                Offered::Conflated => conflated += 1,
                Offered::Dropped => dropped += 1,
                Offered::Closed | Offered::Skipped => {}
            }
        }
        self.ep.end_delivery();
        self.ctx.topics.put_subscribers(id, subs);
        let st = &self.ctx.stats;
        ShardStats::bump(&st.delivered, queued);
        ShardStats::bump(&st.conflated, conflated);
        ShardStats::bump(&st.dropped, dropped);
    }

    /// Offer a shared frame to connection `key` (see [`Out::offer`]).
    fn offer(
        &mut self,
        key: usize,
        frame: &Arc<[u8]>,
        opts: PublishOptions,
        last: Option<&mut Option<std::sync::Weak<[u8]>>>,
    ) -> Offered {
        let Some(e) = self.slab.get_mut(key) else {
            return Offered::Skipped;
        };
        if e.flags & DEAD != 0 {
            return Offered::Skipped;
        }
        let Entry {
            conn, queue, flags, ..
        } = e;
        let mut out = Out {
            key: key as u32,
            queue,
            flags,
            ctx: &mut self.ctx,
        };
        let offered = out.offer(conn.send_half(), &mut self.ep, frame, opts, last);
        if offered == Offered::Closed {
            self.settle(key);
        }
        offered
    }
}
