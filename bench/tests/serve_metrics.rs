//! `percore serve --metrics ADDR`: the metrics port answers `/metrics` (the Prometheus text,
//! checked by an independent parser: Python's `prometheus_client` OpenMetrics parser),
//! `/dashboard` (one page, nothing fetched from elsewhere) and its WebSocket; the counters
//! match what the clients did: messages sent and received by a client and by `percore load`,
//! closes by reason, a handshake refused by the Origin policy.

mod tools;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tungstenite::Message;

/// A running `percore serve --metrics`, stopped when dropped.
struct Serve {
    child: Child,
    ws: SocketAddr,
    metrics: SocketAddr,
}

impl Serve {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// Started with `extra` arguments after the usual ones.
    fn start_with(extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--shards",
                "2",
                "--no-pin",
            ])
            .args(["--metrics", "127.0.0.1:0", "--handshake-timeout-secs", "1"])
            .args(["--allow-origin", "https://good.example"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut first, mut second) = (String::new(), String::new());
        out.read_line(&mut first).unwrap();
        out.read_line(&mut second).unwrap();
        let ws = tools::listen_addr(&first);
        // metrics on http://ADDR/metrics dashboard http://ADDR/dashboard
        let metrics = second
            .strip_prefix("metrics on http://")
            .and_then(|l| l.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected second line {second:?}"));
        assert!(second.contains(&format!("dashboard http://{metrics}/dashboard")));
        Self { child, ws, metrics }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

/// GET `path`: the status, the head and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8(all).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// Sum of the samples of `name` whose labels include every one of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap() as u64)
        .sum()
}

/// Python with `prometheus_client` (the venv scripts/test.sh makes), or why not.
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("PERCORE_PYENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/percore-pyenv"))
        })?;
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(py)
    } else if std::env::var("PERCORE_REQUIRE_PY").as_deref() == Ok("1") {
        panic!(
            "PERCORE_REQUIRE_PY=1 but {} cannot import prometheus_client (run scripts/test.sh)",
            py.display()
        );
    } else {
        None
    }
}

/// Parse `text` with Python's OpenMetrics parser (strict: it refuses anything out of the
/// format) and return the family names it found.
fn parse_with_python(text: &str) -> Option<Vec<String>> {
    let Some(py) = python() else {
        eprintln!("SKIP the independent parse: no Python venv with prometheus_client");
        return None;
    };
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n";
    let mut child = Command::new(py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the text: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect(),
    )
}

#[test]
fn serve_metrics_port_answers_metrics_dashboard_and_its_websocket() {
    let s = Serve::start();
    let (status, head, body) = get(s.metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: application/openmetrics-text; version=1.0.0"));
    assert!(body.contains("# TYPE percore_messages_received counter"));
    assert!(body.contains("percore_messages_received_total{shard=\"1\"} 0"));

    let (status, head, page) = get(s.metrics, "/dashboard");
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: text/html"));
    assert!(page.contains("<canvas") && page.contains("/dashboard/live"));
    // Self-contained: no script, style, image or font from anywhere.
    for needle in ["src=", "http://", "https://", "@import", "url("] {
        assert!(
            !page.contains(needle),
            "the page refers to something outside: {needle}"
        );
    }
    let (status, head, _) = get(s.metrics, "/");
    assert_eq!(status, 302);
    assert!(head.contains("Location: /dashboard"));
    assert_eq!(get(s.metrics, "/nothing").0, 404);
    assert_eq!(
        get(s.ws, "/metrics").0,
        404,
        "the WebSocket port does not serve metrics"
    );

    // The dashboard's WebSocket: the history first, then a snapshot a second.
    let (mut live, _) = tungstenite::connect(format!("ws://{}/dashboard/live", s.metrics)).unwrap();
    let first = live.read().unwrap().into_text().unwrap();
    let hello: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(hello["type"], "hello");
    assert!(hello["history"].is_array() && hello["rtt_bounds"].is_array());
    let next: serde_json::Value =
        serde_json::from_str(&live.read().unwrap().into_text().unwrap()).unwrap();
    assert_eq!(next["type"], "snap");
    assert_eq!(next["shards"].as_array().unwrap().len(), 2);
    drop(live);
}

#[test]
fn serve_metrics_count_what_the_clients_did() {
    let s = Serve::start();
    // 3 clients echo 100 messages each and close normally.
    for _ in 0..3 {
        let (mut c, _) = tungstenite::connect(format!("ws://{}/", s.ws)).unwrap();
        for i in 0..100 {
            c.send(Message::Text(format!("m{i}"))).unwrap();
            assert_eq!(c.read().unwrap(), Message::Text(format!("m{i}")));
        }
        c.close(None).unwrap();
        while c.read().is_ok() {}
    }
    // A browser page from another origin is refused (403).
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{}/", s.ws))
            .unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    assert!(tungstenite::connect(req).is_err());
    // An unmasked frame: protocol error (1002).
    let (mut c, _) = tungstenite::connect(format!("ws://{}/", s.ws)).unwrap();
    let tungstenite::stream::MaybeTlsStream::Plain(tcp) = c.get_mut() else {
        panic!("plain TCP")
    };
    tcp.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    assert!(rest.starts_with(&[0x88]), "a close frame");
    assert_eq!(&rest[2..4], &1002u16.to_be_bytes());
    drop(c); // the server waits for our end of the TCP connection
             // A client that never sends its request: handshake timeout (1 s).
    let silent = TcpStream::connect(s.ws).unwrap();

    let scrape = || get(s.metrics, "/metrics").2;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = scrape();
    while sum(
        &text,
        "percore_connections_closed_total",
        &[("reason", "timeout")],
    ) < 1
    {
        assert!(
            Instant::now() < deadline,
            "no handshake timeout counted:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
        text = scrape();
    }
    drop(silent);
    assert_eq!(sum(&text, "percore_messages_received_total", &[]), 300);
    assert_eq!(sum(&text, "percore_messages_sent_total", &[]), 300);
    let closed = |reason| {
        sum(
            &text,
            "percore_connections_closed_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(closed("normal"), 3);
    assert_eq!(closed("handshake_rejected"), 1, "{text}");
    assert_eq!(closed("protocol_error"), 1);
    assert_eq!(closed("timeout"), 1);
    assert_eq!(sum(&text, "percore_connections_closed_total", &[]), 6);
    assert_eq!(
        sum(
            &text,
            "percore_handshakes_rejected_total",
            &[("status", "403")]
        ),
        1
    );
    assert_eq!(sum(&text, "percore_connections_accepted_total", &[]), 6);
    assert_eq!(sum(&text, "percore_connections_open", &[]), 0);
    if let Some(families) = parse_with_python(&text) {
        for f in [
            "percore_messages_received",
            "percore_connections_closed",
            "percore_loop_turn_seconds",
        ] {
            assert!(
                families.iter().any(|n| n == f),
                "{f} not parsed: {families:?}"
            );
        }
    }

    // A real load: the server received what it sent back, at least what the load counted.
    let load = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["load", "--url", &format!("ws://{}/", s.ws)])
        .args(["--connections", "8", "--duration", "1", "--json"])
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&load.stdout).unwrap();
    let echoed = summary["messages"].as_u64().unwrap();
    assert!(echoed > 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let t = scrape();
        if sum(&t, "percore_connections_open", &[]) == 0 {
            break t;
        }
        assert!(Instant::now() < deadline, "load connections still open");
        std::thread::sleep(Duration::from_millis(100));
    };
    let received = sum(&text, "percore_messages_received_total", &[]);
    assert_eq!(received, sum(&text, "percore_messages_sent_total", &[]));
    assert!(received >= 300 + echoed, "{received} < 300 + {echoed}");
    assert_eq!(sum(&text, "percore_connections_accepted_total", &[]), 6 + 8);
    let closed_all = sum(&text, "percore_connections_closed_total", &[]);
    assert_eq!(closed_all, 6 + 8);
}

#[test]
fn serve_metrics_port_refuses_dashboards_past_its_connections_max() {
    let s = Serve::start_with(&["--metrics-connections-max", "2"]);
    let url = format!("ws://{}/dashboard/live", s.metrics);
    let (mut a, _) = tungstenite::connect(&url).unwrap();
    let (mut b, _) = tungstenite::connect(&url).unwrap();
    // Both are open (each got its history).
    assert!(a.read().unwrap().is_text());
    assert!(b.read().unwrap().is_text());
    match tungstenite::connect(&url) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("a third dashboard past the limit of 2: {other:?}"),
    }
    // A scrape is still answered.
    let (status, _, body) = get(s.metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("percore_messages_received_total"));
    // A dashboard that leaves makes room for another.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tungstenite::connect(&url) {
            Ok((mut c, _)) => {
                assert!(c.read().unwrap().is_text());
                break;
            }
            Err(tungstenite::Error::Http(resp)) if resp.status() == 503 => {
                assert!(Instant::now() < deadline, "no room after a dashboard left");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
    drop(b);
}
