//! Decoded events to the application: the decode loop of a connection without
//! permessage-deflate, its copy with it (a compressed message inflated by the shard's inflater),
//! and the delivery of a data message.

use super::event::{AppEvent, Link};
use super::send::{Phase, SendHalf};
use crate::proto::codec::{DecodeState, Event};
use crate::proto::deflate::InflateError;
use crate::proto::endpoint::Endpoint;
use crate::proto::error::ProtocolError;
use crate::proto::message::Message;
use crate::proto::output::Output;

/// Run the decoder over `buf` (at most `frames` frames), handing events to `on`. Returns the
/// bytes consumed (a message of one frame split at the end of `buf` that fits `keep_max`
/// bytes is left unconsumed: see `DecodeState::decode`). The connection has no permessage-deflate (its decoder never hands out a
/// compressed message): [`decode_deflating`] is the copy for one that has.
#[allow(clippy::too_many_arguments)]
pub(super) fn decode<O, F>(
    decoder: &mut DecodeState,
    half: &mut SendHalf,
    now: u32,
    ep: &mut Endpoint,
    out: &mut O,
    buf: &mut [u8],
    frames: &mut u32,
    keep_max: usize,
    on: &mut F,
) -> Result<usize, ProtocolError>
where
    O: Output,
    F: FnMut(AppEvent<'_>, Link<'_, O>),
{
    use core::ops::ControlFlow;
    let limits = ep.settings().limits;
    // The events lend `ep` to the application: the pool is out meanwhile.
    let mut pool = ep.take_pool();
    let r = decoder.decode(&limits, pool.as_deref_mut(), frames, keep_max, buf, |ev| {
        match ev {
            Event::Text(s) => deliver(half, now, ep, out, Message::Text(s), on),
            Event::Binary(b) => deliver(half, now, ep, out, Message::Binary(b), on),
            Event::Ping(p) => {
                if half.can_send() {
                    half.push_pong(ep, out, p);
                    on(AppEvent::Ping(p), Link { half, ep, out, now });
                }
            }
            // Any input proves the peer alive; a pong ends the wait for one at once.
            Event::Pong(p) => {
                if let Some(micros) = half.on_pong(ep, p) {
                    on(AppEvent::Rtt { micros }, Link { half, ep, out, now });
                }
            }
            Event::Close(frame) => {
                half.on_close_frame(now, ep, out, &frame);
                return ControlFlow::Break(());
            }
            Event::Compressed { .. } => {}
        }
        flow(half)
    });
    ep.restore_pool(pool);
    r
}

/// [`decode`] for a connection with permessage-deflate: a compressed message is inflated
/// into the shard's buffer, lent for its delivery.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
pub(super) fn decode_deflating<O, F>(
    decoder: &mut DecodeState,
    half: &mut SendHalf,
    now: u32,
    ep: &mut Endpoint,
    out: &mut O,
    buf: &mut [u8],
    frames: &mut u32,
    keep_max: usize,
    on: &mut F,
) -> Result<usize, ProtocolError>
where
    O: Output,
    F: FnMut(AppEvent<'_>, Link<'_, O>),
{
    use core::ops::ControlFlow;
    let limits = ep.settings().limits;
    let mut failed = None;
    // The events lend `ep` to the application: the pool is out meanwhile.
    let mut pool = ep.take_pool();
    let r = decoder.decode(&limits, pool.as_deref_mut(), frames, keep_max, buf, |ev| {
        let mut inflated = Vec::new();
        let msg = match ev {
            Event::Text(s) => Message::Text(s),
            Event::Binary(b) => Message::Binary(b),
            Event::Compressed { text, data } => {
                match inflate(half, ep, text, data, limits.message_bytes_max) {
                    Ok(b) => inflated = b,
                    Err(e) => {
                        failed = Some(e);
                        return ControlFlow::Break(());
                    }
                }
                if text {
                    // `inflate` checked it: this only makes the `&str`.
                    match percore_simd::validate_utf8(&inflated) {
                        Ok(s) => Message::Text(s),
                        Err(_) => return ControlFlow::Break(()),
                    }
                } else {
                    Message::Binary(&inflated)
                }
            }
            Event::Ping(p) => {
                if half.can_send() {
                    half.push_pong(ep, out, p);
                    on(AppEvent::Ping(p), Link { half, ep, out, now });
                }
                return flow(half);
            }
            // Any input proves the peer alive; a pong ends the wait for one at once.
            Event::Pong(p) => {
                if let Some(micros) = half.on_pong(ep, p) {
                    on(AppEvent::Rtt { micros }, Link { half, ep, out, now });
                }
                return flow(half);
            }
            Event::Close(frame) => {
                half.on_close_frame(now, ep, out, &frame);
                return ControlFlow::Break(());
            }
        };
        deliver(half, now, ep, out, msg, on);
        if inflated.capacity() != 0 {
            ep.deflate.restore(inflated);
        }
        flow(half)
    });
    ep.restore_pool(pool);
    match failed {
        Some(e) => Err(e),
        None => r,
    }
}

/// Go on decoding while the connection is open.
#[inline(always)]
fn flow(half: &SendHalf) -> core::ops::ControlFlow<()> {
    if half.phase == Phase::Open {
        core::ops::ControlFlow::Continue(())
    } else {
        core::ops::ControlFlow::Break(())
    }
}

/// A whole compressed message: inflate it with the shard's inflater (bounded by `limit`) into
/// the shard's buffer (returned: give it back with `ShardDeflate::restore`), text checked.
#[cold]
#[inline(never)]
fn inflate(
    half: &mut SendHalf,
    ep: &mut Endpoint,
    text: bool,
    data: &[u8],
    limit: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let (buf, r) = ep.deflate.inflate(data, half.pmd_mut(), limit);
    let e = match r {
        Ok(()) if !text || percore_simd::validate_utf8(&buf).is_ok() => return Ok(buf),
        Ok(()) => ProtocolError::invalid_utf8("text is not UTF-8"),
        Err(InflateError::TooBig) => {
            ProtocolError::too_big("inflated message larger than message_bytes_max")
        }
        Err(_) => ProtocolError::invalid_utf8("invalid compressed data"),
    };
    ep.deflate.restore(buf);
    Err(e)
}

/// A data message arrived: hand it out unless our close frame went first (§7.1.2 leaves data
/// that still arrives unread).
#[inline]
fn deliver<O, F>(
    half: &mut SendHalf,
    now: u32,
    ep: &mut Endpoint,
    out: &mut O,
    msg: Message<'_>,
    on: &mut F,
) where
    O: Output,
    F: FnMut(AppEvent<'_>, Link<'_, O>),
{
    if half.phase == Phase::Open && half.close.accepts_data() {
        on(AppEvent::Message(msg), Link { half, ep, out, now });
    }
}
