//! Slow consumers: one subscriber stops reading (small socket buffer, small
//! `send_queue_bytes_max`) while others keep up. Each policy — close (1008 / 1013), drop
//! (droppable publishes) and conflate (latest value wins) — is checked on both backends, and
//! the others must receive everything meanwhile.

mod common;
mod pubsub_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use percore::{Backend, Message, PublishOptions, ServerHandle, SlowConsumer};
use pubsub_support::*;
use tungstenite::protocol::frame::coding::CloseCode as TCode;
use tungstenite::Message as TMessage;

const QUEUE_MAX: usize = 256 << 10;
const MSG_BYTES: usize = 16 << 10;
const N: usize = 400;
const GOOD: usize = 3;
/// The publisher stays at most this many messages ahead of the slowest good reader.
const AHEAD: usize = 4;

/// Message `i`: its index in decimal, padded to `MSG_BYTES`.
fn message(i: usize) -> String {
    let mut s = format!("{i:06}");
    s.extend(std::iter::repeat_n('.', MSG_BYTES - s.len()));
    s
}

fn index(m: &str) -> usize {
    m[..6].parse().expect("message index")
}

struct Run {
    server: ServerHandle,
    shared: Arc<Shared>,
    stalled: Client,
    /// Every good reader's received indices.
    good: Vec<Vec<usize>>,
}

/// Start a server with `policy`, connect one stalled and `GOOD` reading subscribers to
/// `feed`, publish `N` messages with `opts` from another thread, paced by the good readers.
fn run_feed(backend: Backend, policy: SlowConsumer, opts: PublishOptions) -> Run {
    let b = builder(backend, 2)
        .send_queue_bytes_max(QUEUE_MAX)
        .send_queue_low_water_bytes(16 << 10)
        .slow_consumer(policy);
    let (server, shared) = start(b);
    let addr = addr(&server);
    let stalled = connect_small_rcvbuf(addr, "/t/feed");
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..GOOD).map(|_| AtomicUsize::new(0)).collect());
    let readers: Vec<_> = (0..GOOD)
        .map(|r| {
            let mut ws = connect(addr, "/t/feed");
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    let i = index(&read_text(&mut ws));
                    got.push(i);
                    progress[r].store(got.len(), Ordering::SeqCst);
                    if i == N - 1 {
                        return got;
                    }
                }
            })
        })
        .collect();
    wait_subscriptions(&server, 1 + GOOD as u64);
    let publisher = server.publisher();
    let p = progress.clone();
    std::thread::spawn(move || {
        for i in 0..N {
            let paced = wait_until(Duration::from_secs(20), || {
                p.iter().all(|c| c.load(Ordering::SeqCst) + AHEAD >= i)
            });
            assert!(paced, "good readers stopped receiving");
            publisher
                .publish_with("feed", Message::Text(&message(i)), opts)
                .unwrap();
        }
    })
    .join()
    .unwrap();
    let good = readers.into_iter().map(|r| r.join().unwrap()).collect();
    Run {
        server,
        shared,
        stalled,
        good,
    }
}

/// Read the stalled client until nothing arrives for 1 s (or a close frame); returns the data
/// message indices and the close code, if any.
fn drain(ws: &mut Client) -> (Vec<usize>, Option<TCode>) {
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut got = Vec::new();
    loop {
        match read(ws) {
            Ok(TMessage::Text(t)) => got.push(index(&t)),
            Ok(TMessage::Close(f)) => return (got, f.map(|f| f.code)),
            Ok(_) => {}
            Err(_) => return (got, None),
        }
    }
}

fn assert_increasing(v: &[usize]) {
    assert!(
        v.windows(2).all(|w| w[0] < w[1]),
        "out of order or repeated"
    );
}

fn close_policy_closes_only_the_stalled_subscriber(
    backend: Backend,
    policy: SlowConsumer,
) -> TCode {
    let mut r = run_feed(backend, policy, PublishOptions::default());
    for g in &r.good {
        assert_eq!(
            *g,
            (0..N).collect::<Vec<_>>(),
            "a good reader missed messages"
        );
    }
    let (got, code) = drain(&mut r.stalled);
    // What reached its socket before the policy applied, in order, then the close frame.
    assert_eq!(got, (0..got.len()).collect::<Vec<_>>());
    assert!(got.len() < N);
    let s = r.server.stats();
    assert_eq!(s.slow_consumers, 1, "{s:?}");
    // Frames still queued when the policy applied were discarded with the queue.
    assert!(s.delivered >= (GOOD * N + got.len()) as u64, "{s:?}");
    code.expect("a close frame")
}

every_backend! {
    fn stalled_subscriber_is_closed_with_1008(backend) {
        let code = close_policy_closes_only_the_stalled_subscriber(backend, SlowConsumer::Close1008);
        assert_eq!(code, TCode::Policy);
    }

    fn stalled_subscriber_is_closed_with_1013_when_configured(backend) {
        let code = close_policy_closes_only_the_stalled_subscriber(backend, SlowConsumer::Close1013);
        assert_eq!(code, TCode::Again);
    }

    fn droppable_publishes_skip_the_stalled_subscriber_and_its_queue_stays_bounded(backend) {
        let mut r = run_feed(backend, SlowConsumer::Close1008, PublishOptions::droppable());
        for g in &r.good {
            assert_eq!(*g, (0..N).collect::<Vec<_>>(), "a good reader missed messages");
        }
        // The stalled client still talks: ask the server for its queue length.
        r.stalled.send(TMessage::text("probe")).unwrap();
        assert!(wait_until(common::WAIT, || r.shared.probe.load(Ordering::SeqCst) > 0));
        let buffered = r.shared.probe.load(Ordering::SeqCst) - 1;
        assert!(buffered <= QUEUE_MAX, "queue grew to {buffered} bytes");
        assert!(buffered > 0, "the stalled subscriber's queue should be full");
        let (got, code) = drain(&mut r.stalled);
        assert_eq!(code, None, "not closed");
        assert_increasing(&got);
        let s = r.server.stats();
        assert_eq!(s.slow_consumers, 0);
        assert!(s.dropped > 0, "{s:?}");
        // Every publish either reached the stalled subscriber or was dropped for it.
        assert_eq!(got.len() as u64 + s.dropped, N as u64, "{s:?}");
        assert_eq!(s.delivered, (GOOD * N + got.len()) as u64, "{s:?}");
        // It is still subscribed and gets new messages once it reads again.
        r.server.publish("feed", Message::Text(&message(N))).unwrap();
        r.stalled.get_mut().set_read_timeout(Some(common::WAIT)).unwrap();
        assert_eq!(index(&read_text(&mut r.stalled)), N);
    }

    fn conflated_publishes_leave_the_stalled_subscriber_the_latest_value(backend) {
        let mut r = run_feed(backend, SlowConsumer::Close1008, PublishOptions::conflate());
        for g in &r.good {
            assert_increasing(g);
            assert_eq!(g.last(), Some(&(N - 1)));
        }
        let (got, code) = drain(&mut r.stalled);
        assert_eq!(code, None, "not closed");
        assert_increasing(&got);
        assert_eq!(got.last(), Some(&(N - 1)), "the latest value arrives when it resumes");
        assert!(got.len() < N);
        let s = r.server.stats();
        assert!(s.conflated > 0, "{s:?}");
        assert_eq!(s.slow_consumers, 0);
        // Each publish to each subscriber was queued, replaced an unsent one, or dropped.
        let received: usize = r.good.iter().map(Vec::len).sum::<usize>() + got.len();
        assert_eq!(s.delivered, received as u64, "{s:?}");
        assert_eq!(
            received as u64 + s.conflated + s.dropped,
            ((GOOD + 1) * N) as u64,
            "{s:?}"
        );
    }

    fn on_drain_fires_once_a_stalled_subscriber_catches_up(backend) {
        let (server, shared) = start(
            builder(backend, 1)
                .send_queue_bytes_max(QUEUE_MAX)
                .send_queue_low_water_bytes(16 << 10),
        );
        let mut ws = connect_small_rcvbuf(addr(&server), "/t/d");
        wait_subscriptions(&server, 1);
        for i in 0..N {
            server
                .publish_with("d", Message::Text(&message(i)), PublishOptions::droppable())
                .unwrap();
        }
        assert!(wait_until(common::WAIT, || server.stats().dropped > 0));
        // (An asynchronous backend may report drains into the kernel buffer before this.)
        let before = shared.drained.load(Ordering::SeqCst);
        let (got, _) = drain(&mut ws);
        assert_increasing(&got);
        assert!(wait_until(common::WAIT, || shared.drained.load(Ordering::SeqCst) > before));
    }
}
