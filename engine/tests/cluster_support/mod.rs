//! Shared pieces of the cluster tests: a `nats-server` of their own (found on this machine,
//! started on a free port with a temporary configuration, killed when dropped, even on a
//! panic), a minimal NATS client that speaks the protocol by hand (to watch the broker and to
//! publish as a foreign service would), a command-driven handler, and servers joined to the
//! broker.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use percore::{Backend, ClusterConfig, ClusterStats, Conn, Decision, Handler, Message, Request};
use percore::{Server, ServerHandle, Shards, Upgrade};

/// Bound for every wait in these tests (never a speed assertion).
pub const WAIT: Duration = Duration::from_secs(20);

/// Where `nats-server` is: `$PERCORE_NATS_SERVER`, Debian's `/usr/sbin` or `/usr/bin`, or the
/// `PATH`. `None` when missing, which skips the test unless `PERCORE_REQUIRE_NATS=1`
/// (`scripts/test.sh` installs the package and sets it).
pub fn nats_binary() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("PERCORE_NATS_SERVER") {
        candidates.push(p.into());
    }
    candidates.push("/usr/sbin/nats-server".into());
    candidates.push("/usr/bin/nats-server".into());
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    let found = candidates.into_iter().find(|p| p.is_file());
    if found.is_none() && std::env::var("PERCORE_REQUIRE_NATS").as_deref() == Ok("1") {
        panic!("PERCORE_REQUIRE_NATS=1 but nats-server is not installed");
    }
    found
}

/// Skip the calling test (print why and return) when `nats-server` is missing.
#[macro_export]
macro_rules! nats_or_skip {
    () => {
        match $crate::cluster_support::nats_binary() {
            Some(bin) => bin,
            None => {
                eprintln!("SKIP: nats-server is not installed (apt-get install nats-server)");
                return;
            }
        }
    };
}

/// A `nats-server` of the test's own on 127.0.0.1. Dropping it kills the process.
pub struct Nats {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Nats {
    /// Start one on a free port; `max_payload` bytes (NATS' default is 1 MiB).
    pub fn start(bin: PathBuf, max_payload: usize) -> Self {
        Self::start_on(bin, free_port(), max_payload)
    }

    /// Start one on `port`.
    pub fn start_on(bin: PathBuf, port: u16, max_payload: usize) -> Self {
        let dir = std::env::temp_dir().join(format!("percore-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = format!("host: 127.0.0.1\nport: {port}\nmax_payload: {max_payload}\n");
        std::fs::write(dir.join("nats.conf"), conf).expect("write nats.conf");
        let mut n = Self {
            bin,
            dir,
            port,
            child: None,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("nats.log")).expect("log file");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let until = Instant::now() + WAIT;
        while Instant::now() < until {
            if let Ok(mut s) = TcpStream::connect(self.addr()) {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut b = [0u8; 5];
                if s.read_exact(&mut b).is_ok() && &b == b"INFO " {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "nats-server did not listen on {} within {WAIT:?}",
            self.addr()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr())
    }

    /// Kill it (SIGKILL: no goodbye to the clients) and wait until the port is closed.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

/// A NATS client written against the protocol text (nothing from percore or its client).
pub struct RawNats {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl RawNats {
    /// Connect (headers on, echo on) and wait for the server's PONG.
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect to nats");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let w = s.try_clone().unwrap();
        let mut c = Self {
            r: BufReader::new(s),
            w,
        };
        let info = c.line();
        assert!(info.starts_with("INFO "), "{info}");
        c.send(b"CONNECT {\"verbose\":false,\"headers\":true,\"protocol\":1}\r\n");
        c.ping();
        c
    }

    /// Write raw protocol bytes (no round trip).
    pub fn send(&mut self, b: &[u8]) {
        self.w.write_all(b).expect("write to nats");
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read from nats");
        l.trim_end().to_owned()
    }

    /// PING, and wait for the PONG: everything sent before has been processed.
    pub fn ping(&mut self) {
        self.send(b"PING\r\n");
        loop {
            let l = self.line();
            if l == "PONG" {
                return;
            }
            assert!(!l.starts_with("-ERR"), "{l}");
        }
    }

    pub fn subscribe(&mut self, subject: &str, sid: u32) {
        self.send(format!("SUB {subject} {sid}\r\n").as_bytes());
        self.ping();
    }

    pub fn publish(&mut self, subject: &str, payload: &[u8]) {
        self.send(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
        self.send(payload);
        self.send(b"\r\n");
        self.ping();
    }

    /// HPUB with one header.
    pub fn publish_with_header(&mut self, subject: &str, header: &str, payload: &[u8]) {
        let h = format!("NATS/1.0\r\n{header}\r\n\r\n");
        let total = h.len() + payload.len();
        self.send(format!("HPUB {subject} {} {total}\r\n", h.len()).as_bytes());
        self.send(h.as_bytes());
        self.send(payload);
        self.send(b"\r\n");
        self.ping();
    }

    /// Count the messages that arrive until there are `n` (or more), or [`WAIT`] has passed.
    pub fn count_until(&mut self, n: usize) -> usize {
        let until = Instant::now() + WAIT;
        let mut got = 0;
        while got < n && Instant::now() < until {
            got += self.count_messages();
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    /// Count the messages (MSG and HMSG) that arrive until a PING round trip completes.
    pub fn count_messages(&mut self) -> usize {
        self.send(b"PING\r\n");
        let mut n = 0;
        loop {
            let l = self.line();
            let f: Vec<&str> = l.split(' ').collect();
            match f[0] {
                "PONG" => return n,
                "PING" => self.send(b"PONG\r\n"),
                "MSG" | "HMSG" => {
                    let size: usize = f.last().unwrap().parse().unwrap();
                    let mut body = vec![0u8; size + 2];
                    self.r.read_exact(&mut body).unwrap();
                    n += 1;
                }
                other => panic!("unexpected from nats: {other} ({l})"),
            }
        }
    }
}

/// Handler of the cluster tests. A request path `/t/A,B` subscribes the connection to topics `A`
/// and `B` on open. Text commands: `pub T payload` (answers `err ...` when refused),
/// `pubb T payload` (binary), `sub T` / `unsub T` (answer `ok true`/`ok false`).
pub struct App;

impl Handler for App {
    type State = String;

    fn on_upgrade(&mut self, req: &Request, up: Upgrade<String>) -> Decision<String> {
        up.accept(req.path().to_owned())
    }

    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        let path = std::mem::take(conn.state_mut());
        if let Some(topics) = path.strip_prefix("/t/") {
            for t in topics.split(',').filter(|t| !t.is_empty()) {
                conn.subscribe(t).expect("subscribe");
            }
        }
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, msg: Message<'_>) {
        let Message::Text(cmd) = msg else {
            return;
        };
        let mut parts = cmd.splitn(3, ' ');
        let verb = parts.next().unwrap_or("");
        let topic = parts.next().unwrap_or("");
        let payload = parts.next().unwrap_or("");
        let r = match verb {
            "pub" => conn.publish(topic, Message::Text(payload)),
            "pubb" => conn.publish(topic, Message::Binary(payload.as_bytes())),
            "sub" => conn.subscribe(topic).map(|b| {
                let _ = conn.send_text(&format!("ok {b}"));
            }),
            "unsub" => {
                let r = format!("ok {}", conn.unsubscribe(topic));
                let _ = conn.send_text(&r);
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = r {
            let _ = conn.send_text(&format!("err {e}"));
        }
    }
}

/// A server on `backend` (`shards` shards, port 0) in the cluster of `nats`.
pub fn server(backend: Backend, shards: usize, nats_url: &str) -> ServerHandle {
    server_with(
        backend,
        shards,
        ClusterConfig::new(nats_url).reconnect_delay_max(Duration::from_millis(100)),
    )
}

/// [`server`] with an explicit cluster configuration.
pub fn server_with(backend: Backend, shards: usize, cluster: ClusterConfig) -> ServerHandle {
    let s = Server::builder()
        .bind("127.0.0.1:0")
        .shards(Shards::Count(shards))
        .pin(false)
        .backend(backend)
        .close_timeout(Duration::from_secs(2))
        .cluster(cluster)
        .start(|_| App)
        .unwrap_or_else(|e| panic!("server did not start on {backend:?}: {e}"));
    assert_eq!(s.backend(), backend);
    s
}

/// Poll every 5 ms until `f` is true; panics with `what` and the last stats after [`WAIT`].
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The cluster counters of `s`.
pub fn cluster(s: &ServerHandle) -> ClusterStats {
    s.stats().cluster
}

/// Wait until `s` is connected with `subjects` subscriptions confirmed by the broker and
/// `subscriptions` local subscriptions.
pub fn wait_ready(s: &ServerHandle, subscriptions: u64, subjects: u64) {
    let until = Instant::now() + WAIT;
    loop {
        let st = s.stats();
        if st.subscriptions == subscriptions
            && st.cluster.connected == 1
            && st.cluster.subjects == subjects
        {
            return;
        }
        assert!(
            Instant::now() < until,
            "server {} not ready (want {subscriptions} subscriptions, {subjects} subjects): {st:?}",
            s.local_addr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A subscriber's messages, read on a thread of its own: each payload `P:J` (publisher P, its
/// J-th message) with the topic it came from (J even: `a`, odd: `b`).
pub struct Reader {
    got: std::sync::Arc<std::sync::Mutex<Vec<(usize, usize)>>>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    /// Read `ws` until [`Reader::finish`]; panics on anything but `P:J` text messages.
    pub fn spawn(mut ws: crate::pubsub_support::Client) -> Self {
        use std::sync::atomic::Ordering;
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, d) = (got.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            ws.get_mut()
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            loop {
                match crate::pubsub_support::read(&mut ws) {
                    Ok(tungstenite::Message::Text(t)) => {
                        let (p, j) = t.split_once(':').expect("P:J");
                        g.lock()
                            .unwrap()
                            .push((p.parse().unwrap(), j.parse().unwrap()));
                    }
                    Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => {}
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if d.load(Ordering::Acquire) {
                            return;
                        }
                    }
                    Err(e) => panic!("subscriber read failed: {e}"),
                }
            }
        });
        Self {
            got,
            done,
            thread: Some(thread),
        }
    }

    /// Messages read so far.
    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Has message `j` of publisher `p` been read?
    pub fn has(&self, p: usize, j: usize) -> bool {
        self.got.lock().unwrap().contains(&(p, j))
    }

    /// Stop once nothing has arrived for 300 ms (see [`Reader::finish`]).
    pub fn stop(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
    }

    /// [`Reader::stop`], and wait: every message read, in order.
    pub fn finish(mut self) -> Vec<(usize, usize)> {
        self.stop();
        if let Some(t) = self.thread.take() {
            t.join().expect("reader thread");
        }
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

/// The topic of message `j` of a publisher.
pub fn topic_of(j: usize) -> &'static str {
    if j.is_multiple_of(2) {
        "a"
    } else {
        "b"
    }
}

/// For each publisher in `0..publishers` and each of `topics`: the message numbers `got` holds,
/// in the order they came. Panics if one arrives twice or out of its publisher's order.
pub fn streams(got: &[(usize, usize)], publishers: usize, topics: &[&str]) -> Vec<Vec<Vec<usize>>> {
    let mut out = vec![vec![Vec::new(); topics.len()]; publishers];
    for &(p, j) in got {
        let t = topics
            .iter()
            .position(|&t| t == topic_of(j))
            .unwrap_or_else(|| panic!("message {p}:{j} of topic {} not subscribed", topic_of(j)));
        let s: &mut Vec<usize> = &mut out[p][t];
        if let Some(&last) = s.last() {
            assert!(
                j > last,
                "publisher {p} topic {}: {j} after {last}",
                topics[t]
            );
        }
        s.push(j);
    }
    out
}
