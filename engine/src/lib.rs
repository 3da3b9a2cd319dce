//! percore: a thread-per-core WebSocket (RFC 6455) engine for Linux.
#![deny(missing_docs)]
#![deny(unsafe_code)]

#[allow(dead_code)]
mod io;
pub mod proto;

/// Which I/O backend the shards run on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring where the kernel allows it, else epoll (the default).
    #[default]
    Auto,
    /// epoll (through mio): readiness, then `read`/`writev` per connection.
    Epoll,
    /// io_uring: multishot accept and recv into a provided-buffer ring, batched submission.
    IoUring,
}
