//! `percore bench` as a command, on small cells: external servers started through their
//! command template (`--peer`: another `percore serve`; `--raw-peer`: the floor's raw echo),
//! the external generators (peerload, uWebSockets' load_test), the open-loop table, and the
//! command-line errors. Every run is bounded: cells of half a second to a few seconds.

mod tools;

use serde_json::Value;

fn rows(stdout: &str) -> Vec<Value> {
    match serde_json::from_str(stdout.trim()) {
        Ok(Value::Array(a)) => a,
        _ => panic!("not a JSON array of rows: {stdout:?}"),
    }
}

fn find<'a>(rows: &'a [Value], server: &str, generator: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["server"] == server && r["generator"] == generator)
        .unwrap_or_else(|| panic!("no row for {server} / {generator} in {rows:#?}"))
}

/// A row with figures: every connection up, messages, server CPU per message, no error.
fn assert_measured(r: &Value, connections: u64) {
    assert!(r["note"].is_null(), "{r:#}");
    assert_eq!(r["connections"], connections, "{r:#}");
    assert_eq!(r["errors"], 0, "{r:#}");
    assert!(r["msgs_per_s"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(r["cpu_us_per_msg"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(r["rss_kb"].as_u64().unwrap() > 0, "{r:#}");
}

#[test]
fn external_websocket_and_raw_peers_run_beside_percore_under_their_names() {
    let (Some(rawecho), Some(peerload)) =
        (tools::floor_tool("rawecho"), tools::floor_tool("peerload"))
    else {
        return;
    };
    let percore = env!("CARGO_BIN_EXE_percore");
    let peer = format!(
        "other={percore} serve --addr 127.0.0.1:{{port}} --no-pin --shards 1 --backend epoll"
    );
    let raw = format!("rawecho={} {{port}}", rawecho.display());
    let (code, out, err) = tools::percore(&[
        "bench",
        "--duration",
        "0.8",
        "--cell",
        "20x20,2x1MiB",
        "--backends",
        "epoll",
        "--peer",
        &peer,
        "--raw-peer",
        &raw,
        "--generator",
        "percore",
        "--generator",
        &format!("peerload-ws={}", peerload.display()),
        "--generator",
        &format!("peerload={}", peerload.display()),
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let rows = rows(&out);
    // Per cell: two WebSocket servers × two WebSocket generators, and the raw echo with
    // peerload raw; every generator handles 1 MiB messages.
    assert_eq!(rows.len(), 10, "{rows:#?}");
    for (scenario, conns) in [("echo 20 x 20 B", 20), ("echo 2 x 1 MiB", 2)] {
        let cell: Vec<Value> = rows
            .iter()
            .filter(|r| r["scenario"] == scenario)
            .cloned()
            .collect();
        for (server, generator) in [
            ("percore", "percore load"),
            ("percore", "peerload ws"),
            ("other", "percore load"),
            ("other", "peerload ws"),
            ("rawecho", "peerload raw"),
        ] {
            let r = find(&cell, server, generator);
            assert_measured(r, conns);
            // Only percore load measures latency.
            let timed = r["p50_us"].is_number();
            assert_eq!(timed, generator == "percore load", "{r:#}");
        }
    }
    assert_eq!(find(&rows, "other", "percore load")["backend"], "external");
    assert_eq!(find(&rows, "rawecho", "peerload raw")["backend"], "raw tcp");
}

#[test]
fn load_test_drives_percore_and_the_uwebsockets_peer() {
    let Some(uws) = tools::uws_dir() else { return };
    let peer = format!(
        "uwebsockets={} {{port}} echo none",
        uws.join("uws_echo").display()
    );
    let load_test = format!("load_test={}", uws.join("load_test").display());
    // load_test reports every 4 s: one warm-up report, then one measured.
    let (code, out, err) = tools::percore(&[
        "bench",
        "--duration",
        "1",
        "--cell",
        "4x64KiB",
        "--backends",
        "epoll",
        "--peer",
        &peer,
        "--generator",
        &load_test,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let rows = rows(&out);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for r in &rows {
        assert_eq!(r["generator"], "load_test", "{r:#}");
        assert_eq!(r["scenario"], "echo 4 x 64 KiB", "{r:#}");
        assert_measured(r, 4);
        assert!(
            r["p99_us"].is_null(),
            "load_test measures no latency: {r:#}"
        );
    }
    assert!(rows.iter().any(|r| r["server"] == "uwebsockets"));
}

#[test]
fn open_loop_offers_a_share_of_each_servers_closed_loop_maximum() {
    let (code, out, err) = tools::percore(&[
        "bench",
        "--duration",
        "0.5",
        "--backends",
        "epoll",
        "--open-loop",
        "50",
        "--open-loop-connections",
        "20",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let rows = rows(&out);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let max = &rows[0];
    assert_eq!(max["scenario"], "open 20 x 20 B max (closed loop)");
    assert!(max.get("offered_per_s").is_none());
    let half = &rows[1];
    assert_eq!(half["scenario"], "open 20 x 20 B @ 50%");
    assert_eq!(half["load_pct"], 50.0);
    let offered = half["offered_per_s"].as_f64().unwrap();
    let m = max["msgs_per_s"].as_f64().unwrap();
    assert!((offered - m / 2.0).abs() <= 1.0, "{offered} vs {m}");
    assert_eq!(half["errors"], 0, "{half:#}");
    for p in ["p50_us", "p99_us", "p999_us", "max_us"] {
        assert!(half[p].as_f64().unwrap() > 0.0, "{half:#}");
    }
}

#[test]
fn command_line_mistakes_exit_2_before_anything_runs() {
    for (args, says) in [
        (
            &["bench", "--peer", "uws=/bin/true 9001"][..],
            "must contain {port}",
        ),
        (
            &["bench", "--raw-peer", "r=/bin/true {port}"][..],
            "--generator peerload=PATH",
        ),
        (
            &["bench", "--generator", "load_test=/no/such/load_test"][..],
            "no such file",
        ),
        (&["bench", "--generator", "wrk"][..], "expected percore"),
        (&["bench", "--cell", "10"][..], "CONNECTIONSxSIZE"),
        (&["bench", "--open-loop", "0"][..], "(0, 200]"),
    ] {
        let (code, out, err) = tools::percore(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
}

#[test]
fn save_writes_tables_and_well_formed_svg_charts_from_a_result_set() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/results.json");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-save-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let save = format!("{}/", dir.display());
    let (code, out, err) = tools::percore(&["bench", "--from-json", fixture, "--save", &save]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("uwebsockets") && out.contains("offered/s"),
        "{out}"
    );
    for ext in ["md", "csv", "json"] {
        assert!(dir.join(format!("bench.{ext}")).exists(), "bench.{ext}");
    }
    let md = std::fs::read_to_string(dir.join("bench.md")).unwrap();
    let charts = [
        (
            "bench-cpu.svg",
            &[
                "echo 100 x 20 B",
                "echo 10 x 1 MiB",
                "uwebsockets",
                "percore uring",
            ][..],
        ),
        (
            "bench-latency.svg",
            &["p99.9", "percore epoll", "echo 100 x 20 B"][..],
        ),
        (
            "bench-rss.svg",
            &["bytes / connection", "fast&amp;<slow>"][..],
        ),
        (
            "bench-open-loop.svg",
            &["p99 latency", "offered load", "uwebsockets"][..],
        ),
    ];
    for (file, texts) in charts {
        let svg = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg", "{file}");
        let text: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(str::trim)
            .collect();
        for t in texts {
            let t = t.replace("&amp;", "&");
            assert!(
                text.iter().any(|x| x.contains(&t)),
                "{file}: no text {t:?} in {text:?}"
            );
        }
        assert!(
            doc.descendants().any(|n| n.has_tag_name("rect")),
            "{file}: nothing drawn"
        );
        assert!(md.contains(&format!("]({file})")), "bench.md links {file}");
    }
    // The saved JSON reads back as the same rows.
    let (code, again, err) = tools::percore(&[
        "bench",
        "--from-json",
        dir.join("bench.json").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let fixture_rows: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let again: Value = serde_json::from_str(again.trim()).unwrap();
    assert_eq!(
        again.as_array().unwrap().len(),
        fixture_rows.as_array().unwrap().len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_result_set_that_is_not_one_is_refused() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let f = dir.join(format!("not-rows-{}.json", std::process::id()));
    std::fs::write(&f, "{\"a\": 1}").unwrap();
    let (code, _, err) = tools::percore(&["bench", "--from-json", f.to_str().unwrap()]);
    let _ = std::fs::remove_file(&f);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a saved result set"), "{err}");
}
