//! Submissions: arming accept, recv and the wake-up read, closing, cancelling, teardown.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types};

use super::buf_ring::BGID;
use super::driver::{ConnIo, RecvArm, RingFd, SendOp, UringDriver, RINGS_MAX};
use super::op::{OpId, OpKind};
use super::ring::Ring;
use crate::io::Token;
use crate::io::ACCEPT_RETRY;
use crate::send_queue::SendQueue;

impl UringDriver {
    /// Forget `token` and close its socket (nothing of it may be in flight).
    pub(super) fn release(&mut self, token: Token) {
        if self.conn(token).is_some_and(ConnIo::kept) {
            self.drop_kept(token);
        }
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

    pub(super) fn recycle_op(&mut self, op: Box<SendOp>) {
        if self.spare.len() < 64 {
            self.spare.push(op);
        }
    }

    pub(super) fn close_sock(&mut self, sock: RingFd) -> io::Result<()> {
        match sock {
            RingFd::Fd(fd) => {
                // SAFETY: the driver owns `fd` and closes it exactly once, after every
                // operation on it completed.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                Ok(())
            }
            RingFd::Fixed { ring, index } => {
                let sqe = opcode::Close::new(types::Fixed(index))
                    .build()
                    .user_data(OpId::new(OpKind::CloseDirect, 0, 0).encode());
                // SAFETY: a close points at no user memory.
                unsafe { self.push(usize::from(ring), &sqe) }
            }
        }
    }

    pub(super) fn close_orphans(&mut self) -> io::Result<()> {
        let orphans = std::mem::take(&mut *self.orphans.borrow_mut());
        for (ring, index) in orphans {
            self.close_sock(RingFd::Fixed { ring, index })?;
        }
        Ok(())
    }

    /// [`Driver::send`](crate::io::Driver::send) of a queue whose unwritten bytes all lie in
    /// one chunk (`len` bytes at `buf`, the queue's): a plain send pointing at them, with no
    /// [`SendOp`]. The usual echo reply, and the idle ping: a ping burst to thousands of idle
    /// connections allocates nothing per send in flight. A length past u32 is a short send,
    /// resumed later.
    pub(super) fn send_one(
        &mut self,
        token: Token,
        buf: *const u8,
        len: usize,
        queue: &mut SendQueue,
    ) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let Some(c) = self.conn_mut(token) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let ud = OpId {
            gen: c.gen,
            ..OpId::new(OpKind::Send, token.0, 0)
        }
        .encode();
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let flags = libc::MSG_NOSIGNAL;
        let sqe = match c.sock {
            RingFd::Fd(fd) => opcode::Send::new(types::Fd(fd), buf, len)
                .flags(flags)
                .build(),
            RingFd::Fixed { index, .. } => opcode::Send::new(types::Fixed(index), buf, len)
                .flags(flags)
                .build(),
        }
        .user_data(ud);
        let r = c.sock.ring();
        c.send_in_flight = true;
        queue.set_in_flight(true);
        // SAFETY: the sqe points at the queue's one chunk (an owned buffer or a shared frame the
        // queue holds a reference to), whose heap memory does not move or get freed while the
        // queue is in flight (SendQueue contract: no append to an in-flight chunk, and the shard
        // keeps the queue until `Sent` or `Released`).
        let pushed = unsafe { self.push(r, &sqe) };
        if pushed.is_err() {
            // Never reached the kernel: nothing is in flight.
            queue.set_in_flight(false);
            if let Some(c) = self.conn_mut(token) {
                c.send_in_flight = false;
            }
        }
        pushed
    }

    pub(super) fn conn(&self, token: Token) -> Option<&ConnIo> {
        self.conns.get(token.0).and_then(Option::as_ref)
    }

    pub(super) fn conn_mut(&mut self, token: Token) -> Option<&mut ConnIo> {
        self.conns.get_mut(token.0).and_then(Option::as_mut)
    }

    pub(super) fn arm_wake(&mut self) -> io::Result<()> {
        if self.wake_armed {
            return Ok(());
        }
        let buf: *mut u64 = &mut *self.wake_buf;
        let sqe = opcode::Read::new(types::Fd(self.waker.fd.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(OpId::new(OpKind::Wake, 0, 0).encode());
        // SAFETY: the read targets `wake_buf`, a heap u64 that lives as long as the ring (and
        // is leaked in `Drop` if the read might still be in flight).
        unsafe { self.push(0, &sqe) }?;
        self.wake_armed = true;
        Ok(())
    }

    /// Keep ring 0's read armed on the eventfd of ring `r` (not 0).
    pub(super) fn arm_notify(&mut self, r: usize) -> io::Result<()> {
        let Some(n) = self.rings.get_mut(r).and_then(|x| x.notify.as_mut()) else {
            return Ok(());
        };
        if n.armed {
            return Ok(());
        }
        let buf: *mut u64 = &mut *n.buf;
        let sqe = opcode::Read::new(types::Fd(n.fd.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(OpId::new(OpKind::Notify, r, 0).encode());
        // SAFETY: the read targets the ring's `Notify::buf`, a heap u64 that lives as long as
        // the rings (and is leaked in `Drop` if the read might still be in flight).
        unsafe { self.push(0, &sqe) }?;
        if let Some(n) = self.rings.get_mut(r).and_then(|x| x.notify.as_mut()) {
            n.armed = true;
        }
        Ok(())
    }

    /// Arm the accept of every listener that has none armed.
    pub(super) fn arm_accept(&mut self) -> io::Result<()> {
        self.accept_retry_at = None;
        for i in 0..self.listeners.len() {
            self.arm_accept_on(i)?;
        }
        Ok(())
    }

    fn arm_accept_on(&mut self, index: usize) -> io::Result<()> {
        let direct = self.cfg.direct_fds;
        if self.direct_full() {
            // Full: armed again when a direct descriptor is closed. Meanwhile connections
            // wait in the listen backlog.
            return Ok(());
        }
        match self.listeners.get(index) {
            Some(l) if !l.armed => {}
            _ => return Ok(()),
        }
        let r = if direct { self.accept_target()? } else { 0 };
        if self.room_on(r) == 0 {
            // No ring has a free entry (and none may be opened): an accept now would take a
            // connection only for the kernel to close it (`ENFILE`). Armed again when a direct
            // descriptor is closed; meanwhile connections wait in the listen backlog.
            return Ok(());
        }
        let Some(listener) = self.listeners.get(index) else {
            return Ok(());
        };
        // Direct descriptors have no close-on-exec flag (the kernel refuses SOCK_CLOEXEC).
        let flags = if direct {
            libc::SOCK_NONBLOCK
        } else {
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        };
        let fd = types::Fd(listener.sock.as_raw_fd());
        let multishot = self.room_on(r) > self.slack;
        let sqe = if multishot {
            opcode::AcceptMulti::new(fd)
                .allocate_file_index(direct)
                .flags(flags)
                .build()
        } else {
            // Near a table's end or the cap a multishot accept could take more pending
            // connections in one go than there are free entries (see `accept_burst_max`); one
            // at a time keeps both exact.
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .file_index(Some(types::DestinationSlot::auto_target()))
                .flags(flags)
                .build()
        }
        .user_data(OpId::new(OpKind::Accept, index, 0).encode());
        // SAFETY: an accept without address output points at no user memory.
        unsafe { self.push(r, &sqe) }?;
        if let Some(l) = self.listeners.get_mut(index) {
            l.armed = true;
            l.ring = r;
            l.multishot = multishot;
        }
        if direct && !multishot {
            if let Some(ring) = self.rings.get_mut(r) {
                ring.accepting += 1;
            }
        }
        Ok(())
    }

    /// Is any listener's accept not armed (after an error, a cancel, or at the
    /// direct-descriptor cap)?
    pub(super) fn accept_idle(&self) -> bool {
        self.listeners.iter().any(|l| !l.armed)
    }

    /// With direct descriptors: the ring to accept on next. The one with the most room; a new
    /// ring (with a table of its own) when every ring is down to its slack, the cap leaves more
    /// connections to come than that ring has room for, [`RINGS_MAX`] allows, and the new
    /// table helps: it can run a multishot accept (it is larger than the slack), or no ring
    /// has any room left. (Tables no larger than the slack are filled one accept at a time,
    /// each to its last entry.)
    pub(super) fn accept_target(&mut self) -> io::Result<usize> {
        let best = (0..self.rings.len())
            .max_by_key(|&r| (self.rings[r].room(), std::cmp::Reverse(r)))
            .unwrap_or(0);
        let room = self.rings[best].room();
        let room_left = self.cfg.direct_fds_max.saturating_sub(self.direct_open);
        let fresh_helps = self.table > self.slack || room == 0;
        if room > self.slack || room_left <= room || !fresh_helps || self.rings.len() >= RINGS_MAX {
            return Ok(best);
        }
        let c = &self.cfg;
        let ring = Ring::new(c.sq_entries, (c.buf_count, c.buf_size), self.table, true)?;
        self.rings.push(ring);
        let r = self.rings.len() - 1;
        self.arm_notify(r)?;
        Ok(r)
    }

    /// [`UringDriver::arm_accept`] from the loop: a failure is retried after `ACCEPT_RETRY`
    /// instead of failing the shard.
    pub(super) fn arm_accept_or_retry(&mut self) {
        if self.arm_accept().is_err() {
            self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
        }
    }

    /// With direct descriptors: is the connection cap (`direct_fds_max`) reached, or is every
    /// table full with no ring left to open?
    pub(super) fn direct_full(&self) -> bool {
        self.cfg.direct_fds
            && (self.direct_open >= self.cfg.direct_fds_max
                || (self.rings.len() >= RINGS_MAX && self.rings.iter().all(|r| r.room() == 0)))
    }

    /// With direct descriptors: connections ring `r` may still accept (unbounded otherwise):
    /// its table's room, within what is left of the cap.
    pub(super) fn room_on(&self, r: usize) -> u32 {
        if self.cfg.direct_fds {
            let left = self.cfg.direct_fds_max.saturating_sub(self.direct_open);
            self.rings.get(r).map_or(0, Ring::room).min(left)
        } else {
            u32::MAX
        }
    }

    /// Cancel the multishot accepts (near the direct-descriptor cap: they are re-armed one
    /// at a time).
    pub(super) fn cancel_accept(&mut self) {
        for i in 0..self.listeners.len() {
            let Some(l) = self.listeners.get(i).filter(|l| l.armed) else {
                continue;
            };
            let ring = l.ring;
            let sqe = opcode::AsyncCancel::new(OpId::new(OpKind::Accept, i, 0).encode())
                .build()
                .user_data(OpId::new(OpKind::Ignore, 0, 0).encode());
            // SAFETY: a cancel points at no user memory.
            let _ = unsafe { self.push(ring, &sqe) };
        }
    }

    pub(super) fn arm_recv(&mut self, token: Token) -> io::Result<()> {
        let Some(c) = self.conn_mut(token) else {
            return Ok(());
        };
        if c.recv != RecvArm::Off || c.closing {
            return Ok(());
        }
        let ud = OpId::new(OpKind::Recv, token.0, c.gen).encode();
        let r = c.sock.ring();
        let sqe = match c.sock {
            RingFd::Fd(fd) => opcode::RecvMulti::new(types::Fd(fd), BGID).build(),
            RingFd::Fixed { index, .. } => {
                opcode::RecvMulti::new(types::Fixed(index), BGID).build()
            }
        };
        c.recv = RecvArm::Armed;
        // SAFETY: the recv writes only into provided buffers of group BGID of its own ring,
        // which that ring's buffer ring keeps mapped as long as the ring exists (see `Drop`).
        let pushed = unsafe { self.push(r, &sqe.user_data(ud)) };
        if pushed.is_err() {
            // Never reached the kernel; the token must still be releasable.
            if let Some(c) = self.conn_mut(token) {
                c.recv = RecvArm::Off;
            }
        }
        pushed
    }

    /// The shard paused receiving on `token` ([`crate::io::Flow::PauseRecv`]): cancel its
    /// multishot recv (completions already produced still arrive) or keep it from being armed.
    pub(super) fn pause_recv(&mut self, token: Token) {
        let Some(c) = self.conn_mut(token) else {
            return;
        };
        let r = c.sock.ring();
        match c.recv {
            RecvArm::Armed => {
                c.recv = RecvArm::Cancelling;
                let ud = OpId::new(OpKind::Recv, token.0, c.gen).encode();
                let sqe = opcode::AsyncCancel::new(ud)
                    .build()
                    .user_data(OpId::new(OpKind::Ignore, 0, 0).encode());
                // SAFETY: a cancel points at no user memory. If it cannot even be queued the
                // recv goes on: the shard holds what arrives, as for completions in flight.
                let _ = unsafe { self.push(r, &sqe) };
            }
            RecvArm::Off => c.recv = RecvArm::Paused,
            RecvArm::Paused | RecvArm::Cancelling => {}
        }
    }

    /// Queue one submission on ring `r`; when its SQ is full, submit what is queued first.
    ///
    /// # Safety
    ///
    /// Every buffer the entry points to must stay valid until its final completion is reaped.
    pub(super) unsafe fn push(&mut self, r: usize, sqe: &squeue::Entry) -> io::Result<()> {
        let Some(ring) = self.rings.get_mut(r) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        loop {
            // SAFETY: forwarded from this function's contract.
            if unsafe { ring.ring.submission().push(sqe) }.is_ok() {
                self.in_flight += 1;
                self.turn_counts.0 = self.turn_counts.0.wrapping_add(1);
                ring.queued = true;
                return Ok(());
            }
            match ring.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // CQ overflowing: move completions aside (handled by the next batch) so
                    // the kernel can flush its overflow list, then submit again.
                    let before = self.backlog.len();
                    self.backlog
                        .extend(ring.ring.completion().map(|cqe| (r, cqe)));
                    if self.backlog.len() == before {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Enter ring `r` without waiting (no minimum of completions, no timer): submit what is
    /// queued on it and run the work the kernel deferred to this thread (`DEFER_TASKRUN`: its
    /// completions are posted only then), as much as one enter runs.
    pub(super) fn enter_nowait(&mut self, r: usize) -> io::Result<()> {
        let Some(ring) = self.rings.get_mut(r) else {
            return Ok(());
        };
        ring.queued = false;
        let to_submit = u32::try_from(ring.ring.submission().len()).unwrap_or(u32::MAX);
        // SAFETY: a plain io_uring_enter with no argument; the submissions it hands over were
        // pushed under `push`'s contract.
        let r = unsafe {
            ring.ring.submitter().enter::<libc::sigset_t>(
                to_submit,
                0,
                io_uring::EnterFlags::GETEVENTS.bits(),
                None,
            )
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Before ring 0 waits: hand every other ring's queued submissions to the kernel (one
    /// enter per ring that has some).
    pub(super) fn submit_others(&mut self) -> io::Result<()> {
        for r in 1..self.rings.len() {
            if self.rings[r].queued {
                self.enter_nowait(r)?;
            }
        }
        Ok(())
    }

    /// Cancel every operation and wait, at most `limit`, until none is in flight. Returns
    /// whether that point was reached. Afterwards the kernel no longer touches send iovecs,
    /// send-queue chunks, the eventfd targets or the receive buffers.
    pub(super) fn cancel_all(&mut self, limit: Duration) -> bool {
        for r in 0..self.rings.len() {
            let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(OpId::new(OpKind::Ignore, 0, 0).encode());
            // SAFETY: a cancel points at no user memory.
            let _ = unsafe { self.push(r, &sqe) };
        }
        let finished = self
            .backlog
            .drain(..)
            .filter(|(_, c)| !cqueue::more(c.flags()))
            .count();
        self.in_flight = self.in_flight.saturating_sub(finished);
        let deadline = Instant::now() + limit;
        while self.in_flight > 0 && Instant::now() < deadline {
            for r in 1..self.rings.len() {
                let _ = self.enter_nowait(r);
            }
            let _ = self.enter(Some(Duration::from_millis(10)));
            let finished: usize = self
                .rings
                .iter_mut()
                .map(|r| {
                    r.ring
                        .completion()
                        .filter(|c| !cqueue::more(c.flags()))
                        .count()
                })
                .sum();
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
            if let RingFd::Fd(fd) = c.sock {
                // SAFETY: the driver owns every registered plain descriptor; closed once here.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            if leak {
                // The kernel may still read these iovecs: leak rather than free under it.
                std::mem::forget(c.send);
            }
        }
        if leak {
            // Same for the receive buffers and the eventfd targets.
            for r in &mut self.rings {
                r.bufs.leak = true;
                if let Some(n) = &mut r.notify {
                    std::mem::forget(std::mem::take(&mut n.buf));
                }
            }
            std::mem::forget(std::mem::take(&mut self.wake_buf));
        }
    }
}
