//! Shared bits of the peer echo servers: the `--addr` flag and a listener.

use std::net::SocketAddr;

/// `--addr HOST:PORT` from the command line (default 127.0.0.1:9002).
pub fn addr_arg() -> SocketAddr {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:9002".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = args.next().unwrap_or_else(|| usage()),
            "-h" | "--help" => usage(),
            other => match other.strip_prefix("--addr=") {
                Some(v) => addr = v.to_string(),
                None => usage(),
            },
        }
    }
    addr.parse().unwrap_or_else(|_| usage())
}

fn usage() -> ! {
    eprintln!(
        "usage: {} [--addr HOST:PORT]",
        std::env::args().next().unwrap_or_default()
    );
    std::process::exit(2)
}

/// Accept queue length: connection bursts of 100k must not overflow it (the kernel caps it
/// at net.core.somaxconn).
const BACKLOG: u32 = 4096;

/// Bind, print `listening on ADDR` (the real address, also for port 0) and return the listener.
pub async fn listen(addr: SocketAddr) -> tokio::net::TcpListener {
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
        let s = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(BACKLOG)
    };
    let l = bind().unwrap_or_else(|e| {
        eprintln!("bind {addr}: {e}");
        std::process::exit(1)
    });
    println!(
        "listening on {}",
        l.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    l
}
