//! What one publish costs the publishing thread, with and without the cluster
//! (`scripts/publish-cost.sh` runs it under callgrind and counts only the instructions inside
//! `Publisher::publish`).
//!
//! ```text
//! publish_cost N [NATS_URL]
//! ```
//!
//! Starts a one-shard epoll server with one subscriber of topic `t` (a raw client on a thread
//! of its own, reading and discarding), publishes `N` 20-byte messages to `t` from this thread
//! through a [`Publisher`], and waits until the server has delivered them. With `NATS_URL`
//! (engine feature `cluster`) the server joins that cluster: each publish is also handed to
//! the bridge (the broker need not run: the bridge then counts the publishes unsent, and the
//! publishing thread does the same work either way).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use percore::{Backend, Conn, Handler, Message, Publisher, Server, Shards};

struct Subscriber;

impl Handler for Subscriber {
    type State = ();
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        let _ = conn.subscribe("t");
    }
    fn on_message(&mut self, _conn: &mut Conn<'_, ()>, _msg: Message<'_>) {}
}

/// Not inlined, so that callgrind can count exactly this call.
#[inline(never)]
fn publish(p: &Publisher, payload: &[u8]) {
    let _ = p.publish("t", Message::Binary(payload));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .expect("usage: publish_cost N [NATS_URL]");
    let builder = Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(1))
        .pin(false)
        .backend(Backend::Epoll);
    #[cfg(feature = "cluster")]
    let builder = match args.get(1) {
        Some(url) => builder.cluster(percore::ClusterConfig::new(url.as_str())),
        None => builder,
    };
    #[cfg(not(feature = "cluster"))]
    assert!(args.len() < 2, "built without the cluster feature");
    let server = builder.start(|_| Subscriber).expect("server starts");
    let addr = server.local_addr();

    let mut s = TcpStream::connect(addr).expect("connect");
    let req = percore::proto::client_request(
        &addr.to_string(),
        "/",
        "dGhlIHNhbXBsZSBub25jZQ==",
        &[],
        &[],
    );
    s.write_all(&req).expect("request");
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(s.read(&mut buf), Ok(k) if k > 0) {}
    });
    while server.stats().subscriptions == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let p = server.publisher();
    let payload = [7u8; 20];
    for _ in 0..n {
        publish(&p, &payload);
    }
    // Until the shard has delivered them all and, in a cluster, the bridge has handled them all.
    let clustered = args.len() > 1;
    loop {
        let st = server.stats();
        let c = st.cluster;
        let bridged = c.sent + c.unsent + c.refused;
        if st.delivered >= n as u64 && (!clustered || bridged >= n as u64) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let st = server.stats();
    println!(
        "published={} delivered={} cluster_sent={} cluster_unsent={} cluster_refused={}",
        st.published, st.delivered, st.cluster.sent, st.cluster.unsent, st.cluster.refused
    );
    server.shutdown(Duration::ZERO);
    let _ = reader.join();
}
