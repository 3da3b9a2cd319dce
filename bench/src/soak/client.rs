//! A blocking WebSocket client for the soak classes, written against RFC 6455 by hand (no
//! engine code: the client that judges the server must not share its bugs). It can send
//! anything: well-formed frames, fragments, bad frames, raw bytes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

/// The RFC 6455 §1.3 example key, and the accept value a correct server answers it with.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Frame opcodes.
pub mod op {
    /// Continuation.
    pub const CONT: u8 = 0x0;
    /// Text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Largest message the client reassembles; past it the server is misbehaving.
const MESSAGE_BYTES_MAX: usize = 1 << 20;

/// Something the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// A complete data message (text or binary).
    Data(Vec<u8>),
    /// A ping with its payload.
    Ping(Vec<u8>),
    /// A pong with its payload.
    Pong(Vec<u8>),
    /// A close frame: its code (None when empty).
    Close(Option<u16>),
}

/// Why no event came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The deadline passed.
    Timeout,
    /// The server closed the TCP connection (EOF).
    Eof,
    /// The connection was reset or failed.
    Reset,
    /// The server sent something that is not a valid server frame.
    Bad,
}

impl End {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            End::Timeout => "timeout",
            End::Eof => "eof",
            End::Reset => "reset",
            End::Bad => "bad frame from server",
        }
    }
}

/// Why a connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// TCP connect failed.
    Connect(String),
    /// The server answered with something other than a valid 101 (its status line).
    Refused(String),
    /// No complete answer (timeout, EOF, reset).
    NoAnswer(End),
}

impl OpenError {
    /// A short name for reports.
    pub fn name(&self) -> String {
        match self {
            OpenError::Connect(e) => format!("connect: {e}"),
            OpenError::Refused(s) => format!("upgrade refused: {s}"),
            OpenError::NoAnswer(e) => format!("no upgrade answer: {}", e.name()),
        }
    }
}

/// A TCP connection to `dst` from `src` (when given; SO_REUSEADDR), TCP_NODELAY, blocking.
pub fn tcp_connect(
    src: Option<SocketAddrV4>,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    tcp_connect_with(src, dst, timeout, None)
}

/// [`tcp_connect`] with a fixed receive buffer (SO_RCVBUF, set before the connection so the
/// advertised window follows it; keep it above the loopback MSS of 64 KiB, or the sender's
/// silly-window avoidance stalls the connection).
pub fn tcp_connect_with(
    src: Option<SocketAddrV4>,
    dst: SocketAddr,
    timeout: Duration,
    rcvbuf: Option<usize>,
) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), None)?;
    s.set_nodelay(true)?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    if let Some(src) = src {
        s.set_reuse_address(true)?;
        s.bind(&SockAddr::from(src))?;
    }
    s.connect_timeout(&SockAddr::from(dst), timeout)?;
    Ok(s.into())
}

/// The upgrade request for `path` (Host 127.0.0.1).
pub fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A masked frame: FIN flag, opcode, payload (a fixed mask: the server must unmask any).
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    push_frame(&mut out, fin, opcode, payload);
    out
}

/// Append a masked frame to `out`.
pub fn push_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    push_len(out, payload.len() as u64);
    let mask = [0x5a, 0xc3, 0x17, 0x8e];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// The masked length field (MASK bit set) for `len`.
pub fn push_len(out: &mut Vec<u8>, len: u64) {
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// A close frame payload: code and reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// An open WebSocket connection (client side).
pub struct Client {
    /// The socket.
    pub s: TcpStream,
    buf: Vec<u8>,
    /// Fragments of the message being reassembled.
    partial: Vec<u8>,
    in_message: bool,
}

impl Client {
    /// Connect to `dst`, upgrade on `path`; everything within `timeout`.
    pub fn open(
        src: Option<SocketAddrV4>,
        dst: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<Client, OpenError> {
        Client::open_with(src, dst, path, timeout, None)
    }

    /// [`Client::open`] with a fixed receive buffer (see [`tcp_connect_with`]).
    pub fn open_with(
        src: Option<SocketAddrV4>,
        dst: SocketAddr,
        path: &str,
        timeout: Duration,
        rcvbuf: Option<usize>,
    ) -> Result<Client, OpenError> {
        let s = tcp_connect_with(src, dst, timeout, rcvbuf)
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        let mut c = Client {
            s,
            buf: Vec::new(),
            partial: Vec::new(),
            in_message: false,
        };
        c.write(&upgrade_request(path))
            .map_err(|_| OpenError::NoAnswer(End::Reset))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = find(&c.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&c.buf[..end]).into_owned();
                c.buf.drain(..end + 4);
                let status = head.lines().next().unwrap_or("").to_string();
                let accepted = status.starts_with("HTTP/1.1 101")
                    && head.lines().any(|l| {
                        l.split_once(':').is_some_and(|(k, v)| {
                            k.trim().eq_ignore_ascii_case("sec-websocket-accept")
                                && v.trim() == ACCEPT
                        })
                    });
                return if accepted {
                    Ok(c)
                } else {
                    Err(OpenError::Refused(status))
                };
            }
            if c.buf.len() > 16 << 10 {
                return Err(OpenError::Refused("oversized response head".into()));
            }
            c.fill(deadline).map_err(OpenError::NoAnswer)?;
        }
    }

    /// Write all of `b`.
    pub fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.s.write_all(b)
    }

    /// Send one masked frame.
    pub fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.write(&frame(fin, opcode, payload))
    }

    /// Read more bytes into the buffer, waiting until `deadline` at most.
    fn fill(&mut self, deadline: Instant) -> Result<(), End> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(End::Timeout);
        }
        self.s
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|_| End::Reset)?;
        let mut chunk = [0u8; 16 << 10];
        match self.s.read(&mut chunk) {
            Ok(0) => Err(End::Eof),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(End::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(_) => Err(End::Reset),
        }
    }

    /// The next event, reading until `deadline`. Fragmented messages are reassembled; control
    /// frames come out as they arrive (also between fragments).
    pub fn next(&mut self, deadline: Instant) -> Result<Ev, End> {
        loop {
            if let Some(ev) = self.parse()? {
                return Ok(ev);
            }
            self.fill(deadline)?;
        }
    }

    /// The next event that is not a ping, answering pings with pongs on the way.
    pub fn next_answering(&mut self, deadline: Instant) -> Result<Ev, End> {
        loop {
            match self.next(deadline)? {
                Ev::Ping(p) => {
                    if self.send(true, op::PONG, &p).is_err() {
                        return Err(End::Reset);
                    }
                }
                ev => return Ok(ev),
            }
        }
    }

    /// Parse one event from the buffer, if a whole frame is there.
    fn parse(&mut self) -> Result<Option<Ev>, End> {
        loop {
            let b = &self.buf;
            if b.len() < 2 {
                return Ok(None);
            }
            let fin = b[0] & 0x80 != 0;
            let opcode = b[0] & 0x0F;
            if b[0] & 0x70 != 0 || b[1] & 0x80 != 0 {
                return Err(End::Bad); // RSV bits, or a masked server frame
            }
            let (len, hlen) = match b[1] & 0x7F {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
                127 if b.len() >= 10 => {
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(l), 10)
                }
                126 | 127 => return Ok(None),
                n => (u64::from(n), 2),
            };
            if len > MESSAGE_BYTES_MAX as u64 {
                return Err(End::Bad);
            }
            let total = hlen + len as usize;
            if b.len() < total {
                return Ok(None);
            }
            let payload = b[hlen..total].to_vec();
            self.buf.drain(..total);
            let ev = match opcode {
                op::PING => Ev::Ping(payload),
                op::PONG => Ev::Pong(payload),
                op::CLOSE => Ev::Close(
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                ),
                op::TEXT | op::BINARY if !self.in_message => {
                    if fin {
                        Ev::Data(payload)
                    } else {
                        self.in_message = true;
                        self.partial = payload;
                        continue;
                    }
                }
                op::CONT if self.in_message => {
                    self.partial.extend_from_slice(&payload);
                    if self.partial.len() > MESSAGE_BYTES_MAX {
                        return Err(End::Bad);
                    }
                    if !fin {
                        continue;
                    }
                    self.in_message = false;
                    Ev::Data(std::mem::take(&mut self.partial))
                }
                _ => return Err(End::Bad),
            };
            return Ok(Some(ev));
        }
    }

    /// Read until the server's close frame (skipping data, pongs; answering pings) and return
    /// its code; then answer it and wait for the server's EOF (bounded by `deadline`).
    pub fn expect_close(&mut self, deadline: Instant) -> Result<Option<u16>, End> {
        loop {
            if let Ev::Close(code) = self.next_answering(deadline)? {
                let reply = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                let _ = self.send(true, op::CLOSE, &reply);
                self.wait_eof(deadline);
                return Ok(code);
            }
        }
    }

    /// Close handshake started by the client: send close 1000, read until the server's close
    /// (skipping data; answering pings) and its EOF. Ok(the server's code).
    pub fn close_normally(&mut self, deadline: Instant) -> Result<Option<u16>, End> {
        self.send(true, op::CLOSE, &close_payload(1000, b""))
            .map_err(|_| End::Reset)?;
        loop {
            if let Ev::Close(code) = self.next_answering(deadline)? {
                self.wait_eof(deadline);
                return Ok(code);
            }
        }
    }

    /// Discard input until EOF or `deadline`: the server closes TCP first after a close
    /// handshake, so the TIME_WAIT state stays on its side.
    pub fn wait_eof(&mut self, deadline: Instant) -> bool {
        loop {
            self.buf.clear();
            match self.fill(deadline) {
                Ok(()) => {}
                Err(End::Eof) | Err(End::Reset) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Drop the connection with a reset (SO_LINGER 0): no FIN, no TIME_WAIT.
    pub fn reset(self) {
        crate::sys::set_linger_zero(&self.s);
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmasked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = frame(fin, opcode, payload);
        // Server frames: no mask. Rebuild the header without it.
        let hlen = match f[1] & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        f[1] &= 0x7F;
        let mut out = f[..hlen].to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// A client whose buffer already holds `bytes`, on a connection that stays open and
    /// silent (the listener is returned so that it lives as long as the test needs it).
    fn client_over(bytes: Vec<u8>) -> (Client, std::net::TcpListener) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let c = Client {
            s,
            buf: bytes,
            partial: Vec::new(),
            in_message: false,
        };
        (c, l)
    }

    #[test]
    fn masked_frames_use_the_short_and_extended_length_forms() {
        assert_eq!(frame(true, op::TEXT, b"")[..2], [0x81, 0x80]);
        let f = frame(false, op::BINARY, &[0u8; 126]);
        assert_eq!(f[..4], [0x02, 0x80 | 126, 0, 126]);
        assert_eq!(f.len(), 4 + 4 + 126);
        let f = frame(true, op::BINARY, &[0u8; 70_000]);
        assert_eq!(f[1], 0x80 | 127);
        assert_eq!(f.len(), 10 + 4 + 70_000);
    }

    #[test]
    fn fragments_reassemble_around_a_control_frame() {
        let mut b = unmasked(false, op::TEXT, b"ab");
        b.extend(unmasked(true, op::PING, b"p"));
        b.extend(unmasked(false, op::CONT, b"c"));
        b.extend(unmasked(true, op::CONT, b"d"));
        b.extend(unmasked(true, op::CLOSE, &close_payload(1009, b"")));
        let (mut c, _l) = client_over(b);
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(c.next(soon), Ok(Ev::Ping(b"p".to_vec())));
        assert_eq!(c.next(soon), Ok(Ev::Data(b"abcd".to_vec())));
        assert_eq!(c.next(soon), Ok(Ev::Close(Some(1009))));
        assert_eq!(c.next(soon), Err(End::Timeout));
    }

    #[test]
    fn masked_or_reserved_server_frames_are_bad() {
        let (mut c, _l) = client_over(frame(true, op::TEXT, b"x"));
        assert_eq!(c.next(Instant::now()), Err(End::Bad));
        let (mut c, _l) = client_over(vec![0xC1, 0x00]);
        assert_eq!(c.next(Instant::now()), Err(End::Bad));
        let (mut c, _l) = client_over(unmasked(true, op::CONT, b"x"));
        assert_eq!(c.next(Instant::now()), Err(End::Bad));
    }
}
