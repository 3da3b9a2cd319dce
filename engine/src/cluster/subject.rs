//! Topic names (any bytes) to NATS subjects (restricted: no whitespace, `.` separates tokens,
//! `*` and `>` are wildcards, the whole protocol line is bounded).
//!
//! A topic becomes one token under the prefix: `PREFIX.TOKEN`, where TOKEN keeps the bytes
//! `A-Z a-z 0-9 - _` as they are and writes every other byte as `%` and two upper-case hex
//! digits (`room.1` → `room%2E1`, `é` → `%C3%A9`); the empty topic is `%` alone. Different
//! topics give different subjects (a `%` in TOKEN always starts an escape, and a lone `%` is
//! never one), every subject is a valid literal subject, and common names stay readable for
//! `nats sub` and for other services that publish to a topic (`nats pub percore.prices 42`).

use std::fmt::Write;

/// Longest subject the bridge uses: a NATS server refuses protocol lines longer than its
/// `max_control_line` (4096 bytes by default), and a publish line holds the subject and two
/// sizes. [`ClusterConfig`](super::ClusterConfig) checks at start that the prefix and the
/// longest topic (`topic_name_bytes_max`, three bytes per topic byte at worst) fit.
pub(crate) const SUBJECT_BYTES_MAX: usize = 4000;

/// The longest subject for topics of up to `topic_bytes_max` bytes.
pub(crate) fn subject_bytes_max(prefix: &str, topic_bytes_max: usize) -> usize {
    prefix.len() + 1 + topic_bytes_max.max(1).saturating_mul(3)
}

/// The subject of `topic` under `prefix` (which [`check_prefix`] accepted).
pub(crate) fn subject(prefix: &str, topic: &[u8]) -> String {
    let mut s = String::with_capacity(prefix.len() + 1 + topic.len());
    s.push_str(prefix);
    s.push('.');
    if topic.is_empty() {
        s.push('%');
    }
    for &b in topic {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            s.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

/// A prefix is one or more `.`-separated tokens of printable ASCII other than the wildcards
/// `*` and `>` (and `%`, kept for escapes), e.g. `percore` or `app.ws`.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("cluster subject prefix {prefix:?}: {why}"));
    if prefix.is_empty() {
        return bad("empty");
    }
    for token in prefix.split('.') {
        if token.is_empty() {
            return bad("empty token (leading, trailing or double '.')");
        }
        if let Some(c) = token
            .chars()
            .find(|&c| !c.is_ascii_graphic() || matches!(c, '*' | '>' | '%'))
        {
            return bad(&format!("{c:?} is not allowed (printable ASCII, no * > %)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The inverse, to show the mapping is injective.
    fn topic_of(prefix: &str, subject: &str) -> Option<Vec<u8>> {
        let token = subject.strip_prefix(prefix)?.strip_prefix('.')?;
        if token == "%" {
            return Some(Vec::new());
        }
        let mut out = Vec::new();
        let b = token.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hex = token.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        Some(out)
    }

    fn valid_literal_subject(s: &str) -> bool {
        !s.is_empty()
            && s.split('.').all(|t| {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_graphic() && c != '*' && c != '>')
            })
    }

    #[test]
    fn readable_names_stay_readable_and_the_rest_is_escaped() {
        assert_eq!(subject("percore", b"prices"), "percore.prices");
        assert_eq!(subject("percore", b"room-1_a"), "percore.room-1_a");
        assert_eq!(subject("app.ws", b"room.1"), "app.ws.room%2E1");
        assert_eq!(subject("p", b"a b*>%"), "p.a%20b%2A%3E%25");
        assert_eq!(subject("p", "é".as_bytes()), "p.%C3%A9");
        assert_eq!(subject("p", b""), "p.%");
        assert_eq!(subject("p", b"%"), "p.%25");
    }

    #[test]
    fn the_longest_topic_fits_the_bound() {
        let topic = vec![0xFFu8; 256];
        let s = subject("percore", &topic);
        assert_eq!(s.len(), subject_bytes_max("percore", 256));
        assert!(s.len() <= SUBJECT_BYTES_MAX);
    }

    #[test]
    fn prefixes_are_checked() {
        for ok in ["percore", "app.ws", "a-b_c.D1", "$x"] {
            assert_eq!(check_prefix(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", ".a", "a.", "a..b", "a b", "a.*", "a.>", "a%", "é", "a\tb",
        ] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn every_topic_gets_a_valid_subject_that_maps_back(topic in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = subject("app.ws", &topic);
            prop_assert!(valid_literal_subject(&s), "{}", s);
            prop_assert_eq!(s.split('.').count(), 3, "one token under the prefix");
            prop_assert_eq!(topic_of("app.ws", &s), Some(topic));
        }
    }
}
