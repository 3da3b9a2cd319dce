//! The cross-thread wake-up: an eventfd the ring keeps a read armed on.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::io::Wake;

/// The cross-thread wake-up: an eventfd the ring keeps a read armed on.
#[derive(Debug)]
pub(crate) struct EventFdWaker {
    pub(super) fd: OwnedFd,
}

impl EventFdWaker {
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }
}

impl Wake for EventFdWaker {
    fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd this value owns.
        let r = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // EAGAIN: the counter is saturated, so a wake-up is pending anyway.
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
        Ok(())
    }
}
