//! The io_uring backend ([`UringDriver`]).
//!
//! One ring per shard, created on the shard thread that drives it
//! (`SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN`): completions are only produced while that
//! thread waits in [`Driver::poll`], never in the middle of a loop turn.
//!
//! What runs in the ring:
//! - one multishot accept on the shard's listener, producing plain descriptors, or io_uring
//!   *direct* descriptors in the ring's fixed-file table when `direct_fds` is set (those do not
//!   count against `RLIMIT_NOFILE`; `direct_fds_max`, at most `RLIMIT_NOFILE` since the kernel
//!   caps each table there, is then the shard's connection cap);
//! - one multishot recv per connection, drawing from the shard's provided-buffer ring. The
//!   received bytes are lent to the shard for one [`Completion::Recv`] callback, and the buffer
//!   goes back to the ring as soon as it returns (on Linux ≥ 6.12 the ring is incremental: small
//!   receives share a buffer, which goes back after its last slice). An idle connection owns no
//!   receive buffer;
//! - at most one send in flight per connection: a plain `send` when the unwritten bytes are one
//!   chunk, else a `sendmsg` over the iovecs of its [`SendQueue`]'s chunks (which do not move
//!   while the queue is in flight); every dirty connection's send is submitted by the
//!   same `io_uring_enter` that waits for the next completions, so a loop turn costs one syscall;
//! - one read on an eventfd, the cross-thread wake-up ([`EventFdWaker`]).
//!
//! Every submission carries an [`OpId`] (kind, token, generation) in its `user_data`. A token is
//! released (and its socket closed) only once none of its operations is in flight.
//!
//! Memory: per shard, `recv_buffers × recv_buffer_bytes` of receive buffers (shared by all
//! connections, touched as they are used), 16 bytes per buffer-ring entry, 64 bytes per SQ
//! entry and 4 × 16 bytes per CQ entry; per connection, one [`ConnIo`] slot (24 bytes) and,
//! only while a send is in flight, a pooled [`SendOp`] (msghdr + up to [`IOV_MAX`] iovecs). In
//! the kernel an idle connection holds its armed multishot recv (one request, ~256 bytes) where
//! epoll holds an epitem (~128 bytes).
//!
//! Teardown: [`Drop`] cancels every operation and waits (bounded) for their completions before
//! the buffers, iovecs and — since the driver is dropped before the shard's connections — the
//! send-queue chunks they point to are freed.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::IntoRawFd;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{Completion, Driver, DriverConfig, SendQueue, Socket, Token, Wake, Waker};

/// Buffer group id of the shard's provided-buffer ring (one group per ring).
const BGID: u16 = 0;

/// How long the listener waits after its multishot accept failed (descriptor table full,
/// `EMFILE`) before it is armed again, unless a connection is released first.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Tunables of one shard's ring, derived from the shard's [`DriverConfig`].
///
/// Memory per shard: `buf_count × buf_size` bytes of receive buffers (shared by every
/// connection of the shard; touched as the ring cycles through them), `16 × buf_count` bytes
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
    /// Accept connections as io_uring direct descriptors (the ring's fixed-file table) instead of
    /// plain file descriptors. Direct descriptors do not count against `RLIMIT_NOFILE`; the
    /// table's size [`UringConfig::direct_fds_max`] becomes the shard's connection cap.
    /// `getpeername` needs a real descriptor, so each accepted one is installed as a plain
    /// descriptor for one `getpeername` and closed again (Linux ≥ 6.8; where that is missing,
    /// or no plain descriptor is free, the peer address is reported as `0.0.0.0:0`).
    pub direct_fds: bool,
    /// With `direct_fds`: the most connections one shard holds. The fixed-file table is
    /// registered with 256 more entries, so a burst accepted in the turn that reaches the cap
    /// still finds slots; near the cap accepts go one at a time, which keeps it exact. The
    /// kernel caps one table at `RLIMIT_NOFILE` entries, and this cap with it: a process holds
    /// at most shards × `RLIMIT_NOFILE` direct descriptors (not counted against the limit).
    /// Cost: 8 bytes of kernel memory per entry.
    pub direct_fds_max: u32,
}

impl UringConfig {
    /// The ring settings for the shard's [`DriverConfig`]: `recv_buffers` rounded down to a
    /// power of two (at most 32768), `events_max` rounded up to one for the SQ size.
    fn from_driver(cfg: &DriverConfig) -> Self {
        let count = cfg.recv_buffers.clamp(1, 32768);
        let count = 1usize << (usize::BITS - 1 - count.leading_zeros());
        Self {
            sq_entries: cfg.events_max.clamp(64, 32768).next_power_of_two() as u32,
            buf_count: count as u16,
            buf_size: cfg.recv_buffer_bytes.clamp(64, 1 << 30) as u32,
            direct_fds: cfg.direct_fds,
            direct_fds_max: cfg.direct_fds_max,
        }
    }
}

/// Check that this process can run the io_uring backend: the sysctl allows it, a ring with the
/// flags the backend uses can be set up (which needs Linux ≥ 6.1, so multishot accept and recv
/// exist), every opcode the backend submits is supported and a provided-buffer ring can be
/// registered. `Err` says why not, in one line.
///
/// The probe runs on a thread of its own: tearing a ring down queues task work to the thread
/// that created it with `TWA_SIGNAL`, which makes a blocking socket call with a timeout on that
/// thread fail with `EINTR` (seen as failed client handshakes on the thread that started the
/// server).
pub(crate) fn probe() -> Result<(), String> {
    std::thread::Builder::new()
        .name("percore-uring-probe".into())
        .spawn(probe_here)
        .map_err(|e| format!("cannot start the io_uring probe thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
}

fn probe_here() -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err("io_uring is disabled (kernel.io_uring_disabled = 2)".into());
        }
    }
    let ring = builder()
        .build(8)
        .map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    let needed = [
        ("accept", opcode::AcceptMulti::CODE),
        ("recv", opcode::RecvMulti::CODE),
        ("sendmsg", opcode::SendMsg::CODE),
        ("send", opcode::Send::CODE),
        ("async_cancel", opcode::AsyncCancel2::CODE),
        ("close", opcode::Close::CODE),
        ("read", opcode::Read::CODE),
    ];
    for (name, code) in needed {
        if !probe.is_supported(code) {
            return Err(format!("io_uring opcode {name} not supported"));
        }
    }
    let bufs =
        BufRing::new(&ring, 1, 64, false).map_err(|e| format!("io_uring buffer ring: {e}"))?;
    let unregistered = ring.submitter().unregister_buf_ring(BGID);
    drop(bufs);
    unregistered.map_err(|e| format!("io_uring buffer ring: {e}"))
}

fn builder() -> io_uring::Builder {
    let mut b = IoUring::builder();
    b.setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_submit_all();
    b
}

// ---------------------------------------------------------------------------------------------
// user_data

/// What a submission was for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum OpKind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    /// Cancel and close requests: their completions carry nothing the driver needs.
    Ignore = 4,
    Wake = 5,
    /// Close of a direct descriptor: its completion frees a table slot.
    CloseDirect = 6,
    /// A direct descriptor installed as a plain one just long enough to ask its peer address.
    PeerOf = 7,
}

/// `user_data` of a submission: kind (8 bits), slot generation (24 bits), slot index (32 bits).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct OpId {
    kind: OpKind,
    gen: u32,
    slot: u32,
}

impl OpId {
    const GEN_MASK: u32 = (1 << 24) - 1;

    fn new(kind: OpKind, slot: usize, gen: u32) -> Self {
        Self {
            kind,
            gen: gen & Self::GEN_MASK,
            slot: slot as u32,
        }
    }

    fn encode(self) -> u64 {
        (self.kind as u64) << 56
            | (u64::from(self.gen & Self::GEN_MASK)) << 32
            | u64::from(self.slot)
    }

    fn decode(v: u64) -> Option<Self> {
        let kind = match (v >> 56) as u8 {
            1 => OpKind::Accept,
            2 => OpKind::Recv,
            3 => OpKind::Send,
            4 => OpKind::Ignore,
            5 => OpKind::Wake,
            6 => OpKind::CloseDirect,
            7 => OpKind::PeerOf,
            _ => return None,
        };
        Some(Self {
            kind,
            gen: (v >> 32) as u32 & Self::GEN_MASK,
            slot: v as u32,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// provided-buffer ring

/// `IOU_PBUF_RING_INC` (Linux 6.12): the kernel consumes a provided buffer incrementally.
const PBUF_RING_INC: u16 = 2;

/// A provided-buffer ring: `count` buffers of `size` bytes, registered with the ring as buffer
/// group [`BGID`]. A buffer is either in the ring (the kernel may fill it) or lent out by one
/// recv completion until [`BufRing::recycle`] puts it back.
///
/// Where the kernel supports it the ring is *incremental*: a recv takes only the bytes it
/// fills from the head buffer, so many small messages share one buffer instead of taking one
/// each; completions then carry consecutive slices of a buffer (`F_BUF_MORE` while the
/// kernel keeps using the rest), and the buffer goes back to the ring after its last slice.
struct BufRing {
    /// `count` ring entries, page aligned (mmap).
    entries: NonNull<types::BufRingEntry>,
    entries_len: usize,
    /// `count × size` bytes of buffers (mmap).
    bufs: NonNull<u8>,
    bufs_len: usize,
    count: u16,
    size: u32,
    /// Local copy of the tail; published with a release store after entries are written.
    tail: u16,
    /// Keep the memory mapped on drop (the kernel might still write into it).
    leak: bool,
    /// Incremental consumption: `offsets[bid]` is where the next slice of `bid` starts.
    /// Empty when the ring is not incremental.
    offsets: Box<[u32]>,
}

impl BufRing {
    fn new(ring: &IoUring, count: u16, size: u32, incremental: bool) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buf_count must be a power of two ≤ 32768 and buf_size > 0",
            ));
        }
        let entries_len = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        let bufs_len = usize::from(count) * size as usize;
        let entries = mmap_anon(entries_len)?.cast::<types::BufRingEntry>();
        let bufs = match mmap_anon(bufs_len) {
            Ok(p) => p,
            Err(e) => {
                munmap(entries.cast(), entries_len);
                return Err(e);
            }
        };
        let mut me = Self {
            entries,
            entries_len,
            bufs,
            bufs_len,
            count,
            size,
            tail: 0,
            leak: false,
            offsets: Box::default(),
        };
        for bid in 0..count {
            me.push(bid);
        }
        me.publish();
        // SAFETY: `entries` points to `count` page-aligned, zero-initialised ring entries that
        // stay mapped until `self` is dropped, and `self` is only dropped after the ring (see
        // field order in `Driver` and `probe`, where the ring outlives nothing that uses it:
        // unregistering happens implicitly when the ring fd closes before the munmap).
        let register = |flags| unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                BGID,
                flags,
            )
        };
        if incremental && register(PBUF_RING_INC).is_ok() {
            me.offsets = vec![0; usize::from(count)].into_boxed_slice();
        } else {
            register(0)?;
        }
        Ok(me)
    }

    /// Write buffer `bid` into the next ring entry (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.count - 1));
        // SAFETY: idx < count, so the entry lies inside the mapping; the kernel only reads
        // entries between its head and our published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.as_ptr().add(idx) };
        // SAFETY: bid < count, so the buffer lies inside the `bufs` mapping.
        let addr = unsafe {
            self.bufs
                .as_ptr()
                .add(usize::from(bid) * self.size as usize)
        };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make pushed entries visible to the kernel.
    fn publish(&mut self) {
        // SAFETY: the tail field lives in entry 0 (its `resv`), inside the mapping; the kernel
        // only reads it. `AtomicU16` has the same layout as `u16`, and the mapping is aligned.
        let tail = unsafe {
            AtomicU16::from_ptr(types::BufRingEntry::tail(self.entries.as_ptr()) as *mut u16)
        };
        tail.store(self.tail, Ordering::Release);
    }

    /// Give buffer `bid` back to the kernel.
    fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    /// Account for a completion that filled `len` bytes of buffer `bid` (`buf_more`: its
    /// `F_BUF_MORE` flag). Returns where those bytes start in the buffer and whether the kernel
    /// is done with the buffer (then it goes back with [`BufRing::recycle`] once handled).
    fn consume(&mut self, bid: u16, len: usize, buf_more: bool) -> (usize, bool) {
        let Some(off) = self.offsets.get_mut(usize::from(bid)) else {
            return (0, true);
        };
        let start = *off as usize;
        if buf_more {
            *off = (start + len).min(self.size as usize) as u32;
            (start, false)
        } else {
            *off = 0;
            (start, true)
        }
    }

    /// Bytes `start..start + len` of buffer `bid`, lent out by a recv completion.
    fn get(&mut self, bid: u16, start: usize, len: usize) -> &mut [u8] {
        let bid = usize::from(bid % self.count);
        let size = self.size as usize;
        let start = start.min(size);
        let len = len.min(size - start);
        // SAFETY: the range lies inside buffer `bid`, inside the `bufs` mapping (bid < count,
        // start + len ≤ size). The kernel handed these bytes to us with this completion and
        // does not write them again until `recycle` puts the buffer back in the ring (an
        // incremental ring only fills the bytes after them); `&mut self` makes this the only
        // view of them.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.as_ptr().add(bid * size + start), len) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        munmap(self.entries.cast(), self.entries_len);
        munmap(self.bufs, self.bufs_len);
    }
}

fn mmap_anon(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping aliases no Rust object; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

fn munmap(p: NonNull<u8>, len: usize) {
    // SAFETY: `p`/`len` are exactly a mapping made by `mmap_anon`, unmapped once (from Drop).
    unsafe {
        libc::munmap(p.as_ptr().cast(), len);
    }
}

// ---------------------------------------------------------------------------------------------
// wake-ups

/// The cross-thread wake-up: an eventfd the ring keeps a read armed on.
#[derive(Debug)]
pub(crate) struct EventFdWaker {
    fd: OwnedFd,
}

impl EventFdWaker {
    fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }
}

impl Wake for EventFdWaker {
    fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd this value owns.
        let r = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // EAGAIN: the counter is saturated, so a wake-up is pending anyway.
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// direct descriptors

/// An accepted io_uring direct descriptor (an index in the accepting ring's fixed-file table)
/// that the shard has not registered yet. Dropping it hands the index back to its driver, which
/// closes it: the table slot is not leaked.
#[derive(Debug)]
pub(crate) struct DirectFd {
    index: u32,
    /// Shared with the driver that accepted it: indexes to close.
    orphans: Rc<RefCell<Vec<u32>>>,
    registered: bool,
}

impl Drop for DirectFd {
    fn drop(&mut self) {
        if !self.registered {
            self.orphans.borrow_mut().push(self.index);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// driver

/// Fixed-file table entries registered beyond `direct_fds_max` (see [`UringDriver::new`]).
const DIRECT_FDS_SLACK: u32 = 256;

/// Most iovecs in one `sendmsg`; the rest of a longer queue goes in the next one.
pub(crate) const IOV_MAX: usize = 256;

/// A socket as the ring knows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sock {
    /// A plain file descriptor, owned by the driver.
    Fd(RawFd),
    /// An io_uring direct descriptor: an index in the ring's fixed-file table.
    Fixed(u32),
}

/// The msghdr and iovecs of one in-flight `sendmsg`. Boxed so that its address is stable
/// while the kernel may read it.
struct SendOp {
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl SendOp {
    fn new() -> Self {
        Self {
            iov: Vec::new(),
            // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
            msg: unsafe { std::mem::zeroed() },
        }
    }
}

/// Per-connection state of the driver.
struct ConnIo {
    sock: Sock,
    gen: u32,
    /// A multishot recv is armed (its final completion not yet reaped).
    recv_armed: bool,
    /// A sendmsg is in flight; its iovecs live in `send`.
    send_in_flight: bool,
    /// [`Driver::close`] was called: report nothing more, release when idle.
    closing: bool,
    /// `Completion::Closed` was reported (EOF or error): do not report it twice.
    closed_reported: bool,
    send: Option<Box<SendOp>>,
}

impl ConnIo {
    fn busy(&self) -> bool {
        self.recv_armed || self.send_in_flight
    }
}

/// One shard's io_uring driver.
pub(crate) struct UringDriver {
    // Field order matters: the ring is closed before the buffer ring's memory is unmapped.
    ring: IoUring,
    bufs: BufRing,
    cfg: UringConfig,
    waker: Arc<EventFdWaker>,
    /// Target of the eventfd read (8 bytes), alive as long as the ring.
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// The shard's listener; `None` after [`Driver::stop_accepting`].
    listener: Option<TcpListener>,
    accept_armed: bool,
    /// The multishot accept ended on an error: arm it again at this instant.
    accept_retry_at: Option<Instant>,
    /// Direct descriptors accepted and not yet closed (the connection cap in that mode).
    direct_open: u32,
    /// The kernel can install a direct descriptor as a plain one (Linux 6.8): used to learn
    /// the peer address of each accepted direct descriptor.
    fd_install: bool,
    conns: Vec<Option<ConnIo>>,
    /// Generation given to the next registered connection (24 bits, wrapping).
    next_gen: u32,
    /// Submitted operations whose final completion has not been reaped yet.
    in_flight: usize,
    /// Tokens to look at after the batch: re-arm a recv that ended (ENOBUFS, no F_MORE) once
    /// the batch's buffers are back in the ring, or release a closing connection that is idle.
    revisit: Vec<Token>,
    /// Completions copied out of the CQ for the current batch.
    cqes: Vec<cqueue::Entry>,
    /// Completions reaped early to let the kernel flush an overflowing CQ.
    backlog: Vec<cqueue::Entry>,
    /// Spare send ops (bounded), reused to avoid an allocation per send.
    #[allow(clippy::vec_box)] // boxed: in flight, their address must not change
    spare: Vec<Box<SendOp>>,
    /// Direct descriptors accepted but dropped unregistered: close them.
    orphans: Rc<RefCell<Vec<u32>>>,
}

impl Driver for UringDriver {
    fn new(listener: TcpListener, cfg: &DriverConfig) -> io::Result<Self> {
        let mut cfg = UringConfig::from_driver(cfg);
        listener.set_nonblocking(true)?;
        // Accepted sockets inherit TCP_NODELAY from the listener (there is no setsockopt on a
        // direct descriptor without a real fd).
        set_nodelay(listener.as_raw_fd())?;
        let ring = builder()
            .setup_cqsize(cfg.sq_entries * 4)
            .build(cfg.sq_entries)?;
        let bufs = BufRing::new(&ring, cfg.buf_count, cfg.buf_size, true)?;
        if cfg.direct_fds {
            // Slack past the cap: a multishot accept is only stopped once the room left is
            // small, so connections arriving in that same turn still find a slot instead of
            // being accepted and closed by the kernel (ENFILE). The kernel refuses a table
            // larger than RLIMIT_NOFILE: the cap is clamped to it.
            let limit = nofile_limit();
            let table = cfg
                .direct_fds_max
                .saturating_add(DIRECT_FDS_SLACK)
                .min(limit);
            cfg.direct_fds_max = cfg.direct_fds_max.min(table);
            ring.submitter().register_files_sparse(table)?;
        }
        let mut probe = io_uring::Probe::new();
        let fd_install = cfg.direct_fds
            && ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::FixedFdInstall::CODE);
        let mut me = Self {
            ring,
            bufs,
            cfg,
            waker: Arc::new(EventFdWaker::new()?),
            wake_buf: Box::new(0),
            wake_armed: false,
            listener: Some(listener),
            accept_armed: false,
            accept_retry_at: None,
            direct_open: 0,
            fd_install,
            conns: Vec::new(),
            next_gen: 0,
            in_flight: 0,
            revisit: Vec::new(),
            cqes: Vec::new(),
            backlog: Vec::new(),
            spare: Vec::new(),
            orphans: Rc::default(),
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
                Sock::Fd(s.into_raw_fd())
            }
            Socket::Direct(mut d) => {
                d.registered = true;
                Sock::Fixed(d.index)
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
            recv_armed: false,
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
        F: FnMut(Completion<'_>),
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
        if !self.revisit.is_empty() || !self.backlog.is_empty() {
            timeout = Some(Duration::ZERO);
        }
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
        op.msg.msg_iov = op.iov.as_mut_ptr();
        op.msg.msg_iovlen = op.iov.len() as _;
        let msg: *const libc::msghdr = &op.msg;
        let ud = OpId::new(OpKind::Send, token.0, 0);
        let Some(c) = self.conn_mut(token) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let ud = OpId { gen: c.gen, ..ud }.encode();
        let flags = libc::MSG_NOSIGNAL;
        let sqe = if let [one] = op.iov.as_slice() {
            // One contiguous chunk (the usual echo reply): a plain send skips the kernel's
            // msghdr copy and iovec import. A length past u32 is a short send, resumed later.
            let (buf, len) = (
                one.iov_base as *const u8,
                u32::try_from(one.iov_len).unwrap_or(u32::MAX),
            );
            match c.sock {
                Sock::Fd(fd) => opcode::Send::new(types::Fd(fd), buf, len)
                    .flags(flags)
                    .build(),
                Sock::Fixed(i) => opcode::Send::new(types::Fixed(i), buf, len)
                    .flags(flags)
                    .build(),
            }
        } else {
            match c.sock {
                Sock::Fd(fd) => opcode::SendMsg::new(types::Fd(fd), msg)
                    .flags(flags as u32)
                    .build(),
                Sock::Fixed(i) => opcode::SendMsg::new(types::Fixed(i), msg)
                    .flags(flags as u32)
                    .build(),
            }
        }
        .user_data(ud);
        c.send = Some(op);
        c.send_in_flight = true;
        queue.set_in_flight(true);
        // SAFETY: the sqe points at the msghdr and iovecs in `c.send` (boxed, kept until this
        // op's completion is reaped) or, for a plain send, directly at the one chunk; either
        // way at the chunks of `queue`, whose heap
        // memory does not move or get freed while the queue is in flight (SendQueue contract:
        // no append to an in-flight chunk, and the shard keeps the queue until `Sent` or
        // `Released`).
        let pushed = unsafe { self.push(&sqe) };
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

    fn shutdown_write(&mut self, token: Token) {
        let Some(c) = self.conn(token) else { return };
        match c.sock {
            Sock::Fd(fd) => {
                // SAFETY: shutdown(2) on a descriptor this driver owns; no memory is involved.
                unsafe { libc::shutdown(fd, libc::SHUT_WR) };
            }
            Sock::Fixed(i) => {
                // Runs inline at submission (a socket shutdown never blocks), so before any
                // later close of this table slot.
                let sqe = opcode::Shutdown::new(types::Fixed(i), libc::SHUT_WR)
                    .build()
                    .user_data(OpId::new(OpKind::Ignore, 0, 0).encode());
                // SAFETY: a shutdown points at no user memory.
                let _ = unsafe { self.push(&sqe) };
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
        if !c.busy() {
            self.release(token);
            return true;
        }
        let cancel = match c.sock {
            Sock::Fd(fd) => types::CancelBuilder::fd(types::Fd(fd)),
            Sock::Fixed(i) => types::CancelBuilder::fd(types::Fixed(i)),
        };
        let sqe = opcode::AsyncCancel2::new(cancel.all())
            .build()
            .user_data(OpId::new(OpKind::Ignore, 0, 0).encode());
        // SAFETY: a cancel points at no user memory.
        if unsafe { self.push(&sqe) }.is_err() {
            // Could not even queue the cancel: the operations still end on their own (peer
            // reset, EOF) and the release follows then.
        }
        false
    }

    fn stop_accepting(&mut self) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        if self.accept_armed {
            let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(
                listener.as_raw_fd(),
            )))
            .build()
            .user_data(OpId::new(OpKind::Ignore, 0, 0).encode());
            // SAFETY: a cancel points at no user memory.
            let _ = unsafe { self.push(&sqe) };
        }
        // The in-flight accept holds its own reference to the socket until it is cancelled;
        // connections it still produces are closed unreported (see `on_accept`).
        drop(listener);
        self.accept_retry_at = None;
    }
}

impl UringDriver {
    /// Submit everything queued and wait (one `io_uring_enter`) for a completion or `timeout`.
    fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let r = match timeout {
            None => self.ring.submitter().submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Handle every completion reaped so far, then the tokens to revisit.
    fn complete<F: FnMut(Completion<'_>)>(&mut self, on: &mut F) -> io::Result<()> {
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            cqes.clear();
            cqes.append(&mut self.backlog);
            cqes.extend(self.ring.completion());
            if cqes.is_empty() {
                break;
            }
            for cqe in &cqes {
                self.on_cqe(cqe, on)?;
            }
        }
        self.cqes = cqes;
        // Every buffer of the batch is back in the ring: re-arm recvs that ran dry, release
        // closing connections that became idle.
        let revisit = std::mem::take(&mut self.revisit);
        for token in revisit {
            let Some(c) = self.conn(token) else { continue };
            if c.closing {
                if !c.busy() {
                    self.release(token);
                    on(Completion::Released { token });
                }
            } else if !c.recv_armed && !c.closed_reported {
                if let Err(error) = self.arm_recv(token) {
                    // This connection cannot receive any more: the shard closes it.
                    if let Some(c) = self.conn_mut(token) {
                        c.closed_reported = true;
                    }
                    on(Completion::Closed {
                        token,
                        error: Some(error),
                    });
                }
            }
        }
        Ok(())
    }

    fn on_cqe<F: FnMut(Completion<'_>)>(
        &mut self,
        cqe: &cqueue::Entry,
        on: &mut F,
    ) -> io::Result<()> {
        let Some(op) = OpId::decode(cqe.user_data()) else {
            return Ok(());
        };
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        if !more {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        match op.kind {
            OpKind::Ignore => {}
            OpKind::CloseDirect => {
                self.direct_open = self.direct_open.saturating_sub(1);
                if !self.accept_armed && self.accept_retry_at.is_none() {
                    self.arm_accept_or_retry();
                }
            }
            OpKind::PeerOf => self.on_peer_of(op.slot, res, on)?,
            OpKind::Wake => {
                self.wake_armed = false;
                self.arm_wake()?;
                on(Completion::Wake);
            }
            OpKind::Accept => self.on_accept(res, more, on)?,
            OpKind::Recv => {
                let token = Token(op.slot as usize);
                let len = usize::try_from(res).unwrap_or(0);
                let buf_more = cqueue::buffer_more(cqe.flags());
                let taken = cqueue::buffer_select(cqe.flags())
                    .map(|bid| (bid, self.bufs.consume(bid, len, buf_more)));
                let conn = self.conns.get_mut(token.0).and_then(Option::as_mut);
                let Some(c) = conn.filter(|c| c.gen == op.gen) else {
                    if let Some((bid, (_, true))) = taken {
                        self.bufs.recycle(bid);
                    }
                    return Ok(());
                };
                if !more {
                    c.recv_armed = false;
                }
                let live = !c.closing && !c.closed_reported;
                if res > 0 {
                    if let Some((bid, (start, finished))) = taken {
                        if live {
                            on(Completion::Recv {
                                token,
                                buf: self.bufs.get(bid, start, len),
                            });
                        }
                        if finished {
                            self.bufs.recycle(bid);
                        }
                    }
                    if !more {
                        self.revisit.push(token);
                    }
                    return Ok(());
                }
                if let Some((bid, (_, true))) = taken {
                    self.bufs.recycle(bid);
                }
                if res == -libc::ENOBUFS || !live || res == -libc::ECANCELED {
                    self.revisit.push(token);
                } else {
                    c.closed_reported = true;
                    let error = (res < 0).then(|| io::Error::from_raw_os_error(-res));
                    on(Completion::Closed { token, error });
                }
            }
            OpKind::Send => {
                let token = Token(op.slot as usize);
                let Some(c) = self.conn_mut(token).filter(|c| c.gen == op.gen) else {
                    return Ok(());
                };
                c.send_in_flight = false;
                let sendop = c.send.take();
                if c.closing {
                    self.revisit.push(token);
                } else if res > 0 {
                    on(Completion::Sent {
                        token,
                        n: res as usize,
                    });
                } else {
                    // The queue is no longer in flight (nothing written), then the failure.
                    on(Completion::Sent { token, n: 0 });
                    let already = c.closed_reported;
                    c.closed_reported = true;
                    if !already {
                        let error = if res == 0 {
                            io::ErrorKind::WriteZero.into()
                        } else {
                            io::Error::from_raw_os_error(-res)
                        };
                        on(Completion::Closed {
                            token,
                            error: Some(error),
                        });
                    }
                }
                if let Some(op) = sendop {
                    self.recycle_op(op);
                }
            }
        }
        Ok(())
    }

    fn on_accept<F: FnMut(Completion<'_>)>(
        &mut self,
        res: i32,
        more: bool,
        on: &mut F,
    ) -> io::Result<()> {
        if !more {
            self.accept_armed = false;
        }
        if res >= 0 {
            let sock = if self.cfg.direct_fds {
                Sock::Fixed(res as u32)
            } else {
                Sock::Fd(res)
            };
            if matches!(sock, Sock::Fixed(_)) {
                self.direct_open += 1;
            }
            if self.listener.is_none() {
                // Accepted after stop_accepting, before the cancel took effect.
                return self.close_sock(sock);
            }
            match sock {
                Sock::Fd(fd) => {
                    // SAFETY: the kernel just created `fd` for us; nothing else owns it.
                    let socket = unsafe { TcpStream::from_raw_fd(fd) };
                    // A peer that already reset has no address: drop it (closes the socket).
                    if let Ok(peer) = socket.peer_addr() {
                        on(Completion::Accepted {
                            socket: Socket::Stream(socket),
                            peer,
                        });
                    }
                }
                Sock::Fixed(index) if self.fd_install => {
                    // Reported once the peer address is known (`on_peer_of`).
                    let sqe = opcode::FixedFdInstall::new(types::Fixed(index), 0)
                        .build()
                        .user_data(OpId::new(OpKind::PeerOf, index as usize, 0).encode());
                    // SAFETY: an fd install points at no user memory.
                    if unsafe { self.push(&sqe) }.is_err() {
                        self.deliver_direct(index, None, on);
                    }
                }
                Sock::Fixed(index) => self.deliver_direct(index, None, on),
            }
            if !more {
                self.arm_accept_or_retry();
            } else if self.direct_room() <= DIRECT_FDS_SLACK {
                // Near the cap: switch to one-shot accepts (see `arm_accept`).
                self.cancel_accept();
            }
        } else if !more && res != -libc::ECANCELED && self.listener.is_some() {
            // EMFILE/ENFILE (descriptor table full) and the like: retry later, not in a loop.
            self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
        }
        Ok(())
    }

    /// The plain descriptor installed for direct descriptor `index` (`res`) is here: ask its
    /// peer address, close it, report the connection.
    fn on_peer_of<F: FnMut(Completion<'_>)>(
        &mut self,
        index: u32,
        res: i32,
        on: &mut F,
    ) -> io::Result<()> {
        if self.listener.is_none() {
            if res >= 0 {
                // SAFETY: the kernel just installed `res` for us; nothing else owns it.
                drop(unsafe { OwnedFd::from_raw_fd(res) });
            }
            return self.close_sock(Sock::Fixed(index));
        }
        if res < 0 {
            // No descriptor to spare (EMFILE): the peer stays unknown.
            self.deliver_direct(index, None, on);
            return Ok(());
        }
        // SAFETY: the kernel just installed `res` for us; nothing else owns it. Dropping it
        // closes only this descriptor: the fixed-file table keeps the socket.
        let installed = TcpStream::from(unsafe { OwnedFd::from_raw_fd(res) });
        match installed.peer_addr() {
            Ok(peer) => self.deliver_direct(index, Some(peer), on),
            // A peer that already reset has no address: drop it, as for plain descriptors.
            Err(_) => self.close_sock(Sock::Fixed(index))?,
        }
        Ok(())
    }

    fn deliver_direct<F: FnMut(Completion<'_>)>(
        &mut self,
        index: u32,
        peer: Option<SocketAddr>,
        on: &mut F,
    ) {
        on(Completion::Accepted {
            socket: Socket::Direct(DirectFd {
                index,
                orphans: self.orphans.clone(),
                registered: false,
            }),
            peer: peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        });
    }

    /// Forget `token` and close its socket (nothing of it may be in flight).
    fn release(&mut self, token: Token) {
        let Some(c) = self.conns.get_mut(token.0).and_then(Option::take) else {
            return;
        };
        if let Some(op) = c.send {
            self.recycle_op(op);
        }
        let _ = self.close_sock(c.sock);
        // A slot is free: a listener waiting for room may try again now.
        if self.accept_retry_at.is_some() {
            self.accept_retry_at = Some(Instant::now());
        }
    }

    fn recycle_op(&mut self, op: Box<SendOp>) {
        if self.spare.len() < 64 {
            self.spare.push(op);
        }
    }

    fn close_sock(&mut self, sock: Sock) -> io::Result<()> {
        match sock {
            Sock::Fd(fd) => {
                // SAFETY: the driver owns `fd` and closes it exactly once, after every
                // operation on it completed.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                Ok(())
            }
            Sock::Fixed(i) => {
                let sqe = opcode::Close::new(types::Fixed(i))
                    .build()
                    .user_data(OpId::new(OpKind::CloseDirect, 0, 0).encode());
                // SAFETY: a close points at no user memory.
                unsafe { self.push(&sqe) }
            }
        }
    }

    fn close_orphans(&mut self) -> io::Result<()> {
        let orphans = std::mem::take(&mut *self.orphans.borrow_mut());
        for index in orphans {
            self.close_sock(Sock::Fixed(index))?;
        }
        Ok(())
    }

    fn conn(&self, token: Token) -> Option<&ConnIo> {
        self.conns.get(token.0).and_then(Option::as_ref)
    }

    fn conn_mut(&mut self, token: Token) -> Option<&mut ConnIo> {
        self.conns.get_mut(token.0).and_then(Option::as_mut)
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        if self.wake_armed {
            return Ok(());
        }
        let buf: *mut u64 = &mut *self.wake_buf;
        let sqe = opcode::Read::new(types::Fd(self.waker.fd.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(OpId::new(OpKind::Wake, 0, 0).encode());
        // SAFETY: the read targets `wake_buf`, a heap u64 that lives as long as the ring (and
        // is leaked in `Drop` if the read might still be in flight).
        unsafe { self.push(&sqe) }?;
        self.wake_armed = true;
        Ok(())
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        self.accept_retry_at = None;
        let Some(listener) = &self.listener else {
            return Ok(());
        };
        if self.accept_armed || self.direct_full() {
            // Full: armed again when a direct descriptor is closed. Meanwhile connections
            // wait in the listen backlog.
            return Ok(());
        }
        // Direct descriptors have no close-on-exec flag (the kernel refuses SOCK_CLOEXEC).
        let flags = if self.cfg.direct_fds {
            libc::SOCK_NONBLOCK
        } else {
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        };
        let fd = types::Fd(listener.as_raw_fd());
        let sqe = if self.direct_room() > DIRECT_FDS_SLACK {
            opcode::AcceptMulti::new(fd)
                .allocate_file_index(self.cfg.direct_fds)
                .flags(flags)
                .build()
        } else {
            // Near the direct-descriptor cap a multishot accept would take a whole burst of
            // pending connections in one go; one at a time keeps the cap exact.
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .file_index(Some(types::DestinationSlot::auto_target()))
                .flags(flags)
                .build()
        }
        .user_data(OpId::new(OpKind::Accept, 0, 0).encode());
        // SAFETY: an accept without address output points at no user memory.
        unsafe { self.push(&sqe) }?;
        self.accept_armed = true;
        Ok(())
    }

    /// [`UringDriver::arm_accept`] from the loop: a failure is retried after `ACCEPT_RETRY`
    /// instead of failing the shard.
    fn arm_accept_or_retry(&mut self) {
        if self.arm_accept().is_err() {
            self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
        }
    }

    /// With direct descriptors: is the connection cap (`direct_fds_max`) reached?
    fn direct_full(&self) -> bool {
        self.direct_room() == 0
    }

    /// With direct descriptors: connections that may still be accepted (unbounded otherwise).
    fn direct_room(&self) -> u32 {
        if self.cfg.direct_fds {
            self.cfg.direct_fds_max.saturating_sub(self.direct_open)
        } else {
            u32::MAX
        }
    }

    fn cancel_accept(&mut self) {
        let sqe = opcode::AsyncCancel::new(OpId::new(OpKind::Accept, 0, 0).encode())
            .build()
            .user_data(OpId::new(OpKind::Ignore, 0, 0).encode());
        // SAFETY: a cancel points at no user memory.
        let _ = unsafe { self.push(&sqe) };
    }

    fn arm_recv(&mut self, token: Token) -> io::Result<()> {
        let Some(c) = self.conn_mut(token) else {
            return Ok(());
        };
        if c.recv_armed || c.closing {
            return Ok(());
        }
        let ud = OpId::new(OpKind::Recv, token.0, c.gen).encode();
        let sqe = match c.sock {
            Sock::Fd(fd) => opcode::RecvMulti::new(types::Fd(fd), BGID).build(),
            Sock::Fixed(i) => opcode::RecvMulti::new(types::Fixed(i), BGID).build(),
        };
        c.recv_armed = true;
        // SAFETY: the recv writes only into provided buffers of group BGID, which the buffer
        // ring keeps mapped as long as the ring exists (see `Drop`).
        let pushed = unsafe { self.push(&sqe.user_data(ud)) };
        if pushed.is_err() {
            // Never reached the kernel; the token must still be releasable.
            if let Some(c) = self.conn_mut(token) {
                c.recv_armed = false;
            }
        }
        pushed
    }

    /// Queue one submission; when the SQ is full, submit what is queued first.
    ///
    /// # Safety
    ///
    /// Every buffer the entry points to must stay valid until its final completion is reaped.
    unsafe fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.in_flight += 1;
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // CQ overflowing: move completions aside (handled by the next batch) so
                    // the kernel can flush its overflow list, then submit again.
                    let before = self.backlog.len();
                    self.backlog.extend(self.ring.completion());
                    if self.backlog.len() == before {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl UringDriver {
    /// Cancel every operation and wait, at most `limit`, until none is in flight. Returns
    /// whether that point was reached. Afterwards the kernel no longer touches send iovecs,
    /// send-queue chunks, the eventfd target or the receive buffers.
    fn cancel_all(&mut self, limit: Duration) -> bool {
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(OpId::new(OpKind::Ignore, 0, 0).encode());
        // SAFETY: a cancel points at no user memory.
        let _ = unsafe { self.push(&sqe) };
        let finished = self
            .backlog
            .drain(..)
            .filter(|c| !cqueue::more(c.flags()))
            .count();
        self.in_flight = self.in_flight.saturating_sub(finished);
        let deadline = Instant::now() + limit;
        while self.in_flight > 0 && Instant::now() < deadline {
            let _ = self.enter(Some(Duration::from_millis(10)));
            let finished = self
                .ring
                .completion()
                .filter(|c| !cqueue::more(c.flags()))
                .count();
            self.in_flight = self.in_flight.saturating_sub(finished);
        }
        self.in_flight == 0
    }
}

impl Drop for UringDriver {
    /// Runs before the shard frees its send queues (the driver is dropped first), so the
    /// chunks the kernel may read are still alive while the operations are cancelled.
    fn drop(&mut self) {
        let leak = !self.cancel_all(Duration::from_secs(2));
        for c in std::mem::take(&mut self.conns).into_iter().flatten() {
            if let Sock::Fd(fd) = c.sock {
                // SAFETY: the driver owns every registered plain descriptor; closed once here.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            if leak {
                // The kernel may still read these iovecs: leak rather than free under it.
                std::mem::forget(c.send);
            }
        }
        if leak {
            // Same for the receive buffers and the eventfd target.
            self.bufs.leak = true;
            std::mem::forget(std::mem::take(&mut self.wake_buf));
        }
    }
}

/// The soft `RLIMIT_NOFILE` (at least 1), the largest fixed-file table the kernel accepts.
fn nofile_limit() -> u32 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live local.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if r < 0 {
        return 1024;
    }
    rl.rlim_cur.clamp(1, u64::from(u32::MAX)) as u32
}

fn set_nodelay(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a live local.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{Read, Write};

    fn config(direct_fds: bool) -> DriverConfig {
        DriverConfig {
            direct_fds,
            direct_fds_max: 2048,
            recv_buffer_bytes: 4096,
            recv_buffers: 64,
            events_max: 64,
        }
    }

    enum Action {
        Register(Socket),
        Echo(Token, Vec<u8>),
        Close(Token),
        Drop(Socket),
    }

    /// A minimal shard: registers what it is told, keeps send queues, flushes once per turn.
    struct Mini {
        d: UringDriver,
        addr: SocketAddr,
        queues: HashMap<usize, SendQueue>,
        next: usize,
        sent: usize,
        released: usize,
        /// Tokens given to `close` (a shard sends nothing more on them).
        closing: Vec<usize>,
    }

    impl Mini {
        fn new(cfg: DriverConfig) -> Self {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            Self {
                d: UringDriver::new(l, &cfg).unwrap(),
                addr,
                queues: HashMap::new(),
                next: 0,
                sent: 0,
                released: 0,
                closing: Vec::new(),
            }
        }

        /// Run loop turns until `done` (bounded: 10 s), handing completions to `on`.
        fn pump<S>(
            &mut self,
            st: &mut S,
            mut on: impl FnMut(&mut S, &mut Vec<Action>, Completion<'_>),
            done: impl Fn(&S, &Mini) -> bool,
        ) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !done(st, self) {
                assert!(Instant::now() < deadline, "timed out");
                self.turn(st, &mut on);
            }
        }

        fn turn<S>(
            &mut self,
            st: &mut S,
            on: &mut impl FnMut(&mut S, &mut Vec<Action>, Completion<'_>),
        ) {
            let mut acts = Vec::new();
            let Mini {
                d,
                queues,
                sent,
                released,
                ..
            } = self;
            d.poll(Some(Duration::from_millis(20)), |c| {
                match &c {
                    Completion::Sent { token, n } => {
                        if let Some(q) = queues.get_mut(&token.0) {
                            q.complete(*n);
                        }
                        *sent += n;
                    }
                    Completion::Released { token } => {
                        queues.remove(&token.0);
                        *released += 1;
                    }
                    _ => {}
                }
                on(st, &mut acts, c)
            })
            .unwrap();
            for a in acts {
                match a {
                    Action::Register(s) => {
                        let t = self.next;
                        self.next += 1;
                        self.d.register(Token(t), s).unwrap();
                        self.queues.insert(t, SendQueue::default());
                    }
                    Action::Echo(t, b) => self.queues.get_mut(&t.0).unwrap().push(&b),
                    Action::Close(t) => {
                        self.closing.push(t.0);
                        if self.d.close(t) {
                            self.queues.remove(&t.0);
                            self.released += 1;
                        }
                    }
                    Action::Drop(s) => drop(s),
                }
            }
            for (t, q) in &mut self.queues {
                if !q.is_empty() && !q.in_flight() && !self.closing.contains(t) {
                    self.d.send(Token(*t), q).unwrap();
                }
            }
        }
    }

    fn echo(st: &mut (), acts: &mut Vec<Action>, c: Completion<'_>) {
        let () = st;
        match c {
            Completion::Accepted { socket, .. } => acts.push(Action::Register(socket)),
            Completion::Recv { token, buf } => acts.push(Action::Echo(token, buf.to_vec())),
            Completion::Closed { token, .. } => acts.push(Action::Close(token)),
            _ => {}
        }
    }

    #[test]
    fn probe_succeeds_where_io_uring_is_available() {
        probe().unwrap();
    }

    #[test]
    fn user_data_round_trips_kind_generation_and_slot() {
        let op = OpId::new(OpKind::Send, 123_456, 0xab_cdef);
        assert_eq!(OpId::decode(op.encode()), Some(op));
        assert_eq!(OpId::decode(0), None);
        // Generations wrap at 24 bits rather than bleeding into the kind.
        let op = OpId::new(OpKind::Recv, 1, u32::MAX);
        assert_eq!(OpId::decode(op.encode()).unwrap().kind, OpKind::Recv);
    }

    #[test]
    fn idle_connection_costs_the_driver_24_bytes() {
        // An idle connection has a slot and an armed recv; no buffer, no send op.
        assert!(std::mem::size_of::<Option<ConnIo>>() <= 24);
    }

    #[test]
    fn recv_buffer_count_is_rounded_down_to_a_power_of_two() {
        let cfg = DriverConfig {
            recv_buffers: 5000,
            ..config(false)
        };
        assert_eq!(UringConfig::from_driver(&cfg).buf_count, 4096);
        let cfg = DriverConfig {
            recv_buffers: 1 << 20,
            ..config(false)
        };
        assert_eq!(UringConfig::from_driver(&cfg).buf_count, 32768);
    }

    fn echo_roundtrip(direct_fds: bool) {
        let mut m = Mini::new(config(direct_fds));
        let mut c = TcpStream::connect(m.addr).unwrap();
        c.write_all(b"hello ring").unwrap();
        let mut st = ();
        m.pump(&mut st, echo, |_, m| m.sent == 10);
        let mut back = [0u8; 10];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello ring");
    }

    #[test]
    fn accepted_connection_echoes_with_plain_fds() {
        echo_roundtrip(false);
    }

    #[test]
    fn accepted_connection_echoes_with_direct_fds() {
        echo_roundtrip(true);
    }

    #[test]
    fn small_receives_share_one_buffer_when_the_ring_is_incremental() {
        let mut m = Mini::new(config(false));
        assert!(
            !m.d.bufs.offsets.is_empty(),
            "Linux ≥ 6.12 consumes buffers incrementally"
        );
        let mut c = TcpStream::connect(m.addr).unwrap();
        c.set_nodelay(true).unwrap();
        let mut got: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut on =
            |got: &mut Vec<(usize, Vec<u8>)>, acts: &mut Vec<Action>, c: Completion<'_>| match c {
                Completion::Accepted { socket, .. } => acts.push(Action::Register(socket)),
                Completion::Recv { buf, .. } => got.push((buf.as_ptr() as usize, buf.to_vec())),
                _ => {}
            };
        c.write_all(b"first").unwrap();
        m.pump(&mut got, &mut on, |got, _| got.len() == 1);
        c.write_all(b"second").unwrap();
        m.pump(&mut got, &mut on, |got, _| got.len() == 2);
        assert_eq!(got[0].1, b"first");
        assert_eq!(got[1].1, b"second");
        // The second recv continued in the same buffer, right after the first one's bytes.
        assert_eq!(got[1].0, got[0].0 + 5);
    }

    #[test]
    fn accepted_socket_reports_the_peer_address_plain_or_direct() {
        for direct in [false, true] {
            let mut m = Mini::new(config(direct));
            let c = TcpStream::connect(m.addr).unwrap();
            let mut peer = None;
            m.pump(
                &mut peer,
                |peer, acts, c| {
                    if let Completion::Accepted { socket, peer: p } = c {
                        assert_eq!(matches!(socket, Socket::Direct(_)), direct);
                        *peer = Some(p);
                        acts.push(Action::Drop(socket));
                    }
                },
                |peer, _| peer.is_some(),
            );
            assert_eq!(peer, Some(c.local_addr().unwrap()), "direct: {direct}");
        }
    }

    #[test]
    fn recv_rearms_after_the_buffer_ring_runs_dry() {
        let cfg = DriverConfig {
            recv_buffers: 2,
            recv_buffer_bytes: 64,
            ..config(false)
        };
        let mut m = Mini::new(cfg);
        let payload: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        let p2 = payload.clone();
        let addr = m.addr;
        let writer = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(&p2).unwrap();
            c
        });
        let mut st = (Vec::new(), false);
        m.pump(
            &mut st,
            |(got, eof), acts, c| match c {
                Completion::Accepted { socket, .. } => acts.push(Action::Register(socket)),
                Completion::Recv { buf, .. } => {
                    assert!(buf.len() <= 64);
                    got.extend_from_slice(buf);
                }
                Completion::Closed { .. } => *eof = true,
                _ => {}
            },
            |(got, _), _| got.len() >= payload.len(),
        );
        let (got, eof) = st;
        assert!(!eof);
        assert_eq!(got, payload);
        drop(writer.join().unwrap());
    }

    #[test]
    fn large_queue_arrives_whole_and_in_order_across_short_sends() {
        let mut m = Mini::new(config(false));
        let c = TcpStream::connect(m.addr).unwrap();
        let mut accepted = false;
        m.pump(
            &mut accepted,
            |accepted, acts, c| {
                if let Completion::Accepted { socket, .. } = c {
                    acts.push(Action::Register(socket));
                    *accepted = true;
                }
            },
            |accepted, _| *accepted,
        );
        // 24 MiB: far beyond the socket buffers, so the kernel takes it in several short sends
        // while the reader drains; each `Sent { n }` advances the queue and the rest is resent.
        let chunks: Vec<Vec<u8>> = (0..3u8)
            .map(|n| {
                (0..8 << 20)
                    .map(|i| (i as u8).wrapping_mul(31) ^ n)
                    .collect()
            })
            .collect();
        let expected: Vec<u8> = chunks.concat();
        let q = m.queues.get_mut(&0).unwrap();
        for chunk in &chunks {
            q.push(chunk);
        }
        q.push_shared(Arc::from(&b"tail"[..]));
        let reader = std::thread::spawn(move || {
            let mut c = c;
            let mut all = Vec::new();
            c.read_to_end(&mut all).unwrap();
            all
        });
        let total = expected.len() + 4;
        let mut sends = 0;
        m.pump(
            &mut sends,
            |sends, _, c| {
                if let Completion::Sent { .. } = c {
                    *sends += 1;
                }
            },
            |_, m| m.sent == total,
        );
        assert!(sends > 1, "expected short sends");
        assert!(!m.d.close(Token(0)) || m.queues.remove(&0).is_some());
        let mut st = ();
        m.pump(&mut st, |_, _, _| {}, |_, m| m.released == 1);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), total);
        assert!(got[..expected.len()] == expected[..]);
        assert_eq!(&got[expected.len()..], b"tail");
    }

    #[test]
    fn close_cancels_the_armed_recv_then_releases_the_token() {
        let mut m = Mini::new(config(false));
        let mut c = TcpStream::connect(m.addr).unwrap();
        c.write_all(b"x").unwrap();
        let mut st = ();
        m.pump(
            &mut st,
            |_, acts, c| match c {
                Completion::Accepted { socket, .. } => acts.push(Action::Register(socket)),
                Completion::Recv { token, .. } => acts.push(Action::Close(token)),
                Completion::Closed { .. } => panic!("nothing is reported after close"),
                _ => {}
            },
            |_, m| m.released == 1,
        );
        assert!(m.queues.is_empty());
        assert!(m.d.conns.iter().all(Option::is_none));
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn peer_close_is_reported_once_as_orderly_end_of_stream() {
        let mut m = Mini::new(config(false));
        drop(TcpStream::connect(m.addr).unwrap());
        let mut closed = 0;
        m.pump(
            &mut closed,
            |closed, acts, c| match c {
                Completion::Accepted { socket, .. } => acts.push(Action::Register(socket)),
                Completion::Closed { error, token } => {
                    assert!(error.is_none());
                    *closed += 1;
                    acts.push(Action::Close(token));
                }
                _ => {}
            },
            |_, m| m.released == 1,
        );
        assert_eq!(closed, 1);
    }

    #[test]
    fn shutdown_write_sends_fin_and_keeps_receiving() {
        for direct in [false, true] {
            let mut m = Mini::new(config(direct));
            let mut c = TcpStream::connect(m.addr).unwrap();
            let mut st = ();
            m.pump(&mut st, echo, |_, m| m.next == 1);
            m.d.shutdown_write(Token(0));
            let mut st = ();
            m.turn(&mut st, &mut |_, _, _| {});
            let mut b = [0u8; 1];
            assert_eq!(c.read(&mut b).unwrap(), 0, "FIN seen");
            c.write_all(b"late").unwrap();
            let mut got = Vec::new();
            m.pump(
                &mut got,
                |got, _, c| {
                    if let Completion::Recv { buf, .. } = c {
                        got.extend_from_slice(buf);
                    }
                },
                |got, _| got.len() == 4,
            );
            assert_eq!(got, b"late");
        }
    }

    #[test]
    fn reset_peer_is_reported_closed_once_then_released() {
        let mut m = Mini::new(config(false));
        let c = TcpStream::connect(m.addr).unwrap();
        let mut st = ();
        m.pump(
            &mut st,
            |_, acts, c| {
                if let Completion::Accepted { socket, .. } = c {
                    acts.push(Action::Register(socket));
                }
            },
            |_, m| m.next == 1,
        );
        // RST from the peer (linger 0), then more than the socket buffers can take: the recv
        // and the send both fail, in whichever order.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt reads one linger struct from a live local.
        let r = unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        drop(c);
        m.queues.get_mut(&0).unwrap().push(&vec![7u8; 8 << 20]);
        let mut closed = 0;
        m.pump(
            &mut closed,
            |closed, acts, c| {
                if let Completion::Closed { error, token } = c {
                    assert!(error.is_some(), "a reset is an error");
                    *closed += 1;
                    acts.push(Action::Close(token));
                }
            },
            |_, m| m.released == 1,
        );
        assert_eq!(closed, 1);
    }

    #[test]
    fn teardown_cancels_a_send_stuck_on_a_peer_that_does_not_read() {
        let mut m = Mini::new(config(false));
        let _peer = TcpStream::connect(m.addr).unwrap();
        let mut st = ();
        m.pump(
            &mut st,
            |_, acts, c| {
                if let Completion::Accepted { socket, .. } = c {
                    acts.push(Action::Register(socket));
                }
            },
            |_, m| m.next == 1,
        );
        m.queues.get_mut(&0).unwrap().push(&vec![1u8; 16 << 20]);
        m.turn(&mut st, &mut |_, _, _| {});
        assert!(m.queues[&0].in_flight());
        // What `Drop` relies on: every operation (accept, recv, the blocked send, the eventfd
        // read) ends, so nothing the kernel could touch is freed under it.
        assert!(m.d.cancel_all(Duration::from_secs(5)));
        assert_eq!(m.d.in_flight, 0);
    }

    #[test]
    fn waker_from_another_thread_ends_the_wait() {
        let mut m = Mini::new(config(false));
        let w = m.d.waker();
        let t = std::thread::spawn(move || w.wake().unwrap());
        let mut woken = false;
        m.pump(
            &mut woken,
            |w, _, c| *w |= matches!(c, Completion::Wake),
            |w, _| *w,
        );
        t.join().unwrap();
        // The eventfd read is re-armed: a second wake-up is seen too.
        m.d.waker().wake().unwrap();
        woken = false;
        m.pump(
            &mut woken,
            |w, _, c| *w |= matches!(c, Completion::Wake),
            |w, _| *w,
        );
    }

    #[test]
    fn unregistered_direct_descriptor_is_closed_when_dropped() {
        let mut m = Mini::new(config(true));
        let mut c = TcpStream::connect(m.addr).unwrap();
        let mut dropped = false;
        m.pump(
            &mut dropped,
            |dropped, acts, c| {
                if let Completion::Accepted { socket, .. } = c {
                    assert!(matches!(socket, Socket::Direct(_)));
                    acts.push(Action::Drop(socket));
                    *dropped = true;
                }
            },
            |dropped, _| *dropped,
        );
        let mut st = ();
        m.turn(&mut st, &mut |_, _, _| {});
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn direct_fds_serve_a_thousand_connections() {
        let mut m = Mini::new(config(true));
        let mut clients = Vec::new();
        for batch in 0..10u8 {
            for _ in 0..100 {
                let mut c = TcpStream::connect(m.addr).unwrap();
                c.write_all(&[batch; 3]).unwrap();
                clients.push(c);
            }
            let want = clients.len() * 3;
            let mut st = ();
            m.pump(&mut st, echo, |_, m| m.sent == want);
        }
        assert_eq!(m.d.conns.iter().flatten().count(), 1000);
        for (i, c) in clients.iter_mut().enumerate() {
            let mut b = [0u8; 3];
            c.read_exact(&mut b).unwrap();
            assert_eq!(b, [(i / 100) as u8; 3]);
        }
    }

    #[test]
    fn direct_fds_max_caps_connections_until_one_is_released() {
        let cfg = DriverConfig {
            direct_fds_max: 4,
            ..config(true)
        };
        let mut m = Mini::new(cfg);
        let mut st = ();
        let mut clients = Vec::new();
        for i in 0..4 {
            clients.push(TcpStream::connect(m.addr).unwrap());
            m.pump(&mut st, echo, |_, m| m.next == i + 1);
        }
        // The cap is reached: the accept is stopped (one turn submits the cancel), and later
        // connections wait in the listen backlog.
        m.turn(&mut st, &mut echo);
        clients.push(TcpStream::connect(m.addr).unwrap());
        clients.push(TcpStream::connect(m.addr).unwrap());
        for _ in 0..10 {
            m.turn(&mut st, &mut echo);
        }
        assert_eq!(m.next, 4);
        // Releasing one connection frees a table slot: exactly one more is accepted.
        let _ = m.d.close(Token(0));
        m.pump(&mut st, echo, |_, m| m.next == 5);
        for _ in 0..10 {
            m.turn(&mut st, &mut echo);
        }
        assert_eq!(m.next, 5);
    }

    #[test]
    fn direct_fds_max_past_the_descriptor_limit_is_clamped_to_it() {
        let cfg = DriverConfig {
            direct_fds_max: u32::MAX,
            ..config(true)
        };
        // The kernel refuses a file table larger than RLIMIT_NOFILE: clamped, the ring starts.
        let m = Mini::new(cfg);
        assert_eq!(m.d.cfg.direct_fds_max, nofile_limit());
    }

    #[test]
    fn stop_accepting_closes_the_listener() {
        let mut m = Mini::new(config(false));
        m.d.stop_accepting();
        let mut st = ();
        for _ in 0..3 {
            m.turn(&mut st, &mut echo);
        }
        let e = TcpStream::connect(m.addr).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(m.next, 0);
    }
}
