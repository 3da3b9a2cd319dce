//! Work that reaches a shard's connections from elsewhere: its mailbox (sends, publishes and
//! broadcasts from other shards and threads, outbound connections, deferred upgrade decisions,
//! shutdown) and this turn's publishes and broadcasts by its own handlers. Delivery runs no
//! handler callback (an accepted upgrade decision does: `on_open`).

use std::sync::Arc;

use super::ctx::{Offered, Out};
use super::entry::{Entry, DEAD};
use super::hub::lock;
use super::mailbox::Mail;
use super::topics::Subscriber;
use super::{Handler, Shard};
use crate::counters;
use crate::io::Driver;
use crate::pubsub::PublishOptions;
use crate::resume::Envelope;
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
                Mail::Publish {
                    topic,
                    frame,
                    env,
                    opts,
                } => self.deliver_topic(&topic, &frame, env.as_ref(), opts),
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
                self.deliver_topic(&p.topic, &p.frame, p.env.as_ref(), p.opts);
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

    /// Queue `frame` to every local subscriber of `topic`; with `env` (the topic has history:
    /// the position and envelope frame), the envelope to resume subscribers, each position
    /// once and in order: a position this shard delivered already is skipped, and positions
    /// it has not seen yet (a publish of this shard's own still pending, a full mailbox) are
    /// delivered first from the history.
    fn deliver_topic(
        &mut self,
        topic: &[u8],
        frame: &Arc<[u8]>,
        env: Option<&(u64, Arc<[u8]>)>,
        opts: PublishOptions,
    ) {
        let Some((id, mut subs)) = self.ctx.topics.take_subscribers(topic) else {
            return;
        };
        let mut counts = [0u64; 3];
        match env {
            None => self.offer_all(&mut subs, frame, None, opts, &mut counts),
            Some((seq, env)) => {
                let seq = *seq;
                let (history, delivered) = self.ctx.topics.history(id, seq);
                let mark = *delivered;
                if seq > mark {
                    *delivered = seq;
                }
                if seq > mark + 1 {
                    let mut missed = Vec::new();
                    if let Some(h) = &history {
                        let h = lock(h);
                        let first = h.frames_after(mark, seq - 1, &mut missed);
                        drop(h);
                        for (i, f) in missed.iter().enumerate() {
                            let at = first + i as u64;
                            if let Some(plain) = Envelope::plain_of(f) {
                                let e = Some((at, f));
                                self.offer_all(&mut subs, &plain, e, opts, &mut counts);
                            }
                        }
                    }
                }
                if seq > mark {
                    self.offer_all(&mut subs, frame, Some((seq, env)), opts, &mut counts);
                }
            }
        }
        self.ep.end_delivery();
        self.ctx.topics.put_subscribers(id, subs);
        let st = &self.ctx.stats;
        ShardStats::bump(&st.delivered, counts[0]);
        ShardStats::bump(&st.conflated, counts[1]);
        ShardStats::bump(&st.dropped, counts[2]);
    }

    /// Offer one publish to `subs`: the plain `frame`, or the envelope at its position to
    /// resume subscribers that have not had it. Counts queued, conflated, dropped.
    fn offer_all(
        &mut self,
        subs: &mut [Subscriber],
        frame: &Arc<[u8]>,
        env: Option<(u64, &Arc<[u8]>)>,
        opts: PublishOptions,
        counts: &mut [u64; 3],
    ) {
        for s in subs {
            let f = match env {
                Some((seq, env)) if s.resume => {
                    if seq <= s.from {
                        continue;
                    }
                    env
                }
                _ => frame,
            };
            match self.offer(s.key as usize, f, opts, Some(&mut s.last)) {
                Offered::Queued => counts[0] += 1,
                Offered::Conflated => counts[1] += 1,
                Offered::Dropped => counts[2] += 1,
                Offered::Closed | Offered::Skipped => {}
            }
        }
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
