//! Reliable delivery across reconnects (the resume protocol, `percore::resume`): a subscriber
//! whose TCP connection is cut with RST every 200 ms still gets every message exactly once and
//! in order while history reaches back, and a gap notice followed by every later message when
//! it does not; a restarted server starts a new epoch; the limits of history, backoff,
//! heartbeat and the client's event queue are each crossed. Both backends; the engine's side of
//! the protocol (raw clients) also over wss://.

mod common;
mod resume_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use percore::resume::{Backoff, Event, Heartbeat};
use percore::{Message, Position, ResumeClient, TopicHistory};
use resume_support::{eventually, server, Proxy, Raw};

/// Messages the publisher sends in the RST tests.
const COUNT: u64 = 10_000;
/// Time the publisher spreads them over (about 25 cuts at one per 200 ms).
const PUBLISH_TIME: Duration = Duration::from_secs(5);
/// Everything must have arrived by then.
const DEADLINE: Duration = Duration::from_secs(60);

/// What a subscriber saw through the RST proxy.
struct Seen {
    /// Payload numbers, in arrival order.
    numbers: Vec<u64>,
    positions: Vec<Position>,
    /// Gap notices: `(first, last)` positions lost.
    gaps: Vec<(u64, u64)>,
    resumed: usize,
}

/// Publish `COUNT` numbered messages to `numbers` while a client subscribes through a proxy
/// that cuts every connection with RST every 200 ms.
fn through_rst(backend: percore::Backend, history: TopicHistory) -> Seen {
    let srv = server(backend, |b| b.topic_history("numbers", history));
    let proxy = Proxy::new(srv.local_addr());
    let client = ResumeClient::builder(proxy.addr)
        .subscribe("numbers")
        .backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(80),
            None,
        ))
        .heartbeat(Heartbeat::new(
            Duration::from_millis(500),
            Duration::from_millis(500),
        ))
        .jitter_seed(7)
        .start()
        .unwrap();
    let first = client
        .events()
        .iter()
        .find(|e| matches!(e, Event::Subscribed { .. }));
    assert!(first.is_some(), "subscribed");
    let done = Arc::new(AtomicBool::new(false));
    let cutter = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut cuts = 0;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                cuts += proxy.reset_all();
            }
            cuts
        })
    };
    let publisher = srv.publisher();
    let pacer = std::thread::spawn(move || {
        let start = Instant::now();
        for n in 0..COUNT {
            let due = start + PUBLISH_TIME.mul_f64(n as f64 / COUNT as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            publisher
                .publish("numbers", Message::Text(&n.to_string()))
                .unwrap();
        }
    });
    let mut seen = Seen {
        numbers: Vec::new(),
        positions: Vec::new(),
        gaps: Vec::new(),
        resumed: 0,
    };
    let end = Instant::now() + DEADLINE;
    while seen.numbers.last() != Some(&(COUNT - 1)) {
        let left = end.saturating_duration_since(Instant::now());
        let Ok(ev) = client.events().recv_timeout(left) else {
            panic!("only {} messages within {DEADLINE:?}", seen.numbers.len());
        };
        match ev {
            Event::Message {
                payload, position, ..
            } => {
                seen.numbers
                    .push(String::from_utf8(payload).unwrap().parse().unwrap());
                seen.positions.push(position);
            }
            Event::Gap { first, last, .. } => seen.gaps.push((first, last.seq)),
            Event::Resumed { .. } => seen.resumed += 1,
            Event::Reset { .. } => panic!("the history did not start over"),
            _ => {}
        }
    }
    pacer.join().unwrap();
    done.store(true, Ordering::Relaxed);
    let cuts = cutter.join().unwrap();
    assert!(cuts >= 10, "only {cuts} connections cut");
    client.close();
    srv.shutdown(Duration::from_secs(1));
    seen
}

plain_only! {
    "ResumeClient connects over ws:// only; the protocol over wss:// is the raw-client tests below";

    fn resume_rst_every_200ms_delivers_10000_messages_exactly_once_in_order(backend) {
        let history = TopicHistory::new(20_000, 4 << 20, Duration::from_secs(60));
        let seen = through_rst(backend, history);
        assert_eq!(seen.numbers, (0..COUNT).collect::<Vec<_>>());
        assert!(seen.gaps.is_empty(), "gaps: {:?}", seen.gaps);
        // Positions count the topic's publishes: the n-th message is at n + 1.
        assert!(seen.positions.iter().zip(1..).all(|(p, s)| p.seq == s));
        assert!(seen.resumed >= 5, "resumed only {} times", seen.resumed);
    }

    fn resume_rst_with_small_history_gets_the_gap_notice_then_every_later_message(backend) {
        let history = TopicHistory::new(20, 1 << 20, Duration::from_secs(60));
        let seen = through_rst(backend, history);
        assert!(!seen.gaps.is_empty(), "no gap with a 20-message history");
        // Strictly increasing (none twice), and what is missing is exactly what the gap
        // notices named.
        assert!(seen.numbers.windows(2).all(|w| w[0] < w[1]));
        let mut announced = vec![false; COUNT as usize];
        for &(first, last) in &seen.gaps {
            for seq in first..=last {
                announced[seq as usize - 1] = true;
            }
        }
        let mut got = vec![false; COUNT as usize];
        for (n, p) in seen.numbers.iter().zip(&seen.positions) {
            assert_eq!(p.seq, n + 1);
            got[*n as usize] = true;
        }
        for n in 0..COUNT as usize {
            assert!(got[n] != announced[n], "message {n}: got {}, announced lost {}", got[n], announced[n]);
        }
    }

    fn resume_server_restart_is_a_new_epoch(backend) {
        let history = TopicHistory::new(100, 1 << 20, Duration::from_secs(60));
        let srv = server(backend, |b| b.topic_history("t", history));
        let addr = srv.local_addr();
        let client = ResumeClient::builder(addr)
            .subscribe("t")
            .backoff(Backoff::new(Duration::from_millis(20), Duration::from_millis(100), None))
            .start()
            .unwrap();
        let sub = client.events().recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(sub, Event::Connected);
        let Ok(Event::Subscribed { position, .. }) = client.events().recv_timeout(Duration::from_secs(10)) else {
            panic!("subscribed");
        };
        srv.publish("t", Message::Text("before")).unwrap();
        let msg = client.events().recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(msg, Event::Message { ref payload, .. } if payload == b"before"));
        srv.shutdown(Duration::from_secs(1));
        let srv = percore::Server::builder()
            .bind(addr)
            .shards(percore::Shards::Count(2))
            .pin(false)
            .backend(backend)
            .resume_protocol(true)
            .topic_history("t", history)
            .start(|_| resume_support::Quiet)
            .unwrap();
        srv.publish("t", Message::Text("after")).unwrap();
        let mut reset = None;
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            match client.events().recv_timeout(Duration::from_secs(10)).unwrap() {
                Event::Reset { position: p, .. } => reset = Some(p),
                Event::Message { payload, position: p, .. } => {
                    // The new epoch's history is replayed after the reset notice.
                    assert_eq!(payload, b"after");
                    assert_eq!(Some(p.epoch), reset.map(|r| r.epoch));
                    assert_ne!(p.epoch, position.epoch);
                    assert_eq!(p.seq, 1);
                    break;
                }
                _ => {}
            }
        }
        assert!(reset.is_some());
        client.close();
        srv.shutdown(Duration::from_secs(1));
    }

    fn resume_heartbeat_finds_a_silent_path_within_its_bound(backend) {
        let srv = server(backend, |b| b);
        let proxy = Proxy::new(srv.local_addr());
        let hb = Heartbeat::new(Duration::from_millis(200), Duration::from_millis(200));
        let client = ResumeClient::builder(proxy.addr)
            .subscribe("t")
            .heartbeat(hb)
            .backoff(Backoff::new(Duration::from_millis(10), Duration::from_millis(10), None))
            .start()
            .unwrap();
        let subscribed = |c: &ResumeClient| {
            c.events().iter().any(|e| matches!(e, Event::Subscribed { .. } | Event::Reset { .. } | Event::Resumed { .. }))
        };
        assert!(subscribed(&client));
        // Pings are answered while the path works: no reconnect in 4 intervals.
        let quiet = client.events().recv_timeout(Duration::from_millis(800));
        assert!(quiet.is_err(), "{quiet:?}");
        proxy.blackhole(true);
        let t0 = Instant::now();
        let ev = client.events().recv_timeout(Duration::from_secs(5)).unwrap();
        let took = t0.elapsed();
        assert!(matches!(ev, Event::Reconnecting { .. }), "{ev:?}");
        // interval + timeout (+ the client's 5 ms tick and scheduling slack).
        assert!(took < Duration::from_millis(700), "dead path found after {took:?}");
        assert!(took >= Duration::from_millis(150), "{took:?}");
        proxy.blackhole(false);
        client.close();
    }

    fn resume_backoff_gives_up_after_attempts_max(backend) {
        // A port with nothing behind it.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let _ = backend;
        let client = ResumeClient::builder(addr)
            .backoff(Backoff::new(Duration::from_millis(5), Duration::from_millis(20), Some(3)))
            .start()
            .unwrap();
        let evs: Vec<Event> = client.events().iter().collect();
        let delays: Vec<Duration> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Reconnecting { delay, .. } => Some(*delay),
                _ => None,
            })
            .collect();
        assert_eq!(delays.len(), 3, "{evs:?}");
        // Each within its ceiling: 5, 10, 20 ms.
        for (d, cap) in delays.iter().zip([5, 10, 20]) {
            assert!(*d <= Duration::from_millis(cap), "{d:?} > {cap} ms");
        }
        assert_eq!(evs.last(), Some(&Event::GaveUp));
    }

    fn resume_client_event_queue_bound_holds_back_without_losing(backend) {
        let srv = server(backend, |b| b.topic_history("t", TopicHistory::new(1000, 1 << 20, Duration::from_secs(60))));
        let client = ResumeClient::builder(srv.local_addr())
            .subscribe("t")
            .events_max(1)
            .start()
            .unwrap();
        assert!(client.events().iter().any(|e| matches!(e, Event::Subscribed { .. })));
        for n in 0..200 {
            srv.publish("t", Message::Text(&n.to_string())).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(client.events().len() <= 1);
        let mut got = Vec::new();
        while got.len() < 200 {
            if let Event::Message { payload, .. } = client.events().recv_timeout(Duration::from_secs(10)).unwrap() {
                got.push(String::from_utf8(payload).unwrap().parse::<u32>().unwrap());
            }
        }
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        client.close();
    }

}

// The engine's side of the protocol on both transports: over TLS these talk to the TLS port.
every_backend! {
    fn resume_protocol_commands_over_a_raw_client(backend) {
        let srv = server(backend, |b| {
            b.topic_history_messages_max(3)
                .topic_history("none*", TopicHistory::OFF)
        });
        let mut ws = Raw::connect(common::addr_of(&srv));
        ws.send("sub a");
        let ok = ws.recv();
        let parts: Vec<&str> = ok.split(' ').collect();
        assert_eq!((parts[0], parts[2], parts[3]), ("ok", "0", "a"));
        let epoch = parts[1];
        for m in ["one", "two", "three", "four"] {
            srv.publish("a", Message::Text(m)).unwrap();
        }
        for (i, m) in ["one", "two", "three", "four"].iter().enumerate() {
            assert_eq!(ws.recv(), format!("m {epoch} {} a\n{m}", i + 1));
        }
        // Resume on a second connection: the history holds 2..=4.
        let mut ws2 = Raw::connect(common::addr_of(&srv));
        ws2.send(&format!("resume {epoch} 2 a"));
        assert_eq!(ws2.recv(), format!("ok {epoch} 2 a"));
        assert_eq!(ws2.recv(), format!("m {epoch} 3 a\nthree"));
        assert_eq!(ws2.recv(), format!("m {epoch} 4 a\nfour"));
        ws2.send(&format!("resume {epoch} 0 a"));
        assert_eq!(ws2.recv(), format!("gap {epoch} 1 1 a"));
        assert_eq!(ws2.recv(), format!("m {epoch} 2 a\ntwo"));
        ws2.recv();
        ws2.recv();
        ws2.send("resume 1 0 a");
        assert_eq!(ws2.recv(), format!("reset {epoch} 1 a"));
        for _ in 0..3 {
            ws2.recv();
        }
        // A topic without history still gets positions; resuming it is always a gap.
        ws2.send("sub none:x");
        let ok = ws2.recv();
        let e2 = ok.split(' ').nth(1).unwrap().to_owned();
        srv.publish("none:x", Message::Text("x")).unwrap();
        assert_eq!(ws2.recv(), format!("m {e2} 1 none:x\nx"));
        ws2.send(&format!("resume {e2} 0 none:x"));
        assert_eq!(ws2.recv(), format!("gap {e2} 1 1 none:x"));
        // Heartbeats, acks, bad commands: answered, the connection goes on.
        ws2.send("ping 42");
        assert_eq!(ws2.recv(), "pong 42");
        ws2.send("hello");
        assert_eq!(ws2.recv(), "err unknown command");
        ws2.send("resume x 1 a");
        assert_eq!(ws2.recv(), "err malformed command");
        // The handler's on_subscribe refuses this one.
        ws2.send("sub secret");
        assert_eq!(ws2.recv(), "err forbidden secret");
        ws2.send(&format!("ack {epoch} 4 a"));
        ws2.send("unsub a");
        ws2.send("ping 1");
        assert_eq!(ws2.recv(), "pong 1");
        srv.publish("a", Message::Text("five")).unwrap();
        assert_eq!(ws.recv(), format!("m {epoch} 5 a\nfive"));
        assert!(ws2.silent_for(Duration::from_millis(200)));
        if common::transport() == common::Transport::Tls {
            assert_eq!(srv.stats().tls_handshakes, 2, "both clients spoke TLS");
        }
        srv.shutdown(Duration::from_secs(1));
    }

    fn resume_replays_requested_without_reading_hit_the_send_queue_limit(backend) {
        let srv = server(backend, |b| {
            b.topic_history("big", TopicHistory::new(100, 1 << 20, Duration::from_secs(60)))
                .send_queue_bytes_max(256 << 10)
        });
        let big = vec![b'x'; 10_000];
        for _ in 0..100 {
            srv.publish("big", Message::Binary(&big)).unwrap();
        }
        let offer = [("Sec-WebSocket-Protocol", percore::resume::PROTOCOL)];
        let mut c = common::raw::RawClient::connect_with(common::addr_of(&srv), "/", &offer).unwrap();
        // Each asks for the whole 1 MB history again; the client reads nothing meanwhile.
        for _ in 0..60 {
            if c.send_text("resume 1 0 big").is_err() {
                break;
            }
        }
        assert_eq!(
            c.read_until_close(),
            common::raw::Ending::Close(Some(1008)),
            "a client piling up replays is a slow consumer"
        );
        eventually("slow consumer counted", Duration::from_secs(5), || {
            srv.stats().slow_consumers == 1
        });
        srv.shutdown(Duration::from_secs(1));
    }

    fn resume_history_topics_max_drops_the_least_recent_idle_history(backend) {
        let srv = server(backend, |b| b.topic_history_messages_max(10).history_topics_max(2));
        srv.publish("a", Message::Text("1")).unwrap();
        srv.publish("b", Message::Text("1")).unwrap();
        assert_eq!(srv.stats().history_topics, 2);
        srv.publish("c", Message::Text("1")).unwrap();
        assert_eq!(srv.stats().history_topics, 2);
        // "a" was dropped: its history starts over; "b" and "c" still hold their message.
        let mut ws = Raw::connect(common::addr_of(&srv));
        ws.send("resume 1 0 b");
        assert!(ws.recv().starts_with("reset "));
        assert!(ws.recv().ends_with(" 1 b\n1"));
        ws.send("sub a");
        let ok = ws.recv();
        assert!(ok.starts_with("ok ") && ok.ends_with(" 0 a"), "{ok}");
        srv.shutdown(Duration::from_secs(1));
    }
}

/// A server that accepts TCP but never answers the upgrade: the attempt fails at the
/// client's connect timeout and it retries.
#[test]
fn resume_client_connect_timeout_bounds_an_unanswered_upgrade() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(listener.accept().unwrap().0);
        }
        held
    });
    let t0 = Instant::now();
    let client = ResumeClient::builder(addr)
        .connect_timeout(Duration::from_millis(200))
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(1),
            Some(1),
        ))
        .start()
        .unwrap();
    let ev = client
        .events()
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    assert!(
        matches!(ev, Event::Reconnecting { attempt: 1, .. }),
        "{ev:?}"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        client.events().recv_timeout(Duration::from_secs(5)),
        Ok(Event::GaveUp)
    );
    drop(held.join().unwrap());
}

/// Blocks its shard for 300 ms when told "block" (so the mailbox fills meanwhile).
struct Blocker;

impl percore::Handler for Blocker {
    type State = ();
    fn on_message(&mut self, _: &mut percore::Conn<'_, ()>, msg: Message<'_>) {
        if msg.as_bytes() == b"block" {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

every_backend! {
    fn resume_history_fills_in_publishes_a_full_mailbox_refused(backend) {
        let srv = common::builder(backend)
            .shards(percore::Shards::Count(1))
            .resume_protocol(true)
            .mailbox_messages_max(1)
            .topic_history_messages_max(100)
            .start(|_| Blocker)
            .unwrap();
        let mut sub = Raw::connect(common::addr_of(&srv));
        sub.send("sub t");
        let ok = sub.recv();
        let epoch = ok.split(' ').nth(1).unwrap().to_owned();
        let mut blocker = common::raw::RawClient::connect(common::addr_of(&srv)).unwrap();
        blocker.send_text("block").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // The shard sleeps: the first publish waits in its mailbox, the rest do not fit.
        let refused = (1..=10)
            .filter(|n| srv.publish("t", Message::Text(&n.to_string())).is_err())
            .count();
        assert_eq!(refused, 9);
        assert_eq!(sub.recv(), format!("m {epoch} 1 t\n1"));
        // The next publish that reaches the shard brings 2..=10 with it, from the history.
        srv.publish("t", Message::Text("11")).unwrap();
        for n in 2..=11 {
            assert_eq!(sub.recv(), format!("m {epoch} {n} t\n{n}"));
        }
        srv.shutdown(Duration::from_secs(1));
    }
}

/// A client that offers the subprotocol to a server that did not turn it on (the default) is
/// not given it: its text messages reach the handler as they are.
#[test]
fn resume_protocol_off_is_not_negotiated() {
    let srv = percore::Server::builder()
        .bind("127.0.0.1:0")
        .shards(percore::Shards::Count(1))
        .pin(false)
        .backend(percore::Backend::Epoll)
        .start(|_| resume_support::Quiet)
        .unwrap();
    let offer = [("Sec-WebSocket-Protocol", percore::resume::PROTOCOL)];
    let c = common::raw::RawClient::connect_with(common::addr_of(&srv), "/", &offer).unwrap();
    assert_eq!(c.response.header("sec-websocket-protocol"), None);
    let on = server(percore::Backend::Epoll, |b| b);
    let c2 = common::raw::RawClient::connect_with(on.local_addr(), "/", &offer).unwrap();
    assert_eq!(
        c2.response.header("sec-websocket-protocol"),
        Some(percore::resume::PROTOCOL)
    );
    eventually("open", Duration::from_secs(5), || {
        srv.stats().connections_open == 1
    });
    drop((c, c2));
    srv.shutdown(Duration::from_secs(1));
    on.shutdown(Duration::from_secs(1));
}
