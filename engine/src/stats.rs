//! Counters: [`Stats`] (what [`crate::ServerHandle::stats`] returns) and the per-shard
//! counters it sums.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::counters::ShardMetrics;

/// Server counters (summed over shards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// TCP connections currently held (handshaking, open or closing).
    pub connections_open: u64,
    /// TCP connections accepted.
    pub accepted: u64,
    /// Upgrades completed (`on_open` called).
    pub upgraded: u64,
    /// Connections finished (socket closed).
    pub closed: u64,
    /// Handshakes refused: malformed (400/405/411/413/426/431), a refused Origin (403), by
    /// `on_upgrade` (at once or deferred; 503 for a deferred handle dropped unanswered), or
    /// 503 when full.
    pub handshakes_rejected: u64,
    /// Upgrade requests waiting for a deferred decision (a gauge).
    pub upgrades_pending: u64,
    /// Plain HTTP requests answered by `on_request` (any status).
    pub http_requests: u64,
    /// Data messages received.
    pub messages_received: u64,
    /// Frames queued for sending (data and control).
    pub frames_sent: u64,
    /// Of `frames_sent`, the data frames written straight from the handler's bytes, without
    /// a copy into the send queue (see [`crate::ServerBuilder::send_direct_bytes_min`]).
    pub frames_sent_direct: u64,
    /// Bytes received from sockets.
    pub bytes_received: u64,
    /// Bytes written to sockets.
    pub bytes_sent: u64,
    /// Connections failed for a protocol violation (or a limit) with a close code.
    pub protocol_errors: u64,
    /// Connections dropped by a deadline (handshake, pong or close timeout): the sum of the
    /// three below.
    pub timeouts: u64,
    /// Connections dropped because their upgrade request (or its deferred answer) was not
    /// complete within the handshake timeout.
    pub timeouts_handshake: u64,
    /// Connections dropped because nothing answered an idle ping within the pong timeout.
    pub timeouts_pong: u64,
    /// Connections dropped because their close handshake (or final flush) did not finish
    /// within the close timeout.
    pub timeouts_close: u64,
    /// Connections closed by the slow-consumer policy.
    pub slow_consumers: u64,
    /// Handler callbacks that panicked (each closed its connection with 1011; the shard and
    /// the other connections went on).
    pub handler_panics: u64,
    /// Publishes (from handlers, [`Publisher`](crate::Publisher)s and the server handle).
    pub published: u64,
    /// Published frames queued to a subscriber.
    pub delivered: u64,
    /// Published frames a subscriber missed (droppable or conflated publishes past its
    /// `send_queue_bytes_max`), and publishes, sends and broadcasts a shard did not get
    /// because its mailbox was full.
    pub dropped: u64,
    /// Queued, unsent conflated frames replaced by a newer frame of the same topic.
    pub conflated: u64,
    /// Topics with at least one subscriber, or a history holding messages (a gauge).
    pub topics: u64,
    /// Topics holding a history (bounded by `history_topics_max`), with or without
    /// subscribers.
    pub history_topics: u64,
    /// Subscriptions (connection, topic) on all shards (a gauge).
    pub subscriptions: u64,
    /// TLS handshakes completed (`wss://` connections, accepted and outbound).
    pub tls_handshakes: u64,
    /// TLS connections failed in the TLS layer: a handshake refused (garbage or plaintext on
    /// the TLS port, no common version, an unknown CA on the client side, …), a record that
    /// did not authenticate, the peer's fatal alert, the peer's EOF inside a record. Each is closed (after our alert, when TLS
    /// asks for one) and logged at `warn` (rate-limited per shard).
    pub tls_failures: u64,
    /// Topics across servers (all zero unless the server runs with
    /// `ServerBuilder::cluster` (engine feature `cluster`)).
    pub cluster: ClusterStats,
    /// Bytes of dedicated permessage-deflate state held (peer windows and our own,
    /// budgeted by [`crate::ServerBuilder::deflate_dedicated_bytes_max`]; a gauge, updated once
    /// per loop turn).
    pub deflate_dedicated_bytes: u64,
    /// Close handshakes (1001) a graceful shutdown began.
    pub shutdown_closes: u64,
    /// Loop turns in which a graceful shutdown began close handshakes: at least
    /// `shutdown_closes / shutdown_close_batch` per shard (see
    /// [`crate::ServerBuilder::shutdown_close_batch`]).
    pub shutdown_close_turns: u64,
}

/// The cluster bridge's counters: what this server sent to and received from the broker, and
/// what was lost on the way (see `percore::cluster`). Core NATS delivers at most once, so a
/// remote message can be lost; these counters say how many.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// 1 while the bridge is connected to the broker and the broker has confirmed this
    /// server's subscriptions (a round trip after each connect), else 0 (a gauge).
    pub connected: u64,
    /// Connections to the broker made after the first (each one re-subscribes every topic).
    pub reconnects: u64,
    /// Subjects (topics with local subscribers) the broker has confirmed this server is
    /// subscribed to (a gauge, updated after a round trip).
    pub subjects: u64,
    /// Publishes handed to the broker connection.
    pub sent: u64,
    /// Publishes that never left this server for the broker: the bridge's queue was full
    /// ([`PubSubError::ClusterQueueFull`](crate::PubSubError::ClusterQueueFull) for the
    /// publisher; local subscribers got them).
    pub refused: u64,
    /// Publishes the bridge could not hand to the broker: disconnected (they still take a
    /// sequence number, so other servers count them in their `lost`), or refused by the client.
    pub unsent: u64,
    /// Messages received from the broker (for topics with local subscribers).
    pub received: u64,
    /// Messages published on another server for a topic this server subscribes to that never
    /// arrived: gaps in that server's per-topic sequence numbers. Exactly what this server's
    /// subscribers of those topics missed, once a later message of the same topic from the same
    /// server has arrived (a loss at the very end of a stream is not seen, nor one before the
    /// first message this server hears from that stream: see `percore::cluster`).
    pub lost: u64,
    /// Messages received but not delivered: a duplicate sequence number, malformed percore
    /// headers, or text that is not UTF-8.
    pub discarded: u64,
}

/// One shard's counters, written by that shard only (aligned to a cache line so that two
/// shards' counters never share one).
#[derive(Default, Debug)]
#[repr(align(64))]
pub(crate) struct ShardStats {
    pub(crate) accepted: AtomicU64,
    pub(crate) upgraded: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) handshakes_rejected: AtomicU64,
    /// A gauge: moved by [`ShardStats::bump`] and [`ShardStats::drop_one`].
    pub(crate) upgrades_pending: AtomicU64,
    pub(crate) http_requests: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) frames_sent_direct: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) timeouts_handshake: AtomicU64,
    pub(crate) timeouts_pong: AtomicU64,
    pub(crate) timeouts_close: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) handler_panics: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) conflated: AtomicU64,
    /// A gauge: moved by [`ShardStats::bump`] and [`ShardStats::drop_one`].
    pub(crate) subscriptions: AtomicU64,
    pub(crate) tls_handshakes: AtomicU64,
    pub(crate) tls_failures: AtomicU64,
    /// A gauge: stored by the shard once per loop turn.
    pub(crate) deflate_dedicated_bytes: AtomicU64,
    pub(crate) shutdown_closes: AtomicU64,
    pub(crate) shutdown_close_turns: AtomicU64,
    /// What `crate::Metrics` adds to these (same single-writer rule).
    pub(crate) metrics: ShardMetrics,
}

impl ShardStats {
    /// Add `n` to a counter. Only the owning shard writes, so a relaxed load + store is exact
    /// and avoids the locked read-modify-write of `fetch_add` (several per message); readers
    /// ([`crate::ServerHandle::stats`]) see each counter's latest stored value.
    #[inline]
    pub(crate) fn bump(c: &AtomicU64, n: u64) {
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Take one from a gauge (same single-writer rule as [`ShardStats::bump`]).
    pub(crate) fn drop_one(c: &AtomicU64) {
        c.store(
            c.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
    }

    /// Add this shard's counters to `s`.
    pub(crate) fn add_to(&self, s: &mut Stats) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.accepted += g(&self.accepted);
        s.upgraded += g(&self.upgraded);
        s.closed += g(&self.closed);
        s.handshakes_rejected += g(&self.handshakes_rejected);
        s.upgrades_pending += g(&self.upgrades_pending);
        s.http_requests += g(&self.http_requests);
        s.messages_received += g(&self.messages_received);
        s.frames_sent += g(&self.frames_sent);
        s.frames_sent_direct += g(&self.frames_sent_direct);
        s.bytes_received += g(&self.bytes_received);
        s.bytes_sent += g(&self.bytes_sent);
        s.protocol_errors += g(&self.protocol_errors);
        s.timeouts += g(&self.timeouts);
        s.timeouts_handshake += g(&self.timeouts_handshake);
        s.timeouts_pong += g(&self.timeouts_pong);
        s.timeouts_close += g(&self.timeouts_close);
        s.slow_consumers += g(&self.slow_consumers);
        s.handler_panics += g(&self.handler_panics);
        s.published += g(&self.published);
        s.delivered += g(&self.delivered);
        s.dropped += g(&self.dropped);
        s.conflated += g(&self.conflated);
        s.subscriptions += g(&self.subscriptions);
        s.tls_handshakes += g(&self.tls_handshakes);
        s.tls_failures += g(&self.tls_failures);
        s.deflate_dedicated_bytes += g(&self.deflate_dedicated_bytes);
        s.shutdown_closes += g(&self.shutdown_closes);
        s.shutdown_close_turns += g(&self.shutdown_close_turns);
    }
}

/// Counters written from any thread (publishes and sends made outside the shards).
#[derive(Default, Debug)]
pub(crate) struct SharedStats {
    pub(crate) published: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

impl SharedStats {
    /// Add `n` to a counter (any thread: a locked add).
    pub(crate) fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Add these counters to `s`.
    pub(crate) fn add_to(&self, s: &mut Stats) {
        s.published += self.published.load(Ordering::Relaxed);
        s.dropped += self.dropped.load(Ordering::Relaxed);
    }
}
