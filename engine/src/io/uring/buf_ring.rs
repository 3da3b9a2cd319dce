//! The provided-buffer ring the shard's multishot recvs draw from (mmap'd memory).

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use crate::io::sys;
use io_uring::{types, IoUring};

/// Buffer group id of the shard's provided-buffer ring (one group per ring).
pub(super) const BGID: u16 = 0;

/// `IOU_PBUF_RING_INC` (Linux 6.12): the kernel consumes a provided buffer incrementally.
pub(super) const PBUF_RING_INC: u16 = 2;

/// A provided-buffer ring: `count` buffers of `size` bytes, registered with the ring as buffer
/// group [`BGID`]. A buffer is either in the ring (the kernel may fill it), lent out by one
/// recv completion until [`BufRing::recycle`] gives it back, or free (ours alone).
///
/// Where the kernel supports it the ring is *incremental*: a recv takes only the bytes it
/// fills from the head buffer, so many small messages share one buffer instead of taking one
/// each; completions then carry consecutive slices of a buffer (`F_BUF_MORE` while the
/// kernel keeps using the rest), and the buffer goes back to the ring after its last slice.
///
/// # Memory follows the load
///
/// The kernel takes ring entries in order, so a ring that always held every buffer would
/// cycle through all of them and, under any steady trickle of bytes, end up with all
/// `count × size` bytes resident (16 MiB per shard by default), growing by each byte received
/// until then. Instead only a *window* of buffers is kept in the ring, taken from a LIFO stack
/// of free buffers (the most recently used, still resident, first). The kernel cycles through
/// the whole window, so resident receive-buffer memory is about `window × size`, never more
/// than `2 × window × size` (the window in the ring and as many hot free buffers), never more
/// than `count × size`:
/// - it starts at [`WINDOW_MIN`] buffers (made resident at once) and doubles, up to `count`,
///   when the ring ran dry (`ENOBUFS`) or the completions of one `io_uring_enter` used at
///   least half of it ([`BufRing::end_batch`], called once per reap: buffers are back in the
///   ring before the next enter, so what one enter can use is what the window must hold);
/// - every [`TRIM_INTERVAL`] while it is above the minimum or buffers are resident that it does
///   not need, [`BufRing::trim`] looks at the largest batch since the last trim. It shrinks to
///   four times the largest batch of a calm stretch (trims in a row in which no batch used a
///   quarter of the window): [`CALM_TRIMS`] trims once traffic went quiet (no batch finished
///   more than [`QUIET_USED`] buffers: the burst is over, its memory goes back within 6 s), or
///   [`BUSY_CALM_TRIMS`] trims while traffic goes on (a load that widens the window by bursts
///   a few seconds apart, such as clients uploading as fast as loopback allows among steady
///   ones, keeps it wide: RSS stays flat instead of following each burst up and down, and
///   pages are not faulted in again every few seconds). Each trim gives the pages of buffers
///   the window does not need back to the kernel (`MADV_DONTNEED`): free buffers below the
///   stack's top `window`, and buffers still in the ring past the window that the kernel has
///   not started filling. The kernel fills ring buffers only inside this thread's
///   `io_uring_enter` (the ring is `DEFER_TASKRUN`, single issuer), never while the driver
///   runs, so dropping the pages of an unstarted ring buffer loses nothing: the kernel's next
///   write faults in fresh pages.
pub(super) struct BufRing {
    /// `count` ring entries, page aligned (mmap).
    pub(super) entries: NonNull<types::BufRingEntry>,
    pub(super) entries_len: usize,
    /// `count × size` bytes of buffers (mmap).
    pub(super) bufs: NonNull<u8>,
    pub(super) bufs_len: usize,
    pub(super) count: u16,
    pub(super) size: u32,
    /// Local copy of the tail; published with a release store after entries are written.
    pub(super) tail: u16,
    /// Keep the memory mapped on drop (the kernel might still write into it).
    pub(super) leak: bool,
    /// Incremental consumption: `offsets[bid]` is where the next slice of `bid` starts.
    /// Empty when the ring is not incremental.
    pub(super) offsets: Box<[u32]>,
    /// Free buffers (neither in the ring nor lent out), most recently returned last.
    free: Vec<u16>,
    /// Per buffer: [`IN_RING`] and [`RESIDENT`] bits.
    state: Box<[u8]>,
    /// Buffers in the ring (the kernel's until a completion says it is done with them).
    in_ring: u16,
    /// Buffers whose pages may be resident (used since their last release).
    resident: u16,
    /// How many buffers the ring is kept topped up with.
    window: u16,
    /// Buffers the kernel finished in the current batch of completions.
    batch_used: u16,
    /// Most buffers one batch used since the last trim (`count` after the ring ran dry).
    peak_used: u16,
    /// When [`BufRing::trim`] is due; `None` while there is nothing to trim.
    trim_at: Option<Instant>,
    /// Trims in a row that found the window four times larger than needed.
    calm: u8,
    /// One of those trims saw more than [`QUIET_USED`] buffers used by one batch.
    calm_busy: bool,
    /// The largest batch of those trims.
    calm_peak: u16,
    /// Per buffer: how many kept byte ranges ([`BufRing::hold`]) lie in it. A held buffer the
    /// kernel finished goes back to the ring only once the last hold is dropped.
    holds: Box<[u16]>,
}

/// Buffers the ring starts with (resident from the start) and never shrinks below (512 KiB
/// with 64 KiB buffers: enough for 50 MB/s at 100 loop turns a second before it widens).
pub(super) const WINDOW_MIN: u16 = 8;

/// How often the window is reconsidered and unneeded buffers are released.
pub(super) const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Trims in a row that must find the window four times larger than needed, with traffic
/// quiet, before it shrinks.
pub(super) const CALM_TRIMS: u8 = 5;

/// The same while traffic goes on (some batch used more than [`QUIET_USED`] buffers): half a
/// minute, longer than the gaps between the bursts of a steady load.
pub(super) const BUSY_CALM_TRIMS: u8 = 30;

/// Most buffers one batch may use while traffic counts as quiet (128 KiB in one enter with
/// 64 KiB buffers: pings, small messages; a burst's leftovers).
pub(super) const QUIET_USED: u16 = 1;

/// `state` bit: the buffer is in the ring.
const IN_RING: u8 = 1;
/// `state` bit: the buffer's pages may be resident.
const RESIDENT: u8 = 2;
/// `state` bit: the kernel finished the buffer while it was held; recycled with the last hold.
const FINISHED_HELD: u8 = 4;

impl BufRing {
    pub(super) fn new(
        ring: &IoUring,
        count: u16,
        size: u32,
        incremental: bool,
    ) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buf_count must be a power of two ≤ 32768 and buf_size > 0",
            ));
        }
        let entries_len = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        let bufs_len = usize::from(count) * size as usize;
        let entries = sys::mmap_anon(entries_len)?.cast::<types::BufRingEntry>();
        let bufs = match sys::mmap_anon(bufs_len) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: the mapping just made above, not registered with the ring yet.
                unsafe { sys::munmap(entries.cast(), entries_len) };
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
            // Buffer 0 on top: the lowest addresses are used first.
            free: (0..count).rev().collect(),
            state: vec![0; usize::from(count)].into_boxed_slice(),
            in_ring: 0,
            resident: 0,
            window: WINDOW_MIN.min(count),
            batch_used: 0,
            peak_used: 0,
            trim_at: None,
            calm: 0,
            calm_busy: false,
            calm_peak: 0,
            holds: vec![0; usize::from(count)].into_boxed_slice(),
        };
        me.top_up();
        // Make the first window resident now, so that a light load (which cycles through it)
        // does not grow RSS by each byte received until it has touched all of it.
        let page = sys::page_size();
        for bid in 0..me.window {
            let buf = me.get(bid, 0, size as usize);
            for i in (0..buf.len()).step_by(page) {
                buf[i] = 0;
            }
        }
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

    /// Put free buffers (hottest first) into the ring until it holds `window` of them.
    fn top_up(&mut self) {
        let before = self.tail;
        while self.in_ring < self.window {
            let Some(bid) = self.free.pop() else { break };
            let st = &mut self.state[usize::from(bid)];
            if *st & RESIDENT == 0 {
                self.resident += 1;
            }
            *st = IN_RING | RESIDENT;
            self.in_ring += 1;
            self.push(bid);
        }
        if self.tail != before {
            self.publish();
        }
    }

    /// Give buffer `bid` (lent out by a completion that finished it) back: onto the free
    /// stack, and into the ring if the window has room.
    pub(super) fn recycle(&mut self, bid: u16) {
        if bid >= self.count {
            return;
        }
        if self.holds[usize::from(bid)] > 0 {
            self.state[usize::from(bid)] |= FINISHED_HELD;
            return;
        }
        self.free.push(bid);
        self.top_up();
    }

    /// The buffers that bytes `off..off + len` of the mapping lie in.
    fn spanned(&self, off: usize, len: usize) -> std::ops::Range<usize> {
        let size = self.size as usize;
        let first = off / size;
        let last = (off + len.max(1) - 1) / size;
        first.min(usize::from(self.count))..(last + 1).min(usize::from(self.count))
    }

    /// Keep bytes `off..off + len` of the mapping (lent out by completions) from going back to
    /// the ring: each buffer they lie in is recycled only after [`BufRing::unhold`].
    pub(super) fn hold(&mut self, off: usize, len: usize) {
        for bid in self.spanned(off, len) {
            self.holds[bid] = self.holds[bid].saturating_add(1);
        }
    }

    /// Drop a [`BufRing::hold`] of the same range; a buffer the kernel finished meanwhile goes
    /// back now.
    pub(super) fn unhold(&mut self, off: usize, len: usize) {
        for bid in self.spanned(off, len) {
            let h = &mut self.holds[bid];
            *h = h.saturating_sub(1);
            if *h == 0 && self.state[bid] & FINISHED_HELD != 0 {
                self.state[bid] &= !FINISHED_HELD;
                self.recycle(bid as u16);
            }
        }
    }

    /// Where bytes at `start` of buffer `bid` lie in the mapping (the offset
    /// [`BufRing::span`] takes).
    pub(super) fn offset(&self, bid: u16, start: usize) -> usize {
        // `count` is a power of two (checked in `new`).
        usize::from(bid & (self.count - 1)) * self.size as usize + start
    }

    /// Account for a completion that filled `len` bytes of buffer `bid` (`buf_more`: its
    /// `F_BUF_MORE` flag). Returns where those bytes start in the buffer and whether the kernel
    /// is done with the buffer (then it goes back with [`BufRing::recycle`] once handled).
    pub(super) fn consume(&mut self, bid: u16, len: usize, buf_more: bool) -> (usize, bool) {
        let (start, finished) = match self.offsets.get_mut(usize::from(bid)) {
            None => (0, true),
            Some(off) if buf_more => {
                let start = *off as usize;
                *off = (start + len).min(self.size as usize) as u32;
                (start, false)
            }
            Some(off) => (std::mem::replace(off, 0) as usize, true),
        };
        if finished {
            if let Some(st) = self.state.get_mut(usize::from(bid)) {
                if *st & IN_RING != 0 {
                    *st &= !IN_RING;
                    self.in_ring -= 1;
                }
            }
            self.batch_used = self.batch_used.saturating_add(1);
        }
        (start, finished)
    }

    /// A recv found the ring empty (`ENOBUFS`): widen the window.
    pub(super) fn ran_dry(&mut self) {
        self.peak_used = self.count;
        self.grow();
    }

    /// The end of a batch of completions (those of one `io_uring_enter`): widen the window if
    /// this batch used half of it.
    pub(super) fn end_batch(&mut self) {
        let used = std::mem::take(&mut self.batch_used);
        self.peak_used = self.peak_used.max(used);
        if used.saturating_mul(2) >= self.window {
            self.grow();
        }
    }

    fn grow(&mut self) {
        if self.window < self.count {
            self.window = self.window.saturating_mul(2).min(self.count);
            self.top_up();
        }
        if self.trim_at.is_none() {
            self.trim_at = Some(Instant::now() + TRIM_INTERVAL);
        }
    }

    /// When [`BufRing::trim`] is due (`None`: nothing to trim, no need to wake for it).
    pub(super) fn trim_at(&self) -> Option<Instant> {
        self.trim_at
    }

    /// Reconsider the window and release what it does not need (see the type docs). Call when
    /// [`BufRing::trim_at`] has passed, between two waits for completions (never while a
    /// buffer is lent out).
    pub(super) fn trim(&mut self, now: Instant) {
        if self.trim_at.is_none_or(|at| now < at) {
            return;
        }
        let peak = std::mem::take(&mut self.peak_used);
        let floor = WINDOW_MIN.min(self.count);
        if u32::from(peak) * 4 < u32::from(self.window) {
            self.calm = self.calm.saturating_add(1);
            self.calm_peak = self.calm_peak.max(peak);
            self.calm_busy |= peak > QUIET_USED;
        } else {
            (self.calm, self.calm_busy, self.calm_peak) = (0, false, 0);
        }
        let needed = if self.calm_busy {
            BUSY_CALM_TRIMS
        } else {
            CALM_TRIMS
        };
        if self.calm >= needed {
            // Used less than a quarter of the window for a while: four times the largest
            // batch of that while is enough.
            let fit = (u32::from(self.calm_peak) * 4).next_power_of_two();
            self.window = (fit.min(u32::from(self.window)) as u16).max(floor);
            (self.calm, self.calm_busy, self.calm_peak) = (0, false, 0);
        }
        // Free buffers below the top `window` of the stack: the ring is refilled from the top.
        let cold = self.free.len().saturating_sub(usize::from(self.window));
        for i in 0..cold {
            let bid = self.free[i];
            self.release(bid);
        }
        // Ring buffers past the window (left from a burst) the kernel has not started filling.
        if self.in_ring > self.window {
            for bid in 0..self.count {
                let st = self.state[usize::from(bid)];
                let started = self.offsets.get(usize::from(bid)).is_some_and(|&o| o > 0);
                if st & IN_RING != 0 && !started {
                    self.release(bid);
                }
            }
        }
        let settled =
            self.window == floor && usize::from(self.resident) <= 2 * usize::from(self.window);
        self.trim_at = (!settled).then(|| now + TRIM_INTERVAL);
    }

    /// Give buffer `bid`'s pages back to the kernel (it must not be lent out, nor started by
    /// the kernel if it is in the ring).
    fn release(&mut self, bid: u16) {
        let st = &mut self.state[usize::from(bid)];
        if *st & RESIDENT == 0 {
            return;
        }
        *st &= !RESIDENT;
        self.resident -= 1;
        // The whole pages inside the buffer (the mapping is page aligned, a buffer need not be).
        let size = self.size as usize;
        let page = sys::page_size();
        let start = (usize::from(bid) * size).next_multiple_of(page);
        let end = (usize::from(bid) + 1) * size / page * page;
        if start < end {
            // SAFETY: `start..end` lies inside buffer `bid`, inside the `bufs` mapping
            // (bid < count), page aligned. Nothing reads it: the buffer is not lent out, and a
            // ring buffer the kernel has not started is only written by the kernel inside this
            // thread's `io_uring_enter` (see the type docs), which faults in zeroed pages again.
            unsafe { sys::madvise_dontneed(self.bufs.as_ptr().add(start), end - start) };
        }
    }

    /// Account for a batch that used `used` buffers (tests).
    #[cfg(test)]
    pub(super) fn note_batch(&mut self, used: u16) {
        self.peak_used = self.peak_used.max(used);
    }

    /// Make the next [`BufRing::trim`] check due now (tests).
    #[cfg(test)]
    pub(super) fn force_trim(&mut self) {
        self.trim_at = Some(Instant::now());
    }

    /// Buffers whose pages may be resident (used since they were last released).
    #[cfg(test)]
    pub(super) fn resident(&self) -> u16 {
        self.resident
    }

    /// How many buffers the ring is kept topped up with.
    #[cfg(test)]
    pub(super) fn window(&self) -> u16 {
        self.window
    }

    /// Bytes `off..off + len` of the mapping (clamped to it), which may run over several
    /// consecutive buffers: each of those bytes must be lent out (held, or carried by the
    /// completion being handled).
    pub(super) fn span(&mut self, off: usize, len: usize) -> &mut [u8] {
        let off = off.min(self.bufs_len);
        let len = len.min(self.bufs_len - off);
        // SAFETY: the range lies inside the `bufs` mapping (clamped above). The caller passes
        // only bytes the kernel handed to us with completions and does not write again: those
        // of the completion being handled and kept ones whose buffers `hold` keeps out of the
        // ring (an incremental ring only fills bytes after them). `&mut self` makes this the
        // only view of them.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.as_ptr().add(off), len) }
    }

    /// Bytes `start..start + len` of buffer `bid`, lent out by a recv completion.
    pub(super) fn get(&mut self, bid: u16, start: usize, len: usize) -> &mut [u8] {
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
        // SAFETY: both are exactly the mappings made in `new`, unmapped once, here; the ring
        // that could write into them is closed (it is dropped first, see `UringDriver`).
        unsafe {
            sys::munmap(self.entries.cast(), self.entries_len);
            sys::munmap(self.bufs, self.bufs_len);
        }
    }
}
