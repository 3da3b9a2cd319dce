//! The protocol layer's settings of a shard's endpoint, from the server's [`Config`].

use crate::config::Config;
use crate::proto::{DeflateSettings, Settings};

use super::timer::TimerWheel;

/// The endpoint's settings: limits, deadlines in `wheel`'s ticks, permessage-deflate, the
/// buffer pool's bound.
pub(super) fn protocol(config: &Config, wheel: &TimerWheel) -> Settings {
    let mut settings = Settings::default();
    settings.limits.frame_bytes_max = config.frame_bytes_max;
    settings.limits.message_bytes_max = config.message_bytes_max;
    settings.handshake_header_bytes_max = config.handshake_header_bytes_max;
    settings.handshake_timeout_ticks = wheel.ticks(config.handshake_timeout);
    settings.idle_timeout_ticks = wheel.ticks(config.idle_timeout);
    settings.idle_jitter_ticks = wheel.ticks(config.idle_timeout_jitter);
    settings.pong_timeout_ticks = wheel.ticks(config.pong_timeout);
    settings.close_timeout_ticks = wheel.ticks(config.close_timeout);
    settings.deflate = deflate(config);
    settings.buffer_pool_bytes_max = config.buffer_pool_bytes_max;
    settings
}

/// The protocol layer's permessage-deflate settings from the server's.
fn deflate(config: &Config) -> DeflateSettings {
    DeflateSettings {
        mode: config.compression,
        threshold_bytes: config.deflate_threshold_bytes,
        level: config.deflate_level,
        server_max_window_bits: config.deflate_server_max_window_bits,
        client_max_window_bits: config.deflate_client_max_window_bits,
        mem_level: config.deflate_mem_level,
        dedicated_bytes_max: config.deflate_dedicated_bytes_max,
    }
}
