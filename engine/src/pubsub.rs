//! Publish/subscribe: topics, cross-shard fan-out and sends from any thread.
//!
//! A published message is encoded once into a reference-counted frame (server frames are not
//! masked, so the bytes are the same for every receiver); each subscriber's send queue holds a
//! reference to it, not a copy. Other shards receive the same frame through their mailbox, and
//! only the shards that have subscribers for the topic are sent anything: a shared per-topic
//! shard mask, written only when a shard gets its first subscriber for a topic or loses its
//! last, is read once per publish.
//!
//! Ordering: the messages one publisher (one connection's handler, or one thread) publishes to
//! one topic reach every subscriber in publish order.
//!
//! Backpressure: a frame that does not fit a subscriber's send queue
//! (`send_queue_bytes_max`) is dropped when the publish is [`PublishOptions::droppable`],
//! replaces the unsent previous frame of the same topic when it is
//! [`PublishOptions::conflate`]d, and otherwise closes the subscriber with the server's
//! [`SlowConsumer`](crate::SlowConsumer) code.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crossbeam_channel::{Receiver, Sender};

use crate::io::Waker;
use crate::proto::{self, OpCode};
use crate::server::{ServerBuilder, ServerHandle, Stats};
use crate::{Conn, ConnId, Message};

/// How a publish treats subscribers whose send queue is full (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PublishOptions {
    /// A subscriber whose queue has no room for the frame misses it (counted in
    /// [`Stats::dropped`]) instead of being closed as a slow consumer.
    pub droppable: bool,
    /// Keep only the latest frame of this topic per subscriber: if the subscriber's queue still
    /// holds an unsent frame of the topic published with `conflate`, it is replaced by the new
    /// one (counted in [`Stats::conflated`]). A conflated frame that does not fit is dropped.
    pub conflate: bool,
}

impl PublishOptions {
    /// Options for a droppable publish.
    pub const fn droppable() -> Self {
        Self {
            droppable: true,
            conflate: false,
        }
    }

    /// Options for a conflating publish (latest value wins, e.g. tickers).
    pub const fn conflate() -> Self {
        Self {
            droppable: false,
            conflate: true,
        }
    }
}

/// Why a subscribe, publish or send was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PubSubError {
    /// The topic name is longer than `topic_name_bytes_max`.
    TopicTooLong,
    /// A shard's mailbox held `mailbox_messages_max` messages: that shard did not get this one
    /// (the others did). Counted in [`Stats::dropped`].
    MailboxFull,
    /// The server is shutting down or stopped.
    Stopped,
}

impl fmt::Display for PubSubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PubSubError::TopicTooLong => "topic name too long",
            PubSubError::MailboxFull => "a shard's mailbox is full",
            PubSubError::Stopped => "server stopped",
        })
    }
}

impl std::error::Error for PubSubError {}

/// Publish/subscribe limits (part of the server configuration).
#[derive(Clone, Debug)]
pub(crate) struct PubSubConfig {
    pub(crate) topic_name_bytes_max: usize,
    pub(crate) mailbox_messages_max: usize,
}

impl Default for PubSubConfig {
    fn default() -> Self {
        Self {
            topic_name_bytes_max: 256,
            mailbox_messages_max: 65_536,
        }
    }
}

impl ServerBuilder {
    /// Longest topic name in bytes (default 256); longer names are refused with
    /// [`PubSubError::TopicTooLong`]. Each topic a shard has subscribers for costs its name
    /// (twice: shard table and the shared shard mask) plus one entry per subscriber.
    pub fn topic_name_bytes_max(mut self, n: usize) -> Self {
        self.config.pubsub.topic_name_bytes_max = n;
        self
    }

    /// Most messages waiting in one shard's mailbox (publishes and sends from other shards and
    /// threads; default 65 536). Past it, publishes to that shard fail with
    /// [`PubSubError::MailboxFull`]. Each waiting message costs about 64 bytes plus a reference
    /// that keeps its frame alive, so worst-case mailbox memory is this times the frame size.
    pub fn mailbox_messages_max(mut self, n: usize) -> Self {
        self.config.pubsub.mailbox_messages_max = n.max(1);
        self
    }
}

/// Cross-shard work for the publish/subscribe layer.
#[derive(Debug)]
pub(crate) enum Inbox {
    /// Queue `frame` to every local subscriber of `topic`.
    Publish {
        topic: Arc<[u8]>,
        frame: Arc<[u8]>,
        opts: PublishOptions,
    },
    /// Queue `frame` to one connection.
    Send { id: ConnId, frame: Arc<[u8]> },
}

/// Counters of one shard (written by that shard; `subscriptions` is a gauge).
#[derive(Debug, Default)]
pub(crate) struct PubStats {
    pub(crate) published: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) conflated: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
}

impl PubStats {
    pub(crate) fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// One shard as seen by publishers.
struct Link {
    tx: Sender<Inbox>,
    /// A wake-up was sent and the shard has not looked at its mailbox since.
    wake_pending: AtomicBool,
    stats: PubStats,
}

/// Shared between the shards, the server handle and every [`Publisher`].
pub(crate) struct Hub {
    config: PubSubConfig,
    links: Vec<Link>,
    /// Each shard's wake-up, in shard order (set by the shard before its first poll).
    wakers: Vec<OnceLock<Waker>>,
    /// Topic -> bit mask of the shards that have subscribers for it. Written only when a shard
    /// gets its first subscriber for a topic or loses its last one.
    topics: RwLock<HashMap<Arc<[u8]>, Vec<u64>>>,
    /// Counters of publishes and drops made outside the shards.
    external: PubStats,
    stopped: AtomicBool,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("shards", &self.links.len())
            .finish_non_exhaustive()
    }
}

/// Encode a data frame once, into a shareable buffer.
pub(crate) fn encode_shared(msg: Message<'_>) -> Arc<[u8]> {
    let (op, payload) = match msg {
        Message::Text(s) => (OpCode::Text, s.as_bytes()),
        Message::Binary(b) => (OpCode::Binary, b),
    };
    let mut v = Vec::with_capacity(payload.len() + proto::MAX_HEADER_LEN);
    proto::encode_frame(&mut v, op, true, payload, None);
    Arc::from(v)
}

impl Hub {
    /// A hub for `n` shards and each shard's mailbox receiver.
    pub(crate) fn new(n: usize, config: PubSubConfig) -> (Arc<Self>, Vec<Receiver<Inbox>>) {
        let mut links = Vec::with_capacity(n);
        let mut rxs = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = crossbeam_channel::unbounded();
            links.push(Link {
                tx,
                wake_pending: AtomicBool::new(false),
                stats: PubStats::default(),
            });
            rxs.push(rx);
        }
        let hub = Self {
            config,
            links,
            wakers: (0..n).map(|_| OnceLock::new()).collect(),
            topics: RwLock::new(HashMap::new()),
            external: PubStats::default(),
            stopped: AtomicBool::new(false),
        };
        (Arc::new(hub), rxs)
    }

    /// Shard `i` is running: from now on publishers wake it. Called on the shard's thread
    /// before its first poll (which does not block, so anything published earlier is read).
    pub(crate) fn register_waker(&self, i: usize, waker: Waker) {
        if let Some(slot) = self.wakers.get(i) {
            let _ = slot.set(waker);
        }
    }

    /// Refuse every further publish and send (shutdown).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    pub(crate) fn config(&self) -> &PubSubConfig {
        &self.config
    }

    /// Shard `i`'s counters.
    pub(crate) fn stats(&self, i: usize) -> &PubStats {
        &self.links[i].stats
    }

    /// Shard `i` is about to read its mailbox: the next message must wake it again.
    pub(crate) fn clear_wake(&self, i: usize) {
        self.links[i].wake_pending.store(false, Ordering::Release);
    }

    fn wake(&self, i: usize) {
        if !self.links[i].wake_pending.swap(true, Ordering::AcqRel) {
            if let Some(w) = self.wakers.get(i).and_then(OnceLock::get) {
                let _ = w.wake();
            }
        }
    }

    /// Shard `shard` got its first subscriber for `topic`; returns the shared name to use.
    pub(crate) fn add_shard(&self, topic: &[u8], shard: usize) -> Arc<[u8]> {
        let words = self.links.len().div_ceil(64);
        let mut map = self.topics.write().unwrap_or_else(|p| p.into_inner());
        let name = match map.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
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
                map.remove(topic);
            }
        }
    }

    fn check_topic(&self, topic: &[u8]) -> Result<(), PubSubError> {
        if topic.len() > self.config.topic_name_bytes_max {
            return Err(PubSubError::TopicTooLong);
        }
        if self.stopped.load(Ordering::Acquire) {
            return Err(PubSubError::Stopped);
        }
        Ok(())
    }

    /// Hand a publish to every shard (other than `from`) that has subscribers for `topic`.
    /// `frame` encodes the message (called at most once, only if some shard needs it).
    /// `stats` gets the drops.
    pub(crate) fn forward(
        &self,
        from: Option<usize>,
        topic: &[u8],
        frame: &mut dyn FnMut() -> Arc<[u8]>,
        opts: PublishOptions,
        stats: &PubStats,
    ) -> Result<(), PubSubError> {
        let map = self.topics.read().unwrap_or_else(|p| p.into_inner());
        let Some((name, mask)) = map.get_key_value(topic) else {
            return Ok(());
        };
        let mut result = Ok(());
        for (w, &word) in mask.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if Some(i) == from {
                    continue;
                }
                let link = &self.links[i];
                if link.tx.len() >= self.config.mailbox_messages_max {
                    PubStats::bump(&stats.dropped, 1);
                    result = Err(PubSubError::MailboxFull);
                    continue;
                }
                let msg = Inbox::Publish {
                    topic: name.clone(),
                    frame: frame(),
                    opts,
                };
                if link.tx.send(msg).is_ok() {
                    self.wake(i);
                }
            }
        }
        result
    }

    /// Publish from outside the shards.
    fn publish(
        &self,
        topic: &[u8],
        msg: Message<'_>,
        opts: PublishOptions,
    ) -> Result<(), PubSubError> {
        self.check_topic(topic)?;
        PubStats::bump(&self.external.published, 1);
        let mut encoded: Option<Arc<[u8]>> = None;
        let mut frame = || encoded.get_or_insert_with(|| encode_shared(msg)).clone();
        self.forward(None, topic, &mut frame, opts, &self.external)
    }

    /// Send one message to one connection, from anywhere.
    pub(crate) fn send(&self, id: ConnId, msg: Message<'_>) -> Result<(), PubSubError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(PubSubError::Stopped);
        }
        let Some(link) = self.links.get(id.shard()) else {
            return Err(PubSubError::Stopped);
        };
        if link.tx.len() >= self.config.mailbox_messages_max {
            PubStats::bump(&self.external.dropped, 1);
            return Err(PubSubError::MailboxFull);
        }
        let frame = encode_shared(msg);
        link.tx
            .send(Inbox::Send { id, frame })
            .map_err(|_| PubSubError::Stopped)?;
        self.wake(id.shard());
        Ok(())
    }

    /// Add the publish/subscribe counters to `s`.
    pub(crate) fn add_to(&self, s: &mut Stats) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for st in self.links.iter().map(|l| &l.stats).chain([&self.external]) {
            s.published += g(&st.published);
            s.delivered += g(&st.delivered);
            s.dropped += g(&st.dropped);
            s.conflated += g(&st.conflated);
            s.subscriptions += g(&st.subscriptions);
        }
        s.topics = self.topics.read().map_or(0, |m| m.len() as u64);
    }
}

/// Publishes and sends from any thread: `Send + Sync + Clone`, cheap to clone. Get one from
/// [`ServerHandle::publisher`] or [`Conn::publisher`]. Every message goes through the mailbox of
/// each shard that has subscribers (or owns the connection), which wakes up to deliver it.
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

impl ServerHandle {
    /// A cloneable, thread-safe handle for publishing and sending to connections.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            hub: self.hub.clone(),
        }
    }

    /// Publish `msg` to every subscriber of `topic` (see [`Publisher::publish`]).
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

    /// Queue `msg` to the connection `id` (see [`Publisher::send`]).
    pub fn send(&self, id: ConnId, msg: Message<'_>) -> Result<(), PubSubError> {
        self.hub.send(id, msg)
    }
}

impl<S> Conn<'_, S> {
    /// Subscribe this connection to `topic`. Returns `Ok(false)` if it already was. The
    /// subscription ends with [`Conn::unsubscribe`] or when the connection closes.
    /// Outbound (client) connections are never sent published frames: a client must mask
    /// its frames, so the shared server frame does not fit them.
    pub fn subscribe(&mut self, topic: impl AsRef<[u8]>) -> Result<bool, PubSubError> {
        self.ctx
            .topics
            .subscribe(self.id.key() as u32, topic.as_ref())
    }

    /// End this connection's subscription to `topic`; returns whether it was subscribed.
    pub fn unsubscribe(&mut self, topic: impl AsRef<[u8]>) -> bool {
        self.ctx
            .topics
            .unsubscribe(self.id.key() as u32, topic.as_ref())
    }

    /// Publish `msg` to every subscriber of `topic` on every shard (this connection too, if it
    /// is subscribed). The frame is encoded once. Subscribers on this shard get it at the end of
    /// the current loop turn, the others through their shard's mailbox.
    pub fn publish(
        &mut self,
        topic: impl AsRef<[u8]>,
        msg: Message<'_>,
    ) -> Result<(), PubSubError> {
        self.ctx
            .topics
            .publish(topic.as_ref(), msg, PublishOptions::default())
    }

    /// Publish with explicit [`PublishOptions`].
    pub fn publish_with(
        &mut self,
        topic: impl AsRef<[u8]>,
        msg: Message<'_>,
        opts: PublishOptions,
    ) -> Result<(), PubSubError> {
        self.ctx.topics.publish(topic.as_ref(), msg, opts)
    }

    /// Publish a message that slow subscribers may miss instead of being closed.
    pub fn publish_droppable(
        &mut self,
        topic: impl AsRef<[u8]>,
        msg: Message<'_>,
    ) -> Result<(), PubSubError> {
        self.ctx
            .topics
            .publish(topic.as_ref(), msg, PublishOptions::droppable())
    }

    /// A thread-safe handle for publishing and sending from elsewhere (e.g. a worker thread
    /// that answers this connection later with [`Publisher::send`]).
    pub fn publisher(&self) -> Publisher {
        Publisher {
            hub: self.ctx.topics.hub().clone(),
        }
    }
}
