//! TLS itself, on both backends (every other behaviour file also runs over TLS through the
//! transport axis): the TLS port hit by plaintext HTTP, random bytes and a truncated ClientHello,
//! a tampered record and a fatal alert mid-stream, close_notify both ways, KeyUpdates, the TLS
//! handshake limit, SNI in `on_upgrade`, a plain and a TLS listener on the same shards, a TLS
//! ClientHello on the plain port, and `Connect::tls` refusing an unknown CA. The server stays up
//! and every other connection is untouched throughout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::handlers::Event;
use common::raw::{self, op, RawClient, Stream};
use rustls::pki_types::ServerName;
use rustls::ClientConnection;

/// The warn lines the engine logged (one logger per test process).
fn logged() -> &'static Mutex<Vec<String>> {
    static LINES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LINES.get_or_init(Mutex::default)
}

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            logged().lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static CAPTURE: Capture = Capture;
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

fn log_mentions(text: &str) -> bool {
    logged().lock().unwrap().iter().any(|l| l.contains(text))
}

/// Everything the server sends on `s` until it closes (bounded).
fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if raw::is_timeout(&e) => panic!("the server kept the connection open"),
            Err(_) => return got,
        }
    }
}

/// A ClientHello as rustls' client sends it.
fn client_hello() -> Vec<u8> {
    let mut c = ClientConnection::new(common::tls::client_config(), localhost()).expect("client");
    let mut v = Vec::new();
    c.write_tls(&mut v).unwrap();
    v
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// A TLS client driven by hand (rustls, no stream wrapper), so a test can tamper with records
/// or make the client fail.
struct Manual {
    tcp: TcpStream,
    conn: ClientConnection,
}

impl Manual {
    /// TLS handshake and WebSocket upgrade with `addr`.
    fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(common::WAIT)).unwrap();
        let conn = ClientConnection::new(common::tls::client_config(), localhost()).unwrap();
        let mut m = Manual { tcp, conn };
        let req = raw::upgrade_request(addr, "/", &raw::new_key(), &[]);
        m.conn.writer().write_all(req.as_bytes()).unwrap();
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            m.flush();
            got.extend(m.read_plain().expect("101 response"));
        }
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        m
    }

    fn flush(&mut self) {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.tcp).unwrap();
        }
    }

    /// The client's pending records, not written yet.
    fn take_records(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut v).unwrap();
        }
        v
    }

    /// Read once from the socket and return the plaintext (Err: rustls' error, or the end).
    fn read_plain(&mut self) -> Result<Vec<u8>, String> {
        let n = self
            .conn
            .read_tls(&mut self.tcp)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("end of stream".into());
        }
        self.conn
            .process_new_packets()
            .map_err(|e| format!("{e:?}"))?;
        let mut out = Vec::new();
        let mut buf = [0u8; 1 << 16];
        while let Ok(n) = self.conn.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    }
}

/// A plain and a TLS client that must keep working whatever happens to others.
fn bystanders(server: &common::TestServer) -> (RawClient, RawClient) {
    let mut plain = RawClient::connect(server.handle().local_addr()).unwrap();
    let mut tls = RawClient::connect(server.addr).unwrap();
    assert!(!plain.stream.is_tls() && tls.stream.is_tls());
    plain.echo_text("plain bystander");
    tls.echo_text("tls bystander");
    (plain, tls)
}

fn closed_reason(server: &common::TestServer) -> (Option<u16>, String) {
    match server.wait_event("on_close", |e| matches!(e, Event::Closed(..))) {
        Event::Closed(_, code, reason) => (code, reason),
        _ => unreachable!(),
    }
}

tls_only! {
    fn plaintext_http_and_random_bytes_to_the_tls_port_fail_there_only(backend) {
        capture_logs();
        let server = common::start(backend);
        let (mut plain, mut tls) = bystanders(&server);
        // An upgrade request in the clear: the server answers with a TLS alert, not HTTP.
        let mut s = TcpStream::connect(server.addr).unwrap();
        let req = raw::upgrade_request(server.addr, "/", &raw::new_key(), &[]);
        s.write_all(req.as_bytes()).unwrap();
        let got = read_to_end(&mut s);
        assert_eq!(got.first(), Some(&21), "an alert record, got {:?}", String::from_utf8_lossy(&got));
        assert!(!got.starts_with(b"HTTP"));
        // Random bytes, several times.
        for seed in 1..=5u32 {
            let mut s = TcpStream::connect(server.addr).unwrap();
            let junk: Vec<u8> = (0..3000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> (seed + 3)) as u8).collect();
            let _ = s.write_all(&junk);
            read_to_end(&mut s);
        }
        common::wait_until("six TLS failures counted", || server.handle().stats().tls_failures >= 6);
        assert!(log_mentions("TLS handshake failed"), "{:?}", logged().lock().unwrap());
        plain.echo_text("still served");
        tls.echo_text("still served");
        RawClient::connect(server.addr).unwrap().echo_text("a new TLS client");
        let stats = server.handle().stats();
        assert_eq!(stats.tls_failures, 6, "{stats:?}");
        assert_eq!(stats.upgraded, 3);
        // Their closes are counted under the `tls_failure` reason (metrics), nothing else is.
        let metrics = server.handle().metrics_handle();
        let tls_closed = || -> u64 {
            metrics.snapshot().shards.iter().map(|sh| sh.closed(percore::CloseReason::TlsFailure)).sum()
        };
        common::wait_until("six closes for tls_failure", || tls_closed() >= 6);
        assert_eq!(tls_closed(), 6);
    }

    fn truncated_client_hello_is_closed_at_the_handshake_timeout(backend) {
        let server = common::start_with(backend, |b| b.handshake_timeout(Duration::from_millis(300)));
        let (mut plain, mut tls) = bystanders(&server);
        let hello = client_hello();
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(&hello[..hello.len() / 2]).unwrap();
        assert!(read_to_end(&mut s).is_empty(), "nothing is answered to half a ClientHello");
        common::wait_until("the handshake timeout is counted", || server.handle().stats().timeouts >= 1);
        plain.echo_text("still served");
        tls.echo_text("still served");
    }

    fn tampered_record_mid_stream_gets_bad_record_mac_and_1006(backend) {
        let server = common::start(backend);
        let (mut plain, mut tls) = bystanders(&server);
        let mut m = Manual::open(server.addr);
        let frame = raw::encode_frame(true, 0, op::TEXT, b"tampered", [1, 2, 3, 4]);
        m.conn.writer().write_all(&frame).unwrap();
        let mut rec = m.take_records();
        let last = rec.len() - 1;
        rec[last] ^= 0x80;
        m.tcp.write_all(&rec).unwrap();
        let err = m.read_plain().unwrap_err();
        assert!(err.contains("BadRecordMac"), "the client hears bad_record_mac: {err}");
        // The server lingers after its alert until our FIN (or its close timeout).
        m.tcp.shutdown(std::net::Shutdown::Write).unwrap();
        let (code, reason) = closed_reason(&server);
        assert_eq!(code, Some(1006));
        assert!(reason.contains("bad_record_mac"), "{reason}");
        assert_eq!(server.handle().stats().tls_failures, 1);
        plain.echo_text("still served");
        tls.echo_text("still served");
    }

    fn fatal_alert_from_the_client_mid_stream_closes_with_1006(backend) {
        let server = common::start(backend);
        let (mut plain, mut tls) = bystanders(&server);
        let mut m = Manual::open(server.addr);
        // The client gets a tampered record from "the server" (we flip a bit of what the
        // server sent), fails, and sends its fatal alert.
        let echo = raw::encode_frame(true, 0, op::TEXT, b"echo me", [9, 9, 9, 9]);
        m.conn.writer().write_all(&echo).unwrap();
        m.flush();
        let mut buf = [0u8; 4096];
        let n = m.tcp.read(&mut buf).unwrap();
        buf[n - 1] ^= 1;
        m.conn.read_tls(&mut &buf[..n]).unwrap();
        assert!(m.conn.process_new_packets().is_err());
        m.flush();
        let (code, reason) = closed_reason(&server);
        assert_eq!(code, Some(1006));
        assert!(reason.contains("peer sent alert bad_record_mac"), "{reason}");
        assert_eq!(server.handle().stats().tls_failures, 1);
        plain.echo_text("still served");
        tls.echo_text("still served");
    }

    fn close_notify_follows_the_close_handshake(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.echo_text("hi");
        c.send_close(1000, "bye").unwrap();
        assert_eq!(c.read_until_close(), raw::Ending::Close(Some(1000)));
        // A clean end of the TLS stream: close_notify, then FIN (rustls reports a FIN without
        // close_notify as an error).
        let mut rest = Vec::new();
        assert!(c.stream.read_to_end(&mut rest).is_ok(), "close_notify before the end");
        assert!(rest.is_empty());
        assert_eq!(server.handle().stats().tls_failures, 0);
    }

    fn close_notify_without_a_close_frame_is_answered_and_reported_1006(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.echo_text("hi");
        c.shutdown_write();
        let mut rest = Vec::new();
        assert!(c.stream.read_to_end(&mut rest).is_ok(), "the server answers close_notify");
        let (code, reason) = closed_reason(&server);
        assert_eq!(code, Some(1006));
        assert!(reason.contains("close_notify"), "{reason}");
    }

    fn key_updates_from_the_client_are_followed_and_answered(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        for round in 0..5 {
            if let Stream::Tls(s) = &mut c.stream {
                s.conn.refresh_traffic_keys().unwrap();
            }
            c.echo_text(&format!("after key update {round}"));
            c.send_binary(&vec![round as u8; 40_000]).unwrap();
            assert_eq!(c.read_message().unwrap(), (op::BINARY, vec![round as u8; 40_000]));
        }
        assert_eq!(server.handle().stats().tls_failures, 0);
    }

    fn handshake_input_past_tls_handshake_bytes_max_is_refused(backend) {
        let limit = (1 << 14) + 256 + 5;
        let server = common::start_with(backend, |b| b.tls_handshake_bytes_max(limit));
        let (mut plain, mut tls) = bystanders(&server);
        // A ClientHello announced as 40,000 bytes, sent as full records: rustls waits for the
        // rest of the message, and what it holds grows past the limit on the third record.
        let mut s = TcpStream::connect(server.addr).unwrap();
        let mut msg = vec![1u8, 0, 0x9c, 0x40];
        msg.resize(40_004, 0x42);
        let mut wire = Vec::new();
        for chunk in msg.chunks(1 << 14) {
            wire.extend_from_slice(&[22, 3, 1]);
            wire.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            wire.extend_from_slice(chunk);
        }
        let _ = s.write_all(&wire);
        read_to_end(&mut s);
        common::wait_until("the failure is counted", || server.handle().stats().tls_failures == 1);
        // A normal handshake under the same limit goes through.
        plain.echo_text("still served");
        tls.echo_text("still served");
        RawClient::connect(server.addr).unwrap().echo_text("fits");
    }

    fn sni_and_tls_reach_on_upgrade(backend) {
        let server = common::start(backend);
        let upgrade = |s: &common::TestServer| s.wait_event("on_upgrade", |e| matches!(e, Event::Upgrade { .. }));
        RawClient::connect(server.addr).unwrap();
        assert_eq!(upgrade(&server), Event::Upgrade { tls: true, server_name: Some("localhost".into()) });
        RawClient::connect(server.handle().local_addr()).unwrap();
        assert_eq!(upgrade(&server), Event::Upgrade { tls: false, server_name: None });
        // No name sent for an IP address.
        let tcp = TcpStream::connect(server.addr).unwrap();
        let ip = ServerName::try_from("127.0.0.1").unwrap();
        let conn = ClientConnection::new(common::tls::client_config(), ip).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(raw::upgrade_request(server.addr, "/", &raw::new_key(), &[]).as_bytes()).unwrap();
        let (resp, _) = raw::read_response_head(&mut s).unwrap();
        assert_eq!(resp.status, 101);
        assert_eq!(upgrade(&server), Event::Upgrade { tls: true, server_name: None });
    }

    fn plain_and_tls_clients_share_the_shards_and_broadcasts(backend) {
        let server = common::start(backend);
        let plain_addr = server.handle().local_addr();
        let mut clients: Vec<RawClient> = (0..12)
            .map(|i| RawClient::connect(if i % 2 == 0 { plain_addr } else { server.addr }).unwrap())
            .collect();
        for c in &mut clients {
            c.echo_text("open");
        }
        clients[1].send_text("cmd:broadcast:to plain and tls alike").unwrap();
        for (i, c) in clients.iter_mut().enumerate() {
            let (kind, got) = c.read_message().unwrap();
            assert_eq!((kind, got.as_slice()), (op::TEXT, &b"to plain and tls alike"[..]), "client {i}");
        }
        server.handle().broadcast(percore::Message::Binary(&[7u8; 100_000]));
        for c in &mut clients {
            assert_eq!(c.read_message().unwrap(), (op::BINARY, vec![7u8; 100_000]));
        }
        assert_eq!(server.handle().stats().tls_handshakes, 6);
    }

    fn tls_client_hello_on_the_plain_port_gets_400(backend) {
        let server = common::start(backend);
        let mut s = TcpStream::connect(server.handle().local_addr()).unwrap();
        s.write_all(&client_hello()).unwrap();
        let got = read_to_end(&mut s);
        assert!(got.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&got));
        assert_eq!(server.handle().stats().tls_failures, 0, "the plain port knows no TLS");
    }

    fn outbound_wss_to_a_server_from_an_unknown_ca_reports_1006(backend) {
        let server = common::start(backend);
        let (tx, rx) = std::sync::mpsc::channel();
        let client = common::builder(backend)
            .shards(percore::Shards::Count(1))
            .start(move |_| common::handlers::TestHandler { events: tx.clone() })
            .unwrap();
        let untrusting = percore::tls::client_config(rustls::RootCertStore::empty());
        client
            .connect(0, percore::Connect::new(server.addr).tls(Arc::new(untrusting)).server_name("localhost"))
            .unwrap();
        let reason = loop {
            match rx.recv_timeout(common::WAIT).expect("on_close of the outbound connection") {
                Event::Closed(_, code, reason) => {
                    assert_eq!(code, Some(1006));
                    break reason;
                }
                Event::Opened(_) => panic!("opened against an unknown CA"),
                _ => {}
            }
        };
        assert!(reason.contains("UnknownIssuer"), "{reason}");
        assert_eq!(client.stats().tls_failures, 1);
        common::wait_until("the server saw the client's alert", || server.handle().stats().tls_failures == 1);
    }

    fn a_client_asking_for_another_name_refuses_the_certificate_and_fails_alone(backend) {
        capture_logs();
        let server = common::start(backend);
        let (mut plain, mut tls) = bystanders(&server);
        let err = handshake_error(server.addr, "wrong.example");
        assert!(err.contains("NotValidForName"), "the client names the mismatch: {err}");
        common::wait_until("the server counts the client's alert", || server.handle().stats().tls_failures == 1);
        assert!(log_mentions("BadCertificate"), "{:?}", logged().lock().unwrap());
        plain.echo_text("still served");
        tls.echo_text("still served");
    }

    fn a_server_name_no_certificate_answers_is_refused_by_the_server(backend) {
        capture_logs();
        // The application's resolver knows only "localhost".
        let p = common::tls::pki();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(p.key.clone().into());
        let signing = percore::tls::provider().key_provider.load_private_key(key).unwrap();
        let mut by_name = rustls::server::ResolvesServerCertUsingSni::new();
        by_name.add("localhost", rustls::sign::CertifiedKey::new(p.chain.clone(), signing)).unwrap();
        let mut cfg = common::tls::server_config();
        cfg.cert_resolver = Arc::new(by_name);
        let server = common::start_with(backend, |b| b.tls(cfg));
        let (mut plain, mut tls) = bystanders(&server);
        let err = handshake_error(server.addr, "other.localhost");
        assert!(err.contains("AlertReceived"), "the client hears the server's alert: {err}");
        common::wait_until("the refusal is counted", || server.handle().stats().tls_failures == 1);
        assert!(log_mentions("no server certificate"), "{:?}", logged().lock().unwrap());
        plain.echo_text("still served");
        tls.echo_text("still served");
    }

    fn an_expired_certificate_is_refused_by_clients_and_counted(backend) {
        let server = common::start_with(backend, |b| b.tls(common::tls::expired_server_config()));
        let mut plain = RawClient::connect(server.handle().local_addr()).unwrap();
        let err = handshake_error(server.addr, "localhost");
        assert!(err.contains("Expired"), "the client names the expiry: {err}");
        common::wait_until("the client's alert is counted", || server.handle().stats().tls_failures == 1);
        // percore's own client (Connect::tls) trusting the CA refuses it too, with the reason.
        let (tx, rx) = std::sync::mpsc::channel();
        let client = common::builder(backend)
            .shards(percore::Shards::Count(1))
            .start(move |_| common::handlers::TestHandler { events: tx.clone() })
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(common::tls::pki().ca.clone()).unwrap();
        let trusting = percore::tls::client_config(roots);
        client
            .connect(0, percore::Connect::new(server.addr).tls(Arc::new(trusting)).server_name("localhost"))
            .unwrap();
        let reason = loop {
            match rx.recv_timeout(common::WAIT).expect("on_close of the outbound connection") {
                Event::Closed(_, code, reason) => {
                    assert_eq!(code, Some(1006));
                    break reason;
                }
                Event::Opened(_) => panic!("opened with an expired certificate"),
                _ => {}
            }
        };
        assert!(reason.contains("certificate expired"), "{reason}");
        assert_eq!(client.stats().tls_failures, 1);
        common::wait_until("both clients' alerts are counted", || server.handle().stats().tls_failures == 2);
        plain.echo_text("still served");
    }

    fn a_record_cut_short_by_the_peers_eof_is_a_tls_failure(backend) {
        capture_logs();
        let server = common::start(backend);
        let (mut plain, mut tls) = bystanders(&server);
        let mut m = Manual::open(server.addr);
        let frame = raw::encode_frame(true, 0, op::TEXT, b"never whole", [1, 2, 3, 4]);
        m.conn.writer().write_all(&frame).unwrap();
        let rec = m.take_records();
        m.tcp.write_all(&rec[..rec.len() - 7]).unwrap();
        m.tcp.shutdown(std::net::Shutdown::Write).unwrap();
        let (code, reason) = closed_reason(&server);
        assert_eq!(code, Some(1006));
        assert!(reason.contains("cut short"), "{reason}");
        assert_eq!(server.handle().stats().tls_failures, 1);
        assert!(log_mentions("cut short"), "{:?}", logged().lock().unwrap());
        // Half a ClientHello, then FIN: counted the same way, without waiting for the timeout.
        let hello = client_hello();
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(&hello[..hello.len() / 2]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(read_to_end(&mut s).is_empty());
        common::wait_until("the cut ClientHello is counted", || server.handle().stats().tls_failures == 2);
        // A FIN between records (no close_notify) is an ordinary EOF, not a TLS failure.
        let mut c = RawClient::connect(server.addr).unwrap();
        c.echo_text("whole records");
        c.stream.tcp().shutdown(std::net::Shutdown::Write).unwrap();
        let (code, reason) = closed_reason(&server);
        assert_eq!(code, Some(1006));
        assert!(!reason.contains("cut short"), "{reason}");
        assert_eq!(server.handle().stats().tls_failures, 2);
        plain.echo_text("still served");
        tls.echo_text("still served");
    }
}

/// Run a TLS handshake with `addr` as a rustls client (trusting the test CA) asking for `name`,
/// expecting it to fail; returns the client's error.
fn handshake_error(addr: SocketAddr, name: &str) -> String {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(common::WAIT)).unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = ClientConnection::new(common::tls::client_config(), name).unwrap();
    match conn.complete_io(&mut tcp) {
        Ok(_) => panic!("the handshake completed"),
        Err(e) => format!("{e:?}"),
    }
}
