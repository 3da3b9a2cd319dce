//! The TLS 1.3 record layer (`percore::tls::RecordLayer`) over arbitrary input, with a stand-in
//! key schedule so that no handshake is needed per input. The asserts are the properties.

use percore::tls::{
    record_len, Aead, KeySchedule, RecordError, RecordLayer, TrafficKey, PLAINTEXT_MAX,
};

/// Keys from a counter (label ^ rung): one side's sending ladder is the other's receiving one.
struct Ladder {
    aead: Aead,
    rx: (u8, u8),
    tx: (u8, u8),
    limit: u64,
    client: bool,
}

fn rung(aead: Aead, label: u8, n: u8) -> TrafficKey {
    let len = if aead == Aead::Aes128Gcm { 16 } else { 32 };
    TrafficKey::new(aead, &[label ^ n; 32][..len], [n; 12], 0).expect("key of the right length")
}

impl KeySchedule for Ladder {
    fn next_rx(&mut self) -> Result<TrafficKey, RecordError> {
        self.rx.1 = self.rx.1.wrapping_add(1);
        Ok(rung(self.aead, self.rx.0, self.rx.1))
    }
    fn next_tx(&mut self) -> Result<TrafficKey, RecordError> {
        self.tx.1 = self.tx.1.wrapping_add(1);
        Ok(rung(self.aead, self.tx.0, self.tx.1))
    }
    fn session_ticket(&mut self, _: &[u8]) -> Result<bool, RecordError> {
        Ok(self.client)
    }
    fn confidentiality_limit(&self) -> u64 {
        self.limit
    }
}

/// The receiver (server or client) and the peer that sends to it.
fn pair(aead: Aead, limit: u64, client: bool) -> (RecordLayer<Ladder>, RecordLayer<Ladder>) {
    let (up, down) = (0xC0, 0x5C);
    let (rx_label, tx_label) = if client { (down, up) } else { (up, down) };
    let receiver = RecordLayer::new(
        Ladder {
            aead,
            rx: (rx_label, 0),
            tx: (tx_label, 0),
            limit,
            client,
        },
        &rung(aead, rx_label, 0),
        &rung(aead, tx_label, 0),
    )
    .expect("layer");
    let sender = RecordLayer::new(
        Ladder {
            aead,
            rx: (tx_label, 0),
            tx: (rx_label, 0),
            limit,
            client: !client,
        },
        &rung(aead, tx_label, 0),
        &rung(aead, rx_label, 0),
    )
    .expect("layer");
    (receiver, sender)
}

/// What one receiver made of a byte stream.
#[derive(Debug, PartialEq)]
struct Outcome {
    plain: Vec<u8>,
    alert: Option<Option<u8>>,
    out: Vec<u8>,
    peer_closed: bool,
    wants_flush: bool,
}

/// Feed `wire` to `r` in pieces ending at `cuts`, as a transport does.
fn receive(mut r: RecordLayer<Ladder>, wire: &[u8], cuts: &[usize]) -> Outcome {
    let mut plain = Vec::new();
    let mut out = Vec::new();
    let mut alert = None;
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
        let end = end.clamp(start, wire.len());
        let mut piece = wire[start..end].to_vec();
        start = end;
        let before = plain.len();
        let failed_before = alert.is_some();
        let piece_len = piece.len();
        match r.recv(&mut piece, &mut out, |p| {
            // Records lying together come out as one slice, never more than arrived (or one
            // record completed from the staging buffer).
            assert!(p.len() <= piece_len.max(PLAINTEXT_MAX));
            plain.extend_from_slice(p)
        }) {
            Ok(()) => {}
            Err(e) => {
                assert!(alert.is_none(), "an error after an error: {e}");
                alert = Some(e.alert());
                assert!(r.is_failed());
            }
        }
        // Nothing is delivered after a failure.
        assert!(!failed_before || plain.len() == before);
    }
    assert!(r.held_bytes() <= 2 * (5 + (1 << 14) + 256) + (1 << 16) + 4);
    Outcome {
        plain,
        alert,
        out,
        peer_closed: r.peer_closed(),
        wants_flush: r.wants_flush(),
    }
}

/// The fuzz target: byte 0 picks the AEAD, a small confidentiality limit, the receiver's role and
/// the mode; bytes 1-4 two cut points; the rest is either raw received bytes or a script the
/// sending peer plays (data, empty records, KeyUpdates, tickets, alerts, close_notify, odd
/// content types, a flipped byte). Checked: no panic; the result does not depend on how the
/// stream is cut (whole, in three pieces, byte by byte for short streams); an error is final and
/// its alert is what goes out, sealed so the peer reads it; a clean script delivers exactly its
/// data, a broken one a prefix of it.
pub fn tls_records(data: &[u8]) {
    let [sel, c0, c1, c2, c3, rest @ ..] = data else {
        return;
    };
    let aead = match sel & 3 {
        0 => Aead::Aes128Gcm,
        1 => Aead::Aes256Gcm,
        _ => Aead::Chacha20Poly1305,
    };
    let limit = if sel & 4 != 0 { 5 } else { u64::MAX };
    let client = sel & 8 != 0;
    let (wire, expect) = if sel & 0x80 != 0 {
        (rest.to_vec(), None)
    } else {
        let (_, sender) = pair(aead, limit, client);
        let (wire, e) = play(sender, rest, client);
        (wire, Some(e))
    };
    let a = usize::from(u16::from_le_bytes([*c0, *c1])) % (wire.len() + 1);
    let b = usize::from(u16::from_le_bytes([*c2, *c3])) % (wire.len() + 1);
    let cuts = [a.min(b), a.max(b)];
    let whole = receive(pair(aead, limit, client).0, &wire, &[]);
    let split = receive(pair(aead, limit, client).0, &wire, &cuts);
    assert_eq!(whole, split, "cuts {cuts:?}");
    if wire.len() <= 256 {
        let bytewise: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(
            whole,
            receive(pair(aead, limit, client).0, &wire, &bytewise)
        );
    }
    // What went out (an alert, sealed) is what the peer reads.
    let (_, mut peer) = pair(aead, limit, client);
    let mut heard = None;
    let mut got = Vec::new();
    let res = peer.recv(&mut whole.out.clone(), &mut Vec::new(), |p| {
        got.extend_from_slice(p)
    });
    if let Err(RecordError::AlertReceived(d)) = res {
        heard = Some(d);
    }
    assert!(got.is_empty(), "the receiver sent data");
    match whole.alert {
        Some(Some(d)) => assert_eq!(heard, Some(d), "alert {d} sent and read back"),
        _ => assert!(whole.out.is_empty(), "output without an alert"),
    }
    if let Some(e) = expect {
        assert!(
            e.all.starts_with(&whole.plain),
            "delivered what was not sent"
        );
        if e.clean {
            assert_eq!(whole.alert, None, "a clean script failed");
            assert_eq!(whole.plain, e.plain);
            assert_eq!(whole.peer_closed, e.closed);
            assert_eq!(whole.wants_flush, e.update_requested);
        }
    }
}

/// What a played script should give.
struct Expect {
    /// The data sealed before `close_notify` (delivered exactly when `clean`).
    plain: Vec<u8>,
    /// Every data payload sealed, in order: what is delivered is always a prefix of it.
    all: Vec<u8>,
    clean: bool,
    closed: bool,
    update_requested: bool,
}

/// The peer plays `script`: each op byte and its arguments append records to the wire.
fn play(mut s: RecordLayer<Ladder>, script: &[u8], to_client: bool) -> (Vec<u8>, Expect) {
    let mut wire = Vec::new();
    let mut e = Expect {
        plain: Vec::new(),
        all: Vec::new(),
        clean: true,
        closed: false,
        update_requested: false,
    };
    let mut it = script.iter().copied();
    while let Some(op) = it.next() {
        let arg = it.next().unwrap_or(0);
        let done = e.closed || !e.clean;
        match op % 8 {
            0 => {
                let n = usize::from(arg) * 131 % (PLAINTEXT_MAX + 1);
                let data: Vec<u8> = (0..n).map(|i| (i as u8) ^ arg).collect();
                if s.seal(&[&data], &mut wire).is_ok() {
                    e.all.extend_from_slice(&data);
                    if !done {
                        e.plain.extend_from_slice(&data);
                    }
                }
                if n == 0 && !done {
                    e.clean = false; // an empty record: see op 1
                }
            }
            1 => {
                // Empty records: at most 32 in a row are fine.
                let _ = s.seal(&[], &mut wire);
                if !done {
                    e.clean = false; // whether the run stays under 32 is not modelled
                }
            }
            2 => {
                let requested = arg & 1;
                if s.seal_content(22, &[&[24, 0, 0, 1, requested]], &mut wire)
                    .is_ok()
                {
                    let _ = s.next_tx_key();
                    if !done && requested == 1 {
                        e.update_requested = true;
                    }
                }
            }
            3 => {
                let _ = s.seal_content(22, &[&[4, 0, 0, 2, arg, arg]], &mut wire);
                if !to_client && !done {
                    e.clean = false;
                }
            }
            4 => {
                let _ = s.seal_content(21, &[&[1, 90]], &mut wire);
            }
            5 => {
                s.close_notify(&mut wire);
                if !done {
                    e.closed = true;
                }
            }
            6 => {
                let len = usize::from(it.next().unwrap_or(0)) % 40;
                let body: Vec<u8> = (0..len).map(|i| arg.wrapping_add(i as u8)).collect();
                let sealed = s.seal_content(arg, &[&body], &mut wire).is_ok();
                let harmless = (arg == 23 && !body.is_empty())
                    || (arg == 21 && body == [1, 90])
                    || (arg == 0 && body.iter().any(|&b| b != 0) && last_nonzero_is(&body, 23));
                // Data this record delivers if all goes well: the body (type 23), or, zero
                // type = padding, the body up to its last non-zero byte when that is 23.
                let content: &[u8] = match arg {
                    23 => &body,
                    0 if last_nonzero_is(&body, 23) => {
                        &body[..body.iter().rposition(|&b| b != 0).unwrap_or(0)]
                    }
                    _ => &[],
                };
                if sealed {
                    e.all.extend_from_slice(content);
                }
                if !harmless && !done {
                    e.clean = false;
                } else if !done {
                    e.plain.extend_from_slice(content);
                }
            }
            _ => {
                if !wire.is_empty() {
                    let at = usize::from(arg) * 61 % wire.len();
                    wire[at] ^= 1 << (arg % 8);
                    // The flip may land in any record sealed so far: not modelled.
                    e.clean = false;
                }
            }
        }
    }
    // The script's records are whole: the framing is intact unless a byte was flipped.
    if e.clean {
        let mut at = 0;
        while let Ok(Some(n)) = record_len(&wire[at..]) {
            at += n;
        }
        assert_eq!(at, wire.len());
    }
    (wire, e)
}

fn last_nonzero_is(b: &[u8], t: u8) -> bool {
    b.iter().rev().find(|&&x| x != 0) == Some(&t)
}
