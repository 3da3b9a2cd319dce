//! The TLS 1.3 record layer after the handshake (RFC 8446 §5): records are opened where they
//! landed in the receive buffer and the plaintext is handed on as `&mut [u8]` (no copy), and
//! sealed straight into the caller's output `Vec` (one copy of the plaintext).
//!
//! rustls runs the handshake; once it is done the traffic secrets and a [`KeySchedule`] (rustls'
//! `KernelConnection`, which keeps the key schedule for KeyUpdate and session tickets) are
//! handed to a [`RecordLayer`]. What it implements, and nothing more:
//!
//! - receiving: the 5-byte header (outer type must be `application_data`, version 3.x, length at
//!   most 2^14 + 256), AEAD open with the per-record nonce (IV xor sequence number) and the
//!   header as additional data, zero padding stripped, the inner content type;
//!   `application_data` (at most 2^14 bytes; at most 32 empty records in a row) is handed out,
//!   `alert` ends the connection (`close_notify`) or reports the peer's fatal alert
//!   (`user_canceled` is ignored), `handshake` carries post-handshake messages: KeyUpdate
//!   (both sides; it must end its record), NewSessionTicket (client side, given to rustls). A
//!   record split over several receive buffers is gathered in a staging buffer that exists
//!   only while the record is incomplete; so is a handshake message split over records.
//! - sending: application data in records of at most 2^14 bytes, no padding; our KeyUpdate
//!   (`update_not_requested`) before the next record when the peer asked for one (one answer
//!   for any number of requests while we were silent, RFC 8446 §4.6.3) or when the sequence
//!   number reaches the suite's confidentiality limit; `close_notify`; on any error the fatal
//!   alert RFC 8446 §6.2 names (`bad_record_mac`, `record_overflow`, `unexpected_message`,
//!   `decode_error`, `illegal_parameter`, `internal_error`), after which nothing is sent or
//!   read.
//! - not implemented: TLS 1.2 and earlier (another record format; the handshake never
//!   negotiates them, see `tls` module docs), 0-RTT early data, post-handshake client
//!   authentication (never offered, so a CertificateRequest is an unexpected message), record
//!   padding on send, AEADs other than AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305 (the
//!   only TLS 1.3 suites rustls offers).

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use aws_lc_rs::aead::{CHACHA20_POLY1305, NONCE_LEN};
use rustls::ConnectionTrafficSecrets;

use super::error::RecordError;

#[cfg(test)]
mod tests;

/// Bytes of a record header: type, legacy version (2), length (2).
pub const HEADER_LEN: usize = 5;
/// Bytes of the AEAD tag (all TLS 1.3 AEADs).
pub const TAG_LEN: usize = 16;
/// Most plaintext bytes in one record (2^14).
pub const PLAINTEXT_MAX: usize = 1 << 14;
/// Most bytes after the header of a received record (2^14 + 256, RFC 8446 §5.2).
pub const CIPHERTEXT_MAX: usize = PLAINTEXT_MAX + 256;
/// Bytes a sealed record adds to its plaintext: header, inner content type, tag.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;

/// Outer and inner content types (RFC 8446 §5.1).
pub(crate) mod content {
    pub(crate) const CHANGE_CIPHER_SPEC: u8 = 20;
    pub(crate) const ALERT: u8 = 21;
    pub(crate) const HANDSHAKE: u8 = 22;
    pub(crate) const APPLICATION_DATA: u8 = 23;
}

/// Alert descriptions this layer sends or acts on (RFC 8446 §6).
pub(crate) mod alert {
    pub(crate) const CLOSE_NOTIFY: u8 = 0;
    pub(crate) const USER_CANCELED: u8 = 90;
    /// Alert level `fatal`; TLS 1.3 ignores the level on receipt.
    pub(crate) const FATAL: u8 = 2;
    /// Level `warning`, used only for `close_notify`.
    pub(crate) const WARNING: u8 = 1;
}

/// Post-handshake handshake message types.
const KEY_UPDATE: u8 = 24;
const NEW_SESSION_TICKET: u8 = 4;
/// Largest post-handshake handshake message held while it arrives in pieces (a session ticket
/// is about 200 bytes; rustls' own bound on a handshake message is 64 KiB).
const HANDSHAKE_MESSAGE_MAX: usize = 1 << 16;
/// Most empty application-data records accepted in a row (rustls allows the same number):
/// each costs a decryption and carries nothing.
const EMPTY_RECORDS_MAX: u8 = 32;

/// An AEAD a TLS 1.3 suite uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Aead {
    /// AES-128-GCM (TLS_AES_128_GCM_SHA256).
    Aes128Gcm,
    /// AES-256-GCM (TLS_AES_256_GCM_SHA384).
    Aes256Gcm,
    /// ChaCha20-Poly1305 (TLS_CHACHA20_POLY1305_SHA256).
    Chacha20Poly1305,
}

/// One direction's traffic key as the record layer takes it: the AEAD, its key and its static
/// IV (RFC 8446 §7.3), and the sequence number of the next record under it.
#[derive(Clone)]
pub struct TrafficKey {
    aead: Aead,
    key: [u8; 32],
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl std::fmt::Debug for TrafficKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficKey")
            .field("aead", &self.aead)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl TrafficKey {
    /// A key for `aead` (16 bytes for AES-128-GCM, 32 otherwise) with its IV; the next record
    /// has sequence number `seq`.
    pub fn new(aead: Aead, key: &[u8], iv: [u8; NONCE_LEN], seq: u64) -> Result<Self, RecordError> {
        let want = match aead {
            Aead::Aes128Gcm => 16,
            Aead::Aes256Gcm | Aead::Chacha20Poly1305 => 32,
        };
        if key.len() != want {
            return Err(RecordError::UnsupportedSuite);
        }
        let mut k = [0u8; 32];
        k[..want].copy_from_slice(key);
        Ok(Self {
            aead,
            key: k,
            iv,
            seq,
        })
    }

    /// The key rustls extracted (or derived at a KeyUpdate), with the next sequence number.
    pub fn from_rustls(secrets: &ConnectionTrafficSecrets, seq: u64) -> Result<Self, RecordError> {
        let (aead, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Aead::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Aead::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Aead::Chacha20Poly1305, key, iv)
            }
            _ => return Err(RecordError::UnsupportedSuite),
        };
        let iv: [u8; NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| RecordError::UnsupportedSuite)?;
        Self::new(aead, key.as_ref(), iv, seq)
    }
}

/// The key schedule behind a [`RecordLayer`]: new traffic keys for a KeyUpdate, and what to do
/// with a session ticket. rustls' `KernelConnection` is the one a [`super::Session`] uses;
/// tests and the fuzz target plug in stand-ins.
pub trait KeySchedule {
    /// The next receive key (the peer sent a KeyUpdate); its sequence number starts at 0.
    fn next_rx(&mut self) -> Result<TrafficKey, RecordError>;
    /// The next send key (we send a KeyUpdate); its sequence number starts at 0.
    fn next_tx(&mut self) -> Result<TrafficKey, RecordError>;
    /// A NewSessionTicket body arrived. Only a client takes one: a server returns `Ok(false)`
    /// (the message is then unexpected).
    fn session_ticket(&mut self, body: &[u8]) -> Result<bool, RecordError>;
    /// Records that may be sealed under one key (the suite's confidentiality limit).
    fn confidentiality_limit(&self) -> u64;
}

/// One direction's AEAD key, static IV and sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl Direction {
    fn new(t: &TrafficKey) -> Result<Self, RecordError> {
        let (alg, len) = match t.aead {
            Aead::Aes128Gcm => (&AES_128_GCM, 16),
            Aead::Aes256Gcm => (&AES_256_GCM, 32),
            Aead::Chacha20Poly1305 => (&CHACHA20_POLY1305, 32),
        };
        let key = UnboundKey::new(alg, &t.key[..len]).map_err(|_| RecordError::UnsupportedSuite)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv: t.iv,
            seq: t.seq,
        })
    }

    /// The nonce of the record with this direction's sequence number (RFC 8446 §5.3): the
    /// sequence number, big-endian and left-padded to the IV's length, xor the IV.
    fn nonce(&self) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(n)
    }
}

/// Set after a fatal error either way: nothing more is read or sent.
const FAILED: u8 = 1;
/// The peer sent `close_notify`: what follows is ignored.
const PEER_CLOSED: u8 = 2;
/// We sent `close_notify`: nothing more is sent.
const CLOSED: u8 = 4;
/// The peer asked for a KeyUpdate: ours goes before the next record we seal.
const KEY_UPDATE_DUE: u8 = 8;

/// The TLS 1.3 record layer of one connection after its handshake (see the module docs). Holds
/// two AEAD keys and no buffer while idle.
pub struct RecordLayer<K> {
    keys: K,
    rx: Direction,
    tx: Direction,
    /// A record split across receive buffers, gathered until complete (empty, without capacity,
    /// otherwise).
    staging: Vec<u8>,
    /// A post-handshake handshake message split across records.
    handshake: Vec<u8>,
    /// `tx.seq` at which a KeyUpdate is sealed before any other record.
    tx_limit: u64,
    empty_records: u8,
    flags: u8,
}

impl<K> std::fmt::Debug for RecordLayer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("rx_seq", &self.rx.seq)
            .field("tx_seq", &self.tx.seq)
            .field("staging", &self.staging.len())
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl<K: KeySchedule> RecordLayer<K> {
    /// A record layer for the keys of the two directions after the handshake (each with the
    /// sequence number of its next record), with `keys` for KeyUpdates and tickets.
    pub fn new(keys: K, rx: &TrafficKey, tx: &TrafficKey) -> Result<Self, RecordError> {
        let tx_limit = keys.confidentiality_limit().max(2);
        Ok(Self {
            keys,
            rx: Direction::new(rx)?,
            tx: Direction::new(tx)?,
            staging: Vec::new(),
            handshake: Vec::new(),
            tx_limit,
            empty_records: 0,
            flags: 0,
        })
    }

    /// The key schedule.
    pub fn keys(&self) -> &K {
        &self.keys
    }

    /// Sequence numbers of the next record received and sent.
    pub fn sequence(&self) -> (u64, u64) {
        (self.rx.seq, self.tx.seq)
    }

    /// Did the peer send `close_notify`?
    pub fn peer_closed(&self) -> bool {
        self.flags & PEER_CLOSED != 0
    }

    /// Did either side fail the connection?
    pub fn is_failed(&self) -> bool {
        self.flags & FAILED != 0
    }

    /// May application data still be sealed (no error, no `close_notify` sent)?
    pub fn can_send(&self) -> bool {
        self.flags & (FAILED | CLOSED) == 0
    }

    /// Is a KeyUpdate of ours due (the peer asked for one)? Sealing anything sends it first;
    /// [`RecordLayer::flush_key_update`] sends it alone.
    pub fn wants_flush(&self) -> bool {
        self.flags & (KEY_UPDATE_DUE | FAILED | CLOSED) == KEY_UPDATE_DUE
    }

    /// Bytes held between receives (a split record or handshake message), for accounting.
    pub fn held_bytes(&self) -> usize {
        self.staging.capacity() + self.handshake.capacity()
    }

    /// Received bytes of a record, or of a handshake message spread over records, that is not
    /// complete yet: a stream that ends now was cut short.
    pub fn pending_bytes(&self) -> usize {
        self.staging.len() + self.handshake.len()
    }

    /// Process one buffer of received bytes, all of it. Each application-data record is
    /// opened in place and its plaintext handed to `on` (mutable: the WebSocket decoder
    /// unmasks in place); a record cut by the end of `buf` is kept until the next call.
    /// Records that need an answer (our KeyUpdate) only mark it due; an error appends the fatal
    /// alert to `out`, and from then on nothing is read or sent. After the peer's
    /// `close_notify` the rest is ignored.
    pub fn recv(
        &mut self,
        buf: &mut [u8],
        out: &mut Vec<u8>,
        mut on: impl FnMut(&mut [u8]),
    ) -> Result<(), RecordError> {
        if self.flags & (FAILED | PEER_CLOSED) != 0 {
            return Ok(());
        }
        let res = self.recv_records(buf, &mut on);
        if let Err(e) = &res {
            self.fail(e, out);
        }
        res
    }

    /// The records of `buf` in order. The plaintext of consecutive application-data records is
    /// moved together, over the headers and tags between them, and handed out as one slice: a
    /// WebSocket frame that spans records (a 16 KiB message does) reaches the decoder whole,
    /// without being copied aside as a partial frame. Anything else (a KeyUpdate, an alert, the
    /// end of `buf`, an error) hands out what came before it first.
    fn recv_records(
        &mut self,
        buf: &mut [u8],
        on: &mut impl FnMut(&mut [u8]),
    ) -> Result<(), RecordError> {
        let mut pos = 0;
        if !self.staging.is_empty() {
            pos = self.fill_staging(buf)?;
            if !self.record_complete() {
                return Ok(());
            }
            let mut rec = std::mem::take(&mut self.staging);
            if let Some(r) = self.open(&mut rec)? {
                on(&mut rec[r]);
            }
        }
        // Plaintext gathered so far: `buf[run.0..run.1]`.
        let mut run: Option<(usize, usize)> = None;
        let res = loop {
            if self.flags & PEER_CLOSED != 0 {
                break Ok(());
            }
            let n = match record_len(&buf[pos..]) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    if pos < buf.len() {
                        if let Err(e) = self.fill_staging(&buf[pos..]) {
                            break Err(e);
                        }
                    }
                    break Ok(());
                }
                Err(e) => break Err(e),
            };
            let opened = self.open(&mut buf[pos..pos + n]);
            match opened {
                Ok(Some(r)) => {
                    let (start, end) = (pos + r.start, pos + r.end);
                    run = Some(match run {
                        None => (start, end),
                        Some((s, e)) => {
                            buf.copy_within(start..end, e);
                            (s, e + (end - start))
                        }
                    });
                }
                Ok(None) => {
                    if let Some((s, e)) = run.take() {
                        on(&mut buf[s..e]);
                    }
                }
                Err(e) => break Err(e),
            }
            pos += n;
        };
        if let Some((s, e)) = run {
            on(&mut buf[s..e]);
        }
        res
    }

    /// Seal `parts`, concatenated (at most [`PLAINTEXT_MAX`] bytes together), as one
    /// application-data record appended to `out`: [`SEAL_OVERHEAD`] more bytes, and a KeyUpdate
    /// record before it when one is due. Nothing is sealed after an error or `close_notify`.
    pub fn seal(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), RecordError> {
        if !self.can_send() {
            return Err(RecordError::Closed);
        }
        if parts.iter().map(|p| p.len()).sum::<usize>() > PLAINTEXT_MAX {
            // The caller's mistake, not the peer's: refused, the connection goes on.
            return Err(RecordError::RecordOverflow);
        }
        self.flush_key_update(out)?;
        let res = self.seal_record(content::APPLICATION_DATA, parts, out);
        if let Err(e) = &res {
            self.fail(e, out);
        }
        res
    }

    /// Seal `data` of any length as records of at most [`PLAINTEXT_MAX`] bytes (an empty
    /// `data` gives one empty record).
    pub fn seal_all(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        out.reserve(data.len() + (data.len() / PLAINTEXT_MAX + 1) * SEAL_OVERHEAD);
        let mut chunks = data.chunks(PLAINTEXT_MAX);
        let first = chunks.next().unwrap_or(&[]);
        self.seal(&[first], out)?;
        for c in chunks {
            self.seal(&[c], out)?;
        }
        Ok(())
    }

    /// Send the KeyUpdate that is due, if any (also when the sending key reached its limit).
    pub fn flush_key_update(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if !self.can_send() {
            return Ok(());
        }
        if self.flags & KEY_UPDATE_DUE != 0 || self.tx.seq >= self.tx_limit - 1 {
            // Sealed under the old key, then the new key takes over (RFC 8446 §4.6.3).
            let next = self
                .seal_record(content::HANDSHAKE, &[&[KEY_UPDATE, 0, 0, 1, 0]], out)
                .and_then(|()| self.keys.next_tx())
                .and_then(|k| Direction::new(&k));
            match next {
                Ok(d) => self.tx = d,
                Err(e) => {
                    // The peer already switched keys (or the old one is spent): our alert
                    // could not be read, so none is sent.
                    self.flags |= FAILED;
                    return Err(e);
                }
            }
            self.flags &= !KEY_UPDATE_DUE;
        }
        Ok(())
    }

    /// Start a KeyUpdate of our own now (`update_not_requested`): a fresh sending key, the
    /// peer keeps its own.
    pub fn key_update(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if !self.can_send() {
            return Err(RecordError::Closed);
        }
        self.flags |= KEY_UPDATE_DUE;
        self.flush_key_update(out)
    }

    /// Tests and fuzzing: seal `parts` as one record of inner content type `content_type`
    /// under the current key, with no bookkeeping (a handshake message sealed this way does
    /// not change our keys). Lets a peer be played that sends what this layer never would.
    #[doc(hidden)]
    pub fn seal_content(
        &mut self,
        content_type: u8,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        self.seal_record(content_type, parts, out)
    }

    /// Tests and fuzzing: take the next sending key now, as after a KeyUpdate sealed with
    /// [`RecordLayer::seal_content`].
    #[doc(hidden)]
    pub fn next_tx_key(&mut self) -> Result<(), RecordError> {
        self.tx = Direction::new(&self.keys.next_tx()?)?;
        Ok(())
    }

    /// Append `close_notify` (once): the end of what we send.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        if self.can_send() {
            let _ = self.seal_record(
                content::ALERT,
                &[&[alert::WARNING, alert::CLOSE_NOTIFY]],
                out,
            );
            self.flags |= CLOSED;
        }
    }

    /// The connection failed with `e`: send its alert (when it has one and we still may),
    /// then stop.
    fn fail(&mut self, e: &RecordError, out: &mut Vec<u8>) {
        if let Some(desc) = e.alert() {
            if self.can_send() {
                let _ = self.seal_record(content::ALERT, &[&[alert::FATAL, desc]], out);
            }
        }
        self.flags |= FAILED;
        self.staging = Vec::new();
        self.handshake = Vec::new();
    }

    /// Append one sealed record of inner type `ty` carrying `parts`.
    fn seal_record(
        &mut self,
        ty: u8,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let plain: usize = parts.iter().map(|p| p.len()).sum();
        if plain > PLAINTEXT_MAX {
            return Err(RecordError::RecordOverflow);
        }
        if self.tx.seq == u64::MAX {
            return Err(RecordError::SequenceExhausted);
        }
        let len = plain + 1 + TAG_LEN;
        let start = out.len();
        out.reserve(HEADER_LEN + len);
        out.extend_from_slice(&[content::APPLICATION_DATA, 3, 3]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        for p in parts {
            out.extend_from_slice(p);
        }
        out.push(ty);
        let nonce = self.tx.nonce();
        let (header, body) = out[start..].split_at_mut(HEADER_LEN);
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*header), body);
        match tag {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                self.tx.seq += 1;
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(RecordError::Internal("sealing failed"))
            }
        }
    }

    /// Append the front of `buf` to the staging record: up to its header, then up to its end.
    /// Returns the bytes taken.
    fn fill_staging(&mut self, buf: &[u8]) -> Result<usize, RecordError> {
        let mut taken = 0;
        if self.staging.len() < HEADER_LEN {
            let n = (HEADER_LEN - self.staging.len()).min(buf.len());
            self.staging.extend_from_slice(&buf[..n]);
            taken = n;
            if self.staging.len() < HEADER_LEN {
                check_header_prefix(&self.staging)?;
                return Ok(taken);
            }
            let total = header_len(&self.staging)?;
            self.staging.reserve_exact(total - HEADER_LEN);
        }
        let total =
            HEADER_LEN + usize::from(u16::from_be_bytes([self.staging[3], self.staging[4]]));
        let n = (total - self.staging.len()).min(buf.len() - taken);
        self.staging.extend_from_slice(&buf[taken..taken + n]);
        Ok(taken + n)
    }

    fn record_complete(&self) -> bool {
        self.staging.len() >= HEADER_LEN
            && self.staging.len()
                == HEADER_LEN + usize::from(u16::from_be_bytes([self.staging[3], self.staging[4]]))
    }

    /// Open one whole record (header checked) in place and act on what it carries; for
    /// application data, where its plaintext now is in `rec` (`None` for other records and
    /// empty ones).
    fn open(&mut self, rec: &mut [u8]) -> Result<Option<std::ops::Range<usize>>, RecordError> {
        if self.rx.seq == u64::MAX {
            return Err(RecordError::SequenceExhausted);
        }
        let (header, body) = rec.split_at_mut(HEADER_LEN);
        let nonce = self.rx.nonce();
        let plain = self
            .rx
            .key
            .open_in_place(nonce, Aad::from(&*header), body)
            .map_err(|_| RecordError::BadRecordMac)?;
        self.rx.seq += 1;
        // The inner content type is the last non-zero byte; zeros after it are padding.
        let Some(end) = plain.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::UnexpectedMessage(
                "record without a content type",
            ));
        };
        let ty = plain[end];
        let content = &mut plain[..end];
        if content.len() > PLAINTEXT_MAX {
            return Err(RecordError::RecordOverflow);
        }
        match ty {
            content::APPLICATION_DATA => {
                if content.is_empty() {
                    self.empty_records += 1;
                    if self.empty_records > EMPTY_RECORDS_MAX {
                        return Err(RecordError::UnexpectedMessage("too many empty records"));
                    }
                    return Ok(None);
                }
                self.empty_records = 0;
                Ok(Some(HEADER_LEN..HEADER_LEN + end))
            }
            content::ALERT => self.on_alert(content).map(|()| None),
            content::HANDSHAKE if !content.is_empty() => self.on_handshake(content).map(|()| None),
            content::HANDSHAKE => Err(RecordError::UnexpectedMessage("empty handshake record")),
            content::CHANGE_CIPHER_SPEC => Err(RecordError::UnexpectedMessage(
                "change_cipher_spec after the handshake",
            )),
            _ => Err(RecordError::UnexpectedMessage("unknown content type")),
        }
    }

    fn on_alert(&mut self, content: &[u8]) -> Result<(), RecordError> {
        // One alert per record, never fragmented or coalesced (RFC 8446 §5.1).
        let &[_level, desc] = content else {
            return Err(RecordError::DecodeError("alert record of the wrong length"));
        };
        match desc {
            alert::CLOSE_NOTIFY => {
                self.flags |= PEER_CLOSED;
                self.staging = Vec::new();
                Ok(())
            }
            // A warning in TLS 1.3 (its close_notify follows).
            alert::USER_CANCELED => Ok(()),
            d => Err(RecordError::AlertReceived(d)),
        }
    }

    /// Post-handshake handshake messages, which may be split across records or several to a
    /// record; a KeyUpdate must end its record (the next one uses the new key).
    fn on_handshake(&mut self, content: &[u8]) -> Result<(), RecordError> {
        let mut held = std::mem::take(&mut self.handshake);
        let mut data: &[u8] = if held.is_empty() {
            content
        } else {
            held.extend_from_slice(content);
            &held
        };
        while let [ty, a, b, c, rest @ ..] = data {
            let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            if len > HANDSHAKE_MESSAGE_MAX {
                return Err(RecordError::UnexpectedMessage(
                    "handshake message too large",
                ));
            }
            if rest.len() < len {
                break;
            }
            let (body, after) = rest.split_at(len);
            match *ty {
                KEY_UPDATE => {
                    let &[requested] = body else {
                        return Err(RecordError::DecodeError("KeyUpdate of the wrong length"));
                    };
                    if requested > 1 {
                        return Err(RecordError::IllegalParameter("KeyUpdate request value"));
                    }
                    if !after.is_empty() {
                        return Err(RecordError::UnexpectedMessage(
                            "data after a KeyUpdate in its record",
                        ));
                    }
                    let next = self.keys.next_rx()?;
                    self.rx = Direction::new(&next)?;
                    if requested == 1 {
                        self.flags |= KEY_UPDATE_DUE;
                    }
                }
                NEW_SESSION_TICKET => {
                    let taken = self.keys.session_ticket(body)?;
                    if !taken {
                        return Err(RecordError::UnexpectedMessage(
                            "NewSessionTicket sent to a server",
                        ));
                    }
                }
                _ => {
                    return Err(RecordError::UnexpectedMessage(
                        "handshake message after the handshake",
                    ))
                }
            }
            data = after;
        }
        if data.len() > HANDSHAKE_MESSAGE_MAX + 4 {
            return Err(RecordError::UnexpectedMessage(
                "handshake message too large",
            ));
        }
        let rest = data.to_vec();
        held.clear();
        self.handshake = if rest.is_empty() { Vec::new() } else { rest };
        Ok(())
    }
}

/// Length of the whole record at the front of `b` when it is complete, `None` when more bytes
/// are needed; an error for a header no TLS 1.3 peer sends after the handshake.
pub fn record_len(b: &[u8]) -> Result<Option<usize>, RecordError> {
    if b.len() < HEADER_LEN {
        check_header_prefix(b)?;
        return Ok(None);
    }
    let total = header_len(b)?;
    Ok((b.len() >= total).then_some(total))
}

/// The checks a partial header allows: the outer type and the version's major byte.
fn check_header_prefix(b: &[u8]) -> Result<(), RecordError> {
    if let Some(&t) = b.first() {
        if t != content::APPLICATION_DATA {
            return Err(RecordError::UnexpectedMessage(
                "record type other than application_data after the handshake",
            ));
        }
    }
    if let Some(&major) = b.get(1) {
        if major != 3 {
            return Err(RecordError::DecodeError("record version is not 3.x"));
        }
    }
    Ok(())
}

/// Total length (header included) of the record whose whole header is at the front of `b`.
fn header_len(b: &[u8]) -> Result<usize, RecordError> {
    check_header_prefix(b)?;
    let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
    if len > CIPHERTEXT_MAX {
        return Err(RecordError::RecordOverflow);
    }
    if len < 1 + TAG_LEN {
        // Too short to hold a content type and a tag: it cannot authenticate.
        return Err(RecordError::BadRecordMac);
    }
    Ok(HEADER_LEN + len)
}
