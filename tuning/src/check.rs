//! The rules: from a [`Host`] and a target connection count to a [`Report`].

use serde::Serialize;

use crate::host::{Host, Limit, Reading};

/// Kernel memory per idle loopback connection pair measured on the project machine
/// (Slab delta of `tuning/measure/idle_memory.py`, 10,000 pairs, Linux 6.18): socket,
/// inode, dentry and file objects of both ends.
pub const KERNEL_BYTES_PER_PAIR_MEASURED: u64 = 9_800;
/// Kernel memory of one server-side connection: half of a measured pair.
pub const KERNEL_BYTES_PER_CONN: u64 = KERNEL_BYTES_PER_PAIR_MEASURED / 2;
/// Kernel memory per idle socket reported by published 12M-connection runs (tuned kernels,
/// no per-socket epoll/LSM overhead): the floor to expect.
pub const KERNEL_BYTES_PER_CONN_PUBLISHED: u64 = 3_000;
/// User-space memory per idle connection that the percore engine targets (slab entry,
/// timer slot, state; no buffers while idle). A target, not a measurement.
pub const PERCORE_BYTES_PER_IDLE_CONN: u64 = 256;
/// Socket buffer budget per connection for tcp_mem: one page in flight (e.g. one small
/// broadcast frame queued on every connection at once).
pub const BUFFER_BYTES_PER_CONN: u64 = 4096;
/// File descriptors a process needs besides its connections: listeners, eventfds,
/// io_uring rings, epoll, logs, stdio.
pub const FD_HEADROOM: u64 = 1024;
/// RLIMIT_MEMLOCK recommended for the io_uring backend.
pub const MEMLOCK_BYTES_RECOMMENDED: u64 = 64 << 20;

/// How a knob compares with what the target needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Meets the target.
    Ok,
    /// Below what the target needs: change it.
    Raise,
    /// Worth knowing; no change required for the target.
    Info,
    /// Could not be read.
    Unknown,
}

impl Status {
    /// Lower-case name as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Raise => "raise",
            Status::Info => "info",
            Status::Unknown => "unknown",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Knob {
    /// sysctl name, rlimit or feature.
    pub name: String,
    /// Value found on the host.
    pub current: String,
    /// Value for the target connection count.
    pub recommended: String,
    /// Comparison.
    pub status: Status,
    /// What the knob does, what fails when it is too low, the remedy.
    pub why: String,
    /// sysctl key and value `--apply`/`--emit sysctl` write when status is `raise`.
    #[serde(skip)]
    pub set: Option<(String, String)>,
}

/// Memory estimate for the target.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    /// Target connections.
    pub connections: u64,
    /// Kernel bytes per idle server-side connection, measured here (half a loopback pair).
    pub kernel_bytes_per_connection: u64,
    /// Kernel bytes per idle loopback pair, measured here.
    pub kernel_bytes_per_pair_measured: u64,
    /// Kernel bytes per idle socket in published 12M-connection runs.
    pub kernel_bytes_per_connection_published: u64,
    /// percore user-space bytes per idle connection (engine target).
    pub percore_bytes_per_connection: u64,
    /// Socket buffer budget per connection (tcp_mem sizing).
    pub buffer_bytes_per_connection: u64,
    /// connections x (kernel + percore): all idle.
    pub idle_total_bytes: u64,
    /// idle total + connections x buffer budget.
    pub busy_total_bytes: u64,
}

/// Result of checking a host against a target.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target connection count.
    pub connections: u64,
    /// Rows, in print order.
    pub knobs: Vec<Knob>,
    /// Memory estimate.
    pub memory: MemoryEstimate,
    /// Problems this host cannot fix by a sysctl, each with its remedy.
    pub blockers: Vec<String>,
}

impl Report {
    /// Whether any knob has status `raise`.
    pub fn needs_raise(&self) -> bool {
        self.knobs.iter().any(|k| k.status == Status::Raise)
    }
}

/// File descriptors one process needs for `n` connections: `n` + headroom, rounded up to a
/// power of two (1M connections -> 1048576, 100k -> 131072).
pub fn fds_needed(n: u64) -> u64 {
    (n + FD_HEADROOM).next_power_of_two()
}

/// Human-readable bytes (binary units).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn limit_text(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".to_string(), |v| v.to_string())
}

fn unknown(name: &str, recommended: String, e: &crate::host::Unreadable, why: &str) -> Knob {
    Knob {
        name: name.into(),
        current: "?".into(),
        recommended,
        status: Status::Unknown,
        why: format!("{e}. {why}"),
        set: None,
    }
}

/// A `>= rec` sysctl: ok when the current value reaches `rec`, raise otherwise.
fn at_least(name: &str, r: &Reading<u64>, rec: u64, why: &str) -> Knob {
    match r {
        Ok(v) if *v >= rec => Knob {
            name: name.into(),
            current: v.to_string(),
            recommended: format!(">= {rec}"),
            status: Status::Ok,
            why: why.into(),
            set: None,
        },
        Ok(v) => Knob {
            name: name.into(),
            current: v.to_string(),
            recommended: format!(">= {rec}"),
            status: Status::Raise,
            why: why.into(),
            set: Some((name.into(), rec.to_string())),
        },
        Err(e) => unknown(name, format!(">= {rec}"), e, why),
    }
}

fn info(name: &str, current: String, recommended: String, why: String) -> Knob {
    Knob {
        name: name.into(),
        current,
        recommended,
        status: Status::Info,
        why,
        set: None,
    }
}

/// Checks `host` against `n` connections.
pub fn check(host: &Host, n: u64) -> Report {
    let need = fds_needed(n);
    let mut knobs = Vec::new();
    let mut blockers = Vec::new();

    nofile_knobs(host, n, need, &mut knobs, &mut blockers);

    knobs.push(at_least(
        "fs.nr_open",
        &host.nr_open,
        need,
        "Ceiling for the RLIMIT_NOFILE hard limit: setrlimit/ulimit above it fails with EPERM, \
         and a systemd unit with LimitNOFILE= above it fails to start. Raise it first.",
    ));
    let file_max_rec = need + 65_536;
    knobs.push(at_least(
        "fs.file-max",
        &host.file_max,
        file_max_rec,
        "System-wide open files (this server's fds + 65536 for the rest of the host). When hit, \
         accept()/socket() fail with ENFILE and dmesg says 'VFS: file-max limit reached'. A load \
         generator on the same host needs as many again.",
    ));

    let backlog_rec: u64 = match n {
        250_000.. => 65_535,
        50_000.. => 4_096,
        _ => 1_024,
    };
    knobs.push(at_least(
        "net.core.somaxconn",
        &host.somaxconn,
        backlog_rec,
        "Caps the listen() backlog (accept queue). When the queue is full the kernel drops the \
         SYN/final ACK: TcpExtListenOverflows and TcpExtListenDrops grow in `nstat -az`, clients \
         retry after 1 s, 3 s, 7 s. Measured here (backlog_storm.py, 2000 connects, 1 accept/ms): \
         listen(8) -> ~3900 ListenOverflows, p50 connect 1024 ms; listen(4096) -> 0, p50 26 ms. \
         A reconnect storm after a restart brings all N clients back within seconds; the server \
         must also pass the large backlog to listen() (percore serve passes 65535 unless \
         --backlog says less). 1M connects at 12,000/s onto 2 shards: listen(4096) -> 85,838 \
         ListenOverflows and one client reset; listen(65535) -> 0.",
    ));
    let mut syn = at_least(
        "net.ipv4.tcp_max_syn_backlog",
        &host.tcp_max_syn_backlog,
        backlog_rec,
        "Half-open (SYN_RECV) requests. With tcp_syncookies=0 the kernel drops new SYNs once \
         3/4 of it is used (TcpExtListenDrops, clients wait 1 s+); with cookies on, the \
         half-open queue is bounded by the listen backlog and overflow is answered with cookies \
         (TcpExtSyncookiesSent; those connections lose window scaling/SACK unless timestamps \
         are on), so this value matters little.",
    );
    if syn.status == Status::Raise && matches!(host.tcp_syncookies, Ok(c) if c >= 1) {
        syn.status = Status::Info;
        syn.set = None;
    }
    knobs.push(syn);
    knobs.push(match &host.tcp_syncookies {
        Ok(v) if *v >= 1 => Knob {
            name: "net.ipv4.tcp_syncookies".into(),
            current: v.to_string(),
            recommended: "1".into(),
            status: Status::Ok,
            why: "Answers SYNs with cookies when the SYN queue overflows instead of dropping them."
                .into(),
            set: None,
        },
        Ok(v) => Knob {
            name: "net.ipv4.tcp_syncookies".into(),
            current: v.to_string(),
            recommended: "1".into(),
            status: Status::Raise,
            why: "0: a SYN flood or a reconnect storm beyond tcp_max_syn_backlog drops SYNs \
                  (clients wait 1 s+ per retry)."
                .into(),
            set: Some(("net.ipv4.tcp_syncookies".into(), "1".into())),
        },
        Err(e) => unknown(
            "net.ipv4.tcp_syncookies",
            "1".into(),
            e,
            "Cookies absorb SYN queue overflow.",
        ),
    });

    knobs.push(port_range_knob(host, n));
    knobs.push(tcp_mem_knob(host, n));
    knobs.push(buffer_knob(
        "net.ipv4.tcp_rmem",
        &host.tcp_rmem,
        n,
        "receive",
    ));
    knobs.push(buffer_knob("net.ipv4.tcp_wmem", &host.tcp_wmem, n, "send"));
    for (name, r) in [
        ("net.core.rmem_max", &host.rmem_max),
        ("net.core.wmem_max", &host.wmem_max),
    ] {
        let why = "Caps what an application may ask with setsockopt(SO_RCVBUF/SO_SNDBUF); \
                   autotuned buffers use tcp_rmem/tcp_wmem[2] instead. percore does not set \
                   socket buffer sizes: keep the default (212992) unless an embedder does.";
        knobs.push(match r {
            Ok(v) => info(name, v.to_string(), ">= 212992".into(), why.into()),
            Err(e) => unknown(name, ">= 212992".into(), e, why),
        });
    }
    let netdev_rec = (n / 64).next_power_of_two().clamp(1_000, 65_536);
    knobs.push(at_least(
        "net.core.netdev_max_backlog",
        &host.netdev_max_backlog,
        netdev_rec,
        "Per-CPU queue of received packets waiting for the protocol stack (loopback and RPS \
         traffic pass through it). Overflow drops packets silently: 2nd column of \
         /proc/net/softnet_stat. A reconnect storm sends N SYNs in a few seconds (N/64 per \
         softirq round here).",
    ));
    knobs.push(match &host.tcp_tw_reuse {
        Ok(v) => info(
            "net.ipv4.tcp_tw_reuse",
            v.to_string(),
            "1 on a load generator".into(),
            format!(
                "Lets outbound connect() reuse a source port still in TIME_WAIT (needs TCP \
                 timestamps); 2 (default) = loopback only. No effect on accepted connections.{}",
                if *v == 0 {
                    " 0: a load generator that reconnects runs out of ports after a few rounds."
                } else {
                    ""
                }
            ),
        ),
        Err(e) => unknown(
            "net.ipv4.tcp_tw_reuse",
            "1 on a load generator".into(),
            e,
            "Outbound port reuse.",
        ),
    });
    knobs.push(at_least(
        "net.ipv4.tcp_max_orphans",
        &host.tcp_max_orphans,
        n,
        "Sockets closed by the application but still finishing in the kernel (FIN_WAIT, unsent \
         data). A mass close (restart, shard drain, network blip) orphans up to N at once; past \
         the limit the kernel resets them and logs 'TCP: too many orphaned sockets'.",
    ));
    knobs.push(conntrack_knob(host, n));
    for (name, r) in [
        ("net.core.busy_read", &host.busy_read),
        ("net.core.busy_poll", &host.busy_poll),
    ] {
        let why = "Microseconds a blocking read/poll spins on the device queue before sleeping: \
                   lower latency for a whole CPU per shard. Keep 0 unless the shard cores are \
                   dedicated (then ~50). No effect on loopback.";
        knobs.push(match r {
            Ok(v) => info(
                name,
                v.to_string(),
                "0 (50 on dedicated cores)".into(),
                why.into(),
            ),
            Err(e) => unknown(name, "0".into(), e, why),
        });
    }
    io_uring_knobs(host, &mut knobs);
    knobs.push(memlock_knob(host));
    cpu_knobs(host, n, &mut knobs);

    let memory = MemoryEstimate {
        connections: n,
        kernel_bytes_per_connection: KERNEL_BYTES_PER_CONN,
        kernel_bytes_per_pair_measured: KERNEL_BYTES_PER_PAIR_MEASURED,
        kernel_bytes_per_connection_published: KERNEL_BYTES_PER_CONN_PUBLISHED,
        percore_bytes_per_connection: PERCORE_BYTES_PER_IDLE_CONN,
        buffer_bytes_per_connection: BUFFER_BYTES_PER_CONN,
        idle_total_bytes: n * (KERNEL_BYTES_PER_CONN + PERCORE_BYTES_PER_IDLE_CONN),
        busy_total_bytes: n
            * (KERNEL_BYTES_PER_CONN + PERCORE_BYTES_PER_IDLE_CONN + BUFFER_BYTES_PER_CONN),
    };
    let mem_why = format!(
        "Idle: N x ({} kernel, measured here: {} per loopback pair / 2; published 12M runs: ~3 KB \
         per socket) + N x {} percore (engine target) = {}. Busy: + N x {} socket buffers = {}. \
         A load generator on the same host doubles the kernel part.",
        bytes(KERNEL_BYTES_PER_CONN),
        bytes(KERNEL_BYTES_PER_PAIR_MEASURED),
        bytes(PERCORE_BYTES_PER_IDLE_CONN),
        bytes(memory.idle_total_bytes),
        bytes(BUFFER_BYTES_PER_CONN),
        bytes(memory.busy_total_bytes),
    );
    let mem_rec = format!(">= {}", bytes(memory.busy_total_bytes));
    knobs.push(match &host.mem_total {
        Ok(total) if *total >= memory.busy_total_bytes => Knob {
            name: "memory (MemTotal)".into(),
            current: bytes(*total),
            recommended: mem_rec,
            status: Status::Ok,
            why: mem_why,
            set: None,
        },
        Ok(total) => {
            blockers.push(format!(
                "Memory: {} connections need about {} (busy) but the host has {}: add memory or \
                 spread the connections over more hosts.",
                n,
                bytes(memory.busy_total_bytes),
                bytes(*total)
            ));
            Knob {
                name: "memory (MemTotal)".into(),
                current: bytes(*total),
                recommended: mem_rec,
                status: Status::Raise,
                why: mem_why,
                set: None,
            }
        }
        Err(e) => unknown("memory (MemTotal)", mem_rec, e, &mem_why),
    });

    Report {
        connections: n,
        knobs,
        memory,
        blockers,
    }
}

fn nofile_knobs(host: &Host, n: u64, need: u64, knobs: &mut Vec<Knob>, blockers: &mut Vec<String>) {
    let what = format!(
        "One fd per connection + {FD_HEADROOM} (listeners, eventfds, rings, logs), rounded up to \
         a power of two. At the limit accept() fails with EMFILE (measured here: socket() #19996 \
         fails with EMFILE under a 20000 limit)."
    );
    let limit = match &host.nofile {
        Ok(l) => *l,
        Err(e) => {
            knobs.push(unknown(
                "RLIMIT_NOFILE soft",
                format!(">= {need}"),
                e,
                &what,
            ));
            knobs.push(unknown(
                "RLIMIT_NOFILE hard",
                format!(">= {need}"),
                e,
                &what,
            ));
            return;
        }
    };
    let Limit { soft, hard } = limit;
    let soft_ok = !matches!(soft, Some(s) if s < need);
    let hard_ok = !matches!(hard, Some(h) if h < need);
    // io_uring works here (the live probe): direct descriptors hold connections past the limit.
    let uring_ok = host
        .io_uring
        .as_ref()
        .is_some_and(|p| p.setup_flags.is_ok() && p.multishot_accept.is_ok());
    knobs.push(Knob {
        name: "RLIMIT_NOFILE soft".into(),
        current: limit_text(soft),
        recommended: format!(">= {need}"),
        status: match (soft_ok, hard_ok) {
            (true, _) => Status::Ok,
            (false, false) if uring_ok => Status::Info,
            _ => Status::Raise,
        },
        why: if soft_ok || !hard_ok {
            what.clone()
        } else {
            format!(
                "{what} The soft limit can be raised up to the hard limit without privilege: \
                 `ulimit -n {need}` or LimitNOFILE= (--emit systemd)."
            )
        },
        set: None,
    });
    if hard_ok {
        knobs.push(Knob {
            name: "RLIMIT_NOFILE hard".into(),
            current: limit_text(hard),
            recommended: format!(">= {need}"),
            status: Status::Ok,
            why: what,
            set: None,
        });
        return;
    }
    let h = hard.unwrap_or(u64::MAX);
    let can_raise = matches!(host.euid, Ok(0)) && matches!(host.cap_sys_resource, Ok(true));
    let per_process = h.saturating_sub(FD_HEADROOM).max(1);
    let processes = n.div_ceil(per_process);
    let remedy = format!(
        "Raise it where it is set: LimitNOFILE={need} in the systemd unit (--emit systemd), \
         `* - nofile {need}` in /etc/security/limits.conf, `docker run --ulimit nofile={need}:{need}` \
         or the container runtime's default ulimits (fs.nr_open must be >= {need} first). Where it \
         cannot be raised: serve with io_uring direct descriptors (`percore serve --backend uring \
         --direct-fds`, ServerBuilder::direct_fds): the sockets stay out of the fd table, and \
         since the kernel caps each ring's fixed-file table at RLIMIT_NOFILE ({h}) a shard opens \
         another ring per {h} connections (--direct-fds-max bounds a shard, default 1048576), so \
         one process holds {n} under this limit (epoll cannot: one fd per connection); or run \
         {processes} processes of <= {per_process} connections each on the same port with \
         SO_REUSEPORT."
    );
    let why = if can_raise {
        format!("{what} This process may raise it (root with CAP_SYS_RESOURCE). {remedy}")
    } else if uring_ok {
        // Not a blocker for percore: io_uring works here, and direct descriptors spread over
        // several rings per shard hold any number of connections under this limit.
        let reason = "cannot be raised here";
        let text = format!(
            "hard limit {h} {reason}; not needed with io_uring direct descriptors (io_uring \
             works on this host): percore serve --backend uring --direct-fds \
             --direct-fds-max {per_shard} (per shard, with 2 shards). {what} {remedy}",
            per_shard = n.div_ceil(2) + 10_000
        );
        knobs.push(Knob {
            name: "RLIMIT_NOFILE hard".into(),
            current: limit_text(hard),
            recommended: format!(">= {need} (or io_uring direct descriptors)"),
            status: Status::Info,
            why: text,
            set: None,
        });
        return;
    } else {
        let reason = match (&host.euid, &host.cap_sys_resource) {
            (Ok(0), _) => "root without CAP_SYS_RESOURCE, as in a container",
            (Ok(_), _) => "not root",
            _ => "privileges unknown",
        };
        blockers.push(format!(
            "RLIMIT_NOFILE hard limit {h} < {need} needed for {n} connections in one process, \
             and this process cannot raise it ({reason}). {remedy}"
        ));
        format!("BLOCKER: hard limit {h} cannot be raised here ({reason}). {what} {remedy}")
    };
    knobs.push(Knob {
        name: "RLIMIT_NOFILE hard".into(),
        current: limit_text(hard),
        recommended: format!(">= {need}"),
        status: Status::Raise,
        why,
        set: None,
    });
}

fn port_range_knob(host: &Host, n: u64) -> Knob {
    const NAME: &str = "net.ipv4.ip_local_port_range";
    let base = "Outbound only (load generator, proxy): accepted connections share the listen \
                port. Each outbound connection needs a free port per (source IP, destination \
                ip:port); when none is left connect() fails with EADDRNOTAVAIL. Measured here \
                (source_ports.py, 2 x 14000 to one listener): kernel-picked ports 4.4k conn/s, \
                explicit bind(127.0.0.x, port) 59k conn/s.";
    match &host.port_range {
        Ok((lo, hi)) => {
            let ports = hi - lo + 1;
            let ips = n.div_ceil(ports).max(1);
            let full_ips = n.div_ceil(64_512).max(1);
            info(
                NAME,
                format!("{lo} {hi} ({ports} ports)"),
                "1024 65535 on a load generator".into(),
                format!(
                    "{base} For {n} outbound connections to one ip:port: {ips} source IPs with \
                     this range ({full_ips} with 1024-65535); spread them over 127.0.0.2..x \
                     (bind() before connect(), IP_BIND_ADDRESS_NO_PORT) or several server ports."
                ),
            )
        }
        Err(e) => unknown(NAME, "1024 65535 on a load generator".into(), e, base),
    }
}

fn tcp_mem_knob(host: &Host, n: u64) -> Knob {
    const NAME: &str = "net.ipv4.tcp_mem";
    let page = host.page_size.max(1);
    let pressure = (n * BUFFER_BYTES_PER_CONN).div_ceil(page).max(1);
    let (min, max) = (pressure / 2, pressure * 2);
    let rec = format!("{min} {pressure} {max}");
    let why = format!(
        "Pages ({page} B) of socket buffer memory for all TCP sockets together: above the 2nd \
         value TCP shrinks buffers, above the 3rd allocations fail ('TCP: out of memory -- \
         consider tuning tcp_mem' in dmesg, stalls and resets). Idle sockets hold none (measured \
         here: 20k idle sockets, sockstat TCP mem +0 pages); budget {} per connection in flight: \
         N x {} = {} pressure, twice that max. The ~{} of socket/inode/file slab per connection \
         is not counted here.",
        bytes(BUFFER_BYTES_PER_CONN),
        bytes(BUFFER_BYTES_PER_CONN),
        bytes(pressure * page),
        bytes(KERNEL_BYTES_PER_CONN),
    );
    match &host.tcp_mem {
        Ok([a, b, c]) => {
            let ok = *b >= pressure && *c >= max;
            let set = (!ok).then(|| {
                (
                    NAME.to_string(),
                    format!("{} {} {}", (*a).max(min), (*b).max(pressure), (*c).max(max)),
                )
            });
            let mut why = why;
            if let Ok(total) = host.mem_total {
                if max * page > total / 4 * 3 {
                    why.push_str(&format!(
                        " The max is more than 3/4 of this host's {}: the target does not fit.",
                        bytes(total)
                    ));
                }
            }
            Knob {
                name: NAME.into(),
                current: format!("{a} {b} {c}"),
                recommended: rec,
                status: if ok { Status::Ok } else { Status::Raise },
                why,
                set,
            }
        }
        Err(e) => unknown(NAME, rec, e, &why),
    }
}

fn buffer_knob(name: &str, r: &Reading<[u64; 3]>, n: u64, dir: &str) -> Knob {
    let rec_default: u64 = 16_384;
    match r {
        Ok([a, b, c]) => {
            let worst = n.saturating_mul(*b);
            let why = format!(
                "Per-socket {dir} buffer: min, default (initial size), max (autotuning cap), in \
                 bytes. Limits, not allocations: an idle socket holds none. At the default, N \
                 busy sockets could hold {}; tcp_mem is the global cap. For many small-message \
                 connections a default of {rec_default} keeps a burst bounded; keep the max for \
                 the few bulk connections.",
                bytes(worst)
            );
            if *b <= rec_default {
                Knob {
                    name: name.into(),
                    current: format!("{a} {b} {c}"),
                    recommended: format!("4096 {rec_default} {c}"),
                    status: Status::Ok,
                    why,
                    set: None,
                }
            } else {
                info(
                    name,
                    format!("{a} {b} {c}"),
                    format!("4096 {rec_default} {c}"),
                    why,
                )
            }
        }
        Err(e) => unknown(
            name,
            format!("4096 {rec_default} <max>"),
            e,
            "Per-socket buffer limits.",
        ),
    }
}

fn conntrack_knob(host: &Host, n: u64) -> Knob {
    const NAME: &str = "net.netfilter.nf_conntrack_max";
    let rec = (n + n / 4).next_power_of_two();
    match &host.nf_conntrack_max {
        None => Knob {
            name: NAME.into(),
            current: "not loaded".into(),
            recommended: format!(">= {rec} if loaded"),
            status: Status::Ok,
            why: "nf_conntrack is not loaded: no connection tracking limit applies.".into(),
            set: None,
        },
        Some(r) => at_least(
            NAME,
            r,
            rec,
            "nf_conntrack is loaded: every flow takes an entry (~320 B) until it times out \
             (established: 5 days, TIME_WAIT: 120 s). When full, dmesg says 'nf_conntrack: table \
             full, dropping packet' and new SYNs are dropped. N + 25 % rounded up; raise \
             nf_conntrack_buckets (hashsize) to max/4 too, or exempt the port with a `notrack` \
             rule.",
        ),
    }
}

fn io_uring_knobs(host: &Host, knobs: &mut Vec<Knob>) {
    const FALLBACK: &str = "Without it the engine falls back to epoll (logged at start).";
    knobs.push(match &host.io_uring_disabled {
        Ok(0) => Knob {
            name: "kernel.io_uring_disabled".into(),
            current: "0".into(),
            recommended: "0".into(),
            status: Status::Ok,
            why: "io_uring allowed for all processes.".into(),
            set: None,
        },
        Ok(v) => info(
            "kernel.io_uring_disabled",
            v.to_string(),
            "0".into(),
            format!(
                "{} {FALLBACK}",
                if *v == 1 {
                    "1: only root and members of kernel.io_uring_group may create rings."
                } else {
                    "2 (or more): io_uring_setup fails with EPERM for everyone."
                }
            ),
        ),
        Err(crate::host::Unreadable::Missing(_)) => info(
            "kernel.io_uring_disabled",
            "absent".into(),
            "0".into(),
            "Not present (kernel < 6.6): io_uring is allowed unless a seccomp profile blocks it."
                .into(),
        ),
        Err(e) => unknown("kernel.io_uring_disabled", "0".into(), e, FALLBACK),
    });
    let Some(p) = &host.io_uring else {
        knobs.push(Knob {
            name: "io_uring probe".into(),
            current: "not run".into(),
            recommended: "all supported".into(),
            status: Status::Unknown,
            why: "Probed only on the live /proc and /sys (not with --proc-root/--sys-root).".into(),
            set: None,
        });
        return;
    };
    let feature = |name: &str, r: &Result<(), String>, rec: &str, why: &str| match r {
        Ok(()) => Knob {
            name: name.into(),
            current: "supported".into(),
            recommended: rec.into(),
            status: Status::Ok,
            why: why.into(),
            set: None,
        },
        Err(e) => info(name, e.clone(), rec.into(), format!("{why} {FALLBACK}")),
    };
    knobs.push(feature(
        "io_uring setup SINGLE_ISSUER|DEFER_TASKRUN",
        &p.setup_flags.clone().map_err(|e| match &p.setup_plain {
            Ok(()) => e,
            Err(plain) => format!("{e}; plain setup: {plain}"),
        }),
        "supported (Linux >= 6.1)",
        "One ring per shard thread; completions run only when the shard asks for them.",
    ));
    let missing: Vec<&str> = p
        .opcodes
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| n.as_str())
        .collect();
    let names: Vec<&str> = p.opcodes.iter().map(|(n, _)| n.as_str()).collect();
    knobs.push(if missing.is_empty() {
        Knob {
            name: "io_uring opcodes".into(),
            current: names.join(" "),
            recommended: names.join(" "),
            status: Status::Ok,
            why: "IORING_REGISTER_PROBE lists every opcode the engine submits.".into(),
            set: None,
        }
    } else {
        info(
            "io_uring opcodes",
            format!("missing: {}", missing.join(" ")),
            names.join(" "),
            format!("IORING_REGISTER_PROBE does not list them. {FALLBACK}"),
        )
    });
    knobs.push(feature(
        "io_uring multishot accept",
        &p.multishot_accept,
        "supported (Linux >= 5.19)",
        "One accept request yields every new connection (probed on a 127.0.0.1 listener).",
    ));
    knobs.push(feature(
        "io_uring provided buffer ring",
        &p.pbuf_ring,
        "supported (Linux >= 5.19)",
        "IORING_REGISTER_PBUF_RING: receives land in a shared per-shard buffer pool, so idle \
         connections hold no receive buffer.",
    ));
}

fn memlock_knob(host: &Host) -> Knob {
    const NAME: &str = "RLIMIT_MEMLOCK";
    let rec = format!(">= {} (or unlimited)", bytes(MEMLOCK_BYTES_RECOMMENDED));
    let why = "Locked memory. Since Linux 5.12 io_uring rings are charged to the memory cgroup, \
               not here; registered (fixed) buffers are pinned and charged here, and so were \
               rings on older kernels (io_uring_setup then fails with ENOMEM). LimitMEMLOCK= in \
               the unit (--emit systemd).";
    match &host.memlock {
        Ok(Limit { soft, hard }) => {
            let ok = !matches!(soft, Some(s) if *s < MEMLOCK_BYTES_RECOMMENDED);
            let current = format!(
                "{} / {}",
                soft.map_or("unlimited".into(), bytes),
                hard.map_or("unlimited".into(), bytes)
            );
            if ok {
                Knob {
                    name: NAME.into(),
                    current,
                    recommended: rec,
                    status: Status::Ok,
                    why: why.into(),
                    set: None,
                }
            } else {
                info(
                    NAME,
                    current,
                    rec,
                    format!("{why} Enough on >= 5.12 unless fixed buffers are registered."),
                )
            }
        }
        Err(e) => unknown(NAME, rec, e, why),
    }
}

fn cpu_knobs(host: &Host, n: u64, knobs: &mut Vec<Knob>) {
    knobs.push(match &host.cpus {
        Ok((list, count)) => info(
            "CPUs (online)",
            format!("{count} ({list})"),
            "one shard per core".into(),
            format!(
                "Shards are pinned one per core: {} connections per shard. Steer each NIC \
                 queue's IRQ (and RPS/XPS) to the core of the shard that owns its flows; \
                 CPUAffinity= in the unit (--emit systemd).",
                n.div_ceil(*count as u64)
            ),
        ),
        Err(e) => unknown(
            "CPUs (online)",
            "one shard per core".into(),
            e,
            "Shard count.",
        ),
    });
    knobs.push(match &host.numa_nodes {
        Ok(1) => Knob {
            name: "NUMA nodes".into(),
            current: "1".into(),
            recommended: "-".into(),
            status: Status::Ok,
            why: "Single node: no cross-node memory traffic.".into(),
            set: None,
        },
        Ok(v) => info(
            "NUMA nodes",
            v.to_string(),
            "shards on the NIC's node".into(),
            "Keep shards, their memory and the NIC queues they serve on one node \
             (/sys/class/net/<if>/device/numa_node); cross-node traffic costs latency."
                .into(),
        ),
        Err(e) => unknown("NUMA nodes", "-".into(), e, "NUMA layout."),
    });
    let thp_why = "Transparent huge pages. `always` backs small per-shard allocations with 2 MiB \
                   pages (RSS bloat) and wakes khugepaged compaction (latency spikes); \
                   `madvise` lets the engine opt in for its large buffer pool only.";
    knobs.push(match host.thp.as_deref() {
        Ok(mode @ ("madvise" | "never")) => Knob {
            name: "transparent_hugepage".into(),
            current: mode.into(),
            recommended: "madvise".into(),
            status: Status::Ok,
            why: thp_why.into(),
            set: None,
        },
        Ok(mode) => info(
            "transparent_hugepage",
            mode.into(),
            "madvise".into(),
            format!("{thp_why} echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"),
        ),
        Err(e) => unknown("transparent_hugepage", "madvise".into(), e, thp_why),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fds_needed_rounds_up_to_power_of_two() {
        assert_eq!(fds_needed(100_000), 131_072);
        assert_eq!(fds_needed(1_000_000), 1_048_576);
        assert_eq!(fds_needed(0), 1024);
    }

    #[test]
    fn bytes_prints_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
