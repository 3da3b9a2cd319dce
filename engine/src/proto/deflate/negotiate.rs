//! permessage-deflate negotiation (RFC 7692 §7.1): the `Sec-WebSocket-Extensions` grammar of
//! RFC 6455 §9.1, the server's choice among the client's offers, and the client's check of the
//! server's answer.

use super::settings::{Compression, DeflateSettings};

/// The extension's name.
pub(crate) const NAME: &str = "permessage-deflate";

/// What one side's compressor and the other side's decompressor agreed on, from our end:
/// `local` is what we send, `remote` what the peer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Agreed {
    /// We must not use context takeover: every message we send is compressed on its own.
    pub local_no_context_takeover: bool,
    /// Our LZ77 window: 8..=15 (8 is honoured with distance-1 matches only, see
    /// [`super::Compressor::new`]).
    pub local_max_window_bits: u8,
    /// The peer compresses every message on its own: no history is kept for its messages.
    pub remote_no_context_takeover: bool,
    /// The peer's window (what its messages may reach back into): 8..=15.
    pub remote_max_window_bits: u8,
}

/// The `Sec-WebSocket-Extensions` header does not follow RFC 6455 §9.1: the handshake is
/// answered with 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

/// One parameter of one offer (value unquoted).
#[derive(Debug, PartialEq, Eq)]
struct Param<'a> {
    name: &'a str,
    value: Option<String>,
}

/// One `extension *( ";" param )` element.
#[derive(Debug, PartialEq, Eq)]
struct Element<'a> {
    name: &'a str,
    params: Vec<Param<'a>>,
}

/// RFC 7230 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Split `s` on `sep` outside quoted strings. `Err` on an unterminated quote.
fn split_outside_quotes(s: &str, sep: u8) -> Result<Vec<&str>, Malformed> {
    let b = s.as_bytes();
    let (mut out, mut start, mut i, mut quoted) = (Vec::new(), 0, 0, false);
    while i < b.len() {
        match b[i] {
            b'"' => quoted = !quoted,
            b'\\' if quoted => i += 1,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if quoted {
        return Err(Malformed);
    }
    out.push(&s[start.min(s.len())..]);
    Ok(out)
}

/// A parameter value: a token, or a quoted string whose unescaped content is a token
/// (RFC 6455 §9.1).
fn param_value(v: &str) -> Result<String, Malformed> {
    let v = v.trim_matches([' ', '\t']);
    let s = match v.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"').ok_or(Malformed)?;
            let mut s = String::with_capacity(inner.len());
            let mut esc = false;
            for c in inner.chars() {
                if esc || c != '\\' {
                    s.push(c);
                    esc = false;
                } else {
                    esc = true;
                }
            }
            s
        }
        None => v.to_owned(),
    };
    if is_token(&s) {
        Ok(s)
    } else {
        Err(Malformed)
    }
}

/// Every element of the extension list, in order, across all the header values given.
/// Empty list elements are skipped (RFC 7230 §7); anything else off the grammar is `Err`.
fn parse_list<'a>(values: impl Iterator<Item = &'a str>) -> Result<Vec<Element<'a>>, Malformed> {
    let mut out = Vec::new();
    for value in values {
        for element in split_outside_quotes(value, b',')? {
            if element.trim_matches([' ', '\t']).is_empty() {
                continue;
            }
            let mut parts = split_outside_quotes(element, b';')?.into_iter();
            let name = parts.next().unwrap_or_default().trim_matches([' ', '\t']);
            if !is_token(name) {
                return Err(Malformed);
            }
            let mut params = Vec::new();
            for p in parts {
                let (n, v) = match p.split_once('=') {
                    Some((n, v)) => (n, Some(param_value(v)?)),
                    None => (p, None),
                };
                let n = n.trim_matches([' ', '\t']);
                if !is_token(n) {
                    return Err(Malformed);
                }
                params.push(Param { name: n, value: v });
            }
            out.push(Element { name, params });
        }
    }
    Ok(out)
}

/// `8..=15`, written without a leading zero (RFC 7692 §7.1.2.1).
fn window_bits(v: &str) -> Option<u8> {
    match v.as_bytes() {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// The parameters of one permessage-deflate offer or answer, each checked for its form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (only allowed in an offer).
    client_max_window_bits: Option<Option<u8>>,
}

impl Params {
    /// `None`: an unknown parameter, one given twice, or a bad value.
    fn parse(params: &[Param<'_>]) -> Option<Params> {
        let mut p = Params::default();
        let mut seen = 0u8;
        for param in params {
            let (bit, value) = (param.name, param.value.as_deref());
            let bit = match bit.to_ascii_lowercase().as_str() {
                "server_no_context_takeover" if value.is_none() => {
                    p.server_no_context_takeover = true;
                    1
                }
                "client_no_context_takeover" if value.is_none() => {
                    p.client_no_context_takeover = true;
                    2
                }
                "server_max_window_bits" => {
                    p.server_max_window_bits = Some(window_bits(value?)?);
                    4
                }
                "client_max_window_bits" => {
                    p.client_max_window_bits = Some(match value {
                        None => None,
                        Some(v) => Some(window_bits(v)?),
                    });
                    8
                }
                _ => return None,
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
        }
        Some(p)
    }
}

/// What the server answers: the `Sec-WebSocket-Extensions` value and the terms, or `None`
/// (no offer acceptable: the connection goes on without compression).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) header: String,
    pub(crate) agreed: Agreed,
    /// Dedicated terms: the peer's messages build on each other and we keep a window for
    /// them, and/or we keep our own history.
    pub(crate) dedicated: bool,
}

/// Server side: pick the first acceptable permessage-deflate offer among `values` (the
/// request's `Sec-WebSocket-Extensions` header values, in order). `dedicated_fits(window_bits)`
/// says whether a dedicated context (a remote window of `window_bits`, or 0 for none) still
/// fits this shard's budget; if not, the connection gets shared terms.
///
/// An offer is declined (and the next one tried) when it has an unknown parameter, a
/// parameter twice, or an invalid value (RFC 7692 §5, §7.1). `Err`: the header itself is off
/// the RFC 6455 §9.1 grammar, which makes the handshake invalid (§4.2.1: 400).
pub(crate) fn server_answer<'a>(
    values: impl Iterator<Item = &'a str>,
    st: &DeflateSettings,
    dedicated_fits: impl FnOnce(u8) -> bool,
) -> Result<Option<Answer>, Malformed> {
    let elements = parse_list(values)?;
    if st.mode == Compression::Off {
        return Ok(None);
    }
    let Some(offer) = elements
        .iter()
        .filter(|e| e.name.eq_ignore_ascii_case(NAME))
        .find_map(|e| Params::parse(&e.params))
    else {
        return Ok(None);
    };
    let cap = st.server_max_window_bits;
    let server_bits = offer.server_max_window_bits.map_or(cap, |b| b.min(cap));
    let mut header = String::from(NAME);
    let mut agreed = Agreed {
        local_no_context_takeover: true,
        local_max_window_bits: server_bits,
        remote_no_context_takeover: true,
        remote_max_window_bits: 15,
    };
    let mut dedicated = false;
    if st.mode == Compression::Dedicated {
        // The peer's window: what we told it, or what it said it keeps to, else 15.
        let client_bits = match offer.client_max_window_bits {
            Some(v) => v.unwrap_or(15).min(st.client_max_window_bits),
            None => 15,
        };
        let remote_ctx = !offer.client_no_context_takeover;
        // A window kept for a peer that claims 8 is 9 bits: zlib turns 8 into 9.
        let ring_bits = if remote_ctx { client_bits.max(9) } else { 0 };
        if dedicated_fits(ring_bits) {
            dedicated = true;
            agreed.local_no_context_takeover = offer.server_no_context_takeover;
            agreed.remote_no_context_takeover = offer.client_no_context_takeover;
            agreed.remote_max_window_bits = client_bits.max(8);
            if offer.server_no_context_takeover {
                header.push_str("; server_no_context_takeover");
            }
            if offer.client_no_context_takeover {
                header.push_str("; client_no_context_takeover");
            }
            if offer.server_max_window_bits.is_some() || server_bits < 15 {
                header.push_str(&format!("; server_max_window_bits={server_bits}"));
            }
            if remote_ctx && offer.client_max_window_bits.is_some() {
                header.push_str(&format!("; client_max_window_bits={client_bits}"));
            }
        }
    }
    if !dedicated {
        header.push_str("; server_no_context_takeover; client_no_context_takeover");
        if offer.server_max_window_bits.is_some() || server_bits < 15 {
            header.push_str(&format!("; server_max_window_bits={server_bits}"));
        }
    }
    Ok(Some(Answer {
        header,
        agreed,
        dedicated,
    }))
}

/// What a client offers: `permessage-deflate; client_max_window_bits` (as browsers do: the
/// server may then lower our window).
pub fn client_offer() -> &'static str {
    "permessage-deflate; client_max_window_bits"
}

/// Why a server's answer to [`client_offer`] is refused (the client fails the connection,
/// RFC 7692 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BadAnswer(pub &'static str);

/// Client side: check the server's `Sec-WebSocket-Extensions` values against
/// [`client_offer`]. `Ok(None)`: the server declined (no extension); `Ok(Some(terms))`: what
/// both ends keep to.
pub fn client_accept<'a>(
    values: impl Iterator<Item = &'a str>,
) -> Result<Option<Agreed>, BadAnswer> {
    let elements = parse_list(values).map_err(|_| BadAnswer("malformed extension answer"))?;
    let mut agreed = None;
    for e in &elements {
        if !e.name.eq_ignore_ascii_case(NAME) {
            return Err(BadAnswer("server chose an extension that was not offered"));
        }
        if agreed.is_some() {
            return Err(BadAnswer("server chose permessage-deflate twice"));
        }
        let p = Params::parse(&e.params).ok_or(BadAnswer(
            "invalid permessage-deflate parameters in the answer",
        ))?;
        let client_bits = match p.client_max_window_bits {
            None => 15,
            Some(Some(b)) => b,
            Some(None) => {
                return Err(BadAnswer("client_max_window_bits without a value"));
            }
        };
        agreed = Some(Agreed {
            local_no_context_takeover: p.client_no_context_takeover,
            local_max_window_bits: client_bits,
            remote_no_context_takeover: p.server_no_context_takeover,
            remote_max_window_bits: p.server_max_window_bits.unwrap_or(15),
        });
    }
    Ok(agreed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(mode: Compression) -> DeflateSettings {
        DeflateSettings {
            mode,
            ..DeflateSettings::default()
        }
    }

    fn answer(mode: Compression, offers: &[&str]) -> Result<Option<Answer>, Malformed> {
        server_answer(offers.iter().copied(), &st(mode), |_| true)
    }

    fn header(mode: Compression, offers: &[&str]) -> Option<String> {
        answer(mode, offers).unwrap().map(|a| a.header)
    }

    #[test]
    fn shared_mode_answers_no_context_takeover_both_ways() {
        let a = answer(Compression::Shared, &["permessage-deflate"])
            .unwrap()
            .unwrap();
        assert_eq!(
            a.header,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=12"
        );
        assert!(!a.dedicated);
        assert!(a.agreed.local_no_context_takeover && a.agreed.remote_no_context_takeover);
        assert_eq!(a.agreed.local_max_window_bits, 12);
    }

    #[test]
    fn dedicated_mode_lowers_the_client_window_only_when_offered() {
        let h = header(
            Compression::Dedicated,
            &["permessage-deflate; client_max_window_bits"],
        );
        assert_eq!(
            h.as_deref(),
            Some("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
        );
        let a = answer(Compression::Dedicated, &["permessage-deflate"])
            .unwrap()
            .unwrap();
        assert_eq!(a.header, "permessage-deflate; server_max_window_bits=12");
        assert_eq!(a.agreed.remote_max_window_bits, 15);
        assert!(a.dedicated && !a.agreed.remote_no_context_takeover);
        // An offered value below the cap is kept.
        let a = answer(
            Compression::Dedicated,
            &["permessage-deflate; client_max_window_bits=10"],
        )
        .unwrap()
        .unwrap();
        assert!(a.header.ends_with("client_max_window_bits=10"));
        assert_eq!(a.agreed.remote_max_window_bits, 10);
    }

    #[test]
    fn every_parameter_with_and_without_values() {
        let h = header(
            Compression::Dedicated,
            &[
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
               server_max_window_bits=10; client_max_window_bits=9",
            ],
        );
        assert_eq!(
            h.as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=10"
            )
        );
        // server_max_window_bits above the cap: the answer says the cap.
        let a = answer(
            Compression::Dedicated,
            &["permessage-deflate; server_max_window_bits=15"],
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.header, "permessage-deflate; server_max_window_bits=12");
        // Quoted values are tokens once unquoted.
        let a = answer(
            Compression::Dedicated,
            &["permessage-deflate; server_max_window_bits=\"9\""],
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.agreed.local_max_window_bits, 9);
        // 8 is accepted and kept to (distance-1 matches only).
        let a = answer(
            Compression::Shared,
            &["permessage-deflate; server_max_window_bits=8"],
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.agreed.local_max_window_bits, 8);
        assert!(a.header.ends_with("server_max_window_bits=8"));
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_is_tried() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_max_window_bits=10; client_max_window_bits=11",
        ] {
            assert_eq!(header(Compression::Shared, &[bad]), None, "{bad}");
            let both = format!("{bad}, permessage-deflate; client_max_window_bits");
            let a = answer(Compression::Dedicated, &[&both]).unwrap().unwrap();
            assert!(
                a.header.contains("client_max_window_bits=12"),
                "{bad}: {}",
                a.header
            );
        }
        // Several offers in one header or across headers, in order; other extensions skipped.
        let a = answer(
            Compression::Dedicated,
            &[
                "x-webkit-deflate-frame",
                "permessage-deflate; server_max_window_bits=10, permessage-deflate",
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.agreed.local_max_window_bits, 10);
    }

    #[test]
    fn malformed_headers_are_errors_and_off_mode_declines() {
        for bad in [
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage deflate",
            "permessage-deflate; =10",
            "; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=\"1 0\"",
        ] {
            assert_eq!(answer(Compression::Shared, &[bad]), Err(Malformed), "{bad}");
        }
        assert_eq!(header(Compression::Off, &["permessage-deflate"]), None);
        assert_eq!(header(Compression::Shared, &["x-other; a=1"]), None);
        assert!(header(Compression::Shared, &[" , ,permessage-deflate"]).is_some());
    }

    #[test]
    fn over_budget_gets_shared_terms() {
        let a = server_answer(
            ["permessage-deflate; client_max_window_bits"].into_iter(),
            &st(Compression::Dedicated),
            |bits| {
                assert_eq!(bits, 12);
                false
            },
        )
        .unwrap()
        .unwrap();
        assert!(!a.dedicated);
        assert!(a.header.contains("client_no_context_takeover"));
    }

    #[test]
    fn client_checks_the_answer() {
        let ok = |h: &str| client_accept([h].into_iter());
        let a = ok("permessage-deflate; server_no_context_takeover; client_max_window_bits=10")
            .unwrap()
            .unwrap();
        assert!(a.remote_no_context_takeover && !a.local_no_context_takeover);
        assert_eq!(
            (a.local_max_window_bits, a.remote_max_window_bits),
            (10, 15)
        );
        assert_eq!(client_accept(core::iter::empty()), Ok(None));
        for bad in [
            "x-other",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; bogus",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; \"",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }
}
