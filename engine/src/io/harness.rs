//! A minimal shard for driver tests: registers what it is told, keeps send queues, writes them
//! once per turn, closes on request. Real sockets on 127.0.0.1.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use super::{Completion, Driver, DriverConfig, Flow, Socket, Token};
use crate::send_queue::SendQueue;

pub(crate) fn config(direct_fds: bool) -> DriverConfig {
    DriverConfig {
        direct_fds,
        direct_fds_max: 2048,
        direct_fds_table_max: u32::MAX,
        recv_buffer_bytes: 4096,
        recv_keep_bytes: 0,
        recv_buffers: 64,
        events_max: 64,
    }
}

pub(crate) enum Action {
    Register(Socket),
    Echo(Token, Vec<u8>),
    Close(Token),
    Drop(Socket),
}

/// A minimal shard: registers what it is told, keeps send queues, flushes once per turn.
pub(crate) struct Mini<D> {
    pub(crate) d: D,
    /// The (first) listener's address.
    pub(crate) addr: SocketAddr,
    /// Every listener's address, by listener index.
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) queues: HashMap<usize, SendQueue>,
    /// Tokens registered so far (the next token).
    pub(crate) next: usize,
    /// Bytes written: synchronously by `send`, or reported by `Sent`.
    pub(crate) sent: usize,
    pub(crate) released: usize,
    /// Tokens whose `send` failed (a shard closes them).
    pub(crate) send_failed: usize,
    /// Tokens given to `close` (a shard sends nothing more on them).
    pub(crate) closing: Vec<usize>,
    /// Tokens whose receives are answered with `Flow::PauseRecv`.
    pub(crate) pausing: Vec<usize>,
}

impl<D: Driver> Mini<D> {
    pub(crate) fn new(cfg: DriverConfig) -> Self {
        Self::with_listeners(cfg, 1)
    }

    /// A driver accepting on `n` listeners (127.0.0.1, free ports).
    pub(crate) fn with_listeners(cfg: DriverConfig, n: usize) -> Self {
        let ls: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = ls.iter().map(|l| l.local_addr().unwrap()).collect();
        Self {
            d: D::new(ls, &cfg).unwrap(),
            addr: addrs[0],
            addrs,
            queues: HashMap::new(),
            next: 0,
            sent: 0,
            released: 0,
            send_failed: 0,
            closing: Vec::new(),
            pausing: Vec::new(),
        }
    }

    /// Run loop turns until `done` (bounded: 10 s), handing completions to `on`.
    pub(crate) fn pump<S>(
        &mut self,
        st: &mut S,
        mut on: impl FnMut(&mut S, &mut Vec<Action>, Completion<'_>),
        done: impl Fn(&S, &Mini<D>) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(st, self) {
            assert!(Instant::now() < deadline, "timed out");
            self.turn(st, &mut on);
        }
    }

    pub(crate) fn turn<S>(
        &mut self,
        st: &mut S,
        on: &mut impl FnMut(&mut S, &mut Vec<Action>, Completion<'_>),
    ) {
        let mut acts = Vec::new();
        let Mini {
            d,
            queues,
            sent,
            released,
            pausing,
            ..
        } = self;
        d.poll(Some(Duration::from_millis(20)), |c| {
            let flow = match &c {
                Completion::Recv { token, .. } if pausing.contains(&token.0) => Flow::PauseRecv,
                _ => Flow::Continue,
            };
            match &c {
                Completion::Sent { token, n } => {
                    if let Some(q) = queues.get_mut(&token.0) {
                        q.complete(*n);
                    }
                    *sent += n;
                }
                Completion::Released { token } => {
                    queues.remove(&token.0);
                    *released += 1;
                }
                _ => {}
            }
            on(st, &mut acts, c);
            flow
        })
        .unwrap();
        for a in acts {
            match a {
                Action::Register(s) => {
                    let t = self.next;
                    self.next += 1;
                    self.d.register(Token(t), s).unwrap();
                    self.queues.insert(t, SendQueue::default());
                }
                Action::Echo(t, b) => self.queues.get_mut(&t.0).unwrap().push(&b),
                Action::Close(t) => {
                    self.closing.push(t.0);
                    if self.d.close(t) {
                        self.queues.remove(&t.0);
                        self.released += 1;
                    }
                }
                Action::Drop(s) => drop(s),
            }
        }
        let mut failed = Vec::new();
        for (t, q) in &mut self.queues {
            if !q.is_empty() && !q.in_flight() && !self.closing.contains(t) {
                let before = q.len();
                let res = self.d.send(Token(*t), q);
                self.sent += before - q.len();
                if res.is_err() {
                    failed.push(*t);
                }
            }
        }
        for t in failed {
            // As the shard does: a failed write ends the connection.
            self.send_failed += 1;
            self.closing.push(t);
            if self.d.close(Token(t)) {
                self.queues.remove(&t);
                self.released += 1;
            }
        }
    }
}

/// Echo every received buffer; close on `Closed`.
pub(crate) fn echo(st: &mut (), acts: &mut Vec<Action>, c: Completion<'_>) {
    let () = st;
    match c {
        Completion::Accepted { socket, .. } => acts.push(Action::Register(socket)),
        Completion::Recv { token, buf, .. } => acts.push(Action::Echo(token, buf.to_vec())),
        Completion::Closed { token, .. } => acts.push(Action::Close(token)),
        _ => {}
    }
}
