//! [`ConnId`]: a connection's name across the whole server.

use std::fmt;

/// Identifies a connection across the whole server: shard index, slot and generation (a slot
/// reused by a later connection gets a new generation). `Copy + Send`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct ConnId {
    shard: u32,
    key: u32,
    generation: u32,
}

impl ConnId {
    pub(crate) fn new(shard: u32, key: u32, generation: u32) -> Self {
        Self {
            shard,
            key,
            generation,
        }
    }

    /// The index of the shard that owns the connection.
    pub fn shard(&self) -> usize {
        self.shard as usize
    }

    /// The slot within its shard.
    pub fn key(&self) -> usize {
        self.key as usize
    }

    /// The generation of the slot.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.shard, self.key, self.generation)
    }
}
