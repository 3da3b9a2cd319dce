//! `percore serve --mode broadcast` and `--mode chat`: handlers on the engine's topics.
//!
//! * broadcast: every connection subscribes to one topic; every message a client sends is
//!   published to all connections, the sender included (the classic broadcast benchmark).
//! * chat: the request path `/room/NAME` picks a room (other paths get HTTP 404); a message is
//!   published to the sender's room only, the sender included.
//!
//! A message is encoded once whatever the number of receivers, and keeps its type (text or
//! binary).
//!
//! Both modes speak the resume subprotocol (`percore.resume.v1`) with clients that offer it:
//! such a client subscribes itself (`sub` / `resume`), to its own room or `all` only, and sends
//! `msg TEXT`. Chat rooms keep history (`--topic-history-messages-max`, 1000 by default in
//! chat mode), so a client that reconnects gets what it missed.

use std::rc::Rc;

use percore::{
    CloseCode, Conn, Decision, Handler, HttpContext, Message, PublishOptions, Reject, Request,
    Response, Upgrade,
};

use super::health;
use super::subprotocol::{self, Protocols};

/// The one topic of broadcast mode.
const ALL: &str = "all";

/// Longest room name (the engine's default `topic_name_bytes_max`).
const ROOM_BYTES_MAX: usize = 256;

/// Broadcast mode: everyone receives every message.
pub struct Broadcast {
    /// Publish options (droppable: slow receivers miss messages instead of being closed).
    pub opts: PublishOptions,
    /// `--subprotocol`.
    pub protocols: Protocols,
}

impl Handler for Broadcast {
    type State = ();

    fn on_upgrade(&mut self, req: &Request, up: Upgrade<()>) -> Decision<()> {
        subprotocol::accept(req, up, &self.protocols, ())
    }

    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        // Only fails for a topic name past the limit, which `ALL` is not. A resume client
        // subscribes itself, from its last position.
        if !conn.speaks_resume() {
            let _ = conn.subscribe(ALL);
        }
    }

    fn on_subscribe(&mut self, _: &mut Conn<'_, ()>, topic: &str) -> bool {
        topic == ALL
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.publish_with(ALL, msg, self.opts);
    }

    fn on_request(&mut self, req: &Request, cx: &HttpContext<'_>) -> Response {
        health(req, cx)
    }
}

/// Chat mode: one topic per room, chosen by the request path.
pub struct Chat {
    /// Publish options.
    pub opts: PublishOptions,
    /// `--subprotocol`.
    pub protocols: Protocols,
}

impl Chat {
    /// A chat handler publishing with `opts`, speaking `protocols`.
    pub fn new(opts: PublishOptions, protocols: Protocols) -> Self {
        Self { opts, protocols }
    }
}

/// The room named by `path` (`/room/NAME`), if valid.
fn room(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/room/")?;
    (!name.is_empty() && name.len() <= ROOM_BYTES_MAX && !name.contains('/')).then_some(name)
}

impl Handler for Chat {
    /// The connection's room, from the upgrade request's path (shared by reference count: a
    /// publish borrows the name while the connection is borrowed mutably).
    type State = Rc<str>;

    fn on_upgrade(&mut self, req: &Request, up: Upgrade<Rc<str>>) -> Decision<Rc<str>> {
        match room(req.path()) {
            Some(name) => subprotocol::accept(req, up, &self.protocols, name.into()),
            None => up.reject(Reject::new(404, "use /room/NAME")),
        }
    }

    fn on_open(&mut self, conn: &mut Conn<'_, Rc<str>>) {
        if conn.speaks_resume() {
            return; // it subscribes itself, from its last position
        }
        let room = conn.state().clone();
        if conn.subscribe(&*room).is_err() {
            // Only a name past the server's topic_name_bytes_max fails.
            conn.close(CloseCode::POLICY_VIOLATION, "room name too long");
        }
    }

    fn on_subscribe(&mut self, conn: &mut Conn<'_, Rc<str>>, topic: &str) -> bool {
        // Its own room only.
        topic == &**conn.state()
    }

    fn on_message(&mut self, conn: &mut Conn<'_, Rc<str>>, msg: Message<'_>) {
        let room = conn.state().clone();
        let _ = conn.publish_with(&*room, msg, self.opts);
    }

    fn on_request(&mut self, req: &Request, cx: &HttpContext<'_>) -> Response {
        health(req, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::ops::ControlFlow;
    use std::time::Duration;

    use percore::proto::{self, Decoder, Event, Limits, OpCode, Role};
    use percore::{Backend, Server, ServerHandle, Shards};

    /// A minimal client on the engine's own codec.
    struct Client {
        s: TcpStream,
        dec: Decoder,
        buf: Vec<u8>,
    }

    impl Client {
        /// Connect to `path`; `None` if the server refuses the upgrade.
        fn connect(addr: SocketAddr, path: &str) -> Option<Self> {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let req = proto::client_request(
                &addr.to_string(),
                path,
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
            if !resp.starts_with(b"HTTP/1.1 101") {
                return None;
            }
            let limits = Limits::new(1 << 20, 1 << 20);
            Some(Self {
                s,
                dec: Decoder::new(Role::Client, limits),
                buf: Vec::new(),
            })
        }

        fn send(&mut self, op: OpCode, payload: &[u8]) {
            let mut f = Vec::new();
            proto::encode_frame(&mut f, op, true, payload, Some([1, 2, 3, 4]));
            self.s.write_all(&f).unwrap();
        }

        /// Next data message: (is text, payload).
        fn read(&mut self) -> (bool, Vec<u8>) {
            loop {
                let mut got = None;
                let n = self
                    .dec
                    .decode(&mut self.buf, |e| match e {
                        Event::Text(t) => {
                            got = Some((true, t.as_bytes().to_vec()));
                            ControlFlow::Break(())
                        }
                        Event::Binary(b) => {
                            got = Some((false, b.to_vec()));
                            ControlFlow::Break(())
                        }
                        _ => ControlFlow::Continue(()),
                    })
                    .unwrap();
                self.buf.drain(..n);
                if let Some(m) = got {
                    return m;
                }
                let mut chunk = [0u8; 4096];
                let k = self.s.read(&mut chunk).unwrap();
                assert!(k > 0, "server closed");
                self.buf.extend_from_slice(&chunk[..k]);
            }
        }

        /// Nothing arrives within 100 ms.
        fn silent(&mut self) -> bool {
            self.s
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut b = [0u8; 1];
            let quiet = self.buf.is_empty() && self.s.read(&mut b).is_err();
            self.s
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            quiet
        }
    }

    fn server<H: Handler>(h: impl Fn() -> H + Send + Sync + 'static) -> ServerHandle {
        Server::builder()
            .bind("127.0.0.1:0")
            .shards(Shards::Count(2))
            .pin(false)
            .backend(Backend::Epoll)
            .start(move |_| h())
            .unwrap()
    }

    fn wait_subscriptions(s: &ServerHandle, n: u64) {
        for _ in 0..1000 {
            if s.stats().subscriptions == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("expected {n} subscriptions: {:?}", s.stats());
    }

    #[test]
    fn broadcast_sends_every_message_to_every_connection_including_the_sender() {
        let s = server(|| Broadcast {
            opts: PublishOptions::default(),
            protocols: Vec::new().into(),
        });
        let mut clients: Vec<Client> = (0..6)
            .map(|_| Client::connect(s.local_addr(), "/").unwrap())
            .collect();
        wait_subscriptions(&s, 6);
        clients[0].send(OpCode::Text, b"one");
        clients[3].send(OpCode::Binary, b"\x00two");
        for c in &mut clients {
            let mut got = vec![c.read(), c.read()];
            got.sort();
            assert_eq!(got, [(false, b"\x00two".to_vec()), (true, b"one".to_vec())]);
            assert!(c.silent());
        }
        let st = s.stats();
        assert_eq!((st.published, st.delivered), (2, 12));
    }

    #[test]
    fn chat_publishes_to_the_senders_room_only() {
        let s = server(|| Chat::new(PublishOptions::default(), Vec::new().into()));
        let addr = s.local_addr();
        assert!(Client::connect(addr, "/").is_none(), "no room: 404");
        assert!(Client::connect(addr, "/room/").is_none());
        let mut a1 = Client::connect(addr, "/room/a").unwrap();
        let mut a2 = Client::connect(addr, "/room/a").unwrap();
        let mut b1 = Client::connect(addr, "/room/b").unwrap();
        wait_subscriptions(&s, 3);
        a2.send(OpCode::Text, b"hi a");
        assert_eq!(a1.read(), (true, b"hi a".to_vec()));
        assert_eq!(a2.read(), (true, b"hi a".to_vec()));
        assert!(b1.silent());
        b1.send(OpCode::Text, b"hi b");
        assert_eq!(b1.read(), (true, b"hi b".to_vec()));
        assert!(a1.silent());
        assert_eq!(s.stats().topics, 2);
    }

    #[test]
    fn room_names_come_from_the_path() {
        assert_eq!(room("/room/lobby"), Some("lobby"));
        assert_eq!(room("/room/"), None);
        assert_eq!(room("/room/a/b"), None);
        assert_eq!(room("/lobby"), None);
        assert_eq!(room(&format!("/room/{}", "x".repeat(257))), None);
    }
}
