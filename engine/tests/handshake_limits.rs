//! Handshake limits: an oversized header block gets 431, a slow or silent handshake is closed
//! at `handshake_timeout` (slowloris), and the server keeps serving others meanwhile.

mod common;

use common::raw::{connect, http_exchange, new_key, upgrade_request, RawClient, Stream};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Read until EOF/reset; panics if the server keeps the socket open past `within`.
fn expect_closed_within(s: &mut Stream, within: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if common::raw::is_timeout(&e) => panic!("socket still open after {within:?}"),
            Err(_) => return got,
        }
    }
}

/// An upgrade request whose whole head (through the blank line) is exactly `len` bytes.
fn request_of_exactly(addr: std::net::SocketAddr, key: &str, len: usize) -> String {
    let base = upgrade_request(addr, "/", key, &[("X-Pad", "")]);
    assert!(len >= base.len());
    let req = upgrade_request(addr, "/", key, &[("X-Pad", &"p".repeat(len - base.len()))]);
    assert_eq!(req.len(), len);
    req
}

every_backend! {
    fn header_block_of_exactly_the_limit_upgrades_and_one_more_byte_gets_431(backend) {
        let server = common::start_with(backend, |b| b.handshake_header_bytes_max(1024));
        let key = new_key();
        let resp = http_exchange(server.addr, request_of_exactly(server.addr, &key, 1024).as_bytes()).unwrap();
        assert_eq!(resp.status, 101, "request of exactly the limit: {resp:?}");
        let resp = http_exchange(server.addr, request_of_exactly(server.addr, &key, 1025).as_bytes()).unwrap();
        assert_eq!(resp.status, 431, "one byte past the limit: {resp:?}");
    }

    fn forty_ordinary_headers_upgrade(backend) {
        let server = common::start(backend);
        let names: Vec<String> = (0..40).map(|i| format!("X-Header-{i}")).collect();
        let extra: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        RawClient::connect_with(server.addr, "/", &extra).unwrap().echo_text("many headers");
    }

    fn header_block_larger_than_the_limit_gets_431(backend) {
        let server = common::start_with(backend, |b| b.handshake_header_bytes_max(1024));
        let filler = "a".repeat(2000);
        let req = upgrade_request(server.addr, "/", &new_key(), &[("X-Filler", &filler)]);
        let resp = http_exchange(server.addr, req.as_bytes()).unwrap();
        assert_eq!(resp.status, 431, "{resp:?}");
        common::wait_until("the rejection is counted", || server.handle().stats().handshakes_rejected >= 1);
    }

    fn header_block_inside_the_limit_upgrades(backend) {
        let server = common::start_with(backend, |b| b.handshake_header_bytes_max(1024));
        let filler = "a".repeat(500);
        let mut c = RawClient::connect_with(server.addr, "/", &[("X-Filler", &filler)]).unwrap();
        c.echo_text("fits");
    }

    fn endless_header_stream_gets_431_not_unbounded_buffering(backend) {
        let server = common::start_with(backend, |b| b.handshake_header_bytes_max(4096));
        let mut s = connect(server.addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        // Keep sending header lines, never the final CRLF; the server must answer 431 and close.
        let line = format!("X-Pad: {}\r\n", "b".repeat(100));
        let mut sent = 0;
        while sent < 1 << 20 {
            if s.write_all(line.as_bytes()).is_err() {
                break;
            }
            sent += line.len();
        }
        let got = expect_closed_within(&mut s, common::WAIT);
        let text = String::from_utf8_lossy(&got);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 431"), "got {text:?}");
    }

    fn slowloris_handshake_is_closed_at_the_timeout(backend) {
        let server = common::start_with(backend, |b| b.handshake_timeout(Duration::from_millis(300)));
        let mut s = connect(server.addr).unwrap();
        // A valid request, one byte every 50 ms: it would take seconds to complete.
        let req = upgrade_request(server.addr, "/", &new_key(), &[]);
        let start = Instant::now();
        let mut closed = false;
        for b in req.as_bytes() {
            if s.write_all(std::slice::from_ref(b)).is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            if start.elapsed() > common::WAIT {
                break;
            }
            // Check, without blocking, whether the server gave up.
            s.tcp().set_nonblocking(true).unwrap();
            let mut buf = [0u8; 512];
            let r = s.read(&mut buf);
            s.tcp().set_nonblocking(false).unwrap();
            match r {
                Ok(_) => {
                    closed = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        assert!(closed, "slow handshake still open after sending the whole request over {:?}", start.elapsed());
        common::wait_until("the handshake timeout is counted", || server.handle().stats().timeouts >= 1);
        let s = server.handle().stats();
        assert_eq!((s.timeouts_handshake, s.timeouts_pong, s.timeouts_close), (s.timeouts, 0, 0), "{s:?}");
        // Others are served.
        RawClient::connect(server.addr).unwrap().echo_text("fast client");
    }

    fn silent_connection_is_closed_at_the_handshake_timeout(backend) {
        let server = common::start_with(backend, |b| b.handshake_timeout(Duration::from_millis(200)));
        // Over TLS the client completes the TLS handshake, then says nothing.
        let mut s = connect(server.addr).unwrap();
        let got = expect_closed_within(&mut s, common::WAIT);
        let text = String::from_utf8_lossy(&got);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "got {text:?}");
    }

    fn completed_handshake_is_not_subject_to_the_handshake_timeout(backend) {
        let server = common::start_with(backend, |b| b.handshake_timeout(Duration::from_millis(100)));
        let mut c = RawClient::connect(server.addr).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        c.echo_text("still open");
    }
}
