//! The TLS side of the test matrix: a test PKI made at run time (rcgen: a CA and a P-256 leaf
//! for `localhost` and 127.0.0.1; no key is ever written to disk), the server and client
//! configs, which test-server addresses speak TLS, and [`Stream`]: a client socket, plain or
//! TLS (rustls' own buffered client, nothing from percore), that the raw client and the
//! independent clients run over.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

/// The test PKI.
pub struct Pki {
    /// The CA certificate (DER).
    pub ca: CertificateDer<'static>,
    /// The CA certificate (PEM), for clients outside this process.
    pub ca_pem: String,
    /// The server's chain (its leaf only).
    pub chain: Vec<CertificateDer<'static>>,
    /// The server's key (PKCS#8 DER).
    pub key: Vec<u8>,
    /// A leaf from the same CA for the same names that expired in 2021 (and its key).
    pub expired_chain: Vec<CertificateDer<'static>>,
    /// The expired leaf's key (PKCS#8 DER).
    pub expired_key: Vec<u8>,
}

/// The PKI of this test process (made once).
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
            SanType,
        };
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "percore test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, "localhost");
        let cert = p.signed_by(&key, &issuer).unwrap();
        let old_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired = p.signed_by(&old_key, &issuer).unwrap();
        Pki {
            ca: ca_cert.der().clone(),
            ca_pem: ca_cert.pem(),
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
            expired_chain: vec![expired.der().clone()],
            expired_key: old_key.serialize_der(),
        }
    })
}

/// The server config the TLS test servers run with.
pub fn server_config() -> ServerConfig {
    let p = pki();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.key.clone()));
    percore::tls::server_config(p.chain.clone(), key).unwrap()
}

/// A server config whose certificate (from the test CA, for the right names) has expired.
pub fn expired_server_config() -> ServerConfig {
    let p = pki();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.expired_key.clone()));
    percore::tls::server_config(p.expired_chain.clone(), key).unwrap()
}

/// A client config trusting the test CA (rustls' aws-lc-rs provider, TLS 1.3).
pub fn client_config() -> Arc<ClientConfig> {
    static CFG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.add(pki().ca.clone()).unwrap();
        let mut c = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    })
    .clone()
}

fn tls_addrs() -> &'static Mutex<HashSet<SocketAddr>> {
    static SET: OnceLock<Mutex<HashSet<SocketAddr>>> = OnceLock::new();
    SET.get_or_init(Mutex::default)
}

/// `addr` speaks TLS (a test server's TLS listener): clients connecting to it use TLS.
pub fn serving(addr: SocketAddr) {
    tls_addrs().lock().unwrap().insert(addr);
}

/// `addr` does not speak TLS (any more): its server stopped, or a plain listener got the port.
pub fn not_serving(addr: SocketAddr) {
    tls_addrs().lock().unwrap().remove(&addr);
}

/// Does `addr` speak TLS?
pub fn is_tls(addr: SocketAddr) -> bool {
    tls_addrs().lock().unwrap().contains(&addr)
}

/// A client socket, plain or TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (the handshake runs on first use).
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// Connect to `addr`, over TLS when it speaks TLS (server name `localhost`).
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        Ok(Self::over(tcp, addr))
    }

    /// `tcp`, connected to `addr`: wrapped in TLS when `addr` speaks TLS.
    pub fn over(tcp: TcpStream, addr: SocketAddr) -> Self {
        if !is_tls(addr) {
            return Stream::Plain(tcp);
        }
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(client_config(), name).expect("client connection");
        Stream::Tls(Box::new(StreamOwned::new(conn, tcp)))
    }

    /// The TCP socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    /// Is it TLS?
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Read timeout of the socket.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(t)
    }

    /// Write timeout of the socket.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(t)
    }

    /// End our side: TLS says `close_notify` first, then FIN.
    pub fn shutdown_write(&mut self) {
        if let Stream::Tls(s) = self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.tcp().shutdown(Shutdown::Write);
    }

    /// Shut the TCP connection down both ways (no `close_notify`).
    pub fn shutdown_both(&self) {
        let _ = self.tcp().shutdown(Shutdown::Both);
    }

    /// Reset on close (SO_LINGER 0).
    pub fn set_linger_zero(&self) {
        let _ = socket2::SockRef::from(self.tcp()).set_linger(Some(Duration::ZERO));
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}
