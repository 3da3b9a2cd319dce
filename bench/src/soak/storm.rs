//! `percore storm`: memory after a storm of abandoned partial frames. Per backend, one
//! `percore serve` (default settings), warmed up first with `--warmup-messages` echoes of
//! 64 KiB (so that memory any traffic touches once, such as io_uring's receive buffer ring, is
//! in the "before" figure); then `--rounds` times: `--connections` connections upgrade, each
//! sends the first half of a `--frame-bytes` binary frame, all of them are held until the
//! server has read them, then all are reset (RST). The server's RSS is read before the storm,
//! right after it, and every second for `--settle-secs` more.
//!
//! Measures only: the verdict line says whether RSS came back within 10 % of its pre-storm
//! value within 10 s, but the exit status is 0 whatever it says, unless `--check` is given.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{self, Client};
use super::server::ServerProc;

/// Arguments of `percore storm`.
#[derive(clap::Args, Debug, Clone)]
pub struct StormArgs {
    /// Backends, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "epoll,uring")]
    pub backends: Vec<String>,
    /// Connections per round.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Rounds.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Size of the frame whose first half each connection sends, bytes.
    #[arg(long, default_value_t = 128 << 10)]
    pub frame_bytes: usize,
    /// Seconds to watch RSS after the last round.
    #[arg(long, default_value_t = 15)]
    pub settle_secs: u64,
    /// Shards of the server.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// 64 KiB echoes (over 16 connections) before the "before" reading; 0: none.
    #[arg(long, default_value_t = 2000)]
    pub warmup_messages: usize,
    /// Exit 1 unless RSS is back within 10 % of the pre-storm value 10 s after the storm.
    #[arg(long)]
    pub check: bool,
    /// Print a JSON list (one object per backend) as the last line.
    #[arg(long)]
    pub json: bool,
}

/// One backend's figures.
#[derive(Debug, Serialize)]
struct StormReport {
    backend: String,
    connections: usize,
    rounds: usize,
    frame_bytes: usize,
    /// Connections that failed to open or to send their half frame.
    failures: usize,
    /// RSS of the fresh server, before the warm-up.
    rss_fresh_kb: u64,
    rss_before_kb: u64,
    /// Largest RSS seen during the rounds.
    rss_peak_kb: u64,
    rss_after_kb: u64,
    rss_after_10s_kb: u64,
    rss_after_settle_kb: u64,
    settle_secs: u64,
    /// RSS after 10 s relative to before, percent above it.
    excess_after_10s_pct: f64,
    /// Within 10 % of before, 10 s after the storm.
    returned: bool,
    /// RSS each second after the storm, KiB.
    rss_series_kb: Vec<u64>,
}

fn rss(s: &ServerProc) -> u64 {
    s.rss_kb().unwrap_or(0)
}

fn storm(backend: &str, args: &StormArgs) -> Result<StormReport, String> {
    let serve = vec![
        "--no-pin".to_string(),
        "--shards".into(),
        args.shards.to_string(),
    ];
    let mut server = ServerProc::start(backend, "echo", &serve)?;
    std::thread::sleep(Duration::from_secs(1));
    let fresh = rss(&server);
    warm_up(&server, args.warmup_messages)?;
    std::thread::sleep(Duration::from_secs(1));
    let before = rss(&server);
    let mut half = vec![0x82];
    client::push_len(&mut half, args.frame_bytes as u64);
    half.extend_from_slice(&[1, 2, 3, 4]);
    half.resize(half.len() + args.frame_bytes / 2, 0x33);
    let mut failures = 0;
    let mut peak = before;
    for round in 0..args.rounds {
        let mut held = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            match Client::open(None, server.addr, "/", Duration::from_secs(10)) {
                Ok(mut c) => {
                    if c.write(&half).is_ok() {
                        held.push(c);
                    } else {
                        failures += 1;
                    }
                }
                Err(_) => failures += 1,
            }
        }
        // Let the server read every half frame (RSS stops moving), then reset them all.
        let mut last = 0;
        let settle = Instant::now() + Duration::from_secs(5);
        while Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(200));
            let now = rss(&server);
            peak = peak.max(now);
            if now == last {
                break;
            }
            last = now;
        }
        for c in held {
            c.reset();
        }
        if !server.alive() {
            return Err(format!("{backend}: server died in round {}", round + 1));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let after = rss(&server);
    let mut series = vec![after];
    for _ in 0..args.settle_secs {
        std::thread::sleep(Duration::from_secs(1));
        series.push(rss(&server));
    }
    let at10 = series.get(10).or(series.last()).copied().unwrap_or(after);
    server.stop(Duration::from_secs(10));
    let excess = (at10 as f64 - before as f64) * 100.0 / before.max(1) as f64;
    Ok(StormReport {
        backend: backend.to_string(),
        connections: args.connections,
        rounds: args.rounds,
        frame_bytes: args.frame_bytes,
        failures,
        rss_fresh_kb: fresh,
        rss_before_kb: before,
        rss_peak_kb: peak,
        rss_after_kb: after,
        rss_after_10s_kb: at10,
        rss_after_settle_kb: *series.last().unwrap_or(&after),
        settle_secs: args.settle_secs,
        excess_after_10s_pct: (excess * 10.0).round() / 10.0,
        returned: excess <= 10.0,
        rss_series_kb: series,
    })
}

/// `n` echoes of 64 KiB over 16 connections, then close them.
fn warm_up(server: &ServerProc, n: usize) -> Result<(), String> {
    if n == 0 {
        return Ok(());
    }
    let msg = vec![b'w'; 64 << 10];
    let mut conns = Vec::new();
    for _ in 0..16 {
        conns.push(
            Client::open(None, server.addr, "/", Duration::from_secs(10))
                .map_err(|e| format!("warm-up: {}", e.name()))?,
        );
    }
    for i in 0..n {
        let c = &mut conns[i % 16];
        c.send(true, client::op::BINARY, &msg)
            .map_err(|e| format!("warm-up: {e}"))?;
        match c.next_answering(Instant::now() + Duration::from_secs(10)) {
            Ok(client::Ev::Data(m)) if m.len() == msg.len() => {}
            other => return Err(format!("warm-up: no echo ({other:?})")),
        }
    }
    for mut c in conns {
        let _ = c.close_normally(Instant::now() + Duration::from_secs(5));
    }
    Ok(())
}

/// Run `percore storm`; returns the exit code.
pub fn main(args: StormArgs) -> i32 {
    if args
        .backends
        .iter()
        .any(|b| !matches!(b.as_str(), "epoll" | "uring"))
    {
        eprintln!("percore storm: --backends takes epoll and/or uring");
        return 2;
    }
    if args.connections == 0 || args.connections > 15_000 || args.frame_bytes < 2 {
        eprintln!("percore storm: --connections must be in 1..=15000, --frame-bytes at least 2");
        return 2;
    }
    let mut reports = Vec::new();
    for b in &args.backends {
        match storm(b, &args) {
            Ok(r) => {
                let line = format!(
                    "{:<6} {} x {} half frames of {} B: rss fresh {} KiB, before (warmed up) {} KiB, peak {} KiB, after {} KiB, +10 s {} KiB, +{} s {} KiB ({:+.1} % at +10 s: {}); {} failed connections",
                    r.backend,
                    r.rounds,
                    r.connections,
                    r.frame_bytes,
                    r.rss_fresh_kb,
                    r.rss_before_kb,
                    r.rss_peak_kb,
                    r.rss_after_kb,
                    r.rss_after_10s_kb,
                    r.settle_secs,
                    r.rss_after_settle_kb,
                    r.excess_after_10s_pct,
                    if r.returned { "returned" } else { "NOT returned" },
                    r.failures
                );
                if args.json {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
                reports.push(r);
            }
            Err(e) => {
                eprintln!("percore storm: {e}");
                return 2;
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&reports).unwrap_or_default());
    }
    i32::from(args.check && !reports.iter().all(|r| r.returned && r.failures == 0))
}
