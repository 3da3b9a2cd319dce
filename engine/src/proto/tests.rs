//! One test per RFC 6455 rule, plus property tests for the frame codec and the decoder.

use core::ops::ControlFlow;

use proptest::prelude::*;

use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// An owned copy of an [`Event`], for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    Compressed(bool, Vec<u8>),
}

impl From<Event<'_>> for Ev {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::Text(t) => Ev::Text(t.to_owned()),
            Event::Binary(b) => Ev::Binary(b.to_vec()),
            Event::Ping(b) => Ev::Ping(b.to_vec()),
            Event::Pong(b) => Ev::Pong(b.to_vec()),
            Event::Close(c) => Ev::Close(c.code.map(|c| c.0), c.reason.to_owned()),
            Event::Compressed { text, data } => Ev::Compressed(text, data.to_vec()),
        }
    }
}

fn frame(opcode: OpCode, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, opcode, fin, payload, mask);
    out
}

/// A masked frame, as a client sends it.
fn cframe(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    frame(opcode, fin, payload, Some(KEY))
}

/// Decode `bytes` delivered in pieces cut at `cuts`, the way a driver does: keep the unconsumed
/// tail, append the next read, decode again. Checks the tail bound after every call.
fn decode_split(
    role: Role,
    limits: Limits,
    bytes: &[u8],
    cuts: &[usize],
) -> (Vec<Ev>, Result<(), ProtocolError>) {
    let mut dec = Decoder::new(role, limits);
    let mut events = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut start = 0;
    let mut ends: Vec<usize> = cuts.iter().copied().filter(|&c| c <= bytes.len()).collect();
    ends.sort_unstable();
    ends.push(bytes.len());
    for end in ends {
        if end < start {
            continue;
        }
        pending.extend_from_slice(&bytes[start..end]);
        start = end;
        let r = dec.decode(&mut pending, |e| {
            events.push(Ev::from(e));
            ControlFlow::Continue(())
        });
        match r {
            Ok(n) => {
                pending.drain(..n);
                // After a Close event decoding stops: whatever follows it stays unconsumed,
                // so the bound on the tail holds only while the connection is open.
                if dec.received_close() {
                    break;
                }
                assert!(
                    pending.len() <= MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD_LEN,
                    "unconsumed tail of {} bytes",
                    pending.len()
                );
            }
            Err(e) => return (events, Err(e)),
        }
    }
    (events, Ok(()))
}

fn decode_server(bytes: &[u8]) -> (Vec<Ev>, Result<(), ProtocolError>) {
    decode_split(Role::Server, Limits::default(), bytes, &[])
}

fn err_code(bytes: &[u8]) -> Option<u16> {
    decode_server(bytes).1.err().map(|e| e.code.0)
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------- frame header (§5.2)

#[test]
fn header_roundtrips_in_all_three_length_forms() {
    for (len, hlen) in [
        (0u64, 2),
        (125, 2),
        (126, 4),
        (65535, 4),
        (65536, 10),
        (1 << 40, 10),
    ] {
        for mask in [None, Some(KEY)] {
            let h = FrameHeader {
                fin: true,
                rsv: 0,
                opcode: OpCode::Binary,
                mask,
                payload_len: len,
            };
            let mut out = [0u8; MAX_HEADER_LEN];
            let n = h.encode(&mut out);
            let expect = hlen + if mask.is_some() { 4 } else { 0 };
            assert_eq!(n, expect, "len {len}");
            assert_eq!(FrameHeader::parse(&out[..n]), Ok(Some((h, n))));
            assert_eq!(FrameHeader::parse(&out[..n - 1]), Ok(None));
        }
    }
}

#[test]
fn rfc_example_masked_hello_decodes() {
    // RFC 6455 §5.7: a single-frame masked text message "Hello".
    let mut bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let mut dec = Decoder::new(Role::Server, Limits::default());
    let mut got = Vec::new();
    let n = dec
        .decode(&mut bytes, |e| {
            got.push(Ev::from(e));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(n, 11);
    assert_eq!(got, vec![Ev::Text("Hello".into())]);
}

#[test]
fn rfc_example_unmasked_hello_encodes() {
    assert_eq!(
        frame(OpCode::Text, true, b"Hello", None),
        [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
    );
    assert_eq!(
        frame(OpCode::Text, true, b"Hello", Some(KEY)),
        [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
    );
}

#[test]
fn reserved_opcode_is_1002() {
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let err = FrameHeader::parse(&[0x80 | op]).unwrap_err();
        assert_eq!(err.code, CloseCode::PROTOCOL_ERROR, "opcode {op}");
        assert_eq!(err_code(&[0x80 | op, 0x80, 1, 2, 3, 4]), Some(1002));
    }
}

#[test]
fn rsv_bits_without_extension_are_1002() {
    for rsv in 1u8..=7 {
        assert_eq!(err_code(&[0x81 | (rsv << 4), 0x80, 1, 2, 3, 4]), Some(1002));
    }
}

#[test]
fn control_frame_over_125_bytes_is_1002() {
    let mut bytes = vec![0x89, 0x80 | 126, 0, 126];
    bytes.extend_from_slice(&KEY);
    bytes.extend_from_slice(&[0; 126]);
    assert_eq!(err_code(&bytes), Some(1002));
    // Detected from the second byte alone.
    assert!(FrameHeader::parse(&[0x89, 0x80 | 126]).is_err());
}

#[test]
fn fragmented_control_frame_is_1002() {
    for op in [0x8u8, 0x9, 0xA] {
        assert_eq!(err_code(&[op, 0x80, 1, 2, 3, 4]), Some(1002));
    }
}

#[test]
fn sixty_four_bit_length_msb_set_is_1002() {
    let mut bytes = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
    bytes.extend_from_slice(&KEY);
    assert_eq!(err_code(&bytes), Some(1002));
    // Detected as soon as the first length byte is there.
    assert!(FrameHeader::parse(&[0x82, 0xFF, 0x80]).is_err());
}

// ---------------------------------------------------------------- masking (§5.1, §5.3)

#[test]
fn unmasked_client_frame_is_1002() {
    assert_eq!(
        err_code(&frame(OpCode::Text, true, b"hi", None)),
        Some(1002)
    );
}

#[test]
fn masked_server_frame_is_1002_for_client() {
    let (_, r) = decode_split(
        Role::Client,
        Limits::default(),
        &frame(OpCode::Text, true, b"hi", Some(KEY)),
        &[],
    );
    assert_eq!(r.unwrap_err().code, CloseCode::PROTOCOL_ERROR);
}

#[test]
fn unmasked_server_frame_decodes_for_client() {
    let bytes = concat(&[
        frame(OpCode::Binary, true, b"abc", None),
        frame(OpCode::Text, false, b"x", None),
        frame(OpCode::Continuation, true, b"y", None),
    ]);
    let (ev, r) = decode_split(Role::Client, Limits::default(), &bytes, &[5]);
    r.unwrap();
    assert_eq!(ev, vec![Ev::Binary(b"abc".to_vec()), Ev::Text("xy".into())]);
}

#[test]
fn split_frame_is_unmasked_with_the_right_key_offset() {
    let payload: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let bytes = cframe(OpCode::Binary, true, &payload);
    for cuts in [&[7usize, 8, 9, 10, 11][..], &[100, 1001, 1002, 2999], &[3]] {
        let (ev, r) = decode_split(Role::Server, Limits::default(), &bytes, cuts);
        r.unwrap();
        assert_eq!(ev, vec![Ev::Binary(payload.clone())], "cuts {cuts:?}");
    }
}

// ---------------------------------------------------------------- fragmentation (§5.4)

#[test]
fn fragmented_message_is_assembled() {
    let bytes = concat(&[
        cframe(OpCode::Binary, false, b"ab"),
        cframe(OpCode::Continuation, false, b""),
        cframe(OpCode::Continuation, true, b"cd"),
    ]);
    let (ev, r) = decode_server(&bytes);
    r.unwrap();
    assert_eq!(ev, vec![Ev::Binary(b"abcd".to_vec())]);
}

#[test]
fn continuation_without_start_is_1002() {
    assert_eq!(
        err_code(&cframe(OpCode::Continuation, true, b"x")),
        Some(1002)
    );
}

#[test]
fn new_message_inside_fragmented_is_1002() {
    for op in [OpCode::Text, OpCode::Binary] {
        let bytes = concat(&[cframe(OpCode::Text, false, b"a"), cframe(op, true, b"b")]);
        assert_eq!(err_code(&bytes), Some(1002));
    }
}

#[test]
fn ping_interleaved_in_fragmented_message_is_delivered() {
    let bytes = concat(&[
        cframe(OpCode::Text, false, b"Hel"),
        cframe(OpCode::Ping, true, b"p1"),
        cframe(OpCode::Continuation, false, b"lo "),
        cframe(OpCode::Pong, true, b""),
        cframe(OpCode::Continuation, true, b"there"),
    ]);
    let (ev, r) = decode_server(&bytes);
    r.unwrap();
    assert_eq!(
        ev,
        vec![
            Ev::Ping(b"p1".to_vec()),
            Ev::Pong(vec![]),
            Ev::Text("Hello there".into())
        ]
    );
}

#[test]
fn empty_messages_are_delivered() {
    let bytes = concat(&[
        cframe(OpCode::Text, true, b""),
        cframe(OpCode::Binary, true, b""),
        cframe(OpCode::Text, false, b""),
        cframe(OpCode::Continuation, true, b""),
    ]);
    let (ev, r) = decode_server(&bytes);
    r.unwrap();
    assert_eq!(
        ev,
        vec![
            Ev::Text(String::new()),
            Ev::Binary(vec![]),
            Ev::Text(String::new())
        ]
    );
}

// ---------------------------------------------------------------- UTF-8 (§5.6, §8.1)

#[test]
fn text_split_utf8_across_fragments_is_accepted() {
    let text = "κόσμε 😀 ∑";
    let b = text.as_bytes();
    for cut in 1..b.len() {
        let bytes = concat(&[
            cframe(OpCode::Text, false, &b[..cut]),
            cframe(OpCode::Continuation, true, &b[cut..]),
        ]);
        let (ev, r) = decode_server(&bytes);
        r.unwrap();
        assert_eq!(ev, vec![Ev::Text(text.into())], "cut {cut}");
    }
}

#[test]
fn text_split_utf8_across_reads_is_accepted() {
    let text = "aé€😀".repeat(20);
    let bytes = cframe(OpCode::Text, true, text.as_bytes());
    for cut in 1..bytes.len() {
        let (ev, r) = decode_split(Role::Server, Limits::default(), &bytes, &[cut]);
        r.unwrap();
        assert_eq!(ev, vec![Ev::Text(text.clone())], "cut {cut}");
    }
}

#[test]
fn invalid_utf8_single_frame_is_1007() {
    assert_eq!(
        err_code(&cframe(OpCode::Text, true, b"ab\xffcd")),
        Some(1007)
    );
}

#[test]
fn invalid_utf8_fails_fast_mid_frame_1007() {
    // A 1 MiB text frame whose first bytes are already invalid: only the first 20 bytes (header +
    // a few payload bytes) have arrived, and the error is reported right then.
    for bad in [
        &b"ok\xF4\x90"[..],
        b"ok\xED\xA0",
        b"ok\xC0",
        b"ok\xF5",
        b"\xFF",
    ] {
        let mut payload = bad.to_vec();
        payload.resize(1 << 20, b'a');
        let bytes = cframe(OpCode::Text, true, &payload);
        let mut dec = Decoder::new(Role::Server, Limits::default());
        let mut first = bytes[..14 + bad.len()].to_vec();
        let err = dec
            .decode(&mut first, |_| ControlFlow::Continue(()))
            .unwrap_err();
        assert_eq!(err.code, CloseCode::INVALID_PAYLOAD, "{bad:?}");
    }
}

#[test]
fn invalid_utf8_fails_fast_in_first_fragment_1007() {
    let bytes = cframe(OpCode::Text, false, b"a\xC3\x28");
    assert_eq!(err_code(&bytes), Some(1007));
}

#[test]
fn text_ending_inside_a_code_point_is_1007() {
    let bytes = concat(&[
        cframe(OpCode::Text, false, b"a\xE2\x82"),
        cframe(OpCode::Continuation, true, b""),
    ]);
    assert_eq!(err_code(&bytes), Some(1007));
}

#[test]
fn binary_is_not_utf8_checked() {
    let (ev, r) = decode_server(&cframe(OpCode::Binary, true, b"\xff\xfe"));
    r.unwrap();
    assert_eq!(ev, vec![Ev::Binary(vec![0xff, 0xfe])]);
}

// ---------------------------------------------------------------- limits (§10.4)

#[test]
fn frame_over_frame_bytes_max_is_1009() {
    let limits = Limits::new(100, 1000);
    let ok = cframe(OpCode::Binary, true, &[1; 100]);
    decode_split(Role::Server, limits, &ok, &[]).1.unwrap();
    // Rejected from the header alone, before any payload byte arrives.
    let big = cframe(OpCode::Binary, true, &[1; 101]);
    let mut dec = Decoder::new(Role::Server, limits);
    let mut head = big[..8].to_vec();
    let err = dec
        .decode(&mut head, |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert_eq!(err.code, CloseCode::MESSAGE_TOO_BIG);
}

#[test]
fn message_over_message_bytes_max_is_1009() {
    let limits = Limits::new(100, 250);
    let ok = concat(&[
        cframe(OpCode::Text, false, &[b'a'; 100]),
        cframe(OpCode::Continuation, false, &[b'a'; 100]),
        cframe(OpCode::Continuation, true, &[b'a'; 50]),
    ]);
    decode_split(Role::Server, limits, &ok, &[]).1.unwrap();
    let over = concat(&[
        cframe(OpCode::Text, false, &[b'a'; 100]),
        cframe(OpCode::Continuation, false, &[b'a'; 100]),
        cframe(OpCode::Continuation, true, &[b'a'; 51]),
    ]);
    let (_, r) = decode_split(Role::Server, limits, &over, &[]);
    assert_eq!(r.unwrap_err().code, CloseCode::MESSAGE_TOO_BIG);
    let single = cframe(OpCode::Binary, true, &[0; 90]);
    let tight = Limits::new(100, 80);
    let (_, r) = decode_split(Role::Server, tight, &single, &[]);
    assert_eq!(r.unwrap_err().code, CloseCode::MESSAGE_TOO_BIG);
}

// ---------------------------------------------------------------- close (§5.5.1, §7.4)

#[test]
fn close_frame_is_delivered_and_decoding_stops() {
    let (p, n) = close_payload(CloseCode::GOING_AWAY, "bye");
    let bytes = concat(&[
        cframe(OpCode::Close, true, &p[..n]),
        cframe(OpCode::Text, true, b"after"),
    ]);
    let mut buf = bytes.clone();
    let mut dec = Decoder::new(Role::Server, Limits::default());
    let mut ev = Vec::new();
    let used = dec
        .decode(&mut buf, |e| {
            ev.push(Ev::from(e));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(used, 6 + n);
    assert_eq!(ev, vec![Ev::Close(Some(1001), "bye".into())]);
    assert!(dec.received_close());
    let mut rest = buf[used..].to_vec();
    assert_eq!(dec.decode(&mut rest, |_| unreachable!()), Ok(0));
}

#[test]
fn empty_close_payload_has_no_code() {
    let (ev, r) = decode_server(&cframe(OpCode::Close, true, b""));
    r.unwrap();
    assert_eq!(ev, vec![Ev::Close(None, String::new())]);
}

#[test]
fn close_payload_of_one_byte_is_1002() {
    assert_eq!(parse_close_payload(&[3]).unwrap_err().code.0, 1002);
    assert_eq!(err_code(&cframe(OpCode::Close, true, &[3])), Some(1002));
}

#[test]
fn close_code_1005_on_wire_is_1002() {
    assert_eq!(
        parse_close_payload(&1005u16.to_be_bytes())
            .unwrap_err()
            .code
            .0,
        1002
    );
}

#[test]
fn close_codes_not_allowed_on_wire_are_1002() {
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let err = parse_close_payload(&code.to_be_bytes()).unwrap_err();
        assert_eq!(err.code, CloseCode::PROTOCOL_ERROR, "code {code}");
    }
}

#[test]
fn close_codes_allowed_on_wire_including_1012_to_1014_are_accepted() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
    ] {
        let b = code.to_be_bytes();
        assert_eq!(parse_close_payload(&b).unwrap().code, Some(CloseCode(code)));
    }
}

#[test]
fn close_reason_invalid_utf8_is_1007() {
    let err = parse_close_payload(b"\x03\xe8ok\xff").unwrap_err();
    assert_eq!(err.code, CloseCode::INVALID_PAYLOAD);
    assert_eq!(
        err_code(&cframe(OpCode::Close, true, b"\x03\xe8\xc0")),
        Some(1007)
    );
}

#[test]
fn close_payload_truncates_reason_on_char_boundary() {
    let reason = "é".repeat(100); // 200 bytes
    let (p, n) = close_payload(CloseCode::NORMAL, &reason);
    assert_eq!(n, 2 + 122);
    let f = parse_close_payload(&p[..n]).unwrap();
    assert_eq!(f.code, Some(CloseCode::NORMAL));
    assert_eq!(f.reason, "é".repeat(61));
    let (_, n) = close_payload(CloseCode::NORMAL, &"a".repeat(200));
    assert_eq!(n, 125);
}

#[test]
fn close_received_while_open_is_echoed_and_completes() {
    let mut s = CloseState::new();
    assert!(s.can_send() && s.accepts_data());
    let (p, n) = s
        .on_received(&CloseFrame {
            code: Some(CloseCode(4001)),
            reason: "x",
        })
        .unwrap();
    assert_eq!(&p[..n], &4001u16.to_be_bytes());
    assert!(s.is_closed() && !s.can_send());
    assert_eq!(s.initiate(CloseCode::NORMAL, ""), None);
}

#[test]
fn empty_close_received_is_answered_with_empty_close() {
    let mut s = CloseState::new();
    let (_, n) = s
        .on_received(&CloseFrame {
            code: None,
            reason: "",
        })
        .unwrap();
    assert_eq!(n, 0);
    assert!(s.is_closed());
}

#[test]
fn after_close_sent_data_is_ignored_and_reply_completes() {
    let mut s = CloseState::new();
    let (p, n) = s.initiate(CloseCode::GOING_AWAY, "shutdown").unwrap();
    assert_eq!(parse_close_payload(&p[..n]).unwrap().reason, "shutdown");
    assert_eq!(s.phase(), ClosePhase::CloseSent);
    assert!(!s.accepts_data() && !s.can_send() && !s.is_closed());
    assert_eq!(s.initiate(CloseCode::NORMAL, ""), None);
    let reply = s.on_received(&CloseFrame {
        code: Some(CloseCode::GOING_AWAY),
        reason: "",
    });
    assert_eq!(reply, None);
    assert!(s.is_closed());
}

#[test]
fn failing_the_connection_sends_the_error_code_once() {
    let mut s = CloseState::new();
    let (p, n) = s.fail(CloseCode::INVALID_PAYLOAD, "bad text").unwrap();
    assert_eq!(
        parse_close_payload(&p[..n]).unwrap().code,
        Some(CloseCode(1007))
    );
    assert!(s.is_closed());
    assert_eq!(s.fail(CloseCode::PROTOCOL_ERROR, ""), None);
}

#[test]
fn initiating_with_a_code_not_allowed_on_wire_sends_empty_close() {
    let mut s = CloseState::new();
    let (_, n) = s.initiate(CloseCode::NO_STATUS, "x").unwrap();
    assert_eq!(n, 0);
}

// ---------------------------------------------------------------- decoder behaviour

#[test]
fn single_frame_in_buffer_is_borrowed_zero_copy() {
    let mut buf = cframe(OpCode::Binary, true, b"payload");
    let range = buf.as_ptr_range();
    let mut dec = Decoder::new(Role::Server, Limits::default());
    let mut inside = false;
    dec.decode(&mut buf, |e| {
        if let Event::Binary(b) = e {
            inside = range.contains(&b.as_ptr());
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(inside);
    assert_eq!(dec.heap_bytes(), 0);
}

#[test]
fn partial_control_frame_is_left_unconsumed() {
    let bytes = concat(&[
        cframe(OpCode::Binary, true, b"a"),
        cframe(OpCode::Ping, true, &[7; 100]),
    ]);
    let mut buf = bytes[..bytes.len() - 1].to_vec();
    let mut dec = Decoder::new(Role::Server, Limits::default());
    let n = dec.decode(&mut buf, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(n, 7);
}

#[test]
fn break_stops_after_the_current_event() {
    let bytes = concat(&[
        cframe(OpCode::Binary, true, b"a"),
        cframe(OpCode::Binary, true, b"b"),
    ]);
    let mut buf = bytes.clone();
    let mut dec = Decoder::new(Role::Server, Limits::default());
    let mut seen = 0;
    let n = dec
        .decode(&mut buf, |_| {
            seen += 1;
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!((seen, n), (1, 7));
    let mut rest = buf[n..].to_vec();
    let mut got = Vec::new();
    dec.decode(&mut rest, |e| {
        got.push(Ev::from(e));
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(got, vec![Ev::Binary(b"b".to_vec())]);
}

#[test]
fn idle_decoder_holds_no_heap_after_shrink() {
    let bytes = cframe(OpCode::Binary, true, &[5; 4000]);
    let mut dec = Decoder::new(Role::Server, Limits::default());
    let mut first = bytes[..100].to_vec();
    let n = dec
        .decode(&mut first, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(n, 100);
    assert!(dec.in_message());
    assert_eq!(dec.buffered_bytes(), 92);
    dec.shrink();
    assert_eq!(
        dec.buffered_bytes(),
        92,
        "shrink keeps a message in progress"
    );
    let mut rest = bytes[100..].to_vec();
    let mut got = 0;
    dec.decode(&mut rest, |e| {
        if let Event::Binary(b) = e {
            got = b.len();
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(got, 4000);
    assert!(!dec.in_message());
    assert!(dec.heap_bytes() > 0);
    dec.shrink();
    assert_eq!(dec.heap_bytes(), 0);
}

#[test]
fn decoder_after_error_keeps_failing() {
    let mut dec = Decoder::new(Role::Server, Limits::default());
    let mut bad = frame(OpCode::Text, true, b"x", None);
    assert!(dec.decode(&mut bad, |_| ControlFlow::Continue(())).is_err());
    let mut good = cframe(OpCode::Text, true, b"x");
    assert!(dec
        .decode(&mut good, |_| ControlFlow::Continue(()))
        .is_err());
}

#[test]
fn decoder_is_small() {
    assert!(
        core::mem::size_of::<Decoder>() <= 80,
        "{}",
        core::mem::size_of::<Decoder>()
    );
}

// ---------------------------------------------------------------- properties

fn any_data_opcode() -> impl Strategy<Value = OpCode> {
    prop_oneof![Just(OpCode::Text), Just(OpCode::Binary)]
}

fn any_opcode() -> impl Strategy<Value = OpCode> {
    prop_oneof![
        Just(OpCode::Continuation),
        Just(OpCode::Text),
        Just(OpCode::Binary),
        Just(OpCode::Close),
        Just(OpCode::Ping),
        Just(OpCode::Pong),
    ]
}

/// A valid client byte stream: messages (possibly fragmented, with interleaved pings) and the
/// events it must produce.
fn valid_stream() -> impl Strategy<Value = (Vec<u8>, Vec<Ev>)> {
    let message = (
        any_data_opcode(),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..4),
        any::<[u8; 4]>(),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..126)),
    );
    prop::collection::vec(message, 0..6).prop_map(|msgs| {
        let mut bytes = Vec::new();
        let mut events = Vec::new();
        for (op, mut parts, key, ping) in msgs {
            if op == OpCode::Text {
                // Keep text valid: map each fragment to ASCII/multibyte chars, then re-split
                // the joined bytes at the original fragment lengths (splits code points).
                let joined: String = parts
                    .concat()
                    .iter()
                    .map(|&b| match b % 4 {
                        0 => 'é',
                        1 => '😀',
                        2 => '€',
                        _ => char::from(b'a' + b % 26),
                    })
                    .collect();
                let jb = joined.into_bytes();
                let mut out = Vec::new();
                let mut at = 0;
                let n = parts.len();
                for (i, p) in parts.iter().enumerate() {
                    let end = if i + 1 == n {
                        jb.len()
                    } else {
                        (at + p.len()).min(jb.len())
                    };
                    out.push(jb[at..end].to_vec());
                    at = end;
                }
                parts = out;
            }
            let whole = parts.concat();
            let n = parts.len();
            for (i, p) in parts.iter().enumerate() {
                let fop = if i == 0 { op } else { OpCode::Continuation };
                encode_frame(&mut bytes, fop, i + 1 == n, p, Some(key));
                if i == 0 {
                    if let Some(ping) = &ping {
                        encode_frame(&mut bytes, OpCode::Ping, true, ping, Some(key));
                        events.push(Ev::Ping(ping.clone()));
                    }
                }
            }
            let message = match op {
                OpCode::Text => Ev::Text(String::from_utf8(whole).unwrap()),
                _ => Ev::Binary(whole),
            };
            // A ping after a one-frame message comes after that message.
            let at = if n == 1 && ping.is_some() {
                events.len() - 1
            } else {
                events.len()
            };
            events.insert(at, message);
        }
        (bytes, events)
    })
}

proptest! {
    #[test]
    fn encode_then_decode_roundtrips(
        opcode in any_opcode(),
        fin in any::<bool>(),
        payload in prop::collection::vec(any::<u8>(), 0..70_000),
        mask in prop::option::of(any::<[u8; 4]>()),
    ) {
        let payload = if opcode.is_control() { &payload[..payload.len().min(125)] } else { &payload[..] };
        let fin = fin || opcode.is_control();
        let bytes = frame(opcode, fin, payload, mask);
        let (h, n) = FrameHeader::parse(&bytes).unwrap().unwrap();
        prop_assert_eq!(h, FrameHeader { fin, rsv: 0, opcode, mask, payload_len: payload.len() as u64 });
        prop_assert_eq!(bytes.len(), n + payload.len());
        let mut body = bytes[n..].to_vec();
        if let Some(k) = mask {
            percore_simd::unmask(&mut body, k, 0);
        }
        prop_assert_eq!(&body[..], payload);
    }

    #[test]
    fn data_frames_roundtrip_through_decoder(
        payload in prop::collection::vec(any::<u8>(), 0..5000),
        key in any::<[u8; 4]>(),
    ) {
        let bytes = frame(OpCode::Binary, true, &payload, Some(key));
        let (ev, r) = decode_split(Role::Server, Limits::default(), &bytes, &[]);
        prop_assert!(r.is_ok());
        prop_assert_eq!(ev, vec![Ev::Binary(payload)]);
    }

    #[test]
    fn random_splits_decode_like_whole((bytes, expected) in valid_stream(),
                                       cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        let (ev, r) = decode_split(Role::Server, Limits::default(), &bytes, &cuts);
        prop_assert!(r.is_ok(), "{:?}", r);
        prop_assert_eq!(ev, expected);
    }

    #[test]
    fn every_split_point_decodes_like_whole(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        // Arbitrary (mostly invalid) input: the events and the error, if any, must not depend
        // on where the stream was cut.
        let whole = decode_split(Role::Server, Limits::default(), &bytes, &[]);
        for cut in 0..=bytes.len() {
            let split = decode_split(Role::Server, Limits::default(), &bytes, &[cut]);
            prop_assert_eq!(&split.0, &whole.0, "cut {}", cut);
            prop_assert_eq!(split.1.is_err(), whole.1.is_err(), "cut {}", cut);
        }
    }
}

#[test]
fn valid_stream_decodes_identically_at_every_split_point() {
    let (bytes, expected) = {
        let mut b = Vec::new();
        encode_frame(&mut b, OpCode::Text, false, "héllo ".as_bytes(), Some(KEY));
        encode_frame(&mut b, OpCode::Ping, true, b"abc", Some([9, 8, 7, 6]));
        encode_frame(
            &mut b,
            OpCode::Continuation,
            true,
            "wörld😀".as_bytes(),
            Some([1, 2, 3, 4]),
        );
        encode_frame(&mut b, OpCode::Binary, true, &[0xAB; 300], Some(KEY));
        let (p, n) = close_payload(CloseCode::NORMAL, "done");
        encode_frame(&mut b, OpCode::Close, true, &p[..n], Some(KEY));
        (
            b,
            vec![
                Ev::Ping(b"abc".to_vec()),
                Ev::Text("héllo wörld😀".into()),
                Ev::Binary(vec![0xAB; 300]),
                Ev::Close(Some(1000), "done".into()),
            ],
        )
    };
    for a in 0..=bytes.len() {
        for b in [a, a + 1, a + 7, a + 130] {
            let (ev, r) = decode_split(Role::Server, Limits::default(), &bytes, &[a, b]);
            r.unwrap();
            assert_eq!(ev, expected, "cuts {a} {b}");
        }
    }
}

// ---------------------------------------------------------------- opening handshake (§4)

const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn request_with(lines: &[&str]) -> Vec<u8> {
    let mut s = String::from("GET /chat?room=1 HTTP/1.1\r\n");
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

const GOOD: &[&str] = &[
    "Host: server.example.com",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Origin: http://example.com",
    "Sec-WebSocket-Protocol: chat, superchat",
    "Sec-WebSocket-Version: 13",
];

fn good_without(name: &str) -> Vec<&'static str> {
    GOOD.iter()
        .copied()
        .filter(|l| {
            !l.to_ascii_lowercase()
                .starts_with(&name.to_ascii_lowercase())
        })
        .collect()
}

fn status_of(bytes: &[u8]) -> u16 {
    parse_request(bytes, HEADER_BYTES_MAX_DEFAULT)
        .map(|_| 101)
        .unwrap_or_else(|e| e.status)
}

#[test]
fn accept_key_matches_rfc_example() {
    assert_eq!(accept_key(RFC_KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn handshake_rfc_example_request_is_accepted() {
    let bytes = request_with(GOOD);
    let (req, n) = parse_request(&bytes, HEADER_BYTES_MAX_DEFAULT)
        .unwrap()
        .unwrap();
    assert_eq!(n, bytes.len());
    assert_eq!(req.method(), "GET");
    assert_eq!(req.path(), "/chat");
    assert_eq!(req.query(), Some("room=1"));
    assert_eq!(req.host(), "server.example.com");
    assert_eq!(req.origin(), Some("http://example.com"));
    assert_eq!(req.key(), RFC_KEY);
    assert_eq!(req.header("sec-websocket-version"), Some("13"));
    assert_eq!(req.headers().count(), GOOD.len());
    assert_eq!(req.protocols().collect::<Vec<_>>(), ["chat", "superchat"]);
    let resp = String::from_utf8(accept_response(&req, Some("chat"), &[("X-Shard", "3")])).unwrap();
    assert_eq!(
        resp,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\
         X-Shard: 3\r\n\r\n"
    );
}

#[test]
fn handshake_incomplete_request_needs_more_bytes() {
    let bytes = request_with(GOOD);
    for cut in 0..bytes.len() {
        assert_eq!(
            parse_request(&bytes[..cut], HEADER_BYTES_MAX_DEFAULT),
            Ok(None),
            "cut {cut}"
        );
    }
}

#[test]
fn handshake_missing_key_is_400() {
    assert_eq!(
        status_of(&request_with(&good_without("Sec-WebSocket-Key"))),
        400
    );
}

#[test]
fn handshake_key_not_16_base64_bytes_is_400() {
    for key in [
        "abc",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZXg=",
        "!!!!!!!!!!!!!!!!!!!!!!==",
    ] {
        let mut lines = good_without("Sec-WebSocket-Key");
        let line = format!("Sec-WebSocket-Key: {key}");
        lines.push(&line);
        assert_eq!(status_of(&request_with(&lines)), 400, "{key}");
    }
}

#[test]
fn handshake_repeated_key_is_400() {
    let mut lines = GOOD.to_vec();
    lines.push("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==");
    assert_eq!(status_of(&request_with(&lines)), 400);
}

#[test]
fn handshake_missing_host_is_400() {
    assert_eq!(status_of(&request_with(&good_without("Host"))), 400);
}

#[test]
fn handshake_missing_upgrade_or_connection_token_is_400() {
    assert_eq!(status_of(&request_with(&good_without("Upgrade"))), 400);
    assert_eq!(status_of(&request_with(&good_without("Connection"))), 400);
    let mut lines = good_without("Upgrade");
    lines.push("Upgrade: h2c");
    assert_eq!(status_of(&request_with(&lines)), 400);
}

#[test]
fn upgrade_and_connection_tokens_are_case_insensitive_lists() {
    let mut lines = good_without("Upgrade");
    lines.retain(|l| !l.starts_with("Connection"));
    lines.push("upgrade: foo/2, WebSocket");
    lines.push("CONNECTION: keep-alive");
    lines.push("connection: , UPGRADE ");
    let (req, _) = parse_request(&request_with(&lines), HEADER_BYTES_MAX_DEFAULT)
        .unwrap()
        .unwrap();
    assert_eq!(req.key(), RFC_KEY);
}

#[test]
fn handshake_version_12_is_426() {
    let mut lines = good_without("Sec-WebSocket-Version");
    lines.push("Sec-WebSocket-Version: 12");
    let err = parse_request(&request_with(&lines), HEADER_BYTES_MAX_DEFAULT).unwrap_err();
    assert_eq!(err.status, 426);
    let resp = String::from_utf8(err.response()).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{resp}"
    );
    assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    assert!(resp.contains("\r\nConnection: close\r\n"));
    assert_eq!(
        status_of(&request_with(&good_without("Sec-WebSocket-Version"))),
        426
    );
}

#[test]
fn handshake_post_is_405() {
    let mut bytes = b"POST".to_vec();
    bytes.extend_from_slice(&request_with(GOOD)[3..]);
    assert_eq!(status_of(&bytes), 405);
}

#[test]
fn handshake_http_1_0_is_400() {
    let bytes = String::from_utf8(request_with(GOOD))
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert_eq!(status_of(bytes.as_bytes()), 400);
}

#[test]
fn handshake_malformed_request_is_400() {
    assert_eq!(status_of(b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n"), 400);
    assert_eq!(status_of(b"\x00\x01garbage\r\n\r\n"), 400);
}

#[test]
fn handshake_header_block_over_limit_is_431() {
    let bytes = request_with(GOOD);
    // Complete, but larger than the limit.
    let err = parse_request(&bytes, bytes.len() - 1).unwrap_err();
    assert_eq!(err.status, 431);
    assert!(parse_request(&bytes, bytes.len()).unwrap().is_some());
    // Still incomplete when the limit is reached.
    let partial = &bytes[..100];
    assert_eq!(parse_request(partial, 101), Ok(None));
    assert_eq!(parse_request(partial, 100).unwrap_err().status, 431);
}

#[test]
fn handshake_more_than_64_headers_is_431() {
    let extra: Vec<String> = (0..MAX_HEADERS).map(|i| format!("X-H{i}: v")).collect();
    let mut lines: Vec<&str> = GOOD.to_vec();
    lines.extend(extra.iter().map(String::as_str));
    assert_eq!(status_of(&request_with(&lines)), 431);
}

#[test]
fn handshake_pipelined_frame_bytes_are_left() {
    let mut bytes = request_with(GOOD);
    let head = bytes.len();
    bytes.extend_from_slice(&cframe(OpCode::Text, true, b"early"));
    let (_, n) = parse_request(&bytes, HEADER_BYTES_MAX_DEFAULT)
        .unwrap()
        .unwrap();
    assert_eq!(n, head);
    let (ev, r) = decode_server(&bytes[n..]);
    r.unwrap();
    assert_eq!(ev, vec![Ev::Text("early".into())]);
}

#[test]
fn handshake_absolute_form_target_is_split() {
    let bytes = String::from_utf8(request_with(GOOD)).unwrap().replacen(
        "/chat?room=1",
        "ws://server.example.com/chat?room=1",
        1,
    );
    let (req, _) = parse_request(bytes.as_bytes(), HEADER_BYTES_MAX_DEFAULT)
        .unwrap()
        .unwrap();
    assert_eq!((req.path(), req.query()), ("/chat", Some("room=1")));
}

#[test]
fn protocols_are_collected_across_repeated_headers() {
    let mut lines = good_without("Sec-WebSocket-Protocol");
    lines.push("Sec-WebSocket-Protocol: a");
    lines.push("sec-websocket-protocol: b ,c,,");
    let (req, _) = parse_request(&request_with(&lines), HEADER_BYTES_MAX_DEFAULT)
        .unwrap()
        .unwrap();
    assert_eq!(req.protocols().collect::<Vec<_>>(), ["a", "b", "c"]);
}

#[test]
fn reject_response_is_complete_and_closes() {
    let r = String::from_utf8(reject_response(
        503,
        &[("Retry-After", "1"), ("Bad\r\n", "x")],
        "full",
    ))
    .unwrap();
    assert_eq!(
        r,
        "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\nRetry-After: 1\r\n\r\nfull\n"
    );
}

#[test]
fn header_injection_in_extra_headers_is_dropped() {
    let (req, _) = parse_request(&request_with(GOOD), HEADER_BYTES_MAX_DEFAULT)
        .unwrap()
        .unwrap();
    let r = accept_response(&req, None, &[("X-A", "1\r\nSet-Cookie: x")]);
    assert!(!String::from_utf8(r).unwrap().contains("Set-Cookie"));
}

#[test]
fn client_request_is_accepted_by_server_and_response_validates() {
    let key = generate_key();
    assert_eq!(BASE64_LEN, key.len());
    let req_bytes = client_request(
        "localhost:9000",
        "/ws?x=1",
        &key,
        &["chat", "v2"],
        &[("Origin", "http://o")],
    );
    let (req, n) = parse_request(&req_bytes, HEADER_BYTES_MAX_DEFAULT)
        .unwrap()
        .unwrap();
    assert_eq!(n, req_bytes.len());
    assert_eq!(req.protocols().collect::<Vec<_>>(), ["chat", "v2"]);
    assert_eq!(req.origin(), Some("http://o"));
    let mut resp_bytes = accept_response(&req, Some("v2"), &[]);
    let head = resp_bytes.len();
    resp_bytes.extend_from_slice(&frame(OpCode::Text, true, b"hi", None));
    let (resp, n) = parse_response(&resp_bytes, &key, HEADER_BYTES_MAX_DEFAULT)
        .unwrap()
        .unwrap();
    assert_eq!(n, head);
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.protocol(), Some("v2"));
    assert_eq!(
        parse_response(&resp_bytes[..head - 1], &key, HEADER_BYTES_MAX_DEFAULT),
        Ok(None)
    );
}

const BASE64_LEN: usize = 24;

#[test]
fn generated_keys_differ() {
    assert_ne!(generate_key(), generate_key());
    // Masks: one RNG per shard, seeded from the OS once; two shards never share a stream.
    let (mut a, mut b) = (MaskRng::from_os(), MaskRng::from_os());
    let from_a: Vec<[u8; 4]> = (0..4).map(|_| a.mask()).collect();
    assert_ne!(from_a, vec![from_a[0]; 4]);
    assert_ne!(from_a, (0..4).map(|_| b.mask()).collect::<Vec<_>>());
}

#[test]
fn client_rejects_wrong_accept_key() {
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key("AAAAAAAAAAAAAAAAAAAAAA==")
    );
    let err = parse_response(resp.as_bytes(), RFC_KEY, HEADER_BYTES_MAX_DEFAULT).unwrap_err();
    assert_eq!(err.status, 502);
}

#[test]
fn client_rejects_non_101_and_missing_tokens_and_extensions() {
    let ok_accept = accept_key(RFC_KEY);
    let cases = [
        ("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_string(), 403),
        (format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ok_accept}\r\n\r\n"), 502),
        (format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {ok_accept}\r\n\r\n"), 502),
        (format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: {ok_accept}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"), 502),
        ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_string(), 502),
    ];
    for (resp, status) in cases {
        let err = parse_response(resp.as_bytes(), RFC_KEY, HEADER_BYTES_MAX_DEFAULT).unwrap_err();
        assert_eq!(err.status, status, "{resp}");
    }
    let resp = format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nsec-websocket-accept: {ok_accept}\r\n\r\n");
    assert!(
        parse_response(resp.as_bytes(), RFC_KEY, HEADER_BYTES_MAX_DEFAULT)
            .unwrap()
            .is_some()
    );
}

#[test]
fn client_response_header_block_over_limit_is_431() {
    let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n";
    assert_eq!(parse_response(resp, RFC_KEY, 20).unwrap_err().status, 431);
}

// ---------------------------------------------------------------- interop with tungstenite

/// An in-memory socket: reads from `rx` (then `WouldBlock`), writes to `tx`.
struct Pipe {
    rx: std::io::Cursor<Vec<u8>>,
    tx: Vec<u8>,
}

impl std::io::Read for Pipe {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self.rx.read(b)? {
            0 if !b.is_empty() => Err(std::io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

impl std::io::Write for Pipe {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.tx.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn frames_from_tungstenite_client_decode() {
    use tungstenite::{protocol::Role as TRole, Message, WebSocket};
    let pipe = Pipe {
        rx: std::io::Cursor::new(Vec::new()),
        tx: Vec::new(),
    };
    let mut ws = WebSocket::from_raw_socket(pipe, TRole::Client, None);
    ws.send(Message::Text("héllo".into())).unwrap();
    ws.send(Message::Binary(vec![7; 70_000])).unwrap();
    ws.send(Message::Ping(vec![1, 2])).unwrap();
    ws.close(None).unwrap();
    let _ = ws.flush();
    let bytes = ws.get_ref().tx.clone();
    for cuts in [&[][..], &[1, 3, 9, 5000, 70_010]] {
        let (ev, r) = decode_split(Role::Server, Limits::default(), &bytes, cuts);
        r.unwrap();
        assert_eq!(
            ev,
            vec![
                Ev::Text("héllo".into()),
                Ev::Binary(vec![7; 70_000]),
                Ev::Ping(vec![1, 2]),
                Ev::Close(None, String::new()),
            ]
        );
    }
}

#[test]
fn frames_to_tungstenite_client_decode() {
    use tungstenite::{protocol::Role as TRole, Message, WebSocket};
    let mut bytes = Vec::new();
    encode_frame(&mut bytes, OpCode::Text, false, "wö".as_bytes(), None);
    encode_frame(&mut bytes, OpCode::Ping, true, b"p", None);
    encode_frame(
        &mut bytes,
        OpCode::Continuation,
        true,
        "rld".as_bytes(),
        None,
    );
    encode_frame(&mut bytes, OpCode::Binary, true, &[9; 300], None);
    let (p, n) = close_payload(CloseCode::NORMAL, "done");
    encode_frame(&mut bytes, OpCode::Close, true, &p[..n], None);
    let pipe = Pipe {
        rx: std::io::Cursor::new(bytes),
        tx: Vec::new(),
    };
    let mut ws = WebSocket::from_raw_socket(pipe, TRole::Client, None);
    let mut got = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Close(c)) => {
                let c = c.unwrap();
                assert_eq!((u16::from(c.code), c.reason.as_ref()), (1000, "done"));
                break;
            }
            Ok(m) => got.push(m),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        got,
        vec![
            Message::Ping(b"p".to_vec()),
            Message::Text("wörld".into()),
            Message::Binary(vec![9; 300]),
        ]
    );
}

#[test]
fn accept_key_agrees_with_tungstenite() {
    for _ in 0..8 {
        let key = generate_key();
        assert_eq!(
            accept_key(&key),
            tungstenite::handshake::derive_accept_key(key.as_bytes())
        );
    }
}
