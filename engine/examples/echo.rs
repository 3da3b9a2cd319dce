//! The README's embedded echo server: `cargo run --release -p percore --example echo`.
use percore::{Conn, Handler, Message, Server};

struct Echo;

impl Handler for Echo {
    type State = ();
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg); // queued; flushed once per loop turn
    }
}

fn main() -> std::io::Result<()> {
    let server = Server::builder().bind("127.0.0.1:9001").start(|_| Echo)?;
    println!("listening on {}", server.local_addr());
    loop {
        std::thread::park(); // the shards run until the process ends
    }
}
