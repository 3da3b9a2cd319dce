//! Pings are answered with pongs carrying the same payload; pongs need no answer; the handler
//! sees pings and can send its own.

mod common;

use common::handlers::Event;
use common::raw::{op, RawClient};
use tungstenite::Message;

every_backend! {
    fn ping_is_answered_with_a_pong_carrying_the_same_payload(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        for payload in [&b""[..], b"x", b"hello ping", &[0xAB; 125]] {
            c.send_frame(true, op::PING, payload).unwrap();
            let f = c.read_frame().unwrap();
            assert_eq!(f.opcode, op::PONG);
            assert!(f.fin);
            assert_eq!(f.payload, payload);
        }
    }

    fn ping_with_binary_payload_reaches_on_ping(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(true, op::PING, &[0, 255, 1, 254]).unwrap();
        assert_eq!(c.read_frame().unwrap().payload, vec![0, 255, 1, 254]);
        server.wait_event("on_ping", |e| *e == Event::Ping(vec![0, 255, 1, 254]));
    }

    fn unsolicited_pong_is_ignored(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_frame(true, op::PONG, b"nobody asked").unwrap();
        c.echo_text("after pong");
    }

    fn pongs_come_in_order_for_many_pings(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        for i in 0..100u32 {
            c.send_frame(true, op::PING, &i.to_be_bytes()).unwrap();
        }
        for i in 0..100u32 {
            let f = c.read_frame().unwrap();
            assert_eq!((f.opcode, f.payload), (op::PONG, i.to_be_bytes().to_vec()));
        }
    }

    fn handler_ping_reaches_the_client(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_text("cmd:ping:from-server").unwrap();
        let f = c.read_frame().unwrap();
        assert_eq!((f.opcode, f.payload.as_slice()), (op::PING, &b"from-server"[..]));
        c.send_frame(true, op::PONG, b"from-server").unwrap();
        c.echo_text("still open");
    }

    fn handler_ping_longer_than_125_bytes_is_cut_to_a_valid_control_frame(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect(server.addr).unwrap();
        c.send_text(&format!("cmd:ping:{}", "p".repeat(300))).unwrap();
        let f = c.read_frame().unwrap();
        assert_eq!(f.opcode, op::PING);
        assert_eq!(f.payload, vec![b'p'; 125]);
    }

    fn tungstenite_ping_gets_pong(backend) {
        let server = common::start(backend);
        let mut ws = common::tungstenite_client(server.addr);
        ws.send(Message::Ping(b"tung".to_vec())).unwrap();
        ws.send(Message::text("after")).unwrap();
        let mut got_pong = false;
        loop {
            match ws.read().unwrap() {
                Message::Pong(p) => {
                    assert_eq!(p, b"tung");
                    got_pong = true;
                }
                Message::Text(t) => {
                    assert_eq!(t.as_str(), "after");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(got_pong, "pong arrives before the echo sent after the ping");
    }
}
