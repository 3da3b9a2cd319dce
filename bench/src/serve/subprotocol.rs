//! `--subprotocol`: choose the `Sec-WebSocket-Protocol` for any of the server's handlers.
//!
//! RFC 6455 §4.2.2: the server answers with one of the subprotocols the client offered, or
//! with none. When the client offers some and the server speaks none of them, the RFC leaves
//! the server two ways: go on without the header (the client then decides; browsers fail the
//! connection with a bare "handshake failed") or refuse the handshake. `percore serve` refuses
//! with 400 and a body naming the subprotocols it speaks, so the failure says why.

use std::sync::Arc;

use percore::{Accept, Decision, Reject, Request, Upgrade};

/// The subprotocols `percore serve` speaks (`--subprotocol`, in the order given).
pub type Protocols = Arc<[String]>;

/// RFC 7230 token (what `Sec-WebSocket-Protocol` values are).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// The first protocol the client offered that `ours` has; `Err` when it offered some and none
/// matches; `Ok(None)` when it offered none or `ours` is empty.
pub fn choose(req: &Request, ours: &[String]) -> Result<Option<String>, Reject> {
    if ours.is_empty() {
        return Ok(None);
    }
    let mut offered = req.protocols().peekable();
    if offered.peek().is_none() {
        return Ok(None);
    }
    if let Some(p) = offered.find(|p| ours.iter().any(|o| o == p)) {
        return Ok(Some(p.to_owned()));
    }
    Err(Reject::new(
        400,
        format!(
            "no supported subprotocol offered (this server speaks: {})",
            ours.join(", ")
        ),
    ))
}

/// Accept `req` with `state` and the subprotocol [`choose`] picks, or refuse it with 400.
pub fn accept<S: 'static>(req: &Request, up: Upgrade<S>, ours: &[String], state: S) -> Decision<S> {
    match choose(req, ours) {
        Ok(Some(p)) => up.accept_with(Accept::new().protocol(p), state),
        Ok(None) => up.accept(state),
        Err(reject) => up.reject(reject),
    }
}
