//! Topics across servers, through a NATS broker (engine feature `cluster`).
//!
//! With [`ServerBuilder::cluster`](crate::ServerBuilder::cluster), a publish on any server
//! reaches the subscribers of its topic on every server of the cluster: the ones on the
//! publishing server as before (nothing changes on that path), the others through NATS.
//!
//! ```no_run
//! use percore::{ClusterConfig, Conn, Handler, Message, Server};
//!
//! struct Room;
//!
//! impl Handler for Room {
//!     type State = ();
//!     fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
//!         let _ = conn.subscribe("room");
//!     }
//!     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
//!         // Reaches the room's members on this server and on every other one.
//!         let _ = conn.publish("room", msg);
//!     }
//! }
//!
//! let server = Server::builder()
//!     .bind("0.0.0.0:9001")
//!     .cluster(ClusterConfig::new("nats://127.0.0.1:4222").subject_prefix("chat"))
//!     .start(|_| Room)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # How
//!
//! One bridge thread per server runs the NATS client (`async-nats`, the official one, on a
//! current-thread tokio runtime of its own). The shards never wait for it and take no lock for
//! it: a publish hands the topic and payload to the bridge with one `try_send` into a bounded
//! queue (`queue_messages_max`; full: [`PubSubError::ClusterQueueFull`](crate::PubSubError),
//! counted in [`ClusterStats::refused`](crate::ClusterStats::refused)), and the bridge hands a
//! message from another server to the shards through their mailboxes, the way a
//! [`Publisher`](crate::Publisher) on any thread does: the frame is encoded once on the
//! receiving server and shared by every local subscriber, with the publish's
//! [`PublishOptions`](crate::PublishOptions) (droppable, conflate) and the server's
//! slow-consumer policy as for a local publish. [`ServerHandle::broadcast`](crate::ServerHandle)
//! and [`Conn::broadcast`](crate::Conn::broadcast) stay on their server.
//!
//! **Interest.** A server subscribes to a topic's subject when the topic gets its first
//! subscriber on that server and unsubscribes when it loses its last (the same events that set
//! and clear the topic's shard mask), so a server receives nothing for topics nobody on it
//! subscribes to. A publish is always sent to the broker (a server does not know the others'
//! interest); the broker drops what nobody subscribes to.
//!
//! **Subjects.** Topic `T` is the subject `PREFIX.TOKEN`, TOKEN being `T` with every byte
//! outside `A-Z a-z 0-9 - _` written `%XX` (`room.1` → `chat.room%2E1`; the empty topic is
//! `%`): one token under the prefix, different topics never share a subject. Other NATS
//! clients may publish to these subjects: such messages reach the topic's subscribers too
//! (text when they are UTF-8, unless a `Percore-Kind: binary` header says otherwise).
//!
//! **Once per subscriber.** The bridge connects with NATS' `no_echo` option: the broker never
//! sends a server its own publications back, so local subscribers get a message once, from the
//! local path.
//!
//! **Order.** Messages one publisher publishes to one topic reach every subscriber on every
//! server in publish order (one queue to the bridge, one broker connection per server, one
//! subscription per topic, one mailbox per shard).
//!
//! # At most once: what is lost, and counted
//!
//! Core NATS delivers at most once: nothing is stored, nothing is retried. While the broker is
//! down or this server's connection to it is, local publishing and delivery go on untouched;
//! publishes meant for other servers are dropped (counted in
//! [`ClusterStats::unsent`](crate::ClusterStats::unsent)), and so is what other servers publish
//! meanwhile. The client reconnects by itself (with a delay growing to
//! `reconnect_delay_max`) and subscribes again to every topic this server has subscribers
//! for; remote delivery resumes from there.
//!
//! Every message carries its origin server and its position in that server's stream for the
//! topic (NATS headers `Percore-Pos: ORIGIN EPOCH SEQ`, `Percore-Kind`, `Percore-Opts`: at most
//! 132 bytes). A receiving server counts the gaps in each origin's sequence as
//! [`ClusterStats::lost`](crate::ClusterStats::lost): exactly the messages its subscribers of
//! that topic missed, as soon as a later message of the same stream arrives. Two losses are not
//! seen: one at the very end of a stream (nothing comes after it), and one before the first
//! message a server hears from a stream (the server cannot tell it from messages published
//! before it subscribed; for example a publish handed to the NATS client but not yet written
//! when the connection died, while no earlier message of that stream had reached this server).
//! A position seen before is discarded, not delivered twice.
//!
//! # Limits
//!
//! - A message larger than the broker's `max_payload` less the headers (132 bytes) is refused
//!   at publish time with [`PubSubError::PayloadTooLarge`](crate::PubSubError::PayloadTooLarge),
//!   before anything is delivered anywhere. The bridge follows the broker's `max_payload` (from
//!   its `INFO`; NATS' default, 1 MiB, until the first connection).
//! - `queue_messages_max` publishes wait for the bridge at most (see
//!   [`ClusterConfig::queue_messages_max`]).
//! - `sequenced_topics_max` topics have a sequence counter on the sending side (see
//!   [`ClusterConfig::sequenced_topics_max`]).
//! - A receiving bridge remembers `origins_per_topic_max` origins per subscribed topic and holds
//!   up to `subscription_messages_max` messages per subscription in the client before the client
//!   drops them (counted as `lost` by the gap check); it forwards them to the shards' mailboxes
//!   without waiting (a full mailbox drops the message for that shard, counted in
//!   [`Stats::dropped`](crate::Stats::dropped), as for a publish from any thread).
//! - Topic names: the subject of the longest topic (`topic_name_bytes_max`, 3 bytes per byte
//!   at worst, plus the prefix) must stay within 4,000 bytes (the broker's protocol line
//!   limit), else [`ServerBuilder::start`](crate::ServerBuilder::start) fails.
//!
//! # Cost
//!
//! Without the feature: none (no code). With it, on a server without `cluster(..)`: one branch
//! per publish. On a server in a cluster, each publish also checks its size against
//! `max_payload`, copies topic and payload into one buffer (one allocation) and `try_send`s it
//! to the bridge; the bridge thread then builds the headers and writes the message to the
//! broker. A message from another server costs its receiving server one frame encoding and one
//! mail per shard that has subscribers, as a publish from another thread does. Only
//! `nats://` URLs: no TLS or authentication to the broker yet.

mod bridge;
mod position;
mod subject;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::shard::{BridgeEnds, Hub};

/// How a server joins a cluster: [`ServerBuilder::cluster`](crate::ServerBuilder::cluster).
/// Make one with [`ClusterConfig::new`], then adjust it with the setters (or the fields).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// The NATS server(s): `nats://HOST:PORT`, or several separated by commas (servers of one
    /// NATS cluster; the client picks one and moves to another when it fails). Credentials
    /// may be given as `nats://USER:PASSWORD@HOST:PORT`. Only `nats://`.
    pub nats_url: String,
    /// The subjects' first token(s) (default `percore`): every server of one cluster uses the
    /// same, and different applications on one broker use different ones. Printable ASCII
    /// without `*`, `>` or `%`; dots separate tokens (`app.ws`).
    pub subject_prefix: String,
    /// Publishes waiting for the bridge at most (default 65,536; at least 1). Past it a
    /// publish still reaches this server's subscribers but not the other servers
    /// ([`PubSubError::ClusterQueueFull`](crate::PubSubError::ClusterQueueFull)). The queue's
    /// slots are allocated at start, 56 bytes each (3.5 MiB by default), and each waiting publish
    /// holds a copy of its topic and payload.
    pub queue_messages_max: usize,
    /// Topics the bridge keeps a sequence counter for (default 65,536; at least 1), each about
    /// 100 bytes plus four times its name. Past it the counter of some topic is forgotten, and
    /// that topic's next message starts a new epoch: receivers then cannot count what was lost
    /// at the end of the old one.
    pub sequenced_topics_max: usize,
    /// Messages from the broker waiting for the bridge, per subscribed topic (default 65,536;
    /// at least 1): the NATS client's queue between its connection and the topic's receive
    /// task. Past it the client drops what arrives for that topic (the broker sent it faster
    /// than the bridge hands messages to the shards); the drops are gaps in the senders'
    /// sequences, so they count in [`ClusterStats::lost`](crate::ClusterStats::lost). Memory
    /// only for messages actually waiting: about 200 bytes each plus the payload.
    pub subscription_messages_max: usize,
    /// Origins (publishing servers) whose last position a receiving server remembers per
    /// subscribed topic (default 256; at least 1), about 32 bytes each. Past it the one heard
    /// from least recently is forgotten; its next message then counts no loss before it. A
    /// restarted server is a new origin, so this is reached only by that many server starts
    /// publishing to one topic while this server subscribes to it.
    pub origins_per_topic_max: usize,
    /// Longest wait between two attempts to reconnect to the broker (default 2 s). Attempts
    /// start at once, then wait 25 ms, 50 ms, … up to this.
    pub reconnect_delay_max: Duration,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A URL may hold a password.
        let url: Vec<String> = self
            .nats_url
            .split(',')
            .map(|u| match u.rsplit_once('@') {
                Some((_, host)) => format!("nats://***@{host}"),
                None => u.to_owned(),
            })
            .collect();
        let url = url.join(",");
        f.debug_struct("ClusterConfig")
            .field("nats_url", &url)
            .field("subject_prefix", &self.subject_prefix)
            .field("queue_messages_max", &self.queue_messages_max)
            .field("sequenced_topics_max", &self.sequenced_topics_max)
            .field("subscription_messages_max", &self.subscription_messages_max)
            .field("origins_per_topic_max", &self.origins_per_topic_max)
            .field("reconnect_delay_max", &self.reconnect_delay_max)
            .finish()
    }
}

impl ClusterConfig {
    /// Join the cluster of the NATS server at `nats_url`, with the defaults.
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            subject_prefix: "percore".to_owned(),
            queue_messages_max: 65_536,
            sequenced_topics_max: 65_536,
            subscription_messages_max: 65_536,
            origins_per_topic_max: 256,
            reconnect_delay_max: Duration::from_secs(2),
        }
    }

    /// See [`ClusterConfig::subject_prefix`](#structfield.subject_prefix).
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// See [`ClusterConfig::queue_messages_max`](#structfield.queue_messages_max).
    pub fn queue_messages_max(mut self, n: usize) -> Self {
        self.queue_messages_max = n;
        self
    }

    /// See [`ClusterConfig::sequenced_topics_max`](#structfield.sequenced_topics_max).
    pub fn sequenced_topics_max(mut self, n: usize) -> Self {
        self.sequenced_topics_max = n;
        self
    }

    /// See [`ClusterConfig::subscription_messages_max`](#structfield.subscription_messages_max).
    pub fn subscription_messages_max(mut self, n: usize) -> Self {
        self.subscription_messages_max = n;
        self
    }

    /// See [`ClusterConfig::origins_per_topic_max`](#structfield.origins_per_topic_max).
    pub fn origins_per_topic_max(mut self, n: usize) -> Self {
        self.origins_per_topic_max = n;
        self
    }

    /// See [`ClusterConfig::reconnect_delay_max`](#structfield.reconnect_delay_max).
    pub fn reconnect_delay_max(mut self, d: Duration) -> Self {
        self.reconnect_delay_max = d;
        self
    }

    /// The broker URLs, checked.
    fn urls(&self) -> Result<Vec<async_nats::ServerAddr>, String> {
        let urls: Vec<&str> = self
            .nats_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err("cluster: no NATS URL".to_owned());
        }
        urls.into_iter()
            .map(|u| {
                let addr: async_nats::ServerAddr =
                    u.parse().map_err(|e| format!("cluster: {u:?}: {e}"))?;
                if addr.clone().into_inner().scheme() != "nats" {
                    return Err(format!("cluster: {u:?}: only nats:// URLs are supported"));
                }
                Ok(addr)
            })
            .collect()
    }

    /// Everything `start` checks, with the server's longest topic name.
    pub(crate) fn check(
        &self,
        topic_name_bytes_max: usize,
    ) -> io::Result<Vec<async_nats::ServerAddr>> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let urls = self.urls().map_err(invalid)?;
        subject::check_prefix(&self.subject_prefix).map_err(invalid)?;
        let longest = subject::subject_bytes_max(&self.subject_prefix, topic_name_bytes_max);
        if longest > subject::SUBJECT_BYTES_MAX {
            return Err(invalid(format!(
                "cluster: the subject of a {topic_name_bytes_max}-byte topic can take {longest} \
                 bytes, more than NATS allows ({}): lower topic_name_bytes_max or shorten the \
                 prefix",
                subject::SUBJECT_BYTES_MAX
            )));
        }
        Ok(urls)
    }
}

/// The running bridge thread.
pub(crate) struct Bridge {
    hub: Arc<Hub>,
    thread: JoinHandle<()>,
}

impl Bridge {
    /// Check `config` and start the bridge thread for `hub` (whose cluster link `ends` belong
    /// to). Fails for a bad configuration or when the thread or its runtime cannot start.
    pub(crate) fn start(
        config: &ClusterConfig,
        topic_name_bytes_max: usize,
        hub: Arc<Hub>,
        ends: BridgeEnds,
    ) -> io::Result<Self> {
        let urls = config.check(topic_name_bytes_max)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let settings = bridge::Settings {
            urls,
            prefix: config.subject_prefix.clone(),
            sequenced_topics_max: config.sequenced_topics_max.max(1),
            subscription_messages_max: config.subscription_messages_max.max(1),
            origins_per_topic_max: config.origins_per_topic_max.max(1),
            reconnect_delay_max: config.reconnect_delay_max,
            origin: origin_id()?,
        };
        let h = hub.clone();
        let thread = std::thread::Builder::new()
            .name("percore-cluster".to_owned())
            .spawn(move || bridge::run(runtime, settings, h, ends))?;
        Ok(Self { hub, thread })
    }

    /// Stop: the bridge sends what is queued until `at`, then closes its connection. Call it
    /// once the shards have stopped (nothing more is published).
    pub(crate) fn stop(self, at: Instant) {
        if let Some(link) = self.hub.cluster() {
            link.stop(at);
        }
        let _ = self.thread.join();
    }
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge").finish_non_exhaustive()
    }
}

/// This server's origin id: 64 random bits, new at every start (a restarted server is a new
/// origin, so receivers never mistake its new sequence for an old one).
fn origin_id() -> io::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_prefixes_are_checked_at_start() {
        let ok = ClusterConfig::new("nats://127.0.0.1:4222, 127.0.0.1:4223");
        assert_eq!(ok.check(256).unwrap().len(), 2);
        for bad in ["", " , ", "tls://127.0.0.1:4222", "http://x", "nats://[::1"] {
            let e = ClusterConfig::new(bad).check(256).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        let e = ClusterConfig::new("nats://127.0.0.1:4222")
            .subject_prefix("a.*")
            .check(256)
            .unwrap_err();
        assert!(e.to_string().contains("prefix"), "{e}");
    }

    #[test]
    fn a_topic_limit_whose_subjects_would_not_fit_is_refused() {
        let c = ClusterConfig::new("nats://127.0.0.1:4222");
        assert!(c.check(1330).is_ok());
        let e = c.check(1331).unwrap_err();
        assert!(e.to_string().contains("topic_name_bytes_max"), "{e}");
    }

    #[test]
    fn debug_hides_the_password() {
        let c = ClusterConfig::new("nats://user:secret@127.0.0.1:4222,nats://u:pw@b:4223");
        let s = format!("{c:?}");
        assert!(!s.contains("secret") && !s.contains("pw"), "{s}");
        assert!(s.contains("127.0.0.1:4222") && s.contains("b:4223"), "{s}");
    }
}
