//! `send_queue_bytes_max`: a client that never reads cannot make the server buffer without
//! bound; past the limit the slow-consumer policy closes it (1008), and every other client
//! keeps being served normally.

mod common;

use common::handlers::Event;
use common::raw::{op, Ending, RawClient};
use std::io::Write;
use std::time::{Duration, Instant};

const QUEUE_MAX: usize = 256 << 10;

every_backend! {
    fn flood_past_send_queue_bytes_max_fails_the_send_and_closes_1008(backend) {
        let server = common::start_with(backend, |b| b.send_queue_bytes_max(QUEUE_MAX));
        let mut slow = RawClient::connect(server.addr).unwrap();
        // 64 MiB in 64 KiB messages: far more than the kernel's socket buffers and the queue
        // limit together can hold, so the queue limit must be crossed while the client sleeps.
        slow.send_text("cmd:flood:1024:65536").unwrap();
        match server.wait_event("flood done", |e| matches!(e, Event::FloodDone { .. })) {
            Event::FloodDone { queued, send_failed } => {
                assert!(send_failed, "send never failed although the client reads nothing");
                assert!(queued < 1024, "all {queued} messages were queued");
            }
            _ => unreachable!(),
        }
        // The client now reads: it gets at most what was queued, then close 1008 or the end of
        // the stream (a policy may drop the socket when the close frame cannot be queued).
        let mut bytes = 0usize;
        let ending = loop {
            match slow.read_frame() {
                Ok(f) if f.opcode == op::CLOSE => break Ending::Close(f.close_code()),
                Ok(f) => bytes += f.payload.len(),
                Err(e) if common::raw::is_timeout(&e) => panic!("slow consumer neither closed nor served"),
                Err(_) => break Ending::Eof,
            }
        };
        assert!(matches!(ending, Ending::Close(Some(1008)) | Ending::Eof), "got {ending:?}");
        assert!(bytes < 1024 * 65536, "got everything ({bytes} bytes): no limit applied");
        match server.wait_event("on_close of the slow consumer", |e| matches!(e, Event::Closed(..))) {
            Event::Closed(_, code, _) => assert!(matches!(code, Some(1008) | Some(1006)), "on_close code {code:?}"),
            _ => unreachable!(),
        }
        assert!(server.handle().stats().slow_consumers >= 1, "slow consumer not counted");
    }

    fn client_that_never_reads_does_not_stall_others(backend) {
        let server = common::start_with(backend, |b| b.send_queue_bytes_max(QUEUE_MAX));
        let addr = server.addr;
        // The slow client pushes echo traffic and never reads its echoes, for a bounded time.
        let pusher = std::thread::spawn(move || {
            let mut slow = RawClient::connect(addr).unwrap();
            slow.stream.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
            let msg = common::raw::encode_frame(true, 0, op::BINARY, &[0x55; 16 << 10], [1, 2, 3, 4]);
            let start = Instant::now();
            let mut sent = 0usize;
            while start.elapsed() < Duration::from_secs(3) && sent < 256 << 20 {
                match slow.stream.write_all(&msg) {
                    Ok(()) => sent += msg.len(),
                    // Blocked (the server stopped reading) or closed by the policy: both fine.
                    Err(e) if common::raw::is_timeout(&e) => {}
                    Err(_) => break,
                }
            }
            sent
        });
        let mut fast = RawClient::connect(server.addr).unwrap();
        let start = Instant::now();
        let mut rounds = 0;
        while start.elapsed() < Duration::from_secs(3) {
            fast.echo_text(&format!("round {rounds}"));
            rounds += 1;
        }
        let sent = pusher.join().unwrap();
        assert!(rounds > 0);
        eprintln!("slow client pushed {sent} bytes; fast client did {rounds} echoes meanwhile");
        // And a brand-new client is served too.
        RawClient::connect(server.addr).unwrap().echo_text("newcomer");
    }

    fn queue_below_the_limit_is_delivered_in_full(backend) {
        let server = common::start_with(backend, |b| b.send_queue_bytes_max(16 << 20));
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_text("cmd:flood:64:65536").unwrap();
        match server.wait_event("flood done", |e| matches!(e, Event::FloodDone { .. })) {
            Event::FloodDone { queued, send_failed } => assert_eq!((queued, send_failed), (64, false)),
            _ => unreachable!(),
        }
        for m in 0..64 {
            let (kind, data) = c.read_message().unwrap();
            assert_eq!(kind, op::BINARY);
            assert!(data == common::handlers::flood_message(m, 65536), "message {m} differs");
        }
        c.echo_text("after the flood");
    }

    fn on_drain_runs_once_the_queue_empties(backend) {
        let server = common::start_with(backend, |b| b.send_queue_bytes_max(32 << 20).send_queue_low_water_bytes(64 << 10));
        let mut c = RawClient::connect(server.addr).unwrap();
        // 16 MiB: more than the socket buffers take at once, so the queue really backs up.
        c.send_text("cmd:flood:256:65536").unwrap();
        server.wait_event("flood done", |e| matches!(e, Event::FloodDone { .. }));
        for _ in 0..256 {
            c.read_message().unwrap();
        }
        server.wait_event("on_drain", |e| matches!(e, Event::Drained(_)));
    }
}
