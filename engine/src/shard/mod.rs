//! One shard: a thread that owns a driver, a slab of connections, a timer wheel and a mailbox.
//! This is the runtime; what a WebSocket connection *is* (handshake, frames, close handshake,
//! deadlines) is [`crate::proto::Connection`], which the shard drives.
//!
//! The loop: poll the driver (received bytes go to each connection's `handle_recv`, whose events
//! become handler callbacks that queue replies), register accepted sockets, read the mailbox and
//! deliver this turn's publishes and broadcasts, fire expired timers (`handle_timeout`), then
//! flush every connection whose send queue changed (one `send` per dirty connection per turn)
//! and close the sockets that are done. After every call into a connection the shard
//! [settles](Shard::settle) it: schedules its next deadline, or finalizes it when it is finished.

mod backlog;
mod cluster;
mod conn;
mod ctx;
mod delivery;
mod entry;
#[cfg(feature = "metrics")]
mod exposition;
mod flush;
mod handler;
mod handshake;
mod hub;
mod mailbox;
mod memory;
mod metering;
mod metrics;
mod register;
mod request;
mod resume;
mod settings;
mod shutdown;
mod timer;
#[cfg(feature = "tls")]
mod tls;
mod topics;

#[cfg(all(feature = "cluster", test))]
pub(crate) use cluster::HEADER_BYTES_MAX as CLUSTER_HEADER_BYTES_MAX;
#[cfg(feature = "cluster")]
pub(crate) use cluster::{link as cluster_link, BridgeEnds, BridgeShared, Control, Outgoing};
pub use conn::{Conn, SendError};
pub use handler::Handler;
pub(crate) use hub::Hub;
pub use hub::Publisher;
pub(crate) use mailbox::{Mail, Outbound};
pub use metrics::{HistogramSnapshot, Metrics, MetricsSnapshot, ShardSnapshot};
pub use request::{Decision, Deferred, HttpContext, Upgrade};

use std::collections::HashMap;
use std::io;
use std::marker::PhantomData;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use slab::Slab;

use crate::config::Config;
use crate::counters::{self, CloseReason};
use crate::id::ConnId;
use crate::io::{Completion, Driver, DriverConfig, Flow, Socket, Token, Waker, WithDriver};
use crate::proto::{
    AppEvent, CloseCode, Connection, Deadline, Endpoint, Link, Received, Timeout, MAX_HEADER_LEN,
};
use crate::send_queue::QueuePool;
use crate::stats::ShardStats;

use self::ctx::{Ctx, Out};
#[cfg(feature = "tls")]
use self::entry::TLS;
use self::entry::{
    mark_reason, marked_reason, Entry, PeerAddr, PendingUpgrade, Queue, BACKLOG, DEAD, DIRTY,
    EOF_HELD,
};
use self::memory::MemoryTrim;
use self::metering::Meter;
use self::timer::{Scheduled, TimerWheel};
use self::topics::Topics;

/// Everything a shard thread starts from.
pub(crate) struct Run<H, F> {
    pub(crate) index: usize,
    /// This shard's listeners (each `SO_REUSEPORT`, one per server address).
    pub(crate) listeners: Vec<TcpListener>,
    /// Which of them speaks TLS.
    #[cfg(feature = "tls")]
    pub(crate) tls_listener: Option<usize>,
    pub(crate) config: Arc<Config>,
    pub(crate) factory: Arc<F>,
    pub(crate) stats: Arc<ShardStats>,
    pub(crate) open: Arc<AtomicUsize>,
    pub(crate) hub: Arc<Hub>,
    /// This shard's end of its mailbox.
    pub(crate) mail: Receiver<Mail>,
    pub(crate) ready: Sender<(usize, io::Result<Waker>)>,
    pub(crate) core: Option<core_affinity::CoreId>,
    pub(crate) handler: PhantomData<fn() -> H>,
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
            // Room for a frame header beyond `recv_buffer_bytes`, so that a message of that
            // size (64 KiB by default) arrives whole in one buffer with its header and is
            // handed out where it landed, instead of being split across two reads and
            // assembled (a copy of the payload).
            recv_buffer_bytes: self.config.recv_buffer_bytes + MAX_HEADER_LEN,
            recv_keep_bytes: self.config.recv_in_place_bytes_max,
            recv_buffers: self.config.recv_buffers,
            direct_fds: self.config.direct_fds,
            direct_fds_max: self.config.direct_fds_max,
            direct_fds_table_max: self.config.direct_fds_table_max,
            events_max: 1024,
        };
        let driver = match D::new(self.listeners, &dcfg) {
            Ok(d) => d,
            Err(e) => {
                let _ = self.ready.send((self.index, Err(e)));
                return;
            }
        };
        let handler = (self.factory)(self.index);
        self.hub.mail().set_waker(self.index, driver.waker());
        if self.ready.send((self.index, Ok(driver.waker()))).is_err() {
            return;
        }
        #[cfg(feature = "tls")]
        let tls = tls::TlsConns::new(
            self.config.tls.clone(),
            self.tls_listener,
            self.config.tls_handshake_bytes_max,
        );
        let mut shard = Shard::new(
            self.index,
            handler,
            self.config,
            self.stats,
            self.open,
            self.hub,
            self.mail,
        );
        #[cfg(feature = "tls")]
        {
            shard.tls = tls;
        }
        shard.run(driver);
        shard.ctx.topics.clear();
    }
}

/// Timer resolution (the protocol layer's tick).
const TICK: Duration = Duration::from_millis(10);
/// Timer wheel slots (one revolution = 40.96 s at 10 ms; longer deadlines take rounds).
const WHEEL_SLOTS: usize = 4096;
/// Room for expired timer entries kept between turns (8 KiB); a larger burst's is freed.
const EXPIRED_KEEP: usize = 1024;

/// One shard's state (everything but the driver, so completions can borrow it while the
/// driver is polling).
struct Shard<H: Handler> {
    handler: H,
    slab: Slab<Entry<H::State>>,
    ctx: Ctx,
    ep: Endpoint,
    wheel: TimerWheel,
    hub: Arc<Hub>,
    mail: Receiver<Mail>,
    /// The last turn left mail unread (the next poll must not block).
    mail_backlog: bool,
    open: Arc<AtomicUsize>,
    /// Accepted sockets, their peers and listeners, registered after the poll.
    accepted: Vec<(Socket, SocketAddr, usize)>,
    /// Upgrade requests waiting for a deferred decision, by slab key: an entry exists exactly
    /// while its connection is live and upgrading (removed when decided or finalized).
    pending: HashMap<u32, PendingUpgrade>,
    to_close: Vec<u32>,
    expired: Vec<Scheduled>,
    next_generation: u32,
    shutdown_at: Option<Instant>,
    /// A graceful shutdown's progress in beginning its close handshakes (`shutdown.rs`).
    closing: Option<shutdown::Closing>,
    /// The loop turn, wrapping (what a connection's frame budget is counted against).
    turn: u8,
    /// `recv_frames_per_turn_max`.
    frames_per_turn: u16,
    /// The driver's [`Driver::WRITES_AT_ONCE`]: replies are written during the `Recv` that
    /// produced them (`flush::write_during_recv`).
    write_at_once: bool,
    /// Connections whose receiving is paused with frames held (`BACKLOG`): decoded first,
    /// within their budget, on the next turns.
    backlog: Vec<u32>,
    /// Memory given back after bursts (see `memory.rs`).
    memory: MemoryTrim,
    /// The sessions of the TLS connections.
    #[cfg(feature = "tls")]
    tls: tls::TlsConns,
    /// Loop-turn timing, the fine clock, the sampled gauges.
    meter: Meter,
}

impl<H: Handler> Shard<H> {
    fn new(
        index: usize,
        handler: H,
        config: Arc<Config>,
        stats: Arc<ShardStats>,
        open: Arc<AtomicUsize>,
        hub: Arc<Hub>,
        mail: Receiver<Mail>,
    ) -> Self {
        let start = Instant::now();
        let wheel = TimerWheel::new(start, TICK, WHEEL_SLOTS);
        let settings = settings::protocol(&config, &wheel);
        let frames_per_turn = u16::try_from(config.recv_frames_per_turn_max).unwrap_or(u16::MAX);
        let ctx = Ctx {
            shard: index as u32,
            dirty: Vec::new(),
            now: 0,
            broadcasts: Vec::new(),
            pool: QueuePool::new(config.buffer_pool_bytes_max),
            direct: None,
            topics: Topics::new(hub.clone(), index, stats.clone()),
            config,
            stats,
        };
        Self {
            handler,
            slab: Slab::new(),
            ctx,
            ep: Endpoint::new(settings),
            wheel,
            hub,
            mail,
            // The first poll must not block: mail may have come before the waker was set.
            mail_backlog: true,
            open,
            accepted: Vec::new(),
            pending: HashMap::new(),
            to_close: Vec::new(),
            expired: Vec::new(),
            next_generation: 0,
            shutdown_at: None,
            closing: None,
            turn: 0,
            frames_per_turn,
            write_at_once: false,
            backlog: Vec::new(),
            memory: MemoryTrim::default(),
            #[cfg(feature = "tls")]
            tls: tls::TlsConns::new(None, None, 0),
            meter: Meter::new(start),
        }
    }

    fn run<D: Driver>(&mut self, mut driver: D) {
        self.write_at_once = D::WRITES_AT_ONCE;
        loop {
            self.turn = self.turn.wrapping_add(1);
            let now = Instant::now();
            let now_us = metering::micros(self.meter.since_start(now));
            self.meter
                .end_turn(now_us, &mut driver, &self.ctx.stats.metrics);
            let mut timeout = self.wheel.next_timeout(now);
            if !self.ctx.dirty.is_empty()
                || !self.ctx.broadcasts.is_empty()
                || self.ctx.topics.has_pending()
                || self.mail_backlog
                || !self.backlog.is_empty()
                || self.closing_has_room()
            {
                // Work left over from the last turn: no sleep.
                timeout = Some(Duration::ZERO);
            } else if self.closing_waits() {
                // Closes wait for the room the unwritten ones leave: look again within a tick
                // (the completions of a send on another io_uring ring need not wake this poll).
                timeout = Some(timeout.map_or(TICK, |t| t.min(TICK)));
            }
            if let Some(at) = self.memory.due() {
                let left = at.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if let Some(at) = self.shutdown_at {
                let left = at.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            timeout = self
                .meter
                .bound_timeout(now_us, !self.slab.is_empty(), timeout);
            let res = driver.poll(timeout, |c| {
                if !self.meter.turn_started() {
                    let d = self.meter.since_start(Instant::now());
                    self.ctx.now = self.wheel.tick_at(d);
                    self.ep.set_clock_us(self.meter.start_turn(d));
                }
                self.on_completion(c)
            });
            if res.is_err() {
                // The poller itself failed (not a connection): nothing sensible is left to do.
                break;
            }
            let now = Instant::now();
            let since = self.meter.since_start(now);
            self.ctx.now = self.wheel.tick_at(since);
            if !self.meter.turn_started() {
                // No completion: the turn starts now (else the fine clock of its first
                // completion stays: a ping queued below is stamped with the turn's start).
                self.ep.set_clock_us(self.meter.start_turn(since));
            }
            self.drain_backlog(&mut driver);
            self.register_accepted(&mut driver);
            self.read_mail(&mut driver);
            self.close_batch();
            self.fire_timers(now);
            self.deliver_local();
            self.flush(&mut driver);
            self.close_finished(&mut driver);
            let held = self.ep.deflate().dedicated_bytes() as u64;
            let gauge = &self.ctx.stats.deflate_dedicated_bytes;
            if gauge.load(Ordering::Relaxed) != held {
                gauge.store(held, Ordering::Relaxed);
            }
            self.memory
                .end_of_turn(now, &mut self.ep, &mut self.ctx.pool, &mut self.slab);
            let since_us = metering::micros(since);
            self.meter
                .sample(since_us, &self.slab, &self.ctx.stats.metrics);
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

    fn on_completion(&mut self, c: Completion<'_>) -> Flow {
        match c {
            Completion::Recv {
                token,
                buf,
                direct,
                keep_max,
            } => return self.on_recv(token.0, buf, direct, keep_max),
            Completion::Sent { token, n } => {
                if let Some(e) = self.slab.get_mut(token.0) {
                    #[cfg(feature = "tls")]
                    if e.flags & TLS != 0 {
                        if let Some(t) = self.tls.conns.get_mut(e.tls().get()) {
                            t.wire.complete(n);
                        }
                    } else {
                        e.queue.complete(n);
                    }
                    #[cfg(not(feature = "tls"))]
                    e.queue.complete(n);
                    ShardStats::bump(&self.ctx.stats.bytes_sent, n as u64);
                    if e.flags & DIRTY == 0 {
                        e.flags |= DIRTY;
                        self.ctx.dirty.push(token.0 as u32);
                    }
                }
            }
            Completion::Accepted {
                socket,
                peer,
                listener,
            } => self.accepted.push((socket, peer, listener)),
            Completion::Closed { token, error } => {
                #[cfg(feature = "tls")]
                if error.is_none()
                    && matches!(self.slab.get(token.0), Some(e) if e.flags & TLS != 0)
                    && self.on_eof_tls(token.0)
                {
                    return Flow::Continue;
                }
                if let Some(e) = self.slab.get_mut(token.0) {
                    if error.is_none() && e.flags & BACKLOG != 0 {
                        // The FIN came behind frames the budget still holds (io_uring: its
                        // completion was already on the way): those first (`drain_backlog`).
                        e.flags |= EOF_HELD;
                    } else {
                        e.conn.handle_eof();
                        self.finalize(token.0);
                    }
                }
            }
            Completion::Released { token } => {
                if matches!(self.slab.get(token.0), Some(e) if e.flags & DEAD != 0) {
                    self.remove(token.0);
                }
            }
            // The mailbox is read every turn.
            Completion::Wake => {}
        }
        Flow::Continue
    }

    /// A new connection at slot `key` (the slab's vacant key); an accepted one gets its state
    /// when its upgrade is accepted.
    fn insert(
        &mut self,
        key: usize,
        peer: SocketAddr,
        conn: Connection,
        queue: Queue,
        flags: u16,
        state: Option<H::State>,
    ) {
        self.next_generation = self.next_generation.wrapping_add(1);
        let k = self.slab.insert(Entry::new(
            conn,
            queue,
            state,
            peer,
            self.next_generation,
            flags,
            self.turn,
        ));
        debug_assert_eq!(k, key);
        self.settle(key);
    }

    /// Bytes arrived on connection `key` (an empty `buf`: decode what it holds). Decodes at
    /// most the frames left of its budget for this turn; with input left over it is paused
    /// (`PauseRecv`) and put on the backlog.
    fn on_recv(
        &mut self,
        key: usize,
        buf: &mut [u8],
        direct: Option<RawFd>,
        keep_max: usize,
    ) -> Flow {
        // Counted before the handler runs (a test reads it once the echo is back). Kept bytes
        // are taken off again below: they are presented again (io_uring: maybe after other
        // connections' bytes) and counted then.
        ShardStats::bump(&self.ctx.stats.bytes_received, buf.len() as u64);
        let Some(e) = self.slab.get_mut(key) else {
            return Flow::Continue;
        };
        #[cfg(feature = "tls")]
        if e.flags & TLS != 0 {
            // TLS connections are not paused by the frame budget (see entry::TLS).
            self.on_recv_tls(key, buf);
            return Flow::Continue;
        }
        let (turn, mut frames_left) = e.budget();
        if turn != self.turn {
            frames_left = self.frames_per_turn;
        }
        let mut frames = u32::from(frames_left);
        let Entry {
            conn,
            queue,
            state,
            peer,
            generation,
            flags,
            ..
        } = e;
        let (handler, generation) = (&mut self.handler, *generation);
        let now = self.ctx.now;
        // Nothing of the backend's is pending: what this buffer's frames queue may be written
        // before the callback returns (see `flush::write_during_recv`).
        let idle = self.write_at_once && queue.is_empty() && !queue.in_flight();
        // While this buffer is decoded, a large frame may go straight to the socket.
        self.ctx.direct = direct.map(|fd| (key as u32, fd));
        let mut out = Out {
            key: key as u32,
            queue,
            flags,
            ctx: &mut self.ctx,
        };
        let (received, kept) = conn.handle_recv_keeping(
            now,
            &mut self.ep,
            &mut out,
            buf,
            &mut frames,
            keep_max,
            |ev, link| dispatch(handler, ev, link, state, peer, generation),
        );
        self.ctx.direct = None;
        if let (true, Some(fd)) = (idle, direct) {
            if e.flags & DEAD == 0 && !e.queue.is_empty() {
                flush::write_during_recv(fd, &mut e.queue, &mut self.ctx);
            }
        }
        e.set_budget(self.turn, frames as u16);
        let mut flow = if kept > 0 {
            ShardStats::bump(&self.ctx.stats.bytes_received, (kept as u64).wrapping_neg());
            Flow::Keep {
                kept,
                whole: e.conn.kept_whole_bytes(&buf[buf.len() - kept..]),
            }
        } else {
            Flow::Continue
        };
        if frames == 0 && e.conn.has_held_frames() {
            flow = Flow::PauseRecv;
            if e.flags & BACKLOG == 0 {
                e.flags |= BACKLOG;
                self.backlog.push(key as u32);
            }
        }
        if let Received::Done = received {
            // The usual case: settle with the entry at hand.
            if !schedule(&mut self.wheel, &mut self.ctx.dirty, &self.ep, key, e) {
                self.finalize(key);
            }
            return flow;
        }
        self.after_recv(key, received);
        self.settle(key);
        flow
    }

    #[inline]
    fn after_recv(&mut self, key: usize, received: Received) {
        match received {
            Received::Done => {}
            #[cfg(feature = "tls")]
            Received::Upgrade(mut req) => {
                self.tls_request(key, &mut req);
                self.upgrade(key, req);
            }
            #[cfg(not(feature = "tls"))]
            Received::Upgrade(req) => self.upgrade(key, req),
            #[cfg(feature = "tls")]
            Received::Request(mut req) => {
                self.tls_request(key, &mut req);
                self.respond(key, &req);
            }
            #[cfg(not(feature = "tls"))]
            Received::Request(req) => self.respond(key, &req),
            Received::Failed(_) => {
                ShardStats::bump(&self.ctx.stats.protocol_errors, 1);
                self.mark(key, CloseReason::ProtocolError);
            }
            Received::Refused(e) => {
                ShardStats::bump(&self.ctx.stats.handshakes_rejected, 1);
                let slot = counters::reject_slot(e.status);
                counters::bump(&self.ctx.stats.metrics.rejected[slot], 1);
                self.mark(key, CloseReason::HandshakeRejected);
            }
        }
    }

    /// Record why connection `key` is ending (the first reason stays).
    fn mark(&mut self, key: usize, reason: CloseReason) {
        if let Some(e) = self.slab.get_mut(key) {
            mark_reason(&mut e.flags, reason);
        }
    }

    /// After any call into connection `key`: finalize it if it is finished, else make sure the
    /// wheel wakes it by its next deadline and that a connection done talking gets flushed.
    fn settle(&mut self, key: usize) {
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        if !schedule(&mut self.wheel, &mut self.ctx.dirty, &self.ep, key, e) {
            self.finalize(key);
        }
    }

    /// The connection is over: tell the handler (if it was opened) and close the socket after
    /// this turn.
    fn finalize(&mut self, key: usize) {
        let id_shard = self.ctx.shard;
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        if e.flags & DEAD != 0 {
            return;
        }
        e.flags |= DEAD;
        if !e.conn.is_finished() {
            e.conn.abort();
        }
        if e.timer_at != 0 {
            // Not left in the wheel, stale, until its tick (up to the idle timeout).
            self.wheel.cancel(key as u32, e.timer_at);
            e.timer_at = 0;
        }
        // Freed is what goes back to the allocator: not what the buffer pool keeps for the
        // next messages (the pool's own releases are taken here, so counted once).
        let heap = e.conn.heap_bytes();
        let pool = self.ep.pool();
        let (kept, earlier) = (pool.bytes(), pool.take_released());
        e.conn.release_buffers(&mut self.ep);
        let kept = self.ep.pool().bytes().saturating_sub(kept);
        self.memory.freed(earlier + heap.saturating_sub(kept));
        self.ctx.topics.remove_conn(key as u32);
        if self.pending.remove(&(key as u32)).is_some() {
            ShardStats::drop_one(&self.ctx.stats.upgrades_pending);
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        ShardStats::bump(&self.ctx.stats.closed, 1);
        let reason = marked_reason(e.flags).unwrap_or(match e.conn.close_outcome().0 {
            Some(CloseCode::ABNORMAL) => CloseReason::Abnormal,
            _ => CloseReason::Normal,
        });
        counters::bump(&self.ctx.stats.metrics.closed[reason.index()], 1);
        self.to_close.push(key as u32);
        let state = e.state.take();
        if let (true, Some(state)) = (e.conn.reports_close(), state) {
            let (code, reason) = e.conn.close_outcome();
            let id = ConnId::new(id_shard, key as u32, e.generation);
            let handler = &mut self.handler;
            if catch_unwind(AssertUnwindSafe(|| {
                handler.on_close(state, id, code, reason)
            }))
            .is_err()
            {
                ShardStats::bump(&self.ctx.stats.handler_panics, 1);
            }
        }
    }

    fn close_finished<D: Driver>(&mut self, driver: &mut D) {
        for key in std::mem::take(&mut self.to_close) {
            let key = key as usize;
            #[cfg(feature = "tls")]
            self.tls_goodbye(driver, key);
            if driver.close(Token(key)) && self.slab.contains(key) {
                self.remove(key);
            }
        }
    }

    /// Forget connection `key` (its token is released: nothing refers to its queues any more).
    fn remove(&mut self, key: usize) {
        let e = self.slab.remove(key);
        #[cfg(feature = "tls")]
        if e.flags & TLS != 0 {
            self.tls.conns.try_remove(e.tls().get());
        }
        drop(e);
    }

    fn fire_timers(&mut self, now: Instant) {
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(now, &mut expired);
        let t = self.ctx.now;
        for ent in expired.drain(..) {
            let key = ent.key as usize;
            let Some(e) = self.slab.get_mut(key) else {
                continue;
            };
            // Stale: an earlier entry replaced this one (a finished connection's entry was
            // cancelled before its slot could be reused: `finalize`).
            if e.timer_at != ent.at || e.flags & DEAD != 0 {
                continue;
            }
            e.timer_at = 0;
            let mut out = Out {
                key: ent.key,
                queue: &mut e.queue,
                flags: &mut e.flags,
                ctx: &mut self.ctx,
            };
            let kind = e.conn.deadline_kind(&self.ep);
            if e.conn.handle_timeout(t, &mut self.ep, &mut out) == Timeout::Expired {
                let stats = &self.ctx.stats;
                ShardStats::bump(&stats.timeouts, 1);
                let by_kind = match kind {
                    Some(Deadline::Handshake) => &stats.timeouts_handshake,
                    Some(Deadline::Pong) => &stats.timeouts_pong,
                    _ => &stats.timeouts_close,
                };
                ShardStats::bump(by_kind, 1);
                mark_reason(&mut e.flags, CloseReason::Timeout);
            }
            self.settle(key);
        }
        // A late shard's burst (every connection's deadline at once) would keep its size here.
        expired.shrink_to(EXPIRED_KEEP);
        self.expired = expired;
    }
}

/// [`Shard::settle`] for an entry at hand: schedule its next deadline (only ever earlier: a
/// later one is found when the earlier wheel entry fires; the entry it replaces is removed)
/// and put a connection done talking on the dirty list. `false`: the connection is finished and must be finalized.
#[inline(always)]
fn schedule<S>(
    wheel: &mut TimerWheel,
    dirty: &mut Vec<u32>,
    ep: &Endpoint,
    key: usize,
    e: &mut Entry<S>,
) -> bool {
    if e.flags & DEAD != 0 {
        return true;
    }
    if let Some(at) = e.conn.poll_timeout(ep) {
        if e.timer_at == 0 || at < e.timer_at {
            if e.timer_at != 0 {
                // The later entry would sit in the wheel, stale, until its tick: a pong that
                // answers a ping leaves the pong deadline behind (up to `pong_timeout` away),
                // one per ping when pings come more often than that, 8 bytes each plus its
                // slot's growth. Its slot holds a handful of entries: a short scan, on phase
                // changes only (an earlier deadline), never per message.
                wheel.cancel(key as u32, e.timer_at);
            }
            e.timer_at = wheel.schedule(key as u32, at);
        }
        if e.conn.is_flushing() && e.flags & DIRTY == 0 {
            e.flags |= DIRTY;
            dirty.push(key as u32);
        }
        return true;
    }
    !e.conn.is_finished()
}

/// Hand one event of a connection to the handler, as a [`Conn`] over the event's link.
#[inline(always)]
fn dispatch<H: Handler>(
    handler: &mut H,
    ev: AppEvent<'_>,
    link: Link<'_, Out<'_>>,
    state: &mut Option<H::State>,
    peer: &PeerAddr,
    generation: u32,
) {
    // Events come only once the connection is open, when it has its state.
    let Some(state) = state.as_mut() else {
        return;
    };
    let Link { half, ep, out, now } = link;
    let mut conn = Conn {
        half,
        ep,
        out: out.reborrow(),
        state,
        peer,
        now,
        generation,
    };
    match ev {
        AppEvent::Message(msg) => {
            ShardStats::bump(&conn.out.ctx.stats.messages_received, 1);
            resume::on_message(handler, &mut conn, msg);
        }
        AppEvent::Ping(p) => conn.guard(|c| handler.on_ping(c, p)),
        AppEvent::Rtt { micros } => {
            let m = &conn.out.ctx.stats.metrics;
            m.ping_rtt_us.record(u64::from(micros));
        }
        AppEvent::Opened => {
            ShardStats::bump(&conn.out.ctx.stats.upgraded, 1);
            conn.guard(|c| handler.on_open(c));
        }
    }
}
