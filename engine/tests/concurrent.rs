//! 1000 concurrent connections, each sending numbered messages: every message is echoed
//! exactly once, in order, to the connection that sent it.

mod common;

use common::handlers::Event;
use common::raw::{encode_frame, op, RawClient};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 1000;
const THREADS: usize = 4;
const MESSAGES: usize = 20;

fn message(conn: usize, i: usize) -> String {
    format!("conn {conn} message {i} {}", "p".repeat((conn + i) % 50))
}

every_backend! {
    fn thousand_connections_each_get_their_messages_back_once_in_order(backend) {
        let server = common::start(backend);
        let addr = server.addr;
        let per_thread = CONNECTIONS / THREADS;
        // Every connection is open before anyone sends (they really are concurrent). Bounded
        // waits on both sides: a failing thread never leaves the others hanging.
        let ready = Arc::new(AtomicUsize::new(0));
        let go = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (ready, go) = (ready.clone(), go.clone());
                std::thread::spawn(move || {
                    let ids: Vec<usize> = (t * per_thread..(t + 1) * per_thread).collect();
                    let mut conns: Vec<RawClient> = ids
                        .iter()
                        .map(|_| RawClient::connect(addr).expect("connect"))
                        .collect();
                    ready.fetch_add(1, Ordering::SeqCst);
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !go.load(Ordering::SeqCst) {
                        assert!(Instant::now() < deadline, "never told to go");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    // Two halves: the second batch is written while the first batch's echoes
                    // are still unread on other connections.
                    for half in [0..MESSAGES / 2, MESSAGES / 2..MESSAGES] {
                        for (c, &id) in conns.iter_mut().zip(&ids) {
                            let mut batch = Vec::new();
                            for i in half.clone() {
                                batch.extend(encode_frame(true, 0, op::TEXT, message(id, i).as_bytes(), [7, 7, 7, 7]));
                            }
                            c.send_raw(&batch).expect("send");
                        }
                        for (c, &id) in conns.iter_mut().zip(&ids) {
                            for i in half.clone() {
                                let (kind, data) = c.read_message().expect("echo");
                                assert_eq!(kind, op::TEXT);
                                assert_eq!(String::from_utf8(data).unwrap(), message(id, i), "echo order/content on conn {id}");
                            }
                        }
                    }
                    // Exactly once: the next thing after the last echo is the marker's echo.
                    for c in conns.iter_mut() {
                        c.send_text("end").unwrap();
                    }
                    for c in conns.iter_mut() {
                        assert_eq!(c.read_message().unwrap(), (op::TEXT, b"end".to_vec()), "no duplicate echo");
                    }
                    for c in conns.iter_mut() {
                        c.send_close(1000, "").unwrap();
                    }
                    for c in conns.iter_mut() {
                        c.expect_eof();
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while ready.load(Ordering::SeqCst) < THREADS {
            assert!(Instant::now() < deadline, "1000 connections not open within 120 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        common::wait_until("1000 connections open", || {
            server.handle().stats().connections_open == CONNECTIONS as u64
        });
        go.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().expect("client thread");
        }
        common::wait_until("all connections closed", || server.handle().stats().connections_open == 0);
        let stats = server.handle().stats();
        assert!(stats.upgraded >= CONNECTIONS as u64, "{stats:?}");
        assert!(stats.messages_received >= (CONNECTIONS * (MESSAGES + 1)) as u64, "{stats:?}");
        // Every connection had its own id, and each open was matched by exactly one close.
        let mut opened = std::collections::HashSet::new();
        let mut closed = std::collections::HashSet::new();
        let deadline = Instant::now() + common::WAIT;
        while closed.len() < CONNECTIONS {
            let left = deadline.saturating_duration_since(Instant::now());
            match server.events.recv_timeout(left) {
                Ok(Event::Opened(id)) => assert!(opened.insert(id), "id {id} opened twice"),
                Ok(Event::Closed(id, ..)) => assert!(closed.insert(id), "id {id} closed twice"),
                Ok(_) => {}
                Err(_) => panic!("only {} of {CONNECTIONS} on_close calls", closed.len()),
            }
        }
        assert_eq!(opened.len(), CONNECTIONS);
        assert_eq!(opened, closed);
    }
}
