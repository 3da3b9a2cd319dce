//! The backlog: connections that spent their frame budget for a turn
//! (`recv_frames_per_turn_max`) with input left. Receiving is paused on them (the io layer
//! reads nothing more), what they hold is decoded first, within a fresh budget, on the next
//! turns, and receiving resumes once they hold nothing; a FIN that came meanwhile is handled
//! after the frames before it.

use super::entry::{BACKLOG, DEAD, EOF_HELD};
use super::{Handler, Shard};
use crate::io::{Driver, Flow, Token};

impl<H: Handler> Shard<H> {
    /// Decode, within this turn's budget, what the paused connections hold; resume receiving
    /// on those that have nothing left.
    pub(super) fn drain_backlog<D: Driver>(&mut self, driver: &mut D) {
        if self.backlog.is_empty() {
            return;
        }
        let mut keys = std::mem::take(&mut self.backlog);
        for key in keys.drain(..) {
            let k = key as usize;
            match self.slab.get(k) {
                // (A key whose connection is gone may now hold another one.)
                Some(e) if e.flags & (DEAD | BACKLOG) == BACKLOG => {}
                _ => continue,
            }
            let flow = self.on_recv(k, &mut [], None, 0);
            let Some(e) = self.slab.get_mut(k) else {
                continue;
            };
            if flow == Flow::PauseRecv && e.flags & DEAD == 0 {
                self.backlog.push(key);
                continue;
            }
            e.flags &= !BACKLOG;
            if e.flags & (DEAD | EOF_HELD) == EOF_HELD {
                // Everything before the peer's FIN is decoded: now the EOF.
                e.conn.handle_eof();
                self.finalize(k);
            } else if e.flags & DEAD == 0 {
                driver.resume_recv(Token(k));
            }
        }
        if self.backlog.is_empty() {
            self.backlog = keys;
        }
    }
}
