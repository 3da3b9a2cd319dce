//! The one error type for every RFC 6455 violation found while decoding.

use core::fmt;

use super::close_code::CloseCode;

/// A protocol violation by the peer. `code` is the close code RFC 6455 prescribes for it; the
/// connection must be failed with a Close frame carrying that code (§7.1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProtocolError {
    /// The close code to send (1002, 1007 or 1009).
    pub code: CloseCode,
    /// A short, fixed explanation (fits in a close reason: at most 123 bytes).
    pub reason: &'static str,
}

impl ProtocolError {
    /// An error with close code `code`.
    pub const fn new(code: CloseCode, reason: &'static str) -> Self {
        Self { code, reason }
    }

    /// 1002: the peer broke a framing rule.
    pub(crate) const fn protocol(reason: &'static str) -> Self {
        Self::new(CloseCode::PROTOCOL_ERROR, reason)
    }

    /// 1007: text that is not UTF-8.
    pub(crate) const fn invalid_utf8(reason: &'static str) -> Self {
        Self::new(CloseCode::INVALID_PAYLOAD, reason)
    }

    /// 1009: a frame or message over a configured limit.
    pub(crate) const fn too_big(reason: &'static str) -> Self {
        Self::new(CloseCode::MESSAGE_TOO_BIG, reason)
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "websocket protocol error {}: {}",
            self.code.0, self.reason
        )
    }
}

impl std::error::Error for ProtocolError {}
