//! The io_uring backend ([`UringDriver`]).
//!
//! One ring per shard, created on the shard thread that drives it
//! (`SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN`): completions are only produced while that
//! thread waits in [`Driver::poll`], never in the middle of a loop turn.
//!
//! What runs in the ring:
//! - one multishot accept on the shard's listener, producing plain descriptors, or io_uring
//!   *direct* descriptors in the ring's fixed-file table when `direct_fds` is set
//!   (`direct_fds_max` is then the shard's connection cap; see
//!   [`crate::ServerBuilder::direct_fds_max`] for how descriptor limits bound it);
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
//! Memory: per shard, `recv_buffers × recv_buffer_bytes` of receive buffers mapped (shared by
//! all connections), of which only a window that follows the load is resident (8 buffers,
//! 512 KiB at the default size, when the traffic is light; see `BufRing`), 16 bytes per
//! buffer-ring entry, 64 bytes per SQ
//! entry and 4 × 16 bytes per CQ entry; per connection, one [`ConnIo`] slot (24 bytes) and,
//! only while a send is in flight, a pooled [`SendOp`] (msghdr + up to [`IOV_MAX`](crate::io::IOV_MAX) iovecs). In
//! the kernel an idle connection holds its armed multishot recv (one request, ~256 bytes) where
//! epoll holds an epitem (~128 bytes).
//!
//! Teardown: [`Drop`] cancels every operation and waits (bounded) for their completions before
//! the buffers, iovecs and — since the driver is dropped before the shard's connections — the
//! send-queue chunks they point to are freed.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod buf_ring;
mod complete;
mod direct;
mod driver;
mod op;
mod probe;
mod submit;
#[cfg(test)]
mod tests;
mod waker;

pub(crate) use direct::DirectFd;
pub(crate) use driver::UringDriver;
pub(crate) use probe::probe;
