//! [`ResumeClient`]: a reconnecting client of the resume protocol on a thread of its own
//! (blocking sockets; one thread per client). It reconnects with exponential backoff and full
//! jitter, resumes every subscription from the last position seen, detects a dead path with
//! heartbeats, and reports [`Event`]s (connected, reconnecting in N ms, resumed, gap, reset,
//! messages). The protocol logic is [`Session`]; this file only moves bytes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::proto::{self, AppEvent, CloseCode, Connection, Endpoint, Message, Received, Settings};
use crate::resume::{Backoff, Beat, Command, Event, Heartbeat, Jitter, Session, PROTOCOL};

/// How often the client thread looks at its commands while waiting for input.
const TICK: Duration = Duration::from_millis(5);

/// Settings of a [`ResumeClient`] (from [`ResumeClient::builder`]).
#[derive(Clone, Debug)]
pub struct ResumeClientBuilder {
    addr: SocketAddr,
    host: Option<String>,
    path: String,
    headers: Vec<(String, String)>,
    topics: Vec<String>,
    backoff: Backoff,
    heartbeat: Heartbeat,
    connect_timeout: Duration,
    events_max: usize,
    seed: Option<u64>,
}

impl ResumeClientBuilder {
    /// Request path (default `/`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// `Host` header (default: the address).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// An extra request header (e.g. a token).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Subscribe to `topic` from the first connection on (repeatable).
    pub fn subscribe(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// The reconnect schedule (default [`Backoff::default`]: 500 ms base, 30 s cap, never
    /// give up).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The heartbeat (default [`Heartbeat::default`]: ping after 15 s of silence, dead after
    /// 10 s more).
    pub fn heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Longest time for the TCP connect plus the upgrade (default 10 s); past it the attempt
    /// counts as failed.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Events waiting for the application at most (default 65,536; at least 1). When the
    /// application falls this far behind, the client thread waits and stops reading its
    /// socket: the server's send-queue limit then applies, nothing is dropped here. Memory:
    /// this times an event (its payload plus ~80 bytes).
    pub fn events_max(mut self, n: usize) -> Self {
        self.events_max = n;
        self
    }

    /// Seed the jitter (reproducible schedules; default: from the operating system).
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Start the client thread; it connects at once.
    pub fn start(self) -> io::Result<ResumeClient> {
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ev_tx, ev_rx) = crossbeam_channel::bounded(self.events_max.max(1));
        let thread = std::thread::Builder::new()
            .name("percore-resume-client".into())
            .spawn(move || run(self, cmd_rx, ev_tx))?;
        Ok(ResumeClient {
            cmds: cmd_tx,
            events: ev_rx,
            thread: Some(thread),
        })
    }
}

/// What the application asks of the client thread.
enum Cmd {
    Subscribe(String),
    Send(String),
    Close,
}

/// A reconnecting resume-protocol client (see the module docs).
///
/// ```no_run
/// use percore::resume::{Backoff, Event};
/// use std::time::Duration;
///
/// let client = percore::ResumeClient::builder("127.0.0.1:9001".parse().unwrap())
///     .subscribe("prices")
///     .backoff(Backoff::new(Duration::from_millis(200), Duration::from_secs(10), None))
///     .start()?;
/// for ev in client.events() {
///     match ev {
///         Event::Message { topic, position, payload, .. } => {
///             println!("{topic} {position}: {}", String::from_utf8_lossy(&payload))
///         }
///         Event::Gap { topic, .. } | Event::Reset { topic, .. } => println!("resync {topic}"),
///         Event::Reconnecting { delay, .. } => println!("reconnecting in {delay:?}"),
///         _ => {}
///     }
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct ResumeClient {
    cmds: Sender<Cmd>,
    events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
}

impl ResumeClient {
    /// A client of the server at `addr`.
    pub fn builder(addr: SocketAddr) -> ResumeClientBuilder {
        ResumeClientBuilder {
            addr,
            host: None,
            path: "/".into(),
            headers: Vec::new(),
            topics: Vec::new(),
            backoff: Backoff::default(),
            heartbeat: Heartbeat::default(),
            connect_timeout: Duration::from_secs(10),
            events_max: 65_536,
            seed: None,
        }
    }

    /// The events, in order (the channel ends when the client stops or gives up).
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Subscribe to `topic` (now if connected, and again after every reconnect).
    pub fn subscribe(&self, topic: impl Into<String>) {
        let _ = self.cmds.send(Cmd::Subscribe(topic.into()));
    }

    /// Send an application message (`msg TEXT`; the handler's `on_message` gets `TEXT`).
    /// Messages sent while the client is not connected are discarded: the protocol makes
    /// server-to-client delivery reliable, not this direction.
    pub fn send(&self, text: impl Into<String>) {
        let _ = self.cmds.send(Cmd::Send(text.into()));
    }

    /// Close the connection (1000) and stop the thread.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.cmds.send(Cmd::Close);
        if let Some(t) = self.thread.take() {
            // Unblock a thread waiting on a full event channel.
            while !t.is_finished() {
                while self.events.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = t.join();
        }
    }
}

impl Drop for ResumeClient {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How one connection ended.
enum Ended {
    Lost,
    Stop,
}

fn run(cfg: ResumeClientBuilder, cmds: Receiver<Cmd>, events: Sender<Event>) {
    let rng = cfg.seed.map_or_else(Jitter::from_os, Jitter::from_seed);
    let mut session = Session::new(cfg.backoff, cfg.heartbeat, rng, Instant::now());
    for t in &cfg.topics {
        session.subscribe(t);
    }
    loop {
        if let Ended::Stop = connection(&cfg, &mut session, &cmds, &events) {
            return;
        }
        let delay = session.on_disconnect();
        if !forward(&mut session, &events) {
            return;
        }
        let Some(delay) = delay else {
            return;
        };
        let until = Instant::now() + delay;
        loop {
            match cmds.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Cmd::Close) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Cmd::Subscribe(t)) => {
                    session.subscribe(&t);
                }
                Ok(Cmd::Send(_)) => {}
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
    }
}

/// Hand the session's events to the application; false if it is gone.
fn forward(session: &mut Session, events: &Sender<Event>) -> bool {
    while let Some(ev) = session.poll_event() {
        if events.send(ev).is_err() {
            return false;
        }
    }
    true
}

/// One connection, from the TCP connect to its end.
fn connection(
    cfg: &ResumeClientBuilder,
    session: &mut Session,
    cmds: &Receiver<Cmd>,
    events: &Sender<Event>,
) -> Ended {
    let Ok(mut stream) = TcpStream::connect_timeout(&cfg.addr, cfg.connect_timeout) else {
        return Ended::Lost;
    };
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(Some(TICK)).is_err()
        || stream.set_write_timeout(Some(cfg.connect_timeout)).is_err()
    {
        return Ended::Lost;
    }
    let start = Instant::now();
    let tick = || (start.elapsed().as_millis() / 10) as u32;
    let mut ep = Endpoint::new(Settings::default());
    let host = cfg.host.clone().unwrap_or_else(|| cfg.addr.to_string());
    let key = proto::generate_key();
    let headers: Vec<(&str, &str)> = cfg
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let request = proto::client_request(&host, &cfg.path, &key, &[PROTOCOL], &headers);
    let mut out: Vec<u8> = Vec::new();
    let mut conn = Connection::client(tick(), &mut out, &key, &request);
    let mut buf = vec![0u8; 64 << 10];
    let mut opened = false;
    loop {
        while let Ok(cmd) = cmds.try_recv() {
            let text = match cmd {
                Cmd::Close => {
                    let half = conn.send_half();
                    half.close(tick(), &mut ep, &mut out, CloseCode::NORMAL, "");
                    let _ = stream.write_all(&out);
                    return Ended::Stop;
                }
                Cmd::Subscribe(t) => session.subscribe(&t),
                Cmd::Send(m) => opened.then(|| Command::Msg(&m).to_string()),
            };
            if let Some(text) = text {
                conn.send_half()
                    .send_message(&mut ep, &mut out, Message::Text(&text));
            }
        }
        match session.poll_heartbeat(Instant::now()) {
            Beat::Dead => return Ended::Lost,
            Beat::Send(v) => {
                for text in v {
                    conn.send_half()
                        .send_message(&mut ep, &mut out, Message::Text(&text));
                }
            }
            _ => {}
        }
        if !opened && start.elapsed() > cfg.connect_timeout {
            return Ended::Lost;
        }
        if !out.is_empty() {
            if stream.write_all(&out).is_err() {
                return Ended::Lost;
            }
            out.clear();
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ended::Lost,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Ended::Lost,
        };
        let received = conn.handle_recv(tick(), &mut ep, &mut out, &mut buf[..n], |ev, link| {
            let now = Instant::now();
            match ev {
                AppEvent::Opened => {
                    opened = true;
                    for text in session.on_open(now) {
                        link.half
                            .send_message(link.ep, link.out, Message::Text(&text));
                    }
                }
                AppEvent::Message(m) => {
                    session.on_message(now, matches!(m, Message::Text(_)), m.as_bytes())
                }
                _ => session.on_activity(now),
            }
        });
        if !forward(session, events) {
            return Ended::Stop;
        }
        if !matches!(received, Received::Done) || conn.is_finished() || !conn.can_send() {
            let _ = stream.write_all(&out);
            return Ended::Lost;
        }
    }
}
