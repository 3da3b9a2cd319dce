//! The client side of the WebSocket protocol, as the load generator needs it: the upgrade
//! request and response check, masked frame encoding and a decoder for server frames, with
//! permessage-deflate when asked for (`--deflate`).

use std::ops::ControlFlow;

use percore::proto::deflate::{self, Agreed, Compressor, Inflater, Window};

/// A received server frame, as far as the load generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text or binary message (inflated, if it came compressed).
    Data(&'a [u8]),
    /// A ping with its payload (answer with a pong).
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame.
    Close,
}

/// Frame kinds the load generator sends.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Binary data message.
    Binary,
    /// Pong answering a ping.
    Pong,
    /// Close frame (answering the server's).
    Close,
}

/// A protocol violation by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolViolation;

/// A new random `Sec-WebSocket-Key` and the upgrade request carrying it (offering
/// permessage-deflate when `deflate`).
pub fn handshake_request(host: &str, path: &str, deflate: bool) -> (Vec<u8>, String) {
    let key = percore::proto::generate_key();
    let ext = [("Sec-WebSocket-Extensions", deflate::client_offer())];
    let headers: &[(&str, &str)] = if deflate { &ext } else { &[] };
    let req = percore::proto::client_request(host, path, &key, &[], headers);
    (req, key)
}

/// Check the server's upgrade response: Ok(None) = incomplete, Ok(Some((n, terms))) = valid
/// 101 occupying `buf[..n]` (bytes after it are frames) with the permessage-deflate terms it
/// agreed to, Err = rejected or malformed, or (`deflate`) compression declined or badly
/// answered.
pub fn handshake_response(
    buf: &[u8],
    key: &str,
    deflate: bool,
) -> Result<Option<(usize, Option<Agreed>)>, ProtocolViolation> {
    match percore::proto::parse_response_with(buf, key, 16 << 10, deflate) {
        Ok(Some((resp, n))) if deflate => {
            let values = resp
                .headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case("Sec-WebSocket-Extensions"))
                .map(|(_, v)| v);
            match deflate::client_accept(values) {
                Ok(Some(a)) => Ok(Some((n, Some(a)))),
                _ => Err(ProtocolViolation),
            }
        }
        Ok(Some((_resp, n))) => Ok(Some((n, None))),
        Ok(None) => Ok(None),
        Err(_) => Err(ProtocolViolation),
    }
}

/// What one thread's connections share to inflate: the decompressor and the buffer messages are
/// inflated into.
#[derive(Default)]
pub struct ThreadInflate {
    inflater: Option<Inflater>,
    inflated: Vec<u8>,
}

/// What one thread's connections share to compress: compressors without context takeover (one
/// per window size) and the buffer a message is compressed into.
#[derive(Default)]
pub struct ThreadDeflate {
    shared: [Option<Compressor>; 8],
    scratch: Vec<u8>,
}

/// One connection's compression: the agreed terms and, with context takeover, its own
/// compressor.
pub struct ConnDeflate {
    agreed: Agreed,
    compressor: Option<Compressor>,
}

impl ConnDeflate {
    /// The state for `agreed` terms.
    pub fn new(agreed: Agreed) -> Box<Self> {
        let compressor = (!agreed.local_no_context_takeover)
            .then(|| Compressor::new(LEVEL, agreed.local_max_window_bits, 8));
        Box::new(Self { agreed, compressor })
    }
}

/// The level the load generator compresses at (zlib's default, as browsers and most clients).
const LEVEL: u8 = 6;

/// Append one complete masked frame to `out`; a binary message goes compressed when `z` is
/// given (its terms decide which compressor).
pub fn encode(
    out: &mut Vec<u8>,
    op: Op,
    payload: &[u8],
    mask: [u8; 4],
    z: Option<(&mut ConnDeflate, &mut ThreadDeflate)>,
) {
    let opcode = match op {
        Op::Binary => percore::proto::OpCode::Binary,
        Op::Pong => percore::proto::OpCode::Pong,
        Op::Close => percore::proto::OpCode::Close,
    };
    if let (Op::Binary, Some((c, t))) = (op, z) {
        t.scratch.clear();
        let ok = match c.compressor.as_mut() {
            Some(own) => own.compress(payload, &mut t.scratch).is_ok(),
            None => {
                let bits = c.agreed.local_max_window_bits;
                let i = usize::from(bits.clamp(8, 15) - 8);
                let shared = t.shared[i].get_or_insert_with(|| Compressor::new(LEVEL, bits, 8));
                let ok = shared.compress(payload, &mut t.scratch).is_ok();
                shared.reset();
                ok
            }
        };
        if ok {
            deflate::encode_compressed(out, opcode, &t.scratch, Some(mask));
            return;
        }
    }
    percore::proto::encode_frame(out, opcode, true, payload, Some(mask));
}

/// Decoder for frames sent by a server (unmasked), reassembling fragmented messages and
/// inflating compressed ones.
pub struct Decoder {
    inner: percore::proto::Decoder,
    /// The server's history, when it compresses with context takeover.
    window: Option<Window>,
    limit: usize,
}

impl Decoder {
    /// A decoder accepting messages up to `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        let limits = percore::proto::Limits::new(max_message_bytes, max_message_bytes);
        Decoder {
            inner: percore::proto::Decoder::new(percore::proto::Role::Client, limits),
            window: None,
            limit: max_message_bytes,
        }
    }

    /// Accept compressed messages under `agreed` terms.
    pub fn enable_deflate(&mut self, agreed: &Agreed) {
        self.inner.set_permessage_deflate(true);
        if !agreed.remote_no_context_takeover {
            self.window = Some(Window::new(agreed.remote_max_window_bits));
        }
    }

    /// Decode `buf` in place; call `f` for every event. Returns the bytes consumed; the caller
    /// presents the unconsumed tail again, followed by new bytes, on the next call.
    pub fn decode<F>(
        &mut self,
        buf: &mut [u8],
        z: &mut ThreadInflate,
        mut f: F,
    ) -> Result<usize, ProtocolViolation>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        use percore::proto::Event as E;
        let Decoder {
            inner,
            window,
            limit,
        } = self;
        let mut bad = false;
        let r = inner
            .decode(buf, |ev| match ev {
                E::Text(s) => f(Event::Data(s.as_bytes())),
                E::Binary(b) => f(Event::Data(b)),
                E::Ping(p) => f(Event::Ping(p)),
                E::Pong(_) => f(Event::Pong),
                E::Close(_) => f(Event::Close),
                E::Compressed { data, .. } => {
                    let inflater = z.inflater.get_or_insert_with(Inflater::new);
                    match inflater.inflate(data, window.as_mut(), *limit, &mut z.inflated) {
                        Ok(()) => f(Event::Data(&z.inflated)),
                        Err(_) => {
                            bad = true;
                            ControlFlow::Break(())
                        }
                    }
                }
                _ => ControlFlow::Continue(()),
            })
            .map_err(|_| ProtocolViolation);
        if bad {
            return Err(ProtocolViolation);
        }
        r
    }
}
