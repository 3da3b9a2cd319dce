//! What every connection of one shard shares: its settings and its masking-key RNG, passed to
//! each [`super::Connection`] call instead of being stored per connection (which keeps a
//! connection small).

use std::sync::Arc;

use super::codec::Limits;
use super::deflate::{DeflateSettings, ShardDeflate};
use super::frame::{encode_frame, OpCode};
use super::handshake::HEADER_BYTES_MAX_DEFAULT;
use super::pool::BufPool;
use super::rng::MaskRng;

/// Payload bytes of an idle ping: the tick it was sent at and the fine clock, 4 bytes each.
pub(crate) const IDLE_PING_LEN: usize = 8;

/// The payload of an idle ping sent at tick `now` with the fine clock at `clock_us` (the pong
/// gives it back: the tick tells the answer to the outstanding ping, the clock its round trip).
pub(crate) fn idle_ping_payload(now: u32, clock_us: u32) -> [u8; IDLE_PING_LEN] {
    let mut p = [0; IDLE_PING_LEN];
    p[..4].copy_from_slice(&now.to_be_bytes());
    p[4..].copy_from_slice(&clock_us.to_be_bytes());
    p
}

/// The protocol settings of a group of connections. Timeouts count *ticks*, a unit the caller
/// picks (the shard's is 10 ms) and uses for the `now` it passes to every
/// [`super::Connection`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// Frame and message size limits.
    pub limits: Limits,
    /// Largest handshake header block (request or response); larger is 431.
    pub handshake_header_bytes_max: usize,
    /// Ticks from accept (or connect) to a complete handshake, including the time the
    /// application takes to answer the upgrade request.
    pub handshake_timeout_ticks: u32,
    /// Ticks without input before a ping is sent; 0 turns idle pings off.
    pub idle_timeout_ticks: u32,
    /// Spread of the idle pings: each connection pings after `idle_timeout_ticks − j` ticks
    /// without input, `j` drawn afresh (uniform in `0..=idle_jitter_ticks`, at most half the
    /// idle timeout and 65 535) at its handshake and at each ping. Connections that went quiet
    /// in the same tick (opened in one burst, or answered one round of pings) then ping over
    /// this many ticks instead of all in one. 0: no spread (the default here; servers set it).
    pub idle_jitter_ticks: u32,
    /// Ticks after an idle ping without any input before the connection is dropped.
    pub pong_timeout_ticks: u32,
    /// Ticks allowed for a close handshake, or for the peer to hang up after we failed the
    /// connection or refused its handshake.
    pub close_timeout_ticks: u32,
    /// permessage-deflate (off by default).
    pub deflate: DeflateSettings,
    /// Most bytes of large message buffers the endpoint keeps between messages for reuse
    /// ([`BufPool`]); 0 keeps none.
    pub buffer_pool_bytes_max: usize,
}

impl Default for Settings {
    /// Default limits and timeouts for 10 ms ticks: handshake 10 s, idle 60 s, pong 20 s,
    /// close 5 s.
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            handshake_header_bytes_max: HEADER_BYTES_MAX_DEFAULT,
            handshake_timeout_ticks: 1_000,
            idle_timeout_ticks: 6_000,
            idle_jitter_ticks: 0,
            pong_timeout_ticks: 2_000,
            close_timeout_ticks: 500,
            deflate: DeflateSettings::default(),
            buffer_pool_bytes_max: 4 << 20,
        }
    }
}

/// Per-shard protocol state shared by its connections (quinn-proto's `Endpoint`, reduced to
/// what a WebSocket connection needs): the [`Settings`], the [`MaskRng`] that masks client
/// frames, the [`BufPool`] of large message buffers, the compression state its connections
/// share ([`ShardDeflate`]) and the caller's fine clock, which times idle pings.
#[derive(Debug)]
pub struct Endpoint {
    settings: Settings,
    rng: MaskRng,
    pub(crate) deflate: ShardDeflate,
    /// Boxed, so that a connection can take it out for the time it decodes (while the events
    /// it hands out borrow the endpoint) at the cost of one pointer.
    pool: Option<Box<BufPool>>,
    /// The caller's fine clock ([`Endpoint::set_clock_us`]).
    clock_us: u32,
    /// The idle ping last encoded for server connections, with the tick and fine clock in its
    /// payload: every connection pinged in the same tick and turn gets the same bytes, so their
    /// queues hold a reference to one frame instead of a buffer each ([`Endpoint::idle_ping`]).
    idle_ping: Option<(u32, u32, Arc<[u8]>)>,
    /// The pong that answers an empty ping, unmasked (server side), encoded once.
    empty_pong: Arc<[u8]>,
}

impl Endpoint {
    /// An endpoint with `settings` and an RNG seeded from the operating system.
    pub fn new(settings: Settings) -> Self {
        Self::with_rng(settings, MaskRng::from_os())
    }

    /// An endpoint with `settings` and the given RNG (tests: a fixed seed).
    pub fn with_rng(mut settings: Settings, rng: MaskRng) -> Self {
        settings.deflate = settings.deflate.clamped();
        let pool = Some(Box::new(BufPool::new(settings.buffer_pool_bytes_max)));
        Self {
            settings,
            rng,
            deflate: ShardDeflate::default(),
            pool,
            clock_us: 0,
            idle_ping: None,
            empty_pong: {
                let mut v = Vec::with_capacity(2);
                encode_frame(&mut v, OpCode::Pong, true, &[], None);
                v.into()
            },
        }
    }

    /// The shared compression state and its settings, borrowed together.
    #[inline]
    pub(crate) fn deflate_parts(&mut self) -> (&mut ShardDeflate, &DeflateSettings) {
        (&mut self.deflate, &self.settings.deflate)
    }

    /// The compression state shared by this endpoint's connections.
    pub fn deflate(&self) -> &ShardDeflate {
        &self.deflate
    }

    /// A shared frame is delivered to every connection it was meant for: forget its
    /// compressed variants (see [`super::SendHalf::deflated_variant`]).
    #[inline]
    pub fn end_delivery(&mut self) {
        self.deflate.end_delivery();
    }

    /// The settings.
    #[inline]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Let close handshakes begun from now on last `ticks` if that is longer than the
    /// configured close timeout (a graceful shutdown waits for replies until its own deadline).
    pub fn extend_close_timeout(&mut self, ticks: u32) {
        let st = &mut self.settings;
        st.close_timeout_ticks = st.close_timeout_ticks.max(ticks);
    }

    /// Set the fine clock: microseconds on any monotonic clock of the caller's, wrapping at
    /// 2^32 (71 minutes). An idle ping carries the time it was queued at and a pong that echoes
    /// it gives the round trip ([`super::AppEvent::Rtt`]), so set it whenever the tick is
    /// stamped (the shard does it once per loop turn; its resolution is then the turn). Never
    /// set, every round trip reads 0.
    #[inline]
    pub fn set_clock_us(&mut self, us: u32) {
        self.clock_us = us;
    }

    /// The fine clock's last value.
    #[inline]
    pub fn clock_us(&self) -> u32 {
        self.clock_us
    }

    /// The unmasked idle ping of tick `now` at the current fine clock, shared by the server
    /// connections pinged with it (encoded again when the tick or the clock moved on). A ping
    /// burst then allocates no frame buffer per connection: the frame lives for as long as a
    /// queue (or a send in flight) holds a reference.
    pub(crate) fn idle_ping(&mut self, now: u32) -> &Arc<[u8]> {
        let clock = self.clock_us;
        if !matches!(&self.idle_ping, Some((t, c, _)) if *t == now && *c == clock) {
            self.idle_ping = None;
        }
        &self
            .idle_ping
            .get_or_insert_with(|| {
                let p = idle_ping_payload(now, clock);
                let mut v = Vec::with_capacity(2 + p.len());
                encode_frame(&mut v, OpCode::Ping, true, &p, None);
                (now, clock, v.into())
            })
            .2
    }

    /// The unmasked pong with an empty payload (a server's answer to an empty ping), encoded
    /// once per endpoint.
    pub(crate) fn empty_pong(&self) -> &Arc<[u8]> {
        &self.empty_pong
    }

    /// A fresh idle-ping jitter for one connection (see [`Settings::idle_jitter_ticks`]).
    #[inline]
    pub(crate) fn idle_jitter(&mut self) -> u16 {
        let st = &self.settings;
        let most = st
            .idle_jitter_ticks
            .min(st.idle_timeout_ticks / 2)
            .min(u32::from(u16::MAX));
        if most == 0 {
            return 0;
        }
        let r = u32::from_le_bytes(self.rng.mask());
        // `most` < 2^16: the modulo bias is below 2^-16.
        (r % (most + 1)) as u16
    }

    /// A fresh masking key for one client frame.
    #[inline]
    pub fn mask(&mut self) -> [u8; 4] {
        self.rng.mask()
    }

    /// The pool of large message buffers.
    pub fn pool(&mut self) -> &mut BufPool {
        self.pool.get_or_insert_with(Box::default)
    }

    /// Take the pool out while the endpoint is lent to event callbacks.
    #[inline]
    pub(crate) fn take_pool(&mut self) -> Option<Box<BufPool>> {
        self.pool.take()
    }

    /// Put back what [`Endpoint::take_pool`] took.
    #[inline]
    pub(crate) fn restore_pool(&mut self, pool: Option<Box<BufPool>>) {
        if pool.is_some() {
            self.pool = pool;
        }
    }
}
