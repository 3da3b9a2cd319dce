//! `percore load` as a command: JSON output and worker processes, against a small tungstenite
//! echo server on 127.0.0.1 (port 0). Each run lasts a fraction of a second.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use tungstenite::Message;

/// Echo server, one thread per connection, every thread ends within 20 s.
fn echo_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let Ok(mut ws) = tungstenite::accept(s) else {
                    return;
                };
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    match ws.read() {
                        Ok(m @ (Message::Binary(_) | Message::Text(_))) => {
                            if ws.send(m).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
        }
    });
    format!("ws://{addr}/")
}

fn load(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_percore"))
        .arg("load")
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text:?} / {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn json_output_is_one_object_with_the_documented_fields() {
    let url = echo_server();
    let v = load(&[
        "--url",
        &url,
        "--connections",
        "4",
        "--duration",
        "0.3",
        "--size",
        "100",
    ]);
    for key in [
        "connections",
        "connect_s",
        "messages",
        "msgs_per_s",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
        "errors",
        "mode",
        "size",
        "duration_s",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["connections"], 4);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["size"], 100);
    assert!(v["messages"].as_u64().unwrap() > 0);
}

#[test]
fn worker_processes_results_are_merged_into_one() {
    let url = echo_server();
    let v = load(&[
        "--url",
        &url,
        "--connections",
        "9",
        "--duration",
        "0.3",
        "--processes",
        "3",
    ]);
    assert_eq!(v["processes"], 3);
    assert_eq!(v["connections"], 9);
    assert_eq!(v["open_at_end"], 9);
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["messages"].as_u64().unwrap() > 0);
}

#[test]
fn unreachable_server_exits_non_zero_with_connect_errors() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", l.local_addr().unwrap());
    drop(l);
    let out = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args([
            "load",
            "--url",
            &url,
            "--connections",
            "2",
            "--duration",
            "0.1",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors_detail"]["connect"], 2);
}

#[test]
fn bad_arguments_exit_with_status_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["load", "--url", "http://127.0.0.1:1/", "--duration", "0.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
