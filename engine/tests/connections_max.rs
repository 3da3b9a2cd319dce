//! `connections_max`: handshakes past the limit get HTTP 503; a freed slot is reusable.

mod common;

use common::raw::{http_exchange, new_key, upgrade_request, RawClient};

every_backend! {
    fn refused_and_abandoned_handshakes_free_their_slots(backend) {
        let server = common::start_with(backend, |b| {
            b.connections_max(2).handshake_timeout(std::time::Duration::from_millis(200))
        });
        for _ in 0..10 {
            // Refused by on_upgrade (403), malformed (405), and silent until the timeout.
            let req = upgrade_request(server.addr, "/", &new_key(), &[("Origin", common::handlers::FORBIDDEN_ORIGIN)]);
            assert_eq!(http_exchange(server.addr, req.as_bytes()).unwrap().status, 403);
            let resp = http_exchange(server.addr, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            assert_eq!(resp.status, 405);
        }
        for _ in 0..3 {
            let mut s = std::net::TcpStream::connect(server.addr).unwrap();
            s.set_read_timeout(Some(common::WAIT)).unwrap();
            let _ = std::io::Read::read(&mut s, &mut [0u8; 64]);
        }
        common::wait_until("every refused or abandoned connection is gone", || {
            server.handle().stats().connections_open == 0
        });
        let mut a = RawClient::connect(server.addr).unwrap();
        let mut b = RawClient::connect(server.addr).unwrap();
        a.echo_text("slot one");
        b.echo_text("slot two");
    }

    fn handshake_past_connections_max_gets_503(backend) {
        // Two shards: the limit counts connections across all of them.
        let server = common::start_with(backend, |b| b.shards(percore::Shards::Count(2)).connections_max(3));
        let mut open: Vec<RawClient> = (0..3).map(|_| RawClient::connect(server.addr).unwrap()).collect();
        for c in &mut open {
            c.echo_text("inside the limit");
        }
        let req = upgrade_request(server.addr, "/", &new_key(), &[]);
        let resp = http_exchange(server.addr, req.as_bytes()).unwrap();
        assert_eq!(resp.status, 503, "handshake past the limit: {resp:?}");
        // The open connections are unaffected.
        for c in &mut open {
            c.echo_text("still fine");
        }
        // Free a slot: a new handshake succeeds (closing is asynchronous: bounded retries).
        let mut first = open.remove(0);
        first.send_close(1000, "").unwrap();
        first.expect_eof();
        common::wait_until("a freed slot accepts a new connection", || {
            match RawClient::connect(server.addr) {
                Ok(mut c) => {
                    c.echo_text("new one");
                    true
                }
                Err(_) => false,
            }
        });
    }
}
