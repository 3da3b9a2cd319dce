//! A deflate bomb (16 MiB of zeros compressed to about 16 KB) is refused with 1009 without
//! the server ever holding more than `message_bytes_max` of inflated bytes: this test binary
//! counts every heap byte (a counting global allocator) while one sans-IO connection receives
//! the bomb, whole and fragmented, in shared and dedicated mode.
//!
//! One test per binary: the allocator counts the whole process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use percore::proto::{
    encode_frame, Compression, Connection, Endpoint, MaskRng, OpCode, Received, Settings,
};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged (so
// `System`'s guarantees hold) and only adds bookkeeping on atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (the caller upholds `alloc`'s contract).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (`ptr` came from this allocator with `layout`).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is (the caller upholds `realloc`'s contract).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now =
                    LIVE.fetch_add(new_size - layout.size(), Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const LIMIT: usize = 1 << 20;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

/// 16 MiB of zeros, raw deflate at level 9, sync flush, trailer removed.
fn bomb() -> Vec<u8> {
    let zeros = vec![0u8; 16 << 20];
    let mut c = percore::proto::deflate::Compressor::new(9, 15, 9);
    let mut z = Vec::new();
    c.compress(&zeros, &mut z).unwrap();
    z
}

/// Client frames carrying `z` compressed (RSV1 on the first), in `pieces` frames.
fn frames(z: &[u8], pieces: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let chunk = z.len().div_ceil(pieces);
    let parts: Vec<&[u8]> = z.chunks(chunk).collect();
    for (i, p) in parts.iter().enumerate() {
        let op = if i == 0 {
            OpCode::Binary
        } else {
            OpCode::Continuation
        };
        let start = out.len();
        encode_frame(&mut out, op, i + 1 == parts.len(), p, Some([9, 8, 7, 6]));
        if i == 0 {
            out[start] |= 0x40; // RSV1
        }
    }
    out
}

/// Receive the bomb on a fresh connection in `mode`; the peak of live heap bytes above what
/// was live before the receive.
fn peak_while_receiving(mode: Compression, wire: &[u8]) -> usize {
    let mut settings = Settings::default();
    settings.limits.message_bytes_max = LIMIT;
    settings.deflate.mode = mode;
    let mut ep = Endpoint::with_rng(settings, MaskRng::from_seed([3; 32]));
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut conn = Connection::server(0);
    let mut req = REQUEST.to_vec();
    let Received::Upgrade(r) = conn.handle_recv(0, &mut ep, &mut out, &mut req, |_, _| {}) else {
        panic!("a valid request");
    };
    let ext = conn.negotiate_deflate(&mut ep, &r).unwrap();
    assert!(ext.is_some(), "{mode:?}: deflate agreed");
    conn.accept_upgrade(0, &mut out, &r, None, &[]);
    out.clear();
    let mut wire = wire.to_vec();
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let mut delivered = 0;
    let got = conn.handle_recv(1, &mut ep, &mut out, &mut wire, |_, _| delivered += 1);
    let peak = PEAK.load(Relaxed) - base;
    match got {
        Received::Failed(e) => assert_eq!(e.code.0, 1009, "{mode:?}: {e}"),
        other => panic!("{mode:?}: expected 1009, got {other:?}"),
    }
    assert_eq!(delivered, 0);
    // The close frame 1009 is queued.
    assert_eq!((out[0], &out[2..4]), (0x88, &[0x03, 0xf1][..]));
    peak
}

#[test]
fn deflate_bomb_is_refused_within_the_message_limit() {
    let z = bomb();
    assert!(z.len() < 64 << 10, "the bomb is small: {} bytes", z.len());
    for mode in [Compression::Shared, Compression::Dedicated] {
        for pieces in [1, 7] {
            let peak = peak_while_receiving(mode, &frames(&z, pieces));
            println!("{mode:?}, {pieces} frame(s): peak {peak} bytes above the start");
            // The inflated bytes stop at the limit (+1 to see it passed); the rest is the
            // shard's inflater (about 42 KiB, created on first use) and the compressed bytes
            // of a fragmented message (about 16 KB).
            assert!(
                peak <= LIMIT + (128 << 10),
                "{mode:?}, {pieces} frames: held {peak} bytes for a {LIMIT}-byte limit"
            );
        }
    }
}
