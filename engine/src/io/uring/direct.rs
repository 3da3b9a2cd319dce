//! io_uring direct descriptors (entries of the ring's fixed-file table).

use std::cell::RefCell;
use std::rc::Rc;

/// An accepted io_uring direct descriptor (an index in the fixed-file table of the shard's
/// ring that accepted it) that the shard has not registered yet. Dropping it hands the index
/// back to its driver, which closes it: the table slot is not leaked.
#[derive(Debug)]
pub(crate) struct DirectFd {
    /// The shard's ring whose table holds it.
    pub(super) ring: u16,
    pub(super) index: u32,
    /// Shared with the driver that accepted it: (ring, index) to close.
    pub(super) orphans: Rc<RefCell<Vec<(u16, u32)>>>,
    pub(super) registered: bool,
}

impl Drop for DirectFd {
    fn drop(&mut self) {
        if !self.registered {
            self.orphans.borrow_mut().push((self.ring, self.index));
        }
    }
}
