//! Temporary stand-in for `percore_simd::{Utf8Validator, validate_utf8}` with the same
//! signatures, built on `std::str::from_utf8`. Removed once the SIMD crate provides them.

/// Invalid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

/// Validate a whole buffer.
pub fn validate_utf8(b: &[u8]) -> Result<&str, Utf8Error> {
    std::str::from_utf8(b).map_err(|_| Utf8Error)
}

/// Streaming validator: chunks may split a code point anywhere; an error is reported as soon
/// as the bytes seen so far cannot start a valid sequence (std's `error_len()` is `Some`).
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validate the next chunk.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Utf8Error> {
        if self.pending_len > 0 {
            let have = usize::from(self.pending_len);
            let need = match self.pending[0] {
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 2,
            };
            let take = (need - have).min(chunk.len());
            let mut tmp = self.pending;
            tmp[have..have + take].copy_from_slice(&chunk[..take]);
            let len = have + take;
            chunk = &chunk[take..];
            match std::str::from_utf8(&tmp[..len]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() => {
                    self.pending = tmp;
                    self.pending_len = len as u8;
                    return Ok(());
                }
                Err(_) => return Err(Utf8Error),
            }
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &chunk[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(Utf8Error),
        }
    }

    /// End of text: an unfinished code point is an error.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let ok = self.pending_len == 0;
        self.reset();
        if ok {
            Ok(())
        } else {
            Err(Utf8Error)
        }
    }

    /// Forget any partial code point.
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }
}
