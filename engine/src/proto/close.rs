//! Close codes, close frame payloads and the close handshake (RFC 6455 §5.5.1, §7).

use core::fmt;

use super::codec::Role;
use super::error::ProtocolError;
use percore_simd::validate_utf8;

/// A close status code (RFC 6455 §7.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigated away).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: no status code was present. Never sent on the wire.
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: the connection closed without a close frame. Never sent on the wire.
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: message data inconsistent with its type (text that is not UTF-8).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: policy violation.
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: a message too big to process.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: Self = Self(1010);
    /// 1011: unexpected condition in the server.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1013: try again later (server overloaded).
    pub const TRY_AGAIN_LATER: Self = Self(1013);

    /// May this code appear in a close frame on the wire (1000-1003, 1007-1011, 1012-1014,
    /// 3000-4999)?
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A received close frame. `code == None` means an empty close payload.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
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

/// Where a connection stands in the close handshake.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
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
    role: Role,
    phase: ClosePhase,
    failed: bool,
}

impl CloseState {
    /// An open connection on the side `role`.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            phase: ClosePhase::Open,
            failed: false,
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

    /// The peer broke the protocol: "fail the WebSocket connection" (§7.1.7). Returns the close
    /// payload to send if no close frame was sent yet; the TCP connection should then be closed
    /// without waiting for the peer's close frame.
    pub fn fail(&mut self, err: &ProtocolError) -> Option<([u8; 125], usize)> {
        let reply = self.initiate(err.code, err.reason);
        self.phase = ClosePhase::Closed;
        self.failed = true;
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

    /// May the driver close the TCP connection once its queued bytes are flushed?
    /// Server: as soon as the handshake is complete (§7.1.1: the server closes TCP first).
    /// Client: only after a failure; otherwise it waits for the server to close TCP (or for its
    /// own close timeout, which the driver keeps).
    pub fn should_close_tcp(&self) -> bool {
        match self.role {
            Role::Server => self.is_closed(),
            Role::Client => self.failed,
        }
    }
}
