//! The epoll backend, on mio (edge-triggered readiness turned into completions).
//!
//! Receiving: when a socket is readable the driver reads it until `WouldBlock` into one
//! per-shard scratch buffer and lends each filled slice to the shard. Sending is synchronous
//! (`write` of a lone chunk, else `writev` straight from the send queue's chunks); `WRITABLE`
//! interest is armed only after a short write and dropped again once the queue has drained.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};

use super::{
    Completion, Driver, DriverConfig, Flow, Socket, Token, Wake, Waker, ACCEPT_RETRY, IOV_MAX,
    LISTENERS_MAX,
};
use crate::send_queue::SendQueue;

const WAKER: mio::Token = mio::Token(usize::MAX);

/// The poll token of listener `i` (connections' tokens are slab keys, far below).
fn listener_token(i: usize) -> mio::Token {
    mio::Token(usize::MAX - 1 - i)
}

/// A registered connection socket, as epoll watches it.
struct Watched {
    stream: mio::net::TcpStream,
    /// `WRITABLE` interest is registered (a short write left bytes queued).
    write_armed: bool,
    /// EOF or an error was reported: read no more.
    done: bool,
    /// The shard paused receiving ([`Flow::PauseRecv`]): not read until `resume_recv`.
    paused: bool,
}

/// The epoll driver of one shard.
pub(crate) struct EpollDriver {
    poll: Poll,
    events: Events,
    /// The listeners, by index (empty after `stop_accepting`).
    listeners: Vec<TcpListener>,
    waker: Arc<mio::Waker>,
    sockets: Vec<Option<Watched>>,
    /// The one receive buffer: `read_bytes` for a first read, the rest for a message the shard
    /// keeps whole in it ([`Flow::Keep`]).
    scratch: Box<[u8]>,
    /// Bytes one read asks for unless it follows a keep.
    read_bytes: usize,
    /// Sockets whose read loop stopped at `READS_PER_TURN` with data possibly left (no new
    /// edge will come for it): read again on the next `poll`, which then does not block.
    unfinished: Vec<(Token, bool)>,
    /// `accept` failed for lack of resources: try again after `ACCEPT_RETRY`.
    accept_retry: bool,
}

/// Most reads of one socket per `poll` (fairness: one fast sender cannot starve the others;
/// 16 reads of the 64 KiB default buffer = 1 MiB per connection per loop turn, plus the rest
/// of a message read whole into the buffer, `recv_keep_bytes` at most).
const READS_PER_TURN: usize = 16;

/// Bytes a read asks for beyond what it expects (the receive buffer's size, or the rest of a
/// kept message): edge-triggered, a read that fills its request exactly cannot tell whether
/// the socket has more, so it must be followed by one that finds nothing (`WouldBlock`). With
/// one page more asked, a message of exactly the buffer's size (the 64 KiB one the buffer is
/// sized for) that is all the socket has comes back as a short read instead: one `recv` per
/// message, not two. The extra page becomes resident only when a read reaches it.
const READ_SLACK_BYTES: usize = 4 << 10;

impl Wake for mio::Waker {
    fn wake(&self) -> io::Result<()> {
        mio::Waker::wake(self)
    }
}

impl EpollDriver {
    fn socket(&mut self, token: Token) -> Option<&mut Watched> {
        self.sockets.get_mut(token.0).and_then(Option::as_mut)
    }

    fn accept_all<F: FnMut(Completion<'_>) -> Flow>(&mut self, index: usize, on: &mut F) {
        let Some(listener) = self.listeners.get(index) else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((socket, peer)) => {
                    if socket.set_nonblocking(true).is_err() {
                        continue;
                    }
                    // Latency first: small frames go out at once.
                    let _ = socket.set_nodelay(true);
                    on(Completion::Accepted {
                        socket: Socket::Stream(socket),
                        peer,
                        listener: index,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Out of descriptors or memory: the pending connections stay in the backlog and
                // raise no new edge, so retry on a timer until they can be taken.
                Err(_) => {
                    self.accept_retry = true;
                    return;
                }
            }
        }
    }

    fn read_all<F: FnMut(Completion<'_>) -> Flow>(
        &mut self,
        token: Token,
        drain: bool,
        on: &mut F,
    ) {
        // Bytes at the front of `scratch` the shard kept (`Flow::Keep`): the next read goes
        // after them, and they are presented again with what it brings.
        let (mut kept, mut whole) = (0, 0);
        // Bytes read this turn: past `READS_PER_TURN` buffers' worth, no new message is begun.
        let mut read = 0;
        for _ in 0..READS_PER_TURN {
            if kept == 0 && read >= READS_PER_TURN * self.read_bytes {
                break;
            }
            let Some(sock) = self.sockets.get_mut(token.0).and_then(Option::as_mut) else {
                return;
            };
            if sock.done || sock.paused {
                return;
            }
            // A read asks for `read_bytes`; one after a keep, for as much as the kept frame
            // needs to be whole (and a little more, see `READ_SLACK_BYTES`) if that is more.
            let want = if whole > kept {
                whole + READ_SLACK_BYTES
            } else {
                0
            };
            let end = (kept + self.read_bytes).max(want).min(self.scratch.len());
            match sock.stream.read(&mut self.scratch[kept..end]) {
                Ok(0) => {
                    sock.done = true;
                    if kept > 0 {
                        // What came before the EOF, then the EOF (the shard holds the EOF
                        // back if this pauses it).
                        self.present(token, kept, 0, on);
                    }
                    on(Completion::Closed { token, error: None });
                    return;
                }
                Ok(n) => {
                    read += n;
                    let len = kept + n;
                    let keep_max = self.scratch.len();
                    match self.present(token, len, keep_max, on) {
                        Flow::Keep { kept: k, whole: w } if k > 0 && k < keep_max && k <= len => {
                            if k < len {
                                self.scratch.copy_within(len - k..len, 0);
                            }
                            (kept, whole) = (k, w);
                            // Read at once whatever follows it (a `WouldBlock` hands it back).
                            continue;
                        }
                        Flow::Keep { kept: k, .. } => {
                            debug_assert!(false, "kept {k} of {len} (at most {keep_max})");
                            (kept, whole) = (0, 0);
                        }
                        Flow::PauseRecv => return,
                        Flow::Continue => (kept, whole) = (0, 0),
                    }
                    if n < end - (len - n) && !drain {
                        // A short read drained the socket (edge-triggered: the next arrival
                        // raises a new event), saving the read that would say WouldBlock.
                        // Not when the peer also closed: that EOF raises no further event.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if kept > 0 {
                        self.present(token, kept, 0, on);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    sock.done = true;
                    if kept > 0 {
                        // Received before the error: handed over like any other bytes.
                        self.present(token, kept, 0, on);
                    }
                    on(Completion::Closed {
                        token,
                        error: Some(e),
                    });
                    return;
                }
            }
        }
        if kept > 0 && self.present(token, kept, 0, on) == Flow::PauseRecv {
            return;
        }
        self.unfinished.push((token, drain));
    }

    /// Lend `scratch[..len]` to the shard for `token`; a `PauseRecv` answer pauses the socket
    /// (what is left stays in the kernel; `resume_recv` reads it, no new edge may come for it).
    fn present<F: FnMut(Completion<'_>) -> Flow>(
        &mut self,
        token: Token,
        len: usize,
        keep_max: usize,
        on: &mut F,
    ) -> Flow {
        let Some(sock) = self.sockets.get_mut(token.0).and_then(Option::as_mut) else {
            return Flow::Continue;
        };
        let direct = Some(sock.stream.as_raw_fd());
        let flow = on(Completion::Recv {
            token,
            buf: &mut self.scratch[..len],
            direct,
            keep_max,
        });
        if flow == Flow::PauseRecv {
            if let Some(sock) = self.socket(token) {
                sock.paused = true;
            }
        }
        flow
    }
}

impl Driver for EpollDriver {
    const WRITES_AT_ONCE: bool = true;

    fn new(listeners: Vec<TcpListener>, cfg: &DriverConfig) -> io::Result<Self> {
        if listeners.len() > LISTENERS_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many listeners",
            ));
        }
        let poll = Poll::new()?;
        for (i, listener) in listeners.iter().enumerate() {
            listener.set_nonblocking(true)?;
            poll.registry().register(
                &mut SourceFd(&listener.as_raw_fd()),
                listener_token(i),
                Interest::READABLE,
            )?;
        }
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let read_bytes = cfg.recv_buffer_bytes + READ_SLACK_BYTES;
        Ok(Self {
            poll,
            events: Events::with_capacity(cfg.events_max.max(16)),
            listeners,
            waker,
            sockets: Vec::new(),
            unfinished: Vec::new(),
            accept_retry: false,
            // Zeroed by the allocator (fresh pages are not touched): only as much of it as
            // the largest read reached becomes resident.
            scratch: vec![0u8; read_bytes.max(cfg.recv_keep_bytes)].into_boxed_slice(),
            read_bytes,
        })
    }

    fn waker(&self) -> Waker {
        self.waker.clone()
    }

    fn register(&mut self, token: Token, socket: Socket) -> io::Result<()> {
        let Socket::Stream(socket) = socket else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "epoll cannot drive an io_uring direct descriptor",
            ));
        };
        let mut stream = mio::net::TcpStream::from_std(socket);
        self.poll
            .registry()
            .register(&mut stream, mio::Token(token.0), Interest::READABLE)?;
        if self.sockets.len() <= token.0 {
            self.sockets.resize_with(token.0 + 1, || None);
        }
        self.sockets[token.0] = Some(Watched {
            stream,
            write_armed: false,
            done: false,
            paused: false,
        });
        Ok(())
    }

    fn poll<F>(&mut self, timeout: Option<Duration>, mut on: F) -> io::Result<()>
    where
        F: FnMut(Completion<'_>) -> Flow,
    {
        let timeout = if !self.unfinished.is_empty() {
            Some(Duration::ZERO)
        } else if self.accept_retry {
            Some(timeout.map_or(ACCEPT_RETRY, |t| t.min(ACCEPT_RETRY)))
        } else {
            timeout
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        // A token here may have been closed (and even reused) since: reading a socket with
        // nothing to read only costs a `WouldBlock`.
        if std::mem::take(&mut self.accept_retry) {
            for i in 0..self.listeners.len() {
                self.accept_all(i, &mut on);
            }
        }
        let mut again = std::mem::take(&mut self.unfinished);
        for (token, drain) in again.drain(..) {
            self.read_all(token, drain, &mut on);
        }
        if self.unfinished.is_empty() {
            self.unfinished = again;
        }
        // `events` is borrowed by the loop while the handlers need `&mut self`: take it out.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for ev in events.iter() {
            match ev.token() {
                WAKER => {
                    on(Completion::Wake);
                }
                mio::Token(t) if t >= usize::MAX - LISTENERS_MAX => {
                    self.accept_all(usize::MAX - 1 - t, &mut on);
                }
                mio::Token(t) => {
                    let token = Token(t);
                    if ev.is_writable() {
                        if let Some(sock) = self.socket(token) {
                            if sock.write_armed {
                                on(Completion::Sent { token, n: 0 });
                            }
                        }
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.read_all(token, ev.is_read_closed() || ev.is_error(), &mut on);
                    }
                }
            }
        }
        self.events = events;
        Ok(())
    }

    fn send(&mut self, token: Token, queue: &mut SendQueue) -> io::Result<()> {
        let registry = self.poll.registry();
        let Some(sock) = self.sockets.get_mut(token.0).and_then(Option::as_mut) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        while !queue.is_empty() {
            // One chunk (the usual case): a plain `write`, no iovec array to build.
            let res = match queue.single_slice() {
                Some(b) => sock.stream.write(b),
                None => {
                    let mut slices = [IoSlice::new(&[]); IOV_MAX];
                    let n = queue.io_slices(&mut slices);
                    sock.stream.write_vectored(&slices[..n])
                }
            };
            match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => queue.advance(w),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !sock.write_armed {
                        registry.reregister(
                            &mut sock.stream,
                            mio::Token(token.0),
                            Interest::READABLE | Interest::WRITABLE,
                        )?;
                        sock.write_armed = true;
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if sock.write_armed {
            registry.reregister(&mut sock.stream, mio::Token(token.0), Interest::READABLE)?;
            sock.write_armed = false;
        }
        Ok(())
    }

    fn resume_recv(&mut self, token: Token) {
        if let Some(sock) = self.socket(token) {
            if sock.paused {
                sock.paused = false;
                // Read on the next poll whatever arrived meanwhile, up to EOF: edges raised
                // while paused were skipped.
                self.unfinished.push((token, true));
            }
        }
    }

    fn shutdown_write(&mut self, token: Token) {
        if let Some(sock) = self.socket(token) {
            let _ = sock.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    fn close(&mut self, token: Token) -> bool {
        if let Some(slot) = self.sockets.get_mut(token.0) {
            if let Some(mut sock) = slot.take() {
                let _ = self.poll.registry().deregister(&mut sock.stream);
            }
        }
        true
    }

    fn stop_accepting(&mut self) {
        for listener in std::mem::take(&mut self.listeners) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&listener.as_raw_fd()));
        }
    }
}
