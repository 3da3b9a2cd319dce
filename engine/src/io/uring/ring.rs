//! One io_uring instance of a shard, with what belongs to it: its provided-buffer ring and
//! its fixed-file table. A shard runs one ring, or several when its connections outgrow one
//! fixed-file table (see [`crate::ServerBuilder::direct_fds_table_max`]).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use io_uring::IoUring;

use super::buf_ring::BufRing;
use super::probe::builder;
use crate::io::sys;

/// One ring of a shard. Ring 0 waits (the shard's one blocking `io_uring_enter`) and holds
/// the wake-up read and one read per other ring on that ring's eventfd; the others are
/// entered without waiting, to submit, or when their eventfd says they have work.
pub(super) struct Ring {
    // Field order matters: the ring is closed before the buffer ring's memory is unmapped.
    pub(super) ring: IoUring,
    pub(super) bufs: BufRing,
    /// Entries of the ring's fixed-file table (0: none registered).
    pub(super) table: u32,
    /// Direct descriptors open in that table (accepted, not yet closed).
    pub(super) open: u32,
    /// Single-shot accepts in flight on this ring: each may take one more entry.
    pub(super) accepting: u32,
    /// Submissions pushed since the ring was last entered (rings other than 0 are entered
    /// before ring 0 waits only when this is set).
    pub(super) queued: bool,
    /// Rings other than 0: the eventfd the kernel signals when the ring has completions or
    /// deferred work to run.
    pub(super) notify: Option<Notify>,
}

/// The eventfd of a ring other than 0, and ring 0's read on it.
pub(super) struct Notify {
    pub(super) fd: OwnedFd,
    /// Target of ring 0's read (8 bytes), alive as long as the rings.
    pub(super) buf: Box<u64>,
    /// Ring 0 has a read armed on `fd`.
    pub(super) armed: bool,
    /// The read completed: enter this ring to run its deferred work and reap it.
    pub(super) fired: bool,
}

impl Ring {
    /// A ring set up like every ring of the backend (`sq_entries`, four times as many CQ
    /// entries), with its buffer ring (`buf_count` buffers of `buf_size` bytes) and (when
    /// `table` is not 0) a sparse fixed-file table of `table` entries; with `notify`, an
    /// eventfd registered to announce its completions.
    pub(super) fn new(
        sq_entries: u32,
        (buf_count, buf_size): (u16, u32),
        table: u32,
        notify: bool,
    ) -> io::Result<Self> {
        let ring = builder().setup_cqsize(sq_entries * 4).build(sq_entries)?;
        let bufs = BufRing::new(&ring, buf_count, buf_size, true)?;
        if table > 0 {
            ring.submitter().register_files_sparse(table)?;
        }
        let notify = if notify {
            let fd = sys::eventfd()?;
            // With DEFER_TASKRUN the kernel signals a registered eventfd when it queues work
            // for the ring (Linux ≥ 6.2), not only when it posts completions: ring 0 learns
            // that this ring needs an enter without anyone polling it.
            ring.submitter().register_eventfd(fd.as_raw_fd())?;
            Some(Notify {
                fd,
                buf: Box::new(0),
                armed: false,
                fired: false,
            })
        } else {
            None
        };
        Ok(Self {
            ring,
            bufs,
            table,
            open: 0,
            accepting: 0,
            queued: false,
            notify,
        })
    }

    /// Direct descriptors this ring's table still has room for (besides those its
    /// single-shot accepts in flight may take).
    pub(super) fn room(&self) -> u32 {
        self.table
            .saturating_sub(self.open.saturating_add(self.accepting))
    }
}
