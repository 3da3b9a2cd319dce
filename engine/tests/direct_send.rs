//! Large frames sent onto an empty send queue go to the socket at once, header and payload in
//! one vectored write, without a copy (`send_direct_bytes_min`); what the socket does not take
//! is queued. Whatever mix of such writes and queued frames, a connection's frames arrive in
//! the order they were sent, whole: large echoes interleaved with small messages, a client
//! that reads slowly (so writes are partial and the queue backs up and drains again), a 16 MiB
//! message, fragmented messages, and a close after the data. Over TLS (every test runs there
//! too) nothing is written directly: the same order through the TLS path.

mod common;

use common::raw::{op, RawClient};
use percore::{CloseCode, Conn, Handler, Message};

/// Echoes every message; a text `close` closes with 1000 after what was sent.
struct Echo;

impl Handler for Echo {
    type State = ();

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        match msg {
            Message::Text("close") => conn.close(CloseCode::NORMAL, "done"),
            _ => {
                let _ = conn.send(msg);
            }
        }
    }
}

/// A payload of `len` bytes that differs with `seed` (so a reordered or shifted frame shows).
fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(7)) as u8)
        .collect()
}

/// A client whose receive buffer is 4 KiB, set before it connects: its small window keeps the
/// server's socket buffer small and full, so a large frame written onto an empty queue is
/// taken only in part.
fn connect_small_window(addr: std::net::SocketAddr) -> RawClient {
    connect_window(addr, 4096)
}

/// A client whose receive buffer is `window` bytes, set before it connects.
fn connect_window(addr: std::net::SocketAddr, window: usize) -> RawClient {
    use common::raw::{new_key, read_response_head, upgrade_request, IO_TIMEOUT};
    use std::io::Write;
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(window).unwrap();
    s.connect(&addr.into()).unwrap();
    let tcp: std::net::TcpStream = s.into();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut stream = common::tls::Stream::over(tcp, addr);
    stream
        .write_all(upgrade_request(addr, "/", &new_key(), &[]).as_bytes())
        .unwrap();
    let (response, rest) = read_response_head(&mut stream).unwrap();
    assert_eq!(response.status, 101);
    RawClient::from_parts(stream, rest, response)
}

fn is_plain(addr: std::net::SocketAddr) -> bool {
    !common::tls::is_tls(addr)
}

every_backend! {
    fn large_echoes_and_small_messages_keep_their_order_under_partial_writes(backend) {
        let h = common::start_app(backend, |b| b.send_direct_bytes_min(8 << 10).send_queue_bytes_max(256 << 20), |_| Echo);
        let addr = common::addr_of(&h);
        let mut c = connect_small_window(addr);
        // Sizes around the threshold (8 KiB) and far above it.
        let sizes = [8191usize, 8192, 8193, 100, 16 << 10, 70_000, 300_000, 5, 1 << 20, 64 << 10];
        let mut sent: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut got = 0usize;
        for round in 0..24 {
            // A batch written without reading: the server's socket buffer fills, its writes
            // become partial and its queue backs up.
            for (i, &len) in sizes.iter().enumerate() {
                let seed = round * sizes.len() + i;
                let p = payload(seed, len);
                c.send_binary(&p).unwrap();
                sent.push((op::BINARY, p));
                let t = format!("#{seed}");
                c.send_text(&t).unwrap();
                sent.push((op::TEXT, t.into_bytes()));
            }
            // Read only part of what is due (the queue drains partly, sometimes fully, so the
            // next large frame finds an empty queue and a socket with some room).
            let due = sent.len() - got;
            for _ in 0..due / 2 + round % 3 {
                let (kind, data) = c.read_message().unwrap();
                assert!(kind == sent[got].0 && data == sent[got].1, "message {got} out of order or damaged");
                got += 1;
            }
        }
        c.send_text("close").unwrap();
        while got < sent.len() {
            let (kind, data) = c.read_message().unwrap();
            assert!(kind == sent[got].0 && data == sent[got].1, "message {got} out of order or damaged");
            got += 1;
        }
        c.expect_close(1000);
        let st = h.stats();
        if is_plain(addr) {
            assert!(st.frames_sent_direct > 0, "no frame was written directly");
        } else {
            assert_eq!(st.frames_sent_direct, 0, "a TLS frame was written directly");
        }
        assert!(st.frames_sent_direct < st.frames_sent);
    }

    fn a_16_mib_message_and_fragmented_ones_echo_whole(backend) {
        let h = common::start_app(backend, |b| b.send_direct_bytes_min(8 << 10).send_queue_bytes_max(64 << 20).message_bytes_max(17 << 20).frame_bytes_max(17 << 20), |_| Echo);
        let addr = common::addr_of(&h);
        let mut c = RawClient::connect(addr).unwrap();
        let big = payload(1, 16 << 20);
        c.send_binary(&big).unwrap();
        let (kind, data) = c.read_message().unwrap();
        assert!(kind == op::BINARY && data == big, "16 MiB echo damaged");
        // 3 MiB in fragments of 100,000 bytes, then a small message after it.
        let frag = payload(2, 3 << 20);
        let chunks: Vec<&[u8]> = frag.chunks(100_000).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let opcode = if i == 0 { op::BINARY } else { op::CONT };
            c.send_frame(i + 1 == chunks.len(), opcode, chunk).unwrap();
        }
        c.send_text("after").unwrap();
        let (kind, data) = c.read_message().unwrap();
        assert!(kind == op::BINARY && data == frag, "fragmented echo damaged");
        assert_eq!(c.read_message().unwrap(), (op::TEXT, b"after".to_vec()));
    }
}

every_backend! {
    fn a_slow_consumer_gets_whole_frames_then_its_close(backend) {
        let h = common::start_app(backend, |b| b.send_direct_bytes_min(8 << 10).send_queue_bytes_max(256 << 10), |_| Echo);
        let mut c = connect_small_window(common::addr_of(&h));
        c.stream.tcp().set_write_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
        // 4 MiB of echoes towards a 4 KiB window: the queue passes its limit while a large
        // frame is on the wire in part (written at once onto an empty queue).
        let p = payload(9, 100_000);
        for _ in 0..40 {
            if c.send_binary(&p).is_err() {
                break;
            }
        }
        loop {
            let f = c.read_frame().expect("whole echoes, then a close frame");
            match f.opcode {
                op::BINARY => assert!(f.payload == p, "an echo was cut short or damaged"),
                op::CLOSE => {
                    assert_eq!(f.close_code(), Some(1008));
                    break;
                }
                other => panic!("unexpected opcode {other}"),
            }
        }
    }
}

every_backend! {
    fn a_client_that_never_reads_is_closed_at_the_queue_limit_whatever_was_written_directly(backend) {
        // The soak's never-reading client: 60 KiB messages towards a 256 KiB window, never
        // read. Each echo finds the queue empty or not: written directly in whole, in part or
        // not at all, and queued behind. Whatever the mix, the bytes the server holds unsent
        // are bounded by `send_queue_bytes_max`: the connection must be closed (1008, or the
        // socket dropped) long before the client has written 64 MiB, and not left open.
        const QUEUE_MAX: usize = 1 << 20;
        let h = common::start_app(backend, |b| b.send_direct_bytes_min(8 << 10).send_queue_bytes_max(QUEUE_MAX), |_| Echo);
        let addr = common::addr_of(&h);
        let mut c = connect_window(addr, 256 << 10);
        c.stream.tcp().set_write_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
        let p = payload(11, 60 << 10);
        let mut written = 0usize;
        let mut blocked = 0;
        while written < 64 << 20 {
            match c.send_binary(&p) {
                Ok(()) => {
                    written += p.len();
                    blocked = 0;
                }
                // The server stopped reading: it must close before long. A write cut by the
                // timeout left a partial frame: nothing more may be written after it.
                Err(e) if common::raw::is_timeout(&e) => {
                    blocked += 1;
                    break;
                }
                Err(_) => break,
            }
        }
        // Reading now: whole echoes, then close 1008 or the end of the stream; never the
        // read timeout (the server kept the connection open without a limit).
        let mut echoed = 0usize;
        let ending = loop {
            match c.read_frame() {
                Ok(f) if f.opcode == op::CLOSE => break Some(f.close_code()),
                Ok(f) if f.opcode == op::BINARY => {
                    assert!(f.payload == p, "an echo was cut short or damaged");
                    echoed += f.payload.len();
                }
                Ok(f) if f.opcode == op::PING => {}
                Ok(f) => panic!("unexpected opcode {}", f.opcode),
                Err(e) if common::raw::is_timeout(&e) => panic!(
                    "never-reading client neither closed nor served: {written} bytes written \
                     (blocked {blocked}), {echoed} echoed, stats {:?}",
                    h.stats()
                ),
                Err(_) => break None,
            }
        };
        assert!(matches!(ending, Some(Some(1008)) | None), "ended with close {ending:?}");
        assert!(echoed < written, "everything was echoed: no limit applied");
        let st = h.stats();
        assert!(st.slow_consumers >= 1, "slow consumer not counted: {st:?}");
        if is_plain(addr) {
            assert!(st.frames_sent_direct > 0, "no frame was written directly");
        }
    }
}

plain_only! {
    "over TLS nothing is written directly: the threshold has nothing to cross there";
    fn send_direct_bytes_min_is_the_smallest_payload_written_directly(backend) {
        let h = common::start_app(backend, |b| b.send_direct_bytes_min(1000), |_| Echo);
        let mut c = RawClient::connect(common::addr_of(&h)).unwrap();
        let direct = |h: &percore::ServerHandle| h.stats().frames_sent_direct;
        // Each echo goes onto an empty queue: the client waits for it before the next.
        let small = payload(3, 999);
        c.send_binary(&small).unwrap();
        assert_eq!(c.read_message().unwrap(), (op::BINARY, small));
        assert_eq!(direct(&h), 0, "999 bytes, below the threshold, were written directly");
        let at = payload(4, 1000);
        c.send_binary(&at).unwrap();
        assert_eq!(c.read_message().unwrap(), (op::BINARY, at));
        assert_eq!(direct(&h), 1, "1000 bytes, at the threshold, were not written directly");
        let h2 = common::start_app(backend, |b| b.send_direct_bytes_min(usize::MAX), |_| Echo);
        let mut c2 = RawClient::connect(common::addr_of(&h2)).unwrap();
        let big = payload(5, 1 << 20);
        c2.send_binary(&big).unwrap();
        assert_eq!(c2.read_message().unwrap(), (op::BINARY, big));
        assert_eq!(direct(&h2), 0, "written directly although turned off");
    }
}
