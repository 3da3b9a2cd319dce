//! Connections joining the shard: accepted ones (registered with the driver, refused past
//! `connections_max` with 503 at the upgrade) and outbound ones (`ServerHandle::connect`).

use super::ctx::Out;
use std::sync::atomic::Ordering;

use super::entry::{Queue, OVER_CAPACITY};
#[cfg(feature = "tls")]
use super::entry::{TlsIndex, TLS};
use super::mailbox::Outbound;
use super::{Handler, Shard};
use crate::counters;
use crate::io::{Driver, Token};
use crate::proto::Connection;
use crate::stats::ShardStats;

impl<H: Handler> Shard<H> {
    pub(super) fn register_accepted<D: Driver>(&mut self, driver: &mut D) {
        for (socket, peer, listener) in std::mem::take(&mut self.accepted) {
            if self.shutdown_at.is_some() {
                continue;
            }
            let key = self.slab.vacant_key();
            if key > u32::MAX as usize / 2 {
                continue;
            }
            let mut flags = 0;
            #[cfg(feature = "tls")]
            let mut tls = TlsIndex::default();
            #[cfg(feature = "tls")]
            if self.tls.listener == Some(listener) {
                match self.tls.accept() {
                    Ok(i) => {
                        tls = i;
                        flags |= TLS;
                    }
                    // The server config was checked at start: nothing here to serve with.
                    Err(_) => continue,
                }
            }
            #[cfg(not(feature = "tls"))]
            let _ = listener;
            if driver.register(Token(key), socket).is_err() {
                #[cfg(feature = "tls")]
                if flags & TLS != 0 {
                    self.tls.conns.remove(tls.get());
                }
                continue;
            }
            ShardStats::bump(&self.ctx.stats.accepted, 1);
            if self.open.fetch_add(1, Ordering::Relaxed) >= self.ctx.config.connections_max {
                flags |= OVER_CAPACITY;
            }
            let conn = Connection::server(self.ctx.now);
            self.insert(key, peer, conn, Queue::default(), flags, None);
            #[cfg(feature = "tls")]
            self.set_tls(key, tls);
        }
    }

    /// Start an outbound connection: register it and queue its upgrade request (and, for
    /// `wss://`, its ClientHello before it).
    pub(super) fn register_outbound<D: Driver>(&mut self, driver: &mut D, out: Outbound) {
        if self.shutdown_at.is_some() {
            return;
        }
        // `ServerHandle::connect_with_state` checked the type: this does not fail.
        let Ok(state) = out.state.downcast::<H::State>() else {
            return;
        };
        let key = self.slab.vacant_key();
        let (mut queue, mut flags) = (Queue::default(), 0);
        #[cfg(feature = "tls")]
        let mut tls = TlsIndex::default();
        #[cfg(feature = "tls")]
        if let Some((cfg, name)) = out.tls {
            match self.tls.connect(cfg, name) {
                Ok(i) => {
                    tls = i;
                    flags |= TLS;
                }
                // Reported by Connect::open already (the config is checked there).
                Err(_) => return,
            }
        }
        if key > u32::MAX as usize / 2 || driver.register(Token(key), out.stream.into()).is_err() {
            #[cfg(feature = "tls")]
            if flags & TLS != 0 {
                self.tls.conns.remove(tls.get());
            }
            return;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        counters::bump(&self.ctx.stats.metrics.outbound, 1);
        let mut o = Out {
            key: key as u32,
            queue: &mut queue,
            flags: &mut flags,
            ctx: &mut self.ctx,
        };
        let mut conn = Connection::client(o.ctx.now, &mut o, &out.key, &out.request);
        if out.deflate {
            conn.offer_deflate();
        }
        self.insert(key, out.peer, conn, queue, flags, Some(*state));
        #[cfg(feature = "tls")]
        self.set_tls(key, tls);
    }

    /// The TLS session of a connection just inserted with the `TLS` flag.
    #[cfg(feature = "tls")]
    fn set_tls(&mut self, key: usize, tls: TlsIndex) {
        if let Some(e) = self.slab.get_mut(key) {
            e.set_tls(tls);
        }
    }
}
