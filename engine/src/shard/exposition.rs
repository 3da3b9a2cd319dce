//! A [`MetricsSnapshot`] in the Prometheus text exposition format (OpenMetrics 1.0, which
//! Prometheus scrapes natively), written by the official Rust client library,
//! `prometheus-client`: [`Metrics`] is one of its `Collector`s, so the text (names, `HELP` and
//! `TYPE` lines, label escaping, `_total`/`_bucket`/`_sum`/`_count` suffixes, the `# EOF`
//! marker) is the library's, and an application that already has a `prometheus-client`
//! registry can register the engine's metrics in it beside its own. The names, types and
//! labels are listed in `docs/metrics.md`.

use std::fmt::Error;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::metrics::{HistogramSnapshot, Metrics, MetricsSnapshot, ShardSnapshot};
use crate::config::SlowConsumer;

/// `Content-Type` of [`Metrics::render`]'s text.
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    /// `Content-Type` of the text [`Metrics::render`] writes (OpenMetrics 1.0 text, which
    /// Prometheus scrapes natively).
    pub const CONTENT_TYPE: &'static str = CONTENT_TYPE;

    /// Every metric in the Prometheus text exposition format (OpenMetrics 1.0), ending with
    /// `# EOF`: the body of a `/metrics` answer, with [`Metrics::CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(32 << 10);
        self.render_into(&mut out);
        out
    }

    /// [`Metrics::render`], appended to `out` (reuse one buffer across scrapes).
    pub fn render_into(&self, out: &mut String) {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        // Writing into a String does not fail, and neither does any encoder call here.
        let _ = prometheus_client::encoding::text::encode(out, &registry);
    }
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), Error> {
        encode(&self.snapshot(), &mut encoder)
    }
}

/// What one family writes for one shard.
type Value<'a> = &'a dyn Fn(&ShardSnapshot) -> u64;

fn encode(s: &MetricsSnapshot, e: &mut DescriptorEncoder<'_>) -> Result<(), Error> {
    let ids: Vec<String> = (0..s.shards.len()).map(|i| i.to_string()).collect();
    let shards: Vec<(&str, &ShardSnapshot)> =
        ids.iter().map(String::as_str).zip(&s.shards).collect();

    let backend = s.backend.to_string();
    let policy = slow_consumer_action(s.slow_consumer);
    let mut m = e.encode_descriptor(
        "percore_server",
        "The running server: backend, slow-consumer policy, version (value 1).",
        None,
        MetricType::Info,
    )?;
    m.encode_info(&[
        ("backend", backend.as_str()),
        ("slow_consumer", policy),
        ("version", env!("CARGO_PKG_VERSION")),
    ])?;
    gauge(
        e,
        "percore_shards",
        "Shards (threads).",
        s.shards.len() as u64,
    )?;
    gauge(
        e,
        "percore_topics",
        "Topics with at least one subscriber.",
        s.topics,
    )?;

    let per_shard: [(&str, &str, MetricType, Value<'_>); 17] = [
        ("percore_connections_open", "TCP connections held (handshaking, open or closing).", MetricType::Gauge, &|x| x.connections_open),
        ("percore_connections_accepted", "TCP connections accepted.", MetricType::Counter, &|x| x.accepted),
        ("percore_connections_outbound", "Outbound connections started.", MetricType::Counter, &|x| x.outbound),
        ("percore_upgrades", "WebSocket upgrades completed (on_open called).", MetricType::Counter, &|x| x.upgraded),
        ("percore_upgrades_pending", "Upgrade requests waiting for a deferred decision.", MetricType::Gauge, &|x| x.upgrades_pending),
        ("percore_messages_received", "Data messages received.", MetricType::Counter, &|x| x.messages_received),
        ("percore_messages_sent", "Data messages queued for sending (replies, publishes, broadcasts, sends).", MetricType::Counter, &|x| x.messages_sent),
        ("percore_frames_sent", "Frames queued for sending, data and control.", MetricType::Counter, &|x| x.frames_sent),
        ("percore_bytes_received", "Bytes received from sockets.", MetricType::Counter, &|x| x.bytes_received),
        ("percore_bytes_sent", "Bytes written to sockets.", MetricType::Counter, &|x| x.bytes_sent),
        ("percore_send_queue_bytes", "Bytes in all send queues (sampled by the shard about once a second).", MetricType::Gauge, &|x| x.send_queue_bytes),
        ("percore_send_queue_largest_bytes", "The largest single send queue (sampled by the shard about once a second).", MetricType::Gauge, &|x| x.send_queue_bytes_max),
        ("percore_held_bytes", "Bytes held between receives: partial frames and handshakes, messages being assembled (sampled).", MetricType::Gauge, &|x| x.held_bytes),
        ("percore_handler_panics", "Handler callbacks that panicked.", MetricType::Counter, &|x| x.handler_panics),
        ("percore_deliveries", "Published or sent frames queued to a connection.", MetricType::Counter, &|x| x.delivered),
        ("percore_conflations", "Queued, unsent conflated frames replaced by a newer one.", MetricType::Counter, &|x| x.conflated),
        ("percore_subscriptions", "Subscriptions (connection, topic).", MetricType::Gauge, &|x| x.subscriptions),
    ];
    for (name, help, kind, value) in per_shard {
        let mut m = e.encode_descriptor(name, help, None, kind)?;
        for (id, sh) in &shards {
            let labels = [("shard", *id)];
            let mut f = m.encode_family(&labels)?;
            match kind {
                MetricType::Counter => f.encode_counter::<NoLabelSet, _, u64>(&value(sh), None)?,
                _ => f.encode_gauge(&value(sh))?,
            }
        }
    }

    let mut m = e.encode_descriptor(
        "percore_connections_closed",
        "Connections finished, each under exactly one reason: the first that applied.",
        None,
        MetricType::Counter,
    )?;
    for (id, sh) in &shards {
        for (reason, n) in &sh.closed {
            let labels = [("shard", *id), ("reason", reason.as_str())];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
    }
    labelled(
        e,
        "percore_handshakes_rejected",
        "Upgrade requests refused, by HTTP status (other statuses by class: 4xx, 5xx, other).",
        "status",
        &shards,
        |x| &x.handshakes_rejected,
    )?;
    labelled(
        e,
        "percore_http_requests",
        "Plain HTTP requests answered, by status class.",
        "class",
        &shards,
        |x| &x.http_requests,
    )?;

    let mut m = e.encode_descriptor(
        "percore_slow_consumer_actions",
        "What the send-queue limit did: close the connection (the configured code) or drop a droppable/conflated publish.",
        None,
        MetricType::Counter,
    )?;
    for (id, sh) in &shards {
        for (action, n) in [
            (policy, sh.slow_consumer_closes),
            ("drop", sh.dropped_queue_full),
        ] {
            let labels = [("shard", *id), ("action", action)];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }

    let mut m = e.encode_descriptor(
        "percore_publishes",
        "Publishes, by the shard whose handler published (shard=\"external\": other threads).",
        None,
        MetricType::Counter,
    )?;
    for (id, sh) in &shards {
        m.encode_family(&[("shard", *id)])?
            .encode_counter::<NoLabelSet, _, u64>(&sh.published, None)?;
    }
    m.encode_family(&[("shard", "external")])?
        .encode_counter::<NoLabelSet, _, u64>(&s.published_external, None)?;

    let mut m = e.encode_descriptor(
        "percore_publish_drops",
        "Frames a connection or a shard missed: its send queue was full (droppable or conflated publishes) or its mailbox was full.",
        None,
        MetricType::Counter,
    )?;
    for (id, sh) in &shards {
        for (reason, n) in [
            ("queue_full", sh.dropped_queue_full),
            ("mailbox_full", sh.dropped_mailbox_full),
        ] {
            let labels = [("shard", *id), ("reason", reason)];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    let labels = [("shard", "external"), ("reason", "mailbox_full")];
    m.encode_family(&labels)?
        .encode_counter::<NoLabelSet, _, u64>(&s.dropped_external, None)?;

    histogram(
        e,
        "percore_ping_rtt_seconds",
        "Idle-ping round trips: from the loop turn that queued the ping to the one that read the pong.",
        &shards,
        |x| Some(&x.ping_rtt),
    )?;
    histogram(
        e,
        "percore_loop_turn_seconds",
        "Working time of each shard loop turn (completions, mailbox, timers, flush), without the wait in poll.",
        &shards,
        |x| Some(&x.loop_turn),
    )?;
    histogram(
        e,
        "percore_uring_submissions_per_turn",
        "io_uring submission queue entries queued per loop turn.",
        &shards,
        |x| x.uring_submissions.as_ref(),
    )?;
    histogram(
        e,
        "percore_uring_completions_per_turn",
        "io_uring completion queue entries reaped per loop turn.",
        &shards,
        |x| x.uring_completions.as_ref(),
    )?;
    Ok(())
}

/// The label value of the configured slow-consumer close.
fn slow_consumer_action(p: SlowConsumer) -> &'static str {
    match p {
        SlowConsumer::Close1013 => "close_1013",
        _ => "close_1008",
    }
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Result<(), Error> {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// A counter per shard and per value of one more label.
fn labelled(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    shards: &[(&str, &ShardSnapshot)],
    values: impl Fn(&ShardSnapshot) -> &Vec<(&'static str, u64)>,
) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (id, sh) in shards {
        for (v, n) in values(sh) {
            let labels = [("shard", *id), (label, *v)];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
    }
    Ok(())
}

/// A histogram per shard (shards for which `h` gives none are left out; a family with none
/// is not written at all).
fn histogram(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    shards: &[(&str, &ShardSnapshot)],
    h: impl Fn(&ShardSnapshot) -> Option<&HistogramSnapshot>,
) -> Result<(), Error> {
    if shards.iter().all(|(_, sh)| h(sh).is_none()) {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (id, sh) in shards {
        let Some(h) = h(sh) else {
            continue;
        };
        // The encoder writes `+Inf` for a bound of f64::MAX.
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .map(|b| if b.is_finite() { *b } else { f64::MAX })
            .zip(h.counts.iter().copied())
            .collect();
        m.encode_family(&[("shard", *id)])?
            .encode_histogram::<NoLabelSet>(h.sum, h.count(), &buckets, None)?;
    }
    Ok(())
}
