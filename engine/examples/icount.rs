//! Deterministic workload for instruction counting (`scripts/callgrind.sh`).
//!
//! ```text
//! icount CASE N RUN
//! ```
//!
//! Prepares the input for `N` operations of `CASE`, then performs the first `RUN` of them
//! (`RUN` is 0 or `N`). Setup depends on `N` only, so the instruction count of `RUN = N` minus
//! that of `RUN = 0`, divided by `N`, is the cost of one operation with process start-up and
//! setup taken out. No sockets, clocks or threads: under callgrind the counts repeat exactly.
//!
//! Cases (`list` prints them):
//! - `decode-bin-20`, `decode-bin-16k`, `decode-text-20`, `decode-text-16k`: one masked client
//!   frame through a server-role [`Decoder`] (unmasking, plus UTF-8 for text); one `decode`
//!   call per frame, as when every read brings one frame.
//! - `encode-20`, `encode-16k`: one unmasked server binary frame appended to a reused `Vec`.
//! - `handshake`: `parse_request` of a browser-like upgrade request, then `accept_response`.
//! - `utf8-20`, `utf8-16k`: `validate_utf8` of mixed ASCII / multi-byte text.
//! - `conn-echo-20`, `conn-echo-16k`: one masked binary frame through an open server
//!   [`Connection`] (`handle_recv`), echoed from inside the event into an `Output`, then
//!   `poll_timeout`: the protocol layer's whole part of an echoed message, without the shard.
//! - `conn-echo-deflate-shared-1k`, `conn-echo-deflate-dedicated-1k`: the same with
//!   permessage-deflate negotiated (shared / dedicated terms, the server's defaults: level 1,
//!   12-bit window): one compressed 1 KiB JSON-like message (compressed by the client with
//!   context takeover where the terms allow it) inflated, echoed and compressed.

use std::hint::black_box;
use std::ops::ControlFlow;

use percore::proto::deflate::{encode_compressed, Compressor};
use percore::proto::{
    accept_response, encode_frame, parse_request, AppEvent, Compression, Connection, Decoder,
    Endpoint, Event, Limits, MaskRng, OpCode, Received, Role, Settings, HEADER_BYTES_MAX_DEFAULT,
};

const CASES: &[&str] = &[
    "decode-bin-20",
    "decode-bin-16k",
    "decode-text-20",
    "decode-text-16k",
    "encode-20",
    "encode-16k",
    "handshake",
    "utf8-20",
    "utf8-16k",
    "conn-echo-20",
    "conn-echo-16k",
    "conn-echo-deflate-shared-1k",
    "conn-echo-deflate-dedicated-1k",
];

const REQUEST: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\n\
Host: 127.0.0.1:9001\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n\
Accept: */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Sec-WebSocket-Version: 13\r\n\
Origin: http://127.0.0.1:9001\r\n\
Sec-WebSocket-Extensions: permessage-deflate\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Connection: keep-alive, Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
Upgrade: websocket\r\n\r\n";

/// Deterministic text of `len` bytes: mostly ASCII with a 2-, 3- and 4-byte code point now and
/// then (every 64 bytes), padded with ASCII to the exact length.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let pieces: [&str; 4] = ["é", "€", "𝄞", "abcdefghijklmnopqrstuvwxyz0123456789"];
    let mut i = 0;
    while out.len() < len {
        let p = if out.len() % 64 < 4 {
            pieces[i % 3]
        } else {
            pieces[3]
        };
        i += 1;
        if out.len() + p.len() > len {
            out.resize(len, b'x');
        } else {
            out.extend_from_slice(p.as_bytes());
        }
    }
    out
}

/// `n` masked client frames carrying `payload`, back to back, and each frame's range.
fn masked_frames(n: usize, opcode: OpCode, payload: &[u8]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut buf = Vec::new();
    let mut ranges = Vec::with_capacity(n);
    for i in 0..n {
        let start = buf.len();
        let k = (i as u32).wrapping_mul(0x9E37_79B9).to_le_bytes();
        encode_frame(&mut buf, opcode, true, payload, Some(k));
        ranges.push((start, buf.len()));
    }
    (buf, ranges)
}

fn decode(n: usize, run: usize, opcode: OpCode, payload: &[u8]) -> usize {
    let (mut buf, ranges) = masked_frames(n, opcode, payload);
    let mut dec = Decoder::new(Role::Server, Limits::default());
    let mut total = 0usize;
    for &(s, e) in &ranges[..run] {
        let used = dec
            .decode(black_box(&mut buf[s..e]), |ev| {
                total += match ev {
                    Event::Text(t) => t.len(),
                    Event::Binary(b) => b.len(),
                    _ => 0,
                };
                ControlFlow::Continue(())
            })
            .unwrap_or(0);
        total += used;
    }
    total
}

fn encode(n: usize, run: usize, len: usize) -> usize {
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; len]).collect();
    let mut out = Vec::with_capacity(len + 16);
    let mut total = 0;
    for p in &payloads[..run] {
        out.clear();
        encode_frame(&mut out, OpCode::Binary, true, black_box(p), None);
        total += black_box(&out).len();
    }
    total
}

fn handshake(n: usize, run: usize) -> usize {
    let reqs: Vec<Vec<u8>> = (0..n).map(|_| REQUEST.to_vec()).collect();
    let mut total = 0;
    for r in &reqs[..run] {
        if let Ok(Some((req, used))) = parse_request(black_box(r), HEADER_BYTES_MAX_DEFAULT) {
            let resp = accept_response(&req, None, &[]);
            total += used + black_box(resp).len();
        }
    }
    total
}

fn utf8(n: usize, run: usize, len: usize) -> usize {
    let texts: Vec<Vec<u8>> = (0..n).map(|_| text(len)).collect();
    let mut total = 0;
    for t in &texts[..run] {
        total += percore_simd::validate_utf8(black_box(t)).map_or(0, str::len);
    }
    total
}

fn conn_echo(n: usize, run: usize, payload: &[u8]) -> usize {
    let (mut buf, ranges) = masked_frames(n, OpCode::Binary, payload);
    let mut ep = Endpoint::with_rng(Settings::default(), MaskRng::from_seed([9; 32]));
    let mut out: Vec<u8> = Vec::with_capacity(payload.len() + 16);
    let mut conn = Connection::server(0);
    let mut req = REQUEST.to_vec();
    let Received::Upgrade(r) = conn.handle_recv(0, &mut ep, &mut out, &mut req, |_, _| {}) else {
        unreachable!("a valid request");
    };
    conn.accept_upgrade(0, &mut out, &r, None, &[]);
    let mut total = 0usize;
    for (i, &(s, e)) in ranges[..run].iter().enumerate() {
        out.clear();
        let now = i as u32;
        conn.handle_recv(
            now,
            &mut ep,
            &mut out,
            black_box(&mut buf[s..e]),
            |ev, link| {
                if let AppEvent::Message(m) = ev {
                    link.half.send_message(link.ep, link.out, m);
                }
            },
        );
        total += black_box(&out).len() + conn.poll_timeout(&ep).map_or(0, |t| t as usize & 1);
    }
    total
}

/// JSON-like records of `len` bytes, varied by `seed`.
fn json(len: usize, seed: usize) -> Vec<u8> {
    let mut s = String::new();
    let mut i = seed * 1000;
    while s.len() < len {
        s.push_str(&format!(
            "{{\"id\":{i},\"user\":\"user-{}\",\"price\":{}.{:02},\"tags\":[\"t{}\"]}},",
            i * 7 % 5000,
            i * 13 % 10_000,
            i % 100,
            i % 20
        ));
        i += 1;
    }
    s.truncate(len);
    s.into_bytes()
}

fn conn_echo_deflate(n: usize, run: usize, mode: Compression) -> usize {
    let mut settings = Settings::default();
    settings.deflate.mode = mode;
    let mut ep = Endpoint::with_rng(settings, MaskRng::from_seed([9; 32]));
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut conn = Connection::server(0);
    let mut req = REQUEST.to_vec();
    let Received::Upgrade(r) = conn.handle_recv(0, &mut ep, &mut out, &mut req, |_, _| {}) else {
        unreachable!("a valid request");
    };
    let ext = conn.negotiate_deflate(&mut ep, &r).ok().flatten();
    let ext = ext.unwrap_or_default();
    conn.accept_upgrade(0, &mut out, &r, None, &[]);
    // The client's side: context takeover unless the server said no.
    let takeover = !ext.contains("client_no_context_takeover");
    let mut client = Compressor::new(6, 12, 8);
    let mut frames = Vec::new();
    let mut ranges = Vec::with_capacity(n);
    let mut z = Vec::new();
    for i in 0..n {
        z.clear();
        client.compress(&json(1024, i), &mut z).unwrap_or_default();
        if !takeover {
            client.reset();
        }
        let start = frames.len();
        let k = (i as u32).wrapping_mul(0x9E37_79B9).to_le_bytes();
        encode_compressed(&mut frames, OpCode::Binary, &z, Some(k));
        ranges.push((start, frames.len()));
    }
    let mut total = 0usize;
    for (i, &(s, e)) in ranges[..run].iter().enumerate() {
        out.clear();
        let now = i as u32;
        conn.handle_recv(
            now,
            &mut ep,
            &mut out,
            black_box(&mut frames[s..e]),
            |ev, link| {
                // (Not the same code as `conn_echo`'s closure, which the compiler would
                // otherwise merge with this one and then inline into neither.)
                if let AppEvent::Message(m) = ev {
                    total += usize::from(link.half.send_message(link.ep, link.out, m));
                }
            },
        );
        total += black_box(&out).len() + conn.poll_timeout(&ep).map_or(0, |t| t as usize & 1);
    }
    total
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("list") {
        for c in CASES {
            println!("{c}");
        }
        return;
    }
    let (case, n, run) = match args.as_slice() {
        [c, n, r] => match (n.parse::<usize>(), r.parse::<usize>()) {
            (Ok(n), Ok(r)) if r <= n => (c.as_str(), n, r),
            _ => usage(),
        },
        _ => usage(),
    };
    let total = match case {
        "decode-bin-20" => decode(n, run, OpCode::Binary, &[7u8; 20]),
        "decode-bin-16k" => decode(n, run, OpCode::Binary, &[7u8; 16384]),
        "decode-text-20" => decode(n, run, OpCode::Text, &text(20)),
        "decode-text-16k" => decode(n, run, OpCode::Text, &text(16384)),
        "encode-20" => encode(n, run, 20),
        "encode-16k" => encode(n, run, 16384),
        "handshake" => handshake(n, run),
        "utf8-20" => utf8(n, run, 20),
        "utf8-16k" => utf8(n, run, 16384),
        "conn-echo-20" => conn_echo(n, run, &[7u8; 20]),
        "conn-echo-16k" => conn_echo(n, run, &[7u8; 16384]),
        "conn-echo-deflate-shared-1k" => conn_echo_deflate(n, run, Compression::Shared),
        "conn-echo-deflate-dedicated-1k" => conn_echo_deflate(n, run, Compression::Dedicated),
        _ => usage(),
    };
    println!(
        "{case} n={n} run={run} bytes={total} unmask={}",
        percore_simd::selected_kernel().name()
    );
}

fn usage() -> ! {
    eprintln!("usage: icount CASE N RUN   (RUN = 0 or N; `icount list` prints the cases)");
    std::process::exit(2);
}
