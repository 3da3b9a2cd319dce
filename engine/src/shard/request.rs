//! What a handler answers an HTTP request with: an upgrade request gets a [`Decision`] made
//! through its [`Upgrade`] (accept with the connection's state, reject, or defer to a
//! [`Deferred`] handle answered later from any thread); a plain request gets a
//! [`crate::Response`], with an [`HttpContext`] to look at. How deferred decisions are bounded
//! is told on [`Deferred`].

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use super::hub::{Hub, Publisher};
use super::mailbox::{Mail, Verdict};
use super::metrics::Metrics;
use crate::config::Config;
use crate::id::ConnId;
use crate::stats::Stats;
use crate::upgrade::{Accept, Reject};

/// An upgrade request being decided, handed to [`crate::Handler::on_upgrade`]: turn it into a
/// [`Decision`] with exactly one of [`Upgrade::accept`], [`Upgrade::accept_with`],
/// [`Upgrade::reject`] or [`Upgrade::defer`].
pub struct Upgrade<S> {
    id: ConnId,
    peer: SocketAddr,
    hub: Arc<Hub>,
    state: PhantomData<fn() -> S>,
}

/// The answer to an upgrade request ([`crate::Handler::on_upgrade`]), made by [`Upgrade`].
#[must_use = "return the decision from on_upgrade"]
pub struct Decision<S>(pub(crate) Decided<S>);

/// What was decided.
pub(crate) enum Decided<S> {
    Accept(Accept, S),
    Reject(Reject),
    Pending,
}

/// A deferred upgrade decision: answer it from any thread with [`Deferred::accept`],
/// [`Deferred::accept_with`] or [`Deferred::reject`]. `Send` (made only for `Send` states);
/// dropping it unanswered rejects the upgrade with 503.
///
/// # How a deferred decision is bounded
///
/// [`Upgrade::defer`] answers "pending" and gives a `Send` handle. The request's connection
/// waits in its shard (which goes on serving everyone else) until the handle is answered: the
/// answer travels through the shard's mailbox like a [`crate::Publisher::send`], and is applied
/// on the shard's next loop turn. The wait is bounded:
///
/// - by [`handshake_timeout`](crate::ServerBuilder::handshake_timeout), counted from the TCP
///   accept: then the connection is closed without a response (a plain close, as for a
///   request that never completed). A 408 would tell the client *it* was too slow, which is
///   false for a complete request waiting on the server, and would make the connection outlive
///   the deadline by a flush and a linger; a WebSocket client sees the same failed handshake
///   either way. To tell clients something, answer them before the deadline (e.g. reject with
///   503 when an auth backend is slow);
/// - by [`connections_max`](crate::ServerBuilder::connections_max): a pending upgrade is an
///   open connection.
///
/// A client that disconnects meanwhile is finalized at once; the late answer finds its
/// [`ConnId`] gone (the slot's generation changed, or the slot is empty) and is dropped,
/// state included. A handle dropped without an answer rejects the upgrade with 503 (an auth
/// thread that dies or a queue that is dropped at shutdown lets its clients go at once rather
/// than at the timeout).
///
/// What a pending upgrade holds on its shard: its slab entry (under 100 bytes), the parsed
/// request (its strings, about the request's own size, plus 48 bytes per header and one
/// allocation each: 1–2 KiB for a browser's request; at most `handshake_header_bytes_max` plus
/// about 6 KiB for 64 headers), and frames the client sent early (held, at most
/// `handshake_header_bytes_max`). The handle itself is 24 bytes; an answer in the mailbox holds
/// the `Accept` and the state until the shard reads it.
pub struct Deferred<S> {
    id: ConnId,
    /// `None` once answered.
    hub: Option<Arc<Hub>>,
    state: PhantomData<fn(S)>,
}

/// What [`crate::Handler::on_request`] may look at besides the request: who sent it and the
/// server's counters.
pub struct HttpContext<'a> {
    pub(crate) peer: SocketAddr,
    pub(crate) shard: usize,
    pub(crate) hub: &'a Arc<Hub>,
    pub(crate) config: &'a Arc<Config>,
}

impl<S: 'static> Upgrade<S> {
    pub(crate) fn new(id: ConnId, peer: SocketAddr, hub: Arc<Hub>) -> Self {
        Self {
            id,
            peer,
            hub,
            state: PhantomData,
        }
    }

    /// The id the connection will have once open (its shard, slot and generation).
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Accept with a plain 101; `state` is the connection's from now on
    /// ([`crate::Conn::state`], handed back to [`crate::Handler::on_close`]).
    pub fn accept(self, state: S) -> Decision<S> {
        self.accept_with(Accept::new(), state)
    }

    /// Accept with a subprotocol and headers ([`Accept`]) and the connection's `state`.
    pub fn accept_with(self, accept: Accept, state: S) -> Decision<S> {
        Decision(Decided::Accept(accept, state))
    }

    /// Refuse with an HTTP status, headers and body; the connection closes after it.
    pub fn reject(self, reject: Reject) -> Decision<S> {
        Decision(Decided::Reject(reject))
    }

    /// Decide later, from any thread: returns the "pending" decision to give back from
    /// `on_upgrade`, and the handle to answer with. The state travels with the answer, hence
    /// `S: Send` (only for this path: a handler that decides at once may keep `Rc`s in it).
    pub fn defer(self) -> (Decision<S>, Deferred<S>)
    where
        S: Send,
    {
        let handle = Deferred {
            id: self.id,
            hub: Some(self.hub),
            state: PhantomData,
        };
        (Decision(Decided::Pending), handle)
    }

    /// The default `on_upgrade`'s answer: accept with `()` as the state (refused with 500 for
    /// any other zero-sized state, which has no value to make here).
    pub(crate) fn accept_unit(self) -> Decision<S> {
        let mut unit = Some(());
        match (&mut unit as &mut dyn Any).downcast_mut::<Option<S>>() {
            Some(s) => match s.take() {
                Some(s) => self.accept(s),
                None => self.reject(Reject::new(500, "internal error")),
            },
            None => self.reject(Reject::new(500, "on_upgrade is not implemented")),
        }
    }
}

impl<S: Send + 'static> Deferred<S> {
    /// The connection this decision is for.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Accept with a plain 101 and the connection's `state`. A no-op if the client is gone or
    /// the handshake timed out meanwhile (the state is then dropped on the shard's thread).
    pub fn accept(self, state: S) {
        self.accept_with(Accept::new(), state);
    }

    /// Accept with a subprotocol and headers and the connection's `state`.
    pub fn accept_with(mut self, accept: Accept, state: S) {
        self.post(Verdict::Accept(Box::new((accept, state))));
    }

    /// Refuse with an HTTP status, headers and body.
    pub fn reject(mut self, reject: Reject) {
        self.post(Verdict::Reject(Box::new(reject)));
    }
}

impl<S> Deferred<S> {
    /// Hand the answer to the owning shard (control mail: never refused for a full mailbox; a
    /// stopped server has nobody left to answer).
    fn post(&mut self, verdict: Verdict) {
        if let Some(hub) = self.hub.take() {
            let _ = hub.mail().post(
                self.id.shard(),
                Mail::Decide {
                    id: self.id,
                    verdict,
                },
            );
        }
    }
}

impl<S> Drop for Deferred<S> {
    fn drop(&mut self) {
        self.post(Verdict::Dropped);
    }
}

impl HttpContext<'_> {
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The index of the shard answering.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.hub.mail().len()
    }

    /// The server's counters, summed over shards (as [`crate::ServerHandle::stats`]).
    pub fn stats(&self) -> Stats {
        self.hub.stats()
    }

    /// A handle for publishing and sending from here or elsewhere.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.hub.clone())
    }

    /// The server's metrics (a handle to keep, or to read now: [`Metrics::snapshot`]).
    pub fn metrics_handle(&self) -> Metrics {
        Metrics::new(self.hub.clone(), self.config.clone())
    }

    /// The server's metrics in the Prometheus text format (as [`crate::ServerHandle::metrics`]),
    /// for a `/metrics` answer on this port: `Response::with_body(200, Metrics::CONTENT_TYPE,
    /// cx.metrics().into_bytes())`. A separate port for it is often better: see `percore serve --metrics`.
    #[cfg(feature = "metrics")]
    pub fn metrics(&self) -> String {
        self.metrics_handle().render()
    }
}

impl<S> fmt::Debug for Upgrade<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrade")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl<S> fmt::Debug for Decision<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Decided::Accept(..) => "Decision::Accept",
            Decided::Reject(_) => "Decision::Reject",
            Decided::Pending => "Decision::Pending",
        })
    }
}

impl<S> fmt::Debug for Deferred<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred")
            .field("id", &self.id)
            .field("answered", &self.hub.is_none())
            .finish()
    }
}

impl fmt::Debug for HttpContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpContext")
            .field("peer", &self.peer)
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}
