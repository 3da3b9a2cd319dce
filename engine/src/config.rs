//! What a server runs with: the backend and shard choices and every limit, as
//! [`crate::ServerBuilder`] collects them. What each limit costs is documented on its builder
//! method; [`Config::clamped`] is the one place where limits are clamped.

use std::fmt;
use std::time::Duration;

use crate::history::HistoryPolicy;
use crate::origin::Origins;

/// Which I/O backend the shards run on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring where the kernel allows it, else epoll (the default).
    #[default]
    Auto,
    /// epoll (through mio): readiness, then `read`/`writev` per connection.
    Epoll,
    /// io_uring: multishot accept and recv into a provided-buffer ring, batched submission.
    IoUring,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Epoll => "epoll",
            Backend::IoUring => "io_uring",
        })
    }
}

/// How many shards (threads) to run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum Shards {
    /// One per CPU core the process may run on (the default).
    #[default]
    PerCore,
    /// Exactly this many (at least 1).
    Count(usize),
}

/// What happens to a connection whose send queue grows past `send_queue_bytes_max`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Drop the queue and close with 1008 (policy violation). The default.
    #[default]
    Close1008,
    /// Drop the queue and close with 1013 (try again later).
    Close1013,
}

/// Whether and how a server compresses (permessage-deflate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// Decline every offer (the default): no compression, no cost.
    #[default]
    Off,
    /// Accept with `server_no_context_takeover; client_no_context_takeover`: every message is
    /// compressed on its own, by one compressor per shard, and inflated by one decompressor
    /// per shard. A connection holds no compression state at all.
    Shared,
    /// Accept with context takeover (what the client offered, windows capped by
    /// [`crate::ServerBuilder::deflate_server_max_window_bits`] and
    /// [`crate::ServerBuilder::deflate_client_max_window_bits`]): better ratios for streams of similar
    /// messages, at a per-connection cost (the peer's window while open, our own window once
    /// we send, 2^bits bytes each), bounded per shard by
    /// [`crate::ServerBuilder::deflate_dedicated_bytes_max`].
    Dedicated,
}

/// Smallest receive buffer: one page (smaller buffers only add reads).
const RECV_BUFFER_BYTES_MIN: usize = 4 << 10;
/// Largest receive buffer: an io_uring buffer length is a `u32`, and a gigabyte per buffer is
/// past any sensible use.
const RECV_BUFFER_BYTES_MAX: usize = 1 << 30;
/// Default of [`crate::ServerBuilder::recv_in_place_bytes_max`]: 2 MiB, room for a 1 MiB
/// message read whole.
pub(crate) const RECV_IN_PLACE_BYTES_MAX: usize = 2 << 20;
/// Most buffers in one io_uring provided-buffer ring (the kernel's bound).
const RECV_BUFFERS_MAX: usize = 32_768;

/// Default for `tls_handshake_bytes_max`: 32 KiB, room for a ClientHello (usually under 2
/// KiB, at most one 16 KiB record) and a client's certificate chain.
#[cfg(feature = "tls")]
pub(crate) const TLS_HANDSHAKE_BYTES_MAX_DEFAULT: usize = 32 << 10;
/// Smallest `tls_handshake_bytes_max`: one whole TLS record.
#[cfg(feature = "tls")]
const TLS_HANDSHAKE_BYTES_MIN: usize = (1 << 14) + 256 + 5;
/// Default most direct descriptors per shard: 2^20, so a million connections fit in one or
/// two shards; nothing is allocated for them until they come.
const DIRECT_FDS_MAX: u32 = 1 << 20;
/// Most entries in one io_uring fixed-file table (the kernel's bound, `IORING_MAX_FIXED_FILES`).
/// The driver lowers it further to `RLIMIT_NOFILE`, which the kernel also applies.
const DIRECT_FDS_TABLE_MAX: u32 = 1 << 20;
/// Default most close handshakes a graceful shutdown begins per shard and loop turn: ~2.5 MiB of
/// queued close frames at once (~600 bytes each), and 25 turns to begin closing 100,000
/// connections.
pub(crate) const SHUTDOWN_CLOSE_BATCH: usize = 4096;
/// Most io_uring rings per shard (must match the driver's `RINGS_MAX`).
const RINGS_PER_SHARD_MAX: u32 = 256;

/// Default of [`crate::ServerBuilder::send_direct_bytes_min`]: off. With it on (8 KiB) CI's
/// one-minute soak saw the epoll echo server's RSS rise past its 2 % gate in 2 of 7 runs (1 in 8
/// without it), and the shards' stocks aged as bench/results/2026-12-02-arena.md proposed did not
/// make it pass reliably (bench/results/2026-12-02-direct-default.md); with the rest of a
/// partial direct write queued in a buffer sized for the whole frame it passed 2 of 3
/// (bench/results/2026-12-02-direct-send.md: the growth is free memory inside glibc's arenas,
/// not heap the engine holds): off until the soak passes reliably.
pub(crate) const SEND_DIRECT_BYTES_MIN: usize = usize::MAX;

/// Everything a shard needs to know; built by [`crate::ServerBuilder`]. Limit names carry their
/// unit last (`_bytes`, `_messages`…) and a `_max` when they bound something.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) shards: Shards,
    pub(crate) pin: bool,
    pub(crate) backend: Backend,
    pub(crate) backlog: u32,
    pub(crate) connections_max: usize,
    pub(crate) handshake_header_bytes_max: usize,
    pub(crate) frame_bytes_max: usize,
    pub(crate) message_bytes_max: usize,
    pub(crate) send_queue_bytes_max: usize,
    pub(crate) send_queue_low_water_bytes: usize,
    pub(crate) send_direct_bytes_min: usize,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) recv_buffer_bytes: usize,
    pub(crate) recv_in_place_bytes_max: usize,
    pub(crate) recv_buffers: usize,
    pub(crate) recv_frames_per_turn_max: u32,
    pub(crate) buffer_pool_bytes_max: usize,
    pub(crate) fixed_malloc_thresholds: bool,
    pub(crate) direct_fds: bool,
    pub(crate) direct_fds_max: u32,
    pub(crate) direct_fds_table_max: u32,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) idle_timeout_jitter: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) shutdown_close_batch: usize,
    pub(crate) topic_name_bytes_max: usize,
    pub(crate) mailbox_messages_max: usize,
    pub(crate) http_response_bytes_max: usize,
    pub(crate) origins: Origins,
    pub(crate) compression: Compression,
    pub(crate) deflate_threshold_bytes: usize,
    pub(crate) deflate_level: u8,
    pub(crate) deflate_server_max_window_bits: u8,
    pub(crate) deflate_client_max_window_bits: u8,
    pub(crate) deflate_mem_level: u8,
    pub(crate) deflate_dedicated_bytes_max: usize,
    pub(crate) history: HistoryPolicy,
    pub(crate) resume_protocol: bool,
    /// TLS for the TLS listener (the application's config, prepared at start).
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Most received bytes a TLS session holds while its handshake runs.
    #[cfg(feature = "tls")]
    pub(crate) tls_handshake_bytes_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shards: Shards::PerCore,
            pin: true,
            backend: Backend::Auto,
            backlog: 65535,
            connections_max: 200_000,
            handshake_header_bytes_max: 8 << 10,
            frame_bytes_max: 16 << 20,
            message_bytes_max: 16 << 20,
            send_queue_bytes_max: 4 << 20,
            send_queue_low_water_bytes: 64 << 10,
            send_direct_bytes_min: SEND_DIRECT_BYTES_MIN,
            slow_consumer: SlowConsumer::Close1008,
            recv_buffer_bytes: 64 << 10,
            recv_in_place_bytes_max: RECV_IN_PLACE_BYTES_MAX,
            recv_buffers: 256,
            recv_frames_per_turn_max: 256,
            buffer_pool_bytes_max: 4 << 20,
            fixed_malloc_thresholds: true,
            direct_fds: false,
            direct_fds_max: DIRECT_FDS_MAX,
            direct_fds_table_max: DIRECT_FDS_TABLE_MAX,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            idle_timeout_jitter: Duration::from_secs(15),
            pong_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(5),
            shutdown_close_batch: SHUTDOWN_CLOSE_BATCH,
            topic_name_bytes_max: 256,
            mailbox_messages_max: 65_536,
            http_response_bytes_max: 1 << 20,
            origins: Origins::default(),
            compression: Compression::Off,
            deflate_threshold_bytes: 64,
            deflate_level: 1,
            deflate_server_max_window_bits: 12,
            deflate_client_max_window_bits: 12,
            deflate_mem_level: 8,
            deflate_dedicated_bytes_max: 64 << 20,
            history: HistoryPolicy::default(),
            resume_protocol: false,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            tls_handshake_bytes_max: TLS_HANDSHAKE_BYTES_MAX_DEFAULT,
        }
    }
}

impl Config {
    /// Every clamp, in one place (called once, by `ServerBuilder::start`). `nofile` is the
    /// process's `RLIMIT_NOFILE`, which caps an io_uring fixed-file table (see
    /// [`crate::ServerBuilder::direct_fds_max`]).
    pub(crate) fn clamped(mut self, nofile: u32) -> Self {
        if let Shards::Count(n) = self.shards {
            self.shards = Shards::Count(n.max(1));
        }
        self.recv_buffer_bytes = self
            .recv_buffer_bytes
            .clamp(RECV_BUFFER_BYTES_MIN, RECV_BUFFER_BYTES_MAX);
        self.recv_in_place_bytes_max = self.recv_in_place_bytes_max.min(RECV_BUFFER_BYTES_MAX);
        // A provided-buffer ring holds a power of two of buffers.
        let n = self.recv_buffers.clamp(1, RECV_BUFFERS_MAX);
        self.recv_buffers = 1 << (usize::BITS - 1 - n.leading_zeros());
        // One fixed-file table holds at most RLIMIT_NOFILE entries; a shard spreads its direct
        // descriptors over up to RINGS_PER_SHARD_MAX rings of one table each.
        self.direct_fds_table_max = self
            .direct_fds_table_max
            .clamp(1, nofile.clamp(1, DIRECT_FDS_TABLE_MAX));
        self.direct_fds_max = self.direct_fds_max.clamp(
            1,
            self.direct_fds_table_max
                .saturating_mul(RINGS_PER_SHARD_MAX),
        );
        self.idle_timeout_jitter = self.idle_timeout_jitter.min(self.idle_timeout / 2);
        // `on_drain` is due when the queue falls below this: 0 would never be crossed.
        self.send_queue_low_water_bytes = self.send_queue_low_water_bytes.max(1);
        self.mailbox_messages_max = self.mailbox_messages_max.max(1);
        // 0 closes a turn would never close anything.
        self.shutdown_close_batch = self.shutdown_close_batch.max(1);
        self.deflate_level = self.deflate_level.min(9);
        self.deflate_server_max_window_bits = self.deflate_server_max_window_bits.clamp(9, 15);
        self.deflate_client_max_window_bits = self.deflate_client_max_window_bits.clamp(9, 15);
        self.deflate_mem_level = self.deflate_mem_level.clamp(1, 9);
        // 0 frames a turn would never decode anything; a connection counts them in a u16.
        self.recv_frames_per_turn_max = self.recv_frames_per_turn_max.clamp(1, u32::from(u16::MAX));
        self.history.topics_max = self.history.topics_max.max(1);
        #[cfg(feature = "tls")]
        {
            self.tls_handshake_bytes_max =
                self.tls_handshake_bytes_max.max(TLS_HANDSHAKE_BYTES_MIN);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_round_recv_buffers_down_to_a_power_of_two_and_bound_the_rest() {
        let c = Config {
            recv_buffers: 5000,
            recv_buffer_bytes: 10,
            direct_fds_max: u32::MAX,
            direct_fds_table_max: u32::MAX,
            send_queue_low_water_bytes: 0,
            mailbox_messages_max: 0,
            recv_frames_per_turn_max: 0,
            shards: Shards::Count(0),
            ..Config::default()
        }
        .clamped(20_000);
        assert_eq!(c.recv_buffers, 4096);
        assert_eq!(c.recv_buffer_bytes, RECV_BUFFER_BYTES_MIN);
        assert_eq!(c.direct_fds_table_max, 20_000);
        assert_eq!(c.direct_fds_max, 20_000 * RINGS_PER_SHARD_MAX);
        assert_eq!(c.send_queue_low_water_bytes, 1);
        assert_eq!(c.mailbox_messages_max, 1);
        assert_eq!(c.recv_frames_per_turn_max, 1);
        assert_eq!(c.shards, Shards::Count(1));
        let c = Config {
            recv_buffers: 1 << 20,
            ..Config::default()
        }
        .clamped(20_000);
        assert_eq!(c.recv_buffers, RECV_BUFFERS_MAX);
    }
}
