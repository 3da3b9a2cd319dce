//! Results: what each worker thread/process measures (`Partial`), how parts merge, and the
//! final summary printed as a table or as one JSON object.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Error counts by kind.
#[derive(Serialize, Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errors {
    /// socket/bind/connect failed, or the TCP connect did not complete.
    pub connect: u64,
    /// The server answered the upgrade with something other than a valid 101, or not in time.
    pub handshake: u64,
    /// The connection was closed or reset by the peer, or a protocol error was seen.
    pub closed: u64,
    /// An echo/delivery did not match what was sent (content, connection, order, length).
    pub mismatch: u64,
    /// No answer within the timeout.
    pub timeout: u64,
}

impl Errors {
    /// Sum of every kind.
    pub fn total(&self) -> u64 {
        self.connect + self.handshake + self.closed + self.mismatch + self.timeout
    }

    /// Add `other` into `self`.
    pub fn add(&mut self, other: &Errors) {
        self.connect += other.connect;
        self.handshake += other.handshake;
        self.closed += other.closed;
        self.mismatch += other.mismatch;
        self.timeout += other.timeout;
    }
}

/// Largest latency recorded (60 s); larger values are clamped.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("constant histogram bounds are valid")
}

/// Record `ns` into `h`, clamping into the histogram's range.
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(1, LATENCY_MAX_NS));
}

/// What one worker thread, or one worker process (merged over its threads), measured.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub struct Partial {
    /// Connections this part tried to open.
    pub target: u64,
    /// Connections that completed the WebSocket handshake.
    pub established: u64,
    /// CLOCK_MONOTONIC when this part's last handshake completed (0: none).
    pub connect_done_ns: u64,
    /// Echoes (ping-pong) or deliveries (broadcast) received inside the measured window.
    pub messages: u64,
    /// Messages sent inside the measured window.
    pub sent: u64,
    /// Connections still open at the end of the window.
    pub open_at_end: u64,
    /// Open loop: messages intended inside the window and still unanswered after the drain.
    #[serde(default)]
    pub unanswered: u64,
    /// Pings from the server answered with a pong (any time, the connect phase included).
    #[serde(default)]
    pub pings: u64,
    /// Of those, the ones answered inside the measured window.
    #[serde(default)]
    pub pings_window: u64,
    /// Connections open at the end of the window that answered at least one ping.
    #[serde(default)]
    pub pinged: u64,
    /// Close frames from the server after the window, answered (a graceful shutdown).
    #[serde(default)]
    pub server_closes: u64,
    /// Errors by kind.
    pub errors: Errors,
    /// CPU time the load generator's threads used inside the window, nanoseconds.
    #[serde(default)]
    pub cpu_ns: u64,
    /// Latency histogram as (nanoseconds, count) pairs, zero counts left out.
    pub hist: Vec<(u64, u64)>,
    /// Open loop: how late each message left after its intended send time (the generator's
    /// own delay), as (nanoseconds, count) pairs.
    #[serde(default)]
    pub lag: Vec<(u64, u64)>,
}

impl Partial {
    /// Store histogram `h` in `self.hist`.
    pub fn set_histogram(&mut self, h: &Histogram<u64>) {
        self.hist = pairs(h);
    }

    /// Rebuild the histogram from `self.hist`.
    pub fn histogram(&self) -> Histogram<u64> {
        from_pairs(&self.hist)
    }

    /// Merge parts: counts add up, the connect phase ends with the last part, histograms add.
    pub fn merge(parts: &[Partial]) -> Partial {
        let mut out = Partial::default();
        let mut h = new_histogram();
        let mut lag = new_histogram();
        for p in parts {
            out.target += p.target;
            out.established += p.established;
            out.connect_done_ns = out.connect_done_ns.max(p.connect_done_ns);
            out.messages += p.messages;
            out.sent += p.sent;
            out.open_at_end += p.open_at_end;
            out.unanswered += p.unanswered;
            out.pings += p.pings;
            out.pings_window += p.pings_window;
            out.pinged += p.pinged;
            out.server_closes += p.server_closes;
            out.cpu_ns += p.cpu_ns;
            out.errors.add(&p.errors);
            let _ = h.add(p.histogram());
            let _ = lag.add(from_pairs(&p.lag));
        }
        out.set_histogram(&h);
        out.lag = pairs(&lag);
        out
    }
}

/// A histogram as (value, count) pairs, zero counts left out.
pub fn pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// The histogram of (value, count) pairs.
pub fn from_pairs(p: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = new_histogram();
    for &(v, n) in p {
        let _ = h.record_n(v.clamp(1, LATENCY_MAX_NS), n);
    }
    h
}

/// The final result of `percore load` (`--json` prints exactly this object).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Summary {
    /// echo, broadcast or idle.
    pub mode: String,
    /// Payload bytes per message.
    pub size: usize,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Open-loop target rate (messages/s, total); None = closed loop.
    pub rate: Option<f64>,
    /// Connections requested.
    pub connections_target: u64,
    /// Connections established (handshake completed).
    pub connections: u64,
    /// Seconds from start until the last handshake completed.
    pub connect_s: f64,
    /// connections / connect_s.
    pub connect_per_s: f64,
    /// Echoes or deliveries received in the window.
    pub messages: u64,
    /// Messages sent in the window.
    pub sent: u64,
    /// messages / duration_s.
    pub msgs_per_s: f64,
    /// sent / duration_s (open loop: the rate achieved, to compare with `rate`).
    #[serde(default)]
    pub sent_per_s: f64,
    /// Open loop: messages intended inside the window and not answered within the drain time
    /// after it (each recorded in the latency histogram at its age then, a lower bound).
    #[serde(default)]
    pub unanswered: u64,
    /// Open loop: p99 of how late messages left after their intended send time, µs: the
    /// generator's own delay (when it nears the latency figures, the generator was the limit).
    #[serde(default)]
    pub send_lag_p99_us: Option<f64>,
    /// Open loop: the largest such delay, µs.
    #[serde(default)]
    pub send_lag_max_us: Option<f64>,
    /// Latency percentiles in microseconds.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest latency.
    pub max_us: f64,
    /// Mean latency.
    pub mean_us: f64,
    /// Total errors.
    pub errors: u64,
    /// Errors by kind.
    pub errors_detail: Errors,
    /// Connections still open at the end of the window.
    pub open_at_end: u64,
    /// Pings from the server answered with a pong (over the whole run).
    #[serde(default)]
    pub pings_answered: u64,
    /// Pings answered inside the window.
    #[serde(default)]
    pub pings_in_window: u64,
    /// Connections open at the end of the window that answered at least one ping.
    #[serde(default)]
    pub connections_pinged: u64,
    /// Close frames the server sent after the window, each answered (with `--linger`: its
    /// graceful shutdown).
    #[serde(default)]
    pub closed_by_server: u64,
    /// Server CPU µs per ping answered inside the window (idle mode: what the server did in
    /// the window besides sleeping was mostly its pings).
    #[serde(default)]
    pub server_cpu_us_per_ping: Option<f64>,
    /// Worker processes used.
    pub processes: usize,
    /// Event-loop threads per process.
    pub threads: usize,
    /// Server CPU time over the window (µs), when `--server-pid` was given.
    pub server_cpu_us: Option<f64>,
    /// Server CPU µs per message (per delivery in broadcast mode).
    pub server_cpu_us_per_msg: Option<f64>,
    /// Server resident memory at the end of the window (KiB).
    pub server_rss_kb: Option<u64>,
    /// Load generator CPU µs per message (all its threads), to tell whether the server or
    /// the load generator was the bottleneck.
    pub client_cpu_us_per_msg: Option<f64>,
}

/// Measurement context the parts do not carry.
pub struct Context {
    /// Mode name.
    pub mode: String,
    /// Payload size.
    pub size: usize,
    /// Open-loop rate.
    pub rate: Option<f64>,
    /// Start of the run (connect phase), CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    /// Measured window length, ns.
    pub window_ns: u64,
    /// Worker processes.
    pub processes: usize,
    /// Threads per process.
    pub threads: usize,
    /// Server CPU ns over the window, if measured.
    pub server_cpu_ns: Option<u64>,
    /// Server RSS at the end (KiB), if measured.
    pub server_rss_kb: Option<u64>,
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole * 100.0
    } else {
        0.0
    }
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

impl Summary {
    /// Build the summary from the merged part.
    pub fn new(p: &Partial, cx: &Context) -> Summary {
        let h = p.histogram();
        let lag = from_pairs(&p.lag);
        let secs = cx.window_ns as f64 / 1e9;
        let connect_s = if p.connect_done_ns > cx.start_ns {
            (p.connect_done_ns - cx.start_ns) as f64 / 1e9
        } else {
            0.0
        };
        let pct = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                us(h.value_at_quantile(q))
            }
        };
        let server_cpu_us = cx.server_cpu_ns.map(|ns| ns as f64 / 1e3);
        Summary {
            mode: cx.mode.clone(),
            size: cx.size,
            duration_s: secs,
            rate: cx.rate,
            connections_target: p.target,
            connections: p.established,
            connect_s,
            connect_per_s: if connect_s > 0.0 {
                (p.established as f64 / connect_s).round()
            } else {
                0.0
            },
            messages: p.messages,
            sent: p.sent,
            msgs_per_s: if secs > 0.0 {
                (p.messages as f64 / secs).round()
            } else {
                0.0
            },
            sent_per_s: if secs > 0.0 {
                (p.sent as f64 / secs).round()
            } else {
                0.0
            },
            unanswered: p.unanswered,
            send_lag_p99_us: (!lag.is_empty()).then(|| us(lag.value_at_quantile(0.99))),
            send_lag_max_us: (!lag.is_empty()).then(|| us(lag.max())),
            p50_us: pct(0.5),
            p90_us: pct(0.9),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
            max_us: if h.is_empty() { 0.0 } else { us(h.max()) },
            mean_us: if h.is_empty() {
                0.0
            } else {
                (h.mean() / 100.0).round() / 10.0
            },
            errors: p.errors.total(),
            errors_detail: p.errors,
            open_at_end: p.open_at_end,
            pings_answered: p.pings,
            pings_in_window: p.pings_window,
            connections_pinged: p.pinged,
            closed_by_server: p.server_closes,
            server_cpu_us_per_ping: server_cpu_us
                .filter(|_| p.pings_window > 0)
                .map(|c| c / p.pings_window as f64),
            processes: cx.processes,
            threads: cx.threads,
            server_cpu_us,
            server_cpu_us_per_msg: server_cpu_us
                .filter(|_| p.messages > 0)
                .map(|c| (c / p.messages as f64 * 1000.0).round() / 1000.0),
            server_rss_kb: cx.server_rss_kb,
            client_cpu_us_per_msg: (p.messages > 0)
                .then(|| (p.cpu_ns as f64 / 1e3 / p.messages as f64 * 1000.0).round() / 1000.0),
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let rate = match (self.mode.as_str(), self.rate) {
            ("idle", _) => "held".to_string(),
            (_, Some(r)) => format!("open loop {r} msg/s offered"),
            (_, None) => "closed loop".to_string(),
        };
        s += &format!(
            "mode {}  size {} B  {}  window {:.2} s  {} process(es) x {} thread(s)\n",
            self.mode, self.size, rate, self.duration_s, self.processes, self.threads
        );
        s += &format!(
            "connections  {:>10} / {} established in {:.3} s ({}/s), {} open at end\n",
            self.connections,
            self.connections_target,
            self.connect_s,
            self.connect_per_s,
            self.open_at_end
        );
        if self.mode != "idle" {
            s += &format!(
                "messages     {:>10} received, {} sent, {} msg/s\n",
                self.messages, self.sent, self.msgs_per_s
            );
            if let Some(r) = self.rate {
                s += &format!(
                    "open loop    {:>10} msg/s offered, {} msg/s sent ({:.1} %), {} msg/s received ({:.1} %), {} unanswered\n",
                    r,
                    self.sent_per_s,
                    pct(self.sent_per_s, r),
                    self.msgs_per_s,
                    pct(self.msgs_per_s, r),
                    self.unanswered
                );
                if let (Some(p99), Some(max)) = (self.send_lag_p99_us, self.send_lag_max_us) {
                    s +=
                        &format!("send lag µs  p99 {p99}  max {max} (the generator's own delay)\n");
                }
            }
            s += &format!(
                "latency µs   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}\n",
                self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us, self.mean_us
            );
        }
        let e = &self.errors_detail;
        s += &format!(
            "errors       {:>10} (connect {}, handshake {}, closed {}, mismatch {}, timeout {})\n",
            self.errors, e.connect, e.handshake, e.closed, e.mismatch, e.timeout
        );
        if let Some(cpu) = self.server_cpu_us {
            s += &format!("server cpu   {:>10.0} µs", cpu);
            if let Some(per) = self.server_cpu_us_per_msg {
                s += &format!(", {per:.3} µs/msg");
            }
            s += "\n";
        }
        if let Some(c) = self.client_cpu_us_per_msg {
            s += &format!("load cpu     {c:>10.3} µs/msg\n");
        }
        if let Some(rss) = self.server_rss_kb {
            s += &format!("server rss   {rss:>10} KiB\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(lat_ns: &[u64], established: u64, done: u64) -> Partial {
        let mut h = new_histogram();
        for &v in lat_ns {
            record(&mut h, v);
        }
        let mut p = Partial {
            target: established,
            established,
            connect_done_ns: done,
            messages: lat_ns.len() as u64,
            sent: lat_ns.len() as u64,
            open_at_end: established,
            ..Partial::default()
        };
        p.set_histogram(&h);
        p
    }

    #[test]
    fn merged_parts_sum_counts_and_take_the_last_connect() {
        let mut a = part(&[1_000, 2_000], 10, 500);
        a.errors.timeout = 1;
        let mut b = part(&[3_000], 5, 900);
        b.errors.mismatch = 2;
        let m = Partial::merge(&[a, b]);
        assert_eq!(m.established, 15);
        assert_eq!(m.messages, 3);
        assert_eq!(m.connect_done_ns, 900);
        assert_eq!(m.errors.total(), 3);
        assert_eq!(m.histogram().len(), 3);
    }

    #[test]
    fn merged_histogram_percentiles_equal_one_histogram_of_all_samples() {
        let xs: Vec<u64> = (1..=1000).map(|i| i * 1_000).collect();
        let ys: Vec<u64> = (1..=1000).map(|i| i * 7_000).collect();
        let merged = Partial::merge(&[part(&xs, 1, 0), part(&ys, 1, 0)]).histogram();
        let mut all = new_histogram();
        for &v in xs.iter().chain(&ys) {
            record(&mut all, v);
        }
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.value_at_quantile(q), all.value_at_quantile(q));
        }
    }

    #[test]
    fn partial_survives_a_json_round_trip() {
        let p = part(&[5_000, 6_000, 1_000_000], 3, 42);
        let back: Partial = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn summary_reports_rate_and_percentiles_in_microseconds() {
        let p = part(&[10_000; 100], 2, 2_000_000_000);
        let s = Summary::new(
            &p,
            &Context {
                mode: "echo".into(),
                size: 20,
                rate: None,
                start_ns: 1_000_000_000,
                window_ns: 2_000_000_000,
                processes: 1,
                threads: 1,
                server_cpu_ns: Some(500_000),
                server_rss_kb: Some(1000),
            },
        );
        assert_eq!(s.msgs_per_s, 50.0);
        assert_eq!(s.connect_s, 1.0);
        assert!((s.p50_us - 10.0).abs() < 0.1, "{}", s.p50_us);
        assert_eq!(s.server_cpu_us_per_msg, Some(5.0));
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        for key in [
            "connections",
            "connect_s",
            "messages",
            "msgs_per_s",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors",
            "mode",
            "size",
            "duration_s",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn latencies_beyond_the_histogram_range_are_clamped_not_lost() {
        let p = part(&[0, LATENCY_MAX_NS * 10], 1, 0);
        assert_eq!(p.histogram().len(), 2);
    }
}
