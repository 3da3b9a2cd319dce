//! The builder's receive-side settings that need more words than fit beside the others.

use super::ServerBuilder;

impl ServerBuilder {
    /// epoll: the largest message (header included) a shard's receive buffer grows to hold so
    /// that it is handed to the handler where it landed (default 2 MiB; 0, or anything up to
    /// `recv_buffer_bytes`, leaves the buffer at that size).
    ///
    /// A read that ends inside such a message (a message of one frame) is followed at once by
    /// reads into the same buffer after it. If the socket has the rest, the message is handed
    /// out whole, without being copied into a message buffer of the connection (and an echo's
    /// direct send goes from there); if not, what came is copied there as before, at the cost
    /// of one read that finds nothing.
    ///
    /// Cost: one buffer of this size per shard (not per connection), resident only as far as
    /// the largest message read whole into it reached (a read asks for no more than the
    /// message needs). One connection's reads per loop turn stay bounded: 16 ×
    /// `recv_buffer_bytes` as before, plus the rest of one such message. io_uring ignores it:
    /// there a message of up to one ring buffer (`recv_buffer_bytes`, header included) that
    /// a receive ends inside is handed out in place when the next receive of its connection
    /// in the same loop turn lands right after it (the next buffer of the ring's mapping),
    /// and is assembled as before otherwise; no memory beyond the ring's.
    pub fn recv_in_place_bytes_max(mut self, n: usize) -> Self {
        self.config.recv_in_place_bytes_max = n;
        self
    }
}
