//! The shard's side of a connection's HTTP request: an upgrade request goes through the Origin
//! policy to [`Handler::on_upgrade`], whose decision is applied at once or, deferred, when its
//! answer comes through the mailbox ([`Shard::decide`]); a plain request is answered with
//! [`Handler::on_request`]'s response. The protocol side (what is valid, the 101, how the
//! connection ends after an HTTP answer) is [`crate::proto::Connection`]'s.

use std::collections::hash_map;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::SystemTime;

use super::conn::Conn;
use super::ctx::Out;
use super::entry::{mark_reason, Entry, PendingUpgrade, OVER_CAPACITY, RESUME};
use super::mailbox::Verdict;
use super::request::{Decided, HttpContext, Upgrade};
use super::{dispatch, Handler, Shard};
use crate::counters::{self, CloseReason};
use crate::id::ConnId;
use crate::proto::{response_head, Request};
use crate::response::Response;
use crate::resume::PROTOCOL;
use crate::stats::ShardStats;
use crate::upgrade::{Accept, Reject};

impl<H: Handler> Shard<H> {
    /// A complete upgrade request: the capacity and Origin checks, then the handler's decision,
    /// applied now or kept pending.
    pub(super) fn upgrade(&mut self, key: usize, req: Box<Request>) {
        let Some(e) = self.slab.get(key) else {
            return;
        };
        let (generation, peer) = (e.generation, e.peer_addr());
        let decided = if e.flags & OVER_CAPACITY != 0 {
            Decided::Reject(Reject::new(503, "server full").header("Retry-After", "1"))
        } else if !self.ctx.config.origins.allows(origins(&req)) {
            Decided::Reject(Reject::new(403, "origin not allowed"))
        } else {
            let id = ConnId::new(self.ctx.shard, key as u32, generation);
            let up = Upgrade::new(id, peer, self.hub.clone());
            let handler = &mut self.handler;
            match catch_unwind(AssertUnwindSafe(|| handler.on_upgrade(&req, up))) {
                Ok(decision) => decision.0,
                Err(_panic) => {
                    ShardStats::bump(&self.ctx.stats.handler_panics, 1);
                    if let Some(e) = self.slab.get_mut(key) {
                        mark_reason(&mut e.flags, CloseReason::HandlerPanic);
                    }
                    Decided::Reject(Reject::new(500, "internal error"))
                }
            }
        };
        match decided {
            Decided::Accept(accept, state) => self.open(key, &req, accept, state),
            Decided::Reject(reject) => self.refuse(key, &reject),
            Decided::Pending => {
                ShardStats::bump(&self.ctx.stats.upgrades_pending, 1);
                let p = PendingUpgrade { generation, req };
                self.pending.insert(key as u32, p);
            }
        }
    }

    /// A deferred decision arrived: apply it if its upgrade is still waiting (same slot, same
    /// generation), else drop it (the client left, or the handshake timed out).
    pub(super) fn decide(&mut self, id: ConnId, verdict: Verdict) {
        let key = id.key() as u32;
        let hash_map::Entry::Occupied(slot) = self.pending.entry(key) else {
            return;
        };
        if slot.get().generation != id.generation() {
            return;
        }
        let PendingUpgrade { req, .. } = slot.remove();
        ShardStats::drop_one(&self.ctx.stats.upgrades_pending);
        let key = key as usize;
        match verdict {
            Verdict::Accept(any) => match any.downcast::<(Accept, H::State)>() {
                Ok(answer) => {
                    let (accept, state) = *answer;
                    self.open(key, &req, accept, state);
                }
                // A handle is typed by the handler's state: this does not happen.
                Err(_) => self.refuse(key, &Reject::new(500, "internal error")),
            },
            Verdict::Reject(reject) => self.refuse(key, &reject),
            Verdict::Dropped => self.refuse(key, &Reject::new(503, "upgrade decision dropped")),
        }
        self.settle(key);
    }

    /// Accept the upgrade: answer 101, give the connection its state, `on_open`, then decode
    /// the frames that came with (or after) the request.
    fn open(&mut self, key: usize, req: &Request, accept: Accept, state: H::State) {
        // permessage-deflate: agreed here, answered in the 101 (a malformed offer is 400).
        let ext = match self.slab.get_mut(key) {
            Some(e) => e.conn.negotiate_deflate(&mut self.ep, req),
            None => return,
        };
        let ext = match ext {
            Ok(ext) => ext,
            Err(e) => return self.refuse(key, &Reject::new(e.status, e.reason)),
        };
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        let Entry {
            conn,
            queue,
            state: slot,
            peer,
            generation,
            flags,
            ..
        } = e;
        let (generation, now) = (*generation, self.ctx.now);
        let mut out = Out {
            key: key as u32,
            queue,
            flags,
            ctx: &mut self.ctx,
        };
        let mut headers = pairs(&accept.headers);
        if let Some(ext) = ext.as_deref() {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case("Sec-WebSocket-Extensions"));
            headers.push(("Sec-WebSocket-Extensions", ext));
        }
        // The resume subprotocol, when the client offers it and the handler chose none.
        let resume = match accept.protocol.as_deref() {
            Some(p) => p == PROTOCOL,
            None => out.ctx.config.resume_protocol && req.protocols().any(|p| p == PROTOCOL),
        };
        let protocol = match resume {
            true => Some(PROTOCOL),
            false => accept.protocol.as_deref(),
        };
        if resume {
            *out.flags |= RESUME;
        }
        conn.accept_upgrade(now, &mut out, req, protocol, &headers);
        ShardStats::bump(&out.ctx.stats.upgraded, 1);
        let state = slot.insert(state);
        let handler = &mut self.handler;
        Conn {
            half: conn.send_half(),
            ep: &mut self.ep,
            out: out.reborrow(),
            state,
            peer,
            now,
            generation,
        }
        .guard(|c| handler.on_open(c));
        let received = conn.handle_recv(now, &mut self.ep, &mut out, &mut [], |ev, link| {
            dispatch(handler, ev, link, slot, peer, generation)
        });
        self.after_recv(key, received);
    }

    /// Refuse the upgrade with `reject`'s status, headers and body.
    fn refuse(&mut self, key: usize, reject: &Reject) {
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        ShardStats::bump(&self.ctx.stats.handshakes_rejected, 1);
        let m = &self.ctx.stats.metrics;
        counters::bump(&m.rejected[counters::reject_slot(reject.status)], 1);
        mark_reason(&mut e.flags, CloseReason::HandshakeRejected);
        let now = self.ctx.now;
        let mut out = Out {
            key: key as u32,
            queue: &mut e.queue,
            flags: &mut e.flags,
            ctx: &mut self.ctx,
        };
        let headers = pairs(&reject.headers);
        e.conn
            .reject_upgrade(now, &mut out, reject.status, &headers, &reject.body);
    }

    /// A plain HTTP request: the handler's response (500 if it panics or is too large), its
    /// body left out for `HEAD`.
    pub(super) fn respond(&mut self, key: usize, req: &Request) {
        let Some(e) = self.slab.get(key) else {
            return;
        };
        let cx = HttpContext {
            peer: e.peer_addr(),
            shard: self.ctx.shard as usize,
            hub: &self.hub,
            config: &self.ctx.config,
        };
        let handler = &mut self.handler;
        let (response, reason) =
            match catch_unwind(AssertUnwindSafe(|| handler.on_request(req, &cx))) {
                Ok(r) => (r, CloseReason::Http),
                Err(_panic) => {
                    ShardStats::bump(&self.ctx.stats.handler_panics, 1);
                    let r = Response::text(500, "internal error\n");
                    (r, CloseReason::HandlerPanic)
                }
            };
        let (status, head, body) = render(&response, self.ctx.config.http_response_bytes_max);
        let body = if req.method() == "HEAD" {
            &[][..]
        } else {
            body
        };
        let Some(e) = self.slab.get_mut(key) else {
            return;
        };
        ShardStats::bump(&self.ctx.stats.http_requests, 1);
        let m = &self.ctx.stats.metrics;
        counters::bump(&m.http[counters::http_class_slot(status)], 1);
        mark_reason(&mut e.flags, reason);
        let now = self.ctx.now;
        let mut out = Out {
            key: key as u32,
            queue: &mut e.queue,
            flags: &mut e.flags,
            ctx: &mut self.ctx,
        };
        e.conn.respond(now, &mut out, &head, body);
    }
}

/// The status, head and body of `r`: its own, or 500 when its status is not 200–599 or the
/// whole response is larger than `bytes_max`.
fn render(r: &Response, bytes_max: usize) -> (u16, Vec<u8>, &[u8]) {
    let date = http_date(SystemTime::now());
    let mut headers = pairs(&r.headers);
    headers.push(("Date", &date));
    // 204 and 304 have no body (RFC 9110 §6.4.1), nor a Content-Length here.
    let bodiless = matches!(r.status, 204 | 304);
    let (len, body) = if bodiless {
        (None, &[][..])
    } else {
        (Some(r.body.len()), &r.body[..])
    };
    let head = response_head(r.status, &headers, len);
    if (200..=599).contains(&r.status) && head.len() + body.len() <= bytes_max {
        return (r.status, head, body);
    }
    const TOO_LARGE: &[u8] = b"response too large\n";
    const BAD_STATUS: &[u8] = b"invalid response status\n";
    let body = if (200..=599).contains(&r.status) {
        TOO_LARGE
    } else {
        BAD_STATUS
    };
    let headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Date", &date),
    ];
    (500, response_head(500, &headers, Some(body.len())), body)
}

/// The `Origin` header values of `req`, in order.
fn origins(req: &Request) -> impl Iterator<Item = &str> {
    req.headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Origin"))
        .map(|(_, v)| v)
}

/// Header pairs as the protocol layer takes them.
fn pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

/// `t` as an HTTP date (IMF-fixdate, RFC 9110 §5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm, days_from_civil inverted).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn http_dates_are_imf_fixdate() {
        let at = |secs| http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(1_798_761_599), "Thu, 31 Dec 2026 23:59:59 GMT");
    }

    #[test]
    fn responses_past_the_limit_or_with_a_bad_status_become_500() {
        let ok = Response::text(200, "hello");
        let (status, head, body) = render(&ok, 1 << 10);
        assert_eq!(status, 200);
        let text = String::from_utf8(head.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n"));
        assert!(text.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"));
        assert!(text.contains("\r\nDate: ") && text.ends_with(" GMT\r\n\r\n"));
        assert_eq!(body, b"hello");
        let exact = head.len() + body.len();
        assert_eq!(render(&ok, exact).1, head, "exactly the limit fits");
        let (status, head, body) = render(&ok, exact - 1);
        assert_eq!(status, 500);
        assert!(head.starts_with(b"HTTP/1.1 500 "));
        assert_eq!(body, b"response too large\n");
        let (_, head, _) = render(&Response::new(101), 1 << 10);
        assert!(head.starts_with(b"HTTP/1.1 500 "));
        let no_content = Response::text(204, "ignored");
        let (_, head, body) = render(&no_content, 1 << 10);
        let text = String::from_utf8(head).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 204 No Content\r\n") && !text.contains("Content-Length")
        );
        assert!(body.is_empty());
    }
}
