//! io_uring only (direct descriptors do not exist on epoll): a server accepting connections
//! as io_uring direct descriptors serves a thousand WebSocket clients at once, plain and over
//! TLS, and one shard past one fixed-file table, also when clients arrive in bursts larger
//! than a table and send their upgrade requests at once.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::raw::Stream;
use common::Transport;
use percore::{Backend, Conn, Handler, Message, Server, Shards};
use tungstenite::Message as TMessage;

struct Echo;

impl Handler for Echo {
    type State = ();
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

#[test]
fn direct_fds_server_echoes_to_a_thousand_open_connections() {
    common::run_on(
        Backend::IoUring,
        Transport::Plain,
        "direct_fds",
        echo_to_a_thousand,
    );
}

#[test]
fn direct_fds_server_echoes_to_a_thousand_open_tls_connections() {
    common::run_on(
        Backend::IoUring,
        Transport::Tls,
        "direct_fds_tls",
        echo_to_a_thousand,
    );
}

fn echo_to_a_thousand(backend: Backend) {
    let server = common::builder(backend)
        .direct_fds(true)
        .direct_fds_max(2000)
        .start(|_| Echo)
        .expect("server starts");
    assert_eq!(server.backend(), Backend::IoUring);
    let addr = common::addr_of(&server);
    let url = format!("ws://{addr}/");
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let stream = Stream::connect(addr).expect("tcp connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let (ws, resp) = tungstenite::client(url.as_str(), stream).expect("handshake");
        assert_eq!(resp.status(), 101);
        clients.push(ws);
    }
    assert_eq!(server.stats().connections_open, 1000);
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(TMessage::text(format!("m{i}"))).unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(ws.read().unwrap(), TMessage::text(format!("m{i}")));
    }
    server.shutdown(Duration::from_secs(2));
}

/// One shard thread past one fixed-file table: with tables of 64 entries (standing for
/// RLIMIT_NOFILE), 300 connections on one shard need five rings or more; all echo, and the
/// shard's cap (300) turns the next upgrade away only until one closes.
#[test]
fn one_shard_serves_connections_past_one_fixed_file_table() {
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(1))
        .pin(false)
        .backend(Backend::IoUring)
        .direct_fds(true)
        .direct_fds_table_max(64)
        .direct_fds_max(300)
        .start(|_| Echo)
        .expect("server starts");
    let url = format!("ws://{}/", server.local_addr());
    let open = |url: &str| {
        let stream = TcpStream::connect(server.local_addr()).expect("tcp connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        tungstenite::client(url, stream).ok()
    };
    let mut clients = Vec::with_capacity(300);
    for _ in 0..300 {
        let (ws, resp) = open(&url).expect("handshake");
        assert_eq!(resp.status(), 101);
        clients.push(ws);
    }
    assert_eq!(server.stats().connections_open, 300);
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(TMessage::text(format!("m{i}"))).unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(ws.read().unwrap(), TMessage::text(format!("m{i}")));
    }
    // Past the cap the connection waits in the backlog: its handshake gets no answer.
    let stream = TcpStream::connect(server.local_addr()).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(tungstenite::client(url.as_str(), stream).is_err());
    let mut first = clients.remove(0);
    first.close(None).unwrap();
    while first.read().is_ok() {}
    let (mut ws, _) = open(&url).expect("a slot came free");
    ws.send(TMessage::text("late")).unwrap();
    assert_eq!(ws.read().unwrap(), TMessage::text("late"));
    server.shutdown(Duration::from_secs(2));
}

/// Clients arrive in bursts larger than a fixed-file table (tables of 64 entries), each
/// sending its upgrade request the moment it is connected, many rounds: every one is
/// answered with 101 (none is closed before the shard hears of it): 480 connections, eight
/// tables' worth, on one shard.
#[test]
fn bursts_of_clients_past_a_table_are_all_upgraded() {
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(1))
        .pin(false)
        .backend(Backend::IoUring)
        .direct_fds(true)
        .direct_fds_table_max(64)
        .direct_fds_max(480)
        .start(|_| Echo)
        .expect("server starts");
    let addr = server.local_addr();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut open = Vec::new();
    for round in 0..6 {
        let burst: Vec<TcpStream> = (0..80)
            .map(|_| {
                let mut s = TcpStream::connect(addr).expect("tcp connect");
                s.write_all(request.as_bytes()).expect("request");
                s
            })
            .collect();
        for (i, mut s) in burst.into_iter().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 256];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&b[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head);
            assert!(
                text.starts_with("HTTP/1.1 101"),
                "round {round}, client {i}: {text:?} (a lost accept reads EOF)"
            );
            open.push(s);
        }
    }
    let s = server.stats();
    assert_eq!((s.connections_open, s.upgraded), (480, 480), "{s:?}");
    server.shutdown(Duration::from_secs(2));
}
