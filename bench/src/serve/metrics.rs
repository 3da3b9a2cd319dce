//! `percore serve --metrics ADDR`: the admin port. A second, small percore server (one shard,
//! epoll, unpinned, at most `--metrics-connections-max` connections, default
//! [`ADMIN_CONNECTIONS_MAX`]) on ADDR answers
//!
//! - `GET /metrics`: the main server's metrics in the Prometheus text format
//!   ([`percore::Metrics::render`]);
//! - `GET /dashboard` (and `/`, redirected there): one self-contained page (`dashboard.html`:
//!   inline script and style, nothing fetched from elsewhere) with live charts;
//! - a WebSocket at `/dashboard/live`: on open, the last [`HISTORY`] snapshots; then one JSON
//!   snapshot per second, published by a ticker thread to the subscribers' topic (a
//!   [`percore::Publisher`]: encoded once, shared by every dashboard).
//!
//! The admin server is percore itself: plain HTTP and WebSocket on one port through
//! `Handler::on_request` and `on_upgrade`. Scrapes and dashboards cost the main server's shards
//! nothing but the relaxed loads of [`percore::Metrics::snapshot`].

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use percore::{
    Backend, CloseReason, Conn, ConnId, Decision, Handler, HistogramSnapshot, HttpContext, Message,
    Metrics, MetricsSnapshot, Publisher, Reject, Request, Response, Server, ServerHandle, Shards,
    Upgrade,
};
use serde_json::{json, Value};

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");
/// The topic dashboards subscribe to.
const TOPIC: &str = "snapshots";
/// Time between two snapshots.
pub const TICK: Duration = Duration::from_secs(1);
/// Snapshots kept for a dashboard that opens (2 minutes at one per second: the charts' span).
pub const HISTORY: usize = 120;
/// Default of the most connections the admin port holds (scrapers and dashboards): past it a
/// dashboard's WebSocket gets 503 (a scrape is still answered, and its connection then closed).
/// Each open dashboard costs a slab entry and, while it opens, the history (about 2 KiB per
/// snapshot per shard, up to [`HISTORY`] snapshots) in its send queue.
pub const ADMIN_CONNECTIONS_MAX: usize = 256;
/// The largest admin answer: the history sent to a dashboard that opens (about 2 KiB per
/// snapshot with two shards), or a scrape (about 40 KiB with two shards).
const ADMIN_MESSAGE_BYTES_MAX: usize = 4 << 20;

/// The running admin port: stopped (ticker joined, server shut down) when dropped.
pub struct Admin {
    server: Option<ServerHandle>,
    stop: Option<Sender<Event>>,
    ticker: Option<JoinHandle<()>>,
}

/// What the ticker thread waits for.
enum Event {
    /// A dashboard opened: send it the history.
    Joined(ConnId),
    Stop,
}

impl Admin {
    /// Start the admin port on `addr` for the server that `metrics` reads, holding at most
    /// `connections_max` connections.
    pub fn start(addr: &str, metrics: Metrics, connections_max: usize) -> Result<Admin, String> {
        let (tx, rx) = mpsc::channel();
        let handler_tx = tx.clone();
        let handler_metrics = metrics.clone();
        let server = Server::builder()
            .bind(addr)
            .shards(Shards::Count(1))
            .pin(false)
            .backend(Backend::Epoll)
            .connections_max(connections_max)
            .recv_buffer_bytes(16 << 10)
            .send_queue_bytes_max(ADMIN_MESSAGE_BYTES_MAX)
            .http_response_bytes_max(ADMIN_MESSAGE_BYTES_MAX)
            .message_bytes_max(64 << 10)
            .start(move |_| AdminHandler {
                metrics: handler_metrics.clone(),
                joins: handler_tx.clone(),
            })
            .map_err(|e| format!("cannot start the metrics server on {addr}: {e}"))?;
        let publisher = server.publisher();
        let ticker = std::thread::Builder::new()
            .name("percore-metrics".into())
            .spawn(move || tick(metrics, publisher, rx))
            .map_err(|e| format!("cannot start the metrics ticker: {e}"))?;
        Ok(Admin {
            server: Some(server),
            stop: Some(tx),
            ticker: Some(ticker),
        })
    }

    /// The address the admin port listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server
            .as_ref()
            .map_or_else(|| ([0, 0, 0, 0], 0).into(), |s| s.local_addr())
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Event::Stop);
        }
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(1));
        }
    }
}

struct AdminHandler {
    metrics: Metrics,
    joins: Sender<Event>,
}

impl Handler for AdminHandler {
    type State = ();

    fn on_upgrade(&mut self, req: &Request, up: Upgrade<()>) -> Decision<()> {
        match req.path() {
            "/dashboard/live" => up.accept(()),
            _ => up.reject(Reject::new(404, "not found")),
        }
    }

    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        let _ = conn.subscribe(TOPIC);
        let _ = self.joins.send(Event::Joined(conn.id()));
    }

    /// Dashboards only listen.
    fn on_message(&mut self, _: &mut Conn<'_, ()>, _: Message<'_>) {}

    fn on_request(&mut self, req: &Request, _: &HttpContext<'_>) -> Response {
        match req.path() {
            "/metrics" => Response::with_body(
                200,
                Metrics::CONTENT_TYPE,
                self.metrics.render().into_bytes(),
            )
            .header("Cache-Control", "no-store"),
            "/dashboard" => Response::html(200, DASHBOARD).header("Cache-Control", "no-store"),
            "/" => Response::new(302).header("Location", "/dashboard"),
            _ => Response::not_found(),
        }
    }
}

/// The ticker thread: a snapshot per [`TICK`], published to the dashboards; the history to
/// each dashboard that opens.
fn tick(metrics: Metrics, publisher: Publisher, events: Receiver<Event>) {
    let started = Instant::now();
    let mut history: VecDeque<String> = VecDeque::with_capacity(HISTORY);
    let mut next = Instant::now();
    loop {
        match events.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(Event::Joined(id)) => {
                // The history goes in as the JSON it was published as.
                let text = format!(
                    r#"{{"type":"hello","tick_ms":{},"rtt_bounds":{},"turn_bounds":{},"history":[{}]}}"#,
                    TICK.as_millis(),
                    bounds(&metrics, |s| &s.ping_rtt),
                    bounds(&metrics, |s| &s.loop_turn),
                    Vec::from(history.clone()).join(","),
                );
                let _ = publisher.send(id, Message::Text(&text));
            }
            Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                next += TICK;
                let now = Instant::now();
                if next < now {
                    next = now + TICK;
                }
                let snap = snapshot_json(&metrics.snapshot(), started.elapsed()).to_string();
                if publisher.publish(TOPIC, Message::Text(&snap)).is_err() {
                    // Stopped (the admin server shuts down) or its mailbox is full: a dashboard
                    // misses one point and carries on.
                }
                if history.len() == HISTORY {
                    history.pop_front();
                }
                history.push_back(snap);
            }
        }
    }
}

/// The upper bounds of a histogram (the last, +∞, as `null`).
fn bounds(metrics: &Metrics, h: impl Fn(&percore::ShardSnapshot) -> &HistogramSnapshot) -> Value {
    let snap = metrics.snapshot();
    let b = snap
        .shards
        .first()
        .map(|s| h(s).bounds.clone())
        .unwrap_or_default();
    Value::from(
        b.into_iter()
            .map(|x| x.is_finite().then_some(x))
            .collect::<Vec<_>>(),
    )
}

/// One dashboard point: totals, per-shard figures and the summed histograms (counters since
/// the start: the page takes differences).
pub fn snapshot_json(s: &MetricsSnapshot, uptime: Duration) -> Value {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut rtt = HistogramSnapshot::default();
    let mut turn = HistogramSnapshot::default();
    for sh in &s.shards {
        rtt.merge(&sh.ping_rtt);
        turn.merge(&sh.loop_turn);
    }
    let sum = |f: &dyn Fn(&percore::ShardSnapshot) -> u64| s.shards.iter().map(f).sum::<u64>();
    let closed: serde_json::Map<String, Value> = CloseReason::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), json!(sum(&|sh| sh.closed(*r)))))
        .collect();
    let mut rejected = serde_json::Map::new();
    for sh in &s.shards {
        for (status, n) in &sh.handshakes_rejected {
            if *n > 0 {
                let e = rejected.entry(status.to_string()).or_insert(json!(0));
                *e = json!(e.as_u64().unwrap_or(0) + n);
            }
        }
    }
    json!({
        "type": "snap",
        "t": t,
        "uptime_s": uptime.as_secs_f64(),
        "backend": s.backend.to_string(),
        "open": s.connections_open,
        "topics": s.topics,
        "shards": s.shards.iter().map(|sh| json!({
            "open": sh.connections_open,
            "accepted": sh.accepted,
            "rx": sh.messages_received,
            "tx": sh.messages_sent,
            "brx": sh.bytes_received,
            "btx": sh.bytes_sent,
            "busy_s": sh.loop_turn.sum,
            "turns": sh.loop_turn.count(),
            "sq": sh.send_queue_bytes,
            "sq_max": sh.send_queue_bytes_max,
            "held": sh.held_bytes,
        })).collect::<Vec<_>>(),
        "closed": closed,
        "rejected": rejected,
        "published": sum(&|sh| sh.published) + s.published_external,
        "delivered": sum(&|sh| sh.delivered),
        "dropped": sum(&|sh| sh.dropped_queue_full + sh.dropped_mailbox_full) + s.dropped_external,
        "panics": sum(&|sh| sh.handler_panics),
        "rtt": rtt.counts,
        "rtt_sum_s": rtt.sum,
        "turn": turn.counts,
    })
}
