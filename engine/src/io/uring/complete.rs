//! Reaping completions and turning them into [`Completion`]s for the shard.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};

use super::direct::DirectFd;
use super::driver::{RecvArm, RingFd, UringDriver, DIRECT_FDS_SLACK};
use super::op::{OpId, OpKind};
use crate::io::ACCEPT_RETRY;
use crate::io::{Completion, Flow, Socket, Token};

impl UringDriver {
    /// Submit everything queued and wait (one `io_uring_enter`) for a completion or `timeout`.
    pub(super) fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let r = match timeout {
            None => self.ring.submitter().submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
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

    /// Handle every completion reaped so far, then the tokens to revisit.
    pub(super) fn complete<F: FnMut(Completion<'_>) -> Flow>(
        &mut self,
        on: &mut F,
    ) -> io::Result<()> {
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            cqes.clear();
            cqes.append(&mut self.backlog);
            cqes.extend(self.ring.completion());
            if cqes.is_empty() {
                break;
            }
            self.turn_counts.1 = self.turn_counts.1.wrapping_add(cqes.len() as u32);
            for cqe in &cqes {
                self.on_cqe(cqe, on)?;
            }
        }
        self.cqes = cqes;
        self.bufs.end_batch();
        // Every completion is reaped and nothing was submitted since: no buffer is lent out and
        // none is being filled, the one point where unneeded buffers may be released.
        if let Some(at) = self.bufs.trim_at() {
            let now = Instant::now();
            if now >= at {
                self.bufs.trim(now);
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

    pub(super) fn on_cqe<F: FnMut(Completion<'_>) -> Flow>(
        &mut self,
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
                if !self.accept_armed && self.accept_retry_at.is_none() {
                    self.arm_accept_or_retry();
                }
            }
            OpKind::PeerOf => self.on_peer_of(op.slot, res, on)?,
            OpKind::Wake => {
                self.wake_armed = false;
                self.arm_wake()?;
                on(Completion::Wake);
            }
            OpKind::Accept => self.on_accept(res, more, on)?,
            OpKind::Recv => {
                let token = Token(op.slot as usize);
                let len = usize::try_from(res).unwrap_or(0);
                let buf_more = cqueue::buffer_more(cqe.flags());
                let taken = cqueue::buffer_select(cqe.flags())
                    .map(|bid| (bid, self.bufs.consume(bid, len, buf_more)));
                let conn = self.conns.get_mut(token.0).and_then(Option::as_mut);
                let Some(c) = conn.filter(|c| c.gen == op.gen) else {
                    if let Some((bid, (_, true))) = taken {
                        self.bufs.recycle(bid);
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
                if res > 0 {
                    let mut pause = false;
                    if let Some((bid, (start, finished))) = taken {
                        if live {
                            let flow = on(Completion::Recv {
                                token,
                                buf: self.bufs.get(bid, start, len),
                            });
                            pause = flow == Flow::PauseRecv;
                        }
                        if finished {
                            self.bufs.recycle(bid);
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
                    self.bufs.recycle(bid);
                }
                if res == -libc::ENOBUFS {
                    self.bufs.ran_dry();
                }
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
                let Some(c) = self.conn_mut(token).filter(|c| c.gen == op.gen) else {
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

    pub(super) fn on_accept<F: FnMut(Completion<'_>) -> Flow>(
        &mut self,
        res: i32,
        more: bool,
        on: &mut F,
    ) -> io::Result<()> {
        if !more {
            self.accept_armed = false;
        }
        if res >= 0 {
            let sock = if self.cfg.direct_fds {
                RingFd::Fixed(res as u32)
            } else {
                RingFd::Fd(res)
            };
            if matches!(sock, RingFd::Fixed(_)) {
                self.direct_open += 1;
            }
            if self.listener.is_none() {
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
                        });
                    }
                }
                RingFd::Fixed(index) if self.fd_install => {
                    // Reported once the peer address is known (`on_peer_of`).
                    let sqe = opcode::FixedFdInstall::new(types::Fixed(index), 0)
                        .build()
                        .user_data(OpId::new(OpKind::PeerOf, index as usize, 0).encode());
                    // SAFETY: an fd install points at no user memory.
                    if unsafe { self.push(&sqe) }.is_err() {
                        self.deliver_direct(index, None, on);
                    }
                }
                RingFd::Fixed(index) => self.deliver_direct(index, None, on),
            }
            if !more {
                self.arm_accept_or_retry();
            } else if self.direct_room() <= DIRECT_FDS_SLACK {
                // Near the cap: switch to one-shot accepts (see `arm_accept`).
                self.cancel_accept();
            }
        } else if !more && res != -libc::ECANCELED && self.listener.is_some() {
            // EMFILE/ENFILE (descriptor table full) and the like: retry later, not in a loop.
            self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
        }
        Ok(())
    }

    /// The plain descriptor installed for direct descriptor `index` (`res`) is here: ask its
    /// peer address, close it, report the connection.
    pub(super) fn on_peer_of<F: FnMut(Completion<'_>) -> Flow>(
        &mut self,
        index: u32,
        res: i32,
        on: &mut F,
    ) -> io::Result<()> {
        if self.listener.is_none() {
            if res >= 0 {
                // SAFETY: the kernel just installed `res` for us; nothing else owns it.
                drop(unsafe { OwnedFd::from_raw_fd(res) });
            }
            return self.close_sock(RingFd::Fixed(index));
        }
        if res < 0 {
            // No descriptor to spare (EMFILE): the peer stays unknown.
            self.deliver_direct(index, None, on);
            return Ok(());
        }
        // SAFETY: the kernel just installed `res` for us; nothing else owns it. Dropping it
        // closes only this descriptor: the fixed-file table keeps the socket.
        let installed = TcpStream::from(unsafe { OwnedFd::from_raw_fd(res) });
        match installed.peer_addr() {
            Ok(peer) => self.deliver_direct(index, Some(peer), on),
            // A peer that already reset has no address: drop it, as for plain descriptors.
            Err(_) => self.close_sock(RingFd::Fixed(index))?,
        }
        Ok(())
    }

    pub(super) fn deliver_direct<F: FnMut(Completion<'_>) -> Flow>(
        &mut self,
        index: u32,
        peer: Option<SocketAddr>,
        on: &mut F,
    ) {
        on(Completion::Accepted {
            socket: Socket::Direct(DirectFd {
                index,
                orphans: self.orphans.clone(),
                registered: false,
            }),
            peer: peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        });
    }
}
