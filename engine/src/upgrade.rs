//! What the application answers an upgrade request with ([`crate::Handler::on_upgrade`],
//! through [`crate::Upgrade`] or a [`crate::Deferred`] handle): an [`Accept`] with the
//! connection's state, or a [`Reject`].

/// A successful answer to an upgrade request: 101, with an optional subprotocol and headers.
///
/// ```
/// let accept = percore::Accept::new().protocol("chat.v2").header("X-Server", "percore");
/// assert_eq!(accept.protocol.as_deref(), Some("chat.v2"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Accept {
    /// The chosen subprotocol (one of [`crate::Request::protocols`]), echoed in
    /// `Sec-WebSocket-Protocol`.
    pub protocol: Option<String>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
}

impl Accept {
    /// A plain 101: no subprotocol, no extra header.
    pub fn new() -> Self {
        Self::default()
    }

    /// Choose the subprotocol `p`.
    pub fn protocol(mut self, p: impl Into<String>) -> Self {
        self.protocol = Some(p.into());
        self
    }

    /// Add a response header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A refused upgrade request: the client gets this HTTP status and body, then the TCP
/// connection is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reject {
    /// HTTP status code (e.g. 403).
    pub status: u16,
    /// Plain-text response body.
    pub body: String,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
}

impl Reject {
    /// A rejection with `status` and a plain-text `body`.
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// Add a response header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}
