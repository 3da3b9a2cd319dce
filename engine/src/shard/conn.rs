//! [`Conn`]: a connection as handler callbacks see it. A thin face over three things the shard
//! lends for the callback: the connection's protocol send half (may it send, close), its output
//! (the send queue, with the limit and the slow-consumer policy) and the shard's context (topics,
//! broadcasts).

use std::fmt;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::ctx::Out;
use super::entry::{mark_reason, PeerAddr};
use super::hub::Publisher;
use crate::counters::CloseReason;
use crate::id::ConnId;
use crate::proto::{CloseCode, Endpoint, Message, SendHalf, MAX_HEADER_LEN};
use crate::pubsub::{PubSubError, PublishOptions};
use crate::stats::ShardStats;

/// Why a send was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closing or closed: nothing more may be sent.
    Closed,
    /// The send queue passed `send_queue_bytes_max`: the slow-consumer policy was applied
    /// (the queue dropped, a close frame sent).
    QueueFull,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::Closed => "connection is closing",
            SendError::QueueFull => "send queue full (slow consumer)",
        })
    }
}

impl std::error::Error for SendError {}

/// A connection, lent to [`crate::Handler`] callbacks.
pub struct Conn<'a, S> {
    pub(crate) half: &'a mut SendHalf,
    pub(crate) ep: &'a mut Endpoint,
    pub(crate) out: Out<'a>,
    pub(crate) state: &'a mut S,
    pub(crate) peer: &'a PeerAddr,
    pub(crate) now: u32,
    pub(crate) generation: u32,
}

impl<S> fmt::Debug for Conn<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id())
            .field("peer", &self.peer.get(*self.out.flags))
            .finish_non_exhaustive()
    }
}

impl<S> Conn<'_, S> {
    /// This connection's server-wide id.
    pub fn id(&self) -> ConnId {
        ConnId::new(self.out.ctx.shard, self.out.key, self.generation)
    }

    /// The per-connection state.
    pub fn state(&self) -> &S {
        self.state
    }

    /// The per-connection state, mutably.
    pub fn state_mut(&mut self) -> &mut S {
        self.state
    }

    /// Queue a message (the payload is copied into the send queue; it is written at the end
    /// of the current loop turn).
    #[inline]
    pub fn send(&mut self, msg: Message<'_>) -> Result<(), SendError> {
        if !self.half.can_send() {
            return Err(SendError::Closed);
        }
        if self.out.over_limit(msg.as_bytes().len() + MAX_HEADER_LEN) {
            self.out.slow_consumer(self.half, self.ep, self.now);
            return Err(SendError::QueueFull);
        }
        self.half.send_message(self.ep, &mut self.out, msg);
        Ok(())
    }

    /// Queue a text message.
    pub fn send_text(&mut self, s: &str) -> Result<(), SendError> {
        self.send(Message::Text(s))
    }

    /// Queue a binary message.
    pub fn send_binary(&mut self, b: &[u8]) -> Result<(), SendError> {
        self.send(Message::Binary(b))
    }

    /// Queue a ping (payload at most 125 bytes; longer payloads are truncated).
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        if !self.half.can_send() {
            return Err(SendError::Closed);
        }
        if self.out.over_limit(payload.len().min(125) + MAX_HEADER_LEN) {
            self.out.slow_consumer(self.half, self.ep, self.now);
            return Err(SendError::QueueFull);
        }
        self.half.send_ping(self.ep, &mut self.out, payload);
        Ok(())
    }

    /// Queue `msg` for every open accepted connection of the server, on every shard (this one
    /// included; outbound connections made with [`crate::ServerHandle::connect`] are left out,
    /// their frames must be masked one by one). The frame is serialized once and shared by all
    /// the send queues; delivery happens at the end of the current loop turn. Each receiver's
    /// send-queue limit applies.
    pub fn broadcast(&mut self, msg: Message<'_>) {
        self.out.ctx.broadcasts.push(msg.encode_shared());
    }

    /// Start the close handshake with `code` and `reason` (truncated to 123 bytes). Nothing
    /// more can be sent afterwards; [`crate::Handler::on_close`] follows when the peer answers
    /// or the close timeout passes.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.half
            .close(self.now, self.ep, &mut self.out, code, reason);
    }

    /// Bytes queued and not yet written to the socket.
    pub fn buffered_amount(&self) -> usize {
        self.out.queue.len()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer.get(*self.out.flags)
    }

    /// Subscribe this connection to `topic`. Returns `Ok(false)` if it already was. The
    /// subscription ends with [`Conn::unsubscribe`] or when the connection closes.
    /// Outbound (client) connections are never sent published frames: a client must mask
    /// its frames, so the shared server frame does not fit them.
    pub fn subscribe(&mut self, topic: impl AsRef<[u8]>) -> Result<bool, PubSubError> {
        let key = self.out.key;
        self.out.ctx.topics.subscribe(key, topic.as_ref())
    }

    /// End this connection's subscription to `topic`; returns whether it was subscribed.
    pub fn unsubscribe(&mut self, topic: impl AsRef<[u8]>) -> bool {
        let key = self.out.key;
        self.out.ctx.topics.unsubscribe(key, topic.as_ref())
    }

    /// Publish `msg` to every subscriber of `topic` on every shard (this connection too, if it
    /// is subscribed). The frame is encoded once. Subscribers on this shard get it at the end of
    /// the current loop turn, the others through their shard's mailbox.
    pub fn publish(
        &mut self,
        topic: impl AsRef<[u8]>,
        msg: Message<'_>,
    ) -> Result<(), PubSubError> {
        self.publish_with(topic, msg, PublishOptions::default())
    }

    /// Publish with explicit [`PublishOptions`].
    pub fn publish_with(
        &mut self,
        topic: impl AsRef<[u8]>,
        msg: Message<'_>,
        opts: PublishOptions,
    ) -> Result<(), PubSubError> {
        self.out.ctx.topics.publish(topic.as_ref(), msg, opts)
    }

    /// Publish a message that slow subscribers may miss instead of being closed.
    pub fn publish_droppable(
        &mut self,
        topic: impl AsRef<[u8]>,
        msg: Message<'_>,
    ) -> Result<(), PubSubError> {
        self.publish_with(topic, msg, PublishOptions::droppable())
    }

    /// A thread-safe handle for publishing and sending from elsewhere (e.g. a worker thread
    /// that answers this connection later with [`Publisher::send`]).
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.out.ctx.topics.hub().clone())
    }

    /// Run one handler callback on this connection. A panic in it fails the connection with
    /// 1011 and is counted; it goes no further.
    #[inline]
    pub(crate) fn guard(&mut self, callback: impl FnOnce(&mut Self)) {
        if catch_unwind(AssertUnwindSafe(|| callback(&mut *self))).is_err() {
            ShardStats::bump(&self.out.ctx.stats.handler_panics, 1);
            mark_reason(self.out.flags, CloseReason::HandlerPanic);
            let (now, half, ep) = (self.now, &mut *self.half, &mut *self.ep);
            half.fail(
                now,
                ep,
                &mut self.out,
                CloseCode::INTERNAL_ERROR,
                "handler panicked",
            );
        }
    }
}
