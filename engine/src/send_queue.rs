//! A connection's outgoing bytes: the send queue the shard owns (one per connection) and the
//! I/O driver writes from (see the contract in `io`). It sits below both, in a file of its own,
//! because it is the one type they share.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, Weak};

/// One chunk of a send queue: bytes owned by this queue, or shared with other queues (a
/// broadcast frame serialized once).
#[derive(Debug)]
pub(crate) enum Chunk {
    /// Bytes owned by this queue.
    Owned(Vec<u8>),
    /// Bytes shared with other queues.
    Shared(Arc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(a) => a,
        }
    }
}

/// Owned chunks are coalesced up to this size before a new one is started, so that many small
/// frames become one `writev` entry.
const COALESCE_BYTES: usize = 16 << 10;

/// Owned chunk buffers larger than this are freed when written instead of being kept for reuse
/// (see [`QueuePool`]).
const SPARE_BYTES_MAX: usize = 4 << 10;

/// Smallest capacity of a new owned chunk, so that a recycled buffer fits the next small frame
/// whatever its size.
const CHUNK_BYTES_MIN: usize = 256;

/// A shard's stock of emptied send-queue storage: a connection that queues a frame takes its
/// storage from here and gives it back once the queue is written ([`SendQueue::recycle`]),
/// so that steady request/response traffic allocates nothing per message while idle
/// connections still hold no send-queue memory. Large chunk buffers (frames of more than
/// [`SPARE_BYTES_MAX`]) are kept apart, up to a byte bound, so that a stream of large frames
/// does not allocate (and, from 128 KiB on, map and unmap) a buffer per frame.
///
/// The large buffers are kept only while they are needed: the shard ages the stock once a
/// second ([`QueuePool::age_large`]) and frees the buffers no frame took for a second or two,
/// so that under a steady load the stock holds what that load uses (buffers of sizes no
/// frame asks for, such as coalesced chunks that grew, do not pile up to the bound), and an
/// unused stock empties.
///
/// Memory: at most [`QueuePool::ENTRIES_MAX`] entries of a 64-byte queue body, about 128
/// bytes of deque and a buffer of at most 4 KiB, i.e. about 1 MiB per shard in the worst case,
/// plus at most `large_bytes_max` bytes of large buffers, and no more than the large frames of
/// the last two seconds left behind (`shard/memory.rs`), plus [`THIN_FRAMES`] shared control
/// frames (a few dozen bytes each) kept alive a little longer than their last queue.
#[derive(Debug, Default)]
pub(crate) struct QueuePool {
    /// Emptied queue bodies (box, chunk deque and spare buffer, all empty) that
    /// [`SendQueue::reuse`] can adopt.
    #[allow(clippy::vec_box)] // the box is what is kept: adopting one allocates nothing
    free: Vec<Box<Fifo>>,
    /// Thin references to the last shared control frames queued on empty queues (the idle
    /// ping of the tick, the empty pong, the shutdown's close), so that each connection's
    /// queue holds them in 8 bytes without allocating (see [`SendQueue::push_shared_control`]).
    thin: [Option<Arc<Arc<[u8]>>>; THIN_FRAMES],
    /// The slot of `thin` the next new frame takes.
    thin_next: usize,
    /// Empty buffers of more than [`SPARE_BYTES_MAX`] bytes, in the order they were given
    /// back, each with the value of `looks` then.
    large: Vec<(Vec<u8>, u32)>,
    /// Calls of [`QueuePool::age_large`] so far (wrapping).
    looks: u32,
    /// Capacity of `large`.
    large_bytes: usize,
    large_bytes_max: usize,
    /// Capacity handed back to the allocator since the last [`QueuePool::take_released`].
    released: usize,
}

impl QueuePool {
    /// Most storages kept; more are freed (bounds the pool's memory, see the type docs).
    const ENTRIES_MAX: usize = 256;

    /// A stock that keeps at most `large_bytes_max` bytes of large chunk buffers.
    pub(crate) fn new(large_bytes_max: usize) -> Self {
        Self {
            large_bytes_max,
            ..Self::default()
        }
    }

    /// Bytes of large buffers kept now.
    pub(crate) fn large_bytes(&self) -> usize {
        self.large_bytes
    }

    /// A kept large buffer of at least `cap_min` bytes and at most twice that, if there is one.
    fn take_large(&mut self, cap_min: usize) -> Option<Vec<u8>> {
        let cap_max = cap_min.saturating_mul(2);
        // The most recently given back that fits: the ones left at the front are those the
        // load does not need, which `age_large` frees (`remove` keeps that order).
        let i = self
            .large
            .iter()
            .rposition(|(v, _)| (cap_min..=cap_max).contains(&v.capacity()))?;
        let (v, _) = self.large.remove(i);
        self.large_bytes -= v.capacity();
        Some(v)
    }

    /// Keep an emptied large buffer if there is room, else free it (counted as released).
    fn give_large(&mut self, mut v: Vec<u8>) {
        let cap = v.capacity();
        if self.large_bytes + cap <= self.large_bytes_max {
            v.clear();
            self.large_bytes += cap;
            self.large.push((v, self.looks));
        } else {
            self.released += cap;
        }
    }

    /// One more look (the shard calls this about once a second): free the large buffers
    /// that no frame took during the last `looks_max` looks. Returns the bytes freed (also
    /// counted as released).
    pub(crate) fn age_large(&mut self, looks_max: u32) -> usize {
        self.looks = self.looks.wrapping_add(1);
        let now = self.looks;
        let before = self.large_bytes;
        self.large
            .retain(|(_, given)| now.wrapping_sub(*given) < looks_max);
        self.large_bytes = self.large.iter().map(|(v, _)| v.capacity()).sum();
        let n = before - self.large_bytes;
        self.released += n;
        n
    }

    /// Free everything kept (a trim after a burst); the bound stays.
    pub(crate) fn clear(&mut self) {
        *self = Self::new(self.large_bytes_max);
    }

    /// Bytes of large buffers handed back to the allocator since the last call.
    pub(crate) fn take_released(&mut self) -> usize {
        std::mem::take(&mut self.released)
    }

    /// A thin reference to `frame`: the one made for the same frame before, if it is still
    /// among the last [`THIN_FRAMES`], else a new one (one 32-byte allocation per frame, not
    /// per connection).
    fn thin(&mut self, frame: &Arc<[u8]>) -> Arc<Arc<[u8]>> {
        if let Some(t) = self
            .thin
            .iter()
            .flatten()
            .find(|t| Arc::ptr_eq(&***t, frame))
        {
            return t.clone();
        }
        let t = Arc::new(frame.clone());
        self.thin[self.thin_next] = Some(t.clone());
        self.thin_next = (self.thin_next + 1) % THIN_FRAMES;
        t
    }
}

/// Shared control frames [`QueuePool`] keeps thin references to: the idle ping of the current
/// tick, the empty pong and the shutdown's close can be in use in the same turn.
const THIN_FRAMES: usize = 3;

/// How far from the back [`SendQueue::replace_shared`] looks for the chunk to replace (bounds
/// the work per conflated publish on a long queue).
const REPLACE_SCAN_CHUNKS: usize = 64;

/// A connection's outgoing bytes: a FIFO of chunks plus an offset into the first one.
///
/// The heap memory of a chunk never moves while the queue is in flight (see the module docs):
/// [`SendQueue::push`] only appends to the last chunk when the queue is not in flight.
/// A queue that drained keeps its (empty) storage until [`SendQueue::recycle`] hands it to
/// the shard's [`QueuePool`]; after that it holds no heap memory.
///
/// 16 bytes, in one of three states:
/// - empty: no heap memory (an idle connection's usual state);
/// - one shared control frame, none of it written yet (the idle ping, the empty pong, the
///   shutdown's close): an 8-byte thin reference to the frame, no heap memory of its own,
///   also while the send is in flight. That is what a ping burst to thousands of idle
///   connections leaves in each of them until the sends complete;
/// - anything else: a boxed [`Fifo`] of chunks (64 bytes, plus its chunk deque and buffers),
///   which the queue grows into when a second frame comes or the frame is written in part.
#[derive(Debug, Default)]
pub(crate) struct SendQueue(State);

#[derive(Debug, Default)]
enum State {
    #[default]
    Empty,
    /// One whole shared frame (the `Arc` around it is the [`QueuePool`]'s thin reference).
    One {
        frame: Arc<Arc<[u8]>>,
        in_flight: bool,
    },
    Full(Box<Fifo>),
}

/// The general form of a [`SendQueue`]: a FIFO of chunks plus an offset into the first one.
#[derive(Debug, Default)]
pub(crate) struct Fifo {
    chunks: VecDeque<Chunk>,
    /// Bytes of `chunks[0]` already written.
    head: usize,
    /// Bytes queued and not yet written.
    len: usize,
    in_flight: bool,
    /// An empty owned chunk buffer kept from the last drain, reused by the next push.
    spare: Vec<u8>,
    /// Chunks the queue held when it was last marked in flight: the backend may have submitted
    /// them, so they are never replaced (see [`SendQueue::replace_shared`]).
    submitted: usize,
    /// The first chunk is the rest of a frame whose start was written without the queue (see
    /// [`SendQueue::push_rest`]): like a partly written chunk, it is never discarded.
    front_started: bool,
}

impl SendQueue {
    /// Bytes queued and not yet written.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        match &self.0 {
            State::Full(f) => f.len,
            State::Empty => 0,
            State::One { frame, .. } => frame.len(),
        }
    }

    /// Nothing left to write?
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Has the backend submitted this queue's chunks and not yet reported completion?
    #[inline]
    pub(crate) fn in_flight(&self) -> bool {
        match &self.0 {
            State::Full(f) => f.in_flight,
            State::Empty => false,
            State::One { in_flight, .. } => *in_flight,
        }
    }

    /// Backend only: mark the queue as submitted (`true`) or done (`false`).
    #[allow(dead_code)] // used by completion-based backends
    pub(crate) fn set_in_flight(&mut self, in_flight: bool) {
        match &mut self.0 {
            State::Full(f) => {
                f.in_flight = in_flight;
                f.submitted = if in_flight { f.chunks.len() } else { 0 };
            }
            State::One { in_flight: i, .. } => *i = in_flight,
            State::Empty => {}
        }
    }

    /// The general form, grown into from the other states (keeping a shared frame and whether
    /// it is in flight).
    #[inline]
    fn fifo(&mut self) -> &mut Fifo {
        if !matches!(self.0, State::Full(_)) {
            self.grow(None);
        }
        match &mut self.0 {
            State::Full(f) => f,
            _ => unreachable!("grown above"),
        }
    }

    /// Grow into a [`Fifo`] (`body` if given, else a new one) holding what the queue holds.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, body: Option<Box<Fifo>>) {
        let mut f = body.unwrap_or_default();
        match std::mem::take(&mut self.0) {
            State::Full(old) => {
                // Nothing to grow: keep what was there (`body`, if any, is dropped).
                self.0 = State::Full(old);
                return;
            }
            State::Empty => {}
            State::One { frame, in_flight } => {
                let frame = Arc::unwrap_or_clone(frame);
                f.len = frame.len();
                f.chunks.push_back(Chunk::Shared(frame));
                f.in_flight = in_flight;
                f.submitted = usize::from(in_flight);
            }
        }
        self.0 = State::Full(f);
    }

    /// Append bytes produced by `fill` (which appends to the Vec it is given and returns nothing).
    /// Coalesces into the last owned chunk when allowed.
    #[inline]
    pub(crate) fn push_with(&mut self, extra: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        self.fifo().push_with(extra, fill);
    }

    /// Onto an empty queue: the rest of a frame of `frame_len` bytes whose first bytes were
    /// already written to the socket (`a` then `b`), so that [`SendQueue::discard_unsent`]
    /// keeps it whole as it keeps a partly written chunk.
    ///
    /// A new buffer for it is as large as the whole frame, not as the rest: how much of a frame
    /// the socket took is arbitrary, and buffers of arbitrary sizes (kept in the stock, freed
    /// when it ages) leave holes of odd sizes in the shard's heap that the next frames' buffers
    /// may not fit. Sized as the frame, the buffer is the one the queue would have taken
    /// without the direct write (no more memory than that), and the stock serves both.
    /// (bench/results/2026-12-02-direct-send.md: the soak's RSS growth with the direct send on
    /// is free memory inside glibc's arenas; this alone did not end it.)
    pub(crate) fn push_rest(&mut self, a: &[u8], b: &[u8], frame_len: usize) {
        debug_assert!(self.is_empty() && !self.in_flight());
        let f = self.fifo();
        f.push_sized(a.len() + b.len(), frame_len, |v| {
            v.extend_from_slice(a);
            v.extend_from_slice(b);
        });
        f.front_started = f.len != 0;
    }

    /// Append a copy of `bytes`.
    #[allow(dead_code)]
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.push_with(bytes.len(), |v| v.extend_from_slice(bytes));
    }

    /// Append a shared chunk (no copy).
    #[allow(dead_code)]
    pub(crate) fn push_shared(&mut self, bytes: Arc<[u8]>) {
        if bytes.is_empty() {
            return;
        }
        let f = self.fifo();
        f.len += bytes.len();
        f.chunks.push_back(Chunk::Shared(bytes));
    }

    /// Append a shared control frame (an idle ping, an empty pong, a shutdown's close): onto
    /// an empty queue it is held by a thin reference from `pool` and takes no heap memory of
    /// the queue's; behind other bytes the queue takes its storage from `pool` as for any
    /// frame.
    pub(crate) fn push_shared_control(&mut self, bytes: &Arc<[u8]>, pool: &mut QueuePool) {
        if bytes.is_empty() {
            return;
        }
        if let State::Empty = self.0 {
            self.0 = State::One {
                frame: pool.thin(bytes),
                in_flight: false,
            };
            return;
        }
        self.reuse(pool);
        self.push_shared(bytes.clone());
    }

    /// Fill `out` with slices over the front of the queue, in order; returns how many were
    /// filled. The first slice starts at the first unwritten byte.
    pub(crate) fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        match &self.0 {
            State::Full(f) => f.io_slices(out),
            State::Empty => 0,
            State::One { frame, .. } => match out.first_mut() {
                Some(s) => {
                    *s = IoSlice::new(frame);
                    1
                }
                None => 0,
            },
        }
    }

    /// The unwritten bytes when they all lie in one chunk (the common case: one coalesced
    /// owned chunk, or one shared control frame), so that a backend can write them without
    /// building an iovec array.
    #[inline]
    pub(crate) fn single_slice(&self) -> Option<&[u8]> {
        match &self.0 {
            State::Full(f) if f.chunks.len() == 1 => {
                f.chunks.front().and_then(|c| c.bytes().get(f.head..))
            }
            State::One { frame, .. } => Some(frame),
            _ => None,
        }
    }

    /// The chunks, front first, with the number of bytes of the first one already written
    /// (for backends that build their own iovec arrays).
    #[allow(dead_code)]
    pub(crate) fn chunks(&self) -> (impl Iterator<Item = &[u8]>, usize) {
        let (one, rest, head): (Option<&[u8]>, _, _) = match &self.0 {
            State::Full(f) => (None, Some(f.chunks.iter().map(Chunk::bytes)), f.head),
            State::Empty => (None, None, 0),
            State::One { frame, .. } => (Some(frame), None, 0),
        };
        (one.into_iter().chain(rest.into_iter().flatten()), head)
    }

    /// Drop `n` written bytes from the front (`n <= len`).
    pub(crate) fn advance(&mut self, n: usize) {
        match &mut self.0 {
            State::Full(f) => f.advance(n),
            State::Empty => {}
            State::One { frame, .. } => {
                if n >= frame.len() {
                    self.0 = State::Empty;
                } else if n > 0 {
                    // Written in part: the rest is a partly written chunk.
                    self.fifo().advance(n);
                }
            }
        }
    }

    /// Empty and not in flight: move whatever storage the queue kept into `pool` (or free it),
    /// leaving the queue without heap memory.
    pub(crate) fn recycle(&mut self, pool: &mut QueuePool) {
        match &self.0 {
            State::Full(f) if f.len == 0 && !f.in_flight => {}
            _ => return,
        }
        let State::Full(mut f) = std::mem::take(&mut self.0) else {
            unreachable!("matched above");
        };
        // Empty (`len` is 0), but it may still hold chunks with no bytes (a transform that
        // produced nothing): the stock takes only empty storage.
        f.chunks.clear();
        f.head = 0;
        f.submitted = 0;
        f.front_started = false;
        if f.spare.capacity() > SPARE_BYTES_MAX {
            pool.give_large(std::mem::take(&mut f.spare));
        }
        if pool.free.len() < QueuePool::ENTRIES_MAX && f.chunks.capacity() <= 16 {
            pool.free.push(f);
        }
    }

    /// A frame of up to `extra` bytes is about to be pushed: if it is large and will need a
    /// chunk of its own that the spare buffer cannot hold, take one from `pool`'s large
    /// buffers instead of allocating it.
    #[inline]
    pub(crate) fn reserve_large(&mut self, extra: usize, pool: &mut QueuePool) {
        if extra <= SPARE_BYTES_MAX {
            return;
        }
        let f = self.fifo();
        if f.spare.capacity() >= extra {
            return;
        }
        if let Some(v) = pool.take_large(extra) {
            f.spare = v;
        }
    }

    /// About to queue a frame: a queue without a body of its own (empty, or holding one shared
    /// frame) adopts one from `pool`, if it has any.
    #[inline]
    pub(crate) fn reuse(&mut self, pool: &mut QueuePool) {
        if !matches!(self.0, State::Full(_)) {
            if let Some(f) = pool.free.pop() {
                debug_assert!(f.chunks.is_empty() && f.spare.is_empty() && f.len == 0);
                self.grow(Some(f));
            }
        }
    }

    /// Heap bytes held by the queue's storage (body, chunk deque, chunk buffers, spare buffer;
    /// not shared frames).
    #[allow(dead_code)] // tests
    pub(crate) fn heap_bytes(&self) -> usize {
        match &self.0 {
            State::Full(f) => std::mem::size_of::<Fifo>() + f.heap_bytes(),
            _ => 0,
        }
    }

    /// Shard only: a [`Completion::Sent`] arrived: the queue is no longer in flight and `n`
    /// bytes were written.
    ///
    /// [`Completion::Sent`]: crate::io::Completion::Sent
    pub(crate) fn complete(&mut self, n: usize) {
        self.set_in_flight(false);
        self.advance(n);
    }

    /// Replace the shared chunk `old` (compared by address) with `new`, if it is among the last
    /// `REPLACE_SCAN_CHUNKS` chunks and not a single byte of it has been written or submitted.
    /// Returns whether it was replaced (conflation: the latest frame of a topic wins).
    pub(crate) fn replace_shared(&mut self, old: &Weak<[u8]>, new: Arc<[u8]>) -> bool {
        match &mut self.0 {
            State::Full(f) => f.replace_shared(old, new),
            // Control frames are never conflated, and an empty queue has nothing to replace.
            _ => false,
        }
    }

    /// Drop every byte not yet written or submitted, keeping a partly written first chunk (and,
    /// while in flight, the submitted chunks) so that the peer never sees a truncated frame.
    /// Whatever is pushed next follows a complete frame.
    pub(crate) fn discard_unsent(&mut self) {
        match &mut self.0 {
            State::Full(f) => f.discard_unsent(),
            State::Empty
            | State::One {
                in_flight: true, ..
            } => {}
            State::One {
                in_flight: false, ..
            } => self.0 = State::Empty,
        }
    }

    /// Drop everything queued (the connection is going away). Must not be in flight.
    #[allow(dead_code)] // the slow-consumer paths use `discard_unsent`
    pub(crate) fn clear(&mut self) {
        debug_assert!(!self.in_flight());
        self.0 = State::Empty;
    }

    /// Is the queue holding one shared frame without a body of its own?
    #[cfg(test)]
    fn is_one(&self) -> bool {
        matches!(self.0, State::One { .. })
    }
}

impl Fifo {
    /// See [`SendQueue::push_with`].
    fn push_with(&mut self, extra: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        self.push_sized(extra, extra, fill);
    }

    /// [`Fifo::push_with`], a new chunk buffer (when one is needed) of at least `cap` bytes.
    #[inline]
    fn push_sized(&mut self, extra: usize, cap: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        let coalesce = !self.in_flight
            && matches!(self.chunks.back(), Some(Chunk::Owned(v)) if v.len() + extra <= COALESCE_BYTES);
        let v = if coalesce {
            match self.chunks.back_mut() {
                Some(Chunk::Owned(v)) => v,
                _ => unreachable!("checked above"),
            }
        } else {
            let v = if self.spare.capacity() >= extra {
                std::mem::take(&mut self.spare)
            } else {
                Vec::with_capacity(extra.max(cap).max(CHUNK_BYTES_MIN))
            };
            self.chunks.push_back(Chunk::Owned(v));
            match self.chunks.back_mut() {
                Some(Chunk::Owned(v)) => v,
                _ => unreachable!("just pushed"),
            }
        };
        let before = v.len();
        fill(v);
        self.len += v.len() - before;
    }

    /// See [`SendQueue::io_slices`].
    fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().enumerate() {
            if n == out.len() {
                break;
            }
            let b = chunk.bytes();
            let b = if i == 0 { &b[self.head..] } else { b };
            if !b.is_empty() {
                out[n] = IoSlice::new(b);
                n += 1;
            }
        }
        n
    }

    /// See [`SendQueue::advance`].
    fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.len);
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.head;
            if n >= left {
                n -= left;
                self.head = 0;
                self.front_started = false;
                self.submitted = self.submitted.saturating_sub(1);
                if let Some(Chunk::Owned(mut v)) = self.chunks.pop_front() {
                    // The largest buffer stays, for the next push or for `recycle` to hand
                    // to the pool (a large one goes to its stock of large buffers).
                    if v.capacity() > self.spare.capacity() {
                        v.clear();
                        self.spare = v;
                    }
                }
            } else {
                self.head += n;
                n = 0;
            }
        }
        if self.len == 0 {
            // Keep the (empty) storage for the next push or for `recycle`.
            self.chunks.clear();
            self.head = 0;
            self.front_started = false;
        }
    }

    /// Heap bytes of the chunk deque, chunk buffers and spare buffer.
    fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Chunk>()
            + self.spare.capacity()
            + self
                .chunks
                .iter()
                .map(|c| match c {
                    Chunk::Owned(v) => v.capacity(),
                    Chunk::Shared(_) => 0,
                })
                .sum::<usize>()
    }

    /// See [`SendQueue::replace_shared`].
    fn replace_shared(&mut self, old: &Weak<[u8]>, new: Arc<[u8]>) -> bool {
        let first = if self.in_flight {
            self.submitted
        } else {
            usize::from(self.head > 0 || self.front_started)
        };
        let first = first.max(self.chunks.len().saturating_sub(REPLACE_SCAN_CHUNKS));
        let target = Weak::as_ptr(old) as *const u8;
        for i in (first..self.chunks.len()).rev() {
            if let Chunk::Shared(a) = &self.chunks[i] {
                if std::ptr::eq(Arc::as_ptr(a) as *const u8, target) {
                    self.len = self.len - a.len() + new.len();
                    self.chunks[i] = Chunk::Shared(new);
                    return true;
                }
            }
        }
        false
    }

    /// See [`SendQueue::discard_unsent`].
    fn discard_unsent(&mut self) {
        let keep = if self.in_flight {
            self.submitted.max(usize::from(self.front_started))
        } else {
            usize::from(self.head > 0 || self.front_started)
        };
        while self.chunks.len() > keep {
            if let Some(c) = self.chunks.pop_back() {
                self.len -= c.bytes().len();
            }
        }
        if self.chunks.is_empty() {
            self.chunks = VecDeque::new();
            self.head = 0;
            self.len = 0;
            self.front_started = false;
        }
    }
}

#[cfg(test)]
mod tests;
