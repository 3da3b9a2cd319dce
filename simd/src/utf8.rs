//! Streaming UTF-8 validation for WebSocket text messages, on `simdutf8`.

use std::fmt;

/// Invalid UTF-8: where it starts and, as in [`std::str::Utf8Error`], how long it is.
///
/// From a [`Utf8Validator`], positions count every byte fed since [`Utf8Validator::new`],
/// [`Utf8Validator::reset`] or [`Utf8Validator::finish`], across all chunks; from
/// [`validate_utf8`] they count from the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error {
    valid_up_to: usize,
    error_len: Option<u8>,
}

impl Utf8Error {
    /// How many bytes, from the start of the message, are valid UTF-8 before the error.
    pub fn valid_up_to(&self) -> usize {
        self.valid_up_to
    }

    /// The length of the invalid sequence that starts at [`valid_up_to`](Self::valid_up_to)
    /// (1 to 3 bytes), or `None` when the message ended in the middle of a code point.
    pub fn error_len(&self) -> Option<usize> {
        self.error_len.map(usize::from)
    }

    /// Shift an error found in a piece of the message by the bytes before that piece.
    fn from_compat(e: simdutf8::compat::Utf8Error, before: usize) -> Utf8Error {
        Utf8Error {
            valid_up_to: before.saturating_add(e.valid_up_to()),
            // At most 3 by definition of the maximal invalid subpart.
            error_len: e.error_len().map(|n| n as u8),
        }
    }
}

impl fmt::Display for Utf8Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.error_len {
            Some(n) => write!(
                f,
                "invalid UTF-8 sequence of {n} bytes at byte {}",
                self.valid_up_to
            ),
            None => write!(
                f,
                "incomplete UTF-8 sequence at the end, after byte {}",
                self.valid_up_to
            ),
        }
    }
}

impl std::error::Error for Utf8Error {}

/// Check a whole buffer: the fast path for a message that arrived in one piece.
#[inline]
pub fn validate_utf8(b: &[u8]) -> Result<&str, Utf8Error> {
    match simdutf8::basic::from_utf8(b) {
        Ok(s) => Ok(s),
        Err(_) => match simdutf8::compat::from_utf8(b) {
            Ok(s) => Ok(s),
            Err(e) => Err(Utf8Error::from_compat(e, 0)),
        },
    }
}

/// Streaming UTF-8 check for one message at a time, fed chunk by chunk.
///
/// A code point may be split across chunks (and frames); the validator keeps up to three bytes
/// of it. [`feed`](Self::feed) fails as soon as the bytes fed so far cannot be the start of
/// valid UTF-8 (`F4 90`, `ED A0`, `C0` and `F5` fail at once), as RFC 6455 §8.1 asks;
/// [`finish`](Self::finish) also fails when the message ends mid code point.
///
/// After an error the state is unspecified until [`reset`](Self::reset) (the connection is
/// closed with 1007 anyway). The state is 16 bytes and `Copy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    /// Bytes of the current message already checked and complete (pending bytes excluded).
    consumed: usize,
    /// The start of a code point whose remaining bytes have not arrived yet.
    pending: [u8; 3],
    /// How many bytes of `pending` are in use (0 to 3).
    pending_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Utf8Validator {
        Utf8Validator {
            consumed: 0,
            pending: [0; 3],
            pending_len: 0,
        }
    }

    /// Check the next `chunk` of the message.
    ///
    /// `Err` as soon as the bytes fed so far can no longer be valid UTF-8, whatever follows.
    /// A code point cut at the end of `chunk` is kept and completed by the next call.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Utf8Error> {
        let mut rest = chunk;
        if self.pending_len > 0 {
            rest = self.complete_pending(rest)?;
            if self.pending_len > 0 {
                return Ok(());
            }
        }
        let split = rest.len() - incomplete_tail_len(rest);
        let (body, tail) = rest.split_at(split);
        if simdutf8::basic::from_utf8(body).is_err() {
            return Err(self.locate(rest));
        }
        self.consumed = self.consumed.saturating_add(body.len());
        if !tail.is_empty() {
            // The tail is a lead byte and fewer continuations than it needs; check that they
            // can still be completed (`F4 90`, `ED A0`, `E0 80` cannot).
            if let Err(e) = simdutf8::compat::from_utf8(tail) {
                if e.error_len().is_some() {
                    return Err(Utf8Error::from_compat(e, self.consumed));
                }
            }
            self.pending[..tail.len()].copy_from_slice(tail);
            self.pending_len = tail.len() as u8;
        }
        Ok(())
    }

    /// End the message: `Err` when it stopped in the middle of a code point.
    ///
    /// The validator is reset for the next message either way.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let r = if self.pending_len > 0 {
            Err(Utf8Error {
                valid_up_to: self.consumed,
                error_len: None,
            })
        } else {
            Ok(())
        };
        self.reset();
        r
    }

    /// Forget the current message and start over.
    pub fn reset(&mut self) {
        *self = Utf8Validator::new();
    }

    /// Whether the bytes fed so far end in the middle of a code point.
    pub fn is_mid_codepoint(&self) -> bool {
        self.pending_len > 0
    }

    /// Add the first bytes of `chunk` to the pending code point; return what follows it.
    fn complete_pending<'a>(&mut self, chunk: &'a [u8]) -> Result<&'a [u8], Utf8Error> {
        let have = usize::from(self.pending_len);
        let need = sequence_len(self.pending[0]).saturating_sub(have);
        let take = need.min(chunk.len());
        let mut cp = [0u8; 4];
        cp[..have].copy_from_slice(&self.pending[..have]);
        cp[have..have + take].copy_from_slice(&chunk[..take]);
        let len = have + take;
        match simdutf8::compat::from_utf8(&cp[..len]) {
            Ok(_) => {
                self.consumed = self.consumed.saturating_add(len);
                self.pending_len = 0;
            }
            Err(e) if e.error_len().is_none() => {
                // Still incomplete: `chunk` ended before the code point did.
                self.pending[..len].copy_from_slice(&cp[..len]);
                self.pending_len = len as u8;
            }
            Err(e) => return Err(Utf8Error::from_compat(e, self.consumed)),
        }
        Ok(&chunk[take..])
    }

    /// The exact position of an error known to be in `rest` (the part of a chunk after any
    /// completed pending code point).
    #[cold]
    fn locate(&self, rest: &[u8]) -> Utf8Error {
        match simdutf8::compat::from_utf8(rest) {
            Err(e) => Utf8Error::from_compat(e, self.consumed),
            // Unreachable when `basic` rejected a prefix of `rest`; report the start anyway.
            Ok(_) => Utf8Error {
                valid_up_to: self.consumed,
                error_len: Some(1),
            },
        }
    }
}

/// The length of the code point a lead byte starts, from its high bits (0 when `b` is a
/// continuation byte or can never start one). `C0`, `C1` and `F5`..`F7` count as leads here;
/// the UTF-8 check rejects them.
#[inline]
fn sequence_len(b: u8) -> usize {
    match b {
        0x00..=0x7F => 1,
        0x80..=0xBF => 0,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        0xF8..=0xFF => 0,
    }
}

/// How many bytes at the end of `b` are a lead byte followed by fewer continuation bytes than
/// it announces (0 to 3).
#[inline]
fn incomplete_tail_len(b: &[u8]) -> usize {
    for i in 1..=b.len().min(3) {
        let byte = b[b.len() - i];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        return if sequence_len(byte) > i { i } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_tail_is_a_lead_byte_with_too_few_continuations() {
        assert_eq!(incomplete_tail_len(b""), 0);
        assert_eq!(incomplete_tail_len(b"abc"), 0);
        assert_eq!(incomplete_tail_len(b"a\xC3"), 1);
        assert_eq!(incomplete_tail_len(b"a\xC3\xA9"), 0);
        assert_eq!(incomplete_tail_len(b"a\xE2\x82"), 2);
        assert_eq!(incomplete_tail_len(b"\xF0\x9F\x98"), 3);
        assert_eq!(incomplete_tail_len(b"\xF0\x9F\x98\x80"), 0);
        // Stray continuations are left to the full check.
        assert_eq!(incomplete_tail_len(b"\x80\x80\x80"), 0);
        assert_eq!(incomplete_tail_len(b"\xFF"), 0);
    }

    #[test]
    fn sequence_length_follows_the_lead_byte_bits() {
        assert_eq!(sequence_len(b'a'), 1);
        assert_eq!(sequence_len(0x80), 0);
        assert_eq!(sequence_len(0xC3), 2);
        assert_eq!(sequence_len(0xE2), 3);
        assert_eq!(sequence_len(0xF0), 4);
        assert_eq!(sequence_len(0xF8), 0);
    }

    #[test]
    fn error_display_names_the_position() {
        let e = validate_utf8(b"ab\xFF").unwrap_err();
        assert_eq!(e.to_string(), "invalid UTF-8 sequence of 1 bytes at byte 2");
        let e = validate_utf8(b"ab\xE2\x82").unwrap_err();
        assert_eq!(e.error_len(), None);
        assert_eq!(e.valid_up_to(), 2);
    }
}
