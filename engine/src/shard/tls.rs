//! TLS connections in the shard: a [`Session`] per connection between the backend and the
//! protocol state machine (the `tls` feature).
//!
//! - **Receive**: ciphertext from `Completion::Recv` goes to [`Session::recv`]; each record's
//!   plaintext, opened in place in the receive buffer, goes straight to
//!   `Connection::handle_recv`. Handshake messages, alerts and our KeyUpdates go to the
//!   connection's *wire* queue.
//! - **Send**: handlers queue plaintext frames in the connection's usual send queue (so limits,
//!   slow consumers, shared broadcast frames and conflation work as for plain connections); at
//!   flush the shard seals that queue into records of up to 16 KiB in the wire queue and the
//!   backend writes the wire queue: one write (epoll) or one send (io_uring) per connection per
//!   loop turn, as for plain connections.
//! - **End**: when the protocol is done talking, `close_notify` goes after the last record,
//!   then the transport closes as the protocol said. A TLS failure sends its alert (if TLS
//!   asks for one), drops the queued plaintext, counts in `Stats::tls_failures`, logs one line
//!   (at most [`LOG_LINES_PER_SECOND`] per shard) and ends the transport.
//!
//! A plain connection has no entry here and pays one flag test per receive, send completion and
//! flush.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use slab::Slab;

use super::ctx::Out;
use super::entry::{Entry, Queue, TlsIndex, DEAD, DIRTY, TLS};
use super::{dispatch, Handler, Shard};
use crate::counters::CloseReason;
use crate::io::{Driver, Token};
use crate::proto::{Received, Request};
use crate::send_queue::SendQueue;
use crate::stats::ShardStats;
use crate::tls::{Session, TlsError, PLAINTEXT_MAX, SEAL_OVERHEAD};

/// Plaintext sealed per connection per flush at most: bounds the ciphertext a connection holds
/// (in its wire queue) beyond its plaintext queue. The rest is sealed on the next turn.
pub(crate) const SEAL_BYTES_PER_FLUSH: usize = 256 << 10;

/// TLS failure log lines per shard per second at most (a port scanner must not flood the log);
/// the lines held back are counted in the next one.
pub(crate) const LOG_LINES_PER_SECOND: u32 = 10;

/// Bytes a sealed record may need beyond its plaintext: its own overhead and a KeyUpdate
/// record before it.
const RECORD_SLACK: usize = 2 * SEAL_OVERHEAD + 8;

/// Most pieces of the send queue gathered into one record (a record with more ends early).
const RECORD_PARTS_MAX: usize = 16;

/// One TLS connection's state in the shard (in [`TlsConns`], named by the entry's `tls`).
pub(crate) struct TlsConn {
    pub(crate) session: Session,
    /// Records to write, in order: handshake flights, sealed data, alerts. What the backend
    /// sends from (the entry's own queue holds plaintext).
    pub(crate) wire: Queue,
    /// `close_notify` was sealed (or the session cannot send any more).
    notified: bool,
    /// The peer's EOF came with its `close_notify`, before our answer was flushed: once it is,
    /// the connection ends (there is no FIN left to linger for).
    pub(crate) eof: bool,
}

/// The shard's TLS state: the sessions of its TLS connections and what they share.
pub(crate) struct TlsConns {
    pub(crate) conns: Slab<TlsConn>,
    /// The server config for connections of the TLS listener (prepared once).
    server: Option<Arc<ServerConfig>>,
    /// Which listener speaks TLS.
    pub(crate) listener: Option<usize>,
    handshake_bytes_max: usize,
    /// Scratch output of `Session::recv` (handshake flights, alerts), copied to the wire.
    scratch: Vec<u8>,
    log: LogLimit,
}

impl TlsConns {
    pub(crate) fn new(
        server: Option<Arc<ServerConfig>>,
        listener: Option<usize>,
        handshake_bytes_max: usize,
    ) -> Self {
        Self {
            conns: Slab::new(),
            server,
            listener,
            handshake_bytes_max,
            scratch: Vec::new(),
            log: LogLimit::default(),
        }
    }

    /// A session for a connection accepted on the TLS listener.
    pub(crate) fn accept(&mut self) -> Result<TlsIndex, TlsError> {
        let Some(cfg) = &self.server else {
            return Err(TlsError::Handshake(rustls::Error::General(
                "no server config".into(),
            )));
        };
        let session = Session::server(cfg.clone(), self.handshake_bytes_max)?;
        self.insert(session, Queue::default())
    }

    /// A session for an outbound connection: its ClientHello is queued.
    pub(crate) fn connect(
        &mut self,
        cfg: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsIndex, TlsError> {
        let mut hello = Vec::new();
        let session = Session::client(cfg, name, self.handshake_bytes_max, &mut hello)?;
        let mut wire = Queue::default();
        wire.push(&hello);
        self.insert(session, wire)
    }

    /// Connection `e` ended its input with the peer's `close_notify` and is flushing our answer:
    /// an orderly EOF now is noted, and the connection ends once that answer is out (see
    /// `flush_tls`) instead of at once.
    pub(crate) fn answers_close<S>(&mut self, e: &Entry<S>) -> bool {
        let Some(t) = self.conns.get_mut(e.tls.get()) else {
            return false;
        };
        let answers = e.conn.is_flushing() && t.session.peer_closed() && !t.notified;
        t.eof |= answers;
        answers
    }

    fn insert(&mut self, session: Session, wire: Queue) -> Result<TlsIndex, TlsError> {
        let Some(index) = TlsIndex::new(self.conns.vacant_key()) else {
            return Err(TlsError::Handshake(rustls::Error::General(
                "2^24 TLS connections on one shard".into(),
            )));
        };
        self.conns.insert(TlsConn {
            session,
            wire,
            notified: false,
            eof: false,
        });
        Ok(index)
    }
}

/// Counts log lines per one-second window of ticks.
#[derive(Default)]
struct LogLimit {
    window: u32,
    lines: u32,
    held: u64,
}

impl LogLimit {
    /// May a line be logged at tick `now` (10 ms ticks)? Returns the lines held back before it.
    fn allow(&mut self, now: u32) -> Option<u64> {
        if now.wrapping_sub(self.window) >= 100 {
            self.window = now;
            self.lines = 0;
        }
        if self.lines < LOG_LINES_PER_SECOND {
            self.lines += 1;
            Some(std::mem::take(&mut self.held))
        } else {
            self.held += 1;
            None
        }
    }
}

impl<H: Handler> Shard<H> {
    /// Ciphertext arrived on TLS connection `key`.
    pub(super) fn on_recv_tls(&mut self, key: usize, buf: &mut [u8]) {
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        let Some(t) = self.tls.conns.get_mut(e.tls.get()) else {
            return;
        };
        let Entry {
            conn,
            queue,
            state,
            peer,
            generation,
            flags,
            ..
        } = e;
        let (handler, ep, generation) = (&mut self.handler, &mut self.ep, *generation);
        let now = self.ctx.now;
        let mut out = Out {
            key: key as u32,
            queue,
            flags,
            ctx: &mut self.ctx,
        };
        let handshaking = t.session.is_handshaking();
        let mut received = Received::Done;
        let scratch = &mut self.tls.scratch;
        scratch.clear();
        let res = t.session.recv(buf, scratch, |plain| {
            let r = conn.handle_recv(now, ep, &mut out, plain, |ev, link| {
                dispatch(handler, ev, link, state, peer, generation)
            });
            if let Received::Done = received {
                received = r;
            }
        });
        if !scratch.is_empty() {
            t.wire.push(scratch);
        }
        // An alert of ours is waiting to go: linger after it so that the peer reads it (a close
        // with unread input would reset the connection); none (the peer's own alert): close.
        let linger = !t.wire.is_empty();
        if handshaking && !t.session.is_handshaking() && res.is_ok() {
            ShardStats::bump(&out.ctx.stats.tls_handshakes, 1);
        }
        match res {
            Err(err) => {
                let who = peer.get();
                out.queue.discard_unsent();
                conn.end_transport(now, &err.to_string(), linger);
                t.notified = true;
                self.tls_failed(key, who, &err);
            }
            Ok(()) if t.session.peer_closed() => {
                // The peer will send nothing more: ours follows what is queued, then we close.
                conn.end_transport(now, "TLS close_notify without a close frame", false);
            }
            Ok(()) => {}
        }
        let e = &mut self.slab[key];
        if !self.tls.conns[e.tls.get()].wire.is_empty()
            || self.tls.conns[e.tls.get()].session.wants_flush()
            || !e.queue.is_empty()
        {
            mark_dirty(&mut self.ctx.dirty, key, e);
        }
        self.after_recv(key, received);
        self.settle(key);
    }

    /// The peer's orderly EOF on TLS connection `key`. True: the peer's `close_notify` came with
    /// it and ours goes out with this turn's flush, which then closes (the caller does nothing
    /// more). False: the caller ends the connection as for any EOF; if the EOF came inside a
    /// record or handshake message, that is a truncated stream, reported and counted as a TLS
    /// failure first.
    pub(super) fn on_eof_tls(&mut self, key: usize) -> bool {
        let Some(e) = self.slab.get_mut(key) else {
            return false;
        };
        if self.tls.answers_close(e) {
            return true;
        }
        let held = self
            .tls
            .conns
            .get(e.tls.get())
            .map_or(0, |t| t.session.pending_bytes());
        if held > 0 {
            let err = TlsError::Truncated(held);
            e.conn.end_transport(self.ctx.now, &err.to_string(), false);
            let peer = e.peer.get();
            self.tls_failed(key, peer, &err);
        }
        false
    }

    /// Count, log (rate-limited) a TLS failure of connection `key`; its close is counted
    /// under the `tls_failure` reason.
    fn tls_failed(&mut self, key: usize, peer: SocketAddr, err: &TlsError) {
        ShardStats::bump(&self.ctx.stats.tls_failures, 1);
        self.mark(key, CloseReason::TlsFailure);
        if let Some(held) = self.tls.log.allow(self.ctx.now) {
            let shard = self.ctx.shard;
            if held > 0 {
                log::warn!("shard {shard}: {peer}: {err} ({held} more TLS failures not logged)");
            } else {
                log::warn!("shard {shard}: {peer}: {err}");
            }
        }
    }

    /// The TLS facts of an upgrade request: that it came over TLS, and the server name.
    pub(super) fn tls_request(&mut self, key: usize, req: &mut Request) {
        let Some(e) = self.slab.get(key) else {
            return;
        };
        if e.flags & TLS == 0 {
            return;
        }
        if let Some(t) = self.tls.conns.get_mut(e.tls.get()) {
            let name = t.session.take_server_name();
            req.set_tls(name.as_deref());
        }
    }

    /// Connection `key` is closed without a flush (a deadline passed, the peer's EOF, the
    /// shutdown deadline): if its session may still send, one last write of `close_notify`, so
    /// that the peer sees the end of the TLS stream rather than a truncation (best effort).
    pub(super) fn tls_goodbye<D: Driver>(&mut self, driver: &mut D, key: usize) {
        let Some(e) = self.slab.get(key) else {
            return;
        };
        if e.flags & TLS == 0 {
            return;
        }
        let Some(t) = self.tls.conns.get_mut(e.tls.get()) else {
            return;
        };
        if t.notified || !t.session.is_open() || t.wire.in_flight() || !t.wire.is_empty() {
            return;
        }
        let mut close = Vec::new();
        t.session.close_notify(&mut close);
        t.notified = true;
        t.wire.push(&close);
        let _ = driver.send(Token(key), &mut t.wire);
    }

    /// Flush TLS connection `key`: seal its queued plaintext, write the wire queue, then act as
    /// a plain flush does (drain callbacks, the end of the transport).
    pub(super) fn flush_tls<D: Driver>(&mut self, driver: &mut D, key: usize) {
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        e.flags &= !DIRTY;
        if e.flags & DEAD != 0 {
            return;
        }
        let Some(t) = self.tls.conns.get_mut(e.tls.get()) else {
            return;
        };
        if t.wire.in_flight() {
            return;
        }
        let mut failure = None;
        if t.session.is_open() {
            if t.wire.is_empty() {
                if let Err(err) = seal_queue(&mut t.session, &mut e.queue, &mut t.wire) {
                    failure = Some(err);
                }
            }
            if failure.is_none() && t.session.wants_flush() {
                let mut kupd = Vec::new();
                if let Err(err) = t.session.flush_key_update(&mut kupd) {
                    failure = Some(err);
                }
                t.wire.push(&kupd);
            }
            if e.conn.is_flushing() && e.queue.is_empty() && !t.notified {
                let mut close = Vec::new();
                t.session.close_notify(&mut close);
                t.wire.push(&close);
                t.notified = true;
            }
        } else if t.session.is_failed() {
            // Nothing may follow the alert.
            e.queue.discard_unsent();
            t.notified = true;
        }
        if let Some(err) = failure {
            let (now, who) = (self.ctx.now, e.peer.get());
            e.queue.discard_unsent();
            e.conn.end_transport(now, &err.to_string(), true);
            t.notified = true;
            self.tls_failed(key, who, &err);
        }
        let e = &mut self.slab[key];
        let t = &mut self.tls.conns[e.tls.get()];
        if !t.wire.is_empty() {
            let before = t.wire.len();
            let res = driver.send(Token(key), &mut t.wire);
            let written = (before - t.wire.len()) as u64;
            ShardStats::bump(&self.ctx.stats.bytes_sent, written);
            if res.is_err() {
                e.conn.abort();
                self.finalize(key);
                return;
            }
        }
        // Empty and not in flight (written now, or a completion came): its storage goes back
        // to the stock (the queue keeps no heap memory).
        t.wire.recycle(&mut self.ctx.pool);
        // The plaintext queue is never the backend's: once sealed it can go (an idle TLS
        // connection holds no queue, as a plain one).
        e.queue.recycle(&mut self.ctx.pool);
        let wire_done = t.wire.is_empty() && !t.wire.in_flight();
        // Plaintext left over (the per-flush budget, or the handshake still running): the next
        // turn goes on once the wire queue is out.
        if !e.queue.is_empty() && wire_done && t.session.is_open() {
            mark_dirty(&mut self.ctx.dirty, key, e);
        }
        let flushed = wire_done && e.queue.is_empty() && (t.notified || !t.session.is_open());
        let eof = t.eof;
        self.after_flush(driver, key, flushed);
        if flushed && eof {
            // A half-close would wait for a FIN that already came.
            if let Some(e) = self.slab.get_mut(key) {
                if !e.conn.is_finished() && !e.conn.is_flushing() {
                    e.conn.handle_eof();
                    self.finalize(key);
                }
            }
        }
    }
}

/// Put `e` on the dirty list (once).
fn mark_dirty<S>(dirty: &mut Vec<u32>, key: usize, e: &mut Entry<S>) {
    if e.flags & DIRTY == 0 {
        e.flags |= DIRTY;
        dirty.push(key as u32);
    }
}

/// Seal the front of `plain` (at most [`SEAL_BYTES_PER_FLUSH`]) into records of up to 16 KiB,
/// appended to `wire` as one chunk. Shared (broadcast) frames are read where they are: the
/// plaintext is copied once, into its record, and encrypted there.
fn seal_queue(session: &mut Session, plain: &mut Queue, wire: &mut Queue) -> Result<(), TlsError> {
    let total = plain.len().min(SEAL_BYTES_PER_FLUSH);
    let records = total.div_ceil(PLAINTEXT_MAX).max(1);
    let mut res = Ok(());
    {
        let (chunks, head) = plain.chunks();
        let q: &mut SendQueue = wire;
        q.push_with(total + records * RECORD_SLACK, |v| {
            res = seal_chunks(session, chunks, head, total, v);
        });
    }
    res?;
    plain.advance(total);
    Ok(())
}

/// Seal the first `total` bytes of `chunks` (the first one starting at `head`) into `out`:
/// records as full as 16 KiB allows, a record ending early only after [`RECORD_PARTS_MAX`]
/// pieces.
fn seal_chunks<'a>(
    session: &mut Session,
    chunks: impl Iterator<Item = &'a [u8]>,
    head: usize,
    total: usize,
    out: &mut Vec<u8>,
) -> Result<(), TlsError> {
    let mut parts: [&[u8]; RECORD_PARTS_MAX] = [&[]; RECORD_PARTS_MAX];
    let (mut k, mut in_record, mut left) = (0, 0, total);
    for (i, chunk) in chunks.enumerate() {
        let mut c = if i == 0 {
            chunk.get(head..).unwrap_or(&[])
        } else {
            chunk
        };
        while !c.is_empty() && left > 0 {
            let take = c.len().min(PLAINTEXT_MAX - in_record).min(left);
            let (piece, rest) = c.split_at(take);
            parts[k] = piece;
            (k, in_record, left, c) = (k + 1, in_record + take, left - take, rest);
            if in_record == PLAINTEXT_MAX || k == RECORD_PARTS_MAX || left == 0 {
                session.seal(&parts[..k], out)?;
                (k, in_record) = (0, 0);
            }
        }
        if left == 0 {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{LogLimit, LOG_LINES_PER_SECOND};

    #[test]
    fn failure_log_lines_are_limited_per_second_and_the_rest_counted() {
        let mut l = LogLimit::default();
        let t0 = 1_000;
        for _ in 0..LOG_LINES_PER_SECOND {
            assert_eq!(l.allow(t0), Some(0));
        }
        for i in 0..25u32 {
            assert_eq!(l.allow(t0 + i), None, "held back within the second");
        }
        // The next window's first line says how many were held back.
        assert_eq!(l.allow(t0 + 100), Some(25));
        assert_eq!(l.allow(t0 + 101), Some(0));
        // Ticks wrap around.
        let mut w = LogLimit {
            window: u32::MAX - 10,
            ..LogLimit::default()
        };
        assert_eq!(w.allow(u32::MAX - 10), Some(0));
        assert_eq!(w.allow(95), Some(0), "a new window after the wrap");
    }
}
