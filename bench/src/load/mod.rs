//! `percore load`: a WebSocket load generator for many connections per thread.
//!
//! One mio event loop per thread; past `--conns-per-process` connections (the file descriptor
//! limit) the command re-executes itself as worker processes (`percore load --worker ...`),
//! drives them over their stdin/stdout and merges their results. Every connection binds an
//! explicit 127.0.0.x source address (see [`addr`]).
//!
//! Worker protocol (one line each): worker -> `ready`, driver -> `go GO_NS END_NS`,
//! worker -> `progress ESTABLISHED MESSAGES ERRORS P99_NS OPEN` (4 per second; P99_NS: the
//! largest p99 of its threads over their last second, 0 if none; OPEN: connections open now), worker -> `ended`,
//! driver -> `release`, worker -> `result {json Partial}`. A worker whose stdin closes
//! gives up; a worker whose parent dies is killed by the kernel.

pub mod addr;
pub mod payload;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod tls;
pub mod worker;
pub mod ws;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use report::{Context, Partial, Summary};
use worker::{Mode, RunConfig, Shared, ThreadJob};

use crate::sys::{self, mono_ns};

/// Arguments of `percore load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Server URL, ws://HOST:PORT/PATH or wss://HOST:PORT/PATH (IPv4). Repeat (or separate
    /// with commas) to spread connections round robin over several servers.
    #[arg(long, required = true, value_delimiter = ',')]
    pub url: Vec<String>,
    /// wss://: verify the servers against this CA (PEM); HOST is the name checked (and sent as
    /// SNI) unless it is an IP address.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// wss://: accept any server certificate (benchmarks against a self-signed server only;
    /// the handshake signature is still checked).
    #[arg(long)]
    pub insecure: bool,
    /// Connections to open.
    #[arg(long, default_value_t = 100)]
    pub connections: u32,
    /// Payload bytes per message (at least 20: connection id, sequence number, timestamp).
    #[arg(long, default_value_t = 20)]
    pub size: usize,
    /// Length of the measured window, seconds (idle mode: how long connections are held).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Open loop: total messages per second, sent on a fixed schedule spread over the
    /// connections (or publishers) whatever the server does; latency counts from each
    /// message's intended send time. Without it, closed loop: each connection sends its next
    /// message when the last returns.
    #[arg(long)]
    pub rate: Option<f64>,
    /// echo: ping-pong with verification; broadcast: publishers send, all receive; idle: hold.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    pub mode: Mode,
    /// Broadcast mode: connections 0..P publish.
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Open at most this many connections per second (total); default: as fast as possible.
    #[arg(long)]
    pub ramp: Option<f64>,
    /// Event-loop threads per process.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Pin event-loop threads to these CPUs, round robin (e.g. "1" or "0,2-3").
    #[arg(long)]
    pub cpu: Option<String>,
    /// Seconds allowed for connect + handshake and for each expected echo.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Worker processes (default: enough to stay under --conns-per-process each).
    #[arg(long)]
    pub processes: Option<usize>,
    /// Most connections per process (RLIMIT_NOFILE bounds it).
    #[arg(long, default_value_t = 18_000)]
    pub conns_per_process: u32,
    /// Connects + handshakes in flight per thread.
    #[arg(long, default_value_t = 256)]
    pub in_flight: u32,
    /// Measure these processes (the servers; comma separated) and their descendants: CPU time
    /// over the window and RSS at its end, summed.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// No progress line on stderr (there is none anyway under --json or when stderr is not a
    /// terminal).
    #[arg(long)]
    pub quiet: bool,
    /// Offer permessage-deflate (`permessage-deflate; client_max_window_bits`, as browsers do)
    /// and require it: messages are sent compressed (zlib level 6) and every reply is inflated
    /// and verified. The payload is JSON-like unless --payload says otherwise.
    #[arg(long)]
    pub deflate: bool,
    /// What fills each payload after its 20-byte header: pattern (a 256-byte pattern) or json
    /// (JSON-like records, about 3:1 compressible). Default: json with --deflate, else pattern.
    #[arg(long, value_enum)]
    pub payload: Option<payload::Fill>,
    /// After the window, keep the connections open up to this many seconds, answering pings
    /// and the server's close frames, or until the server has closed them all (a graceful
    /// shutdown started once stderr says `window over`). Closes then are not errors; the
    /// result counts them (`closed_by_server`).
    #[arg(long, default_value_t = 0.0)]
    pub linger: f64,
    /// Internal: run as a worker process driven over stdin/stdout.
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Internal (worker): first global connection id.
    #[arg(long, hide = true, default_value_t = 0)]
    pub first_id: u32,
    /// Internal (worker): connections in the whole run.
    #[arg(long, hide = true)]
    pub total_connections: Option<u32>,
    /// Internal (worker): index of this worker.
    #[arg(long, hide = true, default_value_t = 0)]
    pub worker_index: usize,
    /// Internal (worker): worker processes in the run.
    #[arg(long, hide = true, default_value_t = 1)]
    pub worker_count: usize,
    /// Internal (worker): source address rotation.
    #[arg(long, hide = true)]
    pub source_base: Option<u32>,
}

/// A parsed ws:// or wss:// URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Resolved IPv4 address.
    pub addr: SocketAddrV4,
    /// HOST:PORT as written (Host header).
    pub host: String,
    /// Path (with query), "/" if none.
    pub path: String,
    /// wss://: the name to verify and send as SNI (HOST without the port).
    pub tls_name: Option<String>,
}

/// Parse `ws://HOST:PORT/PATH` or `wss://…`; HOST must resolve to IPv4.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err(format!("{url}: only ws:// and wss:// URLs are supported")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let with_port = if authority.rsplit_once(':').is_some() {
        authority.to_string()
    } else if tls {
        format!("{authority}:443")
    } else {
        format!("{authority}:80")
    };
    let tls_name = tls.then(|| {
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_string()
    });
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .find_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .ok_or_else(|| format!("{url}: no IPv4 address"))?;
    Ok(Target {
        addr,
        host: authority.to_string(),
        path: path.to_string(),
        tls_name,
    })
}

/// Parse a CPU list such as "1", "0,2" or "0-3,6".
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad CPU list {s:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if b < a || b - a > 4096 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err(format!("empty CPU list {s:?}"));
    }
    Ok(out)
}

/// Split `n` connections starting at id `first` into `parts` contiguous ranges, sizes
/// differing by at most one.
pub fn split_ids(first: u32, n: u32, parts: usize) -> Vec<std::ops::Range<u32>> {
    let parts = parts.max(1) as u32;
    let base = n / parts;
    let extra = n % parts;
    let mut start = first;
    (0..parts)
        .map(|i| {
            let len = base + u32::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// Worker processes needed for `n` connections at most `per_process` each.
pub fn processes_for(n: u32, per_process: u32) -> usize {
    n.div_ceil(per_process.max(1)).max(1) as usize
}

/// A finite number above zero.
fn positive(v: f64) -> bool {
    v > 0.0 && v.is_finite()
}

impl LoadArgs {
    /// The payload filler: `--payload`, else JSON-like with `--deflate`.
    fn fill(&self) -> payload::Fill {
        self.payload.unwrap_or(if self.deflate {
            payload::Fill::Json
        } else {
            payload::Fill::Pattern
        })
    }

    fn validate(&self) -> Result<(), String> {
        if self.size < payload::HEADER_BYTES {
            return Err(format!(
                "--size must be at least {} bytes",
                payload::HEADER_BYTES
            ));
        }
        if self.size > 16 << 20 {
            return Err("--size is limited to 16 MiB".into());
        }
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if !positive(self.duration) || self.duration > 86_400.0 {
            return Err("--duration must be in (0, 86400] seconds".into());
        }
        if self.threads == 0 || self.threads > 256 {
            return Err("--threads must be in 1..=256".into());
        }
        if [self.rate, self.ramp]
            .iter()
            .flatten()
            .any(|&r| !positive(r))
        {
            return Err("--rate and --ramp must be positive".into());
        }
        if self.mode == Mode::Broadcast
            && (self.publishers == 0 || self.publishers > self.connections)
        {
            return Err("--publishers must be in 1..=--connections".into());
        }
        if let Some(rate) = self.rate {
            self.validate_rate(rate)?;
        }
        if !positive(self.timeout) {
            return Err("--timeout must be positive".into());
        }
        Ok(())
    }

    /// An open-loop rate the generator can actually offer over this run.
    fn validate_rate(&self, rate: f64) -> Result<(), String> {
        if self.mode == Mode::Idle {
            return Err(
                "--rate has no meaning with --mode idle (idle connections send nothing)".into(),
            );
        }
        let in_window = rate * self.duration;
        if in_window < 1.0 {
            return Err(format!(
                "--rate {rate} msg/s over --duration {} s schedules {in_window:.2} messages: \
                 nothing to measure (raise --rate or --duration)",
                self.duration
            ));
        }
        let processes = self
            .processes
            .unwrap_or_else(|| processes_for(self.connections, self.conns_per_process))
            .max(1);
        let senders = match self.mode {
            Mode::Broadcast => self.publishers,
            _ => self.connections,
        };
        // The busiest thread's share: the rate follows the senders, and the threads split
        // the connections as evenly as they can.
        let threads = (self.threads * processes).min(senders as usize).max(1);
        let per_thread = rate / threads as f64;
        if per_thread > schedule::MAX_RATE_PER_THREAD {
            return Err(format!(
                "--rate {rate} msg/s is {per_thread:.0} msg/s for each of {threads} sending \
                 thread(s): one thread sends at most {} msg/s (a write per message and the read \
                 of its echo); use --threads (each on its own CPU) or a lower --rate",
                schedule::MAX_RATE_PER_THREAD
            ));
        }
        Ok(())
    }

    fn run_config(&self, targets: &[Target], processes: usize) -> Result<RunConfig, String> {
        let tls = if targets.iter().any(|t| t.tls_name.is_some()) {
            Some(tls::client_config(self.tls_ca.as_deref(), self.insecure)?)
        } else {
            None
        };
        Ok(RunConfig {
            tls,
            targets: targets.to_vec(),
            mode: self.mode,
            size: self.size,
            publishers: self.publishers,
            total_connections: self.total_connections.unwrap_or(self.connections),
            rate: self.rate,
            ramp: self.ramp,
            total_threads: self.threads * processes,
            in_flight: self.in_flight.max(1),
            timeout_ns: (self.timeout * 1e9) as u64,
            explicit_sources: targets.iter().all(|t| t.addr.ip().is_loopback()),
            source_base: self.source_base.unwrap_or_else(|| {
                addr::run_base((mono_ns() / 1_000_000) ^ std::process::id() as u64)
            }),
            deflate: self.deflate,
            fill: self.fill(),
        })
    }
}

/// Threads of this process running one share of the load.
struct LocalRun {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<Partial>>,
}

impl LocalRun {
    fn start(cfg: RunConfig, args: &LoadArgs, cpus: &[usize]) -> LocalRun {
        let shared = Arc::new(Shared::default());
        let cfg = Arc::new(cfg);
        let ranges = split_ids(args.first_id, args.connections, args.threads);
        let threads = ranges
            .into_iter()
            .enumerate()
            .map(|(i, ids)| {
                let index = args.worker_index * args.threads + i;
                let job = ThreadJob {
                    ids,
                    cpu: (!cpus.is_empty()).then(|| cpus[index % cpus.len()]),
                    index,
                };
                let (cfg, shared) = (cfg.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("load-{index}"))
                    .spawn(move || worker::run_thread(cfg, job, shared))
                    .expect("spawning a load thread")
            })
            .collect();
        LocalRun { shared, threads }
    }

    fn all(&self, n: &std::sync::atomic::AtomicUsize) -> bool {
        n.load(Relaxed) >= self.threads.len()
    }

    fn finish(self) -> Partial {
        self.shared.release.store(true, Relaxed);
        let parts: Vec<Partial> = self
            .threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect();
        Partial::merge(&parts)
    }
}

/// The processes (or this process) that run a load, seen from the driver.
trait Group {
    fn ready(&mut self) -> bool;
    fn go(&mut self, go_ns: u64, end_ns: u64);
    fn ended(&mut self) -> bool;
    /// (established, messages, errors) so far.
    fn progress(&mut self) -> (u64, u64, u64);
    /// Connections open now.
    fn open(&mut self) -> u64;
    /// The largest p99 latency (ns) measured over about the last second (0: none).
    fn live_p99_ns(&mut self) -> u64;
    fn finish(self: Box<Self>) -> Result<Partial, String>;
}

impl Group for LocalRun {
    fn ready(&mut self) -> bool {
        self.all(&self.shared.ready)
    }
    fn go(&mut self, go_ns: u64, end_ns: u64) {
        self.shared.start(go_ns, end_ns);
    }
    fn ended(&mut self) -> bool {
        self.all(&self.shared.ended)
    }
    fn progress(&mut self) -> (u64, u64, u64) {
        let s = &self.shared;
        (
            s.established.load(Relaxed),
            s.messages.load(Relaxed),
            s.errors.load(Relaxed),
        )
    }
    fn open(&mut self) -> u64 {
        self.shared.open.load(Relaxed)
    }
    fn live_p99_ns(&mut self) -> u64 {
        self.shared.live_p99_ns.swap(0, Relaxed)
    }
    fn finish(self: Box<Self>) -> Result<Partial, String> {
        Ok(LocalRun::finish(*self))
    }
}

enum Line {
    Ready,
    /// established, messages, errors, p99 ns, open.
    Progress(u64, u64, u64, u64, u64),
    Ended,
    Result(Box<Partial>),
    Gone,
}

/// Parse one line a worker printed.
fn parse_line(l: &str) -> Option<Line> {
    let l = l.trim_end();
    if l == "ready" {
        return Some(Line::Ready);
    }
    if l == "ended" {
        return Some(Line::Ended);
    }
    if let Some(rest) = l.strip_prefix("progress ") {
        let v: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        return match v[..] {
            [a, b, c] => Some(Line::Progress(a, b, c, 0, a)),
            [a, b, c, d] => Some(Line::Progress(a, b, c, d, a)),
            [a, b, c, d, e] => Some(Line::Progress(a, b, c, d, e)),
            _ => None,
        };
    }
    if let Some(rest) = l.strip_prefix("result ") {
        return serde_json::from_str(rest)
            .ok()
            .map(|p| Line::Result(Box::new(p)));
    }
    None
}

struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    ready: bool,
    ended: bool,
    progress: (u64, u64, u64),
    open: u64,
    p99_ns: u64,
    result: Option<Partial>,
    gone: bool,
}

struct Processes {
    procs: Vec<WorkerProc>,
    rx: mpsc::Receiver<(usize, Line)>,
}

impl Processes {
    fn spawn(args: &LoadArgs, n: usize, source_base: u32) -> Result<Processes, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let mut procs = Vec::new();
        for (i, ids) in split_ids(0, args.connections, n).into_iter().enumerate() {
            let mut cmd = Command::new(&exe);
            cmd.arg("load")
                .arg("--worker")
                .args(["--url", &args.url.join(",")])
                .args(["--connections", &ids.len().to_string()])
                .args(["--first-id", &ids.start.to_string()])
                .args(["--total-connections", &args.connections.to_string()])
                .args(["--worker-index", &i.to_string()])
                .args(["--worker-count", &n.to_string()])
                .args(["--source-base", &source_base.to_string()])
                .args(["--size", &args.size.to_string()])
                .args(["--duration", &args.duration.to_string()])
                .args(["--mode", args.mode.name()])
                .args(["--publishers", &args.publishers.to_string()])
                .args(["--threads", &args.threads.to_string()])
                .args(["--timeout", &args.timeout.to_string()])
                .args(["--in-flight", &args.in_flight.to_string()]);
            if let Some(ca) = &args.tls_ca {
                cmd.arg("--tls-ca").arg(ca);
            }
            if args.insecure {
                cmd.arg("--insecure");
            }
            if args.deflate {
                cmd.arg("--deflate");
            }
            if let Some(p) = args.payload {
                cmd.args([
                    "--payload",
                    if p == payload::Fill::Json {
                        "json"
                    } else {
                        "pattern"
                    },
                ]);
            }
            if let Some(r) = args.rate {
                cmd.args(["--rate", &r.to_string()]);
            }
            if let Some(r) = args.ramp {
                cmd.args(["--ramp", &r.to_string()]);
            }
            if let Some(c) = &args.cpu {
                cmd.args(["--cpu", c]);
            }
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            sys::guarded(&mut cmd, &[]);
            let mut child = cmd.spawn().map_err(|e| format!("spawning worker: {e}"))?;
            let stdout = child.stdout.take().ok_or("worker stdout")?;
            let stdin = child.stdin.take();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(l) = parse_line(&line) {
                        if tx.send((i, l)).is_err() {
                            return;
                        }
                    }
                }
                let _ = tx.send((i, Line::Gone));
            });
            procs.push(WorkerProc {
                child,
                stdin,
                ready: false,
                ended: false,
                progress: (0, 0, 0),
                open: 0,
                p99_ns: 0,
                result: None,
                gone: false,
            });
        }
        Ok(Processes { procs, rx })
    }

    fn pump(&mut self, wait: Duration) {
        let mut first = true;
        loop {
            let msg = if first {
                first = false;
                self.rx.recv_timeout(wait).ok()
            } else {
                self.rx.try_recv().ok()
            };
            let Some((i, line)) = msg else { return };
            let p = &mut self.procs[i];
            match line {
                Line::Ready => p.ready = true,
                Line::Ended => p.ended = true,
                Line::Progress(a, b, c, d, e) => {
                    p.progress = (a, b, c);
                    p.open = e;
                    p.p99_ns = p.p99_ns.max(d);
                }
                Line::Result(r) => p.result = Some(*r),
                Line::Gone => {
                    // A worker that died counts as ready/ended so the run does not hang.
                    p.gone = true;
                    p.ready = true;
                    p.ended = true;
                }
            }
        }
    }

    fn send(&mut self, line: &str) {
        for p in &mut self.procs {
            if let Some(s) = p.stdin.as_mut() {
                let _ = s.write_all(line.as_bytes()).and_then(|_| s.flush());
            }
        }
    }
}

impl Group for Processes {
    fn ready(&mut self) -> bool {
        self.pump(Duration::from_millis(10));
        self.procs.iter().all(|p| p.ready)
    }
    fn go(&mut self, go_ns: u64, end_ns: u64) {
        self.send(&format!("go {go_ns} {end_ns}\n"));
    }
    fn ended(&mut self) -> bool {
        self.pump(Duration::from_millis(1));
        self.procs.iter().all(|p| p.ended)
    }
    fn progress(&mut self) -> (u64, u64, u64) {
        self.pump(Duration::ZERO);
        self.procs.iter().fold((0, 0, 0), |a, p| {
            (a.0 + p.progress.0, a.1 + p.progress.1, a.2 + p.progress.2)
        })
    }
    fn open(&mut self) -> u64 {
        self.pump(Duration::ZERO);
        self.procs.iter().filter(|p| !p.gone).map(|p| p.open).sum()
    }
    fn live_p99_ns(&mut self) -> u64 {
        self.pump(Duration::ZERO);
        self.procs
            .iter_mut()
            .map(|p| std::mem::take(&mut p.p99_ns))
            .max()
            .unwrap_or(0)
    }
    fn finish(mut self: Box<Self>) -> Result<Partial, String> {
        self.send("release\n");
        let deadline = mono_ns() + 30_000_000_000;
        while self.procs.iter().any(|p| p.result.is_none() && !p.gone) && mono_ns() < deadline {
            self.pump(Duration::from_millis(50));
        }
        let mut parts = Vec::new();
        let mut missing = 0;
        for p in &mut self.procs {
            p.stdin = None;
            match p.result.take() {
                Some(r) => parts.push(r),
                None => missing += 1,
            }
            if mono_ns() > deadline {
                let _ = p.child.kill();
            }
            let _ = p.child.wait();
        }
        if parts.is_empty() {
            return Err(format!("{missing} worker process(es) returned no result"));
        }
        let merged = Partial::merge(&parts);
        if missing > 0 {
            eprintln!("percore load: {missing} worker process(es) returned no result");
        }
        Ok(merged)
    }
}

/// Run `percore load`; returns the process exit code.
pub fn main(args: LoadArgs) -> i32 {
    if let Err(e) = args.validate() {
        eprintln!("percore load: {e}");
        return 2;
    }
    let targets = match args
        .url
        .iter()
        .map(|u| parse_url(u))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("percore load: {e}");
            return 2;
        }
    };
    let cpus = match args.cpu.as_deref().map(parse_cpu_list).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            eprintln!("percore load: {e}");
            return 2;
        }
    };
    if args.worker {
        return worker_main(&args, &targets, &cpus);
    }
    match run(&args, &targets, &cpus) {
        Ok(summary) => {
            if args.json {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            } else {
                print!("{}", summary.table());
            }
            i32::from(summary.errors > 0 || summary.connections == 0)
        }
        Err(e) => {
            eprintln!("percore load: {e}");
            1
        }
    }
}

/// Drive a whole run (in this process, or through worker processes) and summarise it.
pub fn run(args: &LoadArgs, targets: &[Target], cpus: &[usize]) -> Result<Summary, String> {
    let n_proc = args
        .processes
        .unwrap_or_else(|| processes_for(args.connections, args.conns_per_process))
        .max(1);
    let start_ns = mono_ns();
    let cfg = args.run_config(targets, n_proc)?;
    let mut group: Box<dyn Group> = if n_proc == 1 {
        Box::new(LocalRun::start(cfg, args, cpus))
    } else {
        Box::new(Processes::spawn(args, n_proc, cfg.source_base)?)
    };
    let mut line = progress::Line::new(!args.quiet && !args.json);
    let mut last_print = start_ns;
    // Connect phase: bounded by the per-connection timeout times the number of batches.
    let batches = (args.connections as u64)
        .div_ceil(args.in_flight.max(1) as u64 * (args.threads * n_proc) as u64);
    let connect_deadline =
        start_ns + (args.timeout * 1e9) as u64 * (batches + 1) + ramp_ns(args) + 5_000_000_000;
    let target = u64::from(args.connections);
    while !group.ready() {
        let now = mono_ns();
        if now > connect_deadline {
            return Err("connect phase did not finish".into());
        }
        if line.enabled() && now - last_print >= 1_000_000_000 {
            last_print = now;
            let (up, _, errors) = group.progress();
            line.show(&progress::Progress {
                stage: progress::Stage::Connect,
                elapsed_s: (now - start_ns) as f64 / 1e9,
                up,
                target,
                msgs_per_s: None,
                p99_us: None,
                errors,
            });
        }
        if n_proc == 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let go_ns = mono_ns() + 20_000_000;
    let window_ns = (args.duration * 1e9) as u64;
    let end_ns = go_ns + window_ns;
    group.go(go_ns, end_ns);
    sleep_until(go_ns);
    let cpu0 = sum_over(&args.server_pid, sys::process_tree_cpu_ns);
    let mut last_print = go_ns;
    let mut last_msgs = 0;
    let mut p99_ns = 0;
    loop {
        let now = mono_ns();
        if now >= end_ns {
            break;
        }
        sleep_until((now + 100_000_000).min(end_ns));
        let now = mono_ns();
        if line.enabled() && now - last_print >= 1_000_000_000 && now < end_ns {
            let (up, msgs, errors) = group.progress();
            let dt = (now - last_print) as f64 / 1e9;
            // Keep the last known p99 through a second in which no thread reported one.
            p99_ns = match group.live_p99_ns() {
                0 => p99_ns,
                v => v,
            };
            line.show(&progress::Progress {
                stage: progress::Stage::Run,
                elapsed_s: (now - go_ns) as f64 / 1e9,
                up,
                target,
                msgs_per_s: Some((msgs - last_msgs.min(msgs)) as f64 / dt),
                p99_us: (p99_ns > 0).then(|| p99_ns as f64 / 1e3),
                errors,
            });
            last_msgs = msgs;
            last_print = now;
        }
    }
    let cpu1 = sum_over(&args.server_pid, sys::process_tree_cpu_ns);
    let rss = sum_over(&args.server_pid, sys::process_tree_rss_kb);
    // An open-loop run drains for up to worker::DRAIN_MAX_NS after the window.
    let end_deadline = mono_ns() + 10_000_000_000 + worker::DRAIN_MAX_NS;
    while !group.ended() && mono_ns() < end_deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    if args.linger > 0.0 {
        eprintln!(
            "window over: holding {} connections up to {} s",
            group.open(),
            args.linger
        );
        let until = mono_ns() + (args.linger * 1e9) as u64;
        while group.open() > 0 && mono_ns() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let merged = group.finish()?;
    line.clear();
    Ok(Summary::new(
        &merged,
        &Context {
            mode: args.mode.name().to_string(),
            size: args.size,
            rate: args.rate,
            start_ns,
            window_ns,
            processes: n_proc,
            threads: args.threads,
            server_cpu_ns: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a)),
            server_rss_kb: rss,
        },
    ))
}

/// Sum of `f(pid)` over `pids`; None if there are none or any cannot be read.
fn sum_over(pids: &[u32], f: fn(u32) -> Option<u64>) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| f(p)).sum()
}

fn ramp_ns(args: &LoadArgs) -> u64 {
    args.ramp
        .map(|r| (args.connections as f64 / r * 1e9) as u64)
        .unwrap_or(0)
}

fn sleep_until(t: u64) {
    let now = mono_ns();
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

/// A worker process: run the threads, talk to the driver over stdin/stdout.
fn worker_main(args: &LoadArgs, targets: &[Target], cpus: &[usize]) -> i32 {
    let cfg = match args.run_config(targets, args.worker_count) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("percore load worker: {e}");
            return 2;
        }
    };
    let run = LocalRun::start(cfg, args, cpus);
    let shared = run.shared.clone();
    // Commands from the driver; EOF (driver gone) aborts.
    let reader_shared = shared.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let mut it = line.split_whitespace();
            match it.next() {
                Some("go") => {
                    let go: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                    let end: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                    reader_shared.start(go, end);
                }
                Some("release") => {
                    reader_shared.release.store(true, Relaxed);
                    return;
                }
                _ => {}
            }
        }
        reader_shared.abort.store(true, Relaxed);
        reader_shared.release.store(true, Relaxed);
    });
    let out = std::io::stdout();
    let say = |s: &str| {
        let mut o = out.lock();
        let _ = o.write_all(s.as_bytes()).and_then(|_| o.flush());
    };
    let mut said_ready = false;
    let mut said_ended = false;
    let mut last = mono_ns();
    while !shared.release.load(Relaxed) {
        if !said_ready && run.all(&shared.ready) {
            said_ready = true;
            say("ready\n");
        }
        if !said_ended && run.all(&shared.ended) {
            said_ended = true;
            say("ended\n");
        }
        let now = mono_ns();
        // Often enough that the driver's once-a-second lines are current.
        if now - last >= 250_000_000 {
            last = now;
            say(&format!(
                "progress {} {} {} {} {}\n",
                shared.established.load(Relaxed),
                shared.messages.load(Relaxed),
                shared.errors.load(Relaxed),
                shared.live_p99_ns.swap(0, Relaxed),
                shared.open.load(Relaxed)
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let part = run.finish();
    say(&format!(
        "result {}\n",
        serde_json::to_string(&part).unwrap_or_default()
    ));
    0
}

#[cfg(test)]
mod tests;
