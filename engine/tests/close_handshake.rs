//! The close handshake: client- and server-initiated, codes echoed, invalid close payloads
//! failed with 1002/1007, and the close deadline.

mod common;

use common::handlers::Event;
use common::raw::{close_payload, op, Ending, RawClient};
use std::time::Duration;

/// Client closes with `code`; the server answers a close frame carrying the same code and then
/// closes the TCP connection.
fn client_close_is_echoed(backend: percore::Backend, code: u16) {
    let server = common::start(backend);
    let mut c = RawClient::connect(server.addr).unwrap();
    c.send_close(code, "bye").unwrap();
    let f = c.read_frame().unwrap();
    assert_eq!(f.opcode, op::CLOSE);
    assert_eq!(f.close_code(), Some(code), "close code echoed");
    c.expect_eof();
    let (got, reason) = match server.wait_event("on_close", |e| matches!(e, Event::Closed(..))) {
        Event::Closed(_, got, reason) => (got, reason),
        _ => unreachable!(),
    };
    assert_eq!(got, Some(code), "on_close sees the client's code");
    assert_eq!(reason, "bye");
}

fn close_payload_is_rejected(backend: percore::Backend, payload: &[u8], code: u16) {
    let server = common::start(backend);
    let mut c = RawClient::connect(server.addr).unwrap();
    c.send_frame(true, op::CLOSE, payload).unwrap();
    c.expect_close(code);
}

every_backend! {
    fn client_close_1000_is_echoed_then_tcp_closed(backend) {
        client_close_is_echoed(backend, 1000);
    }

    fn client_close_with_application_codes_is_echoed(backend) {
        for code in [1001, 1003, 1007, 1008, 1011, 3000, 3999, 4000, 4999] {
            client_close_is_echoed(backend, code);
        }
    }

    fn empty_client_close_is_answered_with_an_empty_or_1000_close(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(true, op::CLOSE, b"").unwrap();
        let f = c.read_frame().unwrap();
        assert_eq!(f.opcode, op::CLOSE);
        assert!(matches!(f.close_code(), None | Some(1000)), "got {:?}", f.close_code());
        c.expect_eof();
    }

    fn messages_after_the_close_frame_are_not_echoed(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        let mut bytes = common::raw::encode_frame(true, 0, op::CLOSE, &close_payload(1000, b""), [1, 2, 3, 4]);
        bytes.extend(common::raw::encode_frame(true, 0, op::TEXT, b"too late", [1, 2, 3, 4]));
        let _ = c.send_raw(&bytes);
        let f = c.read_frame().unwrap();
        assert_eq!(f.opcode, op::CLOSE, "only the close reply, no echo");
        let rest = c.frames_until_eof();
        assert!(rest.is_empty(), "frames after the close reply: {rest:?}");
    }

    fn one_byte_close_payload_is_1002(backend) {
        close_payload_is_rejected(backend, &[0x03], 1002);
    }

    fn close_codes_not_allowed_on_the_wire_are_1002(backend) {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            close_payload_is_rejected(backend, &close_payload(code, b""), 1002);
        }
    }

    fn close_reason_with_invalid_utf8_is_1007(backend) {
        close_payload_is_rejected(backend, &close_payload(1000, &[b'o', b'k', 0xFF]), 1007);
    }

    fn handler_close_sends_code_and_reason_then_completes_on_reply(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_text("cmd:close:4001:done here").unwrap();
        let f = c.read_frame().unwrap();
        assert_eq!(f.opcode, op::CLOSE);
        assert_eq!(f.close_code(), Some(4001));
        assert_eq!(f.close_reason(), "done here");
        c.send_close(4001, "").unwrap();
        c.expect_eof();
        server.wait_event("on_close", |e| matches!(e, Event::Closed(..)));
    }

    fn handler_close_drops_tcp_at_the_close_timeout_without_a_reply(backend) {
        let server = common::start_with(backend, |b| b.close_timeout(Duration::from_millis(200)));
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_text("cmd:close:1000:bye").unwrap();
        let f = c.read_frame().unwrap();
        assert_eq!((f.opcode, f.close_code()), (op::CLOSE, Some(1000)));
        // Never answer: the server must give up on its own.
        c.expect_eof();
        common::wait_until("the close timeout is counted", || server.handle().stats().timeouts >= 1);
        let s = server.handle().stats();
        assert_eq!((s.timeouts_handshake, s.timeouts_pong, s.timeouts_close), (0, 0, s.timeouts), "{s:?}");
    }

    fn data_queued_before_handler_close_is_delivered_first(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_text("first").unwrap();
        c.send_text("cmd:close:1000:").unwrap();
        assert_eq!(c.read_message().unwrap(), (op::TEXT, b"first".to_vec()));
        assert_eq!(c.read_until_close(), Ending::Close(Some(1000)));
    }

    fn send_after_handler_close_is_refused_and_nothing_follows_the_close_frame(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_text("cmd:close-then-send").unwrap();
        match server.wait_event("send result", |e| matches!(e, Event::SendAfterClose(_))) {
            Event::SendAfterClose(r) => assert_eq!(r, Err(percore::SendError::Closed)),
            _ => unreachable!(),
        }
        let f = c.read_frame().unwrap();
        assert_eq!((f.opcode, f.close_code()), (op::CLOSE, Some(1000)));
        c.send_close(1000, "").unwrap();
        c.expect_eof();
    }

    fn client_data_after_a_server_close_is_not_echoed(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_text("cmd:close:1000:").unwrap();
        let f = c.read_frame().unwrap();
        assert_eq!(f.opcode, op::CLOSE);
        // Data sent before the client's close reply is discarded by the closing server.
        c.send_text("late").unwrap();
        c.send_close(1000, "").unwrap();
        let rest = c.frames_until_eof();
        assert!(rest.is_empty(), "frames after the server's close: {rest:?}");
    }

    fn max_length_close_reason_is_echoed_code(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_close(4002, &"r".repeat(123)).unwrap();
        let f = c.read_frame().unwrap();
        assert_eq!((f.opcode, f.close_code()), (op::CLOSE, Some(4002)));
        c.expect_eof();
    }

    fn handler_close_with_a_long_reason_sends_a_valid_control_frame(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        // 200 two-byte characters: the reason must be cut to fit 125 bytes, on a char boundary.
        c.send_text(&format!("cmd:close:4003:{}", "é".repeat(200))).unwrap();
        let f = c.read_frame().unwrap();
        assert_eq!((f.opcode, f.close_code()), (op::CLOSE, Some(4003)));
        assert!(f.payload.len() <= 125, "close payload of {} bytes", f.payload.len());
        assert!(std::str::from_utf8(&f.payload[2..]).is_ok(), "reason cut inside a character");
        assert!(f.payload.len() > 100, "reason dropped instead of truncated");
        c.send_close(4003, "").unwrap();
        c.expect_eof();
    }

    fn handler_close_with_a_reserved_code_never_puts_it_on_the_wire(backend) {
        for code in [1005u16, 1006, 1015] {
            let server = common::start(backend);
            let mut c = RawClient::connect(server.addr).unwrap();
            c.send_text(&format!("cmd:close:{code}:")).unwrap();
            match c.read_until_close() {
                Ending::Close(Some(sent)) => assert!(
                    matches!(sent, 1000..=1003 | 1007..=1014 | 3000..=4999),
                    "handler close({code}) sent {sent} on the wire"
                ),
                Ending::Close(None) | Ending::Eof => {}
            }
        }
    }

    fn close_frame_between_fragments_is_answered(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(false, op::TEXT, b"half a message").unwrap();
        c.send_close(1000, "").unwrap();
        let f = c.read_frame().unwrap();
        assert_eq!((f.opcode, f.close_code()), (op::CLOSE, Some(1000)));
        c.expect_eof();
    }

    fn tungstenite_close_handshake_completes(backend) {
        let server = common::start(backend);
        let mut ws = common::tungstenite_client(server.addr);
        ws.close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "done".into(),
        }))
        .unwrap();
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Close(Some(f))) => {
                    assert_eq!(u16::from(f.code), 1000);
                }
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("close handshake did not complete cleanly: {e}"),
            }
        }
    }
}
