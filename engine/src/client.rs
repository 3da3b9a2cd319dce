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
    /// `wss://`: the client config and the name to verify the server's certificate against.
    #[cfg(feature = "tls")]
    tls: Option<(std::sync::Arc<rustls::ClientConfig>, Option<String>)>,
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
            #[cfg(feature = "tls")]
            tls: None,
            deflate: false,
        }
    }

    /// Connect over TLS (`wss://`) with this rustls config (e.g. [`crate::tls::client_config`]
    /// with the roots to trust). The server's certificate is verified for
    /// [`Connect::server_name`], else the host of [`Connect::host`] (without a port), else the
    /// address's IP. TLS 1.3 only. A handshake that fails (an unknown CA, no common version…)
    /// ends the connection: `on_close` gets 1006 with the reason.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: impl Into<std::sync::Arc<rustls::ClientConfig>>) -> Self {
        let name = self.tls.take().and_then(|(_, n)| n);
        self.tls = Some((config.into(), name));
        self
    }

    /// The name to verify the server's certificate against and send as SNI (with
    /// [`Connect::tls`]).
    #[cfg(feature = "tls")]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        if let Some((_, n)) = &mut self.tls {
            *n = Some(name.into());
        }
        self
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
        #[cfg(feature = "tls")]
        let tls = match &self.tls {
            None => None,
            Some((cfg, name)) => {
                let name = match name {
                    Some(n) => n.clone(),
                    None => match &self.host {
                        Some(h) => strip_port(h).to_owned(),
                        None => self.addr.ip().to_string(),
                    },
                };
                let name = rustls::pki_types::ServerName::try_from(name).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("TLS server name: {e}"))
                })?;
                Some((crate::tls::prepare_client(cfg), name))
            }
        };
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
            #[cfg(feature = "tls")]
            tls,
            deflate: self.deflate,
        })
    }
}

/// `host` without a `:port` (an IPv6 literal keeps its brackets off).
#[cfg(feature = "tls")]
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}
