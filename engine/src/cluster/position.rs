//! Where a message stands in its origin's stream, and how a receiver counts what it missed.
//!
//! Every message the bridge publishes carries the header `Percore-Pos: ORIGIN EPOCH SEQ`:
//! ORIGIN is the publishing server (64 random bits, hex, new at every start), and (EPOCH, SEQ)
//! its position in that server's stream for this topic: SEQ counts 1, 2, 3… within an EPOCH,
//! and a new EPOCH starts when the sending bridge had to forget the topic's counter (more than
//! `sequenced_topics_max` topics). `Percore-Kind` says `text` or `binary`, `Percore-Opts`
//! `droppable` or `conflate` (absent: the default policy).
//!
//! A receiving bridge remembers, per topic it subscribes to, the last position seen from each
//! origin: a jump from SEQ n to n + k means k − 1 messages were lost on the way (while the
//! broker or this server's connection was down, or the broker dropped them); a position at or
//! before the last is a duplicate and is not delivered. The first message seen from an origin
//! counts nothing (this server was not subscribed before), a new EPOCH counts SEQ − 1.
//!
//! Messages without `Percore-Pos` (published by other NATS clients) are delivered as they come,
//! untracked: text when they are valid UTF-8 and carry no `Percore-Kind`, else binary.

use async_nats::HeaderMap;

use crate::pubsub::PublishOptions;

/// The position header.
pub(crate) const POS: &str = "Percore-Pos";
/// The message type header (`text` or `binary`).
pub(crate) const KIND: &str = "Percore-Kind";
/// The publish options header (`droppable` or `conflate`; absent for the default).
pub(crate) const OPTS: &str = "Percore-Opts";

/// A message's place in its origin's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) origin: u64,
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
}

/// The headers of a message published with `pos`.
pub(crate) fn headers(pos: Pos, text: bool, opts: PublishOptions) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        POS,
        format!("{:016x} {} {}", pos.origin, pos.epoch, pos.seq).as_str(),
    );
    h.insert(KIND, if text { "text" } else { "binary" });
    if opts.conflate {
        h.insert(OPTS, "conflate");
    } else if opts.droppable {
        h.insert(OPTS, "droppable");
    }
    h
}

/// What a received message's headers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) pos: Option<Pos>,
    /// `Some(true)` text, `Some(false)` binary, `None` not said.
    pub(crate) text: Option<bool>,
    pub(crate) opts: PublishOptions,
}

/// Read the headers; `None` when a percore header is present but malformed.
pub(crate) fn parse(headers: Option<&HeaderMap>) -> Option<Received> {
    let mut r = Received {
        pos: None,
        text: None,
        opts: PublishOptions::default(),
    };
    let Some(h) = headers else {
        return Some(r);
    };
    if let Some(v) = h.get(POS) {
        let mut it = v.as_str().split(' ');
        let origin = u64::from_str_radix(it.next()?, 16).ok()?;
        let epoch = it.next()?.parse().ok()?;
        let seq = it.next()?.parse().ok()?;
        if it.next().is_some() {
            return None;
        }
        r.pos = Some(Pos { origin, epoch, seq });
    }
    if let Some(v) = h.get(KIND) {
        r.text = Some(match v.as_str() {
            "text" => true,
            "binary" => false,
            _ => return None,
        });
    }
    if let Some(v) = h.get(OPTS) {
        r.opts = match v.as_str() {
            "droppable" => PublishOptions::droppable(),
            "conflate" => PublishOptions::conflate(),
            _ => return None,
        };
    }
    Some(r)
}

/// What to do with a received position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Deliver it; `lost` messages of its stream went missing right before it.
    Deliver { lost: u64 },
    /// Already seen (or older than the last seen): do not deliver.
    Duplicate,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    origin: u64,
    epoch: u64,
    seq: u64,
    /// When it was last seen (the topic's message count), for eviction.
    at: u64,
}

/// The last position seen from each origin, for one topic.
#[derive(Debug)]
pub(crate) struct Origins {
    seen: Vec<Seen>,
    clock: u64,
    /// Origins remembered (`ClusterConfig::origins_per_topic_max`); past it the one seen least
    /// recently is forgotten (its next message then counts as a first one: a loss right before
    /// it is not counted).
    max: usize,
}

impl Origins {
    /// Remember at most `max` origins (at least 1).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            seen: Vec::new(),
            clock: 0,
            max: max.max(1),
        }
    }

    /// Judge `pos` and remember it.
    pub(crate) fn accept(&mut self, pos: Pos) -> Verdict {
        self.clock += 1;
        let at = self.clock;
        if let Some(s) = self.seen.iter_mut().find(|s| s.origin == pos.origin) {
            let verdict = if pos.epoch == s.epoch {
                if pos.seq <= s.seq {
                    return Verdict::Duplicate;
                }
                Verdict::Deliver {
                    lost: pos.seq - s.seq - 1,
                }
            } else if pos.epoch > s.epoch {
                Verdict::Deliver {
                    lost: pos.seq.saturating_sub(1),
                }
            } else {
                return Verdict::Duplicate;
            };
            *s = Seen {
                epoch: pos.epoch,
                seq: pos.seq,
                at,
                ..*s
            };
            return verdict;
        }
        if self.seen.len() >= self.max {
            if let Some(i) = (0..self.seen.len()).min_by_key(|&i| self.seen[i].at) {
                self.seen.swap_remove(i);
            }
        }
        self.seen.push(Seen {
            origin: pos.origin,
            epoch: pos.epoch,
            seq: pos.seq,
            at,
        });
        Verdict::Deliver { lost: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::CLUSTER_HEADER_BYTES_MAX;

    fn pos(origin: u64, epoch: u64, seq: u64) -> Pos {
        Pos { origin, epoch, seq }
    }

    /// The wire length NATS gives a header block: `NATS/1.0\r\n`, `key: value\r\n` each, `\r\n`.
    fn wire_len(h: &HeaderMap) -> usize {
        let fields: usize = h
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k, v)))
            .map(|(k, v)| AsRef::<str>::as_ref(k).len() + 2 + v.as_str().len() + 2)
            .sum();
        10 + fields + 2
    }

    #[test]
    fn the_largest_headers_fit_the_admission_bound() {
        let h = headers(
            pos(u64::MAX, u64::MAX, u64::MAX),
            false,
            PublishOptions::droppable(),
        );
        assert_eq!(wire_len(&h), CLUSTER_HEADER_BYTES_MAX);
        let h = headers(pos(1, 1, 1), true, PublishOptions::default());
        assert!(wire_len(&h) < CLUSTER_HEADER_BYTES_MAX);
    }

    #[test]
    fn headers_read_back() {
        for (text, opts) in [
            (true, PublishOptions::default()),
            (false, PublishOptions::droppable()),
            (true, PublishOptions::conflate()),
        ] {
            let p = pos(0xabc, 2, 77);
            let h = headers(p, text, opts);
            let r = parse(Some(&h)).unwrap();
            assert_eq!((r.pos, r.text, r.opts), (Some(p), Some(text), opts));
        }
        let none = parse(None).unwrap();
        assert_eq!((none.pos, none.text), (None, None));
    }

    #[test]
    fn malformed_percore_headers_are_refused() {
        for (k, v) in [
            (POS, "zz 1 2"),
            (POS, "1 2"),
            (POS, "1 2 3 4"),
            (POS, "1 -2 3"),
            (KIND, "json"),
            (OPTS, "never"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(k, v);
            assert_eq!(parse(Some(&h)), None, "{k}: {v}");
        }
        let mut other = HeaderMap::new();
        other.insert("X-Other", "1");
        assert!(parse(Some(&other)).is_some(), "foreign headers are ignored");
    }

    #[test]
    fn gaps_count_as_lost_and_repeats_are_duplicates() {
        let mut o = Origins::new(256);
        assert_eq!(
            o.accept(pos(1, 1, 5)),
            Verdict::Deliver { lost: 0 },
            "first seen"
        );
        assert_eq!(o.accept(pos(1, 1, 6)), Verdict::Deliver { lost: 0 });
        assert_eq!(o.accept(pos(1, 1, 10)), Verdict::Deliver { lost: 3 });
        assert_eq!(o.accept(pos(1, 1, 10)), Verdict::Duplicate);
        assert_eq!(o.accept(pos(1, 1, 8)), Verdict::Duplicate);
        assert_eq!(
            o.accept(pos(2, 1, 1)),
            Verdict::Deliver { lost: 0 },
            "another origin"
        );
        assert_eq!(o.accept(pos(1, 1, 11)), Verdict::Deliver { lost: 0 });
        // The origin forgot the topic's counter: a new epoch from 1; SEQ 3 first means 2 lost.
        assert_eq!(o.accept(pos(1, 2, 3)), Verdict::Deliver { lost: 2 });
        assert_eq!(o.accept(pos(1, 1, 12)), Verdict::Duplicate, "older epoch");
    }

    #[test]
    fn past_the_origin_limit_the_least_recently_seen_is_forgotten() {
        const MAX: usize = 256;
        let mut o = Origins::new(MAX);
        for origin in 0..MAX as u64 {
            o.accept(pos(origin, 1, 1));
        }
        o.accept(pos(0, 1, 2)); // origin 0 is now the most recent, origin 1 the least
        o.accept(pos(9999, 1, 1));
        assert_eq!(o.seen.len(), MAX);
        assert!(o.seen.iter().all(|s| s.origin != 1));
        // Origin 1 comes back: counted as first seen (its gap is not known).
        assert_eq!(o.accept(pos(1, 1, 9)), Verdict::Deliver { lost: 0 });
        assert_eq!(o.accept(pos(0, 1, 4)), Verdict::Deliver { lost: 1 });
    }
}
