//! Thin wrappers over the Linux calls the load generator and the benchmark driver need:
//! a monotonic clock shared across processes, sockets bound to an explicit source address,
//! CPU affinity, children that die with their parent, and per-process CPU time / RSS from
//! /proc, and the release of start-up code pages once a server listens. All of it through
//! safe interfaces (rustix, socket2, core_affinity), except the one `madvise` call of
//! [`release_startup_pages`], the crate's only `unsafe`.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::process::Command;

use rustix::process::{Pid, Signal};
use rustix::time::{clock_gettime, ClockId, Timespec};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};

/// Environment variable naming the pid of the process that started a child `percore`: the
/// child asks to be killed when that parent dies (see [`guard_child`]).
pub const ENV_PARENT_PID: &str = "PERCORE_PARENT_PID";
/// Environment variable with the CPUs (comma separated) a child process is restricted to.
pub const ENV_CPUS: &str = "PERCORE_CPUS";

fn ns(ts: Timespec) -> u64 {
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in nanoseconds. The same clock in every process of the host, so a timestamp
/// written into a payload by one process can be compared with `mono_ns()` in another.
pub fn mono_ns() -> u64 {
    ns(clock_gettime(ClockId::Monotonic))
}

/// CPU time consumed by the calling thread, nanoseconds (CLOCK_THREAD_CPUTIME_ID).
pub fn thread_cpu_ns() -> u64 {
    ns(clock_gettime(ClockId::ThreadCPUTime))
}

/// Open a non-blocking TCP socket with TCP_NODELAY, bind it to `src` (with SO_REUSEADDR, so a
/// source port can be reused towards other destinations) when given, and start connecting to
/// `dst`. The connection completes later: wait for writability, then check `take_error`.
pub fn connect_from(
    src: Option<SocketAddrV4>,
    dst: SocketAddrV4,
) -> io::Result<std::net::TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking().cloexec(), None)?;
    socket.set_nodelay(true)?;
    if let Some(src) = src {
        socket.set_reuse_address(true)?;
        socket.bind(&SockAddr::from(src))?;
    }
    if let Err(e) = socket.connect(&SockAddr::from(dst)) {
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(socket.into())
}

/// Make the next close of `s` abortive (RST, no TIME_WAIT): a load run tears down up to
/// 100k sockets at once and must leave no TIME_WAIT state behind for the next run.
pub fn set_linger_zero(s: &impl AsFd) {
    // Best effort: a failure only leaves a TIME_WAIT entry behind.
    let _ = SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
}

/// Pin the calling thread to `cpu`. Returns false if the CPU does not exist or is not allowed.
pub fn pin_current_thread(cpu: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}

/// Restrict the calling thread, and every thread it creates later, to `cpus`. Called before
/// any other thread exists, this restricts the whole process.
pub fn set_process_affinity(cpus: &[usize]) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    for &c in cpus
        .iter()
        .filter(|&&c| c < rustix::thread::CpuSet::MAX_CPU)
    {
        set.set(c);
    }
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

/// Mark `cmd` (a `percore` child) so that it dies with this process and, when `cpus` is not
/// empty, runs only on `cpus`. The child applies both itself, first thing in `main`, through
/// [`guard_child`].
pub fn guarded(cmd: &mut Command, cpus: &[usize]) {
    cmd.env(ENV_PARENT_PID, std::process::id().to_string());
    if cpus.is_empty() {
        cmd.env_remove(ENV_CPUS);
    } else {
        let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
        cmd.env(ENV_CPUS, list.join(","));
    }
}

/// Child side of [`guarded`]; call first thing in `main`, before any thread starts. When
/// started by a `percore` parent: ask for SIGKILL on the parent's death, then exit if the
/// parent is already gone (it died before the request took effect), then apply the CPU
/// restriction. The variables are removed so that grandchildren do not inherit them.
pub fn guard_child() {
    let parent = std::env::var(ENV_PARENT_PID).ok();
    let cpus = std::env::var(ENV_CPUS).ok();
    std::env::remove_var(ENV_PARENT_PID);
    std::env::remove_var(ENV_CPUS);
    if let Some(parent) = parent {
        die_with_parent(parent.trim().parse().ok());
    }
    if let Some(cpus) = cpus {
        let cpus: Vec<usize> = cpus
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        if let Err(e) = set_process_affinity(&cpus) {
            eprintln!("percore: restricting to CPUs {cpus:?}: {e}");
        }
    }
}

/// Ask the kernel to SIGKILL this process when its parent dies; exit at once if the parent
/// (`expected`, its pid) has already died, since the request would then never fire.
fn die_with_parent(expected: Option<u32>) {
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        eprintln!("percore: PR_SET_PDEATHSIG: {e}");
    }
    let ppid = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
    if expected.is_some() && ppid != expected {
        std::process::exit(1);
    }
}

/// Send SIGTERM to process `pid` (best effort: a stale pid only yields ESRCH).
pub fn terminate(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, Signal::TERM);
    }
}

/// CPU time (user + system, all threads) consumed so far by process `pid`, in nanoseconds.
/// Sums the per-thread scheduler run time (`/proc/PID/task/*/schedstat`, nanosecond
/// resolution); falls back to `/proc/PID/stat` utime+stime (clock-tick resolution).
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in dir.flatten() {
            let p = entry.path().join("schedstat");
            if let Ok(s) = std::fs::read_to_string(p) {
                if let Some(ns) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    total += ns;
                    any = true;
                }
            }
        }
    }
    if any {
        return Some(total);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&stat).map(|ticks| ticks * (1_000_000_000 / clock_ticks_per_s()))
}

/// CPU time (nanoseconds) of process `pid` and all its descendants: every live process of
/// the tree (all threads, as [`process_cpu_ns`]) plus the CPU of children each of them has
/// already reaped (`cutime + cstime`). A server that forks workers is charged for them; when a
/// worker exits and is reaped, its time moves from the live sum into its parent's
/// `cutime + cstime`, so the total does not drop. None if `pid` itself cannot be read.
pub fn process_tree_cpu_ns(pid: u32) -> Option<u64> {
    let tick_ns = 1_000_000_000 / clock_ticks_per_s();
    let mut total = 0;
    for (i, p) in process_tree(pid).into_iter().enumerate() {
        let own = process_cpu_ns(p);
        if i == 0 && own.is_none() {
            return None;
        }
        let reaped = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| parse_stat_children_ticks(&s))
            .unwrap_or(0);
        total += own.unwrap_or(0) + reaped * tick_ns;
    }
    Some(total)
}

/// Resident set size (KiB) of process `pid` and all its descendants, summed (pages shared
/// between processes of the tree count once per process). None if `pid` cannot be read.
pub fn process_tree_rss_kb(pid: u32) -> Option<u64> {
    let mut total = 0;
    for (i, p) in process_tree(pid).into_iter().enumerate() {
        match process_rss_kb(p) {
            Some(kb) => total += kb,
            None if i == 0 => return None,
            None => {}
        }
    }
    Some(total)
}

/// `root` followed by its live descendants (children before grandchildren), found through
/// the parent pid of every process in /proc.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| parse_stat_ppid(&s))
            {
                parents.push((pid, ppid));
            }
        }
    }
    tree_from_parents(root, &parents)
}

/// `root` and its descendants, breadth first, from (pid, parent pid) pairs.
pub fn tree_from_parents(root: u32, parents: &[(u32, u32)]) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(
            parents
                .iter()
                .filter(|&&(c, pp)| pp == p && c != p && !out.contains(&c))
                .map(|&(c, _)| c)
                .collect::<Vec<_>>(),
        );
        i += 1;
    }
    out
}

/// Send SIGTERM to `pid` and every descendant, and return them (collected before
/// signalling, so children of a parent that dies first are not lost from sight).
pub fn terminate_tree(pid: u32) -> Vec<u32> {
    let tree = process_tree(pid);
    for &p in &tree {
        terminate(p);
    }
    tree
}

/// Send SIGKILL to each of `pids` (best effort: gone ones only yield ESRCH).
pub fn kill_all(pids: &[u32]) {
    for &p in pids {
        if let Some(p) = i32::try_from(p).ok().and_then(Pid::from_raw) {
            let _ = rustix::process::kill_process(p, Signal::KILL);
        }
    }
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces and
/// parentheses), starting with field 3 (state).
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// Parent pid (field 4) from the text of /proc/PID/stat.
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    stat_fields(stat)?.nth(1)?.parse().ok()
}

/// cutime + cstime (fields 16 and 17, clock ticks: reaped children) from /proc/PID/stat.
pub fn parse_stat_children_ticks(stat: &str) -> Option<u64> {
    let mut f = stat_fields(stat)?;
    let cutime: u64 = f.nth(13)?.parse().ok()?;
    let cstime: u64 = f.next()?.parse().ok()?;
    Some(cutime + cstime)
}

fn clock_ticks_per_s() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

/// utime + stime (clock ticks) from the text of /proc/PID/stat.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: fields start after the last ')'.
    let mut fields = stat_fields(stat)?;
    // The fields start with field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of process `pid` in KiB (VmRSS from /proc/PID/status).
pub fn process_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss_kb(&status)
}

/// VmRSS (KiB) from the text of /proc/PID/status.
pub fn parse_vmrss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// What [`release_startup_pages`] found and released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Mappings whose pages were dropped.
    pub mappings: usize,
    /// Their resident pages before the call, KiB.
    pub rss_kb: u64,
}

/// Drop this process's resident pages of read-only file mappings (the program's and the shared
/// libraries' code and read-only data), so that what stays resident is what runs afterwards.
///
/// Why: a page of code that a fault maps comes with its neighbours already in the page cache
/// (the kernel's fault-around, 64 KiB), so start-up (argument parsing, TLS and cluster set-up,
/// the thread spawns) leaves 4 MB of `percore`'s 42 MB binary and 2 MB of libc resident in a
/// server whose loop touches far less. After this call the pages the server still runs come
/// back on their first touch, from the page cache (minor faults: no I/O), 64 KiB at a time;
/// the rest stays out. Costs: one `madvise` per mapping now, and one minor fault per 64 KiB
/// of code touched again later (a few dozen for the serve loop).
///
/// Only mappings that cannot hold a private copy of anything are touched: not writable,
/// backed by a regular file (a path, not `/dev/`), no anonymous (copied-on-write) page, not
/// locked, no `VM_IO`/`VM_PFNMAP`/hugetlb/userfaultfd flags (from `/proc/self/smaps`). On
/// those, `MADV_DONTNEED` only unmaps page-cache pages; the next access maps the same bytes
/// of the same file again. Call it from a thread while no other thread maps or unmaps files
/// (loads or unloads a library): the mappings must stay as `smaps` listed them until the call
/// returns. `percore serve` calls it once, when it listens.
#[allow(unsafe_code)]
pub fn release_startup_pages() -> io::Result<Released> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut out = Released::default();
    for m in clean_file_mappings(&smaps) {
        // SAFETY: `m` is a whole mapping that `smaps` just listed as a read-only, unlocked
        // mapping of a regular file holding no anonymous page; nothing in this process maps or
        // unmaps files meanwhile (the caller's contract). MADV_DONTNEED on such a mapping only
        // drops page-table entries of page-cache pages: every later access reads the same file
        // bytes, so no Rust object's memory changes.
        let rc = unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, libc::MADV_DONTNEED) };
        if rc == 0 {
            out.mappings += 1;
            out.rss_kb += m.rss_kb;
        }
    }
    Ok(out)
}

/// One mapping [`release_startup_pages`] may drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanMapping {
    /// Start address.
    pub start: usize,
    /// Length, bytes.
    pub len: usize,
    /// Resident, KiB.
    pub rss_kb: u64,
}

/// The mappings of an smaps text that are read-only, backed by a regular file, unlocked,
/// without anonymous pages or special flags, and resident at all.
pub fn clean_file_mappings(smaps: &str) -> Vec<CleanMapping> {
    struct Cur {
        m: CleanMapping,
        ok: bool,
    }
    let mut out = Vec::new();
    let mut cur: Option<Cur> = None;
    let mut finish = |cur: &mut Option<Cur>| {
        if let Some(c) = cur.take() {
            if c.ok && c.m.rss_kb > 0 {
                out.push(c.m);
            }
        }
    };
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            finish(&mut cur);
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            let perms = f.next().unwrap_or("");
            let path = f.nth(3).unwrap_or("");
            let ok = b > a
                && perms.len() == 4
                && !perms.contains('w')
                && path.starts_with('/')
                && !path.starts_with("/dev/");
            cur = Some(Cur {
                m: CleanMapping {
                    start: a,
                    len: b - a,
                    rss_kb: 0,
                },
                ok,
            });
            continue;
        }
        let Some(c) = cur.as_mut() else { continue };
        let value = f.next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => c.m.rss_kb = value.unwrap_or(0),
            "Anonymous:" | "Locked:" if value != Some(0) => c.ok = false,
            "VmFlags:"
                if line
                    .split_whitespace()
                    .any(|fl| matches!(fl, "io" | "pf" | "lo" | "ht" | "um" | "uw" | "dd")) =>
            {
                c.ok = false;
            }
            _ => {}
        }
    }
    finish(&mut cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_skip_a_command_name_with_spaces_and_parens() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn stat_parent_and_reaped_children_fields() {
        let stat = "1234 (a b) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 75 30 12 20 0 3 0";
        assert_eq!(parse_stat_ppid(stat), Some(77));
        assert_eq!(parse_stat_children_ticks(stat), Some(42));
    }

    #[test]
    fn process_tree_lists_descendants_breadth_first_once() {
        let pairs = [(2, 1), (3, 2), (4, 1), (5, 3), (6, 9), (1, 0), (7, 7)];
        assert_eq!(tree_from_parents(1, &pairs), vec![1, 2, 4, 3, 5]);
        assert_eq!(tree_from_parents(6, &pairs), vec![6]);
        assert_eq!(tree_from_parents(7, &pairs), vec![7]);
    }

    #[test]
    fn a_forked_child_is_part_of_the_tree_and_of_its_cpu() {
        let mut child = Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .unwrap();
        let me = std::process::id();
        // The busy loop takes a few hundred ms; wait for it (bounded).
        let deadline = mono_ns() + 10_000_000_000;
        let child_ns = loop {
            let c = process_cpu_ns(child.id()).unwrap_or(0);
            if c > 20_000_000 || mono_ns() > deadline {
                break c;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(process_tree(me).contains(&child.id()));
        let own = process_cpu_ns(me).unwrap();
        let tree = process_tree_cpu_ns(me).unwrap();
        assert!(
            tree >= own + child_ns,
            "tree {tree} own {own} child {child_ns}"
        );
        assert!(process_tree_rss_kb(me).unwrap() > process_rss_kb(me).unwrap());
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn vmrss_is_read_from_status() {
        let status = "Name:\tpercore\nVmPeak:\t  9000 kB\nVmRSS:\t    4242 kB\nThreads:\t2\n";
        assert_eq!(parse_vmrss_kb(status), Some(4242));
        assert_eq!(parse_vmrss_kb("Name: x\n"), None);
    }

    #[test]
    fn own_process_cpu_and_rss_are_readable() {
        let pid = std::process::id();
        assert!(process_rss_kb(pid).unwrap_or(0) > 0);
        assert!(process_cpu_ns(pid).is_some());
    }

    #[test]
    fn only_clean_read_only_file_mappings_are_released() {
        let smaps = "\
55d0c0000000-55d0c0400000 r-xp 00001000 fd:00 123 /usr/bin/percore
Rss:                1024 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd ex mr mw me sd
55d0c0400000-55d0c0500000 r--p 00401000 fd:00 123 /usr/bin/percore
Rss:                  64 kB
Anonymous:            64 kB
Locked:                0 kB
VmFlags: rd mr mw me ac sd
55d0c0500000-55d0c0510000 rw-p 00501000 fd:00 123 /usr/bin/percore
Rss:                  64 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0000100000 r--p 00000000 fd:00 456 /usr/lib/libc.so.6
Rss:                 200 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd mr mw me sd
7f0000100000-7f0000200000 r-xp 00000000 fd:00 456 /usr/lib/libc.so.6
Rss:                 300 kB
Anonymous:             0 kB
Locked:              300 kB
VmFlags: rd ex mr mw me lo sd
7f0000200000-7f0000300000 r--s 00000000 00:05 9 /dev/something
Rss:                   4 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd sh mr mw me io pf
7f0000300000-7f0000400000 r--p 00000000 00:00 0
Rss:                   4 kB
Anonymous:             4 kB
Locked:                0 kB
7f0000400000-7f0000500000 r-xp 00000000 fd:00 789 /usr/lib/libm.so.6
Rss:                   0 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd ex mr mw me sd
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Rss:                   0 kB
";
        let m = clean_file_mappings(smaps);
        assert_eq!(
            m,
            vec![
                CleanMapping {
                    start: 0x55d0c0000000,
                    len: 0x400000,
                    rss_kb: 1024
                },
                CleanMapping {
                    start: 0x7f0000000000,
                    len: 0x100000,
                    rss_kb: 200
                },
            ]
        );
    }

    #[test]
    fn releasing_startup_pages_keeps_the_process_working() {
        let before = process_rss_kb(std::process::id()).unwrap();
        let r = release_startup_pages().unwrap();
        assert!(r.mappings > 0, "{r:?}");
        // Code runs again from the page cache, data is untouched.
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
        assert!(process_rss_kb(std::process::id()).unwrap() > 0);
        assert!(r.rss_kb <= before, "{r:?} before {before}");
    }

    #[test]
    fn mono_clock_never_goes_back() {
        let a = mono_ns();
        let b = mono_ns();
        assert!(b >= a);
    }
}
