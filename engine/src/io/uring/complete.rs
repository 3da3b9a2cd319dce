//! Reaping completions and turning them into [`Completion`]s for the shard.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};

use super::direct::DirectFd;
use super::driver::{Kept, RecvArm, RingFd, UringDriver};
use super::op::{OpId, OpKind};
use crate::io::ACCEPT_RETRY;
use crate::io::{Completion, Flow, Socket, Token};

/// A batch this large suggests the kernel left deferred work for the next enter.
const DEFERRED_BATCH: usize = 16;
/// Most extra enters ([`UringDriver::enter_nowait`]) in one poll: with the kernel's ~20 items
/// per enter, about 1,300 completions per poll on top of the waiting enter's.
const DEFERRED_RUNS_MAX: u32 = 64;

impl UringDriver {
    /// Submit everything queued and wait (one `io_uring_enter`) for a completion or `timeout`.
    pub(super) fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let r = match timeout {
            None => self.rings[0].ring.submitter().submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.rings[0].ring.submitter().submit_with_args(1, &args)
            }
        };
        self.rings[0].queued = false;
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

    /// Handle every completion reaped so far (ring 0's, then those of the rings whose eventfd
    /// fired, entered once each to run their deferred work), then the tokens to revisit.
    pub(super) fn complete<F: FnMut(Completion<'_>) -> Flow>(
        &mut self,
        on: &mut F,
    ) -> io::Result<()> {
        let mut cqes = std::mem::take(&mut self.cqes);
        let mut backlog = Vec::new();
        // Bounds the extra enters of one poll, so that a steady flood still lets the shard's
        // timers and mailbox run between polls.
        let mut deferred_runs = 0;
        loop {
            let mut any = false;
            std::mem::swap(&mut backlog, &mut self.backlog);
            for (r, cqe) in backlog.drain(..) {
                any = true;
                self.on_cqe(r, &cqe, on)?;
            }
            for r in 0..self.rings.len() {
                if r > 0 {
                    match &mut self.rings[r].notify {
                        Some(n) if n.fired => n.fired = false,
                        _ => continue,
                    }
                    self.enter_nowait(r)?;
                }
                cqes.clear();
                cqes.extend(self.rings[r].ring.completion());
                any |= !cqes.is_empty();
                self.turn_counts.1 = self.turn_counts.1.wrapping_add(cqes.len() as u32);
                for cqe in &cqes {
                    self.on_cqe(r, cqe, on)?;
                }
                // What one enter used: its buffers are back in the ring before the next.
                self.rings[r].bufs.end_batch();
                let more_work = self.rings[r].ring.submission().taskrun();
                if (more_work || cqes.len() >= DEFERRED_BATCH) && deferred_runs < DEFERRED_RUNS_MAX
                {
                    deferred_runs += 1;
                    // The kernel runs about 20 deferred completions per enter (Linux ≥ 6.10):
                    // a burst (16 000 close replies at a graceful shutdown) would take hundreds
                    // of loop turns, past the close timeout. Run more of it now, without waiting: an enter that waits for more
                    // completions than are ready (even with a zero timeout) stays in the
                    // kernel's wait loop, running each piece of work as it arrives, until its
                    // timer fires; under a steady echo load the shard spent about half its
                    // time there (100 × 20 B: 6.3 µs of CPU per message instead of 3.2).
                    self.enter_nowait(r)?;
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        self.cqes = cqes;
        self.flush_kept(on);
        // Every completion is reaped and nothing was submitted since: no buffer is lent out and
        // none is being filled (with DEFER_TASKRUN a ring fills buffers only while this thread
        // enters it), the one point where unneeded buffers may be released, on every ring.
        // (`end_batch` here accounts for held-back completions of `backlog` handled last.)
        let now = Instant::now();
        for ring in &mut self.rings {
            ring.bufs.end_batch();
            if ring.bufs.trim_at().is_some_and(|at| now >= at) {
                ring.bufs.trim(now);
            }
        }
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
            } else if c.recv == RecvArm::Off && !c.closed_reported {
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

    /// Handle one completion of ring `r`.
    pub(super) fn on_cqe<F: FnMut(Completion<'_>) -> Flow>(
        &mut self,
        r: usize,
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
                if let Some(ring) = self.rings.get_mut(r) {
                    ring.open = ring.open.saturating_sub(1);
                }
                if self.accept_idle() && self.accept_retry_at.is_none() {
                    self.arm_accept_or_retry();
                }
            }
            OpKind::PeerOf => self.on_peer_of(r, op.slot, op.gen as usize, res, on)?,
            OpKind::Wake => {
                self.wake_armed = false;
                self.arm_wake()?;
                on(Completion::Wake);
            }
            OpKind::Notify => {
                let ring = op.slot as usize;
                if let Some(n) = self.rings.get_mut(ring).and_then(|x| x.notify.as_mut()) {
                    n.armed = false;
                    n.fired = true;
                }
                self.arm_notify(ring)?;
            }
            OpKind::Accept => self.on_accept(r, op.slot as usize, res, more, on)?,
            OpKind::Recv => {
                let token = Token(op.slot as usize);
                let len = usize::try_from(res).unwrap_or(0);
                let buf_more = cqueue::buffer_more(cqe.flags());
                let Some(ring) = self.rings.get_mut(r) else {
                    return Ok(());
                };
                let bufs = &mut ring.bufs;
                let taken = cqueue::buffer_select(cqe.flags())
                    .map(|bid| (bid, bufs.consume(bid, len, buf_more)));
                let conn = self.conns.get_mut(token.0).and_then(Option::as_mut);
                let Some(c) = conn.filter(|c| c.owns(op)) else {
                    if let Some((bid, (_, true))) = taken {
                        bufs.recycle(bid);
                    }
                    return Ok(());
                };
                if !more {
                    c.recv = match c.recv {
                        RecvArm::Cancelling | RecvArm::Paused => RecvArm::Paused,
                        RecvArm::Armed | RecvArm::Off => RecvArm::Off,
                    };
                }
                let live = !c.closing && !c.closed_reported;
                // The bytes the shard kept from this connection's last `Recv`, if any.
                let kept = if c.kept() {
                    c.set_kept(false);
                    let i = self.kept.iter().position(|k| k.token == token);
                    i.map(|i| self.kept.swap_remove(i))
                } else {
                    None
                };
                let direct = c.sock.plain();
                let mut pause = false;
                // Not followed by this completion's bytes in the mapping (or nothing came):
                // presented alone, and the shard holds them.
                let (mut from, mut again) = (usize::MAX, 0);
                if let Some(k) = kept {
                    let next = taken
                        .filter(|_| res > 0)
                        .map(|(bid, (start, _))| bufs.offset(bid, start));
                    if live && next == Some(k.off + k.len) {
                        (from, again) = (k.off, k.len);
                    } else {
                        if live {
                            let flow = on(Completion::Recv {
                                token,
                                buf: bufs.span(k.off, k.len),
                                direct,
                                keep_max: 0,
                            });
                            pause = flow == Flow::PauseRecv;
                        }
                        bufs.unhold(k.off, k.len);
                    }
                }
                if res > 0 {
                    if let Some((bid, (start, finished))) = taken {
                        if live {
                            let off = bufs.offset(bid, start);
                            if again == 0 {
                                from = off;
                            }
                            // A message of up to one buffer (header included) that this
                            // completion ends inside may be kept: it is presented again, in
                            // place, with the bytes that follow it when they land right after
                            // it (the kernel fills consecutive ring entries, which are mostly
                            // consecutive buffers).
                            let keep_max = bufs.size as usize;
                            let total = again + len;
                            let flow = on(Completion::Recv {
                                token,
                                buf: bufs.span(from, total),
                                direct,
                                keep_max,
                            });
                            match flow {
                                Flow::Keep { kept: n, .. }
                                    if n > 0 && n < keep_max && n <= total =>
                                {
                                    let k = Kept {
                                        token,
                                        off: from + total - n,
                                        len: n,
                                    };
                                    bufs.hold(k.off, k.len);
                                    c.set_kept(true);
                                    self.kept.push(k);
                                }
                                Flow::Keep { kept: n, .. } => {
                                    debug_assert!(
                                        false,
                                        "kept {n} of {total} (at most {keep_max})"
                                    );
                                }
                                Flow::PauseRecv => pause = true,
                                Flow::Continue => {}
                            }
                            if again > 0 {
                                bufs.unhold(from, again);
                            }
                        }
                        if finished {
                            bufs.recycle(bid);
                        }
                    }
                    if pause {
                        self.pause_recv(token);
                    }
                    if !more {
                        self.revisit.push(token);
                    }
                    return Ok(());
                }
                if let Some((bid, (_, true))) = taken {
                    bufs.recycle(bid);
                }
                if res == -libc::ENOBUFS {
                    bufs.ran_dry();
                }
                if pause {
                    self.pause_recv(token);
                }
                let Some(c) = self.conn_mut(token) else {
                    return Ok(());
                };
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
                let Some(c) = self.conn_mut(token).filter(|c| c.owns(op)) else {
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

    /// The poll ends: kept bytes that nothing followed are presented alone (the shard holds
    /// them) and their buffers go back to the ring.
    fn flush_kept<F: FnMut(Completion<'_>) -> Flow>(&mut self, on: &mut F) {
        while let Some(k) = self.kept.pop() {
            let Some(c) = self.conns.get_mut(k.token.0).and_then(Option::as_mut) else {
                continue;
            };
            c.set_kept(false);
            let live = !c.closing && !c.closed_reported;
            let direct = c.sock.plain();
            let Some(ring) = self.rings.get_mut(c.sock.ring()) else {
                continue;
            };
            let mut flow = Flow::Continue;
            if live {
                flow = on(Completion::Recv {
                    token: k.token,
                    buf: ring.bufs.span(k.off, k.len),
                    direct,
                    keep_max: 0,
                });
            }
            ring.bufs.unhold(k.off, k.len);
            if flow == Flow::PauseRecv {
                self.pause_recv(k.token);
            }
        }
    }

    /// Connection `token` goes away with kept bytes: give their buffers back.
    pub(super) fn drop_kept(&mut self, token: Token) {
        let Some(i) = self.kept.iter().position(|k| k.token == token) else {
            return;
        };
        let k = self.kept.swap_remove(i);
        let r = self.conn(token).map_or(0, |c| c.sock.ring());
        if let Some(ring) = self.rings.get_mut(r) {
            ring.bufs.unhold(k.off, k.len);
        }
    }

    pub(super) fn on_accept<F: FnMut(Completion<'_>) -> Flow>(
        &mut self,
        r: usize,
        listener: usize,
        res: i32,
        more: bool,
        on: &mut F,
    ) -> io::Result<()> {
        if !more {
            if let Some(l) = self.listeners.get_mut(listener) {
                l.armed = false;
                if !l.multishot && self.cfg.direct_fds {
                    // Its entry, if it took one, is counted in `open` below.
                    if let Some(ring) = self.rings.get_mut(l.ring) {
                        ring.accepting = ring.accepting.saturating_sub(1);
                    }
                }
            }
        }
        if res >= 0 {
            let sock = if self.cfg.direct_fds {
                RingFd::Fixed {
                    ring: r as u16,
                    index: res as u32,
                }
            } else {
                RingFd::Fd(res)
            };
            if matches!(sock, RingFd::Fixed { .. }) {
                self.direct_open += 1;
                if let Some(ring) = self.rings.get_mut(r) {
                    ring.open += 1;
                }
            }
            if self.listeners.is_empty() {
                // Accepted after stop_accepting, before the cancel took effect.
                return self.close_sock(sock);
            }
            match sock {
                RingFd::Fd(fd) => {
                    // SAFETY: the kernel just created `fd` for us; nothing else owns it.
                    let socket = unsafe { TcpStream::from_raw_fd(fd) };
                    // A peer that already reset has no address: drop it (closes the socket).
                    if let Ok(peer) = socket.peer_addr() {
                        on(Completion::Accepted {
                            socket: Socket::Stream(socket),
                            peer,
                            listener,
                        });
                    }
                }
                RingFd::Fixed { index, .. } if self.fd_install => {
                    // Reported once the peer address is known (`on_peer_of`).
                    // The listener rides in the generation field (listeners < 2^24).
                    let sqe = opcode::FixedFdInstall::new(types::Fixed(index), 0)
                        .build()
                        .user_data(
                            OpId::new(OpKind::PeerOf, index as usize, listener as u32).encode(),
                        );
                    // SAFETY: an fd install points at no user memory.
                    if unsafe { self.push(r, &sqe) }.is_err() {
                        self.deliver_direct(r, index, None, listener, on);
                    }
                }
                RingFd::Fixed { index, .. } => self.deliver_direct(r, index, None, listener, on),
            }
            if !more {
                self.arm_accept_or_retry();
            } else if self.room_on(r) <= self.slack {
                // Near this table's end or the cap: move the accept to a ring with more room,
                // or go one at a time (see `arm_accept`); re-armed when the cancel completes.
                self.cancel_accept();
            }
        } else if !more && res == -libc::ECANCELED {
            // Cancelled to move or to go one at a time (a stopped listener is not re-armed).
            if !self.listeners.is_empty() && self.accept_idle() {
                self.arm_accept_or_retry();
            }
        } else if !more && !self.listeners.is_empty() {
            // EMFILE/ENFILE (descriptor table full) and the like: retry later, not in a loop.
            self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
        }
        Ok(())
    }

    /// The plain descriptor installed for direct descriptor `index` (`res`) is here: ask its
    /// peer address, close it, report the connection.
    pub(super) fn on_peer_of<F: FnMut(Completion<'_>) -> Flow>(
        &mut self,
        r: usize,
        index: u32,
        listener: usize,
        res: i32,
        on: &mut F,
    ) -> io::Result<()> {
        let sock = RingFd::Fixed {
            ring: r as u16,
            index,
        };
        if self.listeners.is_empty() {
            if res >= 0 {
                // SAFETY: the kernel just installed `res` for us; nothing else owns it.
                drop(unsafe { OwnedFd::from_raw_fd(res) });
            }
            return self.close_sock(sock);
        }
        if res < 0 {
            // No descriptor to spare (EMFILE): the peer stays unknown.
            self.deliver_direct(r, index, None, listener, on);
            return Ok(());
        }
        // SAFETY: the kernel just installed `res` for us; nothing else owns it. Dropping it
        // closes only this descriptor: the fixed-file table keeps the socket.
        let installed = TcpStream::from(unsafe { OwnedFd::from_raw_fd(res) });
        match installed.peer_addr() {
            Ok(peer) => self.deliver_direct(r, index, Some(peer), listener, on),
            // A peer that already reset has no address: drop it, as for plain descriptors.
            Err(_) => self.close_sock(sock)?,
        }
        Ok(())
    }

    pub(super) fn deliver_direct<F: FnMut(Completion<'_>) -> Flow>(
        &mut self,
        r: usize,
        index: u32,
        peer: Option<SocketAddr>,
        listener: usize,
        on: &mut F,
    ) {
        on(Completion::Accepted {
            socket: Socket::Direct(DirectFd {
                ring: r as u16,
                index,
                orphans: self.orphans.clone(),
                registered: false,
            }),
            peer: peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            listener,
        });
    }
}
