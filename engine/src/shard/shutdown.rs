//! Graceful shutdown: stop accepting, abort the handshakes in progress, send close 1001 to every
//! open connection and give the close handshakes until the shutdown deadline; past it, drop
//! whatever is left.

use std::time::Instant;

use super::ctx::Out;
use super::entry::DEAD;
use super::{Handler, Shard};
use crate::io::Driver;

impl<H: Handler> Shard<H> {
    pub(super) fn begin_shutdown<D: Driver>(&mut self, driver: &mut D, at: Instant) {
        if self.shutdown_at.is_some() {
            return;
        }
        self.shutdown_at = Some(at);
        driver.stop_accepting();
        // The close handshakes sent below may take until the shutdown deadline rather than
        // close_timeout: a large shard's replies can arrive slower than that (500,000
        // connections on two starved shards took 24 s), and a reply after close_timeout would
        // otherwise end the connection as a timeout (1006) though the peer did answer.
        let left = at.saturating_duration_since(Instant::now());
        self.ep.extend_close_timeout(self.wheel.ticks(left));
        let now = self.ctx.now;
        let keys: Vec<usize> = self.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(e) = self.slab.get_mut(key) else {
                continue;
            };
            if e.flags & DEAD != 0 {
                continue;
            }
            if e.conn.is_handshaking() {
                e.conn.abort();
            } else if e.conn.is_open() {
                let mut out = Out {
                    key: key as u32,
                    queue: &mut e.queue,
                    flags: &mut e.flags,
                    ctx: &mut self.ctx,
                };
                let reason = "server shutting down";
                let code = crate::proto::CloseCode::GOING_AWAY;
                e.conn
                    .send_half()
                    .close(now, &mut self.ep, &mut out, code, reason);
            }
            self.settle(key);
        }
    }

    pub(super) fn drop_all(&mut self) {
        let keys: Vec<usize> = self
            .slab
            .iter()
            .filter(|(_, e)| e.flags & DEAD == 0)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.finalize(key);
        }
    }
}
