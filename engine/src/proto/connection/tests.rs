//! The connection state machine without sockets: bytes and ticks in, events, bytes and
//! deadlines out.

use core::ops::ControlFlow;

use super::*;
use crate::proto::{
    client_request, encode_frame, parse_close_payload, Decoder, Event, Limits, MaskRng, Message,
    OpCode, Role, Settings,
};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const MASK: [u8; 4] = [1, 2, 3, 4];

/// Ticks: handshake 8, idle 10, pong 5, close 3.
fn endpoint() -> Endpoint {
    let s = Settings {
        handshake_timeout_ticks: 8,
        idle_timeout_ticks: 10,
        pong_timeout_ticks: 5,
        close_timeout_ticks: 3,
        ..Settings::default()
    };
    Endpoint::with_rng(s, MaskRng::from_seed([7; 32]))
}

fn request() -> Vec<u8> {
    client_request("example.com", "/chat", KEY, &[], &[])
}

/// A masked client frame.
fn cframe(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, op, true, payload, Some(MASK));
    v
}

/// An unmasked server frame.
fn sframe(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, op, true, payload, None);
    v
}

fn close_payload_of(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// What a connection handed out, owned.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Opened,
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Rtt(u32),
}

fn recv(
    c: &mut Connection,
    now: u32,
    ep: &mut Endpoint,
    out: &mut Vec<u8>,
    bytes: &[u8],
) -> (Received, Vec<Got>) {
    let mut buf = bytes.to_vec();
    let mut got = Vec::new();
    let r = c.handle_recv(now, ep, out, &mut buf, |ev, _link| {
        got.push(match ev {
            AppEvent::Opened => Got::Opened,
            AppEvent::Message(Message::Text(s)) => Got::Text(s.to_owned()),
            AppEvent::Message(Message::Binary(b)) => Got::Binary(b.to_vec()),
            AppEvent::Ping(p) => Got::Ping(p.to_vec()),
            AppEvent::Rtt { micros } => Got::Rtt(micros),
        })
    });
    (r, got)
}

/// Frames in `bytes` as a peer of `role` decodes them: (opcode, payload).
fn frames(role: Role, bytes: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
    let mut dec = Decoder::new(role, Limits::default());
    let mut buf = bytes.to_vec();
    let mut out = Vec::new();
    let used = dec
        .decode(&mut buf, |ev| {
            out.push(match ev {
                Event::Text(s) => (OpCode::Text, s.as_bytes().to_vec()),
                Event::Binary(b) => (OpCode::Binary, b.to_vec()),
                Event::Ping(p) => (OpCode::Ping, p.to_vec()),
                Event::Pong(p) => (OpCode::Pong, p.to_vec()),
                Event::Close(f) => (
                    OpCode::Close,
                    f.code
                        .map(|c| close_payload_of(c.0, f.reason))
                        .unwrap_or_default(),
                ),
                // Compressed messages (RSV1) only reach a decoder that allows them.
                _ => (OpCode::Continuation, Vec::new()),
            });
            ControlFlow::Continue(())
        })
        .expect("valid frames");
    assert_eq!(used, bytes.len(), "whole frames");
    out
}

/// A server connection opened at tick 0 (output cleared).
fn open_server(ep: &mut Endpoint) -> Connection {
    let mut c = Connection::server(0);
    let mut out = Vec::new();
    let (r, _) = recv(&mut c, 0, ep, &mut out, &request());
    let Received::Upgrade(req) = r else {
        panic!("expected an upgrade request, got {r:?}");
    };
    c.accept_upgrade(0, &mut out, &req, None, &[]);
    assert!(out.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(c.is_open());
    c
}

#[test]
fn connection_is_small() {
    // 48 + the box pointer of dedicated permessage-deflate state.
    assert!(
        core::mem::size_of::<Connection>() <= 56,
        "{}",
        core::mem::size_of::<Connection>()
    );
}

#[test]
fn upgrade_request_is_handed_out_and_frames_after_it_wait_for_the_answer() {
    let mut ep = endpoint();
    let mut c = Connection::server(0);
    let mut out = Vec::new();
    // The request in two parts, the second with a frame right behind it.
    let req = request();
    let (r, _) = recv(&mut c, 0, &mut ep, &mut out, &req[..10]);
    assert!(matches!(r, Received::Done));
    let mut rest = req[10..].to_vec();
    rest.extend_from_slice(&cframe(OpCode::Text, b"early"));
    let (r, got) = recv(&mut c, 1, &mut ep, &mut out, &rest);
    let Received::Upgrade(request) = r else {
        panic!("{r:?}");
    };
    assert_eq!(request.path(), "/chat");
    assert!(got.is_empty() && out.is_empty() && c.is_handshaking());
    c.accept_upgrade(2, &mut out, &request, None, &[("X-A", "1")]);
    assert!(out.ends_with(b"X-A: 1\r\n\r\n"));
    let (r, got) = recv(&mut c, 2, &mut ep, &mut out, &[]);
    assert!(matches!(r, Received::Done));
    assert_eq!(got, vec![Got::Text("early".into())]);
}

#[test]
fn handler_sends_from_inside_the_event_while_the_payload_is_borrowed() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    let mut buf = cframe(OpCode::Binary, b"echo me");
    let range = buf.as_ptr_range();
    c.handle_recv(1, &mut ep, &mut out, &mut buf, |ev, link| {
        let AppEvent::Message(msg) = ev else {
            panic!("{ev:?}");
        };
        // Zero copy: the payload lies in the receive buffer, unmasked in place.
        assert!(range.contains(&msg.as_bytes().as_ptr()));
        assert!(link.half.send_message(link.ep, link.out, msg));
    });
    assert_eq!(
        frames(Role::Client, &out),
        vec![(OpCode::Binary, b"echo me".to_vec())]
    );
}

#[test]
fn idle_connection_is_pinged_after_the_idle_timeout() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    assert_eq!(c.poll_timeout(&ep), Some(10));
    assert_eq!(c.handle_timeout(9, &mut ep, &mut out), Timeout::NotDue);
    ep.set_clock_us(0xDEAD_BEEF);
    assert_eq!(c.handle_timeout(10, &mut ep, &mut out), Timeout::Pinged);
    // The payload: the tick it was sent at and the fine clock, for the round trip.
    let payload = [0, 0, 0, 10, 0xDE, 0xAD, 0xBE, 0xEF].to_vec();
    assert_eq!(frames(Role::Client, &out), vec![(OpCode::Ping, payload)]);
    // Now the pong deadline runs.
    assert_eq!(c.poll_timeout(&ep), Some(15));
}

#[test]
fn pong_echoing_the_idle_ping_gives_the_round_trip_in_fine_clock_microseconds() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    // The fine clock wraps between ping and pong: the round trip does not care.
    ep.set_clock_us(u32::MAX - 99);
    assert_eq!(c.handle_timeout(10, &mut ep, &mut out), Timeout::Pinged);
    let ping = frames(Role::Client, &out).remove(0).1;
    out.clear();
    ep.set_clock_us(1_400);
    let (_, got) = recv(&mut c, 11, &mut ep, &mut out, &cframe(OpCode::Pong, &ping));
    assert_eq!(got, vec![Got::Rtt(1_500)]);
    // Only once: a second copy of the pong is no answer to an outstanding ping.
    let (_, got) = recv(&mut c, 11, &mut ep, &mut out, &cframe(OpCode::Pong, &ping));
    assert_eq!(got, vec![]);
    assert!(out.is_empty(), "pongs are not answered");
}

#[test]
fn pongs_that_do_not_echo_the_idle_ping_give_no_round_trip_but_prove_the_peer_alive() {
    let mut ep = endpoint();
    for pong in [
        &b""[..],
        b"unsolicited",
        &[0, 0, 0, 9, 0, 0, 0, 0],     // another tick
        &[0, 0, 0, 10, 0, 0, 0, 0, 0], // one byte too many
    ] {
        let mut c = open_server(&mut ep);
        let mut out = Vec::new();
        assert_eq!(c.handle_timeout(10, &mut ep, &mut out), Timeout::Pinged);
        let (_, got) = recv(&mut c, 12, &mut ep, &mut out, &cframe(OpCode::Pong, pong));
        assert_eq!(got, vec![], "{pong:?}");
        // Alive: the next ping is one idle timeout after the pong, not a pong timeout.
        assert_eq!(c.poll_timeout(&ep), Some(22), "{pong:?}");
    }
    // A pong that echoes a ping from before the connection's current one (none outstanding).
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    let (_, got) = recv(&mut c, 3, &mut ep, &mut out, &cframe(OpCode::Pong, &[0; 8]));
    assert_eq!(got, vec![]);
}

#[test]
fn input_moves_the_idle_deadline_instead_of_pinging() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    recv(&mut c, 6, &mut ep, &mut out, &cframe(OpCode::Text, b"hi"));
    // The wake-up scheduled for tick 10 finds the deadline moved to 16.
    assert_eq!(c.handle_timeout(10, &mut ep, &mut out), Timeout::NotDue);
    assert_eq!(c.poll_timeout(&ep), Some(16));
    assert!(out.is_empty());
}

#[test]
fn no_answer_to_the_idle_ping_ends_the_connection_with_1006() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    assert_eq!(c.handle_timeout(10, &mut ep, &mut out), Timeout::Pinged);
    assert_eq!(c.handle_timeout(14, &mut ep, &mut out), Timeout::NotDue);
    assert_eq!(c.handle_timeout(15, &mut ep, &mut out), Timeout::Expired);
    assert!(c.is_finished() && c.reports_close());
    assert_eq!(c.close_outcome(), (Some(CloseCode::ABNORMAL), ""));
}

#[test]
fn pong_restarts_the_idle_clock_at_once() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    c.handle_timeout(10, &mut ep, &mut out);
    recv(&mut c, 12, &mut ep, &mut out, &cframe(OpCode::Pong, b""));
    // The next ping is due one idle timeout after the pong, not at the pong deadline.
    assert_eq!(c.poll_timeout(&ep), Some(22));
    assert_eq!(c.handle_timeout(15, &mut ep, &mut out), Timeout::NotDue);
    assert_eq!(c.handle_timeout(22, &mut ep, &mut out), Timeout::Pinged);
}

#[test]
fn ping_from_the_peer_is_answered_and_handed_out() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    let (_, got) = recv(&mut c, 1, &mut ep, &mut out, &cframe(OpCode::Ping, b"p"));
    assert_eq!(got, vec![Got::Ping(b"p".to_vec())]);
    assert_eq!(
        frames(Role::Client, &out),
        vec![(OpCode::Pong, b"p".to_vec())]
    );
}

#[test]
fn peer_initiated_close_is_echoed_and_the_server_closes_first() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    let close = cframe(OpCode::Close, &close_payload_of(1000, "bye"));
    recv(&mut c, 2, &mut ep, &mut out, &close);
    assert_eq!(
        frames(Role::Client, &out),
        vec![(OpCode::Close, close_payload_of(1000, ""))]
    );
    assert!(c.is_flushing() && !c.can_send());
    // RFC 6455 §7.1.1: once its reply is out, the server closes TCP.
    assert_eq!(c.handle_flushed(), AfterFlush::Close);
    assert!(c.is_finished());
    assert_eq!(c.close_outcome(), (Some(CloseCode::NORMAL), "bye"));
}

#[test]
fn server_initiated_close_waits_for_the_reply_then_closes() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    c.send_half()
        .close(4, &mut ep, &mut out, CloseCode::GOING_AWAY, "shutdown");
    let sent = frames(Role::Client, &out);
    assert_eq!(
        sent,
        vec![(OpCode::Close, close_payload_of(1001, "shutdown"))]
    );
    assert!(!c.can_send() && c.is_open());
    assert_eq!(c.poll_timeout(&ep), Some(7), "close deadline");
    // Data still arriving is not handed out.
    let (_, got) = recv(&mut c, 5, &mut ep, &mut out, &cframe(OpCode::Text, b"late"));
    assert!(got.is_empty());
    out.clear();
    let reply = cframe(OpCode::Close, &close_payload_of(1001, ""));
    recv(&mut c, 6, &mut ep, &mut out, &reply);
    assert!(out.is_empty(), "no second close frame");
    assert_eq!(c.handle_flushed(), AfterFlush::Close);
    assert_eq!(c.close_outcome(), (Some(CloseCode::GOING_AWAY), ""));
}

#[test]
fn a_shared_close_queues_the_same_frame_and_state_as_close() {
    let shared = crate::proto::SharedClose::new(CloseCode::GOING_AWAY, "server shutting down");
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    c.send_half().close_shared(4, &mut ep, &mut out, &shared);
    assert_eq!(out, &shared.frame()[..]);
    assert_eq!(
        frames(Role::Client, &out),
        vec![(
            OpCode::Close,
            close_payload_of(1001, "server shutting down")
        )]
    );
    assert!(!c.can_send() && c.is_open());
    assert_eq!(c.poll_timeout(&ep), Some(7), "close deadline");
    out.clear();
    c.send_half().close_shared(5, &mut ep, &mut out, &shared);
    assert!(out.is_empty(), "no second close frame");
    recv(
        &mut c,
        6,
        &mut ep,
        &mut out,
        &cframe(OpCode::Close, &close_payload_of(1001, "")),
    );
    assert_eq!(c.handle_flushed(), AfterFlush::Close);
    assert_eq!(c.close_outcome(), (Some(CloseCode::GOING_AWAY), ""));
}

#[test]
fn unanswered_close_ends_at_the_close_timeout_with_1006() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    c.send_half()
        .close(4, &mut ep, &mut out, CloseCode::NORMAL, "");
    assert_eq!(c.handle_timeout(6, &mut ep, &mut out), Timeout::NotDue);
    assert_eq!(c.handle_timeout(7, &mut ep, &mut out), Timeout::Expired);
    assert_eq!(c.close_outcome(), (Some(CloseCode::ABNORMAL), ""));
}

#[test]
fn protocol_error_fails_with_its_code_and_lingers() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    // A client frame must be masked.
    let (r, got) = recv(&mut c, 3, &mut ep, &mut out, &sframe(OpCode::Text, b"x"));
    let Received::Failed(e) = r else {
        panic!("{r:?}");
    };
    assert_eq!(e.code, CloseCode::PROTOCOL_ERROR);
    assert!(got.is_empty());
    let sent = frames(Role::Client, &out);
    assert_eq!(sent[0].0, OpCode::Close);
    assert_eq!(
        parse_close_payload(&sent[0].1).unwrap().code,
        Some(CloseCode::PROTOCOL_ERROR)
    );
    // Half-close so the peer reads the close frame; the close timeout bounds the linger.
    assert_eq!(c.handle_flushed(), AfterFlush::ShutdownWrite);
    assert_eq!(c.poll_timeout(&ep), Some(6));
    // Input while lingering is discarded; the peer's EOF ends it normally.
    let (_, got) = recv(&mut c, 4, &mut ep, &mut out, &cframe(OpCode::Text, b"x"));
    assert!(got.is_empty());
    c.handle_eof();
    assert!(c.is_finished());
    assert_eq!(c.close_outcome().0, Some(CloseCode::PROTOCOL_ERROR));
}

#[test]
fn linger_ends_at_the_close_timeout_keeping_the_close_code() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    c.send_half()
        .fail(2, &mut ep, &mut out, CloseCode::POLICY_VIOLATION, "full");
    assert_eq!(c.handle_flushed(), AfterFlush::ShutdownWrite);
    assert_eq!(c.handle_timeout(5, &mut ep, &mut out), Timeout::Expired);
    assert_eq!(
        c.close_outcome(),
        (Some(CloseCode::POLICY_VIOLATION), "full")
    );
}

#[test]
fn handshake_timeout_ends_a_connection_that_never_upgrades() {
    let mut ep = endpoint();
    let mut c = Connection::server(0);
    let mut out = Vec::new();
    recv(&mut c, 3, &mut ep, &mut out, b"GET / HTTP/1.1\r\n");
    assert_eq!(c.poll_timeout(&ep), Some(8));
    assert_eq!(c.handle_timeout(7, &mut ep, &mut out), Timeout::NotDue);
    assert_eq!(c.handle_timeout(8, &mut ep, &mut out), Timeout::Expired);
    assert!(c.is_finished() && !c.reports_close() && out.is_empty());
}

#[test]
fn handshake_timeout_also_bounds_a_pending_answer() {
    let mut ep = endpoint();
    let mut c = Connection::server(0);
    let mut out = Vec::new();
    let (r, _) = recv(&mut c, 1, &mut ep, &mut out, &request());
    assert!(matches!(r, Received::Upgrade(_)));
    assert_eq!(c.handle_timeout(8, &mut ep, &mut out), Timeout::Expired);
}

#[test]
fn malformed_request_gets_its_http_error_then_lingers() {
    let mut ep = endpoint();
    let mut c = Connection::server(0);
    let mut out = Vec::new();
    let (r, _) = recv(
        &mut c,
        1,
        &mut ep,
        &mut out,
        b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let Received::Refused(e) = r else {
        panic!("{r:?}");
    };
    assert_eq!(e.status, 405);
    assert!(out.starts_with(b"HTTP/1.1 405 "));
    assert_eq!(c.handle_flushed(), AfterFlush::ShutdownWrite);
}

#[test]
fn rejected_upgrade_sends_the_status_and_ends() {
    let mut ep = endpoint();
    let mut c = Connection::server(0);
    let mut out = Vec::new();
    let (_, _) = recv(&mut c, 1, &mut ep, &mut out, &request());
    c.reject_upgrade(1, &mut out, 403, &[], "no");
    assert!(out.starts_with(b"HTTP/1.1 403 Forbidden\r\n"));
    assert_eq!(c.handle_flushed(), AfterFlush::ShutdownWrite);
    assert!(!c.reports_close());
}

/// The server's 101 for the request a client connection queued.
fn answer(request: &[u8]) -> Vec<u8> {
    let (req, _) = crate::proto::parse_request(request, 8192).unwrap().unwrap();
    crate::proto::accept_response(&req, None, &[])
}

#[test]
fn client_handshake_opens_then_frames_flow_masked() {
    let mut ep = endpoint();
    let mut out = Vec::new();
    let key = crate::proto::generate_key();
    let req = client_request("h", "/", &key, &[], &[]);
    let mut c = Connection::client(0, &mut out, &key, &req);
    assert_eq!(out, req);
    out.clear();
    let mut bytes = answer(&req);
    bytes.extend_from_slice(&sframe(OpCode::Text, b"welcome"));
    let (r, got) = recv(&mut c, 1, &mut ep, &mut out, &bytes);
    assert!(matches!(r, Received::Done));
    assert_eq!(got, vec![Got::Opened, Got::Text("welcome".into())]);
    assert!(c
        .send_half()
        .send_message(&mut ep, &mut out, Message::Text("hi")));
    // Masked with a key from the endpoint's RNG: a server decodes it.
    assert_eq!(
        frames(Role::Server, &out),
        vec![(OpCode::Text, b"hi".to_vec())]
    );
    let (a, b) = (ep.mask(), ep.mask());
    assert_ne!(a, b, "fresh keys");
}

#[test]
fn client_half_closes_after_the_close_handshake_and_waits_for_the_server() {
    let mut ep = endpoint();
    let mut out = Vec::new();
    let req = client_request("h", "/", KEY, &[], &[]);
    let mut c = Connection::client(0, &mut out, KEY, &req);
    recv(&mut c, 1, &mut ep, &mut out, &answer(&req));
    out.clear();
    recv(
        &mut c,
        2,
        &mut ep,
        &mut out,
        &sframe(OpCode::Close, &close_payload_of(1000, "")),
    );
    assert_eq!(frames(Role::Server, &out)[0].0, OpCode::Close);
    assert_eq!(c.handle_flushed(), AfterFlush::ShutdownWrite);
    c.handle_eof();
    assert_eq!(c.close_outcome(), (Some(CloseCode::NORMAL), ""));
}

#[test]
fn client_handshake_that_never_completes_is_reported() {
    let mut ep = endpoint();
    let mut out = Vec::new();
    let mut c = Connection::client(0, &mut out, KEY, b"GET / HTTP/1.1\r\n\r\n");
    assert!(c.reports_close());
    assert_eq!(c.handle_timeout(8, &mut ep, &mut out), Timeout::Expired);
    assert_eq!(
        c.close_outcome(),
        (Some(CloseCode::ABNORMAL), "handshake did not complete")
    );
    // A refused one says why.
    let mut c = Connection::client(0, &mut out, KEY, b"");
    let (r, _) = recv(
        &mut c,
        1,
        &mut ep,
        &mut out,
        b"HTTP/1.1 403 Forbidden\r\n\r\n",
    );
    assert!(matches!(r, Received::Refused(_)) && c.is_finished());
    assert_eq!(
        c.close_outcome().1,
        "handshake failed: 403 server did not switch protocols"
    );
}

#[test]
fn plain_request_is_handed_out_answered_once_and_what_follows_is_never_read() {
    let mut ep = endpoint();
    let mut c = Connection::server(0);
    let mut out = Vec::new();
    let two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /again HTTP/1.1\r\nHost: x\r\n\r\n";
    let (r, _) = recv(&mut c, 0, &mut ep, &mut out, &two[..20]);
    assert!(matches!(r, Received::Done));
    let (r, got) = recv(&mut c, 1, &mut ep, &mut out, &two[20..]);
    let Received::Request(req) = r else {
        panic!("expected a plain request, got {r:?}");
    };
    assert_eq!((req.method(), req.path()), ("GET", "/healthz"));
    assert!(got.is_empty() && out.is_empty() && c.is_handshaking() && !c.is_upgrading());
    // Not an upgrade: accepting or rejecting it as one does nothing.
    c.accept_upgrade(1, &mut out, &req, None, &[]);
    c.reject_upgrade(1, &mut out, 403, &[], "no");
    assert!(out.is_empty());
    // More bytes while the answer is pending are dropped, not parsed.
    let (r, _) = recv(&mut c, 1, &mut ep, &mut out, b"GET /third HTTP/1.1\r\n\r\n");
    assert!(matches!(r, Received::Done) && c.held_bytes() == 0);
    c.respond(2, &mut out, b"HTTP/1.1 200 OK\r\n\r\n", b"ok");
    assert_eq!(out, b"HTTP/1.1 200 OK\r\n\r\nok");
    c.respond(2, &mut out, b"again", b"");
    assert_eq!(out.len(), 21, "one answer only");
    assert!(c.is_flushing());
    // Then the transport half-closes and lingers, like after a refused handshake.
    assert_eq!(c.handle_flushed(), AfterFlush::ShutdownWrite);
    let (r, _) = recv(&mut c, 3, &mut ep, &mut out, b"late bytes");
    assert!(matches!(r, Received::Done) && out.len() == 21);
    assert_eq!(
        c.poll_timeout(&ep),
        Some(2 + 3),
        "the close timeout bounds the linger"
    );
}

#[test]
fn plain_request_waiting_for_its_answer_expires_at_the_handshake_deadline() {
    let mut ep = endpoint();
    let mut c = Connection::server(0);
    let mut out = Vec::new();
    let (r, _) = recv(
        &mut c,
        2,
        &mut ep,
        &mut out,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(matches!(r, Received::Request(_)));
    assert_eq!(
        c.poll_timeout(&ep),
        Some(8),
        "from the accept, not from the request"
    );
    assert_eq!(c.handle_timeout(8, &mut ep, &mut out), Timeout::Expired);
    assert!(c.is_finished() && out.is_empty() && !c.reports_close());
}

/// [`recv`] with a budget of `frames` frames.
fn recv_budgeted(
    c: &mut Connection,
    ep: &mut Endpoint,
    out: &mut Vec<u8>,
    bytes: &[u8],
    frames: u32,
) -> (u32, Vec<Got>) {
    let mut buf = bytes.to_vec();
    let mut got = Vec::new();
    let mut left = frames;
    let r = c.handle_recv_budgeted(1, ep, out, &mut buf, &mut left, |ev, _link| {
        got.push(match ev {
            AppEvent::Message(Message::Binary(b)) => Got::Binary(b.to_vec()),
            AppEvent::Message(Message::Text(s)) => Got::Text(s.to_owned()),
            AppEvent::Ping(p) => Got::Ping(p.to_vec()),
            AppEvent::Opened => Got::Opened,
            AppEvent::Rtt { micros } => Got::Rtt(micros),
        })
    });
    assert!(matches!(r, Received::Done), "{r:?}");
    (left, got)
}

#[test]
fn a_spent_frame_budget_holds_the_rest_in_order_until_the_next_call() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    // Ten pings and a text message split in two fragments, the last fragment cut short.
    let mut bytes = Vec::new();
    for i in 0..10u8 {
        bytes.extend_from_slice(&cframe(OpCode::Ping, &[i]));
    }
    let mut frag = Vec::new();
    encode_frame(&mut frag, OpCode::Text, false, b"hel", Some(MASK));
    encode_frame(&mut frag, OpCode::Continuation, true, b"lo", Some(MASK));
    bytes.extend_from_slice(&frag[..frag.len() - 1]);
    let (left, got) = recv_budgeted(&mut c, &mut ep, &mut out, &bytes, 4);
    assert_eq!(left, 0);
    assert_eq!(got, (0..4).map(|i| Got::Ping(vec![i])).collect::<Vec<_>>());
    assert!(c.has_held_frames());
    // Bytes that arrive while the budget is spent go behind the held ones, undecoded.
    let (left, got) = recv_budgeted(&mut c, &mut ep, &mut out, &frag[frag.len() - 1..], 0);
    assert_eq!((left, got.len()), (0, 0));
    let (left, got) = recv_budgeted(&mut c, &mut ep, &mut out, &[], 4);
    assert_eq!(left, 0);
    assert_eq!(got, (4..8).map(|i| Got::Ping(vec![i])).collect::<Vec<_>>());
    let (left, got) = recv_budgeted(&mut c, &mut ep, &mut out, &[], 100);
    assert_eq!(left, 100 - 4, "two pings and two fragments");
    assert_eq!(
        got,
        vec![
            Got::Ping(vec![8]),
            Got::Ping(vec![9]),
            Got::Text("hello".into())
        ]
    );
    assert!(!c.has_held_frames());
    // Every ping was answered, in order.
    let pongs: Vec<_> = frames(Role::Client, &out);
    assert_eq!(
        pongs,
        (0..10u8)
            .map(|i| (OpCode::Pong, vec![i]))
            .collect::<Vec<_>>()
    );
    assert_eq!(c.heap_bytes(), 0, "nothing held once all is decoded");
}

#[test]
fn a_budget_counts_every_frame_of_a_one_byte_fragment_flood() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    let mut bytes = Vec::new();
    encode_frame(&mut bytes, OpCode::Binary, false, b"a", Some(MASK));
    for _ in 0..998 {
        encode_frame(&mut bytes, OpCode::Continuation, false, b"b", Some(MASK));
    }
    encode_frame(&mut bytes, OpCode::Continuation, true, b"c", Some(MASK));
    let mut calls = 0;
    let mut got = Vec::new();
    let mut input = bytes;
    loop {
        let (left, g) = recv_budgeted(&mut c, &mut ep, &mut out, &input, 64);
        input.clear();
        calls += 1;
        got.extend(g);
        if left > 0 {
            break;
        }
    }
    assert_eq!(calls, 1000 / 64 + 1, "64 frames per call");
    assert_eq!(got.len(), 1);
    let want = [b"a".to_vec(), b"b".repeat(998), b"c".to_vec()].concat();
    assert_eq!(got[0], Got::Binary(want));
}

#[test]
fn a_large_split_message_is_assembled_in_a_pooled_buffer_that_is_reused() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let frame = cframe(OpCode::Binary, &payload);
    let (mut addr, mut pooled) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let mut got = Vec::new();
        let mut came = 0;
        for chunk in frame.chunks(16 << 10) {
            let mut buf = chunk.to_vec();
            came += buf.len();
            c.handle_recv(1, &mut ep, &mut out, &mut buf, |ev, _| {
                if let AppEvent::Message(Message::Binary(b)) = ev {
                    got.push((b.as_ptr() as usize, b.to_vec()));
                }
            });
            // Never more than the frame (rounded to a power of two) nor four times what came
            // (rounded likewise, at least a pooled buffer's size).
            let most = (4 * came).next_power_of_two().max(64 << 10);
            assert!(c.heap_bytes() <= (512 << 10) + 1024, "{}", c.heap_bytes());
            assert!(
                c.heap_bytes() <= most + 1024,
                "{} after {came}",
                c.heap_bytes()
            );
        }
        assert_eq!(got.len(), 1);
        assert!(got[0].1 == payload);
        addr.push(got[0].0);
        // Delivered: the buffer went back to the pool, the connection holds nothing.
        assert_eq!(c.heap_bytes(), 0);
        pooled.push(ep.pool().bytes());
    }
    assert!(pooled[0] >= 512 << 10, "{pooled:?}");
    assert_eq!(
        pooled[0], pooled[1],
        "nothing new was allocated for the second message"
    );
    assert_eq!(
        addr[0], addr[1],
        "the second message reused the first one's buffer"
    );
}

#[test]
fn a_finished_connection_gives_its_partial_message_buffer_to_the_pool() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    let frame = cframe(OpCode::Binary, &vec![7u8; 128 << 10]);
    let (_, got) = recv(&mut c, 1, &mut ep, &mut out, &frame[..(64 << 10) + 100]);
    assert!(got.is_empty());
    assert!(c.heap_bytes() >= 64 << 10);
    c.handle_eof();
    c.release_buffers(&mut ep);
    assert_eq!(c.heap_bytes(), 0);
    assert_eq!(ep.pool().bytes(), 128 << 10);
}

/// Pings per tick (index: tick, 0..=`ticks`) when `n` connections, opened in the same tick,
/// sit idle and answer every ping at once, and the tick of each connection's first ping.
fn pings_per_tick(jitter: u32, n: usize, ticks: u32) -> (Vec<usize>, Vec<u32>) {
    let s = Settings {
        idle_timeout_ticks: 100,
        idle_jitter_ticks: jitter,
        pong_timeout_ticks: 50,
        ..Settings::default()
    };
    let mut ep = Endpoint::with_rng(s, MaskRng::from_seed([9; 32]));
    let mut conns: Vec<Connection> = (0..n).map(|_| open_server(&mut ep)).collect();
    let mut per_tick = vec![0; ticks as usize + 1];
    let mut first = vec![0; n];
    let mut out = Vec::new();
    for now in 1..=ticks {
        for (c, first) in conns.iter_mut().zip(&mut first) {
            // What a timer wheel does: wake the connection at its deadline's tick.
            if c.poll_timeout(&ep).is_some_and(|at| at <= now)
                && c.handle_timeout(now, &mut ep, &mut out) == Timeout::Pinged
            {
                per_tick[now as usize] += 1;
                if *first == 0 {
                    *first = now;
                }
                // The pong comes back in the same tick.
                recv(c, now, &mut ep, &mut out, &cframe(OpCode::Pong, b""));
            }
            out.clear();
        }
    }
    (per_tick, first)
}

#[test]
fn idle_pings_of_a_burst_of_connections_spread_over_the_jitter() {
    // Without jitter, 2000 connections opened in one tick ping in one tick, every time.
    let (burst, _) = pings_per_tick(0, 2000, 250);
    assert_eq!(burst[100], 2000);
    assert_eq!(burst[200], 2000);
    assert_eq!(burst.iter().filter(|&&p| p > 0).count(), 2);
    // With 50 ticks of jitter the first round spreads over ticks 50..=100 (~39 per tick)
    // and every connection is still pinged once per round.
    let (spread, first) = pings_per_tick(50, 2000, 250);
    assert!(
        first.iter().all(|&t| (50..=100).contains(&t)),
        "first pings in 50..=100"
    );
    assert!(
        spread[..50].iter().all(|&p| p == 0),
        "no ping before 100 - 50"
    );
    let most = *spread.iter().max().unwrap();
    assert!(most <= 90, "at most {most} pings in one tick");
    // Later rounds spread further (the sum of two draws), never bunching up again.
    assert!(spread[101..].iter().all(|&p| p <= 90));
    assert!(spread.iter().sum::<usize>() >= 4000);
}

/// [`Connection::handle_recv_keeping`] over `bytes`: what was kept and the events.
fn recv_keeping(
    c: &mut Connection,
    ep: &mut Endpoint,
    out: &mut Vec<u8>,
    bytes: &[u8],
    keep_max: usize,
) -> (usize, Vec<Got>) {
    let mut buf = bytes.to_vec();
    let mut got = Vec::new();
    let mut left = u32::MAX;
    let (r, kept) = c.handle_recv_keeping(1, ep, out, &mut buf, &mut left, keep_max, |ev, _| {
        if let AppEvent::Message(m) = ev {
            got.push(Got::Binary(m.as_bytes().to_vec()));
        }
    });
    assert!(matches!(r, Received::Done), "{r:?}");
    (kept, got)
}

#[test]
fn a_split_message_that_fits_keep_max_is_kept_whole_and_one_that_does_not_is_assembled() {
    let mut ep = endpoint();
    let mut c = open_server(&mut ep);
    let mut out = Vec::new();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let frame = cframe(OpCode::Binary, &big);
    let mut bytes = cframe(OpCode::Binary, b"first");
    bytes.extend_from_slice(&frame[..5000]);
    // Fits: the whole message after the first is left for the caller, header and all.
    let (kept, got) = recv_keeping(&mut c, &mut ep, &mut out, &bytes, frame.len());
    assert_eq!((kept, got), (5000, vec![Got::Binary(b"first".to_vec())]));
    assert!(
        !c.has_held_frames() && c.held_bytes() == 0,
        "nothing held or copied"
    );
    // Presented again with the rest: handed out whole.
    let (kept, got) = recv_keeping(&mut c, &mut ep, &mut out, &frame, frame.len());
    assert_eq!((kept, got), (0, vec![Got::Binary(big.clone())]));
    // One byte short of fitting: assembled as before (nothing kept).
    let (kept, got) = recv_keeping(&mut c, &mut ep, &mut out, &frame[..5000], frame.len() - 1);
    assert_eq!((kept, got.len()), (0, 0));
    let (kept, got) = recv_keeping(&mut c, &mut ep, &mut out, &frame[5000..], frame.len() - 1);
    assert_eq!((kept, got), (0, vec![Got::Binary(big.clone())]));
    // A cut header is kept when the caller can, held when it cannot.
    let (kept, _) = recv_keeping(&mut c, &mut ep, &mut out, &frame[..3], 64);
    assert_eq!(kept, 3);
    let (kept, _) = recv_keeping(&mut c, &mut ep, &mut out, &frame[..3], 0);
    assert_eq!(kept, 0);
    assert!(c.has_held_frames());
    let (kept, got) = recv_keeping(&mut c, &mut ep, &mut out, &frame[3..], 0);
    assert_eq!((kept, got), (0, vec![Got::Binary(big)]));
}

/// An output that records each frame and whether it came as a reference to a shared frame.
#[derive(Default)]
struct Recorded {
    frames: Vec<Vec<u8>>,
    shared: Vec<Option<std::sync::Arc<[u8]>>>,
}

impl Output for Recorded {
    fn push_frame(&mut self, len_max: usize, encode: impl FnOnce(&mut Vec<u8>)) {
        let mut v = Vec::with_capacity(len_max);
        encode(&mut v);
        self.frames.push(v);
        self.shared.push(None);
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        self.frames.push(bytes.to_vec());
        self.shared.push(None);
    }

    fn push_shared(&mut self, frame: &std::sync::Arc<[u8]>) {
        self.frames.push(frame.to_vec());
        self.shared.push(Some(frame.clone()));
    }
}

#[test]
fn idle_pings_of_one_tick_share_one_frame_and_their_pongs_still_count() {
    let mut ep = endpoint();
    let mut conns: Vec<Connection> = (0..100).map(|_| open_server(&mut ep)).collect();
    ep.set_clock_us(1234);
    let mut out = Recorded::default();
    for c in &mut conns {
        assert_eq!(c.handle_timeout(10, &mut ep, &mut out), Timeout::Pinged);
    }
    // One encoded frame for the tick: every queue holds a reference to it, none a copy.
    let first = out.shared[0]
        .clone()
        .expect("the ping is the shard's shared frame");
    assert!(out.shared.iter().all(|s| s
        .as_ref()
        .is_some_and(|s| std::sync::Arc::ptr_eq(s, &first))));
    let mut want = 10u32.to_be_bytes().to_vec();
    want.extend_from_slice(&1234u32.to_be_bytes());
    assert_eq!(&first[..], &sframe(OpCode::Ping, &want)[..]);
    // The next tick encodes a new frame (its payload names the tick).
    let mut c = open_server(&mut ep);
    let mut later = Recorded::default();
    assert_eq!(c.handle_timeout(11, &mut ep, &mut later), Timeout::Pinged);
    let second = later.shared[0].clone().unwrap();
    assert!(!std::sync::Arc::ptr_eq(&first, &second));
    // The pong that gives the payload back is the answer to the ping: a round trip, and the
    // connection is no longer waiting for a pong.
    ep.set_clock_us(1334);
    let mut rtt = None;
    let mut sink = Vec::new();
    let mut pong = cframe(OpCode::Pong, &want);
    let _ = conns[0].handle_recv(11, &mut ep, &mut sink, &mut pong, |ev, _| {
        if let AppEvent::Rtt { micros } = ev {
            rtt = Some(micros);
        }
    });
    assert_eq!(rtt, Some(100));
    assert_eq!(conns[0].deadline_kind(&ep), Some(Deadline::Idle));
}

#[test]
fn an_empty_ping_is_answered_with_the_shared_empty_pong_and_others_with_their_own() {
    let mut ep = endpoint();
    let mut a = open_server(&mut ep);
    let mut b = open_server(&mut ep);
    let mut out = Recorded::default();
    let mut input = cframe(OpCode::Ping, b"");
    input.extend_from_slice(&cframe(OpCode::Ping, b"hi"));
    let _ = a.handle_recv(1, &mut ep, &mut out, &mut input, |_, _| {});
    let mut empty = cframe(OpCode::Ping, b"");
    let _ = b.handle_recv(1, &mut ep, &mut out, &mut empty, |_, _| {});
    assert_eq!(out.frames[0], sframe(OpCode::Pong, b""));
    assert_eq!(out.frames[1], sframe(OpCode::Pong, b"hi"));
    assert_eq!(out.frames[2], sframe(OpCode::Pong, b""));
    let (x, y) = (
        out.shared[0].as_ref().unwrap(),
        out.shared[2].as_ref().unwrap(),
    );
    assert!(std::sync::Arc::ptr_eq(x, y));
    assert!(
        out.shared[1].is_none(),
        "a payload is echoed in a frame of its own"
    );
}
