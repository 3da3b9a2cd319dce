//! The resume protocol's browser client (`clients/js/percore-client.js`), as `percore serve`
//! serves it at `/client.js`, run under Node's built-in WebSocket against `percore serve --mode
//! chat`: a subscriber dropped every 100 ms gets 2,000 numbered messages exactly once in order;
//! 200 clients dropped at once by a server restart (SIGKILL, a new server on the same port)
//! all reconnect within their backoff schedule and are told the history restarted.
//!
//! Needs `node` with a WebSocket (Node 22, or 20/21 with `--experimental-websocket`):
//! scripts/test.sh installs it and sets `PERCORE_REQUIRE_NODE=1`; elsewhere a missing Node is
//! a skip, with a note.

mod tools;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const MESSAGES: u32 = 2_000;
const CLIENTS: usize = 200;

/// `percore serve --mode chat` on `addr`; returns the child and the address it listens on.
fn serve(addr: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["serve", "--mode", "chat", "--shards", "2", "--no-pin"])
        .args(["--addr", addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = tools::listen_addr(&line);
    (child, addr)
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// The command that runs Node with a global `WebSocket`, if there is one.
fn node() -> Option<Vec<String>> {
    for flags in [&[][..], &["--experimental-websocket"][..]] {
        let ok = Command::new("node")
            .args(flags)
            .args([
                "-e",
                "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            let mut v = vec!["node".to_owned()];
            v.extend(flags.iter().map(|s| s.to_string()));
            return Some(v);
        }
    }
    None
}

/// `GET path`: (status line, headers, body).
fn get(addr: SocketAddr, path: &str) -> (String, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..at]).into_owned();
    let (status, headers) = head.split_once("\r\n").unwrap();
    (
        status.into(),
        headers.to_ascii_lowercase(),
        all[at + 4..].to_vec(),
    )
}

/// The next JSON line the script prints (a failure line fails the test).
fn line(out: &mut BufReader<ChildStdout>) -> String {
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    assert!(!l.is_empty(), "the node script ended early");
    assert!(!l.contains("\"error\""), "node: {l}");
    l
}

/// The numbers of the JSON array `key` in `l`.
fn numbers(l: &str, key: &str) -> Vec<u64> {
    let at = l.find(&format!("\"{key}\":[")).unwrap() + key.len() + 4;
    let end = at + l[at..].find(']').unwrap();
    l[at..end].split(',').map(|n| n.parse().unwrap()).collect()
}

#[test]
fn resume_js_client_is_served_and_survives_drops_and_a_restart_under_node() {
    let (server, addr) = serve("127.0.0.1:0");
    let (status, headers, body) = get(addr, "/client.js");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: text/javascript"),
        "{headers}"
    );
    let file = include_str!("../../clients/js/percore-client.js");
    assert_eq!(body, file.as_bytes());
    let Some(node) = node() else {
        stop(server);
        assert!(
            std::env::var("PERCORE_REQUIRE_NODE").as_deref() != Ok("1"),
            "PERCORE_REQUIRE_NODE=1 but no node with a WebSocket"
        );
        eprintln!("SKIP: no node with a global WebSocket here");
        return;
    };
    let dir = std::env::temp_dir().join(format!("percore-js-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let client = dir.join("percore-client.mjs");
    std::fs::write(&client, &body).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/js/test/resume.mjs");
    let mut child = Command::new(&node[0])
        .args(&node[1..])
        .arg(script)
        .arg(&client)
        .arg(format!("ws://{addr}"))
        .arg(MESSAGES.to_string())
        .arg(CLIENTS.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let drops = line(&mut out);
    assert!(drops.contains("\"inOrder\":true"), "{drops}");
    eprintln!("{}", drops.trim());
    assert!(
        drops.contains(&format!("\"received\":{MESSAGES}")),
        "{drops}"
    );
    let ready = line(&mut out);
    assert!(ready.contains("ready"), "{ready}");
    // Every client is dropped at once; the new server comes up on the same port.
    stop(server);
    let t0 = Instant::now();
    let (server, again) = serve(&addr.to_string());
    assert_eq!(again, addr);
    let restart = line(&mut out);
    let took = t0.elapsed();
    assert!(
        restart.contains(&format!("\"reset\":{CLIENTS}")),
        "{restart}"
    );
    let ms = numbers(&restart, "reconnectMs");
    assert_eq!(ms.len(), CLIENTS);
    // Within the schedule (base 200 ms, cap 2 s: a few attempts while the server was away),
    // and spread, not all at one instant.
    let (min, max) = (ms.iter().min().unwrap(), ms.iter().max().unwrap());
    assert!(*max < 10_000, "{restart}");
    assert!(max - min >= 100, "reconnects not spread: {min}..{max} ms");
    assert!(child.wait().unwrap().success());
    eprintln!("restart: {CLIENTS} clients back in {min}..{max} ms ({took:?} in all)");
    stop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
