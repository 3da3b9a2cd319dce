//! `percore serve`: an echo server on the percore engine, for benchmarks and conformance runs.
//! Every mode also answers plain HTTP on the same port: `GET /healthz` is 200 with the shard
//! count and the open connections (JSON), `GET /client.js` the browser client of the resume
//! protocol (an ES module, `clients/js/percore-client.js`), any other path 404.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use percore::{
    Backend, ClusterConfig, Compression, Conn, Decision, Handler, HttpContext, Message,
    PublishOptions, Request, Response, Server, Shards, SlowConsumer, Upgrade,
};

mod broadcast;
pub mod metrics;
mod subprotocol;

/// Options of `percore serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the real one is printed).
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub addr: String,
    /// I/O backend: auto (io_uring if available, else epoll), epoll or uring.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Number of shards (threads); 0 = one per core.
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// What the server does with messages.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    pub mode: Mode,
    /// broadcast/chat: a receiver whose send queue is full misses messages instead of being
    /// closed as a slow consumer.
    #[arg(long)]
    pub droppable: bool,
    /// Most connections open at once (excess upgrades get HTTP 503); default 200000. Past
    /// RLIMIT_NOFILE it needs --backend uring --direct-fds: epoll (and io_uring without direct
    /// descriptors) keeps one file descriptor per connection, and a value above the limit is
    /// refused with an error saying so.
    #[arg(long)]
    pub connections_max: Option<usize>,
    /// Largest accepted message in bytes (larger: close 1009).
    #[arg(long, default_value_t = 16 << 20)]
    pub message_bytes_max: usize,
    /// Largest accepted frame payload in bytes (larger: close 1009).
    #[arg(long, default_value_t = 16 << 20)]
    pub frame_bytes_max: usize,
    /// Most bytes queued per connection (past it the slow-consumer policy closes it). Echo
    /// needs at least the largest message plus its header.
    #[arg(long, default_value_t = 64 << 20)]
    pub send_queue_bytes_max: usize,
    /// on_drain threshold in bytes.
    #[arg(long, default_value_t = 64 << 10)]
    pub send_queue_low_water_bytes: usize,
    /// Payloads of at least this many bytes sent onto an empty send queue are written at once,
    /// header and payload in one `sendmsg`, without a copy (plain connections without
    /// permessage-deflate; huge, the default: never; 8192 is the measured setting).
    #[arg(long, default_value_t = usize::MAX)]
    pub send_direct_bytes_min: usize,
    /// Close code for slow consumers: 1008 or 1013.
    #[arg(long, default_value_t = 1008)]
    pub slow_consumer_code: u16,
    /// Largest accepted upgrade request header block in bytes (larger: HTTP 431).
    #[arg(long, default_value_t = 8 << 10)]
    pub handshake_header_bytes_max: usize,
    /// Listen backlog per shard (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 65535)]
    pub backlog: u32,
    /// Receive buffer per shard in bytes.
    #[arg(long, default_value_t = 64 << 10)]
    pub recv_buffer_bytes: usize,
    /// epoll: largest message (with its header) handed out in place from a shard's receive
    /// buffer when the socket has it whole (the buffer grows to this; 0: off).
    #[arg(long, default_value_t = 2 << 20)]
    pub recv_in_place_bytes_max: usize,
    /// io_uring: receive buffers in each shard's buffer ring (each recv-buffer-bytes long).
    #[arg(long, default_value_t = 256)]
    pub recv_buffers: usize,
    /// Most frames one connection may have decoded per loop turn (fairness; the rest waits).
    #[arg(long, default_value_t = 256)]
    pub recv_frames_per_turn_max: u32,
    /// Bytes of large message buffers each shard keeps for reuse (0: none).
    #[arg(long, default_value_t = 4 << 20)]
    pub buffer_pool_bytes_max: usize,
    /// io_uring: accept connections as direct descriptors (not counted against
    /// RLIMIT_NOFILE). Ignored by epoll.
    #[arg(long)]
    pub direct_fds: bool,
    /// io_uring with --direct-fds: most connections per shard.
    #[arg(long, default_value_t = 1 << 20)]
    pub direct_fds_max: u32,
    /// io_uring with --direct-fds: entries of one ring's fixed-file table (clamped to
    /// RLIMIT_NOFILE, the default); a shard with more connections opens more rings.
    #[arg(long, default_value_t = 1 << 20)]
    pub direct_fds_table_max: u32,
    /// Seconds allowed to complete the upgrade request.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout_secs: u64,
    /// Seconds without input before the server pings (0: never).
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Spread of the idle pings in milliseconds: a connection pings after between
    /// idle-timeout minus this and idle-timeout without input (at most half the idle timeout).
    #[arg(long, default_value_t = 15_000)]
    pub idle_timeout_jitter_ms: u64,
    /// Seconds to wait for any input after an idle ping before dropping the connection.
    #[arg(long, default_value_t = 20)]
    pub pong_timeout_secs: u64,
    /// Seconds allowed for a close handshake.
    #[arg(long, default_value_t = 5)]
    pub close_timeout_secs: u64,
    /// Seconds a graceful shutdown (SIGINT/SIGTERM) waits for close replies.
    #[arg(long, default_value_t = 5)]
    pub shutdown_grace_secs: u64,
    /// Most close handshakes a graceful shutdown begins per shard and loop turn (the engine's
    /// `shutdown_close_batch`): about 600 bytes each while queued; connections / N loop turns
    /// before the last close begins.
    #[arg(long, default_value_t = 4096)]
    pub shutdown_close_batch: usize,
    /// Allow WebSocket upgrades from this browser origin (repeatable; none given: every
    /// origin). `https://example.com` is that origin exactly, `https://*.example.com` its
    /// subdomains, `example.com` / `*.example.com` the host / subdomains with any scheme and
    /// port, `null` the opaque origin, `*` every origin. Others get HTTP 403; requests without
    /// an Origin header (non-browser clients) pass.
    #[arg(long = "allow-origin", value_name = "PATTERN")]
    pub allow_origins: Vec<String>,
    /// Largest response to a plain HTTP request (/healthz, /client.js), head and body, in
    /// bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub http_response_bytes_max: usize,
    /// Join a cluster through this NATS server (nats://HOST:PORT, several separated by
    /// commas): in broadcast and chat modes a message also reaches the subscribers on every
    /// other server started with the same --cluster and --cluster-prefix.
    #[arg(long, value_name = "NATS_URL")]
    pub cluster: Option<String>,
    /// The cluster's NATS subject prefix (one per cluster on a shared broker).
    #[arg(long, value_name = "P", default_value = "percore")]
    pub cluster_prefix: String,
    /// Publishes waiting for the cluster bridge at most (past it they reach this server only).
    #[arg(long, default_value_t = 65_536)]
    pub cluster_queue_messages_max: usize,
    /// Topics the cluster bridge keeps a sequence counter for.
    #[arg(long, default_value_t = 65_536)]
    pub cluster_sequenced_topics_max: usize,
    /// Messages from the broker waiting for the cluster bridge, per subscribed topic (past it
    /// they are dropped and counted lost).
    #[arg(long, default_value_t = 65_536)]
    pub cluster_subscription_messages_max: usize,
    /// Publishing servers whose last position is remembered per subscribed topic.
    #[arg(long, default_value_t = 256)]
    pub cluster_origins_per_topic_max: usize,
    /// Longest wait between two reconnection attempts to the broker, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub cluster_reconnect_delay_max_ms: u64,
    /// Serve wss:// with this certificate chain (PEM, leaf first). Make a test one with
    /// `percore cert --out DIR`. Without --tls-addr, --addr serves wss:// only.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also listen on this address for wss:// (port 0: a free one); --addr stays ws://. Both
    /// are served by the same shards.
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    pub tls_addr: Option<String>,
    /// Most received bytes a TLS connection holds during its handshake.
    #[arg(long, default_value_t = 32 << 10)]
    pub tls_handshake_bytes_max: usize,
    /// permessage-deflate: off (decline), shared (no context takeover, one compressor per
    /// shard) or dedicated (context takeover, per-connection state within a budget).
    #[arg(long, value_enum, default_value_t = CompressionArg::Off)]
    pub compression: CompressionArg,
    /// Messages shorter than this are sent uncompressed.
    #[arg(long, default_value_t = 64)]
    pub deflate_threshold_bytes: usize,
    /// zlib compression level 0..=9.
    #[arg(long, default_value_t = 1)]
    pub deflate_level: u8,
    /// Largest LZ77 window the server compresses with, 9..=15 bits.
    #[arg(long, default_value_t = 12)]
    pub deflate_server_max_window_bits: u8,
    /// dedicated: client_max_window_bits answered to clients that offer it, 9..=15.
    #[arg(long, default_value_t = 12)]
    pub deflate_client_max_window_bits: u8,
    /// zlib memory level 1..=9 of the shard's compressors.
    #[arg(long, default_value_t = 8)]
    pub deflate_mem_level: u8,
    /// dedicated: most bytes of per-connection compression state per shard (then shared terms).
    #[arg(long, default_value_t = 64 << 20)]
    pub deflate_dedicated_bytes_max: usize,
    /// A subprotocol the server speaks (repeatable, in preference order is the client's): the
    /// first one the client offers that is in this list is chosen. A client offering none is
    /// served without one; a client offering only others is refused with 400 naming these.
    /// broadcast/chat also speak `percore.resume.v1` (last in the list).
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub subprotocols: Vec<String>,
    /// Serve the metrics on this address (port 0: a free one, printed): `GET /metrics` (the
    /// Prometheus text format), `GET /dashboard` (a live page) and the dashboard's WebSocket,
    /// on a second, one-shard percore server. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Most connections the metrics port holds (scrapers and dashboards); past it a dashboard
    /// gets 503. Each costs a slab entry, and an opening dashboard its history (about 2 KiB per
    /// snapshot per shard, two minutes of snapshots) in its send queue.
    #[arg(long, default_value_t = metrics::ADMIN_CONNECTIONS_MAX)]
    pub metrics_connections_max: usize,
    /// broadcast/chat: messages each topic (room) keeps for clients that resume after a
    /// reconnect (0: none). Default: 1000 in chat mode, 0 otherwise.
    #[arg(long)]
    pub topic_history_messages_max: Option<usize>,
    /// Bytes of frames each topic's history keeps at most.
    #[arg(long, default_value_t = 1 << 20)]
    pub topic_history_bytes_max: usize,
    /// Seconds a message stays in a topic's history at most.
    #[arg(long, default_value_t = 300)]
    pub topic_history_age_secs_max: u64,
    /// Most topics holding a history at once (past it the least recently published idle one
    /// is dropped).
    #[arg(long, default_value_t = 100_000)]
    pub history_topics_max: usize,
    /// Keep the code pages start-up touched resident. By default, once listening, the server
    /// drops its resident pages of the program's and libraries' code and read-only data
    /// (`MADV_DONTNEED` on clean read-only file mappings): what runs afterwards comes back
    /// from the page cache on first touch (minor faults, 64 KiB at a time), the start-up-only
    /// code (argument parsing, TLS and cluster set-up) stays out of RSS: about 4 MB less at
    /// 100 connections.
    #[arg(long)]
    pub keep_startup_pages: bool,
}

/// `--compression` on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CompressionArg {
    /// Decline permessage-deflate.
    Off,
    /// No context takeover; one compressor and decompressor per shard.
    Shared,
    /// Context takeover; per-connection windows within a budget.
    Dedicated,
}

/// Backend choice on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BackendArg {
    /// io_uring if the kernel allows it, else epoll.
    Auto,
    /// epoll (mio).
    Epoll,
    /// io_uring.
    Uring,
}

/// Server behaviour.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    /// Send every message back to its sender.
    Echo,
    /// Publish every message to all connections (sender included), on all shards; the frame
    /// is serialized once and shared by the send queues.
    Broadcast,
    /// Chat rooms: connect to /room/NAME; a message goes to everyone in the sender's room.
    Chat,
}

struct Echo {
    protocols: subprotocol::Protocols,
}

impl Handler for Echo {
    type State = ();

    fn on_upgrade(&mut self, req: &Request, up: Upgrade<()>) -> Decision<()> {
        subprotocol::accept(req, up, &self.protocols, ())
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        // A refused send already closed the connection (slow consumer or closing).
        let _ = conn.send(msg);
    }

    fn on_request(&mut self, req: &Request, cx: &HttpContext<'_>) -> Response {
        health(req, cx)
    }
}

/// The browser client of the resume protocol, served at `/client.js`.
pub const CLIENT_JS: &str = include_str!("../../clients/js/percore-client.js");

/// Plain HTTP in every mode: `GET /healthz` (or `HEAD`) answers 200 with
/// `{"status":"ok","shards":N,"connections":M}` (M: TCP connections held, this one included),
/// anything else 404.
fn health(req: &Request, cx: &HttpContext<'_>) -> Response {
    if req.path() == "/client.js" {
        return Response::with_body(200, "text/javascript; charset=utf-8", CLIENT_JS.as_bytes())
            .header("Cache-Control", "no-cache");
    }
    if req.path() != "/healthz" {
        return Response::not_found();
    }
    let body = format!(
        "{{\"status\":\"ok\",\"shards\":{},\"connections\":{}}}\n",
        cx.shards(),
        cx.stats().connections_open
    );
    Response::json(200, body).header("Cache-Control", "no-store")
}

/// The process's RLIMIT_NOFILE (soft, from `/proc/self/limits`), or `u64::MAX` when unlimited
/// or unknown.
fn nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(u64::MAX)
}

/// An explicit `--connections-max` that needs more descriptors than the process has: only
/// io_uring direct descriptors go past RLIMIT_NOFILE in one process.
fn check_descriptors(backend: Backend, direct: bool, connections: usize) -> Result<(), String> {
    let limit = nofile_limit();
    let fits = (connections as u64).saturating_add(64) <= limit;
    match backend {
        Backend::Epoll if direct => {
            Err(descriptor_error("--direct-fds needs io_uring", connections))
        }
        Backend::Epoll if !fits => Err(descriptor_error(
            "--backend epoll cannot hold that many connections in one process",
            connections,
        )),
        Backend::IoUring | Backend::Auto if !fits && !direct => Err(descriptor_error(
            "plain descriptors cannot hold that many connections in one process",
            connections,
        )),
        _ => Ok(()),
    }
}

fn descriptor_error(what: &str, connections: usize) -> String {
    format!(
        "{what}: --connections-max {connections} and RLIMIT_NOFILE {}. epoll keeps one file \
         descriptor per connection, so one epoll process holds fewer connections than that limit. \
         Use --backend uring --direct-fds (io_uring direct descriptors: not counted against \
         RLIMIT_NOFILE; a shard opens another ring when one fixed-file table is full), raise the \
         limit (`percore tune --connections {connections}`), or run several processes on the \
         port (SO_REUSEPORT).",
        nofile_limit()
    )
}

/// `percore serve`: run, and exit with status 1 and a message on failure.
pub fn main(args: ServeArgs) {
    if let Err(e) = run(args) {
        eprintln!("percore serve: {e}");
        std::process::exit(1);
    }
}

/// Run the server until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let backend = match args.backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Epoll => Backend::Epoll,
        BackendArg::Uring => Backend::IoUring,
    };
    let shards = match args.shards {
        0 => Shards::PerCore,
        n => Shards::Count(n),
    };
    let slow = match args.slow_consumer_code {
        1008 => SlowConsumer::Close1008,
        1013 => SlowConsumer::Close1013,
        c => {
            return Err(format!(
                "--slow-consumer-code must be 1008 or 1013, not {c}"
            ))
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        _ => None,
    };
    log_to_stderr();
    let connections_max = args.connections_max.unwrap_or(200_000);
    if args.connections_max.is_some() {
        check_descriptors(backend, args.direct_fds, connections_max)?;
    } else if args.direct_fds && matches!(backend, Backend::Epoll) {
        return Err(descriptor_error(
            "--direct-fds needs io_uring",
            connections_max,
        ));
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let mut builder = Server::builder()
        .bind(args.addr.as_str())
        .shards(shards)
        .pin(!args.no_pin)
        .backend(backend)
        .connections_max(connections_max)
        .message_bytes_max(args.message_bytes_max)
        .frame_bytes_max(args.frame_bytes_max)
        .send_queue_bytes_max(args.send_queue_bytes_max)
        .send_queue_low_water_bytes(args.send_queue_low_water_bytes)
        .send_direct_bytes_min(args.send_direct_bytes_min)
        .slow_consumer(slow)
        .handshake_header_bytes_max(args.handshake_header_bytes_max)
        .backlog(args.backlog)
        .recv_buffer_bytes(args.recv_buffer_bytes)
        .recv_in_place_bytes_max(args.recv_in_place_bytes_max)
        .recv_buffers(args.recv_buffers)
        .recv_frames_per_turn_max(args.recv_frames_per_turn_max)
        .buffer_pool_bytes_max(args.buffer_pool_bytes_max)
        .direct_fds(args.direct_fds)
        .direct_fds_max(args.direct_fds_max)
        .direct_fds_table_max(args.direct_fds_table_max)
        .handshake_timeout(Duration::from_secs(args.handshake_timeout_secs))
        .idle_timeout(Duration::from_secs(args.idle_timeout_secs))
        .idle_timeout_jitter(Duration::from_millis(args.idle_timeout_jitter_ms))
        .pong_timeout(Duration::from_secs(args.pong_timeout_secs))
        .close_timeout(Duration::from_secs(args.close_timeout_secs))
        .shutdown_close_batch(args.shutdown_close_batch)
        .http_response_bytes_max(args.http_response_bytes_max)
        .tls_handshake_bytes_max(args.tls_handshake_bytes_max)
        .topic_history_messages_max(args.topic_history_messages_max.unwrap_or(match args.mode {
            Mode::Chat => 1000,
            _ => 0,
        }))
        .topic_history_bytes_max(args.topic_history_bytes_max)
        .topic_history_age_max(Duration::from_secs(args.topic_history_age_secs_max))
        .history_topics_max(args.history_topics_max)
        .resume_protocol(!matches!(args.mode, Mode::Echo));
    for pattern in &args.allow_origins {
        builder = builder.allow_origin(pattern);
    }
    if let Some(url) = &args.cluster {
        builder = builder.cluster(
            ClusterConfig::new(url.as_str())
                .subject_prefix(args.cluster_prefix.as_str())
                .queue_messages_max(args.cluster_queue_messages_max)
                .sequenced_topics_max(args.cluster_sequenced_topics_max)
                .subscription_messages_max(args.cluster_subscription_messages_max)
                .origins_per_topic_max(args.cluster_origins_per_topic_max)
                .reconnect_delay_max(Duration::from_millis(args.cluster_reconnect_delay_max_ms)),
        );
    }
    builder = builder
        .compression(match args.compression {
            CompressionArg::Off => Compression::Off,
            CompressionArg::Shared => Compression::Shared,
            CompressionArg::Dedicated => Compression::Dedicated,
        })
        .deflate_threshold_bytes(args.deflate_threshold_bytes)
        .deflate_level(args.deflate_level)
        .deflate_server_max_window_bits(args.deflate_server_max_window_bits)
        .deflate_client_max_window_bits(args.deflate_client_max_window_bits)
        .deflate_mem_level(args.deflate_mem_level)
        .deflate_dedicated_bytes_max(args.deflate_dedicated_bytes_max);
    for p in &args.subprotocols {
        if !subprotocol::is_token(p) {
            return Err(format!("--subprotocol {p:?} is not an HTTP token"));
        }
    }
    // broadcast/chat speak the resume subprotocol too: a resume client offering only it is
    // served (the engine answers its commands), not refused for missing the --subprotocol list.
    let mut protocols = args.subprotocols.clone();
    let resume = percore::resume::PROTOCOL;
    if !protocols.is_empty()
        && !matches!(args.mode, Mode::Echo)
        && !protocols.iter().any(|p| p == resume)
    {
        protocols.push(resume.to_owned());
    }
    let protocols: std::sync::Arc<[String]> = protocols.into();
    let builder = match (tls, &args.tls_addr) {
        (None, _) => builder,
        (Some(t), None) => builder.tls(t),
        (Some(t), Some(a)) => builder.tls(t).tls_bind(a.as_str()),
    };
    let opts = if args.droppable {
        PublishOptions::droppable()
    } else {
        PublishOptions::default()
    };
    let p = protocols;
    let server = match args.mode {
        Mode::Echo => builder.start(move |_| Echo {
            protocols: p.clone(),
        }),
        Mode::Broadcast => builder.start(move |_| broadcast::Broadcast {
            opts,
            protocols: p.clone(),
        }),
        Mode::Chat => builder.start(move |_| broadcast::Chat::new(opts, p.clone())),
    }
    .map_err(|e| format!("cannot start server on {}: {e}", args.addr))?;
    let backend_name = match server.backend() {
        Backend::IoUring => "uring",
        Backend::Epoll => "epoll",
        _ => "auto",
    };
    let tls_note = server
        .tls_local_addr()
        .map(|a| format!(" tls={a}"))
        .unwrap_or_default();
    println!(
        "listening on {} backend={} shards={}{tls_note}{}",
        server.local_addr(),
        backend_name,
        server.shards(),
        match &args.cluster {
            Some(_) => format!(" cluster-prefix={}", args.cluster_prefix),
            None => String::new(),
        }
    );
    let admin = match &args.metrics {
        Some(addr) => {
            let admin =
                metrics::Admin::start(addr, server.metrics_handle(), args.metrics_connections_max)?;
            let a = admin.local_addr();
            println!("metrics on http://{a}/metrics dashboard http://{a}/dashboard");
            Some(admin)
        }
        None => None,
    };
    let _ = std::io::stdout().flush();
    if !args.keep_startup_pages {
        // Nothing in this process maps or unmaps files from here on (no library is loaded
        // after start-up), as the call requires.
        if let Err(e) = crate::sys::release_startup_pages() {
            eprintln!("percore serve: releasing start-up pages: {e}");
        }
    }
    let _ = signals.forever().next();
    drop(admin);
    server.shutdown(Duration::from_secs(args.shutdown_grace_secs));
    let s = server.stats();
    eprintln!(
        "stopped: accepted={} closed={} messages_received={} bytes_received={} bytes_sent={} protocol_errors={} timeouts={} timeouts_handshake={} timeouts_pong={} timeouts_close={} handler_panics={}",
        s.accepted, s.closed, s.messages_received, s.bytes_received, s.bytes_sent, s.protocol_errors, s.timeouts, s.timeouts_handshake, s.timeouts_pong, s.timeouts_close, s.handler_panics
    );
    eprintln!(
        "shutdown: closes={} turns={}",
        s.shutdown_closes, s.shutdown_close_turns
    );
    if server.tls_local_addr().is_some() {
        eprintln!(
            "tls: handshakes={} failures={}",
            s.tls_handshakes, s.tls_failures
        );
    }
    if !matches!(args.mode, Mode::Echo) {
        eprintln!(
            "pubsub: published={} delivered={} dropped={} slow_consumers={} history_topics={}",
            s.published, s.delivered, s.dropped, s.slow_consumers, s.history_topics
        );
    }
    if args.cluster.is_some() {
        let c = s.cluster;
        eprintln!(
            "cluster: sent={} received={} refused={} unsent={} lost={} discarded={} reconnects={}",
            c.sent, c.received, c.refused, c.unsent, c.lost, c.discarded, c.reconnects
        );
    }
    Ok(())
}

/// The server's TLS config from PEM files: percore's choices (aws-lc-rs, TLS 1.3, ALPN
/// http/1.1, no session tickets).
fn tls_config(cert: &Path, key: &Path) -> Result<percore::tls::rustls::ServerConfig, String> {
    use percore::tls::rustls::pki_types::pem::PemObject;
    use percore::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    percore::tls::server_config(chain, key).map_err(|e| format!("TLS config: {e}"))
}

/// The engine's warn lines (TLS failures, rate-limited per shard) on stderr.
fn log_to_stderr() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                eprintln!("percore serve: {}: {}", r.level(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}
