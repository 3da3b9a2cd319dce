//! Interop with an independent client: Python `websockets` (sync API) runs
//! `tests/py/websockets_client.py` against the server on every backend.
//!
//! The interpreter is `$PERCORE_PYENV/bin/python` (default `~/.cache/percore-pyenv`), the venv
//! `scripts/test.sh` creates. Without it the test prints a skip note and passes, unless
//! `PERCORE_REQUIRE_PY=1` (set by `scripts/test.sh`), which makes a missing venv a failure.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Some(py)
    } else if std::env::var("PERCORE_REQUIRE_PY").as_deref() == Ok("1") {
        panic!(
            "PERCORE_REQUIRE_PY=1 but {} cannot import websockets (run scripts/test.sh)",
            py.display()
        );
    } else {
        None
    }
}

every_backend! {
    fn python_websockets_client_passes_echo_ping_fragments_and_close(backend) {
        let Some(py) = python() else {
            eprintln!("SKIP: no Python venv with websockets (scripts/test.sh installs it)");
            return;
        };
        let server = common::start(backend);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/websockets_client.py");
        let mut cmd = Command::new(py);
        cmd.arg(script).arg(server.url());
        // Over TLS: the client verifies the server against the test CA (a file for the
        // test's lifetime, one per backend: the runs of this process overlap; the CA's key
        // stays in this process).
        let ca = (common::transport() == common::Transport::Tls).then(|| {
            let ca = std::env::temp_dir().join(format!(
                "percore-test-ca-{}-{backend:?}.pem",
                std::process::id()
            ));
            std::fs::write(&ca, &common::tls::pki().ca_pem).unwrap();
            cmd.arg(&ca);
            ca
        });
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("python client did not finish within 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        if let Some(ca) = ca {
            let _ = std::fs::remove_file(ca);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{stdout}");
        assert!(status.success(), "python client failed ({status}):\n{stdout}\n{stderr}");
        assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    }
}
