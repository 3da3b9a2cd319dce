//! Topic history: the recent messages of a topic, each at a [`Position`] (epoch, sequence)
//! assigned when it is published, kept within a count, a byte and an age bound so that a
//! subscriber that lost its connection can resume where it was (see [`crate::resume`]).
//!
//! The frames kept are the shared, serialize-once frames the live path queues (the resume
//! protocol's envelope of each message): history adds one reference per message, not a copy.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a message sits in a topic's history: `seq` counts the topic's publishes from 1 within
/// one `epoch`. A new epoch starts whenever the history starts over (a server restart, a topic
/// whose history was dropped and made again): positions of two epochs are not comparable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(clippy::exhaustive_structs)] // a position is exactly these two numbers
pub struct Position {
    /// The history's incarnation (below 2^53, so it survives a JavaScript number).
    pub epoch: u64,
    /// The message's number in the epoch (1 = the first; 0 = before the first).
    pub seq: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

/// How much history one topic keeps. A topic whose `messages_max` is 0 keeps none, but its
/// publishes still get positions once a resume subscriber asked for it (so a resuming client
/// is told exactly what it missed).
///
/// Memory: the frames themselves (at most `bytes_max`, counted as encoded frames), plus about
/// 65 bytes per kept message (ring slot, reference counts, allocator rounding) and ~200 bytes
/// per topic (bench/results/2026-12-01-resume-cost.md). The frames are shared with the
/// subscribers' send queues, so a message still queued somewhere costs nothing twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicHistory {
    /// Most messages kept (the oldest go first).
    pub messages_max: usize,
    /// Most bytes of encoded frames kept. A single message larger than this is not kept.
    pub bytes_max: usize,
    /// Messages older than this are dropped (checked on publish and resume).
    pub age_max: Duration,
}

impl TopicHistory {
    /// No history.
    pub const OFF: TopicHistory = TopicHistory {
        messages_max: 0,
        bytes_max: 0,
        age_max: Duration::ZERO,
    };

    /// Keep up to `messages_max` messages, `bytes_max` bytes, none older than `age_max`.
    pub const fn new(messages_max: usize, bytes_max: usize, age_max: Duration) -> Self {
        Self {
            messages_max,
            bytes_max,
            age_max,
        }
    }

    /// Does it keep anything?
    pub const fn is_on(&self) -> bool {
        self.messages_max > 0 && self.bytes_max > 0 && !self.age_max.is_zero()
    }
}

/// The server's history settings: a default for every topic, overrides by name or name prefix,
/// and a bound on the topics holding history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HistoryPolicy {
    pub(crate) default: TopicHistory,
    /// `(pattern, limits)`: a pattern ending in `*` matches names starting with what precedes
    /// it, any other matches one name exactly. The first match wins.
    pub(crate) overrides: Vec<(Vec<u8>, TopicHistory)>,
    pub(crate) topics_max: usize,
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        Self {
            default: TopicHistory {
                messages_max: 0,
                bytes_max: 1 << 20,
                age_max: Duration::from_secs(300),
            },
            overrides: Vec::new(),
            topics_max: 100_000,
        }
    }
}

impl HistoryPolicy {
    /// The limits of `topic`.
    pub(crate) fn for_topic(&self, topic: &[u8]) -> TopicHistory {
        for (pattern, limits) in &self.overrides {
            let hit = match pattern.strip_suffix(b"*") {
                Some(prefix) => topic.starts_with(prefix),
                None => topic == &pattern[..],
            };
            if hit {
                return *limits;
            }
        }
        self.default
    }
}

/// One topic's history ring. Shared by the publishers (which append under its lock) and the
/// shards (which read it to replay and to catch up).
pub(crate) struct History {
    limits: TopicHistory,
    epoch: u64,
    /// The last position given out (0: none yet).
    head: u64,
    /// The kept messages, oldest first: entry `i` is at `head - len + 1 + i`.
    frames: VecDeque<(Instant, Arc<[u8]>)>,
    bytes: usize,
    /// When the last message was published (for the sweep of idle topics).
    pub(crate) last_publish: Instant,
}

/// What a resume finds in a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Everything after the client's position is held: it follows.
    Whole { after: u64 },
    /// Messages `first..=last` are no longer held; the rest follows.
    Gap { first: u64, last: u64 },
    /// The client's epoch is not this one (or its position is ahead): everything held follows,
    /// from `after + 1`.
    Reset { after: u64 },
}

impl History {
    pub(crate) fn new(limits: TopicHistory, epoch: u64, now: Instant) -> Self {
        Self {
            limits,
            epoch,
            head: 0,
            frames: VecDeque::new(),
            bytes: 0,
            last_publish: now,
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last position given out.
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Messages and frame bytes held.
    pub(crate) fn held(&self) -> (usize, usize) {
        (self.frames.len(), self.bytes)
    }

    /// Does it keep messages (not only positions)?
    pub(crate) fn keeps(&self) -> bool {
        self.limits.is_on()
    }

    /// The position of the oldest message held (`head + 1` when none is).
    fn first(&self) -> u64 {
        self.head + 1 - self.frames.len() as u64
    }

    /// The next position, for `frame` (made by `encode` with that position), kept within the
    /// limits. Returns the position and the frame.
    pub(crate) fn push(
        &mut self,
        now: Instant,
        encode: impl FnOnce(u64) -> Arc<[u8]>,
    ) -> (u64, Arc<[u8]>) {
        self.head += 1;
        self.last_publish = now;
        let frame = encode(self.head);
        if !self.limits.is_on() {
            return (self.head, frame);
        }
        self.expire(now);
        let len = frame.len();
        if len > self.limits.bytes_max {
            // Never kept: drop everything older too, so what is held stays contiguous.
            self.frames.clear();
            self.bytes = 0;
            return (self.head, frame);
        }
        while self.frames.len() >= self.limits.messages_max
            || self.bytes + len > self.limits.bytes_max
        {
            self.pop();
        }
        self.frames.push_back((now, frame.clone()));
        self.bytes += len;
        (self.head, frame)
    }

    fn pop(&mut self) {
        if let Some((_, f)) = self.frames.pop_front() {
            self.bytes -= f.len();
        }
    }

    /// Drop messages older than `age_max`.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.frames.front() {
            if now.saturating_duration_since(*at) <= self.limits.age_max {
                break;
            }
            self.pop();
        }
    }

    /// Where a client that last saw `from` (None: nothing, it starts from now) resumes, and
    /// the frames to replay to it, appended to `out`.
    pub(crate) fn resume(
        &mut self,
        now: Instant,
        from: Option<Position>,
        out: &mut Vec<Arc<[u8]>>,
    ) -> Resume {
        self.expire(now);
        let Some(from) = from else {
            return Resume::Whole { after: self.head };
        };
        let first = self.first();
        let verdict = if from.epoch != self.epoch || from.seq > self.head {
            Resume::Reset { after: first - 1 }
        } else if from.seq + 1 >= first {
            Resume::Whole { after: from.seq }
        } else {
            Resume::Gap {
                first: from.seq + 1,
                last: first - 1,
            }
        };
        let after = match verdict {
            Resume::Whole { after } | Resume::Reset { after } => after,
            Resume::Gap { last, .. } => last,
        };
        self.frames_after(after, self.head, out);
        verdict
    }

    /// Frames at positions `after + 1 ..= upto` that are still held, appended to `out`;
    /// returns the first position appended (or `upto + 1` if none).
    pub(crate) fn frames_after(&self, after: u64, upto: u64, out: &mut Vec<Arc<[u8]>>) -> u64 {
        let first = self.first();
        let start = (after + 1).max(first);
        for seq in start..=upto.min(self.head) {
            out.push(self.frames[(seq - first) as usize].1.clone());
        }
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, len: usize) -> Arc<[u8]> {
        let mut v = seq.to_le_bytes().to_vec();
        v.resize(len.max(8), 0);
        Arc::from(v)
    }

    fn ring(messages_max: usize, bytes_max: usize) -> History {
        let limits = TopicHistory::new(messages_max, bytes_max, Duration::from_secs(60));
        History::new(limits, 7, Instant::now())
    }

    fn seqs(out: &[Arc<[u8]>]) -> Vec<u64> {
        out.iter()
            .map(|f| u64::from_le_bytes(f[..8].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn resume_history_count_bound_keeps_the_newest_and_reports_the_gap() {
        let mut h = ring(3, 1 << 20);
        let now = Instant::now();
        for _ in 0..5 {
            h.push(now, |s| frame(s, 10));
        }
        assert_eq!(h.held(), (3, 30));
        let mut out = Vec::new();
        let pos = |seq| Some(Position { epoch: 7, seq });
        assert_eq!(h.resume(now, pos(2), &mut out), Resume::Whole { after: 2 });
        assert_eq!(seqs(&out), [3, 4, 5]);
        out.clear();
        assert_eq!(
            h.resume(now, pos(0), &mut out),
            Resume::Gap { first: 1, last: 2 }
        );
        assert_eq!(seqs(&out), [3, 4, 5]);
        out.clear();
        assert_eq!(h.resume(now, pos(5), &mut out), Resume::Whole { after: 5 });
        assert!(out.is_empty());
        // Another epoch, or a position from the future: start over with what is held.
        let other = Some(Position { epoch: 8, seq: 4 });
        assert_eq!(h.resume(now, other, &mut out), Resume::Reset { after: 2 });
        assert_eq!(seqs(&out), [3, 4, 5]);
        out.clear();
        assert_eq!(h.resume(now, pos(9), &mut out), Resume::Reset { after: 2 });
        out.clear();
        assert_eq!(h.resume(now, None, &mut out), Resume::Whole { after: 5 });
        assert!(out.is_empty());
    }

    #[test]
    fn resume_history_byte_bound_evicts_and_an_oversized_message_is_not_kept() {
        let mut h = ring(100, 100);
        let now = Instant::now();
        for _ in 0..4 {
            h.push(now, |s| frame(s, 30));
        }
        assert_eq!(h.held(), (3, 90));
        h.push(now, |s| frame(s, 101));
        assert_eq!(h.held(), (0, 0));
        assert_eq!(h.head(), 5);
        let mut out = Vec::new();
        let r = h.resume(now, Some(Position { epoch: 7, seq: 3 }), &mut out);
        assert_eq!(r, Resume::Gap { first: 4, last: 5 });
        assert!(out.is_empty());
    }

    #[test]
    fn resume_history_age_bound_drops_old_messages() {
        let limits = TopicHistory::new(100, 1 << 20, Duration::from_millis(50));
        let t0 = Instant::now();
        let mut h = History::new(limits, 1, t0);
        h.push(t0, |s| frame(s, 10));
        h.push(t0 + Duration::from_millis(40), |s| frame(s, 10));
        let mut out = Vec::new();
        let r = h.resume(
            t0 + Duration::from_millis(70),
            Some(Position { epoch: 1, seq: 0 }),
            &mut out,
        );
        assert_eq!(r, Resume::Gap { first: 1, last: 1 });
        assert_eq!(seqs(&out), [2]);
    }

    #[test]
    fn resume_history_off_gives_positions_and_keeps_nothing() {
        let mut h = History::new(TopicHistory::OFF, 3, Instant::now());
        let now = Instant::now();
        assert_eq!(h.push(now, |s| frame(s, 10)).0, 1);
        assert_eq!(h.push(now, |s| frame(s, 10)).0, 2);
        assert_eq!(h.held(), (0, 0));
        let mut out = Vec::new();
        let r = h.resume(now, Some(Position { epoch: 3, seq: 1 }), &mut out);
        assert_eq!(r, Resume::Gap { first: 2, last: 2 });
    }

    #[test]
    fn resume_policy_overrides_match_names_and_prefixes_first_wins() {
        let room = TopicHistory::new(10, 100, Duration::from_secs(1));
        let exact = TopicHistory::new(1, 100, Duration::from_secs(1));
        let p = HistoryPolicy {
            overrides: vec![(b"room:lobby".to_vec(), exact), (b"room:*".to_vec(), room)],
            ..HistoryPolicy::default()
        };
        assert_eq!(p.for_topic(b"room:lobby"), exact);
        assert_eq!(p.for_topic(b"room:x"), room);
        assert_eq!(p.for_topic(b"other"), p.default);
        assert!(!p.default.is_on());
    }
}
