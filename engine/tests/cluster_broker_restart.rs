//! The broker killed and restarted (same port) while two publishers publish to three servers:
//! no server fails, subscribers on each publisher's own server get all of its messages, the
//! others miss what was published while the broker was away, every message they get comes once
//! and in order, and each server's `lost` counter is exactly what its subscribers missed.
//! Runs with every server on epoll, every server on io_uring, and mixed.
#![cfg(feature = "cluster")]

mod cluster_support;
mod common;
mod pubsub_support;

use std::time::Duration;

use cluster_support::*;
use percore::{Backend, Message, ServerHandle};
use tungstenite::Message as TMessage;

const SUBSCRIBERS: usize = 30;
/// Messages per publisher: 0..300 before the broker dies, 300..600 while it is away, 600..1000
/// after it is back.
const N: usize = 1000;
const DOWN: usize = 300;
const UP: usize = 600;

fn topics_of(i: usize) -> &'static [&'static str] {
    match i % 3 {
        0 => &["a"],
        1 => &["b"],
        _ => &["a", "b"],
    }
}

/// Publisher 0 (a client of server 0) and publisher 1 (a Publisher of server 1) publish
/// messages `range`; returns once both servers have taken them.
fn publish(
    servers: &[ServerHandle],
    client: &mut pubsub_support::Client,
    range: std::ops::Range<usize>,
) {
    let publisher = servers[1].publisher();
    let r = range.clone();
    let t = std::thread::spawn(move || {
        for j in r {
            publisher
                .publish(topic_of(j), Message::Text(&format!("1:{j}")))
                .unwrap();
        }
    });
    for j in range.clone() {
        client
            .send(TMessage::text(format!("pub {} 0:{j}", topic_of(j))))
            .unwrap();
    }
    t.join().unwrap();
    let end = range.end as u64;
    wait_for("the publishes taken", || {
        servers[..2].iter().all(|s| s.stats().published == end)
    });
}

/// Wait until both publishing bridges have handled every publish (sent or counted unsent).
fn wait_bridges(servers: &[ServerHandle], end: usize) {
    wait_for("the bridges to drain", || {
        servers[..2].iter().all(|s| {
            let c = cluster(s);
            c.sent + c.unsent == end as u64
        })
    });
}

#[test]
fn broker_restart_loses_only_what_is_counted_all_epoll() {
    broker_restart([Backend::Epoll; 3]);
}

#[test]
fn broker_restart_loses_only_what_is_counted_all_io_uring() {
    if common::uring_available() {
        broker_restart([Backend::IoUring; 3]);
    } else {
        eprintln!("SKIP: io_uring is not available here");
    }
}

#[test]
fn broker_restart_loses_only_what_is_counted_mixed_backends() {
    if common::uring_available() {
        broker_restart([Backend::IoUring, Backend::Epoll, Backend::IoUring]);
    } else {
        eprintln!("SKIP: io_uring is not available here");
    }
}

/// Kill the broker after `DOWN` messages per publisher and restart it after `UP`: no server
/// fails, local delivery never stops, and each server's `lost` is what its subscribers missed.
fn broker_restart(backends: [Backend; 3]) {
    let mut nats = Nats::start(nats_or_skip!(), 1 << 20);
    let servers: Vec<_> = backends
        .iter()
        .map(|&b| server(b, 2, &nats.url()))
        .collect();
    let readers: Vec<Reader> = (0..SUBSCRIBERS)
        .map(|i| {
            let path = format!("/t/{}", topics_of(i).join(","));
            Reader::spawn(pubsub_support::connect(servers[i / 10].local_addr(), &path))
        })
        .collect();
    for (k, s) in servers.iter().enumerate() {
        let subs: usize = (k * 10..k * 10 + 10).map(|i| topics_of(i).len()).sum();
        wait_ready(s, subs as u64, 2);
    }
    let mut client = pubsub_support::connect(servers[0].local_addr(), "/");

    publish(&servers, &mut client, 0..DOWN);
    wait_bridges(&servers, DOWN);
    // Each server has heard every stream it subscribes to before the broker dies: a receiver
    // counts the gaps after the first message it hears from a stream, not before it (a message
    // handed to the client but still unwritten when the broker dies is lost before that).
    wait_for("the first messages received everywhere", || {
        let r: Vec<u64> = servers.iter().map(|s| cluster(s).received).collect();
        r == [DOWN as u64, DOWN as u64, 2 * DOWN as u64]
    });
    nats.kill();
    wait_for("every bridge to see the broker gone", || {
        servers.iter().all(|s| cluster(s).connected == 0)
    });
    publish(&servers, &mut client, DOWN..UP);
    wait_bridges(&servers, UP);
    // Local delivery went on: server 0's subscribers have publisher 0's last messages of the
    // outage, server 1's publisher 1's.
    wait_for("local delivery during the outage", || {
        (0..2).all(|k| {
            (k * 10..k * 10 + 10).all(|i| {
                topics_of(i).iter().all(|&t| {
                    let last = (DOWN..UP).rev().find(|&j| topic_of(j) == t).unwrap();
                    readers[i].has(k, last)
                })
            })
        })
    });
    nats.restart();
    for s in &servers {
        wait_for("every bridge back, its subscriptions confirmed", || {
            let c = cluster(s);
            c.connected == 1 && c.subjects == 2 && c.reconnects == 1
        });
    }
    publish(&servers, &mut client, UP..N);
    wait_bridges(&servers, N);

    // The last message of every stream is sent after every server is back: once each
    // subscriber has them, everything that will arrive has arrived.
    wait_for("the last messages", || {
        readers.iter().enumerate().all(|(i, r)| {
            topics_of(i).iter().all(|&t| {
                let last = (0..N).rev().find(|&j| topic_of(j) == t).unwrap();
                (0..2).all(|p| r.has(p, last))
            })
        })
    });
    std::thread::sleep(Duration::from_millis(200));
    readers.iter().for_each(Reader::stop);
    let got: Vec<Vec<(usize, usize)>> = readers.into_iter().map(Reader::finish).collect();

    for (k, s) in servers.iter().enumerate() {
        // What this server's subscribers missed, per publisher and topic: the same for every
        // subscriber of the topic here (one delivery path), counted once.
        let mut missed_here = [[None::<usize>; 2]; 2];
        for (i, got) in got.iter().enumerate().skip(k * 10).take(10) {
            let topics = topics_of(i);
            for (p, per_topic) in streams(got, 2, topics).iter().enumerate() {
                for (t, js) in per_topic.iter().enumerate() {
                    let all = (0..N).filter(|&j| topic_of(j) == topics[t]).count();
                    assert!(js.len() <= all);
                    let expected_last = (0..N).rev().find(|&j| topic_of(j) == topics[t]);
                    assert_eq!(js.last().copied(), expected_last, "subscriber {i} last");
                    let missed = all - js.len();
                    if p == k {
                        assert_eq!(missed, 0, "server {k} subscriber {i}: local delivery");
                    }
                    let slot = &mut missed_here[p][usize::from(topics[t] == "b")];
                    match *slot {
                        None => *slot = Some(missed),
                        Some(m) => assert_eq!(m, missed, "same loss for every subscriber here"),
                    }
                }
            }
        }
        let missed: usize = missed_here.iter().flatten().flatten().sum();
        let c = cluster(s);
        assert_eq!(
            c.lost, missed as u64,
            "server {k}: lost counter vs. missed: {c:?}"
        );
        assert_eq!((c.discarded, c.refused), (0, 0), "server {k}: {c:?}");
        if k < 2 {
            // Its publisher's outage messages never left.
            assert_eq!(c.unsent, (UP - DOWN) as u64, "server {k}: {c:?}");
            assert!(
                c.lost >= (UP - DOWN) as u64,
                "server {k}: the outage was missed: {c:?}"
            );
        } else {
            assert!(c.lost >= 2 * (UP - DOWN) as u64, "server {k}: {c:?}");
        }
    }

    // Every server still serves, locally and across the cluster.
    let mut late = pubsub_support::connect(servers[2].local_addr(), "/t/late");
    wait_ready(&servers[2], 1, 1); // the readers above have left
                                   // One subscription and one subject can still be the old topic's (its unsubscription not
                                   // yet made) with the new one not yet sent: publish until the first copy arrives.
    late.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        servers[0].publish("late", Message::Text("after")).unwrap();
        match pubsub_support::read(&mut late) {
            Ok(TMessage::Text(t)) => {
                assert_eq!(t.as_str(), "after");
                break;
            }
            Ok(TMessage::Ping(_) | TMessage::Pong(_)) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < until => {}
            r => panic!("late subscriber: {r:?}"),
        }
    }
    drop((late, client));
    drop(nats);
    for s in servers {
        s.shutdown(Duration::from_millis(200));
    }
}
