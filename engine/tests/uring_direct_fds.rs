//! io_uring only (direct descriptors do not exist on epoll): a server accepting connections
//! as io_uring direct descriptors serves a thousand WebSocket clients at once, plain and over
//! TLS.

mod common;

use std::time::Duration;

use common::raw::Stream;
use common::Transport;
use percore::{Backend, Conn, Handler, Message};
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
