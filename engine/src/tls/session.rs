//! [`Session`]: one TLS 1.3 connection, sans-IO. rustls' unbuffered connection runs the
//! handshake; at its end the session turns it into a `KernelConnection` (the key schedule) and
//! the traffic secrets, and its own [`RecordLayer`] carries the data from then on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, ProtocolVersion, ServerConfig};

use super::config::take_server_name;
use super::error::{RecordError, TlsError};
use super::record::{KeySchedule, RecordLayer, TrafficKey};

/// One TLS 1.3 connection, either side, driven with bytes: received ciphertext in
/// ([`Session::recv`]), plaintext out to a callback (in place once the handshake is done),
/// and records to send appended to a `Vec` the caller writes to the transport. No socket, no
/// clock, no thread.
///
/// While the handshake runs it holds rustls' connection and the bytes rustls has not consumed
/// (at most `handshake_bytes_max`); afterwards, two AEAD keys and rustls' key schedule (about
/// 2 KiB with aws-lc-rs) and no buffer while idle.
#[derive(Debug)]
pub struct Session {
    state: State,
    /// The server name (SNI) the client asked for (server side).
    server_name: Option<Box<str>>,
}

enum State {
    Handshake(Box<Handshake>),
    Open(Box<RecordLayer<Kernel>>),
    Failed,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Handshake(_) => "Handshake",
            State::Open(_) => "Open",
            State::Failed => "Failed",
        })
    }
}

struct Handshake {
    conn: Hs,
    /// Received bytes rustls has not consumed yet (a partial record or handshake message).
    inbuf: Vec<u8>,
    inbuf_max: usize,
}

enum Hs {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// rustls' key schedule after the handshake, either side.
enum Kernel {
    Server(KernelConnection<ServerConnectionData>),
    Client(KernelConnection<ClientConnectionData>),
}

impl KeySchedule for Kernel {
    fn next_rx(&mut self) -> Result<TrafficKey, RecordError> {
        let (seq, s) = match self {
            Kernel::Server(k) => k.update_rx_secret(),
            Kernel::Client(k) => k.update_rx_secret(),
        }
        .map_err(RecordError::KeySchedule)?;
        TrafficKey::from_rustls(&s, seq)
    }

    fn next_tx(&mut self) -> Result<TrafficKey, RecordError> {
        let (seq, s) = match self {
            Kernel::Server(k) => k.update_tx_secret(),
            Kernel::Client(k) => k.update_tx_secret(),
        }
        .map_err(RecordError::KeySchedule)?;
        TrafficKey::from_rustls(&s, seq)
    }

    fn session_ticket(&mut self, body: &[u8]) -> Result<bool, RecordError> {
        match self {
            Kernel::Server(_) => Ok(false),
            Kernel::Client(k) => k
                .handle_new_session_ticket(body)
                .map(|()| true)
                .map_err(|_| RecordError::DecodeError("NewSessionTicket rejected by rustls")),
        }
    }

    fn confidentiality_limit(&self) -> u64 {
        let suite = match self {
            Kernel::Server(k) => k.negotiated_cipher_suite(),
            Kernel::Client(k) => k.negotiated_cipher_suite(),
        };
        suite
            .tls13()
            .map_or(u64::MAX, |s| s.common.confidentiality_limit)
    }
}

impl Session {
    /// The server side of a new connection. `config` must have `enable_secret_extraction`
    /// set (see [`super::prepare_server`], which a server applies once to the application's
    /// config). `handshake_bytes_max` bounds the received bytes held while the handshake runs.
    pub fn server(config: Arc<ServerConfig>, handshake_bytes_max: usize) -> Result<Self, TlsError> {
        if !config.enable_secret_extraction {
            return Err(TlsError::Handshake(rustls::Error::General(
                "the server config needs enable_secret_extraction (use tls::prepare_server)".into(),
            )));
        }
        let conn = UnbufferedServerConnection::new(config).map_err(TlsError::Handshake)?;
        Ok(Self::handshaking(Hs::Server(conn), handshake_bytes_max))
    }

    /// The client side of a new connection to `name`: appends the ClientHello to `out`.
    /// `config` must have `enable_secret_extraction` set ([`super::prepare_client`]).
    pub fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        handshake_bytes_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<Self, TlsError> {
        if !config.enable_secret_extraction {
            return Err(TlsError::Handshake(rustls::Error::General(
                "the client config needs enable_secret_extraction (use tls::prepare_client)".into(),
            )));
        }
        let conn = UnbufferedClientConnection::new(config, name).map_err(TlsError::Handshake)?;
        let mut s = Self::handshaking(Hs::Client(conn), handshake_bytes_max);
        s.recv(&mut [], out, |_| {})?;
        Ok(s)
    }

    fn handshaking(conn: Hs, inbuf_max: usize) -> Self {
        Self {
            state: State::Handshake(Box::new(Handshake {
                conn,
                inbuf: Vec::new(),
                inbuf_max,
            })),
            server_name: None,
        }
    }

    /// Is the handshake still running?
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshake(_))
    }

    /// Is the handshake done and no error happened? (Data can be sealed unless
    /// `close_notify` was sent.)
    pub fn is_open(&self) -> bool {
        matches!(&self.state, State::Open(r) if !r.is_failed())
    }

    /// Did the session fail (its alert, if any, was appended to the output)?
    pub fn is_failed(&self) -> bool {
        match &self.state {
            State::Failed => true,
            State::Open(r) => r.is_failed(),
            State::Handshake(_) => false,
        }
    }

    /// Did the peer send `close_notify`?
    pub fn peer_closed(&self) -> bool {
        matches!(&self.state, State::Open(r) if r.peer_closed())
    }

    /// Is a record due that nobody asked to seal (our answer to the peer's KeyUpdate)? Call
    /// [`Session::flush_key_update`] (or seal data, which sends it first).
    pub fn wants_flush(&self) -> bool {
        matches!(&self.state, State::Open(r) if r.wants_flush())
    }

    /// The server name the client asked for (SNI), server side, once the ClientHello arrived.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Take the server name out (the session keeps no copy).
    pub fn take_server_name(&mut self) -> Option<Box<str>> {
        self.server_name.take()
    }

    /// Received bytes held between calls (handshake input, a split record or message).
    pub fn held_bytes(&self) -> usize {
        match &self.state {
            State::Handshake(h) => h.inbuf.capacity(),
            State::Open(r) => r.held_bytes(),
            State::Failed => 0,
        }
    }

    /// Received bytes of a record or message not complete yet (handshake input included),
    /// while the session still reads: if the peer's stream ends now, it was cut short
    /// ([`TlsError::Truncated`]).
    pub fn pending_bytes(&self) -> usize {
        match &self.state {
            State::Handshake(h) => h.inbuf.len(),
            State::Open(r) if !r.is_failed() && !r.peer_closed() => r.pending_bytes(),
            State::Open(_) | State::Failed => 0,
        }
    }

    /// Process one buffer of received bytes, all of it (an empty `buf` just runs the
    /// handshake's pending output). Handshake messages and alerts to send are appended to
    /// `out`; application data is handed to `on`, in place in `buf` once the handshake is done
    /// (the few bytes rustls decrypted along with the handshake's last message are copied
    /// once). On an error the alert for it (if any) is in `out` and the session is failed:
    /// further input is ignored and nothing can be sealed.
    pub fn recv(
        &mut self,
        buf: &mut [u8],
        out: &mut Vec<u8>,
        mut on: impl FnMut(&mut [u8]),
    ) -> Result<(), TlsError> {
        let res = match &mut self.state {
            State::Failed => return Ok(()),
            State::Open(r) => r.recv(buf, out, on).map_err(TlsError::Record),
            // rustls is not expected to panic on any input; if it ever does, only this
            // connection fails (a shard serves thousands).
            State::Handshake(_) => {
                catch_unwind(AssertUnwindSafe(|| self.recv_handshake(buf, out, &mut on)))
                    .unwrap_or_else(|_| {
                        Err(TlsError::Handshake(rustls::Error::General(
                            "rustls panicked".into(),
                        )))
                    })
            }
        };
        if res.is_err() {
            self.state = State::Failed;
        }
        res
    }

    fn recv_handshake(
        &mut self,
        buf: &mut [u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(&mut [u8]),
    ) -> Result<(), TlsError> {
        let State::Handshake(hs) = &mut self.state else {
            return Ok(());
        };
        let Handshake {
            conn,
            inbuf,
            inbuf_max,
        } = &mut **hs;
        inbuf.extend_from_slice(buf);
        let mut early = Vec::new();
        let _ = take_server_name();
        let progress = match conn {
            Hs::Server(c) => drive(c, inbuf, out, &mut early),
            Hs::Client(c) => drive(c, inbuf, out, &mut early),
        };
        if let Some(name) = take_server_name() {
            self.server_name = Some(name);
        }
        if !progress? {
            if inbuf.len() > *inbuf_max {
                return Err(TlsError::HandshakeTooLarge);
            }
            if inbuf.is_empty() {
                *inbuf = Vec::new();
            }
            return Ok(());
        }
        // Done: hand the secrets and the rest of the input to the record layer.
        let State::Handshake(hs) = std::mem::replace(&mut self.state, State::Failed) else {
            return Ok(());
        };
        let Handshake {
            conn, mut inbuf, ..
        } = *hs;
        let extracted = match conn {
            Hs::Server(c) => c
                .dangerous_into_kernel_connection()
                .map(|(s, k)| (s, Kernel::Server(k))),
            Hs::Client(c) => c
                .dangerous_into_kernel_connection()
                .map(|(s, k)| (s, Kernel::Client(k))),
        };
        let (secrets, kernel) = extracted.map_err(TlsError::Handshake)?;
        let version = match &kernel {
            Kernel::Server(k) => k.protocol_version(),
            Kernel::Client(k) => k.protocol_version(),
        };
        if version != ProtocolVersion::TLSv1_3 {
            return Err(TlsError::NotTls13);
        }
        let rx = TrafficKey::from_rustls(&secrets.rx.1, secrets.rx.0)?;
        let tx = TrafficKey::from_rustls(&secrets.tx.1, secrets.tx.0)?;
        let layer = RecordLayer::new(kernel, &rx, &tx)?;
        self.state = State::Open(Box::new(layer));
        if !early.is_empty() {
            on(&mut early);
        }
        let State::Open(r) = &mut self.state else {
            return Ok(());
        };
        r.recv(&mut inbuf, out, on).map_err(TlsError::Record)
    }

    /// Seal `parts`, concatenated (at most [`super::PLAINTEXT_MAX`] bytes together), as one
    /// record appended to `out` (after our KeyUpdate if one is due).
    pub fn seal(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.with_layer(|r| r.seal(parts, out))
    }

    /// Seal `data` of any length as records of at most 16 KiB.
    pub fn seal_all(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.with_layer(|r| r.seal_all(data, out))
    }

    /// Send our KeyUpdate if one is due ([`Session::wants_flush`]).
    pub fn flush_key_update(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.with_layer(|r| r.flush_key_update(out))
    }

    /// Start a KeyUpdate of our own now (a fresh sending key).
    pub fn key_update(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.with_layer(|r| r.key_update(out))
    }

    /// Append `close_notify` (once, when the handshake is done and nothing failed).
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        if let State::Open(r) = &mut self.state {
            r.close_notify(out);
        }
    }

    fn with_layer(
        &mut self,
        f: impl FnOnce(&mut RecordLayer<Kernel>) -> Result<(), RecordError>,
    ) -> Result<(), TlsError> {
        match &mut self.state {
            State::Open(r) => f(r).map_err(TlsError::Record),
            _ => Err(TlsError::Record(RecordError::Closed)),
        }
    }
}

/// The unbuffered connection of either side.
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
}

/// Run rustls over `inbuf` until it blocks (`false`: more input needed) or the handshake is
/// done (`true`). Its records to send go to `out`; application data it decrypted along with
/// the handshake's end goes to `early`. Consumed input is removed from `inbuf`.
fn drive<C: Unbuffered>(
    conn: &mut C,
    inbuf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    early: &mut Vec<u8>,
) -> Result<bool, TlsError> {
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process(inbuf);
        let mut done = None;
        let mut failed = None;
        match state {
            Err(e) => failed = Some(TlsError::Handshake(e)),
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                let start = out.len();
                out.resize(start + 2048, 0);
                let written = loop {
                    match enc.encode(&mut out[start..]) {
                        Ok(n) => break Ok(n),
                        Err(EncodeError::InsufficientSize(s)) => {
                            out.resize(start + s.required_size, 0);
                        }
                        Err(e) => break Err(e),
                    }
                };
                match written {
                    Ok(n) => out.truncate(start + n),
                    Err(e) => {
                        out.truncate(start);
                        failed = Some(TlsError::Handshake(rustls::Error::General(e.to_string())));
                    }
                }
            }
            // `out` is the caller's to send; rustls only needs to hear that it will be.
            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
            Ok(ConnectionState::BlockedHandshake) => done = Some(false),
            Ok(ConnectionState::WriteTraffic(_)) => done = Some(true),
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                while let Some(rec) = r.next_record() {
                    match rec {
                        Ok(rec) => {
                            discard += rec.discard;
                            early.extend_from_slice(rec.payload);
                        }
                        Err(e) => {
                            failed = Some(TlsError::Handshake(e));
                            break;
                        }
                    }
                }
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                failed = Some(TlsError::PeerClosedInHandshake);
            }
            // Early data is refused by the config (prepare_server); anything newer rustls adds
            // is not something a WebSocket handshake waits for.
            Ok(_) => {
                failed = Some(TlsError::Handshake(rustls::Error::General(
                    "unexpected state of the TLS handshake".into(),
                )))
            }
        }
        inbuf.drain(..discard.min(inbuf.len()));
        if let Some(e) = failed {
            flush_alert(conn, inbuf, out);
            return Err(e);
        }
        if let Some(d) = done {
            return Ok(d);
        }
    }
}

/// After rustls failed: collect the alert it queued. Exactly one more call: rustls hands out
/// what it queued before it looks at the input again (a second look would fail on the same
/// bytes and queue a second alert, which rustls asserts against). The unconsumed input goes
/// in as it is: rustls may still refer to handshake messages in it.
fn flush_alert<C: Unbuffered>(conn: &mut C, inbuf: &mut [u8], out: &mut Vec<u8>) {
    let UnbufferedStatus { state, .. } = conn.process(inbuf);
    if let Ok(ConnectionState::EncodeTlsData(mut enc)) = state {
        let mut buf = [0u8; 64];
        if let Ok(n) = enc.encode(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
    }
}
