//! Subscriptions end with their connection, on every shard, whatever way it ends (close
//! handshake, dropped TCP connection, graceful shutdown): the topic tables do not leak.

mod common;
mod pubsub_support;

use std::time::{Duration, Instant};

use percore::Message;
use pubsub_support::*;
use tungstenite::Message as TMessage;

const CYCLES: usize = 10_000;
/// Sockets open at once (RLIMIT_NOFILE is 20 000; each connection is two descriptors here).
const BATCH: usize = 200;

every_backend! {
    fn no_subscription_survives_10000_connect_subscribe_disconnect_cycles(backend) {
        let (server, _) = start(builder(backend, 2));
        let addr = addr(&server);
        let started = Instant::now();
        for batch in 0..CYCLES / BATCH {
            let mut clients: Vec<Client> = (0..BATCH)
                .map(|i| connect(addr, &format!("/t/room{},all", (batch * BATCH + i) % 7)))
                .collect();
            if batch % 10 == 0 {
                // Every client is subscribed once its handshake is answered.
                let s = server.stats();
                assert!(s.subscriptions >= 2 * BATCH as u64, "{s:?}");
            }
            // Half leave with a close handshake, half just drop the TCP connection.
            let clean: Vec<Client> = clients.drain(..BATCH / 2).collect();
            drop(clients);
            for mut ws in clean {
                ws.close(None).unwrap();
                while read(&mut ws).is_ok() {}
            }
        }
        assert!(wait_until(Duration::from_secs(20), || server.stats().connections_open == 0));
        let s = server.stats();
        assert_eq!((s.subscriptions, s.topics), (0, 0), "{s:?}");
        assert_eq!(s.upgraded, CYCLES as u64);
        eprintln!("{CYCLES} cycles in {:?}", started.elapsed());
        // The tables still work afterwards.
        let mut ws = connect(addr, "/t/all");
        wait_subscriptions(&server, 1);
        server.publish("all", Message::Text("after")).unwrap();
        assert_eq!(read_text(&mut ws), "after");
    }

    fn graceful_shutdown_ends_every_subscription_on_every_shard(backend) {
        let (server, shared) = start(builder(backend, 2));
        let addr = addr(&server);
        let mut clients: Vec<Client> =
            (0..20).map(|i| connect(addr, &format!("/t/x{},y", i % 3))).collect();
        let s = wait_subscriptions(&server, 40);
        assert_eq!(s.topics, 4);
        let shards: std::collections::HashSet<usize> =
            shared.opened.lock().unwrap().iter().map(|id| id.shard()).collect();
        assert_eq!(shards.len(), 2);
        // Half the clients answer the close handshake, the others never read.
        let answering: Vec<Client> = clients.drain(..10).collect();
        let readers: Vec<_> = answering
            .into_iter()
            .map(|mut ws| {
                std::thread::spawn(move || match read(&mut ws) {
                    Ok(TMessage::Close(_)) => {}
                    other => panic!("expected close 1001, got {other:?}"),
                })
            })
            .collect();
        server.shutdown(Duration::from_millis(500));
        for r in readers {
            r.join().unwrap();
        }
        let s = server.stats();
        assert_eq!((s.subscriptions, s.topics, s.connections_open), (0, 0, 0), "{s:?}");
        drop(clients);
    }
}
