//! Upgrade decisions made later on another thread (`Upgrade::defer` + `Deferred`): accepted
//! with the state and headers they carry, rejected with their status; a client that leaves
//! before its decision (the late answer is a no-op, nothing stays behind, a reused slot is not
//! confused with it); a decision that never comes (closed at the handshake timeout); a handle
//! dropped unanswered (503); pending upgrades counted against `connections_max`.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use common::raw::{http_exchange, new_key, read_response_head, upgrade_request, RawClient, Stream};
use percore::{
    Accept, Backend, CloseCode, Conn, ConnId, Decision, Deferred, Handler, Message, Reject,
    Request, ServerHandle, Upgrade,
};

/// A connection's state: who it is (set by whoever accepted it).
#[derive(Debug, PartialEq, Eq)]
struct Session {
    user: u32,
}

/// What the handler tells the test.
#[derive(Debug)]
enum Seen {
    /// An upgrade request for this path went pending; its handle.
    Pending(String, Deferred<Session>),
    Opened(u32),
    Closed(u32),
}

/// `/now/N` is accepted at once as user N; every other path is deferred to the test thread.
/// Open connections say `hello N` and answer each message with `N:message`.
struct Gate {
    seen: Sender<Seen>,
}

impl Handler for Gate {
    type State = Session;

    fn on_upgrade(&mut self, req: &Request, up: Upgrade<Session>) -> Decision<Session> {
        if let Some(n) = req
            .path()
            .strip_prefix("/now/")
            .and_then(|n| n.parse().ok())
        {
            return up.accept(Session { user: n });
        }
        let (pending, handle) = up.defer();
        let _ = self.seen.send(Seen::Pending(req.path().to_owned(), handle));
        pending
    }

    fn on_open(&mut self, conn: &mut Conn<'_, Session>) {
        let user = conn.state().user;
        let _ = self.seen.send(Seen::Opened(user));
        let _ = conn.send_text(&format!("hello {user}"));
    }

    fn on_message(&mut self, conn: &mut Conn<'_, Session>, msg: Message<'_>) {
        if let Message::Text(t) = msg {
            let reply = format!("{}:{t}", conn.state().user);
            let _ = conn.send_text(&reply);
        }
    }

    fn on_close(&mut self, state: Session, _: ConnId, _: Option<CloseCode>, _: &str) {
        let _ = self.seen.send(Seen::Closed(state.user));
    }
}

fn gate(
    backend: Backend,
    cfg: impl FnOnce(common::Builder) -> common::Builder,
) -> (ServerHandle, Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = common::start_app(backend, cfg, move |_| Gate {
        seen: tx.lock().unwrap().clone(),
    });
    (server, rx)
}

/// The next handle the handler deferred (bounded wait), with its path.
fn next_pending(rx: &Receiver<Seen>) -> (String, Deferred<Session>) {
    loop {
        match rx.recv_timeout(common::WAIT).expect("a deferred upgrade") {
            Seen::Pending(path, h) => return (path, h),
            _ => continue,
        }
    }
}

/// Connect and send an upgrade request for `path` (no answer read).
fn request(addr: SocketAddr, path: &str) -> (Stream, String) {
    let mut s = common::raw::connect(addr).unwrap();
    let key = new_key();
    std::io::Write::write_all(&mut s, upgrade_request(addr, path, &key, &[]).as_bytes()).unwrap();
    (s, key)
}

/// A raw client over a stream whose 101 has arrived.
fn opened(stream: Stream) -> RawClient {
    let mut stream = stream;
    let (response, rest) = read_response_head(&mut stream).unwrap();
    assert_eq!(response.status, 101, "{response:?}");
    RawClient::from_parts(stream, rest, response)
}

fn settled(server: &ServerHandle) -> bool {
    let s = server.stats();
    s.connections_open == 0 && s.upgrades_pending == 0
}

every_backend! {
    fn deferred_accept_opens_with_the_state_and_headers_from_another_thread(backend) {
        let (server, seen) = gate(backend, |b| b);
        let (stream, _) = request(common::addr_of(&server), "/auth");
        let (path, handle) = next_pending(&seen);
        assert_eq!(path, "/auth");
        let id = handle.id();
        // The handler hands the handle out from inside on_upgrade: the gauge follows.
        common::wait_until("the upgrade is counted as pending", || server.stats().upgrades_pending == 1);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            handle.accept_with(Accept::new().header("X-User", "7"), Session { user: 7 });
        });
        let mut c = opened(stream);
        assert_eq!(c.response.header("x-user"), Some("7"));
        assert_eq!(c.read_message().unwrap().1, b"hello 7", "on_open sees the state");
        c.exchange_text("ping", "7:ping");
        assert_eq!(server.stats().upgrades_pending, 0);
        c.send_close(1000, "").unwrap();
        c.expect_eof();
        let closed = loop {
            match seen.recv_timeout(common::WAIT).unwrap() {
                Seen::Closed(u) => break u,
                _ => continue,
            }
        };
        assert_eq!(closed, 7, "on_close gets the state back");
        assert!(id.shard() < 2);
    }

    fn deferred_reject_sends_its_status_headers_and_body(backend) {
        let (server, seen) = gate(backend, |b| b);
        let (mut stream, _) = request(common::addr_of(&server), "/auth");
        let (_, handle) = next_pending(&seen);
        std::thread::spawn(move || {
            handle.reject(Reject::new(401, "token expired").header("WWW-Authenticate", "Bearer"));
        });
        let (resp, mut body) = read_response_head(&mut stream).unwrap();
        let _ = stream.read_to_end(&mut body);
        assert_eq!(resp.status, 401);
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
        assert_eq!(body, b"token expired\n");
        drop(stream); // the server lingers until the client hangs up too
        common::wait_until("the connection is gone", || settled(&server));
        assert_eq!(server.stats().handshakes_rejected, 1);
    }

    fn frames_sent_before_the_decision_are_delivered_after_it(backend) {
        let (server, seen) = gate(backend, |b| b);
        let (mut stream, _) = request(common::addr_of(&server), "/auth");
        let (_, handle) = next_pending(&seen);
        let early = common::raw::encode_frame(true, 0, common::raw::op::TEXT, b"early", [1, 2, 3, 4]);
        std::io::Write::write_all(&mut stream, &early).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        handle.accept(Session { user: 3 });
        let mut c = opened(stream);
        assert_eq!(c.read_message().unwrap().1, b"hello 3");
        assert_eq!(c.read_message().unwrap().1, b"3:early");
    }

    fn client_that_leaves_before_its_decision_makes_the_late_answer_a_no_op(backend) {
        // One shard: the second connection reuses the first one's slot.
        let (server, seen) = gate(backend, |b| b.shards(percore::Shards::Count(1)));
        let (first, _) = request(common::addr_of(&server), "/a");
        let (_, late) = next_pending(&seen);
        drop(first);
        common::wait_until("the departed client is finalized", || settled(&server));
        let (second, _) = request(common::addr_of(&server), "/b");
        let (_, current) = next_pending(&seen);
        assert_eq!(late.id().key(), current.id().key(), "the slot is reused");
        assert_ne!(late.id(), current.id(), "with a new generation");
        late.accept(Session { user: 1 });
        // The late answer neither opens nor disturbs the new connection in the same slot.
        std::thread::sleep(Duration::from_millis(100));
        let s = server.stats();
        assert_eq!((s.upgraded, s.upgrades_pending, s.connections_open), (0, 1, 1), "{s:?}");
        current.accept(Session { user: 2 });
        let mut c = opened(second);
        assert_eq!(c.read_message().unwrap().1, b"hello 2");
        drop(c);
        common::wait_until("nothing left", || settled(&server));
        let s = server.stats();
        assert_eq!((s.upgraded, s.closed, s.accepted), (1, 2, 2), "{s:?}");
        let opened: Vec<u32> = seen.try_iter().filter_map(|e| match e {
            Seen::Opened(u) => Some(u),
            _ => None,
        }).collect();
        assert_eq!(opened, [2], "only the live connection opened");
    }

    fn decision_that_never_comes_closes_at_the_handshake_timeout(backend) {
        let (server, seen) = gate(backend, |b| b.handshake_timeout(Duration::from_millis(300)));
        let (mut stream, _) = request(common::addr_of(&server), "/slow");
        let (_, handle) = next_pending(&seen);
        let mut got = Vec::new();
        match stream.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("still open after the handshake timeout: {e}"),
        }
        assert!(got.is_empty(), "a plain close, no response: {:?}", String::from_utf8_lossy(&got));
        common::wait_until("the timeout is counted and nothing is left", || {
            settled(&server) && server.stats().timeouts == 1
        });
        handle.accept(Session { user: 9 });
        std::thread::sleep(Duration::from_millis(50));
        let s = server.stats();
        assert_eq!((s.upgraded, s.connections_open), (0, 0), "{s:?}");
        // The shard serves others as before.
        let mut c = RawClient::connect_with(common::addr_of(&server), "/now/5", &[]).unwrap();
        assert_eq!(c.read_message().unwrap().1, b"hello 5");
    }

    fn handle_dropped_without_an_answer_rejects_with_503(backend) {
        let (server, seen) = gate(backend, |b| b);
        let (mut stream, _) = request(common::addr_of(&server), "/lost");
        let (_, handle) = next_pending(&seen);
        std::thread::spawn(move || drop(handle)).join().unwrap();
        let (resp, mut body) = read_response_head(&mut stream).unwrap();
        let _ = stream.read_to_end(&mut body);
        assert_eq!(resp.status, 503, "{resp:?}");
        assert_eq!(body, b"upgrade decision dropped\n");
        drop(stream);
        common::wait_until("nothing left", || settled(&server));
    }

    fn pending_upgrades_count_against_connections_max(backend) {
        let (server, seen) = gate(backend, |b| b.connections_max(2));
        let (a, _) = request(common::addr_of(&server), "/a");
        let (b, _) = request(common::addr_of(&server), "/b");
        let mut handles = [next_pending(&seen), next_pending(&seen)];
        handles.sort_by(|x, y| x.0.cmp(&y.0));
        let req = upgrade_request(common::addr_of(&server), "/now/1", &new_key(), &[]);
        let resp = http_exchange(common::addr_of(&server), req.as_bytes()).unwrap();
        assert_eq!(resp.status, 503, "two pending upgrades fill a limit of two: {resp:?}");
        let [(pa, ha), (pb, hb)] = handles;
        assert_eq!((pa.as_str(), pb.as_str()), ("/a", "/b"));
        ha.accept(Session { user: 1 });
        hb.reject(Reject::new(403, "no"));
        assert_eq!(opened(a).read_message().unwrap().1, b"hello 1");
        let mut rest = Vec::new();
        let mut b = b;
        let _ = b.read_to_end(&mut rest);
        assert!(rest.starts_with(b"HTTP/1.1 403 "), "{:?}", String::from_utf8_lossy(&rest));
    }

    fn state_from_on_upgrade_reaches_every_callback_without_a_deferral(backend) {
        let (server, seen) = gate(backend, |b| b);
        let mut c = RawClient::connect_with(common::addr_of(&server), "/now/42", &[]).unwrap();
        assert_eq!(c.read_message().unwrap().1, b"hello 42");
        c.exchange_text("x", "42:x");
        c.send_close(1000, "").unwrap();
        c.expect_eof();
        let mut events = Vec::new();
        while let Ok(e) = seen.recv_timeout(common::WAIT) {
            let last = matches!(e, Seen::Closed(_));
            events.push(format!("{e:?}"));
            if last {
                break;
            }
        }
        assert_eq!(events, ["Opened(42)", "Closed(42)"]);
        assert_eq!(server.stats().upgrades_pending, 0);
    }
}
