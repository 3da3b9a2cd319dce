//! The upgrade handshake: embedder rejections with their status (403 origin, 401 token),
//! subprotocol selection, extra headers, and the RFC's own rejections (426, 400, 405).

mod common;

use common::handlers::{CHOSEN_PROTOCOL, EXTRA_HEADER, FORBIDDEN_ORIGIN, PRIVATE_PATH};
use common::raw::{http_exchange, new_key, upgrade_request, RawClient};
use std::net::SocketAddr;

fn request(addr: SocketAddr, lines: &[&str]) -> String {
    let mut r = String::new();
    for l in lines {
        r.push_str(l);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.replace("{addr}", &addr.to_string())
}

fn status_of(addr: SocketAddr, req: &str) -> common::raw::HttpResponse {
    http_exchange(addr, req.as_bytes())
        .unwrap_or_else(|e| panic!("no HTTP response to {req:?}: {e}"))
}

every_backend! {
    fn forbidden_origin_gets_403_with_the_embedder_body(backend) {
        let server = common::start(backend);
        let req = upgrade_request(server.addr, "/", &new_key(), &[("Origin", FORBIDDEN_ORIGIN)]);
        let resp = status_of(server.addr, &req);
        assert_eq!(resp.status, 403, "{resp:?}");
        common::wait_until("the rejection is counted", || server.handle().stats().handshakes_rejected >= 1);
        assert_eq!(server.handle().stats().upgraded, 0);
        assert!(String::from_utf8_lossy(&resp.body).contains("origin not allowed"), "{resp:?}");
        // The server then closes the connection (no 101 sneaks out later).
        assert!(!String::from_utf8_lossy(&resp.body).contains("101"));
    }

    fn allowed_origin_upgrades(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect_with(server.addr, "/", &[("Origin", "http://good.example")]).unwrap();
        c.echo_text("welcome");
    }

    fn missing_token_gets_401(backend) {
        let server = common::start(backend);
        let req = upgrade_request(server.addr, PRIVATE_PATH, &new_key(), &[]);
        assert_eq!(status_of(server.addr, &req).status, 401);
        let req = upgrade_request(server.addr, "/private?token=wrong", &new_key(), &[]);
        assert_eq!(status_of(server.addr, &req).status, 401);
    }

    fn right_token_in_the_query_upgrades(backend) {
        let server = common::start(backend);
        let mut c = RawClient::connect_with(server.addr, "/private?token=secret", &[]).unwrap();
        c.echo_text("authorized");
    }

    fn offered_subprotocol_is_selected(backend) {
        let server = common::start(backend);
        let c = RawClient::connect_with(server.addr, "/", &[("Sec-WebSocket-Protocol", "chat.v1, chat.v2")]).unwrap();
        assert_eq!(c.response.header("sec-websocket-protocol"), Some(CHOSEN_PROTOCOL));
    }

    fn no_subprotocol_header_when_none_offered_or_none_matches(backend) {
        let server = common::start(backend);
        let c = RawClient::connect(server.addr).unwrap();
        assert_eq!(c.response.header("sec-websocket-protocol"), None);
        let c = RawClient::connect_with(server.addr, "/", &[("Sec-WebSocket-Protocol", "mqtt")]).unwrap();
        assert_eq!(c.response.header("sec-websocket-protocol"), None);
    }

    fn tungstenite_sees_the_selected_subprotocol(backend) {
        use tungstenite::client::IntoClientRequest;
        let server = common::start(backend);
        let mut req = server.url().into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", "chat.v2".parse().unwrap());
        let tcp = std::net::TcpStream::connect(server.addr).unwrap();
        let tls = tungstenite::Connector::Rustls(common::tls::client_config());
        let (mut ws, resp) = tungstenite::client_tls_with_config(req, tcp, None, Some(tls)).unwrap();
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "chat.v2");
        ws.send(tungstenite::Message::text("hi")).unwrap();
        assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), "hi");
    }

    fn accept_headers_appear_in_the_101_response(backend) {
        let server = common::start(backend);
        let c = RawClient::connect(server.addr).unwrap();
        assert_eq!(c.response.header(&EXTRA_HEADER.0.to_ascii_lowercase()), Some(EXTRA_HEADER.1));
    }

    fn wrong_websocket_version_gets_426_naming_version_13(backend) {
        let server = common::start(backend);
        let req = request(server.addr, &[
            "GET / HTTP/1.1", "Host: {addr}", "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 8",
        ]);
        let resp = status_of(server.addr, &req);
        assert_eq!(resp.status, 426, "{resp:?}");
        assert_eq!(resp.header("sec-websocket-version"), Some("13"));
    }

    fn missing_websocket_version_gets_426(backend) {
        let server = common::start(backend);
        let req = request(server.addr, &[
            "GET / HTTP/1.1", "Host: {addr}", "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ]);
        assert_eq!(status_of(server.addr, &req).status, 426);
    }

    fn missing_key_gets_400(backend) {
        let server = common::start(backend);
        let req = request(server.addr, &[
            "GET / HTTP/1.1", "Host: {addr}", "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
        ]);
        assert_eq!(status_of(server.addr, &req).status, 400);
    }

    fn key_that_is_not_16_base64_bytes_gets_400(backend) {
        let server = common::start(backend);
        for key in ["short", "dGhlIHNhbXBsZQ==", "!!!!!!!!!!!!!!!!!!!!!!!!", "dGhlIHNhbXBsZSBub25jZSBsb25nZXI="] {
            let req = request(server.addr, &[
                "GET / HTTP/1.1", "Host: {addr}", "Upgrade: websocket", "Connection: Upgrade",
                &format!("Sec-WebSocket-Key: {key}"), "Sec-WebSocket-Version: 13",
            ]);
            assert_eq!(status_of(server.addr, &req).status, 400, "key {key:?}");
        }
    }

    fn post_gets_405(backend) {
        let server = common::start(backend);
        let req = request(server.addr, &[
            "POST / HTTP/1.1", "Host: {addr}", "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
            "Content-Length: 0",
        ]);
        assert_eq!(status_of(server.addr, &req).status, 405);
    }

    fn missing_upgrade_header_is_refused(backend) {
        let server = common::start(backend);
        let req = request(server.addr, &[
            "GET / HTTP/1.1", "Host: {addr}", "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
        ]);
        let status = status_of(server.addr, &req).status;
        assert!(status == 400 || status == 426, "got {status}");
    }

    fn garbage_instead_of_http_gets_400(backend) {
        let server = common::start(backend);
        let resp = http_exchange(server.addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n");
        match resp {
            Ok(r) => assert_eq!(r.status, 400),
            // Dropping the connection without an answer is acceptable for non-HTTP bytes.
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
        }
        RawClient::connect(server.addr).unwrap().echo_text("still serving");
    }

    fn header_names_and_tokens_are_case_insensitive(backend) {
        let server = common::start(backend);
        let key = new_key();
        let req = request(server.addr, &[
            "GET / HTTP/1.1", "host: {addr}", "UPGRADE: WebSocket", "connection: keep-alive, upgrade",
            &format!("sec-websocket-key: {key}"), "SEC-WEBSOCKET-VERSION: 13",
        ]);
        let resp = status_of(server.addr, &req);
        assert_eq!(resp.status, 101, "{resp:?}");
        assert_eq!(
            resp.header("sec-websocket-accept"),
            Some(tungstenite::handshake::derive_accept_key(key.as_bytes()).as_str())
        );
    }
}
