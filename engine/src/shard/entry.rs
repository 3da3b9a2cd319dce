//! A shard's slab entry: one connection's protocol state, send queue, application state and
//! the shard's bookkeeping, in 104 bytes or less for `State = ()`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::counters::CloseReason;
use crate::proto::{Connection, Request};
#[cfg(test)]
use crate::send_queue::QueuePool;
use crate::send_queue::SendQueue;

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
    /// With `TLS`: the connection's index in the shard's TLS sessions (3 bytes; they fit in
    /// the entry's padding: 104 bytes with or without the `tls` feature).
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

/// A connection's send queue, in the slab entry: 16 bytes, no heap memory while nothing is
/// queued or in flight (an idle connection's usual state) nor while it holds one shared control
/// frame (an idle ping, in flight or not); anything more takes a boxed body from the shard's
/// stock (see [`SendQueue`]).
pub(crate) type Queue = SendQueue;

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
        // 48 bytes of protocol state, the 16-byte send queue (which holds an idle ping without
        // heap memory), 33 bytes of addresses, timers, flags and the frame budget, and with
        // the `tls` feature the 3-byte TLS index: 97 or 100 bytes, aligned to 104.
        assert!(size <= 104, "slab entry grew to {size} bytes");
        assert_eq!(std::mem::size_of::<Queue>(), 16);
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
        let mut pool = QueuePool::default();
        let mut q = Queue::default();
        assert!(q.is_empty() && q.heap_bytes() == 0);
        q.push(b"hello");
        assert_eq!(q.len(), 5);
        q.set_in_flight(true);
        q.recycle(&mut pool);
        assert!(q.heap_bytes() > 0, "released while the backend holds it");
        q.complete(3);
        q.recycle(&mut pool);
        assert!(q.heap_bytes() > 0, "released with bytes left");
        q.set_in_flight(true);
        q.complete(2);
        q.recycle(&mut pool);
        assert!(q.is_empty() && q.heap_bytes() == 0);
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
