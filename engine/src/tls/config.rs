//! rustls configurations: ready-made ones ([`server_config`], [`client_config`]) and the
//! adjustments a session needs ([`prepare_server`], [`prepare_client`]), including how the
//! server name the client asked for (SNI) is learnt.

use std::cell::RefCell;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN protocol offered and accepted for WebSocket over TLS (RFC 6455 runs over HTTP/1.1).
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// The crypto provider percore picks: aws-lc-rs (AES-GCM with VAES/AVX-512 where the CPU has
/// them; the only rustls provider with the X25519MLKEM768 key exchange browsers offer first).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server config for percore: the aws-lc-rs provider, TLS 1.3 only, ALPN `http/1.1`, no
/// session tickets (`send_tls13_tickets = 0`: two fewer seals per handshake and nothing to
/// keep; set it on the returned config to offer resumption), no client authentication.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    c.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    c.send_tls13_tickets = 0;
    c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(c)
}

/// A client config for percore: the aws-lc-rs provider, TLS 1.3 only, ALPN `http/1.1`, servers
/// verified against `roots`, no client certificate.
pub fn client_config(roots: RootCertStore) -> ClientConfig {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the aws-lc-rs provider supports TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    c
}

/// The server config a session runs with, made once per server from the application's:
/// secret extraction on (the record layer takes over after the handshake), no 0-RTT early data
/// (replayable; an upgrade request must not be), ALPN `http/1.1` when none is set, and the
/// certificate resolver wrapped so that the session learns the client's server name.
pub fn prepare_server(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut c = config.clone();
    c.enable_secret_extraction = true;
    c.max_early_data_size = 0;
    c.send_half_rtt_data = false;
    if c.alpn_protocols.is_empty() {
        c.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    }
    c.cert_resolver = Arc::new(SniCapture(c.cert_resolver.clone()));
    Arc::new(c)
}

/// The client config a session runs with: secret extraction on, no early data, ALPN `http/1.1`
/// when none is set.
pub fn prepare_client(config: &ClientConfig) -> Arc<ClientConfig> {
    let mut c = config.clone();
    c.enable_secret_extraction = true;
    c.enable_early_data = false;
    if c.alpn_protocols.is_empty() {
        c.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    }
    Arc::new(c)
}

thread_local! {
    /// The server name of the ClientHello the resolver saw last on this thread. A session
    /// clears it before handing bytes to rustls and takes it afterwards: rustls calls the
    /// resolver synchronously, inside that call, on the session's own thread.
    static SERVER_NAME: RefCell<Option<Box<str>>> = const { RefCell::new(None) };
}

/// Take the server name captured on this thread (see [`SERVER_NAME`]).
pub(crate) fn take_server_name() -> Option<Box<str>> {
    SERVER_NAME.with(|s| s.borrow_mut().take())
}

/// A certificate resolver that notes the client's server name, then asks the application's
/// resolver (rustls' unbuffered server connection has no accessor for it).
#[derive(Debug)]
struct SniCapture(Arc<dyn ResolvesServerCert>);

impl ResolvesServerCert for SniCapture {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(Box::from);
        SERVER_NAME.with(|s| *s.borrow_mut() = name);
        self.0.resolve(hello)
    }

    fn only_raw_public_keys(&self) -> bool {
        self.0.only_raw_public_keys()
    }
}
