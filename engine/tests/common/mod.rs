//! Shared pieces of the integration tests: start a server on a given backend (port 0),
//! run a test on every backend, bounded waits, and an independent raw client (`raw`).
#![allow(dead_code)]

pub mod handlers;
pub mod raw;

use handlers::{Event, TestHandler};
use percore::{Backend, ServerHandle, Shards};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The server builder type, as `percore::Server::builder()` returns it.
pub type Builder = percore::ServerBuilder;

/// Run a test body once per backend: `every_backend! { fn name(backend) { ... } }` makes a
/// module `name` with tests `epoll` and `io_uring`. The io_uring test prints a skip note and
/// passes when io_uring cannot start here, unless `PERCORE_REQUIRE_URING=1`.
/// Attributes before `fn` (e.g. `#[ignore = "..."]`) apply to both tests.
#[macro_export]
macro_rules! every_backend {
    ($($(#[$m:meta])* fn $name:ident($b:ident) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($b: percore::Backend) $body

            #[test]
            $(#[$m])*
            fn epoll() {
                run(percore::Backend::Epoll)
            }

            #[test]
            $(#[$m])*
            fn io_uring() {
                if $crate::common::uring_available() {
                    run(percore::Backend::IoUring)
                } else {
                    eprintln!("SKIP {}::io_uring: io_uring is not available here", stringify!($name));
                }
            }
        }
    )*};
}

/// Does a server start with `Backend::IoUring` here? Probed once per test binary.
/// With `PERCORE_REQUIRE_URING=1` an unavailable io_uring is a test failure.
pub fn uring_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    let ok = *AVAILABLE.get_or_init(|| {
        let (tx, _rx) = mpsc::channel();
        match percore::Server::builder()
            .bind("127.0.0.1:0")
            .shards(Shards::Count(1))
            .pin(false)
            .backend(Backend::IoUring)
            .start(move |_| TestHandler { events: tx.clone() })
        {
            Ok(s) => {
                let running = s.backend();
                s.shutdown(Duration::from_secs(2));
                running == Backend::IoUring
            }
            Err(e) => {
                eprintln!("io_uring backend does not start here: {e}");
                false
            }
        }
    });
    if !ok && std::env::var("PERCORE_REQUIRE_URING").as_deref() == Ok("1") {
        panic!("PERCORE_REQUIRE_URING=1 but the io_uring backend does not start");
    }
    ok
}

/// A running test server; shut down (1 s grace) when dropped.
pub struct TestServer {
    handle: Option<ServerHandle>,
    /// Where it listens (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    /// Events from the handlers.
    pub events: Receiver<Event>,
}

impl TestServer {
    /// The running server.
    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("server running")
    }

    /// `ws://addr/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Shut down with a grace period, returning once the server's threads are joined; panics
    /// when `shutdown` does not return within `grace + WAIT`.
    pub fn shutdown(mut self, grace: Duration) {
        if let Some(h) = self.handle.take() {
            assert!(
                shutdown_bounded(h, grace),
                "ServerHandle::shutdown({grace:?}) did not return within {:?}",
                grace + WAIT
            );
        }
    }

    /// Take the handle out (e.g. to shut down from another thread).
    pub fn take_handle(&mut self) -> ServerHandle {
        self.handle.take().expect("server running")
    }

    /// Wait (bounded) for an event matching `pred`, skipping others.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(_) => panic!("no event '{what}' within {WAIT:?}"),
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            // Shutdown is not what these tests check (graceful_shutdown.rs does): a hang here is
            // reported, not turned into a failure of an unrelated test.
            if !shutdown_bounded(h, Duration::from_secs(1)) {
                eprintln!("WARNING: ServerHandle::shutdown hung; its thread is left behind");
            }
        }
    }
}

/// Run `handle.shutdown(grace)` on another thread; true when it returned within `grace + WAIT`
/// (on false the thread is left behind, still blocked).
pub fn shutdown_bounded(handle: ServerHandle, grace: Duration) -> bool {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        handle.shutdown(grace);
        let _ = tx.send(());
    });
    rx.recv_timeout(grace + WAIT).is_ok()
}

/// Bound for every "eventually" in the tests: generous, never a speed assertion.
pub const WAIT: Duration = Duration::from_secs(20);

/// Start a test server (2 shards, unpinned, port 0) on `backend` with the builder adjusted by
/// `cfg`, running `TestHandler`.
pub fn start_with(backend: Backend, cfg: impl FnOnce(Builder) -> Builder) -> TestServer {
    let (tx, rx) = mpsc::channel();
    let builder = percore::Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(2))
        .pin(false)
        .backend(backend);
    let handle = cfg(builder)
        .start(move |_| TestHandler { events: tx.clone() })
        .unwrap_or_else(|e| panic!("server did not start on {backend:?}: {e}"));
    assert_eq!(
        handle.backend(),
        backend,
        "server runs the requested backend"
    );
    let addr = handle.local_addr();
    TestServer {
        handle: Some(handle),
        addr,
        events: rx,
    }
}

/// Start a server running the handlers `factory` makes (2 shards, unpinned, port 0) on
/// `backend`, with the builder adjusted by `cfg`. Dropping the handle shuts it down.
pub fn start_app<H, F>(
    backend: Backend,
    cfg: impl FnOnce(Builder) -> Builder,
    factory: F,
) -> ServerHandle
where
    H: percore::Handler,
    F: Fn(usize) -> H + Send + Sync + 'static,
{
    let builder = percore::Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(2))
        .pin(false)
        .backend(backend);
    let handle = cfg(builder)
        .start(factory)
        .unwrap_or_else(|e| panic!("server did not start on {backend:?}: {e}"));
    assert_eq!(
        handle.backend(),
        backend,
        "server runs the requested backend"
    );
    handle
}

/// Start a test server with the default configuration.
pub fn start(backend: Backend) -> TestServer {
    start_with(backend, |b| b)
}

/// Poll `cond` until it holds; panic with `what` after `WAIT`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A tungstenite client connected to `addr` (path `/`), blocking, with generous timeouts.
pub fn tungstenite_client(
    addr: SocketAddr,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>> {
    let config = tungstenite::protocol::WebSocketConfig {
        max_message_size: Some(64 << 20),
        max_frame_size: Some(64 << 20),
        ..Default::default()
    };
    let (ws, resp) =
        tungstenite::client::connect_with_config(format!("ws://{addr}/"), Some(config), 3)
            .unwrap_or_else(|e| panic!("tungstenite handshake with {addr}: {e}"));
    assert_eq!(resp.status(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(raw::IO_TIMEOUT)).ok();
        s.set_write_timeout(Some(raw::IO_TIMEOUT)).ok();
    }
    ws
}
