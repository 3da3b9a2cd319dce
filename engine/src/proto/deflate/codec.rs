//! The compressor, the decompressor and the window a decompressor needs between messages, over
//! zlib-rs (a pure-Rust zlib: raw deflate, window bits and memLevel, sync flush, reset,
//! dictionaries; no `unsafe` here).
//!
//! One message at a time (RFC 7692 §7.2): a message is compressed with a sync flush and the
//! trailing `00 00 FF FF` removed; a received message gets that trailer back before it is
//! inflated. Nothing here keeps per-message state between calls, so one [`Inflater`] and one
//! [`Compressor`] per window size can serve every connection of a shard.

use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Inflate, InflateFlush, Status, Strategy};

/// The empty stored block a sync flush ends with; removed on send, put back on receive.
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zlib-rs' hash table has 2^16 two-byte heads whatever the memory level.
const HASH_HEAD_BYTES: usize = 2 << 16;

/// A raw-deflate compressor with its window size and memory level.
pub struct Compressor {
    z: Deflate,
}

impl core::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Compressor").finish_non_exhaustive()
    }
}

impl Compressor {
    /// A compressor at `level` (0..=9) whose back-references reach at most 2^`window_bits`
    /// bytes (8..=15) with `mem_level` (1..=9: zlib-rs sizes its literal buffers by it).
    ///
    /// zlib cannot compress with a 256-byte window (it silently uses 512, madler/zlib#171), so
    /// for `window_bits` 8 this compressor uses zlib's run-length strategy instead: every match
    /// is at distance 1, which any window allows. Text still gets Huffman coding and runs.
    pub fn new(level: u8, window_bits: u8, mem_level: u8) -> Self {
        let (bits, strategy) = match window_bits {
            ..=8 => (9, Strategy::Rle),
            b => (b.min(15), Strategy::Default),
        };
        let config = DeflateConfig {
            level: i32::from(level.min(9)),
            window_bits: -i32::from(bits),
            mem_level: i32::from(mem_level.clamp(1, 9)),
            strategy,
            ..DeflateConfig::default()
        };
        Self {
            z: Deflate::new_with_config(config),
        }
    }

    /// Heap bytes one compressor takes (zlib-rs' single allocation: two windows, the chain
    /// links, a 128 KiB hash table and the literal buffers), for memory budgets.
    pub fn heap_bytes(window_bits: u8, mem_level: u8) -> usize {
        let w = 1usize << window_bits.clamp(9, 15);
        let lit = 1usize << (mem_level.clamp(1, 9) + 6);
        // window (2 w) + prev (2 w) + head + pending (4 lit) + symbols (3 lit) + state/alignment
        4 * w + HASH_HEAD_BYTES + 7 * lit + 8192
    }

    /// Compress `input` as one message (sync flush) and append it to `out`, trailer removed.
    /// The compressor keeps its history (context takeover) until [`Compressor::reset`].
    /// `Err` leaves `out` as it was; the compressor must then be reset or dropped.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), CompressError> {
        if input.is_empty() {
            // An empty stored block (RFC 7692 §7.2.3.6): zlib refuses a sync flush right after
            // another, and an empty message adds nothing to the history anyway.
            out.push(0x00);
            return Ok(());
        }
        let start = out.len();
        let mut pos = start;
        let mut used = 0;
        out.resize(start + input.len() + input.len() / 8 + 64, 0);
        loop {
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let r = self
                .z
                .compress(&input[used..], &mut out[pos..], DeflateFlush::SyncFlush);
            used += (self.z.total_in() - in0) as usize;
            pos += (self.z.total_out() - out0) as usize;
            if r.is_err() {
                out.truncate(start);
                return Err(CompressError);
            }
            if used == input.len() && pos < out.len() {
                break; // the flush is complete: output stopped before the buffer's end
            }
            let grow = out.len() - start;
            out.resize(out.len() + grow.max(64), 0);
        }
        if pos - start < TRAILER.len() || out[pos - 4..pos] != TRAILER {
            out.truncate(start);
            return Err(CompressError);
        }
        out.truncate(pos - 4);
        Ok(())
    }

    /// Compress `input` as one message that may reference `history` (the last bytes this
    /// sender compressed before it, which the peer's decompressor holds: context takeover
    /// without keeping a compressor per connection). Call on a fresh or reset compressor, and
    /// reset it afterwards. `Err` leaves `out` as it was.
    pub fn compress_after(
        &mut self,
        history: &Window,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        if !input.is_empty()
            && !history.buf.is_empty()
            && self.z.set_dictionary(&history.buf).is_err()
        {
            return Err(CompressError);
        }
        self.compress(input, out)
    }

    /// Forget the history: the next message references nothing before it.
    pub fn reset(&mut self) {
        self.z.reset();
    }
}

/// zlib-rs reported an error while compressing (the stream state is unusable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompressError;

/// Why a received message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InflateError {
    /// The compressed data is not valid deflate data (or reaches before the window).
    Corrupt,
    /// The inflated message would be larger than the limit.
    TooBig,
}

/// A raw-deflate decompressor with a 32 KiB window: it reads a message compressed with any
/// window size. One per shard serves all of its connections: each message starts from a reset
/// (plus the sender's history, for a sender with context takeover: see [`Window`]).
pub struct Inflater {
    z: Inflate,
}

impl core::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    /// A decompressor (zlib-rs allocates its 32 KiB window and state here, about 42 KiB).
    pub fn new() -> Self {
        Self {
            z: Inflate::new(false, 15),
        }
    }

    /// Inflate one message's `payload` (as received: without the trailer) into `out`
    /// (cleared first). `window`: the sender's history (context takeover), which the message
    /// may reference and which it then extends; `None` for a sender without context takeover.
    ///
    /// Bounded: `out` never grows past `limit + 1` bytes; a message that inflates to more than
    /// `limit` is [`InflateError::TooBig`] as soon as the output passes it.
    pub fn inflate(
        &mut self,
        payload: &[u8],
        window: Option<&mut Window>,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        self.z.reset(false);
        if let Some(w) = window.as_deref() {
            if !w.buf.is_empty() && self.z.set_dictionary(&w.buf).is_err() {
                return Err(InflateError::Corrupt);
            }
        }
        out.clear();
        let cap = limit.saturating_add(1);
        let first = payload
            .len()
            .saturating_mul(4)
            .clamp(256, 64 << 10)
            .min(cap);
        out.reserve_exact(first);
        out.resize(first, 0);
        let mut filled = 0;
        'inputs: for input in [payload, &TRAILER[..]] {
            let mut used = 0;
            loop {
                if filled == out.len() {
                    if out.len() >= cap {
                        out.clear();
                        return Err(InflateError::TooBig);
                    }
                    let next = out.len().saturating_mul(2).min(cap);
                    out.reserve_exact(next - out.len());
                    out.resize(next, 0);
                }
                let (in0, out0) = (self.z.total_in(), self.z.total_out());
                let r =
                    self.z
                        .decompress(&input[used..], &mut out[filled..], InflateFlush::NoFlush);
                used += (self.z.total_in() - in0) as usize;
                filled += (self.z.total_out() - out0) as usize;
                match r {
                    Ok(Status::StreamEnd) => break 'inputs, // a final block ends the message
                    Ok(_) => {}
                    Err(_) => {
                        out.clear();
                        return Err(InflateError::Corrupt);
                    }
                }
                if used == input.len() && filled < out.len() {
                    break; // all input read, and inflate stopped before the buffer's end
                }
            }
        }
        if filled > limit {
            out.clear();
            return Err(InflateError::TooBig);
        }
        out.truncate(filled);
        if let Some(w) = window {
            w.extend(out);
        }
        Ok(())
    }
}

/// The last 2^bits bytes a sender with context takeover compressed: what its next message may
/// reference. This is all a peer's context costs between messages (the decompressor itself is
/// shared), allocated once at its full size.
#[derive(Debug)]
pub struct Window {
    buf: Vec<u8>,
    size: usize,
}

impl Window {
    /// An empty window of 2^`bits` bytes (9..=15; a peer that claims 8 is kept at 9, since
    /// zlib compresses "8" with a 9-bit window).
    pub fn new(bits: u8) -> Self {
        let size = 1usize << bits.clamp(9, 15);
        Self {
            buf: Vec::with_capacity(size),
            size,
        }
    }

    /// Heap bytes a window of `bits` takes.
    pub fn heap_bytes(bits: u8) -> usize {
        1usize << bits.clamp(9, 15)
    }

    /// Append a message's bytes (inflated, or compressed by us), keeping the last `size`.
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        if bytes.len() >= self.size {
            self.buf.clear();
            self.buf
                .extend_from_slice(&bytes[bytes.len() - self.size..]);
            return;
        }
        let excess = (self.buf.len() + bytes.len()).saturating_sub(self.size);
        self.buf.drain(..excess);
        self.buf.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize, seed: u32) -> Vec<u8> {
        let words = [
            "alpha",
            "beta",
            "gamma",
            "delta",
            "\"id\":",
            "{\"price\":",
            "},",
        ];
        let mut v = Vec::new();
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.extend_from_slice(words[(x % 7) as usize].as_bytes());
            v.extend_from_slice((x % 1000).to_string().as_bytes());
        }
        v.truncate(n);
        v
    }

    #[test]
    fn round_trip_without_and_with_context_takeover() {
        let mut inf = Inflater::new();
        let mut out = Vec::new();
        for bits in [8u8, 9, 12, 15] {
            // No context takeover: reset after each message.
            let mut c = Compressor::new(6, bits, 8);
            for (i, n) in [0usize, 1, 100, 5000, 70_000].into_iter().enumerate() {
                let msg = text(n, i as u32);
                let mut z = Vec::new();
                c.compress(&msg, &mut z).unwrap();
                c.reset();
                inf.inflate(&z, None, 1 << 20, &mut out).unwrap();
                assert_eq!(out, msg, "bits {bits} len {n}");
            }
            // Context takeover: later messages reference earlier ones through the window.
            let mut c = Compressor::new(6, bits, 8);
            let mut w = Window::new(bits);
            let base = text(3000, 7);
            let mut total_z = 0;
            for empty in [Vec::new(), Vec::new()] {
                let mut z = Vec::new();
                c.compress(&empty, &mut z).unwrap();
                inf.inflate(&z, Some(&mut w), 1 << 20, &mut out).unwrap();
                assert!(out.is_empty());
            }
            for round in 0..4 {
                let mut msg = base.clone();
                msg.extend_from_slice(round.to_string().as_bytes());
                let mut z = Vec::new();
                c.compress(&msg, &mut z).unwrap();
                total_z += z.len();
                inf.inflate(&z, Some(&mut w), 1 << 20, &mut out).unwrap();
                assert_eq!(out, msg, "bits {bits} round {round}");
            }
            if bits >= 12 {
                assert!(total_z < 3000, "context takeover pays off: {total_z}");
            }
        }
    }

    #[test]
    fn context_takeover_through_a_preset_history() {
        // One compressor, reset between messages, with the sender's last bytes as a preset
        // dictionary: the peer's decompressor, which keeps its window, reads every message, and
        // repeats cost what they would with a compressor kept per connection.
        let mut inf = Inflater::new();
        let mut out = Vec::new();
        for bits in [8u8, 9, 12, 15] {
            let mut c = Compressor::new(1, bits, 8);
            let mut sent = Window::new(bits);
            let mut peer = Window::new(bits);
            let base = text(3000, 11);
            let mut total_z = 0;
            for round in 0..6 {
                let mut msg = if round == 2 { Vec::new() } else { base.clone() };
                msg.extend_from_slice(round.to_string().as_bytes());
                let mut z = Vec::new();
                c.compress_after(&sent, &msg, &mut z).unwrap();
                c.reset();
                sent.extend(&msg);
                total_z += z.len();
                inf.inflate(&z, Some(&mut peer), 1 << 20, &mut out).unwrap();
                assert_eq!(out, msg, "bits {bits} round {round}");
                assert_eq!(sent.buf, peer.buf);
            }
            if bits >= 12 {
                assert!(total_z < 3000, "the history pays off: {total_z}");
            }
        }
    }

    #[test]
    fn window_eight_uses_distance_one_only() {
        // Inflating with a 256-byte window must work for what a "8-bit" compressor makes.
        let mut c = Compressor::new(9, 8, 8);
        let msg = text(20_000, 3);
        let mut z = Vec::new();
        c.compress(&msg, &mut z).unwrap();
        assert!(
            z.len() < msg.len(),
            "still compresses: {} -> {}",
            msg.len(),
            z.len()
        );
        let mut raw = Inflate::new(false, 8);
        let mut out = vec![0u8; 40_000];
        z.extend_from_slice(&TRAILER);
        let r = raw.decompress(&z, &mut out, InflateFlush::SyncFlush);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(&out[..raw.total_out() as usize], &msg[..]);
    }

    #[test]
    fn corrupt_data_and_the_limit_are_errors() {
        let mut inf = Inflater::new();
        let mut out = Vec::new();
        assert_eq!(
            inf.inflate(&[0xff, 0xff, 0xff, 0xff], None, 1000, &mut out),
            Err(InflateError::Corrupt)
        );
        // The inflater still works after an error.
        let mut c = Compressor::new(6, 15, 8);
        let mut z = Vec::new();
        c.compress(&vec![0u8; 100_000], &mut z).unwrap();
        assert!(z.len() < 1000);
        assert_eq!(
            inf.inflate(&z, None, 99_999, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() <= 100_000, "held {}", out.capacity());
        inf.inflate(&z, None, 100_000, &mut out).unwrap();
        assert_eq!(out.len(), 100_000);
    }

    #[test]
    fn window_keeps_the_last_bytes() {
        let mut w = Window::new(9);
        w.extend(&[1; 300]);
        w.extend(&[2; 300]);
        assert_eq!(w.buf.len(), 512);
        assert_eq!(&w.buf[..212], &[1; 212][..]);
        w.extend(&[3; 1000]);
        assert_eq!(w.buf, vec![3; 512]);
        assert_eq!(w.buf.capacity(), 512);
    }
}
