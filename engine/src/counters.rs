//! Per-shard metric storage beside [`crate::stats::ShardStats`]: the partition of closed
//! connections by [`CloseReason`], refused handshakes by status, plain requests by status class,
//! the gauges the shard samples on its own timer and the [`Histogram`]s (ping round trips, loop
//! turns, io_uring submissions and completions per turn).
//!
//! Same rule as `stats.rs`: one shard writes, with a relaxed load and store (no locked
//! read-modify-write), and any thread reads (`crate::Metrics`). Nothing here walks the
//! connections: what is counted is counted where it happens, and the send-queue gauges are
//! sampled by the shard in bounded slices (see `shard/metering.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a connection ended. Every finished connection is counted under exactly one reason: the
/// first one that applied (a connection failed for a protocol error whose peer then never
/// closes is a protocol error, not a timeout).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// A close handshake (either side started it) or, before any close frame, a connection
    /// whose close outcome was a clean one.
    Normal,
    /// The peer went away without a close handshake (EOF, reset, a failed write), or the
    /// server dropped it at the end of a shutdown.
    Abnormal,
    /// A deadline passed: handshake (slowloris, an unanswered deferred upgrade), pong or close.
    Timeout,
    /// The send queue passed `send_queue_bytes_max`: closed by the slow-consumer policy.
    SlowConsumer,
    /// The peer broke the protocol or a limit (closed with 1002, 1007, 1009...).
    ProtocolError,
    /// A handler callback panicked (1011, or 500 for `on_upgrade` and `on_request`).
    HandlerPanic,
    /// The TLS layer failed the connection (a handshake refused, a record that did not
    /// authenticate, the peer's fatal alert, a stream cut inside a record). Zero while the
    /// server has no TLS listener.
    TlsFailure,
    /// The upgrade was refused with an HTTP status (malformed request, Origin, full, or the
    /// handler's rejection).
    HandshakeRejected,
    /// A plain HTTP request was answered (`Handler::on_request`).
    Http,
}

impl CloseReason {
    /// Every reason (the order of the `reason` label values in the text).
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Normal,
        CloseReason::Abnormal,
        CloseReason::Timeout,
        CloseReason::SlowConsumer,
        CloseReason::ProtocolError,
        CloseReason::HandlerPanic,
        CloseReason::TlsFailure,
        CloseReason::HandshakeRejected,
        CloseReason::Http,
    ];

    /// The label value (`reason="slow_consumer"`).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::Abnormal => "abnormal",
            CloseReason::Timeout => "timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::HandlerPanic => "handler_panic",
            CloseReason::TlsFailure => "tls_failure",
            CloseReason::HandshakeRejected => "handshake_rejected",
            CloseReason::Http => "http",
        }
    }

    /// Position in [`CloseReason::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// A reason recorded while the connection runs (everything but `Normal` and `Abnormal`,
    /// which are read from the close outcome when it ends), as a code in 1..=7, kept in bits
    /// 8..=14 of the slab entry's flags.
    pub(crate) fn code(self) -> u8 {
        (self as u8).saturating_sub(1)
    }

    /// The reason of a code made by [`CloseReason::code`] (0: none recorded).
    pub(crate) fn from_code(code: u8) -> Option<CloseReason> {
        match code {
            0 => None,
            c => CloseReason::ALL.get(usize::from(c) + 1).copied(),
        }
    }
}

/// Statuses of refused handshakes counted under their own label: the engine's own (400, 403,
/// 405, 411, 413, 426, 431, 500, 503) and the usual answers of an authenticating `on_upgrade`.
/// Any other status is counted by class (`4xx`, `5xx`, `other`), so the label set stays
/// bounded whatever the handler answers.
const REJECT_STATUSES: [u16; 12] = [400, 401, 403, 404, 405, 411, 413, 426, 429, 431, 500, 503];

/// Label values of [`ShardMetrics::rejected`], slot by slot.
pub(crate) const REJECT_LABELS: [&str; REJECT_SLOTS] = [
    "400", "401", "403", "404", "405", "411", "413", "426", "429", "431", "500", "503", "4xx",
    "5xx", "other",
];

/// Slots of [`ShardMetrics::rejected`].
pub(crate) const REJECT_SLOTS: usize = REJECT_STATUSES.len() + 3;

/// The slot counting a refused handshake answered with `status`.
pub(crate) fn reject_slot(status: u16) -> usize {
    match REJECT_STATUSES.iter().position(|&s| s == status) {
        Some(i) => i,
        None => match status {
            400..=499 => REJECT_STATUSES.len(),
            500..=599 => REJECT_STATUSES.len() + 1,
            _ => REJECT_STATUSES.len() + 2,
        },
    }
}

/// Label values of [`ShardMetrics::http`] (status classes of answered plain requests).
pub(crate) const HTTP_CLASS_LABELS: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// The slot of [`ShardMetrics::http`] for `status` (a response is 200..=599: the shard answers
/// anything else with 500).
pub(crate) fn http_class_slot(status: u16) -> usize {
    usize::from(status / 100).clamp(2, 5) - 2
}

/// A histogram with power-of-two buckets, written by one thread: bucket `i` counts the values
/// `v` with `2^(i-1) < v <= 2^i` (bucket 0: `v <= 1`), the last one everything larger than the
/// bound before it. Recording is a count of leading zeros and two relaxed load+store pairs; the
/// upper bounds are exact, at the price of a factor of two between them.
#[derive(Debug)]
pub(crate) struct Histogram<const N: usize> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Histogram<N> {
    /// The bucket of `v`.
    #[inline]
    pub(crate) fn bucket(v: u64) -> usize {
        ((u64::BITS - v.saturating_sub(1).leading_zeros()) as usize).min(N - 1)
    }

    /// Count one value (single writer: the owning shard).
    #[inline]
    pub(crate) fn record(&self, v: u64) {
        bump(&self.buckets[Self::bucket(v)], 1);
        bump(&self.sum, v);
    }

    /// The per-bucket counts (not cumulative) and the sum of the values.
    pub(crate) fn read(&self) -> (Vec<u64>, u64) {
        let counts = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        (counts, self.sum.load(Ordering::Relaxed))
    }
}

/// Buckets of the ping round-trip histogram (µs): 1 µs .. 2^25 µs (33.5 s, past any pong
/// timeout worth having), then +Inf.
pub(crate) const PING_RTT_BUCKETS: usize = 27;
/// Buckets of the loop-turn histogram (µs): 1 µs .. 2^20 µs (1.05 s), then +Inf.
pub(crate) const LOOP_TURN_BUCKETS: usize = 22;
/// Buckets of the per-turn io_uring count histograms: 1 .. 1024, then +Inf.
pub(crate) const PER_TURN_BUCKETS: usize = 12;

/// One shard's metrics beyond [`crate::Stats`], written by that shard only.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct ShardMetrics {
    /// Outbound connections started on this shard (with `accepted`, what `closed` is taken
    /// from for the shard's open connections).
    pub(crate) outbound: AtomicU64,
    /// Data messages queued (sent by a handler, published, broadcast or sent from another
    /// thread); `frames_sent` less these is the control frames.
    pub(crate) messages_sent: AtomicU64,
    /// Published (or sent) frames a subscriber missed because its send queue was full.
    pub(crate) dropped_queue_full: AtomicU64,
    /// Publishes, sends and broadcasts from this shard another shard missed because its
    /// mailbox was full (with `dropped_queue_full`, what `ShardStats::dropped` counts).
    pub(crate) dropped_mailbox_full: AtomicU64,
    /// Finished connections by [`CloseReason::index`].
    pub(crate) closed: [AtomicU64; CloseReason::ALL.len()],
    /// Refused handshakes by [`reject_slot`].
    pub(crate) rejected: [AtomicU64; REJECT_SLOTS],
    /// Answered plain requests by [`http_class_slot`].
    pub(crate) http: [AtomicU64; HTTP_CLASS_LABELS.len()],
    /// Sampled: bytes in all send queues at the end of the last sweep.
    pub(crate) send_queue_bytes: AtomicU64,
    /// Sampled: the largest one send queue in the last sweep.
    pub(crate) send_queue_bytes_max: AtomicU64,
    /// Sampled: bytes held between receives (partial frames and handshakes, messages being
    /// assembled) in the last sweep.
    pub(crate) held_bytes: AtomicU64,
    /// Completed sweeps (a sampled gauge is as old as the time since the last one).
    pub(crate) sweeps: AtomicU64,
    /// Idle-ping round trips, µs.
    pub(crate) ping_rtt_us: Histogram<PING_RTT_BUCKETS>,
    /// Loop turns: from the first completion a poll hands out (or its return) to the next poll,
    /// µs.
    pub(crate) loop_turn_us: Histogram<LOOP_TURN_BUCKETS>,
    /// io_uring: submission queue entries queued per loop turn.
    pub(crate) uring_submissions: Histogram<PER_TURN_BUCKETS>,
    /// io_uring: completion queue entries reaped per loop turn.
    pub(crate) uring_completions: Histogram<PER_TURN_BUCKETS>,
}

/// Add `n` to a counter owned by the calling shard (the rule of `ShardStats::bump`).
#[inline]
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Read every counter of `cs`.
pub(crate) fn read_all<const N: usize>(cs: &[AtomicU64; N]) -> [u64; N] {
    std::array::from_fn(|i| cs[i].load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_have_power_of_two_upper_bounds() {
        type H = Histogram<12>;
        let cases = [
            (0, 0),
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (1024, 10),
            (1025, 11),
            (u64::MAX, 11),
        ];
        for (v, b) in cases {
            assert_eq!(H::bucket(v), b, "value {v}");
        }
        let h = H::default();
        for v in [0, 1, 2, 3, 1000, 5000] {
            h.record(v);
        }
        let (counts, sum) = h.read();
        assert_eq!(counts, vec![2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(sum, 6006);
    }

    #[test]
    fn every_reason_recorded_while_running_fits_three_bits_and_comes_back() {
        for r in CloseReason::ALL {
            match r {
                CloseReason::Normal | CloseReason::Abnormal => {}
                r => {
                    assert!((1..=7).contains(&r.code()), "{r:?}");
                    assert_eq!(CloseReason::from_code(r.code()), Some(r));
                }
            }
            assert_eq!(CloseReason::ALL[r.index()], r);
        }
        assert_eq!(CloseReason::from_code(0), None);
    }

    #[test]
    fn reject_statuses_outside_the_list_count_by_class() {
        assert_eq!(REJECT_LABELS[reject_slot(403)], "403");
        assert_eq!(REJECT_LABELS[reject_slot(503)], "503");
        assert_eq!(REJECT_LABELS[reject_slot(418)], "4xx");
        assert_eq!(REJECT_LABELS[reject_slot(599)], "5xx");
        assert_eq!(REJECT_LABELS[reject_slot(302)], "other");
        assert_eq!(HTTP_CLASS_LABELS[http_class_slot(200)], "2xx");
        assert_eq!(HTTP_CLASS_LABELS[http_class_slot(304)], "3xx");
        assert_eq!(HTTP_CLASS_LABELS[http_class_slot(404)], "4xx");
        assert_eq!(HTTP_CLASS_LABELS[http_class_slot(599)], "5xx");
    }
}
