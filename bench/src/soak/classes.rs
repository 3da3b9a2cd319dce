//! The client classes of the soak, one function each, all blocking and rate-bounded. Each runs
//! until `Ctx::stop` and records into its [`Class`].
//!
//! Well-behaved: `echo` (numbered messages checked exactly once and in order), `publisher` +
//! `subscriber` (broadcast server: every subscriber checks every publish, in order), `churn`
//! (connect, one message, close handshake). Hostile: `never_reading`, `slowloris`,
//! `rst_mid_frame`, `ping_flood`, `fragment_flood`, `oversized`, `invalid_utf8`, `garbage`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::{self, close_payload, op, Client, End, Ev};
use super::record::{Arrival, Class, Sequence};
use crate::load::addr;
use crate::load::payload::{self, Stamp};
use crate::sys::mono_ns;

/// Connect + upgrade deadline.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A well-behaved message not answered within this is lost.
const ECHO_DEADLINE: Duration = Duration::from_secs(10);
/// How long the end of the run waits for answers still in flight.
pub const DRAIN: Duration = Duration::from_secs(10);

/// What the expectations depend on: the soak servers' settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--message-bytes-max` and `--frame-bytes-max`.
    pub message_bytes_max: usize,
    /// `--handshake-timeout-secs`.
    pub handshake_timeout: Duration,
}

/// Rates and sizes of the classes (per backend).
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Messages per second per echo connection.
    pub echo_rate: f64,
    /// Broadcast subscribers.
    pub subscribers: usize,
    /// Publishes per second.
    pub publish_rate: f64,
    /// Connections opened and closed per second.
    pub churn_rate: f64,
    /// Multiplies every hostile class's rate.
    pub hostile: f64,
}

/// Shared by every class of one backend.
pub struct Ctx {
    /// The echo server (well-behaved echo, churn, every hostile class).
    pub echo: SocketAddr,
    /// The broadcast server (publisher, subscribers, part of the churn).
    pub bcast: SocketAddr,
    /// End of the load: classes stop starting new work.
    pub stop: AtomicBool,
    /// The publisher has stopped and drained: subscribers may finish.
    pub publisher_done: AtomicBool,
    /// Subscribers connected and waiting for the first publish.
    pub subscribers_ready: AtomicU32,
    /// Messages each publisher connection (by id) sent.
    pub published: Mutex<HashMap<u32, u64>>,
    /// Server settings.
    pub limits: Limits,
    /// Class rates.
    pub rates: Rates,
    /// Seed of the pseudo-random choices.
    pub seed: u64,
    /// Start of the load.
    pub start: Instant,
    ids: AtomicU32,
    source_base: u32,
    stop_seen: Mutex<Option<Instant>>,
}

impl Ctx {
    /// A context for one backend's servers.
    pub fn new(
        echo: SocketAddr,
        bcast: SocketAddr,
        limits: Limits,
        rates: Rates,
        seed: u64,
    ) -> Ctx {
        Ctx {
            echo,
            bcast,
            stop: AtomicBool::new(false),
            publisher_done: AtomicBool::new(false),
            subscribers_ready: AtomicU32::new(0),
            published: Mutex::new(HashMap::new()),
            limits,
            rates,
            seed,
            start: Instant::now(),
            ids: AtomicU32::new(1),
            source_base: addr::run_base(seed ^ mono_ns()),
            stop_seen: Mutex::new(None),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// When the stop was first seen by a caller of this (None while running).
    fn stopped_at(&self) -> Option<Instant> {
        if !self.stopped() {
            return None;
        }
        let mut at = self.stop_seen.lock().unwrap_or_else(|p| p.into_inner());
        Some(*at.get_or_insert_with(Instant::now))
    }

    /// A fresh connection id (also picks the source address).
    fn id(&self) -> u32 {
        self.ids.fetch_add(1, Relaxed)
    }

    /// Open a WebSocket connection for `class`; None (recorded as unexpected) when it fails.
    fn open(&self, class: &Class, dst: SocketAddr, path: &str, id: u32) -> Option<Client> {
        self.open_with(class, dst, path, id, None)
    }

    /// [`Ctx::open`] with a fixed receive buffer.
    fn open_with(
        &self,
        class: &Class,
        dst: SocketAddr,
        path: &str,
        id: u32,
        rcvbuf: Option<usize>,
    ) -> Option<Client> {
        class.with(|r| r.connections += 1);
        let mut last = None;
        for attempt in 0..3 {
            let src = addr::source_for(id, self.source_base, attempt);
            match Client::open_with(Some(src), dst, path, OPEN_TIMEOUT, rcvbuf) {
                Ok(c) => {
                    class.with(|r| r.upgraded += 1);
                    return Some(c);
                }
                // A source address still held by an older socket: try another.
                Err(client::OpenError::Connect(e)) if attempt < 2 => last = Some(e),
                Err(e) => {
                    class.unexpected("open failed", &e.name());
                    return None;
                }
            }
        }
        class.unexpected("open failed", &last.unwrap_or_default());
        None
    }

    /// A raw TCP connection for `class` (no upgrade).
    fn tcp(&self, class: &Class, dst: SocketAddr, id: u32) -> Option<TcpStream> {
        class.with(|r| r.connections += 1);
        let mut last = String::new();
        for attempt in 0..3 {
            let src = addr::source_for(id, self.source_base, attempt);
            match client::tcp_connect(Some(src), dst, OPEN_TIMEOUT) {
                Ok(s) => return Some(s),
                Err(e) => last = e.to_string(),
            }
        }
        class.unexpected("connect failed", &last);
        None
    }

    /// Sleep `d`, waking early at the stop.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopped() {
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }
}

/// xorshift64*: cheap deterministic choices.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// `n` pseudo-random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Payload size of echo message `seq`: small, control-sized edges, medium and a few large.
pub fn echo_size(seq: u64) -> usize {
    const SIZES: [usize; 8] = [20, 125, 126, 700, 20, 3000, 64, 16_000];
    SIZES[(seq % SIZES.len() as u64) as usize]
}

/// Build numbered message `seq` of connection `id` (payload layout of `percore load`).
fn numbered(id: u32, seq: u64, size: usize) -> Vec<u8> {
    let mut m = vec![0u8; size];
    payload::write(
        &mut m,
        Stamp {
            conn: id,
            seq,
            ts_ns: mono_ns(),
        },
        payload::Fill::Pattern,
    );
    m
}

/// The header of a numbered message, before checking its body.
fn stamp_of(m: &[u8]) -> Option<Stamp> {
    if m.len() < payload::HEADER_BYTES {
        return None;
    }
    let mut c = [0u8; 4];
    c.copy_from_slice(&m[0..4]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&m[4..12]);
    let mut t = [0u8; 8];
    t.copy_from_slice(&m[12..20]);
    Some(Stamp {
        conn: u32::from_le_bytes(c),
        seq: u64::from_le_bytes(s),
        ts_ns: u64::from_le_bytes(t),
    })
}

/// Frames of numbered message `seq`: most whole; every seventh in three fragments with a ping
/// between them (legal, and exercises reassembly around control frames).
fn message_frames(m: &[u8], seq: u64) -> Vec<u8> {
    if seq % 7 != 3 || m.len() < 3 {
        return client::frame(true, op::BINARY, m);
    }
    let (a, rest) = m.split_at(m.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut out = client::frame(false, op::BINARY, a);
    client::push_frame(&mut out, true, op::PING, &seq.to_le_bytes());
    client::push_frame(&mut out, false, op::CONT, b);
    client::push_frame(&mut out, true, op::CONT, c);
    out
}

/// Round-trip times of the echo class, microseconds.
pub type Rtt = Mutex<hdrhistogram::Histogram<u64>>;

/// One sender of numbered messages that come back to it (echo, or broadcast to the sender):
/// paced at `rate`, at most `window` in flight, each checked exactly once and in order.
/// Returns when the stop is reached and every answer came (or the drain deadline passed), or
/// when the connection failed; returns false if it failed.
#[allow(clippy::too_many_arguments)]
fn numbered_session(
    ctx: &Ctx,
    class: &Class,
    c: &mut Client,
    id: u32,
    rate: f64,
    window: u64,
    rtt: Option<&Rtt>,
    on_sent: &dyn Fn(u64),
) -> bool {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut seq_rx = Sequence::default();
    let mut sent: u64 = 0;
    let mut in_flight: std::collections::VecDeque<(u64, Instant)> = Default::default();
    let mut next_send = Instant::now();
    let mut drain_until: Option<Instant> = None;
    let lose = |n: u64| class.with(|r| r.lost += n);
    loop {
        let now = Instant::now();
        if drain_until.is_none() && ctx.stopped() {
            drain_until = Some(now + DRAIN);
        }
        if let Some(d) = drain_until {
            if in_flight.is_empty() {
                return true;
            }
            if now >= d {
                class.unexpected(
                    "lost at the end",
                    &format!("{} unanswered", in_flight.len()),
                );
                lose(in_flight.len() as u64);
                return false;
            }
        } else if now >= next_send && (in_flight.len() as u64) < window {
            let m = numbered(id, sent, echo_size(sent));
            if c.write(&message_frames(&m, sent)).is_err() {
                class.unexpected("write failed", &format!("conn {id} seq {sent}"));
                lose(in_flight.len() as u64);
                return false;
            }
            in_flight.push_back((sent, now));
            sent += 1;
            on_sent(sent);
            class.with(|r| r.messages_sent += 1);
            // Paced, without bursting to catch up after a stall.
            next_send = (next_send + interval).max(now - interval);
        }
        if let Some(&(seq, at)) = in_flight.front() {
            if now.duration_since(at) > ECHO_DEADLINE {
                class.unexpected("echo timeout", &format!("conn {id} seq {seq}"));
                lose(in_flight.len() as u64);
                return false;
            }
        }
        let wait_to = if drain_until.is_some() || (in_flight.len() as u64) >= window {
            now + Duration::from_millis(100)
        } else {
            next_send.max(now + Duration::from_micros(200))
        };
        match c.next_answering(wait_to) {
            Ok(Ev::Data(m)) => {
                let Some(st) = stamp_of(&m) else {
                    class.with(|r| r.corrupt += 1);
                    class.unexpected("corrupt message", &format!("{} bytes", m.len()));
                    continue;
                };
                if st.conn != id
                    || payload::read(&m, echo_size(st.seq), payload::Fill::Pattern).is_err()
                {
                    class.with(|r| r.corrupt += 1);
                    class.unexpected(
                        "corrupt message",
                        &format!("conn {} seq {}", st.conn, st.seq),
                    );
                    continue;
                }
                match seq_rx.accept(st.seq) {
                    Arrival::InOrder | Arrival::Late | Arrival::Ahead => {
                        class.with(|r| r.messages_received += 1);
                        if let Some(pos) = in_flight.iter().position(|&(s, _)| s == st.seq) {
                            let (_, at) = in_flight.remove(pos).unwrap_or((0, now));
                            if let Some(h) = rtt {
                                let us = at.elapsed().as_micros() as u64;
                                let _ = h.lock().map(|mut h| h.record(us.max(1)));
                            }
                        }
                    }
                    Arrival::Duplicate => {
                        class.with(|r| r.duplicates += 1);
                        class.unexpected("duplicate", &format!("conn {id} seq {}", st.seq));
                    }
                    Arrival::Corrupt => {
                        class.with(|r| r.corrupt += 1);
                        class.unexpected("corrupt message", &format!("seq {}", st.seq));
                    }
                }
                if seq_rx.out_of_order > 0 {
                    class.with(|r| r.out_of_order += seq_rx.out_of_order);
                    class.unexpected("out of order", &format!("conn {id} seq {}", st.seq));
                    seq_rx.out_of_order = 0;
                }
            }
            Ok(Ev::Pong(_)) => {}
            Ok(Ev::Close(code)) => {
                class.unexpected(&format!("server closed {code:?}"), &format!("conn {id}"));
                lose(in_flight.len() as u64);
                return false;
            }
            Ok(Ev::Ping(_)) => {}
            Err(End::Timeout) => {}
            Err(e) => {
                class.unexpected(e.name(), &format!("conn {id} after {sent} sent"));
                lose(in_flight.len() as u64);
                return false;
            }
        }
    }
}

/// Close a well-behaved connection: close 1000, expect 1000 back and the server's EOF.
fn close_well(class: &Class, mut c: Client) {
    match c.close_normally(Instant::now() + Duration::from_secs(5)) {
        Ok(Some(1000)) => class.expected("closed 1000"),
        Ok(code) => class.unexpected("close reply", &format!("{code:?}")),
        Err(e) => class.unexpected("close reply", e.name()),
    }
}

/// Echo: numbered messages at `echo_rate`, up to 16 in flight, every echo checked.
pub fn echo(ctx: &Ctx, class: &Class, rtt: &Rtt) {
    while !ctx.stopped() {
        let id = ctx.id();
        let Some(mut c) = ctx.open(class, ctx.echo, "/", id) else {
            ctx.pause(Duration::from_secs(1));
            continue;
        };
        if numbered_session(
            ctx,
            class,
            &mut c,
            id,
            ctx.rates.echo_rate,
            16,
            Some(rtt),
            &|_| {},
        ) {
            close_well(class, c);
        } else {
            c.reset();
            ctx.pause(Duration::from_millis(200));
        }
    }
}

/// Broadcast publisher: numbered messages to the broadcast server, which sends them to every
/// connection, this one included (so it checks them like echoes). Waits for the subscribers.
pub fn publisher(ctx: &Ctx, class: &Class) {
    let ready_by = Instant::now() + Duration::from_secs(20);
    while (ctx.subscribers_ready.load(Relaxed) as usize) < ctx.rates.subscribers
        && Instant::now() < ready_by
        && !ctx.stopped()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    while !ctx.stopped() {
        let id = ctx.id();
        let Some(mut c) = ctx.open(class, ctx.bcast, "/", id) else {
            ctx.pause(Duration::from_secs(1));
            continue;
        };
        let record = |n: u64| {
            if let Ok(mut p) = ctx.published.lock() {
                p.insert(id, n);
            }
        };
        let ok = numbered_session(
            ctx,
            class,
            &mut c,
            id,
            ctx.rates.publish_rate,
            64,
            None,
            &record,
        );
        if ok {
            close_well(class, c);
        } else {
            c.reset();
            ctx.pause(Duration::from_millis(200));
        }
    }
    ctx.publisher_done.store(true, Relaxed);
}

/// The publisher is done: it said so, or the run stopped long enough ago that it must have
/// (a publisher thread that died must not keep the subscribers waiting forever).
fn publisher_finished(ctx: &Ctx) -> bool {
    ctx.publisher_done.load(Relaxed) || ctx.stopped_at().is_some_and(|t| t.elapsed() > DRAIN * 3)
}

/// Broadcast subscriber: connects once, then checks that every publish arrives exactly once
/// and in order, until the publisher is done and everything it sent arrived.
pub fn subscriber(ctx: &Ctx, class: &Class) {
    let id = ctx.id();
    let Some(mut c) = ctx.open(class, ctx.bcast, "/", id) else {
        ctx.subscribers_ready.fetch_add(1, Relaxed);
        return;
    };
    ctx.subscribers_ready.fetch_add(1, Relaxed);
    let mut from: HashMap<u32, Sequence> = HashMap::new();
    let mut done_at: Option<Instant> = None;
    let received_all = |from: &HashMap<u32, Sequence>| {
        let p = ctx.published.lock().map(|p| p.clone()).unwrap_or_default();
        p.iter()
            .all(|(pid, n)| from.get(pid).map_or(0, |s| s.unique) >= *n)
    };
    let lost = |from: &HashMap<u32, Sequence>| -> u64 {
        let p = ctx.published.lock().map(|p| p.clone()).unwrap_or_default();
        p.iter()
            .map(|(pid, n)| n.saturating_sub(from.get(pid).map_or(0, |s| s.unique)))
            .sum()
    };
    loop {
        if publisher_finished(ctx) {
            let d = *done_at.get_or_insert_with(|| Instant::now() + DRAIN);
            if received_all(&from) {
                close_well(class, c);
                return;
            }
            if Instant::now() >= d {
                let n = lost(&from);
                class.with(|r| r.lost += n);
                class.unexpected("lost at the end", &format!("{n} publishes never arrived"));
                c.reset();
                return;
            }
        }
        match c.next_answering(Instant::now() + Duration::from_millis(100)) {
            Ok(Ev::Data(m)) => {
                let ok = stamp_of(&m)
                    .filter(|st| {
                        payload::read(&m, echo_size(st.seq), payload::Fill::Pattern).is_ok()
                    })
                    .map(|st| from.entry(st.conn).or_default().accept(st.seq));
                match ok {
                    Some(Arrival::InOrder) | Some(Arrival::Late) => {
                        class.with(|r| r.messages_received += 1)
                    }
                    Some(Arrival::Ahead) => {
                        class.with(|r| {
                            r.messages_received += 1;
                            r.out_of_order += 1
                        });
                        class.unexpected("out of order", &format!("subscriber {id}"));
                    }
                    Some(Arrival::Duplicate) => {
                        class.with(|r| r.duplicates += 1);
                        class.unexpected("duplicate", &format!("subscriber {id}"));
                    }
                    Some(Arrival::Corrupt) | None => {
                        class.with(|r| r.corrupt += 1);
                        class.unexpected("corrupt message", &format!("subscriber {id}"));
                    }
                }
            }
            Ok(_) | Err(End::Timeout) => {}
            Err(e) => {
                // The subscription is gone: everything published from now on is lost to it;
                // counted at the end against what the publisher sent.
                class.unexpected(e.name(), &format!("subscriber {id}"));
                while !publisher_finished(ctx) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let n = lost(&from);
                class.with(|r| r.lost += n);
                return;
            }
        }
    }
}

/// Churn: open, one message, close handshake; `share` of `churn_rate` per thread. Four in five
/// go to the echo server (one echo each); one in five subscribes on the broadcast server and
/// waits for one publish.
pub fn churn(ctx: &Ctx, class: &Class, share: f64, index: u64) {
    let rate = (ctx.rates.churn_rate * share).max(0.01);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut n: u64 = index;
    while !ctx.stopped() {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        next = (next + interval).max(now - interval);
        n += 1;
        let id = ctx.id();
        let to_broadcast = n.is_multiple_of(5);
        let dst = if to_broadcast { ctx.bcast } else { ctx.echo };
        let Some(mut c) = ctx.open(class, dst, "/", id) else {
            continue;
        };
        let deadline = Instant::now() + ECHO_DEADLINE;
        if to_broadcast {
            // Publishes come many times a second while the run lasts; at its end the
            // publisher stops, so a subscriber that was still waiting then is not judged.
            let got = loop {
                match c.next_answering(Instant::now() + Duration::from_millis(100)) {
                    Err(End::Timeout) if ctx.stopped() => break None,
                    Err(End::Timeout) if Instant::now() < deadline => {}
                    r => break Some(r),
                }
            };
            match got {
                None => {}
                Some(Ok(Ev::Data(m))) if stamp_of(&m).is_some() => {
                    class.with(|r| r.messages_received += 1)
                }
                Some(Ok(ev)) => class.unexpected("no publish", &format!("{ev:?}")),
                Some(Err(e)) => class.unexpected("no publish", e.name()),
            }
        } else {
            let m = numbered(id, 0, 20 + (n % 100) as usize);
            class.with(|r| r.messages_sent += 1);
            if c.send(true, op::BINARY, &m).is_err() {
                class.with(|r| r.lost += 1);
                class.unexpected("write failed", &format!("conn {id}"));
                c.reset();
                continue;
            }
            match c.next_answering(deadline) {
                Ok(Ev::Data(e)) if e == m => class.with(|r| r.messages_received += 1),
                Ok(ev) => {
                    class.with(|r| r.lost += 1);
                    class.unexpected("no echo", &format!("{ev:?}"));
                }
                Err(e) => {
                    class.with(|r| r.lost += 1);
                    class.unexpected("no echo", e.name());
                }
            }
        }
        close_well(class, c);
    }
}

/// Read from `c` until the server's close frame; name the outcome ("close 1009", "eof",
/// "timeout", ...). Data messages and pongs on the way are skipped, pings answered.
fn outcome(c: &mut Client, within: Duration) -> String {
    match c.expect_close(Instant::now() + within) {
        Ok(Some(code)) => format!("close {code}"),
        Ok(None) => "close without code".into(),
        Err(e) => e.name().into(),
    }
}

/// Record `got` as expected when it is one of `want`.
fn judge(class: &Class, got: &str, want: &[&str], what: &str) {
    if want.contains(&got) {
        class.expected(got);
    } else {
        class.unexpected(got, &format!("{what}: expected {}", want.join(" or ")));
    }
}

/// Never-reading: writes 60 KiB messages and never reads the echoes (256 KiB receive buffer,
/// so the kernel holds little of them), until the server gives up on it (its writes fail) or
/// 16 MiB are written (the server needs about 5 MiB: its 4 MiB socket buffer, then the 1 MiB
/// send queue); then reads what is left. The server must close it (slow consumer:
/// close 1008, or the connection ends while its close frame is stuck behind the unread
/// echoes). One at a time, a pause of 2 s between.
pub fn never_reading(ctx: &Ctx, class: &Class) {
    let chunk = client::frame(true, op::BINARY, &vec![b'n'; 60 << 10]);
    while !ctx.stopped() {
        let id = ctx.id();
        let Some(mut c) = ctx.open_with(class, ctx.echo, "/", id, Some(256 << 10)) else {
            ctx.pause(Duration::from_secs(2));
            continue;
        };
        let _ = c.s.set_write_timeout(Some(Duration::from_millis(500)));
        let mut written = 0usize;
        let mut blocked_since: Option<Instant> = None;
        let ended_by_server = loop {
            // Resume inside the frame a short write stopped in.
            let pos = written % chunk.len();
            match c.s.write(&chunk[pos..]) {
                Ok(n) => {
                    written += n;
                    blocked_since = None;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let since = *blocked_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(3) {
                        break false;
                    }
                }
                Err(_) => break true,
            }
            if written > 16 << 20 || ctx.stopped() {
                break false;
            }
        };
        class.with(|r| r.messages_sent += (written / chunk.len()) as u64);
        let got = if ended_by_server {
            "write failed: closed by server".to_string()
        } else {
            outcome(&mut c, Duration::from_secs(10))
        };
        judge(
            class,
            &got,
            &[
                "write failed: closed by server",
                "close 1008",
                "close 1013",
                "eof",
                "reset",
            ],
            &format!("after {} KiB unread", written >> 10),
        );
        c.reset();
        ctx.pause(Duration::from_secs(2));
    }
}

/// Slowloris: up to 8 upgrade requests sent one byte every 250 ms; the server must drop each
/// by its handshake deadline.
pub fn slowloris(ctx: &Ctx, class: &Class) {
    let req = client::upgrade_request("/");
    let max_open = (8.0 * ctx.rates.hostile).ceil().max(1.0) as usize;
    // (socket, bytes sent, opened at)
    let mut open: Vec<(TcpStream, usize, Instant)> = Vec::new();
    let bound = ctx.limits.handshake_timeout * 2 + Duration::from_secs(2);
    while !ctx.stopped() {
        if open.len() < max_open {
            if let Some(s) = ctx.tcp(class, ctx.echo, ctx.id()) {
                let _ = s.set_nonblocking(true);
                open.push((s, 0, Instant::now()));
            }
        }
        open.retain_mut(|(s, sent, at)| {
            let mut b = [0u8; 256];
            let closed = match s.read(&mut b) {
                Ok(0) => true,
                Ok(_) => {
                    class.unexpected("answered", "the server answered a partial request");
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            let closed = closed || (*sent < req.len() && s.write(&req[*sent..*sent + 1]).is_err());
            if closed {
                let age = at.elapsed();
                if age >= ctx.limits.handshake_timeout / 2 && age <= bound {
                    class.expected("dropped at the handshake deadline");
                } else {
                    class.unexpected("dropped", &format!("after {age:?}"));
                }
                return false;
            }
            *sent += 1;
            if at.elapsed() > bound {
                class.unexpected("still open", &format!("after {:?}", at.elapsed()));
                crate::sys::set_linger_zero(s);
                return false;
            }
            true
        });
        ctx.pause(Duration::from_millis(250));
    }
    for (s, ..) in open {
        crate::sys::set_linger_zero(&s);
    }
}

/// RST mid-frame: upgrade, send the header and half the payload of a large frame, reset.
/// 20 per second.
pub fn rst_mid_frame(ctx: &Ctx, class: &Class) {
    let len = ctx.limits.message_bytes_max - 1024;
    let mut half = Vec::new();
    half.push(0x82);
    client::push_len(&mut half, len as u64);
    half.extend_from_slice(&[1, 2, 3, 4]);
    half.extend_from_slice(&vec![0x55; len / 2]);
    let pause = Duration::from_secs_f64(1.0 / (20.0 * ctx.rates.hostile).max(0.01));
    while !ctx.stopped() {
        if let Some(mut c) = ctx.open(class, ctx.echo, "/", ctx.id()) {
            if c.write(&half).is_ok() {
                class.expected("reset mid-frame");
            } else {
                class.unexpected("write failed", "before the reset");
            }
            c.reset();
        }
        ctx.pause(pause);
    }
}

/// Ping flood: 1000 pings in one burst, numbered; the pongs must be an in-order subsequence
/// (a server may answer only the latest of several pings) ending with the last ping; then a
/// normal close. One burst a second.
pub fn ping_flood(ctx: &Ctx, class: &Class) {
    const PINGS: u64 = 1000;
    while !ctx.stopped() {
        if let Some(mut c) = ctx.open(class, ctx.echo, "/", ctx.id()) {
            let mut burst = Vec::new();
            for i in 0..PINGS {
                let mut p = i.to_be_bytes().to_vec();
                p.resize(125, b'p');
                client::push_frame(&mut burst, true, op::PING, &p);
            }
            if c.write(&burst).is_err() {
                class.unexpected("write failed", "ping burst");
                c.reset();
                ctx.pause(Duration::from_secs(1));
                continue;
            }
            class.with(|r| r.messages_sent += PINGS);
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut last: Option<u64> = None;
            let got = loop {
                match c.next(deadline) {
                    Ok(Ev::Pong(p)) if p.len() == 125 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&p[..8]);
                        let i = u64::from_be_bytes(b);
                        if last.is_some_and(|l| i <= l) || i >= PINGS {
                            break format!("pong {i} out of order");
                        }
                        last = Some(i);
                        class.with(|r| r.messages_received += 1);
                        if i == PINGS - 1 {
                            break "all pings answered".to_string();
                        }
                    }
                    Ok(ev) => break format!("unexpected {ev:?}"),
                    Err(e) => break format!("pongs stopped: {}", e.name()),
                }
            };
            judge(class, &got, &["all pings answered"], "ping flood");
            close_well(class, c);
        }
        ctx.pause(Duration::from_secs_f64(1.0 / ctx.rates.hostile.max(0.01)));
    }
}

/// 1-byte fragment flood up to the message limit: a text message in 1-byte fragments. Every
/// other flood stops exactly at the limit (the echo must come back whole), the others go one
/// byte past it (close 1009). One flood every 2 s.
pub fn fragment_flood(ctx: &Ctx, class: &Class) {
    let limit = ctx.limits.message_bytes_max;
    let mut n = 0u64;
    while !ctx.stopped() {
        n += 1;
        let over = n.is_multiple_of(2);
        let total = if over { limit + 1 } else { limit };
        if let Some(mut c) = ctx.open(class, ctx.echo, "/", ctx.id()) {
            let mut ok = true;
            let mut batch = Vec::with_capacity(8192 * 7);
            for i in 0..total {
                let opcode = if i == 0 { op::TEXT } else { op::CONT };
                client::push_frame(&mut batch, i + 1 == total, opcode, b"f");
                if batch.len() >= 8192 * 7 || i + 1 == total {
                    if c.write(&batch).is_err() {
                        ok = false;
                        break;
                    }
                    batch.clear();
                }
            }
            class.with(|r| r.messages_sent += 1);
            let got = if over {
                outcome(&mut c, Duration::from_secs(10))
            } else if !ok {
                "write failed".to_string()
            } else {
                match c.next_answering(Instant::now() + Duration::from_secs(10)) {
                    Ok(Ev::Data(m)) if m.len() == limit && m.iter().all(|&b| b == b'f') => {
                        class.with(|r| r.messages_received += 1);
                        "echoed at the limit".to_string()
                    }
                    Ok(Ev::Data(m)) => format!("echo of {} bytes", m.len()),
                    Ok(ev) => format!("{ev:?}"),
                    Err(e) => e.name().to_string(),
                }
            };
            if over {
                // The server may fail the connection before the last fragment is written.
                judge(
                    class,
                    &got,
                    &["close 1009"],
                    "one byte past the message limit",
                );
                c.reset();
            } else {
                judge(
                    class,
                    &got,
                    &["echoed at the limit"],
                    "exactly the message limit",
                );
                close_well(class, c);
            }
        }
        ctx.pause(Duration::from_secs_f64(2.0 / ctx.rates.hostile.max(0.01)));
    }
}

/// Frames past the limits: a frame one byte too long (1009), a 2^40-byte frame (1009), a
/// 64-bit length with its top bit set (1002), a fragmented message past the limit (1009), a
/// ping with 126 bytes (1002). Five a second.
pub fn oversized(ctx: &Ctx, class: &Class) {
    let limit = ctx.limits.message_bytes_max as u64;
    let mut n = 0u64;
    let pause = Duration::from_secs_f64(1.0 / (5.0 * ctx.rates.hostile).max(0.01));
    while !ctx.stopped() {
        n += 1;
        let header = |first: u8, len: u64| {
            let mut h = vec![first];
            client::push_len(&mut h, len);
            h.extend_from_slice(&[9, 8, 7, 6]);
            h
        };
        let (bytes, want, what) = match n % 5 {
            0 => (
                header(0x82, limit + 1),
                "close 1009",
                "frame one byte past the limit",
            ),
            1 => (header(0x82, 1 << 40), "close 1009", "2^40-byte frame"),
            2 => {
                let mut h = vec![0x82, 0x80 | 127];
                h.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
                h.extend_from_slice(&[9, 8, 7, 6]);
                (h, "close 1002", "64-bit length with the top bit set")
            }
            3 => {
                let half = vec![b'o'; (limit / 2 + 1) as usize];
                let mut f = client::frame(false, op::BINARY, &half);
                client::push_frame(&mut f, true, op::CONT, &half);
                (f, "close 1009", "two fragments past the message limit")
            }
            _ => (
                client::frame(true, op::PING, &[b'p'; 126]),
                "close 1002",
                "126-byte ping",
            ),
        };
        if let Some(mut c) = ctx.open(class, ctx.echo, "/", ctx.id()) {
            let _ = c.write(&bytes);
            let got = outcome(&mut c, Duration::from_secs(10));
            judge(class, &got, &[want], what);
            c.reset();
        }
        ctx.pause(pause);
    }
}

/// Invalid UTF-8 in text: a whole frame, a surrogate, a code point split across fragments, a
/// close reason. Each must be failed with 1007. Five a second.
pub fn invalid_utf8(ctx: &Ctx, class: &Class) {
    let mut n = 0u64;
    let pause = Duration::from_secs_f64(1.0 / (5.0 * ctx.rates.hostile).max(0.01));
    while !ctx.stopped() {
        n += 1;
        let (bytes, what) = match n % 4 {
            0 => (
                client::frame(true, op::TEXT, b"valid then \xff"),
                "0xFF in a text frame",
            ),
            1 => (
                client::frame(true, op::TEXT, b"ab\xed\xa0\x80cd"),
                "a UTF-16 surrogate",
            ),
            2 => {
                let mut f = client::frame(false, op::TEXT, b"euro \xe2\x82");
                client::push_frame(&mut f, true, op::CONT, b"x");
                (f, "a code point broken across fragments")
            }
            _ => (
                client::frame(true, op::CLOSE, &close_payload(1000, b"bye \xc3\x28")),
                "a close reason",
            ),
        };
        if let Some(mut c) = ctx.open(class, ctx.echo, "/", ctx.id()) {
            let _ = c.write(&bytes);
            let got = outcome(&mut c, Duration::from_secs(10));
            judge(class, &got, &["close 1007"], what);
            c.reset();
        }
        ctx.pause(pause);
    }
}

/// Random garbage: half the time instead of the upgrade request (an HTTP 4xx and the end of
/// the connection, or the end at the handshake deadline), half the time after the upgrade (a
/// close frame with a protocol error code, or a server still waiting for the rest of a frame
/// it cannot complete yet). Five a second.
pub fn garbage(ctx: &Ctx, class: &Class) {
    let mut rng = Rng::new(ctx.seed ^ 0x6761_7262);
    let mut n = 0u64;
    let pause = Duration::from_secs_f64(1.0 / (5.0 * ctx.rates.hostile).max(0.01));
    while !ctx.stopped() {
        n += 1;
        let len = 64 + (rng.next() % 960) as usize;
        let mut junk = rng.bytes(len);
        // No close frame first: the server would answer it with its code, which is no error.
        if junk[0] & 0x0F == op::CLOSE {
            junk[0] ^= 0x01;
        }
        if n.is_multiple_of(2) {
            if let Some(mut s) = ctx.tcp(class, ctx.echo, ctx.id()) {
                let _ = s.write_all(&junk);
                let within = ctx.limits.handshake_timeout * 2 + Duration::from_secs(2);
                let _ = s.set_read_timeout(Some(within));
                let mut resp = Vec::new();
                let got = match s.read_to_end(&mut resp) {
                    _ if resp.starts_with(b"HTTP/1.1 4") => "http 4xx".to_string(),
                    _ if resp.starts_with(b"HTTP/1.1 101") => "upgraded".to_string(),
                    Ok(_) if resp.is_empty() => "eof".to_string(),
                    Ok(_) => "other answer".to_string(),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => "reset".to_string(),
                    Err(_) => "still open".to_string(),
                };
                judge(
                    class,
                    &got,
                    &["http 4xx", "eof", "reset"],
                    "garbage instead of a request",
                );
                crate::sys::set_linger_zero(&s);
            }
        } else if let Some(mut c) = ctx.open(class, ctx.echo, "/", ctx.id()) {
            let _ = c.write(&junk);
            let got = match outcome(&mut c, Duration::from_secs(1)).as_str() {
                "timeout" => "waits for more".to_string(),
                o => o.to_string(),
            };
            judge(
                class,
                &got,
                &["close 1002", "close 1007", "close 1009", "waits for more"],
                "garbage after the upgrade",
            );
            c.reset();
        }
        ctx.pause(pause);
    }
}
