//! `percore load --rate` (open loop) against a `percore serve` process, and the progress line:
//! quiet off a terminal, drawn in place on one. Each run lasts one or two seconds.

mod tools;

use serde_json::Value;

fn load_json(args: &[&str]) -> Value {
    let (code, out, err) = tools::percore(args);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?} / {err}"))
}

#[test]
fn open_loop_sends_exactly_the_offered_schedule_and_times_every_message() {
    let server = tools::Serve::start("epoll");
    let v = load_json(&[
        "load",
        "--url",
        &server.url,
        "--connections",
        "20",
        "--rate",
        "2000",
        "--duration",
        "1",
        "--json",
    ]);
    assert_eq!(v["rate"], 2000.0, "{v:#}");
    assert_eq!(v["connections"], 20, "{v:#}");
    assert_eq!(v["errors"], 0, "{v:#}");
    // The schedule owes 2000 messages in a 1 s window, late or not: all of them leave.
    assert_eq!(v["sent"], 2000, "{v:#}");
    assert_eq!(v["sent_per_s"], 2000.0, "{v:#}");
    // Answers to the last messages may land just after the window: counted for latency (drain),
    // not in msgs/s.
    let received = v["messages"].as_u64().unwrap();
    assert!((1900..=2000).contains(&received), "{v:#}");
    assert_eq!(v["unanswered"], 0, "{v:#}");
    let p = |k: &str| v[k].as_f64().unwrap();
    assert!(p("p50_us") > 0.0 && p("p50_us") <= p("p99_us"), "{v:#}");
    assert!(
        p("p99_us") <= p("p999_us") && p("p999_us") <= p("max_us"),
        "{v:#}"
    );
    assert!(v["send_lag_p99_us"].is_number(), "{v:#}");
}

#[test]
fn open_loop_table_says_offered_sent_and_received() {
    let server = tools::Serve::start("epoll");
    let (code, out, err) = tools::percore(&[
        "load",
        "--url",
        &server.url,
        "--connections",
        "4",
        "--rate",
        "400",
        "--duration",
        "0.5",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("open loop 400 msg/s offered"), "{out}");
    assert!(out.contains("400 msg/s sent (100.0 %)"), "{out}");
    assert!(out.contains("200 sent"), "{out}");
    assert!(out.contains("send lag µs"), "{out}");
}

#[test]
fn impossible_rates_are_refused_before_connecting() {
    for (extra, says) in [
        (&["--rate", "3000000"][..], "--threads"),
        (
            &["--rate", "1", "--duration", "0.5"][..],
            "nothing to measure",
        ),
        (&["--rate", "100", "--mode", "idle"][..], "idle"),
        (&["--rate=-5"][..], "positive"),
    ] {
        let mut args = vec!["load", "--url", "ws://127.0.0.1:9/", "--json"];
        args.extend_from_slice(extra);
        let (code, out, err) = tools::percore(&args);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(out.is_empty(), "{extra:?}: {out}");
    }
}

#[test]
fn no_progress_line_when_stderr_is_not_a_terminal() {
    let server = tools::Serve::start("epoll");
    // Not --quiet, not --json: stderr is a pipe here, so nothing may be drawn on it.
    let (code, out, err) = tools::percore(&[
        "load",
        "--url",
        &server.url,
        "--connections",
        "3",
        "--duration",
        "1.2",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "{err:?}");
    assert!(out.contains("connections"), "{out}");
}

#[test]
fn progress_line_is_rewritten_in_place_on_a_terminal() {
    // util-linux `script` gives the command a pseudo-terminal.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: no `script` (util-linux) to provide a terminal");
        return;
    }
    let server = tools::Serve::start("epoll");
    let cmd = format!(
        "{} load --url {} --connections 3 --duration 2.5",
        env!("CARGO_BIN_EXE_percore"),
        server.url
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // Each update returns to column 0 and erases the line; one reading per second.
    assert!(text.contains("\r\x1b[2K[run"), "{text:?}");
    let lines: Vec<&str> = text
        .split("\r\x1b[2K")
        .filter(|l| l.starts_with("[run"))
        .collect();
    // 2.5 s: readings at 1 s and 2 s.
    assert!(lines.len() >= 2, "{text:?}");
    for line in &lines {
        assert!(line.contains("3/3 up | "), "{line:?}");
        assert!(line.contains(" msg/s | p99 "), "{line:?}");
        assert!(line.ends_with("| 0 errors"), "{line:?}");
    }
    // The result follows on a clean line.
    assert!(text.contains("latency µs"), "{text:?}");
}
