//! The cross-thread wake-up: an eventfd the ring keeps a read armed on.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::io::{sys, Wake};

/// The cross-thread wake-up: an eventfd the ring keeps a read armed on.
#[derive(Debug)]
pub(crate) struct EventFdWaker {
    pub(super) fd: OwnedFd,
}

impl EventFdWaker {
    pub(super) fn new() -> io::Result<Self> {
        Ok(Self {
            fd: sys::eventfd()?,
        })
    }
}

impl Wake for EventFdWaker {
    fn wake(&self) -> io::Result<()> {
        sys::eventfd_add(self.fd.as_raw_fd(), 1)
    }
}
