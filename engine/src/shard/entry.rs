//! A shard's slab entry: one connection's protocol state, send queue, application state and
//! the shard's bookkeeping, in 96 bytes or less for `State = ()`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::{Deref, DerefMut};

use crate::counters::CloseReason;
use crate::proto::{Connection, Request};
use crate::send_queue::{QueuePool, SendQueue};

/// In the dirty list.
pub(crate) const DIRTY: u16 = 1;
/// The queue held at least the low-water mark: `on_drain` is due when it falls below.
pub(crate) const DRAIN_WANTED: u16 = 2;
/// Accepted while `connections_max` were open: answer the upgrade with 503.
pub(crate) const OVER_CAPACITY: u16 = 4;
/// Finished (`on_close` called); waiting for the driver to release the token.
pub(crate) const DEAD: u16 = 8;
/// Spent its frames for a turn with input left: receiving is paused, the shard decodes what it
/// holds on the next turns (`Shard::drain_backlog`).
pub(crate) const BACKLOG: u16 = 16;
/// The peer's EOF came while frames were held by the budget (`BACKLOG`): it is handled once
/// they are decoded, so that nothing the peer sent before its FIN is lost.
pub(crate) const EOF_HELD: u16 = 32;
/// Speaks the resume subprotocol: its text messages are commands (see `shard/resume.rs`).
pub(crate) const RESUME: u16 = 64;
/// A TLS connection: its session is `Shard::tls.conns[tls]` and the backend writes from its
/// wire queue (`queue` holds plaintext). Its receives are not paused by the frame budget.
/// The last free bit of the low byte.
#[cfg(feature = "tls")]
pub(crate) const TLS: u16 = 128;
/// The high byte: the [`CloseReason`] recorded while the connection runs (its code; 0: none
/// yet). Kept in the flags, whose low byte holds the flags above.
const REASON_SHIFT: u32 = 8;

/// Record why the connection is ending, unless a reason was recorded before (the first cause
/// is the one counted).
#[inline]
pub(crate) fn mark_reason(flags: &mut u16, reason: CloseReason) {
    if *flags >> REASON_SHIFT == 0 {
        *flags |= u16::from(reason.code()) << REASON_SHIFT;
    }
}

/// The reason recorded by [`mark_reason`], if any.
pub(crate) fn marked_reason(flags: u16) -> Option<CloseReason> {
    CloseReason::from_code((flags >> REASON_SHIFT) as u8)
}

/// One connection in the shard's slab.
pub(crate) struct Entry<S> {
    /// The protocol state (handshake, frames, close, deadlines).
    pub(crate) conn: Connection,
    pub(crate) queue: Queue,
    /// The application's state: set when the upgrade is accepted (an outbound connection's
    /// when it is made), taken for `on_close`.
    pub(crate) state: Option<S>,
    pub(crate) peer: PeerAddr,
    pub(crate) generation: u32,
    /// Tick the live timer-wheel entry fires at (0: none).
    pub(crate) timer_at: u32,
    /// `DIRTY`, `DRAIN_WANTED`, `OVER_CAPACITY`, `DEAD`, `BACKLOG`, `EOF_HELD`, `RESUME`,
    /// `TLS`, and the close reason in the high byte ([`mark_reason`]).
    pub(crate) flags: u16,
    /// The loop turn (its low bits) `frames_left` counts for: a receive in another turn starts
    /// with a full budget.
    pub(crate) turn: u8,
    /// Frames it may still have decoded in turn `turn` (`recv_frames_per_turn_max`).
    pub(crate) frames_left: u16,
    /// With `TLS`: the connection's index in the shard's TLS sessions (3 bytes; beside the
    /// frame budget's counters it makes the entry 96 bytes when the `tls` feature is built,
    /// for plain connections too).
    #[cfg(feature = "tls")]
    pub(crate) tls: TlsIndex,
}

/// An index in the shard's TLS sessions, in 3 bytes: at most 2^24 TLS connections per shard
/// (a connection past that is refused at accept).
#[cfg(feature = "tls")]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct TlsIndex([u8; 3]);

#[cfg(feature = "tls")]
impl TlsIndex {
    /// Index `i`, if it fits.
    pub(crate) fn new(i: usize) -> Option<Self> {
        let b = u32::try_from(i).ok()?.to_le_bytes();
        (b[3] == 0).then_some(Self([b[0], b[1], b[2]]))
    }

    /// The index.
    pub(crate) fn get(self) -> usize {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], 0]) as usize
    }
}

/// An upgrade request waiting for its deferred decision, beside the slab (not in the entry: a
/// rare state that would otherwise cost every connection 8 bytes).
pub(crate) struct PendingUpgrade {
    /// The generation of the slot it belongs to (a decision for another one is stale).
    pub(crate) generation: u32,
    /// The request, for the 101 response (`Sec-WebSocket-Key`, offered extensions).
    pub(crate) req: Box<Request>,
}

/// A connection's send queue, boxed: 8 bytes in the slab entry (a `SendQueue` takes 64) and
/// no heap memory while nothing is queued or in flight, which is an idle connection's usual
/// state. Reading an absent queue sees an empty one; writing allocates it (one 64-byte
/// allocation per burst of sends).
#[derive(Default)]
pub(crate) struct Queue(Option<Box<SendQueue>>);

/// What an absent [`Queue`] reads as.
static EMPTY_QUEUE: SendQueue = SendQueue::new();

impl Deref for Queue {
    type Target = SendQueue;

    #[inline]
    fn deref(&self) -> &SendQueue {
        self.0.as_deref().unwrap_or(&EMPTY_QUEUE)
    }
}

impl DerefMut for Queue {
    fn deref_mut(&mut self) -> &mut SendQueue {
        self.0.get_or_insert_with(Box::default)
    }
}

impl Queue {
    /// Give the queue's memory back if nothing is queued and the backend holds none of it.
    pub(crate) fn release_if_idle(&mut self) {
        if self
            .0
            .as_ref()
            .is_some_and(|q| q.is_empty() && !q.in_flight())
        {
            self.0 = None;
        }
    }

    /// Hand the queue's storage to `pool` and free its box if nothing is queued and the
    /// backend holds none of it.
    pub(crate) fn recycle_if_idle(&mut self, pool: &mut QueuePool) {
        if let Some(q) = self.0.as_deref_mut() {
            q.recycle(pool);
        }
        self.release_if_idle();
    }

    /// Is the queue's memory allocated?
    #[cfg(test)]
    fn is_allocated(&self) -> bool {
        self.0.is_some()
    }
}

/// A peer address in 19 bytes, byte-aligned (`SocketAddr` takes 32): the IP (IPv4 as
/// IPv4-mapped IPv6) and the port. An IPv6 peer's flow label and scope id are not kept.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct PeerAddr {
    ip: [u8; 16],
    port: [u8; 2],
    v6: bool,
}

impl PeerAddr {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        let (ip, v6) = match addr.ip() {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), false),
            IpAddr::V6(a) => (a.octets(), true),
        };
        Self {
            ip,
            port: addr.port().to_ne_bytes(),
            v6,
        }
    }

    /// The address as a `SocketAddr` (flow label and scope id 0).
    pub(crate) fn get(&self) -> SocketAddr {
        let ip = Ipv6Addr::from(self.ip);
        let port = u16::from_ne_bytes(self.port);
        match (self.v6, ip.to_ipv4_mapped()) {
            (false, Some(v4)) => SocketAddr::new(IpAddr::V4(v4), port),
            _ => SocketAddr::new(IpAddr::V6(ip), port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connection_slab_entry_is_small() {
        let size = std::mem::size_of::<Entry<()>>();
        println!("slab entry for State = (): {size} bytes");
        assert!(size <= 96, "slab entry grew to {size} bytes");
        // With the `tls` feature the TLS index (3 bytes) no longer fits in the padding beside
        // the 16-bit flags and the frame budget's counters (`turn`, `frames_left`): 96 bytes.
        if cfg!(feature = "tls") {
            assert_eq!(size, 96);
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_index_holds_24_bits() {
        for i in [0, 1, 255, 65_536, (1 << 24) - 1] {
            assert_eq!(TlsIndex::new(i).map(TlsIndex::get), Some(i));
        }
        assert_eq!(TlsIndex::new(1 << 24), None);
    }

    #[test]
    fn the_first_close_reason_marked_stays_and_leaves_the_other_flags_alone() {
        let mut flags = DIRTY | DEAD;
        assert_eq!(marked_reason(flags), None);
        mark_reason(&mut flags, CloseReason::ProtocolError);
        mark_reason(&mut flags, CloseReason::Timeout);
        assert_eq!(marked_reason(flags), Some(CloseReason::ProtocolError));
        assert_eq!(
            flags & (DIRTY | DRAIN_WANTED | OVER_CAPACITY | DEAD),
            DIRTY | DEAD
        );
        for r in [
            CloseReason::Http,
            CloseReason::Timeout,
            CloseReason::TlsFailure,
        ] {
            let mut f = OVER_CAPACITY;
            mark_reason(&mut f, r);
            assert_eq!(marked_reason(f), Some(r));
            assert_eq!(
                f & 0xff,
                OVER_CAPACITY,
                "the low byte holds the other flags"
            );
        }
    }

    #[test]
    fn drained_send_queue_gives_its_memory_back() {
        let mut q = Queue::default();
        assert!(q.is_empty() && !q.is_allocated());
        q.push(b"hello");
        assert_eq!(q.len(), 5);
        q.set_in_flight(true);
        q.release_if_idle();
        assert!(q.is_allocated(), "released while the backend holds it");
        q.complete(3);
        q.release_if_idle();
        assert!(q.is_allocated(), "released with bytes left");
        q.set_in_flight(true);
        q.complete(2);
        q.release_if_idle();
        assert!(q.is_empty() && !q.is_allocated());
    }

    #[test]
    fn peer_addr_round_trips_ipv4_and_ipv6() {
        for a in [
            "127.0.0.1:80",
            "[::1]:443",
            "[::ffff:10.0.0.1]:9",
            "[2001:db8::7]:65535",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(PeerAddr::new(addr).get(), addr, "{a}");
        }
    }
}
