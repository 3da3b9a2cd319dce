//! Streaming UTF-8 validation: split code points, fail-fast positions (Autobahn 6.x), and
//! equivalence with `std::str::from_utf8` under every chunking.

use percore_simd::{validate_utf8, Utf8Error, Utf8Validator};
use proptest::prelude::*;

/// The index of the first byte after which `b[..=i]` cannot be the start of valid UTF-8,
/// whatever follows: where a fail-fast validator must report the error.
fn first_impossible(b: &[u8]) -> Option<usize> {
    (0..b.len())
        .find(|&i| matches!(std::str::from_utf8(&b[..=i]), Err(e) if e.error_len().is_some()))
}

/// Feed `b` in the given chunks; return the index of the chunk whose feed failed (or
/// `chunks.len()` for `finish`) and the error.
fn feed_chunks(chunks: &[&[u8]]) -> Result<(), (usize, Utf8Error)> {
    let mut v = Utf8Validator::new();
    for (n, c) in chunks.iter().enumerate() {
        v.feed(c).map_err(|e| (n, e))?;
    }
    v.finish().map_err(|e| (chunks.len(), e))
}

/// Check that feeding `b` cut at `cuts` agrees with std: same verdict, same position, and
/// the failing feed is the one that delivered the first impossible byte.
fn check_against_std(b: &[u8], cuts: &[usize]) {
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().map(|&c| c.min(b.len())));
    bounds.push(b.len());
    bounds.sort_unstable();
    let chunks: Vec<&[u8]> = bounds.windows(2).map(|w| &b[w[0]..w[1]]).collect();
    let got = feed_chunks(&chunks);
    match std::str::from_utf8(b) {
        Ok(_) => assert_eq!(got, Ok(()), "{b:02x?} cut at {bounds:?}"),
        Err(want) => {
            let (n, e) = got.expect_err("std rejects it");
            assert_eq!(
                e.valid_up_to(),
                want.valid_up_to(),
                "{b:02x?} cut at {bounds:?}"
            );
            assert_eq!(
                e.error_len(),
                want.error_len(),
                "{b:02x?} cut at {bounds:?}"
            );
            match first_impossible(b) {
                Some(i) => {
                    // The chunk that holds byte i: the last one starting at or before it
                    // (skipping empty chunks, which cannot fail).
                    let holder = bounds
                        .windows(2)
                        .rposition(|w| w[0] <= i && i < w[1])
                        .unwrap();
                    assert_eq!(
                        n, holder,
                        "failed late: {b:02x?} cut at {bounds:?}, byte {i}"
                    );
                }
                None => assert_eq!(n, chunks.len(), "must fail only at finish: {b:02x?}"),
            }
        }
    }
    match validate_utf8(b) {
        Ok(s) => assert_eq!(s.as_bytes(), b),
        Err(e) => {
            let want = std::str::from_utf8(b).unwrap_err();
            assert_eq!(
                (e.valid_up_to(), e.error_len()),
                (want.valid_up_to(), want.error_len())
            );
        }
    }
}

/// Every cut into bytes, one at a time.
fn check_bytewise(b: &[u8]) {
    let cuts: Vec<usize> = (1..b.len()).collect();
    check_against_std(b, &cuts);
}

const TEXTS: &[&str] = &[
    "",
    "a",
    "Hello-µ@ßöäüàá-UTF-8!!",
    "κόσμε",
    "€ 𝄞 日本語テキスト 🎉🎊 ÿ \u{10FFFF} \u{FFFD} \u{800} \u{7FF} \u{FFFF} \u{10000}",
    "ascii only, long enough to cross a sixteen byte boundary or two, and then some more",
];

#[test]
fn valid_text_split_at_every_pair_of_points_is_accepted() {
    for t in TEXTS {
        let b = t.as_bytes();
        for i in 0..=b.len() {
            for j in i..=b.len() {
                let mut v = Utf8Validator::new();
                v.feed(&b[..i]).unwrap();
                assert_eq!(v.is_mid_codepoint(), !t.is_char_boundary(i), "{t:?} at {i}");
                v.feed(&b[i..j]).unwrap();
                assert_eq!(v.is_mid_codepoint(), !t.is_char_boundary(j), "{t:?} at {j}");
                v.feed(&b[j..]).unwrap();
                assert!(!v.is_mid_codepoint());
                v.finish().unwrap();
            }
        }
    }
}

#[test]
fn valid_text_fed_byte_by_byte_is_accepted() {
    for t in TEXTS {
        let mut v = Utf8Validator::new();
        for &byte in t.as_bytes() {
            v.feed(&[byte]).unwrap();
        }
        v.finish().unwrap();
    }
}

/// Autobahn 6.x-style invalid sequences, each with the index of the first byte that makes
/// it invalid (`None`: valid prefix, invalid only because the message ends).
const INVALID: &[(&str, &[u8], Option<usize>)] = &[
    ("lone continuation byte", &[0x80], Some(0)),
    ("continuation 0xbf", &[0xBF], Some(0)),
    ("two continuations", &[0x80, 0xBF], Some(0)),
    ("overlong C0", &[0xC0, 0xAF], Some(0)),
    ("overlong C1", &[0xC1, 0xBF], Some(0)),
    ("overlong 3-byte slash", &[0xE0, 0x80, 0xAF], Some(1)),
    ("overlong 3-byte max", &[0xE0, 0x9F, 0xBF], Some(1)),
    ("overlong 4-byte slash", &[0xF0, 0x80, 0x80, 0xAF], Some(1)),
    ("overlong 4-byte max", &[0xF0, 0x8F, 0xBF, 0xBF], Some(1)),
    (
        "overlong 5-byte form",
        &[0xF8, 0x80, 0x80, 0x80, 0xAF],
        Some(0),
    ),
    (
        "overlong 6-byte form",
        &[0xFC, 0x80, 0x80, 0x80, 0x80, 0xAF],
        Some(0),
    ),
    ("high surrogate D800", &[0xED, 0xA0, 0x80], Some(1)),
    ("high surrogate DB7F", &[0xED, 0xAD, 0xBF], Some(1)),
    ("low surrogate DC00", &[0xED, 0xB0, 0x80], Some(1)),
    ("low surrogate DFFF", &[0xED, 0xBF, 0xBF], Some(1)),
    (
        "surrogate pair",
        &[0xED, 0xA0, 0x80, 0xED, 0xB0, 0x80],
        Some(1),
    ),
    ("U+110000", &[0xF4, 0x90, 0x80, 0x80], Some(1)),
    ("F4 BF", &[0xF4, 0xBF, 0xBF, 0xBF], Some(1)),
    ("F5 lead", &[0xF5, 0x80, 0x80, 0x80], Some(0)),
    ("F7 lead", &[0xF7, 0xBF, 0xBF, 0xBF], Some(0)),
    ("FE", &[0xFE], Some(0)),
    ("FF", &[0xFF], Some(0)),
    ("2-byte lead then ASCII", &[0xC2, 0x41], Some(1)),
    ("3-byte lead then ASCII", &[0xE2, 0x82, 0x41], Some(2)),
    ("4-byte lead then ASCII", &[0xF0, 0x9F, 0x98, 0x41], Some(3)),
    ("3-byte lead then new lead", &[0xE2, 0xC2, 0xA2], Some(1)),
    ("truncated 2-byte", &[0xC2], None),
    ("truncated 3-byte", &[0xE2, 0x82], None),
    ("truncated 4-byte", &[0xF0, 0x9F, 0x98], None),
    ("truncated F4 8F", &[0xF4, 0x8F, 0xBF], None),
    ("truncated ED 9F", &[0xED, 0x9F], None),
];

#[test]
fn autobahn_invalid_sequences_fail_at_the_first_impossible_byte() {
    for prefix in ["", "κόσμε", "abc", "\u{10FFFF}"] {
        for suffix in [&b""[..], b"edited", "κόσμε".as_bytes()] {
            for &(name, seq, at) in INVALID {
                let mut b = prefix.as_bytes().to_vec();
                b.extend_from_slice(seq);
                let seq_end = b.len();
                b.extend_from_slice(suffix);
                let want = at.map(|i| prefix.len() + i);
                // Where the truncated sequence is followed by more text, it is invalid there.
                let found = first_impossible(&b);
                if suffix.is_empty() || want.is_some() {
                    assert_eq!(found, want, "{name}: reference disagrees with the table");
                } else {
                    assert!(found.is_some_and(|i| i >= seq_end), "{name}");
                }
                check_bytewise(&b);
                check_against_std(&b, &[]);
                for cut in 0..=b.len() {
                    check_against_std(&b, &[cut]);
                }
            }
        }
    }
}

#[test]
fn four_byte_code_point_beyond_u10ffff_fails_on_its_second_byte() {
    let mut v = Utf8Validator::new();
    v.feed(b"ok ").unwrap();
    v.feed(&[0xF4]).unwrap();
    assert!(v.is_mid_codepoint());
    let e = v.feed(&[0x90]).unwrap_err();
    assert_eq!((e.valid_up_to(), e.error_len()), (3, Some(1)));
}

#[test]
fn surrogate_fails_on_its_second_byte_across_chunks() {
    let mut v = Utf8Validator::new();
    v.feed(&[0xED]).unwrap();
    let e = v.feed(&[0xA0]).unwrap_err();
    assert_eq!((e.valid_up_to(), e.error_len()), (0, Some(1)));
}

#[test]
fn bytes_that_never_start_utf8_fail_immediately() {
    for b in [0xC0u8, 0xC1, 0xF5, 0xF8, 0xFF, 0x80] {
        let mut v = Utf8Validator::new();
        v.feed("κόσμε".as_bytes()).unwrap();
        let e = v.feed(&[b]).unwrap_err();
        assert_eq!(
            (e.valid_up_to(), e.error_len()),
            ("κόσμε".len(), Some(1)),
            "{b:#x}"
        );
    }
}

#[test]
fn message_ending_mid_code_point_fails_at_finish_only() {
    let mut v = Utf8Validator::new();
    v.feed(b"abc\xF0\x9F").unwrap();
    v.feed(b"\x98").unwrap();
    assert!(v.is_mid_codepoint());
    let e = v.finish().unwrap_err();
    assert_eq!((e.valid_up_to(), e.error_len()), (3, None));
    // `finish` starts the next message.
    assert!(!v.is_mid_codepoint());
    v.feed(b"\x80").unwrap_err();
}

#[test]
fn reset_forgets_a_pending_code_point() {
    let mut v = Utf8Validator::new();
    v.feed(&[0xE2, 0x82]).unwrap();
    v.reset();
    assert!(!v.is_mid_codepoint());
    v.feed(b"fresh").unwrap();
    v.finish().unwrap();
}

#[test]
fn validator_state_is_small_and_copy() {
    let mut a = Utf8Validator::new();
    a.feed(&[0xE2]).unwrap();
    let mut b = a; // Copy
    b.feed(&[0x82, 0xAC]).unwrap();
    assert!(a.is_mid_codepoint());
    assert!(!b.is_mid_codepoint());
    assert!(std::mem::size_of::<Utf8Validator>() <= 16);
}

#[test]
fn every_short_sequence_fails_exactly_where_std_says() {
    // First byte exhaustive, following bytes from the values where behaviour changes.
    const NEXT: [u8; 12] = [
        0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC2, 0xF0, 0xFF,
    ];
    // Under Miri (which interprets every step) the first byte takes the values where the
    // lead-byte rules change instead of all 256, the others one value per byte class.
    const FIRST_MIRI: [u8; 20] = [
        0x00, 0x41, 0x7F, 0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF,
        0xF0, 0xF4, 0xF5, 0xF8, 0xFF,
    ];
    const NEXT_MIRI: [u8; 5] = [0x41, 0x80, 0x90, 0xBF, 0xC2];
    let (first, next): (Vec<u8>, &[u8]) = if cfg!(miri) {
        (FIRST_MIRI.to_vec(), &NEXT_MIRI)
    } else {
        ((0..=255).collect(), &NEXT)
    };
    for a in first {
        check_bytewise(&[a]);
        for &b in next {
            check_bytewise(&[a, b]);
            for &c in next {
                check_bytewise(&[a, b, c]);
                for &d in next {
                    check_bytewise(&[a, b, c, d]);
                }
            }
        }
    }
}

#[test]
fn long_inputs_with_an_error_deep_inside_report_its_position() {
    // Under Miri a shorter text (the check is quadratic in its length).
    let text = "mixed ☃ text 😀 ".repeat(if cfg!(miri) { 40 } else { 400 });
    let positions = [0usize, 1, 63, 64, 65, 300, 4095, 4096, 5000];
    for pos in positions.into_iter().filter(|&p| p < text.len()) {
        let mut b = text.clone().into_bytes();
        let pos = (pos..).find(|&p| text.is_char_boundary(p)).unwrap();
        b.insert(pos, 0xFF);
        check_against_std(&b, &[]);
        check_against_std(&b, &[4096]);
        check_against_std(&b, &[pos, pos + 1]);
    }
}

/// Mostly-UTF-8 input: text with a few bytes replaced, so errors are rare and varied.
fn mostly_utf8() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<String>(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
    )
        .prop_map(|(s, edits)| {
            let mut b = s.into_bytes();
            if !b.is_empty() {
                for (i, v) in edits {
                    let n = b.len();
                    b[i % n] = v;
                }
            }
            b
        })
}

proptest! {
    // Miri interprets every step: a few cases there, the proptests still run.
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 512 }))]

    #[test]
    fn byte_by_byte_feeding_agrees_with_std(b in mostly_utf8()) {
        check_bytewise(&b);
    }

    #[test]
    fn any_chunking_agrees_with_std(
        b in mostly_utf8(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let n = b.len() + 1;
        let cuts: Vec<usize> = cuts.into_iter().map(|c| c % n).collect();
        check_against_std(&b, &cuts);
    }

    #[test]
    fn random_bytes_agree_with_std(
        b in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let n = b.len() + 1;
        let cuts: Vec<usize> = cuts.into_iter().map(|c| c % n).collect();
        check_against_std(&b, &cuts);
        check_bytewise(&b);
    }
}
