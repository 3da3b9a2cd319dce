//! Recommended values for 100k and 1M connections on fixture hosts.
mod common;

use common::{knob, report};
use percore_tune::Status;

#[test]
fn default_host_at_100k_needs_131072_fds_and_4096_backlog() {
    let r = report("default", 100_000);
    let soft = knob(&r, "RLIMIT_NOFILE soft");
    assert_eq!(soft.recommended, ">= 131072");
    assert_eq!(soft.status, Status::Raise);
    assert_eq!(soft.current, "1024");
    // The hard limit (524288) is enough for 100k.
    assert_eq!(knob(&r, "RLIMIT_NOFILE hard").status, Status::Ok);
    assert_eq!(knob(&r, "fs.nr_open").status, Status::Ok);
    let somax = knob(&r, "net.core.somaxconn");
    assert_eq!(somax.recommended, ">= 4096");
    assert_eq!(somax.status, Status::Ok);
    // 1024 < 4096, but syncookies are on: overflow gets cookies, nothing is dropped.
    let syn = knob(&r, "net.ipv4.tcp_max_syn_backlog");
    assert_eq!(syn.status, Status::Info);
    assert_eq!(syn.set, None);
    // 100k x 4 KiB = 100000 pages at pressure; the 8 GiB default (123271) is enough.
    let mem = knob(&r, "net.ipv4.tcp_mem");
    assert_eq!(mem.recommended, "50000 100000 200000");
    assert_eq!(mem.status, Status::Raise, "max 184902 < 200000");
    assert_eq!(
        knob(&r, "net.netfilter.nf_conntrack_max").recommended,
        ">= 131072"
    );
    assert_eq!(knob(&r, "net.ipv4.tcp_max_orphans").status, Status::Raise);
    assert!(!r.blockers.iter().any(|b| b.contains("RLIMIT_NOFILE")));
}

#[test]
fn default_host_at_1m_needs_a_million_fds_65535_backlog_and_bigger_tables() {
    let r = report("default", 1_000_000);
    assert_eq!(knob(&r, "RLIMIT_NOFILE hard").recommended, ">= 1048576");
    assert_eq!(knob(&r, "RLIMIT_NOFILE hard").status, Status::Raise);
    assert_eq!(
        knob(&r, "fs.nr_open").status,
        Status::Ok,
        "1048576 is exactly enough"
    );
    let somax = knob(&r, "net.core.somaxconn");
    assert_eq!(somax.recommended, ">= 65535");
    assert_eq!(somax.status, Status::Raise);
    assert_eq!(
        knob(&r, "net.ipv4.tcp_mem").recommended,
        "500000 1000000 2000000"
    );
    assert_eq!(
        knob(&r, "net.ipv4.tcp_mem").set,
        Some(("net.ipv4.tcp_mem".into(), "500000 1000000 2000000".into()))
    );
    let ct = knob(&r, "net.netfilter.nf_conntrack_max");
    assert_eq!(ct.recommended, ">= 2097152");
    assert_eq!(ct.status, Status::Raise);
    assert_eq!(
        knob(&r, "net.core.netdev_max_backlog").recommended,
        ">= 16384"
    );
    assert_eq!(
        knob(&r, "net.ipv4.tcp_max_orphans").recommended,
        ">= 1000000"
    );
    // 8 GiB cannot hold 1M busy connections (~8.6 GiB estimated).
    assert_eq!(knob(&r, "memory (MemTotal)").status, Status::Raise);
    assert!(r.blockers.iter().any(|b| b.starts_with("Memory:")));
}

#[test]
fn tuned_host_meets_1m_with_nothing_to_raise() {
    let r = report("tuned", 1_000_000);
    let raised: Vec<&str> = r
        .knobs
        .iter()
        .filter(|k| k.status == Status::Raise)
        .map(|k| k.name.as_str())
        .collect();
    assert!(raised.is_empty(), "raised on a tuned host: {raised:?}");
    assert!(r.blockers.is_empty());
    assert_eq!(
        knob(&r, "net.netfilter.nf_conntrack_max").current,
        "not loaded"
    );
    assert_eq!(knob(&r, "RLIMIT_MEMLOCK").status, Status::Ok);
}

#[test]
fn tuned_for_1m_is_not_enough_for_4m() {
    let r = report("tuned", 4_000_000);
    assert_eq!(knob(&r, "RLIMIT_NOFILE hard").status, Status::Raise);
    assert_eq!(knob(&r, "fs.nr_open").recommended, ">= 4194304");
    assert_eq!(knob(&r, "fs.nr_open").status, Status::Raise);
}

#[test]
fn port_range_is_info_and_counts_source_ips_for_outbound() {
    let r = report("default", 1_000_000);
    let k = knob(&r, "net.ipv4.ip_local_port_range");
    assert_eq!(k.status, Status::Info);
    assert_eq!(k.current, "32768 60999 (28232 ports)");
    // 1M / 28232 ports -> 36 source addresses, 16 with the full 1024-65535 range.
    assert!(k.why.contains("36 source IPs"), "{}", k.why);
    assert!(k.why.contains("16 with 1024-65535"), "{}", k.why);
    assert!(k.why.contains("127.0.0."), "{}", k.why);
    assert!(k.why.contains("EADDRNOTAVAIL"), "{}", k.why);
}

#[test]
fn memory_estimate_states_kernel_and_percore_costs() {
    let r = report("tuned", 1_000_000);
    let m = &r.memory;
    assert_eq!(m.percore_bytes_per_connection, 256);
    assert_eq!(m.kernel_bytes_per_pair_measured, 9_800);
    assert_eq!(m.kernel_bytes_per_connection, 4_900);
    assert_eq!(m.kernel_bytes_per_connection_published, 3_000);
    assert_eq!(m.idle_total_bytes, 1_000_000 * (4_900 + 256));
    assert_eq!(m.busy_total_bytes, 1_000_000 * (4_900 + 256 + 4_096));
}

#[test]
fn default_host_flags_thp_always_and_counts_numa_node_dirs() {
    let r = report("default", 100_000);
    let thp = knob(&r, "transparent_hugepage");
    assert_eq!(thp.current, "always");
    assert_eq!(thp.status, Status::Info);
    // No node/online file: the node0 directory is counted.
    assert_eq!(knob(&r, "NUMA nodes").current, "1");
    assert_eq!(knob(&r, "CPUs (online)").current, "4 (0-3)");
    // kernel.io_uring_disabled absent = kernel before 6.6: allowed.
    let k = knob(&r, "kernel.io_uring_disabled");
    assert_eq!(k.current, "absent");
    assert_eq!(k.status, Status::Info);
    // Fixture roots are not probed.
    assert_eq!(knob(&r, "io_uring probe").status, Status::Unknown);
}

#[test]
fn listen_backlog_target_grows_with_connections() {
    for (n, rec) in [
        (10_000, ">= 1024"),
        (100_000, ">= 4096"),
        (1_000_000, ">= 65535"),
    ] {
        let r = report("container", n);
        assert_eq!(knob(&r, "net.core.somaxconn").recommended, rec, "{n}");
        assert_eq!(
            knob(&r, "net.ipv4.tcp_max_syn_backlog").recommended,
            rec,
            "{n}"
        );
    }
}

#[test]
fn syn_backlog_below_target_is_raise_only_without_syncookies() {
    let dir = common::scratch_copy("default", "no-cookies");
    std::fs::write(dir.join("proc/sys/net/ipv4/tcp_syncookies"), "0\n").unwrap();
    let r = percore_tune::check(&percore_tune::Host::read(&common::roots(&dir)), 100_000);
    let syn = knob(&r, "net.ipv4.tcp_max_syn_backlog");
    assert_eq!(syn.status, Status::Raise);
    assert_eq!(
        syn.set,
        Some(("net.ipv4.tcp_max_syn_backlog".into(), "4096".into()))
    );
    let cookies = knob(&r, "net.ipv4.tcp_syncookies");
    assert_eq!(cookies.status, Status::Raise);
    assert_eq!(
        cookies.set,
        Some(("net.ipv4.tcp_syncookies".into(), "1".into()))
    );
    let _ = std::fs::remove_dir_all(&dir);
}
