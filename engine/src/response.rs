//! [`Response`]: the application's answer to a plain HTTP request on the WebSocket port
//! ([`crate::Handler::on_request`]): a health check, a metrics page, a small script.

use std::borrow::Cow;

/// An HTTP response to a plain (non-upgrade) request: a status, headers and a body. The
/// connection closes after it (`Connection: close`); `Content-Length` is set from the body, and a
/// `HEAD` request gets the same head without the body.
///
/// The body is a [`Cow`]: a `&'static` page or script (`include_str!`) is served without an
/// allocation of its own, a computed one is moved in. Either is copied once into the
/// connection's send queue, so a response costs its size in memory until it is written, at most
/// [`crate::ServerBuilder::http_response_bytes_max`].
///
/// ```
/// use percore::Response;
///
/// let page = Response::html(200, "<!doctype html><title>hi</title>");
/// let health = Response::json(200, format!(r#"{{"ok":{}}}"#, true)).header("Cache-Control", "no-store");
/// assert_eq!(health.body.as_ref(), br#"{"ok":true}"#);
/// assert_eq!(Response::not_found().status, 404);
/// # let _ = page;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// HTTP status code (200–599; anything else is answered with 500).
    pub status: u16,
    /// Response headers (`Content-Type` among them when the body has one). `Connection`,
    /// `Content-Length` and `Date` are the engine's: set here they are sent twice.
    pub headers: Vec<(String, String)>,
    /// The body (left out for `HEAD`, and for 204 and 304, which have none).
    pub body: Cow<'static, [u8]>,
}

impl Response {
    /// A response with `status`, no header and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Cow::Borrowed(&[]),
        }
    }

    /// A `text/plain; charset=utf-8` body.
    pub fn text(status: u16, body: impl Into<Cow<'static, str>>) -> Self {
        Self::with_body(status, "text/plain; charset=utf-8", str_bytes(body.into()))
    }

    /// A `text/html; charset=utf-8` body.
    pub fn html(status: u16, body: impl Into<Cow<'static, str>>) -> Self {
        Self::with_body(status, "text/html; charset=utf-8", str_bytes(body.into()))
    }

    /// An `application/json` body.
    pub fn json(status: u16, body: impl Into<Cow<'static, str>>) -> Self {
        Self::with_body(status, "application/json", str_bytes(body.into()))
    }

    /// A body of any `content_type` (e.g. `text/javascript; charset=utf-8`).
    pub fn with_body(status: u16, content_type: &str, body: impl Into<Cow<'static, [u8]>>) -> Self {
        Self::new(status)
            .header("Content-Type", content_type)
            .body(body)
    }

    /// 404 with a short text body: what a handler answers for a path it does not serve (the
    /// default [`crate::Handler::on_request`]).
    pub fn not_found() -> Self {
        Self::text(404, "not found\n")
    }

    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replace the body (the `Content-Type` header stays as it is).
    pub fn body(mut self, body: impl Into<Cow<'static, [u8]>>) -> Self {
        self.body = body.into();
        self
    }
}

/// A `str` body's bytes, without a copy.
fn str_bytes(s: Cow<'static, str>) -> Cow<'static, [u8]> {
    match s {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    }
}
