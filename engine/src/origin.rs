//! The Origin policy: which browser origins may open a WebSocket
//! ([`crate::ServerBuilder::allow_origin`]). Checked by the shard before
//! [`crate::Handler::on_upgrade`]; a refused origin gets 403.
//!
//! # Pattern syntax
//!
//! | pattern | allows |
//! |---|---|
//! | `*` | every origin (the default when no pattern is given) |
//! | `https://example.com` | exactly that origin: scheme, host and port (a scheme's default port — 80 for `http`/`ws`, 443 for `https`/`wss` — may be written or left out) |
//! | `https://*.example.com` | any subdomain of `example.com` (`a.example.com`, `a.b.example.com`, not `example.com` itself) with that scheme and port |
//! | `example.com`, `localhost:8080` | that host with any scheme; with a port, only that port, without one any port |
//! | `*.example.com` | any subdomain of `example.com`, any scheme, any port |
//! | `null` | the opaque origin `null` (sandboxed iframes, `file:` pages, some redirects) |
//!
//! Schemes and hosts compare case-insensitively (browsers send hosts in lower case and
//! internationalized names as punycode). A pattern has no path (one trailing `/` is ignored).

use std::fmt;

/// The allowed origins: empty means every origin.
#[derive(Clone, Debug, Default)]
pub(crate) struct Origins {
    patterns: Vec<Pattern>,
    /// Refuse requests that carry no `Origin` header (non-browser clients).
    pub(crate) required: bool,
}

impl Origins {
    /// Add a pattern (see the module docs for the syntax).
    pub(crate) fn allow(&mut self, pattern: &str) -> Result<(), OriginError> {
        self.patterns.push(Pattern::parse(pattern)?);
        Ok(())
    }

    /// May a request with these `Origin` header values (in order) upgrade? No header: yes
    /// unless `required`. More than one: no (which would count?), unless every origin is
    /// allowed. One: when it matches a pattern, or when there is no pattern.
    pub(crate) fn allows<'a>(&self, mut values: impl Iterator<Item = &'a str>) -> bool {
        let Some(first) = values.next() else {
            return !self.required;
        };
        if self.patterns.is_empty() || self.patterns.contains(&Pattern::Any) {
            return true;
        }
        if values.next().is_some() {
            return false;
        }
        let Some(origin) = Origin::parse(first) else {
            return false;
        };
        self.patterns.iter().any(|p| p.matches(&origin))
    }
}

/// Why an origin pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OriginError {
    pattern: String,
    why: &'static str,
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid origin pattern {:?}: {}", self.pattern, self.why)
    }
}

/// One allowed-origin pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    /// `*`.
    Any,
    /// `null`.
    Null,
    /// `[scheme://]host[:port]`, the host maybe `*.domain`.
    Site {
        /// Lower case; `None`: any scheme.
        scheme: Option<String>,
        host: HostRule,
        /// With a scheme: the port (its default when left out; `None` for a scheme without
        /// one). Without a scheme: `None` is any port.
        port: Option<u16>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostRule {
    /// This host (lower case).
    Exact(String),
    /// Any host ending with this (lower case, starting with a dot).
    Suffix(String),
}

/// A parsed `Origin` header value.
#[derive(Debug, PartialEq, Eq)]
enum Origin {
    Null,
    Tuple {
        scheme: String,
        host: String,
        /// The port, or the scheme's default when left out.
        port: Option<u16>,
    },
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, OriginError> {
        let err = |why| OriginError {
            pattern: text.to_owned(),
            why,
        };
        let p = text.trim();
        if p == "*" {
            return Ok(Pattern::Any);
        }
        if p.eq_ignore_ascii_case("null") {
            return Ok(Pattern::Null);
        }
        let (scheme, rest) = match p.split_once("://") {
            Some((s, rest)) => {
                let s = s.to_ascii_lowercase();
                if !valid_scheme(&s) {
                    return Err(err("the scheme must be letters, digits, '+', '-' or '.'"));
                }
                (Some(s), rest)
            }
            None => (None, p),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err("an origin has no path, query or user part"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| err("bad port"))?;
        let host = host.to_ascii_lowercase();
        let rule = match host.strip_prefix("*.") {
            Some(domain) if valid_host(domain) => HostRule::Suffix(format!(".{domain}")),
            Some(_) => return Err(err("'*.' must be followed by a domain")),
            None if valid_host(&host) => HostRule::Exact(host),
            None if host.is_empty() => return Err(err("no host")),
            None => {
                return Err(err(
                    "a host is letters, digits, '-', '.' or [IPv6], '*.' first",
                ))
            }
        };
        let port = match (&scheme, port) {
            (Some(s), None) => default_port(s),
            (_, p) => p,
        };
        Ok(Pattern::Site {
            scheme,
            host: rule,
            port,
        })
    }

    fn matches(&self, origin: &Origin) -> bool {
        match (self, origin) {
            (Pattern::Any, _) => true,
            (Pattern::Null, o) => *o == Origin::Null,
            (Pattern::Site { .. }, Origin::Null) => false,
            (
                Pattern::Site {
                    scheme: ps,
                    host: ph,
                    port: pp,
                },
                Origin::Tuple { scheme, host, port },
            ) => {
                let scheme_ok = ps.as_ref().is_none_or(|s| s == scheme);
                let host_ok = match ph {
                    HostRule::Exact(h) => h == host,
                    HostRule::Suffix(d) => host.len() > d.len() && host.ends_with(d.as_str()),
                };
                let port_ok = match ps {
                    Some(_) => pp == port,
                    None => pp.is_none() || pp == port,
                };
                scheme_ok && host_ok && port_ok
            }
        }
    }
}

impl Origin {
    /// `null`, or `scheme://host[:port]` (RFC 6454 serialization); `None` for anything else.
    fn parse(v: &str) -> Option<Self> {
        if v == "null" {
            return Some(Origin::Null);
        }
        let (scheme, rest) = v.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if !valid_scheme(&scheme) || rest.contains(['/', '?', '#', '@']) {
            return None;
        }
        let (host, port) = split_host_port(rest)?;
        let host = host.to_ascii_lowercase();
        if !valid_host(&host) {
            return None;
        }
        let port = port.or_else(|| default_port(&scheme));
        Some(Origin::Tuple { scheme, host, port })
    }
}

/// `host[:port]` or `[v6][:port]`; `None` for a port that is not 1–65535.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        match s.find(']') {
            Some(i) => (&s[..=i], s[i + 1..].strip_prefix(':')),
            None => (s, None),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|&n| n > 0)?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

fn valid_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

fn valid_host(h: &str) -> bool {
    if let Some(v6) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return !v6.is_empty()
            && v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    !h.is_empty()
        && !h.starts_with('.')
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> Origins {
        let mut o = Origins::default();
        for p in patterns {
            o.allow(p).unwrap();
        }
        o
    }

    fn allows(o: &Origins, origin: &str) -> bool {
        o.allows(std::iter::once(origin))
    }

    #[test]
    fn no_pattern_allows_every_origin_and_requests_without_one() {
        let o = Origins::default();
        assert!(allows(&o, "https://evil.example"));
        assert!(allows(&o, "null"));
        assert!(allows(&o, "garbage"));
        assert!(o.allows(std::iter::empty()));
    }

    #[test]
    fn exact_origin_matches_scheme_host_and_port_case_insensitively() {
        let o = policy(&["https://Example.com"]);
        assert!(allows(&o, "https://example.com"));
        assert!(allows(&o, "HTTPS://EXAMPLE.COM"));
        assert!(
            allows(&o, "https://example.com:443"),
            "default port written out"
        );
        assert!(!allows(&o, "http://example.com"), "other scheme");
        assert!(!allows(&o, "https://example.com:8443"), "other port");
        assert!(!allows(&o, "https://a.example.com"), "subdomain");
        assert!(!allows(&o, "https://example.com.evil.net"));
        assert!(!allows(&o, "https://evilexample.com"));
        let o = policy(&["http://localhost:3000/"]);
        assert!(allows(&o, "http://localhost:3000"));
        assert!(!allows(&o, "http://localhost"));
    }

    #[test]
    fn suffix_pattern_matches_subdomains_only() {
        let o = policy(&["https://*.example.com"]);
        assert!(allows(&o, "https://a.example.com"));
        assert!(allows(&o, "https://a.b.EXAMPLE.com"));
        assert!(
            !allows(&o, "https://example.com"),
            "the domain itself is not a subdomain"
        );
        assert!(
            !allows(&o, "https://aexample.com"),
            "suffix at a label boundary only"
        );
        assert!(!allows(&o, "http://a.example.com"), "scheme");
        assert!(!allows(&o, "https://a.example.com:444"), "port");
        let o = policy(&["*.example.com"]);
        assert!(allows(&o, "http://a.example.com:8080"));
        assert!(allows(&o, "https://a.example.com"));
        assert!(!allows(&o, "https://example.com"));
    }

    #[test]
    fn host_only_pattern_allows_any_scheme_and_port_unless_one_is_given() {
        let o = policy(&["localhost"]);
        assert!(allows(&o, "http://localhost:5173"));
        assert!(allows(&o, "https://localhost"));
        assert!(!allows(&o, "http://localhost.evil.net"));
        let o = policy(&["localhost:8080"]);
        assert!(allows(&o, "http://localhost:8080"));
        assert!(!allows(&o, "http://localhost:8081"));
        let o = policy(&["[::1]:9000"]);
        assert!(allows(&o, "http://[::1]:9000"));
    }

    #[test]
    fn null_origin_is_refused_unless_listed() {
        assert!(!allows(&policy(&["https://example.com"]), "null"));
        assert!(allows(&policy(&["https://example.com", "null"]), "null"));
        assert!(!allows(&policy(&["null"]), "https://example.com"));
    }

    #[test]
    fn missing_origin_is_allowed_unless_required() {
        let mut o = policy(&["https://example.com"]);
        assert!(o.allows(std::iter::empty()));
        o.required = true;
        assert!(!o.allows(std::iter::empty()));
        assert!(allows(&o, "https://example.com"));
    }

    #[test]
    fn malformed_or_repeated_origins_are_refused_by_a_restricting_policy() {
        let o = policy(&["*.example.com"]);
        for bad in [
            "a.example.com",
            "https://a.example.com/path",
            "https://user@a.example.com",
            "https://a.example.com:0",
            "https://a.example.com:99999",
            "",
        ] {
            assert!(!allows(&o, bad), "{bad:?}");
        }
        let two = ["https://a.example.com", "https://b.example.com"];
        assert!(!o.allows(two.iter().copied()));
        assert!(policy(&["*"]).allows(two.iter().copied()));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for bad in [
            "",
            "https://",
            "https://a/b",
            "https://*",
            "*.",
            "a.*.com",
            "ht tp://x",
            "https://x:port",
            "https://x:0",
            "https://x?q",
        ] {
            let e = Origins::default().allow(bad).unwrap_err();
            assert!(
                e.to_string().contains("invalid origin pattern"),
                "{bad:?}: {e}"
            );
        }
    }
}
