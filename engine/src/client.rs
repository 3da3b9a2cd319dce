//! Outbound connections: a shard runs them exactly like accepted ones (same handler, timers,
//! limits), in the client role (frames masked, the server's frames must not be).

use std::io;
use std::net::{SocketAddr, TcpStream};

use crate::proto;
use crate::server::ServerHandle;
use crate::shard::{Mail, Outbound};

/// Where and how to open an outbound WebSocket connection ([`ServerHandle::connect`]).
#[derive(Clone, Debug)]
pub struct Connect {
    addr: SocketAddr,
    host: Option<String>,
    path: String,
    protocols: Vec<String>,
    headers: Vec<(String, String)>,
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

    /// An extra request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl ServerHandle {
    /// Open an outbound connection on shard `shard` (taken modulo the shard count). The TCP
    /// connect happens here, blocking up to the handshake timeout; the WebSocket handshake then
    /// runs on the shard, whose handler gets `on_open` when the server answered 101, then
    /// messages as for any connection. If the handshake fails or times out, `on_close` is called
    /// with 1006 and a reason (without `on_open` before it).
    pub fn connect(&self, shard: usize, target: Connect) -> io::Result<()> {
        let stream = TcpStream::connect_timeout(&target.addr, self.handshake_timeout())?;
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let host = target.host.unwrap_or_else(|| target.addr.to_string());
        let key = proto::generate_key();
        let protocols: Vec<&str> = target.protocols.iter().map(String::as_str).collect();
        let headers: Vec<(&str, &str)> = target
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let request = proto::client_request(&host, &target.path, &key, &protocols, &headers);
        self.mail_to(
            shard,
            Mail::Connect(Box::new(Outbound {
                stream,
                peer: target.addr,
                request,
                key,
            })),
        )
    }
}
