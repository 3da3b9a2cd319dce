//! Publish/subscribe delivery over real sockets: fan-out across shards, ordering, publishes and
//! sends from other threads, topic limits, mailbox limits. Every test runs on both backends.

mod common;
mod pubsub_support;

use std::collections::HashSet;
use std::time::Duration;

use percore::{Message, PubSubError};
use pubsub_support::*;
use tungstenite::Message as TMessage;

/// Check that `got` holds `h0..h{n}` and `c0..c{n}` exactly, each family in order.
fn check_two_publishers(got: &[String], n: usize) {
    let (mut h, mut c) = (0, 0);
    for m in got {
        if let Some(i) = m.strip_prefix('h') {
            assert_eq!(
                i.parse::<usize>().unwrap(),
                h,
                "handle publishes out of order"
            );
            h += 1;
        } else if let Some(i) = m.strip_prefix('c') {
            assert_eq!(
                i.parse::<usize>().unwrap(),
                c,
                "client publishes out of order"
            );
            c += 1;
        } else {
            panic!("unexpected message {m:?}");
        }
    }
    assert_eq!((h, c), (n, n));
}

every_backend! {
    fn every_subscriber_on_two_shards_gets_every_publish_once_in_order(backend) {
        const CLIENTS: usize = 16;
        const N: usize = 300;
        let (server, shared) = start(builder(backend, 2));
        let addr = addr(&server);
        let mut clients: Vec<Client> = (0..CLIENTS).map(|_| connect(addr, "/t/news")).collect();
        assert_eq!(wait_subscriptions(&server, CLIENTS as u64).topics, 1);
        let shards: HashSet<usize> =
            shared.opened.lock().unwrap().iter().map(|id| id.shard()).collect();
        assert_eq!(shards.len(), 2, "connections spread over both shards");

        // Publisher 1: a plain thread with a Publisher. Publisher 2: client 0's handler.
        let publisher = server.publisher();
        let t = std::thread::spawn(move || {
            for i in 0..N {
                publisher.publish("news", Message::Text(&format!("h{i}"))).unwrap();
            }
        });
        let mut first = clients.remove(0);
        for i in 0..N {
            first.send(TMessage::text(format!("pub news c{i}"))).unwrap();
        }
        let readers: Vec<_> = clients
            .into_iter()
            .chain([first])
            .map(|mut ws| {
                std::thread::spawn(move || {
                    let got: Vec<String> = (0..2 * N).map(|_| read_text(&mut ws)).collect();
                    check_two_publishers(&got, N);
                    assert_silent(&mut ws, Duration::from_millis(200));
                })
            })
            .collect();
        t.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
        let s = server.stats();
        assert_eq!(s.published, 2 * N as u64);
        assert_eq!(s.delivered, (2 * N * CLIENTS) as u64);
        assert_eq!((s.dropped, s.conflated, s.slow_consumers), (0, 0, 0));
    }

    fn a_publish_reaches_only_the_subscribers_of_its_topic(backend) {
        let (server, _) = start(builder(backend, 2));
        let addr = addr(&server);
        let mut a = connect(addr, "/t/a");
        let mut ab = connect(addr, "/t/a,b");
        let mut none = connect(addr, "/");
        wait_subscriptions(&server, 3);
        none.send(TMessage::text("pub b to-b")).unwrap();
        none.send(TMessage::text("pub a to-a")).unwrap();
        assert_eq!(read_text(&mut ab), "to-b");
        assert_eq!(read_text(&mut ab), "to-a");
        assert_eq!(read_text(&mut a), "to-a");
        assert_silent(&mut a, Duration::from_millis(100));
        assert_silent(&mut none, Duration::from_millis(100));
        assert_eq!(server.stats().topics, 2);
    }

    fn unsubscribe_stops_delivery_and_resubscribe_resumes_it(backend) {
        let (server, _) = start(builder(backend, 1));
        let mut ws = connect(addr(&server), "/t/x");
        wait_subscriptions(&server, 1);
        ws.send(TMessage::text("sub x")).unwrap();
        assert_eq!(read_text(&mut ws), "ok false", "already subscribed");
        ws.send(TMessage::text("unsub x")).unwrap();
        assert_eq!(read_text(&mut ws), "ok true");
        ws.send(TMessage::text("unsub x")).unwrap();
        assert_eq!(read_text(&mut ws), "ok false");
        let s = server.stats();
        assert_eq!((s.subscriptions, s.topics), (0, 0));
        server.publish("x", Message::Text("missed")).unwrap();
        ws.send(TMessage::text("sub x")).unwrap();
        assert_eq!(read_text(&mut ws), "ok true");
        server.publish("x", Message::Binary(b"seen")).unwrap();
        assert_eq!(read(&mut ws).unwrap(), TMessage::binary(b"seen".to_vec()));
    }

    fn send_from_another_thread_reaches_the_connection_by_id(backend) {
        let (server, shared) = start(builder(backend, 2));
        let addr = addr(&server);
        let mut clients: Vec<Client> = (0..4).map(|_| connect(addr, "/")).collect();
        assert!(wait_until(common::WAIT, || shared.opened.lock().unwrap().len() == 4));
        let ids = shared.opened.lock().unwrap().clone();
        let publisher = server.publisher();
        std::thread::spawn(move || {
            for (i, id) in ids.iter().enumerate() {
                publisher.send(*id, Message::Text(&format!("to {i}"))).unwrap();
            }
        })
        .join()
        .unwrap();
        // Open order and connect order may differ: every client gets exactly one, its own.
        let mut got: Vec<String> = clients.iter_mut().map(read_text).collect();
        got.sort();
        assert_eq!(got, ["to 0", "to 1", "to 2", "to 3"]);
        for ws in &mut clients {
            assert_silent(ws, Duration::from_millis(100));
        }
    }

    fn send_to_a_closed_connection_is_ignored(backend) {
        let (server, shared) = start(builder(backend, 1));
        let mut ws = connect(addr(&server), "/");
        assert!(wait_until(common::WAIT, || shared.opened.lock().unwrap().len() == 1));
        let id = shared.opened.lock().unwrap()[0];
        ws.close(None).unwrap();
        while read(&mut ws).is_ok() {}
        assert!(wait_until(common::WAIT, || server.stats().connections_open == 0));
        // The slot is reused by the next connection, with a new generation.
        let mut next = connect(addr(&server), "/");
        assert!(wait_until(common::WAIT, || shared.opened.lock().unwrap().len() == 2));
        server.send(id, Message::Text("stale")).unwrap();
        let id2 = shared.opened.lock().unwrap()[1];
        server.send(id2, Message::Text("fresh")).unwrap();
        assert_eq!(read_text(&mut next), "fresh");
    }

    fn topic_name_longer_than_topic_name_bytes_max_is_refused(backend) {
        let (server, _) = start(builder(backend, 1).topic_name_bytes_max(8));
        let mut ws = connect(addr(&server), "/t/12345678");
        wait_subscriptions(&server, 1);
        ws.send(TMessage::text("sub 123456789")).unwrap();
        assert_eq!(read_text(&mut ws), "err topic name too long");
        assert_eq!(
            server.publish("123456789", Message::Text("x")),
            Err(PubSubError::TopicTooLong)
        );
        server.publish("12345678", Message::Text("fits")).unwrap();
        assert_eq!(read_text(&mut ws), "fits");
    }

    fn publish_past_mailbox_messages_max_is_refused_while_the_shard_is_busy(backend) {
        let (server, shared) = start(builder(backend, 1).mailbox_messages_max(4));
        let mut ws = connect(addr(&server), "/t/m");
        wait_subscriptions(&server, 1);
        // Keep the shard busy in a callback so its mailbox is not read.
        ws.send(TMessage::text("block")).unwrap();
        assert!(wait_until(common::WAIT, || server.stats().messages_received == 1));
        for i in 0..4 {
            server.publish("m", Message::Text(&format!("{i}"))).unwrap();
        }
        assert_eq!(server.publish("m", Message::Text("4")), Err(PubSubError::MailboxFull));
        {
            let (m, c) = &shared.gate;
            *m.lock().unwrap() = true;
            c.notify_all();
        }
        let got: Vec<String> = (0..4).map(|_| read_text(&mut ws)).collect();
        assert_eq!(got, ["0", "1", "2", "3"]);
        assert_silent(&mut ws, Duration::from_millis(100));
        assert_eq!(server.stats().dropped, 1);
        server.publish("m", Message::Text("again")).unwrap();
        assert_eq!(read_text(&mut ws), "again");
    }

    fn publish_after_shutdown_is_refused(backend) {
        let (server, _) = start(builder(backend, 1));
        let publisher = server.publisher();
        server.shutdown(Duration::from_secs(1));
        assert_eq!(publisher.publish("t", Message::Text("x")), Err(PubSubError::Stopped));
    }
}
