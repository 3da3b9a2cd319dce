//! `frame_bytes_max` and `message_bytes_max`: one byte past either fails the connection with
//! 1009; exactly at the limit is fine.

mod common;

use common::raw::{op, RawClient};

every_backend! {
    fn frame_at_frame_bytes_max_is_accepted(backend) {
        let server = common::start_with(backend, |b| b.frame_bytes_max(1000).message_bytes_max(1 << 20));
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_binary(&[7u8; 1000]).unwrap();
        assert_eq!(c.read_message().unwrap(), (op::BINARY, vec![7u8; 1000]));
    }

    fn frame_past_frame_bytes_max_is_1009(backend) {
        let server = common::start_with(backend, |b| b.frame_bytes_max(1000).message_bytes_max(1 << 20));
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_binary(&[7u8; 1001]).unwrap();
        c.expect_close(1009);
    }

    fn frame_header_announcing_a_huge_payload_is_1009_without_waiting_for_it(backend) {
        let server = common::start_with(backend, |b| b.frame_bytes_max(1 << 20));
        let mut c = RawClient::connect(server.addr).unwrap();
        // Announce 1 GiB and send only the header: the server must not wait for (or buffer) it.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 30).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        c.send_raw(&header).unwrap();
        c.expect_close(1009);
    }

    fn fragmented_message_at_message_bytes_max_is_accepted(backend) {
        let server = common::start_with(backend, |b| b.frame_bytes_max(1 << 20).message_bytes_max(1000));
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(false, op::BINARY, &[1u8; 500]).unwrap();
        c.send_frame(true, op::CONT, &[1u8; 500]).unwrap();
        assert_eq!(c.read_message().unwrap(), (op::BINARY, vec![1u8; 1000]));
    }

    fn fragmented_message_past_message_bytes_max_is_1009(backend) {
        let server = common::start_with(backend, |b| b.frame_bytes_max(1 << 20).message_bytes_max(1000));
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(false, op::TEXT, &[b'a'; 400]).unwrap();
        c.send_frame(false, op::CONT, &[b'a'; 400]).unwrap();
        c.send_frame(true, op::CONT, &[b'a'; 201]).unwrap();
        c.expect_close(1009);
    }

    fn single_frame_past_message_bytes_max_is_1009(backend) {
        let server = common::start_with(backend, |b| b.frame_bytes_max(1 << 20).message_bytes_max(1000));
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_text(&"z".repeat(1001)).unwrap();
        c.expect_close(1009);
    }

    fn limits_leave_other_connections_alone(backend) {
        let server = common::start_with(backend, |b| b.frame_bytes_max(1000).message_bytes_max(1000));
        let mut good = RawClient::connect(server.addr).unwrap();
        let mut bad = RawClient::connect(server.addr).unwrap();
        bad.send_binary(&[0u8; 5000]).unwrap();
        bad.expect_close(1009);
        good.echo_text("unaffected");
    }
}
