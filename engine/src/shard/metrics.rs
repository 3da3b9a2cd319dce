//! [`Metrics`]: a running server's counters, gauges and histograms, shard by shard, read from
//! any thread without disturbing the shards: as a [`MetricsSnapshot`] of plain numbers, or
//! (with the `metrics` feature, on by default) as the Prometheus text exposition
//! ([`Metrics::render`]) and a `prometheus-client` collector. Metric names, types and labels:
//! `docs/metrics.md`.
//!
//! Every figure is kept by its shard with a relaxed load and store (single writer: no locked
//! instruction, nothing shared between shards on a cache line); reading one is a relaxed load.
//! A snapshot is therefore not an atomic cut: two counters read a moment apart may disagree by
//! what happened in that moment, and each counter only grows.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::hub::Hub;
use crate::config::{Backend, Config, SlowConsumer};
use crate::counters::{
    read_all, CloseReason, Histogram, ShardMetrics, HTTP_CLASS_LABELS, REJECT_LABELS,
};
use crate::stats::ShardStats;

/// A handle on a running server's metrics: `Clone`, `Send` and `Sync`, cheap to clone, valid
/// after the server stopped (the figures then stay as they were). Get one from
/// [`crate::ServerHandle::metrics_handle`] or [`crate::HttpContext::metrics_handle`].
///
/// ```no_run
/// # #[cfg(feature = "metrics")] {
/// use percore::{Conn, Handler, Message, Server};
///
/// struct Echo;
/// impl Handler for Echo {
///     type State = ();
///     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
///         let _ = conn.send(msg);
///     }
/// }
///
/// let server = Server::builder().bind("127.0.0.1:9001").start(|_| Echo)?;
/// let metrics = server.metrics_handle();
/// std::thread::spawn(move || loop {
///     std::thread::sleep(std::time::Duration::from_secs(10));
///     let s = metrics.snapshot();
///     let received: u64 = s.shards.iter().map(|s| s.messages_received).sum();
///     eprintln!("{} open, {received} messages received", s.connections_open);
/// });
/// print!("{}", server.metrics()); // the Prometheus text
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Metrics {
    hub: Arc<Hub>,
    config: Arc<Config>,
}

/// Every figure of a server at one moment (see [`Metrics`] for how consistent it is).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// The backend the shards run on.
    pub backend: Backend,
    /// The slow-consumer policy (what [`ShardSnapshot::slow_consumer_closes`] did).
    pub slow_consumer: SlowConsumer,
    /// TCP connections held across all shards (handshaking, open or closing).
    pub connections_open: u64,
    /// Topics with at least one subscriber.
    pub topics: u64,
    /// Publishes made outside the shards ([`crate::Publisher`], [`crate::ServerHandle`]).
    pub published_external: u64,
    /// Publishes, sends and broadcasts made outside the shards that a shard missed because its
    /// mailbox was full.
    pub dropped_external: u64,
    /// Each shard's figures, by shard index.
    pub shards: Vec<ShardSnapshot>,
}

/// One shard's figures. Counters count from the server's start; gauges are the present value
/// (`send_queue_bytes`, `send_queue_bytes_max` and `held_bytes` are sampled by the shard about
/// once a second: see `shard/metering.rs`).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ShardSnapshot {
    /// TCP connections this shard holds (gauge): accepted and outbound, less those closed.
    pub connections_open: u64,
    /// TCP connections accepted.
    pub accepted: u64,
    /// Outbound connections started ([`crate::ServerHandle::connect`]).
    pub outbound: u64,
    /// Upgrades completed (`on_open` called).
    pub upgraded: u64,
    /// Finished connections by reason; each is counted under exactly one.
    pub closed: Vec<(CloseReason, u64)>,
    /// Refused handshakes by status: the statuses the engine and typical handlers answer, by
    /// value (`"403"`), and any other by class (`"4xx"`, `"5xx"`, `"other"`).
    pub handshakes_rejected: Vec<(&'static str, u64)>,
    /// Upgrade requests waiting for a deferred decision (gauge).
    pub upgrades_pending: u64,
    /// Plain HTTP requests answered, by status class (`"2xx"` .. `"5xx"`).
    pub http_requests: Vec<(&'static str, u64)>,
    /// Data messages received.
    pub messages_received: u64,
    /// Data messages queued for sending (replies, publishes, broadcasts, sends from other
    /// threads).
    pub messages_sent: u64,
    /// Frames queued for sending, data and control.
    pub frames_sent: u64,
    /// Bytes received from sockets.
    pub bytes_received: u64,
    /// Bytes written to sockets.
    pub bytes_sent: u64,
    /// Bytes in all send queues (sampled gauge).
    pub send_queue_bytes: u64,
    /// The largest single send queue (sampled gauge).
    pub send_queue_bytes_max: u64,
    /// Bytes held between receives: partial frames and handshakes, messages being assembled
    /// (sampled gauge).
    pub held_bytes: u64,
    /// Sampling sweeps completed (the sampled gauges are as fresh as the last one).
    pub sweeps: u64,
    /// Connections closed by the slow-consumer policy ([`MetricsSnapshot::slow_consumer`]).
    pub slow_consumer_closes: u64,
    /// Handler callbacks that panicked.
    pub handler_panics: u64,
    /// Publishes by this shard's handlers.
    pub published: u64,
    /// Published (and sent) frames queued to a connection of this shard.
    pub delivered: u64,
    /// Droppable or conflated publishes a subscriber missed because its send queue was full.
    pub dropped_queue_full: u64,
    /// Publishes, sends and broadcasts from this shard that another shard missed because its
    /// mailbox was full.
    pub dropped_mailbox_full: u64,
    /// Queued, unsent conflated frames replaced by a newer one.
    pub conflated: u64,
    /// Subscriptions (connection, topic) on this shard (gauge).
    pub subscriptions: u64,
    /// Idle-ping round trips, in seconds (resolution: one loop turn).
    pub ping_rtt: HistogramSnapshot,
    /// Loop turns' working time, in seconds.
    pub loop_turn: HistogramSnapshot,
    /// io_uring: submission queue entries queued per loop turn (`None` on epoll).
    pub uring_submissions: Option<HistogramSnapshot>,
    /// io_uring: completion queue entries reaped per loop turn (`None` on epoll).
    pub uring_completions: Option<HistogramSnapshot>,
}

impl ShardSnapshot {
    /// Connections closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// A histogram as read: per-bucket counts (not cumulative) under inclusive upper bounds that
/// double from one bucket to the next, the last one `+∞`.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// Each bucket's upper bound (inclusive), increasing; the last is `f64::INFINITY`.
    pub bounds: Vec<f64>,
    /// Observations per bucket.
    pub counts: Vec<u64>,
    /// Sum of the observations, in the bounds' unit.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q`-quantile (0..=1), interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does (so at worst off by the bucket's width, a factor of two); a
    /// quantile in the `+∞` bucket reads as the last finite bound. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, (&n, &hi)) in self.counts.iter().zip(&self.bounds).enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                if hi.is_infinite() {
                    return Some(self.bounds.get(i.wrapping_sub(1)).copied().unwrap_or(0.0));
                }
                let lo = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lo + (hi - lo) * within);
            }
            below += n;
        }
        self.bounds.iter().rev().find(|b| b.is_finite()).copied()
    }

    /// What was observed since `earlier` (a snapshot of the same histogram): for a quantile
    /// over the last seconds rather than since the start.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let mut d = self.clone();
        for (c, e) in d.counts.iter_mut().zip(&earlier.counts) {
            *c = c.saturating_sub(*e);
        }
        d.sum = (d.sum - earlier.sum).max(0.0);
        d
    }

    /// Add `other` (the same histogram of another shard) into this one.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        self.sum += other.sum;
    }
}

impl Metrics {
    pub(crate) fn new(hub: Arc<Hub>, config: Arc<Config>) -> Self {
        Self { hub, config }
    }

    /// Read every figure now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let (shards, shared) = self.hub.counters();
        let totals = self.hub.stats();
        let backend = self.config.backend;
        MetricsSnapshot {
            backend,
            slow_consumer: self.config.slow_consumer,
            connections_open: totals.connections_open,
            topics: totals.topics,
            published_external: load(&shared.published),
            dropped_external: load(&shared.dropped),
            shards: shards
                .iter()
                .map(|st| shard_snapshot(st, backend == Backend::IoUring))
                .collect(),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("shards", &self.hub.mail().len())
            .finish_non_exhaustive()
    }
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A histogram of microseconds, in seconds.
fn micros<const N: usize>(h: &Histogram<N>) -> HistogramSnapshot {
    let (counts, sum) = h.read();
    HistogramSnapshot {
        bounds: bounds(N, 1e-6),
        counts,
        sum: sum as f64 * 1e-6,
    }
}

/// A histogram of counts.
fn plain<const N: usize>(h: &Histogram<N>) -> HistogramSnapshot {
    let (counts, sum) = h.read();
    HistogramSnapshot {
        bounds: bounds(N, 1.0),
        counts,
        sum: sum as f64,
    }
}

/// Upper bounds of an `n`-bucket [`Histogram`], scaled by `unit`: 1, 2, 4, ... then +∞.
fn bounds(n: usize, unit: f64) -> Vec<f64> {
    (0..n)
        .map(|i| match i + 1 == n {
            true => f64::INFINITY,
            false => (1u64 << i) as f64 * unit,
        })
        .collect()
}

fn shard_snapshot(st: &ShardStats, uring: bool) -> ShardSnapshot {
    let m: &ShardMetrics = &st.metrics;
    let closed = read_all(&m.closed);
    let accepted = load(&st.accepted);
    let outbound = load(&m.outbound);
    let closed_total = load(&st.closed);
    ShardSnapshot {
        connections_open: (accepted + outbound).saturating_sub(closed_total),
        accepted,
        outbound,
        upgraded: load(&st.upgraded),
        closed: CloseReason::ALL
            .iter()
            .map(|r| (*r, closed[r.index()]))
            .collect(),
        handshakes_rejected: REJECT_LABELS
            .iter()
            .copied()
            .zip(read_all(&m.rejected))
            .collect(),
        upgrades_pending: load(&st.upgrades_pending),
        http_requests: HTTP_CLASS_LABELS
            .iter()
            .copied()
            .zip(read_all(&m.http))
            .collect(),
        messages_received: load(&st.messages_received),
        messages_sent: load(&m.messages_sent),
        frames_sent: load(&st.frames_sent),
        bytes_received: load(&st.bytes_received),
        bytes_sent: load(&st.bytes_sent),
        send_queue_bytes: load(&m.send_queue_bytes),
        send_queue_bytes_max: load(&m.send_queue_bytes_max),
        held_bytes: load(&m.held_bytes),
        sweeps: load(&m.sweeps),
        slow_consumer_closes: load(&st.slow_consumers),
        handler_panics: load(&st.handler_panics),
        published: load(&st.published),
        delivered: load(&st.delivered),
        dropped_queue_full: load(&m.dropped_queue_full),
        dropped_mailbox_full: load(&m.dropped_mailbox_full),
        conflated: load(&st.conflated),
        subscriptions: load(&st.subscriptions),
        ping_rtt: micros(&m.ping_rtt_us),
        loop_turn: micros(&m.loop_turn_us),
        uring_submissions: uring.then(|| plain(&m.uring_submissions)),
        uring_completions: uring.then(|| plain(&m.uring_completions)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(counts: &[u64]) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: bounds(counts.len(), 1.0),
            counts: counts.to_vec(),
            sum: 0.0,
        }
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_like_histogram_quantile() {
        // Bounds 1, 2, 4, 8, +Inf.
        let h = hist(&[0, 0, 10, 10, 0]);
        assert_eq!(h.quantile(0.0), Some(2.0));
        assert_eq!(h.quantile(0.25), Some(3.0));
        assert_eq!(h.quantile(0.5), Some(4.0));
        assert_eq!(h.quantile(0.75), Some(6.0));
        assert_eq!(h.quantile(1.0), Some(8.0));
        assert_eq!(hist(&[0; 5]).quantile(0.5), None);
        // In the +Inf bucket: the last finite bound.
        assert_eq!(hist(&[1, 0, 0, 0, 9]).quantile(0.99), Some(8.0));
    }

    #[test]
    fn a_window_is_the_difference_and_shards_merge_bucket_by_bucket() {
        let mut a = hist(&[1, 2, 3, 0, 0]);
        let b = hist(&[0, 1, 1, 0, 0]);
        assert_eq!(a.since(&b).counts, vec![1, 1, 2, 0, 0]);
        a.merge(&b);
        assert_eq!(a.counts, vec![1, 3, 4, 0, 0]);
        assert_eq!(a.count(), 8);
        let mut empty = HistogramSnapshot::default();
        empty.merge(&b);
        assert_eq!(empty, b);
    }

    #[test]
    fn bounds_double_from_one_unit_and_end_at_infinity() {
        assert_eq!(bounds(4, 1e-6), vec![1e-6, 2e-6, 4e-6, f64::INFINITY]);
    }
}
