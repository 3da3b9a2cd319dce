//! io_uring only (direct descriptors do not exist on epoll): a server accepting connections
//! as io_uring direct descriptors serves a thousand WebSocket clients at once.

use std::net::TcpStream;
use std::time::Duration;

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
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(2))
        .pin(false)
        .backend(Backend::IoUring)
        .direct_fds(true)
        .direct_fds_max(2000)
        .start(|_| Echo)
        .expect("server starts");
    assert_eq!(server.backend(), Backend::IoUring);
    let url = format!("ws://{}/", server.local_addr());
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let stream = TcpStream::connect(server.local_addr()).expect("tcp connect");
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
