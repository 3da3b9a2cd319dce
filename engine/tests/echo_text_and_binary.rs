//! Text and binary messages of every length class come back unchanged (tungstenite client and
//! the raw client), including multi-byte UTF-8 split across frames and reads.

mod common;

use common::raw::{op, RawClient};
use tungstenite::Message;

const SIZES: &[usize] = &[0, 1, 125, 126, 127, 65535, 65536, 1 << 20, 16 << 20];

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed) % 256) as u8).collect()
}

/// A text of `len` bytes mixing 1-, 2-, 3- and 4-byte characters (padded with ASCII).
fn utf8_text(len: usize) -> String {
    let chars = ['a', 'é', '€', '𝄞', 'ß', '中', '😀'];
    let mut s = String::with_capacity(len);
    let mut i = 0;
    while s.len() < len {
        let c = chars[i % chars.len()];
        if s.len() + c.len_utf8() > len {
            s.push('x');
        } else {
            s.push(c);
        }
        i += 1;
    }
    s
}

/// Room for echoing 16 MiB messages (the default send queue limit is smaller than the default
/// message limit).
fn big_queue(b: common::Builder) -> common::Builder {
    b.send_queue_bytes_max(64 << 20)
}

every_backend! {
    fn binary_messages_of_every_length_class_echo_unchanged(backend) {
        let server = common::start_with(backend, big_queue);
        let mut ws = common::tungstenite_client(server.addr);
        for (seed, &len) in SIZES.iter().enumerate() {
            let data = pattern(len, seed);
            ws.send(Message::binary(data.clone())).expect("send");
            match ws.read().expect("read echo") {
                Message::Binary(got) => assert!(got[..] == data[..], "binary echo of {len} bytes differs"),
                other => panic!("expected binary echo of {len} bytes, got {:?}", other.len()),
            }
        }
        ws.close(None).expect("close");
    }

    fn text_messages_of_every_length_class_echo_unchanged(backend) {
        let server = common::start_with(backend, big_queue);
        let mut ws = common::tungstenite_client(server.addr);
        for &len in SIZES {
            let text = utf8_text(len);
            ws.send(Message::text(text.clone())).expect("send");
            match ws.read().expect("read echo") {
                Message::Text(got) => assert!(got.as_str() == text, "text echo of {len} bytes differs"),
                other => panic!("expected text echo of {len} bytes, got {:?}", other.len()),
            }
        }
    }

    fn default_config_echoes_a_message_of_message_bytes_max(backend) {
        let server = common::start(backend);
        let mut ws = common::tungstenite_client(server.addr);
        let data = pattern(16 << 20, 3);
        ws.send(Message::binary(data.clone())).expect("send");
        match ws.read().expect("read echo") {
            Message::Binary(got) => assert!(got[..] == data[..], "echo differs"),
            other => panic!("expected the 16 MiB echo, got {other:?}"),
        }
    }

    fn multibyte_utf8_text_echoes_unchanged(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).expect("connect");
        for s in ["héllo wörld", "€", "𝄞 music", "中文字符", "😀😃😄", "\u{10FFFF}", "\u{0}"] {
            c.echo_text(s);
        }
    }

    fn multibyte_character_split_across_fragments_echoes_unchanged(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).expect("connect");
        let text = "a😀b€c";
        let bytes = text.as_bytes();
        // Split inside the 4-byte emoji and inside the 3-byte euro sign.
        c.send_frame(false, op::TEXT, &bytes[..3]).unwrap();
        c.send_frame(false, op::CONT, &bytes[3..7]).unwrap();
        c.send_frame(true, op::CONT, &bytes[7..]).unwrap();
        let (kind, got) = c.read_message().expect("echo");
        assert_eq!(kind, op::TEXT);
        assert_eq!(got, bytes);
    }

    fn message_written_one_byte_at_a_time_echoes_unchanged(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).expect("connect");
        let text = utf8_text(300);
        let frame = common::raw::encode_frame(true, 0, op::TEXT, text.as_bytes(), [1, 2, 3, 4]);
        for b in &frame {
            c.send_raw(std::slice::from_ref(b)).unwrap();
        }
        let (kind, got) = c.read_message().expect("echo");
        assert_eq!(kind, op::TEXT);
        assert_eq!(got, text.as_bytes());
    }

    fn many_small_messages_in_one_write_echo_in_order(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).expect("connect");
        let mut batch = Vec::new();
        for i in 0..500 {
            batch.extend(common::raw::encode_frame(true, 0, op::TEXT, format!("m{i}").as_bytes(), [9, 8, 7, 6]));
        }
        c.send_raw(&batch).unwrap();
        for i in 0..500 {
            let (kind, got) = c.read_message().expect("echo");
            assert_eq!(kind, op::TEXT);
            assert_eq!(got, format!("m{i}").as_bytes());
        }
    }

    fn ten_thousand_messages_in_one_write_echo_in_order(backend) {
        // About 1.3 MB of input in one go: far more than one read, so the server works through
        // it over many reads and loop turns.
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        let mut batch = Vec::new();
        for i in 0..10_000 {
            let payload = format!("{i:06} {}", "m".repeat(100));
            batch.extend(common::raw::encode_frame(true, 0, op::BINARY, payload.as_bytes(), [3, 1, 4, 1]));
        }
        // Write from another thread while this one reads the echoes (neither side blocks the
        // other). A TLS client cannot be split in two: it writes everything first, and the
        // server keeps reading while its echoes wait in its send queue.
        let writer = if c.stream.is_tls() {
            c.send_raw(&batch).expect("write batch");
            None
        } else {
            let mut w = c.stream.tcp().try_clone().unwrap();
            Some(std::thread::spawn(move || std::io::Write::write_all(&mut w, &batch)))
        };
        for i in 0..10_000 {
            let (kind, got) = c.read_message().expect("echo");
            assert_eq!(kind, op::BINARY);
            assert_eq!(got, format!("{i:06} {}", "m".repeat(100)).as_bytes(), "message {i}");
        }
        if let Some(w) = writer {
            w.join().unwrap().expect("write batch");
        }
    }

    fn frames_pipelined_with_the_handshake_are_processed(backend) {
        use std::io::Write;
        let server = common::start(backend);
        let mut s = common::raw::connect(server.addr).unwrap();
        let key = common::raw::new_key();
        let mut bytes = common::raw::upgrade_request(server.addr, "/", &key, &[]).into_bytes();
        bytes.extend(common::raw::encode_frame(true, 0, op::TEXT, b"early", [5, 6, 7, 8]));
        s.write_all(&bytes).unwrap();
        let (resp, rest) = common::raw::read_response_head(&mut s).unwrap();
        assert_eq!(resp.status, 101);
        let mut buf = rest;
        let frame = loop {
            if let Some((f, _)) = common::raw::parse_server_frame(&buf).unwrap() {
                break f;
            }
            let mut chunk = [0u8; 1024];
            let n = std::io::Read::read(&mut s, &mut chunk).unwrap();
            assert!(n > 0, "EOF before the echo");
            buf.extend_from_slice(&chunk[..n]);
        };
        assert_eq!(frame.opcode, op::TEXT);
        assert_eq!(frame.payload, b"early");
    }
}
