//! Message payloads the load generator sends and verifies.
//!
//! Layout (little endian): `conn: u32` (connection id, or publisher index in broadcast mode),
//! `seq: u64` (per-connection sequence number, from 0), `ts_ns: u64` (CLOCK_MONOTONIC at the
//! intended send time), then filler bytes that depend on the position and on `seq`, so a
//! corrupted, truncated, swapped or stale payload is caught. The filler is a 256-byte pattern
//! ([`Fill::Pattern`]) or JSON-like records ([`Fill::Json`]: keys that repeat, values that do
//! not, compressing about 3:1 like real JSON feeds; for permessage-deflate runs).

/// Bytes taken by the header; the smallest payload size.
pub const HEADER_BYTES: usize = 20;

/// The header fields of a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Connection id (echo) or publisher index (broadcast).
    pub conn: u32,
    /// Sequence number.
    pub seq: u64,
    /// Send timestamp, CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
}

/// What fills a payload after its header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    /// A 256-byte pattern of the position and the sequence number.
    #[default]
    Pattern,
    /// JSON-like records whose values come from the sequence number.
    Json,
}

/// Why a received payload was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// Not the size that was sent.
    Length,
    /// Filler bytes differ from what was sent.
    Corrupt,
    /// Carries another connection's (or an unknown publisher's) id.
    WrongConn,
    /// Sequence number is not the next expected one (reordered, lost or duplicated).
    OutOfOrder,
}

#[inline]
fn fill_byte(i: usize, seq: u64) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(7) ^ (seq as u8)
}

/// The filler repeats every 256 bytes: one period for sequence number `seq`.
fn period(seq: u64) -> [u8; 256] {
    let mut p = [0u8; 256];
    for (i, b) in p.iter_mut().enumerate() {
        *b = fill_byte(i, seq);
    }
    p
}

/// JSON-like records from `seq`, written over `out` (cut at its end).
fn json_fill(out: &mut [u8], seq: u64) {
    use std::io::Write;
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut cur = std::io::Cursor::new(out);
    let mut i = 0u64;
    loop {
        let (a, b, c) = (next(), next(), next());
        let r = write!(
            cur,
            "{{\"id\":{},\"user\":\"user-{}\",\"price\":{}.{:02},\"qty\":{},\"side\":\"{}\",\"tags\":[\"t{}\",\"t{}\"]}},",
            seq * 100 + i,
            a % 5000,
            b % 10_000,
            c % 100,
            a % 9 + 1,
            if b & 1 == 0 { "buy" } else { "sell" },
            c % 20,
            a % 20,
        );
        if r.is_err() {
            return; // the buffer is full (the last record is cut)
        }
        i += 1;
    }
}

/// Fill `buf` (its whole length is the payload) with `stamp` and the filler.
pub fn write(buf: &mut [u8], stamp: Stamp, fill: Fill) {
    debug_assert!(buf.len() >= HEADER_BYTES);
    buf[0..4].copy_from_slice(&stamp.conn.to_le_bytes());
    buf[4..12].copy_from_slice(&stamp.seq.to_le_bytes());
    buf[12..20].copy_from_slice(&stamp.ts_ns.to_le_bytes());
    if fill == Fill::Json {
        json_fill(&mut buf[HEADER_BYTES..], stamp.seq);
        return;
    }
    let p = period(stamp.seq);
    // Position i holds p[i % 256]: the first block starts inside a period, then whole periods.
    let (head, rest) = buf.split_at_mut(buf.len().min(256));
    let n = head.len();
    head[HEADER_BYTES..].copy_from_slice(&p[HEADER_BYTES..n]);
    for chunk in rest.chunks_mut(256) {
        chunk.copy_from_slice(&p[..chunk.len()]);
    }
}

/// Read the header of `buf` and check its length and filler.
pub fn read(buf: &[u8], size: usize, fill: Fill) -> Result<Stamp, Mismatch> {
    if buf.len() != size || size < HEADER_BYTES {
        return Err(Mismatch::Length);
    }
    let mut c = [0u8; 4];
    c.copy_from_slice(&buf[0..4]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&buf[4..12]);
    let mut t = [0u8; 8];
    t.copy_from_slice(&buf[12..20]);
    let stamp = Stamp {
        conn: u32::from_le_bytes(c),
        seq: u64::from_le_bytes(s),
        ts_ns: u64::from_le_bytes(t),
    };
    let ok = match fill {
        Fill::Json => {
            thread_local! {
                static EXPECTED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
            }
            EXPECTED.with(|e| {
                let mut e = e.borrow_mut();
                e.clear();
                e.resize(size - HEADER_BYTES, 0);
                json_fill(&mut e, stamp.seq);
                buf[HEADER_BYTES..] == e[..]
            })
        }
        Fill::Pattern => {
            let p = period(stamp.seq);
            let (head, rest) = buf.split_at(buf.len().min(256));
            head[HEADER_BYTES..] == p[HEADER_BYTES..head.len()]
                && rest.chunks(256).all(|c| c == &p[..c.len()])
        }
    };
    if ok {
        Ok(stamp)
    } else {
        Err(Mismatch::Corrupt)
    }
}

/// Verify an echo received by connection `conn` which expects sequence number `expected_seq`.
pub fn check_echo(
    buf: &[u8],
    size: usize,
    fill: Fill,
    conn: u32,
    expected_seq: u64,
) -> Result<Stamp, Mismatch> {
    let stamp = read(buf, size, fill)?;
    if stamp.conn != conn {
        return Err(Mismatch::WrongConn);
    }
    if stamp.seq != expected_seq {
        return Err(Mismatch::OutOfOrder);
    }
    Ok(stamp)
}

/// Verify a broadcast delivery: `next_seq[p]` is the sequence number expected next from
/// publisher `p`; it advances on success.
pub fn check_broadcast(
    buf: &[u8],
    size: usize,
    fill: Fill,
    next_seq: &mut [u64],
) -> Result<Stamp, Mismatch> {
    let stamp = read(buf, size, fill)?;
    let Some(next) = next_seq.get_mut(stamp.conn as usize) else {
        return Err(Mismatch::WrongConn);
    };
    if stamp.seq != *next {
        // Resynchronise so one gap counts once, not for every later message.
        *next = stamp.seq.wrapping_add(1);
        return Err(Mismatch::OutOfOrder);
    }
    *next += 1;
    Ok(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(size: usize, conn: u32, seq: u64) -> Vec<u8> {
        msg_with(size, conn, seq, Fill::Pattern)
    }

    fn msg_with(size: usize, conn: u32, seq: u64, fill: Fill) -> Vec<u8> {
        let mut v = vec![0u8; size];
        write(
            &mut v,
            Stamp {
                conn,
                seq,
                ts_ns: 1234,
            },
            fill,
        );
        v
    }

    #[test]
    fn json_filler_is_json_like_checked_and_differs_by_sequence() {
        let a = msg_with(1024, 3, 7, Fill::Json);
        let text = std::str::from_utf8(&a[HEADER_BYTES..]).unwrap();
        assert!(text.starts_with("{\"id\":700,\"user\":\"user-"), "{text}");
        assert_eq!(check_echo(&a, 1024, Fill::Json, 3, 7).map(|s| s.seq), Ok(7));
        let b = msg_with(1024, 3, 8, Fill::Json);
        assert_ne!(a[HEADER_BYTES..], b[HEADER_BYTES..]);
        let mut bad = a.clone();
        bad[500] ^= 1;
        assert_eq!(
            check_echo(&bad, 1024, Fill::Json, 3, 7),
            Err(Mismatch::Corrupt)
        );
        assert_eq!(
            check_echo(&a, 1024, Fill::Pattern, 3, 7),
            Err(Mismatch::Corrupt)
        );
    }

    #[test]
    fn echo_of_the_expected_message_is_accepted() {
        for size in [20, 21, 64, 16 << 10] {
            let m = msg(size, 9, 3);
            assert_eq!(
                check_echo(&m, size, Fill::Pattern, 9, 3),
                Ok(Stamp {
                    conn: 9,
                    seq: 3,
                    ts_ns: 1234
                })
            );
        }
    }

    #[test]
    fn filler_is_the_position_pattern_at_every_offset() {
        for size in [20, 255, 256, 257, 1000, 4096 + 3] {
            let m = msg(size, 1, 77);
            for (i, &b) in m.iter().enumerate().skip(HEADER_BYTES) {
                assert_eq!(b, fill_byte(i, 77), "size {size} offset {i}");
            }
        }
    }

    #[test]
    fn a_corrupted_byte_is_caught_at_every_offset() {
        let clean = msg(600, 2, 5);
        for i in HEADER_BYTES..600 {
            let mut m = clean.clone();
            m[i] ^= 0x01;
            assert_eq!(
                check_echo(&m, 600, Fill::Pattern, 2, 5),
                Err(Mismatch::Corrupt),
                "offset {i}"
            );
        }
    }

    #[test]
    fn reordered_echo_is_out_of_order() {
        // Messages 0 and 1 sent; 1 comes back first.
        let m1 = msg(64, 5, 1);
        assert_eq!(
            check_echo(&m1, 64, Fill::Pattern, 5, 0),
            Err(Mismatch::OutOfOrder)
        );
    }

    #[test]
    fn corrupted_filler_byte_is_caught() {
        let mut m = msg(100, 5, 0);
        m[77] ^= 0x40;
        assert_eq!(
            check_echo(&m, 100, Fill::Pattern, 5, 0),
            Err(Mismatch::Corrupt)
        );
    }

    #[test]
    fn corrupted_sequence_number_is_caught() {
        let mut m = msg(100, 5, 0);
        m[4] ^= 1; // seq 0 -> 1: the filler no longer matches either
        assert!(check_echo(&m, 100, Fill::Pattern, 5, 0).is_err());
    }

    #[test]
    fn echo_of_another_connection_is_wrong_conn() {
        let m = msg(20, 6, 0);
        assert_eq!(
            check_echo(&m, 20, Fill::Pattern, 5, 0),
            Err(Mismatch::WrongConn)
        );
    }

    #[test]
    fn truncated_or_extended_echo_is_a_length_error() {
        let m = msg(64, 1, 0);
        assert_eq!(
            check_echo(&m[..63], 64, Fill::Pattern, 1, 0),
            Err(Mismatch::Length)
        );
        let mut longer = m.clone();
        longer.push(0);
        assert_eq!(
            check_echo(&longer, 64, Fill::Pattern, 1, 0),
            Err(Mismatch::Length)
        );
    }

    #[test]
    fn broadcast_tracks_each_publisher_and_counts_a_gap_once() {
        let mut next = vec![0u64; 2];
        assert!(check_broadcast(&msg(32, 0, 0), 32, Fill::Pattern, &mut next).is_ok());
        assert!(check_broadcast(&msg(32, 1, 0), 32, Fill::Pattern, &mut next).is_ok());
        assert!(check_broadcast(&msg(32, 0, 1), 32, Fill::Pattern, &mut next).is_ok());
        // Publisher 0 message 2 lost: 3 is out of order, then 4 is fine again.
        assert_eq!(
            check_broadcast(&msg(32, 0, 3), 32, Fill::Pattern, &mut next),
            Err(Mismatch::OutOfOrder)
        );
        assert!(check_broadcast(&msg(32, 0, 4), 32, Fill::Pattern, &mut next).is_ok());
        // Unknown publisher.
        assert_eq!(
            check_broadcast(&msg(32, 2, 0), 32, Fill::Pattern, &mut next),
            Err(Mismatch::WrongConn)
        );
    }
}
