//! The provided-buffer ring the shard's multishot recvs draw from (mmap'd memory).

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use crate::io::sys;
use io_uring::{types, IoUring};

/// Buffer group id of the shard's provided-buffer ring (one group per ring).
pub(super) const BGID: u16 = 0;

/// `IOU_PBUF_RING_INC` (Linux 6.12): the kernel consumes a provided buffer incrementally.
pub(super) const PBUF_RING_INC: u16 = 2;

/// A provided-buffer ring: `count` buffers of `size` bytes, registered with the ring as buffer
/// group [`BGID`]. A buffer is either in the ring (the kernel may fill it) or lent out by one
/// recv completion until [`BufRing::recycle`] puts it back.
///
/// Where the kernel supports it the ring is *incremental*: a recv takes only the bytes it
/// fills from the head buffer, so many small messages share one buffer instead of taking one
/// each; completions then carry consecutive slices of a buffer (`F_BUF_MORE` while the
/// kernel keeps using the rest), and the buffer goes back to the ring after its last slice.
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
}

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
    pub(super) fn push(&mut self, bid: u16) {
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
    pub(super) fn publish(&mut self) {
        // SAFETY: the tail field lives in entry 0 (its `resv`), inside the mapping; the kernel
        // only reads it. `AtomicU16` has the same layout as `u16`, and the mapping is aligned.
        let tail = unsafe {
            AtomicU16::from_ptr(types::BufRingEntry::tail(self.entries.as_ptr()) as *mut u16)
        };
        tail.store(self.tail, Ordering::Release);
    }

    /// Give buffer `bid` back to the kernel.
    pub(super) fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    /// Account for a completion that filled `len` bytes of buffer `bid` (`buf_more`: its
    /// `F_BUF_MORE` flag). Returns where those bytes start in the buffer and whether the kernel
    /// is done with the buffer (then it goes back with [`BufRing::recycle`] once handled).
    pub(super) fn consume(&mut self, bid: u16, len: usize, buf_more: bool) -> (usize, bool) {
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
