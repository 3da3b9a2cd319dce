//! `percore serve --cluster`: two chat servers joined through a `nats-server` of the test's own
//! (on a free port, killed at the end even on a panic): a message in a room on one server
//! reaches the room's member on the other, the stop line reports the cluster counters, and a
//! bad NATS URL stops `serve` at start with a message. Skipped when nats-server is missing,
//! unless `PERCORE_REQUIRE_NATS=1` (scripts/test.sh installs it).

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn nats_binary() -> Option<PathBuf> {
    let mut candidates = vec![
        PathBuf::from("/usr/sbin/nats-server"),
        PathBuf::from("/usr/bin/nats-server"),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    let found = candidates.into_iter().find(|p| p.is_file());
    if found.is_none() && std::env::var("PERCORE_REQUIRE_NATS").as_deref() == Ok("1") {
        panic!("PERCORE_REQUIRE_NATS=1 but nats-server is not installed");
    }
    found
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nats-server` on a free port of 127.0.0.1, once it answers.
fn start_nats(bin: PathBuf) -> (Killed, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Killed (and waited for) when dropped, also when this function panics.
    let child = Killed(
        Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 5];
            if s.read_exact(&mut b).is_ok() && &b == b"INFO " {
                return (child, port);
            }
        }
        assert!(Instant::now() < until, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `percore serve --mode chat --cluster URL`, and its address.
fn serve(url: &str) -> (Killed, String) {
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_percore"))
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--shards",
                "1",
                "--no-pin",
            ])
            .args(["--shutdown-grace-secs", "1"])
            .args(["--mode", "chat", "--cluster", url, "--cluster-prefix", "t"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.ends_with("cluster-prefix=t\n"), "{line:?}");
    let addr = line.split_whitespace().nth(2).unwrap().to_owned();
    (child, addr)
}

type Ws = tungstenite::WebSocket<TcpStream>;

fn join(addr: &str, room: &str) -> Ws {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    tungstenite::client(format!("ws://{addr}/room/{room}"), s)
        .unwrap()
        .0
}

#[test]
fn two_chat_servers_share_a_room_through_nats() {
    let Some(bin) = nats_binary() else {
        eprintln!("SKIP: nats-server is not installed");
        return;
    };
    let (_nats, port) = start_nats(bin);
    let url = format!("nats://127.0.0.1:{port}");
    let (a, addr_a) = serve(&url);
    let (mut b, addr_b) = serve(&url);
    let mut on_a = join(&addr_a, "lobby");
    let mut on_b = join(&addr_b, "lobby");
    // Until B's subscription reaches the broker, messages from A stop at A: say hello until
    // one gets through.
    let until = Instant::now() + Duration::from_secs(20);
    let got = loop {
        assert!(Instant::now() < until, "no message crossed the cluster");
        on_a.send(tungstenite::Message::text("hello from a"))
            .unwrap();
        match on_b.read() {
            Ok(m) => break m,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(got, tungstenite::Message::text("hello from a"));
    drop((a, on_a, on_b));
    // B's graceful stop reports what it received.
    if let Some(pid) = rustix::process::Pid::from_raw(b.0.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let mut err = String::new();
    b.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("cluster: sent=0 received="), "{err}");
}

#[test]
fn a_bad_nats_url_stops_serve_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--cluster",
            "tls://127.0.0.1:4222",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only nats:// URLs are supported"), "{err}");
}
