//! The builder, shard spawning and the handle to a running server.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::io::{self as backend_io, Waker};
use crate::shard::{self, Mail};
use crate::{Backend, Handler, Shards, SlowConsumer};

/// Entry point: `Server::builder()`.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A builder with the defaults (sized for 100k+ connections per server).
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }
}

/// Everything a shard needs to know; built by [`ServerBuilder`].
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) shards: Shards,
    pub(crate) pin: bool,
    pub(crate) backend: Backend,
    pub(crate) backlog: u32,
    pub(crate) max_connections: usize,
    pub(crate) handshake_header_bytes_max: usize,
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) send_queue_bytes_max: usize,
    pub(crate) send_queue_low_water_bytes: usize,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) recv_buffer_bytes: usize,
    pub(crate) recv_buffers: usize,
    pub(crate) direct_fds: bool,
    pub(crate) direct_fds_max: u32,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) pubsub: crate::pubsub::PubSubConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shards: Shards::PerCore,
            pin: true,
            backend: Backend::Auto,
            backlog: 4096,
            max_connections: 200_000,
            handshake_header_bytes_max: 8 << 10,
            max_frame_bytes: 16 << 20,
            max_message_bytes: 16 << 20,
            send_queue_bytes_max: 4 << 20,
            send_queue_low_water_bytes: 64 << 10,
            slow_consumer: SlowConsumer::Close1008,
            recv_buffer_bytes: 64 << 10,
            recv_buffers: 256,
            direct_fds: false,
            direct_fds_max: 20_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            pong_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(5),
            pubsub: crate::pubsub::PubSubConfig::default(),
        }
    }
}

/// Configures and starts a server. Every setter documents what the limit costs.
#[derive(Debug)]
pub struct ServerBuilder {
    addr: io::Result<SocketAddr>,
    pub(crate) config: Config,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            addr: Ok(SocketAddr::from(([0, 0, 0, 0], 9001))),
            config: Config::default(),
        }
    }
}

impl ServerBuilder {
    /// Address to listen on (default `0.0.0.0:9001`). Port 0 picks a free port, shared by all
    /// shards (each shard has its own `SO_REUSEPORT` listener on it).
    pub fn bind(mut self, addr: impl ToSocketAddrs) -> Self {
        self.addr = addr.to_socket_addrs().and_then(|mut a| {
            a.next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))
        });
        self
    }

    /// Number of shards (threads), default one per core.
    pub fn shards(mut self, shards: Shards) -> Self {
        self.config.shards = shards;
        self
    }

    /// Pin shard `i` to core `i` (default `true`). Turn off on shared or oversubscribed hosts.
    pub fn pin(mut self, pin: bool) -> Self {
        self.config.pin = pin;
        self
    }

    /// I/O backend (default [`Backend::Auto`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.config.backend = backend;
        self
    }

    /// Listen backlog per shard (default 4096; the kernel caps it at `net.core.somaxconn`).
    /// Each pending connection costs kernel memory until accepted.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.config.backlog = backlog;
        self
    }

    /// Most connections open at once across all shards (default 200 000); further upgrade
    /// requests are answered with HTTP 503. Each open connection costs its slab entry (a few
    /// hundred bytes) plus kernel socket buffers.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n;
        self
    }

    /// Largest accepted HTTP upgrade request header block (default 8 KiB); larger gets HTTP
    /// 431. A connection in its handshake holds up to this much.
    pub fn handshake_header_bytes_max(mut self, n: usize) -> Self {
        self.config.handshake_header_bytes_max = n;
        self
    }

    /// Largest accepted frame payload (default 16 MiB); larger closes with 1009.
    pub fn max_frame_bytes(mut self, n: usize) -> Self {
        self.config.max_frame_bytes = n;
        self
    }

    /// Largest accepted message, all fragments together (default 16 MiB); larger closes with
    /// 1009. A message split over several reads is assembled in a buffer of up to this size.
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.config.max_message_bytes = n;
        self
    }

    /// Most bytes queued for one connection and not yet written (default 4 MiB). A send that
    /// would take a non-empty queue past it triggers the [`SlowConsumer`] policy (a single
    /// message onto an empty queue is always accepted, so echoing a message larger than this
    /// works). Worst-case memory is this (or the largest message sent) times the number of
    /// slow readers.
    pub fn send_queue_bytes_max(mut self, n: usize) -> Self {
        self.config.send_queue_bytes_max = n;
        self
    }

    /// Once a connection's send queue has held at least this many bytes,
    /// [`Handler::on_drain`] is called when it falls below it again (default 64 KiB).
    pub fn send_queue_low_water_bytes(mut self, n: usize) -> Self {
        self.config.send_queue_low_water_bytes = n;
        self
    }

    /// What to do with a connection past `send_queue_bytes_max` (default close with 1008).
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.config.slow_consumer = policy;
        self
    }

    /// Size of each shard's receive buffer (default 64 KiB, one per shard on epoll). Bigger
    /// means fewer reads per large message, at this cost per shard.
    pub fn recv_buffer_bytes(mut self, n: usize) -> Self {
        self.config.recv_buffer_bytes = n.max(4096);
        self
    }

    /// io_uring: receive buffers in each shard's provided-buffer ring (default 256, rounded
    /// down to a power of two, at most 32768), each `recv_buffer_bytes` long: 16 MiB per shard
    /// by default. They are shared by all of the shard's connections (an idle connection holds
    /// none) and bound how many receive completions one loop turn handles; past that, the
    /// affected receives are re-armed on the next turn. epoll ignores it.
    pub fn recv_buffers(mut self, n: usize) -> Self {
        self.config.recv_buffers = n.max(1);
        self
    }

    /// io_uring: accept connections as direct descriptors (entries of each shard's ring
    /// file table) instead of file descriptors (default off). They do not count against
    /// `RLIMIT_NOFILE`, so one process can hold more connections than its descriptor limit;
    /// [`ServerBuilder::direct_fds_max`] then caps each shard. Learning a peer address takes a
    /// plain descriptor for a moment (Linux ≥ 6.8); without one [`crate::Conn::peer_addr`] is
    /// `0.0.0.0:0`. epoll ignores it.
    pub fn direct_fds(mut self, on: bool) -> Self {
        self.config.direct_fds = on;
        self
    }

    /// io_uring with [`ServerBuilder::direct_fds`]: the most connections one shard holds
    /// (default 20 000; its file table has this many entries plus 256, about 8 bytes of kernel
    /// memory each). The kernel caps one table at `RLIMIT_NOFILE` entries, so this is clamped
    /// to it: the process can hold shards × `RLIMIT_NOFILE` connections. Past the cap, new
    /// connections wait in the listen backlog until one closes.
    pub fn direct_fds_max(mut self, n: u32) -> Self {
        self.config.direct_fds_max = n.max(1);
        self
    }

    /// Time allowed from accept to a complete upgrade request (default 10 s); slower clients
    /// (slowloris) are dropped.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.config.handshake_timeout = d;
        self
    }

    /// After this long without receiving anything a ping is sent (default 60 s;
    /// `Duration::ZERO` turns idle pings off). Costs nothing per message: the timer re-checks
    /// the last activity when it fires.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = d;
        self
    }

    /// No answer this long after an idle ping: the connection is dropped and `on_close` gets
    /// 1006 (default 20 s).
    pub fn pong_timeout(mut self, d: Duration) -> Self {
        self.config.pong_timeout = d;
        self
    }

    /// Time allowed for a close handshake (or for the peer to hang up after we failed the
    /// connection) before the socket is dropped (default 5 s).
    pub fn close_timeout(mut self, d: Duration) -> Self {
        self.config.close_timeout = d;
        self
    }

    /// Bind, spawn the shards and start serving. `factory(shard_index)` is called on each
    /// shard's own thread to create that shard's handler. Fails if the address cannot be bound,
    /// the backend is not available or a shard cannot start.
    pub fn start<H, F>(self, factory: F) -> io::Result<ServerHandle>
    where
        H: Handler,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        let addr = self.addr?;
        let config = self.config;
        if !backend_io::backend_available(config.backend) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("backend {} is not available on this host", config.backend),
            ));
        }
        let backend = backend_io::resolve(config.backend);
        let n = match config.shards {
            Shards::Count(n) => n.max(1),
            Shards::PerCore => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let mut listeners = Vec::with_capacity(n);
        let first = reuseport_listener(addr, config.backlog)?;
        let local_addr = first.local_addr()?;
        listeners.push(first);
        for _ in 1..n {
            listeners.push(reuseport_listener(local_addr, config.backlog)?);
        }

        let cores = if config.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let config = Arc::new(config);
        let factory = Arc::new(factory);
        let open = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<(usize, io::Result<Waker>)>(n);
        let mut shards = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        let (hub, inboxes) = crate::pubsub::Hub::new(n, config.pubsub.clone());
        let mut inboxes = inboxes.into_iter();
        for (index, listener) in listeners.into_iter().enumerate() {
            let (mail_tx, mail_rx) = crossbeam_channel::unbounded();
            let stats = Arc::new(ShardStats::default());
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let run = shard::Run {
                index,
                listener,
                config: config.clone(),
                factory: factory.clone(),
                stats: stats.clone(),
                open: open.clone(),
                mail: mail_rx,
                ready: ready_tx.clone(),
                core,
                handler: std::marker::PhantomData,
                pubsub: (hub.clone(), inboxes.next().expect("one inbox per shard")),
            };
            let thread = std::thread::Builder::new()
                .name(format!("percore-shard-{index}"))
                .spawn(move || {
                    backend_io::run_with_backend(backend, run);
                })?;
            threads.push(thread);
            shards.push((mail_tx, stats));
        }
        drop(ready_tx);
        // Shards report in any order: keep each waker at its shard's index, next to its mailbox.
        let mut wakers: Vec<Option<Waker>> = (0..n).map(|_| None).collect();
        let mut failure = None;
        for _ in 0..n {
            match ready_rx.recv() {
                Ok((i, Ok(w))) => wakers[i] = Some(w),
                Ok((_, Err(e))) => failure = Some(e),
                Err(_) => {
                    failure
                        .get_or_insert_with(|| io::Error::other("a shard exited while starting"));
                    break;
                }
            }
        }
        let handle = ServerHandle {
            hub,
            local_addr,
            backend,
            mail: shards.iter().map(|(m, _)| m.clone()).collect(),
            wakers,
            stats: shards.into_iter().map(|(_, s)| s).collect(),
            open,
            threads: Mutex::new(threads),
            handshake_timeout: config.handshake_timeout,
        };
        if failure.is_none() {
            // Let every shard reach the others (broadcasts).
            let peers: Arc<[crate::shard::Peer]> = handle
                .mail
                .iter()
                .zip(&handle.wakers)
                .filter_map(|(m, w)| Some((m.clone(), w.clone()?)))
                .collect();
            for i in 0..handle.mail.len() {
                let _ = handle.mail_to(i, Mail::Peers(peers.clone()));
            }
        }
        match failure {
            Some(e) => {
                handle.shutdown(Duration::ZERO);
                Err(e)
            }
            None => Ok(handle),
        }
    }
}

/// One `SO_REUSEPORT` listener on `addr`.
fn reuseport_listener(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// A running server. Dropping it shuts the server down at once (as `shutdown(Duration::ZERO)`).
pub struct ServerHandle {
    pub(crate) hub: Arc<crate::pubsub::Hub>,
    local_addr: SocketAddr,
    backend: Backend,
    mail: Vec<crossbeam_channel::Sender<Mail>>,
    /// `wakers[i]` wakes shard `i` (`None`: it failed to start).
    wakers: Vec<Option<Waker>>,
    stats: Vec<Arc<ShardStats>>,
    open: Arc<AtomicUsize>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .field("backend", &self.backend)
            .field("shards", &self.mail.len())
            .finish()
    }
}

impl ServerHandle {
    /// The address the shards listen on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The backend actually running (`Auto` resolved).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Deliver `mail` to shard `shard % shards` and wake it.
    pub(crate) fn mail_to(&self, shard: usize, mail: Mail) -> io::Result<()> {
        let i = shard % self.mail.len().max(1);
        let stopped = || io::Error::new(io::ErrorKind::NotConnected, "server is shut down");
        let tx = self.mail.get(i).ok_or_else(stopped)?;
        tx.send(mail).map_err(|_| stopped())?;
        match self.wakers.get(i) {
            Some(Some(w)) => w.wake(),
            _ => Err(stopped()),
        }
    }

    /// Queue `msg` for every open accepted connection on every shard, like
    /// [`crate::Conn::broadcast`], from any thread (serialized once here).
    pub fn broadcast(&self, msg: crate::Message<'_>) {
        let op = match msg {
            crate::Message::Text(_) => crate::proto::OpCode::Text,
            crate::Message::Binary(_) => crate::proto::OpCode::Binary,
        };
        let mut v = Vec::with_capacity(msg.as_bytes().len() + crate::proto::MAX_HEADER_LEN);
        crate::proto::encode_frame(&mut v, op, true, msg.as_bytes(), None);
        let frame: Arc<[u8]> = v.into();
        for i in 0..self.mail.len() {
            let _ = self.mail_to(i, Mail::Broadcast(frame.clone()));
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.mail.len()
    }

    /// Counters summed over all shards (each read with relaxed ordering: a snapshot, not an
    /// atomic cut).
    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            connections_open: self.open.load(Ordering::Relaxed) as u64,
            ..Stats::default()
        };
        for st in &self.stats {
            st.add_to(&mut s);
        }
        self.hub.add_to(&mut s);
        s
    }

    /// Graceful shutdown: stop accepting, send close 1001 to every open connection, keep
    /// flushing and wait for the close replies until `deadline` has passed, then drop the
    /// remaining sockets (their `on_close` gets 1006) and join the shard threads. Idempotent.
    pub fn shutdown(&self, deadline: Duration) {
        let at = Instant::now() + deadline;
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        if threads.is_empty() {
            return;
        }
        self.hub.stop();
        // Every mail before any wake-up, so a woken shard always finds its mail.
        for mail in &self.mail {
            let _ = mail.send(Mail::Shutdown(at));
        }
        for waker in self.wakers.iter().flatten() {
            let _ = waker.wake();
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// Server counters (summed over shards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// TCP connections currently held (handshaking, open or closing).
    pub connections_open: u64,
    /// TCP connections accepted.
    pub accepted: u64,
    /// Upgrades completed (`on_open` called).
    pub upgraded: u64,
    /// Connections finished (socket closed).
    pub closed: u64,
    /// Handshakes refused: malformed (400/405/426/431), by `on_upgrade`, or 503 when full.
    pub handshakes_rejected: u64,
    /// Data messages received.
    pub messages_received: u64,
    /// Frames queued for sending (data and control).
    pub frames_sent: u64,
    /// Bytes received from sockets.
    pub bytes_received: u64,
    /// Bytes written to sockets.
    pub bytes_sent: u64,
    /// Connections failed for a protocol violation (or a limit) with a close code.
    pub protocol_errors: u64,
    /// Connections dropped by a deadline (handshake, pong or close timeout).
    pub timeouts: u64,
    /// Connections closed by the slow-consumer policy.
    pub slow_consumers: u64,
    /// Publishes (from handlers, [`Publisher`](crate::Publisher)s and the server handle).
    pub published: u64,
    /// Published frames queued to a subscriber.
    pub delivered: u64,
    /// Published frames a subscriber missed: droppable or conflated publishes past its
    /// `send_queue_bytes_max`, or publishes refused by a full shard mailbox.
    pub dropped: u64,
    /// Queued, unsent conflated frames replaced by a newer frame of the same topic.
    pub conflated: u64,
    /// Topics with at least one subscriber (a gauge).
    pub topics: u64,
    /// Subscriptions (connection, topic) on all shards (a gauge).
    pub subscriptions: u64,
}

/// One shard's counters, written by the shard only (aligned to a cache line so that two shards'
/// counters never share one).
#[derive(Default, Debug)]
#[repr(align(64))]
pub(crate) struct ShardStats {
    pub(crate) accepted: AtomicU64,
    pub(crate) upgraded: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) handshakes_rejected: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
}

impl ShardStats {
    /// Add `n` to a counter. Only the owning shard writes, so a relaxed load + store is exact
    /// and avoids the locked read-modify-write of `fetch_add` (several per message); readers
    /// ([`crate::ServerHandle::stats`]) see each counter's latest stored value.
    pub(crate) fn bump(c: &AtomicU64, n: u64) {
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    fn add_to(&self, s: &mut Stats) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.accepted += g(&self.accepted);
        s.upgraded += g(&self.upgraded);
        s.closed += g(&self.closed);
        s.handshakes_rejected += g(&self.handshakes_rejected);
        s.messages_received += g(&self.messages_received);
        s.frames_sent += g(&self.frames_sent);
        s.bytes_received += g(&self.bytes_received);
        s.bytes_sent += g(&self.bytes_sent);
        s.protocol_errors += g(&self.protocol_errors);
        s.timeouts += g(&self.timeouts);
        s.slow_consumers += g(&self.slow_consumers);
    }
}
