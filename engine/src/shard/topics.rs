//! One shard's topic table: which of its connections subscribe to what, local delivery of
//! publishes, and its mailbox of publishes and sends from other shards and threads.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use crossbeam_channel::Receiver;
use slab::Slab;

use crate::pubsub::{encode_shared, Hub, Inbox, PubStats, PubSubError, PublishOptions};
use crate::server::ShardStats;
use crate::{Handler, Message};

use super::{Connection, Ctx, Phase, Shard, CLIENT};

/// Mailbox messages handled per loop turn (the rest wait for the next turn, which does not
/// block), so a publish storm cannot starve the shard's sockets.
const INBOX_PER_TURN: usize = 4096;

/// One subscriber of a topic.
#[derive(Debug)]
struct Subscriber {
    key: u32,
    /// The last conflated frame queued to it (compared by address to replace it while unsent).
    last: Option<Weak<[u8]>>,
}

/// A topic with at least one subscriber on this shard.
#[derive(Debug)]
struct Topic {
    name: Arc<[u8]>,
    subs: Vec<Subscriber>,
}

/// One subscription of a connection: topic id and its index in the topic's `subs`.
#[derive(Clone, Copy, Debug)]
struct Sub {
    topic: u32,
    slot: u32,
}

/// A publish from a handler on this shard, delivered to local subscribers before the flush.
#[derive(Debug)]
struct Pending {
    topic: Arc<[u8]>,
    frame: Arc<[u8]>,
    opts: PublishOptions,
}

/// The shard's topic table.
pub(crate) struct Topics {
    hub: Arc<Hub>,
    shard: usize,
    inbox: Receiver<Inbox>,
    by_name: HashMap<Arc<[u8]>, u32>,
    table: Slab<Topic>,
    /// Connection key -> its subscriptions.
    conns: HashMap<u32, Vec<Sub>>,
    pending: Vec<Pending>,
    /// The last turn left mailbox messages unread.
    backlog: bool,
}

impl Topics {
    pub(crate) fn new(hub: Arc<Hub>, shard: usize, inbox: Receiver<Inbox>) -> Self {
        Self {
            hub,
            shard,
            inbox,
            by_name: HashMap::new(),
            table: Slab::new(),
            conns: HashMap::new(),
            pending: Vec::new(),
            // The first poll must not block: publishes may have arrived before the waker was
            // registered.
            backlog: true,
        }
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    fn stats(&self) -> &PubStats {
        self.hub.stats(self.shard)
    }

    /// Work is waiting: the next poll must not block.
    pub(crate) fn has_work(&self) -> bool {
        !self.pending.is_empty() || self.backlog
    }

    /// Topics with subscribers on this shard.
    #[cfg(test)]
    pub(crate) fn topic_count(&self) -> usize {
        self.table.len()
    }

    /// Subscriptions on this shard.
    #[cfg(test)]
    pub(crate) fn subscription_count(&self) -> usize {
        self.table.iter().map(|(_, t)| t.subs.len()).sum()
    }

    /// Subscribe connection `key` to `topic`; `Ok(false)` if it already was.
    pub(crate) fn subscribe(&mut self, key: u32, topic: &[u8]) -> Result<bool, PubSubError> {
        if topic.len() > self.hub.config().topic_name_bytes_max {
            return Err(PubSubError::TopicTooLong);
        }
        let id = match self.by_name.get(topic) {
            Some(&id) => id,
            None => {
                let name = self.hub.add_shard(topic, self.shard);
                let id = self.table.insert(Topic {
                    name: name.clone(),
                    subs: Vec::new(),
                }) as u32;
                self.by_name.insert(name, id);
                id
            }
        };
        let subs = self.conns.entry(key).or_default();
        if subs.iter().any(|s| s.topic == id) {
            return Ok(false);
        }
        let t = &mut self.table[id as usize];
        subs.push(Sub {
            topic: id,
            slot: t.subs.len() as u32,
        });
        t.subs.push(Subscriber { key, last: None });
        PubStats::bump(&self.stats().subscriptions, 1);
        Ok(true)
    }

    /// End connection `key`'s subscription to `topic`; returns whether there was one.
    pub(crate) fn unsubscribe(&mut self, key: u32, topic: &[u8]) -> bool {
        let Some(&id) = self.by_name.get(topic) else {
            return false;
        };
        let Some(subs) = self.conns.get_mut(&key) else {
            return false;
        };
        let Some(i) = subs.iter().position(|s| s.topic == id) else {
            return false;
        };
        let sub = subs.swap_remove(i);
        if subs.is_empty() {
            self.conns.remove(&key);
        }
        self.remove_slot(sub);
        true
    }

    /// Connection `key` is gone: end all its subscriptions.
    pub(crate) fn remove_conn(&mut self, key: u32) {
        if let Some(subs) = self.conns.remove(&key) {
            for sub in subs {
                self.remove_slot(sub);
            }
        }
    }

    /// Remove one subscriber entry (already removed from its connection's list).
    fn remove_slot(&mut self, sub: Sub) {
        let t = &mut self.table[sub.topic as usize];
        let slot = sub.slot as usize;
        t.subs.swap_remove(slot);
        if let Some(moved) = t.subs.get(slot) {
            // The last subscriber moved into `slot`: fix its back-reference.
            if let Some(s) = self
                .conns
                .get_mut(&moved.key)
                .and_then(|v| v.iter_mut().find(|s| s.topic == sub.topic))
            {
                s.slot = sub.slot;
            }
        }
        self.hub
            .stats(self.shard)
            .subscriptions
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if t.subs.is_empty() {
            let t = self.table.remove(sub.topic as usize);
            self.by_name.remove(&t.name);
            self.hub.remove_shard(&t.name, self.shard);
        }
    }

    /// A handler on this shard publishes: local subscribers get it before this turn's flush,
    /// the other shards through their mailboxes.
    pub(crate) fn publish(
        &mut self,
        topic: &[u8],
        msg: Message<'_>,
        opts: PublishOptions,
    ) -> Result<(), PubSubError> {
        if topic.len() > self.hub.config().topic_name_bytes_max {
            return Err(PubSubError::TopicTooLong);
        }
        PubStats::bump(&self.stats().published, 1);
        let mut encoded: Option<Arc<[u8]>> = None;
        if let Some((name, _)) = self.by_name.get_key_value(topic) {
            let frame = encoded.get_or_insert_with(|| encode_shared(msg)).clone();
            self.pending.push(Pending {
                topic: name.clone(),
                frame,
                opts,
            });
        }
        let mut frame = || encoded.get_or_insert_with(|| encode_shared(msg)).clone();
        self.hub.forward(
            Some(self.shard),
            topic,
            &mut frame,
            opts,
            self.hub.stats(self.shard),
        )
    }

    /// Forget every subscription (the shard is stopping).
    pub(crate) fn clear(&mut self) {
        let keys: Vec<u32> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key);
        }
        self.pending.clear();
    }
}

/// What happened to one frame offered to one subscriber.
enum Outcome {
    Queued,
    Conflated,
    Dropped,
    Closed,
    Skipped,
}

/// Queue `frame` to `conn` under the send-queue limit and the publish's options.
fn offer<S>(
    ctx: &mut Ctx,
    key: u32,
    conn: &mut Connection<S>,
    frame: &Arc<[u8]>,
    opts: PublishOptions,
    last: Option<&mut Option<Weak<[u8]>>>,
) -> Outcome {
    // Outbound (client) connections mask every frame: a shared server frame is not for them.
    if conn.phase != Phase::Open || !conn.close.can_send() || conn.flags & CLIENT != 0 {
        return Outcome::Skipped;
    }
    let mut last = last;
    if opts.conflate {
        if let Some(Some(w)) = last.as_deref() {
            if conn.queue.replace_shared(w, frame.clone()) {
                if let Some(l) = last.as_deref_mut() {
                    *l = Some(Arc::downgrade(frame));
                }
                return Outcome::Conflated;
            }
        }
    }
    // As for direct sends, a frame always fits an empty queue: the limit stops a backlog.
    if !conn.queue.is_empty() && conn.queue.len() + frame.len() > ctx.config.send_queue_bytes_max {
        if opts.droppable || opts.conflate {
            return Outcome::Dropped;
        }
        ctx.slow_consumer(key, conn);
        return Outcome::Closed;
    }
    conn.queue.push_shared(frame.clone());
    ShardStats::bump(&ctx.stats.frames_sent, 1);
    ctx.note_backlog(conn);
    ctx.mark_dirty(key, conn);
    if opts.conflate {
        if let Some(l) = last {
            *l = Some(Arc::downgrade(frame));
        }
    }
    Outcome::Queued
}

impl<H: Handler> Shard<H> {
    /// Deliver this turn's local publishes and read the mailbox (called before the flush).
    pub(super) fn pubsub_turn(&mut self) {
        let shard = self.ctx.topics.shard;
        self.ctx.topics.hub.clear_wake(shard);
        let mut budget = INBOX_PER_TURN;
        loop {
            if !self.ctx.topics.pending.is_empty() {
                // Delivery runs no callback, so nothing is added meanwhile: keep the allocation.
                let mut batch = std::mem::take(&mut self.ctx.topics.pending);
                for p in batch.drain(..) {
                    self.deliver_topic(&p.topic, &p.frame, p.opts);
                }
                self.ctx.topics.pending = batch;
            }
            if budget == 0 {
                break;
            }
            let Ok(m) = self.ctx.topics.inbox.try_recv() else {
                break;
            };
            budget -= 1;
            match m {
                Inbox::Publish { topic, frame, opts } => self.deliver_topic(&topic, &frame, opts),
                Inbox::Send { id, frame } => {
                    let key = id.key();
                    let Some(e) = self.slab.get_mut(key) else {
                        continue;
                    };
                    if e.conn.generation != id.generation() {
                        continue;
                    }
                    let out = offer(
                        &mut self.ctx,
                        key as u32,
                        &mut e.conn,
                        &frame,
                        PublishOptions::default(),
                        None,
                    );
                    self.count(out);
                }
            }
        }
        self.ctx.topics.backlog = budget == 0 && !self.ctx.topics.inbox.is_empty();
    }

    fn count(&self, out: Outcome) {
        let st = self.ctx.topics.hub.stats(self.ctx.topics.shard);
        match out {
            Outcome::Queued => PubStats::bump(&st.delivered, 1),
            Outcome::Conflated => PubStats::bump(&st.conflated, 1),
            Outcome::Dropped => PubStats::bump(&st.dropped, 1),
            Outcome::Closed | Outcome::Skipped => {}
        }
    }

    /// Queue `frame` to every local subscriber of `topic`.
    fn deliver_topic(&mut self, topic: &[u8], frame: &Arc<[u8]>, opts: PublishOptions) {
        let Some(&id) = self.ctx.topics.by_name.get(topic) else {
            return;
        };
        // No callback runs while offering, so the subscriber list cannot change meanwhile.
        let mut subs = std::mem::take(&mut self.ctx.topics.table[id as usize].subs);
        let (mut queued, mut conflated, mut dropped) = (0, 0, 0);
        for s in &mut subs {
            let Some(e) = self.slab.get_mut(s.key as usize) else {
                continue;
            };
            match offer(
                &mut self.ctx,
                s.key,
                &mut e.conn,
                frame,
                opts,
                Some(&mut s.last),
            ) {
                Outcome::Queued => queued += 1,
                Outcome::Conflated => conflated += 1,
                Outcome::Dropped => dropped += 1,
                Outcome::Closed | Outcome::Skipped => {}
            }
        }
        self.ctx.topics.table[id as usize].subs = subs;
        let st = self.ctx.topics.hub.stats(self.ctx.topics.shard);
        PubStats::bump(&st.delivered, queued);
        PubStats::bump(&st.conflated, conflated);
        PubStats::bump(&st.dropped, dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::PubSubConfig;

    fn table(shards: usize) -> (Arc<Hub>, Vec<Topics>) {
        let (hub, rxs) = Hub::new(shards, PubSubConfig::default());
        let t = rxs
            .into_iter()
            .enumerate()
            .map(|(i, rx)| Topics::new(hub.clone(), i, rx))
            .collect();
        (hub, t)
    }

    fn stats(hub: &Hub) -> crate::Stats {
        let mut s = crate::Stats::default();
        hub.add_to(&mut s);
        s
    }

    #[test]
    fn subscribe_twice_is_one_subscription() {
        let (hub, mut t) = table(1);
        assert_eq!(t[0].subscribe(1, b"a"), Ok(true));
        assert_eq!(t[0].subscribe(1, b"a"), Ok(false));
        assert_eq!(t[0].subscription_count(), 1);
        assert_eq!(stats(&hub).subscriptions, 1);
        assert_eq!(stats(&hub).topics, 1);
    }

    #[test]
    fn last_unsubscribe_removes_the_topic_and_its_shard_bit() {
        let (hub, mut t) = table(2);
        t[0].subscribe(1, b"a").unwrap();
        t[0].subscribe(2, b"a").unwrap();
        t[1].subscribe(7, b"a").unwrap();
        assert!(t[0].unsubscribe(1, b"a"));
        assert!(!t[0].unsubscribe(1, b"a"));
        assert_eq!(t[0].topic_count(), 1);
        assert!(t[0].unsubscribe(2, b"a"));
        assert_eq!(t[0].topic_count(), 0);
        // Shard 1 still subscribes: the topic stays in the shared mask.
        assert_eq!(stats(&hub).topics, 1);
        t[1].remove_conn(7);
        let s = stats(&hub);
        assert_eq!((s.topics, s.subscriptions), (0, 0));
    }

    #[test]
    fn removing_a_connection_fixes_the_moved_subscriber_slot() {
        let (_hub, mut t) = table(1);
        for k in 0..5 {
            t[0].subscribe(k, b"x").unwrap();
            t[0].subscribe(k, b"y").unwrap();
        }
        t[0].remove_conn(0); // subscriber 4 moves into slot 0 of both topics
        t[0].remove_conn(2);
        for k in [1, 3, 4] {
            for s in &t[0].conns[&k] {
                let topic = &t[0].table[s.topic as usize];
                assert_eq!(topic.subs[s.slot as usize].key, k);
            }
        }
        for k in [1, 3, 4] {
            t[0].remove_conn(k);
        }
        assert_eq!(t[0].topic_count(), 0);
        assert!(t[0].conns.is_empty());
    }

    #[test]
    fn topic_name_longer_than_the_limit_is_refused() {
        let (_hub, mut t) = table(1);
        let long = vec![b'a'; 257];
        assert_eq!(t[0].subscribe(1, &long), Err(PubSubError::TopicTooLong));
        assert_eq!(
            t[0].publish(&long, Message::Text("x"), PublishOptions::default()),
            Err(PubSubError::TopicTooLong)
        );
        assert_eq!(t[0].subscribe(1, &long[..256]), Ok(true));
    }

    #[test]
    fn publish_reaches_only_shards_with_subscribers() {
        let (_hub, mut t) = table(3);
        t[1].subscribe(1, b"a").unwrap();
        t[0].subscribe(1, b"a").unwrap();
        t[0].publish(b"a", Message::Text("hi"), PublishOptions::default())
            .unwrap();
        // Local delivery is pending on shard 0; shard 1 got one mail; shard 2 nothing.
        assert_eq!(t[0].pending.len(), 1);
        assert!(t[0].inbox.is_empty());
        assert_eq!(t[1].inbox.len(), 1);
        assert!(t[2].inbox.is_empty());
        let Ok(Inbox::Publish { frame, .. }) = t[1].inbox.try_recv() else {
            panic!("expected a publish");
        };
        // Serialized once: shard 0's pending frame is the same allocation.
        assert!(Arc::ptr_eq(&frame, &t[0].pending[0].frame));
        assert_eq!(&frame[..], b"\x81\x02hi");
    }

    #[test]
    fn publish_to_a_full_mailbox_is_refused_and_counted() {
        let (hub, rxs) = Hub::new(
            2,
            PubSubConfig {
                topic_name_bytes_max: 16,
                mailbox_messages_max: 2,
            },
        );
        let mut t: Vec<Topics> = rxs
            .into_iter()
            .enumerate()
            .map(|(i, rx)| Topics::new(hub.clone(), i, rx))
            .collect();
        t[1].subscribe(1, b"a").unwrap();
        for _ in 0..2 {
            t[0].publish(b"a", Message::Binary(b"x"), PublishOptions::default())
                .unwrap();
        }
        assert_eq!(
            t[0].publish(b"a", Message::Binary(b"x"), PublishOptions::default()),
            Err(PubSubError::MailboxFull)
        );
        assert_eq!(stats(&hub).dropped, 1);
        assert_eq!(stats(&hub).published, 3);
    }
}
