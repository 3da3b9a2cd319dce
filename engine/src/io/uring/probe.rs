//! Can this process run the io_uring backend? One probe per process.

use super::buf_ring::{BufRing, BGID};
use io_uring::{opcode, IoUring};

/// Check that this process can run the io_uring backend: the sysctl allows it, a ring with the
/// flags the backend uses can be set up (which needs Linux ≥ 6.1, so multishot accept and recv
/// exist), every opcode the backend submits is supported and a provided-buffer ring can be
/// registered. `Err` says why not, in one line.
///
/// The probe runs on a thread of its own: tearing a ring down queues task work to the thread
/// that created it with `TWA_SIGNAL`, which makes a blocking socket call with a timeout on that
/// thread fail with `EINTR` (seen as failed client handshakes on the thread that started the
/// server).
pub(crate) fn probe() -> Result<(), String> {
    std::thread::Builder::new()
        .name("percore-uring-probe".into())
        .spawn(probe_here)
        .map_err(|e| format!("cannot start the io_uring probe thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
}

pub(super) fn probe_here() -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err("io_uring is disabled (kernel.io_uring_disabled = 2)".into());
        }
    }
    let ring = builder()
        .build(8)
        .map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    let needed = [
        ("accept", opcode::AcceptMulti::CODE),
        ("recv", opcode::RecvMulti::CODE),
        ("sendmsg", opcode::SendMsg::CODE),
        ("send", opcode::Send::CODE),
        ("async_cancel", opcode::AsyncCancel2::CODE),
        ("close", opcode::Close::CODE),
        ("read", opcode::Read::CODE),
    ];
    for (name, code) in needed {
        if !probe.is_supported(code) {
            return Err(format!("io_uring opcode {name} not supported"));
        }
    }
    let bufs =
        BufRing::new(&ring, 1, 64, false).map_err(|e| format!("io_uring buffer ring: {e}"))?;
    let unregistered = ring.submitter().unregister_buf_ring(BGID);
    drop(bufs);
    unregistered.map_err(|e| format!("io_uring buffer ring: {e}"))
}

pub(super) fn builder() -> io_uring::Builder {
    let mut b = IoUring::builder();
    b.setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_submit_all();
    b
}
