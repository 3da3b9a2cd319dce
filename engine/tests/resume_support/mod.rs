//! Pieces shared by the resume tests: a TCP proxy that cuts its connections with RST (or
//! silently stops forwarding), a raw resume-protocol client (tungstenite) and a server.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use percore::{Backend, Handler, ServerHandle};

/// A handler that needs nothing: the engine answers the resume commands.
pub struct Quiet;

impl Handler for Quiet {
    type State = ();
    fn on_message(&mut self, _: &mut percore::Conn<'_, ()>, _: percore::Message<'_>) {}

    fn on_subscribe(&mut self, _: &mut percore::Conn<'_, ()>, topic: &str) -> bool {
        topic != "secret"
    }
}

/// A server on `backend` with 2 shards, after `tune` (history limits), on the test's transport
/// (over TLS it also listens on a TLS port: `crate::common::addr_of` gives the one to talk to).
pub fn server(
    backend: Backend,
    tune: impl FnOnce(percore::ServerBuilder) -> percore::ServerBuilder,
) -> ServerHandle {
    let b = crate::common::builder(backend).resume_protocol(true);
    tune(b).start(|_| Quiet).expect("server starts")
}

/// A TCP proxy in front of a server: every connection through it can be cut with RST on both
/// sides ([`Proxy::reset_all`]), or left open but silent ([`Proxy::blackhole`]).
pub struct Proxy {
    pub addr: SocketAddr,
    pairs: Arc<Mutex<Vec<(TcpStream, TcpStream)>>>,
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn new(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let pairs: Arc<Mutex<Vec<(TcpStream, TcpStream)>>> = Arc::default();
        let silent = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let (p, s, st, acc) = (
            pairs.clone(),
            silent.clone(),
            stop.clone(),
            accepted.clone(),
        );
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                acc.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    s.clone(),
                );
                pump(
                    server.try_clone().unwrap(),
                    client.try_clone().unwrap(),
                    s.clone(),
                );
                p.lock().unwrap().push((client, server));
            }
        });
        Self {
            addr,
            pairs,
            silent,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// Cut every open connection with RST, both towards the client and the server.
    pub fn reset_all(&self) -> usize {
        let pairs = std::mem::take(&mut *self.pairs.lock().unwrap());
        let n = pairs.len();
        for (a, b) in pairs {
            for s in [&a, &b] {
                // SO_LINGER 0: the last close sends RST instead of FIN. SHUT_RD sends nothing
                // but wakes the pump reading this socket, which then drops its handles.
                let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                let _ = s.shutdown(Shutdown::Read);
            }
        }
        n
    }

    /// Stop (or resume) forwarding: the connections stay open and say nothing.
    pub fn blackhole(&self, on: bool) {
        self.silent.store(on, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.reset_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, silent: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if silent.load(Ordering::Relaxed) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        // Wake the other direction too, so that both handles go and the RST goes out.
        let _ = to.shutdown(Shutdown::Read);
    });
}

/// A raw client speaking the resume protocol (tungstenite; over TLS when `addr` speaks it,
/// verifying the test CA): every text/binary message as `(is_text, bytes)`.
pub struct Raw {
    ws: tungstenite::WebSocket<crate::common::tls::Stream>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Self {
        use tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}/").into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            percore::resume::PROTOCOL.parse().unwrap(),
        );
        let stream = crate::common::tls::Stream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (ws, resp) = tungstenite::client(req, stream).unwrap();
        assert_eq!(
            resp.headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap()),
            Some(percore::resume::PROTOCOL)
        );
        Self { ws }
    }

    pub fn send(&mut self, text: &str) {
        self.ws
            .send(tungstenite::Message::Text(text.into()))
            .unwrap();
    }

    /// The next data message's text (binary ones as lossy text).
    pub fn recv(&mut self) -> String {
        loop {
            match self.ws.read().expect("a message within 10 s") {
                tungstenite::Message::Text(t) => return t.as_str().to_owned(),
                tungstenite::Message::Binary(b) => return String::from_utf8_lossy(&b).into(),
                _ => {}
            }
        }
    }

    /// Nothing arrives within `d`.
    pub fn silent_for(&mut self, d: Duration) -> bool {
        let s = self.ws.get_ref();
        s.set_read_timeout(Some(d)).unwrap();
        let r = self.ws.read();
        self.ws
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        match r {
            Err(tungstenite::Error::Io(e)) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }
}

/// Wait (bounded) until `f` holds.
pub fn eventually(what: &str, d: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + d;
    while !f() {
        assert!(Instant::now() < end, "not within {d:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
