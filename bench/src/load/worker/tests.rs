//! The event loop against small tungstenite servers on 127.0.0.1 (port 0), one thread per
//! connection. Every run is a fraction of a second and a handful of connections.

use super::*;
use std::net::{SocketAddrV4, TcpListener};
use tungstenite::Message;

/// How the test server answers data messages.
#[derive(Clone, Copy)]
enum Answer {
    Echo,
    /// Flip one bit of every echo's filler.
    Corrupt,
    /// Echo the first message twice (the second copy is out of order).
    Duplicate,
    /// Never answer.
    Silent,
    /// Close after the first message.
    Close,
    /// Ping first, then echo.
    PingThenEcho,
    /// Every data message goes to every connection.
    Broadcast,
    /// Every data message goes to every other connection (not the sender).
    BroadcastOthers,
}

type Peers = Arc<std::sync::Mutex<Vec<std::sync::mpsc::Sender<Vec<u8>>>>>;

fn server(answer: Answer) -> SocketAddrV4 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = match l.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let peers: Peers = Arc::default();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let peers = peers.clone();
            std::thread::spawn(move || serve(s, answer, peers));
        }
    });
    addr
}

fn serve(s: std::net::TcpStream, answer: Answer, peers: Peers) {
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let Ok(mut ws) = tungstenite::accept(s) else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let me = {
        let mut p = peers.lock().unwrap();
        p.push(tx);
        p.len() - 1
    };
    let mut first = true;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    if let Answer::PingThenEcho = answer {
        let _ = ws.send(Message::Ping(b"hi".to_vec()));
    }
    while std::time::Instant::now() < deadline {
        for m in rx.try_iter() {
            if ws.send(Message::Binary(m)).is_err() {
                return;
            }
        }
        let msg = match ws.read() {
            Ok(m) => m,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        let Message::Binary(mut data) = msg else {
            continue;
        };
        let r = match answer {
            Answer::Echo | Answer::PingThenEcho => ws.send(Message::Binary(data)),
            Answer::Corrupt => {
                let last = data.len() - 1;
                data[last] ^= 1;
                ws.send(Message::Binary(data))
            }
            Answer::Duplicate => {
                if first {
                    first = false;
                    let _ = ws.send(Message::Binary(data.clone()));
                }
                ws.send(Message::Binary(data))
            }
            Answer::Silent => Ok(()),
            Answer::Close => {
                let _ = ws.close(None);
                let _ = ws.flush();
                return;
            }
            Answer::Broadcast | Answer::BroadcastOthers => {
                for (i, p) in peers.lock().unwrap().iter().enumerate() {
                    if matches!(answer, Answer::BroadcastOthers) && i == me {
                        continue;
                    }
                    let _ = p.send(data.clone());
                }
                Ok(())
            }
        };
        if r.is_err() {
            return;
        }
    }
}

fn config(dst: SocketAddrV4, mode: Mode, connections: u32) -> RunConfig {
    RunConfig {
        targets: vec![crate::load::Target {
            addr: dst,
            host: dst.to_string(),
            path: "/".into(),
            tls_name: None,
        }],
        mode,
        size: 64,
        publishers: 1,
        total_connections: connections,
        rate: None,
        ramp: None,
        total_threads: 1,
        in_flight: 4,
        timeout_ns: 2_000_000_000,
        explicit_sources: true,
        source_base: addr::run_base(mono_ns() / 1000),
        tls: None,
        deflate: false,
        fill: crate::load::payload::Fill::Pattern,
    }
}

/// Run one thread through the whole life cycle with a `window_ms` window.
fn run(cfg: RunConfig, window_ms: u64) -> Partial {
    let n = cfg.total_connections;
    let shared = Arc::new(Shared::default());
    let s2 = shared.clone();
    let job = ThreadJob {
        ids: 0..n,
        cpu: None,
        index: 0,
    };
    let t = std::thread::spawn(move || run_thread(Arc::new(cfg), job, s2));
    let deadline = mono_ns() + 10_000_000_000;
    while shared.ready.load(Relaxed) < 1 {
        assert!(mono_ns() < deadline, "connect phase did not end");
        std::thread::sleep(Duration::from_millis(1));
    }
    let go = mono_ns();
    shared.start(go, go + window_ms * 1_000_000);
    while shared.ended.load(Relaxed) < 1 {
        assert!(mono_ns() < deadline, "window did not end");
        std::thread::sleep(Duration::from_millis(1));
    }
    shared.release.store(true, Relaxed);
    t.join().unwrap()
}

#[test]
fn closed_loop_echo_counts_messages_and_no_errors() {
    let p = run(config(server(Answer::Echo), Mode::Echo, 5), 200);
    assert_eq!(p.established, 5);
    assert_eq!(p.open_at_end, 5);
    assert!(p.messages > 0);
    assert_eq!(p.errors.total(), 0, "{:?}", p.errors);
    assert_eq!(p.histogram().len(), p.messages);
}

#[test]
fn large_messages_are_reassembled_and_verified() {
    let mut cfg = config(server(Answer::Echo), Mode::Echo, 2);
    cfg.size = 256 << 10;
    let p = run(cfg, 200);
    assert!(p.messages > 0);
    assert_eq!(p.errors.total(), 0, "{:?}", p.errors);
}

#[test]
fn open_loop_sends_at_the_requested_rate() {
    let mut cfg = config(server(Answer::Echo), Mode::Echo, 4);
    cfg.rate = Some(1000.0);
    let p = run(cfg, 300);
    // 300 sends due in the window; allow for scheduling slop, not for closed-loop behaviour.
    assert!((200..=320).contains(&p.sent), "sent {}", p.sent);
    assert_eq!(p.errors.total(), 0, "{:?}", p.errors);
}

#[test]
fn corrupted_echo_is_a_mismatch() {
    let p = run(config(server(Answer::Corrupt), Mode::Echo, 3), 200);
    assert_eq!(p.errors.mismatch, 3);
    assert_eq!(p.messages, 0);
}

#[test]
fn duplicated_echo_is_a_mismatch() {
    let p = run(config(server(Answer::Duplicate), Mode::Echo, 2), 200);
    assert_eq!(p.errors.mismatch, 2);
}

#[test]
fn missing_echo_is_a_timeout() {
    let mut cfg = config(server(Answer::Silent), Mode::Echo, 2);
    cfg.timeout_ns = 100_000_000;
    let p = run(cfg, 400);
    assert_eq!(p.errors.timeout, 2);
}

#[test]
fn server_close_in_the_window_is_an_unexpected_close() {
    let p = run(config(server(Answer::Close), Mode::Echo, 2), 300);
    assert_eq!(p.errors.closed, 2);
    assert_eq!(p.open_at_end, 0);
}

#[test]
fn idle_connections_answer_pings_and_stay_open() {
    let p = run(config(server(Answer::PingThenEcho), Mode::Idle, 3), 200);
    assert_eq!(p.established, 3);
    assert_eq!(p.open_at_end, 3);
    assert_eq!(p.sent, 0);
    assert_eq!(p.errors.total(), 0, "{:?}", p.errors);
}

#[test]
fn refused_connections_are_connect_errors() {
    // Bind then drop a listener: nothing listens on that port any more.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let dst = match l.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    drop(l);
    let p = run(config(dst, Mode::Echo, 3), 10);
    assert_eq!(p.established, 0);
    assert_eq!(p.errors.connect, 3);
}

#[test]
fn broadcast_delivers_every_publish_to_every_connection() {
    let mut cfg = config(server(Answer::Broadcast), Mode::Broadcast, 4);
    cfg.rate = Some(200.0);
    let p = run(cfg, 300);
    assert_eq!(p.errors.total(), 0, "{:?}", p.errors);
    // The rate is the publisher's alone: 60 due in the window.
    assert!((45..=62).contains(&p.sent), "sent {}", p.sent);
    // Every delivery of a message sent in the window reaches 4 receivers; those sent in the
    // last 100 ms (20 at 200/s) may still be in flight when the window closes on a busy host.
    assert!(
        p.messages >= p.sent.saturating_sub(20) * 4,
        "sent {} delivered {}",
        p.sent,
        p.messages
    );
}

#[test]
fn connections_are_spread_over_several_servers() {
    let a = server(Answer::Echo);
    let b = server(Answer::Corrupt);
    let mut cfg = config(a, Mode::Echo, 4);
    cfg.targets.push(crate::load::Target {
        addr: b,
        host: b.to_string(),
        path: "/".into(),
        tls_name: None,
    });
    let p = run(cfg, 200);
    // Ids 1 and 3 went to the corrupting server.
    assert_eq!(p.established, 4);
    assert_eq!(p.errors.mismatch, 2);
    assert_eq!(p.open_at_end, 2);
}

#[test]
fn closed_loop_broadcast_publisher_sends_when_its_own_copy_returns() {
    let mut cfg = config(server(Answer::Broadcast), Mode::Broadcast, 3);
    cfg.publishers = 1;
    let p = run(cfg, 200);
    assert_eq!(p.errors.total(), 0, "{:?}", p.errors);
    assert!(p.sent > 1, "sent {}", p.sent);
    // The publisher's own copies all arrive; the other receivers lag behind by the messages
    // still in flight when the window closes (the test server relays through threads).
    assert!(
        p.messages >= p.sent * 2,
        "sent {} delivered {}",
        p.sent,
        p.messages
    );
}

#[test]
fn open_loop_publisher_left_out_of_its_broadcast_is_not_a_timeout() {
    let mut cfg = config(server(Answer::BroadcastOthers), Mode::Broadcast, 3);
    cfg.rate = Some(200.0);
    cfg.timeout_ns = 100_000_000;
    let p = run(cfg, 400);
    assert_eq!(p.errors.total(), 0, "{:?}", p.errors);
    // As above: up to 100 ms of messages (20 at 200/s) may still be in flight at the end.
    assert!(
        p.messages >= p.sent.saturating_sub(20) * 2,
        "sent {} delivered {}",
        p.sent,
        p.messages
    );
}
