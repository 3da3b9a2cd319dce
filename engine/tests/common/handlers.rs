//! The handler every integration test runs: an echo server that also obeys a few text
//! commands, so tests can make the server initiate a close, send a ping or flood a client,
//! and an upgrade policy (origin, token, subprotocol) for the handshake tests.

use percore::Upgrade;
use percore::{Accept, CloseCode, Conn, ConnId, Decision, Handler, Message, Reject, Request};
use std::sync::mpsc::Sender;

/// The origin `on_upgrade` refuses with 403.
pub const FORBIDDEN_ORIGIN: &str = "http://evil.example";
/// The path that requires `?token=secret` (401 without it).
pub const PRIVATE_PATH: &str = "/private";
/// The subprotocol chosen when offered.
pub const CHOSEN_PROTOCOL: &str = "chat.v2";
/// A header added to every 101 response.
pub const EXTRA_HEADER: (&str, &str) = ("X-Percore-Test", "yes");

/// Prefix of a command message (everything else is echoed).
pub const CMD: &str = "cmd:";

/// What the handler reports to the test thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `on_open` ran.
    Opened(ConnId),
    /// `on_close` ran with this code.
    Closed(ConnId, Option<u16>, String),
    /// A flood command stopped: how many messages were queued, and whether a send failed.
    FloodDone {
        /// Messages accepted by `send`.
        queued: usize,
        /// `send` returned an error before the flood was done.
        send_failed: bool,
    },
    /// A ping from the client reached `on_ping`.
    Ping(Vec<u8>),
    /// `on_drain` ran.
    Drained(ConnId),
    /// What `send_text` returned right after `close` (command `close-then-send`).
    SendAfterClose(Result<(), percore::SendError>),
    /// `on_upgrade` saw a request: over TLS or not, and the TLS server name.
    Upgrade {
        /// `Request::is_tls`.
        tls: bool,
        /// `Request::server_name`.
        server_name: Option<String>,
    },
}

/// Echo + commands + upgrade policy. One per shard.
pub struct TestHandler {
    /// Where events go (the test's receiver may be gone; sends are best effort).
    pub events: Sender<Event>,
}

impl Handler for TestHandler {
    type State = ();

    fn on_upgrade(&mut self, req: &Request, up: Upgrade<()>) -> Decision<()> {
        let _ = self.events.send(Event::Upgrade {
            tls: req.is_tls(),
            server_name: req.server_name().map(str::to_owned),
        });
        if req.origin() == Some(FORBIDDEN_ORIGIN) {
            return up.reject(Reject::new(403, "origin not allowed"));
        }
        if req.path() == PRIVATE_PATH && req.query() != Some("token=secret") {
            return up.reject(Reject::new(401, "missing token"));
        }
        let mut accept = Accept::new().header(EXTRA_HEADER.0, EXTRA_HEADER.1);
        if req.protocols().any(|p| p == CHOSEN_PROTOCOL) {
            accept = accept.protocol(CHOSEN_PROTOCOL);
        }
        up.accept_with(accept, ())
    }

    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        let _ = self.events.send(Event::Opened(conn.id()));
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        if let Message::Text(t) = msg {
            if let Some(cmd) = t.strip_prefix(CMD) {
                self.command(conn, cmd);
                return;
            }
        }
        let _ = conn.send(msg);
    }

    fn on_ping(&mut self, _conn: &mut Conn<'_, ()>, payload: &[u8]) {
        let _ = self.events.send(Event::Ping(payload.to_vec()));
    }

    fn on_drain(&mut self, conn: &mut Conn<'_, ()>) {
        let _ = self.events.send(Event::Drained(conn.id()));
    }

    fn on_close(&mut self, _state: (), id: ConnId, code: Option<CloseCode>, reason: &str) {
        let _ = self
            .events
            .send(Event::Closed(id, code.map(|c| c.0), reason.to_string()));
    }
}

impl TestHandler {
    /// Commands: `close:CODE:REASON`, `close-then-send`, `broadcast:TEXT`, `ping:PAYLOAD`, `flood:COUNT:SIZE` (COUNT binary messages
    /// of SIZE bytes, byte i of message m = (m + i) % 251, stopping at the first send error).
    fn command(&mut self, conn: &mut Conn<'_, ()>, cmd: &str) {
        let mut parts = cmd.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("close"), Some(code), reason) => {
                let code = code.parse().unwrap_or(1000);
                conn.close(CloseCode(code), reason.unwrap_or(""));
            }
            (Some("close-then-send"), _, _) => {
                conn.close(CloseCode::NORMAL, "");
                let r = conn.send_text("after close");
                let _ = self.events.send(Event::SendAfterClose(r));
            }
            (Some("broadcast"), text, rest) => {
                let text = match rest {
                    Some(r) => format!("{}:{r}", text.unwrap_or("")),
                    None => text.unwrap_or("").to_string(),
                };
                conn.broadcast(Message::Text(&text));
            }
            (Some("ping"), payload, _) => {
                let _ = conn.ping(payload.unwrap_or("").as_bytes());
            }
            (Some("flood"), Some(count), Some(size)) => {
                let count: usize = count.parse().unwrap_or(0);
                let size: usize = size.parse().unwrap_or(0);
                let mut queued = 0;
                let mut send_failed = false;
                for m in 0..count {
                    if conn.send_binary(&flood_message(m, size)).is_err() {
                        send_failed = true;
                        break;
                    }
                    queued += 1;
                }
                let _ = self.events.send(Event::FloodDone {
                    queued,
                    send_failed,
                });
            }
            _ => {
                let _ = conn.send_text("unknown command");
            }
        }
    }
}

/// Message `m` of a flood of `size`-byte messages.
pub fn flood_message(m: usize, size: usize) -> Vec<u8> {
    (0..size).map(|i| ((m + i) % 251) as u8).collect()
}
