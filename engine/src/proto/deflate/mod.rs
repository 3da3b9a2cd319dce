//! permessage-deflate (RFC 7692), with bounded memory.
//!
//! # Where the state lives
//!
//! - **Per shard** ([`ShardDeflate`], inside the [`super::Endpoint`]): one [`Inflater`] for
//!   every connection, one [`Compressor`] per window size for every message sent, and the
//!   buffers a message is inflated into and compressed into.
//! - **Per connection**: one byte of terms in the send half (negotiated? our window, whether
//!   each side keeps context) and, only for dedicated terms, a box (`ConnDeflate`, 80 bytes)
//!   with the peer's [`Window`] (when the peer uses context takeover) and our own (when we do:
//!   created on the first compressed send, dropped when the connection's idle deadline passes,
//!   i.e. nothing was received for the idle timeout: the check rides on a deadline the
//!   connection has anyway, so it costs the others nothing). A connection that negotiated
//!   nothing, or shared terms, holds no compression state.
//!
//! # Receiving
//!
//! The decoder hands out a compressed message only once it is whole (a fragmented one is
//! assembled, still compressed, in the connection's message buffer, bounded by
//! `message_bytes_max` like any other); the shard's inflater then inflates it in one go, the
//! peer's window put in front as a dictionary. So no inflate state is ever kept across
//! receive completions, and one inflater serves connections whose messages interleave. The
//! inflated size is checked against `message_bytes_max` as the output grows (1009 past it);
//! corrupt data is 1007.
//!
//! # Sending
//!
//! Messages of at least `threshold_bytes` are compressed by the shard's compressor for the
//! connection's window size, reset after each message; a message that did not shrink goes out
//! uncompressed. With context takeover, the connection's own window (the last 2^bits bytes it
//! sent compressed, which the peer's decompressor holds too) is put in front as a preset
//! dictionary: the output references earlier messages exactly as a compressor kept per
//! connection would, for 2^bits bytes instead of a compressor. Shared frames (broadcasts,
//! publishes) are compressed once per shard and window size and queued by reference to every
//! connection with compression; a dedicated connection that gets one starts its own window
//! afresh (the peer's window now holds bytes it did not record; a message compressed without
//! a dictionary references nothing earlier).
//!
//! # Choices
//!
//! - **zlib-rs** (pure Rust, a port of zlib-ng; its safe `Deflate`/`Inflate` API, no `unsafe`
//!   here): raw deflate with window bits 9-15, memory level, sync flush, reset and
//!   dictionaries, the speed of zlib-ng. flate2 on the same backend hides the memory level;
//!   libz-rs-sys would need `unsafe` FFI calls. Its costs shape the design: a compressor is
//!   one allocation of about 165 KiB at a 12-bit window whatever the memory level (a fixed
//!   128 KiB hash table; zlib's would be 64 KiB at memLevel 8), and an inflater always
//!   allocates a 32 KiB window (about 42 KiB). So neither is ever per connection: one of each
//!   per shard (a compressor per window size in use), and a connection that keeps context
//!   keeps only windows, 2^bits bytes each, put in front of a message as a dictionary. That
//!   costs CPU per message (the dictionary is hashed again, and the compressor's 128 KiB hash
//!   table cleared, for every message) but keeps every compressor hot in cache: at 100
//!   connections, a server CPU of about 13 µs per echoed 1 KiB JSON message in `shared` and
//!   19 µs in `dedicated`, 0.5 and 0.6 of uWebSockets' (`bench/results/2026-11-30-deflate-cpu.md`).
//! - A compressed message is inflated once it is whole: a per-shard inflater cannot keep one
//!   connection's half-inflated message while others' messages arrive in between, and a
//!   per-connection one would cost 42 KiB per connection mid-message. The compressed bytes of
//!   a fragmented message are bounded by `message_bytes_max` like any message's.
//! - `server_max_window_bits=8` is accepted and kept to: zlib cannot compress with a 256-byte
//!   window (it uses 512, madler/zlib#171), so such a connection's messages use the run-length
//!   strategy (distance-1 matches only), valid in any window. Python `websockets` declines such
//!   an offer; Node `ws` accepts it and compresses with 512 bytes. A peer's window is kept at 9
//!   bits at least for the same reason.

mod codec;
mod negotiate;
mod settings;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

pub use self::codec::{CompressError, Compressor, InflateError, Inflater, Window};
pub use self::negotiate::{client_accept, client_offer, Agreed, BadAnswer};
pub(crate) use self::negotiate::{server_answer, Malformed};

pub use self::settings::{Compression, DeflateSettings};

use super::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};

/// One connection's terms, packed in a byte of its send half (0: no compression).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Terms(u8);

impl Terms {
    const ON: u8 = 0x80;
    const LOCAL_NO_CONTEXT: u8 = 0x40;
    /// Client side: an offer was sent, the answer is still to be checked.
    const OFFERED: u8 = 0x20;
    const BITS: u8 = 0x0f;

    pub(crate) fn new(a: &Agreed) -> Self {
        let mut t = Self::ON | (a.local_max_window_bits & Self::BITS);
        if a.local_no_context_takeover {
            t |= Self::LOCAL_NO_CONTEXT;
        }
        Self(t)
    }

    pub(crate) fn offered() -> Self {
        Self(Self::OFFERED)
    }

    #[inline]
    pub(crate) fn is_on(self) -> bool {
        self.0 & Self::ON != 0
    }

    pub(crate) fn is_offered(self) -> bool {
        self.0 & Self::OFFERED != 0
    }

    fn local_no_context(self) -> bool {
        self.0 & Self::LOCAL_NO_CONTEXT != 0
    }

    fn local_bits(self) -> u8 {
        self.0 & Self::BITS
    }
}

/// A connection's own compression state (dedicated terms only; boxed in its send half).
#[derive(Debug)]
pub(crate) struct ConnDeflate {
    /// The peer's history (it uses context takeover).
    window: Option<Window>,
    /// Our own history (we use context takeover): the last bytes we sent compressed since it
    /// last started afresh, which the peer's decompressor holds too. The shard's compressor
    /// takes it as a preset dictionary, so a connection keeps 2^bits bytes instead of a
    /// compressor of its own. Created on the first compressed send, dropped when idle.
    sent: Option<Window>,
    local_bits: u8,
    /// Bytes charged to the shard's budget: the peer's window, plus ours while it exists (at
    /// most 2 × 32 KiB; 32 bits keep the box at 80 bytes).
    charged: u32,
    budget: Arc<AtomicUsize>,
}

impl ConnDeflate {
    /// The connection's idle deadline passed (nothing received for the idle timeout): drop
    /// our history (a busy sender makes a new one: once per idle timeout at most). The next
    /// message references nothing earlier, which the peer reads as well.
    pub(crate) fn on_idle(&mut self) {
        self.forget_sent();
    }

    /// Start our history afresh (idle, or the peer's window got bytes we did not record).
    fn forget_sent(&mut self) {
        if self.sent.take().is_some() {
            let b = Window::heap_bytes(self.local_bits);
            self.charged -= b as u32;
            self.budget.fetch_sub(b, Relaxed);
        }
    }

    /// Heap bytes this connection holds for compression (windows, this box).
    pub(crate) fn heap_bytes(&self) -> usize {
        core::mem::size_of::<Self>() + self.charged as usize
    }
}

impl Drop for ConnDeflate {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.charged as usize, Relaxed);
    }
}

/// What the shard's connections share for compression (inside the [`super::Endpoint`]).
#[derive(Debug, Default)]
pub struct ShardDeflate {
    /// Compressors without context takeover, by window bits 8..=15 (created on first use).
    compressors: [Option<Compressor>; 8],
    inflater: Option<Inflater>,
    /// A message's inflated bytes (lent to the handler while it is delivered).
    inflated: Vec<u8>,
    /// A message's compressed bytes before they are framed.
    scratch: Vec<u8>,
    /// Bytes of dedicated state held by this shard's connections.
    charged: Arc<AtomicUsize>,
    /// Compressed variants of the shared frame being delivered: (plain, window bits, frame).
    variants: Vec<Variant>,
}

/// A shared frame, a window size, and its compressed variant (`None`: send it plain).
type Variant = (Arc<[u8]>, u8, Option<Arc<[u8]>>);

/// Negotiated terms, and the connection's box if they need one.
pub(crate) type Negotiated = (negotiate::Answer, Option<Box<ConnDeflate>>);

/// Buffers above this are released after use (a shard keeps at most this much per buffer).
const KEEP_BUFFER_BYTES: usize = 256 << 10;

impl ShardDeflate {
    /// Bytes of dedicated per-connection state this shard's connections hold (budgeted).
    pub fn dedicated_bytes(&self) -> usize {
        self.charged.load(Relaxed)
    }

    fn compressor(&mut self, bits: u8, st: &DeflateSettings) -> &mut Compressor {
        let i = usize::from(bits.clamp(8, 15) - 8);
        self.compressors[i].get_or_insert_with(|| Compressor::new(st.level, bits, st.mem_level))
    }

    /// Server side: agree on terms for a request's `Sec-WebSocket-Extensions` values.
    pub(crate) fn negotiate<'a>(
        &self,
        values: impl Iterator<Item = &'a str>,
        st: &DeflateSettings,
    ) -> Result<Option<Negotiated>, Malformed> {
        let charged = self.charged.load(Relaxed);
        let sent = Window::heap_bytes(st.server_max_window_bits);
        let fits = |ring_bits: u8| {
            let ring = if ring_bits == 0 {
                0
            } else {
                Window::heap_bytes(ring_bits)
            };
            charged + ring + sent <= st.dedicated_bytes_max
        };
        let Some(answer) = server_answer(values, st, fits)? else {
            return Ok(None);
        };
        let conn = answer
            .dedicated
            .then(|| self.conn_state(&answer.agreed))
            .flatten();
        Ok(Some((answer, conn)))
    }

    /// The per-connection box for `agreed`, if it needs one (context takeover either way).
    pub(crate) fn conn_state(&self, a: &Agreed) -> Option<Box<ConnDeflate>> {
        if a.local_no_context_takeover && a.remote_no_context_takeover {
            return None;
        }
        let window = (!a.remote_no_context_takeover).then(|| Window::new(a.remote_max_window_bits));
        let charged = if window.is_some() {
            Window::heap_bytes(a.remote_max_window_bits)
        } else {
            0
        };
        self.charged.fetch_add(charged, Relaxed);
        Some(Box::new(ConnDeflate {
            window,
            sent: None,
            local_bits: a.local_max_window_bits,
            charged: charged as u32,
            budget: self.charged.clone(),
        }))
    }

    /// Inflate one received message (whole) into the shard's buffer, which is taken out and
    /// returned: give it back with [`ShardDeflate::restore`] once the message is delivered.
    pub(crate) fn inflate(
        &mut self,
        payload: &[u8],
        conn: Option<&mut ConnDeflate>,
        limit: usize,
    ) -> (Vec<u8>, Result<(), InflateError>) {
        let mut out = core::mem::take(&mut self.inflated);
        let inflater = self.inflater.get_or_insert_with(Inflater::new);
        let window = conn.and_then(|c| c.window.as_mut());
        let r = inflater.inflate(payload, window, limit, &mut out);
        (out, r)
    }

    /// Give back the buffer [`ShardDeflate::inflate`] lent (released if it grew large).
    pub(crate) fn restore(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > KEEP_BUFFER_BYTES {
            buf = Vec::new();
        }
        buf.clear();
        self.inflated = buf;
    }

    /// Compress `payload` for a connection with `terms` (and its box, if dedicated): the
    /// compressed payload (trailer removed), borrowed until the next call. `None`: send it
    /// uncompressed (it did not shrink, the budget has no room for the connection's history,
    /// or zlib-rs failed).
    pub(crate) fn compress(
        &mut self,
        terms: Terms,
        conn: Option<&mut ConnDeflate>,
        st: &DeflateSettings,
        payload: &[u8],
    ) -> Option<&[u8]> {
        let mut z = core::mem::take(&mut self.scratch);
        if z.capacity() > KEEP_BUFFER_BYTES {
            z = Vec::new();
        }
        z.clear();
        let ok = match conn {
            Some(c) if !terms.local_no_context() => self.compress_dedicated(c, st, payload, &mut z),
            _ => {
                let c = self.compressor(terms.local_bits(), st);
                let r = c.compress(payload, &mut z);
                c.reset();
                r.is_ok() && z.len() < payload.len()
            }
        };
        self.scratch = z;
        ok.then_some(&self.scratch[..])
    }

    fn compress_dedicated(
        &mut self,
        c: &mut ConnDeflate,
        st: &DeflateSettings,
        payload: &[u8],
        z: &mut Vec<u8>,
    ) -> bool {
        if c.sent.is_none() {
            let bytes = Window::heap_bytes(c.local_bits);
            if self.charged.load(Relaxed) + bytes > st.dedicated_bytes_max {
                return false;
            }
            self.charged.fetch_add(bytes, Relaxed);
            c.charged += bytes as u32;
            c.sent = Some(Window::new(c.local_bits));
        }
        let Some(sent) = c.sent.as_mut() else {
            return false;
        };
        let comp = self.compressor(c.local_bits, st);
        let r = comp.compress_after(sent, payload, z);
        comp.reset();
        // A message sent uncompressed does not reach the peer's window: the history stays.
        let shrank = r.is_ok() && z.len() < payload.len();
        if shrank {
            sent.extend(payload);
        }
        shrank
    }

    /// The compressed variant of a shared (unmasked, single-frame) `plain` frame for a
    /// connection with `terms`, compressed once per window size while the same frame is being
    /// delivered (see [`ShardDeflate::end_delivery`]). `None`: send `plain` (too small, or
    /// compression did not pay off).
    pub(crate) fn shared_variant(
        &mut self,
        terms: Terms,
        conn: Option<&mut ConnDeflate>,
        st: &DeflateSettings,
        plain: &Arc<[u8]>,
    ) -> Option<Arc<[u8]>> {
        let bits = terms.local_bits();
        let hit = self
            .variants
            .iter()
            .find(|(p, b, _)| *b == bits && Arc::ptr_eq(p, plain))
            .map(|(_, _, v)| v.clone());
        let v = match hit {
            Some(v) => v,
            None => {
                let v = self.compress_shared(bits, st, plain);
                self.variants.push((plain.clone(), bits, v.clone()));
                v
            }
        };
        if v.is_some() {
            // The peer's window gets bytes our history does not have: start it afresh.
            if let Some(c) = conn {
                c.forget_sent();
            }
        }
        v
    }

    fn compress_shared(
        &mut self,
        bits: u8,
        st: &DeflateSettings,
        plain: &[u8],
    ) -> Option<Arc<[u8]>> {
        let (h, n) = FrameHeader::parse(plain).ok().flatten()?;
        if !h.fin || h.rsv != 0 || h.mask.is_some() || h.opcode.is_control() {
            return None;
        }
        let payload = plain.get(n..)?;
        if payload.len() < st.threshold_bytes {
            return None;
        }
        let terms = Terms(Terms::ON | Terms::LOCAL_NO_CONTEXT | bits);
        let z = self.compress(terms, None, st, payload)?;
        let mut frame = Vec::with_capacity(z.len() + MAX_HEADER_LEN);
        encode_compressed(&mut frame, h.opcode, z, None);
        Some(Arc::from(frame))
    }

    /// The shared frame being delivered is done: forget its variants (they stay alive in the
    /// send queues that hold them).
    #[inline]
    pub(crate) fn end_delivery(&mut self) {
        if !self.variants.is_empty() {
            self.variants.clear();
        }
    }
}

/// Append one compressed data frame (RSV1 set, FIN) carrying `payload` (masked with `mask`).
pub fn encode_compressed(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    let mut header = FrameHeader::new(true, opcode, mask, payload.len() as u64);
    header.rsv = 4;
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut h);
    out.reserve(n + payload.len());
    out.extend_from_slice(&h[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(k) = mask {
        percore_simd::unmask(&mut out[start..], k, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dedicated_connection_without_room_for_its_window_sends_uncompressed() {
        // Room for both windows of one connection and the peer's window of another: the
        // second one's messages go out plain until the first one closes.
        let window = Window::heap_bytes(12);
        let st = DeflateSettings {
            mode: Compression::Dedicated,
            dedicated_bytes_max: 3 * window,
            ..DeflateSettings::default()
        };
        let mut shard = ShardDeflate::default();
        let offer = ["permessage-deflate; client_max_window_bits"];
        let open = || {
            let (answer, conn) = shard.negotiate(offer.into_iter(), &st).unwrap().unwrap();
            assert!(answer.dedicated);
            (Terms::new(&answer.agreed), conn.expect("a dedicated box"))
        };
        let (t1, mut c1) = open();
        let (t2, mut c2) = open();
        assert_eq!(shard.dedicated_bytes(), 2 * window);
        let msg = b"{\"id\":1,\"price\":100},{\"id\":2,\"price\":100},{\"id\":3,\"price\":100}";
        assert!(shard.compress(t1, Some(&mut c1), &st, msg).is_some());
        assert_eq!(shard.dedicated_bytes(), 3 * window);
        assert!(shard.compress(t2, Some(&mut c2), &st, msg).is_none());
        assert_eq!(
            c2.heap_bytes(),
            core::mem::size_of::<ConnDeflate>() + window
        );
        drop(c1);
        assert_eq!(shard.dedicated_bytes(), window);
        assert!(shard.compress(t2, Some(&mut c2), &st, msg).is_some());
        c2.on_idle();
        assert_eq!(shard.dedicated_bytes(), window);
        drop(c2);
        assert_eq!(shard.dedicated_bytes(), 0);
    }

    #[test]
    fn an_idle_dedicated_connection_holds_its_window_and_a_small_box() {
        let size = core::mem::size_of::<ConnDeflate>();
        println!("ConnDeflate: {size} bytes");
        assert!(size <= 80, "{size}");
    }
}
