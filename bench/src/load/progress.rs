//! The live progress line of `percore load` on a terminal: one line on stderr, rewritten in
//! place about once a second (connections up, messages per second, p99 latency, errors).
//! Nothing is printed under `--json`, `--quiet`, or when stderr is not a terminal (a log file or
//! a pipe gets only the final result).

use std::io::{IsTerminal, Write};

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Opening connections.
    Connect,
    /// Inside the measured window.
    Run,
}

/// One reading of the run, as the line shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Where the run is.
    pub stage: Stage,
    /// Seconds since the stage began.
    pub elapsed_s: f64,
    /// Connections established so far.
    pub up: u64,
    /// Connections asked for.
    pub target: u64,
    /// Messages per second over the last interval (None before the window).
    pub msgs_per_s: Option<f64>,
    /// p99 latency over about the last second, µs (None when nothing was measured yet).
    pub p99_us: Option<f64>,
    /// Errors so far.
    pub errors: u64,
}

/// The line for `p`, without the carriage return or terminal codes.
pub fn line(p: &Progress) -> String {
    let stage = match p.stage {
        Stage::Connect => "connect",
        Stage::Run => "run",
    };
    let mut s = format!(
        "[{stage:<7} {:>6.1} s] {}/{} up",
        p.elapsed_s,
        count(p.up as f64),
        count(p.target as f64)
    );
    if let Some(r) = p.msgs_per_s {
        s += &format!(" | {} msg/s", count(r));
    }
    if let Some(us) = p.p99_us {
        s += &format!(" | p99 {}", duration_us(us));
    }
    s += &format!(
        " | {} error{}",
        p.errors,
        if p.errors == 1 { "" } else { "s" }
    );
    s
}

/// `n` with a k/M suffix past 10,000 (3 significant digits or more).
pub fn count(n: f64) -> String {
    let n = n.max(0.0);
    if n < 10_000.0 {
        format!("{n:.0}")
    } else if n < 1e6 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{:.2}M", n / 1e6)
    }
}

/// A latency given in µs, in µs, ms or s as fits.
pub fn duration_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// The progress line on stderr, if stderr is a terminal and the run is not quiet.
pub struct Line {
    on: bool,
    shown: bool,
}

impl Line {
    /// A line that shows only if `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> Line {
        Line {
            on: wanted && std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Whether anything will be shown.
    pub fn enabled(&self) -> bool {
        self.on
    }

    /// Replace the line with `p`.
    pub fn show(&mut self, p: &Progress) {
        if self.on {
            let mut e = std::io::stderr().lock();
            // \r: back to column 0; ESC[2K: erase the line (a shorter line leaves nothing behind).
            let _ = write!(e, "\r\x1b[2K{}", line(p)).and_then(|_| e.flush());
            self.shown = true;
        }
    }

    /// Erase the line (before the result is printed).
    pub fn clear(&mut self) {
        if self.on && self.shown {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K").and_then(|_| e.flush());
            self.shown = false;
        }
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_shows_connections_and_errors_only() {
        let l = line(&Progress {
            stage: Stage::Connect,
            elapsed_s: 1.04,
            up: 5234,
            target: 10_000,
            msgs_per_s: None,
            p99_us: None,
            errors: 1,
        });
        assert_eq!(l, "[connect    1.0 s] 5234/10.0k up | 1 error");
    }

    #[test]
    fn run_line_shows_rate_p99_and_errors() {
        let l = line(&Progress {
            stage: Stage::Run,
            elapsed_s: 3.0,
            up: 100_000,
            target: 100_000,
            msgs_per_s: Some(152_345.0),
            p99_us: Some(85.3),
            errors: 0,
        });
        assert_eq!(
            l,
            "[run        3.0 s] 100.0k/100.0k up | 152.3k msg/s | p99 85 µs | 0 errors"
        );
    }

    #[test]
    fn large_counts_and_latencies_switch_units() {
        assert_eq!(count(9_999.0), "9999");
        assert_eq!(count(2_500_000.0), "2.50M");
        assert_eq!(count(-3.0), "0");
        assert_eq!(duration_us(999.0), "999 µs");
        assert_eq!(duration_us(12_345.0), "12.3 ms");
        assert_eq!(duration_us(2_500_000.0), "2.50 s");
    }

    #[test]
    fn quiet_when_not_wanted() {
        let mut l = Line::new(false);
        assert!(!l.enabled());
        l.show(&Progress {
            stage: Stage::Run,
            elapsed_s: 0.0,
            up: 0,
            target: 0,
            msgs_per_s: None,
            p99_us: None,
            errors: 0,
        });
        assert!(!l.shown);
    }
}
