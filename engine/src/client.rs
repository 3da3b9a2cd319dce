//! Outbound connections: a shard runs them exactly like accepted ones (same handler, timers,
//! limits), in the client role (frames masked, the server's frames must not be).

use std::any::Any;
use std::io;
use std::net::{SocketAddr, TcpStream};

use std::time::Duration;

use crate::proto;
use crate::shard::Outbound;

/// Where and how to open an outbound WebSocket connection ([`crate::ServerHandle::connect`]).
#[derive(Clone, Debug)]
pub struct Connect {
    addr: SocketAddr,
    host: Option<String>,
    path: String,
    protocols: Vec<String>,
    headers: Vec<(String, String)>,
    deflate: bool,
}

impl Connect {
    /// Connect to `addr`, path `/`, `Host` = `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: None,
            path: "/".to_owned(),
            protocols: Vec::new(),
            headers: Vec::new(),
            deflate: false,
        }
    }

    /// The `Host` header (default: the address).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Request path and query (default `/`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Offer a subprotocol (`Sec-WebSocket-Protocol`), in preference order.
    pub fn protocol(mut self, p: impl Into<String>) -> Self {
        self.protocols.push(p.into());
        self
    }

    /// Offer permessage-deflate (`permessage-deflate; client_max_window_bits`, default off).
    /// The server's answer is checked (an extension or parameter that was not offered, or an
    /// invalid value, fails the handshake: `on_close` gets 1006 with the reason); what it
    /// agreed to is kept to: our messages of at least the server's
    /// [`crate::ServerBuilder::deflate_threshold_bytes`] are compressed (without context
    /// takeover when the server asks so, else with this connection's last sent bytes as
    /// history), and
    /// the server's compressed messages are inflated within
    /// [`crate::ServerBuilder::message_bytes_max`].
    pub fn deflate(mut self, on: bool) -> Self {
        self.deflate = on;
        self
    }

    /// An extra request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl Connect {
    /// Connect (blocking up to `timeout`) and prepare the upgrade request for the shard; the
    /// connection will have `state`.
    pub(crate) fn open(
        self,
        timeout: Duration,
        state: Box<dyn Any + Send>,
    ) -> io::Result<Outbound> {
        let stream = TcpStream::connect_timeout(&self.addr, timeout)?;
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let host = self.host.unwrap_or_else(|| self.addr.to_string());
        let key = proto::generate_key();
        let protocols: Vec<&str> = self.protocols.iter().map(String::as_str).collect();
        let mut headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        if self.deflate {
            headers.push(("Sec-WebSocket-Extensions", proto::deflate::client_offer()));
        }
        let request = proto::client_request(&host, &self.path, &key, &protocols, &headers);
        Ok(Outbound {
            stream,
            peer: self.addr,
            request,
            key,
            state,
            deflate: self.deflate,
        })
    }
}
