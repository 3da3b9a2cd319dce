//! The cluster's limits and failures at the edges: a message past the broker's `max_payload` is
//! refused at publish time (from a handler and from a `Publisher`) and delivered nowhere, one
//! at the bound goes through; past `queue_messages_max` a publish reaches this server only and
//! the publisher is told; past `subscription_messages_max` a receiving server drops what the
//! broker sends and counts exactly that as lost; a server whose broker is not running starts,
//! serves locally and joins once the broker comes up; a bad cluster configuration fails
//! `start`. Both backends.
#![cfg(feature = "cluster")]

mod cluster_support;
mod common;
mod pubsub_support;

use std::io::ErrorKind;
use std::time::Duration;

use cluster_support::*;
use percore::{ClusterConfig, Message, PubSubError, Server, Shards};
use pubsub_support::{assert_silent, connect, read_text};
use tungstenite::Message as TMessage;

/// Bytes the cluster's headers may take on the wire (see `percore::cluster`).
const HEADER_BYTES_MAX: usize = 132;

every_backend! {
    fn a_message_past_the_brokers_max_payload_is_refused_at_publish_time(backend) {
        const MAX_PAYLOAD: usize = 2048;
        let nats = Nats::start(nats_or_skip!(), MAX_PAYLOAD);
        let a = server(backend, 2, &nats.url());
        let b = server(backend, 1, &nats.url());
        let mut sub_a = connect(a.local_addr(), "/t/big");
        let mut sub_b = connect(b.local_addr(), "/t/big");
        let mut publisher_client = connect(a.local_addr(), "/");
        wait_ready(&a, 1, 1);
        wait_ready(&b, 1, 1);

        let fits = "f".repeat(MAX_PAYLOAD - HEADER_BYTES_MAX);
        let over = "o".repeat(MAX_PAYLOAD - HEADER_BYTES_MAX + 1);
        assert_eq!(a.publish("big", Message::Text(&over)), Err(PubSubError::PayloadTooLarge));
        publisher_client.send(TMessage::text(format!("pub big {over}"))).unwrap();
        assert_eq!(
            read_text(&mut publisher_client),
            "err message larger than the broker's max_payload"
        );
        a.publish("big", Message::Text(&fits)).unwrap();
        assert_eq!(read_text(&mut sub_a), fits, "local");
        assert_eq!(read_text(&mut sub_b), fits, "through the broker, at its limit");
        assert_silent(&mut sub_a, Duration::from_millis(100));
        assert_silent(&mut sub_b, Duration::from_millis(100));
        let st = a.stats();
        assert_eq!((st.published, st.delivered), (1, 1), "refused publishes went nowhere");
        assert_eq!((st.cluster.sent, st.cluster.unsent), (1, 0));
    }

    fn past_queue_messages_max_a_publish_stays_local_and_the_publisher_is_told(backend) {
        const N: usize = 3000;
        let nats = Nats::start(nats_or_skip!(), 1 << 20);
        // One slot between the shards and the bridge: a publisher on a tight loop outruns a
        // bridge that takes one publish per wake-up and writes it to the broker.
        let a = server_with(
            backend,
            1,
            ClusterConfig::new(nats.url()).queue_messages_max(1),
        );
        let b = server(backend, 1, &nats.url());
        let local = Reader::spawn(connect(a.local_addr(), "/t/a"));
        let remote = Reader::spawn(connect(b.local_addr(), "/t/a"));
        wait_ready(&a, 1, 1);
        wait_ready(&b, 1, 1);
        let publisher = a.publisher();
        let mut refused = Vec::new();
        for j in (0..N).map(|j| 2 * j) {
            match publisher.publish("a", Message::Text(&format!("0:{j}"))) {
                Ok(()) => {}
                Err(PubSubError::ClusterQueueFull) => refused.push(j),
                Err(e) => panic!("publish {j}: {e}"),
            }
        }
        // A last one once the bridge has caught up: it goes everywhere.
        wait_for("the bridge to drain", || {
            let c = cluster(&a);
            c.sent + c.refused == N as u64
        });
        publisher.publish("a", Message::Text(&format!("0:{}", 2 * N))).unwrap();
        wait_for("the last message on both servers", || {
            local.has(0, 2 * N) && remote.has(0, 2 * N)
        });
        let (local, remote) = (local.finish(), remote.finish());
        let c = cluster(&a);
        assert!(!refused.is_empty(), "the queue was never full: {c:?}");
        assert_eq!(c.refused, refused.len() as u64, "every refusal told and counted: {c:?}");
        assert_eq!((c.sent, c.unsent), ((N + 1 - refused.len()) as u64, 0), "{c:?}");
        let all: Vec<usize> = (0..=N).map(|j| 2 * j).collect();
        assert_eq!(streams(&local, 1, &["a"])[0][0], all, "local subscribers got every one");
        let through: Vec<usize> = all.iter().copied().filter(|j| !refused.contains(j)).collect();
        assert_eq!(streams(&remote, 1, &["a"])[0][0], through, "the other server: all but those");
        let cb = cluster(&b);
        assert_eq!((cb.received, cb.lost), (through.len() as u64, 0), "{cb:?}");
    }

    fn past_subscription_messages_max_a_burst_is_dropped_and_counted_lost(backend) {
        const N: u64 = 2000;
        let nats = Nats::start(nats_or_skip!(), 1 << 20);
        let a = server_with(
            backend,
            1,
            ClusterConfig::new(nats.url()).subscription_messages_max(4),
        );
        let mut ws = connect(a.local_addr(), "/t/burst");
        wait_ready(&a, 1, 1);
        // Another server's stream for the topic, N messages written in one go: the broker
        // passes them on in large chunks, and the client reads each chunk through before the
        // topic's receive task runs, so all but 4 of a chunk find its queue full.
        let mut svc = RawNats::connect(nats.addr());
        let mut burst = Vec::new();
        for seq in 1..=N {
            let h = format!("NATS/1.0\r\nPercore-Pos: 00000000000000aa 1 {seq}\r\n\r\n");
            let payload = seq.to_string();
            burst.extend_from_slice(
                format!("HPUB percore.burst {} {}\r\n", h.len(), h.len() + payload.len())
                    .as_bytes(),
            );
            burst.extend_from_slice(h.as_bytes());
            burst.extend_from_slice(payload.as_bytes());
            burst.extend_from_slice(b"\r\n");
        }
        svc.send(&burst);
        svc.ping();
        wait_for("the burst received or dropped", || {
            let st = a.stats();
            st.cluster.received > 0 && st.cluster.received == st.delivered
        });
        std::thread::sleep(Duration::from_millis(200));
        // One more, after the burst: its gap covers every drop at the burst's end.
        let last = N + 1;
        svc.publish_with_header(
            "percore.burst",
            &format!("Percore-Pos: 00000000000000aa 1 {last}"),
            last.to_string().as_bytes(),
        );
        let mut got = Vec::new();
        loop {
            let seq: u64 = read_text(&mut ws).parse().unwrap();
            assert!(got.last().is_none_or(|&l| seq > l), "{seq} after {got:?}");
            got.push(seq);
            if seq == last {
                break;
            }
        }
        let c = cluster(&a);
        let missed = last - got.len() as u64 - (got[0] - 1);
        assert!(missed > 0, "the client's queue never overflowed: {c:?}");
        assert_eq!(c.lost, missed, "lost is exactly what the subscriber missed: {c:?}");
        assert_eq!((c.received, c.discarded), (got.len() as u64, 0), "{c:?}");
    }

    fn a_server_serves_locally_without_its_broker_and_joins_when_it_comes_up(backend) {
        let bin = nats_or_skip!();
        let port = free_port();
        let url = format!("nats://127.0.0.1:{port}");
        let a = server(backend, 2, &url);
        let mut sub = connect(a.local_addr(), "/t/x");
        pubsub_support::wait_subscriptions(&a, 1);
        for i in 0..10 {
            a.publish("x", Message::Text(&format!("{i}"))).unwrap();
            assert_eq!(read_text(&mut sub), format!("{i}"));
        }
        wait_for("the publishes counted unsent", || cluster(&a).unsent == 10);
        assert_eq!(cluster(&a).connected, 0);

        let nats = Nats::start_on(bin, port, 1 << 20);
        wait_ready(&a, 1, 1);
        let b = server(backend, 1, &nats.url());
        let mut remote = connect(b.local_addr(), "/t/x");
        wait_ready(&b, 1, 1);
        a.publish("x", Message::Text("joined")).unwrap();
        assert_eq!(read_text(&mut sub), "joined");
        assert_eq!(read_text(&mut remote), "joined");
        let c = cluster(&a);
        assert_eq!((c.sent, c.unsent, c.reconnects), (1, 10, 0), "{c:?}");
    }

    fn a_bad_cluster_configuration_fails_start(backend) {
        let start = |c: ClusterConfig, topic_max: usize| {
            Server::builder()
                .bind("127.0.0.1:0")
                .shards(Shards::Count(1))
                .pin(false)
                .backend(backend)
                .topic_name_bytes_max(topic_max)
                .cluster(c)
                .start(|_| App)
        };
        for (c, topic_max, why) in [
            (ClusterConfig::new("tls://127.0.0.1:4222"), 256, "nats://"),
            (ClusterConfig::new(""), 256, "no NATS URL"),
            (ClusterConfig::new("nats://127.0.0.1:1").subject_prefix("a.>"), 256, "prefix"),
            (ClusterConfig::new("nats://127.0.0.1:1"), 4096, "topic_name_bytes_max"),
        ] {
            match start(c, topic_max) {
                Ok(_) => panic!("started with a bad configuration ({why})"),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::InvalidInput);
                    assert!(e.to_string().contains(why), "{e}");
                }
            }
        }
    }
}
