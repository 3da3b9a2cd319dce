//! The record layer and the session against rustls (an independent TLS 1.3 implementation on
//! the other end) and against themselves with a stand-in key schedule: records split at every
//! point, 1-byte receives, tampering, oversized and malformed records, sequence numbers,
//! KeyUpdate both ways, close_notify, alerts, handshake failures. No sockets.

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::*;

// ---------------------------------------------------------------------------------------------
// Certificates and configs, made at test time.

pub(super) struct Pki {
    pub(super) ca: CertificateDer<'static>,
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: Vec<u8>,
}

pub(super) fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = p.signed_by(&key, &issuer).unwrap();
        Pki {
            ca: ca_cert.der().clone(),
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        }
    })
}

pub(super) fn base_server_config() -> ServerConfig {
    let p = pki();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.key.clone()));
    server_config(p.chain.clone(), key).unwrap()
}

fn server_cfg() -> Arc<ServerConfig> {
    prepare_server(&base_server_config())
}

pub(super) fn roots() -> RootCertStore {
    let mut r = RootCertStore::empty();
    r.add(pki().ca.clone()).unwrap();
    r
}

fn client_cfg() -> Arc<ClientConfig> {
    Arc::new(client_config(roots()))
}

pub(super) fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

// ---------------------------------------------------------------------------------------------
// A rustls (buffered) peer.

fn peer_client() -> ClientConnection {
    ClientConnection::new(client_cfg(), localhost()).unwrap()
}

/// Everything the rustls client wants to send.
pub(super) fn writes(c: &mut ClientConnection) -> Vec<u8> {
    let mut v = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut v).unwrap();
    }
    v
}

/// Feed `data` to the rustls client; the plaintext it yields.
pub(super) fn reads(c: &mut ClientConnection, data: &[u8]) -> Result<Vec<u8>, rustls::Error> {
    let mut rd = data;
    let mut got = Vec::new();
    while !rd.is_empty() {
        c.read_tls(&mut rd).unwrap();
        c.process_new_packets()?;
        let mut buf = [0u8; 1 << 16];
        loop {
            match c.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
    Ok(got)
}

/// Run the handshake between a rustls client and a server session; plaintext the session
/// delivered along the way is returned.
fn handshake(c: &mut ClientConnection, s: &mut Session) -> Vec<u8> {
    let mut got = Vec::new();
    for _ in 0..10 {
        let mut w = writes(c);
        let mut out = Vec::new();
        s.recv(&mut w, &mut out, |p| got.extend_from_slice(p))
            .unwrap();
        reads(c, &out).unwrap();
        if !c.is_handshaking() && s.is_open() && !c.wants_write() {
            return got;
        }
    }
    panic!("handshake did not complete");
}

fn open_pair() -> (ClientConnection, Session) {
    let mut c = peer_client();
    let mut s = Session::server(server_cfg(), 64 << 10).unwrap();
    handshake(&mut c, &mut s);
    (c, s)
}

/// The server's plaintext for `wire`, delivered in pieces ending at `cuts`.
fn deliver(s: &mut Session, wire: &[u8], cuts: &[usize]) -> Result<Vec<u8>, TlsError> {
    let mut got = Vec::new();
    let mut start = 0;
    let mut out = Vec::new();
    for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
        let mut piece = wire[start..end].to_vec();
        s.recv(&mut piece, &mut out, |p| got.extend_from_slice(p))?;
        start = end;
    }
    Ok(got)
}

/// Alert descriptions in (unencrypted or decrypted-by-rustls) form: what the rustls client
/// reports for `out`.
fn client_sees_alert(c: &mut ClientConnection, out: &[u8]) -> String {
    match reads(c, out) {
        Err(e) => format!("{e:?}"),
        Ok(p) => panic!("no alert, plaintext {p:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Session (server side) against a rustls client.

#[test]
fn server_session_echoes_both_ways_with_a_rustls_client() {
    let (mut c, mut s) = open_pair();
    c.writer().write_all(b"hello over tls").unwrap();
    let w = writes(&mut c);
    assert_eq!(deliver(&mut s, &w, &[]).unwrap(), b"hello over tls");
    let mut out = Vec::new();
    let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    s.seal_all(&big, &mut out).unwrap();
    s.seal(&[b"a", b"", b"bc"], &mut out).unwrap();
    let mut want = big.clone();
    want.extend_from_slice(b"abc");
    assert_eq!(reads(&mut c, &out).unwrap(), want);
}

#[test]
fn the_alpn_and_server_name_of_the_handshake_are_known() {
    let (_, s) = open_pair();
    assert_eq!(s.server_name(), Some("localhost"));
    // An IP address is never sent as a server name.
    let mut c =
        ClientConnection::new(client_cfg(), ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    let mut s = Session::server(server_cfg(), 64 << 10).unwrap();
    handshake(&mut c, &mut s);
    assert_eq!(s.server_name(), None);
    assert_eq!(c.alpn_protocol(), Some(ALPN_HTTP_1_1));
}

#[test]
fn data_sent_with_the_clients_finished_arrives_whatever_the_cut() {
    let req = b"GET /chat HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(5);
    for cut_back in [0usize, 1, 5, 10, 40, 150] {
        let mut c = peer_client();
        c.writer().write_all(&req).unwrap(); // queued until the handshake is done
        let mut s = Session::server(server_cfg(), 64 << 10).unwrap();
        let mut w = writes(&mut c); // ClientHello
        let mut out = Vec::new();
        s.recv(&mut w, &mut out, |_| panic!("no data yet")).unwrap();
        reads(&mut c, &out).unwrap();
        // Finished and the request in one flight, delivered in two pieces.
        let w = writes(&mut c);
        let cut = w.len() - cut_back.min(w.len());
        let got = deliver(&mut s, &w, &[cut]).unwrap();
        assert!(s.is_open());
        assert_eq!(got, req, "cut {cut_back} B before the end");
    }
}

#[test]
fn every_split_of_the_handshake_completes() {
    let mut c = peer_client();
    let first = writes(&mut c);
    for cut in 0..=first.len() {
        let mut c = peer_client();
        let mut s = Session::server(server_cfg(), 64 << 10).unwrap();
        let w = writes(&mut c);
        let mut out = Vec::new();
        let mut a = w[..cut.min(w.len())].to_vec();
        let mut b = w[cut.min(w.len())..].to_vec();
        s.recv(&mut a, &mut out, |_| {}).unwrap();
        s.recv(&mut b, &mut out, |_| {}).unwrap();
        reads(&mut c, &out).unwrap();
        let fin = writes(&mut c);
        deliver(&mut s, &fin, &[fin.len() / 2]).unwrap();
        assert!(s.is_open(), "cut {cut}");
    }
}

#[test]
fn key_update_requested_by_the_client_is_followed_and_answered() {
    let (mut c, mut s) = open_pair();
    for round in 0..3 {
        c.refresh_traffic_keys().unwrap();
        c.writer()
            .write_all(b"after the client's key update")
            .unwrap();
        let w = writes(&mut c);
        let got = deliver(&mut s, &w, &[w.len() / 3]).unwrap();
        assert_eq!(got, b"after the client's key update", "round {round}");
        assert!(s.wants_flush(), "the client asked for our update");
        let mut out = Vec::new();
        s.seal(&[b"reply under a new key"], &mut out).unwrap();
        assert!(!s.wants_flush());
        assert_eq!(reads(&mut c, &out).unwrap(), b"reply under a new key");
    }
}

#[test]
fn key_update_by_the_server_is_followed_by_the_client() {
    let (mut c, mut s) = open_pair();
    let mut out = Vec::new();
    s.seal(&[b"one"], &mut out).unwrap();
    s.key_update(&mut out).unwrap();
    s.seal(&[b"two"], &mut out).unwrap();
    s.key_update(&mut out).unwrap();
    s.seal(&[b"three"], &mut out).unwrap();
    assert_eq!(reads(&mut c, &out).unwrap(), b"onetwothree");
    // The client's keys did not change: its data still opens.
    c.writer().write_all(b"still fine").unwrap();
    let w = writes(&mut c);
    assert_eq!(deliver(&mut s, &w, &[]).unwrap(), b"still fine");
}

#[test]
fn close_notify_both_ways() {
    let (mut c, mut s) = open_pair();
    c.writer().write_all(b"last words").unwrap();
    c.send_close_notify();
    let mut w = writes(&mut c);
    w.extend_from_slice(b"ignored after close_notify");
    assert_eq!(deliver(&mut s, &w, &[]).unwrap(), b"last words");
    assert!(s.peer_closed() && !s.is_failed());
    let mut out = Vec::new();
    s.close_notify(&mut out);
    s.close_notify(&mut out);
    reads(&mut c, &out).unwrap();
    assert_eq!(
        c.reader().read(&mut [0u8; 8]).unwrap(),
        0,
        "clean end of stream"
    );
    assert!(
        s.seal(&[b"x"], &mut Vec::new()).is_err(),
        "nothing after close_notify"
    );
}

#[test]
fn tampered_record_fails_with_bad_record_mac_and_the_client_hears_it() {
    let (mut c, mut s) = open_pair();
    c.writer().write_all(b"authentic").unwrap();
    let mut w = writes(&mut c);
    c.writer().write_all(b"more").unwrap();
    let more = writes(&mut c);
    let last = w.len() - 1;
    w[last] ^= 0x40;
    let mut out = Vec::new();
    let err = s.recv(&mut w, &mut out, |_| panic!("tampered data delivered"));
    assert!(
        matches!(err, Err(TlsError::Record(RecordError::BadRecordMac))),
        "{err:?}"
    );
    assert!(s.is_failed());
    assert!(client_sees_alert(&mut c, &out).contains("BadRecordMac"));
    // Nothing more is read or sealed.
    assert_eq!(deliver(&mut s, &more, &[]).unwrap(), b"");
    assert!(s.seal(&[b"x"], &mut out).is_err());
}

#[test]
fn oversized_record_fails_with_record_overflow() {
    let (mut c, mut s) = open_pair();
    let mut rec = vec![23u8, 3, 3];
    rec.extend_from_slice(&((CIPHERTEXT_MAX + 1) as u16).to_be_bytes());
    let mut out = Vec::new();
    // Refused at the header, before the body arrives.
    let err = s.recv(&mut rec, &mut out, |_| {});
    assert!(
        matches!(err, Err(TlsError::Record(RecordError::RecordOverflow))),
        "{err:?}"
    );
    assert!(client_sees_alert(&mut c, &out).contains("RecordOverflow"));
}

#[test]
fn plaintext_http_after_the_handshake_is_an_unexpected_message() {
    let (mut c, mut s) = open_pair();
    let mut out = Vec::new();
    let err = s.recv(&mut b"GET / HTTP/1.1\r\n\r\n".to_vec(), &mut out, |_| {});
    assert!(
        matches!(
            err,
            Err(TlsError::Record(RecordError::UnexpectedMessage(_)))
        ),
        "{err:?}"
    );
    assert!(client_sees_alert(&mut c, &out).contains("UnexpectedMessage"));
}

#[test]
fn a_fatal_alert_from_the_client_is_reported_and_not_answered() {
    let (mut c, mut s) = open_pair();
    // Make the client fail: a tampered server record; its bad_record_mac alert comes back.
    let mut out = Vec::new();
    s.seal(&[b"x"], &mut out).unwrap();
    let last = out.len() - 1;
    out[last] ^= 1;
    assert!(reads(&mut c, &out).is_err());
    let alert = writes(&mut c);
    let mut back = Vec::new();
    let err = deliver(&mut s, &alert, &[]);
    assert!(
        matches!(err, Err(TlsError::Record(RecordError::AlertReceived(20)))),
        "{err:?}"
    );
    s.close_notify(&mut back);
    assert!(back.is_empty(), "no answer to a fatal alert");
    assert_eq!(
        err.unwrap_err().to_string(),
        "TLS: peer sent alert bad_record_mac"
    );
}

#[test]
fn garbage_and_plaintext_http_fail_the_handshake_with_an_alert() {
    for input in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..300u32).map(|i| (i * 7919 % 251) as u8).collect(),
        vec![22, 3, 1, 0, 5, 1, 0, 0, 1, 0],
    ] {
        let mut s = Session::server(server_cfg(), 64 << 10).unwrap();
        let mut out = Vec::new();
        let mut buf = input.clone();
        let err = s.recv(&mut buf, &mut out, |_| panic!("no data"));
        assert!(matches!(err, Err(TlsError::Handshake(_))), "{err:?}");
        // rustls' alert, unencrypted: type 21, version 3.x, 2 bytes.
        assert_eq!(&out[..1], &[21], "{input:?}");
        assert!(s.is_failed());
        assert!(
            s.recv(&mut input.clone(), &mut out, |_| {}).is_ok(),
            "failed: ignores"
        );
    }
}

#[test]
fn truncated_client_hello_waits_and_the_limit_bounds_it() {
    let mut c = peer_client();
    let hello = writes(&mut c);
    let mut s = Session::server(server_cfg(), 64 << 10).unwrap();
    let mut out = Vec::new();
    s.recv(&mut hello[..hello.len() / 2].to_vec(), &mut out, |_| {})
        .unwrap();
    assert!(s.is_handshaking() && out.is_empty());
    // The same half over a limit smaller than it.
    let mut s = Session::server(server_cfg(), 100).unwrap();
    let err = s.recv(&mut hello[..hello.len() / 2].to_vec(), &mut out, |_| {});
    assert!(matches!(err, Err(TlsError::HandshakeTooLarge)), "{err:?}");
}

#[test]
fn the_server_config_must_allow_secret_extraction() {
    let raw = Arc::new(base_server_config());
    assert!(Session::server(raw, 1 << 16).is_err());
}

// ---------------------------------------------------------------------------------------------
// Session (client side) against a rustls server.

fn rustls_server(tickets: usize) -> ServerConnection {
    let mut cfg = base_server_config();
    cfg.send_tls13_tickets = tickets;
    ServerConnection::new(Arc::new(cfg)).unwrap()
}

pub(super) fn server_reads(
    s: &mut ServerConnection,
    data: &[u8],
) -> Result<Vec<u8>, rustls::Error> {
    let mut rd = data;
    let mut got = Vec::new();
    while !rd.is_empty() {
        s.read_tls(&mut rd).unwrap();
        s.process_new_packets()?;
        let mut buf = [0u8; 1 << 16];
        while let Ok(n) = s.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    Ok(got)
}

pub(super) fn server_writes(s: &mut ServerConnection) -> Vec<u8> {
    let mut v = Vec::new();
    while s.wants_write() {
        s.write_tls(&mut v).unwrap();
    }
    v
}

fn client_session(roots: RootCertStore) -> (Session, Vec<u8>) {
    let cfg = prepare_client(&client_config(roots));
    let mut out = Vec::new();
    let s = Session::client(cfg, localhost(), 64 << 10, &mut out).unwrap();
    (s, out)
}

#[test]
fn client_session_talks_to_a_rustls_server_with_tickets_and_key_updates() {
    let (mut cs, hello) = client_session(roots());
    let mut srv = rustls_server(2);
    server_reads(&mut srv, &hello).unwrap();
    let mut flight = server_writes(&mut srv);
    let mut out = Vec::new();
    cs.recv(&mut flight, &mut out, |_| panic!("no data"))
        .unwrap();
    assert!(cs.is_open());
    server_reads(&mut srv, &out).unwrap();
    assert!(!srv.is_handshaking());
    // The server's tickets and data, then its KeyUpdate, then more data.
    srv.writer().write_all(b"from the server").unwrap();
    srv.refresh_traffic_keys().unwrap();
    srv.writer().write_all(b", rekeyed").unwrap();
    let mut w = server_writes(&mut srv);
    let mut got = Vec::new();
    let mut out = Vec::new();
    cs.recv(&mut w, &mut out, |p| got.extend_from_slice(p))
        .unwrap();
    assert_eq!(got, b"from the server, rekeyed");
    assert!(cs.wants_flush());
    cs.seal_all(b"from the client", &mut out).unwrap();
    assert_eq!(server_reads(&mut srv, &out).unwrap(), b"from the client");
}

#[test]
fn client_session_refuses_a_server_from_an_unknown_ca() {
    let (mut cs, hello) = client_session(RootCertStore::empty());
    let mut srv = rustls_server(0);
    server_reads(&mut srv, &hello).unwrap();
    let mut flight = server_writes(&mut srv);
    let mut out = Vec::new();
    let err = cs.recv(&mut flight, &mut out, |_| {}).unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(cs.is_failed());
    let e = server_reads(&mut srv, &out).unwrap_err();
    assert!(format!("{e:?}").contains("UnknownCA"), "{e:?}");
}
