//! The shards' mailboxes: the one way into a shard from another thread (or another shard). A
//! mailbox is a channel plus a wake-up; everything goes through it: sends to one connection,
//! broadcasts, publishes, outbound connections, deferred upgrade decisions and shutdown.
//!
//! Wake-ups are coalesced: a sender wakes the shard only if no wake-up is pending since the shard
//! last looked at its mailbox ([`Mailboxes::clear_wake`] comes before the shard reads, so a mail
//! posted meanwhile is either read in that pass or wakes the shard again).

use std::any::Any;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::id::ConnId;
use crate::io::Waker;
use crate::pubsub::PublishOptions;
use crate::upgrade::Reject;

/// Work for a shard from elsewhere.
#[derive(Debug)]
pub(crate) enum Mail {
    /// Graceful shutdown: close 1001 to everyone, then stop by this instant at the latest.
    Shutdown(Instant),
    /// Run an outbound connection (TCP already connected): send its request, expect a 101.
    Connect(Box<Outbound>),
    /// Queue this encoded frame to every open accepted connection of the shard.
    Broadcast(Arc<[u8]>),
    /// Queue `frame` to every local subscriber of `topic` (the envelope frame at its position
    /// to resume subscribers, if the topic has history).
    Publish {
        topic: Arc<[u8]>,
        frame: Arc<[u8]>,
        env: Option<(u64, Arc<[u8]>)>,
        opts: PublishOptions,
    },
    /// Queue `frame` to one connection.
    Send { id: ConnId, frame: Arc<[u8]> },
    /// The answer to a deferred upgrade request ([`crate::Deferred`]).
    Decide { id: ConnId, verdict: Verdict },
}

/// A deferred upgrade decision as it travels to the shard.
pub(crate) enum Verdict {
    /// `(Accept, H::State)`, type-erased (a mailbox is not generic over the handler); the shard
    /// takes it back out with the handler's state type, which the handle was made for.
    Accept(Box<dyn Any + Send>),
    Reject(Box<Reject>),
    /// The handle was dropped without an answer.
    Dropped,
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Accept(_) => f.write_str("Accept"),
            Verdict::Reject(r) => write!(f, "Reject({})", r.status),
            Verdict::Dropped => f.write_str("Dropped"),
        }
    }
}

impl Mail {
    /// Data mail is bounded by `mailbox_messages_max`; control mail (connect, shutdown,
    /// upgrade decisions: one per deferred handle, and every handle comes from an upgrade that was
    /// pending)
    /// always goes through.
    fn is_data(&self) -> bool {
        matches!(
            self,
            Mail::Broadcast(_) | Mail::Publish { .. } | Mail::Send { .. }
        )
    }
}

/// An outbound connection handed to a shard by [`crate::ServerHandle::connect`].
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    /// The upgrade request to send.
    pub(crate) request: Vec<u8>,
    /// Its `Sec-WebSocket-Key`, to check the answer against.
    pub(crate) key: String,
    /// The connection's initial state: the handler's `State` type (checked by
    /// [`crate::ServerHandle::connect_with_state`]).
    pub(crate) state: Box<dyn Any + Send>,
    /// `wss://`: the client config (prepared) and the server name to verify.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// The request offers permessage-deflate (the answer is checked).
    pub(crate) deflate: bool,
}

/// Why a mail was not posted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PostError {
    /// The shard's mailbox holds `mailbox_messages_max` data mails.
    Full,
    /// The shard is gone (stopped, or it failed to start).
    Stopped,
}

/// One shard's mailbox, as seen by senders.
struct Link {
    tx: Sender<Mail>,
    /// A wake-up was sent and the shard has not looked at its mailbox since.
    wake_pending: AtomicBool,
    /// Set by the shard before its first poll.
    waker: OnceLock<Waker>,
}

/// Every shard's mailbox (shared by the server handle, publishers and the shards).
pub(crate) struct Mailboxes {
    links: Box<[Link]>,
    /// Data mails one mailbox holds at most.
    messages_max: usize,
}

impl Mailboxes {
    /// Mailboxes for `n` shards, and each shard's receiving end.
    pub(crate) fn new(n: usize, messages_max: usize) -> (Self, Vec<Receiver<Mail>>) {
        let (links, rxs) = (0..n)
            .map(|_| {
                let (tx, rx) = crossbeam_channel::unbounded();
                let link = Link {
                    tx,
                    wake_pending: AtomicBool::new(false),
                    waker: OnceLock::new(),
                };
                (link, rx)
            })
            .unzip();
        let me = Self {
            links: Vec::into_boxed_slice(links),
            messages_max,
        };
        (me, rxs)
    }

    /// Number of shards.
    pub(crate) fn len(&self) -> usize {
        self.links.len()
    }

    /// Shard `i` is running: from now on a post wakes it. Called on the shard's thread before
    /// its first poll (which does not block, so mail posted earlier is read).
    pub(crate) fn set_waker(&self, i: usize, waker: Waker) {
        if let Some(l) = self.links.get(i) {
            let _ = l.waker.set(waker);
        }
    }

    /// Post `mail` to shard `i` and wake it (unless a wake-up is already pending).
    pub(crate) fn post(&self, i: usize, mail: Mail) -> Result<(), PostError> {
        let link = self.links.get(i).ok_or(PostError::Stopped)?;
        if mail.is_data() && link.tx.len() >= self.messages_max {
            return Err(PostError::Full);
        }
        link.tx.send(mail).map_err(|_| PostError::Stopped)?;
        if !link.wake_pending.swap(true, Ordering::AcqRel) {
            // Not started yet (no waker): its first poll does not block.
            if let Some(w) = link.waker.get() {
                w.wake().map_err(|_| PostError::Stopped)?;
            }
        }
        Ok(())
    }

    /// Shard `i` is about to read its mailbox: the next post must wake it again.
    pub(crate) fn clear_wake(&self, i: usize) {
        if let Some(l) = self.links.get(i) {
            l.wake_pending.store(false, Ordering::Release);
        }
    }
}

impl From<PostError> for io::Error {
    fn from(e: PostError) -> Self {
        match e {
            PostError::Full => io::Error::new(io::ErrorKind::WouldBlock, "shard mailbox full"),
            PostError::Stopped => {
                io::Error::new(io::ErrorKind::NotConnected, "server is shut down")
            }
        }
    }
}
