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

/// Emptied send-queue storage (a chunk deque and an owned chunk buffer, both empty) that
/// [`SendQueue::reuse`] can adopt.
type Storage = (VecDeque<Chunk>, Vec<u8>);

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
/// Memory: at most [`QueuePool::ENTRIES_MAX`] entries of about 128 bytes of deque plus a
/// buffer of at most 4 KiB, i.e. about 1 MiB per shard in the worst case, plus at most
/// `large_bytes_max` bytes of large buffers, and no more than the large frames of the last
/// two seconds left behind (`shard/memory.rs`).
#[derive(Debug, Default)]
pub(crate) struct QueuePool {
    free: Vec<Storage>,
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
}

/// How far from the back [`SendQueue::replace_shared`] looks for the chunk to replace (bounds
/// the work per conflated publish on a long queue).
const REPLACE_SCAN_CHUNKS: usize = 64;

/// A connection's outgoing bytes: a FIFO of chunks plus an offset into the first one.
///
/// The heap memory of a chunk never moves while the queue is in flight (see the module docs):
/// [`SendQueue::push`] only appends to the last chunk when the queue is not in flight.
/// A queue that drained keeps its (empty) storage until [`SendQueue::recycle`] hands it to
/// the shard's [`QueuePool`]; after that it holds no heap memory.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
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
    /// An empty queue (no heap memory).
    pub(crate) const fn new() -> Self {
        Self {
            chunks: VecDeque::new(),
            head: 0,
            len: 0,
            in_flight: false,
            spare: Vec::new(),
            submitted: 0,
            front_started: false,
        }
    }

    /// Bytes queued and not yet written.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Nothing left to write?
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Has the backend submitted this queue's chunks and not yet reported completion?
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Backend only: mark the queue as submitted (`true`) or done (`false`).
    #[allow(dead_code)] // used by completion-based backends
    pub(crate) fn set_in_flight(&mut self, in_flight: bool) {
        self.in_flight = in_flight;
        self.submitted = if in_flight { self.chunks.len() } else { 0 };
    }

    /// Append bytes produced by `fill` (which appends to the Vec it is given and returns nothing).
    /// Coalesces into the last owned chunk when allowed.
    pub(crate) fn push_with(&mut self, extra: usize, fill: impl FnOnce(&mut Vec<u8>)) {
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
                Vec::with_capacity(extra.max(CHUNK_BYTES_MIN))
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

    /// Onto an empty queue: the rest of a frame whose first bytes were already written to the
    /// socket (`a` then `b`), so that [`SendQueue::discard_unsent`] keeps it whole as it keeps a
    /// partly written chunk.
    pub(crate) fn push_rest(&mut self, a: &[u8], b: &[u8]) {
        debug_assert!(self.is_empty() && !self.in_flight);
        self.push_with(a.len() + b.len(), |v| {
            v.extend_from_slice(a);
            v.extend_from_slice(b);
        });
        self.front_started = !self.is_empty();
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
        self.len += bytes.len();
        self.chunks.push_back(Chunk::Shared(bytes));
    }

    /// Fill `out` with slices over the front of the queue, in order; returns how many were
    /// filled. The first slice starts at the first unwritten byte.
    pub(crate) fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
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

    /// The unwritten bytes when they all lie in one chunk (the common case: one coalesced
    /// owned chunk), so that a backend can write them without building an iovec array.
    pub(crate) fn single_slice(&self) -> Option<&[u8]> {
        if self.chunks.len() == 1 {
            self.chunks.front().and_then(|c| c.bytes().get(self.head..))
        } else {
            None
        }
    }

    /// The chunks, front first, with the number of bytes of the first one already written
    /// (for backends that build their own iovec arrays).
    #[allow(dead_code)]
    pub(crate) fn chunks(&self) -> (impl Iterator<Item = &[u8]>, usize) {
        (self.chunks.iter().map(Chunk::bytes), self.head)
    }

    /// Drop `n` written bytes from the front (`n <= len`).
    pub(crate) fn advance(&mut self, mut n: usize) {
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

    /// Empty and not in flight: move whatever storage the queue kept into `pool` (or free it),
    /// leaving the queue without heap memory.
    pub(crate) fn recycle(&mut self, pool: &mut QueuePool) {
        if self.len != 0 || self.in_flight {
            return;
        }
        if self.chunks.capacity() == 0 && self.spare.capacity() == 0 {
            return;
        }
        // Empty (`len` is 0), but it may still hold chunks with no bytes (a transform that
        // produced nothing): the stock takes only empty storage.
        let mut chunks = std::mem::take(&mut self.chunks);
        chunks.clear();
        let mut spare = std::mem::take(&mut self.spare);
        self.head = 0;
        if spare.capacity() > SPARE_BYTES_MAX {
            pool.give_large(std::mem::take(&mut spare));
        }
        if pool.free.len() < QueuePool::ENTRIES_MAX && chunks.capacity() <= 16 {
            pool.free.push((chunks, spare));
        }
    }

    /// A frame of up to `extra` bytes is about to be pushed: if it is large and will need a
    /// chunk of its own that the spare buffer cannot hold, take one from `pool`'s large
    /// buffers instead of allocating it.
    #[inline]
    pub(crate) fn reserve_large(&mut self, extra: usize, pool: &mut QueuePool) {
        if extra <= SPARE_BYTES_MAX || self.spare.capacity() >= extra {
            return;
        }
        if let Some(v) = pool.take_large(extra) {
            self.spare = v;
        }
    }

    /// Without storage (a recycled or new queue): adopt one from `pool`, if it has any.
    pub(crate) fn reuse(&mut self, pool: &mut QueuePool) {
        if self.chunks.capacity() == 0 && self.spare.capacity() == 0 {
            if let Some((chunks, spare)) = pool.free.pop() {
                debug_assert!(chunks.is_empty() && spare.is_empty());
                self.chunks = chunks;
                self.spare = spare;
            }
        }
    }

    /// Heap bytes held by the queue's storage (chunk deque, chunk buffers, spare buffer).
    #[allow(dead_code)] // tests
    pub(crate) fn heap_bytes(&self) -> usize {
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

    /// Shard only: a [`Completion::Sent`] arrived: the queue is no longer in flight and `n`
    /// bytes were written.
    pub(crate) fn complete(&mut self, n: usize) {
        self.in_flight = false;
        self.submitted = 0;
        self.advance(n);
    }

    /// Replace the shared chunk `old` (compared by address) with `new`, if it is among the last
    /// `REPLACE_SCAN_CHUNKS` chunks and not a single byte of it has been written or submitted.
    /// Returns whether it was replaced (conflation: the latest frame of a topic wins).
    pub(crate) fn replace_shared(&mut self, old: &Weak<[u8]>, new: Arc<[u8]>) -> bool {
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

    /// Drop every byte not yet written or submitted, keeping a partly written first chunk (and,
    /// while in flight, the submitted chunks) so that the peer never sees a truncated frame.
    /// Whatever is pushed next follows a complete frame.
    pub(crate) fn discard_unsent(&mut self) {
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

    /// Drop everything queued (the connection is going away). Must not be in flight.
    #[allow(dead_code)] // the slow-consumer paths use `discard_unsent`
    pub(crate) fn clear(&mut self) {
        debug_assert!(!self.in_flight);
        self.chunks = VecDeque::new();
        self.spare = Vec::new();
        self.head = 0;
        self.len = 0;
        self.submitted = 0;
        self.front_started = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(q: &SendQueue) -> Vec<u8> {
        let mut s = [IoSlice::new(&[]); 64];
        let n = q.io_slices(&mut s);
        s[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn send_queue_advance_across_chunks_keeps_order() {
        let mut q = SendQueue::default();
        q.push(b"hello ");
        q.push_shared(Arc::from(&b"shared "[..]));
        q.push(b"world");
        assert_eq!(q.len(), 18);
        assert_eq!(collect(&q), b"hello shared world");
        q.advance(8);
        assert_eq!(collect(&q), b"ared world");
        q.advance(10);
        assert!(q.is_empty());
        assert_eq!(collect(&q), b"");
    }

    #[test]
    fn send_queue_storage_recycled_through_the_pool_is_reused_and_leaves_no_heap() {
        let mut pool = QueuePool::default();
        let mut q = SendQueue::default();
        q.reuse(&mut pool);
        q.push(b"hello");
        let p = q.chunks().0.next().map(<[u8]>::as_ptr);
        q.advance(5);
        q.recycle(&mut pool);
        assert_eq!(q.heap_bytes(), 0);
        let mut r = SendQueue::default();
        r.reuse(&mut pool);
        r.push(b"again");
        assert_eq!(r.chunks().0.next().map(<[u8]>::as_ptr), p);
        assert_eq!(collect(&r), b"again");
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn a_queue_left_with_a_chunk_of_no_bytes_is_recycled_empty() {
        let mut pool = QueuePool::default();
        let mut q = SendQueue::default();
        q.push_with(100, |_| {});
        assert!(q.is_empty());
        q.recycle(&mut pool);
        let mut r = SendQueue::default();
        r.reuse(&mut pool);
        assert_eq!(collect(&r), b"");
        r.push(b"x");
        assert_eq!(collect(&r), b"x");
    }

    #[test]
    fn send_queue_not_written_or_in_flight_is_not_recycled() {
        let mut pool = QueuePool::default();
        let mut q = SendQueue::default();
        q.push(b"abc");
        q.recycle(&mut pool);
        assert_eq!(collect(&q), b"abc");
        q.set_in_flight(true);
        q.recycle(&mut pool);
        assert_eq!(collect(&q), b"abc");
        assert!(pool.free.is_empty());
        q.complete(3);
        q.recycle(&mut pool);
        assert_eq!(pool.free.len(), 1);
    }

    #[test]
    fn queue_pool_keeps_at_most_entries_max_and_no_large_buffers() {
        let mut pool = QueuePool::default();
        for _ in 0..QueuePool::ENTRIES_MAX + 10 {
            let mut q = SendQueue::default();
            q.push(b"x");
            q.advance(1);
            q.recycle(&mut pool);
            assert_eq!(q.heap_bytes(), 0);
        }
        assert_eq!(pool.free.len(), QueuePool::ENTRIES_MAX);
        // Without room for large buffers, a large chunk buffer is freed once written.
        let mut q = SendQueue::default();
        q.push(&vec![0u8; SPARE_BYTES_MAX + 1]);
        q.advance(SPARE_BYTES_MAX + 1);
        q.recycle(&mut pool);
        assert_eq!(q.heap_bytes(), 0);
        assert_eq!(pool.large_bytes(), 0);
        assert!(pool.take_released() > SPARE_BYTES_MAX);
    }

    #[test]
    fn large_chunk_buffers_are_reused_through_the_pool_up_to_its_bound() {
        let mut pool = QueuePool::new(100 << 10);
        let frame = vec![7u8; 40 << 10];
        let mut ptrs = Vec::new();
        let mut qs: Vec<SendQueue> = (0..3).map(|_| SendQueue::default()).collect();
        for q in &mut qs {
            q.reuse(&mut pool);
            q.reserve_large(frame.len(), &mut pool);
            q.push(&frame);
            ptrs.push(q.chunks().0.next().map(<[u8]>::as_ptr));
        }
        for q in &mut qs {
            q.advance(frame.len());
            q.recycle(&mut pool);
            assert_eq!(q.heap_bytes(), 0);
        }
        // Two of three 40 KiB buffers fit the 100 KiB bound; the third was freed.
        assert_eq!(pool.large_bytes(), 2 * (40 << 10));
        assert_eq!(pool.take_released(), 40 << 10);
        let mut q = SendQueue::default();
        q.reuse(&mut pool);
        q.reserve_large(frame.len(), &mut pool);
        q.push(&frame);
        let p = q.chunks().0.next().map(<[u8]>::as_ptr);
        assert!(ptrs.contains(&p), "a kept buffer is reused");
        assert_eq!(pool.large_bytes(), 40 << 10);
        // A much smaller frame does not take a large buffer; a buffer no frame takes is freed
        // at the second look.
        let mut small = SendQueue::default();
        small.reserve_large(8 << 10, &mut pool);
        assert_eq!(pool.large_bytes(), 40 << 10);
        assert_eq!(pool.age_large(2), 0);
        assert_eq!(pool.age_large(2), 40 << 10);
        assert_eq!(pool.take_released(), 40 << 10);
    }

    #[test]
    fn large_buffers_stock_holds_what_a_steady_load_uses_not_its_bound() {
        // Every second (one look), 8 connections send a 16 KiB frame each, and one sends a
        // frame of a size no earlier buffer fits (as a coalesced chunk that grew may be): more
        // than 32 KiB (no 16 KiB frame takes it) and larger each time.
        const LOOKS_MAX: u32 = 2;
        let mut pool = QueuePool::new(1 << 20);
        let steady = vec![1u8; 16 << 10];
        let mut qs: Vec<SendQueue> = (0..9).map(|_| SendQueue::default()).collect();
        let (mut odd_bytes, mut freed) = (0, 0);
        for round in 0..60usize {
            let odd = vec![2u8; (33 << 10) + round * 1000];
            for (i, q) in qs.iter_mut().enumerate() {
                let frame = if i == 8 { &odd } else { &steady };
                q.reuse(&mut pool);
                q.reserve_large(frame.len(), &mut pool);
                q.push(frame);
            }
            for q in &mut qs {
                let n = q.len();
                q.advance(n);
                q.recycle(&mut pool);
            }
            odd_bytes += odd.len();
            let aged = pool.age_large(LOOKS_MAX);
            assert_eq!(pool.take_released(), aged, "counted as released");
            freed += aged;
            // The 8 steady buffers, and the odd ones of the last looks only.
            let most = 8 * steady.len() + LOOKS_MAX as usize * odd.len();
            assert!(
                pool.large_bytes() <= most,
                "round {round}: {} bytes kept, at most {most}",
                pool.large_bytes()
            );
        }
        // The steady buffers were reused all along: only odd ones were freed.
        assert!(pool.large_bytes() >= 8 * steady.len());
        assert!(freed <= odd_bytes, "{freed} freed, odd frames {odd_bytes}");
        assert!(
            odd_bytes > 1 << 20,
            "the old stock would have filled its bound"
        );
    }

    #[test]
    fn send_queue_single_slice_only_when_one_chunk_is_left() {
        let mut q = SendQueue::default();
        assert_eq!(q.single_slice(), None);
        q.push(b"hello ");
        q.push(b"world");
        assert_eq!(q.single_slice(), Some(&b"hello world"[..]));
        q.push_shared(Arc::from(&b"!"[..]));
        assert_eq!(q.single_slice(), None);
        q.advance(11);
        assert_eq!(q.single_slice(), Some(&b"!"[..]));
        q.push(b"ab");
        q.advance(2);
        assert_eq!(q.single_slice(), Some(&b"b"[..]));
    }

    #[test]
    fn replace_shared_swaps_an_unsent_chunk_and_keeps_the_length_right() {
        let mut q = SendQueue::default();
        let old: Arc<[u8]> = Arc::from(&b"old-1"[..]);
        q.push(b"a");
        q.push_shared(old.clone());
        q.push(b"z");
        let w = Arc::downgrade(&old);
        assert!(q.replace_shared(&w, Arc::from(&b"new-22"[..])));
        assert_eq!(collect(&q), b"anew-22z");
        assert_eq!(q.len(), 8);
        // Already replaced: the old frame is not in the queue any more.
        assert!(!q.replace_shared(&w, Arc::from(&b"x"[..])));
    }

    #[test]
    fn replace_shared_never_touches_a_partly_written_or_submitted_chunk() {
        let mut q = SendQueue::default();
        let first: Arc<[u8]> = Arc::from(&b"first"[..]);
        q.push_shared(first.clone());
        q.advance(2);
        assert!(!q.replace_shared(&Arc::downgrade(&first), Arc::from(&b"x"[..])));
        let second: Arc<[u8]> = Arc::from(&b"second"[..]);
        q.push_shared(second.clone());
        q.set_in_flight(true);
        assert!(!q.replace_shared(&Arc::downgrade(&second), Arc::from(&b"x"[..])));
        let third: Arc<[u8]> = Arc::from(&b"third"[..]);
        q.push_shared(third.clone());
        assert!(q.replace_shared(&Arc::downgrade(&third), Arc::from(&b"3"[..])));
        q.complete(3);
        assert_eq!(collect(&q), b"second3");
    }

    #[test]
    fn discard_unsent_keeps_a_partly_written_frame_whole() {
        let mut q = SendQueue::default();
        q.push_shared(Arc::from(&b"frame-one"[..]));
        q.push_shared(Arc::from(&b"frame-two"[..]));
        q.advance(3);
        q.discard_unsent();
        assert_eq!(collect(&q), b"me-one");
        assert_eq!(q.len(), 6);
        q.push(b"close");
        assert_eq!(collect(&q), b"me-oneclose");
        let mut q = SendQueue::default();
        q.push_shared(Arc::from(&b"sent"[..]));
        q.discard_unsent();
        assert!(q.is_empty());
    }

    #[test]
    fn discard_unsent_keeps_the_rest_of_a_frame_started_outside_the_queue() {
        let mut q = SendQueue::default();
        q.push_rest(b"ad", b"er-rest");
        q.push_shared(Arc::from(&b"next"[..]));
        q.discard_unsent();
        assert_eq!(collect(&q), b"ader-rest");
        q.push(b"close");
        assert_eq!(collect(&q), b"ader-restclose");
        // Once that chunk is written, a whole frame behind it may be discarded again.
        q.advance(14);
        q.push_shared(Arc::from(&b"whole"[..]));
        q.discard_unsent();
        assert!(q.is_empty());
    }

    #[test]
    fn send_queue_in_flight_never_appends_to_submitted_chunk() {
        let mut q = SendQueue::default();
        q.push(b"abc");
        let p = q.chunks().0.next().map(<[u8]>::as_ptr);
        q.set_in_flight(true);
        q.push(b"def");
        let first = q.chunks().0.next().map(<[u8]>::as_ptr);
        assert_eq!(first, p);
        assert_eq!(q.chunks().0.nth(1), Some(&b"def"[..]));
        q.complete(3);
        assert_eq!(collect(&q), b"def");
    }
}
