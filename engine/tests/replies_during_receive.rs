//! Replies leave as the backend writes them: epoll writes an echo during the receive that
//! produced it (the queue's bytes go out before the next connection is read), io_uring at the
//! end of the loop turn. Either way a reply is written once and counted once, keeps its place
//! behind what the socket could not take yet, and is followed by the protocol's closing steps.
//! These tests echo large messages on many connections in one turn (each reply from the same
//! reused storage on epoll), send a close right behind a large message, and make a reader
//! that does not read fill its socket with replies before it reads them all, in order.

mod common;

use common::raw::{encode_frame, op, RawClient};
use percore::{Conn, Handler, Message};

/// Echoes every message.
struct Echo;

impl Handler for Echo {
    type State = ();

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

fn start(backend: percore::Backend) -> percore::ServerHandle {
    common::start_app(backend, |b| b.send_queue_bytes_max(64 << 20), |_| Echo)
}

/// A payload of `len` bytes that differs with `seed` (a reply sent to the wrong connection, or
/// from storage another reply overwrote, shows).
fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(101) ^ (i >> 11)) as u8)
        .collect()
}

/// Header bytes of a server (unmasked) frame with a payload of `len` bytes.
fn server_header_len(len: usize) -> u64 {
    match len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

every_backend! {
    fn large_echoes_on_many_connections_at_once_arrive_whole_and_counted_once(backend) {
        let h = start(backend);
        let addr = common::addr_of(&h);
        let mut clients: Vec<RawClient> =
            (0..24).map(|_| RawClient::connect(addr).unwrap()).collect();
        // The handshake responses' bytes are counted once written, which a client may read
        // before that: let the count settle.
        let mut before = h.stats().bytes_sent;
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = h.stats().bytes_sent;
            if now == before {
                break;
            }
            before = now;
        }
        let mut expected = 0u64;
        // Every message is sent before any echo is read: the server's turns see many of them.
        for round in 0..3 {
            for (i, c) in clients.iter_mut().enumerate() {
                let len = [65_536, 16_384, 100_000][round];
                let p = payload(i * 7 + round, len);
                c.send_raw(&encode_frame(true, 0, op::BINARY, &p, [1, 2, 3, i as u8]))
                    .unwrap();
                expected += server_header_len(len) + len as u64;
            }
            for (i, c) in clients.iter_mut().enumerate() {
                let (kind, data) = c.read_message().unwrap();
                let want = payload(i * 7 + round, data.len());
                assert!(
                    kind == op::BINARY && data == want,
                    "round {round}, connection {i}: {} bytes back",
                    data.len()
                );
            }
        }
        if !common::tls::is_tls(addr) {
            common::wait_until("every echo counted", || {
                h.stats().bytes_sent - before >= expected
            });
            assert_eq!(h.stats().bytes_sent - before, expected, "echo bytes counted once");
        }
    }

    fn a_close_right_behind_a_large_message_follows_its_echo(backend) {
        let h = start(backend);
        let mut c = RawClient::connect(common::addr_of(&h)).unwrap();
        let p = payload(5, 200_000);
        let mut bytes = encode_frame(true, 0, op::BINARY, &p, [9, 9, 9, 9]);
        bytes.extend_from_slice(&encode_frame(
            true,
            0,
            op::CLOSE,
            &common::raw::close_payload(1000, b"bye"),
            [4, 3, 2, 1],
        ));
        c.send_raw(&bytes).unwrap();
        let (kind, data) = c.read_message().unwrap();
        assert!(kind == op::BINARY && data == p, "{} bytes back", data.len());
        match c.read_until_close() {
            common::raw::Ending::Close(code) => assert_eq!(code, Some(1000), "close reply"),
            other => panic!("expected the close reply, got {other:?}"),
        }
        c.expect_eof();
    }

    fn replies_a_reader_does_not_take_yet_wait_in_order(backend) {
        let h = start(backend);
        let mut c = RawClient::connect(common::addr_of(&h)).unwrap();
        // 8 MiB of replies, far more than the sockets hold: once they are full the server's
        // writes are short or find no room, and the rest waits in the queue.
        let sent: Vec<Vec<u8>> = (0..32).map(|i| payload(1000 + i, 256 << 10)).collect();
        for (i, p) in sent.iter().enumerate() {
            c.send_raw(&encode_frame(true, 0, op::BINARY, p, [i as u8, 1, 2, 3]))
                .unwrap();
        }
        for (i, p) in sent.iter().enumerate() {
            let (kind, data) = c.read_message().unwrap();
            assert!(kind == op::BINARY && &data == p, "reply {i}: {} bytes", data.len());
        }
        // Small echoes after the backlog: the queue is usable again.
        for i in 0..4 {
            c.echo_text(&format!("after {i}"));
        }
    }
}
