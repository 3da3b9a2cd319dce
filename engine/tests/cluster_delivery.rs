//! Topics across three servers through a NATS broker (a `nats-server` of the test's own):
//! two publishers × 1,000 messages on two topics, 30 subscribers spread over the servers, and
//! every subscriber gets every message of its topics exactly once, in each publisher's order.
//! Runs with every server on epoll, every server on io_uring, and mixed.
#![cfg(feature = "cluster")]

mod cluster_support;
mod common;
mod pubsub_support;

use std::time::Duration;

use cluster_support::*;
use percore::{Backend, Message};
use tungstenite::Message as TMessage;

const SUBSCRIBERS: usize = 30;
/// Messages per publisher (even numbers to topic `a`, odd ones to `b`).
const N: usize = 1000;

/// Subscriber `i`'s topics: `a`, `b`, or both.
fn topics_of(i: usize) -> &'static [&'static str] {
    match i % 3 {
        0 => &["a"],
        1 => &["b"],
        _ => &["a", "b"],
    }
}

fn three_servers_two_publishers(backends: [Backend; 3]) {
    let nats = Nats::start(nats_or_skip!(), 1 << 20);
    let servers: Vec<_> = backends
        .iter()
        .map(|&b| server(b, 2, &nats.url()))
        .collect();
    // Subscribers 0-9 on server 0, 10-19 on server 1, 20-29 on server 2.
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

    // Publisher 0: a client of server 0 (its handler publishes). Publisher 1: a Publisher
    // handle of server 1 on a thread.
    let mut client = pubsub_support::connect(servers[0].local_addr(), "/");
    let publisher = servers[1].publisher();
    let t = std::thread::spawn(move || {
        for j in 0..N {
            publisher
                .publish(topic_of(j), Message::Text(&format!("1:{j}")))
                .unwrap();
        }
    });
    for j in 0..N {
        client
            .send(TMessage::text(format!("pub {} 0:{j}", topic_of(j))))
            .unwrap();
    }
    t.join().unwrap();

    let want = |i: usize| topics_of(i).len() * N; // both publishers, half of each per topic
    wait_for("every subscriber's messages", || {
        readers
            .iter()
            .enumerate()
            .all(|(i, r)| r.count() >= want(i))
    });
    readers.iter().for_each(Reader::stop);
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.finish();
        assert_eq!(
            got.len(),
            want(i),
            "subscriber {i}: nothing more, nothing twice"
        );
        let topics = topics_of(i);
        for (p, per_topic) in streams(&got, 2, topics).iter().enumerate() {
            for (t, js) in per_topic.iter().enumerate() {
                let all: Vec<usize> = (0..N).filter(|&j| topic_of(j) == topics[t]).collect();
                assert_eq!(
                    js, &all,
                    "subscriber {i}, publisher {p}, topic {}",
                    topics[t]
                );
            }
        }
    }
    client.send(TMessage::text("unsub none")).unwrap();
    assert_eq!(pubsub_support::read_text(&mut client), "ok false");
    drop(client);

    for (k, s) in servers.iter().enumerate() {
        let st = s.stats();
        let c = st.cluster;
        // Server 0 hears publisher 1, server 1 publisher 0, server 2 both.
        let (sent, received) = match k {
            0 | 1 => (N as u64, N as u64),
            _ => (0, 2 * N as u64),
        };
        assert_eq!((c.sent, c.received), (sent, received), "server {k}: {c:?}");
        assert_eq!(
            (c.lost, c.unsent, c.refused, c.discarded),
            (0, 0, 0, 0),
            "server {k}: {c:?}"
        );
        let subs: u64 = (k * 10..k * 10 + 10).map(|i| want(i) as u64).sum();
        assert_eq!(st.delivered, subs, "server {k} delivered");
        assert_eq!((st.dropped, st.slow_consumers), (0, 0), "server {k}");
    }
    drop(nats);
    for s in servers {
        s.shutdown(Duration::from_secs(1));
    }
}

#[test]
fn every_subscriber_gets_every_message_once_in_order_all_epoll() {
    three_servers_two_publishers([Backend::Epoll; 3]);
}

#[test]
fn every_subscriber_gets_every_message_once_in_order_all_io_uring() {
    if common::uring_available() {
        three_servers_two_publishers([Backend::IoUring; 3]);
    } else {
        eprintln!("SKIP: io_uring is not available here");
    }
}

#[test]
fn every_subscriber_gets_every_message_once_in_order_mixed_backends() {
    if common::uring_available() {
        three_servers_two_publishers([Backend::IoUring, Backend::Epoll, Backend::IoUring]);
    } else {
        eprintln!("SKIP: io_uring is not available here");
    }
}
