//! The builder and shard spawning; the handle to a running server is in `server/handle.rs`.

mod handle;
mod receive;

use std::any::TypeId;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(feature = "cluster")]
use crate::cluster::{Bridge, ClusterConfig};
use crate::config::{Backend, Compression, Config, Shards, SlowConsumer};
use crate::history::TopicHistory;
use crate::io::{self as backend_io, Waker};
use crate::shard::{self, Handler, Hub, Metrics};
use crate::stats::ShardStats;

pub use handle::ServerHandle;

/// Entry point: `Server::builder()`.
#[derive(Debug)]
#[non_exhaustive]
pub struct Server;

impl Server {
    /// A builder with the defaults (sized for 100k+ connections per server).
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }
}

/// Configures and starts a server. Every setter documents what the limit costs.
#[derive(Debug)]
pub struct ServerBuilder {
    addr: io::Result<SocketAddr>,
    /// A second listener, for TLS (`tls_bind`).
    #[cfg(feature = "tls")]
    tls_addr: Option<io::Result<SocketAddr>>,
    pub(crate) config: Config,
    /// The first refused `allow_origin` pattern, reported by `start`.
    origin_error: Option<String>,
    #[cfg(feature = "cluster")]
    cluster: Option<ClusterConfig>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            addr: Ok(SocketAddr::from(([0, 0, 0, 0], 9001))),
            #[cfg(feature = "tls")]
            tls_addr: None,
            config: Config::default(),
            origin_error: None,
            #[cfg(feature = "cluster")]
            cluster: None,
        }
    }
}

fn one_addr(addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
    addr.to_socket_addrs().and_then(|mut a| {
        a.next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))
    })
}

impl ServerBuilder {
    /// Address to listen on (default `0.0.0.0:9001`). Port 0 picks a free port, shared by all
    /// shards (each shard has its own `SO_REUSEPORT` listener on it).
    pub fn bind(mut self, addr: impl ToSocketAddrs) -> Self {
        self.addr = one_addr(addr);
        self
    }

    /// Serve `wss://` with this rustls config: on the [`ServerBuilder::tls_bind`] address when
    /// one is given (the [`ServerBuilder::bind`] address then stays plain, and both are served
    /// by the same shards), else on the `bind` address. TLS 1.3 only (see [`crate::tls`]);
    /// [`crate::tls::server_config`] makes a config with percore's choices. The config is used
    /// as given, except: secret extraction on, no 0-RTT data, ALPN `http/1.1` when it sets
    /// none, and its certificate resolver wrapped to learn the SNI
    /// ([`crate::Request::server_name`]).
    ///
    /// Cost: a TLS connection holds about 2.5 KiB more than a plain one while idle (two AEAD
    /// keys and rustls' key schedule, no buffer; 2.65 KiB of heap per connection measured at
    /// 10,000, bench/results/2026-12-01-tls.md), up to `tls_handshake_bytes_max` during its
    /// handshake, and whatever of its plaintext send queue is sealed and not yet written (at
    /// most 256 KiB plus record overhead). The handshake counts against `handshake_timeout`.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: impl Into<Arc<rustls::ServerConfig>>) -> Self {
        self.config.tls = Some(config.into());
        self
    }

    /// A second address, which speaks TLS (needs [`ServerBuilder::tls`]); port 0 picks a free
    /// one. [`ServerHandle::tls_local_addr`] tells which.
    #[cfg(feature = "tls")]
    pub fn tls_bind(mut self, addr: impl ToSocketAddrs) -> Self {
        self.tls_addr = Some(one_addr(addr));
        self
    }

    /// Most received bytes a TLS connection holds while its handshake runs (default 32 KiB;
    /// at least one TLS record, 16,645 bytes): what rustls has not consumed yet, usually
    /// nothing or part of one record. Past it the connection is closed (a
    /// [`Stats::tls_failures`](crate::Stats::tls_failures)). Worst case this times the connections in their handshake.
    #[cfg(feature = "tls")]
    pub fn tls_handshake_bytes_max(mut self, n: usize) -> Self {
        self.config.tls_handshake_bytes_max = n;
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

    /// Listen backlog per shard (default 65535; the kernel caps it at `net.core.somaxconn`,
    /// 4096 by default since Linux 5.4, so the default only takes effect on a host tuned as
    /// `percore tune` says). It bounds the connections the kernel has completed but the shard
    /// has not accepted yet: past it the kernel drops the client's final handshake ACK
    /// (`TcpExtListenOverflows`) and the client waits for a retransmission (1 s, 3 s, ...) or
    /// gets a reset. Cost: nothing while the queue is short; each queued connection holds its
    /// kernel socket (~10 KiB on loopback, plus any request bytes already sent) until accepted.
    /// A connect storm of 1,000,000 clients at 12,000/s onto two shards overflowed 4096 85,838
    /// times (one client reset) and 65535 never (bench/results/2026-12-01-million.md).
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.config.backlog = backlog;
        self
    }

    /// Most connections open at once across all shards (default 200 000); further upgrade
    /// requests are answered with HTTP 503. Each open connection costs its slab entry (under
    /// 100 bytes) plus kernel socket buffers. Connections still in their handshake count too:
    /// an upgrade waiting for a [deferred](crate::Deferred) decision (which also holds its
    /// parsed request, 1–2 KiB for a browser's) and a plain HTTP request being answered.
    pub fn connections_max(mut self, n: usize) -> Self {
        self.config.connections_max = n;
        self
    }

    /// Largest accepted HTTP upgrade request header block (default 8 KiB); larger gets HTTP
    /// 431. A connection in its handshake holds up to this much.
    pub fn handshake_header_bytes_max(mut self, n: usize) -> Self {
        self.config.handshake_header_bytes_max = n;
        self
    }

    /// Largest accepted frame payload (default 16 MiB); larger closes with 1009.
    pub fn frame_bytes_max(mut self, n: usize) -> Self {
        self.config.frame_bytes_max = n;
        self
    }

    /// Largest accepted message, all fragments together (default 16 MiB); larger closes with
    /// 1009. A message split over several reads is assembled in a buffer of up to this size.
    pub fn message_bytes_max(mut self, n: usize) -> Self {
        self.config.message_bytes_max = n;
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
    /// [`Handler::on_drain`] is called when it falls below it again (default 64 KiB; at
    /// least 1).
    pub fn send_queue_low_water_bytes(mut self, n: usize) -> Self {
        self.config.send_queue_low_water_bytes = n;
        self
    }

    /// Payloads of at least this many bytes (default: off, `usize::MAX`; 8 KiB is the size the
    /// copy-free measurements used) sent onto an empty send queue go to
    /// the socket at once, header and payload in one `sendmsg` straight from the handler's bytes
    /// (an echo: the receive buffer); only what the socket does not take is copied into the
    /// queue. Saves a copy of the payload per message, costs one system call per such message
    /// (smaller frames share one write per connection per loop turn). Plain connections without
    /// permessage-deflate, in the receive callbacks; `usize::MAX` turns it off. Costs no memory.
    pub fn send_direct_bytes_min(mut self, n: usize) -> Self {
        self.config.send_direct_bytes_min = n;
        self
    }

    /// What to do with a connection past `send_queue_bytes_max` (default close with 1008).
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.config.slow_consumer = policy;
        self
    }

    /// Size of each shard's receive buffer (default 64 KiB, one per shard on epoll, 4 KiB..1 GiB),
    /// plus 14 bytes for the header of a message that size. Bigger: fewer reads, more memory.
    pub fn recv_buffer_bytes(mut self, n: usize) -> Self {
        self.config.recv_buffer_bytes = n;
        self
    }

    /// io_uring: receive buffers in each ring's provided-buffer ring (default 256, rounded
    /// down to a power of two, 1..=32768), each `recv_buffer_bytes` long: 16 MiB per ring
    /// mapped by default (a shard has one ring, more with direct descriptors past one
    /// fixed-file table: see [`ServerBuilder::direct_fds_table_max`]). They are shared by the
    /// ring's connections (an idle connection holds none) and bound how many receive
    /// completions one loop turn handles; past that, the affected receives are re-armed on the
    /// next turn. Only as many as the traffic of the last seconds needed are resident: 8
    /// (512 KiB) under light traffic, up to all of them during a burst, given back to the
    /// kernel 6 s after traffic goes quiet; while traffic goes on, bursts less than half a
    /// minute apart (a client uploading as fast as it can now and then) keep them resident,
    /// so that RSS stays flat under such a load, at most this many × `recv_buffer_bytes` per
    /// ring. epoll ignores it.
    pub fn recv_buffers(mut self, n: usize) -> Self {
        self.config.recv_buffers = n;
        self
    }

    /// Most frames (data or control, whatever their size) one connection may have decoded per
    /// loop turn (default 256; 1..=65535), so that a client flooding tiny frames or pings
    /// cannot slow the shard's other connections down by more than that much work per turn.
    /// What is left waits: the rest of the receive buffer is held (copied) by the connection
    /// and decoded first on the next turns, and until then the socket is not read (epoll) or
    /// its multishot receive is cancelled (io_uring; completions already in flight are held
    /// too), so one flooder holds at most about one receive buffer. Cost: a connection that
    /// sends more than this many frames per turn gets them handled over several turns (one
    /// copy of what was held, and on io_uring a re-armed receive); lower means fairer turns,
    /// higher means fewer pauses for clients that batch many small messages. Not applied to
    /// TLS connections yet: their records are opened in place and decoded whole (a `wss://`
    /// flooder costs its shard what a plain one did before this limit).
    pub fn recv_frames_per_turn_max(mut self, n: u32) -> Self {
        self.config.recv_frames_per_turn_max = n;
        self
    }

    /// Most bytes of large message buffers (64 KiB and more: messages split across reads or
    /// fragmented) each shard keeps between messages for reuse (default 4 MiB; 0 keeps none).
    /// A message that needs one takes it from the pool instead of allocating it, and a
    /// connection that dies mid-message gives its buffer back. The same bound applies apart
    /// to the buffers of large frames sent (more than 4 KiB each): once written they are kept
    /// for the next large frames instead of being freed (from 128 KiB on the allocator would
    /// map and unmap one per frame). Cost: up to twice this much memory per shard while large
    /// messages flow; a receive pool left unused for 5 s is freed, a sent frame's buffer no
    /// frame took again for 1-2 s is freed (so the send side keeps what the load of the last
    /// second or two used, busy or not), and after a burst of freed buffers
    /// the shard asks the allocator to give free memory back to the system.
    pub fn buffer_pool_bytes_max(mut self, n: usize) -> Self {
        self.config.buffer_pool_bytes_max = n;
        self
    }

    /// glibc: at [`ServerBuilder::start`], fix malloc's mmap and trim thresholds at 128 KiB,
    /// their initial values, for the whole process (default on). glibc otherwise raises them
    /// (up to 32 and 64 MiB) once a large block is freed, after which freed send queues and
    /// message buffers of up to that size stay resident in the shards' arenas: RSS then follows
    /// the largest burst so far instead of the load. Cost: each allocation of 128 KiB or more
    /// that the buffer pool does not serve (a large send queue, a message past the pool) is an
    /// `mmap` and `munmap` of its own, with its page faults. Turn it off when the application
    /// tunes malloc itself. Other allocators ignore it.
    pub fn fixed_malloc_thresholds(mut self, on: bool) -> Self {
        self.config.fixed_malloc_thresholds = on;
        self
    }

    /// io_uring: accept connections as direct descriptors (entries of each shard's ring
    /// file table) instead of file descriptors (default off), so that one process can hold
    /// more connections than its descriptor limit: see [`ServerBuilder::direct_fds_max`].
    /// Learning a peer address takes a plain descriptor for a moment (Linux ≥ 6.8); without one
    /// [`crate::Conn::peer_addr`] is `0.0.0.0:0`. epoll ignores it.
    pub fn direct_fds(mut self, on: bool) -> Self {
        self.config.direct_fds = on;
        self
    }

    /// io_uring with [`ServerBuilder::direct_fds`]: the most connections one shard holds
    /// (default 2^20 = 1 048 576; nothing is allocated until connections come). Past the cap,
    /// new connections wait in the listen backlog until one closes.
    ///
    /// # Descriptors and `RLIMIT_NOFILE`
    ///
    /// Every plain socket counts against the process's `RLIMIT_NOFILE` (20 000 on the hosts
    /// this is measured on, often 1024 by default): past it, `accept` fails (`EMFILE`) and new
    /// connections wait in the listen backlog. **epoll cannot go past that limit in one
    /// process**: it needs a descriptor per connection (run several processes on the port with
    /// `SO_REUSEPORT`, or io_uring with direct descriptors). Direct descriptors are entries of
    /// an io_uring fixed-file table instead, and do not count against it; the kernel caps one
    /// table at `RLIMIT_NOFILE` entries too, so a shard whose connections outgrow one table
    /// opens another ring with a table of its own (up to 256 rings per shard, see
    /// [`ServerBuilder::direct_fds_table_max`]): one shard thread holds any number of
    /// connections up to this cap, whatever the limit. Kernel memory: about 8 bytes per table
    /// entry. `percore tune` reports the limit and how to raise it.
    pub fn direct_fds_max(mut self, n: u32) -> Self {
        self.config.direct_fds_max = n;
        self
    }

    /// io_uring with [`ServerBuilder::direct_fds`]: entries of one ring's fixed-file table
    /// (default: the largest the kernel allows, which is `RLIMIT_NOFILE`; clamped to it).
    ///
    /// A shard starts with one ring. When the tables it has are down to their last quarter (at
    /// most 4096 entries, but never fewer than one multishot accept can take in one go: the
    /// ring's completion-queue entries, 4096 by default, plus one per listener; the kernel
    /// would close each connection of a larger burst that finds no free entry) and
    /// [`ServerBuilder::direct_fds_max`] allows more, it opens another ring with its
    /// own table, buffer ring and eventfd (a table no larger than that burst is filled to its
    /// last entry one accept at a time first); the shard's one thread still waits in one
    /// `io_uring_enter` (on the first ring, which keeps a read armed on each other ring's
    /// eventfd) and enters another ring only to submit to it or when its eventfd fired.
    ///
    /// Cost of each extra ring: two descriptors (the ring and its eventfd), its submission and
    /// completion queues (`64 + 4 × 16` bytes per entry, 1024 entries: ~130 KiB), its receive
    /// buffers ([`ServerBuilder::recv_buffers`] × [`ServerBuilder::recv_buffer_bytes`], touched
    /// as used) and one `io_uring_enter` in a loop turn that sent on one of its connections.
    /// Smaller tables mean more rings for the same connections; the setting exists to bound a
    /// table below the limit (and to test the spreading with a small one).
    pub fn direct_fds_table_max(mut self, n: u32) -> Self {
        self.config.direct_fds_table_max = n;
        self
    }

    /// Time allowed from accept to a complete request and its answer (default 10 s): slower
    /// clients (slowloris) are dropped, and so is an upgrade whose [deferred](crate::Deferred)
    /// decision has not come by then. Either way the connection is closed without a response
    /// (why not 408: see [`crate::Deferred`]).
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

    /// Spread of the idle pings (default 15 s, at most half the idle timeout): a connection
    /// pings after between `idle_timeout − jitter` and `idle_timeout` without input, drawn
    /// afresh at its handshake and at each ping. Without it, connections opened in one burst
    /// (a restart's reconnect storm) ping in the same 10 ms tick every `idle_timeout`, and their
    /// pongs come back together: at a million connections and 60 s, 16 700 pings a second on
    /// average but all of a burst at once. Costs no memory (2 bytes in a connection's padding)
    /// and a random draw per ping; pings come up to `jitter` earlier than `idle_timeout`.
    /// `Duration::ZERO` turns the spread off.
    pub fn idle_timeout_jitter(mut self, d: Duration) -> Self {
        self.config.idle_timeout_jitter = d;
        self
    }

    /// No answer this long after an idle ping: the connection is dropped and `on_close` gets
    /// 1006 (default 20 s).
    pub fn pong_timeout(mut self, d: Duration) -> Self {
        self.config.pong_timeout = d;
        self
    }

    /// Time allowed for a close handshake (or for the peer to hang up after we failed the
    /// connection) before the socket is dropped (default 5 s). The close handshakes of a
    /// graceful shutdown ([`ServerHandle::shutdown`]) may take until its deadline if that is
    /// later.
    pub fn close_timeout(mut self, d: Duration) -> Self {
        self.config.close_timeout = d;
        self
    }

    /// Most close handshakes a graceful shutdown ([`ServerHandle::shutdown`]) begins per shard
    /// and loop turn (default 4096; 0 counts as 1). A batch begins only as far as the close
    /// frames of the ones before it are written out, and the other connections stay open and
    /// served until their turn. Costs: memory, about `n` × 600 bytes of queued close frames at
    /// once (~2.5 MiB at the default); time, `connections / n` loop turns per shard before the
    /// last close begins (25 turns for 100,000 at the default). The shutdown deadline ends every
    /// connection still open, whether or not its close began.
    pub fn shutdown_close_batch(mut self, n: usize) -> Self {
        self.config.shutdown_close_batch = n;
        self
    }

    /// Longest topic name in bytes (default 256); longer names are refused with
    /// [`PubSubError::TopicTooLong`](crate::PubSubError::TopicTooLong). Each topic a shard has
    /// subscribers for costs its name (twice: shard table and the shared shard mask) plus one
    /// entry per subscriber.
    pub fn topic_name_bytes_max(mut self, n: usize) -> Self {
        self.config.topic_name_bytes_max = n;
        self
    }

    /// Most data messages waiting in one shard's mailbox (publishes, sends and broadcasts from
    /// other shards and threads; default 65 536; at least 1). Past it, that shard misses the
    /// message ([`PubSubError::MailboxFull`](crate::PubSubError::MailboxFull), counted in
    /// [`Stats::dropped`](crate::Stats::dropped)). Each waiting message costs about 64 bytes
    /// plus a reference that keeps its frame alive, so worst-case mailbox memory is this times
    /// the frame size.
    pub fn mailbox_messages_max(mut self, n: usize) -> Self {
        self.config.mailbox_messages_max = n;
        self
    }

    /// Messages each topic keeps in its history (default 0: no history; see
    /// [`crate::resume`]). With history, every publish to the topic gets a position and the
    /// topic keeps its last messages within this count, [`Self::topic_history_bytes_max`] and
    /// [`Self::topic_history_age_max`], so that resume subscribers that lost their connection
    /// get what they missed. Cost per publish: one lock of the topic's history, one envelope
    /// frame encoded (shared by every resume subscriber and the history), and the plain frame
    /// as before; memory: the kept frames (shared with the send queues) plus ~65 bytes per kept
    /// message and ~200 per topic (measured: ~160 bytes per kept 64-byte message; about
    /// 200-300 ns of CPU per publish, bench/results/2026-12-01-resume-cost.md). Per-topic
    /// values: [`Self::topic_history`].
    pub fn topic_history_messages_max(mut self, n: usize) -> Self {
        self.config.history.default.messages_max = n;
        self
    }

    /// Bytes of frames each topic's history keeps at most (default 1 MiB; a message larger
    /// than this is never kept). A replay is queued whole when a subscriber resumes, beside
    /// the send-queue limit: keep this below `send_queue_bytes_max`, or live messages that
    /// follow a full replay find the queue over its limit.
    pub fn topic_history_bytes_max(mut self, n: usize) -> Self {
        self.config.history.default.bytes_max = n;
        self
    }

    /// Age past which history messages are dropped (default 5 minutes; checked when the topic
    /// is published to or resumed, and when room is needed for another topic's history).
    pub fn topic_history_age_max(mut self, d: Duration) -> Self {
        self.config.history.default.age_max = d;
        self
    }

    /// The history limits of the topics `pattern` names instead of the server's (repeatable,
    /// first match wins): `name*` every topic whose name starts with `name`, anything else one
    /// topic exactly. `TopicHistory::OFF` turns history off for them.
    pub fn topic_history(mut self, pattern: impl AsRef<[u8]>, limits: TopicHistory) -> Self {
        let p = pattern.as_ref().to_vec();
        self.config.history.overrides.push((p, limits));
        self
    }

    /// Most topics holding a history at once (default 100,000; at least 1), with or without
    /// subscribers: a topic's history outlives its subscribers (they come back to resume it).
    /// Past it, the history of a topic nobody subscribes to is dropped to make room (expired
    /// ones first, else the one published to least recently: its clients will be told it
    /// started over); if every such topic has subscribers, the new topic gets no history. This
    /// bounds what clients that choose their topics (chat rooms) can make the server keep:
    /// this times the per-topic bound.
    pub fn history_topics_max(mut self, n: usize) -> Self {
        self.config.history.topics_max = n;
        self
    }

    /// Speak the resume subprotocol (`percore.resume.v1`, see [`crate::resume`]) with clients
    /// that offer it, when the handler's [`Accept`](crate::Accept) chose no subprotocol
    /// (default `false`: off until the application decides which topics its clients may read,
    /// in [`Handler::on_subscribe`], since the engine answers their subscriptions itself).
    /// Costs nothing for other connections. A handler may also accept with
    /// `Accept::new().protocol(percore::resume::PROTOCOL)` itself.
    pub fn resume_protocol(mut self, on: bool) -> Self {
        self.config.resume_protocol = on;
        self
    }

    /// Allow upgrade requests from browser pages of `pattern` (repeatable; each call adds one).
    /// Once any pattern is given, an upgrade request whose `Origin` matches none is refused
    /// with 403 before [`Handler::on_upgrade`] is called; requests without an `Origin` header
    /// still pass (see [`ServerBuilder::origin_required`]). Plain HTTP requests are not
    /// checked. A pattern that does not parse makes [`ServerBuilder::start`] fail with
    /// `InvalidInput`.
    ///
    /// | pattern | allows |
    /// |---|---|
    /// | `*` | every origin |
    /// | `https://example.com` | exactly that origin: scheme, host and port (the scheme's default port may be written or left out) |
    /// | `https://*.example.com` | any subdomain of `example.com` (not `example.com` itself) with that scheme and port |
    /// | `example.com`, `localhost:8080` | that host with any scheme; with a port only that port, else any |
    /// | `*.example.com` | any subdomain of `example.com`, any scheme, any port |
    /// | `null` | the opaque origin `null` (sandboxed iframes, `file:` pages) |
    ///
    /// Schemes and hosts compare case-insensitively; a malformed or repeated `Origin` header
    /// matches nothing. `null` is refused unless listed: any site can make its page send it (a
    /// sandboxed iframe), so allowing it is nearly allowing all.
    ///
    /// # The default allows every origin: cross-site WebSocket hijacking
    ///
    /// Browsers apply no same-origin policy and no CORS to WebSockets: a page on *any* site can
    /// open a WebSocket to this server from a visitor's browser, and the browser sends that
    /// visitor's cookies (and HTTP authentication) with the upgrade request. A server that
    /// authenticates WebSockets by cookie therefore hands the visitor's session to every site
    /// they visit, unless it checks `Origin`: list your own origins here (or check
    /// [`Request::origin`](crate::Request::origin) in `on_upgrade`). Tokens that the page must
    /// put in the request itself (a query parameter, a subprotocol) are not sent by other
    /// sites and need no Origin check; non-browser clients send no `Origin` at all.
    pub fn allow_origin(mut self, pattern: impl AsRef<str>) -> Self {
        if let Err(e) = self.config.origins.allow(pattern.as_ref()) {
            self.origin_error.get_or_insert(e.to_string());
        }
        self
    }

    /// Refuse (403) upgrade requests that carry no `Origin` header (default `false`: clients
    /// other than browsers send none, and are not what the Origin check is about). Browsers
    /// always send one with a WebSocket request.
    pub fn origin_required(mut self, required: bool) -> Self {
        self.config.origins.required = required;
        self
    }

    /// Largest response to a plain HTTP request, head and body (default 1 MiB; a larger one
    /// from [`Handler::on_request`] is answered with 500 instead). A response is copied into its
    /// connection's send queue and held there until the client reads it, so worst-case memory
    /// is this times the number of plain requests being answered at once.
    pub fn http_response_bytes_max(mut self, n: usize) -> Self {
        self.config.http_response_bytes_max = n;
        self
    }

    /// Join a cluster: publishes reach the subscribers of their topic on every server that
    /// joined the same NATS broker with the same subject prefix (see [`crate::cluster`] for
    /// what it costs and what may be lost). `start` checks the configuration (`InvalidInput`)
    /// and starts the bridge thread; it does not wait for the broker, which the bridge keeps
    /// reconnecting to ([`crate::ClusterStats::connected`]). Engine feature `cluster`.
    #[cfg(feature = "cluster")]
    pub fn cluster(mut self, config: ClusterConfig) -> Self {
        self.cluster = Some(config);
        self
    }

    /// permessage-deflate (RFC 7692, default [`Compression::Off`]: offers are declined).
    /// Either way one compressor per window size in use and one decompressor per shard, about
    /// 180 KiB each, serve every connection. [`Compression::Shared`] costs an idle connection
    /// nothing, and CPU per message; [`Compression::Dedicated`] compresses better across
    /// similar messages and costs each connection the peer's window while it is open
    /// (2^`deflate_client_max_window_bits` bytes, 4 KiB by default; 32 KiB for a client that
    /// does not offer `client_max_window_bits`) plus our own window once it has sent a
    /// compressed message (2^`deflate_server_max_window_bits` bytes, the history its next
    /// messages may reference, 4 KiB by default; dropped when [`ServerBuilder::idle_timeout`]
    /// passes without input), within [`ServerBuilder::deflate_dedicated_bytes_max`] per shard;
    /// its CPU per message is a little above `Shared`'s (the window is hashed again for each
    /// message). A compressed message is
    /// inflated whole once it has arrived, its inflated size bounded by
    /// [`ServerBuilder::message_bytes_max`] (1009 past it, corrupt data 1007).
    pub fn compression(mut self, mode: Compression) -> Self {
        self.config.compression = mode;
        self
    }

    /// Messages shorter than this are sent uncompressed (default 64 bytes): small messages
    /// compress badly and each compression costs a few microseconds.
    pub fn deflate_threshold_bytes(mut self, n: usize) -> Self {
        self.config.deflate_threshold_bytes = n;
        self
    }

    /// zlib compression level, 0..=9 (default 1, zlib-rs' fastest: about half the CPU of
    /// level 6 for a few percent larger output on JSON-like text).
    pub fn deflate_level(mut self, level: u8) -> Self {
        self.config.deflate_level = level;
        self
    }

    /// The largest LZ77 window the server compresses with, 9..=15 bits (default 12, 4 KiB),
    /// announced as `server_max_window_bits` so clients can inflate with a small window. A
    /// client asking for less gets less (8 is honoured with distance-1 matches only). A
    /// dedicated connection that sends keeps 2^this bytes of history; each of the shard's
    /// compressors costs 16 bytes per window byte plus zlib-rs' fixed 128 KiB hash table and
    /// the literal buffers of [`ServerBuilder::deflate_mem_level`].
    pub fn deflate_server_max_window_bits(mut self, bits: u8) -> Self {
        self.config.deflate_server_max_window_bits = bits;
        self
    }

    /// [`Compression::Dedicated`]: the `client_max_window_bits` answered to a client that
    /// offers it, 9..=15 (default 12): what each such connection costs while open, in bytes,
    /// is 2^this (the client's window, kept between its messages).
    pub fn deflate_client_max_window_bits(mut self, bits: u8) -> Self {
        self.config.deflate_client_max_window_bits = bits;
        self
    }

    /// zlib memory level of the shard's compressors (one per window size in use), 1..=9
    /// (default 8): zlib-rs sizes its literal buffers by it (7 × 2^(level+6) bytes per
    /// compressor: 112 KiB at 8, 14 KiB at 5); lower levels end Huffman blocks sooner
    /// (slightly larger output for large messages). Nothing per connection.
    pub fn deflate_mem_level(mut self, level: u8) -> Self {
        self.config.deflate_mem_level = level;
        self
    }

    /// [`Compression::Dedicated`]: most bytes of per-connection compression state one shard
    /// holds (peer windows plus our own; default 64 MiB: 8,192 connections with both 4 KiB
    /// windows, 16,384 idle ones). Past it, new connections get shared terms (no context
    /// takeover) and a connection with no room for its own window sends uncompressed until it
    /// fits.
    pub fn deflate_dedicated_bytes_max(mut self, n: usize) -> Self {
        self.config.deflate_dedicated_bytes_max = n;
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
        if let Some(e) = self.origin_error {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
        }
        let mut config = self.config.clamped(backend_io::nofile_limit());
        // The address of each listener, and which one speaks TLS.
        #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
        let mut addrs = vec![addr];
        #[cfg(feature = "tls")]
        let tls_listener = match (&config.tls, self.tls_addr) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "tls_bind needs a TLS config (ServerBuilder::tls)",
                ))
            }
            (Some(_), None) => Some(0),
            (Some(_), Some(a)) => {
                addrs.push(a?);
                Some(1)
            }
        };
        #[cfg(feature = "tls")]
        if let Some(cfg) = &config.tls {
            config.tls = Some(crate::tls::prepare_server(cfg));
        }
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            c.check(config.topic_name_bytes_max)?;
        }
        if !backend_io::backend_available(config.backend) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("backend {} is not available on this host", config.backend),
            ));
        }
        let backend = backend_io::resolve(config.backend);
        config.backend = backend;
        if config.fixed_malloc_thresholds {
            crate::io::sys::fix_malloc_thresholds();
        }
        let n = match config.shards {
            Shards::Count(n) => n.max(1),
            Shards::PerCore => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        // Per shard, one listener on each address (the first shard's picks the port).
        let mut listeners: Vec<Vec<TcpListener>> = (0..n).map(|_| Vec::new()).collect();
        let mut local_addrs = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let first = reuseport_listener(addr, config.backlog)?;
            let local = first.local_addr()?;
            listeners[0].push(first);
            for l in listeners.iter_mut().skip(1) {
                l.push(reuseport_listener(local, config.backlog)?);
            }
            local_addrs.push(local);
        }
        let local_addr = local_addrs[0];

        let cores = if config.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let config = Arc::new(config);
        let factory = Arc::new(factory);
        let open = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<(usize, io::Result<Waker>)>(n);
        let stats: Vec<Arc<ShardStats>> = (0..n).map(|_| Arc::default()).collect();
        let mut threads = Vec::with_capacity(n);
        #[cfg(feature = "cluster")]
        let (link, ends) = match &self.cluster {
            Some(c) => {
                let (link, ends) = shard::cluster_link(c.queue_messages_max)?;
                (Some(link), Some(ends))
            }
            None => (None, None),
        };
        #[cfg(not(feature = "cluster"))]
        let link = None;
        let (hub, mailboxes) = Hub::new(
            stats.clone(),
            open.clone(),
            config.mailbox_messages_max,
            config.topic_name_bytes_max,
            config.history.clone(),
            link,
        );

        for ((index, listener), mail) in listeners.into_iter().enumerate().zip(mailboxes) {
            let shard_stats = stats[index].clone();
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let run = shard::Run {
                index,
                listeners: listener,
                #[cfg(feature = "tls")]
                tls_listener,
                config: config.clone(),
                factory: factory.clone(),
                stats: shard_stats.clone(),
                open: open.clone(),
                hub: hub.clone(),
                mail,
                ready: ready_tx.clone(),
                core,
                handler: std::marker::PhantomData,
            };
            let thread = std::thread::Builder::new()
                .name(format!("percore-shard-{index}"))
                .spawn(move || {
                    backend_io::run_with_backend(backend, run);
                })?;
            threads.push(thread);
        }
        drop(ready_tx);
        // Each shard registers its waker with its mailbox itself; here only failures matter.
        let mut failure = None;
        for _ in 0..n {
            match ready_rx.recv() {
                Ok((_, Ok(_))) => {}
                Ok((_, Err(e))) => failure = Some(e),
                Err(_) => {
                    failure
                        .get_or_insert_with(|| io::Error::other("a shard exited while starting"));
                    break;
                }
            }
        }
        #[cfg(feature = "cluster")]
        let bridge = match (&self.cluster, ends) {
            (Some(c), Some(ends)) if failure.is_none() => {
                match Bridge::start(c, config.topic_name_bytes_max, hub.clone(), ends) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        failure = Some(e);
                        None
                    }
                }
            }
            _ => None,
        };
        let handle = ServerHandle {
            metrics: Metrics::new(hub.clone(), config.clone()),
            hub,
            local_addr,
            #[cfg(feature = "tls")]
            tls_local_addr: tls_listener.map(|i| local_addrs[i]),
            backend,
            threads: Mutex::new(threads),
            #[cfg(feature = "cluster")]
            bridge: Mutex::new(bridge),
            handshake_timeout: config.handshake_timeout,
            state_type: (TypeId::of::<H::State>(), std::any::type_name::<H::State>()),
        };
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
