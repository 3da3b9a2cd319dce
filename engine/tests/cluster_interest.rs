//! Interest and interoperation: a server receives only the topics it has subscribers for, stops
//! receiving a topic when its last subscriber leaves (and starts again when one comes back), does
//! not get its own publications back from the broker, and delivers what other NATS clients
//! publish to a topic's subject. The broker is watched by a NATS client written against the
//! protocol text. Every test runs on both backends.
#![cfg(feature = "cluster")]

mod cluster_support;
mod common;
mod pubsub_support;

use std::time::Duration;

use cluster_support::*;
use percore::Message;
use pubsub_support::{assert_silent, connect, read, read_text};
use tungstenite::Message as TMessage;

every_backend! {
    fn a_server_receives_only_topics_it_has_subscribers_for(backend) {
        let nats = Nats::start(nats_or_skip!(), 1 << 20);
        let a = server(backend, 2, &nats.url());
        let b = server(backend, 2, &nats.url());
        let c = server(backend, 1, &nats.url());
        let mut on_a = connect(a.local_addr(), "/t/t");
        let mut on_b = connect(b.local_addr(), "/t/u");
        wait_ready(&a, 1, 1);
        wait_ready(&b, 1, 1);
        let mut watch = RawNats::connect(nats.addr());
        watch.subscribe("percore.t", 1);
        watch.subscribe("percore.u", 2);

        for i in 0..50 {
            c.publish("t", Message::Text(&format!("t{i}"))).unwrap();
            c.publish("u", Message::Text(&format!("u{i}"))).unwrap();
        }
        for i in 0..50 {
            assert_eq!(read_text(&mut on_a), format!("t{i}"));
            assert_eq!(read_text(&mut on_b), format!("u{i}"));
        }
        assert_eq!(watch.count_until(100), 100, "the broker carried both topics");
        assert_silent(&mut on_b, Duration::from_millis(100));
        // B has no subscriber of t: the broker sent it none.
        assert_eq!((cluster(&a).received, cluster(&b).received), (50, 50));

        // The last subscriber of t on A leaves: A unsubscribes from the broker.
        on_a.send(TMessage::text("unsub t")).unwrap();
        assert_eq!(read_text(&mut on_a), "ok true");
        wait_for("A's subjects to drop to 0", || cluster(&a).subjects == 0);
        for i in 0..50 {
            c.publish("t", Message::Text(&format!("again{i}"))).unwrap();
        }
        assert_eq!(watch.count_until(50), 50, "still published to the broker");
        // The broker sent them to its subscribers; had A been one, they would be on their way.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(cluster(&a).received, 50, "nothing more reached A");
        assert_silent(&mut on_a, Duration::from_millis(100));

        // A subscriber comes back: so does the traffic.
        on_a.send(TMessage::text("sub t")).unwrap();
        assert_eq!(read_text(&mut on_a), "ok true");
        wait_ready(&a, 1, 1);
        c.publish("t", Message::Text("back")).unwrap();
        assert_eq!(read_text(&mut on_a), "back");
        assert_eq!(cluster(&a).received, 51);
        let sc = cluster(&c);
        assert_eq!((sc.sent, sc.received, sc.subjects), (151, 0, 0));
    }

    fn a_server_does_not_get_its_own_publications_back(backend) {
        let nats = Nats::start(nats_or_skip!(), 1 << 20);
        let a = server(backend, 2, &nats.url());
        let b = server(backend, 1, &nats.url());
        let mut sub_a = connect(a.local_addr(), "/t/x");
        let mut sub_b = connect(b.local_addr(), "/t/x");
        wait_ready(&a, 1, 1);
        wait_ready(&b, 1, 1);
        sub_a.send(TMessage::text("pub x from-a")).unwrap();
        assert_eq!(read_text(&mut sub_a), "from-a");
        assert_eq!(read_text(&mut sub_b), "from-a");
        a.publish("x", Message::Binary(b"bin")).unwrap();
        assert_eq!(read(&mut sub_a).unwrap(), TMessage::binary(b"bin".to_vec()));
        assert_eq!(read(&mut sub_b).unwrap(), TMessage::binary(b"bin".to_vec()));
        assert_silent(&mut sub_a, Duration::from_millis(200));
        assert_silent(&mut sub_b, Duration::from_millis(100));
        let (ca, cb) = (cluster(&a), cluster(&b));
        assert_eq!((ca.sent, ca.received), (2, 0), "no echo: {ca:?}");
        assert_eq!((cb.sent, cb.received), (0, 2), "{cb:?}");
    }

    fn other_nats_clients_publish_to_a_topic_by_its_subject(backend) {
        let nats = Nats::start(nats_or_skip!(), 1 << 20);
        let a = server(backend, 2, &nats.url());
        let mut ws = connect(a.local_addr(), "/t/room.1,bin");
        wait_ready(&a, 2, 2);
        let mut svc = RawNats::connect(nats.addr());
        svc.publish("percore.room%2E1", b"hello");
        assert_eq!(read(&mut ws).unwrap(), TMessage::text("hello"));
        svc.publish_with_header("percore.bin", "Percore-Kind: binary", b"text-looking");
        assert_eq!(read(&mut ws).unwrap(), TMessage::binary(b"text-looking".to_vec()));
        svc.publish("percore.bin", b"\xff\xfe");
        assert_eq!(read(&mut ws).unwrap(), TMessage::binary(b"\xff\xfe".to_vec()));
        // Malformed percore headers and text that is not UTF-8 are not delivered.
        svc.publish_with_header("percore.bin", "Percore-Pos: zz", b"x");
        svc.publish_with_header("percore.bin", "Percore-Kind: text", b"\xff");
        svc.publish("percore.room%2E1", b"last");
        assert_eq!(read(&mut ws).unwrap(), TMessage::text("last"));
        assert_silent(&mut ws, Duration::from_millis(100));
        let c = cluster(&a);
        assert_eq!((c.received, c.discarded, c.lost), (6, 2, 0), "{c:?}");
    }
}
