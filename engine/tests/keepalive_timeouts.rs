//! `idle_timeout` and `pong_timeout`: a quiet connection gets a ping; a client that answers
//! stays open, one that does not is dropped.

mod common;

use common::handlers::Event;
use common::raw::{op, RawClient};
use std::time::Duration;

fn quick_keepalive(b: common::Builder) -> common::Builder {
    b.idle_timeout(Duration::from_millis(200))
        .pong_timeout(Duration::from_millis(300))
}

/// Quick pings, but a pong deadline a stalled test thread on a busy machine will not miss.
fn quick_ping_patient_pong(b: common::Builder) -> common::Builder {
    b.idle_timeout(Duration::from_millis(200))
        .pong_timeout(Duration::from_secs(2))
}

every_backend! {
    fn idle_connection_gets_a_ping(backend) {
        let server = common::start_with(backend, quick_keepalive);
        let mut c = RawClient::connect(server.addr).unwrap();
        let f = c.read_frame().unwrap();
        assert_eq!(f.opcode, op::PING, "first frame on an idle connection is a ping");
    }

    fn answering_pings_keeps_an_idle_connection_open(backend) {
        let server = common::start_with(backend, quick_ping_patient_pong);
        let mut c = RawClient::connect(server.addr).unwrap();
        // Several idle periods in a row, each answered.
        for _ in 0..3 {
            let f = c.read_frame().unwrap();
            assert_eq!(f.opcode, op::PING);
            c.send_frame(true, op::PONG, &f.payload).unwrap();
        }
        c.echo_text("still open after several idle periods");
    }

    fn unanswered_ping_drops_the_connection_after_pong_timeout(backend) {
        let server = common::start_with(backend, quick_keepalive);
        let mut c = RawClient::connect(server.addr).unwrap();
        let f = c.read_frame().unwrap();
        assert_eq!(f.opcode, op::PING);
        // No pong: the server gives up (close frame or plain drop, then EOF).
        c.expect_eof();
        common::wait_until("the pong timeout is counted", || server.handle().stats().timeouts >= 1);
        let s = server.handle().stats();
        assert_eq!((s.timeouts_handshake, s.timeouts_pong, s.timeouts_close), (0, s.timeouts, 0), "{s:?}");
        match server.wait_event("on_close", |e| matches!(e, Event::Closed(..))) {
            Event::Closed(_, code, _) => assert_eq!(code, Some(1006), "a dropped connection reports 1006"),
            _ => unreachable!(),
        }
        RawClient::connect(server.addr).unwrap().echo_text("others are served");
    }

    fn answered_ping_restarts_the_idle_timer(backend) {
        // Pong deadline far beyond the idle timeout: the next ping must come one idle timeout
        // after the pong, not when the 30 s pong deadline would have fired.
        let server = common::start_with(backend, |b| {
            b.idle_timeout(Duration::from_millis(200))
                .pong_timeout(Duration::from_secs(30))
        });
        let mut c = RawClient::connect(server.addr).unwrap();
        c.set_read_timeout(Duration::from_secs(10));
        for i in 0..3 {
            let f = c.read_frame().unwrap_or_else(|e| panic!("ping {i} did not come: {e}"));
            assert_eq!(f.opcode, op::PING);
            c.send_frame(true, op::PONG, &f.payload).unwrap();
        }
    }

    fn pinged_connections_closing_meanwhile_get_their_close_after_the_ping(backend) {
        // Many connections pinged in the same ticks (the server holds each ping as one shared
        // frame, also while its send is in flight), closing as the pings go out: some after
        // reading their ping, some without reading it (their close crosses the ping, or
        // arrives while it is in flight). Every one gets its ping(s), then the close reply.
        let server = common::start_with(backend, quick_ping_patient_pong);
        let mut cs: Vec<RawClient> =
            (0..40).map(|_| RawClient::connect(server.addr).unwrap()).collect();
        for (i, c) in cs.iter_mut().enumerate() {
            if i % 2 == 0 {
                let f = c.read_frame().unwrap();
                assert_eq!(f.opcode, op::PING);
            }
        }
        for c in &mut cs {
            c.send_close(1000, "bye").unwrap();
        }
        for (i, c) in cs.iter_mut().enumerate() {
            let f = loop {
                let f = c.read_frame().unwrap();
                if f.opcode != op::PING {
                    break f;
                }
            };
            assert_eq!(f.opcode, op::CLOSE, "connection {i}");
            assert_eq!(f.close_code(), Some(1000), "connection {i}");
            c.expect_eof();
        }
        RawClient::connect(server.addr).unwrap().echo_text("others are served");
    }

    fn busy_connection_is_not_pinged_into_closing(backend) {
        let server = common::start_with(backend, quick_ping_patient_pong);
        let mut c = RawClient::connect(server.addr).unwrap();
        // Traffic for well over idle + pong timeouts; pings may come (read_message answers
        // them), the connection must stay open.
        let start = std::time::Instant::now();
        let mut i = 0;
        while start.elapsed() < Duration::from_millis(1500) {
            c.echo_text(&format!("busy {i}"));
            i += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
