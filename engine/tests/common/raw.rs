//! A minimal, independent WebSocket client over a [`Stream`] (plain TCP, or rustls' client when
//! the address speaks TLS): handshake written by hand, frames encoded and masked here, so tests
//! can send anything (bad frames, fragments, partial frames) and see exactly what the server
//! puts on the wire. Nothing in here uses `percore`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use super::tls::Stream;

/// Opcodes, as raw numbers (tests also send reserved ones).
pub mod op {
    /// Continuation frame.
    pub const CONT: u8 = 0x0;
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// Default bound on every blocking read in the tests: generous, never a speed assertion.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// The three RSV bits.
    pub rsv: u8,
    /// Opcode (4 bits).
    pub opcode: u8,
    /// Payload (server frames are never masked; a masked one is reported as an error).
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code of a close frame (None for an empty close payload).
    pub fn close_code(&self) -> Option<u16> {
        if self.payload.len() >= 2 {
            Some(u16::from_be_bytes([self.payload[0], self.payload[1]]))
        } else {
            None
        }
    }

    /// The close reason of a close frame, lossily decoded.
    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or(&[])).into_owned()
    }
}

/// What the server did to end the connection, as seen from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A close frame arrived (its code, None when empty), then the stream ended or not.
    Close(Option<u16>),
    /// The TCP stream ended (EOF or reset) without a close frame.
    Eof,
}

/// An encoded client frame: header with mask bit, masking key, masked payload.
pub fn encode_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(((fin as u8) << 7) | ((rsv & 7) << 4) | (opcode & 0x0f));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// An unmasked frame (clients must mask: servers answer it with 1002).
pub fn encode_unmasked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = encode_frame(fin, 0, opcode, payload, [0; 4]);
    out[1] &= 0x7f;
    // Drop the 4-byte (zero) masking key that encode_frame wrote after the length.
    let key_at = match payload.len() {
        n if n < 126 => 2,
        n if n <= 0xffff => 4,
        _ => 10,
    };
    out.drain(key_at..key_at + 4);
    out
}

/// A close payload: 2-byte code + reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Cheap varying masking keys (their randomness does not matter to the server under test;
/// varying them, zero key included, exercises the unmasking paths).
fn next_mask() -> [u8; 4] {
    use std::sync::atomic::{AtomicU32, Ordering};
    static STATE: AtomicU32 = AtomicU32::new(0x9e37_79b9);
    let mut x = STATE.fetch_add(0x6d2b_79f5, Ordering::Relaxed);
    x ^= x >> 15;
    x = x.wrapping_mul(0x2c1b_3c6d);
    x ^= x >> 12;
    if x & 0x1f == 0 {
        [0; 4]
    } else {
        x.to_be_bytes()
    }
}

/// A `Sec-WebSocket-Key` value.
pub fn new_key() -> String {
    tungstenite::handshake::client::generate_key()
}

/// Build an upgrade request.
pub fn upgrade_request(addr: SocketAddr, path: &str, key: &str, extra: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// A parsed HTTP response head (and whatever body bytes were read with it).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes read so far (for non-101 responses: until EOF).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Read an HTTP response head from `stream`; returns it and the bytes after the head.
pub fn read_response_head(stream: &mut impl Read) -> io::Result<(HttpResponse, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf[end + 4..].to_vec();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or("");
            let status = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return Ok((
                HttpResponse {
                    status,
                    headers,
                    body: Vec::new(),
                },
                rest,
            ));
        }
        if buf.len() > 64 << 10 {
            return Err(bad("response head too long".into()));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "EOF before the end of the response head; got {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Send raw bytes as an HTTP request, read the whole response (head, then body until EOF or
/// the connection is reset). For rejected handshakes.
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> io::Result<HttpResponse> {
    let mut s = connect(addr)?;
    s.write_all(request)?;
    let (mut resp, rest) = read_response_head(&mut s)?;
    resp.body = rest;
    if resp.status != 101 {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => resp.body.extend_from_slice(&chunk[..n]),
                // A reset, or (TLS) the end of the TCP stream without close_notify.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(resp)
}

/// A client socket to `addr` (TLS when it speaks TLS), with the tests' timeouts.
pub fn connect(addr: SocketAddr) -> io::Result<Stream> {
    let s = Stream::connect(addr)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A raw client connection after a successful handshake.
pub struct RawClient {
    /// The socket (tests may write raw bytes or shut it down).
    pub stream: Stream,
    /// Bytes read but not yet parsed.
    rbuf: Vec<u8>,
    /// The 101 response.
    pub response: HttpResponse,
}

impl RawClient {
    /// Connect and complete the handshake on path `/`.
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        Self::connect_with(addr, "/", &[])
    }

    /// Connect and complete the handshake with a path and extra request headers; fails unless the
    /// server answers 101 with the right `Sec-WebSocket-Accept`.
    pub fn connect_with(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> io::Result<Self> {
        let mut stream = connect(addr)?;
        let key = new_key();
        stream.write_all(upgrade_request(addr, path, &key, extra).as_bytes())?;
        let (response, rest) = read_response_head(&mut stream)?;
        if response.status != 101 {
            return Err(bad(format!("expected 101, got {}", response.status)));
        }
        let want = tungstenite::handshake::derive_accept_key(key.as_bytes());
        if response.header("sec-websocket-accept") != Some(want.as_str()) {
            return Err(bad(format!("bad Sec-WebSocket-Accept in {response:?}")));
        }
        Ok(Self {
            stream,
            rbuf: rest,
            response,
        })
    }

    /// A client over `stream`, whose 101 `response` was read (`rest`: bytes read after it).
    pub fn from_parts(stream: Stream, rest: Vec<u8>, response: HttpResponse) -> Self {
        Self {
            stream,
            rbuf: rest,
            response,
        }
    }

    /// Send the text `s`, expect the text `want` back.
    pub fn exchange_text(&mut self, s: &str, want: &str) {
        self.send_text(s).expect("send text");
        let (kind, data) = self.read_message().expect("read reply");
        assert_eq!((kind, data.as_slice()), (op::TEXT, want.as_bytes()));
    }

    /// Send one masked frame.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.stream
            .write_all(&encode_frame(fin, 0, opcode, payload, next_mask()))
    }

    /// Send raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Send a whole text message in one frame.
    pub fn send_text(&mut self, s: &str) -> io::Result<()> {
        self.send_frame(true, op::TEXT, s.as_bytes())
    }

    /// Send a whole binary message in one frame.
    pub fn send_binary(&mut self, b: &[u8]) -> io::Result<()> {
        self.send_frame(true, op::BINARY, b)
    }

    /// Send a close frame with a code and reason.
    pub fn send_close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        self.send_frame(true, op::CLOSE, &close_payload(code, reason.as_bytes()))
    }

    /// Set the read timeout used by the next reads.
    pub fn set_read_timeout(&mut self, t: Duration) {
        let _ = self.stream.set_read_timeout(Some(t));
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 64 << 10];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF"));
        }
        self.rbuf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Read the next frame from the server (any opcode).
    pub fn read_frame(&mut self) -> io::Result<Frame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.rbuf)? {
                self.rbuf.drain(..used);
                return Ok(frame);
            }
            self.fill()?;
        }
    }

    /// Read the next data message (assembling fragments), answering pings with pongs and
    /// skipping pongs. A close frame is returned as an error of kind `ConnectionAborted`
    /// whose message names the code.
    pub fn read_message(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut kind = None;
        let mut data = Vec::new();
        loop {
            let f = self.read_frame()?;
            match f.opcode {
                op::PING => self.send_frame(true, op::PONG, &f.payload)?,
                op::PONG => {}
                op::CLOSE => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("close frame {:?} {:?}", f.close_code(), f.close_reason()),
                    ))
                }
                op::CONT if kind.is_some() => {
                    data.extend_from_slice(&f.payload);
                    if f.fin {
                        return Ok((kind.unwrap_or(op::BINARY), data));
                    }
                }
                op::TEXT | op::BINARY if kind.is_none() => {
                    data = f.payload;
                    if f.fin {
                        return Ok((f.opcode, data));
                    }
                    kind = Some(f.opcode);
                }
                other => return Err(bad(format!("unexpected server frame opcode {other}"))),
            }
        }
    }

    /// Read until the server closes: returns the first close frame's code (data frames,
    /// pings and pongs before it are skipped), or `Ending::Eof` when the stream ends or is
    /// reset without one. Panics when nothing happens within `IO_TIMEOUT`.
    pub fn read_until_close(&mut self) -> Ending {
        loop {
            match self.read_frame() {
                Ok(f) if f.opcode == op::CLOSE => return Ending::Close(f.close_code()),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {
                    panic!("server neither closed nor sent a close frame within {IO_TIMEOUT:?}")
                }
                Err(_) => return Ending::Eof,
            }
        }
    }

    /// Expect the server to fail the connection with close `code`: a close frame with that
    /// code must arrive (data frames before it are skipped). Then answer it and expect the
    /// TCP stream to end.
    pub fn expect_close(&mut self, code: u16) {
        match self.read_until_close() {
            Ending::Close(Some(c)) => assert_eq!(c, code, "close code"),
            other => panic!("expected close frame {code}, got {other:?}"),
        }
        // Answering may fail if the server already dropped the socket: fine.
        let _ = self.send_close(code, "");
        self.expect_eof();
    }

    /// Expect the TCP stream to end (EOF or reset) within `IO_TIMEOUT`, skipping any frames.
    pub fn expect_eof(&mut self) {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            assert!(
                Instant::now() < deadline,
                "server did not close the TCP connection within {IO_TIMEOUT:?}"
            );
            match self.fill() {
                Ok(()) => self.rbuf.clear(),
                Err(e) if is_timeout(&e) => {
                    panic!("server did not close the TCP connection within {IO_TIMEOUT:?}")
                }
                Err(_) => return,
            }
        }
    }

    /// Every frame the server still sends until the TCP stream ends (bounded by `IO_TIMEOUT`).
    pub fn frames_until_eof(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            match self.read_frame() {
                Ok(f) => frames.push(f),
                Err(e) if is_timeout(&e) => {
                    panic!("server did not close the TCP connection within {IO_TIMEOUT:?}")
                }
                Err(_) => return frames,
            }
        }
    }

    /// Echo round trip: send a text message, expect it back unchanged.
    pub fn echo_text(&mut self, s: &str) {
        self.send_text(s).expect("send text");
        let (kind, data) = self.read_message().expect("read echo");
        assert_eq!(kind, op::TEXT);
        assert_eq!(data, s.as_bytes());
    }

    /// Shut the write side down (FIN; over TLS `close_notify` first) without a close frame.
    pub fn shutdown_write(&mut self) {
        self.stream.shutdown_write();
    }
}

/// True for the error kinds a read timeout produces.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Parse one server frame from `buf`: Ok(None) when incomplete.
pub fn parse_server_frame(buf: &[u8]) -> io::Result<Option<(Frame, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = (buf[0] >> 4) & 7;
    let opcode = buf[0] & 0x0f;
    if buf[1] & 0x80 != 0 {
        return Err(bad("server frame is masked".into()));
    }
    let (len, at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            fin,
            rsv,
            opcode,
            payload: buf[at..at + len].to_vec(),
        },
        at + len,
    )))
}
