//! Reliable delivery across reconnects: the `percore.resume.v1` subprotocol.
//!
//! A topic with history ([`crate::TopicHistory`]) gives every publish a [`Position`]
//! (epoch, sequence) and keeps its recent messages. A client that speaks this subprotocol
//! subscribes with the last position it saw (`resume EPOCH SEQ TOPIC`); the server replays what
//! the history still holds after it, then goes on live, with no gap and no duplicate. If the
//! history no longer reaches back, the client is told exactly which positions are lost (`gap`),
//! or that the history started over (`reset`, a new epoch: a restarted server), so the
//! application can resynchronise instead of silently missing data. Clients ack positions with
//! their heartbeats (no round-trip per message). The specification is
//! `docs/resume-protocol-v1.md`.
//!
//! The server side: turn it on with [`crate::ServerBuilder::resume_protocol`] (or accept an
//! upgrade with this subprotocol); a connection that offers it then gets it and its commands
//! are answered by the engine, each subscription checked by [`crate::Handler::on_subscribe`];
//! its `msg PAYLOAD` messages reach [`crate::Handler::on_message`] as `PAYLOAD`.
//!
//! The client side: [`Session`] is the protocol state without I/O (positions, backoff with
//! full jitter, heartbeats, events); [`crate::ResumeClient`] runs one on a thread of its own.
//! `percore serve` serves the same client for browsers at `/client.js`.

mod backoff;
mod session;
mod wire;

pub use crate::history::{Position, TopicHistory};
pub use backoff::{Backoff, Jitter};
pub use session::{Beat, Event, Heartbeat, Session};
pub use wire::{Command, CommandError, Envelope, Notice};

/// The subprotocol name (`Sec-WebSocket-Protocol`).
pub const PROTOCOL: &str = "percore.resume.v1";
