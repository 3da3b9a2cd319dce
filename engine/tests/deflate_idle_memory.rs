//! Heap bytes per open connection by compression mode, counted exactly: this test binary's
//! global allocator counts every live heap byte of the server (the clients run in a child
//! process: this same binary, re-executed). Per mode, N connections that offered
//! permessage-deflate are opened, and the server's live heap with them, minus before them,
//! divided by N:
//!
//! - `off`: deflate declined (the baseline);
//! - `shared`: no per-connection compression state: within 16 bytes of `off`;
//! - `dedicated, idle`: every connection exchanged a compressed message, then its own history
//!   was dropped (idle): the client's 4 KiB window and the box around it remain;
//! - `dedicated, active`: every connection just got a compressed reply: both windows each.
//!
//! N is 2,000 (`PERCORE_IDLE_CONNECTIONS` to change it; bench/results has 10,000). Both
//! backends. One test per binary: the allocator counts the whole process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use percore::proto::deflate::{encode_compressed, Compressor, Window};
use percore::{Backend, Compression, Conn, Handler, Message, Server, Shards};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged (so
// `System`'s guarantees hold) and only adds bookkeeping on an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (the caller upholds `alloc`'s contract).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (`ptr` came from this allocator with `layout`).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is (the caller upholds `realloc`'s contract).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const TEST: &str = "idle_connection_heap_bytes_by_compression_mode";
const CHILD_ENV: &str = "PERCORE_IDLE_MEMORY_CLIENTS";
const WAIT: Duration = Duration::from_secs(120);
const READY: &str = "percore-idle-clients-ready";

struct Echo;

impl Handler for Echo {
    type State = ();
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

fn json(n: usize, seed: usize) -> Vec<u8> {
    let mut s = String::new();
    let mut i = seed * 100;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"user\":\"user-{}\",\"price\":{}.{:02}}},",
            i * 7 % 5000,
            i * 13 % 10_000,
            i % 100
        ));
        i += 1;
    }
    s.truncate(n);
    s.into_bytes()
}

/// The child: open `n` connections to `addr` offering permessage-deflate; with `talk`, each
/// sends one compressed 1 KiB message and reads its echo. Then [`READY`], and hold them until
/// stdin closes.
fn clients(addr: SocketAddr, n: usize, talk: bool) {
    let mut conns = Vec::with_capacity(n);
    let mut z = Vec::new();
    for i in 0..n {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        let deflate = String::from_utf8_lossy(&head).contains("permessage-deflate");
        if talk {
            let mut frame = Vec::new();
            let msg = json(1024, i);
            let op = percore::proto::OpCode::Binary;
            if deflate {
                // A fresh compressor per message: valid under any terms.
                z.clear();
                Compressor::new(6, 12, 8).compress(&msg, &mut z).unwrap();
                encode_compressed(&mut frame, op, &z, Some([1, 2, 3, 4]));
            } else {
                percore::proto::encode_frame(&mut frame, op, true, &msg, Some([1, 2, 3, 4]));
            }
            s.write_all(&frame).unwrap();
            // The echo: one frame, header of 2 or 4 bytes.
            let mut h = [0u8; 2];
            s.read_exact(&mut h).unwrap();
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    s.read_exact(&mut l).unwrap();
                    usize::from(u16::from_be_bytes(l))
                }
                l => usize::from(l),
            };
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).unwrap();
        }
        conns.push(s);
    }
    // (libtest prints the test's name on the same line first.)
    println!("{READY}");
    std::io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(conns);
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Heap bytes per connection of `n` connections in `mode` (`talk`: each exchanged a message;
/// `release`: the connections' own histories are dropped before counting).
fn measure(backend: Backend, mode: Compression, n: usize, talk: bool, release: bool) -> f64 {
    // The histories go at the idle deadline (no input meanwhile).
    let idle = if release { 100 } else { 0 };
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(1))
        .pin(false)
        .backend(backend)
        .idle_timeout(Duration::from_millis(idle))
        .compression(mode)
        .deflate_dedicated_bytes_max(usize::MAX / 4)
        .start(|_| Echo)
        .unwrap();
    let addr = server.local_addr();
    // Warm up: what a shard creates once (its inflater and compressor) is not per connection.
    clients_in_child(addr, 1, true, |_| {});
    wait_until("the warm-up connection is gone", || {
        server.stats().connections_open == 0
    });
    let before = LIVE.load(Relaxed);
    let mut per_conn = 0.0;
    clients_in_child(addr, n, talk, |_| {
        wait_until("every connection is open", || {
            server.stats().upgraded > n as u64
        });
        if mode == Compression::Dedicated {
            let window = (Window::heap_bytes(12) * n) as u64;
            wait_until("dedicated state settles", || {
                let held = server.stats().deflate_dedicated_bytes;
                if release || !talk {
                    held == window
                } else {
                    held > window
                }
            });
        }
        // Let the last flushes hand their queues back.
        std::thread::sleep(Duration::from_millis(300));
        per_conn = (LIVE.load(Relaxed) as f64 - before as f64) / n as f64;
    });
    server.shutdown(Duration::from_secs(2));
    per_conn
}

/// Run the clients in a child process; `with` runs while they are open.
fn clients_in_child(addr: SocketAddr, n: usize, talk: bool, with: impl FnOnce(())) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{addr},{n},{talk}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "client child died");
        if line.contains(READY) {
            break;
        }
    }
    with(());
    drop(child.stdin.take());
    let _ = child.wait();
}

fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Epoll];
    let uring = Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(1))
        .pin(false)
        .backend(Backend::IoUring)
        .start(|_| Echo);
    match uring {
        Ok(s) => {
            s.shutdown(Duration::from_secs(1));
            b.push(Backend::IoUring);
        }
        Err(e) if std::env::var("PERCORE_REQUIRE_URING").as_deref() == Ok("1") => {
            panic!("io_uring does not start: {e}")
        }
        Err(_) => {}
    }
    b
}

#[test]
fn idle_connection_heap_bytes_by_compression_mode() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let mut it = spec.split(',');
        let addr = it.next().unwrap().parse().unwrap();
        let n = it.next().unwrap().parse().unwrap();
        let talk = it.next().unwrap() == "true";
        clients(addr, n, talk);
        return;
    }
    let n: usize = std::env::var("PERCORE_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let window = Window::heap_bytes(12) as f64;
    println!(
        "| backend | connections | mode | heap bytes per connection | minus off (same traffic) |"
    );
    println!("|---|--:|---|--:|--:|");
    for backend in backends() {
        let off = measure(backend, Compression::Off, n, false, false);
        let shared = measure(backend, Compression::Shared, n, false, false);
        let off_talked = measure(backend, Compression::Off, n, true, false);
        let shared_talked = measure(backend, Compression::Shared, n, true, false);
        let idle = measure(backend, Compression::Dedicated, n, true, true);
        let active = measure(backend, Compression::Dedicated, n, true, false);
        for (mode, v, base) in [
            ("off (deflate declined), handshake only", off, off),
            ("shared, handshake only", shared, off),
            ("off, after one 1 KiB message each", off_talked, off_talked),
            (
                "shared, after one compressed message each",
                shared_talked,
                off_talked,
            ),
            ("dedicated, idle (our history dropped)", idle, off_talked),
            ("dedicated, every connection active", active, off_talked),
        ] {
            println!("| {backend:?} | {n} | {mode} | {v:.1} | {:+.1} |", v - base);
        }
        assert!(
            shared - off <= 16.0,
            "{backend:?}: shared costs {} B",
            shared - off
        );
        assert!(
            shared_talked - off_talked <= 16.0,
            "{backend:?}: shared after a message costs {} B",
            shared_talked - off_talked
        );
        assert!(
            idle - off_talked >= window && idle - off_talked <= window + 256.0,
            "{backend:?}: dedicated idle costs {} B (window {window})",
            idle - off_talked
        );
        assert!(
            active - idle >= window * 0.9 && active - idle <= window + 256.0,
            "{backend:?}: an active dedicated connection holds its own history too ({} B)",
            active - idle
        );
    }
}
