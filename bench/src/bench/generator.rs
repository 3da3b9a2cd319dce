//! Load generators that are not ours: uWebSockets' `load_test` and the floor's `peerload`
//! (../shared/tools/uws, ../shared/tools/floor). Both keep one message in flight per
//! connection and print `Msg/sec: N` at fixed intervals; neither measures latency.
//!
//! How a cell is measured with them: the generator is started pinned to the load CPU; once
//! every connection is up, its first report is a warm-up (discarded); the server's CPU time is
//! read when that report arrives and again when the report closing the window arrives, and
//! divided by the messages of the reports in between. `load_test` prints
//! `responses / 4` every 4 s (its timer granularity), so its messages are exactly
//! 4 × the printed figure; `peerload` prints responses divided by the seconds it measured,
//! so its messages are the figure times the time between the two reports.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::report::Row;
use super::server::{ServerKind, ServerProc};
use super::Scenario;
use crate::sys::{self, mono_ns};

/// What drives a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Generator {
    /// `percore load` (this binary): latency histogram, verified echoes, open loop.
    Percore,
    /// uWebSockets' `load_test CONNS 127.0.0.1 PORT 0 0 SIZE`.
    LoadTest(PathBuf),
    /// `peerload ws 127.0.0.1 PORT CONNS SIZE INTERVAL`: load_test's bytes, 64 connects in
    /// flight.
    PeerloadWs(PathBuf),
    /// `peerload raw 127.0.0.1 PORT CONNS SIZE INTERVAL`: no handshake, no framing.
    PeerloadRaw(PathBuf),
}

/// load_test's report interval (uSockets' LIBUS_TIMEOUT_GRANULARITY), seconds.
pub const LOAD_TEST_INTERVAL_S: f64 = 4.0;
/// Longest report interval asked of peerload, seconds (the figure load_test uses).
pub const PEERLOAD_INTERVAL_S: f64 = 4.0;
/// Most connections one generator process opens: the file descriptor limit (20000) less room
/// for its other descriptors.
pub const EXTERNAL_CONNECTIONS_MAX: u32 = 19_000;

impl Generator {
    /// Parse one `--generator` value: `percore`, `load_test=PATH`, `peerload=PATH` (drives
    /// the raw peers) or `peerload-ws=PATH` (drives the WebSocket servers with peerload).
    pub fn parse(spec: &str) -> Result<Generator, String> {
        let (kind, path) = match spec.split_once('=') {
            Some((k, p)) => (k.trim(), Some(p.trim())),
            None => (spec.trim(), None),
        };
        let given = path;
        let path = |kind: &str| -> Result<PathBuf, String> {
            let p = given
                .filter(|p| !p.is_empty())
                .ok_or_else(|| format!("--generator {kind} needs a path: {kind}=PATH"))?;
            super::peer::resolve_program(&super::peer::expand_home(p))
                .map_err(|e| format!("--generator {kind}: {e}"))
        };
        match kind {
            "percore" if given.is_none() => Ok(Generator::Percore),
            "percore" => Err("--generator percore takes no path (it is this binary)".into()),
            "load_test" | "load-test" => Ok(Generator::LoadTest(path("load_test")?)),
            "peerload" => Ok(Generator::PeerloadRaw(path("peerload")?)),
            "peerload-ws" | "peerload_ws" => Ok(Generator::PeerloadWs(path("peerload-ws")?)),
            _ => Err(format!(
                "--generator {spec:?}: expected percore, load_test=PATH, peerload=PATH or \
                 peerload-ws=PATH"
            )),
        }
    }

    /// Its name in the rows.
    pub fn label(&self) -> &'static str {
        match self {
            Generator::Percore => "percore load",
            Generator::LoadTest(_) => "load_test",
            Generator::PeerloadWs(_) => "peerload ws",
            Generator::PeerloadRaw(_) => "peerload raw",
        }
    }

    /// Speaks raw TCP (drives the raw peers) rather than WebSocket.
    pub fn raw(&self) -> bool {
        matches!(self, Generator::PeerloadRaw(_))
    }

    /// Why this generator cannot run `sc` against `kind`, if it cannot.
    pub fn cannot(&self, sc: &Scenario, kind: &ServerKind) -> Option<String> {
        if sc.broadcast {
            return match (self, kind) {
                (Generator::Percore, k) if k.percore() => None,
                (Generator::Percore, _) => Some("skipped: peer is an echo server".into()),
                _ => Some(format!("skipped: {} only drives echo", self.label())),
            };
        }
        if matches!(kind, ServerKind::PercoreTls(..)) && *self != Generator::Percore {
            return Some(format!("skipped: {} speaks no wss://", self.label()));
        }
        match self {
            Generator::Percore => {
                let min = crate::load::payload::HEADER_BYTES;
                (sc.size < min || sc.size > 16 << 20).then(|| {
                    format!(
                        "skipped: percore load sends {min} B to 16 MiB (its payload carries a \
                         {min} B stamp)"
                    )
                })
            }
            _ if sc.connections > EXTERNAL_CONNECTIONS_MAX => Some(format!(
                "skipped: {} opens every connection in one process, at most {} under \
                 RLIMIT_NOFILE",
                self.label(),
                EXTERNAL_CONNECTIONS_MAX
            )),
            _ if sc.size > i32::MAX as usize => Some(format!(
                "skipped: {} takes a payload size that fits in an int",
                self.label()
            )),
            _ => None,
        }
    }

    /// Report interval, seconds, for a window of `duration` seconds: load_test's is fixed;
    /// peerload's divides the window into equal reports of at most 4 s.
    pub fn interval_s(&self, duration: f64) -> f64 {
        match self {
            Generator::LoadTest(_) => LOAD_TEST_INTERVAL_S,
            _ => {
                let n = (duration / PEERLOAD_INTERVAL_S).ceil().max(1.0);
                (duration / n).max(0.25)
            }
        }
    }

    /// Program and arguments against `port`.
    fn command(&self, port: u16, sc: &Scenario, interval: f64) -> (PathBuf, Vec<String>) {
        let (conns, size, port) = (
            sc.connections.to_string(),
            sc.size.to_string(),
            port.to_string(),
        );
        let host = "127.0.0.1".to_string();
        match self {
            Generator::LoadTest(p) => (
                p.clone(),
                vec![conns, host, port, "0".into(), "0".into(), size],
            ),
            Generator::PeerloadWs(p) | Generator::PeerloadRaw(p) => {
                let mode = if self.raw() { "raw" } else { "ws" };
                (
                    p.clone(),
                    vec![mode.into(), host, port, conns, size, interval.to_string()],
                )
            }
            Generator::Percore => unreachable!("percore load runs through run_load"),
        }
    }
}

/// What one line of an external generator's output means.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// One connection upgraded (load_test prints each 101 response).
    Upgraded,
    /// Every connection is up (peerload says how many).
    AllUp(Option<u64>),
    /// A throughput report.
    Rate(f64),
    /// A connection was closed by the server.
    Closed,
    /// Something went wrong.
    Error(String),
    /// Anything else.
    Other,
}

/// Interpret one line of load_test or peerload output. Both print their failures on stderr
/// (peerload) or as `ERROR...` / `Closed!` on stdout (load_test), and the upgrade responses
/// load_test echoes on stdout are not errors, whatever their headers say.
pub fn parse_report(line: &str, stderr: bool) -> Report {
    let l = line.trim();
    if let Some(v) = l.strip_prefix("Msg/sec:") {
        return match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Report::Rate(x),
            _ => Report::Error(format!("unreadable report {l:?}")),
        };
    }
    if l.starts_with("Response: HTTP/1.1 101") {
        return Report::Upgraded;
    }
    if l.starts_with("Running benchmark now") {
        return Report::AllUp(None);
    }
    if let Some(rest) = l.strip_prefix("ALL_UPGRADED") {
        return Report::AllUp(rest.split_whitespace().next().and_then(|n| n.parse().ok()));
    }
    if l == "Closed!" || l.starts_with("connection closed by server") {
        return Report::Closed;
    }
    if (stderr && !l.is_empty()) || l.starts_with("ERROR") || l.starts_with("Usage") {
        return Report::Error(l.to_string());
    }
    Report::Other
}

/// Messages a report stands for: load_test prints responses / 4 (exact in a float for any
/// count below 2^24); peerload prints responses per second measured over the interval.
pub fn report_messages(g: &Generator, figure: f64, interval_ns: u64) -> u64 {
    match g {
        Generator::LoadTest(_) => (figure * LOAD_TEST_INTERVAL_S).round() as u64,
        _ => (figure * interval_ns as f64 / 1e9).round() as u64,
    }
}

/// The generator process, killed when dropped.
struct GenProc(Child);

impl Drop for GenProc {
    fn drop(&mut self) {
        sys::terminate(self.0.id());
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Send every line of `r` with its arrival time and whether it came from stderr.
fn forward(r: impl Read + Send + 'static, stderr: bool, tx: mpsc::Sender<(u64, String, bool)>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send((mono_ns(), line, stderr)).is_err() {
                return;
            }
        }
    });
}

/// Run `g` pinned to `cpu` against `server` for one cell of about `duration` seconds (a whole
/// number of reports, at least one).
pub fn run(
    g: &Generator,
    kind: &ServerKind,
    server: &ServerProc,
    sc: &Scenario,
    duration: f64,
    cpu: usize,
) -> Result<Row, String> {
    let interval = g.interval_s(duration);
    let reports = ((duration / interval) - 0.05).ceil().max(1.0) as usize;
    let (program, args) = g.command(server.port(), sc, interval);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("exec");
    if let Generator::LoadTest(_) = g {
        // load_test writes its reports with printf into a pipe: block buffered unless told.
        let stdbuf = super::peer::resolve_program("stdbuf").map_err(|_| {
            "stdbuf (GNU coreutils) not found: load_test's reports would stay in its output \
             buffer"
                .to_string()
        })?;
        cmd.arg(stdbuf).arg("-oL");
    }
    cmd.arg(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::guarded(&mut cmd, &[cpu]);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    let (tx, rx) = mpsc::channel();
    if let Some(o) = child.stdout.take() {
        forward(o, false, tx.clone());
    }
    if let Some(e) = child.stderr.take() {
        forward(e, true, tx);
    }
    let gen = GenProc(child);
    let label = g.label();
    let start = mono_ns();
    // Connecting: load_test opens one connection at a time (~3 ms each here).
    let connect_budget_ns = 30_000_000_000 + u64::from(sc.connections) * 20_000_000;
    let report_budget_ns = (interval * 3.0 * 1e9) as u64 + 5_000_000_000;
    let mut upgraded = 0u64;
    let mut all_up = false;
    let mut errors = 0u64;
    let mut last_error: Option<String> = None;
    let mut warm: Option<(u64, Option<u64>, Option<u64>)> = None;
    let mut prev_t = 0u64;
    let mut messages = 0u64;
    let mut seen = 0usize;
    let mut deadline = start + connect_budget_ns;
    loop {
        let now = mono_ns();
        if now >= deadline {
            return Err(format!(
                "{label}: {} after {:.0} s ({upgraded} connections upgraded){}",
                if all_up {
                    "no report"
                } else {
                    "connections not all up"
                },
                (now - start) as f64 / 1e9,
                last_error.map(|e| format!("; {e}")).unwrap_or_default()
            ));
        }
        let (t, line, stderr) = match rx.recv_timeout(Duration::from_nanos(deadline - now)) {
            Ok(x) => x,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!(
                    "{label} exited{}",
                    last_error.map(|e| format!(": {e}")).unwrap_or_default()
                ))
            }
        };
        match parse_report(&line, stderr) {
            Report::Upgraded => upgraded += 1,
            Report::AllUp(n) => {
                all_up = true;
                if let Some(n) = n {
                    upgraded = n;
                }
                deadline = t + report_budget_ns;
            }
            Report::Closed => {
                errors += 1;
                last_error = Some(line);
            }
            Report::Error(e) => {
                errors += 1;
                last_error = Some(e);
            }
            Report::Rate(x) if all_up => {
                deadline = t + report_budget_ns;
                match warm {
                    None => {
                        warm = Some((
                            t,
                            sys::process_tree_cpu_ns(server.pid()),
                            sys::process_tree_cpu_ns(gen.0.id()),
                        ));
                    }
                    Some(_) => {
                        messages += report_messages(g, x, t - prev_t);
                        seen += 1;
                    }
                }
                prev_t = t;
                if seen == reports {
                    break;
                }
            }
            Report::Rate(_) | Report::Other => {}
        }
    }
    let t1 = prev_t;
    let server_cpu = sys::process_tree_cpu_ns(server.pid());
    let rss_kb = sys::process_tree_rss_kb(server.pid());
    let load_cpu = sys::process_tree_cpu_ns(gen.0.id());
    drop(gen);
    let (t0, server_cpu0, load_cpu0) = warm.unwrap_or((t1, None, None));
    let per_msg = |a: Option<u64>, b: Option<u64>| {
        let (a, b) = (a?, b?);
        (messages > 0)
            .then(|| ((b.saturating_sub(a)) as f64 / 1e3 / messages as f64 * 1e3).round() / 1e3)
    };
    let window_s = (t1 - t0) as f64 / 1e9;
    Ok(Row {
        server: kind.name().to_string(),
        backend: kind.backend().to_string(),
        generator: label.to_string(),
        scenario: sc.name.clone(),
        connections: upgraded,
        msgs_per_s: if window_s > 0.0 {
            (messages as f64 / window_s).round()
        } else {
            0.0
        },
        cpu_us_per_msg: per_msg(server_cpu0, server_cpu),
        p50_us: None,
        p99_us: None,
        p999_us: None,
        max_us: None,
        rss_kb,
        load_cpu_us_per_msg: per_msg(load_cpu0, load_cpu),
        errors,
        offered_per_s: None,
        load_pct: None,
        note: last_error.map(|e| format!("{label}: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(connections: u32, size: usize, broadcast: bool) -> Scenario {
        Scenario {
            name: "x".into(),
            connections,
            size,
            broadcast,
        }
    }

    #[test]
    fn generator_values_name_a_kind_and_an_executable() {
        assert_eq!(Generator::parse("percore").unwrap(), Generator::Percore);
        assert_eq!(
            Generator::parse("load_test=/bin/sh").unwrap(),
            Generator::LoadTest("/bin/sh".into())
        );
        assert_eq!(
            Generator::parse("peerload=/bin/sh").unwrap(),
            Generator::PeerloadRaw("/bin/sh".into())
        );
        assert_eq!(
            Generator::parse("peerload-ws=/bin/sh").unwrap(),
            Generator::PeerloadWs("/bin/sh".into())
        );
        assert!(Generator::parse("load_test")
            .unwrap_err()
            .contains("load_test=PATH"));
        assert!(Generator::parse("load_test=/nonexistent/load_test")
            .unwrap_err()
            .contains("no such file"));
        assert!(Generator::parse("percore=/bin/sh").is_err());
        assert!(Generator::parse("wrk=/bin/sh")
            .unwrap_err()
            .contains("expected percore"));
    }

    #[test]
    fn external_generators_refuse_what_they_cannot_do_with_a_reason() {
        let lt = Generator::LoadTest("/bin/true".into());
        let uws = ServerKind::External(std::sync::Arc::new(
            super::super::peer::ExternalPeer::parse("u=/bin/sh {port}", false).unwrap(),
        ));
        assert!(lt.cannot(&sc(10_000, 20, false), &uws).is_none());
        assert!(lt.cannot(&sc(10, 1 << 20, false), &uws).is_none());
        assert!(lt.cannot(&sc(100, 64 << 10, false), &uws).is_none());
        assert!(lt
            .cannot(&sc(1000, 20, true), &uws)
            .unwrap()
            .contains("only drives echo"));
        assert!(lt
            .cannot(&sc(100_000, 20, false), &uws)
            .unwrap()
            .contains("RLIMIT_NOFILE"));
        let p = Generator::Percore;
        assert!(p.cannot(&sc(10, 1 << 20, false), &uws).is_none());
        assert!(p.cannot(&sc(10, 8, false), &uws).unwrap().contains("20 B"));
        assert!(p
            .cannot(&sc(1000, 20, true), &uws)
            .unwrap()
            .contains("echo server"));
        assert!(p
            .cannot(&sc(1000, 20, true), &ServerKind::Percore("epoll".into()))
            .is_none());
    }

    #[test]
    fn report_lines_of_both_generators_are_understood() {
        assert_eq!(
            parse_report("Msg/sec: 153012.250000", false),
            Report::Rate(153012.25)
        );
        assert_eq!(
            parse_report("Response: HTTP/1.1 101 Switching Protocols\r", false),
            Report::Upgraded
        );
        assert_eq!(
            parse_report("Running benchmark now...", false),
            Report::AllUp(None)
        );
        assert_eq!(
            parse_report("ALL_UPGRADED 100 in 0.012 s", false),
            Report::AllUp(Some(100))
        );
        assert_eq!(parse_report("Closed!", false), Report::Closed);
        assert_eq!(
            parse_report("connection closed by server (fd 7, total closed 1)", true),
            Report::Closed
        );
        assert!(matches!(
            parse_report("ERROR: outstanding bytes negative!", false),
            Report::Error(_)
        ));
        assert!(matches!(
            parse_report("connect failed (fd 9)", true),
            Report::Error(_)
        ));
        assert!(matches!(
            parse_report("Msg/sec: nan", false),
            Report::Error(_)
        ));
        assert_eq!(
            parse_report("Using message size of 20 bytes", false),
            Report::Other
        );
        assert_eq!(
            parse_report("Sec-WebSocket-Error-Free: bad\r", false),
            Report::Other
        );
    }

    #[test]
    fn report_figures_become_message_counts() {
        let lt = Generator::LoadTest("/bin/true".into());
        // load_test: responses / 4, whatever the real interval was.
        assert_eq!(report_messages(&lt, 38_253.25, 4_300_000_000), 153_013);
        let pl = Generator::PeerloadRaw("/bin/true".into());
        // peerload: responses per second over the interval it measured.
        assert_eq!(report_messages(&pl, 1000.0, 2_500_000_000), 2500);
    }

    #[test]
    fn peerload_reports_divide_the_window_evenly() {
        let pl = Generator::PeerloadRaw("/bin/true".into());
        assert_eq!(pl.interval_s(5.0), 2.5);
        assert_eq!(pl.interval_s(4.0), 4.0);
        assert_eq!(pl.interval_s(1.0), 1.0);
        assert_eq!(pl.interval_s(0.1), 0.25);
        assert_eq!(Generator::LoadTest("/x".into()).interval_s(1.0), 4.0);
        let (prog, args) = pl.command(9, &sc(10, 20, false), 1.0);
        assert_eq!(prog, PathBuf::from("/bin/true"));
        assert_eq!(args, ["raw", "127.0.0.1", "9", "10", "20", "1"]);
        let (_, args) = Generator::LoadTest("/x".into()).command(9, &sc(10, 20, false), 4.0);
        assert_eq!(args, ["10", "127.0.0.1", "9", "0", "0", "20"]);
    }
}
