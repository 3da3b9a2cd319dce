//! [`BufPool`]: large message buffers kept between messages and connections, per shard.
//!
//! A message that does not arrive whole in one receive buffer (split across reads, or
//! fragmented) is assembled in a buffer of the connection's own. Small ones come from the
//! allocator; from [`BufPool::LARGE`] bytes on they come from this pool, sized for what the
//! frame header says is still to come (at most four times what is held: a header is not trusted with
//! memory before its bytes arrive), and go back to it when the message is delivered or the
//! connection dies. The pool keeps at most [`BufPool::bytes_max`] bytes; beyond that, and when
//! nothing was taken from it for a while ([`BufPool::drain_if_idle`]), buffers go back to the
//! allocator and are counted ([`BufPool::take_released`]) so that the shard knows when to ask the
//! allocator to return memory to the system.
//!
//! The pool lives in the [`super::Endpoint`]; a send-side pool for large frames can share it.

/// A pool of large buffers, by power-of-two capacity (see the module docs).
#[derive(Debug, Default)]
pub struct BufPool {
    /// Kept buffers: empty, capacity a power of two `>= LARGE`.
    free: Vec<Vec<u8>>,
    /// Capacity of the kept buffers.
    bytes: usize,
    bytes_max: usize,
    /// Capacity handed back to the allocator since the last [`BufPool::take_released`].
    released: usize,
    /// Something was taken since the last [`BufPool::drain_if_idle`].
    used: bool,
}

impl BufPool {
    /// Buffers from this size on are pooled (and sized by powers of two).
    pub const LARGE: usize = 64 << 10;

    /// A pool that keeps at most `bytes_max` bytes of buffers (0: none; every buffer is then
    /// allocated and freed).
    pub fn new(bytes_max: usize) -> Self {
        Self {
            bytes_max,
            ..Self::default()
        }
    }

    /// Most bytes of buffers kept.
    pub fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    /// Bytes of buffers kept now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// An empty buffer of at least `cap_min` bytes (rounded up to a power of two, at least
    /// [`BufPool::LARGE`]): a kept one of that size if there is one, else a new one.
    pub fn take(&mut self, cap_min: usize) -> Vec<u8> {
        self.used = true;
        let cap = cap_min.max(Self::LARGE).checked_next_power_of_two();
        let Some(cap) = cap else {
            return Vec::with_capacity(cap_min);
        };
        if let Some(i) = self.free.iter().rposition(|v| v.capacity() == cap) {
            let v = self.free.swap_remove(i);
            self.bytes -= v.capacity();
            return v;
        }
        Vec::with_capacity(cap)
    }

    /// Take back a buffer that is no longer needed: kept if it is a pooled size and there is
    /// room, else freed (and counted as released).
    pub fn give(&mut self, mut v: Vec<u8>) {
        let cap = v.capacity();
        if cap < Self::LARGE {
            return;
        }
        if cap.is_power_of_two() && self.bytes + cap <= self.bytes_max {
            v.clear();
            self.bytes += cap;
            self.free.push(v);
        } else {
            self.released += cap;
        }
    }

    /// Free every kept buffer if none was taken since the last call (the traffic that needed
    /// them is over). Returns the bytes freed (also counted as released).
    pub fn drain_if_idle(&mut self) -> usize {
        if self.take_used() {
            return 0;
        }
        self.drain()
    }

    /// Was a buffer taken since the last call (or the last [`BufPool::drain_if_idle`])?
    pub fn take_used(&mut self) -> bool {
        std::mem::take(&mut self.used)
    }

    /// Free every kept buffer. Returns the bytes freed (also counted as released).
    pub fn drain(&mut self) -> usize {
        let n = self.bytes;
        self.free = Vec::new();
        self.bytes = 0;
        self.released += n;
        n
    }

    /// Bytes of buffers handed back to the allocator since the last call.
    pub fn take_released(&mut self) -> usize {
        std::mem::take(&mut self.released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_for_the_same_size_class() {
        let mut p = BufPool::new(1 << 20);
        let mut v = p.take(100_000);
        assert_eq!(v.capacity(), 128 << 10);
        v.extend_from_slice(&[1; 1000]);
        let ptr = v.as_ptr();
        p.give(v);
        assert_eq!(p.bytes(), 128 << 10);
        let w = p.take(70_000);
        assert_eq!((w.as_ptr(), w.len()), (ptr, 0), "reused, emptied");
        assert_eq!(p.bytes(), 0);
        assert_eq!(p.take(10).capacity(), BufPool::LARGE);
    }

    #[test]
    fn the_pool_keeps_at_most_bytes_max_and_counts_what_it_frees() {
        let mut p = BufPool::new(256 << 10);
        let bufs: Vec<Vec<u8>> = (0..5).map(|_| p.take(64 << 10)).collect();
        for v in bufs {
            p.give(v);
        }
        assert_eq!(p.bytes(), 256 << 10, "four of five kept");
        assert_eq!(p.take_released(), 64 << 10);
        assert_eq!(p.take_released(), 0);
        // Small and odd-sized buffers are never kept.
        p.give(Vec::with_capacity(1000));
        p.give(Vec::with_capacity(100_000));
        assert_eq!(p.bytes(), 256 << 10);
        assert_eq!(p.take_released(), 100_000);
        let none = BufPool::new(0);
        assert_eq!(none.bytes_max(), 0);
    }

    #[test]
    fn an_idle_pool_gives_everything_back() {
        let mut p = BufPool::new(1 << 20);
        let v = p.take(64 << 10);
        p.give(v);
        assert_eq!(p.drain_if_idle(), 0, "used since the last look");
        assert_eq!(p.drain_if_idle(), 64 << 10, "idle: drained");
        assert_eq!(p.bytes(), 0);
        assert_eq!(p.take_released(), 64 << 10);
    }
}
