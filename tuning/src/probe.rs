//! Everything that asks the running kernel directly: the io_uring feature probe, `getrlimit`
//! and the page size. The only module of the crate with `unsafe` code, all of it in the
//! io_uring probe (`getrlimit` and the page size go through rustix).
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use io_uring::{cqueue, opcode, types, IoUring, Probe};
use serde::Serialize;

/// What the io_uring probe found on the running kernel.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UringProbe {
    /// `io_uring_setup` with `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (Linux 6.1).
    pub setup_flags: Result<(), String>,
    /// A plain `io_uring_setup` (no flags): fails when io_uring is blocked altogether.
    pub setup_plain: Result<(), String>,
    /// Opcodes the engine uses and whether `IORING_REGISTER_PROBE` lists them as supported.
    pub opcodes: Vec<(String, bool)>,
    /// A multishot accept on a 127.0.0.1 listener completed with `IORING_CQE_F_MORE` (5.19).
    pub multishot_accept: Result<(), String>,
    /// `IORING_REGISTER_PBUF_RING` accepted a provided-buffer ring (5.19).
    pub pbuf_ring: Result<(), String>,
}

/// The opcodes the engine's io_uring backend submits.
pub const ENGINE_OPCODES: [(&str, u8); 6] = [
    ("accept", opcode::Accept::CODE),
    ("recv", opcode::Recv::CODE),
    ("send", opcode::Send::CODE),
    ("send_zc", opcode::SendZc::CODE),
    ("msg_ring", opcode::MsgRingData::CODE),
    ("timeout", opcode::Timeout::CODE),
];

fn err_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM (blocked: seccomp profile or kernel.io_uring_disabled)".into(),
        Some(libc::ENOSYS) => "ENOSYS (io_uring not built into this kernel)".into(),
        Some(libc::EINVAL) => "EINVAL (flag or operation unknown to this kernel)".into(),
        _ => e.to_string(),
    }
}

/// Runs the probe against the running kernel. Bounded: one 8-entry ring, one loopback
/// connection, at most 2 s of waiting. Never panics; every failure is recorded as text.
pub fn probe_io_uring() -> UringProbe {
    let plain = IoUring::new(8);
    let flagged = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8);
    let setup_plain = plain.as_ref().map(drop).map_err(err_text);
    let setup_flags = flagged.as_ref().map(drop).map_err(err_text);
    let ring = match (flagged, plain) {
        (Ok(r), _) | (Err(_), Ok(r)) => r,
        (Err(_), Err(e)) => {
            let msg = format!("no ring: {}", err_text(&e));
            return UringProbe {
                setup_flags,
                setup_plain,
                opcodes: ENGINE_OPCODES
                    .iter()
                    .map(|(n, _)| (n.to_string(), false))
                    .collect(),
                multishot_accept: Err(msg.clone()),
                pbuf_ring: Err(msg),
            };
        }
    };
    let mut probe = Probe::new();
    let opcodes = match ring.submitter().register_probe(&mut probe) {
        Ok(()) => ENGINE_OPCODES
            .iter()
            .map(|(n, code)| (n.to_string(), probe.is_supported(*code)))
            .collect(),
        Err(_) => ENGINE_OPCODES
            .iter()
            .map(|(n, _)| (n.to_string(), false))
            .collect(),
    };
    let pbuf_ring = probe_pbuf_ring(&ring);
    let multishot_accept = probe_multishot_accept(ring);
    UringProbe {
        setup_flags,
        setup_plain,
        opcodes,
        multishot_accept,
        pbuf_ring,
    }
}

fn probe_pbuf_ring(ring: &IoUring) -> Result<(), String> {
    const ENTRIES: u16 = 8;
    const BGID: u16 = 7;
    // One page: the kernel wants the ring page aligned; 8 entries x 16 B fit easily.
    let layout = Layout::from_size_align(4096, 4096).map_err(|e| e.to_string())?;
    // SAFETY: the layout has a non-zero size.
    let mem = unsafe { alloc_zeroed(layout) };
    if mem.is_null() {
        return Err("out of memory".into());
    }
    // SAFETY: `mem` is a zeroed, page-aligned allocation of 4096 bytes (room for ENTRIES
    // `io_uring_buf` entries of 16 B) that stays allocated until after the ring is
    // unregistered below; no buffer is ever added, so the kernel never writes to it.
    let registered = unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(mem as u64, ENTRIES, BGID, 0)
    };
    let result = match registered {
        Ok(()) => match ring.submitter().unregister_buf_ring(BGID) {
            Ok(()) => Ok(()),
            Err(e) => {
                // The kernel may still reference the page: leak it rather than free it.
                return Err(format!("unregister failed: {}", err_text(&e)));
            }
        },
        Err(e) => Err(err_text(&e)),
    };
    // SAFETY: `mem` came from `alloc_zeroed(layout)` and the kernel no longer references it
    // (never registered, or unregistered successfully above).
    unsafe { dealloc(mem, layout) };
    result
}

fn probe_multishot_accept(mut ring: IoUring) -> Result<(), String> {
    const ACCEPT: u64 = 1;
    const DEADLINE: u64 = 2;
    let timeout = types::Timespec::new().sec(2);
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(ACCEPT);
    let deadline = opcode::Timeout::new(&timeout).build().user_data(DEADLINE);
    {
        let mut sq = ring.submission();
        // SAFETY: the accept entry holds no pointer, only the listener's fd (the kernel
        // takes its own reference to that file when the request is issued); the timeout
        // entry points at `timeout`, which the kernel copies when the entry is submitted
        // below and which lives until the end of this function.
        unsafe {
            sq.push(&accept).map_err(|e| e.to_string())?;
            sq.push(&deadline).map_err(|e| e.to_string())?;
        }
    }
    ring.submit().map_err(|e| err_text(&e))?;
    let _client = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    for _ in 0..4 {
        ring.submit_and_wait(1).map_err(|e| err_text(&e))?;
        let Some(cqe) = ring.completion().next() else {
            continue;
        };
        return match cqe.user_data() {
            ACCEPT if cqe.result() >= 0 => {
                // SAFETY: a non-negative accept result is a new fd owned by nobody else.
                drop(unsafe { OwnedFd::from_raw_fd(cqe.result()) });
                if cqueue::more(cqe.flags()) {
                    Ok(())
                } else {
                    Err("completed without IORING_CQE_F_MORE (single-shot only)".into())
                }
            }
            ACCEPT => Err(err_text(&io::Error::from_raw_os_error(-cqe.result()))),
            _ => Err("no accept completion within 2 s".into()),
        };
    }
    Err("no accept completion".into())
}

/// `(soft, hard)` of a resource limit via `getrlimit(2)`; `None` means unlimited.
pub fn getrlimit(resource: rustix::process::Resource) -> io::Result<(Option<u64>, Option<u64>)> {
    let lim = rustix::process::getrlimit(resource);
    Ok((lim.current, lim.maximum))
}

/// The kernel's page size in bytes (the unit of `net.ipv4.tcp_mem`).
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reports_every_engine_opcode_and_never_panics() {
        let p = probe_io_uring();
        assert_eq!(p.opcodes.len(), ENGINE_OPCODES.len());
        // Where a ring can be built at all, the probe must have run the register calls.
        if p.setup_plain.is_err() {
            assert!(p.multishot_accept.is_err());
        }
    }

    #[test]
    fn getrlimit_nofile_soft_not_above_hard() {
        let (soft, hard) = getrlimit(rustix::process::Resource::Nofile).unwrap();
        if let (Some(s), Some(h)) = (soft, hard) {
            assert!(s <= h);
        }
    }
}
