//! Fuzz target bodies over `percore::proto`. They never panic on any input; the asserts are the
//! properties checked. `engine/tests/proto_fuzz_corpus.rs` runs them over the seed corpus
//! without cargo-fuzz.

use core::ops::ControlFlow;

#[path = "connection.rs"]
mod connection;
pub use connection::connection;

use percore::proto::{
    accept_response, parse_close_payload, parse_request, parse_response, response_head, Decoder,
    Event, FrameHeader, Limits, ProtocolError, Role, MAX_CONTROL_PAYLOAD_LEN, MAX_HEADER_LEN,
};

/// Key used for the client-side response check.
const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Server and client handshake parsers over arbitrary bytes. The first byte picks the header
/// limit, the rest is the request (or response).
pub fn handshake(data: &[u8]) {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let limit = match sel % 4 {
        0 => 8 << 10,
        1 => 256,
        2 => 64,
        _ => usize::from(sel),
    };
    match parse_request(input, limit) {
        Ok(Some((req, n))) if req.is_upgrade() => {
            assert!(n <= input.len() && n <= limit);
            assert_eq!(req.method(), "GET");
            assert!(req.path().starts_with('/'));
            assert!(!req.host().is_empty() && !req.key().is_empty());
            let _ = (req.query(), req.origin());
            let _ = req.headers().count();
            let chosen = req.protocols().next();
            let resp = accept_response(&req, chosen, &[("X-Fuzz", "1")]);
            assert!(resp.starts_with(b"HTTP/1.1 101 "));
            assert!(resp.ends_with(b"\r\n\r\n"));
        }
        Ok(Some((req, n))) => {
            // A plain request: GET or HEAD, no body, nothing WebSocket about it.
            assert!(n <= input.len() && n <= limit);
            assert!(matches!(req.method(), "GET" | "HEAD"), "{req:?}");
            assert!(req.path().starts_with('/'));
            assert!(req.key().is_empty() && req.header("Sec-WebSocket-Key").is_none());
            let _ = (req.query(), req.host(), req.origin());
            let head = response_head(200, &[("X-Fuzz", "1")], Some(0));
            assert!(head.starts_with(b"HTTP/1.1 200 ") && head.ends_with(b"\r\n\r\n"));
        }
        Ok(None) => assert!(input.len() < limit),
        Err(e) => {
            assert!(
                matches!(e.status, 400 | 405 | 411 | 413 | 426 | 431),
                "{e:?}"
            );
            assert!(e.response().starts_with(b"HTTP/1.1 4"));
        }
    }
    match parse_response(input, CLIENT_KEY, limit) {
        Ok(Some((resp, n))) => {
            assert!(n <= input.len());
            assert_eq!(resp.status(), 101);
            let _ = resp.protocol();
        }
        Ok(None) => assert!(input.len() < limit),
        Err(_) => {}
    }
}

/// An owned event, for comparing decodes.
#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

fn owned(e: Event<'_>) -> Ev {
    match e {
        Event::Text(t) => Ev::Text(t.to_owned()),
        Event::Binary(b) => Ev::Binary(b.to_vec()),
        Event::Ping(b) => Ev::Ping(b.to_vec()),
        Event::Pong(b) => Ev::Pong(b.to_vec()),
        Event::Close(c) => Ev::Close(c.code.map(|c| c.0), c.reason.to_owned()),
        // A new kind of event must be taught to the properties below first.
        other => panic!("event not covered by the fuzz properties: {other:?}"),
    }
}

/// Feed `stream` to a fresh decoder in pieces ending at `cuts`, keeping the unconsumed tail as
/// a driver does.
fn run(
    role: Role,
    limits: Limits,
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<Ev>, Option<ProtocolError>) {
    let mut dec = Decoder::new(role, limits);
    let mut events = Vec::new();
    let mut pending = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(core::iter::once(&stream.len())) {
        let end = end.clamp(start, stream.len());
        pending.extend_from_slice(&stream[start..end]);
        start = end;
        match dec.decode(&mut pending, |e| {
            events.push(owned(e));
            ControlFlow::Continue(())
        }) {
            Ok(n) => {
                assert!(n <= pending.len());
                pending.drain(..n);
                if dec.received_close() {
                    break;
                }
                assert!(pending.len() <= MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD_LEN);
            }
            Err(e) => return (events, Some(e)),
        }
    }
    assert!(dec.buffered_bytes() <= limits.message_bytes_max);
    dec.shrink();
    (events, None)
}

/// The decoder over arbitrary bytes, both roles. Byte 0 picks limits, bytes 1-2 a split point;
/// the stream decoded whole and decoded in two pieces must give the same events and the same
/// error code.
pub fn decode_frames(data: &[u8]) {
    let [sel, s0, s1, stream @ ..] = data else {
        return;
    };
    let limits = match sel & 3 {
        0 => Limits::default(),
        1 => Limits::new(64, 100),
        2 => Limits::new(0, 0),
        _ => Limits::new(1 << 10, 4 << 10),
    };
    let cut = usize::from(u16::from_le_bytes([*s0, *s1])) % (stream.len() + 1);
    for role in [Role::Server, Role::Client] {
        let whole = run(role, limits, stream, &[]);
        let split = run(role, limits, stream, &[cut]);
        assert_eq!(whole.0, split.0, "events differ, cut {cut}");
        assert_eq!(
            whole.1.map(|e| e.code),
            split.1.map(|e| e.code),
            "errors differ, cut {cut}"
        );
        if let Some(e) = whole.1 {
            assert!(matches!(e.code.0, 1002 | 1007 | 1009), "{e:?}");
        }
        let bytewise: Vec<usize> = if stream.len() <= 64 {
            (0..stream.len()).collect()
        } else {
            Vec::new()
        };
        let one_by_one = run(role, limits, stream, &bytewise);
        assert_eq!(whole.0, one_by_one.0, "byte-by-byte events differ");
    }
    if let Ok(Some((h, n))) = FrameHeader::parse(stream) {
        let mut out = [0u8; MAX_HEADER_LEN];
        let m = h.encode(&mut out);
        assert!(m <= n);
        assert_eq!(FrameHeader::parse(&out[..m]), Ok(Some((h, m))));
    }
    if let Ok(frame) = parse_close_payload(stream) {
        if let Some(code) = frame.code {
            assert!(code.is_valid_on_wire());
        }
    }
}

/// permessage-deflate over arbitrary bytes. Byte 0 picks the server's mode and a split point;
/// the input up to the first `\n` is a `Sec-WebSocket-Extensions` value, the rest compressed
/// data. Checked: the server's negotiation never panics and answers only offers it can keep;
/// the client's check of the same value never panics; the rest, sent as a compressed message
/// on a connection that negotiated, either arrives (inflated within the message limit) or fails
/// the connection with 1002, 1007 or 1009; the inflater alone never writes past its limit.
pub fn permessage_deflate(data: &[u8]) {
    use percore::proto::deflate::{client_accept, Inflater, Window};
    use percore::proto::{
        deflate::encode_compressed, AppEvent, Compression, Connection, Endpoint, MaskRng, OpCode,
        Received, Settings,
    };
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (header, payload) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let header = String::from_utf8_lossy(header).replace('\r', "");
    let _ = client_accept(core::iter::once(header.as_str()));
    let limit = [64usize, 1000, 100_000][usize::from(sel >> 2) % 3];

    let mut inflater = Inflater::new();
    let mut out = Vec::new();
    let mut window = Window::new(9 + (sel & 3) * 2);
    for w in [None, Some(&mut window)] {
        if inflater.inflate(payload, w, limit, &mut out).is_ok() {
            assert!(out.len() <= limit);
        }
        assert!(out.capacity() <= limit.max(256) + 1, "{}", out.capacity());
    }

    let mut settings = Settings::default();
    settings.limits.message_bytes_max = limit;
    settings.deflate.mode = if sel & 1 == 0 {
        Compression::Shared
    } else {
        Compression::Dedicated
    };
    let mut ep = Endpoint::with_rng(settings, MaskRng::from_seed([5; 32]));
    let mut conn = Connection::server(0);
    let mut req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {CLIENT_KEY}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: {header}\r\n\r\n"
    )
    .into_bytes();
    let mut wire = Vec::new();
    let Received::Upgrade(r) = conn.handle_recv(0, &mut ep, &mut wire, &mut req, |_, _| {}) else {
        return; // the header made the request invalid (e.g. a NUL): a 4xx, fine
    };
    let answer = match conn.negotiate_deflate(&mut ep, &r) {
        Err(e) => {
            assert_eq!(e.status, 400);
            return;
        }
        Ok(None) => return,
        Ok(Some(a)) => a,
    };
    assert!(answer.starts_with("permessage-deflate"), "{answer}");
    assert!(conn.is_deflating());
    conn.accept_upgrade(0, &mut wire, &r, None, &[]);
    let mut frame = Vec::new();
    encode_compressed(&mut frame, OpCode::Binary, payload, Some([1, 2, 3, 4]));
    let mut got = 0;
    match conn.handle_recv(1, &mut ep, &mut wire, &mut frame, |ev, _| {
        if let AppEvent::Message(m) = ev {
            assert!(m.as_bytes().len() <= limit);
            got += 1;
        }
    }) {
        Received::Done => assert_eq!(got, 1),
        Received::Failed(e) => assert!(matches!(e.code.0, 1002 | 1007 | 1009), "{e:?}"),
        other => panic!("{other:?}"),
    }
}
