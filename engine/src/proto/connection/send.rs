//! The send half's behaviour: what the application may send, the close handshake from our
//! side, the deadline table, and how the transport ends.

use std::sync::Arc;

use crate::proto::close::CloseFrame;
use crate::proto::close::{CloseState, SharedClose};
use crate::proto::close_code::CloseCode;
use crate::proto::deflate::{encode_compressed, ConnDeflate, Terms};
use crate::proto::endpoint::{idle_ping_payload, Endpoint, Settings};
use crate::proto::frame::{
    encode_frame, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD_LEN, MAX_HEADER_LEN,
};
use crate::proto::message::Message;
use crate::proto::output::Output;

/// Which deadline [`super::Connection::poll_timeout`] gives
/// ([`super::Connection::deadline_kind`]): what [`super::Connection::handle_timeout`] does
/// when it passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deadline {
    /// The upgrade request (and its answer) must be complete: expiry ends the connection.
    Handshake,
    /// Nothing received for the idle timeout: expiry sends a ping.
    Idle,
    /// The answer to an idle ping: expiry ends the connection.
    Pong,
    /// The close handshake (or the flush and half-close before the end): expiry ends the
    /// connection.
    Close,
}

/// Append `msg` as one frame to `v`: compressed (RSV1) when permessage-deflate is on, the
/// message reaches the threshold and compression pays off; else as it is.
#[inline(always)]
fn frame_message(
    v: &mut Vec<u8>,
    msg: Message<'_>,
    mask: Option<[u8; 4]>,
    half: &mut SendHalf,
    ep: &mut Endpoint,
) {
    if half.deflate.is_on() && frame_compressed(v, msg, mask, half, ep) {
        return;
    }
    encode_frame(v, msg.opcode(), true, msg.as_bytes(), mask);
}

/// [`frame_message`] with permessage-deflate on: `false` when `msg` goes out as it is.
#[cold]
#[inline(never)]
fn frame_compressed(
    v: &mut Vec<u8>,
    msg: Message<'_>,
    mask: Option<[u8; 4]>,
    half: &mut SendHalf,
    ep: &mut Endpoint,
) -> bool {
    let payload = msg.as_bytes();
    let (z, st) = ep.deflate_parts();
    if payload.len() < st.threshold_bytes {
        return false;
    }
    match z.compress(half.deflate, half.pmd_mut(), st, payload) {
        Some(c) => {
            encode_compressed(v, msg.opcode(), c, mask);
            true
        }
        None => false,
    }
}

/// How a connection ended, as `on_close` reports it.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) code: Option<CloseCode>,
    pub(super) reason: String,
}

/// Why a connection stops talking (decides how its transport ends, see `end_after_flush`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Ending {
    /// Close frames went both ways.
    CloseHandshake,
    /// We failed the connection (protocol error, limit, internal error).
    Failed,
    /// We answered the handshake with HTTP and close: a refused upgrade (an HTTP error) or
    /// the response to a plain request.
    Refused,
}

/// The send half: phase, close handshake, keepalive clock and close outcome.
#[derive(Debug)]
pub struct SendHalf {
    /// The close outcome and the dedicated permessage-deflate state: both rare, behind one
    /// pointer (a second one would make the slab entry 8 bytes larger for every connection).
    pub(super) cold: Option<Box<Cold>>,
    /// Tick of the last received bytes.
    pub(super) last_rx: u32,
    /// Tick the current phase (or the outstanding ping) started.
    pub(super) mark: u32,
    pub(super) close: CloseState,
    pub(super) phase: Phase,
    pub(super) flags: u8,
    /// permessage-deflate terms (0: not negotiated).
    pub(super) deflate: Terms,
    /// Ticks taken off the next idle deadline ([`Settings::idle_jitter_ticks`]); fits in the
    /// struct's padding.
    pub(super) jitter: u16,
}

/// What a connection rarely holds, allocated when the first of them is set.
#[derive(Debug, Default)]
pub(super) struct Cold {
    /// How the connection ended (for `close_outcome`), once known.
    outcome: Option<Outcome>,
    /// Dedicated permessage-deflate state (the peer's window, ours); `None` for a
    /// connection without compression or with shared terms.
    pmd: Option<ConnDeflate>,
}

/// Where a connection stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Phase {
    /// Reading the upgrade request (server) or its response (client).
    Handshake,
    /// Server: the request was handed out; waiting for `accept_upgrade` or `reject_upgrade`.
    Upgrading,
    /// Server: a plain HTTP request was handed out; waiting for `respond`.
    Responding,
    /// Open: data flows (or, per the close state, we wait for the peer's close frame).
    Open,
    /// Done talking: the output is flushed, then the transport closes or half-closes.
    Flushing,
    /// Half-closed: input is discarded until the peer's EOF or the close timeout.
    Linger,
    /// Finished.
    Closed,
}

/// The client role: frames are masked, the server's must not be.
pub(super) const CLIENT: u8 = 1;
/// The connection opened (a client's also reports its end when it never opened).
pub(super) const OPENED: u8 = 2;
/// An idle ping is outstanding: nothing arrived since `mark`.
pub(super) const PING_OUT: u8 = 4;
/// After the flush, half-close and linger instead of closing.
pub(super) const LINGER: u8 = 8;

impl SendHalf {
    /// How the connection ended, once known.
    #[inline]
    pub(super) fn outcome(&self) -> Option<&Outcome> {
        self.cold.as_ref().and_then(|c| c.outcome.as_ref())
    }

    /// Record how the connection ended (replacing what was recorded).
    pub(super) fn set_outcome(&mut self, o: Outcome) {
        self.cold.get_or_insert_with(Box::default).outcome = Some(o);
    }

    /// Forget the outcome (the connection reports 1006).
    pub(super) fn clear_outcome(&mut self) {
        if let Some(c) = self.cold.as_mut() {
            c.outcome = None;
        }
        self.drop_cold_if_empty();
    }

    /// The dedicated permessage-deflate state, if any.
    #[inline]
    pub(super) fn pmd_mut(&mut self) -> Option<&mut ConnDeflate> {
        self.cold.as_mut().and_then(|c| c.pmd.as_mut())
    }

    /// Set (or drop) the dedicated permessage-deflate state.
    pub(super) fn set_pmd(&mut self, pmd: Option<Box<ConnDeflate>>) {
        match pmd {
            Some(p) => self.cold.get_or_insert_with(Box::default).pmd = Some(*p),
            None => {
                if let Some(c) = self.cold.as_mut() {
                    c.pmd = None;
                }
                self.drop_cold_if_empty();
            }
        }
    }

    fn drop_cold_if_empty(&mut self) {
        if self
            .cold
            .as_ref()
            .is_some_and(|c| c.outcome.is_none() && c.pmd.is_none())
        {
            self.cold = None;
        }
    }

    /// May the application send data or pings (open, and no close frame sent or received)?
    #[inline]
    pub fn can_send(&self) -> bool {
        self.phase == Phase::Open && self.close.can_send()
    }

    /// Is this the client end (its frames are masked)?
    #[inline]
    pub fn is_client(&self) -> bool {
        self.flags & CLIENT != 0
    }

    /// Queue a data message. `false` (nothing queued) when the connection cannot send.
    #[inline]
    pub fn send_message<O: Output>(
        &mut self,
        ep: &mut Endpoint,
        out: &mut O,
        msg: Message<'_>,
    ) -> bool {
        if !self.can_send() {
            return false;
        }
        // The one place a message becomes a frame (compressed there, with permessage-deflate:
        // deciding it inside the framing call keeps this path as short as without).
        if !self.is_client() && !self.deflate.is_on() {
            // Unmasked and uncompressed: the payload goes out as it is, maybe without a copy.
            let payload = msg.as_bytes();
            let mut h = [0u8; MAX_HEADER_LEN];
            let n = FrameHeader::new(true, msg.opcode(), None, payload.len() as u64).encode(&mut h);
            out.push_frame_parts(&h[..n], payload);
            return true;
        }
        let mask = self.is_client().then(|| ep.mask());
        out.push_frame(msg.as_bytes().len() + MAX_HEADER_LEN, |v| {
            frame_message(v, msg, mask, self, ep)
        });
        true
    }

    /// permessage-deflate: the frame to queue instead of the shared (unmasked) `frame` for
    /// this connection, compressed once per shard while `frame` is delivered; `None`: queue
    /// `frame` itself. Call [`Endpoint::end_delivery`] once `frame` is delivered.
    #[inline]
    pub fn deflated_variant(&mut self, ep: &mut Endpoint, frame: &Arc<[u8]>) -> Option<Arc<[u8]>> {
        if !self.deflate.is_on() {
            return None;
        }
        let st = ep.settings().deflate;
        ep.deflate
            .shared_variant(self.deflate, self.pmd_mut(), &st, frame)
    }

    /// Heap bytes of this connection's compression state (0 without dedicated terms): its
    /// windows and the box that holds it (shared with the close outcome).
    pub fn deflate_heap_bytes(&self) -> usize {
        self.cold
            .as_ref()
            .and_then(|c| c.pmd.as_ref())
            .map_or(0, |p| {
                p.heap_bytes() + core::mem::size_of::<Cold>() - core::mem::size_of::<ConnDeflate>()
            })
    }

    /// Queue a ping (payload truncated to 125 bytes). `false` when the connection cannot send.
    pub fn send_ping<O: Output>(&mut self, ep: &mut Endpoint, out: &mut O, payload: &[u8]) -> bool {
        if !self.can_send() {
            return false;
        }
        let p = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD_LEN)];
        self.push_control(ep, out, OpCode::Ping, p);
        true
    }

    /// Queue an encoded, unmasked (server) frame shared with other connections. `false` when
    /// the connection cannot send, or is a client (whose frames must each be masked).
    #[inline]
    pub fn send_shared<O: Output>(&mut self, out: &mut O, frame: &Arc<[u8]>) -> bool {
        if !self.can_send() || self.is_client() {
            return false;
        }
        out.push_shared(frame);
        true
    }

    /// Start the close handshake with `code` and `reason` (truncated to 123 bytes). Nothing
    /// more can be sent; the connection ends when the peer answers or the close timeout passes.
    pub fn close<O: Output>(
        &mut self,
        now: u32,
        ep: &mut Endpoint,
        out: &mut O,
        code: CloseCode,
        reason: &str,
    ) {
        if self.phase != Phase::Open {
            return;
        }
        if let Some((p, n)) = self.close.initiate(code, reason) {
            self.push_control(ep, out, OpCode::Close, &p[..n]);
            self.mark = now;
        }
    }

    /// [`SendHalf::close`] with a close frame encoded once for many connections: a server
    /// connection queues a reference to `close`'s bytes instead of encoding its own copy; a
    /// client, whose frames are each masked, encodes its own.
    pub fn close_shared<O: Output>(
        &mut self,
        now: u32,
        ep: &mut Endpoint,
        out: &mut O,
        close: &SharedClose,
    ) {
        if self.is_client() {
            self.close(now, ep, out, close.code(), close.reason());
            return;
        }
        if self.phase != Phase::Open {
            return;
        }
        if self.close.initiate(close.code(), close.reason()).is_some() {
            out.push_shared_control(close.frame());
            self.mark = now;
        }
    }

    /// Fail the connection (RFC 6455 §7.1.7) with `code`: a protocol error, a limit (slow
    /// consumer), an internal error (a handler panicked). Queues a close frame if none was sent,
    /// then the transport ends after the flush without waiting for the peer's close frame.
    pub fn fail<O: Output>(
        &mut self,
        now: u32,
        ep: &mut Endpoint,
        out: &mut O,
        code: CloseCode,
        reason: &str,
    ) {
        if self.phase != Phase::Open {
            return;
        }
        if let Some((p, n)) = self.close.fail(code, reason) {
            self.push_control(ep, out, OpCode::Close, &p[..n]);
        }
        if self.outcome().is_none() {
            self.set_outcome(Outcome {
                code: Some(code),
                reason: reason.to_owned(),
            });
        }
        self.end_after_flush(now, Ending::Failed);
    }

    /// The next deadline: the whole deadline table.
    #[inline]
    pub(super) fn deadline(&self, st: &Settings) -> Option<u32> {
        self.next_deadline(st).map(|(at, _)| at)
    }

    /// The next deadline and which one it is.
    pub(super) fn next_deadline(&self, st: &Settings) -> Option<(u32, Deadline)> {
        let after = |t: u32, ticks: u32, kind| Some((t.saturating_add(ticks), kind));
        match self.phase {
            Phase::Handshake | Phase::Upgrading | Phase::Responding => {
                after(self.mark, st.handshake_timeout_ticks, Deadline::Handshake)
            }
            Phase::Open if !self.close.can_send() => {
                after(self.mark, st.close_timeout_ticks, Deadline::Close)
            }
            Phase::Open if self.flags & PING_OUT != 0 && self.last_rx <= self.mark => {
                after(self.mark, st.pong_timeout_ticks, Deadline::Pong)
            }
            Phase::Open if st.idle_timeout_ticks > 0 => after(
                self.last_rx,
                st.idle_timeout_ticks
                    .saturating_sub(u32::from(self.jitter))
                    .max(1),
                Deadline::Idle,
            ),
            Phase::Open | Phase::Closed => None,
            Phase::Flushing | Phase::Linger => {
                after(self.mark, st.close_timeout_ticks, Deadline::Close)
            }
        }
    }

    pub(super) fn open(&mut self, now: u32) {
        self.phase = Phase::Open;
        self.flags |= OPENED;
        self.mark = now;
    }

    pub(super) fn finish(&mut self) {
        if self.flags & (CLIENT | OPENED) == CLIENT && self.outcome().is_none() {
            self.set_outcome(Outcome {
                code: Some(CloseCode::ABNORMAL),
                reason: "handshake did not complete".to_owned(),
            });
        }
        self.phase = Phase::Closed;
        self.set_pmd(None);
    }

    /// Queue a control frame (masked on the client side).
    pub(super) fn push_control<O: Output>(
        &mut self,
        ep: &mut Endpoint,
        out: &mut O,
        op: OpCode,
        p: &[u8],
    ) {
        let mask = self.is_client().then(|| ep.mask());
        out.push_control(p.len() + MAX_HEADER_LEN, |v| {
            encode_frame(v, op, true, p, mask)
        });
    }

    /// Queue the idle ping: its payload is the tick it was sent at (`mark`, which the pong must
    /// give back for the round trip to count) and the endpoint's fine clock, 4 bytes each
    /// ([`idle_ping_payload`]). A server connection queues a reference to the frame its shard
    /// encoded for this tick ([`Endpoint::idle_ping`]): a burst of pings allocates no frame
    /// buffer per connection. A client's frames are each masked: it encodes its own.
    pub(super) fn push_idle_ping<O: Output>(&mut self, now: u32, ep: &mut Endpoint, out: &mut O) {
        self.flags |= PING_OUT;
        self.mark = now;
        if self.is_client() {
            let p = idle_ping_payload(now, ep.clock_us());
            self.push_control(ep, out, OpCode::Ping, &p);
        } else {
            out.push_shared_control(ep.idle_ping(now));
        }
    }

    /// Answer a ping with its payload: an empty one on a server connection with the shard's
    /// one encoded empty pong ([`Endpoint::empty_pong`]), else a frame of its own.
    #[inline]
    pub(super) fn push_pong<O: Output>(&mut self, ep: &mut Endpoint, out: &mut O, p: &[u8]) {
        if p.is_empty() && !self.is_client() {
            out.push_shared_control(ep.empty_pong());
        } else {
            self.push_control(ep, out, OpCode::Pong, p);
        }
    }

    /// A pong arrived: it ends the wait for one. The round trip in the fine clock's
    /// microseconds when it answers the outstanding idle ping (same payload), else `None`.
    #[inline]
    pub(super) fn on_pong(&mut self, ep: &Endpoint, p: &[u8]) -> Option<u32> {
        let outstanding = self.flags & PING_OUT != 0;
        self.flags &= !PING_OUT;
        let (tick, sent) = p.split_first_chunk::<4>()?;
        let sent: &[u8; 4] = sent.try_into().ok()?;
        if !outstanding || u32::from_be_bytes(*tick) != self.mark {
            return None;
        }
        Some(ep.clock_us().wrapping_sub(u32::from_be_bytes(*sent)))
    }

    pub(super) fn on_close_frame<O: Output>(
        &mut self,
        now: u32,
        ep: &mut Endpoint,
        out: &mut O,
        frame: &CloseFrame<'_>,
    ) {
        if self.outcome().is_none() {
            self.set_outcome(Outcome {
                code: frame.code,
                reason: frame.reason.to_owned(),
            });
        }
        if let Some((p, n)) = self.close.on_received(frame) {
            self.push_control(ep, out, OpCode::Close, &p[..n]);
        }
        self.end_after_flush(now, Ending::CloseHandshake);
    }

    /// See [`super::Connection::end_transport`].
    pub(super) fn end_transport(&mut self, now: u32, reason: &str, linger: bool) {
        if self.outcome().is_none() {
            self.set_outcome(Outcome {
                code: Some(CloseCode::ABNORMAL),
                reason: reason.to_owned(),
            });
        }
        self.phase = Phase::Flushing;
        if linger {
            self.flags |= LINGER;
        } else {
            self.flags &= !LINGER;
        }
        self.mark = now;
    }

    /// Answer the handshake with an HTTP error and end after it.
    pub(super) fn refuse<O: Output>(&mut self, now: u32, out: &mut O, response: &[u8]) {
        out.push_bytes(response);
        self.end_after_flush(now, Ending::Refused);
    }

    /// Stop talking: the transport ends once the output is flushed ([`AfterFlush`]). How it
    /// ends is decided here and nowhere else:
    /// - a close handshake that went both ways: the server closes the transport first (RFC 6455
    ///   §7.1.1); a client half-closes and waits for the server's FIN;
    /// - a failed connection or a refused handshake: half-close and linger on both sides, so
    ///   the peer reads our last bytes (closing with unread input sends RST, which may destroy
    ///   them); the close timeout bounds the wait.
    pub(super) fn end_after_flush(&mut self, now: u32, ending: Ending) {
        let linger = match ending {
            Ending::CloseHandshake => self.is_client(),
            Ending::Failed | Ending::Refused => true,
        };
        self.phase = Phase::Flushing;
        if linger {
            self.flags |= LINGER;
        }
        self.mark = now;
    }
}
