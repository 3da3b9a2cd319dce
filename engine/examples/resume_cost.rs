//! What topic history costs: CPU per delivered message with history off and on (plain
//! subscribers, and resume subscribers that get the envelope frames), for 1 to 10,000
//! subscribers of one topic; and the memory a topic's history takes as configured.
//!
//! ```text
//! cargo run --release -p percore --example resume_cost [SUBSCRIBERS...]   # CPU table
//! cargo run --release -p percore --example resume_cost memory MESSAGES TOPICS   # one memory row
//! ```
//!
//! One shard (io_uring with direct descriptors, so the server's sockets do not count against
//! RLIMIT_NOFILE) serves N subscribers, all on 127.0.0.1; a reader thread drains them. The main
//! thread publishes 64-byte messages to the topic, in batches, waiting for the shard to catch
//! up. CPU is the shard thread's plus the publishing thread's (from /proc/self/task/*/schedstat:
//! nanoseconds on a CPU), divided by the deliveries (publishes × subscribers); the reader's is
//! left out. Memory: RSS growth while 2,000 (500) topics fill histories of 100 (1,000)
//! messages, per topic and per message.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use percore::{Backend, Conn, Handler, Message, Server, ServerHandle, Shards, TopicHistory};

const TOPIC: &str = "t";
const PAYLOAD: [u8; 64] = [b'x'; 64];
/// Deliveries per measurement (publishes = this / subscribers, at least `PUBLISHES_MIN`).
const DELIVERIES: u64 = 2_000_000;
const PUBLISHES_MIN: u64 = 200;
const BATCH: u64 = 100;
/// Each configuration is measured this many times, interleaved with the others; the median
/// is reported (the machine is shared: single runs are noisy).
const ROUNDS: usize = 3;

/// Plain connections subscribe on open; resume connections subscribe themselves (`sub t`).
struct Sub;

impl Handler for Sub {
    type State = ();
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        if !conn.speaks_resume() {
            let _ = conn.subscribe(TOPIC);
        }
    }
    fn on_message(&mut self, _: &mut Conn<'_, ()>, _: Message<'_>) {}
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Off,
    OnPlain,
    OnResume,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "history off",
            Mode::OnPlain => "history on, plain subscribers",
            Mode::OnResume => "history on, resume subscribers",
        }
    }
}

fn server(history: bool) -> ServerHandle {
    let b = Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(1))
        .pin(false)
        .backend(Backend::IoUring)
        .direct_fds(true)
        .resume_protocol(true)
        .connections_max(20_000);
    let b = if history {
        b.topic_history(
            TOPIC,
            TopicHistory::new(1000, 1 << 20, Duration::from_secs(300)),
        )
    } else {
        b
    };
    b.start(|_| Sub).expect("io_uring server")
}

/// A subscriber: upgrade (offering the resume protocol or not), `sub t` if it speaks it.
fn subscribe(addr: SocketAddr, resume: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let proto = if resume {
        "Sec-WebSocket-Protocol: percore.resume.v1\r\n"
    } else {
        ""
    };
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    if resume {
        // "sub t", masked with a zero key.
        s.write_all(&[0x81, 0x85, 0, 0, 0, 0, b's', b'u', b'b', b' ', b't'])
            .unwrap();
    }
    s
}

/// Nanoseconds on a CPU of the threads named `percore-shard*` and of this thread.
fn cpu_ns() -> u64 {
    let me = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    let mut total: u64 = me.split_whitespace().next().unwrap().parse().unwrap();
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let p = t.unwrap().path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.starts_with("percore-shard") {
            let st = std::fs::read_to_string(p.join("schedstat")).unwrap_or_default();
            total += st
                .split_whitespace()
                .next()
                .unwrap_or("0")
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    total
}

/// Drain every subscriber's socket until `stop`, counting the bytes in `read`.
fn reader(
    conns: Vec<TcpStream>,
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use mio::{Events, Interest, Poll, Token};
        let mut poll = Poll::new().unwrap();
        let mut socks: Vec<mio::net::TcpStream> = conns
            .into_iter()
            .map(|s| {
                s.set_nonblocking(true).unwrap();
                mio::net::TcpStream::from_std(s)
            })
            .collect();
        for (i, s) in socks.iter_mut().enumerate() {
            poll.registry()
                .register(s, Token(i), Interest::READABLE)
                .unwrap();
        }
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 256 << 10];
        while !stop.load(Ordering::Relaxed) {
            poll.poll(&mut events, Some(Duration::from_millis(20)))
                .unwrap();
            for e in events.iter() {
                let s = &mut socks[e.token().0];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    read.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    })
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < end, "timed out: {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// ns of CPU per delivery with `n` subscribers.
fn measure(mode: Mode, n: u64) -> f64 {
    let srv = server(mode != Mode::Off);
    let conns: Vec<TcpStream> = (0..n)
        .map(|_| subscribe(srv.local_addr(), mode == Mode::OnResume))
        .collect();
    wait("subscriptions", || srv.stats().subscriptions == n);
    let stop = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));
    let r = reader(conns, stop.clone(), read.clone());
    let publishes = (DELIVERIES / n).max(PUBLISHES_MIN);
    let base = srv.stats().delivered;
    let msg = Message::Binary(&PAYLOAD);
    let t0 = cpu_ns();
    let mut sent = 0;
    while sent < publishes {
        for _ in 0..BATCH.min(publishes - sent) {
            srv.publish(TOPIC, msg).unwrap();
            sent += 1;
        }
        // Keep at most two batches in flight (the mailbox stays small), and the reader within
        // 64 KiB per socket of what the server wrote (send queues stay far below their limit).
        let want = base + sent.saturating_sub(2 * BATCH) * n;
        wait(&format!("deliveries ({want})"), || {
            let st = srv.stats();
            if st.slow_consumers + st.closed + st.dropped > 0 {
                panic!("a subscriber was lost: {st:?}");
            }
            st.delivered >= want && read.load(Ordering::Relaxed) + n * (64 << 10) >= st.bytes_sent
        });
    }
    wait("all deliveries", || {
        srv.stats().delivered == base + publishes * n
    });
    let ns = cpu_ns() - t0;
    stop.store(true, Ordering::Relaxed);
    r.join().unwrap();
    srv.shutdown(Duration::from_secs(1));
    ns as f64 / (publishes * n) as f64
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// RSS growth per topic while `topics` topics fill a history of `messages` × 64-byte payloads.
fn memory(topics: usize, messages: usize) -> (f64, u64) {
    let srv = Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(1))
        .pin(false)
        .backend(Backend::Epoll)
        .topic_history_messages_max(messages)
        .topic_history_bytes_max(64 << 20)
        .start(|_| Sub)
        .unwrap();
    let names: Vec<String> = (0..topics).map(|i| format!("topic-{i}")).collect();
    // Warm up the allocator with one topic, then measure the rest.
    for _ in 0..messages {
        srv.publish("warm", Message::Binary(&PAYLOAD)).unwrap();
    }
    let before = rss_bytes();
    for name in &names {
        for _ in 0..messages {
            srv.publish(name, Message::Binary(&PAYLOAD)).unwrap();
        }
    }
    let after = rss_bytes();
    assert_eq!(srv.stats().history_topics, topics as u64 + 1);
    srv.shutdown(Duration::from_secs(1));
    // The envelope frame of one message: WebSocket header + "m EPOCH SEQ topic-N\n" + payload.
    let frame = 2 + format!("m {} {} topic-0\n", u64::MAX >> 11, messages).len() as u64 + 64;
    ((after - before) as f64 / topics as f64, frame)
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("memory") {
        let num = |i: usize, d: usize| argv.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
        memory_row(num(2, 1000), num(3, 500));
        return;
    }
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if args.is_empty() {
        vec![1, 10, 100, 1_000, 10_000]
    } else {
        args
    };
    let mut rows: HashMap<(u64, &'static str), Vec<f64>> = HashMap::new();
    let modes = [Mode::Off, Mode::OnPlain, Mode::OnResume];
    for round in 0..ROUNDS {
        for &n in &counts {
            for mode in modes {
                let ns = measure(mode, n);
                eprintln!(
                    "round {round}: {n:>6} subscribers, {}: {ns:.1} ns/delivery",
                    mode.name()
                );
                rows.entry((n, mode.name())).or_default().push(ns);
            }
        }
    }
    let rows: HashMap<(u64, &'static str), f64> = rows
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            (k, v[v.len() / 2])
        })
        .collect();
    println!("| subscribers | history off | history on, plain subscribers | history on, resume subscribers | on/off (plain) | on/off (resume) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &n in &counts {
        let v: Vec<f64> = modes.iter().map(|m| rows[&(n, m.name())]).collect();
        println!(
            "| {n} | {:.1} ns | {:.1} ns | {:.1} ns | {:.2} | {:.2} |",
            v[0],
            v[1],
            v[2],
            v[1] / v[0],
            v[2] / v[0]
        );
    }
}

/// One row of the memory table: `topics` topics with `messages` messages each. Run each row in
/// a fresh process: memory freed by an earlier run would be reused without growing RSS.
fn memory_row(messages: usize, topics: usize) {
    let (per_topic, frame) = memory(topics, messages);
    println!(
        "| {messages} messages | {topics} | {:.1} KiB | {:.0} B | {frame} B |",
        per_topic / 1024.0,
        per_topic / messages as f64
    );
}
