//! `user_data` packing: what each submission was for.

/// What a submission was for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(super) enum OpKind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    /// Cancel and close requests: their completions carry nothing the driver needs.
    Ignore = 4,
    Wake = 5,
    /// Close of a direct descriptor: its completion frees a table slot.
    CloseDirect = 6,
    /// A direct descriptor installed as a plain one just long enough to ask its peer address.
    PeerOf = 7,
    /// A read on the eventfd of ring `slot` (not 0): that ring has work.
    Notify = 8,
}

/// `user_data` of a submission: kind (8 bits), slot generation (24 bits), slot index (32 bits).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct OpId {
    pub(super) kind: OpKind,
    pub(super) gen: u32,
    pub(super) slot: u32,
}

impl OpId {
    pub(super) const GEN_MASK: u32 = (1 << 24) - 1;

    pub(super) fn new(kind: OpKind, slot: usize, gen: u32) -> Self {
        Self {
            kind,
            gen: gen & Self::GEN_MASK,
            slot: slot as u32,
        }
    }

    pub(super) fn encode(self) -> u64 {
        (self.kind as u64) << 56
            | (u64::from(self.gen & Self::GEN_MASK)) << 32
            | u64::from(self.slot)
    }

    pub(super) fn decode(v: u64) -> Option<Self> {
        let kind = match (v >> 56) as u8 {
            1 => OpKind::Accept,
            2 => OpKind::Recv,
            3 => OpKind::Send,
            4 => OpKind::Ignore,
            5 => OpKind::Wake,
            6 => OpKind::CloseDirect,
            7 => OpKind::PeerOf,
            8 => OpKind::Notify,
            _ => return None,
        };
        Some(Self {
            kind,
            gen: (v >> 32) as u32 & Self::GEN_MASK,
            slot: v as u32,
        })
    }
}
