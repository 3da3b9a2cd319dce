//! io_uring direct descriptors (entries of the ring's fixed-file table).

use std::cell::RefCell;
use std::rc::Rc;

/// An accepted io_uring direct descriptor (an index in the accepting ring's fixed-file table)
/// that the shard has not registered yet. Dropping it hands the index back to its driver, which
/// closes it: the table slot is not leaked.
#[derive(Debug)]
pub(crate) struct DirectFd {
    pub(super) index: u32,
    /// Shared with the driver that accepted it: indexes to close.
    pub(super) orphans: Rc<RefCell<Vec<u32>>>,
    pub(super) registered: bool,
}

impl Drop for DirectFd {
    fn drop(&mut self) {
        if !self.registered {
            self.orphans.borrow_mut().push(self.index);
        }
    }
}

/// The soft `RLIMIT_NOFILE` (at least 1), the largest fixed-file table the kernel accepts.
pub(super) fn nofile_limit() -> u32 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live local.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if r < 0 {
        return 1024;
    }
    rl.rlim_cur.clamp(1, u64::from(u32::MAX)) as u32
}
