//! Frames that break RFC 6455 fail the connection with the RFC's close code, and the server
//! keeps serving other clients.

mod common;

use common::raw::{encode_frame, encode_unmasked, op, RawClient};

fn expect_close_after(backend: percore::Backend, bytes: &[u8], code: u16) {
    let server = common::start(backend);
    let mut c = RawClient::connect(server.addr).unwrap();
    c.send_raw(bytes).unwrap();
    c.expect_close(code);
    common::wait_until("the protocol error is counted", || {
        server.handle().stats().protocol_errors >= 1
    });
    // Bad input never takes the server down.
    RawClient::connect(server.addr)
        .unwrap()
        .echo_text("still serving");
}

every_backend! {
    fn unmasked_client_frame_is_1002(backend) {
        expect_close_after(backend, &encode_unmasked(true, op::TEXT, b"no mask"), 1002);
    }

    fn reserved_data_opcode_is_1002(backend) {
        for opcode in 3..=7 {
            expect_close_after(backend, &encode_frame(true, 0, opcode, b"x", [1, 2, 3, 4]), 1002);
        }
    }

    fn reserved_control_opcode_is_1002(backend) {
        for opcode in 0xB..=0xF {
            expect_close_after(backend, &encode_frame(true, 0, opcode, b"", [1, 2, 3, 4]), 1002);
        }
    }

    fn rsv_bits_without_extension_are_1002(backend) {
        for rsv in 1..=7 {
            expect_close_after(backend, &encode_frame(true, rsv, op::TEXT, b"rsv", [1, 2, 3, 4]), 1002);
        }
    }

    fn control_frame_longer_than_125_is_1002(backend) {
        expect_close_after(backend, &encode_frame(true, 0, op::PING, &[0u8; 126], [1, 2, 3, 4]), 1002);
    }

    fn invalid_utf8_text_is_1007(backend) {
        expect_close_after(backend, &encode_frame(true, 0, op::TEXT, &[b'a', 0xFF, b'b'], [1, 2, 3, 4]), 1007);
    }

    fn utf16_surrogate_in_text_is_1007(backend) {
        // U+D800 encoded as if it were a scalar value: ED A0 80.
        expect_close_after(backend, &encode_frame(true, 0, op::TEXT, &[0xED, 0xA0, 0x80], [1, 2, 3, 4]), 1007);
    }

    fn invalid_utf8_at_the_end_of_a_large_text_is_1007(backend) {
        // Larger than the receive buffer: the check runs across reads.
        let mut text = "ü".repeat(100_000).into_bytes();
        text.push(0xFF);
        expect_close_after(backend, &encode_frame(true, 0, op::TEXT, &text, [1, 2, 3, 4]), 1007);
    }

    fn invalid_utf8_early_in_a_large_text_fails_before_the_rest_arrives(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        let mut text = vec![b'a'; 1 << 20];
        text[100] = 0xC0;
        let frame = encode_frame(true, 0, op::TEXT, &text, [1, 2, 3, 4]);
        // Header + the first 1000 payload bytes only: the server must fail fast.
        c.send_raw(&frame[..14 + 1000]).unwrap();
        c.expect_close(1007);
    }

    fn payload_length_with_msb_set_is_1002(backend) {
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 63).to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        expect_close_after(backend, &frame, 1002);
    }

    fn invalid_utf8_after_valid_messages_still_delivers_the_valid_ones(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        let mut bytes = encode_frame(true, 0, op::TEXT, b"good", [1, 1, 1, 1]);
        bytes.extend(encode_frame(true, 0, op::TEXT, &[0xF8, 0x88, 0x80, 0x80, 0x80], [2, 2, 2, 2]));
        c.send_raw(&bytes).unwrap();
        assert_eq!(c.read_message().unwrap(), (op::TEXT, b"good".to_vec()));
        c.expect_close(1007);
    }
}
