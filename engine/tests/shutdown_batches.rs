//! `ServerBuilder::shutdown_close_batch`: a graceful shutdown begins its close handshakes at most
//! that many per shard and loop turn, and only as far as the close frames begun before have
//! been written out. Every connection still gets 1001; the shutdown deadline ends the ones
//! whose close never began.

mod common;

use common::handlers::Event;
use common::raw::{Ending, RawClient};
use percore::{ServerHandle, Shards, Stats};
use std::sync::mpsc;
use std::time::Duration;

/// Shut `handle` down with `grace` on another thread; the server's counters once it returned
/// (`None` if it did not return within `grace` plus a wide margin).
fn shutdown_then_stats(handle: ServerHandle, grace: Duration) -> mpsc::Receiver<Stats> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        handle.shutdown(grace);
        let _ = tx.send(handle.stats());
    });
    rx
}

fn stats_after(rx: &mpsc::Receiver<Stats>, grace: Duration) -> Stats {
    rx.recv_timeout(grace + common::WAIT)
        .expect("shutdown did not return")
}

/// Connect `n` clients, each upgraded and echoing.
fn clients(server: &common::TestServer, n: usize) -> Vec<RawClient> {
    (0..n)
        .map(|i| {
            let mut c = RawClient::connect(server.addr).unwrap();
            c.echo_text(&format!("client {i}"));
            c
        })
        .collect()
}

/// Shut `server` down with a 10 s grace while every client gets its 1001, answers it and sees
/// the end of the stream; the server's counters once the shutdown returned.
fn shut_down_answering_1001(server: &mut common::TestServer, cs: &mut [RawClient]) -> Stats {
    let grace = Duration::from_secs(10);
    let stats = shutdown_then_stats(server.take_handle(), grace);
    for c in cs {
        assert_eq!(c.read_until_close(), Ending::Close(Some(1001)));
        let _ = c.send_close(1001, "");
        c.expect_eof();
    }
    stats_after(&stats, grace)
}

every_backend! {
    fn twenty_connections_get_1001_in_batches_of_three(backend) {
        let mut server = common::start_with(backend, |b| b.shutdown_close_batch(3));
        let mut cs = clients(&server, 20);
        let s = shut_down_answering_1001(&mut server, &mut cs);
        assert_eq!(s.shutdown_closes, 20, "closes begun");
        // 3 a turn: however the 20 are spread over the shards, at least ceil(20 / 3) turns.
        assert!(s.shutdown_close_turns >= 7, "closes began in {} turns", s.shutdown_close_turns);
        assert_eq!(s.timeouts, 0, "every close was answered");
    }

    fn a_batch_larger_than_the_connections_closes_all_in_one_turn_per_shard(backend) {
        let mut server = common::start_with(backend, |b| b.shutdown_close_batch(1000));
        let mut cs = clients(&server, 20);
        let shards = server.handle().shards() as u64;
        let s = shut_down_answering_1001(&mut server, &mut cs);
        assert_eq!(s.shutdown_closes, 20, "closes begun");
        assert!(
            (1..=shards).contains(&s.shutdown_close_turns),
            "closes began in {} turns on {shards} shards",
            s.shutdown_close_turns
        );
    }

    fn the_deadline_ends_connections_whose_close_never_began(backend) {
        let mut server = common::start_with(backend, |b| {
            b.shards(Shards::Count(1))
                .shutdown_close_batch(1)
                .send_queue_bytes_max(64 << 20)
        });
        // The first connection (slot 0, so the first to close) reads nothing while 16 MiB are
        // queued for it: its close frame stays behind them, and with a batch of 1 no other
        // close may begin.
        let mut stuck = RawClient::connect(server.addr).unwrap();
        stuck.send_text("cmd:flood:256:65536").unwrap();
        server.wait_event("flood done", |e| matches!(e, Event::FloodDone { queued: 256, .. }));
        let mut later = clients(&server, 3);
        let grace = Duration::from_millis(500);
        let stats = shutdown_then_stats(server.take_handle(), grace);
        for c in &mut later {
            assert_eq!(c.read_until_close(), Ending::Eof, "dropped at the deadline, no close frame");
        }
        let s = stats_after(&stats, grace);
        assert_eq!(s.shutdown_closes, 1, "only the stuck connection's close began");
        assert_eq!(s.connections_open, 0, "every connection ended at the deadline");
        drop(stuck);
    }
}
