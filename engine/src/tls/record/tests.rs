//! The record layer with rustls' records and extracted keys, and against itself with a
//! stand-in key schedule (every path rustls does not take: padding, odd content types, limits,
//! KeyUpdates on demand).

use std::io::Write;
use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use super::*;
use crate::tls::tests::{localhost, pki, reads, roots, server_reads, server_writes, writes};

/// A key schedule without KeyUpdates (the split tests do not need them).
struct NoUpdates;

impl KeySchedule for NoUpdates {
    fn next_rx(&mut self) -> Result<TrafficKey, RecordError> {
        Err(RecordError::Internal("no key updates here"))
    }
    fn next_tx(&mut self) -> Result<TrafficKey, RecordError> {
        Err(RecordError::Internal("no key updates here"))
    }
    fn session_ticket(&mut self, _: &[u8]) -> Result<bool, RecordError> {
        Ok(false)
    }
    fn confidentiality_limit(&self) -> u64 {
        u64::MAX
    }
}

/// A rustls client and server past their handshake, and the server's keys: the client seals,
/// a fresh record layer made from the keys opens, as often as a test needs.
fn rustls_records(
    suite: rustls::SupportedCipherSuite,
) -> (ClientConnection, TrafficKey, TrafficKey) {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![suite];
    let provider = Arc::new(provider);
    let p = pki();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.key.clone()));
    let mut scfg = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(p.chain.clone(), key)
        .unwrap();
    scfg.enable_secret_extraction = true;
    scfg.send_tls13_tickets = 0;
    let ccfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots())
        .with_no_client_auth();
    let mut c = ClientConnection::new(Arc::new(ccfg), localhost()).unwrap();
    let mut s = ServerConnection::new(Arc::new(scfg)).unwrap();
    while c.is_handshaking() || s.is_handshaking() {
        let w = writes(&mut c);
        server_reads(&mut s, &w).unwrap();
        let back = server_writes(&mut s);
        reads(&mut c, &back).unwrap();
    }
    let secrets = s.dangerous_extract_secrets().unwrap();
    let rx = TrafficKey::from_rustls(&secrets.rx.1, secrets.rx.0).unwrap();
    let tx = TrafficKey::from_rustls(&secrets.tx.1, secrets.tx.0).unwrap();
    (c, rx, tx)
}

const SUITES: [rustls::SupportedCipherSuite; 3] = [
    rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
    rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// Messages of these sizes, one `write_all` each (rustls cuts them into 16 KiB records).
fn sealed_by_rustls(c: &mut ClientConnection, sizes: &[usize]) -> (Vec<u8>, Vec<u8>) {
    let mut wire = Vec::new();
    let mut plain = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let m: Vec<u8> = (0..n).map(|j| (i * 31 + j * 7) as u8).collect();
        c.writer().write_all(&m).unwrap();
        wire.extend(writes(c));
        plain.extend(m);
    }
    (wire, plain)
}

/// Open `wire` with a fresh layer, delivered in pieces ending at `cuts`.
fn open_cut(rx: &TrafficKey, tx: &TrafficKey, wire: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut r = RecordLayer::new(NoUpdates, rx, tx).unwrap();
    let mut got = Vec::new();
    let mut start = 0;
    let mut out = Vec::new();
    for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
        let mut piece = wire[start..end].to_vec();
        r.recv(&mut piece, &mut out, |p| {
            // In place and mutable: the decoder unmasks there.
            p.reverse();
            p.reverse();
            got.extend_from_slice(p)
        })
        .unwrap_or_else(|e| panic!("cuts {cuts:?}: {e}"));
        start = end;
    }
    assert!(out.is_empty());
    assert_eq!(
        r.held_bytes(),
        0,
        "a completed record leaves no staging buffer"
    );
    got
}

/// Record boundaries in `wire`.
fn boundaries(wire: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut v = vec![0];
    while let Some(n) = record_len(&wire[at..]).unwrap() {
        at += n;
        v.push(at);
    }
    assert_eq!(at, wire.len());
    v
}

#[test]
fn records_split_in_two_at_every_point_are_opened_whole() {
    for suite in SUITES {
        let (mut c, rx, tx) = rustls_records(suite);
        let (wire, plain) = sealed_by_rustls(&mut c, &[1, 20, 300, 0, 1024]);
        for cut in 0..=wire.len() {
            assert_eq!(
                open_cut(&rx, &tx, &wire, &[cut]),
                plain,
                "{suite:?} cut {cut}"
            );
        }
    }
}

#[test]
fn large_records_split_near_every_boundary_and_every_97th_byte() {
    for suite in SUITES {
        let (mut c, rx, tx) = rustls_records(suite);
        let (wire, plain) = sealed_by_rustls(&mut c, &[16384, 40_000, 20, 16383]);
        let mut cuts: Vec<usize> = (0..=wire.len()).step_by(97).collect();
        for b in boundaries(&wire) {
            cuts.extend((b.saturating_sub(6)..=b + 6).filter(|&x| x <= wire.len()));
        }
        for &cut in &cuts {
            assert_eq!(
                open_cut(&rx, &tx, &wire, &[cut]),
                plain,
                "{suite:?} cut {cut}"
            );
        }
        // Three pieces: both cuts inside one record, and spanning records.
        for &(a, b) in &[(3, 9), (100, 16_000), (10, 40_000), (16_400, 16_410)] {
            assert_eq!(open_cut(&rx, &tx, &wire, &[a, b]), plain);
        }
    }
}

#[test]
fn one_byte_receives_deliver_everything() {
    let (mut c, rx, tx) = rustls_records(SUITES[0]);
    let (wire, plain) = sealed_by_rustls(&mut c, &[1, 700, 20_000]);
    let cuts: Vec<usize> = (1..wire.len()).collect();
    assert_eq!(open_cut(&rx, &tx, &wire, &cuts), plain);
}

#[test]
fn records_out_of_order_replayed_or_missing_fail_authentication() {
    let (mut c, rx, tx) = rustls_records(SUITES[0]);
    let (wire, _) = sealed_by_rustls(&mut c, &[10, 20, 30]);
    let b = boundaries(&wire);
    let rec = |i: usize| wire[b[i]..b[i + 1]].to_vec();
    for (name, stream) in [
        ("swapped", [rec(1), rec(0), rec(2)].concat()),
        ("replayed", [rec(0), rec(0)].concat()),
        ("missing", [rec(0), rec(2)].concat()),
    ] {
        let mut r = RecordLayer::new(NoUpdates, &rx, &tx).unwrap();
        let mut s = stream.clone();
        let mut n = 0;
        let err = r.recv(&mut s, &mut Vec::new(), |_| n += 1);
        assert!(
            matches!(err, Err(RecordError::BadRecordMac)),
            "{name}: {err:?}"
        );
        assert!(n <= 1, "{name}");
    }
    // The sequence number moves by one per record opened.
    let mut r = RecordLayer::new(NoUpdates, &rx, &tx).unwrap();
    let before = r.sequence().0;
    r.recv(&mut wire.clone(), &mut Vec::new(), |_| {}).unwrap();
    assert_eq!(r.sequence().0, before + 3);
}

// The record layer against itself.

/// Keys from a counter: side A's `tx` ladder is side B's `rx` ladder.
struct Ladder {
    rx: (u8, u8),
    tx: (u8, u8),
    limit: u64,
    client: bool,
}

fn rung(label: u8, n: u8) -> TrafficKey {
    TrafficKey::new(Aead::Aes256Gcm, &[label ^ n; 32], [n; 12], 0).unwrap()
}

impl KeySchedule for Ladder {
    fn next_rx(&mut self) -> Result<TrafficKey, RecordError> {
        self.rx.1 += 1;
        Ok(rung(self.rx.0, self.rx.1))
    }
    fn next_tx(&mut self) -> Result<TrafficKey, RecordError> {
        self.tx.1 += 1;
        Ok(rung(self.tx.0, self.tx.1))
    }
    fn session_ticket(&mut self, _: &[u8]) -> Result<bool, RecordError> {
        Ok(self.client)
    }
    fn confidentiality_limit(&self) -> u64 {
        self.limit
    }
}

/// A server and a client layer, each the other's mirror.
fn mirrored(limit: u64) -> (RecordLayer<Ladder>, RecordLayer<Ladder>) {
    let (c2s, s2c) = (0xC0, 0x5C);
    let server = RecordLayer::new(
        Ladder {
            rx: (c2s, 0),
            tx: (s2c, 0),
            limit,
            client: false,
        },
        &rung(c2s, 0),
        &rung(s2c, 0),
    )
    .unwrap();
    let client = RecordLayer::new(
        Ladder {
            rx: (s2c, 0),
            tx: (c2s, 0),
            limit,
            client: true,
        },
        &rung(s2c, 0),
        &rung(c2s, 0),
    )
    .unwrap();
    (server, client)
}

/// `inner` (content, then the type byte, then padding) sealed under `key` by hand.
fn hand_sealed(key: &TrafficKey, inner: &[u8]) -> Vec<u8> {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let len = inner.len() + TAG_LEN;
    let mut rec = vec![23, 3, 3];
    rec.extend_from_slice(&(len as u16).to_be_bytes());
    rec.extend_from_slice(inner);
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key.key).unwrap());
    let mut nonce = key.iv;
    for (b, s) in nonce[4..].iter_mut().zip(key.seq.to_be_bytes()) {
        *b ^= s;
    }
    let (h, body) = rec.split_at_mut(HEADER_LEN);
    let tag = k
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&*h), body)
        .unwrap();
    rec.extend_from_slice(tag.as_ref());
    rec
}

fn recv_all(
    r: &mut RecordLayer<Ladder>,
    wire: &[u8],
) -> (Result<(), RecordError>, Vec<u8>, Vec<u8>) {
    let mut got = Vec::new();
    let mut out = Vec::new();
    let res = r.recv(&mut wire.to_vec(), &mut out, |p| got.extend_from_slice(p));
    (res, got, out)
}

#[test]
fn padding_is_stripped_and_the_inner_type_read() {
    let (mut s, _) = mirrored(u64::MAX);
    let key = rung(0xC0, 0);
    let mut wire = hand_sealed(&key, &[b"padded".as_slice(), &[23], &[0; 40]].concat());
    let key1 = TrafficKey {
        seq: 1,
        ..key.clone()
    };
    wire.extend(hand_sealed(&key1, &[b"plain".as_slice(), &[23]].concat()));
    let (res, got, _) = recv_all(&mut s, &wire);
    res.unwrap();
    assert_eq!(got, b"paddedplain");
}

#[test]
fn inner_content_types_other_than_data_alert_and_handshake_are_unexpected() {
    let key = rung(0xC0, 0);
    for (inner, want_alert) in [
        (vec![0u8; 20], 10),      // no content type at all
        (vec![1, 20], 10),        // change_cipher_spec inside
        (vec![1, 2, 99], 10),     // unknown type
        (vec![22], 10),           // empty handshake record
        (vec![2, 40, 0, 21], 50), // alert of 3 bytes
        (vec![21], 50),           // empty alert
        (
            vec![0; PLAINTEXT_MAX + 2][..]
                .iter()
                .copied()
                .chain([1, 23])
                .collect(),
            22,
        ),
    ] {
        let (mut s, _) = mirrored(u64::MAX);
        let (res, got, out) = recv_all(&mut s, &hand_sealed(&key, &inner));
        let e = res.unwrap_err();
        assert_eq!(e.alert(), Some(want_alert), "{e}");
        assert!(got.is_empty());
        // The alert went out, sealed: the mirror opens it as the peer's fatal alert.
        let (_, mut c) = mirrored(u64::MAX);
        let (res, _, _) = recv_all(&mut c, &out);
        assert!(matches!(res, Err(RecordError::AlertReceived(a)) if a == want_alert));
    }
}

#[test]
fn more_than_32_empty_records_in_a_row_are_refused() {
    let (mut s, mut c) = mirrored(u64::MAX);
    let mut wire = Vec::new();
    for _ in 0..32 {
        c.seal(&[], &mut wire).unwrap();
    }
    c.seal(&[b"data resets the count"], &mut wire).unwrap();
    for _ in 0..32 {
        c.seal(&[], &mut wire).unwrap();
    }
    let (res, got, _) = recv_all(&mut s, &wire);
    res.unwrap();
    assert_eq!(got, b"data resets the count");
    let mut one_more = Vec::new();
    c.seal(&[], &mut one_more).unwrap();
    let (res, _, _) = recv_all(&mut s, &one_more);
    assert!(
        matches!(res, Err(RecordError::UnexpectedMessage(_))),
        "{res:?}"
    );
}

#[test]
fn outer_headers_are_checked_before_the_body_arrives() {
    for (header, want) in [
        (vec![20u8], 10),                 // change_cipher_spec after the handshake
        (vec![22, 3, 3, 0, 5], 10),       // a handshake record in the clear
        (vec![23, 2], 50),                // version 2.x
        (vec![23, 3, 3, 0x41, 0x01], 22), // 2^14 + 257 bytes
        (vec![23, 3, 3, 0, 16], 20),      // too short for a tag and a type
    ] {
        let (mut s, _) = mirrored(u64::MAX);
        let (res, _, _) = recv_all(&mut s, &header);
        assert_eq!(res.unwrap_err().alert(), Some(want), "{header:?}");
        // Byte by byte too (through the staging buffer).
        let (mut s, _) = mirrored(u64::MAX);
        let mut res = Ok(());
        for b in &header {
            res = s.recv(&mut [*b], &mut Vec::new(), |_| {});
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res.unwrap_err().alert(), Some(want), "{header:?} bytewise");
    }
}

#[test]
fn the_largest_record_passes_and_plaintext_over_16_kib_cannot_be_sealed() {
    let (mut s, mut c) = mirrored(u64::MAX);
    let mut wire = Vec::new();
    let big = vec![7u8; PLAINTEXT_MAX];
    c.seal(&[&big], &mut wire).unwrap();
    assert_eq!(wire.len(), PLAINTEXT_MAX + SEAL_OVERHEAD);
    let (res, got, _) = recv_all(&mut s, &wire);
    res.unwrap();
    assert_eq!(got, big);
    assert!(matches!(
        c.seal(&[&big, b"x"], &mut Vec::new()),
        Err(RecordError::RecordOverflow)
    ));
}

#[test]
fn sequence_numbers_never_wrap() {
    let key = rung(0xC0, 0);
    let at_end = TrafficKey {
        seq: u64::MAX,
        ..key.clone()
    };
    let mut r = RecordLayer::new(NoUpdates, &at_end, &at_end).unwrap();
    let mut rec = hand_sealed(&at_end, &[b"x".as_slice(), &[23]].concat());
    let res = r.recv(&mut rec, &mut Vec::new(), |_| panic!("opened"));
    assert!(
        matches!(res, Err(RecordError::SequenceExhausted)),
        "{res:?}"
    );
    // Sending: the key is replaced before its last sequence number (here the schedule
    // refuses, so the connection fails instead of wrapping).
    let mut r = RecordLayer::new(NoUpdates, &key, &at_end).unwrap();
    assert!(r.seal(&[b"x"], &mut Vec::new()).is_err());
    assert!(!r.can_send());
}

#[test]
fn the_sender_rekeys_at_the_confidentiality_limit_and_the_receiver_follows() {
    let (mut s, mut c) = mirrored(4);
    let mut wire = Vec::new();
    for i in 0..20u8 {
        c.seal(&[&[i]], &mut wire).unwrap();
    }
    let (res, got, _) = recv_all(&mut s, &wire);
    res.unwrap();
    assert_eq!(got, (0..20).collect::<Vec<u8>>());
    // 20 data records; a KeyUpdate takes the 4th slot of each key (3 data + 1 update).
    assert_eq!(boundaries(&wire).len() - 1, 20 + 6);
    assert!(c.sequence().1 < 4);
}

#[test]
fn key_update_requests_are_answered_once_before_the_next_record() {
    let (mut s, mut c) = mirrored(u64::MAX);
    let mut wire = Vec::new();
    for _ in 0..3 {
        c.seal_record(22, &[&[24, 0, 0, 1, 1]], &mut wire).unwrap();
        c.tx = Direction::new(&c.keys.next_tx().unwrap()).unwrap();
        c.seal(&[b"data"], &mut wire).unwrap();
    }
    let (res, got, _) = recv_all(&mut s, &wire);
    res.unwrap();
    assert_eq!(got, b"datadatadata");
    assert!(s.wants_flush());
    let mut back = Vec::new();
    s.seal(&[b"answer"], &mut back).unwrap();
    s.seal(&[b" and more"], &mut back).unwrap();
    assert_eq!(
        boundaries(&back).len() - 1,
        3,
        "one KeyUpdate, two data records"
    );
    let (res, got, _) = recv_all(&mut c, &back);
    res.unwrap();
    assert_eq!(got, b"answer and more");
    assert!(!c.wants_flush(), "an answer asks for nothing");
}

#[test]
fn key_update_must_be_well_formed_and_end_its_record() {
    for (msg, want) in [
        (vec![24u8, 0, 0, 1, 2], 47),         // request value out of range
        (vec![24, 0, 0, 2, 0, 0], 50),        // wrong length
        (vec![24, 0, 0, 1, 0, 24, 0, 0], 10), // something after it in its record
        (vec![4, 0, 0, 1, 0], 10),            // a session ticket sent to the server
        (vec![13, 0, 0, 0], 10),              // CertificateRequest: never offered
        (vec![24, 1, 0, 1], 10),              // a message over 64 KiB announced
    ] {
        let (mut s, mut c) = mirrored(u64::MAX);
        let mut wire = Vec::new();
        c.seal_record(22, &[&msg], &mut wire).unwrap();
        let (res, _, _) = recv_all(&mut s, &wire);
        assert_eq!(res.unwrap_err().alert(), Some(want), "{msg:?}");
    }
}

#[test]
fn handshake_messages_split_across_records_are_gathered() {
    let (mut s, mut c) = mirrored(u64::MAX);
    let mut wire = Vec::new();
    c.seal_record(22, &[&[24, 0]], &mut wire).unwrap();
    c.seal_record(22, &[&[0, 1]], &mut wire).unwrap();
    c.seal_record(22, &[&[1]], &mut wire).unwrap();
    c.tx = Direction::new(&c.keys.next_tx().unwrap()).unwrap();
    c.seal(&[b"under the new key"], &mut wire).unwrap();
    let (res, got, _) = recv_all(&mut s, &wire);
    res.unwrap();
    assert_eq!(got, b"under the new key");
    assert!(s.wants_flush());
    assert_eq!(s.held_bytes(), 0);
}

#[test]
fn a_client_takes_session_tickets() {
    let (mut s, mut c) = mirrored(u64::MAX);
    let mut wire = Vec::new();
    s.seal_record(22, &[&[4, 0, 0, 3, 1, 2, 3]], &mut wire)
        .unwrap();
    s.seal(&[b"after the ticket"], &mut wire).unwrap();
    let (res, got, _) = recv_all(&mut c, &wire);
    res.unwrap();
    assert_eq!(got, b"after the ticket");
}

#[test]
fn close_notify_ends_input_and_user_canceled_is_a_warning() {
    let (mut s, mut c) = mirrored(u64::MAX);
    let mut wire = Vec::new();
    c.seal_record(21, &[&[1, 90]], &mut wire).unwrap();
    c.seal(&[b"before"], &mut wire).unwrap();
    c.close_notify(&mut wire);
    assert!(c.seal(&[b"after"], &mut Vec::new()).is_err());
    wire.extend_from_slice(b"garbage after the end is ignored");
    let (res, got, out) = recv_all(&mut s, &wire);
    res.unwrap();
    assert_eq!(got, b"before");
    assert!(s.peer_closed() && out.is_empty());
    let (res, got, _) = recv_all(&mut s, b"more garbage");
    assert!(res.is_ok() && got.is_empty());
}

#[test]
fn a_partial_record_is_held_until_complete_then_released() {
    let (mut s, mut c) = mirrored(u64::MAX);
    let mut wire = Vec::new();
    c.seal(&[&[1u8; 10_000]], &mut wire).unwrap();
    let (a, b) = wire.split_at(3000);
    let (res, got, _) = recv_all(&mut s, a);
    assert!(res.is_ok() && got.is_empty());
    assert!(
        s.held_bytes() >= wire.len(),
        "staging sized for the whole record"
    );
    let (res, got, _) = recv_all(&mut s, b);
    res.unwrap();
    assert_eq!(got.len(), 10_000);
    assert_eq!(s.held_bytes(), 0);
}

#[test]
fn records_lying_together_come_out_as_one_slice_until_a_control_record() {
    let (mut s, mut c) = mirrored(u64::MAX);
    let mut wire = Vec::new();
    c.seal(&[&[1u8; 16384]], &mut wire).unwrap();
    c.seal(&[b"the frame's tail"], &mut wire).unwrap();
    c.seal(&[], &mut wire).unwrap();
    c.seal(&[b"more"], &mut wire).unwrap();
    c.key_update(&mut wire).unwrap();
    c.seal(&[b"after the key update"], &mut wire).unwrap();
    c.seal(&[b", together again"], &mut wire).unwrap();
    let mut slices = Vec::new();
    s.recv(&mut wire.clone(), &mut Vec::new(), |p| {
        slices.push(p.to_vec())
    })
    .unwrap();
    let mut first = vec![1u8; 16384];
    first.extend_from_slice(b"the frame's tail");
    // The empty record splits the run too (it is not data to hand out).
    assert_eq!(
        slices.len(),
        3,
        "{:?}",
        slices.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(slices[0], first);
    assert_eq!(slices[1], b"more");
    assert_eq!(slices[2], b"after the key update, together again");
}
