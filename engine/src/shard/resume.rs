//! The server side of the resume subprotocol (see [`crate::resume`]): the commands a client
//! sends on a connection that speaks it, answered here; `msg` payloads go on to the handler.

use std::sync::Arc;

use super::conn::Conn;
use super::entry::RESUME;
use super::handler::Handler;
use super::topics::Start;
use crate::history::Position;
use crate::proto::{Message, MAX_HEADER_LEN};
use crate::pubsub::PubSubError;
use crate::resume::{Command, Notice};
use crate::stats::ShardStats;

/// A message for the handler; on a resume connection a text message is a command (`msg`
/// payloads go on to the handler).
#[inline]
pub(super) fn on_message<H: Handler>(
    handler: &mut H,
    conn: &mut Conn<'_, H::State>,
    msg: Message<'_>,
) {
    let (Message::Text(text), true) = (msg, conn.speaks_resume()) else {
        conn.guard(|c| handler.on_message(c, msg));
        return;
    };
    let cmd = match Command::parse(text) {
        Ok(cmd) => cmd,
        Err(e) => {
            ShardStats::bump(&conn.out.ctx.stats.protocol_errors, 1);
            conn.notice(Notice::Err(&e.to_string()));
            return;
        }
    };
    match cmd {
        Command::Msg(payload) => conn.guard(|c| handler.on_message(c, Message::Text(payload))),
        Command::Sub(topic) => subscribe(handler, conn, topic, None),
        Command::Resume(topic, p) => subscribe(handler, conn, topic, Some(p)),
        Command::Unsub(topic) => {
            conn.unsubscribe(topic);
        }
        Command::Ack(topic, p) => {
            let key = conn.out.key;
            conn.out.ctx.topics.ack(key, topic.as_bytes(), p);
        }
        Command::Ping(token) => {
            conn.notice(Notice::Pong(token));
        }
    }
}

/// `sub` / `resume`, if the handler allows the topic.
fn subscribe<H: Handler>(
    handler: &mut H,
    conn: &mut Conn<'_, H::State>,
    topic: &str,
    from: Option<Position>,
) {
    let mut allowed = false;
    conn.guard(|c| allowed = handler.on_subscribe(c, topic));
    if allowed {
        conn.resume_from(topic, from);
    } else {
        conn.notice(Notice::Err(&format!("forbidden {topic}")));
    }
}

impl<S> Conn<'_, S> {
    /// Does this connection speak the resume subprotocol (`percore.resume.v1`)? Its text
    /// messages then reach [`Handler::on_message`] only when the client sent them as `msg`
    /// (without the `msg ` prefix); topic messages are sent to it in the protocol's envelope.
    pub fn speaks_resume(&self) -> bool {
        *self.out.flags & RESUME != 0
    }

    /// The last position this connection acknowledged on `topic` (resume subscribers only),
    /// so the server can tell what each client has.
    pub fn acked(&mut self, topic: impl AsRef<[u8]>) -> Option<Position> {
        let key = self.out.key;
        self.out.ctx.topics.acked(key, topic.as_ref())
    }

    /// Queue a notice under the send-queue limit (a client that sends commands without
    /// reading the answers is a slow consumer like any other). False if it was not queued.
    fn notice(&mut self, n: Notice<'_>) -> bool {
        if !self.half.can_send() {
            return false;
        }
        let text = n.to_string();
        if self.out.over_limit(text.len() + MAX_HEADER_LEN) {
            self.out.slow_consumer(self.half, self.ep, self.now);
            return false;
        }
        self.half
            .send_message(self.ep, &mut self.out, Message::Text(&text));
        true
    }

    /// Subscribe as a resume subscriber: the notice, then the replay (shared frames, past the
    /// send-queue limit: a replay is bounded by `topic_history_bytes_max`, and the notice
    /// before it is not queued past the limit, so replays cannot pile up), then live.
    fn resume_from(&mut self, topic: &str, from: Option<Position>) {
        let key = self.out.key;
        let mut replay: Vec<Arc<[u8]>> = Vec::new();
        let start = self
            .out
            .ctx
            .topics
            .subscribe_resume(key, topic.as_bytes(), from, &mut replay);
        let notice = match start {
            Ok(Some(Start::Ok(p))) => Notice::Ok(topic, p),
            Ok(Some(Start::Gap(first, last))) => Notice::Gap(topic, first, last),
            Ok(Some(Start::Reset(p))) => Notice::Reset(topic, p),
            Ok(None) => Notice::Err("no room for another topic history"),
            Err(PubSubError::TopicTooLong) => Notice::Err("topic name too long"),
            Err(_) => Notice::Err("subscribe failed"),
        };
        if !self.notice(notice) {
            return;
        }
        // With permessage-deflate, each replayed frame goes out as live publishes do: compressed
        // per this connection's terms (once per frame and window size), or plain with RSV1 clear.
        for f in &replay {
            let variant = self.half.deflated_variant(self.ep, f);
            self.half
                .send_shared(&mut self.out, variant.as_ref().unwrap_or(f));
        }
        self.ep.end_delivery();
    }
}
