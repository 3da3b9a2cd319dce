//! What the soak records: per class of client, outcomes (expected or not), messages and losses;
//! exactly-once in-order accounting of numbered messages; RSS over the run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde::Serialize;

/// Unexpected outcomes kept as examples per class.
const EXAMPLES_MAX: usize = 8;

/// The record of one class of clients on one backend.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ClassReport {
    /// Class name.
    pub class: &'static str,
    /// Well-behaved clients must be served: every message delivered, no unexpected outcome.
    pub well_behaved: bool,
    /// Connections attempted.
    pub connections: u64,
    /// Connections upgraded (101).
    pub upgraded: u64,
    /// Outcomes as the class expects (a close code, a served message, ...).
    pub expected: u64,
    /// Outcomes the class does not expect.
    pub unexpected: u64,
    /// Every outcome by name, expected or not.
    pub outcomes: BTreeMap<String, u64>,
    /// Data messages sent (numbered ones for well-behaved classes).
    pub messages_sent: u64,
    /// Data messages received and verified.
    pub messages_received: u64,
    /// Well-behaved messages that never arrived.
    pub lost: u64,
    /// Messages received twice.
    pub duplicates: u64,
    /// Messages that arrived after a later one.
    pub out_of_order: u64,
    /// Messages whose payload was not what was sent.
    pub corrupt: u64,
    /// The first unexpected outcomes, with the second of the run they happened in.
    pub examples: Vec<String>,
}

/// A class's report behind a lock, shared by the class's threads.
pub struct Class {
    r: Mutex<ClassReport>,
    start: std::time::Instant,
}

impl Class {
    /// A new class record.
    pub fn new(class: &'static str, well_behaved: bool, start: std::time::Instant) -> Class {
        Class {
            r: Mutex::new(ClassReport {
                class,
                well_behaved,
                ..ClassReport::default()
            }),
            start,
        }
    }

    /// Update the report.
    pub fn with<T>(&self, f: impl FnOnce(&mut ClassReport) -> T) -> T {
        // A poisoned lock only means a class thread panicked; its counts are still worth
        // reporting.
        let mut g = self.r.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// An outcome the class expects.
    pub fn expected(&self, outcome: &str) {
        self.with(|r| {
            r.expected += 1;
            *r.outcomes.entry(outcome.to_string()).or_default() += 1;
        });
    }

    /// An outcome the class does not expect; `detail` goes into the examples.
    pub fn unexpected(&self, outcome: &str, detail: &str) {
        let t = self.start.elapsed().as_secs_f64();
        self.with(|r| {
            r.unexpected += 1;
            *r.outcomes.entry(outcome.to_string()).or_default() += 1;
            if r.examples.len() < EXAMPLES_MAX {
                r.examples.push(format!("t={t:.1}s {outcome}: {detail}"));
            }
        });
    }

    /// A snapshot of the report.
    pub fn report(&self) -> ClassReport {
        self.with(|r| r.clone())
    }
}

/// Exactly-once, in-order accounting of the numbered messages of one sender.
#[derive(Debug, Default, Clone)]
pub struct Sequence {
    /// The next sequence number expected.
    next: u64,
    /// Numbers skipped by an out-of-order arrival and not seen since.
    missing: BTreeSet<u64>,
    /// Distinct messages received.
    pub unique: u64,
    /// Messages received again.
    pub duplicates: u64,
    /// Arrivals that skipped ahead of the next expected number.
    pub out_of_order: u64,
}

/// A gap larger than this is a corrupt sequence number, not lost messages.
const GAP_MAX: u64 = 1 << 20;

/// What [`Sequence::accept`] made of a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one, as expected.
    InOrder,
    /// Ahead of the next one: the numbers between are missing (so far).
    Ahead,
    /// A missing one, arriving late.
    Late,
    /// Seen before.
    Duplicate,
    /// Implausibly far ahead.
    Corrupt,
}

impl Sequence {
    /// Account for message `seq`.
    pub fn accept(&mut self, seq: u64) -> Arrival {
        if seq == self.next {
            self.next += 1;
            self.unique += 1;
            Arrival::InOrder
        } else if seq > self.next {
            if seq - self.next > GAP_MAX {
                return Arrival::Corrupt;
            }
            self.missing.extend(self.next..seq);
            self.next = seq + 1;
            self.unique += 1;
            self.out_of_order += 1;
            Arrival::Ahead
        } else if self.missing.remove(&seq) {
            self.unique += 1;
            Arrival::Late
        } else {
            self.duplicates += 1;
            Arrival::Duplicate
        }
    }
}

/// RSS samples of one server: (seconds since the load started, KiB).
#[derive(Debug, Default, Clone, Serialize)]
pub struct RssSummary {
    /// First sample after the ramp-up (KiB).
    pub start_kb: u64,
    /// Median of the samples around the middle of the run (KiB).
    pub mid_kb: u64,
    /// Median of the samples of the last tenth of the run (KiB).
    pub end_kb: u64,
    /// Largest sample (KiB).
    pub max_kb: u64,
    /// (end - mid) / mid, percent: growth over the last half.
    pub growth_pct: f64,
    /// Samples taken.
    pub samples: usize,
}

fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// Summarise samples taken over a run of `run_s` seconds: the middle is the median of the
/// samples within ±5 % of the run around its half, the end the median of its last 10 %
/// (medians: one sample taken while a burst is in flight does not decide the verdict).
pub fn summarize_rss(samples: &[(f64, u64)], run_s: f64) -> RssSummary {
    let window = |from: f64, to: f64| -> Vec<u64> {
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|&(_, kb)| kb)
            .collect()
    };
    let mut mid = window(run_s * 0.45, run_s * 0.55);
    if mid.is_empty() {
        mid = window(run_s * 0.3, run_s * 0.7);
    }
    let end = window(run_s * 0.9, run_s);
    let (mid_kb, end_kb) = (median(mid), median(end));
    let growth_pct = if mid_kb > 0 {
        (end_kb as f64 - mid_kb as f64) * 100.0 / mid_kb as f64
    } else {
        0.0
    };
    RssSummary {
        start_kb: samples
            .iter()
            .find(|(t, _)| *t >= run_s * 0.05)
            .or(samples.first())
            .map_or(0, |s| s.1),
        mid_kb,
        end_kb,
        max_kb: samples.iter().map(|s| s.1).max().unwrap_or(0),
        growth_pct: (growth_pct * 100.0).round() / 100.0,
        samples: samples.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_counts_in_order_gaps_late_and_duplicates() {
        let mut s = Sequence::default();
        assert_eq!(s.accept(0), Arrival::InOrder);
        assert_eq!(s.accept(1), Arrival::InOrder);
        assert_eq!(s.accept(4), Arrival::Ahead);
        assert_eq!(s.accept(2), Arrival::Late);
        assert_eq!(s.accept(2), Arrival::Duplicate);
        assert_eq!(s.accept(4), Arrival::Duplicate);
        assert_eq!(s.accept(5), Arrival::InOrder);
        assert_eq!(s.accept(u64::MAX), Arrival::Corrupt);
        // 0, 1, 2, 4, 5 arrived; 3 is still missing.
        assert_eq!((s.unique, s.duplicates, s.out_of_order), (5, 2, 1));
    }

    #[test]
    fn rss_growth_compares_the_end_with_the_middle() {
        // 100 s run, one sample a second: 1000 KiB until t=50, then 1100 KiB.
        let samples: Vec<(f64, u64)> = (0..=100)
            .map(|t| (t as f64, if t < 50 { 1000 } else { 1100 }))
            .collect();
        let r = summarize_rss(&samples, 100.0);
        assert_eq!(
            (r.start_kb, r.mid_kb, r.end_kb, r.max_kb),
            (1000, 1100, 1100, 1100)
        );
        assert_eq!(r.growth_pct, 0.0);
        // Growing steadily by 1 KiB/s from 1000: middle 1050, end ~1095.
        let samples: Vec<(f64, u64)> = (0..=100).map(|t| (t as f64, 1000 + t)).collect();
        let r = summarize_rss(&samples, 100.0);
        assert_eq!((r.mid_kb, r.end_kb), (1050, 1095));
        assert_eq!(r.growth_pct, 4.29);
    }

    #[test]
    fn one_spike_at_the_end_does_not_decide_the_growth() {
        let mut samples: Vec<(f64, u64)> = (0..=60).map(|t| (t as f64, 5000)).collect();
        samples[59].1 = 9000;
        let r = summarize_rss(&samples, 60.0);
        assert_eq!(r.growth_pct, 0.0);
        assert_eq!(r.max_kb, 9000);
    }

    #[test]
    fn class_keeps_outcomes_and_a_few_examples() {
        let c = Class::new("x", true, std::time::Instant::now());
        c.expected("close 1009");
        c.expected("close 1009");
        for i in 0..20 {
            c.unexpected("close 1002", &format!("case {i}"));
        }
        let r = c.report();
        assert_eq!((r.expected, r.unexpected), (2, 20));
        assert_eq!(r.outcomes["close 1009"], 2);
        assert_eq!(r.outcomes["close 1002"], 20);
        assert_eq!(r.examples.len(), EXAMPLES_MAX);
    }
}
