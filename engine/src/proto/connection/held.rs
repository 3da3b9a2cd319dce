//! What a connection holds between two receives: the handshake so far, or undecoded frames.

/// Bytes kept between two receives: 8 bytes inline, no heap memory while empty.
#[derive(Debug, Default)]
pub(super) struct Held(Option<Box<HeldBytes>>);

#[derive(Debug)]
pub(super) enum HeldBytes {
    /// The handshake so far (server: the request; client: the response) and, for a client,
    /// the key the response must answer.
    Handshake {
        bytes: Vec<u8>,
        key: Option<Box<str>>,
    },
    /// Frames not decoded yet: a partial frame left at the end of a receive buffer, or frames
    /// that arrived with the upgrade request.
    Frames(Vec<u8>),
}

impl Held {
    pub(super) fn clear(&mut self) {
        self.0 = None;
    }

    pub(super) fn frames(&mut self) -> Option<&mut Vec<u8>> {
        match self.0.as_deref_mut() {
            Some(HeldBytes::Frames(v)) => Some(v),
            _ => None,
        }
    }

    /// Hold `bytes` as frames (no heap memory kept when empty).
    pub(super) fn set_frames(&mut self, bytes: Vec<u8>) {
        self.0 = (!bytes.is_empty()).then(|| Box::new(HeldBytes::Frames(bytes)));
    }

    pub(super) fn take_frames(&mut self) -> Vec<u8> {
        match self.0.take().map(|b| *b) {
            Some(HeldBytes::Frames(v)) => v,
            _ => Vec::new(),
        }
    }

    pub(super) fn handshake(&mut self) -> Option<(&mut Vec<u8>, Option<&str>)> {
        match self.0.as_deref_mut() {
            Some(HeldBytes::Handshake { bytes, key }) => Some((bytes, key.as_deref())),
            _ => None,
        }
    }

    pub(super) fn hold_handshake(&mut self, bytes: &[u8], key: Option<Box<str>>) {
        self.0 = Some(Box::new(HeldBytes::Handshake {
            bytes: bytes.to_vec(),
            key,
        }));
    }

    pub(super) fn take_handshake(&mut self) -> Vec<u8> {
        match self.0.take().map(|b| *b) {
            Some(HeldBytes::Handshake { bytes, .. }) => bytes,
            _ => Vec::new(),
        }
    }

    pub(super) fn capacity(&self) -> usize {
        match self.0.as_deref() {
            Some(HeldBytes::Frames(v)) | Some(HeldBytes::Handshake { bytes: v, .. }) => {
                v.capacity() + std::mem::size_of::<HeldBytes>()
            }
            None => 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        match self.0.as_deref() {
            Some(HeldBytes::Frames(v)) | Some(HeldBytes::Handshake { bytes: v, .. }) => v.len(),
            None => 0,
        }
    }
}
