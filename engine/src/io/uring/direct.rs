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
