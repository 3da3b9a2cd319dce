//! One WebSocket connection's protocol state, sans-IO, in the shape of quinn-proto's
//! `Connection`: the opening handshake (server and client side), frame decoding into events,
//! the close handshake and how the transport ends, and the handshake, idle/ping, pong and close
//! deadlines.
//!
//! A [`Connection`] takes the bytes received on its transport (plaintext) and a time, and gives
//! back events for the application, the bytes to send (written into an [`Output`] the caller
//! supplies: a send queue, or a TLS session in front of one) and its next deadline. It owns no
//! socket, reads no clock and makes no system call. `now` is a tick count in a unit the caller
//! picks (the timeouts of [`Settings`] count the same ticks); what a group of connections shares
//! (settings, the masking-key RNG) comes in with each call as an [`Endpoint`].
//!
//! # Driving a connection
//!
//! | when | call |
//! |---|---|
//! | a connection was accepted | [`Connection::server`] |
//! | an outbound transport is up | [`Connection::client`] (queues the upgrade request) |
//! | bytes arrived | [`Connection::handle_recv`]; answer a [`Received::Upgrade`] with [`Connection::accept_upgrade`] or [`Connection::reject_upgrade`] (now or later), a [`Received::Request`] with [`Connection::respond`] |
//! | the application sends or closes | the [`SendHalf`] methods: through the [`Link`] handed out with each event, or [`Connection::send_half`] |
//! | after any call above | [`Connection::poll_timeout`]: be woken at that tick (or earlier) |
//! | that tick came | [`Connection::handle_timeout`] |
//! | everything output so far left for the peer | [`Connection::handle_flushed`]: close or half-close the transport as it says |
//! | the peer closed, or the transport failed | [`Connection::handle_eof`] |
//! | the caller gives up (write error, shutdown deadline) | [`Connection::abort`] |
//! | [`Connection::is_finished`] | report [`Connection::close_outcome`] (when [`Connection::reports_close`]) and drop the transport |
//!
//! # Borrowing
//!
//! Events borrow the receive buffer (a message that arrived whole in one buffer is handed out
//! where it landed, unmasked in place) or the connection's message buffer. The connection is
//! therefore two halves: a [`RecvHalf`] (decoder state and held bytes: what events borrow) and
//! a [`SendHalf`] (phase, close handshake, keepalive clock, close outcome: what the application
//! acts on). Each event comes with a [`Link`] to the send half, so the application can send or
//! close from inside the callback while the event's payload is still borrowed.

use super::close::CloseState;
use super::close_code::CloseCode;
use super::codec::DecodeState;
use super::deflate::{client_accept, Terms};
use super::endpoint::Endpoint;
use super::error::ProtocolError;
use super::frame::{FrameHeader, OpCode, Role};
use super::handshake::{
    accept_response, parse_request, parse_response_with, reject_response, HandshakeError, Request,
};

mod decode;
mod event;
mod held;
mod send;
#[cfg(test)]
mod tests;

use self::decode::{decode, decode_deflating};
pub use self::event::{AppEvent, Link};
use self::held::Held;
pub use self::send::{Deadline, SendHalf};
use self::send::{Ending, Outcome, Phase, CLIENT, LINGER, OPENED, PING_OUT};
use super::output::Output;

/// What the caller must know after [`Connection::handle_recv`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Received {
    /// The bytes were processed (or held until more arrive).
    Done,
    /// Server side: a complete, valid upgrade request. Answer it with
    /// [`Connection::accept_upgrade`] or [`Connection::reject_upgrade`], now or later (the
    /// handshake timeout runs until then); frames that came with it are held meanwhile.
    /// (Boxed: a handshake is rare, a receive is not, and this keeps `Received` small.)
    Upgrade(Box<Request>),
    /// Server side: a complete plain HTTP request (`GET` or `HEAD`, not an upgrade). Answer it
    /// with [`Connection::respond`]; the connection ends after that response. Bytes after the
    /// request (a pipelined second request) are not read as anything: the answer says
    /// `Connection: close`, and a client retries unanswered requests on a new connection.
    Request(Box<Request>),
    /// The peer broke the protocol: the connection is failing (its close frame is queued).
    Failed(ProtocolError),
    /// The handshake failed: a server's HTTP error response is queued (the connection ends
    /// after it); a client's connection is finished.
    Refused(HandshakeError),
}

/// What [`Connection::handle_timeout`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Timeout {
    /// No deadline passed (activity moved it): ask [`Connection::poll_timeout`] again.
    NotDue,
    /// The idle deadline passed: a ping is queued, the pong deadline runs.
    Pinged,
    /// A handshake, pong or close deadline passed: the connection is finished.
    Expired,
}

/// What to do with the transport once the output is flushed ([`Connection::handle_flushed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AfterFlush {
    /// Nothing: the connection goes on.
    Continue,
    /// Half-close (send FIN) and keep reading until the peer's EOF or the close timeout.
    ShutdownWrite,
    /// Close the transport: the connection is finished.
    Close,
}

/// One WebSocket connection (see the module docs for how to drive it). 56 bytes; no heap
/// memory while idle (dedicated permessage-deflate terms excepted: see [`super::deflate`]).
#[derive(Debug)]
pub struct Connection {
    recv: RecvHalf,
    send: SendHalf,
}

/// The receive half: what events borrow from.
#[derive(Debug)]
pub struct RecvHalf {
    decoder: DecodeState,
    held: Held,
}

/// Bytes of a new receive buffer appended to a held partial frame before decoding it (enough to
/// complete any frame header or control frame: 14 + 125).
const HELD_FILL: usize = 160;

impl Connection {
    /// An accepted connection, waiting for its upgrade request (the handshake deadline runs
    /// from `now`).
    pub fn server(now: u32) -> Self {
        Self::new(now, Role::Server)
    }

    /// An outbound connection: queues `request` (see [`super::client_request`], made with
    /// `key`) and waits for the server's answer.
    pub fn client<O: Output>(now: u32, out: &mut O, key: &str, request: &[u8]) -> Self {
        let mut c = Self::new(now, Role::Client);
        c.send.flags |= CLIENT;
        c.recv.held.hold_handshake(&[], Some(key.into()));
        out.push_bytes(request);
        c
    }

    fn new(now: u32, role: Role) -> Self {
        Self {
            recv: RecvHalf {
                decoder: DecodeState::new(role),
                held: Held::default(),
            },
            send: SendHalf {
                cold: None,
                last_rx: now,
                mark: now,
                close: CloseState::new(),
                phase: Phase::Handshake,
                flags: 0,
                deflate: Terms::default(),
                jitter: 0,
            },
        }
    }

    /// The send half, to send or close outside an event (e.g. when the application opens the
    /// connection, or from a timer of its own).
    #[inline]
    pub fn send_half(&mut self) -> &mut SendHalf {
        &mut self.send
    }

    /// Is the connection open (handshake done, not yet flushing its last bytes)?
    #[inline]
    pub fn is_open(&self) -> bool {
        self.send.phase == Phase::Open
    }

    /// Is the opening handshake still running (a server's includes waiting for the
    /// application's answer to an upgrade or a plain request)?
    #[inline]
    pub fn is_handshaking(&self) -> bool {
        matches!(
            self.send.phase,
            Phase::Handshake | Phase::Upgrading | Phase::Responding
        )
    }

    /// Server: is an upgrade request waiting for [`Connection::accept_upgrade`] or
    /// [`Connection::reject_upgrade`]?
    #[inline]
    pub fn is_upgrading(&self) -> bool {
        self.send.phase == Phase::Upgrading
    }

    /// Is the connection done talking and waiting for its output to be flushed (call
    /// [`Connection::handle_flushed`] once it is)?
    #[inline]
    pub fn is_flushing(&self) -> bool {
        self.send.phase == Phase::Flushing
    }

    /// May data be sent ([`SendHalf::can_send`])?
    #[inline]
    pub fn can_send(&self) -> bool {
        self.send.can_send()
    }

    /// Is this the client end?
    #[inline]
    pub fn is_client(&self) -> bool {
        self.send.is_client()
    }

    /// Is the connection finished (nothing more to do but drop the transport)?
    #[inline]
    pub fn is_finished(&self) -> bool {
        self.send.phase == Phase::Closed
    }

    /// Should the application hear how the connection ended? Yes once it was opened, and
    /// always for a client (whose handshake may fail).
    pub fn reports_close(&self) -> bool {
        self.send.flags & (OPENED | CLIENT) != 0
    }

    /// How the connection ended: the close code the peer sent (or the one we sent when we
    /// failed the connection), `None` for a close frame without a code, and 1006 with an empty
    /// reason when the transport ended without a close handshake (or a deadline passed).
    pub fn close_outcome(&self) -> (Option<CloseCode>, &str) {
        match self.send.outcome() {
            Some(o) => (o.code, o.reason.as_str()),
            None => (Some(CloseCode::ABNORMAL), ""),
        }
    }

    /// Client: offer permessage-deflate ([`super::deflate::client_offer`], which the request
    /// given to [`Connection::client`] must carry in `Sec-WebSocket-Extensions`); the
    /// server's answer is then checked, and a bad one fails the handshake (RFC 7692 §7.1).
    pub fn offer_deflate(&mut self) {
        if self.send.is_client() && self.is_handshaking() {
            self.send.deflate = Terms::offered();
        }
    }

    /// Server: agree on permessage-deflate for `req` under the endpoint's settings (call it
    /// before [`Connection::accept_upgrade`]): the `Sec-WebSocket-Extensions` value to answer
    /// with, or `None` (compression off, nothing offered, or no acceptable offer). `Err`: the
    /// request's extension header is malformed (answer 400, RFC 6455 §4.2.1).
    pub fn negotiate_deflate(
        &mut self,
        ep: &mut Endpoint,
        req: &Request,
    ) -> Result<Option<String>, HandshakeError> {
        if self.send.phase != Phase::Upgrading
            || ep.settings().deflate.mode == super::deflate::Compression::Off
        {
            return Ok(None);
        }
        let values = req
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Sec-WebSocket-Extensions"))
            .map(|(_, v)| v);
        let st = ep.settings().deflate;
        match ep.deflate.negotiate(values, &st) {
            Err(_) => Err(HandshakeError::new(
                400,
                "malformed Sec-WebSocket-Extensions",
            )),
            Ok(None) => Ok(None),
            Ok(Some((answer, pmd))) => {
                self.send.deflate = Terms::new(&answer.agreed);
                self.send.set_pmd(pmd);
                self.recv.decoder.set_permessage_deflate(true);
                Ok(Some(answer.header))
            }
        }
    }

    /// Is permessage-deflate in use on this connection?
    pub fn is_deflating(&self) -> bool {
        self.send.deflate.is_on()
    }

    /// Heap bytes of this connection's own compression state (dedicated terms: the peer's
    /// window and our own while it exists; 0 otherwise).
    pub fn deflate_heap_bytes(&self) -> usize {
        self.send.deflate_heap_bytes()
    }

    /// Bytes held between receives (a partial handshake or frame), for memory accounting.
    pub fn held_bytes(&self) -> usize {
        self.recv.held.len() + self.recv.decoder.buffered_bytes()
    }

    /// Heap memory the connection holds (held bytes and message buffer, by capacity).
    pub fn heap_bytes(&self) -> usize {
        self.recv.held.capacity() + self.recv.decoder.heap_bytes()
    }

    /// Give the connection's buffers up: held bytes are freed, a pooled message buffer goes back
    /// to `ep`'s [`super::BufPool`]. Call when the connection is finished (before dropping it),
    /// so that a large partial message it leaves is reused; any other time loses what they hold.
    pub fn release_buffers(&mut self, ep: &mut Endpoint) {
        self.recv.held.clear();
        self.recv.decoder.release(Some(ep.pool()));
    }

    /// Do held bytes wait to be decoded (a [`Connection::handle_recv_budgeted`] ran out of
    /// frames, or a partial frame waits for the rest)?
    #[inline]
    pub fn has_held_frames(&self) -> bool {
        self.recv.held.len() > 0 && self.send.phase == Phase::Open
    }

    /// Call with every buffer of bytes received, in order (plaintext: after TLS, if any). The
    /// buffer is processed in place (frames are unmasked where they lie) and a message that
    /// lies whole in it is handed to `on` without a copy; what is left of a partial frame is
    /// copied and held. `on` gets each [`AppEvent`] with a [`Link`] to act on the connection.
    /// An empty `buf` processes what is held (call it after [`Connection::accept_upgrade`]).
    pub fn handle_recv<O, F>(
        &mut self,
        now: u32,
        ep: &mut Endpoint,
        out: &mut O,
        buf: &mut [u8],
        on: F,
    ) -> Received
    where
        O: Output,
        F: FnMut(AppEvent<'_>, Link<'_, O>),
    {
        let mut unlimited = u32::MAX;
        self.handle_recv_budgeted(now, ep, out, buf, &mut unlimited, on)
    }

    /// [`Connection::handle_recv`] that decodes at most `frames` frames (data or control),
    /// counting them down: once they are spent, the rest of `buf` is held, undecoded, until a
    /// later call (with an empty `buf` to decode only what is held:
    /// [`Connection::has_held_frames`] says whether anything waits). This is how a caller
    /// bounds the work one peer causes per loop turn, whatever the size of its frames.
    pub fn handle_recv_budgeted<O, F>(
        &mut self,
        now: u32,
        ep: &mut Endpoint,
        out: &mut O,
        buf: &mut [u8],
        frames: &mut u32,
        on: F,
    ) -> Received
    where
        O: Output,
        F: FnMut(AppEvent<'_>, Link<'_, O>),
    {
        self.handle_recv_keeping(now, ep, out, buf, frames, 0, on).0
    }

    /// Bytes the frame that starts `kept` (what [`Connection::handle_recv_keeping`] left) needs
    /// to be whole, header included; 0 while its header is incomplete.
    pub fn kept_whole_bytes(&self, kept: &[u8]) -> usize {
        let mut h = FrameHeader::new(false, OpCode::Continuation, None, 0);
        match FrameHeader::parse_into(kept, &mut h, 7) {
            Ok(n) if n > 0 => {
                usize::try_from(h.payload_len).map_or(usize::MAX, |p| p.saturating_add(n))
            }
            _ => 0,
        }
    }

    /// [`Connection::handle_recv_budgeted`] for a caller that can present the end of `buf`
    /// again, followed by the bytes received next, in one buffer of `keep_max` bytes (0: it
    /// cannot). Returns, with what happened, how many bytes at the end of `buf` it left
    /// unconsumed and unheld for that: an incomplete frame header or control frame, or a
    /// message of one frame that fits `keep_max` bytes with its header but ends beyond `buf`
    /// (which is then handed out in place once whole, instead of being copied piece by piece
    /// into a message buffer). The caller must present them again, first, in the next call,
    /// and may present them alone with `keep_max` 0 when nothing more came (the connection
    /// then holds them, as [`Connection::handle_recv_budgeted`] does).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_recv_keeping<O, F>(
        &mut self,
        now: u32,
        ep: &mut Endpoint,
        out: &mut O,
        buf: &mut [u8],
        frames: &mut u32,
        keep_max: usize,
        mut on: F,
    ) -> (Received, usize)
    where
        O: Output,
        F: FnMut(AppEvent<'_>, Link<'_, O>),
    {
        self.send.last_rx = now;
        let received = match self.send.phase {
            Phase::Open => {
                let mut kept = 0;
                let r = match self
                    .recv_frames(now, ep, out, buf, frames, keep_max, &mut kept, &mut on)
                {
                    None => Received::Done,
                    Some(e) => Received::Failed(e),
                };
                return (r, kept);
            }
            Phase::Handshake if self.send.is_client() => {
                self.send.jitter = ep.idle_jitter();
                self.recv_response(now, ep, out, buf, &mut on)
            }
            Phase::Handshake => {
                self.send.jitter = ep.idle_jitter();
                self.recv_request(now, ep, out, buf)
            }
            Phase::Upgrading => {
                // Frames sent before the answer: held, within the handshake's bound.
                if self.recv.held.len() + buf.len() > ep.settings().handshake_header_bytes_max {
                    self.abort();
                } else {
                    let mut held = self.recv.held.take_frames();
                    held.extend_from_slice(buf);
                    self.recv.held.set_frames(held);
                }
                Received::Done
            }
            // A plain request is answered and the connection closes: what follows is not read.
            Phase::Responding | Phase::Flushing | Phase::Linger | Phase::Closed => Received::Done,
        };
        (received, 0)
    }

    /// Server: answer the upgrade request ([`Received::Upgrade`]) with 101, `protocol` (one the
    /// client offered) and extra `headers`. The connection is open; then call
    /// [`Connection::handle_recv`] with an empty buffer for frames that came with the request.
    pub fn accept_upgrade<O: Output>(
        &mut self,
        now: u32,
        out: &mut O,
        req: &Request,
        protocol: Option<&str>,
        headers: &[(&str, &str)],
    ) {
        if self.send.phase != Phase::Upgrading {
            return;
        }
        out.push_bytes(&accept_response(req, protocol, headers));
        self.send.open(now);
    }

    /// Server: refuse the upgrade request with HTTP `status`, extra `headers` and a text
    /// `body`; the transport ends once that response is flushed.
    pub fn reject_upgrade<O: Output>(
        &mut self,
        now: u32,
        out: &mut O,
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
    ) {
        if self.send.phase != Phase::Upgrading {
            return;
        }
        self.recv.held.clear();
        self.send
            .refuse(now, out, &reject_response(status, headers, body));
    }

    /// Server: answer the plain request ([`Received::Request`]) with `head` (see
    /// [`super::response_head`]) and `body` (empty for `HEAD`); the transport ends once they are
    /// flushed.
    pub fn respond<O: Output>(&mut self, now: u32, out: &mut O, head: &[u8], body: &[u8]) {
        if self.send.phase != Phase::Responding {
            return;
        }
        out.push_bytes(head);
        if !body.is_empty() {
            out.push_bytes(body);
        }
        self.send.end_after_flush(now, Ending::Refused);
    }

    /// The tick at which [`Connection::handle_timeout`] is due next (`None`: no deadline).
    /// Activity only moves deadlines later, so a caller may keep an earlier wake-up and call
    /// `handle_timeout` then: it answers [`Timeout::NotDue`] and this gives the new tick.
    #[inline]
    pub fn poll_timeout(&self, ep: &Endpoint) -> Option<u32> {
        self.send.deadline(ep.settings())
    }

    /// Which deadline [`Connection::poll_timeout`] gives (`None`: no deadline): ask before
    /// [`Connection::handle_timeout`] to learn which one an [`Timeout::Expired`] ended.
    #[inline]
    pub fn deadline_kind(&self, ep: &Endpoint) -> Option<Deadline> {
        self.send.next_deadline(ep.settings()).map(|(_, kind)| kind)
    }

    /// Call when a tick given by [`Connection::poll_timeout`] came (or later): sends the idle
    /// ping, or ends the connection whose handshake, pong or close deadline passed.
    pub fn handle_timeout<O: Output>(
        &mut self,
        now: u32,
        ep: &mut Endpoint,
        out: &mut O,
    ) -> Timeout {
        let s = &mut self.send;
        if s.flags & PING_OUT != 0 && s.last_rx > s.mark {
            s.flags &= !PING_OUT; // something arrived since the ping: alive
        }
        match s.deadline(ep.settings()) {
            Some(at) if now >= at => {}
            _ => return Timeout::NotDue,
        }
        // Nothing received for the idle timeout (or a pong or close deadline): the connection
        // is idle, and gives back its history (dedicated permessage-deflate).
        if let Some(p) = s.pmd_mut() {
            p.on_idle();
        }
        if s.phase == Phase::Open && s.close.can_send() && s.flags & PING_OUT == 0 {
            s.jitter = ep.idle_jitter();
            s.push_idle_ping(now, ep, out);
            return Timeout::Pinged;
        }
        if s.phase != Phase::Linger {
            // Only a lingering connection finished its close handshake: the rest report 1006.
            s.clear_outcome();
        }
        self.finish();
        Timeout::Expired
    }

    /// Call when everything output so far has been handed to the transport (the send queue is
    /// empty and nothing is in flight). Says whether the transport should now close or
    /// half-close; the one place that decides it.
    #[inline]
    pub fn handle_flushed(&mut self) -> AfterFlush {
        if self.send.phase != Phase::Flushing {
            return AfterFlush::Continue;
        }
        self.recv.held.clear();
        if self.send.flags & LINGER != 0 {
            self.send.phase = Phase::Linger;
            AfterFlush::ShutdownWrite
        } else {
            self.finish();
            AfterFlush::Close
        }
    }

    /// Call when the peer closed its side (EOF) or the transport failed: the connection is
    /// finished (a lingering one normally; any other reports 1006 unless a close frame came).
    pub fn handle_eof(&mut self) {
        self.finish();
    }

    /// The transport under the protocol ended the connection itself — TLS: a fatal error (the
    /// caller queued its alert) or the peer's `close_notify` (the caller queues its own): no
    /// frame is sent any more, the connection reports 1006 with `reason` unless a close frame
    /// came first, and the transport ends once the output is flushed, half-closed and
    /// lingering when `linger` (so that the peer reads those last bytes), else closed. A
    /// connection already lingering finishes now; one already flushing keeps its plan.
    pub fn end_transport(&mut self, now: u32, reason: &str, linger: bool) {
        match self.send.phase {
            Phase::Closed | Phase::Flushing => {}
            Phase::Linger => self.finish(),
            Phase::Handshake | Phase::Upgrading | Phase::Responding | Phase::Open => {
                self.recv.held.clear();
                self.send.end_transport(now, reason, linger);
            }
        }
    }

    /// The caller gives up on the connection (a write failed, the shutdown deadline passed):
    /// it is finished.
    pub fn abort(&mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.recv.held.clear();
        self.send.finish();
    }

    /// Frames in the open phase: `buf` in place, after completing any held partial frame; at
    /// most `frames` of them, the rest held.
    #[allow(clippy::too_many_arguments)]
    fn recv_frames<O, F>(
        &mut self,
        now: u32,
        ep: &mut Endpoint,
        out: &mut O,
        buf: &mut [u8],
        frames: &mut u32,
        keep_max: usize,
        kept: &mut usize,
        on: &mut F,
    ) -> Option<ProtocolError>
    where
        O: Output,
        F: FnMut(AppEvent<'_>, Link<'_, O>),
    {
        let mut pos = 0;
        let failed = loop {
            if self.send.phase != Phase::Open {
                break None;
            }
            let Some(held) = self.recv.held.frames() else {
                if pos == buf.len() {
                    break None;
                }
                let rest = &mut buf[pos..];
                let (d, s) = (&mut self.recv.decoder, &mut self.send);
                let r = if s.deflate.is_on() {
                    decode_deflating(d, s, now, ep, out, rest, frames, keep_max, on)
                } else {
                    decode(d, s, now, ep, out, rest, frames, keep_max, on)
                };
                match r {
                    // An incomplete frame at the end, the frame budget not spent: the caller
                    // presents it again with what comes next (it fits: `keep_max` bounds a
                    // kept message, and a header or control frame is far smaller).
                    Ok(c)
                        if c < rest.len()
                            && self.send.phase == Phase::Open
                            && *frames > 0
                            && !self.recv.decoder.received_close()
                            && rest.len() - c < keep_max =>
                    {
                        *kept = rest.len() - c;
                    }
                    Ok(c) if c < rest.len() && self.send.phase == Phase::Open => {
                        self.recv.held.set_frames(rest[c..].to_vec());
                    }
                    Ok(_) => {}
                    Err(e) => break Some(e),
                }
                break None;
            };
            if *frames == 0 {
                // No frame may be decoded any more: everything new waits behind what is held.
                held.extend_from_slice(&buf[pos..]);
                break None;
            }
            // Complete the partial frame held from the previous buffer.
            let old = held.len();
            let take = (buf.len() - pos).min(HELD_FILL);
            held.extend_from_slice(&buf[pos..pos + take]);
            let mut bytes = self.recv.held.take_frames();
            let (d, s) = (&mut self.recv.decoder, &mut self.send);
            let r = if s.deflate.is_on() {
                decode_deflating(d, s, now, ep, out, &mut bytes, frames, 0, on)
            } else {
                decode(d, s, now, ep, out, &mut bytes, frames, 0, on)
            };
            match r {
                // The old bytes and `c - old` new ones are consumed; go on in place.
                Ok(c) if c >= old => pos += c - old,
                Ok(c) => {
                    pos += take;
                    bytes.drain(..c);
                    self.recv.held.set_frames(bytes);
                    if take == 0 {
                        break None;
                    }
                }
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = failed {
            self.recv.held.clear();
            self.send.fail(now, ep, out, e.code, e.reason);
            return Some(e);
        }
        if self.send.phase != Phase::Open {
            self.recv.held.clear();
        }
        if !self.recv.decoder.in_message() {
            self.recv.decoder.shrink(Some(ep.pool()));
        }
        None
    }

    /// Server handshake bytes: hold them until the request is complete, then hand it out.
    fn recv_request<O: Output>(
        &mut self,
        now: u32,
        ep: &Endpoint,
        out: &mut O,
        buf: &[u8],
    ) -> Received {
        let max = ep.settings().handshake_header_bytes_max;
        let (parsed, held) = match self.recv.held.handshake() {
            None => (parse_request(buf, max), false),
            Some((bytes, _)) => {
                bytes.extend_from_slice(buf);
                (parse_request(bytes, max), true)
            }
        };
        match parsed {
            Ok(None) => {
                if !held {
                    self.recv.held.hold_handshake(buf, None);
                }
                Received::Done
            }
            Ok(Some((req, _))) if !req.is_upgrade() => {
                self.recv.held.clear();
                self.send.phase = Phase::Responding;
                Received::Request(Box::new(req))
            }
            Ok(Some((req, n))) => {
                let rest = if held {
                    let mut bytes = self.recv.held.take_handshake();
                    bytes.drain(..n);
                    bytes
                } else {
                    buf[n..].to_vec()
                };
                self.recv.held.set_frames(rest);
                self.send.phase = Phase::Upgrading;
                Received::Upgrade(Box::new(req))
            }
            Err(e) => {
                self.recv.held.clear();
                self.send.refuse(now, out, &e.response());
                Received::Refused(e)
            }
        }
    }

    /// Client handshake bytes: wait for the whole response, check it, open.
    fn recv_response<O, F>(
        &mut self,
        now: u32,
        ep: &mut Endpoint,
        out: &mut O,
        buf: &mut [u8],
        on: &mut F,
    ) -> Received
    where
        O: Output,
        F: FnMut(AppEvent<'_>, Link<'_, O>),
    {
        let max = ep.settings().handshake_header_bytes_max;
        let Some((bytes, key)) = self.recv.held.handshake() else {
            return Received::Done;
        };
        bytes.extend_from_slice(buf);
        let offered = self.send.deflate.is_offered();
        let parsed = parse_response_with(bytes, key.unwrap_or_default(), max, offered);
        let parsed = match parsed {
            Ok(Some((resp, n))) if offered => {
                let values = resp
                    .headers()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("Sec-WebSocket-Extensions"))
                    .map(|(_, v)| v);
                match client_accept(values) {
                    Ok(agreed) => {
                        self.send.deflate = Terms::default();
                        if let Some(a) = agreed {
                            self.send.deflate = Terms::new(&a);
                            self.send.set_pmd(ep.deflate.conn_state(&a));
                            self.recv.decoder.set_permessage_deflate(true);
                        }
                        Ok(Some((resp, n)))
                    }
                    Err(e) => Err(HandshakeError::new(502, e.0)),
                }
            }
            other => other,
        };
        match parsed {
            Ok(None) => Received::Done,
            Ok(Some((_resp, n))) => {
                let mut rest = self.recv.held.take_handshake();
                rest.drain(..n);
                self.send.open(now);
                let link = Link {
                    half: &mut self.send,
                    ep,
                    out,
                    now,
                };
                on(AppEvent::Opened, link);
                let (mut unlimited, mut kept) = (u32::MAX, 0);
                match self.recv_frames(now, ep, out, &mut rest, &mut unlimited, 0, &mut kept, on) {
                    None => Received::Done,
                    Some(e) => Received::Failed(e),
                }
            }
            Err(e) => {
                self.send.set_outcome(Outcome {
                    code: Some(CloseCode::ABNORMAL),
                    reason: format!("handshake failed: {} {}", e.status, e.reason),
                });
                self.finish();
                Received::Refused(e)
            }
        }
    }
}
