//! Shared pieces of the integration tests: start a server on a given backend and transport
//! (port 0), run a test on every backend × transport, bounded waits, and an independent raw
//! client (`raw`) that speaks plain TCP or TLS (`tls`).
#![allow(dead_code)]

pub mod handlers;
pub mod raw;
pub mod tls;

use handlers::{Event, TestHandler};
use percore::{Backend, ServerHandle, Shards};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The server builder type, as `percore::Server::builder()` returns it.
pub type Builder = percore::ServerBuilder;

/// The transport a test's servers speak.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    /// ws://
    Plain,
    /// wss://: every test server also listens on a TLS port, and the test talks to that one.
    Tls,
}

thread_local! {
    static TRANSPORT: std::cell::Cell<Transport> = const { std::cell::Cell::new(Transport::Plain) };
}

/// The transport of the test running on this thread.
pub fn transport() -> Transport {
    TRANSPORT.with(|t| t.get())
}

/// Set this thread's transport (a test body re-run in a child process carries it over).
pub fn set_transport(t: Transport) {
    TRANSPORT.with(|c| c.set(t));
}

/// Run a test body once per backend × transport: `every_backend! { fn name(backend) { ... } }`
/// makes a module `name` with tests `epoll`, `io_uring`, `epoll_tls` and `io_uring_tls`. The
/// io_uring tests print a skip note and pass when io_uring cannot start here, unless
/// `PERCORE_REQUIRE_URING=1`. Attributes before `fn` (e.g. `#[ignore = "..."]`) apply to all.
/// A test that cannot run over TLS uses `plain_only!` instead and says why.
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
                $crate::common::run_on(percore::Backend::Epoll, $crate::common::Transport::Plain, stringify!($name), run)
            }

            #[test]
            $(#[$m])*
            fn io_uring() {
                $crate::common::run_on(percore::Backend::IoUring, $crate::common::Transport::Plain, stringify!($name), run)
            }

            #[test]
            $(#[$m])*
            fn epoll_tls() {
                $crate::common::run_on(percore::Backend::Epoll, $crate::common::Transport::Tls, stringify!($name), run)
            }

            #[test]
            $(#[$m])*
            fn io_uring_tls() {
                $crate::common::run_on(percore::Backend::IoUring, $crate::common::Transport::Tls, stringify!($name), run)
            }
        }
    )*};
}

/// `every_backend!` without the TLS half: `plain_only! { "why"; fn name(backend) { .. } }`.
#[macro_export]
macro_rules! plain_only {
    ($why:literal; $($(#[$m:meta])* fn $name:ident($b:ident) $body:block)*) => {$(
        #[doc = concat!("Plain transport only: ", $why)]
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($b: percore::Backend) $body

            #[test]
            $(#[$m])*
            fn epoll() {
                $crate::common::run_on(percore::Backend::Epoll, $crate::common::Transport::Plain, stringify!($name), run)
            }

            #[test]
            $(#[$m])*
            fn io_uring() {
                $crate::common::run_on(percore::Backend::IoUring, $crate::common::Transport::Plain, stringify!($name), run)
            }
        }
    )*};
}

/// Behaviours of TLS itself, on both backends: `tls_only! { fn name(backend) { .. } }` makes
/// `name::epoll_tls` and `name::io_uring_tls`.
#[macro_export]
macro_rules! tls_only {
    ($($(#[$m:meta])* fn $name:ident($b:ident) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($b: percore::Backend) $body

            #[test]
            $(#[$m])*
            fn epoll_tls() {
                $crate::common::run_on(percore::Backend::Epoll, $crate::common::Transport::Tls, stringify!($name), run)
            }

            #[test]
            $(#[$m])*
            fn io_uring_tls() {
                $crate::common::run_on(percore::Backend::IoUring, $crate::common::Transport::Tls, stringify!($name), run)
            }
        }
    )*};
}

/// Run `f(backend)` with `transport` as this thread's transport (skipping io_uring where it
/// cannot start, see [`uring_available`]).
pub fn run_on(backend: Backend, transport: Transport, name: &str, f: fn(Backend)) {
    if backend == Backend::IoUring && !uring_available() {
        eprintln!("SKIP {name}: io_uring is not available here");
        return;
    }
    TRANSPORT.with(|t| t.set(transport));
    f(backend)
}

/// A server builder for `backend` (127.0.0.1, port 0, 2 unpinned shards) on this thread's
/// transport: over TLS it also listens on a TLS port ([`addr_of`] gives the one to talk to).
pub fn builder(backend: Backend) -> Builder {
    let b = percore::Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(2))
        .pin(false)
        .backend(backend);
    match transport() {
        Transport::Plain => b,
        Transport::Tls => b.tls(tls::server_config()).tls_bind("127.0.0.1:0"),
    }
}

/// The address a test talks to: the TLS listener's over TLS (clients then use TLS for it),
/// else the plain one. The plain address is known as plain from now on, even if an earlier
/// server of this process had a TLS listener on the same port.
pub fn addr_of(h: &ServerHandle) -> SocketAddr {
    tls::not_serving(h.local_addr());
    match h.tls_local_addr() {
        Some(a) => {
            tls::serving(a);
            a
        }
        None => h.local_addr(),
    }
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
    /// Where the test talks to it (127.0.0.1, ephemeral port; its TLS port over TLS).
    pub addr: SocketAddr,
    /// Events from the handlers.
    pub events: Receiver<Event>,
}

impl TestServer {
    /// The running server.
    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("server running")
    }

    /// `ws://addr/`, or `wss://localhost:port/` over TLS.
    pub fn url(&self) -> String {
        if tls::is_tls(self.addr) {
            format!("wss://localhost:{}/", self.addr.port())
        } else {
            format!("ws://{}/", self.addr)
        }
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
            if let Some(a) = h.tls_local_addr() {
                tls::not_serving(a);
            }
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

/// Start a test server (2 shards, unpinned, port 0) on `backend` and this thread's transport,
/// with the builder adjusted by `cfg`, running `TestHandler`.
pub fn start_with(backend: Backend, cfg: impl FnOnce(Builder) -> Builder) -> TestServer {
    let (tx, rx) = mpsc::channel();
    let handle = cfg(builder(backend))
        .start(move |_| TestHandler { events: tx.clone() })
        .unwrap_or_else(|e| panic!("server did not start on {backend:?}: {e}"));
    assert_eq!(
        handle.backend(),
        backend,
        "server runs the requested backend"
    );
    let addr = addr_of(&handle);
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
    let handle = cfg(builder(backend))
        .start(factory)
        .unwrap_or_else(|e| panic!("server did not start on {backend:?}: {e}"));
    assert_eq!(
        handle.backend(),
        backend,
        "server runs the requested backend"
    );
    handle
}

/// An outbound connection to a test server at `addr`: over TLS when `addr` speaks it
/// (`Connect::tls` with the test CA, server name `localhost`).
pub fn connect_target(addr: SocketAddr) -> percore::Connect {
    let c = percore::Connect::new(addr);
    if tls::is_tls(addr) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(tls::pki().ca.clone()).unwrap();
        c.tls(percore::tls::client_config(roots))
            .server_name("localhost")
    } else {
        c
    }
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

/// A tungstenite client connected to `addr` (path `/`), blocking, with generous timeouts; over
/// TLS when `addr` speaks it (tungstenite's rustls connector, the test CA).
pub fn tungstenite_client(
    addr: SocketAddr,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>> {
    let config = tungstenite::protocol::WebSocketConfig {
        max_message_size: Some(64 << 20),
        max_frame_size: Some(64 << 20),
        ..Default::default()
    };
    let (ws, resp) = if tls::is_tls(addr) {
        let tcp = std::net::TcpStream::connect(addr).expect("tcp connect");
        let url = format!("wss://localhost:{}/", addr.port());
        tungstenite::client_tls_with_config(
            url,
            tcp,
            Some(config),
            Some(tungstenite::Connector::Rustls(tls::client_config())),
        )
        .unwrap_or_else(|e| panic!("tungstenite TLS handshake with {addr}: {e}"))
    } else {
        tungstenite::client::connect_with_config(format!("ws://{addr}/"), Some(config), 3)
            .unwrap_or_else(|e| panic!("tungstenite handshake with {addr}: {e}"))
    };
    assert_eq!(resp.status(), 101);
    let tcp = match ws.get_ref() {
        tungstenite::stream::MaybeTlsStream::Plain(s) => Some(s),
        tungstenite::stream::MaybeTlsStream::Rustls(s) => Some(&s.sock),
        _ => None,
    };
    if let Some(s) = tcp {
        s.set_read_timeout(Some(raw::IO_TIMEOUT)).ok();
        s.set_write_timeout(Some(raw::IO_TIMEOUT)).ok();
    }
    ws
}
