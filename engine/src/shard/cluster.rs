//! The shards' side of the cluster bridge (the bridge itself is [`crate::cluster`]): what a
//! publish hands over, what an interest change says, and the counters both sides share.
//!
//! A shard never blocks and never locks here: a publish is one `try_send` into a bounded
//! channel (refused and counted when full) and, at most once per bridge read, a one-byte write
//! to the bridge's wake-up socket (a socket pair the bridge's runtime polls; a tokio `Notify`
//! would take a mutex whenever the bridge is waiting); an interest change (a topic's first or
//! last subscriber on this server) goes through an unbounded control channel, as control mail
//! does, so that none is ever lost (one per first-or-last-subscriber edge, read by the bridge
//! at every wake-up).
//!
//! Without the `cluster` feature [`ClusterLink`] is an empty enum: the hub's
//! `Option<ClusterLink>` is always `None`, and the checks on the publish path compile to nothing.

#[cfg(feature = "cluster")]
pub(crate) use enabled::*;

#[cfg(not(feature = "cluster"))]
pub(crate) use disabled::ClusterLink;

#[cfg(not(feature = "cluster"))]
mod disabled {
    use std::sync::Arc;

    use crate::proto::Message;
    use crate::pubsub::{PubSubError, PublishOptions};
    use crate::stats::Stats;

    /// No cluster without the feature: this type has no value.
    #[derive(Debug)]
    pub(crate) enum ClusterLink {}

    impl ClusterLink {
        pub(crate) fn admit(&self, _payload_bytes: usize) -> Result<(), PubSubError> {
            match *self {}
        }

        pub(crate) fn publish(
            &self,
            _topic: &[u8],
            _msg: Message<'_>,
            _opts: PublishOptions,
        ) -> Result<(), PubSubError> {
            match *self {}
        }

        pub(crate) fn interest(&self, _topic: &Arc<[u8]>) {
            match *self {}
        }

        pub(crate) fn add_to(&self, _s: &mut Stats) {
            match *self {}
        }
    }
}

#[cfg(feature = "cluster")]
mod enabled {
    use std::fmt;
    use std::io::{self, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use crossbeam_channel::{Receiver, Sender, TrySendError};

    use crate::proto::Message;
    use crate::pubsub::{PubSubError, PublishOptions};
    use crate::stats::Stats;

    /// Most bytes the bridge's NATS headers take on the wire (`NATS/1.0`, `Percore-Pos` with the
    /// largest origin, epoch and sequence, `Percore-Kind: binary`, `Percore-Opts: droppable`,
    /// the blank line). A publish fits when its payload plus this is within the broker's
    /// `max_payload` (the broker counts headers in it). The bridge's tests check the bound.
    pub(crate) const HEADER_BYTES_MAX: usize = 132;

    /// What a shard holds: the way to the bridge.
    pub(crate) struct ClusterLink {
        data: Sender<Outgoing>,
        control: Sender<Control>,
        shared: Arc<BridgeShared>,
    }

    impl fmt::Debug for ClusterLink {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ClusterLink")
                .field("queued", &self.data.len())
                .finish_non_exhaustive()
        }
    }

    /// What the bridge holds: the receiving ends, its end of the wake-up socket and the shared
    /// counters.
    pub(crate) struct BridgeEnds {
        pub(crate) data: Receiver<Outgoing>,
        pub(crate) control: Receiver<Control>,
        /// Readable when a shard woke the bridge (non-blocking).
        pub(crate) wake: UnixStream,
        pub(crate) shared: Arc<BridgeShared>,
    }

    /// A link and its bridge ends; the data channel holds `queue_messages_max` publishes (its
    /// slots are allocated up front: an `Outgoing` and the channel's stamp, 56 bytes each).
    pub(crate) fn link(queue_messages_max: usize) -> io::Result<(ClusterLink, BridgeEnds)> {
        let (data_tx, data_rx) = crossbeam_channel::bounded(queue_messages_max.max(1));
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let shared = Arc::new(BridgeShared::new(wake_tx));
        let link = ClusterLink {
            data: data_tx,
            control: control_tx,
            shared: shared.clone(),
        };
        let ends = BridgeEnds {
            data: data_rx,
            control: control_rx,
            wake: wake_rx,
            shared,
        };
        Ok((link, ends))
    }

    /// One publish on its way to the broker: topic and payload in one buffer (one allocation
    /// and one copy on the publishing shard).
    #[derive(Debug)]
    pub(crate) struct Outgoing {
        buf: Bytes,
        topic_len: usize,
        pub(crate) text: bool,
        pub(crate) opts: PublishOptions,
    }

    impl Outgoing {
        fn new(topic: &[u8], msg: Message<'_>, opts: PublishOptions) -> Self {
            let payload = msg.as_bytes();
            let mut v = Vec::with_capacity(topic.len() + payload.len());
            v.extend_from_slice(topic);
            v.extend_from_slice(payload);
            Self {
                buf: Bytes::from(v),
                topic_len: topic.len(),
                text: matches!(msg, Message::Text(_)),
                opts,
            }
        }

        pub(crate) fn topic(&self) -> &[u8] {
            &self.buf[..self.topic_len]
        }

        /// The payload, sharing the buffer (no copy).
        pub(crate) fn payload(&self) -> Bytes {
            self.buf.slice(self.topic_len..)
        }
    }

    /// Control for the bridge (never refused).
    #[derive(Debug)]
    pub(crate) enum Control {
        /// This server's interest in the topic may have changed (its first subscriber came or
        /// its last left): the bridge looks at the topic directory and subscribes or
        /// unsubscribes.
        Interest(Arc<[u8]>),
        /// Stop: send what is queued (the shards have stopped), then close.
        Stop(std::time::Instant),
    }

    /// Shared by the link (every shard and publisher) and the bridge thread.
    #[derive(Debug)]
    pub(crate) struct BridgeShared {
        /// A wake-up was sent and the bridge has not looked at its queues since.
        wake_pending: AtomicBool,
        /// The publishers' end of the wake-up socket (non-blocking: a full socket means a
        /// wake-up is pending anyway).
        wake_tx: UnixStream,
        /// The broker's `max_payload` (the bridge mirrors its client's; 0 until known).
        pub(crate) max_payload: AtomicUsize,
        /// Written by any publisher (a locked add; only when the queue is full).
        refused: AtomicU64,
        // Written by the bridge thread only.
        pub(crate) connected: AtomicU64,
        pub(crate) reconnects: AtomicU64,
        pub(crate) subjects: AtomicU64,
        pub(crate) sent: AtomicU64,
        pub(crate) unsent: AtomicU64,
        pub(crate) received: AtomicU64,
        pub(crate) lost: AtomicU64,
        pub(crate) discarded: AtomicU64,
    }

    impl BridgeShared {
        fn new(wake_tx: UnixStream) -> Self {
            let zero = || AtomicU64::new(0);
            Self {
                wake_pending: AtomicBool::new(false),
                wake_tx,
                max_payload: AtomicUsize::new(0),
                refused: zero(),
                connected: zero(),
                reconnects: zero(),
                subjects: zero(),
                sent: zero(),
                unsent: zero(),
                received: zero(),
                lost: zero(),
                discarded: zero(),
            }
        }

        /// The bridge is about to read its queues (after it emptied its wake-up socket): the
        /// next post must wake it again.
        pub(crate) fn begin_read(&self) {
            self.wake_pending.store(false, Ordering::Release);
        }

        /// Wake the bridge unless a wake-up is already pending.
        fn wake(&self) {
            if !self.wake_pending.swap(true, Ordering::AcqRel) {
                let _ = (&self.wake_tx).write(&[1]);
            }
        }

        /// Add `n` to a counter the bridge thread alone writes (a plain load and store).
        pub(crate) fn bump(c: &AtomicU64, n: u64) {
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }

        /// Set a gauge the bridge thread alone writes.
        pub(crate) fn set(c: &AtomicU64, v: u64) {
            c.store(v, Ordering::Relaxed);
        }

        fn add_to(&self, s: &mut Stats) {
            let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
            let c = &mut s.cluster;
            c.connected = g(&self.connected);
            c.reconnects = g(&self.reconnects);
            c.subjects = g(&self.subjects);
            c.sent = g(&self.sent);
            c.refused = g(&self.refused);
            c.unsent = g(&self.unsent);
            c.received = g(&self.received);
            c.lost = g(&self.lost);
            c.discarded = g(&self.discarded);
        }
    }

    impl ClusterLink {
        /// Refuse, before anything is delivered, a message the broker would refuse.
        #[inline]
        pub(crate) fn admit(&self, payload_bytes: usize) -> Result<(), PubSubError> {
            let max = self.shared.max_payload.load(Ordering::Relaxed);
            if max != 0 && payload_bytes.saturating_add(HEADER_BYTES_MAX) > max {
                return Err(PubSubError::PayloadTooLarge);
            }
            Ok(())
        }

        /// Hand a publish to the bridge (after [`ClusterLink::admit`]). Kept out of line: the
        /// publish functions that call it stay small enough for their local path to inline as
        /// it did without the cluster (measured with `scripts/publish-cost.sh`).
        #[inline(never)]
        pub(crate) fn publish(
            &self,
            topic: &[u8],
            msg: Message<'_>,
            opts: PublishOptions,
        ) -> Result<(), PubSubError> {
            match self.data.try_send(Outgoing::new(topic, msg, opts)) {
                Ok(()) => {
                    self.shared.wake();
                    Ok(())
                }
                Err(TrySendError::Full(_)) => {
                    self.shared.refused.fetch_add(1, Ordering::Relaxed);
                    Err(PubSubError::ClusterQueueFull)
                }
                Err(TrySendError::Disconnected(_)) => Err(PubSubError::Stopped),
            }
        }

        /// The topic got its first subscriber on this server, or lost its last.
        pub(crate) fn interest(&self, topic: &Arc<[u8]>) {
            if self.control.send(Control::Interest(topic.clone())).is_ok() {
                self.shared.wake();
            }
        }

        /// Ask the bridge to send what is queued by `at` and stop.
        pub(crate) fn stop(&self, at: std::time::Instant) {
            if self.control.send(Control::Stop(at)).is_ok() {
                self.shared.wake();
            }
        }

        /// Add the bridge's counters to `s`.
        pub(crate) fn add_to(&self, s: &mut Stats) {
            self.shared.add_to(s);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_queued_publish_takes_48_bytes_plus_its_buffer() {
            assert_eq!(std::mem::size_of::<Outgoing>(), 48);
        }

        #[test]
        fn a_full_queue_refuses_and_counts_the_publish() {
            let (link, ends) = link(2).unwrap();
            for _ in 0..2 {
                link.publish(b"t", Message::Text("x"), PublishOptions::default())
                    .unwrap();
            }
            assert_eq!(
                link.publish(b"t", Message::Text("x"), PublishOptions::default()),
                Err(PubSubError::ClusterQueueFull)
            );
            let mut s = Stats::default();
            link.add_to(&mut s);
            assert_eq!(s.cluster.refused, 1);
            let m = ends.data.try_recv().unwrap();
            assert_eq!(
                (m.topic(), &m.payload()[..], m.text),
                (&b"t"[..], &b"x"[..], true)
            );
            drop(ends);
            assert_eq!(
                link.publish(b"t", Message::Binary(b"y"), PublishOptions::default()),
                Err(PubSubError::Stopped)
            );
        }

        #[test]
        fn a_message_past_max_payload_is_not_admitted() {
            let (link, _ends) = link(1).unwrap();
            assert_eq!(
                link.admit(1 << 30),
                Ok(()),
                "unknown max_payload admits all"
            );
            link.shared.max_payload.store(1000, Ordering::Relaxed);
            assert_eq!(link.admit(1000 - HEADER_BYTES_MAX), Ok(()));
            assert_eq!(
                link.admit(1001 - HEADER_BYTES_MAX),
                Err(PubSubError::PayloadTooLarge)
            );
        }

        #[test]
        fn wake_ups_are_coalesced_until_the_bridge_reads() {
            use std::io::Read;
            let (link, ends) = link(8).unwrap();
            let mut buf = [0u8; 8];
            link.publish(b"t", Message::Text("1"), PublishOptions::default())
                .unwrap();
            link.publish(b"t", Message::Text("2"), PublishOptions::default())
                .unwrap();
            assert_eq!(
                (&ends.wake).read(&mut buf).unwrap(),
                1,
                "one wake-up for two"
            );
            assert!(
                (&ends.wake).read(&mut buf).is_err(),
                "nothing more (WouldBlock)"
            );
            link.shared.begin_read();
            link.interest(&Arc::from(&b"t"[..]));
            assert_eq!(
                (&ends.wake).read(&mut buf).unwrap(),
                1,
                "woken again after the read"
            );
        }
    }
}
