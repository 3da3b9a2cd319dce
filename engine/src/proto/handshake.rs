//! The opening handshake (RFC 6455 §4): server-side request validation and response, and the
//! client side's request and response check; and the plain HTTP/1.1 requests a WebSocket port
//! also answers (a health check, a small page): their validation and response head.
//!
//! A request is a WebSocket upgrade attempt when it says so in any way (an `Upgrade: websocket`
//! token, a `Sec-WebSocket-Key` or a `Sec-WebSocket-Version` header): it is then validated as a
//! handshake, with the precise status of what is wrong (400, 405, 426, 431). Any other request
//! is plain HTTP: `GET` and `HEAD` without a body are handed to the application; other methods
//! get 405, a body 413 (a declared length) or 411 (`Transfer-Encoding`), since none is read.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::rng::fill_random;

/// The GUID appended to the client key before hashing (§1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Most header lines a request or response may carry; more is 431.
pub const MAX_HEADERS: usize = 64;

/// Default for the handshake header-block limit (`header_bytes_max`): 8 KiB, the size most
/// servers allow. A connection holds at most this much during its handshake.
pub const HEADER_BYTES_MAX_DEFAULT: usize = 8 << 10;

/// A parsed, validated request (owned: it comes once per connection): a WebSocket upgrade
/// request ([`Request::is_upgrade`]), or a plain `GET` or `HEAD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    /// Index of the `Host` header (absent only in a plain HTTP/1.0 request).
    host: Option<usize>,
    /// Index of the validated `Sec-WebSocket-Key` (upgrade requests only).
    key: Option<usize>,
    /// Set by the runtime when the request came over TLS: the server name the client asked
    /// for (`Some("")` when it sent none).
    tls: Option<Box<str>>,
}

impl Request {
    /// Is this a (validated) WebSocket upgrade request? Otherwise it is a plain `GET` or `HEAD`.
    #[inline]
    pub fn is_upgrade(&self) -> bool {
        self.key.is_some()
    }

    /// The request method: `GET` for an upgrade request, `GET` or `HEAD` for a plain one.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request path, without the query (`/chat` for `GET /chat?room=1`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The first header named `name` (case-insensitive), value trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// All headers in order, values trimmed.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The `Host` header (empty only for a plain HTTP/1.0 request without one).
    pub fn host(&self) -> &str {
        self.header_at(self.host)
    }

    /// The `Origin` header, if the client sent one (browsers do).
    pub fn origin(&self) -> Option<&str> {
        self.header("Origin")
    }

    /// The `Sec-WebSocket-Key` (validated: base64 of 16 bytes); empty for a plain request.
    pub fn key(&self) -> &str {
        self.header_at(self.key)
    }

    /// Did the request come over TLS (`wss://`)? The runtime says so ([`Request::set_tls`]).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS server name (SNI) the client asked for, when the request came over TLS and the
    /// client sent one (clients send none for an IP address).
    pub fn server_name(&self) -> Option<&str> {
        self.tls.as_deref().filter(|n| !n.is_empty())
    }

    /// Mark the request as received over TLS, with the server name the client sent (the
    /// runtime calls this before the application sees the request).
    pub fn set_tls(&mut self, server_name: Option<&str>) {
        self.tls = Some(server_name.unwrap_or("").into());
    }

    /// The offered `Sec-WebSocket-Protocol` tokens, in order, across repeated headers.
    pub fn protocols(&self) -> impl Iterator<Item = &str> {
        tokens(&self.headers, "Sec-WebSocket-Protocol")
    }

    fn header_at(&self, i: Option<usize>) -> &str {
        i.and_then(|i| self.headers.get(i))
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Error with the HTTP status to answer: 400 (malformed / missing key / bad Host / bad
/// `Content-Length`), 405 (an upgrade not by GET, a plain request not GET or HEAD; the response
/// carries `Allow: GET, HEAD`), 411 (a plain request with `Transfer-Encoding`), 413 (a plain
/// request with a body), 426 (wrong or missing Sec-WebSocket-Version; response carries
/// `Sec-WebSocket-Version: 13`), 431 (header block larger than the limit).
///
/// Client side ([`parse_response`]): `status` is the server's status when it was not 101, 431
/// when the response header block is over the limit, and 502 when the response is malformed or
/// fails validation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeError {
    /// HTTP status code.
    pub status: u16,
    /// Short explanation, used as the response body.
    pub reason: &'static str,
}

impl HandshakeError {
    /// An error answered with HTTP `status`.
    pub const fn new(status: u16, reason: &'static str) -> Self {
        Self { status, reason }
    }

    /// The full HTTP/1.1 response to send before closing: `Connection: close`, a text body
    /// with the reason, `Sec-WebSocket-Version: 13` for 426 and `Allow: GET, HEAD` for 405.
    pub fn response(&self) -> Vec<u8> {
        let extra: &[(&str, &str)] = match self.status {
            426 => &[("Sec-WebSocket-Version", "13")],
            405 => &[("Allow", "GET, HEAD")],
            _ => &[],
        };
        reject_response(self.status, extra, self.reason)
    }
}

impl core::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "websocket handshake failed ({}): {}",
            self.status, self.reason
        )
    }
}

impl std::error::Error for HandshakeError {}

/// The length of a complete header block, `None` while it is incomplete and still under
/// `header_bytes_max`; an incomplete block at the limit is 431, too many fields 431, anything
/// else httparse rejects is `malformed()`.
fn header_block_len(
    parsed: httparse::Result<usize>,
    buf_len: usize,
    header_bytes_max: usize,
    malformed: impl FnOnce() -> HandshakeError,
) -> Result<Option<usize>, HandshakeError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf_len >= header_bytes_max => Err(too_large()),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            Err(HandshakeError::new(431, "too many header fields"))
        }
        Err(_) => Err(malformed()),
    }
}

/// Parse and validate a request: a WebSocket upgrade, or a plain request (see the module docs
/// for which is which and what each must satisfy).
///
/// Ok(None): incomplete, need more bytes (and fewer than header_bytes_max so far).
/// Ok(Some((req, n))): request occupies buf[..n]; for an upgrade, bytes after n are pipelined
/// WebSocket frames.
pub fn parse_request(
    buf: &[u8],
    header_bytes_max: usize,
) -> Result<Option<(Request, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let malformed = || HandshakeError::new(400, "malformed HTTP request");
    let Some(n) = header_block_len(req.parse(buf), buf.len(), header_bytes_max, malformed)? else {
        return Ok(None);
    };
    if n > header_bytes_max {
        return Err(too_large());
    }
    let method = req.method.unwrap_or_default();
    let headers = owned_headers(req.headers);
    let upgrade = has_token(&headers, "Upgrade", "websocket");
    let websocket = upgrade
        || find_header(&headers, "Sec-WebSocket-Key").is_some()
        || find_header(&headers, "Sec-WebSocket-Version").is_some();
    if !websocket {
        return plain_request(method, req.version, req.path, headers).map(|r| Some((r, n)));
    }
    if method != "GET" {
        return Err(HandshakeError::new(405, "method must be GET"));
    }
    if req.version != Some(1) {
        return Err(HandshakeError::new(400, "HTTP/1.1 required"));
    }
    let target = req.path.unwrap_or_default();
    let (path, query) =
        split_target(target).ok_or(HandshakeError::new(400, "malformed request target"))?;

    let host = single_header(&headers, "Host")
        .map_err(|_| HandshakeError::new(400, "exactly one Host header required"))?;
    if headers[host].1.is_empty() {
        return Err(HandshakeError::new(400, "empty Host header"));
    }
    if !upgrade {
        return Err(HandshakeError::new(400, "Upgrade: websocket required"));
    }
    if !has_token(&headers, "Connection", "Upgrade") {
        return Err(HandshakeError::new(400, "Connection: Upgrade required"));
    }
    match single_header(&headers, "Sec-WebSocket-Version") {
        Ok(i) if headers[i].1 == "13" => {}
        _ => {
            return Err(HandshakeError::new(
                426,
                "Sec-WebSocket-Version 13 required",
            ))
        }
    }
    let key = single_header(&headers, "Sec-WebSocket-Key")
        .map_err(|_| HandshakeError::new(400, "exactly one Sec-WebSocket-Key required"))?;
    if !matches!(BASE64.decode(&headers[key].1), Ok(k) if k.len() == 16) {
        return Err(HandshakeError::new(
            400,
            "Sec-WebSocket-Key is not 16 base64 bytes",
        ));
    }
    Ok(Some((
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.map(str::to_owned),
            headers,
            host: Some(host),
            key: Some(key),
            tls: None,
        },
        n,
    )))
}

/// A request that is not a WebSocket upgrade: `GET` or `HEAD`, HTTP/1.0 or 1.1 (1.1 with one
/// `Host`), and no body (nothing after the head is read as one).
fn plain_request(
    method: &str,
    version: Option<u8>,
    target: Option<&str>,
    headers: Vec<(String, String)>,
) -> Result<Request, HandshakeError> {
    if method != "GET" && method != "HEAD" {
        return Err(HandshakeError::new(405, "method not allowed"));
    }
    let (path, query) = split_target(target.unwrap_or_default())
        .ok_or(HandshakeError::new(400, "malformed request target"))?;
    let host = match single_header(&headers, "Host") {
        Ok(i) if !headers[i].1.is_empty() => Some(i),
        // RFC 9112 §3.2: HTTP/1.1 requires exactly one, non-empty Host; 1.0 may leave it out.
        Err(()) if version == Some(0) && find_header(&headers, "Host").is_none() => None,
        _ => return Err(HandshakeError::new(400, "exactly one Host header required")),
    };
    // RFC 9112 §6: a body is declared by Transfer-Encoding or Content-Length. None is read, so
    // any body is refused; both at once (a smuggling attempt) or a bad length is malformed.
    let te = find_header(&headers, "Transfer-Encoding").is_some();
    let mut length = None;
    for (_, v) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
    {
        let n = v
            .parse::<u64>()
            .ok()
            .filter(|_| v.bytes().all(|b| b.is_ascii_digit()));
        match (n, length) {
            (Some(n), None) => length = Some(n),
            (Some(n), Some(m)) if n == m => {}
            _ => return Err(HandshakeError::new(400, "malformed Content-Length")),
        }
    }
    match (te, length) {
        (true, Some(_)) => {
            return Err(HandshakeError::new(
                400,
                "both Transfer-Encoding and Content-Length",
            ))
        }
        (true, None) => {
            return Err(HandshakeError::new(
                411,
                "request bodies are not accepted (Transfer-Encoding)",
            ))
        }
        (false, Some(n)) if n > 0 => {
            return Err(HandshakeError::new(413, "request bodies are not accepted"))
        }
        _ => {}
    }
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.map(str::to_owned),
        headers,
        host,
        key: None,
        tls: None,
    })
}

/// `Sec-WebSocket-Accept` for a client key: base64(sha1(key + GUID)) (§4.2.2).
pub fn accept_key(client_key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(client_key.as_bytes());
    sha.update(ACCEPT_GUID);
    BASE64.encode(sha.finalize())
}

/// "HTTP/1.1 101 Switching Protocols" with Upgrade, Connection, Sec-WebSocket-Accept,
/// Sec-WebSocket-Protocol if chosen, and extra headers. Header names or values containing CR or
/// LF are left out (they would split the response).
pub fn accept_response(
    req: &Request,
    protocol: Option<&str>,
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
    out.extend_from_slice(b"Connection: Upgrade\r\n");
    push_header(&mut out, "Sec-WebSocket-Accept", &accept_key(req.key()));
    if let Some(p) = protocol {
        push_header(&mut out, "Sec-WebSocket-Protocol", p);
    }
    for (n, v) in extra_headers {
        push_header(&mut out, n, v);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The head of a response after which the connection closes: status line,
/// `Connection: close`, `Content-Length` (left out when `content_length` is `None`: a 1xx, 204
/// or 304 response has no body), then `headers`, names or values containing CR or LF left out.
/// The body, if any, follows it.
pub fn response_head(
    status: u16,
    headers: &[(&str, &str)],
    content_length: Option<usize>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + headers.len() * 32);
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", status, reason_phrase(status)).as_bytes());
    out.extend_from_slice(b"Connection: close\r\n");
    if let Some(n) = content_length {
        push_header(&mut out, "Content-Length", &n.to_string());
    }
    for (n, v) in headers {
        push_header(&mut out, n, v);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Any non-101 response (e.g. 403 from the embedder, 503 when full), `Connection: close`, text
/// body. Header names or values containing CR or LF are left out.
pub fn reject_response(status: u16, extra_headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", status, reason_phrase(status)).as_bytes());
    out.extend_from_slice(b"Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\n");
    push_header(&mut out, "Content-Length", &(body.len() + 1).to_string());
    for (n, v) in extra_headers {
        push_header(&mut out, n, v);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out.push(b'\n');
    out
}

// ---------------------------------------------------------------- client side

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub fn generate_key() -> String {
    let mut k = [0u8; 16];
    fill_random(&mut k);
    BASE64.encode(k)
}

/// The client's upgrade request: `GET path HTTP/1.1` with Host, Upgrade, Connection,
/// Sec-WebSocket-Key, Sec-WebSocket-Version 13, Sec-WebSocket-Protocol when `protocols` is not
/// empty, and extra headers. Header names or values containing CR or LF are left out.
pub fn client_request(
    host: &str,
    path: &str,
    key: &str,
    protocols: &[&str],
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(200);
    let path = if path.is_empty() || path.contains(['\r', '\n', ' ']) {
        "/"
    } else {
        path
    };
    out.extend_from_slice(format!("GET {path} HTTP/1.1\r\n").as_bytes());
    push_header(&mut out, "Host", host);
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
    push_header(&mut out, "Sec-WebSocket-Key", key);
    out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
    if !protocols.is_empty() {
        push_header(&mut out, "Sec-WebSocket-Protocol", &protocols.join(", "));
    }
    for (n, v) in extra_headers {
        push_header(&mut out, n, v);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A validated `101 Switching Protocols` response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Response {
    /// The status code (always 101 once validated).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first header named `name` (case-insensitive), value trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// All headers in order, values trimmed.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The subprotocol the server chose, if any. The caller checks it is one it offered.
    pub fn protocol(&self) -> Option<&str> {
        self.header("Sec-WebSocket-Protocol")
    }
}

/// Validates 101, Upgrade/Connection tokens, Sec-WebSocket-Accept against `key`; rejects any
/// extension (none is ever offered) and more than one subprotocol.
///
/// Ok(None): incomplete. Ok(Some((resp, n))): the response occupies buf[..n]; bytes after n are
/// WebSocket frames the server sent right away.
pub fn parse_response(
    buf: &[u8],
    key: &str,
    header_bytes_max: usize,
) -> Result<Option<(Response, usize)>, HandshakeError> {
    parse_response_with(buf, key, header_bytes_max, false)
}

/// [`parse_response`] for a client that offered permessage-deflate (`deflate_offered`): the
/// `Sec-WebSocket-Extensions` answer is then left for [`super::deflate::client_accept`] to
/// check instead of being refused.
pub fn parse_response_with(
    buf: &[u8],
    key: &str,
    header_bytes_max: usize,
    deflate_offered: bool,
) -> Result<Option<(Response, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let malformed = || bad_response("malformed HTTP response");
    let Some(n) = header_block_len(resp.parse(buf), buf.len(), header_bytes_max, malformed)? else {
        return Ok(None);
    };
    if n > header_bytes_max {
        return Err(too_large());
    }
    let status = resp.code.unwrap_or_default();
    if status != 101 {
        return Err(HandshakeError::new(
            status,
            "server did not switch protocols",
        ));
    }
    if resp.version != Some(1) {
        return Err(bad_response("HTTP/1.1 required"));
    }
    let headers = owned_headers(resp.headers);
    if !has_token(&headers, "Upgrade", "websocket") {
        return Err(bad_response("Upgrade: websocket missing"));
    }
    if !has_token(&headers, "Connection", "Upgrade") {
        return Err(bad_response("Connection: Upgrade missing"));
    }
    match single_header(&headers, "Sec-WebSocket-Accept") {
        Ok(i) if headers[i].1 == accept_key(key) => {}
        _ => return Err(bad_response("Sec-WebSocket-Accept does not match the key")),
    }
    if !deflate_offered && find_header(&headers, "Sec-WebSocket-Extensions").is_some() {
        return Err(bad_response(
            "server chose an extension that was not offered",
        ));
    }
    if tokens(&headers, "Sec-WebSocket-Protocol").count() > 1 {
        return Err(bad_response("server chose more than one subprotocol"));
    }
    Ok(Some((Response { status, headers }, n)))
}

// ---------------------------------------------------------------- helpers

fn too_large() -> HandshakeError {
    HandshakeError::new(431, "header block too large")
}

fn bad_response(reason: &'static str) -> HandshakeError {
    HandshakeError::new(502, reason)
}

/// Header values are copied lossily: a non-UTF-8 byte in some unrelated header (obs-text) must
/// not fail the handshake.
fn owned_headers(raw: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    raw.iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect()
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Index of the only header named `name`; `Err` if it is missing or repeated.
fn single_header(headers: &[(String, String)], name: &str) -> Result<usize, ()> {
    let mut found = None;
    for (i, (n, _)) in headers.iter().enumerate() {
        if n.eq_ignore_ascii_case(name) {
            if found.is_some() {
                return Err(());
            }
            found = Some(i);
        }
    }
    found.ok_or(())
}

/// Comma-separated tokens across every header named `name`, trimmed, empty ones skipped.
fn tokens<'a>(headers: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Split a request target into path and query. Origin form (`/p?q`) and absolute form
/// (`ws://host/p?q`) are accepted.
fn split_target(target: &str) -> Option<(&str, Option<&str>)> {
    let rest = if target.starts_with('/') {
        target
    } else {
        let (_, after_scheme) = target.split_once("://")?;
        match after_scheme.find(['/', '?']) {
            Some(i) => &after_scheme[i..],
            None => "/",
        }
    };
    Some(match rest.split_once('?') {
        Some(("", q)) => ("/", Some(q)),
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    })
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    if name.is_empty() || name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
        return;
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => match status / 100 {
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            _ => "Error",
        },
    }
}

#[cfg(test)]
mod tests;
