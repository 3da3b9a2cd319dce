//! The driver: per-connection state and the [`Driver`] implementation.

use std::cell::RefCell;
use std::io;
use std::net::TcpListener;
use std::os::fd::IntoRawFd;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};

use super::op::{OpId, OpKind};
use super::ring::Ring;
use super::waker::EventFdWaker;
use crate::io::LISTENERS_MAX;
use crate::io::{sys, Completion, Driver, DriverConfig, Flow, Socket, Token, Waker, IOV_MAX};
use crate::send_queue::SendQueue;

/// Tunables of one shard's ring, derived from the shard's [`DriverConfig`].
///
/// Memory per ring (one per shard, more with direct descriptors past one fixed-file table):
/// `buf_count × buf_size` bytes of receive buffers mapped (shared by every connection of the
/// ring; resident only as far as the load needs them, see `BufRing`), `16 × buf_count` bytes
/// of buffer ring, `64 × sq_entries` bytes of submission queue and `16 × 4 × sq_entries` bytes
/// of completion queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UringConfig {
    /// Submission queue entries (a power of two, ≤ 32768). The completion queue gets four times
    /// as many, since one multishot recv produces many completions. A full queue is submitted
    /// early, so this bounds batching, not correctness.
    pub sq_entries: u32,
    /// Receive buffers in the shard's provided-buffer ring (a power of two, ≤ 32768). This bounds
    /// how many receive completions can be outstanding at once; when the ring runs dry the kernel
    /// ends the affected multishot recvs with `ENOBUFS` and they are re-armed once the shard has
    /// handed the buffers back.
    pub buf_count: u16,
    /// Size of one receive buffer in bytes: the most one recv completion carries.
    pub buf_size: u32,
    /// Accept connections as io_uring direct descriptors (the rings' fixed-file tables) instead
    /// of plain file descriptors (see [`crate::ServerBuilder::direct_fds_max`] for why and what
    /// bounds them).
    /// `getpeername` needs a real descriptor, so each accepted one is installed as a plain
    /// descriptor for one `getpeername` and closed again (Linux ≥ 6.8; where that is missing,
    /// or no plain descriptor is free, the peer address is reported as `0.0.0.0:0`).
    pub direct_fds: bool,
    /// With `direct_fds`: the most connections one shard holds (the builder clamped it), over
    /// all of its rings.
    pub direct_fds_max: u32,
    /// With `direct_fds`: entries of one ring's fixed-file table (the kernel caps it at
    /// `RLIMIT_NOFILE`; [`UringDriver::new`] clamps it there). A shard whose connections do not
    /// fit one table opens another ring with a table of its own (see [`Ring`]).
    pub direct_fds_table_max: u32,
}

impl UringConfig {
    /// The ring settings for the shard's [`DriverConfig`] (whose limits the builder clamped
    /// already: see `Config::clamped`); `events_max` rounded up to a power of two for the SQ
    /// size. A value out of range fails `BufRing::new` with an error, not a panic.
    pub(super) fn from_driver(cfg: &DriverConfig) -> Self {
        Self {
            sq_entries: cfg.events_max.clamp(64, 32768).next_power_of_two() as u32,
            buf_count: u16::try_from(cfg.recv_buffers).unwrap_or(0),
            buf_size: u32::try_from(cfg.recv_buffer_bytes).unwrap_or(0),
            direct_fds: cfg.direct_fds,
            direct_fds_max: cfg.direct_fds_max,
            direct_fds_table_max: cfg.direct_fds_table_max,
        }
    }
}

/// Fixed-file table entries kept free while a multishot accept runs on a ring: a quarter of
/// the table, at most this many, but never fewer than one multishot accept can take before the
/// driver sees its completions ([`accept_burst_max`]). Past it, the accept moves to a ring with
/// more room, or (none left, or tables too small for the burst) goes one at a time.
pub(super) const DIRECT_FDS_SLACK: u32 = 4096;

/// The most connections the multishot accepts of `listeners` listeners on one ring with
/// `cq_entries` CQ entries take in one `io_uring_enter`: each goes on accepting while the
/// listen backlog has connections and the CQ has room for another completion, and the one it
/// accepted when the CQ was full ends it as its final completion (kept on the kernel's overflow
/// list). The driver sees them all before the ring's next enter, which submits the cancel
/// first. A burst larger than the table's free entries is not queued: the kernel closes each
/// connection that finds no free entry (`ENFILE`) before the shard ever hears of it, and its
/// client sees EOF during its handshake; so a multishot accept runs only on a ring with more
/// room than this.
pub(super) fn accept_burst_max(cq_entries: u32, listeners: usize) -> u32 {
    cq_entries.saturating_add(u32::try_from(listeners).unwrap_or(u32::MAX))
}

/// Most rings one shard opens (each costs two descriptors: the ring and its eventfd).
pub(super) const RINGS_MAX: usize = 256;

/// A socket as the ring knows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum RingFd {
    /// A plain file descriptor, owned by the driver.
    Fd(RawFd),
    /// An io_uring direct descriptor: an index in the fixed-file table of ring `ring`.
    Fixed {
        /// The shard's ring whose table holds it (0: the first).
        ring: u16,
        /// The index in that table.
        index: u32,
    },
}

impl RingFd {
    /// The ring that operations on this socket go to.
    pub(super) fn ring(self) -> usize {
        match self {
            RingFd::Fd(_) => 0,
            RingFd::Fixed { ring, .. } => usize::from(ring),
        }
    }

    /// The plain descriptor a `Recv` lends the shard to write to (none for a direct one).
    pub(super) fn plain(self) -> Option<RawFd> {
        match self {
            RingFd::Fd(fd) => Some(fd),
            RingFd::Fixed { .. } => None,
        }
    }
}

/// The msghdr and iovecs of one in-flight `sendmsg`. Boxed so that its address is stable
/// while the kernel may read it.
pub(super) struct SendOp {
    pub(super) iov: Vec<libc::iovec>,
    pub(super) msg: libc::msghdr,
}

impl SendOp {
    pub(super) fn new() -> Self {
        Self {
            iov: Vec::new(),
            // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
            msg: unsafe { std::mem::zeroed() },
        }
    }
}

/// One listening socket and whether its accept is armed.
pub(super) struct Listener {
    pub(super) sock: TcpListener,
    pub(super) armed: bool,
    /// The ring its accept is (or was last) armed on.
    pub(super) ring: usize,
    /// Its accept is (or was last) a multishot one; a single-shot one holds an entry of its
    /// ring's table ([`Ring::accepting`]) until it completes.
    pub(super) multishot: bool,
}

/// Per-connection state of the driver.
pub(super) struct ConnIo {
    pub(super) sock: RingFd,
    /// The generation in its low 24 bits ([`OpId::GEN_MASK`]; operations mask it off), and
    /// [`KEPT`] (see [`ConnIo::kept`]) above: one word, so that the slot stays 24 bytes.
    pub(super) gen: u32,
    /// Where its multishot recv stands.
    pub(super) recv: RecvArm,
    /// A send is in flight: a `sendmsg` whose msghdr and iovecs live in `send`, or a plain
    /// send of one chunk (`send` is `None`).
    pub(super) send_in_flight: bool,
    /// [`Driver::close`] was called: report nothing more, release when idle.
    pub(super) closing: bool,
    /// `Completion::Closed` was reported (EOF or error): do not report it twice.
    pub(super) closed_reported: bool,
    pub(super) send: Option<Box<SendOp>>,
}

/// [`ConnIo::gen`] bit: the connection has an entry in [`UringDriver::kept`].
pub(super) const KEPT: u32 = 1 << 31;

impl ConnIo {
    pub(super) fn busy(&self) -> bool {
        self.recv.armed() || self.send_in_flight
    }

    /// Does operation `op` belong to this connection (and not an earlier one of its token)?
    pub(super) fn owns(&self, op: OpId) -> bool {
        self.gen & OpId::GEN_MASK == op.gen
    }

    /// The shard kept bytes at the end of its last `Recv` ([`Flow::Keep`]): they are in
    /// [`UringDriver::kept`] until presented again.
    pub(super) fn kept(&self) -> bool {
        self.gen & KEPT != 0
    }

    /// Set or clear [`ConnIo::kept`]; returns what it was.
    pub(super) fn set_kept(&mut self, kept: bool) -> bool {
        let was = self.kept();
        self.gen = if kept {
            self.gen | KEPT
        } else {
            self.gen & !KEPT
        };
        was
    }
}

/// Where a connection's multishot recv stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum RecvArm {
    /// Not armed: never yet, or it ended (re-armed after the batch unless closing).
    Off,
    /// Armed: its final completion is not reaped yet.
    Armed,
    /// Paused by the shard ([`Flow::PauseRecv`]) and not armed.
    Paused,
    /// Paused while armed: a cancel is submitted, the recv's final completion is not reaped
    /// yet (completions before it still carry data).
    Cancelling,
}

impl RecvArm {
    /// Is a recv in the kernel?
    pub(super) fn armed(self) -> bool {
        matches!(self, RecvArm::Armed | RecvArm::Cancelling)
    }
}

/// Bytes at the end of a `Recv` that the shard kept ([`Flow::Keep`]): `len` bytes at `off` in
/// the receive-buffer mapping of the connection's ring, held out of the ring
/// ([`BufRing::hold`](super::buf_ring::BufRing::hold)) until they are presented again.
#[derive(Clone, Copy, Debug)]
pub(super) struct Kept {
    pub(super) token: Token,
    pub(super) off: usize,
    pub(super) len: usize,
}

/// One shard's io_uring driver.
pub(crate) struct UringDriver {
    /// Ring 0 (accept, wake-up, every plain descriptor) and, with direct descriptors, one more
    /// per fixed-file table the shard's connections needed (opened as they are needed, never
    /// more than [`RINGS_MAX`]).
    pub(super) rings: Vec<Ring>,
    pub(super) cfg: UringConfig,
    /// Entries of each ring's fixed-file table (0: no direct descriptors).
    pub(super) table: u32,
    /// Table entries kept free while a multishot accept runs on a ring (at least
    /// [`accept_burst_max`]); below that, a ring accepts one connection per accept request.
    pub(super) slack: u32,
    pub(super) waker: Arc<EventFdWaker>,
    /// Target of the eventfd read (8 bytes), alive as long as the ring.
    pub(super) wake_buf: Box<u64>,
    pub(super) wake_armed: bool,
    /// The shard's listeners, by index (each accept's `user_data` slot); empty after
    /// [`Driver::stop_accepting`].
    pub(super) listeners: Vec<Listener>,
    /// An accept ended on an error: arm the listeners that are not armed again at this instant.
    pub(super) accept_retry_at: Option<Instant>,
    /// Direct descriptors accepted and not yet closed, over all rings (the connection cap in
    /// that mode).
    pub(super) direct_open: u32,
    /// The kernel can install a direct descriptor as a plain one (Linux 6.8): used to learn
    /// the peer address of each accepted direct descriptor.
    pub(super) fd_install: bool,
    pub(super) conns: Vec<Option<ConnIo>>,
    /// Generation given to the next registered connection (24 bits, wrapping).
    pub(super) next_gen: u32,
    /// Submitted operations whose final completion has not been reaped yet.
    pub(super) in_flight: usize,
    /// Tokens to look at after the batch: re-arm a recv that ended (ENOBUFS, no F_MORE) once
    /// the batch's buffers are back in the ring, or release a closing connection that is idle.
    pub(super) revisit: Vec<Token>,
    /// Kept bytes of connections ([`ConnIo::kept`]), one entry each: presented again in
    /// front of the connection's next received bytes when those follow them in the mapping
    /// (one slice, nothing copied), else alone; alone at the latest when the `poll` ends, so a
    /// connection never holds a receive buffer between polls.
    pub(super) kept: Vec<Kept>,
    /// Completions copied out of a CQ for the current batch.
    pub(super) cqes: Vec<cqueue::Entry>,
    /// Completions reaped early (with their ring) to let the kernel flush an overflowing CQ.
    pub(super) backlog: Vec<(usize, cqueue::Entry)>,
    /// Spare send ops (bounded), reused to avoid an allocation per send.
    #[allow(clippy::vec_box)] // boxed: in flight, their address must not change
    pub(super) spare: Vec<Box<SendOp>>,
    /// Direct descriptors (ring, index) accepted but dropped unregistered: close them.
    pub(super) orphans: Rc<RefCell<Vec<(u16, u32)>>>,
    /// SQEs queued and CQEs reaped since [`Driver::take_turn_counts`] last took them.
    pub(super) turn_counts: (u32, u32),
}

impl Driver for UringDriver {
    fn new(listeners: Vec<TcpListener>, cfg: &DriverConfig) -> io::Result<Self> {
        let mut cfg = UringConfig::from_driver(cfg);
        if listeners.len() > LISTENERS_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many listeners",
            ));
        }
        for listener in &listeners {
            listener.set_nonblocking(true)?;
            // Accepted sockets inherit TCP_NODELAY from the listener (there is no setsockopt
            // on a direct descriptor without a real fd).
            sys::set_nodelay(listener.as_raw_fd())?;
        }
        let (mut table, mut slack) = (0, 0);
        if cfg.direct_fds {
            // One table holds at most RLIMIT_NOFILE entries (the kernel's bound). A cap that
            // fits one table gets a table of exactly that size (accepts never overshoot the
            // free entries, see `arm_accept`); a larger cap is spread over several rings, each
            // with a full table.
            let limit = sys::nofile_limit().max(1);
            let per_table = cfg.direct_fds_table_max.clamp(1, limit);
            cfg.direct_fds_table_max = per_table;
            slack = (per_table / 4).min(DIRECT_FDS_SLACK);
            table = cfg.direct_fds_max.min(per_table);
            let rings_max = u32::try_from(RINGS_MAX).unwrap_or(u32::MAX);
            cfg.direct_fds_max = cfg.direct_fds_max.min(per_table.saturating_mul(rings_max));
        }
        let mut probe = io_uring::Probe::new();
        let first = Ring::new(cfg.sq_entries, (cfg.buf_count, cfg.buf_size), table, false)?;
        if cfg.direct_fds {
            // Every ring is set up alike: the first one's CQ bounds the burst on any of them.
            let cq = first.ring.params().cq_entries();
            slack = slack.max(accept_burst_max(cq, listeners.len()));
        }
        let fd_install = cfg.direct_fds
            && first.ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::FixedFdInstall::CODE);
        let mut me = Self {
            rings: vec![first],
            cfg,
            table,
            slack,
            waker: Arc::new(EventFdWaker::new()?),
            wake_buf: Box::new(0),
            wake_armed: false,
            listeners: listeners
                .into_iter()
                .map(|sock| Listener {
                    sock,
                    armed: false,
                    ring: 0,
                    multishot: false,
                })
                .collect(),
            accept_retry_at: None,
            direct_open: 0,
            fd_install,
            conns: Vec::new(),
            next_gen: 0,
            in_flight: 0,
            revisit: Vec::new(),
            kept: Vec::new(),
            cqes: Vec::new(),
            backlog: Vec::new(),
            spare: Vec::new(),
            orphans: Rc::default(),
            turn_counts: (0, 0),
        };
        me.arm_wake()?;
        me.arm_accept()?;
        Ok(me)
    }

    fn waker(&self) -> Waker {
        self.waker.clone()
    }

    fn register(&mut self, token: Token, socket: Socket) -> io::Result<()> {
        let sock = match socket {
            Socket::Stream(s) => {
                s.set_nonblocking(true)?;
                RingFd::Fd(s.into_raw_fd())
            }
            Socket::Direct(mut d) => {
                d.registered = true;
                RingFd::Fixed {
                    ring: d.ring,
                    index: d.index,
                }
            }
        };
        if self.conns.len() <= token.0 {
            self.conns.resize_with(token.0 + 1, || None);
        }
        if self.conns[token.0].is_some() {
            self.close_sock(sock)?;
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "token registered twice",
            ));
        }
        self.next_gen = (self.next_gen + 1) & OpId::GEN_MASK;
        self.conns[token.0] = Some(ConnIo {
            sock,
            gen: self.next_gen,
            recv: RecvArm::Off,
            send_in_flight: false,
            closing: false,
            closed_reported: false,
            send: None,
        });
        let armed = self.arm_recv(token);
        if armed.is_err() {
            // The contract: on error the socket is dropped and the token is free again.
            self.release(token);
        }
        armed
    }

    fn poll<F>(&mut self, timeout: Option<Duration>, mut on: F) -> io::Result<()>
    where
        F: FnMut(Completion<'_>) -> Flow,
    {
        self.close_orphans()?;
        let mut timeout = timeout;
        if let Some(at) = self.accept_retry_at {
            let now = Instant::now();
            if at <= now {
                self.arm_accept_or_retry();
            } else {
                timeout = Some(timeout.map_or(at - now, |t| t.min(at - now)));
            }
        }
        if let Some(at) = self.rings.iter().filter_map(|r| r.bufs.trim_at()).min() {
            // Wake for the buffer ring's trim even when nothing else happens.
            let left = at.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        if !self.revisit.is_empty() || !self.backlog.is_empty() {
            timeout = Some(Duration::ZERO);
        }
        self.submit_others()?;
        self.enter(timeout)?;
        self.complete(&mut on)
    }

    fn send(&mut self, token: Token, queue: &mut SendQueue) -> io::Result<()> {
        let Some(c) = self.conn_mut(token) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if c.closing || c.send_in_flight {
            return Err(io::ErrorKind::NotConnected.into());
        }
        if let Some(one) = queue.single_slice() {
            return self.send_one(token, one.as_ptr(), one.len(), queue);
        }
        let mut op = self.spare.pop().unwrap_or_else(|| Box::new(SendOp::new()));
        op.iov.clear();
        let (chunks, head) = queue.chunks();
        for (i, chunk) in chunks.enumerate() {
            if op.iov.len() == IOV_MAX {
                break;
            }
            let b = if i == 0 {
                chunk.get(head..).unwrap_or(&[])
            } else {
                chunk
            };
            if !b.is_empty() {
                op.iov.push(libc::iovec {
                    iov_base: b.as_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                });
            }
        }
        if op.iov.is_empty() {
            self.recycle_op(op);
            return Ok(());
        }
        if let [one] = op.iov.as_slice() {
            // The unwritten bytes lie in one chunk after all (the chunks before it are
            // written): a plain send, as for a single slice.
            let (buf, len) = (one.iov_base as *const u8, one.iov_len);
            self.recycle_op(op);
            return self.send_one(token, buf, len, queue);
        }
        op.msg.msg_iov = op.iov.as_mut_ptr();
        op.msg.msg_iovlen = op.iov.len() as _;
        let msg: *const libc::msghdr = &op.msg;
        let ud = OpId::new(OpKind::Send, token.0, 0);
        let Some(c) = self.conn_mut(token) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let ud = OpId { gen: c.gen, ..ud }.encode();
        let flags = libc::MSG_NOSIGNAL;
        let sqe = match c.sock {
            RingFd::Fd(fd) => opcode::SendMsg::new(types::Fd(fd), msg)
                .flags(flags as u32)
                .build(),
            RingFd::Fixed { index, .. } => opcode::SendMsg::new(types::Fixed(index), msg)
                .flags(flags as u32)
                .build(),
        }
        .user_data(ud);
        let r = c.sock.ring();
        c.send = Some(op);
        c.send_in_flight = true;
        queue.set_in_flight(true);
        // SAFETY: the sqe points at the msghdr and iovecs in `c.send` (boxed, kept until this
        // op's completion is reaped), and they at the chunks of `queue`, whose heap memory does
        // not move or get freed while the queue is in flight (SendQueue contract: no append to
        // an in-flight chunk, and the shard keeps the queue until `Sent` or `Released`).
        let pushed = unsafe { self.push(r, &sqe) };
        if pushed.is_err() {
            // Never reached the kernel: nothing is in flight.
            queue.set_in_flight(false);
            if let Some(c) = self.conn_mut(token) {
                c.send_in_flight = false;
                if let Some(op) = c.send.take() {
                    self.recycle_op(op);
                }
            }
        }
        pushed
    }

    fn resume_recv(&mut self, token: Token) {
        let Some(c) = self.conn_mut(token) else {
            return;
        };
        match c.recv {
            RecvArm::Paused => {
                // Armed after the next batch (which does not wait), where a failure to arm
                // is reported like any other.
                c.recv = RecvArm::Off;
                self.revisit.push(token);
            }
            // The cancel still ends it; its final completion re-arms (see `complete`).
            RecvArm::Cancelling => c.recv = RecvArm::Armed,
            RecvArm::Off | RecvArm::Armed => {}
        }
    }

    fn shutdown_write(&mut self, token: Token) {
        let Some(c) = self.conn(token) else { return };
        match c.sock {
            RingFd::Fd(fd) => {
                // Errors are ignored: the close timeout bounds the wait anyway.
                let _ = sys::shutdown_write(fd);
            }
            RingFd::Fixed { ring, index } => {
                // Runs inline at submission (a socket shutdown never blocks), so before any
                // later close of this table slot.
                let sqe = opcode::Shutdown::new(types::Fixed(index), libc::SHUT_WR)
                    .build()
                    .user_data(OpId::new(OpKind::Ignore, 0, 0).encode());
                // SAFETY: a shutdown points at no user memory.
                let _ = unsafe { self.push(usize::from(ring), &sqe) };
            }
        }
    }

    fn close(&mut self, token: Token) -> bool {
        let Some(c) = self.conn_mut(token) else {
            return true;
        };
        if c.closing {
            return false;
        }
        c.closing = true;
        if c.set_kept(false) {
            self.drop_kept(token);
        }
        let Some(c) = self.conn_mut(token) else {
            return true;
        };
        if !c.busy() {
            self.release(token);
            return true;
        }
        // Cancel each operation by its user_data, which the kernel finds in a hash table. A
        // cancel by file (`IORING_ASYNC_CANCEL_FD | ALL`) walks every armed request of the ring
        // instead: closing N connections cost N² (16,000 at a graceful shutdown: 13 s of CPU
        // in io_cancel_req_match).
        let r = c.sock.ring();
        let mut ops = [None, None];
        if c.recv.armed() {
            ops[0] = Some(OpId::new(OpKind::Recv, token.0, c.gen).encode());
        }
        if c.send_in_flight {
            ops[1] = Some(OpId::new(OpKind::Send, token.0, c.gen).encode());
        }
        for ud in ops.into_iter().flatten() {
            let sqe = opcode::AsyncCancel::new(ud)
                .build()
                .user_data(OpId::new(OpKind::Ignore, 0, 0).encode());
            // SAFETY: a cancel points at no user memory. If it cannot even be queued, the
            // operation still ends on its own (peer reset, EOF) and the release follows then.
            let _ = unsafe { self.push(r, &sqe) };
        }
        false
    }

    fn stop_accepting(&mut self) {
        let listeners = std::mem::take(&mut self.listeners);
        let mut cancelled = Vec::new();
        for listener in &listeners {
            if listener.armed {
                let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(
                    listener.sock.as_raw_fd(),
                )))
                .build()
                .user_data(OpId::new(OpKind::Ignore, 0, 0).encode());
                // SAFETY: a cancel points at no user memory.
                if unsafe { self.push(listener.ring, &sqe) }.is_ok() {
                    cancelled.push(listener.ring);
                }
            }
        }
        // The kernel finds the accepts to cancel by their descriptors: submit while the
        // descriptors are still open (the in-flight accepts hold their own references to the
        // sockets until they are cancelled; what they still produce is closed unreported, see
        // `on_accept`).
        for r in cancelled {
            if let Some(ring) = self.rings.get(r) {
                let _ = ring.ring.submit();
            }
        }
        drop(listeners);
        self.accept_retry_at = None;
    }

    fn take_turn_counts(&mut self) -> Option<(u32, u32)> {
        Some(std::mem::take(&mut self.turn_counts))
    }
}
