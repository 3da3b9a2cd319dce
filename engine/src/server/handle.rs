//! The handle to a running server: what the application does with it once started.

use std::any::{Any, TypeId};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::Connect;
#[cfg(feature = "cluster")]
use crate::cluster::Bridge;
use crate::config::Backend;
use crate::id::ConnId;
use crate::proto::Message;
use crate::pubsub::{PubSubError, PublishOptions};
use crate::shard::{Hub, Mail, Metrics, Publisher};
use crate::stats::Stats;

/// A running server. Dropping it shuts the server down at once (as `shutdown(Duration::ZERO)`).
pub struct ServerHandle {
    pub(super) hub: Arc<Hub>,
    pub(super) metrics: Metrics,
    pub(super) local_addr: SocketAddr,
    #[cfg(feature = "tls")]
    pub(super) tls_local_addr: Option<SocketAddr>,
    pub(super) backend: Backend,
    pub(super) threads: Mutex<Vec<JoinHandle<()>>>,
    /// The cluster bridge thread, stopped after the shards.
    #[cfg(feature = "cluster")]
    pub(super) bridge: Mutex<Option<Bridge>>,
    pub(super) handshake_timeout: Duration,
    /// The handler's `State` type (outbound connections bring theirs).
    pub(super) state_type: (TypeId, &'static str),
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .field("backend", &self.backend)
            .field("shards", &self.shards())
            .finish()
    }
}

impl ServerHandle {
    /// The address the shards listen on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address that speaks TLS, if any: the [`ServerBuilder::tls_bind`](crate::ServerBuilder::tls_bind)
    /// address (with its real port), or [`ServerHandle::local_addr`] when TLS is served there.
    #[cfg(feature = "tls")]
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// The backend actually running (`Auto` resolved).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Queue `msg` for every open accepted connection on every shard, like
    /// [`crate::Conn::broadcast`], from any thread (serialized once here). A shard whose mailbox
    /// is full misses it (counted in [`Stats::dropped`]).
    pub fn broadcast(&self, msg: Message<'_>) {
        self.hub.broadcast_external(msg);
    }

    /// A cloneable, thread-safe handle for publishing and sending to connections.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.hub.clone())
    }

    /// Publish `msg` to every subscriber of `topic` (see [`Publisher::publish`]).
    pub fn publish(&self, topic: impl AsRef<[u8]>, msg: Message<'_>) -> Result<(), PubSubError> {
        self.publisher().publish(topic, msg)
    }

    /// Publish with explicit [`PublishOptions`].
    pub fn publish_with(
        &self,
        topic: impl AsRef<[u8]>,
        msg: Message<'_>,
        opts: PublishOptions,
    ) -> Result<(), PubSubError> {
        self.publisher().publish_with(topic, msg, opts)
    }

    /// Queue `msg` to the connection `id` (see [`Publisher::send`]).
    pub fn send(&self, id: ConnId, msg: Message<'_>) -> Result<(), PubSubError> {
        self.publisher().send(id, msg)
    }

    /// Open an outbound connection on shard `shard` (taken modulo the shard count), for a
    /// handler whose `State` is `()` (else see [`ServerHandle::connect_with_state`]). The TCP
    /// connect happens here, blocking up to the handshake timeout; the WebSocket handshake then
    /// runs on the shard, whose handler gets `on_open` when the server answered 101, then
    /// messages as for any connection. If the handshake fails or times out, `on_close` is called
    /// with 1006 and a reason (without `on_open` before it).
    pub fn connect(&self, shard: usize, target: Connect) -> io::Result<()> {
        self.connect_with_state(shard, target, ())
    }

    /// [`ServerHandle::connect`] with the connection's initial `state`, which must be of the
    /// handler's `State` type (else `InvalidInput`, and nothing is connected).
    pub fn connect_with_state<S: Send + 'static>(
        &self,
        shard: usize,
        target: Connect,
        state: S,
    ) -> io::Result<()> {
        let (want, name) = self.state_type;
        if TypeId::of::<S>() != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "connect: the handler's State is {name}, not {}",
                    std::any::type_name::<S>()
                ),
            ));
        }
        let state: Box<dyn Any + Send> = Box::new(state);
        let out = target.open(self.handshake_timeout, state)?;
        let i = shard % self.shards().max(1);
        Ok(self.hub.mail().post(i, Mail::Connect(Box::new(out)))?)
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.hub.mail().len()
    }

    /// Counters summed over all shards (each read with relaxed ordering: a snapshot, not an
    /// atomic cut).
    pub fn stats(&self) -> Stats {
        self.hub.stats()
    }

    /// Every metric, per shard, in the Prometheus text exposition format (OpenMetrics 1.0,
    /// `Content-Type` [`Metrics::CONTENT_TYPE`]): the body of a `/metrics` answer. Names, types
    /// and labels: `docs/metrics.md`. Reading costs the shards nothing (see [`Metrics`]).
    #[cfg(feature = "metrics")]
    pub fn metrics(&self) -> String {
        self.metrics.render()
    }

    /// A handle on the metrics to keep and read from any thread: [`Metrics::snapshot`] (plain
    /// numbers), [`Metrics::render`] (the text), or register it as a `prometheus-client`
    /// collector.
    pub fn metrics_handle(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Graceful shutdown: stop accepting, send close 1001 to every open connection, keep
    /// flushing and wait for the close replies until `deadline` has passed, then drop the
    /// remaining sockets (their `on_close` gets 1006) and join the shard threads. Idempotent.
    /// The closes begin in batches ([`crate::ServerBuilder::shutdown_close_batch`]); a
    /// connection whose turn has not come by the deadline is dropped with the others.
    pub fn shutdown(&self, deadline: Duration) {
        let at = Instant::now() + deadline;
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        if threads.is_empty() {
            return;
        }
        self.hub.stop();
        for i in 0..self.hub.mail().len() {
            let _ = self.hub.mail().post(i, Mail::Shutdown(at));
        }
        for t in threads {
            let _ = t.join();
        }
        #[cfg(feature = "cluster")]
        if let Some(b) = self.bridge.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.stop(at);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}
