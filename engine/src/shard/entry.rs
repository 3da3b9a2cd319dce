//! A shard's slab entry: one connection's protocol state, send queue, application state and
//! the shard's bookkeeping, in 96 bytes or less for `State = ()` (with or without `tls`).

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
/// The peer's address is an IPv6 one ([`PeerAddr`] keeps IPv4 ones IPv4-mapped): the top bit.
pub(crate) const PEER_V6: u16 = 1 << 15;
/// Bits 8..=14: the [`CloseReason`] recorded while the connection runs (its code; 0: none
/// yet). Kept in the flags, whose low byte holds the flags above and top bit `PEER_V6`.
const REASON_SHIFT: u32 = 8;
/// The reason's bits, once shifted down (codes up to 127).
const REASON_MASK: u16 = 0x7f;

/// Record why the connection is ending, unless a reason was recorded before (the first cause
/// is the one counted).
#[inline]
pub(crate) fn mark_reason(flags: &mut u16, reason: CloseReason) {
    if (*flags >> REASON_SHIFT) & REASON_MASK == 0 {
        *flags |= (u16::from(reason.code()) & REASON_MASK) << REASON_SHIFT;
    }
}

/// The reason recorded by [`mark_reason`], if any.
pub(crate) fn marked_reason(flags: u16) -> Option<CloseReason> {
    CloseReason::from_code(((flags >> REASON_SHIFT) & REASON_MASK) as u8)
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
    /// `TLS`, the close reason ([`mark_reason`]) and `PEER_V6`.
    pub(crate) flags: u16,
    /// A plain connection's frame budget ([`Entry::budget`]); a TLS connection's session index
    /// ([`Entry::tls`]) instead, whose receives the budget does not pause (3 bytes either way:
    /// 96 bytes with or without the `tls` feature).
    lane: [u8; 3],
}

impl<S> Entry<S> {
    /// A new entry (`flags` gets `PEER_V6` for an IPv6 peer); its frame budget is spent for
    /// turn `turn - 1`, so its first receive starts a full one.
    pub(crate) fn new(
        conn: Connection,
        queue: Queue,
        state: Option<S>,
        peer: std::net::SocketAddr,
        generation: u32,
        flags: u16,
        turn: u8,
    ) -> Self {
        let (peer, v6) = PeerAddr::new(peer);
        let mut e = Self {
            conn,
            queue,
            state,
            peer,
            generation,
            timer_at: 0,
            flags: flags | if v6 { PEER_V6 } else { 0 },
            lane: [0; 3],
        };
        e.set_budget(turn.wrapping_sub(1), 0);
        e
    }

    /// The peer's address.
    pub(crate) fn peer_addr(&self) -> SocketAddr {
        self.peer.get(self.flags)
    }

    /// A plain connection's frame budget: the loop turn (its low bits) it counts for (a
    /// receive in another turn starts with a full one), and the frames it may still decode in
    /// that turn (`recv_frames_per_turn_max`).
    #[inline]
    pub(crate) fn budget(&self) -> (u8, u16) {
        (
            self.lane[0],
            u16::from_le_bytes([self.lane[1], self.lane[2]]),
        )
    }

    /// Set a plain connection's frame budget (see [`Entry::budget`]).
    #[inline]
    pub(crate) fn set_budget(&mut self, turn: u8, frames_left: u16) {
        let f = frames_left.to_le_bytes();
        self.lane = [turn, f[0], f[1]];
    }

    /// With `TLS`: the connection's index in the shard's TLS sessions.
    #[cfg(feature = "tls")]
    #[inline]
    pub(crate) fn tls(&self) -> TlsIndex {
        TlsIndex(self.lane)
    }

    /// Make the entry a TLS connection's, with session `tls` (its frame budget is not kept).
    #[cfg(feature = "tls")]
    pub(crate) fn set_tls(&mut self, tls: TlsIndex) {
        self.lane = tls.0;
    }
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

/// A peer address in 18 bytes, byte-aligned (`SocketAddr` takes 32): the IP (IPv4 as
/// IPv4-mapped IPv6) and the port. Whether it was an IPv6 address (an IPv4-mapped one from a
/// dual-stack socket stays one) is the entry's `PEER_V6` flag. An IPv6 peer's flow label and
/// scope id are not kept.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct PeerAddr {
    ip: [u8; 16],
    port: [u8; 2],
}

impl PeerAddr {
    /// The address, and whether it is an IPv6 one (for `PEER_V6`).
    pub(crate) fn new(addr: SocketAddr) -> (Self, bool) {
        let (ip, v6) = match addr.ip() {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), false),
            IpAddr::V6(a) => (a.octets(), true),
        };
        let port = addr.port().to_ne_bytes();
        (Self { ip, port }, v6)
    }

    /// The address as a `SocketAddr` (flow label and scope id 0), given the entry's flags.
    pub(crate) fn get(&self, flags: u16) -> SocketAddr {
        let ip = Ipv6Addr::from(self.ip);
        let port = u16::from_ne_bytes(self.port);
        match (flags & PEER_V6 != 0, ip.to_ipv4_mapped()) {
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
        // heap memory), 1 of `Option<()>`, 18 of peer address, 4 + 4 + 2 of generation, timer
        // tick and flags (the peer's family among them), and 3 shared by the frame budget and,
        // with the `tls` feature, the TLS index: 96 bytes, with or without `tls`.
        assert!(size <= 96, "slab entry grew to {size} bytes");
        assert_eq!(std::mem::size_of::<Queue>(), 16);
    }

    fn entry(peer: &str, flags: u16) -> Entry<()> {
        let peer = peer.parse().unwrap();
        Entry::new(
            Connection::server(0),
            Queue::default(),
            None,
            peer,
            1,
            flags,
            7,
        )
    }

    #[test]
    fn a_new_entry_starts_with_a_budget_spent_for_the_turn_before() {
        let mut e = entry("127.0.0.1:80", DIRTY);
        assert_eq!(e.budget(), (6, 0));
        e.set_budget(7, 65_535);
        assert_eq!(e.budget(), (7, 65_535));
        e.set_budget(0, 258);
        assert_eq!(e.budget(), (0, 258));
        assert_eq!(e.flags, DIRTY, "an IPv4 peer sets no flag");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_tls_entry_keeps_its_session_index_where_the_budget_was() {
        let mut e = entry("127.0.0.1:80", TLS);
        let i = TlsIndex::new((1 << 24) - 2).unwrap();
        e.set_tls(i);
        assert_eq!(e.tls(), i);
        assert_eq!(e.flags, TLS);
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
            let (p, v6) = PeerAddr::new(addr);
            assert_eq!(v6, addr.is_ipv6(), "{a}");
            let flags = if v6 { PEER_V6 } else { 0 };
            assert_eq!(p.get(flags), addr, "{a}");
            // The flag beside the others, and the entry's own view.
            let mut e = entry(a, OVER_CAPACITY);
            mark_reason(&mut e.flags, CloseReason::Http);
            assert_eq!(e.peer_addr(), addr, "{a}");
            assert_eq!(e.flags & PEER_V6 != 0, v6, "{a}");
            assert_eq!(marked_reason(e.flags), Some(CloseReason::Http), "{a}");
        }
    }

    #[test]
    fn every_close_reason_fits_beside_the_peer_family_bit() {
        // Every reason the flags record (`Normal` and `Abnormal` are told apart at close).
        for r in CloseReason::ALL.into_iter().filter(|r| r.code() != 0) {
            let mut f = PEER_V6 | DEAD;
            mark_reason(&mut f, r);
            assert_eq!(marked_reason(f), Some(r));
            assert_eq!(f & (PEER_V6 | 0xff), PEER_V6 | DEAD);
        }
    }
}
