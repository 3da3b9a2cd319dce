//! The Origin policy of the builder (`allow_origin`, `origin_required`): a refused origin gets
//! 403 before `on_upgrade` runs, an allowed one upgrades; exact and suffix patterns, the `null`
//! origin, requests without an Origin header; a bad pattern stops `start`.

mod common;

use common::handlers::Event;
use common::raw::{http_exchange, new_key, upgrade_request, RawClient};
use common::TestServer;

fn status(server: &TestServer, origin: Option<&str>) -> u16 {
    let extra: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
    let req = upgrade_request(server.addr, "/", &new_key(), &extra);
    http_exchange(server.addr, req.as_bytes())
        .unwrap_or_else(|e| panic!("origin {origin:?}: {e}"))
        .status
}

every_backend! {
    fn disallowed_origin_gets_403_without_reaching_on_upgrade(backend) {
        let server = common::start_with(backend, |b| b.allow_origin("https://app.example.com"));
        let req = upgrade_request(server.addr, "/", &new_key(), &[("Origin", "https://evil.example.net")]);
        let resp = http_exchange(server.addr, req.as_bytes()).unwrap();
        assert_eq!(resp.status, 403, "{resp:?}");
        assert_eq!(String::from_utf8_lossy(&resp.body), "origin not allowed\n");
        common::wait_until("the refusal is counted", || {
            let s = server.handle().stats();
            s.handshakes_rejected == 1 && s.connections_open == 0
        });
        assert_eq!(server.handle().stats().upgraded, 0);
        assert!(
            !server.events.try_iter().any(|e| matches!(e, Event::Opened(_))),
            "the handler must not open a refused connection"
        );
    }

    fn allowed_origin_upgrades(backend) {
        let server = common::start_with(backend, |b| {
            b.allow_origin("https://app.example.com").allow_origin("http://localhost:3000")
        });
        for origin in ["https://app.example.com", "HTTPS://App.Example.COM:443", "http://localhost:3000"] {
            let mut c = RawClient::connect_with(server.addr, "/", &[("Origin", origin)])
                .unwrap_or_else(|e| panic!("{origin}: {e}"));
            c.echo_text(origin);
        }
        assert_eq!(status(&server, Some("http://app.example.com")), 403, "scheme");
        assert_eq!(status(&server, Some("https://app.example.com:8443")), 403, "port");
        assert_eq!(status(&server, Some("http://localhost:3001")), 403, "port");
    }

    fn suffix_pattern_allows_subdomains_but_not_the_domain_or_lookalikes(backend) {
        let server = common::start_with(backend, |b| b.allow_origin("https://*.example.com"));
        assert_eq!(status(&server, Some("https://a.example.com")), 101);
        assert_eq!(status(&server, Some("https://a.b.example.com")), 101);
        assert_eq!(status(&server, Some("https://example.com")), 403);
        assert_eq!(status(&server, Some("https://badexample.com")), 403);
        assert_eq!(status(&server, Some("https://a.example.com.evil.net")), 403);
        assert_eq!(status(&server, Some("http://a.example.com")), 403);
        let any_scheme = common::start_with(backend, |b| b.allow_origin("*.example.com"));
        assert_eq!(status(&any_scheme, Some("http://a.example.com:8080")), 101);
        assert_eq!(status(&any_scheme, Some("https://example.com")), 403);
    }

    fn request_without_origin_is_allowed_unless_required(backend) {
        let server = common::start_with(backend, |b| b.allow_origin("https://app.example.com"));
        assert_eq!(status(&server, None), 101);
        // tungstenite, like most non-browser clients, sends no Origin.
        let mut ws = common::tungstenite_client(server.addr);
        ws.send(tungstenite::Message::text("no origin")).unwrap();
        assert_eq!(ws.read().unwrap(), tungstenite::Message::text("no origin"));
        let strict = common::start_with(backend, |b| {
            b.allow_origin("https://app.example.com").origin_required(true)
        });
        assert_eq!(status(&strict, None), 403);
        assert_eq!(status(&strict, Some("https://app.example.com")), 101);
    }

    fn null_origin_is_refused_unless_listed_and_every_origin_passes_by_default(backend) {
        let server = common::start_with(backend, |b| b.allow_origin("https://app.example.com"));
        assert_eq!(status(&server, Some("null")), 403);
        let with_null = common::start_with(backend, |b| b.allow_origin("https://app.example.com").allow_origin("null"));
        assert_eq!(status(&with_null, Some("null")), 101);
        let default = common::start(backend);
        for origin in ["null", "https://anything.example", "not an origin"] {
            assert_eq!(status(&default, Some(origin)), 101, "{origin}");
        }
    }

    fn plain_http_requests_are_not_subject_to_the_origin_policy(backend) {
        let server = common::start_with(backend, |b| b.allow_origin("https://app.example.com"));
        let resp = http_exchange(server.addr, b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n").unwrap();
        assert_eq!(resp.status, 404, "the handler's answer, not 403");
    }

    fn bad_origin_pattern_fails_start_with_invalid_input(backend) {
        let err = percore::Server::builder()
            .bind("127.0.0.1:0")
            .backend(backend)
            .allow_origin("https://ok.example")
            .allow_origin("https://example.com/path")
            .start(|_| common::handlers::TestHandler { events: std::sync::mpsc::channel().0 })
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("https://example.com/path"), "{err}");
    }
}
