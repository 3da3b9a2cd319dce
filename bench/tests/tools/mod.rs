//! The reference tools kept in ../shared/tools (beside this repository), for the tests that
//! run them: the floor's raw echo and peerload (compiled here with gcc, under a second), and
//! uWebSockets' load_test and uws_echo (built by `scripts/test.sh` into ~/.cache/percore-uws,
//! or here when missing). Without ../shared the tests that need them say so and return;
//! with PERCORE_REQUIRE_TOOLS=1 (set by scripts/test.sh) a missing tool is a failure.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The address in `percore serve`'s first line ("listening on ADDR ...").
pub fn listen_addr(line: &str) -> SocketAddr {
    line.strip_prefix("listening on ")
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
}

/// ../shared/tools, if it is there.
pub fn shared_tools() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools");
    p.join("floor/rawecho.c").exists().then_some(p)
}

/// Skip (return None, saying why) or fail, as PERCORE_REQUIRE_TOOLS says.
pub fn missing(what: &str) -> Option<PathBuf> {
    if std::env::var("PERCORE_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{what} (PERCORE_REQUIRE_TOOLS=1)");
    }
    eprintln!("skipping: {what}");
    None
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compile ../shared/tools/floor/NAME.c; None (after saying why) without ../shared.
pub fn floor_tool(name: &str) -> Option<PathBuf> {
    let Some(tools) = shared_tools() else {
        return missing("../shared/tools is missing (the floor's raw echo and peerload)");
    };
    let out = scratch("floor").join(name);
    let status = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(tools.join(format!("floor/{name}.c")))
        .status()
        .expect("gcc (needed to build the floor tools)");
    assert!(status.success(), "gcc {name}.c failed");
    Some(out)
}

/// The directory holding uWebSockets' load_test and uws_echo; built when missing.
pub fn uws_dir() -> Option<PathBuf> {
    let have = |d: &Path| d.join("load_test").exists() && d.join("uws_echo").exists();
    let dir = std::env::var_os("PERCORE_UWS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/percore-uws")));
    if let Some(d) = dir.filter(|d| have(d)) {
        return Some(d);
    }
    let Some(tools) = shared_tools() else {
        return missing("../shared/tools is missing (uWebSockets' load_test)");
    };
    let d = scratch("uws");
    let status = Command::new("bash")
        .arg(tools.join("uws/build.sh"))
        .arg(&d)
        .status()
        .expect("bash");
    assert!(status.success(), "../shared/tools/uws/build.sh failed");
    Some(d)
}

/// Run `percore ARGS`; returns (exit code, stdout, stderr).
pub fn percore(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `percore serve` on a free port, on one shard; stopped when dropped.
pub struct Serve {
    child: std::process::Child,
    /// ws://ADDR/
    pub url: String,
}

impl Serve {
    pub fn start(backend: &str) -> Serve {
        Self::start_with(backend, &[])
    }

    /// `percore serve` with extra arguments.
    pub fn start_with(backend: &str, extra: &[&str]) -> Serve {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--shards",
                "1",
                "--no-pin",
            ])
            .args(["--backend", backend])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // Keep reading, so the server never writes into a closed pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        let addr = listen_addr(&line);
        Serve {
            child,
            url: format!("ws://{addr}/"),
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
