//! Smoke tests of the runtime over real sockets on 127.0.0.1 (the full suite lives in the other
//! test files): echo, ping/pong, close handshake, protocol errors, graceful shutdown, outbound
//! connections (`wss://` through `Connect::tls` over TLS).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::raw::Stream;
use percore::{Backend, CloseCode, Conn, Handler, Message, ServerHandle, Shards};
use tungstenite::protocol::frame::coding::CloseCode as TCode;
use tungstenite::Message as TMessage;

struct Echo;

impl Handler for Echo {
    type State = ();
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

fn start(backend: Backend) -> ServerHandle {
    common::builder(backend)
        .close_timeout(Duration::from_secs(2))
        .start(|_| Echo)
        .expect("server starts")
}

type Client = tungstenite::WebSocket<Stream>;

fn connect(server: &ServerHandle) -> Client {
    let addr = common::addr_of(server);
    let stream = Stream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let url = format!("ws://{addr}/");
    let (ws, resp) = tungstenite::client(url, stream).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

fn text_and_binary_messages_are_echoed(backend: Backend) {
    let server = start(backend);
    let mut ws = connect(&server);
    ws.send(TMessage::text("hello")).unwrap();
    assert_eq!(ws.read().unwrap(), TMessage::text("hello"));
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    ws.send(TMessage::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), TMessage::binary(big));
    ws.close(None).unwrap();
    server.shutdown(Duration::from_secs(1));
}

fn ping_is_answered_with_pong_carrying_the_payload(backend: Backend) {
    let server = start(backend);
    let mut ws = connect(&server);
    ws.send(TMessage::Ping(b"abc".to_vec())).unwrap();
    assert_eq!(ws.read().unwrap(), TMessage::Pong(b"abc".to_vec()));
}

fn close_handshake_echoes_the_code_and_server_hangs_up(backend: Backend) {
    let server = start(backend);
    let mut ws = connect(&server);
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: TCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    match ws.read().unwrap() {
        TMessage::Close(Some(f)) => assert_eq!(f.code, TCode::Normal),
        other => panic!("expected close, got {other:?}"),
    }
    // Then the server closes TCP.
    assert!(matches!(
        ws.read(),
        Err(tungstenite::Error::ConnectionClosed)
    ));
}

/// Reads the raw close frame the server sends after a broken frame.
fn raw_close_code_after(backend: Backend, bytes: &[u8]) -> u16 {
    let server = start(backend);
    let mut s = Stream::connect(common::addr_of(&server)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = percore::proto::client_request(
        &server.local_addr().to_string(),
        "/",
        "dGhlIHNhbXBsZSBub25jZQ==",
        &[],
        &[],
    );
    s.write_all(&req).unwrap();
    let mut resp = Vec::new();
    let mut b = [0u8; 1];
    while !resp.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        resp.push(b[0]);
    }
    assert!(resp.starts_with(b"HTTP/1.1 101"));
    s.write_all(bytes).unwrap();
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(hdr[0], 0x88, "a close frame");
    u16::from_be_bytes([hdr[2], hdr[3]])
}

fn unmasked_client_frame_is_closed_with_1002(backend: Backend) {
    assert_eq!(
        raw_close_code_after(backend, &[0x81, 0x02, b'h', b'i']),
        1002
    );
}

fn invalid_utf8_text_is_closed_with_1007(backend: Backend) {
    // Masked with a zero key: payload as is.
    assert_eq!(
        raw_close_code_after(backend, &[0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28]),
        1007
    );
}

fn graceful_shutdown_sends_1001_to_every_client(backend: Backend) {
    let server = start(backend);
    let mut a = connect(&server);
    let mut b = connect(&server);
    // Make sure both are open on the server side.
    a.send(TMessage::text("x")).unwrap();
    a.read().unwrap();
    b.send(TMessage::text("y")).unwrap();
    b.read().unwrap();
    let t = std::thread::spawn(move || server.shutdown(Duration::from_secs(3)));
    for ws in [&mut a, &mut b] {
        match ws.read().unwrap() {
            TMessage::Close(Some(f)) => assert_eq!(f.code, TCode::Away),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    t.join().unwrap();
}

fn on_close_reports_the_peer_close_code(backend: Backend) {
    use std::sync::mpsc;
    struct Report(mpsc::Sender<Option<CloseCode>>);
    impl Handler for Report {
        type State = ();
        fn on_message(&mut self, _: &mut Conn<'_, ()>, _: Message<'_>) {}
        fn on_close(&mut self, _: (), _: percore::ConnId, code: Option<CloseCode>, _: &str) {
            let _ = self.0.send(code);
        }
    }
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = common::builder(backend)
        .shards(Shards::Count(1))
        .start(move |_| Report(tx.lock().unwrap().clone()))
        .unwrap();
    let mut ws = connect(&server);
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: TCode::Library(4000),
        reason: "".into(),
    }))
    .unwrap();
    let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(got, Some(CloseCode(4000)));
}

/// What an outbound connection's handler saw.
#[derive(Debug, PartialEq)]
enum Seen {
    Open,
    Text(String),
    Binary(Vec<u8>),
    Closed(Option<CloseCode>, String),
}

/// Sends a text and a binary message on open, reports everything, closes after the 2nd echo.
struct Outbound(std::sync::mpsc::Sender<Seen>, usize);

impl Handler for Outbound {
    type State = ();
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        let _ = self.0.send(Seen::Open);
        conn.send_text("hello from a shard").unwrap();
        conn.send_binary(&[7u8; 70_000]).unwrap();
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = self.0.send(match msg {
            Message::Text(t) => Seen::Text(t.to_owned()),
            Message::Binary(b) => Seen::Binary(b.to_vec()),
        });
        self.1 += 1;
        if self.1 == 2 {
            conn.close(CloseCode::NORMAL, "done");
        }
    }
    fn on_close(&mut self, _: (), _: percore::ConnId, code: Option<CloseCode>, reason: &str) {
        let _ = self.0.send(Seen::Closed(code, reason.to_owned()));
    }
}

fn outbound(backend: Backend) -> (ServerHandle, std::sync::mpsc::Receiver<Seen>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let client = common::builder(backend)
        .shards(Shards::Count(1))
        .handshake_timeout(Duration::from_secs(2))
        .start(move |_| Outbound(tx.lock().unwrap().clone(), 0))
        .expect("client side starts");
    (client, rx)
}

fn outbound_connection_exchanges_messages_and_closes(backend: Backend) {
    let server = start(backend);
    let (client, rx) = outbound(backend);
    client
        .connect(0, target(&server).path("/chat"))
        .expect("tcp connect");
    let next = || rx.recv_timeout(Duration::from_secs(5)).expect("event");
    assert_eq!(next(), Seen::Open);
    assert_eq!(next(), Seen::Text("hello from a shard".into()));
    assert_eq!(next(), Seen::Binary(vec![7u8; 70_000]));
    assert_eq!(next(), Seen::Closed(Some(CloseCode::NORMAL), String::new()));
}

fn outbound_connection_refused_by_the_server_reports_1006(backend: Backend) {
    struct No;
    impl Handler for No {
        type State = ();
        fn on_upgrade(
            &mut self,
            _: &percore::Request,
            up: percore::Upgrade<()>,
        ) -> percore::Decision<()> {
            up.reject(percore::Reject::new(403, "no"))
        }
        fn on_message(&mut self, _: &mut Conn<'_, ()>, _: Message<'_>) {}
    }
    let server = common::builder(backend)
        .shards(Shards::Count(1))
        .start(|_| No)
        .unwrap();
    let (client, rx) = outbound(backend);
    client.connect(0, target(&server)).expect("tcp connect");
    match rx.recv_timeout(Duration::from_secs(5)).expect("event") {
        Seen::Closed(code, _) => assert_eq!(code, Some(CloseCode::ABNORMAL)),
        other => panic!("expected a failed handshake, got {other:?}"),
    }
}

fn broadcast_reaches_every_connection_on_every_shard(backend: Backend) {
    struct Fanout;
    impl Handler for Fanout {
        type State = ();
        fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
            conn.broadcast(msg);
        }
    }
    let server = common::builder(backend).start(|_| Fanout).unwrap();
    // Enough connections that both shards hold some (SO_REUSEPORT spreads them by hash).
    let mut clients: Vec<Client> = (0..8).map(|_| connect(&server)).collect();
    // Make sure every connection is open on its shard before publishing.
    for c in clients.iter_mut() {
        c.send(TMessage::Ping(b"ready".to_vec())).unwrap();
        assert_eq!(c.read().unwrap(), TMessage::Pong(b"ready".to_vec()));
    }
    clients[0].send(TMessage::text("to everyone")).unwrap();
    for c in clients.iter_mut() {
        assert_eq!(c.read().unwrap(), TMessage::text("to everyone"));
    }
    // And from outside the shards.
    server.broadcast(Message::Binary(b"from the handle"));
    for c in clients.iter_mut() {
        assert_eq!(
            c.read().unwrap(),
            TMessage::binary(b"from the handle".to_vec())
        );
    }
}

fn frames_split_across_many_reads_are_reassembled(backend: Backend) {
    let server = start(backend);
    let mut s = Stream::connect(common::addr_of(&server)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = percore::proto::client_request(
        &server.local_addr().to_string(),
        "/",
        "dGhlIHNhbXBsZSBub25jZQ==",
        &[],
        &[],
    );
    // Upgrade request and frames in one stream, cut in small pieces: every piece boundary
    // falls inside a request line, a frame header, a control frame or a payload.
    let mut wire = req.clone();
    let mask = Some([1, 2, 3, 4]);
    let text = "x".repeat(300); // 16-bit length form
    percore::proto::encode_frame(
        &mut wire,
        percore::proto::OpCode::Text,
        true,
        text.as_bytes(),
        mask,
    );
    percore::proto::encode_frame(
        &mut wire,
        percore::proto::OpCode::Ping,
        true,
        b"mid-stream",
        mask,
    );
    percore::proto::encode_frame(
        &mut wire,
        percore::proto::OpCode::Binary,
        true,
        &[9u8; 5],
        mask,
    );
    let mut at = 0;
    let mut piece = 1;
    while at < wire.len() {
        let end = (at + piece).min(wire.len());
        s.write_all(&wire[at..end]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        at = end;
        piece = piece % 7 + 1;
    }
    let mut got = Vec::new();
    let expect_len = 4 + 300 + 2 + 10 + 2 + 5; // three unmasked frames back
    let mut buf = [0u8; 4096];
    // Read until the response and all three frames are in (they may come in several reads).
    let p = loop {
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() >= p + 4 + expect_len {
                break p + 4;
            }
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "server closed early");
        got.extend_from_slice(&buf[..n]);
    };
    let frames = &got[p..];
    assert_eq!(&frames[..4], &[0x81, 126, 1, 44]);
    assert_eq!(&frames[4..304], text.as_bytes());
    assert_eq!(&frames[304..316], b"\x8a\x0amid-stream");
    assert_eq!(&frames[316..323], &[0x82, 5, 9, 9, 9, 9, 9]);
}

/// `server` as an outbound connection's target: over TLS its TLS port, through `Connect::tls`.
fn target(server: &ServerHandle) -> percore::Connect {
    common::connect_target(common::addr_of(server))
}

/// Every behaviour runs on both backends and both transports: `epoll::name`,
/// `io_uring::name`, `epoll_tls::name`, `io_uring_tls::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $(#[test]
            fn $name() {
                crate::common::run_on(percore::Backend::Epoll, crate::common::Transport::Plain, stringify!($name), super::$name)
            })*
        }
        mod io_uring {
            $(#[test]
            fn $name() {
                crate::common::run_on(percore::Backend::IoUring, crate::common::Transport::Plain, stringify!($name), super::$name)
            })*
        }
        mod epoll_tls {
            $(#[test]
            fn $name() {
                crate::common::run_on(percore::Backend::Epoll, crate::common::Transport::Tls, stringify!($name), super::$name)
            })*
        }
        mod io_uring_tls {
            $(#[test]
            fn $name() {
                crate::common::run_on(percore::Backend::IoUring, crate::common::Transport::Tls, stringify!($name), super::$name)
            })*
        }
    };
}

on_both_backends!(
    text_and_binary_messages_are_echoed,
    ping_is_answered_with_pong_carrying_the_payload,
    close_handshake_echoes_the_code_and_server_hangs_up,
    unmasked_client_frame_is_closed_with_1002,
    invalid_utf8_text_is_closed_with_1007,
    graceful_shutdown_sends_1001_to_every_client,
    on_close_reports_the_peer_close_code,
    outbound_connection_exchanges_messages_and_closes,
    outbound_connection_refused_by_the_server_reports_1006,
    broadcast_reaches_every_connection_on_every_shard,
    frames_split_across_many_reads_are_reassembled,
);
