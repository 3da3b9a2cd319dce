//! [`Output`]: where a connection's bytes go. The shard's send queue implements it; a TLS
//! session in front of that queue would too.

use std::sync::Arc;

/// Where the bytes a connection sends go: the caller's send queue, or a transform in front of
/// it (TLS). Every method appends at the end; nothing is sent until the caller flushes.
pub trait Output {
    /// Queue one frame: `encode` appends it (at most `len_max` bytes) to the `Vec` it is given.
    fn push_frame(&mut self, len_max: usize, encode: impl FnOnce(&mut Vec<u8>));
    /// Queue one control frame (ping, pong, close), as [`Output::push_frame`] does; separate so
    /// that an output can count data and control frames apart without a branch on the data
    /// path.
    fn push_control(&mut self, len_max: usize, encode: impl FnOnce(&mut Vec<u8>)) {
        self.push_frame(len_max, encode);
    }
    /// Queue one frame given as its encoded header and its payload (unmasked, uncompressed).
    /// An output may write them without copying the payload (the shard's, for a large payload
    /// onto an empty queue); by default they are copied in as one frame.
    fn push_frame_parts(&mut self, header: &[u8], payload: &[u8]) {
        self.push_frame(header.len() + payload.len(), |v| {
            v.extend_from_slice(header);
            v.extend_from_slice(payload);
        });
    }

    /// Queue bytes that are not a frame (the handshake's HTTP request or response).
    fn push_bytes(&mut self, bytes: &[u8]);
    /// Queue an encoded frame shared with other connections (a broadcast or publish).
    fn push_shared(&mut self, frame: &Arc<[u8]>);
    /// Queue an encoded control frame shared with other connections (a graceful shutdown's
    /// close), as [`Output::push_shared`] does; separate for the same reason as
    /// [`Output::push_control`].
    fn push_shared_control(&mut self, frame: &Arc<[u8]>) {
        self.push_shared(frame);
    }
}

/// A `Vec` as output: everything appended, in order (tests, simple embedders).
impl Output for Vec<u8> {
    fn push_frame(&mut self, len_max: usize, encode: impl FnOnce(&mut Vec<u8>)) {
        self.reserve(len_max);
        encode(self);
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn push_shared(&mut self, frame: &Arc<[u8]>) {
        self.extend_from_slice(frame);
    }
}
