//! The io_uring backend ([`UringDriver`]).
//!
//! One ring per shard, created on the shard thread that drives it
//! (`SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN`): completions are only produced while that
//! thread waits in [`Driver::poll`], never in the middle of a loop turn.
//!
//! **More rings past one fixed-file table.** With direct descriptors a shard's connections
//! live in its ring's fixed-file table, which the kernel caps at `RLIMIT_NOFILE` entries. When
//! the tables a shard has are down to their slack and `direct_fds_max` allows more, the shard
//! opens another ring ([`ring`]: its own table, buffer ring and an eventfd registered with it)
//! and moves the accept there; each connection stays on the ring that accepted it (its
//! [`RingFd`](driver) names the ring), and every operation on it goes to that ring. The shard
//! is still one thread with one blocking wait: ring 0 keeps a read armed on each other ring's
//! eventfd, which the kernel signals when it queues deferred work for that ring; when the read
//! completes, the driver enters that ring once (`IORING_ENTER_GETEVENTS`, no wait) to run the
//! work and reaps its completions in the same batch. Before ring 0 waits, each other ring with
//! queued submissions is entered once to submit them. A ring is opened only when needed, so a
//! shard under one table's worth of connections runs exactly as before.
//!
//! What runs in the rings:
//! - one multishot accept on the shard's listener (on ring 0, or with direct descriptors on
//!   the ring with the most room), producing plain descriptors, or io_uring *direct*
//!   descriptors in that ring's fixed-file table when `direct_fds` is set (`direct_fds_max` is
//!   then the shard's connection cap; see [`crate::ServerBuilder::direct_fds_max`] and
//!   [`crate::ServerBuilder::direct_fds_table_max`]);
//! - one multishot recv per connection, drawing from the shard's provided-buffer ring. The
//!   received bytes are lent to the shard for one [`Completion::Recv`] callback, and the buffer
//!   goes back to the ring as soon as it returns (on Linux ≥ 6.12 the ring is incremental: small
//!   receives share a buffer, which goes back after its last slice). The exception: a message
//!   of up to one buffer that a completion ends inside may be kept ([`Flow::Keep`](crate::io::Flow::Keep)); its
//!   buffers stay out of the ring until the connection's next completion, whose bytes the
//!   kernel mostly puts right after it (the next slice, or the next ring entry, which is
//!   mostly the next buffer of the mapping): then both are presented as one slice, not copied
//!   to be joined. Otherwise, and at the latest when the poll ends, the kept bytes are
//!   presented alone (the shard copies them, as it does every split message without this). An
//!   idle connection owns no receive buffer;
//! - at most one send in flight per connection: a plain `send` when the unwritten bytes are one
//!   chunk, else a `sendmsg` over the iovecs of its [`SendQueue`]'s chunks (which do not move
//!   while the queue is in flight); every dirty connection's send is submitted by the
//!   same `io_uring_enter` that waits for the next completions, so a loop turn costs one syscall;
//! - one read on an eventfd, the cross-thread wake-up ([`EventFdWaker`]), and on ring 0 one
//!   read on each other ring's eventfd.
//!
//! Every submission carries an [`OpId`] (kind, token, generation) in its `user_data`. A token is
//! released (and its socket closed) only once none of its operations is in flight.
//!
//! Memory: per ring, `recv_buffers × recv_buffer_bytes` of receive buffers mapped (shared by
//! the ring's connections), of which only a window that follows the load is resident (8
//! buffers, 512 KiB at the default size, when the traffic is light; see `BufRing`), 16 bytes
//! per buffer-ring entry, 64 bytes per SQ
//! entry and 4 × 16 bytes per CQ entry; per connection, one [`ConnIo`] slot (24 bytes) and,
//! only while a `sendmsg` (more than one chunk) is in flight, a pooled [`SendOp`] (msghdr + up
//! to [`IOV_MAX`](crate::io::IOV_MAX) iovecs; a plain send of one chunk takes none). In
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
mod ring;
mod submit;
#[cfg(test)]
mod tests;
mod waker;

pub(crate) use direct::DirectFd;
pub(crate) use driver::UringDriver;
pub(crate) use probe::probe;
