//! Half-open connections: the peer vanished without FIN or RST (cable pulled, host powered
//! off, a NAT that forgot the flow). Nothing arrives any more, nothing fails: the server's
//! writes still succeed (they only queue in the kernel), so only the ping/pong deadline can
//! find the connection. It must be closed with 1006 to the handler and counted as a timeout,
//! also when the server was in the middle of writing to it (a send that never completes).
//!
//! How: the test binary re-runs itself (`half_open_inner`) inside a network namespace of its
//! own (`ip netns add`), where the server and the client talk over the namespace's loopback;
//! taking that loopback down makes the peer vanish for both sides at once, with no packet
//! (FIN, RST, ICMP) to tell either of them. The existing keepalive test
//! (keepalive_timeouts.rs, `unanswered_ping_drops_the_connection_after_pong_timeout`) has a
//! peer whose kernel still acknowledges everything; here the server's own data stays unacked.
//!
//! Needs root (network namespaces) and `ip` (iproute2). Without them the tests print SKIP and
//! pass, unless `PERCORE_REQUIRE_NETNS=1` (set by scripts/test.sh: the machines this project
//! runs on have both).

mod common;

use common::handlers::Event;
use common::raw::{is_timeout, RawClient};
use std::process::Command;
use std::time::Duration;

/// Set in the re-run inside the namespace: the backend and the scenario.
const ENV_BACKEND: &str = "PERCORE_HALF_OPEN_BACKEND";
const ENV_SCENARIO: &str = "PERCORE_HALF_OPEN_SCENARIO";
/// Set ("true") when the test runs over TLS.
const ENV_TLS: &str = "PERCORE_HALF_OPEN_TLS";

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    /// Create a namespace, or say why it cannot be done here.
    fn create(tag: &str) -> Result<Netns, String> {
        let name = format!("percore-ho-{}-{tag}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`ip netns add` failed (root needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Run `scenario` on `backend` in a fresh namespace (a child test process); skip where
/// namespaces cannot be made.
fn in_namespace(backend: percore::Backend, scenario: &str) {
    let tls = common::transport() == common::Transport::Tls;
    let tag = format!("{scenario}-{backend}{}", if tls { "-tls" } else { "" });
    let ns = match Netns::create(&tag) {
        Ok(ns) => ns,
        Err(why) => {
            if std::env::var("PERCORE_REQUIRE_NETNS").as_deref() == Ok("1") {
                panic!("PERCORE_REQUIRE_NETNS=1 but: {why}");
            }
            eprintln!("SKIP half_open {tag}: {why}");
            return;
        }
    };
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(exe)
        .args(["--exact", "half_open_inner", "--ignored", "--nocapture"])
        .env(ENV_BACKEND, backend.to_string())
        .env(ENV_SCENARIO, scenario)
        .env(
            ENV_TLS,
            (common::transport() == common::Transport::Tls).to_string(),
        )
        .output()
        .expect("running the test binary in the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{tag} in namespace {} failed:\n{stdout}\n{stderr}",
        ns.0
    );
    eprint!("{stderr}");
}

every_backend! {
    fn idle_peer_that_vanished_is_closed_by_the_pong_deadline(backend) {
        in_namespace(backend, "idle");
    }

    fn peer_that_vanished_while_the_server_writes_is_closed_by_the_pong_deadline(backend) {
        in_namespace(backend, "writing");
    }
}

/// `ip link set lo up|down` in the current namespace.
fn loopback(state: &str) {
    let st = Command::new("ip")
        .args(["link", "set", "lo", state])
        .status()
        .expect("running ip");
    assert!(st.success(), "ip link set lo {state}");
}

/// The body, run inside the namespace by `in_namespace` (ignored in a normal run, and does
/// nothing when started by hand without the variables).
#[test]
#[ignore = "run inside a network namespace by the half_open tests"]
fn half_open_inner() {
    let (Ok(backend), Ok(scenario)) = (std::env::var(ENV_BACKEND), std::env::var(ENV_SCENARIO))
    else {
        eprintln!("half_open_inner: nothing to do outside the half_open tests");
        return;
    };
    let backend = match backend.as_str() {
        "epoll" => percore::Backend::Epoll,
        "io_uring" => percore::Backend::IoUring,
        b => panic!("unknown backend {b}"),
    };
    if std::env::var(ENV_TLS).as_deref() == Ok("true") {
        common::set_transport(common::Transport::Tls);
    }
    loopback("up");
    let writing = scenario == "writing";
    let server = common::start_with(backend, |b| {
        b.idle_timeout(Duration::from_millis(300))
            .pong_timeout(Duration::from_millis(600))
            .send_queue_bytes_max(64 << 20)
    });
    let mut c = RawClient::connect(server.addr).unwrap();
    c.echo_text("before the peer vanishes");
    if writing {
        // 16 MiB queued towards a peer that stops reading and then vanishes: the kernel send
        // buffer fills, the rest waits in the send queue behind a send that never completes
        // (io_uring: an SQE in flight), and the idle ping queues behind it all.
        c.send_text("cmd:flood:256:65536").unwrap();
        while c.read_frame().unwrap().opcode != common::raw::op::BINARY {}
    }
    loopback("down");
    let ev = server.wait_event("on_close after the pong deadline", |e| {
        matches!(e, Event::Closed(..))
    });
    let Event::Closed(_, code, _) = ev else {
        unreachable!()
    };
    assert_eq!(code, Some(1006), "a vanished peer is reported as 1006");
    let stats = server.handle().stats();
    assert!(stats.timeouts >= 1, "counted as a timeout: {stats:?}");
    assert_eq!(stats.connections_open, 0, "{stats:?}");
    // Nothing reached the client after it vanished: no close frame, no FIN, no RST (only
    // flood data its kernel had received before, in the writing case).
    c.set_read_timeout(Duration::from_millis(200));
    loop {
        match c.read_frame() {
            Err(e) if is_timeout(&e) => break,
            Ok(f) if writing && f.opcode == common::raw::op::BINARY => {}
            other => panic!("the vanished client received something: {other:?}"),
        }
    }
    // The server serves new connections as before.
    loopback("up");
    RawClient::connect(server.addr)
        .unwrap()
        .echo_text("a new connection after the half-open one");
}
