//! One shard: a thread that owns a driver, a slab of connections, a timer wheel and a mailbox.
//!
//! The loop: poll the driver (completions are handled as they come: handshake bytes are
//! accumulated, frames are decoded in place in the receive buffer, handler callbacks queue
//! replies), register accepted sockets, read the mailbox, fire expired timers, then flush
//! every connection whose send queue changed (one `send` per dirty connection per turn) and
//! close the sockets that are done.

pub(crate) mod timer;
pub(crate) mod topics;

use std::io;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use slab::Slab;

use crate::io::{Completion, Driver, DriverConfig, Socket, Token, WithDriver};
use crate::proto::{
    self, CloseCode, CloseFrame, CloseState, Decoder, Event, Limits, OpCode, ProtocolError, Role,
};
use crate::send_queue::{QueuePool, SendQueue};
use crate::server::{Config, ShardStats};
use crate::{Conn, ConnId, Handler, Message, SendError, SlowConsumer};

use self::timer::TimerWheel;

/// Messages to a shard from other threads.
pub(crate) enum Mail {
    /// Graceful shutdown: close 1001 to everyone, then stop by this instant at the latest.
    Shutdown(Instant),
    /// Run an outbound connection (TCP already connected): send `request`, expect a 101.
    Connect(Box<Outbound>),
    /// Every shard's mailbox and waker (sent once, when all shards have started).
    Peers(Arc<[Peer]>),
    /// Queue this encoded frame for every open connection of the shard.
    Broadcast(Arc<[u8]>),
}

/// How to reach a shard from another thread.
pub(crate) type Peer = (Sender<Mail>, crate::io::Waker);

/// An outbound connection handed to a shard by [`crate::ServerHandle::connect`].
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    /// The upgrade request to send.
    pub(crate) request: Vec<u8>,
    /// Its `Sec-WebSocket-Key`, to check the answer against.
    pub(crate) key: String,
}

/// Everything a shard thread starts from.
pub(crate) struct Run<H, F> {
    pub(crate) index: usize,
    pub(crate) listener: TcpListener,
    pub(crate) config: Arc<Config>,
    pub(crate) factory: Arc<F>,
    pub(crate) stats: Arc<ShardStats>,
    pub(crate) open: Arc<AtomicUsize>,
    pub(crate) mail: Receiver<Mail>,
    pub(crate) ready: Sender<(usize, io::Result<crate::io::Waker>)>,
    pub(crate) core: Option<core_affinity::CoreId>,
    pub(crate) handler: PhantomData<fn() -> H>,
    /// Publish/subscribe: the shared hub and this shard's mailbox.
    pub(crate) pubsub: (Arc<crate::pubsub::Hub>, Receiver<crate::pubsub::Inbox>),
}

impl<H, F> WithDriver for Run<H, F>
where
    H: Handler,
    F: Fn(usize) -> H + Send + Sync + 'static,
{
    type Output = ();

    fn run<D: Driver>(self) {
        if let Some(core) = self.core {
            core_affinity::set_for_current(core);
        }
        let dcfg = DriverConfig {
            recv_buffer_bytes: self.config.recv_buffer_bytes,
            recv_buffers: self.config.recv_buffers,
            direct_fds: self.config.direct_fds,
            direct_fds_max: self.config.direct_fds_max,
            events_max: 1024,
        };
        let driver = match D::new(self.listener, &dcfg) {
            Ok(d) => d,
            Err(e) => {
                let _ = self.ready.send((self.index, Err(e)));
                return;
            }
        };
        let handler = (self.factory)(self.index);
        self.pubsub.0.register_waker(self.index, driver.waker());
        if self.ready.send((self.index, Ok(driver.waker()))).is_err() {
            return;
        }
        let topics = topics::Topics::new(self.pubsub.0, self.index, self.pubsub.1);
        let mut shard = Shard::new(
            self.index,
            handler,
            self.config,
            self.stats,
            self.open,
            topics,
        );
        shard.run(driver, &self.mail);
        shard.ctx.topics.clear();
    }
}

/// Where a connection stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Reading the HTTP upgrade request.
    Handshake,
    /// Open (or, per its `CloseState`, waiting for the peer's close frame).
    Open,
    /// Done talking: flush the queue, then close (or half-close and linger, see `LINGER`).
    Flushing,
    /// FIN sent; input is discarded until the peer's EOF or the close timeout.
    Linger,
    /// Finished (`on_close` called); waiting for the driver to release the token.
    Dead,
}

/// In the dirty list.
const DIRTY: u8 = 1;
/// A ping was sent by the idle timer and nothing has arrived since.
const PING_OUT: u8 = 2;
/// The queue held at least the low-water mark: `on_drain` is due when it falls below.
const DRAIN_WANTED: u8 = 4;
/// `on_open` was called: `on_close` is due.
const OPENED: u8 = 8;
/// After the flush, half-close and wait for the peer's EOF instead of closing at once.
const LINGER: u8 = 16;
/// Accepted while `max_connections` were open: answer the upgrade with 503.
const OVER_CAPACITY: u8 = 32;
/// An outbound connection: client role (frames masked), `on_close` even if never opened.
const CLIENT: u8 = 64;

/// The part of a connection that handler callbacks see through [`Conn`].
pub(crate) struct Connection<S> {
    pub(crate) state: S,
    pub(crate) queue: Queue,
    pub(crate) peer: PeerAddr,
    /// How the connection ended, for `on_close` (set when known). An outbound connection in
    /// its handshake keeps its `Sec-WebSocket-Key` here instead (`(None, key)`).
    close_info: Option<Box<(Option<CloseCode>, String)>>,
    generation: u32,
    /// Tick of the last received bytes.
    last_rx: u32,
    /// Tick the current phase (or the outstanding ping) started.
    mark: u32,
    /// Tick the live timer entry fires at (0: none).
    timer_at: u32,
    close: CloseState,
    phase: Phase,
    flags: u8,
}

/// A slab entry: the connection plus its receive-side state.
pub(crate) struct Entry<S> {
    conn: Connection<S>,
    decoder: Decoder,
    /// Handshake bytes so far, or a partial frame left at the end of a receive buffer
    /// (at most a frame header plus a control frame). Empty: no heap memory.
    leftover: Leftover,
}

/// A connection's send queue, boxed: 8 bytes in the slab entry (a `SendQueue` takes 64) and
/// no heap memory while nothing is queued or in flight, which is an idle connection's usual
/// state. Reading an absent queue sees an empty one; writing allocates it (one 64-byte
/// allocation per burst of sends).
#[derive(Default)]
pub(crate) struct Queue(Option<Box<SendQueue>>);

/// What an absent [`Queue`] reads as.
static EMPTY_QUEUE: LazyLock<SendQueue> = LazyLock::new(SendQueue::default);

impl Deref for Queue {
    type Target = SendQueue;

    fn deref(&self) -> &SendQueue {
        self.0.as_deref().unwrap_or(&EMPTY_QUEUE)
    }
}

impl DerefMut for Queue {
    fn deref_mut(&mut self) -> &mut SendQueue {
        self.0.get_or_insert_with(Box::default)
    }
}

impl Queue {
    /// Give the queue's memory back if nothing is queued and the backend holds none of it.
    fn release_if_idle(&mut self) {
        if self
            .0
            .as_ref()
            .is_some_and(|q| q.is_empty() && !q.in_flight())
        {
            self.0 = None;
        }
    }

    /// Is the queue's memory allocated?
    #[cfg(test)]
    fn is_allocated(&self) -> bool {
        self.0.is_some()
    }
}

/// A peer address in 19 bytes, byte-aligned (`SocketAddr` takes 32): the IP (IPv4 as
/// IPv4-mapped IPv6) and the port. An IPv6 peer's flow label and scope id are not kept.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct PeerAddr {
    ip: [u8; 16],
    port: [u8; 2],
    v6: bool,
}

impl PeerAddr {
    fn new(addr: SocketAddr) -> Self {
        let (ip, v6) = match addr.ip() {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), false),
            IpAddr::V6(a) => (a.octets(), true),
        };
        Self {
            ip,
            port: addr.port().to_ne_bytes(),
            v6,
        }
    }

    /// The address as a `SocketAddr` (flow label and scope id 0).
    pub(crate) fn get(&self) -> SocketAddr {
        let ip = Ipv6Addr::from(self.ip);
        let port = u16::from_ne_bytes(self.port);
        match (self.v6, ip.to_ipv4_mapped()) {
            (false, Some(v4)) => SocketAddr::new(IpAddr::V4(v4), port),
            _ => SocketAddr::new(IpAddr::V6(ip), port),
        }
    }
}

/// Handshake bytes so far or a partial frame (see [`Entry::leftover`]): 8 bytes in the slab
/// entry, no heap memory while empty.
/// The extra allocation while bytes are held is the price of 16 fewer bytes in every entry.
#[derive(Default)]
#[allow(clippy::box_collection)]
struct Leftover(Option<Box<Vec<u8>>>);

impl Leftover {
    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|v| v.is_empty())
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }

    fn as_slice(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.0
            .get_or_insert_with(Default::default)
            .extend_from_slice(bytes);
    }

    /// The bytes, leaving nothing behind.
    fn take(&mut self) -> Vec<u8> {
        self.0.take().map(|b| *b).unwrap_or_default()
    }

    /// Hold `bytes` (no heap memory kept when empty).
    fn set(&mut self, bytes: Vec<u8>) {
        self.0 = (!bytes.is_empty()).then(|| Box::new(bytes));
    }

    /// Drop the bytes and their memory.
    fn clear(&mut self) {
        self.0 = None;
    }
}

/// Bytes of a new receive buffer appended to a leftover partial frame before decoding it
/// (enough to complete any frame header or control frame: 14 + 125).
const LEFTOVER_FILL: usize = 160;

/// Shard context reachable from handler callbacks.
pub(crate) struct Ctx {
    config: Arc<Config>,
    stats: Arc<ShardStats>,
    shard: u32,
    dirty: Vec<u32>,
    wheel: TimerWheel,
    /// The current tick (stamped once per batch of completions).
    now: u32,
    handshake_ticks: u32,
    idle_ticks: u32,
    pong_ticks: u32,
    close_ticks: u32,
    /// This shard's topic table and mailbox (publish/subscribe).
    pub(crate) topics: topics::Topics,
    /// Frames to broadcast at the end of this loop turn (serialized once each).
    broadcasts: Vec<Arc<[u8]>>,
    /// Send-queue storage of written-out queues, for the next frames queued.
    pool: QueuePool,
}

impl Ctx {
    fn id<S>(&self, key: usize, conn: &Connection<S>) -> ConnId {
        ConnId {
            shard: self.shard,
            key: key as u32,
            generation: conn.generation,
        }
    }

    fn mark_dirty<S>(&mut self, key: u32, conn: &mut Connection<S>) {
        if conn.flags & DIRTY == 0 {
            conn.flags |= DIRTY;
            self.dirty.push(key);
        }
    }

    /// Make sure a timer fires at `at` or earlier.
    fn arm<S>(&mut self, key: u32, conn: &mut Connection<S>, at: u32) {
        if conn.timer_at == 0 || at < conn.timer_at {
            conn.timer_at = self.wheel.schedule(key, conn.generation, at);
        }
    }

    /// Queue one unfragmented frame, no limit check.
    fn push_frame<S>(&mut self, key: u32, conn: &mut Connection<S>, op: OpCode, payload: &[u8]) {
        // Clients mask every frame with a fresh key (RFC 6455 §5.3).
        let mask = (conn.flags & CLIENT != 0).then(proto::generate_mask);
        conn.queue.reuse(&mut self.pool);
        conn.queue.push_with(payload.len() + 14, |v| {
            proto::encode_frame(v, op, true, payload, mask)
        });
        ShardStats::bump(&self.stats.frames_sent, 1);
        self.note_backlog(conn);
        self.mark_dirty(key, conn);
    }

    /// The queue reached the low-water mark: `on_drain` is due once it falls below again
    /// (whether or not the next flush writes it all at once).
    fn note_backlog<S>(&self, conn: &mut Connection<S>) {
        if conn.queue.len() >= self.config.send_queue_low_water_bytes.max(1) {
            conn.flags |= DRAIN_WANTED;
        }
    }

    /// Enter `Flushing`: the connection ends once its queue is written.
    fn finish_after_flush<S>(&mut self, key: u32, conn: &mut Connection<S>, linger: bool) {
        conn.phase = Phase::Flushing;
        if linger {
            conn.flags |= LINGER;
        }
        conn.mark = self.now;
        let at = self.now.saturating_add(self.close_ticks);
        self.arm(key, conn, at);
        self.mark_dirty(key, conn);
    }

    /// `Conn::send*` and `Conn::ping`: a data frame or ping from the application.
    pub(crate) fn send_data<S>(
        &mut self,
        conn: &mut Connection<S>,
        id: ConnId,
        op: OpCode,
        payload: &[u8],
    ) -> Result<(), SendError> {
        if conn.phase != Phase::Open || !conn.close.can_send() {
            return Err(SendError::Closed);
        }
        let key = id.key;
        // A message always fits an empty queue (its size is bounded by the application), so
        // one message larger than the limit still goes out; what the limit stops is a backlog.
        if !conn.queue.is_empty()
            && conn.queue.len() + payload.len() + proto::MAX_HEADER_LEN
                > self.config.send_queue_bytes_max
        {
            self.slow_consumer(key, conn);
            return Err(SendError::QueueFull);
        }
        self.push_frame(key, conn, op, payload);
        Ok(())
    }

    /// Apply the slow-consumer policy: drop what is queued, close, hang up after the flush.
    fn slow_consumer<S>(&mut self, key: u32, conn: &mut Connection<S>) {
        ShardStats::bump(&self.stats.slow_consumers, 1);
        let code = match self.config.slow_consumer {
            SlowConsumer::Close1013 => CloseCode::TRY_AGAIN_LATER,
            _ => CloseCode::POLICY_VIOLATION,
        };
        // Keep a partly written frame whole: the close frame must follow a frame boundary.
        conn.queue.discard_unsent();
        let reason = "send queue full";
        if let Some((p, n)) = conn.close.fail(&ProtocolError::new(code, reason)) {
            self.push_frame(key, conn, OpCode::Close, &p[..n]);
        }
        conn.close_info = Some(Box::new((Some(code), reason.to_owned())));
        self.finish_after_flush(key, conn, true);
    }

    /// `Conn::broadcast`: serialize once, deliver at the end of the loop turn.
    pub(crate) fn broadcast(&mut self, op: OpCode, payload: &[u8]) {
        let mut v = Vec::with_capacity(payload.len() + proto::MAX_HEADER_LEN);
        proto::encode_frame(&mut v, op, true, payload, None);
        self.broadcasts.push(v.into());
    }

    /// Queue a shared, already encoded server frame (a broadcast) on an open connection,
    /// applying the send-queue limit.
    fn push_shared<S>(&mut self, key: u32, conn: &mut Connection<S>, frame: &Arc<[u8]>) {
        if conn.phase != Phase::Open || !conn.close.can_send() || conn.flags & CLIENT != 0 {
            return;
        }
        if !conn.queue.is_empty()
            && conn.queue.len() + frame.len() > self.config.send_queue_bytes_max
        {
            self.slow_consumer(key, conn);
            return;
        }
        conn.queue.push_shared(frame.clone());
        ShardStats::bump(&self.stats.frames_sent, 1);
        self.note_backlog(conn);
        self.mark_dirty(key, conn);
    }

    /// `Conn::close`: start the close handshake.
    pub(crate) fn close<S>(
        &mut self,
        conn: &mut Connection<S>,
        id: ConnId,
        code: CloseCode,
        reason: &str,
    ) {
        if conn.phase != Phase::Open {
            return;
        }
        if let Some((p, n)) = conn.close.initiate(code, reason) {
            self.push_frame(id.key, conn, OpCode::Close, &p[..n]);
            conn.mark = self.now;
            let at = self.now.saturating_add(self.close_ticks);
            self.arm(id.key, conn, at);
        }
    }
}

/// One shard's state (everything but the driver, so completions can borrow it while the
/// driver is polling).
struct Shard<H: Handler> {
    handler: H,
    slab: Slab<Entry<H::State>>,
    ctx: Ctx,
    open: Arc<AtomicUsize>,
    accepted: Vec<(Socket, SocketAddr)>,
    to_close: Vec<u32>,
    expired: Vec<timer::Entry>,
    next_generation: u32,
    woke: bool,
    /// Every shard's mailbox (`None` until all have started).
    peers: Option<Arc<[Peer]>>,
    shutdown_at: Option<Instant>,
}

/// Timer resolution.
const TICK: Duration = Duration::from_millis(10);
/// Timer wheel slots (one revolution = 40.96 s at 10 ms; longer deadlines take rounds).
const WHEEL_SLOTS: usize = 4096;

impl<H: Handler> Shard<H> {
    fn new(
        index: usize,
        handler: H,
        config: Arc<Config>,
        stats: Arc<ShardStats>,
        open: Arc<AtomicUsize>,
        topics: topics::Topics,
    ) -> Self {
        let wheel = TimerWheel::new(Instant::now(), TICK, WHEEL_SLOTS);
        let ctx = Ctx {
            shard: index as u32,
            dirty: Vec::new(),
            now: 0,
            handshake_ticks: wheel.ticks(config.handshake_timeout),
            idle_ticks: wheel.ticks(config.idle_timeout),
            pong_ticks: wheel.ticks(config.pong_timeout),
            close_ticks: wheel.ticks(config.close_timeout),
            broadcasts: Vec::new(),
            pool: QueuePool::default(),
            wheel,
            config,
            stats,
            topics,
        };
        Self {
            handler,
            slab: Slab::new(),
            ctx,
            open,
            accepted: Vec::new(),
            to_close: Vec::new(),
            expired: Vec::new(),
            next_generation: 0,
            woke: false,
            peers: None,
            shutdown_at: None,
        }
    }

    fn run<D: Driver>(&mut self, mut driver: D, mail: &Receiver<Mail>) {
        loop {
            let now = Instant::now();
            let mut timeout = self.ctx.wheel.next_timeout(now);
            if !self.ctx.dirty.is_empty() || !self.ctx.broadcasts.is_empty() {
                // Work left over from the last turn (callbacks that kept queueing): no sleep.
                timeout = Some(Duration::ZERO);
            }
            if let Some(at) = self.shutdown_at {
                let left = at.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if self.ctx.topics.has_work() {
                timeout = Some(Duration::ZERO);
            }
            let mut stamped = false;
            let res = driver.poll(timeout, |c| {
                if !stamped {
                    self.ctx.now = self.ctx.wheel.tick_of(Instant::now());
                    stamped = true;
                }
                self.on_completion(c);
            });
            if res.is_err() {
                // The poller itself failed (not a connection): nothing sensible is left to do.
                break;
            }
            let now = Instant::now();
            self.ctx.now = self.ctx.wheel.tick_of(now);
            self.register_accepted(&mut driver);
            if std::mem::take(&mut self.woke) {
                while let Ok(m) = mail.try_recv() {
                    match m {
                        Mail::Shutdown(at) => self.begin_shutdown(&mut driver, at),
                        Mail::Connect(out) => self.register_outbound(&mut driver, *out),
                        Mail::Peers(p) => self.peers = Some(p),
                        Mail::Broadcast(frame) => self.fan_out(&frame),
                    }
                }
            }
            self.fire_timers(now);
            self.pubsub_turn();
            self.send_broadcasts();
            self.flush(&mut driver);
            self.close_finished(&mut driver);
            if let Some(at) = self.shutdown_at {
                if Instant::now() >= at {
                    self.drop_all();
                    self.close_finished(&mut driver);
                }
                if self.slab.is_empty() {
                    break;
                }
                if Instant::now() >= at + Duration::from_secs(1) {
                    // Operations that never completed: give up waiting for their release.
                    break;
                }
            }
        }
    }

    fn on_completion(&mut self, c: Completion<'_>) {
        match c {
            Completion::Accepted { socket, peer } => self.accepted.push((socket, peer)),
            Completion::Recv { token, buf } => self.on_recv(token.0, buf),
            Completion::Sent { token, n } => {
                if let Some(e) = self.slab.get_mut(token.0) {
                    e.conn.queue.complete(n);
                    ShardStats::bump(&self.ctx.stats.bytes_sent, n as u64);
                    self.ctx.mark_dirty(token.0 as u32, &mut e.conn);
                }
            }
            Completion::Closed { token, .. } => self.on_peer_closed(token.0),
            Completion::Released { token } => {
                if matches!(self.slab.get(token.0), Some(e) if e.conn.phase == Phase::Dead) {
                    self.slab.remove(token.0);
                }
            }
            Completion::Wake => self.woke = true,
        }
    }

    fn register_accepted<D: Driver>(&mut self, driver: &mut D) {
        for (socket, peer) in std::mem::take(&mut self.accepted) {
            if self.shutdown_at.is_some() {
                continue;
            }
            let key = self.slab.vacant_key();
            if key > u32::MAX as usize / 2 || driver.register(Token(key), socket).is_err() {
                continue;
            }
            ShardStats::bump(&self.ctx.stats.accepted, 1);
            let mut flags = 0;
            if self.open.fetch_add(1, Ordering::Relaxed) >= self.ctx.config.max_connections {
                flags |= OVER_CAPACITY;
            }
            self.insert(key, peer, Role::Server, flags);
        }
    }

    /// Start an outbound connection: register it and send its upgrade request.
    fn register_outbound<D: Driver>(&mut self, driver: &mut D, out: Outbound) {
        if self.shutdown_at.is_some() {
            return;
        }
        let key = self.slab.vacant_key();
        if key > u32::MAX as usize / 2 || driver.register(Token(key), out.stream.into()).is_err() {
            return;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        self.insert(key, out.peer, Role::Client, CLIENT);
        if let Some(e) = self.slab.get_mut(key) {
            e.conn.close_info = Some(Box::new((None, out.key)));
            e.conn.queue.push(&out.request);
            self.ctx.mark_dirty(key as u32, &mut e.conn);
        }
    }

    /// A new connection in its handshake, at slot `key` (the slab's vacant key).
    fn insert(&mut self, key: usize, peer: SocketAddr, role: Role, flags: u8) {
        self.next_generation = self.next_generation.wrapping_add(1);
        let now = self.ctx.now;
        let mut conn = Connection {
            state: H::State::default(),
            queue: Queue::default(),
            peer: PeerAddr::new(peer),
            close_info: None,
            generation: self.next_generation,
            last_rx: now,
            mark: now,
            timer_at: 0,
            close: CloseState::new(role),
            phase: Phase::Handshake,
            flags,
        };
        let at = now.saturating_add(self.ctx.handshake_ticks);
        self.ctx.arm(key as u32, &mut conn, at);
        let limits = Limits {
            max_frame_bytes: self.ctx.config.max_frame_bytes,
            max_message_bytes: self.ctx.config.max_message_bytes,
        };
        let k = self.slab.insert(Entry {
            conn,
            decoder: Decoder::new(role, limits),
            leftover: Leftover::default(),
        });
        debug_assert_eq!(k, key);
    }

    fn on_recv(&mut self, key: usize, buf: &mut [u8]) {
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        ShardStats::bump(&self.ctx.stats.bytes_received, buf.len() as u64);
        e.conn.last_rx = self.ctx.now;
        match e.conn.phase {
            Phase::Handshake => self.handshake_recv(key, buf),
            Phase::Open => self.frames_recv(key, buf),
            Phase::Flushing | Phase::Linger | Phase::Dead => {}
        }
    }

    fn handshake_recv(&mut self, key: usize, buf: &mut [u8]) {
        let max = self.ctx.config.handshake_header_bytes_max;
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        if e.conn.flags & CLIENT != 0 {
            self.client_handshake_recv(key, buf);
            return;
        }
        if e.leftover.is_empty() {
            match proto::parse_request(buf, max) {
                Ok(None) => e.leftover.extend_from_slice(buf),
                Ok(Some((req, n))) => {
                    if self.upgrade(key, &req) {
                        self.frames_recv(key, &mut buf[n..]);
                    }
                }
                Err(err) => self.refuse(key, &err.response()),
            }
        } else {
            e.leftover.extend_from_slice(buf);
            match proto::parse_request(e.leftover.as_slice(), max) {
                Ok(None) => {}
                Ok(Some((req, n))) => {
                    let mut rest = e.leftover.take();
                    if self.upgrade(key, &req) {
                        self.frames_recv(key, &mut rest[n..]);
                    }
                }
                Err(err) => {
                    e.leftover.clear();
                    self.refuse(key, &err.response());
                }
            }
        }
    }

    /// An outbound connection's handshake bytes: wait for the whole response, check it, open.
    fn client_handshake_recv(&mut self, key: usize, buf: &mut [u8]) {
        let max = self.ctx.config.handshake_header_bytes_max;
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        e.leftover.extend_from_slice(buf);
        let key_str = match &e.conn.close_info {
            Some(b) => b.1.as_str(),
            None => "",
        };
        match proto::parse_response(e.leftover.as_slice(), key_str, max) {
            Ok(None) => {}
            Ok(Some((_resp, n))) => {
                let mut rest = e.leftover.take();
                e.conn.close_info = None;
                self.open_connection(key);
                self.frames_recv(key, &mut rest[n..]);
            }
            Err(err) => {
                e.leftover.clear();
                ShardStats::bump(&self.ctx.stats.handshakes_rejected, 1);
                e.conn.close_info = Some(Box::new((
                    Some(CloseCode::ABNORMAL),
                    format!("handshake failed: {} {}", err.status, err.reason),
                )));
                self.finalize(key, None);
            }
        }
    }

    /// The handshake completed: open the connection and call `on_open`.
    fn open_connection(&mut self, key: usize) {
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        let k = key as u32;
        let conn = &mut e.conn;
        conn.phase = Phase::Open;
        conn.flags |= OPENED;
        conn.mark = self.ctx.now;
        if self.ctx.idle_ticks > 0 {
            let at = self.ctx.now.saturating_add(self.ctx.idle_ticks);
            self.ctx.arm(k, conn, at);
        }
        ShardStats::bump(&self.ctx.stats.upgraded, 1);
        let id = self.ctx.id(key, conn);
        self.handler.on_open(&mut Conn {
            inner: conn,
            id,
            ctx: &mut self.ctx,
        });
    }

    /// Answer the handshake with a non-101 response and hang up after it.
    fn refuse(&mut self, key: usize, response: &[u8]) {
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        ShardStats::bump(&self.ctx.stats.handshakes_rejected, 1);
        e.conn.queue.push(response);
        self.ctx.finish_after_flush(key as u32, &mut e.conn, true);
    }

    /// A complete upgrade request: ask the handler, answer, open. Returns whether the
    /// connection is now open.
    fn upgrade(&mut self, key: usize, req: &proto::Request) -> bool {
        let over = matches!(self.slab.get(key), Some(e) if e.conn.flags & OVER_CAPACITY != 0);
        if over {
            self.refuse(
                key,
                &proto::reject_response(503, &[("Retry-After", "1")], "server full"),
            );
            return false;
        }
        let answer = self.handler.on_upgrade(req);
        let Some(e) = self.slab.get_mut(key) else {
            return false;
        };
        match answer {
            Err(rej) => {
                let headers: Vec<(&str, &str)> = rej
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let resp = proto::reject_response(rej.status, &headers, &rej.body);
                self.refuse(key, &resp);
                false
            }
            Ok(acc) => {
                let headers: Vec<(&str, &str)> = acc
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let resp = proto::accept_response(req, acc.protocol.as_deref(), &headers);
                e.conn.queue.push(&resp);
                self.ctx.mark_dirty(key as u32, &mut e.conn);
                self.open_connection(key);
                matches!(self.slab.get(key), Some(e) if e.conn.phase == Phase::Open)
            }
        }
    }

    /// Decode frames from `buf` (after any leftover partial frame), in place.
    fn frames_recv(&mut self, key: usize, buf: &mut [u8]) {
        let mut pos = 0;
        loop {
            let Some(e) = self.slab.get_mut(key) else {
                return;
            };
            if e.conn.phase != Phase::Open {
                return;
            }
            if e.leftover.is_empty() {
                if pos == buf.len() {
                    break;
                }
                let rest = &mut buf[pos..];
                match decode(&mut self.handler, &mut self.ctx, key, e, rest) {
                    Ok(c) => {
                        if e.conn.phase == Phase::Open && c < rest.len() {
                            e.leftover.extend_from_slice(&rest[c..]);
                        }
                    }
                    Err(err) => self.fail(key, err),
                }
                break;
            }
            // Complete the partial frame held from the previous buffer.
            let old = e.leftover.len();
            let take = (buf.len() - pos).min(LEFTOVER_FILL);
            if take == 0 {
                break;
            }
            e.leftover.extend_from_slice(&buf[pos..pos + take]);
            let mut held = e.leftover.take();
            match decode(&mut self.handler, &mut self.ctx, key, e, &mut held) {
                Ok(c) if c >= old => {
                    // The old bytes and `c - old` new ones are consumed; go on in place.
                    pos += c - old;
                }
                Ok(c) => {
                    pos += take;
                    held.drain(..c);
                    if let Some(e) = self.slab.get_mut(key) {
                        e.leftover.set(held);
                    }
                }
                Err(err) => {
                    self.fail(key, err);
                    return;
                }
            }
        }
        if let Some(e) = self.slab.get_mut(key) {
            if e.leftover.is_empty() {
                e.leftover.clear();
            }
            if !e.decoder.in_message() {
                e.decoder.shrink();
            }
        }
    }

    /// The peer broke the protocol: send the close code, hang up after the flush.
    fn fail(&mut self, key: usize, err: ProtocolError) {
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        ShardStats::bump(&self.ctx.stats.protocol_errors, 1);
        let k = key as u32;
        if let Some((p, n)) = e.conn.close.fail(&err) {
            self.ctx.push_frame(k, &mut e.conn, OpCode::Close, &p[..n]);
        }
        if e.conn.close_info.is_none() {
            e.conn.close_info = Some(Box::new((Some(err.code), err.reason.to_owned())));
        }
        e.leftover.clear();
        self.ctx.finish_after_flush(k, &mut e.conn, true);
    }

    fn on_peer_closed(&mut self, key: usize) {
        let Some(e) = self.slab.get(key) else {
            return;
        };
        match e.conn.phase {
            Phase::Dead => {}
            Phase::Linger => self.finalize(key, None),
            _ => self.finalize(key, Some(CloseCode::ABNORMAL)),
        }
    }

    /// The connection is over: tell the handler (if it was opened) and close the socket after
    /// this turn. `fallback` is the code reported when no close code is known (`None`: use
    /// the recorded one or 1006).
    fn finalize(&mut self, key: usize, fallback: Option<CloseCode>) {
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        if e.conn.phase == Phase::Dead {
            return;
        }
        let was_handshake = e.conn.phase == Phase::Handshake;
        e.conn.phase = Phase::Dead;
        e.leftover.clear();
        self.ctx.topics.remove_conn(key as u32);
        self.open.fetch_sub(1, Ordering::Relaxed);
        ShardStats::bump(&self.ctx.stats.closed, 1);
        self.to_close.push(key as u32);
        if e.conn.flags & (OPENED | CLIENT) != 0 {
            let mut info = e.conn.close_info.take();
            if was_handshake && matches!(&info, Some(b) if b.0.is_none()) {
                // Still the outbound handshake key, not a close reason.
                info = Some(Box::new((
                    Some(CloseCode::ABNORMAL),
                    "handshake did not complete".to_owned(),
                )));
            }
            let (code, reason) = match (&info, fallback) {
                (Some(b), _) => (b.0, b.1.as_str()),
                (None, Some(c)) => (Some(c), ""),
                (None, None) => (Some(CloseCode::ABNORMAL), ""),
            };
            let id = self.ctx.id(key, &e.conn);
            let state = std::mem::take(&mut e.conn.state);
            self.handler.on_close(state, id, code, reason);
        }
    }

    fn close_finished<D: Driver>(&mut self, driver: &mut D) {
        for key in std::mem::take(&mut self.to_close) {
            let key = key as usize;
            if driver.close(Token(key)) && self.slab.contains(key) {
                self.slab.remove(key);
            }
        }
    }

    /// Deliver this turn's broadcasts: to this shard's connections, and through the mailboxes
    /// to the other shards (one wake-up each).
    fn send_broadcasts(&mut self) {
        if self.ctx.broadcasts.is_empty() {
            return;
        }
        let frames = std::mem::take(&mut self.ctx.broadcasts);
        for f in &frames {
            self.fan_out(f);
        }
        if let Some(peers) = &self.peers {
            for (i, (tx, waker)) in peers.iter().enumerate() {
                if i == self.ctx.shard as usize {
                    continue;
                }
                for f in &frames {
                    let _ = tx.send(Mail::Broadcast(f.clone()));
                }
                let _ = waker.wake();
            }
        }
    }

    /// Queue `frame` on every open connection of this shard.
    fn fan_out(&mut self, frame: &Arc<[u8]>) {
        for (key, e) in self.slab.iter_mut() {
            self.ctx.push_shared(key as u32, &mut e.conn, frame);
        }
    }

    fn begin_shutdown<D: Driver>(&mut self, driver: &mut D, at: Instant) {
        if self.shutdown_at.is_some() {
            return;
        }
        self.shutdown_at = Some(at);
        driver.stop_accepting();
        let keys: Vec<usize> = self.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(e) = self.slab.get_mut(key) else {
                continue;
            };
            match e.conn.phase {
                Phase::Handshake => self.finalize(key, None),
                Phase::Open => {
                    let id = self.ctx.id(key, &e.conn);
                    self.ctx.close(
                        &mut e.conn,
                        id,
                        CloseCode::GOING_AWAY,
                        "server shutting down",
                    );
                }
                _ => {}
            }
        }
    }

    fn drop_all(&mut self) {
        let keys: Vec<usize> = self
            .slab
            .iter()
            .filter(|(_, e)| e.conn.phase != Phase::Dead)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.finalize(key, Some(CloseCode::ABNORMAL));
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        let mut expired = std::mem::take(&mut self.expired);
        self.ctx.wheel.advance(now, &mut expired);
        let t = self.ctx.now;
        for ent in expired.drain(..) {
            let key = ent.key as usize;
            let Some(e) = self.slab.get_mut(key) else {
                continue;
            };
            let conn = &mut e.conn;
            if conn.generation != ent.generation || conn.timer_at != ent.at {
                continue; // stale: the slot was reused or an earlier entry replaced this one
            }
            conn.timer_at = 0;
            if conn.flags & PING_OUT != 0 && conn.last_rx > conn.mark {
                conn.flags &= !PING_OUT; // something arrived since the ping: alive
            }
            let deadline = match conn.phase {
                Phase::Handshake => Some(conn.mark.saturating_add(self.ctx.handshake_ticks)),
                Phase::Open if !conn.close.can_send() => {
                    Some(conn.mark.saturating_add(self.ctx.close_ticks))
                }
                Phase::Open if conn.flags & PING_OUT != 0 => {
                    Some(conn.mark.saturating_add(self.ctx.pong_ticks))
                }
                Phase::Open if self.ctx.idle_ticks > 0 => {
                    Some(conn.last_rx.saturating_add(self.ctx.idle_ticks))
                }
                Phase::Open | Phase::Dead => None,
                Phase::Flushing | Phase::Linger => {
                    Some(conn.mark.saturating_add(self.ctx.close_ticks))
                }
            };
            let Some(deadline) = deadline else {
                continue;
            };
            if t < deadline {
                self.ctx.arm(ent.key, conn, deadline);
                continue;
            }
            match conn.phase {
                Phase::Open if conn.close.can_send() && conn.flags & PING_OUT == 0 => {
                    conn.flags |= PING_OUT;
                    conn.mark = t;
                    self.ctx.push_frame(ent.key, conn, OpCode::Ping, b"");
                    let at = t.saturating_add(self.ctx.pong_ticks);
                    self.ctx.arm(ent.key, conn, at);
                }
                Phase::Handshake => {
                    ShardStats::bump(&self.ctx.stats.timeouts, 1);
                    self.finalize(key, None);
                }
                _ => {
                    ShardStats::bump(&self.ctx.stats.timeouts, 1);
                    if conn.phase != Phase::Linger {
                        conn.close_info = None;
                    }
                    self.finalize(key, None);
                }
            }
        }
        self.expired = expired;
    }

    /// Write every dirty connection's queue and act on what the writes finished.
    fn flush<D: Driver>(&mut self, driver: &mut D) {
        // Callbacks run here (on_drain, finalize) may dirty connections again: a few rounds.
        for _ in 0..4 {
            if self.ctx.dirty.is_empty() {
                return;
            }
            let mut dirty = std::mem::take(&mut self.ctx.dirty);
            for key in dirty.drain(..) {
                self.flush_one(driver, key as usize);
            }
            if self.ctx.dirty.is_empty() {
                self.ctx.dirty = dirty;
            }
        }
    }

    fn flush_one<D: Driver>(&mut self, driver: &mut D, key: usize) {
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        let conn = &mut e.conn;
        conn.flags &= !DIRTY;
        if conn.phase == Phase::Dead || conn.queue.in_flight() {
            return;
        }
        if !conn.queue.is_empty() {
            let before = conn.queue.len();
            let res = driver.send(Token(key), &mut conn.queue);
            ShardStats::bump(
                &self.ctx.stats.bytes_sent,
                (before - conn.queue.len()) as u64,
            );
            if res.is_err() {
                self.finalize(key, Some(CloseCode::ABNORMAL));
                return;
            }
            conn.queue.recycle(&mut self.ctx.pool);
        }
        conn.queue.release_if_idle();
        let low = self.ctx.config.send_queue_low_water_bytes;
        if conn.queue.len() >= low.max(1) {
            conn.flags |= DRAIN_WANTED;
        } else if conn.flags & DRAIN_WANTED != 0 {
            conn.flags &= !DRAIN_WANTED;
            if conn.phase == Phase::Open && conn.close.can_send() {
                let id = self.ctx.id(key, conn);
                self.handler.on_drain(&mut Conn {
                    inner: conn,
                    id,
                    ctx: &mut self.ctx,
                });
            }
        }
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        if e.conn.phase == Phase::Flushing && e.conn.queue.is_empty() && !e.conn.queue.in_flight() {
            if e.conn.flags & LINGER != 0 {
                driver.shutdown_write(Token(key));
                e.conn.phase = Phase::Linger;
            } else {
                self.finalize(key, None);
            }
        }
    }
}

/// Run the decoder over `buf`, dispatching events to the handler. Returns bytes consumed.
fn decode<H: Handler>(
    handler: &mut H,
    ctx: &mut Ctx,
    key: usize,
    e: &mut Entry<H::State>,
    buf: &mut [u8],
) -> Result<usize, ProtocolError> {
    let Entry { conn, decoder, .. } = e;
    let k = key as u32;
    decoder.decode(buf, |ev| {
        use std::ops::ControlFlow;
        match ev {
            Event::Text(s) => deliver(handler, ctx, key, conn, Message::Text(s)),
            Event::Binary(b) => deliver(handler, ctx, key, conn, Message::Binary(b)),
            Event::Ping(p) => {
                if conn.phase == Phase::Open && conn.close.can_send() {
                    ctx.push_frame(k, conn, OpCode::Pong, p);
                    let id = ctx.id(key, conn);
                    handler.on_ping(
                        &mut Conn {
                            inner: conn,
                            id,
                            ctx,
                        },
                        p,
                    );
                }
            }
            Event::Pong(_) => {
                if conn.flags & PING_OUT != 0 {
                    conn.flags &= !PING_OUT;
                    // The next ping is due one idle timeout after this pong, not when the
                    // pong deadline armed with the ping would have fired (later whenever
                    // pong_timeout > idle_timeout). `arm` only ever moves a deadline earlier.
                    if ctx.idle_ticks > 0 && conn.phase == Phase::Open {
                        let at = ctx.now.saturating_add(ctx.idle_ticks);
                        ctx.arm(k, conn, at);
                    }
                }
            }
            Event::Close(frame) => {
                on_close_frame(ctx, k, conn, &frame);
                return ControlFlow::Break(());
            }
        }
        if conn.phase == Phase::Open {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    })
}

fn deliver<H: Handler>(
    handler: &mut H,
    ctx: &mut Ctx,
    key: usize,
    conn: &mut Connection<H::State>,
    msg: Message<'_>,
) {
    if conn.phase != Phase::Open || !conn.close.accepts_data() {
        return;
    }
    ShardStats::bump(&ctx.stats.messages_received, 1);
    let id = ctx.id(key, conn);
    handler.on_message(
        &mut Conn {
            inner: conn,
            id,
            ctx,
        },
        msg,
    );
}

fn on_close_frame<S>(ctx: &mut Ctx, key: u32, conn: &mut Connection<S>, frame: &CloseFrame<'_>) {
    if conn.close_info.is_none() {
        conn.close_info = Some(Box::new((frame.code, frame.reason.to_owned())));
    }
    if let Some((p, n)) = conn.close.on_received(frame) {
        ctx.push_frame(key, conn, OpCode::Close, &p[..n]);
    }
    // Handshake complete: the server closes TCP first (RFC 6455 §7.1.1), after the flush; a
    // client half-closes and waits for the server's EOF.
    let client = conn.flags & CLIENT != 0;
    ctx.finish_after_flush(key, conn, client);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connection_slab_entry_is_small() {
        let size = std::mem::size_of::<Entry<()>>();
        println!("slab entry for State = (): {size} bytes");
        assert!(size <= 96, "slab entry grew to {size} bytes");
    }

    #[test]
    fn drained_send_queue_gives_its_memory_back() {
        let mut q = Queue::default();
        assert!(q.is_empty() && !q.is_allocated());
        q.push(b"hello");
        assert_eq!(q.len(), 5);
        q.set_in_flight(true);
        q.release_if_idle();
        assert!(q.is_allocated(), "released while the backend holds it");
        q.complete(3);
        q.release_if_idle();
        assert!(q.is_allocated(), "released with bytes left");
        q.set_in_flight(true);
        q.complete(2);
        q.release_if_idle();
        assert!(q.is_empty() && !q.is_allocated());
    }

    #[test]
    fn peer_addr_round_trips_ipv4_and_ipv6() {
        for a in [
            "127.0.0.1:80",
            "[::1]:443",
            "[::ffff:10.0.0.1]:9",
            "[2001:db8::7]:65535",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(PeerAddr::new(addr).get(), addr, "{a}");
        }
    }
}
