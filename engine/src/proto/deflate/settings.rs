//! permessage-deflate settings.

pub use crate::config::Compression;

/// permessage-deflate settings (part of [`crate::proto::Settings`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateSettings {
    /// Off, shared or dedicated.
    pub mode: Compression,
    /// Messages shorter than this go out uncompressed (RSV1 clear): small messages compress
    /// badly and cost CPU. Default 64.
    pub threshold_bytes: usize,
    /// zlib level 0..=9 (default 1: zlib-rs' fastest, see the crate docs for the ratio).
    pub level: u8,
    /// Largest window we compress with, 9..=15 (default 12: 4 KiB of history, what a dedicated
    /// connection keeps of what it sent). Each of the shard's compressors costs 16 bytes per
    /// window byte (zlib-rs) plus fixed tables.
    pub server_max_window_bits: u8,
    /// Dedicated: the window asked of a client that offers `client_max_window_bits`, 9..=15
    /// (default 12). A client with context takeover costs 2^this bytes while its connection is
    /// open; one that does not offer the parameter costs 32 KiB.
    pub client_max_window_bits: u8,
    /// zlib memory level 1..=9 of the shard's compressors (default 8): zlib-rs sizes its
    /// literal buffers by it (7 × 2^(level+6) bytes: 112 KiB at 8), not its hash table.
    pub mem_level: u8,
    /// Dedicated: most bytes of per-connection compression state one shard holds (the peers'
    /// windows and our own; default 64 MiB). Past it, new connections get shared terms and a
    /// connection with no room for its own window sends uncompressed.
    pub dedicated_bytes_max: usize,
}

impl Default for DeflateSettings {
    fn default() -> Self {
        Self {
            mode: Compression::Off,
            threshold_bytes: 64,
            level: 1,
            server_max_window_bits: 12,
            client_max_window_bits: 12,
            mem_level: 8,
            dedicated_bytes_max: 64 << 20,
        }
    }
}

impl DeflateSettings {
    /// Every clamp, in one place.
    pub fn clamped(mut self) -> Self {
        self.level = self.level.min(9);
        self.server_max_window_bits = self.server_max_window_bits.clamp(9, 15);
        self.client_max_window_bits = self.client_max_window_bits.clamp(9, 15);
        self.mem_level = self.mem_level.clamp(1, 9);
        self
    }
}
