//! `percore serve` child processes for the soak and the storm: started on a free port, watched
//! (alive? RSS?), stopped with SIGTERM, their last stderr lines kept.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sys;

/// Stderr lines kept per server.
const STDERR_LINES: usize = 40;

/// A running `percore serve`.
pub struct ServerProc {
    /// What it serves ("echo", "broadcast").
    pub role: &'static str,
    /// Its process id.
    pub pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// How it ended, once it did.
    pub exit: Option<ExitStatus>,
}

impl ServerProc {
    /// Start `percore serve --addr 127.0.0.1:0 --backend BACKEND --mode ROLE
    /// --keep-startup-pages ARGS...` (this executable) and wait until it listens. The child dies
    /// with this process. Its start-up code pages stay resident, as before `percore serve`
    /// dropped them by default: code first run late in a soak (a rare close path) would
    /// otherwise come back 64 KiB at a time and read as RSS growth that no buffer explains.
    pub fn start(backend: &str, role: &'static str, args: &[String]) -> Result<ServerProc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--backend",
            backend,
            "--mode",
            role,
            "--keep-startup-pages",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        sys::guarded(&mut cmd, &[]);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting percore serve: {e}"))?;
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            let keep = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut k) = keep.lock() {
                        if k.len() == STDERR_LINES {
                            k.pop_front();
                        }
                        k.push_back(line);
                    }
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut s = ServerProc {
            role,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            stderr,
            exit: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let Some(rest) = line.strip_prefix("listening on ") else {
                        continue;
                    };
                    let mut it = rest.split_whitespace();
                    let addr = it.next().and_then(|a| a.parse().ok());
                    let running = it.next().and_then(|b| b.strip_prefix("backend="));
                    match (addr, running) {
                        (Some(a), Some(b)) if b == backend => {
                            s.addr = a;
                            return Ok(s);
                        }
                        _ => {
                            s.stop(Duration::from_secs(5));
                            return Err(format!("percore serve --backend {backend}: {line}"));
                        }
                    }
                }
                Err(_) if s.alive() && Instant::now() < deadline => {}
                Err(_) => {
                    s.stop(Duration::from_secs(5));
                    return Err(format!(
                        "percore serve --backend {backend} --mode {role} did not start: {}",
                        s.stderr_tail(5).join(" | ")
                    ));
                }
            }
        }
    }

    /// Whether the process is still running (records its exit status when it is not).
    pub fn alive(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.exit = Some(st);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Resident set size now, KiB.
    pub fn rss_kb(&self) -> Option<u64> {
        sys::process_rss_kb(self.pid)
    }

    /// SIGTERM (graceful shutdown), then SIGKILL if it is still running after `grace`.
    /// Returns true when it exited by itself within `grace`.
    pub fn stop(&mut self, grace: Duration) -> bool {
        if !self.alive() {
            return true;
        }
        sys::terminate(self.pid);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
        false
    }

    /// The last `n` lines the server wrote on stderr.
    pub fn stderr_tail(&self, n: usize) -> Vec<String> {
        // The reader thread may still be taking the last lines after an exit.
        std::thread::sleep(Duration::from_millis(20));
        let k = self.stderr.lock().map(|k| k.clone()).unwrap_or_default();
        k.iter().skip(k.len().saturating_sub(n)).cloned().collect()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
