//! percore: a thread-per-core WebSocket (RFC 6455) engine for Linux.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod proto;
