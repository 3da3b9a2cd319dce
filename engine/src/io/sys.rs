//! Raw system calls, behind one helper (as mio's `syscall!`): each call is one `unsafe` line with
//! its reason, and `-1` becomes the `io::Error` of `errno`. The backends call these wrappers,
//! not `libc` directly, for anything the std library and mio do not cover.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

/// Call `libc::$fn(args…)`; `-1` (or `MAP_FAILED` for `mmap`) is `Err(last_os_error)`.
/// The caller writes the `// SAFETY:` comment for the arguments it passes.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: see the comment at the call site: the arguments satisfy the call's contract.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// The soft `RLIMIT_NOFILE` (at least 1; 1024 if it cannot be read): what bounds plain sockets
/// per process and each io_uring fixed-file table (see
/// [`crate::ServerBuilder::direct_fds_max`]).
pub(crate) fn nofile_limit() -> u32 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // getrlimit writes one rlimit into a live local.
    match syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut rl)) {
        Ok(_) => rl.rlim_cur.clamp(1, u64::from(u32::MAX)) as u32,
        Err(_) => 1024,
    }
}

/// `TCP_NODELAY` on `fd`.
pub(crate) fn set_nodelay(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // setsockopt reads one c_int from a live local.
    syscall!(setsockopt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        (&one as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
    ))
    .map(drop)
}

/// `shutdown(fd, SHUT_WR)`: send FIN, keep reading.
pub(crate) fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // shutdown(2) involves no memory.
    syscall!(shutdown(fd, libc::SHUT_WR)).map(drop)
}

/// `send(fd, buf, MSG_DONTWAIT | MSG_NOSIGNAL)`: as [`send_vectored_nowait`] for one slice
/// (no message header to build and copy in).
pub(crate) fn send_nowait(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // send only reads `buf.len()` bytes from `buf`, borrowed for the call.
    syscall!(send(
        fd,
        buf.as_ptr().cast(),
        buf.len(),
        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL
    ))
    .map(|n| n as usize)
}

/// `sendmsg(fd, parts, MSG_DONTWAIT | MSG_NOSIGNAL)`: write `parts` in order with one call,
/// never blocking (whatever the socket's mode) and never raising `SIGPIPE`. Returns the bytes
/// written (`WouldBlock` when the socket buffer is full).
pub(crate) fn send_vectored_nowait(fd: RawFd, parts: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: all-zero is a valid empty msghdr (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` (std guarantees it on Unix).
    msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = parts.len() as _;
    // sendmsg only reads the msghdr and the iovecs, which borrow `parts` for the call.
    syscall!(sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)).map(|n| n as usize)
}

/// A new non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // eventfd(2) involves no memory.
    let fd = syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add `n` to an eventfd's counter (`EAGAIN`: saturated, a wake-up is pending anyway).
pub(crate) fn eventfd_add(fd: RawFd, n: u64) -> io::Result<()> {
    // write(2) reads 8 bytes from a live u64.
    match syscall!(write(fd, (&n as *const u64).cast(), 8)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// An anonymous private read-write mapping of `len` bytes (zeroed, page aligned).
pub(crate) fn mmap_anon(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping aliases no Rust object; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Unmap a mapping made by [`mmap_anon`].
///
/// # Safety
///
/// `p`/`len` are exactly one mapping from [`mmap_anon`], not used afterwards.
pub(crate) unsafe fn munmap(p: NonNull<u8>, len: usize) {
    // The caller guarantees the mapping; munmap involves no Rust object.
    let _ = syscall!(munmap(p.as_ptr().cast(), len));
}

/// The page size (4 KiB if it cannot be read).
pub(crate) fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // sysconf(3) involves no memory.
    *PAGE.get_or_init(|| match syscall!(sysconf(libc::_SC_PAGESIZE)) {
        Ok(n) if n > 0 => n as usize,
        _ => 4096,
    })
}

/// `madvise(p, len, MADV_DONTNEED)`: drop the pages of a private anonymous range; the next
/// access reads zeros (failures are ignored: the pages merely stay resident).
///
/// # Safety
///
/// `p`/`len` lie inside one mapping from [`mmap_anon`], and no reference to those bytes is
/// alive (their contents become zeros).
pub(crate) unsafe fn madvise_dontneed(p: *mut u8, len: usize) {
    // The caller guarantees the range and that nothing borrows it.
    let _ = syscall!(madvise(p.cast(), len, libc::MADV_DONTNEED));
}

/// The fixed threshold of [`fix_malloc_thresholds`]: glibc's initial mmap and trim thresholds.
pub(crate) const MALLOC_THRESHOLD_BYTES: usize = 128 << 10;

/// Keep glibc malloc's mmap and trim thresholds at [`MALLOC_THRESHOLD_BYTES`] (their initial
/// values) for the whole process: blocks of that size or more are mapped and unmapped on their
/// own, and an arena gives its free top back past that much. Left alone, glibc raises both
/// after the first such block is freed (up to 32 and 64 MiB), so that a freed send queue or
/// message buffer of a megabyte stays resident in its arena, partly reused by later small
/// blocks, and RSS moves by as much as the last burst left behind. Elsewhere a no-op.
pub(crate) fn fix_malloc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) takes the allocator's own lock and touches no Rust object.
    unsafe {
        let bytes = MALLOC_THRESHOLD_BYTES as libc::c_int;
        libc::mallopt(libc::M_MMAP_THRESHOLD, bytes);
        libc::mallopt(libc::M_TRIM_THRESHOLD, bytes);
    }
}

/// Give the allocator's free memory back to the kernel (glibc `malloc_trim(0)`: every arena's
/// free pages, not only the top of the heap). Elsewhere a no-op.
pub(crate) fn malloc_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) takes the allocator's own locks and touches no Rust object.
    unsafe {
        libc::malloc_trim(0);
    }
}
