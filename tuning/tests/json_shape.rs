//! --json prints one object: knobs with name/current/recommended/status/why, memory, blockers.
mod common;

use common::run;
use serde_json::Value;

#[test]
fn json_has_knobs_memory_and_blockers() {
    let (code, out, _) = run("container", &["--connections", "1000000", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(v["connections"], 1_000_000);
    let knobs = v["knobs"].as_array().expect("knobs array");
    assert!(knobs.len() > 20);
    for k in knobs {
        let obj = k.as_object().expect("knob object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["current", "name", "recommended", "status", "why"]);
        assert!(["ok", "raise", "info", "unknown"].contains(&k["status"].as_str().unwrap()));
    }
    let hard = knobs
        .iter()
        .find(|k| k["name"] == "RLIMIT_NOFILE hard")
        .expect("nofile knob");
    assert_eq!(hard["status"], "raise");
    assert_eq!(hard["current"], "20000");
    let m = &v["memory"];
    assert_eq!(m["percore_bytes_per_connection"], 256);
    assert_eq!(m["kernel_bytes_per_connection"], 4900);
    assert_eq!(m["kernel_bytes_per_pair_measured"], 9800);
    assert_eq!(m["kernel_bytes_per_connection_published"], 3000);
    assert!(m["busy_total_bytes"].as_u64().unwrap() > m["idle_total_bytes"].as_u64().unwrap());
    assert!(v["blockers"].as_array().unwrap()[0]
        .as_str()
        .unwrap()
        .starts_with("RLIMIT_NOFILE"));
}
