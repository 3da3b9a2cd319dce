//! [`Session`]: the client side of the resume protocol without I/O. It remembers the last
//! position seen on each subscribed topic, writes the commands a new connection starts with,
//! turns what the server sends into [`Event`]s (dropping duplicates, reporting gaps), decides
//! when to send a heartbeat and when the path is dead, and how long to wait before
//! reconnecting. A driver owns the socket: [`crate::ResumeClient`] is one (a thread per
//! client); a test or a load generator can drive thousands of sessions from one poll loop.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::backoff::{Backoff, Jitter};
use super::wire::{Command, Envelope, Notice};
use crate::history::Position;

/// Heartbeats: a client that heard nothing for `interval` sends `ping`; if nothing at all
/// arrives within `timeout` after that, the path is dead and the client reconnects. A dead
/// path is found within `interval + timeout` of the last byte received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Heartbeat {
    /// Quiet time before a ping. Default 15 s (one small message per idle client per 15 s).
    pub interval: Duration,
    /// Time allowed for any answer after the ping. Default 10 s.
    pub timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Heartbeat {
    /// A heartbeat with these times.
    pub const fn new(interval: Duration, timeout: Duration) -> Self {
        Self { interval, timeout }
    }
}

/// What happened, for the application (shown to users: "reconnecting in 3 s", "resumed").
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The connection is open (the subscriptions are being resumed).
    Connected,
    /// The connection is gone; attempt number `attempt` (from 1) starts after `delay`.
    Reconnecting {
        /// Retry number since the last open connection, from 1.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
    },
    /// `attempts_max` attempts failed: the client stopped.
    GaveUp,
    /// Subscribed to a topic for the first time; its messages follow `position`.
    Subscribed {
        /// The topic.
        topic: String,
        /// The topic's head when subscribing.
        position: Position,
    },
    /// Resubscribed after a reconnect with nothing missing: the replay of what was missed
    /// follows, then live messages.
    Resumed {
        /// The topic.
        topic: String,
        /// The last position seen (messages follow from the next one).
        position: Position,
    },
    /// Messages were lost: positions `first..=last` of `last.epoch` (the application should
    /// resynchronise what they carried). Delivery goes on after `last`.
    Gap {
        /// The topic.
        topic: String,
        /// The first lost position's sequence number.
        first: u64,
        /// The last lost position.
        last: Position,
    },
    /// The server's history started over (restart, or the topic's history was dropped): the
    /// client's position means nothing now; delivery goes on after `position` of the new epoch.
    Reset {
        /// The topic.
        topic: String,
        /// Messages follow this position.
        position: Position,
    },
    /// A topic message.
    Message {
        /// The topic.
        topic: String,
        /// Its position.
        position: Position,
        /// Its payload.
        payload: Vec<u8>,
        /// Whether it came as a text message.
        text: bool,
    },
    /// A message the server sent to this connection alone (not a topic message).
    Direct {
        /// Its payload.
        payload: Vec<u8>,
        /// Whether it came as a text message.
        text: bool,
    },
    /// The server refused a command (`err`).
    Refused(String),
}

/// What the driver must do now about the heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Beat {
    /// Nothing.
    Idle,
    /// Send these commands (a ping, and acks of the positions reached).
    Send(Vec<String>),
    /// Nothing arrived within the heartbeat bound: drop the connection and reconnect.
    Dead,
}

struct Topic {
    name: String,
    /// The last position seen (None: never subscribed yet).
    last: Option<Position>,
    /// The last position acknowledged to the server.
    acked: Option<Position>,
}

/// The client side of the resume protocol (see the module docs).
pub struct Session {
    backoff: Backoff,
    heartbeat: Heartbeat,
    rng: Jitter,
    topics: Vec<Topic>,
    /// Failed attempts since the last open connection.
    attempt: u32,
    open: bool,
    last_rx: Instant,
    ping_sent: Option<Instant>,
    pings: u64,
    events: VecDeque<Event>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("topics", &self.topics.len())
            .field("attempt", &self.attempt)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session with this reconnect schedule and heartbeat, its jitter seeded by `rng`.
    pub fn new(backoff: Backoff, heartbeat: Heartbeat, rng: Jitter, now: Instant) -> Self {
        Self {
            backoff,
            heartbeat,
            rng,
            topics: Vec::new(),
            attempt: 0,
            open: false,
            last_rx: now,
            ping_sent: None,
            pings: 0,
            events: VecDeque::new(),
        }
    }

    /// Subscribe to `topic` (kept across reconnects). Returns the command to send now if the
    /// connection is open (else it is sent when it opens).
    pub fn subscribe(&mut self, topic: &str) -> Option<String> {
        if !self.topics.iter().any(|t| t.name == topic) {
            self.topics.push(Topic {
                name: topic.to_owned(),
                last: None,
                acked: None,
            });
        }
        self.open.then(|| Command::Sub(topic).to_string())
    }

    /// The last position seen on `topic`.
    pub fn position(&self, topic: &str) -> Option<Position> {
        self.topics.iter().find(|t| t.name == topic)?.last
    }

    /// The connection opened (the upgrade was accepted): returns the commands to send first
    /// (a `resume` for every topic with a position, a `sub` for the others).
    pub fn on_open(&mut self, now: Instant) -> Vec<String> {
        self.open = true;
        self.attempt = 0;
        self.last_rx = now;
        self.ping_sent = None;
        self.events.push_back(Event::Connected);
        self.topics
            .iter()
            .map(|t| match t.last {
                Some(p) => Command::Resume(&t.name, p).to_string(),
                None => Command::Sub(&t.name).to_string(),
            })
            .collect()
    }

    /// The connection was lost (or an attempt failed): how long to wait before the next
    /// attempt, `None` to give up. Queues the matching event.
    pub fn on_disconnect(&mut self) -> Option<Duration> {
        self.open = false;
        match self.backoff.delay(self.attempt, &mut self.rng) {
            Some(delay) => {
                self.attempt += 1;
                self.events.push_back(Event::Reconnecting {
                    attempt: self.attempt,
                    delay,
                });
                Some(delay)
            }
            None => {
                self.events.push_back(Event::GaveUp);
                None
            }
        }
    }

    /// Something other than a message arrived (a ping, a pong frame): the path is alive.
    pub fn on_activity(&mut self, now: Instant) {
        self.last_rx = now;
        self.ping_sent = None;
    }

    /// A message arrived from the server.
    pub fn on_message(&mut self, now: Instant, text: bool, data: &[u8]) {
        self.on_activity(now);
        if let Some(env) = Envelope::parse(data) {
            self.on_topic_message(env, text);
            return;
        }
        let notice = if text {
            std::str::from_utf8(data).ok().and_then(Notice::parse)
        } else {
            None
        };
        let ev = match notice {
            Some(Notice::Ok(topic, p)) => self.moved(topic, p, |topic, position, fresh| {
                if fresh {
                    Event::Subscribed { topic, position }
                } else {
                    Event::Resumed { topic, position }
                }
            }),
            Some(Notice::Reset(topic, p)) => self.moved(topic, p, |topic, position, _| {
                Event::Reset { topic, position }
            }),
            Some(Notice::Gap(topic, first, last)) => self.moved(topic, last, |topic, last, _| {
                Event::Gap { topic, first, last }
            }),
            Some(Notice::Pong(_)) => None,
            Some(Notice::Err(e)) => Some(Event::Refused(e.to_owned())),
            None => Some(Event::Direct {
                payload: data.to_vec(),
                text,
            }),
        };
        self.events.extend(ev);
    }

    /// A subscription notice moved `topic` to `p`: record it, make its event.
    fn moved(
        &mut self,
        topic: &str,
        p: Position,
        ev: impl FnOnce(String, Position, bool) -> Event,
    ) -> Option<Event> {
        let t = self.topics.iter_mut().find(|t| t.name == topic)?;
        let fresh = t.last.is_none();
        t.last = Some(p);
        Some(ev(topic.to_owned(), p, fresh))
    }

    fn on_topic_message(&mut self, env: Envelope<'_>, text: bool) {
        let Ok(name) = std::str::from_utf8(env.topic) else {
            return;
        };
        let Some(t) = self.topics.iter_mut().find(|t| t.name == name) else {
            return;
        };
        let p = env.position;
        if let Some(last) = t.last {
            if last.epoch == p.epoch {
                if p.seq <= last.seq {
                    return; // already delivered
                }
                if p.seq > last.seq + 1 {
                    self.events.push_back(Event::Gap {
                        topic: name.to_owned(),
                        first: last.seq + 1,
                        last: Position {
                            epoch: p.epoch,
                            seq: p.seq - 1,
                        },
                    });
                }
            }
        }
        t.last = Some(p);
        self.events.push_back(Event::Message {
            topic: name.to_owned(),
            position: p,
            payload: env.payload.to_vec(),
            text,
        });
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Call at least by [`Session::poll_timeout`] while connected.
    pub fn poll_heartbeat(&mut self, now: Instant) -> Beat {
        if !self.open {
            return Beat::Idle;
        }
        if let Some(sent) = self.ping_sent {
            if now.saturating_duration_since(sent) >= self.heartbeat.timeout {
                return Beat::Dead;
            }
            return Beat::Idle;
        }
        if now.saturating_duration_since(self.last_rx) < self.heartbeat.interval {
            return Beat::Idle;
        }
        self.ping_sent = Some(now);
        self.pings += 1;
        let mut out = vec![Command::Ping(&self.pings.to_string()).to_string()];
        for t in &mut self.topics {
            if let Some(p) = t.last.filter(|&p| Some(p) != t.acked) {
                out.push(Command::Ack(&t.name, p).to_string());
                t.acked = Some(p);
            }
        }
        Beat::Send(out)
    }

    /// When [`Session::poll_heartbeat`] has something to do next (while connected).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.open {
            return None;
        }
        Some(match self.ping_sent {
            Some(sent) => sent + self.heartbeat.timeout,
            None => self.last_rx + self.heartbeat.interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(now: Instant) -> Session {
        let hb = Heartbeat::new(Duration::from_millis(100), Duration::from_millis(50));
        Session::new(Backoff::default(), hb, Jitter::from_seed(3), now)
    }

    fn env(seq: u64) -> Vec<u8> {
        let p = Position { epoch: 9, seq };
        let f = Envelope::encode_shared(b"t", p, crate::Message::Text("x"));
        f[2..].to_vec()
    }

    fn drain(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    #[test]
    fn resume_session_resubscribes_from_the_last_position_and_drops_duplicates() {
        let now = Instant::now();
        let mut s = session(now);
        assert_eq!(s.subscribe("t"), None);
        assert_eq!(s.on_open(now), ["sub t"]);
        s.on_message(now, true, b"ok 9 4 t");
        s.on_message(now, true, &env(5));
        s.on_message(now, true, &env(5));
        s.on_message(now, true, &env(8));
        let evs = drain(&mut s);
        assert!(matches!(evs[1], Event::Subscribed { .. }));
        let msgs: Vec<_> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Message { position, .. } => Some(position.seq),
                _ => None,
            })
            .collect();
        assert_eq!(msgs, [5, 8]);
        assert!(evs.iter().any(|e| matches!(e, Event::Gap { first: 6, .. })));
        assert!(s.on_disconnect().is_some());
        assert_eq!(s.on_open(now), ["resume 9 8 t"]);
        s.on_message(now, true, b"reset 10 0 t");
        let evs = drain(&mut s);
        assert!(matches!(evs.last(), Some(Event::Reset { .. })));
        assert_eq!(s.position("t"), Some(Position { epoch: 10, seq: 0 }));
    }

    #[test]
    fn resume_session_heartbeat_pings_acks_then_declares_the_path_dead() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.subscribe("t");
        s.on_open(t0);
        s.on_message(t0, true, b"ok 9 4 t");
        assert_eq!(s.poll_heartbeat(t0 + Duration::from_millis(99)), Beat::Idle);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            s.poll_heartbeat(t1),
            Beat::Send(vec!["ping 1".into(), "ack 9 4 t".into()])
        );
        assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_millis(50)));
        assert_eq!(s.poll_heartbeat(t1 + Duration::from_millis(49)), Beat::Idle);
        assert_eq!(s.poll_heartbeat(t1 + Duration::from_millis(50)), Beat::Dead);
        // An answer in time keeps it alive; the position was acked already.
        s.on_message(t1, true, b"pong 1");
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(s.poll_heartbeat(t2), Beat::Send(vec!["ping 2".into()]));
    }
}
