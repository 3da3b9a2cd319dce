//! Source address allocation for loopback load.
//!
//! One destination `ip:port` admits one connection per (source ip, source port) pair. Letting the
//! kernel pick source ports tops out near 28k connections per source IP and becomes slow (the
//! kernel searches the port range for every connect), so every connection gets an explicit,
//! deterministic source: connection `id` maps to `127.0.0.(FIRST_HOST + k / PORTS_PER_IP)` and
//! port `PORT_FIRST + k % PORTS_PER_IP`, with `k = (id + base) mod capacity`. 127.0.0.1 is left
//! out (servers and other programs use it for their own ephemeral ports). `base` rotates the
//! window between runs.

use std::net::{Ipv4Addr, SocketAddrV4};

/// First source port handed out.
pub const PORT_FIRST: u16 = 10_000;
/// Source ports used per source IP (10000..60000).
pub const PORTS_PER_IP: u32 = 50_000;
/// Host part of the first source IP (127.0.0.2).
pub const FIRST_HOST: u32 = 2;
/// Number of source IPs used (127.0.0.2 ..= 127.0.0.251).
pub const HOSTS: u32 = 250;
/// Distinct source addresses available.
pub const CAPACITY: u32 = PORTS_PER_IP * HOSTS;

/// The source address for connection `id`; `attempt` > 0 gives alternatives when a bind
/// collides with a socket of another program.
pub fn source_for(id: u32, base: u32, attempt: u32) -> SocketAddrV4 {
    // Alternatives jump by a prime stride far beyond any one run's connection count.
    let k = (id as u64 + base as u64 + attempt as u64 * 1_000_003) % CAPACITY as u64;
    let k = k as u32;
    let host = FIRST_HOST + k / PORTS_PER_IP;
    let port = PORT_FIRST as u32 + k % PORTS_PER_IP;
    SocketAddrV4::new(
        Ipv4Addr::new(127, 0, (host >> 8) as u8, host as u8),
        port as u16,
    )
}

/// A base for this run: rotates with the clock so consecutive runs use different sources.
pub fn run_base(seed: u64) -> u32 {
    // Round to a multiple of PORTS_PER_IP/10 so small runs stay on few IPs.
    let step = PORTS_PER_IP / 10;
    ((seed % (CAPACITY / step) as u64) as u32) * step
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn consecutive_ids_get_distinct_sources_for_100k_connections() {
        let base = run_base(12345);
        let set: HashSet<SocketAddrV4> = (0..100_000).map(|id| source_for(id, base, 0)).collect();
        assert_eq!(set.len(), 100_000);
    }

    #[test]
    fn sources_are_loopback_but_never_127_0_0_1_and_ports_stay_in_range() {
        for id in [
            0,
            1,
            49_999,
            50_000,
            99_999,
            CAPACITY - 1,
            CAPACITY,
            u32::MAX,
        ] {
            for base in [0, run_base(7), run_base(u64::MAX)] {
                let a = source_for(id, base, 0);
                assert!(a.ip().is_loopback());
                assert_ne!(*a.ip(), Ipv4Addr::new(127, 0, 0, 1));
                assert!(
                    a.port() >= PORT_FIRST && (a.port() as u32) < PORT_FIRST as u32 + PORTS_PER_IP
                );
            }
        }
    }

    #[test]
    fn ids_roll_over_to_the_next_source_ip_after_ports_per_ip() {
        assert_eq!(source_for(0, 0, 0), "127.0.0.2:10000".parse().unwrap());
        assert_eq!(
            source_for(PORTS_PER_IP - 1, 0, 0),
            "127.0.0.2:59999".parse().unwrap()
        );
        assert_eq!(
            source_for(PORTS_PER_IP, 0, 0),
            "127.0.0.3:10000".parse().unwrap()
        );
    }

    #[test]
    fn retry_attempts_give_a_different_source() {
        let a = source_for(42, 0, 0);
        assert_ne!(a, source_for(42, 0, 1));
        assert_ne!(source_for(42, 0, 1), source_for(42, 0, 2));
    }

    #[test]
    fn worker_processes_with_disjoint_id_ranges_never_share_a_source() {
        // Two workers: ids 0..19000 and 19000..38000, same run base.
        let base = run_base(99);
        let w0: HashSet<_> = (0..19_000).map(|id| source_for(id, base, 0)).collect();
        let w1: HashSet<_> = (19_000..38_000).map(|id| source_for(id, base, 0)).collect();
        assert!(w0.is_disjoint(&w1));
    }
}
