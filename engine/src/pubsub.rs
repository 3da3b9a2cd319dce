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
//!
//! Across servers: with `ServerBuilder::cluster` (engine feature `cluster`) a publish also
//! reaches the subscribers of the topic on every other server of the cluster, through a NATS
//! broker, with the same options and ordering per publisher; see `percore::cluster` for what
//! that costs and what can be lost.

use std::fmt;

/// How a publish treats subscribers whose send queue is full (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PublishOptions {
    /// A subscriber whose queue has no room for the frame misses it (counted in
    /// [`crate::Stats::dropped`]) instead of being closed as a slow consumer.
    pub droppable: bool,
    /// Keep only the latest frame of this topic per subscriber: if the subscriber's queue still
    /// holds an unsent frame of the topic published with `conflate`, it is replaced by the new
    /// one (counted in [`crate::Stats::conflated`]). A conflated frame that does not fit is dropped.
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
    /// (the others did). Counted in [`crate::Stats::dropped`].
    MailboxFull,
    /// The server is shutting down or stopped.
    Stopped,
    /// The message (with the cluster's headers) is larger than the broker's `max_payload`:
    /// nothing was delivered, on this server or any other. Only with
    /// `ServerBuilder::cluster` (engine feature `cluster`).
    PayloadTooLarge,
    /// The cluster bridge's queue held `queue_messages_max` publishes: this server's
    /// subscribers got the message, other servers did not. Counted in
    /// [`ClusterStats::refused`](crate::ClusterStats::refused).
    ClusterQueueFull,
}

impl fmt::Display for PubSubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PubSubError::TopicTooLong => "topic name too long",
            PubSubError::MailboxFull => "a shard's mailbox is full",
            PubSubError::Stopped => "server stopped",
            PubSubError::PayloadTooLarge => "message larger than the broker's max_payload",
            PubSubError::ClusterQueueFull => "the cluster bridge's queue is full",
        })
    }
}

impl std::error::Error for PubSubError {}
