//! Plain HTTP on the WebSocket port: `GET` and `HEAD` answered by `on_request` (status,
//! headers, body; `HEAD` without the body), the default 404, the response size limit, the
//! connection closed after each answer (a pipelined second request unanswered), request bodies
//! and other methods refused, and WebSockets unaffected on the same port.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{http_exchange, read_response_head, HttpResponse, RawClient};
use percore::{Conn, Handler, HttpContext, Message, Request, Response};

const PAGE: &str = "<!doctype html><title>percore</title><p>hello</p>\n";

/// Echo for WebSockets; plain HTTP: `/hello`, `/page` (a static body), `/context`, `/size/N`
/// (N bytes), `/empty` (204), `/boom` (panics); anything else 404.
struct Site;

impl Handler for Site {
    type State = ();

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }

    fn on_request(&mut self, req: &Request, cx: &HttpContext<'_>) -> Response {
        match req.path() {
            "/hello" => Response::text(200, "hello\n").header("X-Test", "yes"),
            "/page" => Response::html(200, PAGE),
            "/context" => Response::text(
                200,
                format!(
                    "shards={} shard={} peer={} method={} query={:?}",
                    cx.shards(),
                    cx.shard() < cx.shards(),
                    cx.peer_addr().ip(),
                    req.method(),
                    req.query()
                ),
            ),
            "/empty" => Response::new(204),
            "/boom" => panic!("request bug (a test panics here on purpose)"),
            p => match p.strip_prefix("/size/").and_then(|n| n.parse().ok()) {
                Some(n) => Response::with_body(200, "application/octet-stream", vec![b'x'; n]),
                None => Response::not_found(),
            },
        }
    }
}

fn get(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
    http_exchange(addr, req.as_bytes()).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn site(backend: percore::Backend) -> percore::ServerHandle {
    common::start_app(backend, |b| b, |_| Site)
}

every_backend! {
    fn get_is_answered_with_the_handlers_status_headers_and_body(backend) {
        let server = site(backend);
        let addr = common::addr_of(&server);
        let r = get(addr, "GET", "/hello");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.header("x-test"), Some("yes"));
        assert_eq!(r.header("content-length"), Some("6"));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")), "{r:?}");
        assert_eq!(r.body, b"hello\n");
        let r = get(addr, "GET", "/page");
        assert_eq!((r.status, r.body.as_slice()), (200, PAGE.as_bytes()));
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let r = get(addr, "GET", "/context?x=1");
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            "shards=2 shard=true peer=127.0.0.1 method=GET query=Some(\"x=1\")"
        );
        let r = get(addr, "GET", "/empty");
        assert_eq!((r.status, r.header("content-length"), r.body.len()), (204, None, 0));
        common::wait_until("plain requests counted, their connections gone", || {
            let s = server.stats();
            s.http_requests == 4 && s.connections_open == 0 && s.upgraded == 0
        });
    }

    fn head_gets_the_get_head_with_its_length_and_no_body(backend) {
        let server = site(backend);
        let get_r = get(common::addr_of(&server), "GET", "/size/1000");
        let head_r = get(common::addr_of(&server), "HEAD", "/size/1000");
        assert_eq!(head_r.status, 200);
        assert_eq!(head_r.header("content-length"), Some("1000"));
        assert!(head_r.body.is_empty(), "HEAD must not carry a body: {} bytes", head_r.body.len());
        let strip = |r: &HttpResponse| {
            r.headers.iter().filter(|(n, _)| n != "date").cloned().collect::<Vec<_>>()
        };
        assert_eq!(strip(&head_r), strip(&get_r));
        assert_eq!(get_r.body.len(), 1000);
    }

    fn default_on_request_answers_404_and_websockets_still_upgrade(backend) {
        let server = common::start(backend);
        let r = get(server.addr, "GET", "/");
        assert_eq!(r.status, 404, "{r:?}");
        assert_eq!(get(server.addr, "HEAD", "/anything").status, 404);
        RawClient::connect(server.addr).unwrap().echo_text("same port");
    }

    fn response_of_exactly_the_limit_is_sent_and_one_byte_more_gets_500(backend) {
        // The head's size does not depend on the body's for 100 and 101 bytes (3 digits each).
        let probe = site(backend);
        let head_len = {
            let mut s = common::raw::connect(common::addr_of(&probe)).unwrap();
            s.set_read_timeout(Some(common::WAIT)).unwrap();
            s.write_all(b"GET /size/100 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all.len() - 100
        };
        let limit = head_len + 100;
        let server = common::start_app(backend, |b| b.http_response_bytes_max(limit), |_| Site);
        let r = get(common::addr_of(&server), "GET", "/size/100");
        assert_eq!((r.status, r.body.len()), (200, 100), "exactly {limit} bytes");
        let r = get(common::addr_of(&server), "GET", "/size/101");
        assert_eq!(r.status, 500, "one byte past {limit}: {r:?}");
        assert_eq!(r.body, b"response too large\n");
        assert_eq!(get(common::addr_of(&server), "HEAD", "/size/101").status, 500);
    }

    fn connection_closes_after_the_answer_and_a_pipelined_request_is_not_answered(backend) {
        let server = site(backend);
        let mut s = common::raw::connect(common::addr_of(&server)).unwrap();
        s.set_read_timeout(Some(common::WAIT)).unwrap();
        s.write_all(
            b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n\
              GET /page HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
        let (head, rest) = read_response_head(&mut s).unwrap();
        assert_eq!((head.status, head.header("connection")), (200, Some("close")));
        let mut body = rest;
        match s.read_to_end(&mut body) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the connection did not end after the answer: {e}"),
        }
        assert_eq!(body, b"hello\n", "only the first request is answered");
        drop(s); // the server lingers until the client hangs up too
        common::wait_until("one request answered, the connection gone", || {
            let st = server.stats();
            st.http_requests == 1 && st.connections_open == 0
        });
    }

    fn request_bodies_get_413_or_411_and_other_methods_405(backend) {
        let server = site(backend);
        let addr = common::addr_of(&server);
        let send = |req: &str| http_exchange(addr, req.as_bytes()).unwrap();
        let r = send("GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(r.status, 413, "{r:?}");
        let r = send("GET /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(r.status, 411, "{r:?}");
        let r = send("POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")), "{r:?}");
        let r = send("GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.status, 200, "an empty body is no body");
        assert_eq!(server.stats().http_requests, 1);
    }

    fn http_1_0_request_without_host_is_answered(backend) {
        let server = site(backend);
        let r = http_exchange(common::addr_of(&server), b"GET /hello HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello\n"[..]));
        let r = http_exchange(common::addr_of(&server), b"GET /hello HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.status, 400, "HTTP/1.1 needs Host");
    }

    fn panic_in_on_request_answers_500_and_the_server_goes_on(backend) {
        let server = site(backend);
        let r = get(common::addr_of(&server), "GET", "/boom");
        assert_eq!(r.status, 500, "{r:?}");
        assert_eq!(server.stats().handler_panics, 1);
        assert_eq!(get(common::addr_of(&server), "GET", "/hello").status, 200);
        RawClient::connect(common::addr_of(&server)).unwrap().echo_text("still serving");
    }

    fn slow_plain_request_is_closed_at_the_handshake_timeout(backend) {
        let server = common::start_app(backend, |b| b.handshake_timeout(Duration::from_millis(200)), |_| Site);
        let mut s = common::raw::connect(common::addr_of(&server)).unwrap();
        s.set_read_timeout(Some(common::WAIT)).unwrap();
        s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n").unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.is_empty(), "an incomplete request gets no answer: {:?}", String::from_utf8_lossy(&got));
        assert_eq!(server.stats().http_requests, 0);
    }
}
