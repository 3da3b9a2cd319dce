//! Plain HTTP requests on the WebSocket port: what counts as an upgrade attempt, what a plain
//! request must satisfy, and the response head. (The upgrade rules are in `proto/tests.rs`.)

use super::*;

fn parse(text: &str) -> Result<Option<(Request, usize)>, HandshakeError> {
    parse_request(text.as_bytes(), HEADER_BYTES_MAX_DEFAULT)
}

fn status_of(text: &str) -> u16 {
    match parse(text) {
        Ok(Some((r, _))) if r.is_upgrade() => 101,
        Ok(Some(_)) => 200,
        Ok(None) => 0,
        Err(e) => e.status,
    }
}

#[test]
fn plain_get_and_head_are_requests_not_upgrades() {
    let text = "GET /healthz?full=1 HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\nnext";
    let (req, n) = parse(text).unwrap().unwrap();
    assert_eq!(
        n,
        text.len() - 4,
        "what follows the head is not the request's"
    );
    assert!(!req.is_upgrade());
    assert_eq!(
        (req.method(), req.path(), req.query()),
        ("GET", "/healthz", Some("full=1"))
    );
    assert_eq!((req.host(), req.key()), ("a.example", ""));
    let (req, _) = parse("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(req.method(), "HEAD");
}

#[test]
fn any_sign_of_websocket_makes_an_upgrade_attempt_with_its_precise_errors() {
    // Upgrade token only, key only, version only: each is validated as a handshake.
    assert_eq!(
        status_of("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"),
        400
    );
    assert_eq!(
        status_of(
            "GET / HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
        400
    );
    assert_eq!(
        status_of("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"),
        426
    );
    assert_eq!(
        status_of("POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"),
        405
    );
    // Another protocol's upgrade is a plain request (the server may ignore Upgrade).
    assert_eq!(
        status_of("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"),
        200
    );
}

#[test]
fn plain_methods_other_than_get_and_head_are_405_with_allow() {
    for m in [
        "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "BREW",
    ] {
        let e = parse(&format!("{m} / HTTP/1.1\r\nHost: x\r\n\r\n")).unwrap_err();
        assert_eq!(e.status, 405, "{m}");
        let resp = String::from_utf8(e.response()).unwrap();
        assert!(resp.contains("\r\nAllow: GET, HEAD\r\n"), "{resp}");
    }
}

#[test]
fn plain_http_1_1_needs_one_host_and_http_1_0_may_leave_it_out() {
    assert_eq!(status_of("GET / HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status_of("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 400);
    assert_eq!(
        status_of("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        400
    );
    let (req, _) = parse("GET /healthz HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert_eq!((req.path(), req.host()), ("/healthz", ""));
    assert_eq!(
        status_of("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
        400
    );
}

#[test]
fn plain_request_bodies_are_refused_not_read() {
    let with = |h: &str| status_of(&format!("GET / HTTP/1.1\r\nHost: x\r\n{h}\r\n\r\n"));
    assert_eq!(with("Content-Length: 0"), 200);
    assert_eq!(with("Content-Length: 5"), 413);
    assert_eq!(with("Content-Length: 99999999999999999999999"), 400);
    assert_eq!(with("Content-Length: -1"), 400);
    assert_eq!(with("Content-Length: +5"), 400);
    assert_eq!(with("Content-Length: 5\r\nContent-Length: 6"), 400);
    assert_eq!(with("Content-Length: 5\r\nContent-Length: 5"), 413);
    assert_eq!(with("Transfer-Encoding: chunked"), 411);
    assert_eq!(with("Transfer-Encoding: chunked\r\nContent-Length: 0"), 400);
}

#[test]
fn plain_request_with_a_bad_target_is_400() {
    assert_eq!(status_of("GET * HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(
        status_of("GET example.com:80 HTTP/1.1\r\nHost: x\r\n\r\n"),
        400
    );
    let (req, _) = parse("GET http://x/a?b HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!((req.path(), req.query()), ("/a", Some("b")));
}

#[test]
fn response_head_sets_length_closes_and_drops_injected_headers() {
    let head = String::from_utf8(response_head(
        200,
        &[
            ("Content-Type", "application/json"),
            ("X-Bad", "a\r\nSet-Cookie: x"),
        ],
        Some(12),
    ))
    .unwrap();
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 12\r\n\
         Content-Type: application/json\r\n\r\n"
    );
    let head = String::from_utf8(response_head(304, &[], None)).unwrap();
    assert_eq!(
        head,
        "HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n"
    );
    let head = String::from_utf8(response_head(299, &[], Some(0))).unwrap();
    assert!(head.starts_with("HTTP/1.1 299 Success\r\n"), "{head}");
}
