//! Fragmented messages are reassembled; control frames may interleave; invalid fragment
//! sequences fail the connection with 1002 (invalid UTF-8 across fragments with 1007).

mod common;

use common::raw::{op, RawClient};

every_backend! {
    fn text_in_three_fragments_echoes_as_one_message(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(false, op::TEXT, b"Hello, ").unwrap();
        c.send_frame(false, op::CONT, b"fragmented ").unwrap();
        c.send_frame(true, op::CONT, b"world").unwrap();
        assert_eq!(c.read_message().unwrap(), (op::TEXT, b"Hello, fragmented world".to_vec()));
    }

    fn binary_in_many_fragments_echoes_as_one_message(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 256) as u8).collect();
        let chunks: Vec<&[u8]> = data.chunks(3).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let opcode = if i == 0 { op::BINARY } else { op::CONT };
            c.send_frame(i + 1 == chunks.len(), opcode, chunk).unwrap();
        }
        assert_eq!(c.read_message().unwrap(), (op::BINARY, data));
    }

    fn empty_fragments_are_accepted(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(false, op::TEXT, b"").unwrap();
        c.send_frame(false, op::CONT, b"x").unwrap();
        c.send_frame(false, op::CONT, b"").unwrap();
        c.send_frame(true, op::CONT, b"").unwrap();
        assert_eq!(c.read_message().unwrap(), (op::TEXT, b"x".to_vec()));
    }

    fn ping_between_fragments_is_answered_and_message_completes(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(false, op::TEXT, b"frag1 ").unwrap();
        c.send_frame(true, op::PING, b"in-between").unwrap();
        let pong = c.read_frame().unwrap();
        assert_eq!((pong.opcode, pong.payload.as_slice()), (op::PONG, &b"in-between"[..]));
        c.send_frame(true, op::PONG, b"unsolicited").unwrap();
        c.send_frame(true, op::CONT, b"frag2").unwrap();
        assert_eq!(c.read_message().unwrap(), (op::TEXT, b"frag1 frag2".to_vec()));
    }

    fn continuation_without_a_started_message_is_1002(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(true, op::CONT, b"orphan").unwrap();
        c.expect_close(1002);
    }

    fn text_frame_inside_a_fragmented_message_is_1002(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(false, op::TEXT, b"first").unwrap();
        c.send_frame(true, op::TEXT, b"second").unwrap();
        c.expect_close(1002);
    }

    fn binary_frame_inside_a_fragmented_message_is_1002(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(false, op::BINARY, b"first").unwrap();
        c.send_frame(false, op::BINARY, b"second").unwrap();
        c.expect_close(1002);
    }

    fn fragmented_ping_is_1002(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(false, op::PING, b"half").unwrap();
        c.send_frame(true, op::CONT, b"ping").unwrap();
        c.expect_close(1002);
    }

    fn invalid_utf8_across_fragments_is_1007(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(false, op::TEXT, "ok €".as_bytes()).unwrap();
        // 0xC0 can never start a valid sequence.
        c.send_frame(false, op::CONT, &[0xC0, 0x80]).unwrap();
        c.send_frame(true, op::CONT, b"tail").unwrap();
        c.expect_close(1007);
    }

    fn text_ending_inside_a_multibyte_character_is_1007(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(false, op::TEXT, b"abc").unwrap();
        c.send_frame(true, op::CONT, &"€".as_bytes()[..2]).unwrap();
        c.expect_close(1007);
    }

    fn connection_keeps_working_after_a_fragmented_message(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        for round in 0..20 {
            c.send_frame(false, op::BINARY, &[round; 10]).unwrap();
            c.send_frame(true, op::CONT, &[round; 5]).unwrap();
            assert_eq!(c.read_message().unwrap(), (op::BINARY, vec![round; 15]));
            c.echo_text(&format!("single {round}"));
        }
    }
}
