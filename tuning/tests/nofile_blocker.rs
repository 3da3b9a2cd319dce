//! RLIMIT_NOFILE as the blocker: a 20000 hard limit that cannot be raised (this machine).
mod common;

use common::{knob, report, run};
use percore_tune::Status;

#[test]
fn nofile_20000_in_a_container_is_the_blocker_at_1m_with_remedy() {
    let r = report("container", 1_000_000);
    let hard = knob(&r, "RLIMIT_NOFILE hard");
    assert_eq!(hard.current, "20000");
    assert_eq!(hard.recommended, ">= 1048576");
    assert_eq!(hard.status, Status::Raise);
    assert!(hard.why.starts_with("BLOCKER"), "{}", hard.why);
    let blocker = r
        .blockers
        .iter()
        .find(|b| b.starts_with("RLIMIT_NOFILE"))
        .expect("RLIMIT_NOFILE blocker");
    for needle in [
        "20000 < 1048576",
        "CAP_SYS_RESOURCE",
        "LimitNOFILE=1048576",
        "--ulimit nofile=1048576:1048576",
        "SO_REUSEPORT",
        "53 processes of <= 18976 connections",
        "io_uring direct descriptors",
    ] {
        assert!(blocker.contains(needle), "missing {needle:?} in {blocker}");
    }
}

#[test]
fn nofile_20000_is_enough_for_10k() {
    let r = report("container", 10_000);
    assert_eq!(knob(&r, "RLIMIT_NOFILE hard").status, Status::Ok);
    assert_eq!(knob(&r, "RLIMIT_NOFILE soft").status, Status::Ok);
    assert!(r.blockers.is_empty(), "{:?}", r.blockers);
}

#[test]
fn unprivileged_user_below_hard_limit_is_told_not_root() {
    let r = report("default", 1_000_000);
    let b = r
        .blockers
        .iter()
        .find(|b| b.starts_with("RLIMIT_NOFILE"))
        .expect("blocker");
    assert!(b.contains("524288 < 1048576"), "{b}");
    assert!(b.contains("not root"), "{b}");
}

#[test]
fn soft_limit_below_a_sufficient_hard_limit_says_ulimit() {
    let r = report("default", 100_000);
    let soft = knob(&r, "RLIMIT_NOFILE soft");
    assert_eq!(soft.status, Status::Raise);
    assert!(soft.why.contains("ulimit -n 131072"), "{}", soft.why);
}

#[test]
fn table_prints_blockers_section_for_container_at_1m() {
    let (code, out, _) = run("container", &["--connections", "1000000"]);
    assert_eq!(code, 0, "no --strict: exit 0");
    assert!(out.contains("BLOCKERS:"));
    assert!(out.contains("RLIMIT_NOFILE hard"));
    assert!(out.contains("256 B per connection"));
}

/// Where io_uring works, a hard limit that cannot be raised is no blocker: direct descriptors,
/// several rings per shard, hold the connections (how the 1M run on this machine was served).
#[test]
fn nofile_20000_with_io_uring_is_not_a_blocker_and_names_the_serve_flags() {
    let mut host = percore_tune::Host::read(&common::roots(&common::fixture("container")));
    host.io_uring = Some(percore_tune::UringProbe {
        setup_flags: Ok(()),
        setup_plain: Ok(()),
        opcodes: Vec::new(),
        multishot_accept: Ok(()),
        pbuf_ring: Ok(()),
    });
    let r = percore_tune::check(&host, 1_000_000);
    assert!(
        !r.blockers.iter().any(|b| b.starts_with("RLIMIT_NOFILE")),
        "{:?}",
        r.blockers
    );
    let hard = knob(&r, "RLIMIT_NOFILE hard");
    assert_eq!(hard.status, Status::Info);
    for needle in [
        "--backend uring --direct-fds",
        "--direct-fds-max 510000",
        "another ring per 20000 connections",
    ] {
        assert!(
            hard.why.contains(needle),
            "missing {needle:?} in {}",
            hard.why
        );
    }
    assert_eq!(knob(&r, "RLIMIT_NOFILE soft").status, Status::Info);
}
