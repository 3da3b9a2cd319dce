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
//!
//! # The handshake, and plain HTTP on the same port
//!
//! [`Handler::on_upgrade`] decides each upgrade request: [`Upgrade::accept`] with the
//! connection's initial [`Handler::State`], [`Upgrade::reject`] with an HTTP status, or
//! [`Upgrade::defer`] to answer later from any thread through a [`Deferred`] handle (an auth
//! service; the shard serves everyone else meanwhile). [`Handler::on_request`] answers the
//! plain HTTP requests that come to the same port (a health check, a page, a script) with a
//! [`Response`]. [`ServerBuilder::allow_origin`] restricts which browser origins may connect.
//!
//! # `wss://` (feature `tls`)
//!
//! With the `tls` feature, `ServerBuilder::tls` serves TLS 1.3 (rustls for the handshake, a
//! record layer of percore's own on aws-lc-rs after it; see the `tls` module for what is and is
//! not implemented) on the bind address or, with `tls_bind`, on a second address beside the
//! plain one, both served by the same shards; `Connect::tls` opens outbound `wss://`.
//!
//! ```no_run
//! # #[cfg(feature = "tls")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use percore::tls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
//! use percore::{Conn, Handler, Message, Server};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     type State = ();
//!     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
//!         let _ = conn.send(msg);
//!     }
//! }
//!
//! let chain = CertificateDer::pem_file_iter("cert.pem")?.collect::<Result<Vec<_>, _>>()?;
//! let key = PrivateKeyDer::from_pem_file("key.pem")?;
//! let server = Server::builder()
//!     .bind("0.0.0.0:9001") // ws://
//!     .tls(percore::tls::server_config(chain, key)?)
//!     .tls_bind("0.0.0.0:9443") // wss://
//!     .start(|_| Echo)?;
//! println!("ws on {}, wss on {:?}", server.local_addr(), server.tls_local_addr());
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "tls"))]
//! # fn main() {}
//! ```
//! # Metrics
//!
//! Each shard counts what it does (connections by close reason, refusals by status, messages
//! and bytes, send-queue bytes, publishes and drops, histograms of ping round trips, loop turns
//! and io_uring batches) with single-writer relaxed counters. [`ServerHandle::metrics`] renders
//! them in the Prometheus text format; [`ServerHandle::metrics_handle`] gives a [`Metrics`] to
//! keep (a [`MetricsSnapshot`] of plain numbers, the text, or a `prometheus-client` collector);
//! [`HttpContext::metrics`] answers `/metrics` from [`Handler::on_request`]. The names, labels
//! and what collecting costs are listed in `docs/metrics.md`.
#![warn(missing_docs, clippy::exhaustive_enums, clippy::exhaustive_structs)]
#![deny(unsafe_code)]

pub mod proto;

mod client;
#[cfg(feature = "cluster")]
pub mod cluster;
mod config;
mod counters;
mod history;
mod id;
mod io;
mod origin;
pub mod pubsub;
mod reconnect;
mod response;
pub mod resume;
mod send_queue;
mod server;
mod shard;
mod stats;
#[cfg(feature = "tls")]
pub mod tls;
mod upgrade;

pub use client::Connect;
#[cfg(feature = "cluster")]
pub use cluster::ClusterConfig;
pub use config::{Backend, Compression, Shards, SlowConsumer};
pub use counters::CloseReason;
pub use history::{Position, TopicHistory};
pub use id::ConnId;
pub use proto::{CloseCode, Message, Request};
pub use pubsub::{PubSubError, PublishOptions};
pub use reconnect::{ResumeClient, ResumeClientBuilder};
pub use response::Response;
pub use server::{Server, ServerBuilder, ServerHandle};
pub use shard::{
    Conn, Decision, Deferred, Handler, HistogramSnapshot, HttpContext, Metrics, MetricsSnapshot,
    Publisher, SendError, ShardSnapshot, Upgrade,
};
pub use stats::{ClusterStats, Stats};

/// The `prometheus-client` crate the engine's [`Metrics`] collector is written for (register it
/// in a registry of this version).
#[cfg(feature = "metrics")]
pub use prometheus_client;
pub use upgrade::{Accept, Reject};
