//! One shard's topic table: which of its connections subscribe to what, and the publishes its
//! handlers made this turn (delivered locally before the flush, see `Shard::deliver_local`).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use slab::Slab;

use super::hub::{lock, Hub, Joined, SharedHistory};
use crate::counters;
use crate::history::{Position, Resume};
use crate::proto::Message;
use crate::pubsub::{PubSubError, PublishOptions};
use crate::stats::ShardStats;

/// One subscriber of a topic.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) key: u32,
    /// The last conflated frame queued to it (compared by address to replace it while unsent).
    pub(crate) last: Option<Weak<[u8]>>,
    /// A resume subscriber: it gets the envelope frames, those after position `from` only
    /// (what it was replayed when it subscribed, it does not get again).
    pub(crate) resume: bool,
    pub(crate) from: u64,
    /// The last position it acknowledged (in the topic's current epoch).
    pub(crate) acked: Option<u64>,
}

impl Subscriber {
    fn plain(key: u32) -> Self {
        Self {
            key,
            last: None,
            resume: false,
            from: 0,
            acked: None,
        }
    }
}

/// A topic with at least one subscriber on this shard.
struct Topic {
    name: Arc<[u8]>,
    subs: Vec<Subscriber>,
    /// The topic's history, if it has one, and the last position delivered on this shard.
    history: Option<SharedHistory>,
    delivered: u64,
}

/// How a resume subscription starts (see [`crate::resume::Notice`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    Ok(Position),
    Gap(u64, Position),
    Reset(Position),
}

/// One subscription of a connection: topic id and its index in the topic's `subs`.
#[derive(Clone, Copy, Debug)]
struct Sub {
    topic: u32,
    slot: u32,
}

/// A publish from a handler on this shard, delivered to local subscribers before the flush.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) topic: Arc<[u8]>,
    pub(crate) frame: Arc<[u8]>,
    pub(crate) env: Option<(u64, Arc<[u8]>)>,
    pub(crate) opts: PublishOptions,
}

/// The shard's topic table.
pub(crate) struct Topics {
    hub: Arc<Hub>,
    shard: usize,
    stats: Arc<ShardStats>,
    by_name: HashMap<Arc<[u8]>, u32>,
    table: Slab<Topic>,
    /// Connection key -> its subscriptions.
    conns: HashMap<u32, Vec<Sub>>,
    /// Publishes made by this shard's handlers this turn.
    pending: Vec<Pending>,
}

impl Topics {
    pub(crate) fn new(hub: Arc<Hub>, shard: usize, stats: Arc<ShardStats>) -> Self {
        Self {
            hub,
            shard,
            stats,
            by_name: HashMap::new(),
            table: Slab::new(),
            conns: HashMap::new(),
            pending: Vec::new(),
        }
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Local publishes are waiting: the next poll must not block.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Take this turn's local publishes (delivery runs no callback, so none is added meanwhile).
    pub(crate) fn take_pending(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.pending)
    }

    /// Give the (drained) pending list back, keeping its allocation.
    pub(crate) fn restore_pending(&mut self, v: Vec<Pending>) {
        if self.pending.is_empty() {
            self.pending = v;
        }
    }

    /// The subscribers of `topic`, taken out of the table while they are offered a frame (no
    /// callback runs meanwhile, so the list cannot change): give them back with
    /// [`Topics::put_subscribers`].
    pub(crate) fn take_subscribers(&mut self, topic: &[u8]) -> Option<(u32, Vec<Subscriber>)> {
        let &id = self.by_name.get(topic)?;
        Some((id, std::mem::take(&mut self.table[id as usize].subs)))
    }

    /// See [`Topics::take_subscribers`].
    pub(crate) fn put_subscribers(&mut self, id: u32, subs: Vec<Subscriber>) {
        self.table[id as usize].subs = subs;
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
        if topic.len() > self.hub.topic_name_bytes_max() {
            return Err(PubSubError::TopicTooLong);
        }
        let id = self.topic_id(topic, false);
        let subs = self.conns.entry(key).or_default();
        if subs.iter().any(|s| s.topic == id) {
            return Ok(false);
        }
        let t = &mut self.table[id as usize];
        subs.push(Sub {
            topic: id,
            slot: t.subs.len() as u32,
        });
        t.subs.push(Subscriber::plain(key));
        ShardStats::bump(&self.stats.subscriptions, 1);
        Ok(true)
    }

    /// This shard's entry for `topic`, made (and the shard registered with the hub) if needed.
    /// `history`: the topic must have a history (a resume subscriber).
    fn topic_id(&mut self, topic: &[u8], history: bool) -> u32 {
        if let Some(&id) = self.by_name.get(topic) {
            let t = &mut self.table[id as usize];
            if history && t.history.is_none() {
                // Plain subscribers came first: the hub gives the topic a history now.
                let Joined { history: h, .. } = self.hub.add_shard(topic, self.shard, true);
                if let Some((h, head)) = h {
                    t.history = Some(h);
                    t.delivered = head;
                }
            }
            return id;
        }
        let Joined { name, history } = self.hub.add_shard(topic, self.shard, history);
        let (history, delivered) = match history {
            Some((h, head)) => (Some(h), head),
            None => (None, 0),
        };
        let id = self.table.insert(Topic {
            name: name.clone(),
            subs: Vec::new(),
            history,
            delivered,
        }) as u32;
        self.by_name.insert(name, id);
        id
    }

    /// Subscribe connection `key` to `topic` as a resume subscriber that last saw `from`
    /// (None: nothing, from now on). Appends the frames to replay to `replay` and says how the
    /// subscription starts; `None` if the topic can have no history (`history_topics_max`).
    /// A subscription the connection already had starts over (in its place).
    pub(crate) fn subscribe_resume(
        &mut self,
        key: u32,
        topic: &[u8],
        from: Option<Position>,
        replay: &mut Vec<Arc<[u8]>>,
    ) -> Result<Option<Start>, PubSubError> {
        if topic.len() > self.hub.topic_name_bytes_max() {
            return Err(PubSubError::TopicTooLong);
        }
        let id = self.topic_id(topic, true);
        let t = &mut self.table[id as usize];
        let Some(h) = t.history.clone() else {
            if t.subs.is_empty() {
                let t = self.table.remove(id as usize);
                self.by_name.remove(&t.name);
                self.hub.remove_shard(&t.name, self.shard);
            }
            return Ok(None);
        };
        let mut h = lock(&h);
        let verdict = h.resume(Instant::now(), from, replay);
        let (epoch, head) = (h.epoch(), h.head());
        drop(h);
        let start = match verdict {
            Resume::Whole { after } => Start::Ok(Position { epoch, seq: after }),
            Resume::Gap { first, last } => Start::Gap(first, Position { epoch, seq: last }),
            Resume::Reset { after } => Start::Reset(Position { epoch, seq: after }),
        };
        let sub = Subscriber {
            key,
            last: None,
            resume: true,
            from: head,
            acked: None,
        };
        let subs = self.conns.entry(key).or_default();
        if let Some(s) = subs.iter().find(|s| s.topic == id) {
            // Subscribed already (plain, or resuming again): the same slot starts over.
            t.subs[s.slot as usize] = sub;
            return Ok(Some(start));
        }
        subs.push(Sub {
            topic: id,
            slot: t.subs.len() as u32,
        });
        t.subs.push(sub);
        ShardStats::bump(&self.stats.subscriptions, 1);
        Ok(Some(start))
    }

    /// The resume subscriber `key` of `topic` acknowledged `pos`; false if it is not one (or
    /// the epoch is not the topic's).
    pub(crate) fn ack(&mut self, key: u32, topic: &[u8], pos: Position) -> bool {
        let Some(s) = self.subscriber(key, topic) else {
            return false;
        };
        let (t, slot) = s;
        let epoch = t.history.as_ref().map(|h| lock(h).epoch());
        if epoch != Some(pos.epoch) || !t.subs[slot].resume {
            return false;
        }
        t.subs[slot].acked = Some(pos.seq);
        true
    }

    /// The last position resume subscriber `key` of `topic` acknowledged.
    pub(crate) fn acked(&mut self, key: u32, topic: &[u8]) -> Option<Position> {
        let (t, slot) = self.subscriber(key, topic)?;
        let seq = t.subs[slot].acked?;
        let epoch = lock(t.history.as_ref()?).epoch();
        Some(Position { epoch, seq })
    }

    fn subscriber(&mut self, key: u32, topic: &[u8]) -> Option<(&mut Topic, usize)> {
        let &id = self.by_name.get(topic)?;
        let sub = self.conns.get(&key)?.iter().find(|s| s.topic == id)?;
        let slot = sub.slot as usize;
        Some((&mut self.table[id as usize], slot))
    }

    /// The history and delivery mark of local topic `id`, for the delivery of position `seq`:
    /// a topic that got its history after this shard joined it learns it now.
    pub(crate) fn history(&mut self, id: u32, seq: u64) -> (Option<SharedHistory>, &mut u64) {
        let t = &mut self.table[id as usize];
        if t.history.is_none() {
            t.history = self.hub.history_of(&t.name);
            t.delivered = seq - 1;
        }
        (t.history.clone(), &mut t.delivered)
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
        ShardStats::drop_one(&self.stats.subscriptions);
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
        if topic.len() > self.hub.topic_name_bytes_max() {
            return Err(PubSubError::TopicTooLong);
        }
        let cluster = self.hub.cluster();
        if let Some(c) = cluster {
            c.admit(msg.as_bytes().len())?;
        }
        ShardStats::bump(&self.stats.published, 1);
        let local = self.by_name.contains_key(topic);
        let routed = self.hub.route(Some(self.shard), topic, msg, opts, local);
        if let (true, Some(name), Some(frame)) = (local, routed.name, routed.frame) {
            self.pending.push(Pending {
                topic: name,
                frame,
                env: routed.env,
                opts,
            });
        }
        let remote = match cluster {
            Some(c) => c.publish(topic, msg, opts),
            None => Ok(()),
        };
        match routed.full {
            0 => remote,
            full => {
                ShardStats::bump(&self.stats.dropped, full);
                counters::bump(&self.stats.metrics.dropped_mailbox_full, full);
                Err(PubSubError::MailboxFull)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::mailbox::Mail;
    use crate::stats::Stats;
    use crossbeam_channel::Receiver;

    struct Shards {
        hub: Arc<Hub>,
        rxs: Vec<Receiver<Mail>>,
    }

    fn table_with(shards: usize, mailbox_max: usize) -> (Shards, Vec<Topics>) {
        let stats: Vec<Arc<ShardStats>> = (0..shards).map(|_| Arc::default()).collect();
        let (hub, rxs) = Hub::new(
            stats.clone(),
            Arc::default(),
            mailbox_max,
            256,
            Default::default(),
            None,
        );
        let t = (0..shards)
            .map(|i| Topics::new(hub.clone(), i, stats[i].clone()))
            .collect();
        (Shards { hub, rxs }, t)
    }

    fn table(shards: usize) -> (Shards, Vec<Topics>) {
        table_with(shards, 65_536)
    }

    fn stats(s: &Shards) -> Stats {
        s.hub.stats()
    }

    #[test]
    fn subscribe_twice_is_one_subscription() {
        let (s, mut t) = table(1);
        assert_eq!(t[0].subscribe(1, b"a"), Ok(true));
        assert_eq!(t[0].subscribe(1, b"a"), Ok(false));
        assert_eq!(t[0].subscription_count(), 1);
        assert_eq!(stats(&s).subscriptions, 1);
        assert_eq!(stats(&s).topics, 1);
    }

    #[test]
    fn last_unsubscribe_removes_the_topic_and_its_shard_bit() {
        let (s, mut t) = table(2);
        t[0].subscribe(1, b"a").unwrap();
        t[0].subscribe(2, b"a").unwrap();
        t[1].subscribe(7, b"a").unwrap();
        assert!(t[0].unsubscribe(1, b"a"));
        assert!(!t[0].unsubscribe(1, b"a"));
        assert_eq!(t[0].topic_count(), 1);
        assert!(t[0].unsubscribe(2, b"a"));
        assert_eq!(t[0].topic_count(), 0);
        // Shard 1 still subscribes: the topic stays in the shared mask.
        assert_eq!(stats(&s).topics, 1);
        t[1].remove_conn(7);
        let s = stats(&s);
        assert_eq!((s.topics, s.subscriptions), (0, 0));
    }

    #[test]
    fn removing_a_connection_fixes_the_moved_subscriber_slot() {
        let (_s, mut t) = table(1);
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
        let (_s, mut t) = table(1);
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
        let (s, mut t) = table(3);
        t[1].subscribe(1, b"a").unwrap();
        t[0].subscribe(1, b"a").unwrap();
        t[0].publish(b"a", Message::Text("hi"), PublishOptions::default())
            .unwrap();
        // Local delivery is pending on shard 0; shard 1 got one mail; shard 2 nothing.
        assert_eq!(t[0].pending.len(), 1);
        assert!(s.rxs[0].is_empty());
        assert_eq!(s.rxs[1].len(), 1);
        assert!(s.rxs[2].is_empty());
        let Ok(Mail::Publish { frame, .. }) = s.rxs[1].try_recv() else {
            panic!("expected a publish");
        };
        // Serialized once: shard 0's pending frame is the same allocation.
        assert!(Arc::ptr_eq(&frame, &t[0].pending[0].frame));
        assert_eq!(&frame[..], b"\x81\x02hi");
    }

    #[test]
    fn publish_to_a_full_mailbox_is_refused_and_counted() {
        let (s, mut t) = table_with(2, 2);
        t[1].subscribe(1, b"a").unwrap();
        for _ in 0..2 {
            t[0].publish(b"a", Message::Binary(b"x"), PublishOptions::default())
                .unwrap();
        }
        assert_eq!(
            t[0].publish(b"a", Message::Binary(b"x"), PublishOptions::default()),
            Err(PubSubError::MailboxFull)
        );
        assert_eq!(stats(&s).dropped, 1);
        assert_eq!(stats(&s).published, 3);
    }
}
