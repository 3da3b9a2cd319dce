//! Reading the host: rlimits, sysctls under `<proc>/sys`, sysfs, and the io_uring probe.
//!
//! Every reading is a [`Reading`]: a value, or the reason it could not be had (missing file,
//! unparsable text). Nothing here panics on what it reads.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::probe::{self, UringProbe};

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// The file does not exist or cannot be opened.
    Missing(PathBuf),
    /// The file exists but its content is not what the knob holds.
    Garbage {
        /// The file read.
        path: PathBuf,
        /// The text found there (trimmed, at most 40 characters).
        text: String,
    },
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::Missing(p) => write!(f, "cannot read {}", p.display()),
            Unreadable::Garbage { path, text } => {
                write!(f, "unparsable {:?} in {}", text, path.display())
            }
        }
    }
}

/// A value read from the host, or why it could not be.
pub type Reading<T> = Result<T, Unreadable>;

/// A resource limit; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The soft limit (what the process gets now).
    pub soft: Option<u64>,
    /// The hard limit (the ceiling the soft limit can be raised to without privilege).
    pub hard: Option<u64>,
}

/// Everything the checker reads from one host.
#[derive(Debug, Clone)]
pub struct Host {
    /// RLIMIT_NOFILE of this process.
    pub nofile: Reading<Limit>,
    /// RLIMIT_MEMLOCK of this process, in bytes.
    pub memlock: Reading<Limit>,
    /// fs.nr_open.
    pub nr_open: Reading<u64>,
    /// fs.file-max.
    pub file_max: Reading<u64>,
    /// net.core.somaxconn.
    pub somaxconn: Reading<u64>,
    /// net.ipv4.tcp_max_syn_backlog.
    pub tcp_max_syn_backlog: Reading<u64>,
    /// net.ipv4.tcp_syncookies.
    pub tcp_syncookies: Reading<u64>,
    /// net.ipv4.ip_local_port_range (low, high).
    pub port_range: Reading<(u64, u64)>,
    /// net.ipv4.tcp_mem in pages (min, pressure, max).
    pub tcp_mem: Reading<[u64; 3]>,
    /// net.ipv4.tcp_rmem in bytes (min, default, max).
    pub tcp_rmem: Reading<[u64; 3]>,
    /// net.ipv4.tcp_wmem in bytes (min, default, max).
    pub tcp_wmem: Reading<[u64; 3]>,
    /// net.core.rmem_max.
    pub rmem_max: Reading<u64>,
    /// net.core.wmem_max.
    pub wmem_max: Reading<u64>,
    /// net.core.netdev_max_backlog.
    pub netdev_max_backlog: Reading<u64>,
    /// net.ipv4.tcp_tw_reuse.
    pub tcp_tw_reuse: Reading<u64>,
    /// net.ipv4.tcp_max_orphans.
    pub tcp_max_orphans: Reading<u64>,
    /// net.netfilter.nf_conntrack_max; `None` when conntrack is not loaded.
    pub nf_conntrack_max: Option<Reading<u64>>,
    /// net.core.busy_read.
    pub busy_read: Reading<u64>,
    /// net.core.busy_poll.
    pub busy_poll: Reading<u64>,
    /// kernel.io_uring_disabled (Linux 6.6+).
    pub io_uring_disabled: Reading<u64>,
    /// The io_uring feature probe; `None` when not run (fixture roots).
    pub io_uring: Option<UringProbe>,
    /// Online CPUs as the kernel lists them (e.g. `0-1`) and their count.
    pub cpus: Reading<(String, usize)>,
    /// Online NUMA nodes.
    pub numa_nodes: Reading<usize>,
    /// Transparent huge pages mode (the bracketed word of `enabled`).
    pub thp: Reading<String>,
    /// MemTotal in bytes.
    pub mem_total: Reading<u64>,
    /// Effective uid of this process.
    pub euid: Reading<u32>,
    /// Whether CAP_SYS_RESOURCE is effective (needed to raise a hard rlimit).
    pub cap_sys_resource: Reading<bool>,
    /// Page size in bytes (unit of tcp_mem).
    pub page_size: u64,
}

/// Where to read from.
#[derive(Debug, Clone)]
pub struct Roots {
    /// The procfs root (`/proc` on a real host).
    pub proc_root: PathBuf,
    /// The sysfs root (`/sys` on a real host).
    pub sys_root: PathBuf,
}

impl Roots {
    /// Whether these are the real /proc and /sys of the running kernel (then the
    /// io_uring probe and getrlimit fallbacks apply).
    pub fn is_live(&self) -> bool {
        self.proc_root == Path::new("/proc") && self.sys_root == Path::new("/sys")
    }

    /// The file behind a dotted sysctl name, e.g. `net.core.somaxconn`.
    pub fn sysctl_path(&self, key: &str) -> PathBuf {
        let mut p = self.proc_root.join("sys");
        for part in key.split('.') {
            p.push(part);
        }
        p
    }
}

fn read_text(path: &Path) -> Reading<String> {
    fs::read_to_string(path).map_err(|_| Unreadable::Missing(path.to_path_buf()))
}

fn garbage(path: &Path, text: &str) -> Unreadable {
    Unreadable::Garbage {
        path: path.to_path_buf(),
        text: text.trim().chars().take(40).collect(),
    }
}

/// Parses a file holding whitespace-separated unsigned integers, expecting exactly `N`.
fn read_ints<const N: usize>(path: &Path) -> Reading<[u64; N]> {
    let text = read_text(path)?;
    let mut out = [0u64; N];
    let mut it = text.split_whitespace();
    for slot in out.iter_mut() {
        *slot = it
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| garbage(path, &text))?;
    }
    if it.next().is_some() {
        return Err(garbage(path, &text));
    }
    Ok(out)
}

fn read_u64(path: &Path) -> Reading<u64> {
    read_ints::<1>(path).map(|[v]| v)
}

/// Parses one line of a `/proc/<pid>/limits` file, e.g.
/// `Max open files            20000                20000                files`.
pub fn parse_limits(text: &str, name: &str) -> Option<Limit> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let mut words = line[name.len()..].split_whitespace();
    let conv = |w: &str| -> Option<Option<u64>> {
        if w == "unlimited" {
            Some(None)
        } else {
            w.parse().ok().map(Some)
        }
    };
    let soft = conv(words.next()?)?;
    let hard = conv(words.next()?)?;
    Some(Limit { soft, hard })
}

fn read_limit(roots: &Roots, name: &str, resource: rustix::process::Resource) -> Reading<Limit> {
    let path = roots.proc_root.join("self/limits");
    match read_text(&path) {
        Ok(text) => parse_limits(&text, name).ok_or_else(|| garbage(&path, name)),
        Err(e) if roots.is_live() => probe::getrlimit(resource)
            .map(|(soft, hard)| Limit { soft, hard })
            .map_err(|_| e),
        Err(e) => Err(e),
    }
}

/// Parses a kernel CPU/node list such as `0-3,8,10-11` into a count.
pub fn parse_cpu_list(text: &str) -> Option<usize> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut n = 0usize;
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().ok()?;
                let b: usize = b.trim().parse().ok()?;
                if b < a {
                    return None;
                }
                n += b - a + 1;
            }
            None => {
                part.trim().parse::<usize>().ok()?;
                n += 1;
            }
        }
    }
    Some(n)
}

fn read_list(path: &Path) -> Reading<(String, usize)> {
    let text = read_text(path)?;
    let n = parse_cpu_list(&text).ok_or_else(|| garbage(path, &text))?;
    Ok((text.trim().to_string(), n))
}

fn read_thp(path: &Path) -> Reading<String> {
    let text = read_text(path)?;
    let start = text.find('[');
    let end = text.find(']');
    match (start, end) {
        (Some(s), Some(e)) if s < e => Ok(text[s + 1..e].to_string()),
        _ => Err(garbage(path, &text)),
    }
}

fn read_status_field(roots: &Roots, field: &str) -> Reading<String> {
    let path = roots.proc_root.join("self/status");
    let text = read_text(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| garbage(&path, field))
}

fn read_euid(roots: &Roots) -> Reading<u32> {
    let path = roots.proc_root.join("self/status");
    let uids = read_status_field(roots, "Uid:")?;
    // Uid: real effective saved fs
    uids.split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| garbage(&path, &uids))
}

fn read_cap_sys_resource(roots: &Roots) -> Reading<bool> {
    const CAP_SYS_RESOURCE: u32 = 24;
    let path = roots.proc_root.join("self/status");
    let caps = read_status_field(roots, "CapEff:")?;
    u64::from_str_radix(caps.trim(), 16)
        .map(|bits| bits & (1 << CAP_SYS_RESOURCE) != 0)
        .map_err(|_| garbage(&path, &caps))
}

fn read_mem_total(roots: &Roots) -> Reading<u64> {
    let path = roots.proc_root.join("meminfo");
    let text = read_text(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| garbage(&path, "MemTotal"))
}

fn read_numa_nodes(roots: &Roots) -> Reading<usize> {
    let dir = roots.sys_root.join("devices/system/node");
    let online = dir.join("online");
    if online.exists() {
        return read_list(&online).map(|(_, n)| n);
    }
    let entries = fs::read_dir(&dir).map_err(|_| Unreadable::Missing(dir.clone()))?;
    let n = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("node")
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    if n == 0 {
        Err(Unreadable::Missing(dir.join("node0")))
    } else {
        Ok(n)
    }
}

impl Host {
    /// Reads the host under `roots`. The io_uring probe runs only on the live roots.
    pub fn read(roots: &Roots) -> Host {
        let sysctl = |key: &str| read_u64(&roots.sysctl_path(key));
        let conntrack_path = roots.sysctl_path("net.netfilter.nf_conntrack_max");
        let nf_conntrack_max = if conntrack_path.exists() {
            Some(read_u64(&conntrack_path))
        } else {
            None
        };
        let live = roots.is_live();
        Host {
            nofile: read_limit(roots, "Max open files", rustix::process::Resource::Nofile),
            memlock: read_limit(
                roots,
                "Max locked memory",
                rustix::process::Resource::Memlock,
            ),
            nr_open: sysctl("fs.nr_open"),
            file_max: sysctl("fs.file-max"),
            somaxconn: sysctl("net.core.somaxconn"),
            tcp_max_syn_backlog: sysctl("net.ipv4.tcp_max_syn_backlog"),
            tcp_syncookies: sysctl("net.ipv4.tcp_syncookies"),
            port_range: read_ints::<2>(&roots.sysctl_path("net.ipv4.ip_local_port_range"))
                .and_then(|[lo, hi]| {
                    if lo <= hi {
                        Ok((lo, hi))
                    } else {
                        Err(garbage(
                            &roots.sysctl_path("net.ipv4.ip_local_port_range"),
                            &format!("{lo} {hi}"),
                        ))
                    }
                }),
            tcp_mem: read_ints::<3>(&roots.sysctl_path("net.ipv4.tcp_mem")),
            tcp_rmem: read_ints::<3>(&roots.sysctl_path("net.ipv4.tcp_rmem")),
            tcp_wmem: read_ints::<3>(&roots.sysctl_path("net.ipv4.tcp_wmem")),
            rmem_max: sysctl("net.core.rmem_max"),
            wmem_max: sysctl("net.core.wmem_max"),
            netdev_max_backlog: sysctl("net.core.netdev_max_backlog"),
            tcp_tw_reuse: sysctl("net.ipv4.tcp_tw_reuse"),
            tcp_max_orphans: sysctl("net.ipv4.tcp_max_orphans"),
            nf_conntrack_max,
            busy_read: sysctl("net.core.busy_read"),
            busy_poll: sysctl("net.core.busy_poll"),
            io_uring_disabled: sysctl("kernel.io_uring_disabled"),
            io_uring: live.then(probe::probe_io_uring),
            cpus: read_list(&roots.sys_root.join("devices/system/cpu/online")),
            numa_nodes: read_numa_nodes(roots),
            thp: read_thp(
                &roots
                    .sys_root
                    .join("kernel/mm/transparent_hugepage/enabled"),
            ),
            mem_total: read_mem_total(roots),
            euid: read_euid(roots),
            cap_sys_resource: read_cap_sys_resource(roots),
            page_size: if live { probe::page_size() } else { 4096 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_line_with_numbers_and_unlimited_parses() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max open files            20000                20000                files     \n\
                    Max locked memory         8388608              unlimited            bytes     \n";
        assert_eq!(
            parse_limits(text, "Max open files"),
            Some(Limit {
                soft: Some(20000),
                hard: Some(20000)
            })
        );
        assert_eq!(
            parse_limits(text, "Max locked memory"),
            Some(Limit {
                soft: Some(8388608),
                hard: None
            })
        );
        assert_eq!(parse_limits(text, "Max processes"), None);
        assert_eq!(
            parse_limits("Max open files   lots  20000", "Max open files"),
            None
        );
    }

    #[test]
    fn cpu_lists_count_ranges_and_singles() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn sysctl_key_maps_to_proc_sys_path() {
        let roots = Roots {
            proc_root: "/tmp/p".into(),
            sys_root: "/tmp/s".into(),
        };
        assert_eq!(
            roots.sysctl_path("net.ipv4.tcp_mem"),
            PathBuf::from("/tmp/p/sys/net/ipv4/tcp_mem")
        );
        assert!(!roots.is_live());
    }
}
