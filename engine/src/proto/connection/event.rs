//! What a connection hands to the application with each event.

use super::send::SendHalf;
use crate::proto::endpoint::Endpoint;
use crate::proto::message::Message;

/// What [`super::Connection::handle_recv`] hands to the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppEvent<'a> {
    /// Client side: the server accepted the upgrade; the connection is open.
    Opened,
    /// A complete data message.
    Message(Message<'a>),
    /// A ping; its pong is already queued.
    Ping(&'a [u8]),
    /// A pong answered the connection's idle ping: the round trip, in microseconds of the
    /// endpoint's fine clock ([`Endpoint::set_clock_us`]; its resolution is the caller's, the
    /// shard's is one loop turn).
    Rtt {
        /// Round trip in µs.
        micros: u32,
    },
}

/// The send half's view of one event: what the application needs to send or close while the
/// event borrows the receive half.
#[derive(Debug)]
#[non_exhaustive]
pub struct Link<'a, O> {
    /// The connection's send half.
    pub half: &'a mut SendHalf,
    /// The shared endpoint.
    pub ep: &'a mut Endpoint,
    /// Where output goes.
    pub out: &'a mut O,
    /// The current tick.
    pub now: u32,
}
