//! Broadcast: `Conn::broadcast` and `ServerHandle::broadcast` reach every open connection on
//! every shard, once, in order with the connection's other traffic.

mod common;

use common::raw::{op, RawClient};

const CLIENTS: usize = 40;

fn clients(server: &common::TestServer) -> Vec<RawClient> {
    (0..CLIENTS)
        .map(|_| RawClient::connect(server.addr).unwrap())
        .collect()
}

every_backend! {
    fn handler_broadcast_reaches_every_connection_on_every_shard(backend) {
        let server = common::start(backend);
        let mut all = clients(&server);
        all[7].send_text("cmd:broadcast:news: for everyone").unwrap();
        for (i, c) in all.iter_mut().enumerate() {
            assert_eq!(c.read_message().unwrap(), (op::TEXT, b"news: for everyone".to_vec()), "client {i}");
        }
        // Exactly once: the next message each client gets is its own echo.
        for (i, c) in all.iter_mut().enumerate() {
            c.echo_text(&format!("after {i}"));
        }
    }

    fn server_handle_broadcast_from_another_thread_reaches_everyone_in_order(backend) {
        let server = common::start(backend);
        let mut all = clients(&server);
        for i in 0..20 {
            server.handle().broadcast(percore::Message::Binary(&[i as u8; 300]));
        }
        for (n, c) in all.iter_mut().enumerate() {
            for i in 0..20u8 {
                assert_eq!(c.read_message().unwrap(), (op::BINARY, vec![i; 300]), "client {n}, message {i}");
            }
            c.echo_text("still fine");
        }
    }

    fn broadcast_skips_connections_that_are_closed_or_still_handshaking(backend) {
        let server = common::start(backend);
        let mut open = RawClient::connect(server.addr).unwrap();
        let mut closed = RawClient::connect(server.addr).unwrap();
        closed.send_close(1000, "").unwrap();
        closed.expect_eof();
        // Half a handshake: must not receive a WebSocket frame before its 101.
        let mut half = common::raw::connect(server.addr).unwrap();
        std::io::Write::write_all(&mut half, b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        common::wait_until("the half handshake is accepted", || server.handle().stats().connections_open == 2);
        server.handle().broadcast(percore::Message::Text("hello all"));
        assert_eq!(open.read_message().unwrap(), (op::TEXT, b"hello all".to_vec()));
        // The other shard may deliver a little later: give it time before looking.
        std::thread::sleep(std::time::Duration::from_millis(200));
        half.tcp().set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        match std::io::Read::read(&mut half, &mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a connection in its handshake got {other:?}"),
        }
    }
}
