//! [`Handler`]: the callbacks a shard makes into the application. It lives in the shard layer
//! with [`Conn`], the handle it is lent, because `Conn` wraps the shard's own state.
//!
//! A callback that panics is caught where the shard calls it: its connection is failed with
//! 1011 (internal error), the panic is counted in [`crate::Stats::handler_panics`], and the
//! shard and every other connection go on. The handler value itself may be left half-updated by
//! the panic; keep per-connection data in `State` where that matters.

use super::conn::Conn;
use crate::id::ConnId;
use crate::proto::{CloseCode, Message, Request};
use crate::upgrade::{Accept, Reject};

/// Your application: one value per shard (created on the shard's thread by the factory given
/// to [`crate::ServerBuilder::start`], so it need not be `Send`), called for every connection of that
/// shard. Callbacks run on the shard's thread and should not block.
pub trait Handler: 'static {
    /// Per-connection state, created with `Default` when the connection opens and handed back
    /// in [`Handler::on_close`].
    type State: Default + 'static;

    /// An upgrade request arrived (already validated as a WebSocket handshake). Choose a
    /// subprotocol, add headers, or refuse it with an HTTP status. (A panic here answers 500.)
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
