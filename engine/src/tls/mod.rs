//! TLS 1.3 (`wss://`), sans-IO: the `tls` feature.
//!
//! A [`Session`] takes received ciphertext and hands out plaintext; what it has to send it
//! appends to a `Vec`. Like [`crate::proto`] it owns no socket and reads no clock; the shard
//! runs one per TLS connection between the I/O backend and the protocol state machine:
//!
//! ```text
//! backend recv buffer ──▶ Session::recv ──(plaintext, in place)──▶ proto::Connection
//! Handler::send ─▶ send queue (plaintext frames; broadcasts shared) ──▶ flush: Session::seal ─▶ records ─▶ backend
//! ```
//!
//! # How
//!
//! rustls (its unbuffered API) runs the handshake. When it is done the session takes rustls'
//! traffic secrets and its `KernelConnection` (the key schedule, kept for KeyUpdate and session
//! tickets) and from then on its own [`RecordLayer`] opens each record where it landed in the
//! receive buffer, so the WebSocket decoder reads (and unmasks) the plaintext there, and seals
//! records straight into the send queue at flush time. rustls' own record APIs copy each
//! record's plaintext into a `Vec` of their own, and its buffered connection keeps a 4 KiB
//! buffer for good; this way an idle TLS connection holds two AEAD keys and the key schedule,
//! about 2 KiB, and no buffer.
//!
//! # What is and is not implemented
//!
//! - **TLS 1.3 only.** percore builds rustls without TLS 1.2. A client that offers only TLS 1.2
//!   (or older) gets rustls' `protocol_version` alert and the handshake fails (counted in
//!   [`crate::Stats::tls_failures`]). If an application's build of rustls has TLS 1.2 enabled
//!   and its config allows it, a connection that negotiates it is closed right after the
//!   handshake ([`TlsError::NotTls13`]).
//! - Cipher suites: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
//!   TLS_CHACHA20_POLY1305_SHA256 (every TLS 1.3 suite rustls has), key exchange as the
//!   config says (aws-lc-rs default: X25519MLKEM768, X25519, P-256, P-384).
//! - After the handshake: KeyUpdate both ways (answered once, rekeying at the suite's
//!   confidentiality limit), NewSessionTicket (client side), `close_notify` both ways, fatal
//!   alerts both ways; see [`RecordLayer`] for every check on received records.
//! - Not implemented: 0-RTT early data (refused: an upgrade request must not be replayable),
//!   post-handshake client authentication, record padding on send, kernel TLS offload.
//! - The handshake itself (certificates, SNI, ALPN, client authentication, resumption) is
//!   rustls' and follows the `ServerConfig` / `ClientConfig` given.
//!
//! [`server_config`] and [`client_config`] build configs with percore's choices (aws-lc-rs,
//! TLS 1.3, ALPN `http/1.1`, no session tickets).

mod config;
mod error;
mod record;
mod session;
#[cfg(test)]
mod tests;

pub use config::{
    client_config, prepare_client, prepare_server, provider, server_config, ALPN_HTTP_1_1,
};
pub use error::{alert_name, RecordError, TlsError};
pub use record::{
    record_len, Aead, KeySchedule, RecordLayer, TrafficKey, CIPHERTEXT_MAX, HEADER_LEN,
    PLAINTEXT_MAX, SEAL_OVERHEAD, TAG_LEN,
};
pub use session::Session;

/// The rustls version percore is built with (its configs and types are in percore's API).
pub use rustls;
