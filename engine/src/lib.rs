//! percore: a thread-per-core WebSocket (RFC 6455) engine for Linux.
//!
//! One thread per core ("shard") owns its sockets, timers and buffers; nothing on the hot path
//! is shared or locked. Each shard accepts on its own `SO_REUSEPORT` listener, decodes frames in
//! place in its receive buffer and calls your [`Handler`] with borrowed payloads.
//!
//! # An echo server
//!
//! ```no_run
//! use std::time::Duration;
//! use percore::{Conn, Handler, Message, Server, Shards};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type State = ();
//!     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
//!         // Past the send-queue limit the slow-consumer policy closes the connection.
//!         let _ = conn.send(msg);
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let server = Server::builder()
//!         .bind("127.0.0.1:9001")
//!         .shards(Shards::Count(2))
//!         .idle_timeout(Duration::from_secs(60))
//!         .start(|_shard| Echo)?;
//!     println!("listening on {} ({:?})", server.local_addr(), server.backend());
//!     std::thread::sleep(Duration::from_secs(60));
//!     server.shutdown(Duration::from_secs(5));
//!     Ok(())
//! }
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod proto;

mod client;
mod io;
mod pubsub;
mod send_queue;
mod server;
mod shard;

use std::fmt;
use std::net::SocketAddr;

pub use client::Connect;
pub use proto::CloseCode;
pub use proto::Request;
pub use pubsub::{PubSubError, PublishOptions, Publisher};
pub use server::{Server, ServerBuilder, ServerHandle, Stats};

/// Which I/O backend the shards run on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring where the kernel allows it, else epoll (the default).
    #[default]
    Auto,
    /// epoll (through mio): readiness, then `read`/`writev` per connection.
    Epoll,
    /// io_uring: multishot accept and recv into a provided-buffer ring, batched submission.
    IoUring,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Epoll => "epoll",
            Backend::IoUring => "io_uring",
        })
    }
}

/// How many shards (threads) to run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum Shards {
    /// One per CPU core the process may run on (the default).
    #[default]
    PerCore,
    /// Exactly this many (at least 1).
    Count(usize),
}

/// What happens to a connection whose send queue grows past `send_queue_bytes_max`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Drop the queue and close with 1008 (policy violation). The default.
    #[default]
    Close1008,
    /// Drop the queue and close with 1013 (try again later).
    Close1013,
}

/// A successful answer to an upgrade request ([`Handler::on_upgrade`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accept {
    /// The chosen subprotocol (one of [`Request::protocols`]), echoed in
    /// `Sec-WebSocket-Protocol`.
    pub protocol: Option<String>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
}

/// A refused upgrade request: the client gets this HTTP status and body, then the TCP
/// connection is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// HTTP status code (e.g. 403).
    pub status: u16,
    /// Plain-text response body.
    pub body: String,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
}

impl Reject {
    /// A rejection with `status` and a plain-text `body`.
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }
}

/// A complete data message, borrowed from the receive buffer for the duration of the callback.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Message<'a> {
    /// A text message (valid UTF-8, checked).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }
}

/// Identifies a connection across the whole server: shard index, slot and generation (a slot
/// reused by a later connection gets a new generation). `Copy + Send`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct ConnId {
    shard: u32,
    key: u32,
    generation: u32,
}

impl ConnId {
    /// The index of the shard that owns the connection.
    pub fn shard(&self) -> usize {
        self.shard as usize
    }

    /// The slot within its shard.
    pub fn key(&self) -> usize {
        self.key as usize
    }

    /// The generation of the slot.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.shard, self.key, self.generation)
    }
}

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

/// Your application: one value per shard (created on the shard's thread by the factory given
/// to [`ServerBuilder::start`], so it need not be `Send`), called for every connection of that
/// shard. Callbacks run on the shard's thread and should not block.
pub trait Handler: 'static {
    /// Per-connection state, created with `Default` when the connection opens and handed back
    /// in [`Handler::on_close`].
    type State: Default + 'static;

    /// An upgrade request arrived (already validated as a WebSocket handshake). Choose a
    /// subprotocol, add headers, or refuse it with an HTTP status.
    fn on_upgrade(&mut self, req: &Request) -> Result<Accept, Reject> {
        let _ = req;
        Ok(Accept::default())
    }

    /// The handshake completed; the connection is open.
    fn on_open(&mut self, conn: &mut Conn<'_, Self::State>) {
        let _ = conn;
    }

    /// A complete text or binary message arrived.
    fn on_message(&mut self, conn: &mut Conn<'_, Self::State>, msg: Message<'_>);

    /// A ping arrived. The pong is sent automatically.
    fn on_ping(&mut self, conn: &mut Conn<'_, Self::State>, payload: &[u8]) {
        let _ = (conn, payload);
    }

    /// The send queue fell below `send_queue_low_water_bytes` after having held at least that
    /// much (called once per such episode).
    fn on_drain(&mut self, conn: &mut Conn<'_, Self::State>) {
        let _ = conn;
    }

    /// The connection is gone. `code` is the close code the peer sent (or the one we sent when
    /// we failed the connection), `None` for a close frame without a code, and
    /// `Some(CloseCode::ABNORMAL)` (1006) when the TCP connection dropped without a close
    /// handshake (reset, EOF, pong timeout, shutdown deadline).
    fn on_close(&mut self, state: Self::State, id: ConnId, code: Option<CloseCode>, reason: &str) {
        let _ = (state, id, code, reason);
    }
}

/// A connection, lent to [`Handler`] callbacks.
pub struct Conn<'a, S> {
    pub(crate) inner: &'a mut shard::Connection<S>,
    pub(crate) id: ConnId,
    pub(crate) ctx: &'a mut shard::Ctx,
}

impl<S> Conn<'_, S> {
    /// This connection's server-wide id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The per-connection state.
    pub fn state(&self) -> &S {
        &self.inner.state
    }

    /// The per-connection state, mutably.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.inner.state
    }

    /// Queue a message (the payload is copied into the send queue; it is written at the end
    /// of the current loop turn).
    pub fn send(&mut self, msg: Message<'_>) -> Result<(), SendError> {
        let opcode = match msg {
            Message::Text(_) => proto::OpCode::Text,
            Message::Binary(_) => proto::OpCode::Binary,
        };
        self.ctx
            .send_data(self.inner, self.id, opcode, msg.as_bytes())
    }

    /// Queue `msg` for every open accepted connection of the server, on every shard (this one
    /// included; outbound connections made with [`ServerHandle::connect`] are left out, their
    /// frames must be masked one by one). The frame is serialized once and shared by all the
    /// send queues; delivery happens at the end of the current loop turn. Each receiver's
    /// send-queue limit applies.
    pub fn broadcast(&mut self, msg: Message<'_>) {
        let opcode = match msg {
            Message::Text(_) => proto::OpCode::Text,
            Message::Binary(_) => proto::OpCode::Binary,
        };
        self.ctx.broadcast(opcode, msg.as_bytes());
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
        let p = &payload[..payload.len().min(125)];
        self.ctx
            .send_data(self.inner, self.id, proto::OpCode::Ping, p)
    }

    /// Start the close handshake with `code` and `reason` (truncated to 123 bytes). Nothing
    /// more can be sent afterwards; [`Handler::on_close`] follows when the peer answers or the
    /// close timeout passes.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.ctx.close(self.inner, self.id, code, reason);
    }

    /// Bytes queued and not yet written to the socket.
    pub fn buffered_amount(&self) -> usize {
        self.inner.queue.len()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer.get()
    }
}
