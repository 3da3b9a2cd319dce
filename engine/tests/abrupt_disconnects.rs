//! Clients that vanish mid-handshake, mid-frame or with unread data never hurt the server:
//! it stays up, accounts the connection closed, and the next client works.

mod common;

use common::handlers::Event;
use common::raw::{connect, encode_frame, new_key, op, upgrade_request, RawClient};
use std::io::Write;
use std::net::TcpStream;

fn next_client_works(server: &common::TestServer) {
    let mut c = RawClient::connect(server.addr).unwrap();
    c.echo_text("next client");
    let mut ws = common::tungstenite_client(server.addr);
    ws.send(tungstenite::Message::binary(vec![1u8; 70000]))
        .unwrap();
    assert_eq!(ws.read().unwrap().len(), 70000);
}

every_backend! {
    fn disconnect_mid_handshake_leaves_the_server_serving(backend) {
        let server = common::start(backend);
        let req = upgrade_request(server.addr, "/", &new_key(), &[]);
        for cut in [1, 10, req.len() / 2, req.len() - 1] {
            let mut s = connect(server.addr).unwrap();
            s.write_all(&req.as_bytes()[..cut]).unwrap();
            drop(s);
        }
        // Connect and close without a byte (over TLS: before the ClientHello).
        drop(TcpStream::connect(server.addr).unwrap());
        next_client_works(&server);
    }

    fn disconnect_mid_frame_leaves_the_server_serving(backend) {
        let server = common::start(backend);
        let frame = encode_frame(true, 0, op::BINARY, &[9u8; 100_000], [1, 2, 3, 4]);
        for cut in [1, 2, 5, 13, 14, 50_000, frame.len() - 1] {
            let mut c = RawClient::connect(server.addr).unwrap();
            c.send_raw(&frame[..cut]).unwrap();
            drop(c);
        }
        next_client_works(&server);
    }

    fn disconnect_mid_fragmented_message_leaves_the_server_serving(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(false, op::TEXT, b"part one ").unwrap();
        c.send_frame(false, op::CONT, &[b'x'; 10_000]).unwrap();
        drop(c);
        next_client_works(&server);
    }

    fn disconnect_with_unread_echoes_leaves_the_server_serving(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        for _ in 0..200 {
            c.send_binary(&[3u8; 10_000]).unwrap();
        }
        drop(c);
        next_client_works(&server);
    }

    fn half_closed_client_is_closed_by_the_server(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.echo_text("before FIN");
        // FIN without a close frame: the server must not keep the connection forever.
        c.shutdown_write();
        c.expect_eof();
        next_client_works(&server);
    }

    fn abrupt_disconnect_reports_1006_to_on_close(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.echo_text("hello");
        drop(c);
        match server.wait_event("on_close", |e| matches!(e, Event::Closed(..))) {
            Event::Closed(_, code, _) => assert_eq!(code, Some(1006)),
            _ => unreachable!(),
        }
    }

    fn abrupt_disconnects_are_accounted_as_closed(backend) {
        let server = common::start(backend);
        let frame = encode_frame(true, 0, op::BINARY, &[1u8; 1000], [1, 2, 3, 4]);
        for _ in 0..20 {
            let mut c = RawClient::connect(server.addr).unwrap();
            c.send_raw(&frame[..500]).unwrap();
        }
        common::wait_until("all abruptly closed connections are accounted closed", || {
            server.handle().stats().connections_open == 0
        });
        next_client_works(&server);
    }
}
