//! Large messages arrive whole however the socket splits them. On epoll a message of up to
//! `recv_in_place_bytes_max` (header included) that a read ends inside is read on into the
//! same buffer and handed out where it landed when the rest is there; on io_uring one of up to
//! a ring buffer is handed out in place when the rest lands right after it in the ring's
//! mapping; otherwise (a rest that has not come yet or landed elsewhere, a larger message) it
//! is assembled as before. These tests cross
//! the bound (one byte under, at and over it), send messages in pieces with pauses (reads that
//! end inside a header or a payload), back to back in one write (a kept message after whole
//! ones), text and binary, 1 MiB and 16 MiB, and check every byte echoed, in order, and the
//! received-bytes count (kept bytes are presented again, not received twice).

mod common;

use std::time::Duration;

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

/// A payload of `len` bytes that differs with `seed` (a shifted or reordered byte shows).
fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) ^ seed.wrapping_mul(7) ^ (i >> 9)) as u8)
        .collect()
}

/// Text of `len` bytes with multi-byte characters that pieces may split.
fn text(seed: usize, len: usize) -> String {
    let mut s = String::with_capacity(len);
    let mut i = seed;
    while s.len() + 4 <= len {
        s.push(['a', 'é', '€', '😀'][i % 4]);
        i += 1;
    }
    while s.len() < len {
        s.push('z');
    }
    s
}

const BOUND: usize = 256 << 10;

fn start(backend: percore::Backend) -> percore::ServerHandle {
    common::start_app(
        backend,
        |b| {
            b.recv_in_place_bytes_max(BOUND)
                .send_direct_bytes_min(8 << 10)
                .send_queue_bytes_max(64 << 20)
                .message_bytes_max(17 << 20)
                .frame_bytes_max(17 << 20)
        },
        |_| Echo,
    )
}

fn expect(c: &mut RawClient, kind: u8, want: &[u8], what: &str) {
    let (k, data) = c.read_message().unwrap();
    assert!(
        k == kind && data == want,
        "{what}: {} bytes back, {} sent",
        data.len(),
        want.len()
    );
}

every_backend! {
    fn messages_across_the_in_place_bound_echo_whole(backend) {
        let h = start(backend);
        let addr = common::addr_of(&h);
        let mut c = RawClient::connect(addr).unwrap();
        let before = h.stats().bytes_received;
        let mut sent = 0u64;
        // Header of a payload of 64 KiB or more: 14 bytes (client frames are masked).
        for (i, len) in [BOUND - 15, BOUND - 14, BOUND - 13, BOUND, 1 << 20, 65_536, 65_535, 16 << 20]
            .into_iter()
            .enumerate()
        {
            let p = payload(i, len);
            let frame = encode_frame(true, 0, op::BINARY, &p, [1, 2, 3, i as u8]);
            sent += frame.len() as u64;
            c.send_raw(&frame).unwrap();
            expect(&mut c, op::BINARY, &p, &format!("binary of {len} bytes"));
        }
        let t = text(3, 1 << 20);
        let frame = encode_frame(true, 0, op::TEXT, t.as_bytes(), [9, 8, 7, 6]);
        sent += frame.len() as u64;
        c.send_raw(&frame).unwrap();
        expect(&mut c, op::TEXT, t.as_bytes(), "1 MiB text");
        if !common::tls::is_tls(addr) {
            let received = h.stats().bytes_received - before;
            assert_eq!(received, sent, "received bytes counted once");
        }
    }

    fn large_messages_sent_in_pieces_with_pauses_echo_whole(backend) {
        let h = start(backend);
        let mut c = RawClient::connect(common::addr_of(&h)).unwrap();
        // Cut points inside the header, just after it, inside the payload, at the in-place
        // bound, and near the end.
        for (i, len) in [200_000usize, 1 << 20, BOUND + 100].into_iter().enumerate() {
            let p = payload(10 + i, len);
            let frame = encode_frame(true, 0, op::BINARY, &p, [5, 6, 7, 8]);
            let cuts = [1, 7, 14, 15, 4096, 70_000, BOUND - 20, BOUND, frame.len() - 1];
            let mut at = 0;
            for &cut in cuts.iter().filter(|&&x| x < frame.len()) {
                c.send_raw(&frame[at..cut]).unwrap();
                at = cut;
                std::thread::sleep(Duration::from_millis(5));
            }
            c.send_raw(&frame[at..]).unwrap();
            expect(&mut c, op::BINARY, &p, &format!("{len} bytes in pieces"));
        }
        // A text message whose pieces split its characters.
        let t = text(1, 300_000);
        let frame = encode_frame(true, 0, op::TEXT, t.as_bytes(), [1, 1, 1, 1]);
        for piece in frame.chunks(33_333) {
            c.send_raw(piece).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        expect(&mut c, op::TEXT, t.as_bytes(), "text in pieces");
    }

    fn large_messages_back_to_back_with_small_ones_keep_their_order(backend) {
        let h = start(backend);
        let mut c = RawClient::connect(common::addr_of(&h)).unwrap();
        let mut sent: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut batch = Vec::new();
        for i in 0..12 {
            let len = [5, 100_000, 20, BOUND - 14, 1 << 20, 3, 70_000, 2 << 20][i % 8];
            let (kind, p) = if i % 5 == 4 {
                (op::TEXT, text(i, len).into_bytes())
            } else {
                (op::BINARY, payload(100 + i, len))
            };
            batch.extend_from_slice(&encode_frame(true, 0, kind, &p, [i as u8, 2, 3, 4]));
            sent.push((kind, p));
        }
        // One write: reads end wherever the socket cuts, after whole messages or inside one
        // (the echoes wait in the server's queue meanwhile).
        c.send_raw(&batch).unwrap();
        for (i, (kind, p)) in sent.iter().enumerate() {
            expect(&mut c, *kind, p, &format!("message {i}"));
        }
    }
}
