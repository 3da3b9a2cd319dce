//! The `connection` target: one `proto::Connection` (server or client end) driven by an
//! arbitrary sequence of events, the way a shard drives it: bytes received (raw, or well-formed
//! masked frames cut in pieces), time passing and deadlines, the application's answers to the
//! handshake, its sends and closes, flushes, EOF, aborts.
//!
//! Properties checked after every event:
//! - nothing panics;
//! - everything the connection outputs is well formed for its peer: the handshake's HTTP text
//!   first, then frames that the peer's decoder accepts, nothing after a close frame;
//! - a finished connection stays finished and outputs nothing more;
//! - after a receive without a frame budget, an open connection holds no more than the
//!   handshake and frame bounds allow (everything else is decoded);
//! - at the end, with no more input, the deadlines finish every connection that has any.

use core::ops::ControlFlow;

use percore::proto::{
    accept_key, client_request, response_head, AfterFlush, AppEvent, CloseCode, Connection,
    Decoder, Endpoint, Event, Limits, MaskRng, Message, OpCode, Received, Role, Settings, Timeout,
    MAX_CONTROL_PAYLOAD_LEN, MAX_HEADER_LEN,
};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const UPGRADE: &[u8] = b"GET /chat?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: p1, p2\r\n\r\n";
const PLAIN: &[u8] = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n";

/// A cursor over the fuzz input; reads past the end give zeros (and end the event loop).
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
}

/// The connection under test, its endpoint, its output and the peer's view of that output.
struct Harness {
    conn: Connection,
    ep: Endpoint,
    out: Vec<u8>,
    now: u32,
    role: Role,
    /// Output bytes checked so far.
    checked: usize,
    /// Where frames start in `out` (after the handshake's HTTP text), once known.
    frames_from: Option<usize>,
    /// The peer's decoder over our frames.
    peer: Decoder,
    /// The peer saw our close frame.
    close_seen: bool,
    /// An upgrade request or plain request waits for the application's answer.
    pending_upgrade: Option<Box<percore::proto::Request>>,
    pending_request: bool,
    finished: bool,
}

fn settings(sel: u8) -> Settings {
    let mut s = Settings::default();
    s.limits = match sel & 3 {
        0 => Limits::default(),
        1 => Limits::new(64, 100),
        2 => Limits::new(0, 0),
        _ => Limits::new(1 << 10, 4 << 10),
    };
    s.handshake_header_bytes_max = if sel & 4 != 0 { 512 } else { 8 << 10 };
    s.handshake_timeout_ticks = 50;
    s.idle_timeout_ticks = if sel & 8 != 0 { 0 } else { 100 };
    s.pong_timeout_ticks = 30;
    s.close_timeout_ticks = 20;
    s.buffer_pool_bytes_max = if sel & 16 != 0 { 0 } else { 64 << 10 };
    s
}

impl Harness {
    fn new(sel: u8) -> Self {
        let ep = Endpoint::with_rng(settings(sel), MaskRng::from_seed([7; 32]));
        let mut out = Vec::new();
        let role = if sel & 32 != 0 {
            Role::Client
        } else {
            Role::Server
        };
        let conn = match role {
            Role::Server => Connection::server(0),
            Role::Client => {
                let req = client_request("a", "/", KEY, &[], &[]);
                Connection::client(0, &mut out, KEY, &req)
            }
        };
        let peer = match role {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        };
        let checked = out.len();
        Self {
            conn,
            ep,
            out,
            now: 0,
            role,
            checked,
            frames_from: None,
            peer: Decoder::new(peer, Limits::new(usize::MAX, usize::MAX)),
            close_seen: false,
            pending_upgrade: None,
            pending_request: false,
            finished: false,
        }
    }

    /// Feed received bytes, with a frame budget (`None`: unlimited).
    fn recv(&mut self, bytes: &[u8], budget: Option<u32>) {
        let mut buf = bytes.to_vec();
        let mut frames = budget.unwrap_or(u32::MAX);
        let now = self.now;
        let mut opened = false;
        let r = self.conn.handle_recv_budgeted(
            now,
            &mut self.ep,
            &mut self.out,
            &mut buf,
            &mut frames,
            |ev, link| match ev {
                // An echoing application: every message goes back, text stays text.
                AppEvent::Message(m) => {
                    let copy: Vec<u8> = m.as_bytes().to_vec();
                    let msg = match m {
                        Message::Text(_) => Message::Text(core::str::from_utf8(&copy).unwrap()),
                        _ => Message::Binary(&copy),
                    };
                    link.half.send_message(link.ep, link.out, msg);
                }
                AppEvent::Ping(p) => assert!(p.len() <= MAX_CONTROL_PAYLOAD_LEN),
                AppEvent::Opened => opened = true,
                _ => {}
            },
        );
        if let Some(b) = budget {
            assert!(frames <= b);
        }
        match r {
            Received::Upgrade(req) => {
                assert_eq!(self.role, Role::Server);
                assert!(self.conn.is_upgrading());
                self.pending_upgrade = Some(req);
            }
            Received::Request(_) => {
                assert_eq!(self.role, Role::Server);
                self.pending_request = true;
            }
            Received::Failed(e) => {
                assert!(matches!(e.code.0, 1002 | 1007 | 1009), "{e:?}");
            }
            Received::Refused(e) => {
                if self.role == Role::Server {
                    assert!(
                        matches!(e.status, 400 | 405 | 411 | 413 | 426 | 431),
                        "{e:?}"
                    );
                } else {
                    assert!(self.conn.is_finished());
                }
            }
            _ => {}
        }
        if opened {
            assert_eq!(self.role, Role::Client);
            assert!(self.frames_from.is_none(), "opened twice");
            self.frames_from = Some(self.checked);
        }
        if budget.is_none() && self.conn.is_open() {
            // Without a budget everything held is decoded but a partial header or control
            // frame (what a spent budget held may stay in a connection that stopped reading,
            // until it finishes).
            let s = *self.ep.settings();
            let bound = s.handshake_header_bytes_max
                + s.limits.message_bytes_max
                + s.limits.frame_bytes_max
                + 2 * (MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD_LEN + 160);
            assert!(
                self.conn.held_bytes() <= bound,
                "held {} > {bound}",
                self.conn.held_bytes()
            );
        }
    }

    /// Check the output appended since the last check, as the peer would read it.
    fn check_output(&mut self) {
        if self.finished {
            assert_eq!(self.checked, self.out.len(), "output after the end");
        }
        if self.checked == self.out.len() {
            return;
        }
        let from = match self.frames_from {
            Some(f) => f.max(self.checked),
            None => {
                // Handshake text: a request (client) or a response (server), whole.
                let text = &self.out[self.checked..];
                match self.role {
                    Role::Server => assert!(text.starts_with(b"HTTP/1.1 "), "{text:?}"),
                    Role::Client => unreachable!("a client writes only its request"),
                }
                self.checked = self.out.len();
                return;
            }
        };
        assert!(!self.close_seen, "frames after our close frame");
        let mut bytes = self.out[from..].to_vec();
        let mut close = false;
        let consumed = self
            .peer
            .decode(&mut bytes, |e| {
                if let Event::Close(_) = e {
                    close = true;
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })
            .unwrap_or_else(|e| panic!("our own output fails the peer's decoder: {e:?}"));
        if close {
            self.close_seen = true;
            assert_eq!(consumed, bytes.len(), "bytes after our close frame");
        } else {
            // Every output call appends whole frames.
            assert_eq!(consumed, bytes.len(), "a partial frame in the output");
        }
        self.checked = self.out.len();
    }

    fn flushed(&mut self) {
        self.check_output();
        match self.conn.handle_flushed() {
            AfterFlush::Close => assert!(self.conn.is_finished()),
            AfterFlush::ShutdownWrite => assert!(!self.conn.is_finished()),
            _ => {}
        }
    }

    fn advance(&mut self, ticks: u32) {
        self.now = self.now.saturating_add(ticks);
        if let Some(at) = self.conn.poll_timeout(&self.ep) {
            if self.now >= at {
                let t = self
                    .conn
                    .handle_timeout(self.now, &mut self.ep, &mut self.out);
                if t == Timeout::Expired {
                    assert!(self.conn.is_finished());
                }
            }
        }
    }

    fn after_event(&mut self) {
        self.check_output();
        if self.finished {
            assert!(self.conn.is_finished(), "a finished connection came back");
        }
        if self.conn.is_finished() {
            self.finished = true;
            self.pending_upgrade = None;
            self.pending_request = false;
            self.conn.release_buffers(&mut self.ep);
            assert_eq!(self.conn.held_bytes(), 0);
        }
    }
}

/// A masked (from a client) or unmasked (from a server) frame with any opcode bits.
fn frame(h: &Harness, inp: &mut Input<'_>) -> Vec<u8> {
    let b0 = inp.byte();
    let len_sel = inp.byte();
    let len = match len_sel {
        0..=200 => usize::from(len_sel),
        201..=250 => usize::from(len_sel - 200) * 100,
        251..=253 => 70_000,
        _ => 130,
    };
    let fill = inp.byte();
    let have = inp.bytes(len.min(64)).to_vec();
    let mut payload = have;
    payload.resize(len, fill);
    let masked = h.role == Role::Server;
    let mask = if masked {
        Some([inp.byte(), inp.byte(), 0x5a, 0xa5])
    } else {
        None
    };
    let opcode = match b0 & 7 {
        0 => OpCode::Continuation,
        1 | 5 => OpCode::Text,
        2 => OpCode::Binary,
        3 => OpCode::Close,
        4 => OpCode::Ping,
        _ => OpCode::Pong,
    };
    let mut v = Vec::with_capacity(len + MAX_HEADER_LEN);
    percore::proto::encode_frame(&mut v, opcode, b0 & 0x80 == 0, &payload, mask);
    if b0 & 0x40 != 0 {
        v[0] |= 0x40; // RSV1 without an extension
    }
    if b0 & 0x08 != 0 && opcode == OpCode::Close && v.len() > 2 + 4 + 1 {
        // A close payload of odd length or a bad code, through the mask.
        v.truncate(v.len() - 1);
        let l = v[1] & 0x7f;
        if l < 126 {
            v[1] = (v[1] & 0x80) | (l - 1);
        }
    }
    v
}

/// The `connection` target body: byte 0 picks the settings and the role, the rest is events.
pub fn connection(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new(sel);
    let mut inp = Input { data: rest };
    let mut steps = 0;
    while !inp.data.is_empty() && steps < 256 {
        steps += 1;
        let op = inp.byte();
        match op % 14 {
            // Raw bytes, with or without a frame budget.
            0 | 1 => {
                let n = usize::from(inp.byte());
                let budget = (op & 0x10 != 0).then(|| u32::from(op >> 5));
                let bytes = inp.bytes(n).to_vec();
                h.recv(&bytes, budget);
            }
            // A generated frame, cut in pieces of `k` bytes.
            2 | 3 => {
                let v = frame(&h, &mut inp);
                let k = usize::from(inp.byte()).max(1) * if op & 0x80 != 0 { 512 } else { 1 };
                let budget = (op & 0x10 != 0).then(|| u32::from(op >> 5 & 3));
                for piece in v.chunks(k) {
                    h.recv(piece, budget);
                    if h.conn.is_finished() {
                        break;
                    }
                }
            }
            // The handshake: a valid upgrade request (server) or 101 response (client), or a
            // plain request; cut at a point, maybe with bytes after it.
            4 => {
                let cut = usize::from(inp.byte());
                let whole: Vec<u8> = match h.role {
                    Role::Server if op & 0x80 != 0 => PLAIN.to_vec(),
                    Role::Server => UPGRADE.to_vec(),
                    Role::Client => {
                        let accept = accept_key(KEY);
                        let mut r = response_head(
                            101,
                            &[
                                ("Upgrade", "websocket"),
                                ("Connection", "Upgrade"),
                                ("Sec-WebSocket-Accept", accept.as_str()),
                            ],
                            None,
                        );
                        if op & 0x40 != 0 {
                            r.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
                        }
                        r
                    }
                };
                let cut = cut % (whole.len() + 1);
                h.recv(&whole[..cut], None);
                h.after_event();
                h.recv(&whole[cut..], None);
            }
            // Time passes; a due deadline is handled.
            5 => {
                let t = u32::from(inp.byte());
                h.advance(t);
            }
            // A timeout call whether due or not.
            6 => {
                let now = h.now;
                let t = h.conn.handle_timeout(now, &mut h.ep, &mut h.out);
                if t == Timeout::Expired {
                    assert!(h.conn.is_finished());
                }
            }
            // The application answers the handshake.
            7 => {
                let now = h.now;
                if let Some(req) = h.pending_upgrade.take() {
                    if op & 0x80 == 0 {
                        let proto = req.protocols().next().map(str::to_owned);
                        h.conn
                            .accept_upgrade(now, &mut h.out, &req, proto.as_deref(), &[]);
                        h.check_output();
                        h.frames_from = Some(h.out.len());
                        // Frames that came with the request.
                        h.recv(&[], None);
                    } else {
                        h.conn.reject_upgrade(now, &mut h.out, 403, &[], "no");
                    }
                } else if h.pending_request {
                    h.pending_request = false;
                    let head = response_head(404, &[], Some(3));
                    h.conn.respond(now, &mut h.out, &head, b"no\n");
                } else {
                    // Answers out of turn are ignored.
                    let mut fake = Vec::new();
                    let req = percore::proto::parse_request(UPGRADE, 8 << 10);
                    if let Ok(Some((req, _))) = req {
                        h.conn.accept_upgrade(now, &mut fake, &req, None, &[]);
                        h.conn.reject_upgrade(now, &mut fake, 400, &[], "");
                    }
                    h.conn
                        .respond(now, &mut fake, b"HTTP/1.1 200 OK\r\n\r\n", b"");
                    assert!(fake.is_empty(), "an answer out of turn was written");
                }
            }
            // The application sends.
            8 => {
                let n = usize::from(inp.byte());
                let payload = vec![b'a' + (op >> 4); n * if op & 0x08 != 0 { 300 } else { 1 }];
                let (now, half) = (h.now, h.conn.send_half());
                let sent = match op >> 5 {
                    0 | 1 => half.send_message(
                        &mut h.ep,
                        &mut h.out,
                        Message::Text(core::str::from_utf8(&payload).unwrap()),
                    ),
                    2 => half.send_message(&mut h.ep, &mut h.out, Message::Binary(&payload)),
                    3 => half.send_ping(&mut h.ep, &mut h.out, &payload),
                    4 => {
                        let shared = Message::Binary(&payload).encode_shared();
                        half.send_shared(&mut h.out, &shared)
                    }
                    5 => {
                        half.close(now, &mut h.ep, &mut h.out, CloseCode::NORMAL, "bye");
                        false
                    }
                    6 => {
                        let reason = "r".repeat(n);
                        half.close(now, &mut h.ep, &mut h.out, CloseCode(4000), &reason);
                        false
                    }
                    _ => {
                        half.fail(now, &mut h.ep, &mut h.out, CloseCode::POLICY_VIOLATION, "x");
                        false
                    }
                };
                if sent {
                    assert!(h.conn.can_send());
                }
            }
            // Everything queued left.
            9 => h.flushed(),
            10 => h.conn.handle_eof(),
            11 => h.conn.abort(),
            // Give the buffers up mid-way (what a trim does to an idle connection).
            12 => {
                if h.conn.held_bytes() == 0 {
                    h.conn.release_buffers(&mut h.ep);
                }
            }
            // Held frames left by a budget: decode some more.
            _ => {
                let budget = u32::from(op >> 4);
                h.recv(&[], Some(budget));
            }
        }
        h.after_event();
    }
    // No more input: with the output flushed each time, the deadlines end every connection
    // that has one (an open connection without idle pings has none).
    for _ in 0..8 {
        if h.conn.is_finished() {
            break;
        }
        h.flushed();
        h.after_event();
        if h.conn.is_finished() {
            break;
        }
        let Some(at) = h.conn.poll_timeout(&h.ep) else {
            assert!(
                h.conn.is_open() && h.ep.settings().idle_timeout_ticks == 0,
                "a live connection without a deadline: {:?}",
                h.conn
            );
            return;
        };
        h.now = h.now.max(at);
        let now = h.now;
        let _ = h.conn.handle_timeout(now, &mut h.ep, &mut h.out);
        h.after_event();
    }
    h.flushed();
    h.after_event();
    assert!(
        h.conn.is_finished(),
        "the deadlines did not end the connection"
    );
}
