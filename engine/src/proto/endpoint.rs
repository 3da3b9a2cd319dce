//! What every connection of one shard shares: its settings and its masking-key RNG, passed to
//! each [`super::Connection`] call instead of being stored per connection (which keeps a
//! connection small).

use super::codec::Limits;
use super::deflate::{DeflateSettings, ShardDeflate};
use super::handshake::HEADER_BYTES_MAX_DEFAULT;
use super::rng::MaskRng;

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
    /// Ticks after an idle ping without any input before the connection is dropped.
    pub pong_timeout_ticks: u32,
    /// Ticks allowed for a close handshake, or for the peer to hang up after we failed the
    /// connection or refused its handshake.
    pub close_timeout_ticks: u32,
    /// permessage-deflate (off by default).
    pub deflate: DeflateSettings,
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
            pong_timeout_ticks: 2_000,
            close_timeout_ticks: 500,
            deflate: DeflateSettings::default(),
        }
    }
}

/// Per-shard protocol state shared by its connections (quinn-proto's `Endpoint`, reduced to
/// what a WebSocket connection needs): the [`Settings`] and the [`MaskRng`] that masks client
/// frames, and the compression state its connections share ([`ShardDeflate`]).
#[derive(Debug)]
pub struct Endpoint {
    settings: Settings,
    rng: MaskRng,
    pub(crate) deflate: ShardDeflate,
}

impl Endpoint {
    /// An endpoint with `settings` and an RNG seeded from the operating system.
    pub fn new(settings: Settings) -> Self {
        Self::with_rng(settings, MaskRng::from_os())
    }

    /// An endpoint with `settings` and the given RNG (tests: a fixed seed).
    pub fn with_rng(mut settings: Settings, rng: MaskRng) -> Self {
        settings.deflate = settings.deflate.clamped();
        Self {
            settings,
            rng,
            deflate: ShardDeflate::default(),
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

    /// A fresh masking key for one client frame.
    #[inline]
    pub fn mask(&mut self) -> [u8; 4] {
        self.rng.mask()
    }
}
