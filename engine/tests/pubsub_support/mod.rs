//! Shared pieces of the publish/subscribe tests: a command-driven handler, clients and bounded
//! waits. Running a test on both backends is `common`'s `every_backend!`.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};

use crate::common::raw::Stream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use percore::{Backend, Conn, ConnId, Decision, Handler, Message, PublishOptions, Request};
use percore::{ServerBuilder, Upgrade};
use percore::{ServerHandle, Shards, Stats};

/// What the handlers of all shards share with the test.
#[derive(Default)]
pub struct Shared {
    /// Ids of opened connections, in open order.
    pub opened: Mutex<Vec<ConnId>>,
    /// `buffered_amount()` seen by the last `probe` command (plus one, 0 = none yet).
    pub probe: AtomicUsize,
    /// `on_drain` calls.
    pub drained: AtomicUsize,
    /// Gate for the `block` command: the handler waits until it is `true`.
    pub gate: (Mutex<bool>, Condvar),
}

/// Test handler. A request path `/t/A,B` subscribes the connection to topics `A` and `B` on
/// open. Text commands: `pub T payload`, `pubd T payload` (droppable), `pubc T payload`
/// (conflate), `sub T` / `unsub T` (answers `ok true`/`ok false`/`err ...`), `probe` (records
/// the buffered amount), `block` (waits for the gate).
pub struct App {
    shared: Arc<Shared>,
}

impl App {
    /// A handler for one shard.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl Handler for App {
    /// The request path (`/t/a,b` subscribes to `a` and `b` when the connection opens).
    type State = String;

    fn on_upgrade(&mut self, req: &Request, up: Upgrade<String>) -> Decision<String> {
        up.accept(req.path().to_owned())
    }

    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        let path = std::mem::take(conn.state_mut());
        if let Some(topics) = path.strip_prefix("/t/") {
            for t in topics.split(',').filter(|t| !t.is_empty()) {
                conn.subscribe(t).expect("subscribe");
            }
        }
        self.shared.opened.lock().unwrap().push(conn.id());
    }

    fn on_drain(&mut self, _conn: &mut Conn<'_, String>) {
        self.shared.drained.fetch_add(1, Ordering::SeqCst);
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, msg: Message<'_>) {
        let Message::Text(cmd) = msg else {
            return;
        };
        let mut parts = cmd.splitn(3, ' ');
        let verb = parts.next().unwrap_or("");
        let topic = parts.next().unwrap_or("");
        let payload = parts.next().unwrap_or("");
        let opts = match verb {
            "pubd" => PublishOptions::droppable(),
            "pubc" => PublishOptions::conflate(),
            _ => PublishOptions::default(),
        };
        match verb {
            "pub" | "pubd" | "pubc" => {
                let _ = conn.publish_with(topic, Message::Text(payload), opts);
            }
            "sub" => {
                let r = match conn.subscribe(topic) {
                    Ok(b) => format!("ok {b}"),
                    Err(e) => format!("err {e}"),
                };
                let _ = conn.send_text(&r);
            }
            "unsub" => {
                let r = format!("ok {}", conn.unsubscribe(topic));
                let _ = conn.send_text(&r);
            }
            "probe" => {
                self.shared
                    .probe
                    .store(conn.buffered_amount() + 1, Ordering::SeqCst);
            }
            "block" => {
                let (m, c) = &self.shared.gate;
                let mut open = m.lock().unwrap();
                let until = Instant::now() + Duration::from_secs(10);
                while !*open && Instant::now() < until {
                    open = c.wait_timeout(open, Duration::from_millis(50)).unwrap().0;
                }
            }
            _ => {}
        }
    }
}

/// A builder with the test defaults: port 0, no pinning, `shards` shards.
pub fn builder(backend: Backend, shards: usize) -> ServerBuilder {
    crate::common::builder(backend)
        .shards(Shards::Count(shards))
        .close_timeout(Duration::from_secs(2))
}

/// Start `b` with [`App`] handlers.
pub fn start(b: ServerBuilder) -> (ServerHandle, Arc<Shared>) {
    let shared = Arc::new(Shared::default());
    let s = shared.clone();
    let server = b
        .start(move |_| App::new(s.clone()))
        .expect("server starts");
    (server, shared)
}

/// A client (over TLS when the server's address speaks it).
pub type Client = tungstenite::WebSocket<Stream>;

/// The address to talk to `server` at (its TLS port over TLS).
pub fn addr(server: &ServerHandle) -> SocketAddr {
    crate::common::addr_of(server)
}

/// Connect to `path` (5 s read timeout).
pub fn connect(addr: SocketAddr, path: &str) -> Client {
    let stream = Stream::connect(addr).expect("tcp connect");
    handshake(stream, addr, path)
}

/// Connect with a small receive buffer: a subscriber that stops reading stalls quickly.
pub fn connect_small_rcvbuf(addr: SocketAddr, path: &str) -> Client {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    s.connect(&addr.into()).expect("tcp connect");
    let tcp: TcpStream = s.into();
    handshake(Stream::over(tcp, addr), addr, path)
}

fn handshake(stream: Stream, addr: SocketAddr, path: &str) -> Client {
    // Generous: the whole suite (both backends, both transports) runs at once on a small host.
    stream
        .set_read_timeout(Some(crate::common::WAIT))
        .expect("timeout");
    let url = format!("ws://{addr}{path}");
    let (ws, resp) = tungstenite::client(url, stream).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Poll `f` every 5 ms until it is true; false after `limit`.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Wait (10 s at most) until the server counts `n` subscriptions.
pub fn wait_subscriptions(server: &ServerHandle, n: u64) -> Stats {
    let ok = wait_until(Duration::from_secs(10), || {
        server.stats().subscriptions == n
    });
    let s = server.stats();
    assert!(ok, "expected {n} subscriptions, stats: {s:?}");
    s
}

/// `ws.read()`, retried when a signal interrupts the system call.
#[allow(clippy::result_large_err)] // tungstenite's own error type
pub fn read(ws: &mut Client) -> tungstenite::Result<tungstenite::Message> {
    loop {
        match ws.read() {
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Read one data message as text (panics on anything else).
pub fn read_text(ws: &mut Client) -> String {
    loop {
        match read(ws).expect("read") {
            tungstenite::Message::Text(t) => return t.to_string(),
            tungstenite::Message::Binary(b) => return String::from_utf8_lossy(&b).into_owned(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("expected a data message, got {other:?}"),
        }
    }
}

/// Nothing more arrives within `d`.
pub fn assert_silent(ws: &mut Client, d: Duration) {
    ws.get_mut().set_read_timeout(Some(d)).unwrap();
    match read(ws) {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected nothing more, got {other:?}"),
    }
    ws.get_mut()
        .set_read_timeout(Some(crate::common::WAIT))
        .unwrap();
}
