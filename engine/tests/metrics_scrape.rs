//! The Prometheus metrics count what the clients did. A handler serves `/metrics` on the
//! WebSocket port itself (`HttpContext::metrics`); clients open and close connections normally,
//! time out (handshake and pong), break the protocol, fill their send queue without reading,
//! make the handler panic, get refused; the test scrapes over HTTP while they run and at the
//! end, and compares every counter with what it did.
#![cfg(feature = "metrics")]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw::{self, op, RawClient};
use percore::{
    Backend, CloseReason, Conn, Decision, Handler, HttpContext, Message, Metrics, Reject, Request,
    Response, Server, ServerHandle, Shards, Upgrade,
};

/// Echo, plus: "panic" panics, "flood" queues 64 KiB messages until the queue is full; the
/// upgrade of `/reject` is refused with 401 and `/boom` panics; `/metrics` is the scrape.
struct Probe {
    /// Messages "flood" got queued before the queue was full.
    flooded: Arc<AtomicU64>,
}

impl Handler for Probe {
    type State = ();

    fn on_upgrade(&mut self, req: &Request, up: Upgrade<()>) -> Decision<()> {
        match req.path() {
            "/reject" => up.reject(Reject::new(401, "who are you")),
            "/boom" => panic!("upgrade bug (a test panics here on purpose)"),
            _ => up.accept(()),
        }
    }

    fn on_request(&mut self, req: &Request, cx: &HttpContext<'_>) -> Response {
        match req.path() {
            "/metrics" => {
                Response::with_body(200, Metrics::CONTENT_TYPE, cx.metrics().into_bytes())
            }
            _ => Response::not_found(),
        }
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        match msg {
            Message::Text("panic") => panic!("handler bug (a test panics here on purpose)"),
            Message::Text("flood") => {
                let chunk = vec![7u8; 64 << 10];
                while conn.send_binary(&chunk).is_ok() {
                    self.flooded.fetch_add(1, Ordering::Relaxed);
                }
            }
            m => {
                let _ = conn.send(m);
            }
        }
    }
}

/// A scrape: every sample line, `name{labels}` -> value.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn get(addr: SocketAddr) -> Scrape {
        let mut s = TcpStream::connect(addr).expect("connect for the scrape");
        s.set_read_timeout(Some(common::WAIT)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("read the scrape");
        let text = String::from_utf8(all).expect("UTF-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(
            head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(body.ends_with("# EOF\n"), "the exposition ends with # EOF");
        let mut samples = BTreeMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("name value");
            let value: f64 = value.parse().expect("a number");
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "{series} twice"
            );
        }
        Scrape(samples)
    }

    /// Sum over the series of `name` whose labels include every one of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn closed(&self, reason: &str) -> f64 {
        self.sum("percore_connections_closed_total", &[("reason", reason)])
    }
}

/// Panics the handler makes on purpose print nothing. With `RUST_BACKTRACE=1` the default hook
/// symbolizes a backtrace on the shard thread, which can stall it for longer than the 300 ms
/// close deadline this test sets; the deadline, taken from the stalled turn's clock, then fires
/// before the 1011 close frame is flushed. Every other panic goes to the default hook.
fn quiet_deliberate_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str));
            if !msg.is_some_and(|m| m.contains("on purpose")) {
                default(info);
            }
        }));
    });
}

fn start(backend: Backend, flooded: Arc<AtomicU64>) -> ServerHandle {
    quiet_deliberate_panics();
    Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(2))
        .pin(false)
        .backend(backend)
        .handshake_timeout(Duration::from_millis(300))
        .idle_timeout(Duration::from_millis(200))
        .pong_timeout(Duration::from_millis(300))
        .close_timeout(Duration::from_millis(300))
        .send_queue_bytes_max(256 << 10)
        // Every frame through the queue, so that the flood's count is exact: a 64 KiB frame
        // written at once onto an empty queue would let the socket buffer take some first.
        .send_direct_bytes_min(usize::MAX)
        .start(move |_| Probe {
            flooded: flooded.clone(),
        })
        .expect("server starts")
}

/// Wait until `done(snapshot)` holds.
fn wait_for(metrics: &Metrics, what: &str, done: impl Fn(&percore::MetricsSnapshot) -> bool) {
    let deadline = Instant::now() + common::WAIT;
    while !done(&metrics.snapshot()) {
        assert!(Instant::now() < deadline, "waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn closed_total(s: &percore::MetricsSnapshot, reason: CloseReason) -> u64 {
    s.shards.iter().map(|sh| sh.closed(reason)).sum()
}

plain_only! {
    "the server is built here with a plain listener (TLS failures as a close reason: tls_transport)";
    fn counters_match_what_the_clients_did(backend) {
        let flooded = Arc::new(AtomicU64::new(0));
        let server = start(backend, flooded.clone());
        let addr = server.local_addr();
        let metrics = server.metrics_handle();

        // 10 clients echo 20 messages each and stay open during the first scrape.
        let mut echoers: Vec<RawClient> = (0..10).map(|_| RawClient::connect(addr).unwrap()).collect();
        for round in 0..20 {
            for (i, c) in echoers.iter_mut().enumerate() {
                c.echo_text(&format!("m{round}-{i}"));
            }
        }
        let during = Scrape::get(addr);
        assert_eq!(during.sum("percore_messages_received_total", &[]), 200.0);
        assert_eq!(during.sum("percore_messages_sent_total", &[]), 200.0);
        assert!(during.sum("percore_connections_open", &[]) >= 11.0, "10 echoers and the scrape");
        assert_eq!(during.sum("percore_connections_accepted_total", &[]), 11.0);

        // Then they close normally.
        for c in &mut echoers {
            c.send_close(1000, "bye").unwrap();
        }
        for c in &mut echoers {
            c.expect_eof();
        }

        // 2 never send their request (handshake timeout); 1 opens and never answers the idle
        // ping (pong timeout).
        let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mute = RawClient::connect(addr).unwrap();
        // 2 send an unmasked frame (1002).
        for _ in 0..2 {
            let mut c = RawClient::connect(addr).unwrap();
            c.send_raw(&raw::encode_unmasked(true, op::TEXT, b"unmasked")).unwrap();
            c.expect_close(1002);
        }
        // 1 makes the handler panic (1011); 1 upgrade panics (500); 1 is refused (401).
        let mut p = RawClient::connect(addr).unwrap();
        p.send_text("panic").unwrap();
        p.expect_close(1011);
        let key = raw::new_key();
        let boom = raw::http_exchange(addr, raw::upgrade_request(addr, "/boom", &key, &[]).as_bytes()).unwrap();
        assert_eq!(boom.status, 500);
        let refused = raw::http_exchange(addr, raw::upgrade_request(addr, "/reject", &key, &[]).as_bytes()).unwrap();
        assert_eq!(refused.status, 401);
        // A plain request the handler does not serve: 404.
        let lost = raw::http_exchange(addr, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(lost.status, 404);
        // 1 asks for a flood and never reads: the slow-consumer policy closes it.
        let mut slow = RawClient::connect(addr).unwrap();
        slow.send_text("flood").unwrap();
        // 1 answers the idle ping: a round trip to measure.
        let mut pinged = RawClient::connect(addr).unwrap();
        let ping = loop {
            let f = pinged.read_frame().expect("an idle ping");
            if f.opcode == op::PING {
                break f;
            }
        };
        pinged.send_frame(true, op::PONG, &ping.payload).unwrap();

        wait_for(&metrics, "the timeouts, the slow consumer and the rtt", |s| {
            closed_total(s, CloseReason::Timeout) == 3
                && closed_total(s, CloseReason::SlowConsumer) == 1
                && s.shards.iter().map(|sh| sh.ping_rtt.count()).sum::<u64>() >= 1
        });
        drop(silent);
        drop(mute.stream.tcp().shutdown(std::net::Shutdown::Both));
        // The pinged client leaves without a close handshake.
        let _ = pinged.stream.tcp().shutdown(std::net::Shutdown::Both);
        let _ = slow.stream.tcp().shutdown(std::net::Shutdown::Both);
        wait_for(&metrics, "every client gone", |s| s.connections_open == 0);

        let end = Scrape::get(addr);
        let flooded = flooded.load(Ordering::Relaxed) as f64;
        assert_eq!(flooded, 3.0, "3 x 64 KiB fit in 256 KiB");
        // Messages: 200 echoed, "panic", "flood", the 2 unmasked frames are protocol errors
        // (not messages); sent: the echoes and what the flood queued.
        assert_eq!(end.sum("percore_messages_received_total", &[]), 202.0);
        assert_eq!(end.sum("percore_messages_sent_total", &[]), 200.0 + flooded);
        // Closes, each under one reason (the scrapes are http: the one running now is open).
        assert_eq!(end.closed("normal"), 10.0);
        assert_eq!(end.closed("timeout"), 3.0);
        assert_eq!(end.closed("protocol_error"), 2.0);
        assert_eq!(end.closed("handler_panic"), 2.0);
        assert_eq!(end.closed("slow_consumer"), 1.0);
        assert_eq!(end.closed("handshake_rejected"), 1.0);
        assert_eq!(end.closed("http"), 2.0, "the first scrape and the 404");
        assert_eq!(end.closed("abnormal"), 1.0, "the pinged client left without a close");
        assert_eq!(end.closed("tls_failure"), 0.0);
        let accepted = end.sum("percore_connections_accepted_total", &[]);
        // Echoers, silent and mute, unmasked, panic, boom + reject + 404, slow, pinged, scrapes.
        assert_eq!(accepted, 10.0 + 3.0 + 2.0 + 1.0 + 3.0 + 1.0 + 1.0 + 2.0, "every connection");
        assert_eq!(end.sum("percore_connections_closed_total", &[]), accepted - 1.0);
        assert_eq!(end.sum("percore_connections_open", &[]), 1.0, "the scrape itself");
        // Refusals by status, requests by class.
        assert_eq!(end.sum("percore_handshakes_rejected_total", &[("status", "401")]), 1.0);
        assert_eq!(end.sum("percore_handshakes_rejected_total", &[("status", "500")]), 1.0);
        assert_eq!(end.sum("percore_handshakes_rejected_total", &[]), 2.0);
        assert_eq!(end.sum("percore_http_requests_total", &[("class", "2xx")]), 1.0);
        assert_eq!(end.sum("percore_http_requests_total", &[("class", "4xx")]), 1.0);
        assert_eq!(end.sum("percore_handler_panics_total", &[]), 2.0);
        assert_eq!(end.sum("percore_slow_consumer_actions_total", &[("action", "close_1008")]), 1.0);
        // Histograms: the ping's round trip, and every shard's loop turns.
        assert!(end.sum("percore_ping_rtt_seconds_count", &[]) >= 1.0);
        assert_eq!(
            end.sum("percore_ping_rtt_seconds_bucket", &[("le", "+Inf")]),
            end.sum("percore_ping_rtt_seconds_count", &[])
        );
        for shard in ["0", "1"] {
            assert!(end.sum("percore_loop_turn_seconds_count", &[("shard", shard)]) > 0.0);
        }
        let uring = end.sum("percore_uring_completions_per_turn_count", &[]);
        match backend {
            Backend::IoUring => assert!(uring > 0.0, "io_uring shards count their completions"),
            _ => assert!(!end.0.keys().any(|k| k.starts_with("percore_uring_")), "epoll: no io_uring series"),
        }
        assert_eq!(end.sum("percore_server_info", &[("slow_consumer", "close_1008")]), 1.0);
        drop(mute);
        server.shutdown(Duration::from_secs(1));
    }

    fn send_queue_gauges_are_sampled_while_a_reader_lags(backend) {
        let flooded = Arc::new(AtomicU64::new(0));
        let server = Server::builder()
            .bind("127.0.0.1:0")
            .shards(Shards::Count(1))
            .pin(false)
            .backend(backend)
            .send_queue_bytes_max(64 << 20)
            .start(move |_| Probe { flooded: flooded.clone() })
            .expect("server starts");
        let metrics = server.metrics_handle();
        // A client that does not read: the kernel's buffers fill, the rest stays queued.
        let mut slow = RawClient::connect(server.local_addr()).unwrap();
        // 32 MiB: more than the kernel's socket buffers take.
        let big = vec![b'x'; 1 << 20];
        for _ in 0..32 {
            slow.send_binary(&big).unwrap();
        }
        wait_for(&metrics, "a sampled send queue", |s| s.shards[0].send_queue_bytes_max > (1 << 20));
        let s = metrics.snapshot();
        let sh = &s.shards[0];
        assert!(sh.send_queue_bytes >= sh.send_queue_bytes_max);
        assert!(sh.send_queue_bytes <= 32 * ((1 << 20) + 14));
        // Once it reads everything, the next sweeps see the queue empty.
        let mut got = 0;
        while got < 32 {
            let (_, data) = slow.read_message().unwrap();
            assert_eq!(data.len(), 1 << 20);
            got += 1;
        }
        wait_for(&metrics, "the queue sampled empty", |s| s.shards[0].send_queue_bytes == 0);
        server.shutdown(Duration::from_secs(1));
    }
}
