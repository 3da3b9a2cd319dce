//! [`Handler`]: the callbacks a shard makes into the application. It lives in the shard layer
//! with [`Conn`], the handle it is lent, because `Conn` wraps the shard's own state.
//!
//! A callback that panics is caught where the shard calls it: its connection is failed with
//! 1011 (internal error), the panic is counted in [`crate::Stats::handler_panics`], and the
//! shard and every other connection go on. The handler value itself may be left half-updated by
//! the panic; keep per-connection data in `State` where that matters.

use super::conn::Conn;
use super::request::{Decision, HttpContext, Upgrade};
use crate::id::ConnId;
use crate::proto::{CloseCode, Message, Request};
use crate::response::Response;

/// Your application: one value per shard (created on the shard's thread by the factory given
/// to [`crate::ServerBuilder::start`], so it need not be `Send`), called for every connection of that
/// shard. Callbacks run on the shard's thread and should not block.
///
/// # Deciding upgrades elsewhere
///
/// Authentication often means asking another service. `on_upgrade` may [defer](Upgrade::defer)
/// its decision to any thread; the shard goes on serving everyone else meanwhile, and the
/// connection opens with the state the answer carries:
///
/// ```no_run
/// use std::sync::mpsc;
/// use percore::{Conn, Decision, Deferred, Handler, Message, Reject, Request, Server, Upgrade};
///
/// struct User(String);
///
/// struct App {
///     auth: mpsc::Sender<(String, Deferred<User>)>,
/// }
///
/// impl Handler for App {
///     type State = User;
///
///     fn on_upgrade(&mut self, req: &Request, up: Upgrade<User>) -> Decision<User> {
///         let Some(token) = req.header("Authorization") else {
///             return up.reject(Reject::new(401, "token required"));
///         };
///         let (pending, answer) = up.defer();
///         let _ = self.auth.send((token.to_owned(), answer)); // a dropped answer is a 503
///         pending
///     }
///
///     fn on_message(&mut self, conn: &mut Conn<'_, User>, msg: Message<'_>) {
///         let reply = format!("{} said {} bytes", conn.state().0, msg.as_bytes().len());
///         let _ = conn.send_text(&reply);
///     }
/// }
///
/// let (tx, rx) = mpsc::channel::<(String, Deferred<User>)>();
/// std::thread::spawn(move || {
///     for (token, answer) in rx {
///         // ... ask the session store ...
///         match token.strip_prefix("Bearer ") {
///             Some(name) => answer.accept(User(name.to_owned())),
///             None => answer.reject(Reject::new(403, "bad token")),
///         }
///     }
/// });
/// let tx = std::sync::Mutex::new(tx);
/// let server = Server::builder().start(move |_| App { auth: tx.lock().unwrap().clone() })?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Handler: 'static {
    /// Per-connection state: made by [`Handler::on_upgrade`] when it accepts (or given to
    /// [`crate::ServerHandle::connect_with_state`] for an outbound connection), lent to every
    /// callback through [`Conn::state`], and handed back in [`Handler::on_close`]. Any type: it
    /// stays on the shard's thread (a [deferred](Upgrade::defer) decision needs it `Send`).
    type State: 'static;

    /// An upgrade request arrived (already validated as a WebSocket handshake and past the
    /// server's Origin policy). Decide with `up`: accept with the connection's initial state
    /// (and a subprotocol and headers: [`Upgrade::accept_with`]), reject with an HTTP status,
    /// or [defer](Upgrade::defer) the decision to another thread. (A panic here answers 500.)
    ///
    /// The default accepts every request with `()` as the state, so a handler with
    /// `type State = ();` need not write this method. A handler with any other state must
    /// (even one used for outbound connections only: its server listens all the same): using
    /// the default with a state of non-zero size does not compile (a build error naming
    /// `on_upgrade`), and with another zero-sized one every upgrade is refused with 500.
    fn on_upgrade(&mut self, req: &Request, up: Upgrade<Self::State>) -> Decision<Self::State> {
        const {
            assert!(
                std::mem::size_of::<Self::State>() == 0,
                "Handler::on_upgrade must be implemented when State is not ()"
            )
        };
        let _ = req;
        up.accept_unit()
    }

    /// A plain HTTP request (`GET` or `HEAD`, not an upgrade) arrived on the WebSocket port: a
    /// health check, a metrics scrape, a page or a script. Answer with a [`Response`] of at most
    /// [`crate::ServerBuilder::http_response_bytes_max`] (larger: 500); the connection closes
    /// after it. A `HEAD` request is answered like a `GET` (the engine sends the head, with the
    /// `Content-Length` of the body, and not the body), so one branch serves both. The default
    /// answers 404. (A panic here answers 500.)
    fn on_request(&mut self, req: &Request, cx: &HttpContext<'_>) -> Response {
        let _ = (req, cx);
        Response::not_found()
    }

    /// The handshake completed; the connection is open.
    fn on_open(&mut self, conn: &mut Conn<'_, Self::State>) {
        let _ = conn;
    }

    /// A complete text or binary message arrived.
    fn on_message(&mut self, conn: &mut Conn<'_, Self::State>, msg: Message<'_>);

    /// A client of the resume subprotocol (see [`crate::resume`]) asks to subscribe to
    /// `topic` (`sub` or `resume`): return whether it may. The default allows every topic:
    /// when clients must not read every topic, decide here (from the connection's state),
    /// since the engine answers these commands itself. A refusal is answered `err forbidden
    /// TOPIC`; the connection goes on.
    fn on_subscribe(&mut self, conn: &mut Conn<'_, Self::State>, topic: &str) -> bool {
        let _ = (conn, topic);
        true
    }

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
    /// handshake (reset, EOF, pong timeout, shutdown deadline). Called only for connections that
    /// opened (and for outbound ones whose handshake failed): a refused, timed-out or abandoned
    /// upgrade never had a state.
    fn on_close(&mut self, state: Self::State, id: ConnId, code: Option<CloseCode>, reason: &str) {
        let _ = (state, id, code, reason);
    }
}
