//! Data messages: what the application sends and receives, and the one mapping of a message to
//! its frame.

use std::sync::Arc;

use super::frame::{encode_frame, OpCode, MAX_HEADER_LEN};

/// A complete data message, borrowed (from the receive buffer, for the duration of a callback,
/// or from the caller when sending).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(clippy::exhaustive_enums)] // RFC 6455 has two data types; callers match both
pub enum Message<'a> {
    /// A text message (valid UTF-8, checked).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// The opcode of the frame that carries it.
    pub fn opcode(&self) -> OpCode {
        match self {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        }
    }

    /// The message as one unmasked (server) frame in a shareable buffer: encoded once, then
    /// queued by reference to any number of connections (broadcasts, publishes, sends from
    /// other threads).
    pub fn encode_shared(&self) -> Arc<[u8]> {
        let payload = self.as_bytes();
        let mut v = Vec::with_capacity(payload.len() + MAX_HEADER_LEN);
        encode_frame(&mut v, self.opcode(), true, payload, None);
        Arc::from(v)
    }
}
