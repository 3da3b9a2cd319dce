//! `percore serve` on its WebSocket port: plain HTTP (`GET /healthz` is 200 with the shard count
//! and the open connections as JSON, other paths 404), `--allow-origin` (403 for other origins,
//! 101 for listed ones), and chat mode's rooms from the upgrade path. Each server runs on a free
//! port for well under a second and is stopped with SIGTERM.

mod tools;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `percore serve`, stopped when dropped.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--shards",
                "2",
                "--no-pin",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = tools::listen_addr(&line);
        Self { child, addr }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SIGTERM: the server's own graceful stop.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

/// Send `request`, return the status and the whole answer (until the server closes).
fn exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                // A 101 keeps the connection open: its head is the whole answer here.
                if got.starts_with(b"HTTP/1.1 101") && got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer to {request:?}: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

fn upgrade(path: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\n{origin}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[test]
fn healthz_answers_200_with_shards_and_connections_and_other_paths_404() {
    let serve = Serve::start(&[]);
    let (status, text) = exchange(serve.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\r\nContent-Type: application/json\r\n"),
        "{text}"
    );
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["shards"], 2);
    assert_eq!(v["connections"], 1, "the health check's own connection");
    let (status, _) = exchange(serve.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 404);
    let (status, text) = exchange(serve.addr, "HEAD /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text}");
    let (status, _) = exchange(serve.addr, &upgrade("/", None));
    assert_eq!(status, 101, "WebSockets on the same port");
}

#[test]
fn allow_origin_refuses_other_origins_with_403() {
    let serve = Serve::start(&[
        "--allow-origin",
        "https://app.example.com",
        "--allow-origin",
        "*.example.org",
    ]);
    let status = |origin| exchange(serve.addr, &upgrade("/", origin)).0;
    assert_eq!(status(Some("https://evil.example.net")), 403);
    assert_eq!(status(Some("https://app.example.com")), 101);
    assert_eq!(status(Some("http://a.example.org:8080")), 101);
    assert_eq!(status(Some("https://example.org")), 403);
    assert_eq!(status(None), 101, "no Origin: a non-browser client");
}

#[test]
fn bad_allow_origin_pattern_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--allow-origin",
            "https://a/b",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid origin pattern \"https://a/b\""),
        "{err}"
    );
}

#[test]
fn chat_mode_takes_the_room_from_the_upgrade_path_and_answers_healthz() {
    let serve = Serve::start(&["--mode", "chat"]);
    assert_eq!(exchange(serve.addr, &upgrade("/room/lobby", None)).0, 101);
    assert_eq!(exchange(serve.addr, &upgrade("/lobby", None)).0, 404);
    let (status, _) = exchange(serve.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
}
