//! The servers under test and their processes: `percore serve`, the built-in peers of
//! bench/peers, and external servers (`--peer`, `--raw-peer`). Every one is started through
//! `percore exec`, restricted to the server CPU before it replaces itself with the server (so
//! every thread and child it creates stays there) and killed if this process dies.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::peer::{self, ExternalPeer};
use crate::sys;

/// A server under test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// `percore serve --backend B`.
    Percore(String),
    /// `percore serve --backend B --tls-cert … --tls-key …`, driven over wss:// (`--tls`); the
    /// second string is its backend column (`B wss`).
    PercoreTls(String, String),
    /// A peer binary from bench/peers.
    Peer(&'static str),
    /// A server declared with `--peer` or `--raw-peer`.
    External(Arc<ExternalPeer>),
}

impl ServerKind {
    /// Name of its rows.
    pub fn name(&self) -> &str {
        match self {
            ServerKind::Percore(_) | ServerKind::PercoreTls(..) => "percore",
            ServerKind::Peer(p) => p,
            ServerKind::External(p) => &p.name,
        }
    }

    /// Backend column of its rows.
    pub fn backend(&self) -> &str {
        match self {
            ServerKind::Percore(b) => b,
            ServerKind::PercoreTls(_, label) => label,
            ServerKind::Peer(_) => "tokio/epoll",
            ServerKind::External(p) if p.raw => "raw tcp",
            ServerKind::External(_) => "external",
        }
    }

    /// Speaks raw TCP (no WebSocket).
    pub fn raw(&self) -> bool {
        matches!(self, ServerKind::External(p) if p.raw)
    }

    /// A percore server, plain or TLS.
    pub fn percore(&self) -> bool {
        matches!(self, ServerKind::Percore(_) | ServerKind::PercoreTls(..))
    }

    /// The TLS lane of percore backend `b`.
    pub fn percore_tls(b: &str) -> ServerKind {
        ServerKind::PercoreTls(b.to_string(), format!("{b} wss"))
    }
}

/// The test CA and server certificate the TLS lanes use (made once per run, in a temporary
/// directory of this process; `percore cert` makes the same).
pub fn tls_files() -> Result<&'static Path, String> {
    static DIR: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("percore-bench-tls-{}", std::process::id()));
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        crate::cert::make(&names, 2).and_then(|p| crate::cert::write(&dir, &p))?;
        Ok(dir)
    })
    .as_deref()
    .map_err(Clone::clone)
}

/// Peers: (display name, binary name).
pub const PEERS: &[(&str, &str)] = &[
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
pub fn ensure_peers() -> Result<(), String> {
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

/// How long a server may take to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Output lines kept to explain a failed start.
const KEPT_LINES: usize = 4;

/// A server child process, stopped (SIGTERM to it and its descendants, then SIGKILL) when
/// dropped.
pub struct ServerProc {
    child: Child,
    /// HOST:PORT it listens on.
    pub addr: String,
    /// wss://: the CA to verify it with.
    pub tls_ca: Option<PathBuf>,
}

/// The last lines a child printed (stdout and stderr), and whether a wanted line was seen.
#[derive(Default)]
struct Output {
    last: VecDeque<String>,
    first_stdout: Option<String>,
    ready_seen: bool,
}

impl Output {
    fn last_line(&self) -> String {
        self.last.back().cloned().unwrap_or_default()
    }
}

/// Read `r` line by line into `out` until EOF (a server never blocks on a full pipe);
/// `first` sends the first line, `ready` is the text that marks readiness.
fn drain(
    r: impl Read + Send + 'static,
    out: Arc<Mutex<Output>>,
    is_stdout: bool,
    ready: Option<String>,
    first: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        let mut first = first;
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if let Some(tx) = first.take() {
                let _ = tx.send(line.clone());
            }
            if let Ok(mut o) = out.lock() {
                if ready.as_deref().is_some_and(|t| line.contains(t)) {
                    o.ready_seen = true;
                }
                if is_stdout && o.first_stdout.is_none() {
                    o.first_stdout = Some(line.clone());
                }
                if o.last.len() == KEPT_LINES {
                    o.last.pop_front();
                }
                o.last.push_back(line);
            }
        }
    });
}

impl ServerProc {
    /// Start `kind` on `cpu` and wait until it is ready.
    pub fn start(kind: &ServerKind, cpu: usize, broadcast: bool) -> Result<ServerProc, String> {
        Self::start_with(kind, cpu, broadcast, &[])
    }

    /// [`ServerProc::start`] with more `percore serve` arguments (ignored by other servers).
    pub fn start_with(
        kind: &ServerKind,
        cpu: usize,
        broadcast: bool,
        extra: &[String],
    ) -> Result<ServerProc, String> {
        match kind {
            ServerKind::External(p) => Self::start_external(p, cpu),
            _ => Self::start_builtin(kind, cpu, broadcast, extra),
        }
    }

    fn start_builtin(
        kind: &ServerKind,
        cpu: usize,
        broadcast: bool,
        extra: &[String],
    ) -> Result<ServerProc, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        let mut tls_ca = None;
        match kind {
            ServerKind::Percore(backend) | ServerKind::PercoreTls(backend, _) => {
                cmd.args([
                    "serve",
                    "--addr",
                    "127.0.0.1:0",
                    "--no-pin",
                    "--shards",
                    "1",
                ])
                .args(["--backend", backend, "--shutdown-grace-secs", "1"]);
                if broadcast {
                    cmd.args(["--mode", "broadcast"]);
                }
                if matches!(kind, ServerKind::PercoreTls(..)) {
                    let dir = tls_files()?;
                    cmd.arg("--tls-cert")
                        .arg(dir.join("cert.pem"))
                        .arg("--tls-key")
                        .arg(dir.join("key.pem"));
                    tls_ca = Some(dir.join("ca.pem"));
                }
                cmd.args(extra);
            }
            ServerKind::Peer(name) => {
                let bin = PEERS
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, b)| peer_binary(b))
                    .ok_or("unknown peer")?;
                cmd.arg("exec").arg(bin).args(["--addr", "127.0.0.1:0"]);
            }
            ServerKind::External(_) => unreachable!("external servers start in start_external"),
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        sys::guarded(&mut cmd, &[cpu]);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", kind.name()))?;
        let out = Arc::new(Mutex::new(Output::default()));
        let (tx, rx) = mpsc::channel();
        drain(
            child.stdout.take().ok_or("server stdout")?,
            out.clone(),
            true,
            None,
            Some(tx),
        );
        drain(
            child.stderr.take().ok_or("server stderr")?,
            out.clone(),
            false,
            None,
            None,
        );
        let mut proc = ServerProc {
            child,
            addr: String::new(),
            tls_ca,
        };
        // The first line says where it listens: "listening on ADDR ...".
        let line = rx.recv_timeout(START_TIMEOUT).map_err(|_| {
            // Give a failing server a moment to finish its message.
            std::thread::sleep(Duration::from_millis(100));
            let why = out.lock().map(|o| o.last_line()).unwrap_or_default();
            format!("{} did not start: {why}", kind.name())
        })?;
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .ok_or_else(|| format!("{}: unexpected first line {line:?}", kind.name()))?;
        if let ServerKind::Percore(b) | ServerKind::PercoreTls(b, _) = kind {
            if !line.contains(&format!("backend={b}")) {
                return Err(format!("asked for backend {b}, server says {line:?}"));
            }
        }
        proc.addr = addr.to_string();
        Ok(proc)
    }

    /// Start an external server on a free port. It is ready when a TCP connection to the port
    /// succeeds (or when it prints its ready line); a server that exits before that is tried
    /// again on another port (the port may have been taken meanwhile), three times at most.
    fn start_external(p: &ExternalPeer, cpu: usize) -> Result<ServerProc, String> {
        let mut why = String::new();
        for _ in 0..3 {
            let port = peer::free_port().map_err(|e| format!("finding a free port: {e}"))?;
            match Self::try_external(p, cpu, port) {
                Ok(s) => return Ok(s),
                Err((e, retry)) => {
                    why = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(why)
    }

    /// Err((why, worth retrying on another port)).
    fn try_external(p: &ExternalPeer, cpu: usize, port: u16) -> Result<ServerProc, (String, bool)> {
        let (program, args) = p.render(port);
        let exe = std::env::current_exe().map_err(|e| (e.to_string(), false))?;
        let mut cmd = Command::new(exe);
        cmd.arg("exec")
            .arg(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        sys::guarded(&mut cmd, &[cpu]);
        let mut child = cmd
            .spawn()
            .map_err(|e| (format!("starting {}: {e}", p.name), false))?;
        let out = Arc::new(Mutex::new(Output::default()));
        if let Some(o) = child.stdout.take() {
            drain(o, out.clone(), true, p.ready_line.clone(), None);
        }
        if let Some(e) = child.stderr.take() {
            drain(e, out.clone(), false, p.ready_line.clone(), None);
        }
        let mut proc = ServerProc {
            child,
            addr: format!("127.0.0.1:{port}"),
            tls_ca: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                let last = out.lock().map(|o| o.last_line()).unwrap_or_default();
                return Err((
                    format!(
                        "{} exited ({status}) before it was ready on {}: {last}",
                        p.name, proc.addr
                    ),
                    true,
                ));
            }
            let ready = match &p.ready_line {
                Some(_) => out.lock().map(|o| o.ready_seen).unwrap_or(false),
                None => std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200))
                    .is_ok(),
            };
            // Still alive after answering: it is the one listening (a server that lost the
            // port to another process exits instead).
            if ready && proc.child.try_wait().ok().flatten().is_none() {
                return Ok(proc);
            }
            if Instant::now() > deadline {
                let how = match &p.ready_line {
                    Some(t) => format!("printed no line containing {t:?}"),
                    None => format!("accepted no connection on {}", proc.addr),
                };
                let last = out.lock().map(|o| o.last_line()).unwrap_or_default();
                return Err((
                    format!(
                        "{} {how} within {} s (last output: {last:?})",
                        p.name,
                        START_TIMEOUT.as_secs()
                    ),
                    false,
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Process id (the server itself: `percore exec` replaced itself with it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Port it listens on.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let tree = sys::terminate_tree(self.child.id());
        // Its descendants, if it forked: stopped with it even if it does not stop them.
        let descendants = &tree[1.min(tree.len())..];
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                sys::kill_all(descendants);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sys::kill_all(descendants);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
