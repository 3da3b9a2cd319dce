use super::*;

#[test]
fn url_with_port_and_path_is_parsed() {
    let t = parse_url("ws://127.0.0.1:9001/echo?x=1").unwrap();
    assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(t.host, "127.0.0.1:9001");
    assert_eq!(t.path, "/echo?x=1");
}

#[test]
fn url_without_path_gets_slash_and_without_port_gets_80() {
    assert_eq!(parse_url("ws://127.0.0.1:1234").unwrap().path, "/");
    assert_eq!(parse_url("ws://127.0.0.1").unwrap().addr.port(), 80);
}

#[test]
fn wss_urls_name_the_host_to_verify_and_default_to_443() {
    let t = parse_url("wss://localhost:9443/x").unwrap();
    assert_eq!(t.tls_name.as_deref(), Some("localhost"));
    assert_eq!(t.addr.port(), 9443);
    assert_eq!(t.host, "localhost:9443");
    assert_eq!(parse_url("wss://127.0.0.1").unwrap().addr.port(), 443);
    assert_eq!(parse_url("ws://127.0.0.1:1").unwrap().tls_name, None);
}

#[test]
fn non_ws_urls_are_rejected() {
    assert!(parse_url("https://127.0.0.1:1/").is_err());
    assert!(parse_url("http://127.0.0.1:1/").is_err());
    assert!(parse_url("ws:///path").is_err());
}

#[test]
fn cpu_lists_accept_ranges_and_commas() {
    assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
    assert_eq!(parse_cpu_list("0,2-4").unwrap(), vec![0, 2, 3, 4]);
    assert!(parse_cpu_list("3-1").is_err());
    assert!(parse_cpu_list("x").is_err());
    assert!(parse_cpu_list("").is_err());
}

#[test]
fn ids_split_into_contiguous_ranges_covering_everything_once() {
    let r = split_ids(100, 10, 3);
    assert_eq!(r, vec![100..104, 104..107, 107..110]);
    let r = split_ids(0, 2, 4);
    assert_eq!(r.iter().map(|r| r.len()).sum::<usize>(), 2);
    assert_eq!(r.last().unwrap().end, 2);
}

#[test]
fn process_count_keeps_each_process_under_the_limit() {
    assert_eq!(processes_for(100, 18_000), 1);
    assert_eq!(processes_for(18_000, 18_000), 1);
    assert_eq!(processes_for(18_001, 18_000), 2);
    assert_eq!(processes_for(100_000, 18_000), 6);
    for r in split_ids(0, 100_000, processes_for(100_000, 18_000)) {
        assert!(r.len() <= 18_000);
    }
}

fn args(extra: &[&str]) -> LoadArgs {
    #[derive(clap::Parser)]
    struct P {
        #[command(flatten)]
        a: LoadArgs,
    }
    let mut v = vec!["load", "--url", "ws://127.0.0.1:1/"];
    v.extend_from_slice(extra);
    <P as clap::Parser>::try_parse_from(v).unwrap().a
}

#[test]
fn arguments_parse_with_defaults_closed_loop_echo() {
    let a = args(&[]);
    assert_eq!(a.connections, 100);
    assert_eq!(a.size, 20);
    assert_eq!(a.mode, Mode::Echo);
    assert!(a.rate.is_none());
    assert!(a.validate().is_ok());
    let a = args(&[
        "--connections",
        "100000",
        "--size",
        "16384",
        "--duration",
        "2",
        "--rate",
        "5000",
        "--mode",
        "broadcast",
        "--publishers",
        "2",
        "--ramp",
        "20000",
        "--threads",
        "2",
        "--json",
        "--cpu",
        "1",
    ]);
    assert_eq!(a.connections, 100_000);
    assert_eq!(a.mode, Mode::Broadcast);
    assert_eq!(a.rate, Some(5000.0));
    assert!(a.json);
    assert!(a.validate().is_ok());
}

#[test]
fn invalid_arguments_are_refused() {
    assert!(args(&["--size", "19"]).validate().is_err());
    assert!(args(&["--connections", "0"]).validate().is_err());
    assert!(args(&["--threads", "0"]).validate().is_err());
    assert!(args(&["--duration", "0"]).validate().is_err());
    assert!(args(&[
        "--mode",
        "broadcast",
        "--connections",
        "2",
        "--publishers",
        "3"
    ])
    .validate()
    .is_err());
}

#[test]
fn impossible_open_loop_settings_are_refused_with_the_reason() {
    let err = |extra: &[&str]| args(extra).validate().unwrap_err();
    let e = err(&["--rate", "0"]);
    assert!(e.contains("positive"), "{e}");
    assert!(args(&["--rate", "NaN"]).validate().is_err());
    assert!(args(&["--rate", "inf"]).validate().is_err());
    let e = err(&["--rate", "2", "--duration", "0.2"]);
    assert!(e.contains("0.40 messages"), "{e}");
    let e = err(&["--rate", "100", "--mode", "idle"]);
    assert!(e.contains("idle"), "{e}");
    // 3M/s on one thread cannot be sent; on four threads it is 750k/s each, allowed.
    let e = err(&["--rate", "3000000", "--connections", "100"]);
    assert!(e.contains("--threads"), "{e}");
    assert!(args(&[
        "--rate",
        "3000000",
        "--connections",
        "100",
        "--threads",
        "4"
    ])
    .validate()
    .is_ok());
    // Threads beyond the senders do not share the rate: one publisher is one thread.
    let e = err(&[
        "--rate",
        "3000000",
        "--mode",
        "broadcast",
        "--publishers",
        "1",
        "--threads",
        "4",
    ]);
    assert!(e.contains("1 sending"), "{e}");
    assert!(args(&["--rate", "10", "--duration", "0.1"])
        .validate()
        .is_ok());
}

#[test]
fn open_loop_rate_is_shared_by_connections_or_by_publishers() {
    let a = args(&["--connections", "100", "--rate", "1000"]);
    let t = [parse_url(&a.url[0]).unwrap()];
    let cfg = a.run_config(&t, 1).unwrap();
    assert_eq!(cfg.thread_rate(&(0..25)), Some(250.0));
    let a = args(&[
        "--connections",
        "100",
        "--rate",
        "1000",
        "--mode",
        "broadcast",
        "--publishers",
        "2",
    ]);
    let cfg = a.run_config(&t, 1).unwrap();
    assert_eq!(cfg.thread_rate(&(0..50)), Some(1000.0));
    assert_eq!(cfg.thread_rate(&(1..50)), Some(500.0));
    assert_eq!(cfg.thread_rate(&(50..100)), Some(0.0));
}

#[test]
fn worker_lines_round_trip() {
    assert!(matches!(parse_line("ready\n"), Some(Line::Ready)));
    assert!(matches!(parse_line("ended"), Some(Line::Ended)));
    assert!(matches!(
        parse_line("progress 1 2 3"),
        Some(Line::Progress(1, 2, 3, 0, 1))
    ));
    assert!(matches!(
        parse_line("progress 1 2 3 4000"),
        Some(Line::Progress(1, 2, 3, 4000, 1))
    ));
    // The fifth field: connections open now (what `--linger` waits on).
    assert!(matches!(
        parse_line("progress 9 2 3 4000 5"),
        Some(Line::Progress(9, 2, 3, 4000, 5))
    ));
    assert!(parse_line("progress 1 2").is_none());
    let p = Partial {
        established: 7,
        ..Partial::default()
    };
    let l = format!("result {}", serde_json::to_string(&p).unwrap());
    match parse_line(&l) {
        Some(Line::Result(r)) => assert_eq!(r.established, 7),
        _ => panic!("result line not parsed"),
    }
    assert!(parse_line("garbage").is_none());
}

#[test]
fn several_urls_are_accepted_repeated_or_comma_separated() {
    let a = args(&["--url", "ws://127.0.0.1:2/,ws://127.0.0.1:3/"]);
    assert_eq!(a.url.len(), 3);
    assert!(a.url.iter().all(|u| parse_url(u).is_ok()));
}
