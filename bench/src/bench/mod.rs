//! `percore bench`: start the server(s) pinned to one CPU and the load generator pinned to
//! another, run a matrix of scenarios, print one table.
//!
//! Each cell starts a fresh server child process (`percore serve --no-pin --shards 1`, a peer
//! from bench/peers, or an external server declared with `--peer` / `--raw-peer`), pinned
//! with sched_setaffinity before exec, then runs the load generator pinned to the load CPU:
//! `percore load --json --server-pid PID` by default, or uWebSockets' `load_test` / the floor's
//! `peerload` (`--generator`). The server's CPU time (all threads of the process and its
//! descendants) is read at the start and end of the measured window and its RSS at the end,
//! so the CPU cost per message is the server's own, whatever limits throughput.

mod charts;
mod generator;
mod open_loop;
mod peer;
mod report;
mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub use generator::Generator;
pub use report::{csv, markdown, median_row, table, Row};
pub use server::{ServerKind, ServerProc};

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
    /// percore backends to run, comma separated (epoll, uring; empty: none).
    #[arg(long, default_value = "epoll,uring")]
    pub backends: String,
    /// Only these scenarios, comma separated substrings of their names (default: all).
    #[arg(long)]
    pub scenarios: Option<String>,
    /// Echo cells CONNECTIONSxSIZE instead of the matrix (repeatable or comma separated), e.g.
    /// `--cell 10x20,4x64KiB,2x1MiB` (k/M suffixes on connections, KiB/MiB on sizes).
    #[arg(long, value_delimiter = ',')]
    pub cell: Vec<String>,
    /// An external WebSocket echo server, NAME='COMMAND {port}' (repeatable): `{port}` is
    /// replaced by a free port on 127.0.0.1; its rows are named NAME.
    #[arg(long, value_name = "NAME=COMMAND")]
    pub peer: Vec<String>,
    /// An external raw TCP echo server (no WebSocket), NAME='COMMAND {port}' (repeatable);
    /// driven by `peerload raw` (needs --generator peerload=PATH).
    #[arg(long, value_name = "NAME=COMMAND")]
    pub raw_peer: Vec<String>,
    /// NAME=TEXT: the peer NAME is ready when it prints a line containing TEXT (default: when a
    /// TCP connection to its port succeeds).
    #[arg(long, value_name = "NAME=TEXT")]
    pub ready_line: Vec<String>,
    /// Load generator (repeatable): `percore` (percore load, the default), `load_test=PATH`
    /// (uWebSockets' load_test drives every WebSocket server), `peerload-ws=PATH` (peerload
    /// ws drives them), `peerload=PATH` (peerload raw drives the --raw-peer servers). Each
    /// WebSocket generator named gets its own rows.
    #[arg(long, value_name = "KIND[=PATH]")]
    pub generator: Vec<String>,
    /// Open-loop latency instead of the matrix: offered rates as percentages of the closed-loop
    /// maximum (see --open-loop-base), e.g. 25,50,80.
    #[arg(long, value_delimiter = ',', value_name = "PERCENTS")]
    pub open_loop: Option<Vec<f64>>,
    /// Whose maximum the open-loop percentages are of: `best` (the highest closed-loop maximum
    /// of the repetition: every server is offered the same rates, so their latencies compare at
    /// the same load) or `own` (each server its own maximum: the same utilisation).
    #[arg(long, value_enum, default_value_t = open_loop::Base::Best)]
    pub open_loop_base: open_loop::Base,
    /// Connections of the open-loop cell.
    #[arg(long, default_value_t = 10_000)]
    pub open_loop_connections: u32,
    /// Payload bytes of the open-loop cell.
    #[arg(long, default_value_t = 20)]
    pub open_loop_size: usize,
    /// Print a JSON array of rows instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Instead of the matrix: server RSS empty and with N idle connections, bytes per connection.
    #[arg(long)]
    pub idle: Option<u32>,
    /// Hold the idle connections this many seconds.
    #[arg(long, default_value_t = 2.0)]
    pub idle_duration: f64,
    /// Server processes sharing the idle connections (default: one io_uring process with
    /// direct descriptors, which holds any number of connections; for the other servers one
    /// per 18000 connections, the most one process holds under RLIMIT_NOFILE = 20000). RSS is
    /// summed over them.
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
    /// Also run each percore backend over wss:// (rows with backend `B wss`, alternating with
    /// the ws:// ones): `percore serve --tls-cert/--tls-key` with a test certificate made for
    /// the run, `percore load` verifying it against the run's CA.
    #[arg(long)]
    pub tls: bool,
    /// Also write the results: PREFIX.md, PREFIX.csv, PREFIX.json and SVG charts
    /// (PREFIX-cpu.svg, -latency.svg, -rss.svg, -open-loop.svg). A directory (existing, or
    /// written with a trailing '/') gets DIR/bench.*.
    #[arg(long, value_name = "PREFIX|DIR/")]
    pub save: Option<PathBuf>,
    /// Run nothing: read rows saved before (a `--json` output or PREFIX.json), print them and
    /// write them with --save (tables and charts again).
    #[arg(long, value_name = "FILE")]
    pub from_json: Option<PathBuf>,
}

/// One benchmark scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// Connections.
    pub connections: u32,
    /// Payload bytes.
    pub size: usize,
    /// Broadcast (1 publisher, all receive) instead of echo.
    pub broadcast: bool,
}

impl Scenario {
    /// An echo cell, named after its shape.
    pub fn echo(connections: u32, size: usize) -> Scenario {
        Scenario {
            name: format!("echo {} x {}", count_label(connections), size_label(size)),
            connections,
            size,
            broadcast: false,
        }
    }
}

/// The matrix: echo 100/1k/10k × 20 B, 100 × 16 KiB, 100 × 64 KiB, 10 × 1 MiB, broadcast.
pub fn matrix() -> Vec<Scenario> {
    let mut v: Vec<Scenario> = [
        (100, 20),
        (1000, 20),
        (10_000, 20),
        (100, 16 << 10),
        (100, 64 << 10),
        (10, 1 << 20),
    ]
    .into_iter()
    .map(|(c, s)| Scenario::echo(c, s))
    .collect();
    v.push(Scenario {
        name: "broadcast 1 -> 1k".into(),
        connections: 1000,
        size: 20,
        broadcast: true,
    });
    v
}

/// `n` as the scenario names write it: 100, 1k, 10k, 1.5k, 2M.
pub fn count_label(n: u32) -> String {
    match n {
        n if n >= 1_000_000 && n % 100_000 == 0 => trim_num(n as f64 / 1e6, "M"),
        n if n >= 1000 && n % 100 == 0 => trim_num(n as f64 / 1e3, "k"),
        n => n.to_string(),
    }
}

/// `bytes` as the scenario names write it: 20 B, 16 KiB, 1 MiB, 1500 B.
pub fn size_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn trim_num(v: f64, unit: &str) -> String {
    let s = format!("{v:.1}");
    format!("{}{unit}", s.trim_end_matches(".0"))
}

/// Parse a `--cell` value: CONNECTIONSxSIZE, e.g. `100x20`, `1kx20`, `10x1MiB`, `4x64KiB`.
pub fn parse_cell(s: &str) -> Result<Scenario, String> {
    let bad = || format!("--cell {s:?}: expected CONNECTIONSxSIZE, e.g. 100x20 or 10x1MiB");
    let (c, b) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let num = |t: &str, units: &[(&str, u64)]| -> Option<u64> {
        let t = t.trim();
        for &(suffix, mul) in units {
            if let Some(n) = t.strip_suffix(suffix) {
                return n.trim().parse::<u64>().ok()?.checked_mul(mul);
            }
        }
        t.parse().ok()
    };
    let connections = num(c, &[("k", 1000), ("M", 1_000_000)])
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(bad)?;
    let size = num(b, &[("KiB", 1 << 10), ("MiB", 1 << 20), ("B", 1)])
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(bad)?;
    Ok(Scenario::echo(connections, size))
}

/// What to run, from validated arguments.
#[derive(Debug)]
pub struct Plan {
    /// Servers, in the order they alternate.
    pub servers: Vec<ServerKind>,
    /// Generators of the WebSocket servers (each gets its rows).
    pub ws_generators: Vec<Generator>,
    /// Generator of the raw peers.
    pub raw_generator: Option<Generator>,
    /// Matrix cells.
    pub scenarios: Vec<Scenario>,
    /// Open-loop percentages, if that table is asked for.
    pub open_loop: Option<Vec<f64>>,
}

impl Plan {
    /// Check the arguments and resolve them; the error is for the command line.
    pub fn new(args: &BenchArgs) -> Result<Plan, String> {
        if !(args.duration > 0.0 && args.duration.is_finite()) {
            return Err("--duration must be positive".into());
        }
        if args.repeat == 0 {
            return Err("--repeat must be at least 1".into());
        }
        if args.idle.is_some() && args.open_loop.is_some() {
            return Err("--idle and --open-loop are separate runs: give one of them".into());
        }
        let mut servers: Vec<ServerKind> = Vec::new();
        for b in args
            .backends
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
        {
            servers.push(ServerKind::Percore(b.to_string()));
            if args.tls {
                servers.push(ServerKind::percore_tls(b));
            }
        }
        if args.compare {
            servers.extend(server::PEERS.iter().map(|(n, _)| ServerKind::Peer(n)));
        }
        let mut peers: Vec<peer::ExternalPeer> = Vec::new();
        for (spec, raw) in args
            .peer
            .iter()
            .map(|s| (s, false))
            .chain(args.raw_peer.iter().map(|s| (s, true)))
        {
            let p = peer::ExternalPeer::parse(spec, raw)?;
            if peers.iter().any(|q| q.name == p.name) || servers.iter().any(|k| k.name() == p.name)
            {
                return Err(format!(
                    "two servers are named {} (a built-in peer of --compare has that name?)",
                    p.name
                ));
            }
            peers.push(p);
        }
        for spec in &args.ready_line {
            let (name, text) = peer::parse_ready_line(spec)?;
            let p = peers
                .iter_mut()
                .find(|p| p.name == name)
                .ok_or_else(|| format!("--ready-line {name}: no --peer or --raw-peer {name}"))?;
            p.ready_line = Some(text);
        }
        servers.extend(peers.into_iter().map(|p| ServerKind::External(Arc::new(p))));
        if servers.is_empty() {
            return Err("no server to run: --backends is empty and no peer is given".into());
        }
        let mut ws_generators = Vec::new();
        let mut raw_generator = None;
        for spec in &args.generator {
            let g = Generator::parse(spec)?;
            if g.raw() {
                if raw_generator.replace(g).is_some() {
                    return Err("--generator peerload=PATH is given twice".into());
                }
            } else if !ws_generators.contains(&g) {
                ws_generators.push(g);
            }
        }
        if ws_generators.is_empty() {
            ws_generators.push(Generator::Percore);
        }
        let raw_peers: Vec<&str> = servers
            .iter()
            .filter(|k| k.raw())
            .map(|k| k.name())
            .collect();
        match (&raw_generator, raw_peers.first()) {
            (None, Some(name)) => {
                return Err(format!(
                    "--raw-peer {name} needs --generator peerload=PATH: a raw TCP echo speaks no \
                     WebSocket (../shared/tools/floor/build.sh builds peerload)"
                ))
            }
            (Some(_), None) => {
                return Err(
                    "--generator peerload=PATH drives the --raw-peer servers and none is \
                     given; to drive the WebSocket servers with peerload, use \
                     --generator peerload-ws=PATH"
                        .into(),
                )
            }
            _ => {}
        }
        let scenarios = if args.cell.is_empty() {
            matrix()
        } else {
            args.cell
                .iter()
                .map(|c| parse_cell(c))
                .collect::<Result<_, _>>()?
        };
        let scenarios: Vec<Scenario> = match &args.scenarios {
            None => scenarios,
            Some(s) => {
                let wanted: Vec<String> = s.split(',').map(|x| x.trim().to_lowercase()).collect();
                scenarios
                    .into_iter()
                    .filter(|sc| {
                        wanted
                            .iter()
                            .any(|w| sc.name.to_lowercase().contains(w.as_str()))
                    })
                    .collect()
            }
        };
        if scenarios.is_empty() && args.idle.is_none() && args.open_loop.is_none() {
            return Err("--scenarios matches no scenario".into());
        }
        let open_loop = args
            .open_loop
            .as_deref()
            .map(open_loop::parse_percentages)
            .transpose()?;
        if open_loop.is_some() && args.open_loop_connections == 0 {
            return Err("--open-loop-connections must be at least 1".into());
        }
        Ok(Plan {
            servers,
            ws_generators,
            raw_generator,
            scenarios,
            open_loop,
        })
    }

    /// The generators that drive `kind`.
    pub fn generators_for(&self, kind: &ServerKind) -> Vec<Generator> {
        if kind.raw() {
            self.raw_generator.iter().cloned().collect()
        } else {
            self.ws_generators.clone()
        }
    }
}

/// Run `percore load` pinned to `cpu` against `servers` (connections spread round robin) and
/// parse its JSON summary.
fn run_load(servers: &[ServerProc], cpu: usize, extra: &[String]) -> Result<Summary, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let urls: Vec<String> = servers
        .iter()
        .map(|s| match &s.tls_ca {
            // The certificate names localhost (and 127.0.0.1).
            Some(_) => format!("wss://localhost:{}/", s.port()),
            None => format!("ws://{}/", s.addr),
        })
        .collect();
    let pids: Vec<String> = servers.iter().map(|s| s.pid().to_string()).collect();
    let mut cmd = Command::new(exe);
    cmd.arg("load")
        .args(["--url", &urls.join(",")])
        .args(["--json", "--quiet", "--cpu", &cpu.to_string()])
        .args(["--server-pid", &pids.join(",")])
        .args(extra)
        .args(
            servers
                .iter()
                .find_map(|s| s.tls_ca.as_ref())
                .map(|ca| vec!["--tls-ca".into(), ca.display().to_string()])
                .unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    sys::guarded(&mut cmd, &[cpu]);
    let out = cmd.output().map_err(|e| format!("percore load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| format!("percore load output ({e}): {text:?}"))
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

fn empty_row(kind: &ServerKind, g: &Generator, scenario: &str, note: String) -> Row {
    Row::empty(kind.name(), kind.backend(), g.label(), scenario, note)
}

/// One run of one cell: a fresh server, the generator, one row. `rate`: open loop
/// (percore load only).
fn run_cell(
    args: &BenchArgs,
    kind: &ServerKind,
    g: &Generator,
    sc: &Scenario,
    duration: f64,
    rate: Option<f64>,
) -> Row {
    let server = match ServerProc::start(kind, args.server_cpu, sc.broadcast) {
        Ok(s) => s,
        Err(e) => return empty_row(kind, g, &sc.name, e),
    };
    if *g != Generator::Percore {
        return generator::run(g, kind, &server, sc, duration, args.load_cpu)
            .unwrap_or_else(|e| empty_row(kind, g, &sc.name, e));
    }
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
    } else if let Some(r) = rate {
        extra.extend(["--rate".into(), r.to_string()]);
    }
    match run_load(std::slice::from_ref(&server), args.load_cpu, &extra) {
        Ok(s) => Row {
            server: kind.name().to_string(),
            backend: kind.backend().to_string(),
            generator: g.label().to_string(),
            scenario: sc.name.clone(),
            connections: s.connections,
            msgs_per_s: s.msgs_per_s,
            cpu_us_per_msg: s.server_cpu_us_per_msg,
            p50_us: Some(s.p50_us),
            p99_us: Some(s.p99_us),
            p999_us: Some(s.p999_us),
            max_us: Some(s.max_us),
            rss_kb: s.server_rss_kb,
            load_cpu_us_per_msg: s.client_cpu_us_per_msg,
            errors: s.errors,
            offered_per_s: None,
            load_pct: None,
            note: open_loop_note(&s),
        },
        Err(e) => empty_row(kind, g, &sc.name, e),
    }
}

/// What an open-loop run's figures need said: unanswered messages, the generator's own lag.
fn open_loop_note(s: &Summary) -> Option<String> {
    s.rate?;
    let mut parts = Vec::new();
    if let Some(lag) = s.send_lag_p99_us {
        parts.push(format!("generator send lag p99 {lag} µs"));
    }
    if s.unanswered > 0 {
        parts.push(format!("{} unanswered", s.unanswered));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Say on stderr which cell runs (not under --json).
fn announce(args: &BenchArgs, kind: &ServerKind, g: &Generator, sc: &Scenario, round: usize) {
    if !args.json {
        eprintln!(
            "percore bench: {} / {} / {} / {} (run {})",
            kind.name(),
            kind.backend(),
            g.label(),
            sc.name,
            round + 1
        );
    }
}

/// The matrix: every cell for every (server, generator) lane, lanes alternating within each
/// repetition, medians over the repetitions.
fn run_matrix(args: &BenchArgs, plan: &Plan, duration: f64) -> Vec<Row> {
    let broadcast = serve_has_broadcast();
    let lanes: Vec<(ServerKind, Generator)> = plan
        .servers
        .iter()
        .flat_map(|k| {
            plan.generators_for(k)
                .into_iter()
                .map(move |g| (k.clone(), g))
        })
        .collect();
    let mut rows = Vec::new();
    for sc in &plan.scenarios {
        let skip: Vec<Option<String>> = lanes
            .iter()
            .map(|(k, g)| {
                if sc.broadcast && k.percore() && !broadcast {
                    return Some("skipped: percore serve has no broadcast mode yet".into());
                }
                if k.raw() && sc.broadcast {
                    return Some("skipped: raw echo".into());
                }
                g.cannot(sc, k)
            })
            .collect();
        // Runs of each lane, alternating: A B C, A B C, ...
        let mut runs: Vec<Vec<Row>> = vec![Vec::new(); lanes.len()];
        for round in 0..args.repeat.max(1) {
            for (i, (kind, g)) in lanes.iter().enumerate() {
                if let Some(why) = &skip[i] {
                    if round == 0 {
                        runs[i].push(empty_row(kind, g, &sc.name, why.clone()));
                    }
                    continue;
                }
                if runs[i].first().is_some_and(|r| !r.measured()) {
                    // The first run failed: the others would too.
                    continue;
                }
                announce(args, kind, g, sc, round);
                runs[i].push(run_cell(args, kind, g, sc, duration, None));
            }
        }
        rows.extend(runs.iter().filter_map(|r| median_row(r)));
    }
    rows
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

/// Where `--save` writes: PREFIX as given, or DIR/bench for a directory.
pub fn save_prefix(save: &Path) -> Result<PathBuf, String> {
    let as_dir = save.is_dir() || save.as_os_str().to_string_lossy().ends_with('/');
    if as_dir {
        std::fs::create_dir_all(save).map_err(|e| format!("{}: {e}", save.display()))?;
        Ok(save.join("bench"))
    } else {
        Ok(save.to_path_buf())
    }
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut p = prefix.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Write PREFIX.md (with command, date, machine and the charts), PREFIX.csv, PREFIX.json and
/// the SVG charts; returns the files written.
pub fn save(save: &Path, rows: &[Row], title: &str, repeat: usize) -> Result<Vec<PathBuf>, String> {
    let prefix = save_prefix(save)?;
    let cmd: Vec<String> = std::env::args().map(|a| shell_quote(&a)).collect();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let runs = if repeat > 1 {
        format!("Medians of {repeat} runs, servers alternating.")
    } else {
        "One run.".to_string()
    };
    let charts = charts::render_all(rows)?;
    let mut written = Vec::new();
    let mut chart_md = String::new();
    for c in &charts {
        let path = with_suffix(&prefix, c.suffix);
        std::fs::write(&path, &c.svg).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        chart_md += &format!("\n![{}]({file})\n", c.title);
        written.push(path);
    }
    let md = format!(
        "# {title}\n\n- command: `{}`\n- date: {date}\n- machine: {}\n\n\
         {runs} On a shared host absolute figures move from run to run: compare servers by\n\
         the ratios inside this table, and by server CPU µs/message more than by msgs/s.\n\
         Method and columns: bench/README.md.\n\n{}{chart_md}",
        cmd.join(" "),
        machine(),
        markdown(rows)
    );
    let json = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
    for (ext, text) in [(".md", md), (".csv", csv(rows)), (".json", json + "\n")] {
        let path = with_suffix(&prefix, ext);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Server RSS empty and with `n` idle connections, for each server.
fn idle(args: &BenchArgs, plan: &Plan, n: u32) -> Vec<Row> {
    let g = Generator::Percore;
    let mut rows = Vec::new();
    for kind in &plan.servers {
        // io_uring direct descriptors: one process, past RLIMIT_NOFILE (extra rings per shard).
        let direct = matches!(kind, ServerKind::Percore(b) if b == "uring");
        let k = args
            .idle_servers
            .unwrap_or_else(|| {
                if direct {
                    1
                } else {
                    n.div_ceil(18_000) as usize
                }
            })
            .max(1);
        let extra: Vec<String> = if direct {
            let per = n.div_ceil(k as u32) as usize + 1000;
            vec![
                "--direct-fds".into(),
                "--connections-max".into(),
                per.to_string(),
                "--recv-buffer-bytes".into(),
                "4096".into(),
                "--recv-buffers".into(),
                "64".into(),
            ]
        } else {
            Vec::new()
        };
        let name = if k == 1 {
            format!("idle {n}")
        } else {
            format!("idle {n} ({k} processes)")
        };
        if kind.raw() {
            rows.push(empty_row(
                kind,
                &g,
                &name,
                "skipped: raw TCP; idle connections are WebSocket (answering pings)".into(),
            ));
            continue;
        }
        let servers: Result<Vec<ServerProc>, String> = (0..k)
            .map(|_| ServerProc::start_with(kind, args.server_cpu, false, &extra))
            .collect();
        let servers = match servers {
            Ok(s) => s,
            Err(e) => {
                rows.push(empty_row(kind, &g, &name, e));
                continue;
            }
        };
        std::thread::sleep(Duration::from_millis(200));
        let empty: u64 = servers
            .iter()
            .map(|s| sys::process_tree_rss_kb(s.pid()).unwrap_or(0))
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
                    connections: s.connections,
                    rss_kb: s.server_rss_kb,
                    errors: s.errors,
                    note: Some(format!(
                        "RSS empty {:.1} MiB, {:.0} bytes/connection, connected in {:.2} s, {} open at end",
                        empty as f64 / 1024.0,
                        per,
                        s.connect_s,
                        s.open_at_end
                    )),
                    ..Row::empty(kind.name(), kind.backend(), g.label(), &name, String::new())
                });
            }
            Err(e) => rows.push(empty_row(kind, &g, &name, e)),
        }
    }
    rows
}

/// Run `percore bench`; returns the exit code.
pub fn main(args: BenchArgs) -> i32 {
    let (rows, title) = if let Some(file) = &args.from_json {
        let rows = std::fs::read_to_string(file)
            .map_err(|e| format!("{}: {e}", file.display()))
            .and_then(|t| {
                serde_json::from_str::<Vec<Row>>(&t)
                    .map_err(|e| format!("{}: not a saved result set: {e}", file.display()))
            });
        match rows {
            Ok(r) => (r, format!("percore bench (from {})", file.display())),
            Err(e) => {
                eprintln!("percore bench: {e}");
                return 2;
            }
        }
    } else {
        let plan = match Plan::new(&args) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("percore bench: {e}");
                return 2;
            }
        };
        if args.compare {
            if let Err(e) = server::ensure_peers() {
                eprintln!("percore bench: {e}");
                return 1;
            }
        }
        let duration = if args.quick { 1.0 } else { args.duration };
        if let Some(n) = args.idle {
            (idle(&args, &plan, n), format!("percore bench --idle {n}"))
        } else if let Some(pcts) = &plan.open_loop {
            (
                open_loop::run(&args, &plan.servers, pcts, duration),
                "percore bench --open-loop".to_string(),
            )
        } else {
            (
                run_matrix(&args, &plan, duration),
                "percore bench".to_string(),
            )
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&rows).unwrap_or_default());
    } else {
        print!("{}", table(&rows));
    }
    if let Some(dir) = &args.save {
        match save(dir, &rows, &title, args.repeat) {
            Ok(files) if !args.json => {
                for f in files {
                    eprintln!("percore bench: wrote {}", f.display());
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("percore bench: saving results: {e}");
                return 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: BenchArgs,
        }
        let mut v = vec!["bench"];
        v.extend_from_slice(extra);
        <P as clap::Parser>::try_parse_from(v).unwrap().a
    }

    #[test]
    fn saved_command_lines_quote_words_with_spaces_or_nothing() {
        assert_eq!(shell_quote("--scenarios"), "--scenarios");
        assert_eq!(shell_quote("echo 100"), "'echo 100'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn peers_run_only_with_compare() {
        let mut a = args(&["--backends", "epoll, uring"]);
        assert_eq!(
            Plan::new(&a).unwrap().servers,
            vec![
                ServerKind::Percore("epoll".into()),
                ServerKind::Percore("uring".into())
            ]
        );
        a.compare = true;
        assert_eq!(Plan::new(&a).unwrap().servers.len(), 4);
    }

    #[test]
    fn the_matrix_has_the_large_message_cells() {
        let names: Vec<String> = matrix().into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "echo 100 x 20 B",
                "echo 1k x 20 B",
                "echo 10k x 20 B",
                "echo 100 x 16 KiB",
                "echo 100 x 64 KiB",
                "echo 10 x 1 MiB",
                "broadcast 1 -> 1k"
            ]
        );
    }

    #[test]
    fn cells_are_connections_times_size() {
        assert_eq!(parse_cell("10x20").unwrap(), Scenario::echo(10, 20));
        assert_eq!(parse_cell("1kx20").unwrap().connections, 1000);
        assert_eq!(parse_cell("4x64KiB").unwrap().size, 64 << 10);
        assert_eq!(parse_cell("2 x 1MiB").unwrap().size, 1 << 20);
        assert_eq!(parse_cell("10x1MiB").unwrap().name, "echo 10 x 1 MiB");
        assert_eq!(parse_cell("1500x1500").unwrap().name, "echo 1.5k x 1500 B");
        for bad in [
            "10",
            "x20",
            "10x",
            "0x20",
            "10x0",
            "10xabc",
            "-1x20",
            "99999999999x20",
        ] {
            assert!(parse_cell(bad).is_err(), "{bad}");
        }
        let a = args(&["--cell", "10x20,4x64KiB"]);
        assert_eq!(Plan::new(&a).unwrap().scenarios.len(), 2);
    }

    #[test]
    fn peers_and_generators_resolve_into_lanes() {
        let a = args(&[
            "--backends",
            "epoll",
            "--peer",
            "uwebsockets=/bin/sh {port} echo none",
            "--raw-peer",
            "rawecho=/bin/sh {port}",
            "--generator",
            "load_test=/bin/sh",
            "--generator",
            "peerload=/bin/sh",
            "--ready-line",
            "uwebsockets=listening",
        ]);
        let p = Plan::new(&a).unwrap();
        let names: Vec<&str> = p.servers.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["percore", "uwebsockets", "rawecho"]);
        assert_eq!(
            p.generators_for(&p.servers[1]),
            [Generator::LoadTest("/bin/sh".into())]
        );
        assert_eq!(
            p.generators_for(&p.servers[2]),
            [Generator::PeerloadRaw("/bin/sh".into())]
        );
        match &p.servers[1] {
            ServerKind::External(e) => assert_eq!(e.ready_line.as_deref(), Some("listening")),
            k => panic!("{k:?}"),
        }
        // Two WebSocket generators: each WebSocket server gets rows from both.
        let a = args(&[
            "--generator",
            "percore",
            "--generator",
            "peerload-ws=/bin/sh",
        ]);
        assert_eq!(Plan::new(&a).unwrap().ws_generators.len(), 2);
    }

    #[test]
    fn inconsistent_plans_are_refused_with_the_fix() {
        let e = |v: &[&str]| Plan::new(&args(v)).unwrap_err();
        assert!(e(&["--raw-peer", "r=/bin/sh {port}"]).contains("--generator peerload=PATH"));
        assert!(e(&["--generator", "peerload=/bin/sh"]).contains("peerload-ws"));
        assert!(e(&["--peer", "a=/bin/sh {port}", "--peer", "a=/bin/sh {port}"]).contains("two"));
        let fws = "fastwebsockets=/bin/sh {port}";
        assert!(e(&["--compare", "--peer", fws]).contains("two servers"));
        assert!(Plan::new(&args(&["--peer", fws])).is_ok());
        assert!(e(&["--ready-line", "nobody=x"]).contains("no --peer"));
        assert!(e(&["--backends", ""]).contains("no server"));
        assert!(e(&["--scenarios", "nothing-like-this"]).contains("matches no"));
        assert!(e(&["--open-loop", "0"]).contains("(0, 200]"));
        assert!(e(&["--open-loop", "50", "--idle", "10"]).contains("separate"));
        assert!(e(&["--repeat", "0"]).contains("--repeat"));
        assert!(e(&["--generator", "load_test=/no/such/load_test"]).contains("no such file"));
    }

    #[test]
    fn labels_read_like_the_scenario_names() {
        assert_eq!(count_label(100), "100");
        assert_eq!(count_label(10_000), "10k");
        assert_eq!(count_label(1_500), "1.5k");
        assert_eq!(count_label(1_234), "1234");
        assert_eq!(count_label(2_000_000), "2M");
        assert_eq!(size_label(20), "20 B");
        assert_eq!(size_label(16 << 10), "16 KiB");
        assert_eq!(size_label(1 << 20), "1 MiB");
        assert_eq!(size_label(1500), "1500 B");
    }
}
