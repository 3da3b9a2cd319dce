//! What every thread shares about the running shards: their mailboxes, the topic directory
//! (which shards have subscribers for a topic, and its history), the link to the cluster bridge
//! and the stop flag; and [`Publisher`], the handle that publishes and sends from any thread.
//! The pub/sub model is described in [`crate::pubsub`], the cluster in `percore::cluster`,
//! history and resume in [`crate::resume`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use crossbeam_channel::Receiver;

use super::cluster::ClusterLink;
use super::mailbox::{Mail, Mailboxes, PostError};
use crate::history::{History, HistoryPolicy, Position, TopicHistory};
use crate::id::ConnId;
use crate::proto::Message;
use crate::pubsub::{PubSubError, PublishOptions};
use crate::resume::{Envelope, Jitter};
use crate::stats::{ShardStats, SharedStats, Stats};

/// Shared between the shards, the server handle and every [`Publisher`].
pub(crate) struct Hub {
    mail: Mailboxes,
    topic_name_bytes_max: usize,
    /// Topic -> the shards that have subscribers for it, and its history. Written only when a
    /// shard gets its first subscriber for a topic or loses its last one, or a topic's history
    /// is made or dropped.
    topics: RwLock<Directory>,
    history: HistoryPolicy,
    /// Epochs are `epoch_base + n` (below 2^53), `n` counting the histories made.
    epoch_base: u64,
    epochs: AtomicU64,
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
        history: HistoryPolicy,
        cluster: Option<ClusterLink>,
    ) -> (Arc<Self>, Vec<Receiver<Mail>>) {
        let (mail, rxs) = Mailboxes::new(shard_stats.len(), mailbox_messages_max);
        let hub = Self {
            mail,
            topic_name_bytes_max,
            topics: RwLock::new(Directory::default()),
            history,
            // Random, and low in the 53-bit range so that counting up never wraps in practice.
            epoch_base: Jitter::from_os().next_u64() & ((1 << 52) - 1),
            epochs: AtomicU64::new(1),
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

    /// Shard `shard` got its first subscriber for `topic`: returns the shared name to use and
    /// the topic's history with its head (the last position given out) if it has one.
    /// `history` asks for one (a resume subscriber): a topic configured without history gets
    /// one that keeps nothing but gives positions.
    pub(crate) fn add_shard(&self, topic: &[u8], shard: usize, history: bool) -> Joined {
        let words = self.mail.len().div_ceil(64);
        let mut dir = self.topics.write().unwrap_or_else(|p| p.into_inner());
        let name = match dir.map.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => {
                let name: Arc<[u8]> = Arc::from(topic);
                let entry = TopicEntry {
                    mask: vec![0; words],
                    history: None,
                };
                dir.map.insert(name.clone(), entry);
                name
            }
        };
        let limits = self.history.for_topic(topic);
        if limits.is_on() || history {
            self.attach_history(&mut dir, &name, limits);
        }
        let entry = dir.map.get_mut(topic).expect("inserted above");
        if entry.idle() {
            // Under the lock, so the bridge sees interest changes in the order they happen.
            if let Some(c) = &self.cluster {
                c.interest(&name);
            }
        }
        entry.mask[shard / 64] |= 1 << (shard % 64);
        let history = entry.history.clone().map(|h| {
            let head = lock(&h).head();
            (h, head)
        });
        Joined { name, history }
    }

    /// Give the directory's topic `name` a history (within `history_topics_max`) unless it has
    /// one.
    fn attach_history(&self, dir: &mut Directory, name: &[u8], limits: TopicHistory) {
        if dir.map.get(name).is_none_or(|e| e.history.is_some()) {
            return;
        }
        if dir.with_history >= self.history.topics_max && !dir.evict_one() {
            return;
        }
        let n = self.epochs.fetch_add(1, Ordering::Relaxed);
        let epoch = (self.epoch_base + n) & ((1 << 53) - 1);
        let h = History::new(limits, epoch.max(1), Instant::now());
        if let Some(e) = dir.map.get_mut(name) {
            e.history = Some(Arc::new(Mutex::new(h)));
            dir.with_history += 1;
        }
    }

    /// Shard `shard` lost its last subscriber for `topic`. The topic stays while its history
    /// holds messages (for the subscribers that come back).
    pub(crate) fn remove_shard(&self, topic: &[u8], shard: usize) {
        let mut dir = self.topics.write().unwrap_or_else(|p| p.into_inner());
        let Some((name, _)) = dir.map.get_key_value(topic) else {
            return;
        };
        let name = name.clone();
        let Some(e) = dir.map.get_mut(topic) else {
            return;
        };
        let was = !e.idle();
        e.mask[shard / 64] &= !(1 << (shard % 64));
        if was && e.idle() {
            // Under the lock, so the bridge sees interest changes in the order they happen.
            if let Some(c) = &self.cluster {
                c.interest(&name);
            }
        }
        if e.idle() && !e.holds() {
            dir.remove(topic);
        }
    }

    /// The history of `topic`, if it has one.
    pub(crate) fn history_of(&self, topic: &[u8]) -> Option<SharedHistory> {
        let dir = self.topics.read().unwrap_or_else(|p| p.into_inner());
        dir.map.get(topic)?.history.clone()
    }

    /// Route a publish: give it its position if the topic has history (kept there), and hand
    /// it to every shard (other than `from`) that has subscribers for `topic`. Returns the
    /// frames (made only if needed: `local` asks for them, for the publishing shard's own
    /// subscribers) and how many shards did not get it because their mailbox was full.
    pub(crate) fn route(
        &self,
        from: Option<usize>,
        topic: &[u8],
        msg: Message<'_>,
        opts: PublishOptions,
        local: bool,
    ) -> Routed {
        let dir = self.topics.read().unwrap_or_else(|p| p.into_inner());
        if let Some((name, entry)) = dir.map.get_key_value(topic) {
            return self.route_to(from, name, entry, msg, opts, local);
        }
        drop(dir);
        let limits = self.history.for_topic(topic);
        if !limits.is_on() {
            return Routed::default();
        }
        // A topic with history and no subscriber yet: its history starts with this message.
        let mut dir = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if !dir.map.contains_key(topic) {
            let entry = TopicEntry {
                mask: vec![0; self.mail.len().div_ceil(64)],
                history: None,
            };
            dir.map.insert(Arc::from(topic), entry);
            self.attach_history(&mut dir, topic, limits);
            if dir.map.get(topic).is_some_and(|e| e.history.is_none()) {
                dir.remove(topic); // no room for another history
                return Routed::default();
            }
        }
        let (name, entry) = dir.map.get_key_value(topic).expect("present");
        self.route_to(from, name, entry, msg, opts, local)
    }

    fn route_to(
        &self,
        from: Option<usize>,
        name: &Arc<[u8]>,
        entry: &TopicEntry,
        msg: Message<'_>,
        opts: PublishOptions,
        local: bool,
    ) -> Routed {
        // Positions are given out and mail posted under the history's lock, so every shard
        // gets a topic's publishes in position order.
        let mut guard = entry.history.as_ref().map(|h| lock(h));
        let env = guard.as_deref_mut().map(|h| {
            let epoch = h.epoch();
            h.push(Instant::now(), |seq| {
                Envelope::encode_shared(name, Position { epoch, seq }, msg)
            })
        });
        let mut frame: Option<Arc<[u8]>> = None;
        let mut full = 0;
        for (w, &word) in entry.mask.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if Some(i) == from {
                    continue;
                }
                let mail = Mail::Publish {
                    topic: name.clone(),
                    frame: frame.get_or_insert_with(|| msg.encode_shared()).clone(),
                    env: env.clone(),
                    opts,
                };
                if self.mail.post(i, mail) == Err(PostError::Full) {
                    full += 1;
                }
            }
        }
        drop(guard);
        if local {
            frame.get_or_insert_with(|| msg.encode_shared());
        }
        Routed {
            name: Some(name.clone()),
            frame,
            env,
            full,
        }
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
        let full = self.route(None, topic, msg, opts, false).full;
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
    /// only if some shard subscribes). A topic with history gives it this server's next
    /// position: positions are per server, in the order messages reach it. Returns how many
    /// shards' mailboxes were full (counted in [`Stats::dropped`]).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn deliver_remote(
        &self,
        topic: &[u8],
        msg: Message<'_>,
        opts: PublishOptions,
    ) -> u64 {
        let full = self.route(None, topic, msg, opts, false).full;
        SharedStats::bump(&self.shared.dropped, full);
        full
    }

    /// Does some shard have subscribers for `topic`? (The cluster bridge's interest; a topic
    /// that only keeps history does not count.)
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn has_topic(&self, topic: &[u8]) -> bool {
        let dir = self.topics.read().unwrap_or_else(|p| p.into_inner());
        dir.map.get(topic).is_some_and(|e| !e.idle())
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
        if let Ok(dir) = self.topics.read() {
            s.topics = dir.map.len() as u64;
            s.history_topics = dir.with_history as u64;
        }
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

/// A topic's history, shared by its publishers and the shards that subscribe to it.
pub(crate) type SharedHistory = Arc<Mutex<History>>;

/// Lock a history (a panic while holding it cannot leave it inconsistent: every change is
/// one push or pop).
pub(crate) fn lock(h: &Mutex<History>) -> MutexGuard<'_, History> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`Hub::add_shard`] gives a shard joining a topic.
pub(crate) struct Joined {
    pub(crate) name: Arc<[u8]>,
    pub(crate) history: Option<(SharedHistory, u64)>,
}

/// What [`Hub::route`] made of a publish.
#[derive(Default)]
pub(crate) struct Routed {
    /// The topic's shared name (`None`: nobody subscribes and it keeps no history).
    pub(crate) name: Option<Arc<[u8]>>,
    /// The plain frame, if it was made.
    pub(crate) frame: Option<Arc<[u8]>>,
    /// The position and envelope frame, if the topic has history.
    pub(crate) env: Option<(u64, Arc<[u8]>)>,
    /// Shards whose mailbox was full.
    pub(crate) full: u64,
}

/// One topic in the directory.
struct TopicEntry {
    /// Bit mask of the shards with subscribers.
    mask: Vec<u64>,
    history: Option<SharedHistory>,
}

impl TopicEntry {
    fn idle(&self) -> bool {
        self.mask.iter().all(|&w| w == 0)
    }

    /// Does its history hold messages (after dropping those past their age)?
    fn holds(&self) -> bool {
        self.history.as_ref().is_some_and(|h| {
            let mut h = lock(h);
            h.expire(Instant::now());
            h.keeps() && h.held().0 > 0
        })
    }
}

/// The topic directory.
#[derive(Default)]
struct Directory {
    map: HashMap<Arc<[u8]>, TopicEntry>,
    /// Entries with a history (bounded by `history_topics_max`).
    with_history: usize,
}

impl Directory {
    fn remove(&mut self, topic: &[u8]) {
        if let Some(e) = self.map.remove(topic) {
            self.with_history -= usize::from(e.history.is_some());
        }
    }

    /// Make room for one more history: drop the history of a topic nobody subscribes to, one
    /// whose messages all expired if there is one, else the one published to least recently.
    /// Linear in the topics, and only run when the bound is reached.
    fn evict_one(&mut self) -> bool {
        let mut oldest: Option<(Instant, Arc<[u8]>)> = None;
        for (name, e) in &self.map {
            let Some(h) = e.history.as_ref().filter(|_| e.idle()) else {
                continue;
            };
            if !e.holds() {
                oldest = Some((Instant::now(), name.clone()));
                break;
            }
            let at = lock(h).last_publish;
            if oldest.as_ref().is_none_or(|(t, _)| at < *t) {
                oldest = Some((at, name.clone()));
            }
        }
        match oldest {
            Some((_, name)) => {
                self.remove(&name);
                true
            }
            None => false,
        }
    }
}
