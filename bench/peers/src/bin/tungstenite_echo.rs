//! tokio-tungstenite echo server, single-threaded (tokio current_thread): echoes text and
//! binary messages (pongs and close replies are tungstenite's own).

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;

async fn handle(s: TcpStream) {
    let _ = s.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
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
