//! permessage-deflate (RFC 7692) over real sockets, on both backends: negotiation in shared and
//! dedicated mode, echoes of compressed messages of every size (whole and fragmented), the
//! dedicated-state budget, the idle history, outbound connections, broadcasts, and bad input
//! (RSV1 without negotiation or on a continuation, corrupt data, a bomb), after which the
//! server keeps serving. Every test also runs over wss:// (`every_backend!`'s `_tls` runs).
//!
//! The client side here compresses and inflates with flate2 on miniz_oxide, a deflate
//! implementation independent of the server's zlib-rs (except where a 4 KiB window with context
//! takeover is needed, which miniz_oxide cannot make: there percore's own compressor is used,
//! and the Python and Node interop tests cover independent clients).

mod common;

use std::time::Duration;

use common::raw::{encode_frame, op, Frame, RawClient};
use flate2::{Compress, Compression as Level, Decompress, FlushCompress, FlushDecompress};
use percore::proto::deflate::{Compressor, Window};
use percore::{Backend, Compression};

const OFFER: (&str, &str) = (
    "Sec-WebSocket-Extensions",
    "permessage-deflate; client_max_window_bits",
);
const TRAILER: [u8; 4] = [0, 0, 0xff, 0xff];
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// Raw deflate of one message with a sync flush, trailer removed (flate2 / miniz_oxide).
fn deflate(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let start = c.total_in();
    loop {
        let used = (c.total_in() - start) as usize;
        c.compress_vec(&data[used..], &mut out, FlushCompress::Sync)
            .unwrap();
        if (c.total_in() - start) as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    assert_eq!(out[out.len() - 4..], TRAILER);
    out.truncate(out.len() - 4);
    out
}

/// Inflate one message (trailer put back) with `d`, which keeps the sender's context.
fn inflate(d: &mut Decompress, data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&TRAILER);
    let mut out = Vec::with_capacity(data.len() * 4 + 64);
    let start = d.total_in();
    loop {
        let used = (d.total_in() - start) as usize;
        d.decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
            .unwrap();
        if (d.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    out
}

/// JSON-like text of `n` bytes (compressible, varied).
fn json(n: usize, seed: usize) -> String {
    let mut s = String::with_capacity(n + 64);
    let mut i = seed;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"user\":\"user-{}\",\"price\":{}.{:02},\"tags\":[\"a\",\"b{}\"]}},",
            i % 97,
            i * 7 % 1000,
            i % 100,
            i % 13
        ));
        i += 1;
    }
    s.truncate(n);
    s
}

/// Binary of `n` bytes: half pseudo-random, half zeros.
fn binary(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            } else {
                0
            }
        })
        .collect()
}

/// Send `payload` compressed as `opcode`, in `pieces` frames (RSV1 on the first only).
fn send_compressed(c: &mut RawClient, opcode: u8, z: &[u8], pieces: usize) {
    let pieces = pieces.max(1);
    let chunk = z.len().div_ceil(pieces).max(1);
    let parts: Vec<&[u8]> = if z.is_empty() {
        vec![&[][..]]
    } else {
        z.chunks(chunk).collect()
    };
    let mut bytes = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let fin = i + 1 == parts.len();
        let (rsv, opc) = if i == 0 { (4, opcode) } else { (0, op::CONT) };
        bytes.extend(encode_frame(fin, rsv, opc, p, MASK));
    }
    c.send_raw(&bytes).unwrap();
}

/// The next data frame from the server (pings skipped; server messages are single frames).
fn next_data(c: &mut RawClient) -> Frame {
    loop {
        let f = c.read_frame().unwrap();
        if f.opcode == op::PING || f.opcode == op::PONG {
            continue;
        }
        assert!(f.fin, "the server sends whole messages");
        return f;
    }
}

/// A server in `mode` (1 shard, so budgets are per test).
fn server(
    backend: Backend,
    mode: Compression,
    cfg: impl FnOnce(common::Builder) -> common::Builder,
) -> common::TestServer {
    common::start_with(backend, |b| {
        cfg(b.shards(percore::Shards::Count(1)).compression(mode))
    })
}

/// Echo messages of 0 B..1 MiB, text and binary, whole and fragmented; the client compresses
/// with `client` (its context per `ctx`), inflates replies with `d`. Returns how many replies
/// came compressed.
fn echo_sizes(
    c: &mut RawClient,
    mut compress: impl FnMut(&[u8]) -> Vec<u8>,
    d: &mut Decompress,
) -> usize {
    let mut compressed = 0;
    let sizes = [0usize, 1, 63, 64, 200, 1000, 4096, 20_000, 70_000, 1 << 20];
    for (i, &n) in sizes.iter().enumerate() {
        for text in [true, false] {
            for pieces in [1, 3] {
                let msg = if text {
                    json(n, i).into_bytes()
                } else {
                    binary(n, i as u32)
                };
                let z = compress(&msg);
                let opcode = if text { op::TEXT } else { op::BINARY };
                send_compressed(c, opcode, &z, pieces);
                let f = next_data(c);
                assert_eq!(f.opcode, opcode, "size {n}");
                let got = if f.rsv == 4 {
                    compressed += 1;
                    inflate(d, &f.payload)
                } else {
                    assert_eq!(f.rsv, 0);
                    f.payload
                };
                assert!(
                    got == msg,
                    "echo of {n} bytes (text {text}, {pieces} frames)"
                );
            }
        }
    }
    compressed
}

every_backend! {
    fn shared_mode_echoes_compressed_messages_of_every_size(backend) {
        let server = server(backend, Compression::Shared, |b| b);
        let mut c = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
        let ext = c.response.header("sec-websocket-extensions").unwrap().to_owned();
        assert!(ext.contains("server_no_context_takeover"), "{ext}");
        assert!(ext.contains("client_no_context_takeover"), "{ext}");
        // No context either way: a fresh compressor and decompressor per message.
        let compressed = echo_sizes(
            &mut c,
            |m| deflate(&mut Compress::new(Level::new(6), false), m),
            &mut Decompress::new(false),
        );
        assert!(compressed >= 20, "replies were compressed: {compressed}");
        // A fresh decompressor for each reply works too (the reply is self-contained).
        let msg = json(5000, 1);
        send_compressed(&mut c, op::TEXT, &deflate(&mut Compress::new(Level::new(6), false), msg.as_bytes()), 1);
        let f = next_data(&mut c);
        assert_eq!(f.rsv, 4);
        assert_eq!(inflate(&mut Decompress::new(false), &f.payload), msg.as_bytes());
        // Uncompressed messages still echo; below the threshold the reply is plain.
        c.send_text("short").unwrap();
        let f = next_data(&mut c);
        assert_eq!((f.rsv, f.payload.as_slice()), (0, &b"short"[..]));
        assert_eq!(server.handle().stats().protocol_errors, 0);
        spoke_tls_if_asked(&server);
    }

    fn dedicated_mode_keeps_context_both_ways(backend) {
        let server = server(backend, Compression::Dedicated, |b| b);
        let mut c = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
        let ext = c.response.header("sec-websocket-extensions").unwrap().to_owned();
        assert_eq!(
            ext,
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        );
        // Our side with context takeover in a 4 KiB window (as the answer says).
        let mut ours = Compressor::new(6, 12, 8);
        let mut d = Decompress::new(false);
        let compressed = echo_sizes(
            &mut c,
            |m| {
                let mut z = Vec::new();
                ours.compress(m, &mut z).unwrap();
                z
            },
            &mut d,
        );
        assert!(compressed >= 20, "replies were compressed: {compressed}");
        // Context takeover pays: the same message again compresses to a few bytes both ways.
        let msg = json(3000, 9);
        let mut sizes = Vec::new();
        for _ in 0..2 {
            let mut z = Vec::new();
            ours.compress(msg.as_bytes(), &mut z).unwrap();
            send_compressed(&mut c, op::TEXT, &z, 1);
            let f = next_data(&mut c);
            assert_eq!(inflate(&mut d, &f.payload), msg.as_bytes());
            sizes.push(f.payload.len());
        }
        assert!(sizes[1] * 4 < sizes[0], "the second reply references the first: {sizes:?}");
        assert!(server.handle().stats().deflate_dedicated_bytes >= 4096);
    }

    fn dedicated_history_is_dropped_when_idle_and_the_peer_still_reads(backend) {
        // Long enough that the history is still there when the stats gauge (updated once per
        // loop turn) shows it after the first reply, on a busy machine.
        let server = server(backend, Compression::Dedicated, |b| {
            b.idle_timeout(Duration::from_millis(1000))
        });
        let mut c = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
        let mut d = Decompress::new(false);
        let mut ours = Compressor::new(6, 12, 8);
        let msg = json(2000, 3);
        let window = Window::heap_bytes(12);
        let mut echo = |c: &mut RawClient| {
            let mut z = Vec::new();
            ours.compress(msg.as_bytes(), &mut z).unwrap();
            send_compressed(c, op::TEXT, &z, 1);
            let f = next_data(c);
            assert_eq!(f.rsv, 4);
            assert_eq!(inflate(&mut d, &f.payload), msg.as_bytes());
        };
        echo(&mut c);
        common::wait_until("both windows are held", || {
            server.handle().stats().deflate_dedicated_bytes == 2 * window as u64
        });
        common::wait_until("the idle history is dropped", || {
            server.handle().stats().deflate_dedicated_bytes == window as u64
        });
        // The next reply references nothing earlier; our decompressor (with its context)
        // reads it, and so it does the one after, which references it again.
        echo(&mut c);
        echo(&mut c);
    }

    fn dedicated_budget_gives_shared_terms_past_it(backend) {
        let one = 2 * Window::heap_bytes(12);
        let server = server(backend, Compression::Dedicated, |b| {
            b.deflate_dedicated_bytes_max(one + Window::heap_bytes(12) - 1)
        });
        let first = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
        let ext = first.response.header("sec-websocket-extensions").unwrap();
        assert!(!ext.contains("no_context_takeover"), "{ext}");
        let mut second = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
        let ext = second.response.header("sec-websocket-extensions").unwrap();
        assert!(ext.contains("server_no_context_takeover"), "{ext}");
        assert!(ext.contains("client_no_context_takeover"), "{ext}");
        // Shared terms work as usual.
        let msg = json(1000, 5);
        send_compressed(&mut second, op::TEXT, &deflate(&mut Compress::new(Level::new(6), false), msg.as_bytes()), 1);
        let f = next_data(&mut second);
        assert_eq!(inflate(&mut Decompress::new(false), &f.payload), msg.as_bytes());
        // The first connection closing gives its bytes back: a third gets dedicated terms.
        drop(first);
        common::wait_until("the window is given back", || {
            server.handle().stats().deflate_dedicated_bytes == 0
        });
        let third = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
        let ext = third.response.header("sec-websocket-extensions").unwrap();
        assert!(!ext.contains("no_context_takeover"), "{ext}");
    }

    fn compression_off_declines_and_plain_clients_pay_nothing(backend) {
        let server = server(backend, Compression::Off, |b| b);
        let mut c = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
        assert_eq!(c.response.header("sec-websocket-extensions"), None);
        c.echo_text("plain");
        let server = self::server(backend, Compression::Dedicated, |b| b);
        let mut c = RawClient::connect(server.addr).unwrap();
        assert_eq!(c.response.header("sec-websocket-extensions"), None);
        let big = json(100_000, 2);
        c.echo_text(&big);
        assert_eq!(server.handle().stats().deflate_dedicated_bytes, 0);
    }

    fn malformed_extension_header_is_400(backend) {
        let server = server(backend, Compression::Shared, |b| b);
        let r = RawClient::connect_with(
            server.addr,
            "/",
            &[("Sec-WebSocket-Extensions", "permessage-deflate; x=\"unterminated")],
        );
        let e = r.err().expect("refused");
        assert!(e.to_string().contains("400"), "{e}");
        // Declined offers (bad parameters) are not errors: the connection goes on without.
        let mut c = RawClient::connect_with(
            server.addr,
            "/",
            &[("Sec-WebSocket-Extensions", "permessage-deflate; server_max_window_bits=99")],
        )
        .unwrap();
        assert_eq!(c.response.header("sec-websocket-extensions"), None);
        c.echo_text("still serving");
    }

    fn rsv1_without_negotiation_is_1002(backend) {
        let server = server(backend, Compression::Shared, |b| b);
        let mut c = RawClient::connect(server.addr).unwrap();
        let z = deflate(&mut Compress::new(Level::new(6), false), b"hello hello hello");
        send_compressed(&mut c, op::TEXT, &z, 1);
        c.expect_close(1002);
        still_serving(&server);
    }

    fn rsv1_on_a_continuation_is_1002(backend) {
        let server = server(backend, Compression::Shared, |b| b);
        let mut c = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
        let z = deflate(&mut Compress::new(Level::new(6), false), json(500, 1).as_bytes());
        let mut bytes = encode_frame(false, 4, op::TEXT, &z[..10], MASK);
        bytes.extend(encode_frame(true, 4, op::CONT, &z[10..], MASK));
        c.send_raw(&bytes).unwrap();
        c.expect_close(1002);
        still_serving(&server);
    }

    fn rsv1_on_a_control_frame_is_1002(backend) {
        let server = server(backend, Compression::Shared, |b| b);
        let mut c = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
        c.send_raw(&encode_frame(true, 4, op::PING, b"", MASK)).unwrap();
        c.expect_close(1002);
        still_serving(&server);
    }

    fn corrupt_deflate_data_is_1007(backend) {
        for mode in [Compression::Shared, Compression::Dedicated] {
            let server = server(backend, mode, |b| b);
            let mut c = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
            send_compressed(&mut c, op::BINARY, &[0xff, 0xee, 0xdd, 0xcc, 0xbb], 1);
            c.expect_close(1007);
            still_serving(&server);
        }
    }

    fn invalid_utf8_in_compressed_text_is_1007(backend) {
        let server = server(backend, Compression::Shared, |b| b);
        let mut c = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
        let z = deflate(&mut Compress::new(Level::new(6), false), &[b'a', 0xff, b'b', b'c']);
        send_compressed(&mut c, op::TEXT, &z, 2);
        c.expect_close(1007);
        still_serving(&server);
    }

    fn deflate_bomb_is_1009(backend) {
        // 16 MiB of zeros compresses to about 16 KB; the limit is 1 MiB inflated.
        for mode in [Compression::Shared, Compression::Dedicated] {
            let server = server(backend, mode, |b| b.message_bytes_max(1 << 20));
            let mut c = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
            let z = deflate(&mut Compress::new(Level::new(9), false), &vec![0u8; 16 << 20]);
            assert!(z.len() < 64 << 10, "{}", z.len());
            send_compressed(&mut c, op::BINARY, &z, 4);
            c.expect_close(1009);
            still_serving(&server);
        }
    }

    fn outbound_connections_negotiate_and_check_the_answer(backend) {
        for mode in [Compression::Shared, Compression::Dedicated] {
            let server = server(backend, mode, |b| b);
            let (client, rx) = outbound(backend);
            client
                .connect(0, common::connect_target(server.addr).deflate(true))
                .unwrap();
            let next = || rx.recv_timeout(common::WAIT).expect("event");
            assert_eq!(next(), Seen::Open);
            for i in 0..4 {
                assert_eq!(next(), Seen::Text(json(3000, i)), "{mode:?} round {i}");
            }
            assert!(matches!(next(), Seen::Closed(Some(1000))));
            let s = server.handle().stats();
            assert_eq!((s.protocol_errors, s.messages_received), (0, 4));
        }
    }

    fn broadcast_is_compressed_once_and_every_kind_of_connection_reads_it(backend) {
        let server = server(backend, Compression::Dedicated, |b| b);
        let mut plain = RawClient::connect(server.addr).unwrap();
        let mut dedicated = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
        let mut shared = RawClient::connect_with(
            server.addr,
            "/",
            &[("Sec-WebSocket-Extensions", "permessage-deflate; client_no_context_takeover; server_no_context_takeover")],
        )
        .unwrap();
        let mut d_ded = Decompress::new(false);
        // The dedicated connection first gets a reply built on its own history (context).
        let mut ours = Compressor::new(6, 12, 8);
        let first = json(2000, 1);
        let mut z = Vec::new();
        ours.compress(first.as_bytes(), &mut z).unwrap();
        send_compressed(&mut dedicated, op::TEXT, &z, 1);
        assert_eq!(inflate(&mut d_ded, &next_data(&mut dedicated).payload), first.as_bytes());
        let text = json(4000, 2);
        plain.send_text(&format!("cmd:broadcast:{text}")).unwrap();
        let f = next_data(&mut plain);
        assert_eq!((f.rsv, f.payload), (0, text.clone().into_bytes()));
        let fs = next_data(&mut shared);
        assert_eq!(fs.rsv, 4);
        assert_eq!(inflate(&mut Decompress::new(false), &fs.payload), text.as_bytes());
        let fd = next_data(&mut dedicated);
        assert_eq!(fd.rsv, 4);
        // One compressed frame for both (the same bytes), and the dedicated connection's
        // decompressor, with its context, reads it.
        assert_eq!(fd.payload, fs.payload);
        assert_eq!(inflate(&mut d_ded, &fd.payload), text.as_bytes());
        // Its next own reply starts a fresh history: still readable with that context.
        let again = json(2000, 1);
        let mut z = Vec::new();
        ours.compress(again.as_bytes(), &mut z).unwrap();
        send_compressed(&mut dedicated, op::TEXT, &z, 1);
        assert_eq!(inflate(&mut d_ded, &next_data(&mut dedicated).payload), again.as_bytes());
    }
}

plain_only! {
    "the server that answers an extension nobody offered is a raw TCP socket in the test";

    fn outbound_connection_fails_on_an_answer_it_did_not_offer(backend) {
        // A server that answers an extension nobody offered.
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let key = req
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .trim()
                .to_owned();
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n\
                 Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=16\r\n\r\n"
            );
            s.write_all(resp.as_bytes()).unwrap();
            let _ = s.read(&mut buf);
        });
        let (client, rx) = outbound(backend);
        client.connect(0, percore::Connect::new(addr).deflate(true)).unwrap();
        match rx.recv_timeout(common::WAIT).expect("event") {
            Seen::Closed(Some(1006)) => {}
            other => panic!("expected a failed handshake, got {other:?}"),
        }
        drop(client);
        fake.join().unwrap();
    }
}

/// Bad input closed one connection: another still echoes, compressed.
fn still_serving(server: &common::TestServer) {
    common::wait_until("the protocol error is counted", || {
        server.handle().stats().protocol_errors >= 1
    });
    let mut c = RawClient::connect_with(server.addr, "/", &[OFFER]).unwrap();
    let msg = json(2000, 4);
    let mut z = Vec::new();
    Compressor::new(6, 12, 8)
        .compress(msg.as_bytes(), &mut z)
        .unwrap();
    send_compressed(&mut c, op::TEXT, &z, 1);
    let f = next_data(&mut c);
    assert_eq!(f.rsv, 4);
    assert_eq!(
        inflate(&mut Decompress::new(false), &f.payload),
        msg.as_bytes()
    );
    spoke_tls_if_asked(server);
}

/// In a `_tls` run every client here went through the TLS port (RSV1 and compressed payloads
/// inside TLS records): the server counted their handshakes.
fn spoke_tls_if_asked(server: &common::TestServer) {
    if common::transport() == common::Transport::Tls {
        let s = server.handle().stats();
        assert!(s.tls_handshakes >= 1 && s.tls_failures == 0, "{s:?}");
    }
}

/// What an outbound connection's handler saw.
#[derive(Debug, PartialEq)]
enum Seen {
    Open,
    Text(String),
    Closed(Option<u16>),
}

/// Sends four similar JSON messages, reports the echoes, closes after the fourth.
struct Outbound(std::sync::mpsc::Sender<Seen>, usize);

impl percore::Handler for Outbound {
    type State = ();
    fn on_open(&mut self, conn: &mut percore::Conn<'_, ()>) {
        let _ = self.0.send(Seen::Open);
        for i in 0..4 {
            conn.send_text(&json(3000, i)).unwrap();
        }
    }
    fn on_message(&mut self, conn: &mut percore::Conn<'_, ()>, msg: percore::Message<'_>) {
        if let percore::Message::Text(t) = msg {
            let _ = self.0.send(Seen::Text(t.to_owned()));
        }
        self.1 += 1;
        if self.1 == 4 {
            conn.close(percore::CloseCode::NORMAL, "done");
        }
    }
    fn on_close(&mut self, _: (), _: percore::ConnId, code: Option<percore::CloseCode>, _: &str) {
        let _ = self.0.send(Seen::Closed(code.map(|c| c.0)));
    }
}

fn outbound(backend: Backend) -> (percore::ServerHandle, std::sync::mpsc::Receiver<Seen>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let client = percore::Server::builder()
        .bind("127.0.0.1:0")
        .shards(percore::Shards::Count(1))
        .pin(false)
        .backend(backend)
        .handshake_timeout(Duration::from_secs(5))
        .start(move |_| Outbound(tx.lock().unwrap().clone(), 0))
        .expect("client side starts");
    (client, rx)
}
