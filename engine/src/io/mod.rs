//! The I/O backends behind one narrow, completion-style interface.
//!
//! A shard owns exactly one [`Driver`]. The driver owns the shard's listening sockets (one per
//! address the server listens on, e.g. a plain and a TLS port) and every accepted socket; the shard owns everything else (connection state, send queues, timers).
//! Nothing outside `io/` names epoll or io_uring: the shard is generic over `D: Driver` and the
//! server picks the concrete type through [`run_with_backend`].
//!
//! # The contract, in one place
//!
//! * **Tokens.** The shard names each connection by a [`Token`] (its slab key, `< 2^32`).
//!   The shard never reuses a token until the driver has *released* it (see [`Driver::close`]).
//! * **Receiving** is completion-style: the driver reads on its own (epoll: into one per-shard
//!   scratch buffer when the socket is readable; io_uring: multishot recv into a provided-buffer
//!   ring) and hands each filled buffer to the shard's callback as
//!   [`Completion::Recv`]. The buffer is lent for the duration of the callback only: the shard
//!   processes it in place (unmasking mutates it) and copies any unconsumed tail away. When the
//!   callback returns, the driver reuses the buffer (epoll: next read; io_uring: back to the ring).
//!   The exception: a `Recv` that allows it (`keep_max`) may be answered with [`Flow::Keep`],
//!   and the driver then presents the kept end again with more bytes after it (a large message
//!   handed out whole where it landed instead of being copied piece by piece): epoll at once,
//!   reading on into the same buffer; io_uring with the connection's next completion when its
//!   bytes land right after the kept ones in the ring's mapping (else the kept bytes alone,
//!   with `keep_max` 0), and alone at the latest before `poll` returns.
//! * **Sending** goes through a per-connection [`SendQueue`] owned by the shard. The shard
//!   calls [`Driver::send`] when the queue is non-empty and not [`SendQueue::in_flight`]. A backend
//!   either writes synchronously and calls [`SendQueue::advance`] itself (epoll), or submits the
//!   queue's chunks, marks the queue in flight with [`SendQueue::set_in_flight`] and later reports
//!   [`Completion::Sent`] (io_uring). While a queue is in flight the heap memory of its chunks
//!   does not move: pushes never reallocate a chunk that is in flight (they start a new one), and
//!   the shard never drops a queue that is in flight (it waits for the release after `close`).
//!   During a `Recv` callback the shard may also write to the socket itself (the `direct`
//!   descriptor the completion lends), but only while that connection's queue is empty and not
//!   in flight, so no write of the backend's is pending and order holds: what it writes is
//!   either a new frame or, with a backend that [`Driver::WRITES_AT_ONCE`], the queue's bytes
//!   that this callback produced.
//! * **Closing.** The shard calls [`Driver::close`] exactly once per registered token. From then
//!   on the driver reports nothing but (eventually) the release of that token; the shard keeps
//!   the connection slot (and its send queue) until it is released.
//! * **Waking.** [`Driver::waker`] returns a handle other threads use to interrupt
//!   [`Driver::poll`]; the wake-up is reported as [`Completion::Wake`] (spurious wake-ups are fine).
//!
//! # Adding a backend
//!
//! Implement [`Driver`] in a module next to `epoll.rs`, return `true` for it from
//! [`backend_available`], and add an arm to [`run_with_backend`].

#[cfg(test)]
mod contract_tests;
pub(crate) mod epoll;
#[cfg(test)]
pub(crate) mod harness;
pub(crate) mod sys;
pub(crate) mod uring;

pub(crate) use sys::nofile_limit;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Backend;
use crate::send_queue::SendQueue;

/// After `accept` failed for lack of descriptors or memory (`EMFILE`, `ENFILE`, `ENOMEM`) both
/// backends wait this long before trying again: the pending connections stay in the listen
/// backlog meanwhile, and retrying sooner would spin on the same error. Short next to a
/// handshake timeout; the io_uring driver also retries as soon as a connection is released.
pub(crate) const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Most iovecs in one vectored write (`writev`, `sendmsg`): 64 × 16 bytes = 1 KiB, which the
/// epoll driver builds on the stack for every multi-chunk write and the io_uring driver keeps
/// per in-flight send. A longer queue goes out in several writes of at least 64 chunks each
/// (owned chunks coalesce up to 16 KiB, so that is ≥ 64 frames), which keeps the per-call cost
/// amortized; Linux accepts up to 1024.
pub(crate) const IOV_MAX: usize = 64;

/// Most listeners one driver accepts on (a server listens on a plain and a TLS address).
pub(crate) const LISTENERS_MAX: usize = 8;

/// Names one connection inside one shard: the shard's slab key (always `< 2^32`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub(crate) struct Token(pub(crate) usize);

/// Driver-level settings the shard passes to [`Driver::new`].
#[derive(Clone, Debug)]
pub(crate) struct DriverConfig {
    /// io_uring only: accept connections as direct descriptors (entries of the ring's
    /// fixed-file table). epoll ignores it. See [`crate::ServerBuilder::direct_fds_max`] for
    /// what they cost and how `RLIMIT_NOFILE` bounds them.
    pub(crate) direct_fds: bool,
    /// io_uring only, with `direct_fds`: the most connections one shard holds in that mode
    /// (already clamped by the builder), over all of its rings.
    pub(crate) direct_fds_max: u32,
    /// io_uring only, with `direct_fds`: entries of one ring's fixed-file table (the driver
    /// clamps it to `RLIMIT_NOFILE`); past one table's worth a shard opens more rings.
    pub(crate) direct_fds_table_max: u32,
    /// Bytes per receive buffer (epoll: the one scratch buffer; io_uring: each ring buffer).
    /// Also the upper bound on the length of one [`Completion::Recv`] buffer, but for epoll's
    /// reads, which ask a page more (see `epoll::READ_SLACK_BYTES`) and, after a
    /// [`Flow::Keep`], up to `recv_keep_bytes`.
    pub(crate) recv_buffer_bytes: usize,
    /// epoll: the receive buffer grows to this many bytes (when larger than
    /// `recv_buffer_bytes`) to hold a message the shard keeps whole ([`Flow::Keep`]); only
    /// what reads reach becomes resident. io_uring ignores it.
    #[allow(dead_code)] // read by the epoll backend
    pub(crate) recv_keep_bytes: usize,
    /// Number of receive buffers (io_uring buffer-ring entries; epoll ignores it).
    #[allow(dead_code)] // read by completion-based backends
    pub(crate) recv_buffers: usize,
    /// Upper bound on completions handled per [`Driver::poll`] call (io_uring CQ size hint,
    /// epoll events capacity).
    pub(crate) events_max: usize,
}

/// An accepted connection that is not registered yet: what [`Completion::Accepted`] carries and
/// [`Driver::register`] takes. The shard never looks inside; dropping it closes the connection.
#[derive(Debug)]
pub(crate) enum Socket {
    /// A plain socket (every backend accepts these, e.g. an outbound connection).
    Stream(TcpStream),
    /// An io_uring direct descriptor; only the driver that accepted it can register it.
    Direct(uring::DirectFd),
}

impl From<TcpStream> for Socket {
    fn from(s: TcpStream) -> Self {
        Socket::Stream(s)
    }
}

/// What a backend reports to the shard from [`Driver::poll`].
#[derive(Debug)]
pub(crate) enum Completion<'a> {
    /// A connection was accepted on one of the shard's listeners. It is not registered yet:
    /// the shard calls [`Driver::register`] (after `poll` returns) or drops it.
    Accepted {
        /// The accepted socket, non-blocking, `TCP_NODELAY` set.
        socket: Socket,
        /// The peer address (`0.0.0.0:0` when unknown: an io_uring direct descriptor whose
        /// address could not be asked).
        peer: SocketAddr,
        /// Which listener accepted it: its index in the list given to [`Driver::new`].
        listener: usize,
    },
    /// Bytes arrived on a connection. `buf` is non-empty and lent only for this callback.
    Recv {
        /// The connection.
        token: Token,
        /// The received bytes; the shard may modify them in place.
        buf: &'a mut [u8],
        /// The socket's descriptor, when the shard may write to it directly during this
        /// callback ([`sys::send_vectored_nowait`]) while its queue is empty and not in flight
        /// (no write of the backend's is pending then, so order holds); `None` when it may not
        /// (an io_uring direct descriptor has no plain descriptor).
        direct: Option<std::os::fd::RawFd>,
        /// The shard may answer [`Flow::Keep`] with fewer than this many bytes (0: it may
        /// not): the driver can present the end of `buf` again followed by more bytes of the
        /// socket (epoll: at once, in one buffer of `keep_max` bytes, after a read that filled
        /// what it asked for; io_uring: a message of up to one ring buffer, see [`Flow::Keep`]).
        keep_max: usize,
    },
    /// A send that the backend started asynchronously finished (io_uring; a failed one is
    /// reported as `n = 0` followed by [`Completion::Closed`] with the error), or (epoll) the
    /// socket became writable again after a short write, reported with `n = 0`. The shard then
    /// calls [`SendQueue::complete`] with `n` and, if the queue is still non-empty, `send` again.
    Sent {
        /// The connection.
        token: Token,
        /// Bytes written from the front of the queue.
        n: usize,
    },
    /// The peer closed its side (EOF) or the socket failed (reset, error on send or receive).
    /// No more `Recv` follows for this token; the shard must still call [`Driver::close`].
    Closed {
        /// The connection.
        token: Token,
        /// `None` for an orderly EOF.
        error: Option<io::Error>,
    },
    /// A token given to [`Driver::close`] that the driver could not release at once is now
    /// released: no operation refers to it or to its send queue any more.
    #[allow(dead_code)] // produced by completion-based backends
    Released {
        /// The connection.
        token: Token,
    },
    /// [`Waker::wake`] was called (the shard should look at its mailbox).
    Wake,
}

/// The shard's answer to a [`Completion`]: only a [`Completion::Recv`]'s matters.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) enum Flow {
    /// Go on.
    #[default]
    Continue,
    /// Stop receiving on this token until [`Driver::resume_recv`]: the connection has more
    /// input waiting than it may handle this turn. epoll reads the socket no more (the data
    /// stays in the kernel); io_uring cancels the multishot receive, and the completions
    /// already produced still arrive (the shard holds them).
    PauseRecv,
    /// Only in answer to a `Recv` with a `keep_max` larger than `kept`: the shard did not
    /// consume (nor copy) the last `kept` bytes of the buffer. The driver presents them again,
    /// first, in its next `Recv` for this token, followed by what the socket has now, or alone
    /// with a `keep_max` of 0 (the shard then holds them). epoll does so at once; io_uring with
    /// the connection's next receive completion in the same `poll` (followed by its bytes
    /// when they land right after the kept ones, which the ring's consecutive buffers make the
    /// usual case) or, if none comes, alone before `poll` returns, so that no receive buffer
    /// stays held between polls.
    Keep {
        /// Bytes left at the end of the buffer.
        kept: usize,
        /// Bytes the kept frame needs to be whole, header included, when the kept bytes say
        /// (else 0): the driver reads no further than that for it (no more of its buffer
        /// becomes resident than the message needs).
        whole: usize,
    },
}

/// A cross-thread wake-up for one shard's driver (mio `Waker`, eventfd, `msg_ring`...).
pub(crate) trait Wake: Send + Sync {
    /// Interrupt the driver's current or next [`Driver::poll`]; it reports [`Completion::Wake`].
    fn wake(&self) -> io::Result<()>;
}

/// Shared handle to a shard's wake-up mechanism.
pub(crate) type Waker = Arc<dyn Wake>;

/// One shard's I/O backend. All methods are called on the shard's own thread only.
pub(crate) trait Driver: Sized {
    /// [`Driver::send`] writes at once (a `write` per call, nothing batched): the shard then
    /// writes a connection's reply during the `Recv` that produced it, through the descriptor
    /// the completion lends, rather than at the end of the loop turn. No batching is lost, and
    /// the bytes go out while they are in cache, from storage the next connection's reply
    /// reuses (a turn over N connections holds one reply buffer, not N). `false` for a backend
    /// that batches its sends (io_uring: one submit per turn).
    const WRITES_AT_ONCE: bool = false;

    /// Take ownership of the shard's listeners (each already bound and listening,
    /// `SO_REUSEPORT`; at most [`LISTENERS_MAX`]) and prepare to accept on all of them. A
    /// listener may be blocking; the driver sets what it needs.
    fn new(listeners: Vec<TcpListener>, cfg: &DriverConfig) -> io::Result<Self>;

    /// A handle that other threads use to interrupt [`Driver::poll`].
    fn waker(&self) -> Waker;

    /// Start receiving on `socket` under `token` (a token not in use). Must not call back.
    /// On error the socket is dropped and the token is free again.
    fn register(&mut self, token: Token, socket: Socket) -> io::Result<()>;

    /// Wait until at least one completion is ready or `timeout` passes (`None`: no limit,
    /// `Some(ZERO)`: do not block), then call `on` for every ready completion, in order.
    /// Received buffers are lent to `on` and reused after it returns; `on` answers a `Recv`
    /// with [`Flow::PauseRecv`] to stop receiving on that token.
    fn poll<F>(&mut self, timeout: Option<Duration>, on: F) -> io::Result<()>
    where
        F: FnMut(Completion<'_>) -> Flow;

    /// Receive on `token` again after a [`Flow::PauseRecv`] (nothing received meanwhile is
    /// lost: it waited in the kernel). No effect on a token that is not paused.
    fn resume_recv(&mut self, token: Token);

    /// Write the front of `queue` to `token`'s socket. Called only when the queue is non-empty
    /// and not in flight. Either write now and [`SendQueue::advance`] over what was written
    /// (arranging a later `Sent { n: 0 }` if some is left), or submit, call
    /// [`SendQueue::set_in_flight`]`(true)` and report `Sent { n }` when done. A failure is
    /// reported either as `Err` here or later as [`Completion::Closed`] with an error.
    fn send(&mut self, token: Token, queue: &mut SendQueue) -> io::Result<()>;

    /// Half-close: send FIN on `token`'s socket (`shutdown(SHUT_WR)`) and keep receiving until the
    /// peer closes too ([`Completion::Closed`]). Called only when the queue is empty and not in
    /// flight; used to let the peer read a final response or close frame before we close (a
    /// close with unread input would send RST and could destroy what we wrote). Errors are
    /// ignored: the shard's close timeout bounds the wait anyway.
    fn shutdown_write(&mut self, token: Token);

    /// Stop everything for `token` and close its socket (pending queue bytes are not written).
    /// Returns `true` if the token is released now, `false` if operations are still in flight;
    /// then a [`Completion::Released`] follows and the shard must keep the queue alive until it.
    fn close(&mut self, token: Token) -> bool;

    /// Stop accepting and close the listeners (graceful shutdown). Idempotent.
    fn stop_accepting(&mut self);

    /// Submission and completion queue entries since the last call (io_uring: SQEs queued and
    /// CQEs reaped), for the per-turn metrics; `None` for a backend without queues (epoll).
    fn take_turn_counts(&mut self) -> Option<(u32, u32)> {
        None
    }
}

/// Is `backend` usable on this host (kernel support, permissions)? `Auto` is always usable.
/// io_uring is probed once per process ([`uring::probe`]); when `Auto` falls back to epoll
/// because of it, one line on stderr says why.
pub(crate) fn backend_available(backend: Backend) -> bool {
    match backend {
        Backend::Auto | Backend::Epoll => true,
        Backend::IoUring => uring_probe().is_ok(),
    }
}

fn uring_probe() -> &'static Result<(), String> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE.get_or_init(uring::probe)
}

/// Resolve `Auto` to the best backend available on this host.
pub(crate) fn resolve(backend: Backend) -> Backend {
    match backend {
        Backend::Auto => match uring_probe() {
            Ok(()) => Backend::IoUring,
            Err(why) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| eprintln!("percore: io_uring unavailable ({why}); using epoll"));
                Backend::Epoll
            }
        },
        other => other,
    }
}

/// Something that runs with a concrete driver type (the shard loop).
pub(crate) trait WithDriver {
    /// What the run returns.
    type Output;
    /// Run with the driver type `D`.
    fn run<D: Driver>(self) -> Self::Output;
}

/// Run `f` with the driver type of `backend` (already resolved: not `Auto`).
pub(crate) fn run_with_backend<W: WithDriver>(backend: Backend, f: W) -> Option<W::Output> {
    match backend {
        Backend::Epoll => Some(f.run::<epoll::EpollDriver>()),
        Backend::IoUring => Some(f.run::<uring::UringDriver>()),
        Backend::Auto => None,
    }
}
