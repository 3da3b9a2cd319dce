//! One event loop per thread (mio, edge triggered), many connections each.
//!
//! A thread opens its range of connection ids (bounded number in flight, optional ramp),
//! reports ready, waits for the common start time, runs the measured window, reports the
//! window's end, keeps its connections open until released (so the server can be measured
//! with every connection still there) and then resets them all.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::ops::{ControlFlow, Range};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::addr;
use super::payload::{self, Mismatch, Stamp};
use super::report::{self, Errors, Partial};
use super::schedule::Schedule;
use super::tls::Tls;
use super::ws::{self, Event, Op};
use crate::sys::{self, mono_ns};

/// What the connections do once open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each connection sends messages and checks the echoes.
    Echo,
    /// Publishers send; every connection receives every publisher's messages.
    Broadcast,
    /// Connect, then only answer pings.
    Idle,
}

impl Mode {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Broadcast => "broadcast",
            Mode::Idle => "idle",
        }
    }
}

/// Settings shared by every thread of a run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Servers; connection `id` goes to `targets[id % targets.len()]` (never empty).
    pub targets: Vec<super::Target>,
    /// Behaviour once connected.
    pub mode: Mode,
    /// Payload bytes per message (>= payload::HEADER_BYTES).
    pub size: usize,
    /// Publishers (broadcast): connection ids 0..publishers publish.
    pub publishers: u32,
    /// Connections in the whole run (all processes).
    pub total_connections: u32,
    /// Open-loop rate for the whole run (messages/s); None = closed loop.
    pub rate: Option<f64>,
    /// Connection ramp for the whole run (connections/s); None = as fast as possible.
    pub ramp: Option<f64>,
    /// Threads in the whole run (for the ramp share).
    pub total_threads: usize,
    /// Connects + handshakes in flight per thread.
    pub in_flight: u32,
    /// Deadline for TCP connect + handshake, and for an expected echo.
    pub timeout_ns: u64,
    /// Bind explicit 127.0.0.x source addresses (loopback destinations only).
    pub explicit_sources: bool,
    /// Rotation of the source address window for this run.
    pub source_base: u32,
    /// wss:// targets: the client config.
    pub tls: Option<Arc<percore::tls::rustls::ClientConfig>>,
    /// Offer permessage-deflate, require it, compress what is sent and inflate what comes.
    pub deflate: bool,
    /// What fills the payloads.
    pub fill: payload::Fill,
}

impl RunConfig {
    /// Open-loop rate for a thread owning `ids` (messages/s).
    pub fn thread_rate(&self, ids: &Range<u32>) -> Option<f64> {
        let rate = self.rate?;
        match self.mode {
            Mode::Echo => Some(rate * ids.len() as f64 / self.total_connections.max(1) as f64),
            Mode::Broadcast => {
                let pubs = ids.end.min(self.publishers).saturating_sub(ids.start);
                Some(rate * pubs as f64 / self.publishers.max(1) as f64)
            }
            Mode::Idle => None,
        }
    }
}

/// Coordination between the threads of one process and whoever drives them.
#[derive(Default)]
pub struct Shared {
    /// Threads that finished their connect phase.
    pub ready: AtomicUsize,
    /// Start of the measured window (CLOCK_MONOTONIC ns); 0 = not given yet. Set with
    /// [`Shared::start`], after `end_ns`.
    pub go_ns: AtomicU64,
    /// End of the measured window.
    pub end_ns: AtomicU64,
    /// Threads past the end of the window.
    pub ended: AtomicUsize,
    /// Close everything and return.
    pub release: AtomicBool,
    /// Give up now (the driver went away).
    pub abort: AtomicBool,
    /// Progress: connections established.
    pub established: AtomicU64,
    /// Progress: messages received in the window.
    pub messages: AtomicU64,
    /// Progress: errors.
    pub errors: AtomicU64,
    /// Progress: connections open now (a gauge).
    pub open: AtomicU64,
    /// Progress: the largest p99 latency (ns) a thread measured over its last second, since
    /// the driver last took it (`swap(0)`).
    pub live_p99_ns: AtomicU64,
}

impl Shared {
    /// Announce the measured window `[go_ns, end_ns)` to the threads.
    pub fn start(&self, go_ns: u64, end_ns: u64) {
        self.end_ns.store(end_ns, Relaxed);
        // Release: a thread that sees go_ns (Acquire) also sees end_ns.
        self.go_ns.store(go_ns, Release);
    }
}

/// The work of one thread.
#[derive(Clone, Debug)]
pub struct ThreadJob {
    /// Global connection ids this thread owns.
    pub ids: Range<u32>,
    /// CPU to pin to.
    pub cpu: Option<usize>,
    /// Index of this thread in the whole run (for the ramp share).
    pub index: usize,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum State {
    Connecting,
    Handshaking,
    Open,
}

struct Conn {
    stream: TcpStream,
    /// wss://: the connection's TLS (its records go through `stream`).
    tls: Option<Box<Tls>>,
    state: State,
    started_ns: u64,
    key: String,
    /// Unconsumed bytes (partial frame or partial handshake response).
    tail: Vec<u8>,
    decoder: ws::Decoder,
    flow: Flow,
}

impl Conn {
    /// Read plaintext (through TLS for wss://).
    fn read(&mut self, buf: &mut [u8], cbuf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.stream.read(buf),
            Some(t) => t.read(&mut self.stream, buf, cbuf),
        }
    }

    /// Is anything waiting to be written (plaintext, or TLS records)?
    fn wants_write(&self) -> bool {
        !self.flow.wbuf.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }
}

/// The message flow of one connection (apart from the socket and decoder, so that the
/// decoder's callback can update it).
struct Flow {
    id: u32,
    /// Bytes waiting for the socket to become writable.
    wbuf: Vec<u8>,
    /// Next sequence number to send.
    next_seq: u64,
    /// Next sequence number expected back (echo mode).
    expect_seq: u64,
    /// Messages sent and not yet received back (own messages).
    outstanding: u64,
    /// Last time an expected message arrived (or the first was sent).
    progress_ns: u64,
    /// Next expected sequence number per publisher (broadcast mode).
    next_from: Box<[u64]>,
    /// Open-loop echo: intended send times of the messages not yet answered, oldest first
    /// (so those still unanswered when the run ends can be counted, not forgotten).
    pending_ts: VecDeque<u64>,
    /// permessage-deflate terms and compressor (`--deflate`).
    z: Option<Box<ws::ConnDeflate>>,
    /// A ping from the server was answered on this connection.
    pinged: bool,
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Phase {
    Connecting,
    Ready,
    Running,
    /// Open loop, after the window: no more sends; answers to messages intended inside the
    /// window are still timed, until all are in or the drain time is over.
    Draining,
    Ended,
}

const SCAN_INTERVAL_NS: u64 = 100_000_000;
/// A send due within this is waited for by spinning: waking a sleeping thread takes about as
/// long on this kind of host.
const SPIN_NS: u64 = 50_000;
/// The poll token of the wake-up timer (connections use slab keys, far below).
const TIMER_TOKEN: Token = Token(usize::MAX);

/// A timerfd in the thread's poll that wakes it at a CLOCK_MONOTONIC instant to the
/// microsecond: epoll_wait's own timeout counts whole milliseconds (and adds the thread's timer
/// slack), which would make open-loop sends leave up to a millisecond late, and latencies
/// counted from their intended send times look that much worse.
struct WakeTimer {
    fd: rustix::fd::OwnedFd,
    armed_ns: u64,
}

impl WakeTimer {
    fn new(poll: &Poll) -> Option<WakeTimer> {
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        use std::os::fd::AsRawFd;
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .ok()?;
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&fd.as_raw_fd()),
                TIMER_TOKEN,
                Interest::READABLE,
            )
            .ok()?;
        Some(WakeTimer { fd, armed_ns: 0 })
    }

    /// Fire at `at_ns` (CLOCK_MONOTONIC); one pending deadline at a time.
    fn arm(&mut self, at_ns: u64) {
        use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
        if at_ns == self.armed_ns {
            return;
        }
        let ts = |ns: u64| Timespec {
            tv_sec: (ns / 1_000_000_000) as i64,
            tv_nsec: (ns % 1_000_000_000) as i64,
        };
        let spec = Itimerspec {
            it_interval: ts(0),
            it_value: ts(at_ns.max(1)),
        };
        if timerfd_settime(&self.fd, TimerfdTimerFlags::ABSTIME, &spec).is_ok() {
            self.armed_ns = at_ns;
        }
    }

    /// Consume the expiry (the descriptor stays readable until read).
    fn clear(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut buf);
    }
}
/// How often a thread publishes the p99 of its last interval for the progress line (twice
/// per line, so every line has a fresh one).
const LIVE_INTERVAL_NS: u64 = 500_000_000;
/// Longest wait after an open-loop window for the answers to its messages (bounded further
/// by `--timeout`). Messages still unanswered then are recorded at their age at that moment:
/// a lower bound, so a server that stops answering cannot improve its percentiles.
pub const DRAIN_MAX_NS: u64 = 2_000_000_000;

/// Bumps the counter of one error kind.
type CountError = fn(&mut Errors);

struct Thread {
    cfg: Arc<RunConfig>,
    shared: Arc<Shared>,
    poll: Poll,
    conns: Slab<Conn>,
    scratch: Vec<u8>,
    /// wss://: ciphertext as read, before it is opened into `scratch`.
    cbuf: Vec<u8>,
    msg: Vec<u8>,
    /// The thread's decompressor and shared compressors (`--deflate`).
    tin: ws::ThreadInflate,
    tout: ws::ThreadDeflate,
    hist: hdrhistogram::Histogram<u64>,
    /// The latencies since the last progress publication.
    live: hdrhistogram::Histogram<u64>,
    live_since: u64,
    /// Open loop: how late messages left after their intended send time.
    lag: hdrhistogram::Histogram<u64>,
    part: Partial,
    rng: u64,
    phase: Phase,
    go_ns: u64,
    cpu_at_go: u64,
    end_ns: u64,
    drain_end_ns: u64,
    /// Wakes the loop at open-loop send times (None: the poll timeout is used instead).
    timer: Option<WakeTimer>,
    pending: u32,
    reported_messages: u64,
    reported_errors: u64,
    /// Connect and handshake failures written to stderr so far (at most
    /// [`SETUP_FAILURES_LOGGED`]).
    setup_failures_logged: u32,
}

/// Most connect/handshake failures one thread describes on stderr (which connection, from
/// where, how far it got, why): enough to find them on the server side, without flooding.
const SETUP_FAILURES_LOGGED: u32 = 8;

/// Run one thread's share of the load and return what it measured.
pub fn run_thread(cfg: Arc<RunConfig>, job: ThreadJob, shared: Arc<Shared>) -> Partial {
    if let Some(cpu) = job.cpu {
        sys::pin_current_thread(cpu);
    }
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(_) => {
            let mut part = Partial {
                target: job.ids.len() as u64,
                ..Partial::default()
            };
            part.errors.connect = job.ids.len() as u64;
            shared.ready.fetch_add(1, Relaxed);
            shared.ended.fetch_add(1, Relaxed);
            return part;
        }
    };
    let scratch_len = (256 << 10).max(4 * (cfg.size + 64));
    let cfg_tls = cfg.tls.is_some();
    let timer = cfg.rate.and_then(|_| WakeTimer::new(&poll));
    let mut t = Thread {
        msg: vec![0u8; cfg.size],
        cfg,
        shared,
        poll,
        conns: Slab::with_capacity(job.ids.len()),
        scratch: vec![0u8; scratch_len],
        cbuf: if cfg_tls {
            vec![0u8; 64 << 10]
        } else {
            Vec::new()
        },
        tin: ws::ThreadInflate::default(),
        tout: ws::ThreadDeflate::default(),
        hist: report::new_histogram(),
        live: report::new_histogram(),
        live_since: 0,
        lag: report::new_histogram(),
        part: Partial {
            target: job.ids.len() as u64,
            ..Partial::default()
        },
        rng: mono_ns() ^ ((job.index as u64 + 1) << 40) | 1,
        phase: Phase::Connecting,
        go_ns: 0,
        cpu_at_go: 0,
        end_ns: 0,
        drain_end_ns: 0,
        timer,
        pending: 0,
        reported_messages: 0,
        reported_errors: 0,
        setup_failures_logged: 0,
    };
    t.run(&job);
    t.finish()
}

impl Thread {
    fn run(&mut self, job: &ThreadJob) {
        let mut events = Events::with_capacity(1024);
        let mut next_id = job.ids.start;
        let start_ns = mono_ns();
        let ramp = self
            .cfg
            .ramp
            .map(|r| r / self.cfg.total_threads.max(1) as f64);
        let mut next_scan = start_ns + SCAN_INTERVAL_NS;
        let thread_rate = self.cfg.thread_rate(&job.ids).filter(|r| *r > 0.0);
        let mut schedule: Option<Schedule> = None;
        let mut rr: Vec<usize> = Vec::new();
        let mut rr_pos = 0usize;
        let mut to_flush: Vec<usize> = Vec::new();
        loop {
            let now = mono_ns();
            if self.shared.abort.load(Relaxed) {
                return;
            }
            match self.phase {
                Phase::Connecting => {
                    while next_id < job.ids.end && self.pending < self.cfg.in_flight {
                        if let Some(r) = ramp {
                            let allowed = ((now - start_ns) as f64 / 1e9 * r) as u64 + 1;
                            if (next_id - job.ids.start) as u64 >= allowed {
                                break;
                            }
                        }
                        self.start_connect(next_id, now);
                        next_id += 1;
                    }
                    if next_id == job.ids.end && self.pending == 0 {
                        self.phase = Phase::Ready;
                        self.shared.ready.fetch_add(1, Relaxed);
                    }
                }
                Phase::Ready => {
                    let go = self.shared.go_ns.load(Acquire);
                    if go != 0 && now >= go {
                        self.go_ns = go;
                        self.cpu_at_go = sys::thread_cpu_ns();
                        self.end_ns = self.shared.end_ns.load(Relaxed);
                        self.live_since = now;
                        self.phase = Phase::Running;
                        // Open loop: the connections that send, served round robin.
                        schedule = thread_rate.map(|r| Schedule::new(go, r));
                        rr = self.conns.iter().map(|(k, _)| k).collect();
                        rr.retain(|&k| self.is_sender(k));
                        if schedule.is_none() {
                            self.start_closed_loop(now);
                        }
                    }
                }
                Phase::Running => {
                    if let Some(sch) = schedule.as_mut() {
                        // Everything due by now (all of it after a stall), each message stamped
                        // with its intended send time; nothing due at or after the window's end.
                        while !rr.is_empty() {
                            let key = rr[rr_pos % rr.len()];
                            if !self.is_sender(key) {
                                // Closed since: serve the others.
                                rr.retain(|&k| self.is_sender(k));
                                continue;
                            }
                            let Some(ts) = sch.take_due(now, self.end_ns) else {
                                break;
                            };
                            rr_pos += 1;
                            report::record(&mut self.lag, now - ts);
                            self.queue_message(key, ts);
                            to_flush.push(key);
                        }
                        to_flush.sort_unstable();
                        to_flush.dedup();
                        for key in to_flush.drain(..) {
                            self.flush(key);
                        }
                    }
                    if now >= self.end_ns {
                        self.part.cpu_ns = sys::thread_cpu_ns().saturating_sub(self.cpu_at_go);
                        self.part.open_at_end = self
                            .conns
                            .iter()
                            .filter(|(_, c)| c.state == State::Open)
                            .count() as u64;
                        self.part.pinged = self
                            .conns
                            .iter()
                            .filter(|(_, c)| c.state == State::Open && c.flow.pinged)
                            .count() as u64;
                        if schedule.is_some() && self.cfg.mode == Mode::Echo {
                            self.phase = Phase::Draining;
                            self.drain_end_ns = self.end_ns + self.cfg.timeout_ns.min(DRAIN_MAX_NS);
                        } else {
                            self.phase = Phase::Ended;
                            self.shared.ended.fetch_add(1, Relaxed);
                        }
                    }
                }
                Phase::Draining => {
                    let waiting = self
                        .conns
                        .iter()
                        .any(|(_, c)| !c.flow.pending_ts.is_empty());
                    if !waiting || now >= self.drain_end_ns {
                        self.record_unanswered(now);
                        self.phase = Phase::Ended;
                        self.shared.ended.fetch_add(1, Relaxed);
                    }
                }
                Phase::Ended => {
                    if self.shared.release.load(Relaxed) {
                        return;
                    }
                }
            }
            if now >= next_scan {
                next_scan = now + SCAN_INTERVAL_NS;
                self.scan_timeouts(now);
                self.report_progress(now);
            }
            let wait_ns = match self.phase {
                Phase::Connecting => {
                    if ramp.is_some() || self.pending >= self.cfg.in_flight {
                        1_000_000
                    } else {
                        10_000_000
                    }
                }
                Phase::Ready => {
                    let go = self.shared.go_ns.load(Relaxed);
                    if go != 0 {
                        self.wake_at(go, now, go.saturating_sub(now).min(10_000_000))
                    } else {
                        10_000_000
                    }
                }
                Phase::Running => {
                    let end = self.end_ns.saturating_sub(now).min(10_000_000);
                    match schedule.as_ref().filter(|_| !rr.is_empty()) {
                        Some(sch) => self.wake_at(sch.next_due_ns(), now, end),
                        // Closed loop: only the end of the window to wait for; its last
                        // millisecond is spun (epoll_wait counts whole milliseconds).
                        None if end < 1_000_000 => 0,
                        None => end,
                    }
                }
                Phase::Draining => self
                    .drain_end_ns
                    .saturating_sub(now)
                    .clamp(1_000_000, 10_000_000),
                Phase::Ended => 10_000_000,
            };
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_nanos(wait_ns)))
            {
                if e.kind() != io::ErrorKind::Interrupted {
                    return;
                }
            }
            for ev in events.iter() {
                if ev.token() == TIMER_TOKEN {
                    if let Some(t) = &self.timer {
                        t.clear();
                    }
                    continue;
                }
                let key = ev.token().0;
                self.on_event(
                    key,
                    ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                );
            }
        }
    }

    /// The poll timeout (ns) to wake at `at_ns` or after `bound_ns` at the latest: 0 (spin)
    /// when `at_ns` is due within [`SPIN_NS`]; else the wake-up timer is set to `at_ns`
    /// (without one, epoll_wait's whole milliseconds are used and the last one is spun).
    fn wake_at(&mut self, at_ns: u64, now: u64, bound_ns: u64) -> u64 {
        let until = at_ns.saturating_sub(now);
        if until <= SPIN_NS {
            return 0;
        }
        match self.timer.as_mut() {
            Some(t) => {
                t.arm(at_ns);
                bound_ns.max(1_000_000)
            }
            None if until < 1_000_000 => 0,
            None => bound_ns.min(until / 1_000_000 * 1_000_000),
        }
    }

    fn is_sender(&self, key: usize) -> bool {
        match self.conns.get(key) {
            Some(c) if c.state == State::Open => match self.cfg.mode {
                Mode::Echo => true,
                Mode::Broadcast => c.flow.id < self.cfg.publishers,
                Mode::Idle => false,
            },
            _ => false,
        }
    }

    fn start_connect(&mut self, id: u32, now: u64) {
        let mut attempt = 0;
        let stream = loop {
            let src = self
                .cfg
                .explicit_sources
                .then(|| addr::source_for(id, self.cfg.source_base, attempt));
            let dst = self.cfg.targets[id as usize % self.cfg.targets.len()].addr;
            match sys::connect_from(src, dst) {
                Ok(s) => break s,
                Err(e)
                    if attempt < 8
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL)
                        ) =>
                {
                    attempt += 1;
                }
                Err(_) => {
                    self.part.errors.connect += 1;
                    return;
                }
            }
        };
        let mut stream = TcpStream::from_std(stream);
        let target = &self.cfg.targets[id as usize % self.cfg.targets.len()];
        let tls = match (&target.tls_name, &self.cfg.tls) {
            (Some(name), Some(cfg)) => match Tls::new(cfg.clone(), name) {
                Ok(t) => Some(t),
                Err(_) => {
                    self.part.errors.connect += 1;
                    return;
                }
            },
            _ => None,
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.part.errors.connect += 1;
            return;
        }
        let publishers = if self.cfg.mode == Mode::Broadcast {
            self.cfg.publishers as usize
        } else {
            0
        };
        entry.insert(Conn {
            stream,
            tls,
            state: State::Connecting,
            started_ns: now,
            key: String::new(),
            tail: Vec::new(),
            decoder: ws::Decoder::new((self.cfg.size + 1024).max(64 << 10)),
            flow: Flow {
                id,
                wbuf: Vec::new(),
                next_seq: 0,
                expect_seq: 0,
                outstanding: 0,
                progress_ns: now,
                next_from: vec![0u64; publishers].into_boxed_slice(),
                pending_ts: VecDeque::new(),
                z: None,
                pinged: false,
            },
        });
        self.pending += 1;
    }

    /// Drop a connection; `err` says which error counter it goes to (None: expected).
    fn remove(&mut self, key: usize, err: Option<fn(&mut Errors)>) {
        if let Some(mut c) = self.conns.try_remove(key) {
            if matches!(c.state, State::Connecting | State::Handshaking) {
                self.pending -= 1;
            }
            if c.state == State::Open {
                self.shared.open.fetch_sub(1, Relaxed);
            }
            let _ = self.poll.registry().deregister(&mut c.stream);
            sys::set_linger_zero(&c.stream);
            if let Some(f) = err {
                f(&mut self.part.errors);
            }
        }
    }

    /// Drop a connection that failed before it was open, and say on stderr (rate-limited)
    /// which one and why: its addresses, how long after its connect began, whether its
    /// upgrade request was written and what came back.
    fn fail_setup(&mut self, key: usize, err: CountError, why: &str) {
        if let Some(c) = self.conns.get(key) {
            if self.setup_failures_logged < SETUP_FAILURES_LOGGED {
                self.setup_failures_logged += 1;
                let addr = |a: io::Result<std::net::SocketAddr>| {
                    a.map_or_else(|_| "?".to_owned(), |a| a.to_string())
                };
                let state = match c.state {
                    State::Connecting => "connecting",
                    State::Handshaking if c.wants_write() => "handshake (request not all written)",
                    State::Handshaking => "handshake (request written)",
                    State::Open => "open",
                };
                eprintln!(
                    "load: connection {} {} -> {} failed in {state} after {} ms, {} response bytes: {why}",
                    c.flow.id,
                    addr(c.stream.local_addr()),
                    addr(c.stream.peer_addr()),
                    mono_ns().saturating_sub(c.started_ns) / 1_000_000,
                    c.tail.len(),
                );
            }
        }
        self.remove(key, Some(err));
    }

    fn on_event(&mut self, key: usize, readable: bool) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        match c.state {
            State::Connecting => {
                match c.stream.take_error() {
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => {
                        let why = e.to_string();
                        return self.fail_setup(key, |e| e.connect += 1, &why);
                    }
                }
                match c.stream.peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(e) => {
                        let why = e.to_string();
                        return self.fail_setup(key, |e| e.connect += 1, &why);
                    }
                }
                let t = &self.cfg.targets[c.flow.id as usize % self.cfg.targets.len()];
                let (req, k) = ws::handshake_request(&t.host, &t.path, self.cfg.deflate);
                c.key = k;
                c.state = State::Handshaking;
                c.flow.wbuf = req;
                self.flush(key);
            }
            State::Handshaking => {
                if readable {
                    self.read_handshake(key);
                }
                if self.conns.get(key).is_some_and(Conn::wants_write) {
                    self.flush(key);
                }
            }
            State::Open => {
                if readable {
                    self.read_frames(key);
                }
                if self.conns.get(key).is_some_and(Conn::wants_write) {
                    self.flush(key);
                }
            }
        }
    }

    fn read_handshake(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf, &mut self.cbuf) {
                Ok(0) => return self.fail_setup(key, |e| e.handshake += 1, "EOF"),
                Ok(n) => c.tail.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let why = e.to_string();
                    return self.fail_setup(key, |e| e.handshake += 1, &why);
                }
            }
            if c.tail.len() > 16 << 10 {
                break;
            }
        }
        match ws::handshake_response(&c.tail, &c.key, self.cfg.deflate) {
            Ok(None) if c.tail.len() <= 16 << 10 => {}
            Ok(Some((n, agreed))) => {
                if let Some(a) = agreed {
                    c.decoder.enable_deflate(&a);
                    c.flow.z = Some(ws::ConnDeflate::new(a));
                }
                c.tail.drain(..n);
                c.key = String::new();
                c.state = State::Open;
                let now = mono_ns();
                c.flow.progress_ns = now;
                self.pending -= 1;
                self.part.established += 1;
                self.part.connect_done_ns = now;
                self.shared.established.fetch_add(1, Relaxed);
                self.shared.open.fetch_add(1, Relaxed);
                if !self.conns[key].tail.is_empty() {
                    self.read_frames(key);
                }
            }
            _ => self.fail_setup(key, |e| e.handshake += 1, "not a valid 101 response"),
        }
    }

    fn read_frames(&mut self, key: usize) {
        let Thread {
            conns,
            scratch,
            cbuf,
            msg,
            tin,
            tout,
            hist,
            live,
            part,
            cfg,
            rng,
            phase,
            go_ns,
            end_ns,
            ..
        } = self;
        let Some(c) = conns.get_mut(key) else {
            return;
        };
        let mut tail = c.tail.len();
        scratch[..tail].copy_from_slice(&c.tail);
        let mut failure: Option<fn(&mut Errors)> = None;
        'read: loop {
            let n = match c.read(&mut scratch[tail..], cbuf) {
                Ok(0) => {
                    failure = Some(|e| e.closed += 1);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failure = Some(|e| e.closed += 1);
                    break;
                }
            };
            let total = tail + n;
            let now = mono_ns();
            let in_window = *phase == Phase::Running && now < *end_ns;
            let open_loop = cfg.rate.is_some();
            let timing = matches!(*phase, Phase::Running | Phase::Draining);
            let c_ref = &mut c.flow;
            let res = c.decoder.decode(&mut scratch[..total], tin, |ev| {
                match ev {
                    Event::Data(p) => {
                        let r = match cfg.mode {
                            Mode::Echo => payload::check_echo(
                                p,
                                cfg.size,
                                cfg.fill,
                                c_ref.id,
                                c_ref.expect_seq,
                            ),
                            Mode::Broadcast => payload::check_broadcast(
                                p,
                                cfg.size,
                                cfg.fill,
                                &mut c_ref.next_from,
                            ),
                            Mode::Idle => Err(Mismatch::WrongConn),
                        };
                        let stamp = match r {
                            Ok(s) => s,
                            Err(_) => {
                                failure = Some(|e| e.mismatch += 1);
                                return ControlFlow::Break(());
                            }
                        };
                        let own = cfg.mode == Mode::Echo || stamp.conn == c_ref.id;
                        if own {
                            c_ref.expect_seq += 1;
                            c_ref.outstanding = c_ref.outstanding.saturating_sub(1);
                            c_ref.progress_ns = now;
                            c_ref.pending_ts.pop_front();
                        }
                        if in_window && stamp.ts_ns >= *go_ns {
                            part.messages += 1;
                        }
                        // Closed loop: what arrives inside the window. Open loop: every message
                        // intended inside the window, even if its answer comes after it.
                        let timed = if open_loop {
                            timing && stamp.ts_ns >= *go_ns && stamp.ts_ns < *end_ns
                        } else {
                            in_window && stamp.ts_ns >= *go_ns
                        };
                        if timed {
                            let ns = now.saturating_sub(stamp.ts_ns);
                            report::record(hist, ns);
                            report::record(live, ns);
                        }
                        // Closed loop: the answer to the last message sent triggers the next.
                        if !open_loop && own && in_window && c_ref.outstanding == 0 {
                            write_message(c_ref, msg, rng, now, cfg.fill, tout);
                            part.sent += 1;
                        }
                    }
                    Event::Ping(p) => {
                        ws::encode(&mut c_ref.wbuf, Op::Pong, p, next_mask(rng), None);
                        c_ref.pinged = true;
                        part.pings += 1;
                        part.pings_window += u64::from(in_window);
                    }
                    Event::Pong => {}
                    Event::Close if *phase == Phase::Ended => {
                        // After the window: the server shutting down. Answer with a close
                        // frame and wait for it to close the TCP connection (it closes
                        // first, as RFC 6455 asks of servers).
                        ws::encode(
                            &mut c_ref.wbuf,
                            Op::Close,
                            &1000u16.to_be_bytes(),
                            next_mask(rng),
                            None,
                        );
                        part.server_closes += 1;
                    }
                    Event::Close => {
                        failure = Some(|e| e.closed += 1);
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            });
            match res {
                Ok(consumed) if failure.is_none() => {
                    scratch.copy_within(consumed..total, 0);
                    tail = total - consumed;
                    if tail + 1024 > scratch.len() {
                        // A frame larger than the scratch buffer: the decoder never leaves
                        // more than a partial header, so this means a protocol violation.
                        failure = Some(|e| e.closed += 1);
                        break 'read;
                    }
                }
                Ok(_) => break,
                Err(_) => {
                    failure = Some(|e| e.closed += 1);
                    break;
                }
            }
            if n < scratch.len() - total && c.tls.is_none() {
                // Short read: the socket is drained (an edge will come for new data). Not said
                // of TLS, whose plaintext comes a record at a time.
                break;
            }
        }
        if let Some(f) = failure {
            // A close after the window is the server shutting down, not an error.
            let expected = *phase == Phase::Ended;
            return self.remove(key, if expected { None } else { Some(f) });
        }
        c.tail.clear();
        c.tail.extend_from_slice(&scratch[..tail]);
        if c.tail.capacity() > 4096 && c.tail.is_empty() {
            c.tail = Vec::new();
        }
    }

    fn queue_message(&mut self, key: usize, ts_ns: u64) {
        let Thread {
            conns,
            msg,
            rng,
            part,
            cfg,
            tout,
            ..
        } = self;
        if let Some(c) = conns.get_mut(key) {
            write_message(&mut c.flow, msg, rng, ts_ns, cfg.fill, tout);
            part.sent += 1;
            if cfg.rate.is_some() && cfg.mode == Mode::Echo {
                c.flow.pending_ts.push_back(ts_ns);
            }
        }
    }

    /// End of an open-loop drain: every message intended inside the window and still
    /// unanswered is counted, and recorded at its age now (a lower bound of its latency).
    fn record_unanswered(&mut self, now: u64) {
        let (go, end) = (self.go_ns, self.end_ns);
        for (_, c) in self.conns.iter_mut() {
            for &ts in c.flow.pending_ts.iter().filter(|&&ts| ts >= go && ts < end) {
                report::record(&mut self.hist, now.saturating_sub(ts));
                self.part.unanswered += 1;
            }
            c.flow.pending_ts = VecDeque::new();
        }
    }

    fn start_closed_loop(&mut self, now: u64) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if self.is_sender(key) {
                self.queue_message(key, now);
                self.flush(key);
            }
        }
    }

    fn flush(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(t) = &mut c.tls {
            // Plaintext waits in `wbuf` until the TLS handshake is done, then is sealed.
            let mut res = Ok(true);
            if t.is_open() && !c.flow.wbuf.is_empty() {
                res = t.seal(&c.flow.wbuf).map(|()| true);
                c.flow.wbuf.clear();
                if c.flow.wbuf.capacity() > 64 << 10 {
                    c.flow.wbuf = Vec::new();
                }
            }
            if res.is_ok() {
                res = t.write(&mut c.stream);
            }
            if res.is_err() {
                let expected = self.phase == Phase::Ended;
                return self.remove(key, (!expected).then_some(|e: &mut Errors| e.closed += 1));
            }
            return;
        }
        let mut off = 0;
        while off < c.flow.wbuf.len() {
            match c.stream.write(&c.flow.wbuf[off..]) {
                Ok(0) => break,
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let expected = self.phase == Phase::Ended;
                    return self.remove(
                        key,
                        if expected {
                            None
                        } else {
                            Some(|e| e.closed += 1)
                        },
                    );
                }
            }
        }
        c.flow.wbuf.drain(..off);
        if c.flow.wbuf.is_empty() && c.flow.wbuf.capacity() > 64 << 10 {
            c.flow.wbuf = Vec::new();
        }
    }

    fn scan_timeouts(&mut self, now: u64) {
        let timeout = self.cfg.timeout_ns;
        // An open-loop publisher does not wait for its own copies (a server may leave the
        // sender out of a broadcast): only echoes and closed-loop publishers can time out.
        let answers_expected = !(self.cfg.mode == Mode::Broadcast && self.cfg.rate.is_some());
        let mut dead: Vec<(usize, CountError)> = Vec::new();
        for (k, c) in self.conns.iter() {
            match c.state {
                State::Connecting if now - c.started_ns > timeout => {
                    dead.push((k, |e| e.connect += 1))
                }
                State::Handshaking if now - c.started_ns > timeout => {
                    dead.push((k, |e| e.handshake += 1))
                }
                State::Open
                    if matches!(self.phase, Phase::Running | Phase::Draining)
                        && answers_expected
                        && c.flow.outstanding > 0
                        && now.saturating_sub(c.flow.progress_ns) > timeout =>
                {
                    dead.push((k, |e| e.timeout += 1))
                }
                _ => {}
            }
        }
        for (k, f) in dead {
            match self.conns.get(k).map(|c| c.state) {
                Some(State::Connecting | State::Handshaking) => self.fail_setup(k, f, "timeout"),
                _ => self.remove(k, Some(f)),
            }
        }
    }

    fn report_progress(&mut self, now: u64) {
        if self.phase != Phase::Connecting
            && self.live_since != 0
            && now.saturating_sub(self.live_since) >= LIVE_INTERVAL_NS
        {
            if !self.live.is_empty() {
                let p99 = self.live.value_at_quantile(0.99);
                self.shared.live_p99_ns.fetch_max(p99, Relaxed);
                self.live.reset();
            }
            self.live_since = now;
        }
        let m = self.part.messages;
        self.shared
            .messages
            .fetch_add(m - self.reported_messages, Relaxed);
        self.reported_messages = m;
        let e = self.part.errors.total();
        self.shared
            .errors
            .fetch_add(e - self.reported_errors, Relaxed);
        self.reported_errors = e;
    }

    fn finish(mut self) -> Partial {
        if self.phase != Phase::Ended {
            // Aborted before the window ended: still account for the open connections.
            self.part.open_at_end = self
                .conns
                .iter()
                .filter(|(_, c)| c.state == State::Open)
                .count() as u64;
            if self.phase == Phase::Connecting {
                self.shared.ready.fetch_add(1, Relaxed);
            }
            self.shared.ended.fetch_add(1, Relaxed);
        }
        self.report_progress(mono_ns());
        for (_, c) in self.conns.iter() {
            sys::set_linger_zero(&c.stream);
        }
        self.conns.clear();
        self.part.set_histogram(&self.hist);
        if !self.lag.is_empty() {
            self.part.lag = report::pairs(&self.lag);
        }
        self.part
    }
}

/// Append the connection's next message (stamped `ts_ns`) to its write buffer.
fn write_message(
    c: &mut Flow,
    msg: &mut [u8],
    rng: &mut u64,
    ts_ns: u64,
    fill: payload::Fill,
    tout: &mut ws::ThreadDeflate,
) {
    payload::write(
        msg,
        Stamp {
            conn: c.id,
            seq: c.next_seq,
            ts_ns,
        },
        fill,
    );
    c.next_seq += 1;
    if c.outstanding == 0 {
        c.progress_ns = ts_ns;
    }
    c.outstanding += 1;
    let z = c.z.as_deref_mut().map(|z| (z, tout));
    ws::encode(&mut c.wbuf, Op::Binary, msg, next_mask(rng), z);
}

/// A frame mask from the thread's xorshift64 state: masks must vary, not be secret.
fn next_mask(rng: &mut u64) -> [u8; 4] {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    ((*rng >> 16) as u32).to_le_bytes()
}

#[cfg(test)]
mod tests;
