//! Output: the table, JSON, a sysctl.d file, a systemd drop-in, and `--apply`.

use std::fs::OpenOptions;
use std::io::{self, Write};

use crate::check::{bytes, fds_needed, Knob, Report, Status, MEMLOCK_BYTES_RECOMMENDED};
use crate::host::{Host, Roots};

fn is_sysctl(name: &str) -> bool {
    ["fs.", "net.", "kernel.", "vm."]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Prints the human-readable table, memory estimate, blockers and a summary.
pub fn table(report: &Report, roots: &Roots, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "percore tune: {} connections on this host (proc {}, sys {})\n",
        report.connections,
        roots.proc_root.display(),
        roots.sys_root.display()
    )?;
    let head = ["KNOB", "CURRENT", "RECOMMENDED", "STATUS"];
    let mut w = head.map(str::len);
    for k in &report.knobs {
        w[0] = w[0].max(k.name.len());
        w[1] = w[1].max(k.current.len());
        w[2] = w[2].max(k.recommended.len());
        w[3] = w[3].max(k.status.as_str().len());
    }
    writeln!(
        out,
        "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  WHY",
        head[0],
        head[1],
        head[2],
        head[3],
        w0 = w[0],
        w1 = w[1],
        w2 = w[2],
        w3 = w[3]
    )?;
    for k in &report.knobs {
        writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            k.name,
            k.current,
            k.recommended,
            k.status.as_str(),
            k.why,
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        )?;
    }
    let m = &report.memory;
    writeln!(
        out,
        "\nMemory per connection (estimate for {} connections):",
        m.connections
    )?;
    writeln!(
        out,
        "  kernel, idle:   {} per server-side connection (measured here: {} per idle loopback pair, \
         socket + inode + dentry + file slab); published 12M-connection runs: ~{} B per idle socket",
        bytes(m.kernel_bytes_per_connection),
        bytes(m.kernel_bytes_per_pair_measured),
        m.kernel_bytes_per_connection_published
    )?;
    writeln!(
        out,
        "  percore, idle:  {} per connection (the engine's target for user space, not a measurement)",
        bytes(m.percore_bytes_per_connection)
    )?;
    writeln!(
        out,
        "  buffers, busy:  {} per connection with data in flight (tcp_mem budget)",
        bytes(m.buffer_bytes_per_connection)
    )?;
    writeln!(
        out,
        "  total:          {} idle, {} busy",
        bytes(m.idle_total_bytes),
        bytes(m.busy_total_bytes)
    )?;
    if !report.blockers.is_empty() {
        writeln!(out, "\nBLOCKERS:")?;
        for b in &report.blockers {
            writeln!(out, "  - {b}")?;
        }
    }
    let count = |s: Status| report.knobs.iter().filter(|k| k.status == s).count();
    writeln!(
        out,
        "\n{} to raise, {} unknown, {} info, {} ok. Files: --emit sysctl, --emit systemd; \
         --apply shows the sysctl writes (--apply --yes makes them, as root).",
        count(Status::Raise),
        count(Status::Unknown),
        count(Status::Info),
        count(Status::Ok)
    )?;
    Ok(())
}

/// Prints the report as one JSON object.
pub fn json(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    let text = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    writeln!(out, "{text}")
}

fn short_why(k: &Knob) -> String {
    let first = k.why.split(". ").next().unwrap_or("");
    first.trim_end_matches('.').to_string()
}

/// Prints a sysctl.d file: active lines for knobs to raise, comments for the rest.
pub fn sysctl_file(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "# /etc/sysctl.d/90-percore.conf: percore tune for {} connections",
        report.connections
    )?;
    writeln!(
        out,
        "# Load with `sysctl --system` (or `sysctl -p /etc/sysctl.d/90-percore.conf`)."
    )?;
    writeln!(
        out,
        "# Only values below the target are set; values already high enough stay as they are."
    )?;
    for k in report.knobs.iter().filter(|k| is_sysctl(&k.name)) {
        match (&k.set, k.status) {
            (Some((key, value)), _) => {
                writeln!(out, "\n# {} (now {})", short_why(k), k.current)?;
                writeln!(out, "{key} = {value}")?;
            }
            (None, Status::Ok) => writeln!(out, "# ok: {} = {}", k.name, k.current)?,
            (None, Status::Info) => writeln!(
                out,
                "# info: {} = {} (recommended: {})",
                k.name, k.current, k.recommended
            )?,
            (None, _) => writeln!(out, "# unknown: {} ({})", k.name, short_why(k))?,
        }
    }
    writeln!(
        out,
        "\n# RLIMIT_NOFILE and RLIMIT_MEMLOCK are per process, not sysctls: see --emit systemd."
    )
}

/// Prints a systemd unit drop-in with the per-process limits and CPU affinity.
pub fn systemd_dropin(report: &Report, host: &Host, out: &mut dyn Write) -> io::Result<()> {
    let need = fds_needed(report.connections);
    writeln!(
        out,
        "# /etc/systemd/system/percore.service.d/90-percore-tune.conf: percore tune for {} connections",
        report.connections
    )?;
    writeln!(
        out,
        "# Then: systemctl daemon-reload && systemctl restart percore"
    )?;
    match &host.nr_open {
        Ok(v) if *v < need => writeln!(
            out,
            "# fs.nr_open is {v} < {need}: the unit fails to start until the sysctl file \
             (--emit sysctl) raises it."
        )?,
        _ => {}
    }
    writeln!(out, "[Service]")?;
    writeln!(out, "LimitNOFILE={need}")?;
    writeln!(out, "LimitMEMLOCK={}M", MEMLOCK_BYTES_RECOMMENDED >> 20)?;
    match &host.cpus {
        Ok((list, _)) => writeln!(out, "CPUAffinity={}", list.replace(',', " "))?,
        Err(e) => writeln!(out, "# CPUAffinity= (online CPUs unknown: {e})")?,
    }
    Ok(())
}

/// `--apply`: without `yes` prints each write it would make; with `yes` (root only) writes
/// them one by one under the proc root. Returns the exit code (0, or 1 when refused or a
/// write failed).
pub fn apply(
    report: &Report,
    host: &Host,
    roots: &Roots,
    yes: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<i32> {
    let changes: Vec<(&Knob, &String, &String)> = report
        .knobs
        .iter()
        .filter_map(|k| k.set.as_ref().map(|(key, v)| (k, key, v)))
        .collect();
    let manual: Vec<&Knob> = report
        .knobs
        .iter()
        .filter(|k| k.status == Status::Raise && k.set.is_none())
        .collect();
    if !yes {
        writeln!(
            out,
            "dry run: nothing is written (add --yes to write, as root)"
        )?;
        if changes.is_empty() {
            writeln!(
                out,
                "no sysctl to change for {} connections",
                report.connections
            )?;
        }
        for (k, key, value) in &changes {
            writeln!(
                out,
                "would set {key} = {value} (now {}) in {}",
                k.current,
                roots.sysctl_path(key).display()
            )?;
        }
        for k in &manual {
            writeln!(
                out,
                "not changed by --apply: {} (now {}, needs {}): see --emit systemd",
                k.name, k.current, k.recommended
            )?;
        }
        return Ok(0);
    }
    match host.euid {
        Ok(0) => {}
        Ok(uid) => {
            writeln!(
                err,
                "percore tune --apply --yes needs root (effective uid {uid}); nothing was changed. \
                 Run it as root, or install the file from --emit sysctl."
            )?;
            return Ok(1);
        }
        Err(ref e) => {
            writeln!(
                err,
                "percore tune --apply --yes needs root and the effective uid is unknown ({e}); \
                 nothing was changed."
            )?;
            return Ok(1);
        }
    }
    let mut failed = 0;
    if changes.is_empty() {
        writeln!(
            out,
            "no sysctl to change for {} connections",
            report.connections
        )?;
    }
    for (k, key, value) in &changes {
        let path = roots.sysctl_path(key);
        let res = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{value}\n").as_bytes()));
        match res {
            Ok(()) => writeln!(out, "set {key} = {value} (was {})", k.current)?,
            Err(e) => {
                failed += 1;
                writeln!(
                    err,
                    "FAILED to set {key} = {value} in {}: {e}",
                    path.display()
                )?;
            }
        }
    }
    for k in &manual {
        writeln!(
            out,
            "not changed by --apply: {} (now {}, needs {}): see --emit systemd",
            k.name, k.current, k.recommended
        )?;
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
