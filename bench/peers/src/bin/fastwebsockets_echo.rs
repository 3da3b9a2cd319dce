//! fastwebsockets echo server, single-threaded (tokio current_thread): echoes text and binary
//! messages. The HTTP upgrade is done by hand (httparse + sha1) instead of through hyper, so
//! that only fastwebsockets' frame path is measured.

use base64::Engine;
use fastwebsockets::{FragmentCollector, OpCode, Role, WebSocket};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

async fn upgrade(s: &mut TcpStream) -> Option<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > 16 << 10 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf).ok()? {
            httparse::Status::Partial => continue,
            httparse::Status::Complete(_) => {
                let key = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))?
                    .value;
                let mut sha = Sha1::new();
                sha.update(key);
                sha.update(GUID.as_bytes());
                let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                s.write_all(resp.as_bytes()).await.ok()?;
                return Some(());
            }
        }
    }
}

async fn handle(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    if upgrade(&mut s).await.is_none() {
        return;
    }
    let mut ws = WebSocket::after_handshake(s, Role::Server);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    ws.set_max_message_size(64 << 20);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = match ws.read_frame().await {
            Ok(f) => f,
            Err(_) => return,
        };
        let echo = match frame.opcode {
            OpCode::Close => return,
            OpCode::Text | OpCode::Binary => frame,
            _ => continue,
        };
        if ws.write_frame(echo).await.is_err() {
            return;
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let listener = percore_peers::listen(percore_peers::addr_arg()).await;
    loop {
        if let Ok((s, _)) = listener.accept().await {
            tokio::spawn(handle(s));
        }
    }
}
