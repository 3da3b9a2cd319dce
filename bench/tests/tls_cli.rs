//! wss:// through the commands: `percore cert` makes a CA and a certificate, `percore serve`
//! serves ws:// and wss:// on two ports, `percore load` drives wss:// verifying the CA (or
//! `--insecure`), refuses a server from another CA, and `percore bench --tls` adds `wss` rows;
//! `--metrics` beside `--tls-cert` counts wss connections and TLS failures.
//! Everything on 127.0.0.1, each run a fraction of a second.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn percore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_percore"))
}

fn cert(dir: &Path) {
    let out = percore()
        .arg("cert")
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the key is readable by its owner only");
}

/// A server with a plain and a TLS port; killed when dropped.
struct Serve {
    child: Child,
    plain: u16,
    tls: u16,
    /// The `--metrics` port, if asked for.
    metrics: Option<SocketAddr>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Serve {
    serve_with(dir, &[])
}

/// `serve`, with `extra` arguments; with `--metrics` it reads the metrics line too.
fn serve_with(dir: &Path, extra: &[&str]) -> Serve {
    let mut child = percore()
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--tls-addr",
            "127.0.0.1:0",
        ])
        .args(["--backend", "epoll", "--shards", "1", "--no-pin"])
        .arg("--tls-cert")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // metrics on http://ADDR/metrics dashboard http://ADDR/dashboard
    let metrics = extra.contains(&"--metrics").then(|| {
        let mut second = String::new();
        out.read_line(&mut second).unwrap();
        second
            .strip_prefix("metrics on http://")
            .and_then(|l| l.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected second line {second:?}"))
    });
    let port = |after: &str| -> u16 {
        let rest = &line[line.find(after).expect(after) + after.len()..];
        let addr = rest.split_whitespace().next().unwrap();
        addr.rsplit_once(':').unwrap().1.parse().unwrap()
    };
    let s = Serve {
        plain: port("listening on "),
        tls: port("tls="),
        metrics,
        child,
    };
    assert_ne!(s.plain, s.tls, "{line}");
    s
}

fn load(args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = percore()
        .arg("load")
        .args(args)
        .args([
            "--json",
            "--quiet",
            "--connections",
            "4",
            "--duration",
            "0.5",
        ])
        .args(["--timeout", "5"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_str(text.trim()).unwrap_or(serde_json::Value::Null);
    (out.status.success(), v, err)
}

#[test]
fn serve_and_load_speak_wss_with_the_ca_from_percore_cert() {
    let dir = std::env::temp_dir().join(format!("percore-tls-cli-{}", std::process::id()));
    cert(&dir);
    let s = serve(&dir);
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    // Verified against the CA, by name and by IP address; then --insecure.
    for url in [
        format!("wss://localhost:{}/", s.tls),
        format!("wss://127.0.0.1:{}/", s.tls),
    ] {
        let (ok, v, err) = load(&["--url", &url, "--tls-ca", ca]);
        assert!(ok, "{url}: {err}");
        assert_eq!(v["connections"], 4, "{v:#}");
        assert!(v["messages"].as_u64().unwrap() > 0, "{v:#}");
        assert_eq!(v["errors"], 0, "{v:#}");
    }
    let url = format!("wss://localhost:{}/", s.tls);
    let (ok, v, err) = load(&["--url", &url, "--insecure"]);
    assert!(ok && v["errors"] == 0, "{err} {v:#}");
    // The plain port of the same server, at the same time.
    let (ok, v, err) = load(&["--url", &format!("ws://127.0.0.1:{}/", s.plain)]);
    assert!(ok && v["errors"] == 0, "{err} {v:#}");
    // Neither a CA nor --insecure: refused before anything runs.
    let (ok, _, err) = load(&["--url", &url]);
    assert!(!ok && err.contains("--tls-ca"), "{err}");
    // Another CA: every handshake fails.
    let other = dir.join("other");
    cert(&other);
    let other_ca = other.join("ca.pem");
    let (_, v, err) = load(&["--url", &url, "--tls-ca", other_ca.to_str().unwrap()]);
    assert_eq!(v["connections"], 0, "{err} {v:#}");
    assert!(
        v["errors_detail"]["handshake"].as_u64().unwrap() > 0,
        "{v:#}"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_a_missing_key_with_a_clear_message() {
    let out = percore()
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args([
            "--tls-cert",
            "/no/such/cert.pem",
            "--tls-key",
            "/no/such/key.pem",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert /no/such/cert.pem"), "{err}");
}

#[test]
fn bench_tls_adds_wss_rows_beside_the_ws_ones() {
    let out = percore()
        .args(["bench", "--tls", "--backends", "epoll", "--cell", "4x20"])
        .args(["--duration", "0.5", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backends: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["backend"].as_str().unwrap())
        .collect();
    assert_eq!(backends, ["epoll", "epoll wss"], "{rows:#}");
    for r in rows.as_array().unwrap() {
        assert_eq!(r["connections"], 4, "{r:#}");
        assert_eq!(r["errors"], 0, "{r:#}");
        assert!(r["cpu_us_per_msg"].as_f64().unwrap() > 0.0, "{r:#}");
    }
}

/// GET `/metrics` from `addr`: the body.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The sum of a metric's samples whose line contains `filter`.
fn sum(body: &str, name: &str, filter: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn serve_metrics_beside_tls_counts_wss_connections_and_tls_failures() {
    let dir = std::env::temp_dir().join(format!("percore-tls-metrics-{}", std::process::id()));
    cert(&dir);
    let s = serve_with(&dir, &["--metrics", "127.0.0.1:0"]);
    let metrics = s.metrics.unwrap();
    let ca = dir.join("ca.pem");
    let url = format!("wss://localhost:{}/", s.tls);
    let (ok, v, err) = load(&["--url", &url, "--tls-ca", ca.to_str().unwrap()]);
    assert!(ok && v["errors"] == 0, "{err} {v:#}");
    // Random bytes on the TLS port: one TLS failure, the server stays up.
    let mut bad = TcpStream::connect(("127.0.0.1", s.tls)).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bad.write_all(&[0x5a; 64]).unwrap();
    let _ = bad.read_to_end(&mut Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = scrape(metrics);
        let done = sum(
            &body,
            "percore_connections_closed_total",
            "reason=\"tls_failure\"",
        ) >= 1.0
            && sum(&body, "percore_upgrades_total", "") >= 4.0;
        if done || std::time::Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        sum(
            &body,
            "percore_connections_closed_total",
            "reason=\"tls_failure\""
        ),
        1.0,
        "{body}"
    );
    assert!(sum(&body, "percore_upgrades_total", "") >= 4.0, "{body}");
    assert!(
        sum(&body, "percore_messages_received_total", "") > 0.0,
        "{body}"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
