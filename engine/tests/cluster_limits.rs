//! The cluster's limits and failures at the edges: a message past the broker's `max_payload` is
//! refused at publish time (from a handler and from a `Publisher`) and delivered nowhere, one
//! at the bound goes through; a server whose broker is not running starts, serves locally and
//! joins once the broker comes up; a bad cluster configuration fails `start`. Both backends.
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
