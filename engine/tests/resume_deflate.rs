//! Resume (`percore.resume.v1`) over a connection that negotiated permessage-deflate, in shared
//! and dedicated mode on both backends: live publishes, the history replayed after a `resume`
//! and the handler's own replies all reach the client readable with one decompressor kept for
//! the whole connection (compressed per the connection's terms from the threshold up, plain with
//! RSV1 clear below it), and a connection without deflate gets the same replay uncompressed.
//!
//! The client inflates with flate2 on miniz_oxide, independent of the server's zlib-rs.

mod common;

use common::raw::{op, Frame, RawClient};
use flate2::{Decompress, FlushDecompress};
use percore::{Backend, Compression, Message};

const OFFER: (&str, &str) = (
    "Sec-WebSocket-Extensions",
    "permessage-deflate; client_max_window_bits",
);
const RESUME: (&str, &str) = ("Sec-WebSocket-Protocol", percore::resume::PROTOCOL);

/// Inflate one message (its trailer put back) with `d`, which keeps the server's context.
fn inflate(d: &mut Decompress, data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(data.len() * 4 + 64);
    let start = d.total_in();
    loop {
        let used = (d.total_in() - start) as usize;
        d.decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
            .unwrap();
        if (d.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    out
}

/// JSON-like text of `n` bytes (compressible, varied by `seed`).
fn json(n: usize, seed: usize) -> String {
    let mut s = String::with_capacity(n + 64);
    let mut i = seed;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"room\":\"r-{}\",\"text\":\"hello {}\"}},",
            i % 7,
            i * 31 % 1000
        ));
        i += 1;
    }
    s.truncate(n);
    s
}

/// The next text message from the server: (RSV1 set, its text), inflated with `d` when
/// compressed. Server messages are single frames; pings are skipped.
fn next_text(c: &mut RawClient, d: &mut Decompress) -> (bool, String) {
    loop {
        let f: Frame = c.read_frame().unwrap();
        if f.opcode == op::PING || f.opcode == op::PONG {
            continue;
        }
        assert!(f.fin && f.opcode == op::TEXT, "a whole text message: {f:?}");
        let compressed = f.rsv == 4;
        assert!(compressed || f.rsv == 0, "rsv {}", f.rsv);
        let bytes = match compressed {
            true => inflate(d, &f.payload),
            false => f.payload,
        };
        return (compressed, String::from_utf8(bytes).unwrap());
    }
}

fn connect(addr: std::net::SocketAddr, deflate: bool) -> RawClient {
    let headers: &[(&str, &str)] = match deflate {
        true => &[OFFER, RESUME],
        false => &[RESUME],
    };
    let c = RawClient::connect_with(addr, "/", headers).unwrap();
    assert_eq!(
        c.response.header("sec-websocket-protocol"),
        Some(percore::resume::PROTOCOL)
    );
    let ext = c.response.header("sec-websocket-extensions");
    assert_eq!(ext.is_some(), deflate, "{ext:?}");
    c
}

fn replay_to_a_deflate_connection(backend: Backend, mode: Compression) {
    let server = common::start_with(backend, |b| {
        b.shards(percore::Shards::Count(1))
            .compression(mode)
            .resume_protocol(true)
            .topic_history_messages_max(16)
    });
    let mut live = connect(server.addr, true);
    let mut d_live = Decompress::new(false);
    live.send_text("sub t").unwrap();
    let (_, ok) = next_text(&mut live, &mut d_live);
    let epoch = ok.split(' ').nth(1).unwrap().to_owned();
    assert_eq!(ok, format!("ok {epoch} 0 t"));
    // Large compressible messages and one below the 64-byte threshold.
    let sent = [json(2000, 1), "hi".to_owned(), json(3000, 2), json(1500, 3)];
    for m in &sent {
        server.handle().publish("t", Message::Text(m)).unwrap();
    }
    let envelope = |i: usize| format!("m {epoch} {} t\n{}", i + 1, sent[i]);
    for (i, m) in sent.iter().enumerate() {
        let (compressed, text) = next_text(&mut live, &mut d_live);
        assert_eq!(text, envelope(i), "live {i}");
        assert_eq!(compressed, m.len() > 64, "live {i}");
    }

    // A second connection resumes from the start: the whole history is replayed to it.
    let mut late = connect(server.addr, true);
    let mut d_late = Decompress::new(false);
    late.send_text(&format!("resume {epoch} 0 t")).unwrap();
    assert_eq!(
        next_text(&mut late, &mut d_late).1,
        format!("ok {epoch} 0 t")
    );
    for (i, m) in sent.iter().enumerate() {
        let (compressed, text) = next_text(&mut late, &mut d_late);
        assert_eq!(text, envelope(i), "replayed {i}");
        assert_eq!(compressed, m.len() > 64, "replayed {i}");
    }
    // Then live again, and the handler's own reply (the connection's context in dedicated
    // mode), all with the same decompressor.
    let next = json(2500, 4);
    server.handle().publish("t", Message::Text(&next)).unwrap();
    let (compressed, text) = next_text(&mut late, &mut d_late);
    assert_eq!(text, format!("m {epoch} 5 t\n{next}"));
    assert!(compressed);
    for seed in [5, 5, 6] {
        let reply = json(1800, seed);
        late.send_text(&format!("msg {reply}")).unwrap();
        let (compressed, text) = next_text(&mut late, &mut d_late);
        assert_eq!(text, reply, "echo {seed}");
        assert!(compressed, "echo {seed}");
    }

    // Without permessage-deflate, the same replay goes out plain.
    let mut plain = connect(server.addr, false);
    let mut unused = Decompress::new(false);
    plain.send_text(&format!("resume {epoch} 0 t")).unwrap();
    assert_eq!(
        next_text(&mut plain, &mut unused).1,
        format!("ok {epoch} 0 t")
    );
    for i in 0..sent.len() {
        assert_eq!(next_text(&mut plain, &mut unused), (false, envelope(i)));
    }
    assert_eq!(server.handle().stats().protocol_errors, 0);
}

every_backend! {
    fn history_replayed_to_a_shared_deflate_connection_is_readable(backend) {
        replay_to_a_deflate_connection(backend, Compression::Shared);
    }

    fn history_replayed_to_a_dedicated_deflate_connection_is_readable(backend) {
        replay_to_a_deflate_connection(backend, Compression::Dedicated);
    }
}
