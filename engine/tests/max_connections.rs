//! `max_connections`: handshakes past the limit get HTTP 503; a freed slot is reusable.

mod common;

use common::raw::{http_exchange, new_key, upgrade_request, RawClient};

every_backend! {
    fn handshake_past_max_connections_gets_503(backend) {
        // Two shards: the limit counts connections across all of them.
        let server = common::start_with(backend, |b| b.shards(percore::Shards::Count(2)).max_connections(3));
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
