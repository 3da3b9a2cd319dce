//! Message assembly: frames in, whole messages and control frames out (RFC 6455 §5.4, §5.5).

use core::ops::ControlFlow;

use super::close::{parse_close_payload, CloseFrame};
use super::error::ProtocolError;
use super::frame::{FrameHeader, OpCode, Role};
use super::pool::BufPool;
use percore_simd::{validate_utf8, Utf8Validator};

/// Receive-side limits. Defaults: `frame_bytes_max` = 16 MiB, `message_bytes_max` = 16 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest accepted frame payload; a larger declared length is 1009 before any payload byte
    /// is read. Costs nothing by itself: a frame split across reads is buffered up to this size.
    pub frame_bytes_max: usize,
    /// Largest accepted message (sum of its fragments); beyond it 1009. This is the most memory
    /// one connection's partial message can hold: with 100k connections, size it so that the
    /// connections expected to be mid-message at once fit in RAM.
    pub message_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(16 << 20, 16 << 20)
    }
}

impl Limits {
    /// Limits of `frame_bytes_max` per frame payload and `message_bytes_max` per message.
    pub const fn new(frame_bytes_max: usize, message_bytes_max: usize) -> Self {
        Self {
            frame_bytes_max,
            message_bytes_max,
        }
    }
}

/// What [`Decoder::decode`] hands out. Payloads borrow the caller's buffer (single complete
/// frames) or the decoder's message buffer (fragmented or split messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A complete, UTF-8-validated text message.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping; the caller answers with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A valid close frame. Decoding stops after it.
    Close(CloseFrame<'a>),
    /// A complete permessage-deflate message (RSV1 on its first frame; only when
    /// [`Decoder::set_permessage_deflate`] allows it), still compressed: inflate it (see
    /// [`super::deflate::Inflater`]); text must be checked for UTF-8 once inflated.
    Compressed {
        /// A text message (else binary).
        text: bool,
        /// The compressed payload, without the `00 00 FF FF` trailer.
        data: &'a [u8],
    },
}

/// Kind of the data message being assembled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MsgKind {
    None,
    Text,
    Binary,
}

/// Decoder life cycle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Active,
    Closed,
    Failed,
}

/// Incremental, in-place frame decoder and message assembler for one connection.
///
/// Idle, it is a few words and owns no heap memory (see [`Decoder::shrink`]); the state of a
/// fragmented or split message lives in a box allocated the first time one arrives.
#[derive(Debug)]
pub struct Decoder {
    state: DecodeState,
    limits: Limits,
}

/// A [`Decoder`] without its limits: what a connection keeps (16 bytes) when the limits are
/// the same for many connections and passed in with each call ([`super::Connection`]).
#[derive(Debug)]
pub(crate) struct DecodeState {
    /// State of the message being assembled; `None` until one is fragmented or split.
    partial: Option<Box<Partial>>,
    status: Status,
    role: Role,
    /// RSV bits an extension defines: 4 once permessage-deflate is negotiated, else 0.
    rsv: u8,
}

/// A data message that did not arrive as one whole frame in one buffer.
#[derive(Debug)]
struct Partial {
    /// Fragments so far, or the received part of a split frame.
    msg: Vec<u8>,
    /// Payload bytes of the current data frame not yet received.
    frame_remaining: u64,
    utf8: Utf8Validator,
    /// Masking key of the current data frame.
    frame_mask: Option<[u8; 4]>,
    /// Key index of the next payload byte of the current data frame (0..=3).
    frame_key_offset: u8,
    /// A data frame's header was consumed and its payload is still streaming in.
    in_frame: bool,
    /// The current data frame is the last of its message.
    frame_fin: bool,
    /// The message is compressed (RSV1 on its first frame): its bytes are assembled as they
    /// are and checked once inflated.
    compressed: bool,
    /// `MsgKind::None` when no message is in progress (the box is kept for reuse).
    kind: MsgKind,
}

impl Partial {
    fn new() -> Self {
        Self {
            msg: Vec::new(),
            frame_remaining: 0,
            utf8: Utf8Validator::new(),
            frame_mask: None,
            frame_key_offset: 0,
            in_frame: false,
            frame_fin: false,
            compressed: false,
            kind: MsgKind::None,
        }
    }

    /// Unmask, check and append the next bytes of the current frame; returns how many of
    /// `buf` belong to it.
    fn stream(
        &mut self,
        buf: &mut [u8],
        pool: Option<&mut BufPool>,
    ) -> Result<usize, ProtocolError> {
        let take = usize::try_from(self.frame_remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let need = self.msg.len() + take;
        if need > self.msg.capacity() {
            // Hold at most what is needed: the rest of this frame, but never more than four
            // times what arrived (the header's length is not trusted with memory in advance).
            // Sized by that rather than by what arrived, so that a message that will not fit
            // a small buffer goes to a pooled one at once, and a large one grows by four
            // times, not two: each growth copies what is held (a 1 MiB message read 64 KiB at
            // a time is copied 1.25 times instead of 1.6).
            let frame_end = (self.msg.len() as u64).saturating_add(self.frame_remaining);
            let want = (frame_end.min(need as u64 * 4) as usize).max(need);
            match pool.filter(|_| want >= BufPool::LARGE) {
                Some(pool) => {
                    let mut bigger = pool.take(want);
                    bigger.extend_from_slice(&self.msg);
                    pool.give(core::mem::replace(&mut self.msg, bigger));
                }
                None => self.msg.reserve(want - self.msg.len()),
            }
        }
        let chunk = &mut buf[..take];
        if let Some(key) = self.frame_mask {
            percore_simd::unmask(chunk, key, usize::from(self.frame_key_offset));
            self.frame_key_offset = ((usize::from(self.frame_key_offset) + take) & 3) as u8;
        }
        if self.kind == MsgKind::Text && !self.compressed {
            self.utf8
                .feed(chunk)
                .map_err(|_| ProtocolError::invalid_utf8("text is not UTF-8"))?;
        }
        self.msg.extend_from_slice(chunk);
        self.frame_remaining -= take as u64;
        if self.frame_remaining == 0 {
            self.in_frame = false;
        }
        Ok(take)
    }

    /// The last fragment arrived: hand out the assembled message and reset for the next one.
    fn deliver<F>(&mut self, on_event: &mut F) -> Result<ControlFlow<()>, ProtocolError>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        let kind = core::mem::replace(&mut self.kind, MsgKind::None);
        let flow = if self.compressed {
            on_event(Event::Compressed {
                text: kind == MsgKind::Text,
                data: &self.msg,
            })
        } else if kind == MsgKind::Text {
            self.utf8
                .finish()
                .map_err(|_| ProtocolError::invalid_utf8("text ends inside a UTF-8 sequence"))?;
            // The streaming check already passed every byte; this second, SIMD pass only turns
            // the bytes into a `&str` without `unsafe` (fragmented or split messages only).
            let text = validate_utf8(&self.msg)
                .map_err(|_| ProtocolError::invalid_utf8("text is not UTF-8"))?;
            on_event(Event::Text(text))
        } else {
            on_event(Event::Binary(&self.msg))
        };
        self.msg.clear();
        Ok(flow)
    }
}

impl Decoder {
    /// No heap allocation until a fragmented or split message needs one.
    pub fn new(role: Role, limits: Limits) -> Self {
        Self {
            state: DecodeState::new(role),
            limits,
        }
    }

    /// Decode `buf` in place (unmasking it). Calls `on_event` for each complete message and each
    /// control frame; the callback returns `ControlFlow::Break(())` to stop early.
    ///
    /// Returns the number of bytes consumed. The unconsumed tail is only ever a partial frame
    /// header or a partial control frame (at most `MAX_HEADER_LEN + 125` bytes), or frames after
    /// an early `Break`; the caller presents it again, followed by new bytes, on the next call.
    /// A data frame whose payload ends beyond `buf` is consumed: its bytes are unmasked and
    /// appended to an internal message buffer, and text is UTF-8-checked as it streams in (fail
    /// fast, 1007 as soon as bytes can no longer be valid).
    ///
    /// Zero copy: a single-frame message lying entirely in `buf` is handed out borrowed from
    /// `buf`. Server role: unmasked client frame -> 1002. Client role: masked server frame ->
    /// 1002. Continuation without a started message, or a new data frame inside a fragmented
    /// message -> 1002. Frame > frame_bytes_max or message > message_bytes_max -> 1009.
    ///
    /// After a Close event, decode stops (returns); later calls consume nothing and return
    /// `Ok(0)`. After an error the connection must be failed; later calls return an error.
    pub fn decode<F>(&mut self, buf: &mut [u8], on_event: F) -> Result<usize, ProtocolError>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        let mut frames = u32::MAX;
        self.state
            .decode(&self.limits, None, &mut frames, 0, buf, on_event)
    }

    /// Bytes currently held for a partial message (for memory accounting).
    pub fn buffered_bytes(&self) -> usize {
        self.state.buffered_bytes()
    }

    /// Heap bytes held: the message buffer's capacity plus its bookkeeping box (for memory
    /// accounting). Zero for a decoder that never saw a split message, or after [`shrink`].
    ///
    /// [`shrink`]: Decoder::shrink
    pub fn heap_bytes(&self) -> usize {
        self.state.heap_bytes()
    }

    /// Release the internal message buffer if no message is in progress (idle connections hold
    /// none).
    pub fn shrink(&mut self) {
        self.state.shrink(None);
    }

    /// Is a data message partly received (fragments or part of a frame held)?
    pub fn in_message(&self) -> bool {
        self.state.in_message()
    }

    /// Did decoding stop at a close frame?
    pub fn received_close(&self) -> bool {
        self.state.received_close()
    }

    /// The role this decoder was built for.
    pub fn role(&self) -> Role {
        self.state.role()
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Accept RSV1 on the first frame of a data message (permessage-deflate was negotiated)
    /// and hand such messages out as [`Event::Compressed`]. RSV1 on a continuation or control
    /// frame stays 1002, and so does RSV1 when this is off (the default).
    pub fn set_permessage_deflate(&mut self, on: bool) {
        self.state.set_permessage_deflate(on);
    }
}

impl DecodeState {
    /// No heap allocation until a fragmented or split message needs one.
    pub(crate) fn new(role: Role) -> Self {
        Self {
            partial: None,
            status: Status::Active,
            role,
            rsv: 0,
        }
    }

    /// See [`Decoder::set_permessage_deflate`].
    pub(crate) fn set_permessage_deflate(&mut self, on: bool) {
        self.rsv = if on { 4 } else { 0 };
    }

    /// See [`Decoder::decode`]. Message buffers of [`BufPool::LARGE`] bytes and more come from
    /// and go back to `pool` (without one they are allocated and freed). Decodes at most `frames` frames (counting them down) and leaves
    /// the rest of `buf` unconsumed when it runs out.
    ///
    /// `keep_max` (0: never) is the size of a buffer in which the caller can present the
    /// unconsumed tail of `buf` again followed by more bytes: a message of one frame that
    /// starts in `buf` but ends beyond it, and whose header and payload fit in `keep_max`
    /// bytes, is then left unconsumed (header included) instead of being assembled, so that it
    /// can be handed out in place once it is whole.
    #[inline]
    pub(crate) fn decode<F>(
        &mut self,
        limits: &Limits,
        mut pool: Option<&mut BufPool>,
        frames: &mut u32,
        keep_max: usize,
        buf: &mut [u8],
        mut on_event: F,
    ) -> Result<usize, ProtocolError>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        match self.status {
            Status::Active => {}
            Status::Closed => return Ok(0),
            Status::Failed => {
                return Err(ProtocolError::protocol(
                    "decoder used after a protocol error",
                ))
            }
        }
        let r = self.decode_frames(
            limits,
            pool.as_deref_mut(),
            frames,
            keep_max,
            buf,
            &mut on_event,
        );
        if r.is_err() {
            self.status = Status::Failed;
            self.release(pool);
        }
        r
    }

    /// Bytes currently held for a partial message (for memory accounting).
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.msg.len())
    }

    /// Heap bytes held: the message buffer's capacity plus its bookkeeping box (for memory
    /// accounting). Zero for a decoder that never saw a split message, or after [`shrink`].
    ///
    /// [`shrink`]: Decoder::shrink
    pub(crate) fn heap_bytes(&self) -> usize {
        self.partial
            .as_ref()
            .map_or(0, |p| core::mem::size_of::<Partial>() + p.msg.capacity())
    }

    /// Release the internal message buffer (to `pool` if it came from there) if no message is
    /// in progress (idle connections hold none).
    pub(crate) fn shrink(&mut self, pool: Option<&mut BufPool>) {
        if !self.in_message() {
            self.release(pool);
        }
    }

    /// Drop the message state, whatever it holds (the connection is over); its buffer goes to
    /// `pool` if it came from there.
    pub(crate) fn release(&mut self, pool: Option<&mut BufPool>) {
        if let (Some(p), Some(pool)) = (self.partial.take(), pool) {
            pool.give(p.msg);
        }
    }

    /// Is a data message partly received (fragments or part of a frame held)?
    pub(crate) fn in_message(&self) -> bool {
        self.partial
            .as_ref()
            .is_some_and(|p| p.kind != MsgKind::None)
    }

    /// Did decoding stop at a close frame?
    pub(crate) fn received_close(&self) -> bool {
        self.status == Status::Closed
    }

    /// The role this decoder was built for.
    pub(crate) fn role(&self) -> Role {
        self.role
    }

    fn decode_frames<F>(
        &mut self,
        limits: &Limits,
        mut pool: Option<&mut BufPool>,
        frames: &mut u32,
        keep_max: usize,
        buf: &mut [u8],
        on_event: &mut F,
    ) -> Result<usize, ProtocolError>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        let mut pos = 0usize;
        loop {
            if let Some(p) = self.partial.as_deref_mut().filter(|p| p.in_frame) {
                pos += p.stream(&mut buf[pos..], pool.as_deref_mut())?;
                if p.in_frame {
                    return Ok(pos); // `buf` is used up
                }
                if p.frame_fin && p.deliver(on_event)?.is_break() {
                    return Ok(pos);
                }
                continue;
            }

            if *frames == 0 {
                return Ok(pos); // the caller's budget of frames is spent
            }
            let mut h = FrameHeader::new(false, OpCode::Continuation, None, 0);
            let n = FrameHeader::parse_into(&buf[pos..], &mut h, self.rsv)?;
            if n == 0 {
                return Ok(pos);
            }
            if h.rsv != 0 {
                // RSV1 (permessage-deflate): only on the first frame of a data message.
                if h.opcode.is_control() {
                    return Err(ProtocolError::protocol("RSV1 set on a control frame"));
                }
                if h.opcode == OpCode::Continuation {
                    return Err(ProtocolError::protocol("RSV1 set on a continuation frame"));
                }
            }
            match (self.role, h.mask.is_some()) {
                (Role::Server, false) => {
                    return Err(ProtocolError::protocol("unmasked frame from a client"))
                }
                (Role::Client, true) => {
                    return Err(ProtocolError::protocol("masked frame from a server"))
                }
                _ => {}
            }
            // `body` <= buf.len(), and payloads are checked against what is left of `buf`
            // before they are added to it, so these sums cannot overflow.
            let body = pos + n;

            if h.opcode.is_control() {
                // `parse` guarantees payload_len <= 125.
                let end = body + h.payload_len as usize;
                if end > buf.len() {
                    return Ok(pos);
                }
                let payload = &mut buf[body..end];
                if let Some(key) = h.mask {
                    percore_simd::unmask(payload, key, 0);
                }
                pos = end;
                *frames -= 1;
                let payload = &*payload;
                let flow = match h.opcode {
                    OpCode::Ping => on_event(Event::Ping(payload)),
                    OpCode::Pong => on_event(Event::Pong(payload)),
                    _ => {
                        let frame = parse_close_payload(payload)?;
                        self.status = Status::Closed;
                        self.release(pool);
                        let _ = on_event(Event::Close(frame));
                        return Ok(pos);
                    }
                };
                if flow.is_break() {
                    return Ok(pos);
                }
                continue;
            }

            if h.payload_len > limits.frame_bytes_max as u64 {
                return Err(ProtocolError::too_big("frame larger than frame_bytes_max"));
            }
            let (current, held) = match self.partial.as_deref() {
                Some(p) => (p.kind, p.msg.len() as u64),
                None => (MsgKind::None, 0),
            };
            let kind = match (h.opcode, current) {
                (OpCode::Continuation, MsgKind::None) => {
                    return Err(ProtocolError::protocol(
                        "continuation frame without a message in progress",
                    ))
                }
                (OpCode::Continuation, k) => k,
                (_, MsgKind::Text | MsgKind::Binary) => {
                    return Err(ProtocolError::protocol(
                        "new data frame inside a fragmented message",
                    ))
                }
                (OpCode::Text, MsgKind::None) => MsgKind::Text,
                (_, MsgKind::None) => MsgKind::Binary,
            };
            if held + h.payload_len > limits.message_bytes_max as u64 {
                return Err(ProtocolError::too_big(
                    "message larger than message_bytes_max",
                ));
            }

            if h.fin && current == MsgKind::None && h.payload_len <= (buf.len() - body) as u64 {
                // Zero copy: the whole message is this frame, and it is all in `buf`.
                let end = body + h.payload_len as usize;
                let payload = &mut buf[body..end];
                if let Some(key) = h.mask {
                    percore_simd::unmask(payload, key, 0);
                }
                pos = end;
                *frames -= 1;
                let payload = &*payload;
                let flow = if h.rsv != 0 {
                    on_event(Event::Compressed {
                        text: kind == MsgKind::Text,
                        data: payload,
                    })
                } else if kind == MsgKind::Text {
                    let text = validate_utf8(payload)
                        .map_err(|_| ProtocolError::invalid_utf8("text is not UTF-8"))?;
                    on_event(Event::Text(text))
                } else {
                    on_event(Event::Binary(payload))
                };
                if flow.is_break() {
                    return Ok(pos);
                }
                continue;
            }

            if h.fin && current == MsgKind::None && (n as u64) + h.payload_len <= keep_max as u64 {
                // Split, but the caller can present it again with the rest: left whole.
                return Ok(pos);
            }

            // Fragmented or split: stream the payload into the message buffer.
            let p = self.partial.get_or_insert_with(|| Box::new(Partial::new()));
            if p.kind == MsgKind::None {
                p.kind = kind;
                p.compressed = h.rsv != 0;
                p.utf8.reset();
            }
            p.in_frame = true;
            p.frame_fin = h.fin;
            p.frame_remaining = h.payload_len;
            p.frame_mask = h.mask;
            p.frame_key_offset = 0;
            pos = body;
            *frames -= 1;
        }
    }
}
