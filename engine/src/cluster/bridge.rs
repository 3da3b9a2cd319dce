//! The bridge thread: a current-thread tokio runtime running the NATS client and three kinds of
//! task on one thread (a `LocalSet`):
//!
//! - the **publish loop** reads the shards' queue (woken at most once per read through the
//!   link's wake-up socket), numbers each publish in its topic's stream and writes it to the
//!   broker (or counts it as unsent while disconnected); it also passes interest changes and
//!   `Stop` on;
//! - the **interest loop** keeps one NATS subscription per topic with local subscribers
//!   (looking the topic up in the hub's directory on every change, so it always converges on
//!   the current state), and after changes and after every (re)connection makes a round trip
//!   to the broker before it reports `connected` and `subjects` (so a test, or an operator, can
//!   tell when remote traffic flows);
//! - one **receive task** per subscribed topic checks each message's position (see
//!   [`super::position`]) and hands it to the shards' mailboxes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, RequestErrorKind, ServerAddr, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::net::UnixStream;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, LocalSet};

use super::position::{self, Origins, Pos, Verdict};
use super::subject::subject;
use crate::proto::Message;
use crate::shard::{BridgeEnds, BridgeShared, Control, Hub, Outgoing};

/// Publishes written per turn of the publish loop before it yields to the receive tasks.
const PUBLISHES_PER_TURN: usize = 1024;

/// How long the round trip that confirms subscriptions may take before it is tried again.
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);

/// Retry period of an unconfirmed round trip.
const SYNC_RETRY: Duration = Duration::from_millis(200);

/// What the bridge runs with (checked by `ClusterConfig`).
pub(super) struct Settings {
    pub(super) urls: Vec<ServerAddr>,
    pub(super) prefix: String,
    pub(super) sequenced_topics_max: usize,
    pub(super) subscription_messages_max: usize,
    pub(super) origins_per_topic_max: usize,
    pub(super) reconnect_delay_max: Duration,
    pub(super) origin: u64,
}

/// The thread's body: run until `Control::Stop`.
pub(super) fn run(runtime: Runtime, settings: Settings, hub: Arc<Hub>, ends: BridgeEnds) {
    let local = LocalSet::new();
    local.block_on(&runtime, bridge(settings, hub, ends));
}

/// For the interest loop.
#[derive(Debug)]
enum Work {
    /// Interest in this topic may have changed.
    Topic(Arc<[u8]>),
    Connected,
    Disconnected,
}

async fn bridge(settings: Settings, hub: Arc<Hub>, ends: BridgeEnds) {
    let shared = ends.shared.clone();
    // Registered with this runtime's reactor (the socket is non-blocking already). Failing here
    // means the reactor cannot take one more descriptor: the bridge cannot be woken, so it
    // stops, and publishes stay local (counted refused once the queue is full).
    let Ok(wake) = ends.wake.try_clone().and_then(UnixStream::from_std) else {
        return;
    };
    let (work_tx, work_rx) = mpsc::unbounded_channel();
    let events = work_tx.clone();
    let max_delay = settings.reconnect_delay_max;
    let options = ConnectOptions::new()
        .no_echo()
        .subscription_capacity(settings.subscription_messages_max)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .name(format!("percore-{:016x}", settings.origin))
        .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, max_delay))
        .event_callback(move |e| {
            let work = match e {
                Event::Connected => Some(Work::Connected),
                Event::Disconnected => Some(Work::Disconnected),
                _ => None,
            };
            if let Some(w) = work {
                let _ = events.send(w);
            }
            async {}
        });
    // With `retry_on_initial_connect` this returns at once and connects in the background;
    // it fails only for addresses the client cannot use, which `ClusterConfig` checked.
    let client = match options.connect(settings.urls.as_slice()).await {
        Ok(c) => c,
        Err(_) => return drain_unsent(&ends, &wake).await,
    };
    shared
        .max_payload
        .store(client.max_payload(), std::sync::atomic::Ordering::Relaxed);
    let interest = Interest {
        client: client.clone(),
        hub,
        shared: shared.clone(),
        prefix: settings.prefix.clone(),
        sync_subject: Subject::from(format!(
            "{}._sync.{:016x}",
            settings.prefix, settings.origin
        )),
        subscribed: HashMap::new(),
        connects: 0,
        origins_max: settings.origins_per_topic_max,
    };
    tokio::task::spawn_local(interest.run(work_rx));
    let mut publish = Publishing {
        client,
        shared,
        sequencer: Sequencer::new(
            settings.prefix,
            settings.origin,
            settings.sequenced_topics_max,
        ),
    };
    publish.run(&ends, &wake, &work_tx).await;
}

/// Empty the wake-up socket (before [`BridgeShared::begin_read`], so that a wake-up sent after
/// the flag is cleared stays readable).
fn drain_wake(wake: &UnixStream) {
    let mut buf = [0u8; 64];
    while matches!(wake.try_read(&mut buf), Ok(n) if n > 0) {}
}

/// No client: count every publish as unsent until `Stop`.
async fn drain_unsent(ends: &BridgeEnds, wake: &UnixStream) {
    loop {
        drain_wake(wake);
        ends.shared.begin_read();
        while ends.data.try_recv().is_ok() {
            BridgeShared::bump(&ends.shared.unsent, 1);
        }
        while let Ok(c) = ends.control.try_recv() {
            if matches!(c, Control::Stop(_)) {
                return;
            }
        }
        let _ = wake.readable().await;
    }
}

/// The wait before reconnect attempt `attempts` (1 = the first): none, then 25 ms doubling up
/// to `max`.
fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let shift = (attempts - 2).min(16) as u32;
    Duration::from_millis(25u64 << shift).min(max)
}

/// The publish side.
struct Publishing {
    client: Client,
    shared: Arc<BridgeShared>,
    sequencer: Sequencer,
}

impl Publishing {
    async fn run(
        &mut self,
        ends: &BridgeEnds,
        wake: &UnixStream,
        work: &mpsc::UnboundedSender<Work>,
    ) {
        loop {
            drain_wake(wake);
            self.shared.begin_read();
            let mut stop = None;
            while let Ok(c) = ends.control.try_recv() {
                match c {
                    Control::Interest(topic) => {
                        let _ = work.send(Work::Topic(topic));
                    }
                    Control::Stop(at) => stop = Some(at),
                }
            }
            let mut budget = PUBLISHES_PER_TURN;
            while budget > 0 {
                let Ok(m) = ends.data.try_recv() else {
                    break;
                };
                self.send(m).await;
                budget -= 1;
            }
            if let Some(at) = stop {
                return self.finish(ends, at).await;
            }
            if budget == 0 {
                tokio::task::yield_now().await;
                continue;
            }
            let _ = wake.readable().await;
        }
    }

    /// Number `m` in its topic's stream and write it to the broker.
    async fn send(&mut self, m: Outgoing) {
        let (subject, pos) = self.sequencer.next(m.topic());
        if self.client.connection_state() != State::Connected {
            // Dropped here rather than queued in the client: core NATS is at most once, and
            // messages held through an outage would arrive late and in a burst. The position
            // is taken, so receivers count it as lost.
            BridgeShared::bump(&self.shared.unsent, 1);
            return;
        }
        let headers = position::headers(pos, m.text, m.opts);
        let counter = match self
            .client
            .publish_with_headers(subject, headers, m.payload())
            .await
        {
            Ok(()) => &self.shared.sent,
            Err(_) => &self.shared.unsent,
        };
        BridgeShared::bump(counter, 1);
    }

    /// The shards have stopped: write what they queued, flush by `at`, and return (dropping
    /// the client closes the connection).
    async fn finish(&mut self, ends: &BridgeEnds, at: Instant) {
        while let Ok(m) = ends.data.try_recv() {
            if Instant::now() >= at {
                BridgeShared::bump(&self.shared.unsent, 1 + ends.data.len() as u64);
                break;
            }
            self.send(m).await;
        }
        let left = at.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, self.client.flush()).await;
    }
}

/// Each topic's stream position on the sending side, and its subject.
struct Sequencer {
    prefix: String,
    origin: u64,
    topics_max: usize,
    topics: HashMap<Bytes, Stream>,
    /// Epochs come from one counter, so a topic forgotten and seen again gets a later one.
    epochs: u64,
}

struct Stream {
    subject: Subject,
    epoch: u64,
    seq: u64,
}

impl Sequencer {
    fn new(prefix: String, origin: u64, topics_max: usize) -> Self {
        Self {
            prefix,
            origin,
            topics_max,
            topics: HashMap::new(),
            epochs: 0,
        }
    }

    /// The subject of `topic` and the position of its next message.
    fn next(&mut self, topic: &[u8]) -> (Subject, Pos) {
        let origin = self.origin;
        if let Some(s) = self.topics.get_mut(topic) {
            s.seq += 1;
            let pos = Pos {
                origin,
                epoch: s.epoch,
                seq: s.seq,
            };
            return (s.subject.clone(), pos);
        }
        if self.topics.len() >= self.topics_max {
            // Forget some topic (whichever the map yields first): its next message starts a
            // new epoch.
            if let Some(k) = self.topics.keys().next().cloned() {
                self.topics.remove(&k);
            }
        }
        self.epochs += 1;
        let s = Stream {
            subject: Subject::from(subject(&self.prefix, topic)),
            epoch: self.epochs,
            seq: 1,
        };
        let out = (
            s.subject.clone(),
            Pos {
                origin,
                epoch: s.epoch,
                seq: 1,
            },
        );
        self.topics.insert(Bytes::copy_from_slice(topic), s);
        out
    }
}

/// The subscribing side.
struct Interest {
    client: Client,
    hub: Arc<Hub>,
    shared: Arc<BridgeShared>,
    prefix: String,
    /// A subject nobody subscribes to (two tokens under the prefix, never a topic's): a request
    /// to it comes back "no responders" once the broker has processed everything sent before.
    sync_subject: Subject,
    /// Topic -> its receive task (which owns the subscription: aborting it unsubscribes).
    subscribed: HashMap<Arc<[u8]>, JoinHandle<()>>,
    connects: u64,
    /// Origins remembered per topic (`ClusterConfig::origins_per_topic_max`).
    origins_max: usize,
}

impl Interest {
    async fn run(mut self, mut work: mpsc::UnboundedReceiver<Work>) {
        let mut unconfirmed = false;
        loop {
            let mut next = if unconfirmed {
                // Nothing new within the retry period: try the round trip again.
                tokio::time::timeout(SYNC_RETRY, work.recv())
                    .await
                    .unwrap_or(None)
            } else {
                match work.recv().await {
                    Some(w) => Some(w),
                    None => return, // the bridge is stopping
                }
            };
            while let Some(w) = next.take() {
                unconfirmed |= self.apply(w).await;
                next = work.try_recv().ok();
            }
            if unconfirmed && self.client.connection_state() == State::Connected {
                unconfirmed = !self.confirm().await;
            }
        }
    }

    /// Apply one piece of work; true if the broker's view must be confirmed again.
    async fn apply(&mut self, w: Work) -> bool {
        match w {
            Work::Topic(topic) => self.reconcile(topic).await,
            Work::Connected => {
                self.connects += 1;
                if self.connects > 1 {
                    BridgeShared::bump(&self.shared.reconnects, 1);
                }
                true
            }
            Work::Disconnected => {
                BridgeShared::set(&self.shared.connected, 0);
                true
            }
        }
    }

    /// Subscribe to `topic` if some shard has subscribers for it, else unsubscribe.
    async fn reconcile(&mut self, topic: Arc<[u8]>) -> bool {
        let want = self.hub.has_topic(&topic);
        if want == self.subscribed.contains_key(&topic) {
            return false;
        }
        if !want {
            if let Some(task) = self.subscribed.remove(&topic) {
                task.abort();
            }
            return true;
        }
        let subject = subject(&self.prefix, &topic);
        // Fails only when the client is closed (the bridge is stopping).
        let Ok(sub) = self.client.subscribe(subject).await else {
            return false;
        };
        let task = tokio::task::spawn_local(receive(
            topic.clone(),
            sub,
            Origins::new(self.origins_max),
            self.hub.clone(),
            self.shared.clone(),
        ));
        self.subscribed.insert(topic, task);
        true
    }

    /// A round trip to the broker; when it comes back, every subscription sent before it is in
    /// place: report `connected` and `subjects`.
    async fn confirm(&mut self) -> bool {
        let request = self.client.request(self.sync_subject.clone(), Bytes::new());
        let confirmed = matches!(
            tokio::time::timeout(SYNC_TIMEOUT, request).await,
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders
        );
        if confirmed {
            let s = &self.shared;
            s.max_payload.store(
                self.client.max_payload(),
                std::sync::atomic::Ordering::Relaxed,
            );
            BridgeShared::set(&s.subjects, self.subscribed.len() as u64);
            BridgeShared::set(&s.connected, 1);
        }
        confirmed
    }
}

/// One topic's subscription: check each message's position and deliver it.
async fn receive(
    topic: Arc<[u8]>,
    mut sub: async_nats::Subscriber,
    mut origins: Origins,
    hub: Arc<Hub>,
    shared: Arc<BridgeShared>,
) {
    while let Some(m) = sub.next().await {
        BridgeShared::bump(&shared.received, 1);
        if !deliver(&topic, &m, &mut origins, &hub, &shared) {
            BridgeShared::bump(&shared.discarded, 1);
        }
    }
}

/// Hand one message to the shards; false if it is discarded.
fn deliver(
    topic: &[u8],
    m: &async_nats::Message,
    origins: &mut Origins,
    hub: &Hub,
    shared: &BridgeShared,
) -> bool {
    let Some(r) = position::parse(m.headers.as_ref()) else {
        return false;
    };
    if let Some(pos) = r.pos {
        match origins.accept(pos) {
            Verdict::Duplicate => return false,
            Verdict::Deliver { lost } => BridgeShared::bump(&shared.lost, lost),
        }
    }
    let payload = &m.payload[..];
    let msg = match (r.text, std::str::from_utf8(payload)) {
        (Some(true) | None, Ok(text)) => Message::Text(text),
        (Some(true), Err(_)) => return false,
        (Some(false), _) | (None, Err(_)) => Message::Binary(payload),
    };
    hub.deliver_remote(topic, msg, r.opts);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_waiting_in_a_subscription_takes_at_most_200_bytes_plus_its_payload() {
        // What `ClusterConfig::subscription_messages_max` documents (headers are built only
        // for messages that carry them, a few dozen bytes more).
        assert!(std::mem::size_of::<async_nats::Message>() <= 200);
    }

    #[test]
    fn reconnect_delays_grow_to_the_maximum() {
        let max = Duration::from_secs(2);
        let d: Vec<u64> = (1..=10)
            .map(|a| reconnect_delay(a, max).as_millis() as u64)
            .collect();
        assert_eq!(d, [0, 25, 50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(reconnect_delay(usize::MAX, max), max);
    }

    #[test]
    fn each_topic_counts_its_own_stream() {
        let mut s = Sequencer::new("p".into(), 7, 16);
        let (subj, a1) = s.next(b"a");
        assert_eq!(subj.as_str(), "p.a");
        let (_, b1) = s.next(b"b");
        let (_, a2) = s.next(b"a");
        assert_eq!((a1.origin, a1.epoch, a1.seq), (7, 1, 1));
        assert_eq!((b1.epoch, b1.seq), (2, 1));
        assert_eq!((a2.epoch, a2.seq), (1, 2));
    }

    #[test]
    fn past_sequenced_topics_max_a_forgotten_topic_starts_a_new_epoch() {
        let mut s = Sequencer::new("p".into(), 7, 2);
        s.next(b"a");
        s.next(b"a");
        s.next(b"b");
        s.next(b"c"); // over the limit: a or b is forgotten
        assert_eq!(s.topics.len(), 2);
        let forgotten: &[u8] = if s.topics.contains_key(&b"a"[..]) {
            b"b"
        } else {
            b"a"
        };
        let (_, p) = s.next(forgotten);
        assert_eq!((p.epoch, p.seq), (4, 1), "a later epoch, from 1");
        // A receiver that saw the old epoch takes the new one without counting a loss.
        let mut o = Origins::new(256);
        o.accept(Pos {
            origin: 7,
            epoch: 1,
            seq: 2,
        });
        assert_eq!(o.accept(p), Verdict::Deliver { lost: 0 });
    }
}
