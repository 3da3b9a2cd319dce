//! `wss://` for the load generator: one `percore::tls::Session` (client side) per connection,
//! so that 10,000+ TLS connections cost about 2 KiB each in the generator (rustls' buffered
//! client keeps about 8 KiB, its 4 KiB receive buffer among it, for good).
//!
//! The server is verified against `--tls-ca` (PEM), or the system-independent nothing at all
//! with `--insecure` (handshake signatures are still checked; the certificate chain and the
//! name are not: benchmarks against a self-signed server only).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use percore::tls::rustls;
use percore::tls::Session;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Most handshake bytes a connection holds (a server flight with a long chain fits).
const HANDSHAKE_BYTES_MAX: usize = 64 << 10;

/// The client config for `--tls-ca` / `--insecure` (prepared for [`Session::client`]).
pub fn client_config(ca: Option<&Path>, insecure: bool) -> Result<Arc<ClientConfig>, String> {
    let cfg = match (ca, insecure) {
        (Some(_), true) => return Err("--tls-ca and --insecure exclude each other".into()),
        (None, false) => {
            return Err(
                "wss:// needs --tls-ca PEM (the CA that signed the server's certificate) or, \
                 for a benchmark against a self-signed server, --insecure"
                    .into(),
            )
        }
        (Some(path), false) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("--tls-ca {}: no certificate in it", path.display()));
            }
            percore::tls::client_config(roots)
        }
        (None, true) => {
            let mut c = percore::tls::client_config(RootCertStore::empty());
            c.dangerous()
                .set_certificate_verifier(Arc::new(AnyCertificate(percore::tls::provider())));
            c
        }
    };
    Ok(percore::tls::prepare_client(&cfg))
}

/// `--insecure`: any certificate, any name; the handshake signature is still verified (with
/// the certificate's key), so the peer holds the key it presents.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One connection's TLS: the session, records not yet written, plaintext not yet taken.
pub struct Tls {
    session: Session,
    /// Records to write (handshake flights, sealed messages), front first.
    wire: Vec<u8>,
    wire_at: usize,
    /// Decrypted bytes the reader has not taken yet.
    plain: Vec<u8>,
    plain_at: usize,
}

impl Tls {
    /// A new session to `name` (its ClientHello queued).
    pub fn new(cfg: Arc<ClientConfig>, name: &str) -> io::Result<Box<Tls>> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut wire = Vec::new();
        let session =
            Session::client(cfg, name, HANDSHAKE_BYTES_MAX, &mut wire).map_err(io::Error::other)?;
        Ok(Box::new(Tls {
            session,
            wire,
            wire_at: 0,
            plain: Vec::new(),
            plain_at: 0,
        }))
    }

    /// Is the handshake done (plaintext may be sealed)?
    pub fn is_open(&self) -> bool {
        self.session.is_open()
    }

    /// Records are waiting to be written.
    pub fn wants_write(&self) -> bool {
        self.wire_at < self.wire.len() || self.session.wants_flush()
    }

    /// Read plaintext into `buf`: what was decrypted before, else read ciphertext from
    /// `stream` (through `cbuf`) until some plaintext comes, the socket would block (an
    /// `io::ErrorKind::WouldBlock` error), or it ends (`Ok(0)`).
    pub fn read(
        &mut self,
        stream: &mut impl Read,
        buf: &mut [u8],
        cbuf: &mut [u8],
    ) -> io::Result<usize> {
        loop {
            if self.plain_at < self.plain.len() {
                let n = (self.plain.len() - self.plain_at).min(buf.len());
                buf[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
                self.plain_at += n;
                if self.plain_at == self.plain.len() {
                    self.plain.clear();
                    self.plain_at = 0;
                    if self.plain.capacity() > 256 << 10 {
                        self.plain = Vec::new();
                    }
                }
                return Ok(n);
            }
            if self.session.peer_closed() {
                return Ok(0);
            }
            let n = stream.read(cbuf)?;
            if n == 0 {
                return Ok(0);
            }
            let plain = &mut self.plain;
            self.session
                .recv(&mut cbuf[..n], &mut self.wire, |p| {
                    plain.extend_from_slice(p)
                })
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }

    /// Seal `plain` (all of it; the handshake must be done) behind the records queued.
    pub fn seal(&mut self, plain: &[u8]) -> io::Result<()> {
        self.session
            .seal_all(plain, &mut self.wire)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Write the queued records to `stream` until done or it would block. `Ok(true)`: all out.
    pub fn write(&mut self, stream: &mut impl Write) -> io::Result<bool> {
        if self.session.wants_flush() {
            self.session
                .flush_key_update(&mut self.wire)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        while self.wire_at < self.wire.len() {
            match stream.write(&self.wire[self.wire_at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wire_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.wire.clear();
        self.wire_at = 0;
        if self.wire.capacity() > 64 << 10 {
            self.wire = Vec::new();
        }
        Ok(true)
    }
}
