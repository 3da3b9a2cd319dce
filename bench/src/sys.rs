//! Thin wrappers over the Linux calls the load generator and the benchmark driver need:
//! a monotonic clock shared across processes, sockets bound to an explicit source address,
//! CPU affinity, and per-process CPU time / RSS from /proc.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// CLOCK_MONOTONIC in nanoseconds. The same clock in every process of the host, so a timestamp
/// written into a payload by one process can be compared with `mono_ns()` in another.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time consumed by the calling thread, nanoseconds (CLOCK_THREAD_CPUTIME_ID).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the per-thread CPU clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn set_opt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: T) -> io::Result<()> {
    // SAFETY: `value` lives for the duration of the call and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Open a non-blocking TCP socket with TCP_NODELAY, bind it to `src` (with SO_REUSEADDR, so a
/// source port can be reused towards other destinations) when given, and start connecting to
/// `dst`. The connection completes later: wait for writability, then check `take_error`.
pub fn connect_from(
    src: Option<SocketAddrV4>,
    dst: SocketAddrV4,
) -> io::Result<std::net::TcpStream> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is valid and owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1 as libc::c_int)?;
    if let Some(src) = src {
        set_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1 as libc::c_int)?;
        let sa = sockaddr(src);
        // SAFETY: `sa` is a valid sockaddr_in and its exact size is passed.
        let rc = unsafe {
            libc::bind(
                fd,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let sa = sockaddr(dst);
    // SAFETY: `sa` is a valid sockaddr_in and its exact size is passed.
    let rc = unsafe {
        libc::connect(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(std::net::TcpStream::from(owned))
}

/// Make the next close of `s` abortive (RST, no TIME_WAIT): a load run tears down up to
/// 100k sockets at once and must leave no TIME_WAIT state behind for the next run.
pub fn set_linger_zero(s: &impl AsRawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // Best effort: a failure only leaves a TIME_WAIT entry behind.
    let _ = set_opt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, l);
}

/// Pin the calling thread to `cpu`. Returns false if the CPU does not exist or is not allowed.
pub fn pin_current_thread(cpu: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}

/// Restrict the calling process (all threads it creates later) to `cpus`. Meant for
/// `Command::pre_exec`: only async-signal-safe calls.
pub fn set_process_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: CPU_SET only writes inside `set`; `c` is bounded by CPU_SETSIZE below.
        if c < libc::CPU_SETSIZE as usize {
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    // SAFETY: `set` is a valid cpu_set_t and its exact size is passed; pid 0 = this process.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Ask the kernel to SIGKILL the calling process when its parent dies, so that worker and
/// server children never outlive the command that started them. For `Command::pre_exec`.
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Send `signal` to process `pid`.
pub fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) touches no memory; a stale pid only yields ESRCH.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
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

fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime (clock ticks) from the text of /proc/PID/stat.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts with field 3 (state); utime is field 14, stime field 15.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_skip_a_command_name_with_spaces_and_parens() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
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
    fn mono_clock_never_goes_back() {
        let a = mono_ns();
        let b = mono_ns();
        assert!(b >= a);
    }
}
