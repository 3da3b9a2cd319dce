//! Why a TLS connection failed: [`RecordError`] (the record layer after the handshake) and
//! [`TlsError`] (the whole session), each saying which alert went to the peer.

use std::fmt;

/// A failure of the record layer. Each maps to the alert RFC 8446 §6.2 asks for (sent before
/// the connection stops), or to none.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecordError {
    /// A record failed authentication (wrong key, tampered, truncated): `bad_record_mac`.
    BadRecordMac,
    /// A record longer than 2^14 + 256 bytes, or plaintext longer than 2^14: `record_overflow`.
    RecordOverflow,
    /// A record or message not allowed here (another outer type after the handshake, an
    /// unknown inner type, a handshake message other than KeyUpdate / NewSessionTicket, too
    /// many empty records): `unexpected_message`.
    UnexpectedMessage(&'static str),
    /// A malformed message (an alert of the wrong length, a bad record version):
    /// `decode_error`.
    DecodeError(&'static str),
    /// A field out of range (KeyUpdate request value): `illegal_parameter`.
    IllegalParameter(&'static str),
    /// The peer sent this fatal alert (no alert goes back).
    AlertReceived(u8),
    /// rustls' key schedule failed to give the next secret: `internal_error`.
    KeySchedule(rustls::Error),
    /// The negotiated AEAD is not one this record layer implements: `internal_error`.
    UnsupportedSuite,
    /// A sequence number would wrap (2^64 records under one key): `internal_error`.
    SequenceExhausted,
    /// The AEAD refused to seal: `internal_error`.
    Internal(&'static str),
    /// Sealing after `close_notify` or after a failure (no alert: nothing is sent any more).
    Closed,
}

impl RecordError {
    /// The alert description sent to the peer for this error (`None`: none is sent).
    pub fn alert(&self) -> Option<u8> {
        Some(match self {
            RecordError::BadRecordMac => 20,
            RecordError::RecordOverflow => 22,
            RecordError::UnexpectedMessage(_) => 10,
            RecordError::DecodeError(_) => 50,
            RecordError::IllegalParameter(_) => 47,
            RecordError::KeySchedule(_)
            | RecordError::UnsupportedSuite
            | RecordError::SequenceExhausted
            | RecordError::Internal(_) => 80,
            RecordError::AlertReceived(_) | RecordError::Closed => return None,
        })
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::BadRecordMac => f.write_str("a record failed authentication"),
            RecordError::RecordOverflow => f.write_str("record too long"),
            RecordError::UnexpectedMessage(m)
            | RecordError::DecodeError(m)
            | RecordError::IllegalParameter(m)
            | RecordError::Internal(m) => f.write_str(m),
            RecordError::AlertReceived(d) => write!(f, "peer sent alert {}", alert_name(*d)),
            RecordError::KeySchedule(e) => write!(f, "key update failed: {e}"),
            RecordError::UnsupportedSuite => f.write_str("unsupported cipher suite"),
            RecordError::SequenceExhausted => f.write_str("record sequence number exhausted"),
            RecordError::Closed => f.write_str("connection closed"),
        }?;
        if let Some(a) = self.alert() {
            write!(f, " (sent {})", alert_name(a))?;
        }
        Ok(())
    }
}

impl std::error::Error for RecordError {}

/// Why a TLS session failed (handshake or afterwards). Its `Display` is the reason logged and
/// reported to `on_close`.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the handshake (bad or plaintext input, no common version or cipher suite,
    /// a certificate that does not verify, …); rustls' alert was sent.
    Handshake(rustls::Error),
    /// The peer closed (`close_notify`) before the handshake completed.
    PeerClosedInHandshake,
    /// More handshake bytes pending than the session allows (`handshake_bytes_max`).
    HandshakeTooLarge,
    /// The handshake completed with a version other than TLS 1.3 (a rustls build with TLS 1.2
    /// enabled and a config that allows it): the connection is closed without an alert.
    NotTls13,
    /// The record layer failed after the handshake.
    Record(RecordError),
    /// The peer's stream ended (its FIN) inside a record or handshake message: this many bytes
    /// of it had arrived. No alert is sent (nothing can be read any more).
    Truncated(usize),
}

impl TlsError {
    /// The alert description we sent, when we know it (`None` for rustls' own alerts, the
    /// peer's alert, or none).
    pub fn alert(&self) -> Option<u8> {
        match self {
            TlsError::Record(e) => e.alert(),
            _ => None,
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
            TlsError::PeerClosedInHandshake => f.write_str("TLS peer closed during the handshake"),
            TlsError::HandshakeTooLarge => f.write_str("TLS handshake input over the limit"),
            TlsError::NotTls13 => f.write_str("TLS version other than 1.3 negotiated"),
            TlsError::Record(e) => write!(f, "TLS: {e}"),
            TlsError::Truncated(n) => write!(
                f,
                "TLS stream cut short: the peer's EOF came inside a record ({n} bytes of it held)"
            ),
        }
    }
}

impl std::error::Error for TlsError {}

impl From<RecordError> for TlsError {
    fn from(e: RecordError) -> Self {
        TlsError::Record(e)
    }
}

/// An alert description's name, as RFC 8446 writes it.
pub fn alert_name(d: u8) -> String {
    let name = match d {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        80 => "internal_error",
        90 => "user_canceled",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        116 => "certificate_required",
        120 => "no_application_protocol",
        other => return format!("alert {other}"),
    };
    name.to_owned()
}
