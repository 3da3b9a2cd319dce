//! `percore serve --subprotocol NAME` (repeatable): the first offered subprotocol the server
//! speaks is chosen; a client offering none is served without one; a client offering only
//! others is refused with 400 naming the server's (RFC 6455 §4.2.2 lets the server refuse or go
//! on without; going on would leave a browser with a bare "handshake failed"). And a browser:
//! headless Chromium's `new WebSocket(url, ['chat'])` connects to `percore serve --subprotocol
//! chat`, with permessage-deflate in each mode, and gets its echo.

mod tools;

use std::process::Command;
use std::time::Duration;

use tools::Serve;

/// A raw handshake offering `protocols` (none: no header): Ok(chosen protocol) or Err(HTTP
/// status, body).
fn offer(url: &str, protocols: Option<&str>) -> Result<Option<String>, (u16, String)> {
    offer_at(url, "/", protocols)
}

/// [`offer`] on `path`.
fn offer_at(
    url: &str,
    path: &str,
    protocols: Option<&str>,
) -> Result<Option<String>, (u16, String)> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocols {
        req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&resp).contains("\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed mid-response");
        resp.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    if status != 101 {
        // The body may still be on its way.
        let mut body = body.to_owned();
        if let Ok(n) = s.read(&mut buf) {
            body.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        return Err((status, body));
    }
    Ok(head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("Sec-WebSocket-Protocol")
            .then(|| v.trim().to_owned())
    }))
}

#[test]
fn the_first_offered_subprotocol_the_server_speaks_is_chosen() {
    for backend in ["epoll", "uring"] {
        let s = Serve::start_with(backend, &["--subprotocol", "chat", "--subprotocol", "v2.x"]);
        assert_eq!(offer(&s.url, Some("chat")), Ok(Some("chat".into())));
        assert_eq!(
            offer(&s.url, Some("other, v2.x, chat")),
            Ok(Some("v2.x".into()))
        );
        assert_eq!(offer(&s.url, None), Ok(None), "none offered: none chosen");
        let (status, body) = offer(&s.url, Some("other")).unwrap_err();
        assert_eq!(status, 400);
        assert!(body.contains("chat, v2.x"), "{body}");
        // Without --subprotocol, offered ones are ignored (no header).
        let plain = Serve::start(backend);
        assert_eq!(offer(&plain.url, Some("chat")), Ok(None));
    }
}

#[test]
fn broadcast_and_chat_speak_the_resume_subprotocol_beside_the_listed_ones() {
    for backend in ["epoll", "uring"] {
        for (mode, path) in [("broadcast", "/"), ("chat", "/room/lobby")] {
            let s = Serve::start_with(backend, &["--mode", mode, "--subprotocol", "chat"]);
            let resume = "percore.resume.v1";
            let offer = |p| offer_at(&s.url, path, Some(p));
            assert_eq!(offer(resume), Ok(Some(resume.into())), "{mode}");
            assert_eq!(offer("chat"), Ok(Some("chat".into())), "{mode}");
            let (status, body) = offer("other").unwrap_err();
            assert_eq!(status, 400, "{mode}");
            assert!(body.contains("chat, percore.resume.v1"), "{mode}: {body}");
        }
    }
}

#[test]
fn a_bad_subprotocol_name_is_refused_at_start() {
    let (code, _, err) =
        tools::percore(&["serve", "--addr", "127.0.0.1:0", "--subprotocol", "a b"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not an HTTP token"), "{err}");
}

/// Headless Chromium, if installed (scripts/test.sh installs it; PERCORE_REQUIRE_BROWSER=1
/// makes it required).
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() && std::env::var("PERCORE_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("PERCORE_REQUIRE_BROWSER=1 but chromium is not installed");
    }
    found
}

/// Load `page` in headless Chromium and wait (bounded) for the page to report its result: it
/// requests `http://127.0.0.1:PORT/RESULT` from a listener here (a page in a headless browser
/// has no other way out that does not race the browser's own exit).
fn browse(browser: &str, page_html: impl FnOnce(u16) -> String) -> String {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("percore-browser-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("page.html");
    std::fs::write(&page, page_html(port)).unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            &format!("--user-data-dir={}", dir.join("profile").display()),
        ])
        .arg(format!("file://{}", page.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let result = loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = req.split_whitespace().nth(1).unwrap_or_default().to_owned();
                if let Some(r) = path.strip_prefix("/result/") {
                    break r
                        .replace("%20", " ")
                        .replace("%3D", "=")
                        .replace("%3B", ";");
                }
            }
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => break "no result within 60 s".to_owned(),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[test]
fn a_browser_connects_with_its_subprotocol_and_permessage_deflate() {
    let Some(browser) = chromium() else {
        eprintln!("SKIP: no chromium (scripts/test.sh installs it)");
        return;
    };
    for (backend, mode) in [
        ("epoll", "shared"),
        ("uring", "dedicated"),
        ("epoll", "off"),
    ] {
        let s = Serve::start_with(backend, &["--subprotocol", "chat", "--compression", mode]);
        let result = browse(browser, |port| {
            format!(
                r#"<html><body><script>
const report = (r) => fetch("http://127.0.0.1:{port}/result/" + encodeURIComponent(r), {{mode: "no-cors"}});
const ws = new WebSocket("{url}", ["chat"]);
const msg = JSON.stringify(Array.from({{length: 100}}, (_, i) => ({{id: i, name: "item-" + i}})));
ws.onopen = () => ws.send(msg);
ws.onmessage = (e) => {{
  report("protocol=" + ws.protocol + " extensions=" + (ws.extensions || "none") +
    " echo=" + (e.data === msg));
  ws.close();
}};
ws.onerror = () => report("error");
</script></body></html>"#,
                url = s.url
            )
        });
        assert!(
            result.contains("protocol=chat"),
            "{backend} {mode}: {result}"
        );
        assert!(result.contains("echo=true"), "{backend} {mode}: {result}");
        if mode == "off" {
            assert!(result.contains("extensions=none"), "{result}");
        } else {
            assert!(result.contains("extensions=permessage-deflate"), "{result}");
        }
    }
}
