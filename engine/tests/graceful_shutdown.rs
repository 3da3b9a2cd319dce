//! `ServerHandle::shutdown`: every client gets close 1001 after the data already queued for it,
//! and the call returns (threads joined) within its grace period plus a margin.

mod common;

use common::handlers::Event;
use common::raw::{op, Ending, RawClient};
use std::time::Duration;

every_backend! {
    fn every_client_gets_close_1001(backend) {
        let mut server = common::start(backend);
        let mut clients: Vec<RawClient> = (0..10).map(|_| RawClient::connect(server.addr).unwrap()).collect();
        for c in &mut clients {
            c.echo_text("before shutdown");
        }
        let handle = server.take_handle();
        let stopper = std::thread::spawn(move || common::shutdown_bounded(handle, Duration::from_secs(10)));
        for c in &mut clients {
            assert_eq!(c.read_until_close(), Ending::Close(Some(1001)));
            let _ = c.send_close(1001, "");
            c.expect_eof();
        }
        assert!(stopper.join().unwrap(), "shutdown did not return");
    }

    fn queued_data_is_flushed_before_the_1001_close(backend) {
        let mut server = common::start_with(backend, |b| b.send_queue_bytes_max(64 << 20));
        let mut c = RawClient::connect(server.addr).unwrap();
        // 16 MiB queued while the client reads nothing: more than the socket buffers take.
        c.send_text("cmd:flood:256:65536").unwrap();
        server.wait_event("flood done", |e| matches!(e, Event::FloodDone { queued: 256, .. }));
        let handle = server.take_handle();
        let stopper = std::thread::spawn(move || common::shutdown_bounded(handle, Duration::from_secs(15)));
        for m in 0..256 {
            let (kind, data) = c.read_message().unwrap_or_else(|e| panic!("message {m} of 256 lost at shutdown: {e}"));
            assert_eq!(kind, op::BINARY);
            assert!(data == common::handlers::flood_message(m, 65536), "message {m} differs");
        }
        assert_eq!(c.read_until_close(), Ending::Close(Some(1001)));
        let _ = c.send_close(1001, "");
        assert!(stopper.join().unwrap(), "shutdown did not return");
    }

    fn shutdown_returns_when_clients_never_answer_the_close(backend) {
        let server = common::start(backend);
        let _silent: Vec<RawClient> = (0..5).map(|_| RawClient::connect(server.addr).unwrap()).collect();
        // Generous bound: it must return at all, not be fast.
        server.shutdown(Duration::from_millis(300));
    }

    fn shutdown_drops_connections_still_in_their_handshake(backend) {
        let server = common::start(backend);
        let mut s = common::raw::connect(server.addr).unwrap();
        std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        common::wait_until("the half-sent handshake is accepted", || {
            server.handle().stats().connections_open == 1
        });
        server.shutdown(Duration::from_secs(5));
        s.set_read_timeout(Some(common::WAIT)).unwrap();
        let mut buf = [0u8; 256];
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("unexpected answer {:?}", String::from_utf8_lossy(&buf[..n])),
        }
    }

    fn shutdown_twice_is_harmless(backend) {
        let mut server = common::start(backend);
        RawClient::connect(server.addr).unwrap().echo_text("x");
        let handle = server.take_handle();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            handle.shutdown(Duration::from_secs(1));
            handle.shutdown(Duration::from_secs(1));
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(common::WAIT).is_ok(), "a second shutdown did not return");
    }

    fn listener_refuses_new_handshakes_after_shutdown(backend) {
        let server = common::start(backend);
        let addr = server.addr;
        server.shutdown(Duration::from_secs(1));
        assert!(RawClient::connect(addr).is_err(), "handshake succeeded after shutdown");
    }

    fn a_close_reply_after_close_timeout_but_before_the_shutdown_deadline_is_clean(backend) {
        let mut server = common::start_with(backend, |b| b.close_timeout(Duration::from_millis(200)));
        let mut c = RawClient::connect(server.addr).unwrap();
        server.wait_event("on_open", |e| matches!(e, Event::Opened(_)));
        let handle = server.take_handle();
        let stopper = std::thread::spawn(move || common::shutdown_bounded(handle, Duration::from_secs(5)));
        assert_eq!(c.read_until_close(), Ending::Close(Some(1001)));
        // Four close timeouts later, well within the shutdown's 5 s.
        std::thread::sleep(Duration::from_millis(800));
        c.send_close(1001, "").unwrap();
        c.expect_eof();
        assert!(stopper.join().unwrap(), "shutdown did not return");
        let closed: Vec<Option<u16>> = server
            .events
            .try_iter()
            .filter_map(|e| match e {
                Event::Closed(_, code, _) => Some(code),
                _ => None,
            })
            .collect();
        assert_eq!(closed, vec![Some(1001)], "on_close saw the peer's reply, not a timeout");
    }

    fn on_close_runs_for_every_connection_at_shutdown(backend) {
        let mut server = common::start(backend);
        let clients: Vec<RawClient> = (0..6).map(|_| RawClient::connect(server.addr).unwrap()).collect();
        for _ in 0..6 {
            server.wait_event("on_open", |e| matches!(e, Event::Opened(_)));
        }
        let handle = server.take_handle();
        let stopper = std::thread::spawn(move || common::shutdown_bounded(handle, Duration::from_secs(5)));
        // Answer the closes so the handshakes complete.
        for mut c in clients {
            let _ = c.read_until_close();
            let _ = c.send_close(1001, "");
        }
        assert!(stopper.join().unwrap(), "shutdown did not return");
        let closed = server.events.try_iter().filter(|e| matches!(e, Event::Closed(..))).count();
        assert_eq!(closed, 6, "on_close calls at shutdown");
    }
}
