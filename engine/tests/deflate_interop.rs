//! permessage-deflate interop with independent clients that negotiate it by default: Python
//! `websockets` (`tests/py/websockets_deflate.py`) and Node `ws` (`tests/js/ws_deflate.mjs`),
//! each against a shared-mode and a dedicated-mode server, on every backend and over ws:// and
//! wss:// (verifying the test CA).
//!
//! Python: `$PERCORE_PYENV/bin/python` (default `~/.cache/percore-pyenv`). Node: `node` with
//! `ws` from `$PERCORE_NODE_MODULES` (default `~/.cache/percore-node/node_modules`). Both are
//! installed by `scripts/test.sh`; without them a test prints a skip note and passes, unless
//! `PERCORE_REQUIRE_PY=1` / `PERCORE_REQUIRE_NODE=1` (set by `scripts/test.sh`).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use percore::{Backend, Compression};

fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("PERCORE_PYENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/percore-pyenv"))
        })?;
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import websockets.sync.client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var("PERCORE_REQUIRE_PY").as_deref() == Ok("1") {
        panic!(
            "PERCORE_REQUIRE_PY=1 but {} cannot import websockets",
            py.display()
        );
    }
    ok.then_some(py)
}

fn node_modules() -> Option<PathBuf> {
    let dir = std::env::var_os("PERCORE_NODE_MODULES")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/percore-node/node_modules"))
        })?;
    let ok = dir.join("ws/package.json").exists()
        && Command::new("node")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok && std::env::var("PERCORE_REQUIRE_NODE").as_deref() == Ok("1") {
        panic!(
            "PERCORE_REQUIRE_NODE=1 but node or {}/ws is missing",
            dir.display()
        );
    }
    ok.then_some(dir)
}

/// Run `cmd` (with the server's URL and mode appended), bounded; it must print
/// "all checks passed".
fn run_client(mut cmd: Command, backend: Backend, mode: Compression, name: &str) {
    let server = common::start_with(backend, |b| {
        b.compression(mode).idle_timeout(Duration::from_millis(200))
    });
    let mode_arg = match mode {
        Compression::Shared => "shared",
        _ => "dedicated",
    };
    // Over TLS (`wss://localhost:PORT/`): both clients verify the server against the test CA,
    // given as a file for the test's lifetime (one per test: the runs of this process overlap;
    // the CA's key stays in this process). Python's ssl reads SSL_CERT_FILE, Node reads
    // NODE_EXTRA_CA_CERTS at start.
    let ca = (common::transport() == common::Transport::Tls).then(|| {
        let ca = std::env::temp_dir().join(
            format!(
                "percore-deflate-ca-{}-{backend:?}-{name}-{mode_arg}.pem",
                std::process::id()
            )
            .replace(' ', "-"),
        );
        std::fs::write(&ca, &common::tls::pki().ca_pem).unwrap();
        cmd.env("SSL_CERT_FILE", &ca)
            .env("NODE_EXTRA_CA_CERTS", &ca);
        ca
    });
    let mut child = cmd
        .arg(server.url())
        .arg(mode_arg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    if let Some(ca) = ca {
        let _ = std::fs::remove_file(ca);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        status.success(),
        "{name} ({mode_arg}) failed ({status}):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    assert_eq!(server.handle().stats().protocol_errors, 0);
    if common::transport() == common::Transport::Tls {
        assert!(
            server.handle().stats().tls_handshakes >= 1,
            "{name} spoke TLS"
        );
    }
}

fn python_client(backend: Backend, mode: Compression) {
    let Some(py) = python() else {
        eprintln!("SKIP: no Python venv with websockets (scripts/test.sh installs it)");
        return;
    };
    let mut cmd = Command::new(py);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/websockets_deflate.py"
    ));
    run_client(cmd, backend, mode, "python websockets");
}

fn node_client(backend: Backend, mode: Compression) {
    let Some(modules) = node_modules() else {
        eprintln!("SKIP: no node with ws (scripts/test.sh installs it)");
        return;
    };
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", modules).arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/js/ws_deflate.mjs"
    ));
    run_client(cmd, backend, mode, "node ws");
}

every_backend! {
    fn python_websockets_shared(backend) {
        python_client(backend, Compression::Shared);
    }

    fn python_websockets_dedicated(backend) {
        python_client(backend, Compression::Dedicated);
    }

    fn node_ws_shared(backend) {
        node_client(backend, Compression::Shared);
    }

    fn node_ws_dedicated(backend) {
        node_client(backend, Compression::Dedicated);
    }
}
