//! The client side of the WebSocket protocol, as the load generator needs it: the upgrade
//! request and response check, masked frame encoding and a decoder for server frames.

use std::ops::ControlFlow;

/// A received server frame, as far as the load generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text or binary message.
    Data(&'a [u8]),
    /// A ping with its payload (answer with a pong).
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame.
    Close,
}

/// Frame kinds the load generator sends.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Binary data message.
    Binary,
    /// Pong answering a ping.
    Pong,
    /// Close frame (answering the server's).
    Close,
}

/// A protocol violation by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolViolation;

/// A new random `Sec-WebSocket-Key` and the upgrade request carrying it.
pub fn handshake_request(host: &str, path: &str) -> (Vec<u8>, String) {
    let key = percore::proto::generate_key();
    let req = percore::proto::client_request(host, path, &key, &[], &[]);
    (req, key)
}

/// Check the server's upgrade response: Ok(None) = incomplete, Ok(Some(n)) = valid 101
/// occupying `buf[..n]` (bytes after it are frames), Err = rejected or malformed.
pub fn handshake_response(buf: &[u8], key: &str) -> Result<Option<usize>, ProtocolViolation> {
    match percore::proto::parse_response(buf, key, 16 << 10) {
        Ok(Some((_resp, n))) => Ok(Some(n)),
        Ok(None) => Ok(None),
        Err(_) => Err(ProtocolViolation),
    }
}

/// Append one complete masked frame to `out`.
pub fn encode(out: &mut Vec<u8>, op: Op, payload: &[u8], mask: [u8; 4]) {
    let opcode = match op {
        Op::Binary => percore::proto::OpCode::Binary,
        Op::Pong => percore::proto::OpCode::Pong,
        Op::Close => percore::proto::OpCode::Close,
    };
    percore::proto::encode_frame(out, opcode, true, payload, Some(mask));
}

/// Decoder for frames sent by a server (unmasked), reassembling fragmented messages.
pub struct Decoder {
    inner: percore::proto::Decoder,
}

impl Decoder {
    /// A decoder accepting messages up to `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        let limits = percore::proto::Limits::new(max_message_bytes, max_message_bytes);
        Decoder {
            inner: percore::proto::Decoder::new(percore::proto::Role::Client, limits),
        }
    }

    /// Decode `buf` in place; call `f` for every event. Returns the bytes consumed; the caller
    /// presents the unconsumed tail again, followed by new bytes, on the next call.
    pub fn decode<F>(&mut self, buf: &mut [u8], mut f: F) -> Result<usize, ProtocolViolation>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        use percore::proto::Event as E;
        self.inner
            .decode(buf, |ev| match ev {
                E::Text(s) => f(Event::Data(s.as_bytes())),
                E::Binary(b) => f(Event::Data(b)),
                E::Ping(p) => f(Event::Ping(p)),
                E::Pong(_) => f(Event::Pong),
                E::Close(_) => f(Event::Close),
                _ => ControlFlow::Continue(()),
            })
            .map_err(|_| ProtocolViolation)
    }
}
