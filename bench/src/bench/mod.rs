//! `percore bench`: start the server(s) pinned to one CPU and the load generator pinned to
//! another, run a matrix of scenarios, print one table.
//!
//! Each cell starts a fresh server child process (`percore serve --no-pin --shards 1`, or a
//! peer from bench/peers), pinned with sched_setaffinity before exec, then runs
//! `percore load --json --server-pid PID` pinned to the load CPU. The load generator reads the
//! server's CPU time (all threads) at the start and end of the measured window and its RSS at
//! the end, so the CPU cost per message is the server's own, whatever limits throughput.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::report::Summary;
use crate::sys;

/// Arguments of `percore bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Seconds per cell (measured window).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Short cells (1 s) for a quick look.
    #[arg(long)]
    pub quick: bool,
    /// Also run the peers (fastwebsockets, tokio-tungstenite; built on first use).
    #[arg(long)]
    pub compare: bool,
    /// percore backends to run, comma separated (epoll, uring).
    #[arg(long, default_value = "epoll,uring")]
    pub backends: String,
    /// Only these scenarios, comma separated (default: all). See the table for names.
    #[arg(long)]
    pub scenarios: Option<String>,
    /// Print a JSON array of rows instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Instead of the matrix: server RSS empty and with N idle connections, bytes per connection.
    #[arg(long)]
    pub idle: Option<u32>,
    /// Hold the idle connections this many seconds.
    #[arg(long, default_value_t = 2.0)]
    pub idle_duration: f64,
    /// Server processes sharing the idle connections (default: one per 18000 connections,
    /// the most one process holds under RLIMIT_NOFILE = 20000). RSS is summed over them.
    #[arg(long)]
    pub idle_servers: Option<usize>,
    /// CPU for the server.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// CPU for the load generator.
    #[arg(long, default_value_t = 1)]
    pub load_cpu: usize,
    /// Publishes per second in the broadcast scenario (each goes to every connection).
    #[arg(long, default_value_t = 200.0)]
    pub broadcast_rate: f64,
    /// Run every cell this many times (servers alternating) and report the medians.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Also write the table as markdown and CSV: PREFIX.md and PREFIX.csv.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

/// One benchmark scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Short name.
    pub name: &'static str,
    /// Connections.
    pub connections: u32,
    /// Payload bytes.
    pub size: usize,
    /// Broadcast (1 publisher, all receive) instead of echo.
    pub broadcast: bool,
}

/// The matrix.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "echo 100 x 20 B",
        connections: 100,
        size: 20,
        broadcast: false,
    },
    Scenario {
        name: "echo 1k x 20 B",
        connections: 1000,
        size: 20,
        broadcast: false,
    },
    Scenario {
        name: "echo 10k x 20 B",
        connections: 10_000,
        size: 20,
        broadcast: false,
    },
    Scenario {
        name: "echo 100 x 16 KiB",
        connections: 100,
        size: 16 << 10,
        broadcast: false,
    },
    Scenario {
        name: "broadcast 1 -> 1k",
        connections: 1000,
        size: 20,
        broadcast: true,
    },
];

/// A server under test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// `percore serve --backend B`.
    Percore(String),
    /// A peer binary from bench/peers.
    Peer(&'static str),
}

impl ServerKind {
    fn name(&self) -> &str {
        match self {
            ServerKind::Percore(_) => "percore",
            ServerKind::Peer(p) => p,
        }
    }
    fn backend(&self) -> &str {
        match self {
            ServerKind::Percore(b) => b,
            ServerKind::Peer(_) => "tokio/epoll",
        }
    }
}

/// One line of the result table.
#[derive(Serialize, Clone, Debug)]
pub struct Row {
    /// Server name.
    pub server: String,
    /// I/O backend.
    pub backend: String,
    /// Scenario name.
    pub scenario: String,
    /// Connections established.
    pub connections: u64,
    /// Messages (echoes or deliveries) per second.
    pub msgs_per_s: f64,
    /// Server CPU time per message, µs.
    pub cpu_us_per_msg: Option<f64>,
    /// Latency percentiles, µs.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Server RSS at the end of the window, KiB.
    pub rss_kb: Option<u64>,
    /// Load generator CPU time per message, µs (near 1 s/s of CPU: the load was the limit).
    pub load_cpu_us_per_msg: Option<f64>,
    /// Load generator errors.
    pub errors: u64,
    /// Why the cell has no figures, if it has none.
    pub note: Option<String>,
}

/// Peers: (display name, binary name).
const PEERS: &[(&str, &str)] = &[
    ("fastwebsockets", "fastwebsockets-echo"),
    ("tokio-tungstenite", "tungstenite-echo"),
];

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

fn peer_binary(bin: &str) -> PathBuf {
    peers_dir().join("target/release").join(bin)
}

/// Build the peers if any binary is missing.
fn ensure_peers() -> Result<(), String> {
    if PEERS.iter().all(|(_, b)| peer_binary(b).exists()) {
        return Ok(());
    }
    eprintln!("percore bench: building peers (cargo build --release --manifest-path bench/peers/Cargo.toml)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--manifest-path"])
        .arg(peers_dir().join("Cargo.toml"))
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err("building bench/peers failed".into());
    }
    Ok(())
}

/// A server child process, stopped (SIGTERM, then SIGKILL) when dropped.
struct ServerProc {
    child: Child,
    addr: String,
}

impl ServerProc {
    fn start(kind: &ServerKind, cpu: usize, broadcast: bool) -> Result<ServerProc, String> {
        let mut cmd = match kind {
            ServerKind::Percore(backend) => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let mut c = Command::new(exe);
                c.args([
                    "serve",
                    "--addr",
                    "127.0.0.1:0",
                    "--no-pin",
                    "--shards",
                    "1",
                ])
                .args(["--backend", backend, "--shutdown-grace-secs", "1"]);
                if broadcast {
                    c.args(["--mode", "broadcast"]);
                }
                c
            }
            ServerKind::Peer(name) => {
                let bin = PEERS
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, b)| peer_binary(b))
                    .ok_or("unknown peer")?;
                // Started through `percore exec`, which makes it die with this process and
                // restricts it to `cpu` before it replaces itself with the peer.
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let mut c = Command::new(exe);
                c.arg("exec").arg(bin).args(["--addr", "127.0.0.1:0"]);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        sys::guarded(&mut cmd, &[cpu]);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", kind.name()))?;
        let stdout = child.stdout.take().ok_or("server stdout")?;
        // The first line says where it listens: "listening on ADDR ...".
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        // Keep the first line of stderr to explain a failed start; drain the rest so the server
        // never blocks on a full pipe.
        let stderr = child.stderr.take().ok_or("server stderr")?;
        let last_err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = last_err.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // The first line says what went wrong (clap and percore serve both start so).
                if let Ok(mut s) = sink.lock() {
                    if s.is_empty() {
                        *s = line;
                    }
                }
            }
        });
        let mut proc = ServerProc {
            child,
            addr: String::new(),
        };
        let line = rx.recv_timeout(Duration::from_secs(10)).map_err(|_| {
            // Give a failing server a moment to finish its message.
            std::thread::sleep(Duration::from_millis(100));
            let why = last_err.lock().map(|s| s.clone()).unwrap_or_default();
            format!("{} did not start: {why}", kind.name())
        })?;
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .ok_or_else(|| format!("{}: unexpected first line {line:?}", kind.name()))?;
        if let ServerKind::Percore(b) = kind {
            if !line.contains(&format!("backend={b}")) {
                return Err(format!("asked for backend {b}, server says {line:?}"));
            }
        }
        proc.addr = addr.to_string();
        Ok(proc)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        sys::terminate(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `percore load` pinned to `cpu` against `servers` (connections spread round robin) and
/// parse its JSON summary.
fn run_load(servers: &[ServerProc], cpu: usize, extra: &[String]) -> Result<Summary, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("ws://{}/", s.addr))
        .collect();
    let pids: Vec<String> = servers.iter().map(|s| s.pid().to_string()).collect();
    let mut cmd = Command::new(exe);
    cmd.arg("load")
        .args(["--url", &urls.join(",")])
        .args(["--json", "--quiet", "--cpu", &cpu.to_string()])
        .args(["--server-pid", &pids.join(",")])
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    sys::guarded(&mut cmd, &[cpu]);
    let out = cmd.output().map_err(|e| format!("percore load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| format!("percore load output ({e}): {text:?}"))
}

fn servers(args: &BenchArgs) -> Vec<ServerKind> {
    let mut v: Vec<ServerKind> = args
        .backends
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(|b| ServerKind::Percore(b.to_string()))
        .collect();
    if args.compare {
        v.extend(PEERS.iter().map(|(n, _)| ServerKind::Peer(n)));
    }
    v
}

/// Does `percore serve` offer a broadcast mode?
fn serve_has_broadcast() -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    Command::new(exe)
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("broadcast"))
        .unwrap_or(false)
}

fn empty_row(kind: &ServerKind, scenario: &str, note: String) -> Row {
    Row {
        server: kind.name().to_string(),
        backend: kind.backend().to_string(),
        scenario: scenario.to_string(),
        connections: 0,
        msgs_per_s: 0.0,
        cpu_us_per_msg: None,
        p50_us: 0.0,
        p99_us: 0.0,
        p999_us: 0.0,
        rss_kb: None,
        load_cpu_us_per_msg: None,
        errors: 0,
        note: Some(note),
    }
}

fn cell(args: &BenchArgs, kind: &ServerKind, sc: &Scenario, duration: f64) -> Row {
    let server = match ServerProc::start(kind, args.server_cpu, sc.broadcast) {
        Ok(s) => s,
        Err(e) => return empty_row(kind, sc.name, e),
    };
    let mut extra: Vec<String> = vec![
        "--connections".into(),
        sc.connections.to_string(),
        "--size".into(),
        sc.size.to_string(),
        "--duration".into(),
        duration.to_string(),
    ];
    if sc.broadcast {
        extra.extend([
            "--mode".into(),
            "broadcast".into(),
            "--publishers".into(),
            "1".into(),
        ]);
        extra.extend(["--rate".into(), args.broadcast_rate.to_string()]);
    }
    match run_load(std::slice::from_ref(&server), args.load_cpu, &extra) {
        Ok(s) => Row {
            server: kind.name().to_string(),
            backend: kind.backend().to_string(),
            scenario: sc.name.to_string(),
            connections: s.connections,
            msgs_per_s: s.msgs_per_s,
            cpu_us_per_msg: s.server_cpu_us_per_msg,
            p50_us: s.p50_us,
            p99_us: s.p99_us,
            p999_us: s.p999_us,
            rss_kb: s.server_rss_kb,
            load_cpu_us_per_msg: s.client_cpu_us_per_msg,
            errors: s.errors,
            note: None,
        },
        Err(e) => empty_row(kind, sc.name, e),
    }
}

/// One row for several runs of a cell: the median of each figure (upper median for an even
/// count), errors summed, the largest RSS. A failed run (with a note) is reported as is.
pub fn median_row(runs: &[Row]) -> Option<Row> {
    let first = runs.first()?;
    if runs.len() == 1 || runs.iter().any(|r| r.note.is_some()) {
        return runs
            .iter()
            .find(|r| r.note.is_some())
            .or(Some(first))
            .cloned();
    }
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    let m = |f: fn(&Row) -> f64| median(runs.iter().map(f).collect());
    let mo = |f: fn(&Row) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    Some(Row {
        connections: runs.iter().map(|r| r.connections).min().unwrap_or(0),
        msgs_per_s: m(|r| r.msgs_per_s),
        cpu_us_per_msg: mo(|r| r.cpu_us_per_msg),
        p50_us: m(|r| r.p50_us),
        p99_us: m(|r| r.p99_us),
        p999_us: m(|r| r.p999_us),
        rss_kb: runs.iter().filter_map(|r| r.rss_kb).max(),
        load_cpu_us_per_msg: mo(|r| r.load_cpu_us_per_msg),
        errors: runs.iter().map(|r| r.errors).sum(),
        ..first.clone()
    })
}

/// Render rows as an aligned plain-text table.
pub fn table(rows: &[Row]) -> String {
    let head = [
        "server",
        "backend",
        "scenario",
        "conns",
        "msgs/s",
        "cpu µs/msg",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "rss MiB",
        "load µs/msg",
        "errors",
    ];
    let cells: Vec<Vec<String>> = rows.iter().map(row_cells).collect();
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in &cells {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, r: &[String]| {
        for (i, c) in r.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if i < 3 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
            s.push_str("  ");
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
    };
    line(&mut s, &head.map(String::from));
    for (r, c) in rows.iter().zip(&cells) {
        line(&mut s, c);
        if let Some(n) = &r.note {
            s.push_str(&format!("    ({})\n", n));
        }
    }
    s
}

fn row_cells(r: &Row) -> Vec<String> {
    let na = || "-".to_string();
    vec![
        r.server.clone(),
        r.backend.clone(),
        r.scenario.clone(),
        r.connections.to_string(),
        if r.note.is_some() {
            na()
        } else {
            format!("{:.0}", r.msgs_per_s)
        },
        r.cpu_us_per_msg
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(na),
        if r.note.is_some() {
            na()
        } else {
            format!("{:.1}", r.p50_us)
        },
        if r.note.is_some() {
            na()
        } else {
            format!("{:.1}", r.p99_us)
        },
        if r.note.is_some() {
            na()
        } else {
            format!("{:.1}", r.p999_us)
        },
        r.rss_kb
            .map(|v| format!("{:.1}", v as f64 / 1024.0))
            .unwrap_or_else(na),
        r.load_cpu_us_per_msg
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(na),
        r.errors.to_string(),
    ]
}

/// Rows as a markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| server | backend | scenario | conns | msgs/s | server CPU µs/msg | p50 µs | p99 µs | p99.9 µs | RSS MiB | load CPU µs/msg | errors | note |\n\
         |---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
    );
    for r in rows {
        let c = row_cells(r);
        let note = r.note.as_deref().unwrap_or("").replace('|', "/");
        s.push_str(&format!("| {} | {note} |\n", c.join(" | ")));
    }
    s
}

/// Rows as CSV.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "server,backend,scenario,connections,msgs_per_s,cpu_us_per_msg,p50_us,p99_us,p999_us,rss_kb,load_cpu_us_per_msg,errors,note\n",
    );
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.server,
            r.backend,
            r.scenario,
            r.connections,
            r.msgs_per_s,
            r.cpu_us_per_msg.map(|v| v.to_string()).unwrap_or_default(),
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.rss_kb.map(|v| v.to_string()).unwrap_or_default(),
            r.load_cpu_us_per_msg
                .map(|v| v.to_string())
                .unwrap_or_default(),
            r.errors,
            r.note.as_deref().unwrap_or("").replace([',', '\n'], ";"),
        ));
    }
    s
}

/// `a` as a shell word: unchanged if it is plain, else in single quotes.
fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// Host description for saved results.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{model}, {cpus} CPUs, Linux {kernel}")
}

fn save(prefix: &Path, rows: &[Row], title: &str) -> Result<(), String> {
    let cmd: Vec<String> = std::env::args().map(|a| shell_quote(&a)).collect();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let md = format!(
        "# {title}\n\n- command: `{}`\n- date: {date}\n- machine: {}\n\n\
         One run. On a shared host absolute figures move from run to run: compare servers by\n\
         the ratios inside this table, and by server CPU µs/message more than by msgs/s.\n\
         Method and columns: bench/README.md.\n\n{}",
        cmd.join(" "),
        machine(),
        markdown(rows)
    );
    let with_ext = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    std::fs::write(with_ext(".md"), md).map_err(|e| e.to_string())?;
    std::fs::write(with_ext(".csv"), csv(rows)).map_err(|e| e.to_string())?;
    Ok(())
}

/// Server RSS empty and with `n` idle connections, for each server.
fn idle(args: &BenchArgs, n: u32) -> Vec<Row> {
    let mut rows = Vec::new();
    for kind in servers(args) {
        let k = args
            .idle_servers
            .unwrap_or_else(|| n.div_ceil(18_000) as usize)
            .max(1);
        let name = if k == 1 {
            format!("idle {n}")
        } else {
            format!("idle {n} ({k} processes)")
        };
        let servers: Result<Vec<ServerProc>, String> = (0..k)
            .map(|_| ServerProc::start(&kind, args.server_cpu, false))
            .collect();
        let servers = match servers {
            Ok(s) => s,
            Err(e) => {
                rows.push(empty_row(&kind, &name, e));
                continue;
            }
        };
        std::thread::sleep(Duration::from_millis(200));
        let empty: u64 = servers
            .iter()
            .map(|s| sys::process_rss_kb(s.pid()).unwrap_or(0))
            .sum();
        let extra: Vec<String> = vec![
            "--mode".into(),
            "idle".into(),
            "--connections".into(),
            n.to_string(),
            "--duration".into(),
            args.idle_duration.to_string(),
        ];
        match run_load(&servers, args.load_cpu, &extra) {
            Ok(s) => {
                let full = s.server_rss_kb.unwrap_or(0);
                let per = if s.connections > 0 {
                    (full.saturating_sub(empty) * 1024) as f64 / s.connections as f64
                } else {
                    0.0
                };
                rows.push(Row {
                    server: kind.name().to_string(),
                    backend: kind.backend().to_string(),
                    scenario: name,
                    connections: s.connections,
                    msgs_per_s: 0.0,
                    cpu_us_per_msg: None,
                    p50_us: 0.0,
                    p99_us: 0.0,
                    p999_us: 0.0,
                    rss_kb: s.server_rss_kb,
                    load_cpu_us_per_msg: None,
                    errors: s.errors,
                    note: Some(format!(
                        "RSS empty {:.1} MiB, {:.0} bytes/connection, connected in {:.2} s, {} open at end",
                        empty as f64 / 1024.0,
                        per,
                        s.connect_s,
                        s.open_at_end
                    )),
                });
            }
            Err(e) => rows.push(empty_row(&kind, &name, e)),
        }
    }
    rows
}

/// Run `percore bench`; returns the exit code.
pub fn main(args: BenchArgs) -> i32 {
    if args.compare {
        if let Err(e) = ensure_peers() {
            eprintln!("percore bench: {e}");
            return 1;
        }
    }
    let (rows, title) = if let Some(n) = args.idle {
        (idle(&args, n), format!("percore bench --idle {n}"))
    } else {
        let duration = if args.quick { 1.0 } else { args.duration };
        let wanted: Option<Vec<String>> = args
            .scenarios
            .as_ref()
            .map(|s| s.split(',').map(|x| x.trim().to_lowercase()).collect());
        let broadcast = serve_has_broadcast();
        let mut rows = Vec::new();
        for sc in SCENARIOS {
            if let Some(w) = &wanted {
                if !w
                    .iter()
                    .any(|x| sc.name.to_lowercase().contains(x.as_str()))
                {
                    continue;
                }
            }
            let kinds = servers(&args);
            // Runs of each server, alternating: A B C, A B C, ...
            let mut runs: Vec<Vec<Row>> = vec![Vec::new(); kinds.len()];
            for round in 0..args.repeat.max(1) {
                for (i, kind) in kinds.iter().enumerate() {
                    if sc.broadcast {
                        let skip = match kind {
                            ServerKind::Peer(_) => Some("peer is an echo server"),
                            ServerKind::Percore(_) if !broadcast => {
                                Some("percore serve has no broadcast mode yet")
                            }
                            _ => None,
                        };
                        if let Some(why) = skip {
                            if round == 0 {
                                runs[i].push(empty_row(kind, sc.name, format!("skipped: {why}")));
                            }
                            continue;
                        }
                    }
                    if runs[i].first().is_some_and(|r| r.note.is_some()) {
                        // The first run failed: the others would too.
                        continue;
                    }
                    if !args.json {
                        eprintln!(
                            "percore bench: {} / {} / {} (run {})",
                            kind.name(),
                            kind.backend(),
                            sc.name,
                            round + 1
                        );
                    }
                    runs[i].push(cell(&args, kind, sc, duration));
                }
            }
            rows.extend(runs.iter().filter_map(|r| median_row(r)));
        }
        (rows, "percore bench".to_string())
    };
    if args.json {
        println!("{}", serde_json::to_string(&rows).unwrap_or_default());
    } else {
        print!("{}", table(&rows));
    }
    if let Some(prefix) = &args.save {
        if let Err(e) = save(prefix, &rows, &title) {
            eprintln!("percore bench: saving results: {e}");
            return 1;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(server: &str, note: Option<&str>) -> Row {
        Row {
            server: server.into(),
            backend: "epoll".into(),
            scenario: "echo 100 x 20 B".into(),
            connections: 100,
            msgs_per_s: 12345.0,
            cpu_us_per_msg: Some(4.567),
            p50_us: 10.0,
            p99_us: 20.0,
            p999_us: 30.0,
            rss_kb: Some(2048),
            load_cpu_us_per_msg: Some(3.0),
            errors: 0,
            note: note.map(String::from),
        }
    }

    #[test]
    fn table_has_one_line_per_row_plus_header_and_notes() {
        let t = table(&[
            row("percore", None),
            row("fastwebsockets", Some("skipped: x")),
        ]);
        assert_eq!(t.lines().count(), 4);
        assert!(t.contains("4.57"));
        assert!(t.contains("(skipped: x)"));
    }

    #[test]
    fn csv_escapes_commas_in_notes() {
        let c = csv(&[row("percore", Some("a, b"))]);
        assert_eq!(c.lines().count(), 2);
        assert_eq!(c.lines().nth(1).unwrap().split(',').count(), 13);
    }

    #[test]
    fn saved_command_lines_quote_words_with_spaces_or_nothing() {
        assert_eq!(shell_quote("--scenarios"), "--scenarios");
        assert_eq!(shell_quote("echo 100"), "'echo 100'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn repeated_runs_report_the_median_of_each_figure_and_all_errors() {
        let mut a = row("percore", None);
        let mut b = row("percore", None);
        let c = row("percore", None);
        a.cpu_us_per_msg = Some(9.0);
        a.errors = 1;
        b.cpu_us_per_msg = Some(3.0);
        b.msgs_per_s = 1.0;
        let m = median_row(&[a, b, c]).unwrap();
        assert_eq!(m.cpu_us_per_msg, Some(4.567));
        assert_eq!(m.msgs_per_s, 12345.0);
        assert_eq!(m.errors, 1);
        let failed = row("percore", Some("did not start"));
        assert!(median_row(&[row("percore", None), failed])
            .unwrap()
            .note
            .is_some());
        assert!(median_row(&[]).is_none());
    }

    #[test]
    fn peers_run_only_with_compare() {
        let mut a = BenchArgs {
            duration: 1.0,
            quick: false,
            compare: false,
            backends: "epoll, uring".into(),
            scenarios: None,
            json: false,
            idle: None,
            idle_duration: 1.0,
            idle_servers: None,
            server_cpu: 0,
            load_cpu: 1,
            broadcast_rate: 1.0,
            repeat: 1,
            save: None,
        };
        assert_eq!(
            servers(&a),
            vec![
                ServerKind::Percore("epoll".into()),
                ServerKind::Percore("uring".into())
            ]
        );
        a.compare = true;
        assert_eq!(servers(&a).len(), 4);
    }
}
