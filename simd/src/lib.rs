//! SIMD kernels for WebSocket payloads: unmasking and streaming UTF-8 validation.
//!
//! * [`unmask`] XORs a payload with the 4-byte masking key of RFC 6455 §5.3, continuing the key
//!   at any position so a frame split across reads is unmasked piece by piece. The fastest
//!   kernel this CPU supports ([`Kernel`]) is chosen once, on first use.
//! * [`Utf8Validator`] checks text messages as they arrive, chunk by chunk, with code points
//!   straddling chunk and frame boundaries, and reports an error as soon as the bytes seen so far
//!   can no longer be valid UTF-8 (RFC 6455 §8.1 "fail fast"). [`validate_utf8`] checks a whole
//!   buffer at once. Both run on `simdutf8`.
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod unmask;
mod utf8;

pub use unmask::{available_kernels, selected_kernel, unmask, unmask_with, Kernel, Unsupported};
pub use utf8::{validate_utf8, Utf8Error, Utf8Validator};
