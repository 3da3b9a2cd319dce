//! What every thread shares about the running shards: their mailboxes, the topic directory
//! (which shards have subscribers for a topic), the link to the cluster bridge and the stop
//! flag; and [`Publisher`], the handle that publishes and sends from any thread. The pub/sub
//! model is described in [`crate::pubsub`], the cluster in `percore::cluster`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crossbeam_channel::Receiver;

use super::cluster::ClusterLink;
use super::mailbox::{Mail, Mailboxes, PostError};
use crate::id::ConnId;
use crate::proto::Message;
use crate::pubsub::{PubSubError, PublishOptions};
use crate::stats::{ShardStats, SharedStats, Stats};

/// Shared between the shards, the server handle and every [`Publisher`].
pub(crate) struct Hub {
    mail: Mailboxes,
    topic_name_bytes_max: usize,
    /// Topic -> bit mask of the shards that have subscribers for it. Written only when a shard
    /// gets its first subscriber for a topic or loses its last one.
    topics: RwLock<HashMap<Arc<[u8]>, Vec<u64>>>,
    /// Counters of publishes and drops made outside the shards.
    shared: SharedStats,
    /// Each shard's counters (written by that shard only).
    shard_stats: Vec<Arc<ShardStats>>,
    /// Connections held across all shards (what `connections_max` bounds).
    open: Arc<AtomicUsize>,
    stopped: AtomicBool,
    /// The way to the cluster bridge (always `None` without the `cluster` feature).
    cluster: Option<ClusterLink>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("shards", &self.mail.len())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub for one shard per entry of `shard_stats`, and each shard's mailbox receiver.
    pub(crate) fn new(
        shard_stats: Vec<Arc<ShardStats>>,
        open: Arc<AtomicUsize>,
        mailbox_messages_max: usize,
        topic_name_bytes_max: usize,
        cluster: Option<ClusterLink>,
    ) -> (Arc<Self>, Vec<Receiver<Mail>>) {
        let (mail, rxs) = Mailboxes::new(shard_stats.len(), mailbox_messages_max);
        let hub = Self {
            mail,
            topic_name_bytes_max,
            topics: RwLock::new(HashMap::new()),
            shared: SharedStats::default(),
            shard_stats,
            open,
            stopped: AtomicBool::new(false),
            cluster,
        };
        (Arc::new(hub), rxs)
    }

    /// Counters summed over all shards (each read with relaxed ordering: a snapshot, not an
    /// atomic cut).
    pub(crate) fn stats(&self) -> Stats {
        let mut s = Stats {
            connections_open: self.open.load(Ordering::Relaxed) as u64,
            ..Stats::default()
        };
        for st in &self.shard_stats {
            st.add_to(&mut s);
        }
        self.add_to(&mut s);
        s
    }

    /// Each shard's counters, and those of publishes and sends made outside the shards.
    pub(crate) fn counters(&self) -> (&[Arc<ShardStats>], &SharedStats) {
        (&self.shard_stats, &self.shared)
    }

    /// The shards' mailboxes.
    pub(crate) fn mail(&self) -> &Mailboxes {
        &self.mail
    }

    /// Longest topic name.
    pub(crate) fn topic_name_bytes_max(&self) -> usize {
        self.topic_name_bytes_max
    }

    /// The cluster bridge's link, if the server runs in a cluster.
    #[inline]
    pub(crate) fn cluster(&self) -> Option<&ClusterLink> {
        self.cluster.as_ref()
    }

    /// Refuse every further publish and send (shutdown).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    fn check(&self, topic: &[u8]) -> Result<(), PubSubError> {
        if topic.len() > self.topic_name_bytes_max {
            return Err(PubSubError::TopicTooLong);
        }
        if self.stopped.load(Ordering::Acquire) {
            return Err(PubSubError::Stopped);
        }
        Ok(())
    }

    /// Shard `shard` got its first subscriber for `topic`; returns the shared name to use.
    pub(crate) fn add_shard(&self, topic: &[u8], shard: usize) -> Arc<[u8]> {
        let words = self.mail.len().div_ceil(64);
        let mut map = self.topics.write().unwrap_or_else(|p| p.into_inner());
        let name = match map.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => {
                let name: Arc<[u8]> = Arc::from(topic);
                // Under the lock, so the bridge sees interest changes in the order they happen.
                if let Some(c) = &self.cluster {
                    c.interest(&name);
                }
                name
            }
        };
        map.entry(name.clone()).or_insert_with(|| vec![0; words])[shard / 64] |= 1 << (shard % 64);
        name
    }

    /// Shard `shard` lost its last subscriber for `topic`.
    pub(crate) fn remove_shard(&self, topic: &[u8], shard: usize) {
        let mut map = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if let Some(mask) = map.get_mut(topic) {
            mask[shard / 64] &= !(1 << (shard % 64));
            if mask.iter().all(|&w| w == 0) {
                if let Some((name, _)) = map.remove_entry(topic) {
                    if let Some(c) = &self.cluster {
                        c.interest(&name);
                    }
                }
            }
        }
    }

    /// Hand a publish to every shard (other than `from`) that has subscribers for `topic`.
    /// `frame` encodes the message (called at most once, only if some shard needs it).
    /// Returns how many shards did not get it because their mailbox was full. Inlined into its
    /// callers (a local publish from a handler or a `Publisher`, a remote one from the cluster
    /// bridge): with three callers the compiler would otherwise keep it out of line, which costs
    /// a local publish about 5 % more instructions (`scripts/publish-cost.sh`).
    #[inline(always)]
    pub(crate) fn forward(
        &self,
        from: Option<usize>,
        topic: &[u8],
        frame: &mut dyn FnMut() -> Arc<[u8]>,
        opts: PublishOptions,
    ) -> u64 {
        let map = self.topics.read().unwrap_or_else(|p| p.into_inner());
        let Some((name, mask)) = map.get_key_value(topic) else {
            return 0;
        };
        let mut full = 0;
        for (w, &word) in mask.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if Some(i) == from {
                    continue;
                }
                let mail = Mail::Publish {
                    topic: name.clone(),
                    frame: frame(),
                    opts,
                };
                if self.mail.post(i, mail) == Err(PostError::Full) {
                    full += 1;
                }
            }
        }
        full
    }

    /// Publish from outside the shards.
    fn publish(
        &self,
        topic: &[u8],
        msg: Message<'_>,
        opts: PublishOptions,
    ) -> Result<(), PubSubError> {
        self.check(topic)?;
        if let Some(c) = &self.cluster {
            c.admit(msg.as_bytes().len())?;
        }
        SharedStats::bump(&self.shared.published, 1);
        let mut encoded: Option<Arc<[u8]>> = None;
        let mut frame = || encoded.get_or_insert_with(|| msg.encode_shared()).clone();
        let full = self.forward(None, topic, &mut frame, opts);
        let remote = match &self.cluster {
            Some(c) => c.publish(topic, msg, opts),
            None => Ok(()),
        };
        match full {
            0 => remote,
            full => {
                SharedStats::bump(&self.shared.dropped, full);
                Err(PubSubError::MailboxFull)
            }
        }
    }

    /// A message from another server (the cluster bridge): to every local subscriber of
    /// `topic`, through the shards' mailboxes like a publish from any thread (encoded once,
    /// only if some shard subscribes). Returns how many shards' mailboxes were full (counted in
    /// [`Stats::dropped`]).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn deliver_remote(
        &self,
        topic: &[u8],
        msg: Message<'_>,
        opts: PublishOptions,
    ) -> u64 {
        let mut encoded: Option<Arc<[u8]>> = None;
        let mut frame = || encoded.get_or_insert_with(|| msg.encode_shared()).clone();
        let full = self.forward(None, topic, &mut frame, opts);
        SharedStats::bump(&self.shared.dropped, full);
        full
    }

    /// Does some shard have subscribers for `topic`? (The cluster bridge's interest.)
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn has_topic(&self, topic: &[u8]) -> bool {
        let map = self.topics.read().unwrap_or_else(|p| p.into_inner());
        map.contains_key(topic)
    }

    /// Send one message to one connection, from anywhere.
    fn send(&self, id: ConnId, msg: Message<'_>) -> Result<(), PubSubError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(PubSubError::Stopped);
        }
        let frame = msg.encode_shared();
        match self.mail.post(id.shard(), Mail::Send { id, frame }) {
            Ok(()) => Ok(()),
            Err(PostError::Full) => {
                SharedStats::bump(&self.shared.dropped, 1);
                Err(PubSubError::MailboxFull)
            }
            Err(PostError::Stopped) => Err(PubSubError::Stopped),
        }
    }

    /// Queue `frame` for every open accepted connection of every shard but `from`. Returns how
    /// many shards did not get it because their mailbox was full.
    pub(crate) fn broadcast(&self, from: Option<usize>, frame: &Arc<[u8]>) -> u64 {
        let mut full = 0;
        for i in (0..self.mail.len()).filter(|&i| Some(i) != from) {
            if self.mail.post(i, Mail::Broadcast(frame.clone())) == Err(PostError::Full) {
                full += 1;
            }
        }
        full
    }

    /// [`Hub::broadcast`] from outside the shards (drops counted here).
    pub(crate) fn broadcast_external(&self, msg: Message<'_>) {
        let full = self.broadcast(None, &msg.encode_shared());
        SharedStats::bump(&self.shared.dropped, full);
    }

    /// Add the counters kept here (publishes from outside, the topic gauge) to `s`.
    fn add_to(&self, s: &mut Stats) {
        self.shared.add_to(s);
        s.topics = self.topics.read().map_or(0, |m| m.len() as u64);
        if let Some(c) = &self.cluster {
            c.add_to(s);
        }
    }
}

/// Publishes and sends from any thread: `Send + Sync + Clone`, cheap to clone. Get one from
/// [`crate::ServerHandle::publisher`] or [`crate::Conn::publisher`]. Every message goes through
/// the mailbox of each shard that has subscribers (or owns the connection), which wakes up to
/// deliver it.
///
/// ```no_run
/// use percore::{Conn, Handler, Message, PublishOptions, Server};
///
/// struct Ticker;
///
/// impl Handler for Ticker {
///     type State = ();
///     fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
///         let _ = conn.subscribe("prices");
///     }
///     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
///         // Fan a client's message out to the room (encoded once for every receiver).
///         let _ = conn.publish("room", msg);
///     }
/// }
///
/// let server = Server::builder().bind("127.0.0.1:9001").start(|_| Ticker)?;
/// let publisher = server.publisher();
/// std::thread::spawn(move || {
///     for price in 0..1000 {
///         // A slow client gets the latest price, not a backlog.
///         let text = price.to_string();
///         let _ = publisher.publish_with("prices", Message::Text(&text), PublishOptions::conflate());
///     }
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Publisher {
    hub: Arc<Hub>,
}

impl Publisher {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    /// Publish `msg` to every subscriber of `topic` (encoded once). Messages one `Publisher`
    /// (or clones of it used from one thread) publishes to a topic arrive in order.
    pub fn publish(&self, topic: impl AsRef<[u8]>, msg: Message<'_>) -> Result<(), PubSubError> {
        self.hub
            .publish(topic.as_ref(), msg, PublishOptions::default())
    }

    /// Publish with explicit [`PublishOptions`].
    pub fn publish_with(
        &self,
        topic: impl AsRef<[u8]>,
        msg: Message<'_>,
        opts: PublishOptions,
    ) -> Result<(), PubSubError> {
        self.hub.publish(topic.as_ref(), msg, opts)
    }

    /// Publish a message that slow subscribers may miss instead of being closed.
    pub fn publish_droppable(
        &self,
        topic: impl AsRef<[u8]>,
        msg: Message<'_>,
    ) -> Result<(), PubSubError> {
        self.hub
            .publish(topic.as_ref(), msg, PublishOptions::droppable())
    }

    /// Queue `msg` to the connection `id` (on whatever shard owns it). Silently ignored if the
    /// connection is gone by the time its shard reads the mailbox; a full send queue applies the
    /// slow-consumer policy.
    pub fn send(&self, id: ConnId, msg: Message<'_>) -> Result<(), PubSubError> {
        self.hub.send(id, msg)
    }
}
