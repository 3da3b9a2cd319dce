//! Close codes, close frame payloads and the close handshake (RFC 6455 §5.5.1, §7).

use std::sync::Arc;

use super::close_code::CloseCode;
use super::error::ProtocolError;
use super::frame::{encode_frame, OpCode};
use percore_simd::validate_utf8;

/// A received close frame. `code == None` means an empty close payload.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct CloseFrame<'a> {
    /// The status code, if the payload had one.
    pub code: Option<CloseCode>,
    /// The reason (UTF-8, possibly empty).
    pub reason: &'a str,
}

/// Largest close reason in bytes: a control frame payload is at most 125 bytes, 2 go to the code.
pub const MAX_CLOSE_REASON_LEN: usize = 123;

/// Validate a received close payload: 1 byte -> 1002, invalid code -> 1002, reason not UTF-8 ->
/// 1007.
pub fn parse_close_payload(p: &[u8]) -> Result<CloseFrame<'_>, ProtocolError> {
    match p {
        [] => Ok(CloseFrame {
            code: None,
            reason: "",
        }),
        [_] => Err(ProtocolError::protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::protocol(
                    "close code not allowed on the wire",
                ));
            }
            let reason = validate_utf8(reason)
                .map_err(|_| ProtocolError::invalid_utf8("close reason is not UTF-8"))?;
            Ok(CloseFrame {
                code: Some(code),
                reason,
            })
        }
    }
}

/// Build a close payload (2-byte code + reason truncated to 123 bytes on a char boundary).
/// Returns the buffer and the number of bytes used.
pub fn close_payload(code: CloseCode, reason: &str) -> ([u8; 125], usize) {
    let mut out = [0u8; 125];
    out[..2].copy_from_slice(&code.0.to_be_bytes());
    let mut end = reason.len().min(MAX_CLOSE_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    (out, 2 + end)
}

/// A close frame encoded once for every server connection it is sent to (a server's frames are
/// unmasked, so the bytes are the same for each): a graceful shutdown sends one 1001 to every
/// connection of a shard, and each send queue then holds a reference to these bytes instead of
/// its own copy ([`super::SendHalf::close_shared`]).
#[derive(Clone, Debug)]
pub struct SharedClose {
    code: CloseCode,
    reason: Box<str>,
    frame: Arc<[u8]>,
}

impl SharedClose {
    /// The close frame for `code` and `reason` (truncated to 123 bytes on a char boundary; a
    /// code that may not go on the wire gives an empty payload, as [`CloseState::initiate`]).
    pub fn new(code: CloseCode, reason: &str) -> Self {
        let (p, n) = close_payload(code, reason);
        let reason = core::str::from_utf8(&p[2..n]).unwrap_or_default().into();
        let payload = if code.is_valid_on_wire() {
            &p[..n]
        } else {
            &[][..]
        };
        let mut frame = Vec::with_capacity(2 + payload.len());
        encode_frame(&mut frame, OpCode::Close, true, payload, None);
        Self {
            code,
            reason,
            frame: frame.into(),
        }
    }

    /// The close code.
    pub fn code(&self) -> CloseCode {
        self.code
    }

    /// The reason, as truncated.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The encoded, unmasked frame.
    pub fn frame(&self) -> &Arc<[u8]> {
        &self.frame
    }
}

/// Where a connection stands in the close handshake.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ClosePhase {
    /// No close frame sent or received: data flows both ways.
    Open,
    /// We sent a close frame and wait for the peer's. Nothing more may be sent; data frames
    /// still arriving from the peer are ignored.
    CloseSent,
    /// Close frames went both ways (or the connection was failed): nothing more is sent or
    /// delivered.
    Closed,
}

/// Close handshake state machine (RFC 6455 §5.5.1, §7): `Open -> CloseSent -> Closed` when we
/// start it, `Open -> Closed` when the peer does (the reply payload [`CloseState::on_received`]
/// returns must be queued right away, so "close received" and "reply sent" are one step).
///
/// Payloads are returned as `([u8; 125], len)`: send `&payload[..len]` in a Close frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CloseState {
    phase: ClosePhase,
}

impl Default for CloseState {
    fn default() -> Self {
        Self::new()
    }
}

impl CloseState {
    /// An open connection.
    pub fn new() -> Self {
        Self {
            phase: ClosePhase::Open,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> ClosePhase {
        self.phase
    }

    /// Start the close handshake. `Some(payload)`: send it in a Close frame now (phase becomes
    /// `CloseSent`). `None`: a close frame was already sent; send nothing.
    /// A code that may not appear on the wire (1005, 1006, ...) is sent as an empty payload.
    pub fn initiate(&mut self, code: CloseCode, reason: &str) -> Option<([u8; 125], usize)> {
        if self.phase != ClosePhase::Open {
            return None;
        }
        self.phase = ClosePhase::CloseSent;
        if code.is_valid_on_wire() {
            Some(close_payload(code, reason))
        } else {
            Some(([0; 125], 0))
        }
    }

    /// A close frame arrived. While `Open`, returns the reply to send at once (the received code
    /// echoed, or an empty payload if there was none) and the handshake is complete. After our
    /// own close was sent, completes the handshake and returns `None`.
    pub fn on_received(&mut self, frame: &CloseFrame<'_>) -> Option<([u8; 125], usize)> {
        match self.phase {
            ClosePhase::Open => {
                self.phase = ClosePhase::Closed;
                Some(match frame.code {
                    Some(code) => close_payload(code, ""),
                    None => ([0; 125], 0),
                })
            }
            ClosePhase::CloseSent => {
                self.phase = ClosePhase::Closed;
                None
            }
            ClosePhase::Closed => None,
        }
    }

    /// "Fail the WebSocket connection" (§7.1.7) with `code` (the peer broke the protocol, or
    /// this end gives up: a limit, an internal error). Returns the close payload to send if no
    /// close frame was sent yet; the peer's close frame is not waited for.
    pub fn fail(&mut self, code: CloseCode, reason: &str) -> Option<([u8; 125], usize)> {
        let reply = self.initiate(code, reason);
        self.phase = ClosePhase::Closed;
        reply
    }

    /// Close frames went both ways, or the connection was failed.
    pub fn is_closed(&self) -> bool {
        self.phase == ClosePhase::Closed
    }

    /// May the application still send data or pings? (Only while `Open`.)
    pub fn can_send(&self) -> bool {
        self.phase == ClosePhase::Open
    }

    /// Should data frames from the peer be delivered? After we sent a close they are ignored.
    pub fn accepts_data(&self) -> bool {
        self.phase == ClosePhase::Open
    }
}
