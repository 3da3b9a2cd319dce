//! A handler callback that panics is contained: its connection is closed with 1011 and the
//! panic counted; the shard and every other connection go on.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::raw::RawClient;
use percore::Upgrade;
use percore::{Backend, CloseCode, Conn, ConnId, Decision, Handler, Message};

/// Echo, but `on_message` panics on "boom" and `on_close` reports every close.
struct Fragile {
    closes: mpsc::Sender<(ConnId, Option<CloseCode>, String)>,
}

impl Handler for Fragile {
    type State = ();

    fn on_upgrade(&mut self, req: &percore::Request, up: Upgrade<()>) -> Decision<()> {
        if req.path() == "/boom" {
            panic!("upgrade bug (a test panics here on purpose)");
        }
        up.accept(())
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        if msg == Message::Text("boom") {
            panic!("handler bug (a test panics here on purpose)");
        }
        let _ = conn.send(msg);
    }

    fn on_close(&mut self, _: (), id: ConnId, code: Option<CloseCode>, reason: &str) {
        let _ = self.closes.send((id, code, reason.to_owned()));
    }
}

fn start(
    backend: Backend,
) -> (
    percore::ServerHandle,
    mpsc::Receiver<(ConnId, Option<CloseCode>, String)>,
) {
    let (tx, rx) = mpsc::channel();
    let server = common::builder(backend)
        .start(move |_| Fragile { closes: tx.clone() })
        .expect("server starts");
    (server, rx)
}

every_backend! {
    fn panic_in_on_message_closes_that_connection_with_1011_and_the_others_keep_echoing(backend) {
        let (server, closes) = start(backend);
        let mut clients: Vec<RawClient> = (0..100)
            .map(|_| RawClient::connect(common::addr_of(&server)).expect("connect"))
            .collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.echo_text(&format!("before {i}"));
        }
        // Connection 42 makes its shard's handler panic.
        clients[42].send_text("boom").expect("send");
        clients[42].expect_close(1011);
        clients[42].stream.shutdown_both();
        let (_, code, reason) = closes.recv_timeout(common::WAIT).expect("on_close for the failed connection");
        assert_eq!(code, Some(CloseCode::INTERNAL_ERROR));
        assert_eq!(reason, "handler panicked");
        // Every other connection, on either shard, keeps going.
        for round in 0..3 {
            for (i, c) in clients.iter_mut().enumerate().filter(|(i, _)| *i != 42) {
                c.echo_text(&format!("after {round} {i}"));
            }
        }
        let stats = server.stats();
        assert_eq!(stats.handler_panics, 1);
        assert_eq!(stats.connections_open, 99);
        // New connections are served too.
        let mut fresh = RawClient::connect(common::addr_of(&server)).expect("connect");
        fresh.echo_text("still here");
        assert!(closes.recv_timeout(Duration::from_millis(100)).is_err(), "no other connection closed");
        server.shutdown(Duration::from_secs(1));
    }

    fn panic_in_on_upgrade_answers_500_and_the_server_goes_on(backend) {
        let (server, _closes) = start(backend);
        let addr = common::addr_of(&server);
        let key = common::raw::new_key();
        let req = common::raw::upgrade_request(addr, "/boom", &key, &[]);
        let resp = common::raw::http_exchange(addr, req.as_bytes()).expect("an HTTP answer");
        assert_eq!(resp.status, 500);
        RawClient::connect(addr).expect("connect").echo_text("fine");
        assert_eq!(server.stats().handler_panics, 1);
        server.shutdown(Duration::from_secs(1));
    }
}
