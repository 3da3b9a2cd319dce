//! The io_uring driver under a minimal shard: real sockets on 127.0.0.1.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::io::{Completion, Driver, DriverConfig, Socket, Token};
use crate::send_queue::SendQueue;

use super::driver::{ConnIo, UringConfig, UringDriver};
use super::op::{OpId, OpKind};
use super::probe::probe;
use crate::io::sys::nofile_limit;
use std::collections::HashMap;
use std::io::{Read, Write};

fn config(direct_fds: bool) -> DriverConfig {
    DriverConfig {
        direct_fds,
        direct_fds_max: 2048,
        recv_buffer_bytes: 4096,
        recv_buffers: 64,
        events_max: 64,
    }
}

enum Action {
    Register(Socket),
    Echo(Token, Vec<u8>),
    Close(Token),
    Drop(Socket),
}

/// A minimal shard: registers what it is told, keeps send queues, flushes once per turn.
struct Mini {
    d: UringDriver,
    addr: SocketAddr,
    queues: HashMap<usize, SendQueue>,
    next: usize,
    sent: usize,
    released: usize,
    /// Tokens given to `close` (a shard sends nothing more on them).
    closing: Vec<usize>,
}

impl Mini {
    fn new(cfg: DriverConfig) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        Self {
            d: UringDriver::new(l, &cfg).unwrap(),
            addr,
            queues: HashMap::new(),
            next: 0,
            sent: 0,
            released: 0,
            closing: Vec::new(),
        }
    }

    /// Run loop turns until `done` (bounded: 10 s), handing completions to `on`.
    fn pump<S>(
        &mut self,
        st: &mut S,
        mut on: impl FnMut(&mut S, &mut Vec<Action>, Completion<'_>),
        done: impl Fn(&S, &Mini) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(st, self) {
            assert!(Instant::now() < deadline, "timed out");
            self.turn(st, &mut on);
        }
    }

    fn turn<S>(
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
            ..
        } = self;
        d.poll(Some(Duration::from_millis(20)), |c| {
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
            on(st, &mut acts, c)
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
        for (t, q) in &mut self.queues {
            if !q.is_empty() && !q.in_flight() && !self.closing.contains(t) {
                self.d.send(Token(*t), q).unwrap();
            }
        }
    }
}

fn echo(st: &mut (), acts: &mut Vec<Action>, c: Completion<'_>) {
    let () = st;
    match c {
        Completion::Accepted { socket, .. } => acts.push(Action::Register(socket)),
        Completion::Recv { token, buf } => acts.push(Action::Echo(token, buf.to_vec())),
        Completion::Closed { token, .. } => acts.push(Action::Close(token)),
        _ => {}
    }
}

#[test]
fn probe_succeeds_where_io_uring_is_available() {
    probe().unwrap();
}

#[test]
fn user_data_round_trips_kind_generation_and_slot() {
    let op = OpId::new(OpKind::Send, 123_456, 0xab_cdef);
    assert_eq!(OpId::decode(op.encode()), Some(op));
    assert_eq!(OpId::decode(0), None);
    // Generations wrap at 24 bits rather than bleeding into the kind.
    let op = OpId::new(OpKind::Recv, 1, u32::MAX);
    assert_eq!(OpId::decode(op.encode()).unwrap().kind, OpKind::Recv);
}

#[test]
fn idle_connection_costs_the_driver_24_bytes() {
    // An idle connection has a slot and an armed recv; no buffer, no send op.
    assert!(std::mem::size_of::<Option<ConnIo>>() <= 24);
}

#[test]
fn recv_buffer_count_is_rounded_down_to_a_power_of_two() {
    let cfg = DriverConfig {
        recv_buffers: 5000,
        ..config(false)
    };
    assert_eq!(UringConfig::from_driver(&cfg).buf_count, 4096);
    let cfg = DriverConfig {
        recv_buffers: 1 << 20,
        ..config(false)
    };
    assert_eq!(UringConfig::from_driver(&cfg).buf_count, 32768);
}

fn echo_roundtrip(direct_fds: bool) {
    let mut m = Mini::new(config(direct_fds));
    let mut c = TcpStream::connect(m.addr).unwrap();
    c.write_all(b"hello ring").unwrap();
    let mut st = ();
    m.pump(&mut st, echo, |_, m| m.sent == 10);
    let mut back = [0u8; 10];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello ring");
}

#[test]
fn accepted_connection_echoes_with_plain_fds() {
    echo_roundtrip(false);
}

#[test]
fn accepted_connection_echoes_with_direct_fds() {
    echo_roundtrip(true);
}

#[test]
fn small_receives_share_one_buffer_when_the_ring_is_incremental() {
    let mut m = Mini::new(config(false));
    assert!(
        !m.d.bufs.offsets.is_empty(),
        "Linux ≥ 6.12 consumes buffers incrementally"
    );
    let mut c = TcpStream::connect(m.addr).unwrap();
    c.set_nodelay(true).unwrap();
    let mut got: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut on =
        |got: &mut Vec<(usize, Vec<u8>)>, acts: &mut Vec<Action>, c: Completion<'_>| match c {
            Completion::Accepted { socket, .. } => acts.push(Action::Register(socket)),
            Completion::Recv { buf, .. } => got.push((buf.as_ptr() as usize, buf.to_vec())),
            _ => {}
        };
    c.write_all(b"first").unwrap();
    m.pump(&mut got, &mut on, |got, _| got.len() == 1);
    c.write_all(b"second").unwrap();
    m.pump(&mut got, &mut on, |got, _| got.len() == 2);
    assert_eq!(got[0].1, b"first");
    assert_eq!(got[1].1, b"second");
    // The second recv continued in the same buffer, right after the first one's bytes.
    assert_eq!(got[1].0, got[0].0 + 5);
}

#[test]
fn accepted_socket_reports_the_peer_address_plain_or_direct() {
    for direct in [false, true] {
        let mut m = Mini::new(config(direct));
        let c = TcpStream::connect(m.addr).unwrap();
        let mut peer = None;
        m.pump(
            &mut peer,
            |peer, acts, c| {
                if let Completion::Accepted { socket, peer: p } = c {
                    assert_eq!(matches!(socket, Socket::Direct(_)), direct);
                    *peer = Some(p);
                    acts.push(Action::Drop(socket));
                }
            },
            |peer, _| peer.is_some(),
        );
        assert_eq!(peer, Some(c.local_addr().unwrap()), "direct: {direct}");
    }
}

#[test]
fn recv_rearms_after_the_buffer_ring_runs_dry() {
    let cfg = DriverConfig {
        recv_buffers: 2,
        recv_buffer_bytes: 64,
        ..config(false)
    };
    let mut m = Mini::new(cfg);
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let p2 = payload.clone();
    let addr = m.addr;
    let writer = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&p2).unwrap();
        c
    });
    let mut st = (Vec::new(), false);
    m.pump(
        &mut st,
        |(got, eof), acts, c| match c {
            Completion::Accepted { socket, .. } => acts.push(Action::Register(socket)),
            Completion::Recv { buf, .. } => {
                assert!(buf.len() <= 64);
                got.extend_from_slice(buf);
            }
            Completion::Closed { .. } => *eof = true,
            _ => {}
        },
        |(got, _), _| got.len() >= payload.len(),
    );
    let (got, eof) = st;
    assert!(!eof);
    assert_eq!(got, payload);
    drop(writer.join().unwrap());
}

#[test]
fn large_queue_arrives_whole_and_in_order_across_short_sends() {
    let mut m = Mini::new(config(false));
    let c = TcpStream::connect(m.addr).unwrap();
    let mut accepted = false;
    m.pump(
        &mut accepted,
        |accepted, acts, c| {
            if let Completion::Accepted { socket, .. } = c {
                acts.push(Action::Register(socket));
                *accepted = true;
            }
        },
        |accepted, _| *accepted,
    );
    // 24 MiB: far beyond the socket buffers, so the kernel takes it in several short sends
    // while the reader drains; each `Sent { n }` advances the queue and the rest is resent.
    let chunks: Vec<Vec<u8>> = (0..3u8)
        .map(|n| {
            (0..8 << 20)
                .map(|i| (i as u8).wrapping_mul(31) ^ n)
                .collect()
        })
        .collect();
    let expected: Vec<u8> = chunks.concat();
    let q = m.queues.get_mut(&0).unwrap();
    for chunk in &chunks {
        q.push(chunk);
    }
    q.push_shared(Arc::from(&b"tail"[..]));
    let reader = std::thread::spawn(move || {
        let mut c = c;
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        all
    });
    let total = expected.len() + 4;
    let mut sends = 0;
    m.pump(
        &mut sends,
        |sends, _, c| {
            if let Completion::Sent { .. } = c {
                *sends += 1;
            }
        },
        |_, m| m.sent == total,
    );
    assert!(sends > 1, "expected short sends");
    assert!(!m.d.close(Token(0)) || m.queues.remove(&0).is_some());
    let mut st = ();
    m.pump(&mut st, |_, _, _| {}, |_, m| m.released == 1);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), total);
    assert!(got[..expected.len()] == expected[..]);
    assert_eq!(&got[expected.len()..], b"tail");
}

#[test]
fn close_cancels_the_armed_recv_then_releases_the_token() {
    let mut m = Mini::new(config(false));
    let mut c = TcpStream::connect(m.addr).unwrap();
    c.write_all(b"x").unwrap();
    let mut st = ();
    m.pump(
        &mut st,
        |_, acts, c| match c {
            Completion::Accepted { socket, .. } => acts.push(Action::Register(socket)),
            Completion::Recv { token, .. } => acts.push(Action::Close(token)),
            Completion::Closed { .. } => panic!("nothing is reported after close"),
            _ => {}
        },
        |_, m| m.released == 1,
    );
    assert!(m.queues.is_empty());
    assert!(m.d.conns.iter().all(Option::is_none));
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).unwrap(), 0);
}

#[test]
fn peer_close_is_reported_once_as_orderly_end_of_stream() {
    let mut m = Mini::new(config(false));
    drop(TcpStream::connect(m.addr).unwrap());
    let mut closed = 0;
    m.pump(
        &mut closed,
        |closed, acts, c| match c {
            Completion::Accepted { socket, .. } => acts.push(Action::Register(socket)),
            Completion::Closed { error, token } => {
                assert!(error.is_none());
                *closed += 1;
                acts.push(Action::Close(token));
            }
            _ => {}
        },
        |_, m| m.released == 1,
    );
    assert_eq!(closed, 1);
}

#[test]
fn shutdown_write_sends_fin_and_keeps_receiving() {
    for direct in [false, true] {
        let mut m = Mini::new(config(direct));
        let mut c = TcpStream::connect(m.addr).unwrap();
        let mut st = ();
        m.pump(&mut st, echo, |_, m| m.next == 1);
        m.d.shutdown_write(Token(0));
        let mut st = ();
        m.turn(&mut st, &mut |_, _, _| {});
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap(), 0, "FIN seen");
        c.write_all(b"late").unwrap();
        let mut got = Vec::new();
        m.pump(
            &mut got,
            |got, _, c| {
                if let Completion::Recv { buf, .. } = c {
                    got.extend_from_slice(buf);
                }
            },
            |got, _| got.len() == 4,
        );
        assert_eq!(got, b"late");
    }
}

#[test]
fn reset_peer_is_reported_closed_once_then_released() {
    let mut m = Mini::new(config(false));
    let c = TcpStream::connect(m.addr).unwrap();
    let mut st = ();
    m.pump(
        &mut st,
        |_, acts, c| {
            if let Completion::Accepted { socket, .. } = c {
                acts.push(Action::Register(socket));
            }
        },
        |_, m| m.next == 1,
    );
    // RST from the peer (linger 0), then more than the socket buffers can take: the recv
    // and the send both fail, in whichever order.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads one linger struct from a live local.
    let r = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    drop(c);
    m.queues.get_mut(&0).unwrap().push(&vec![7u8; 8 << 20]);
    let mut closed = 0;
    m.pump(
        &mut closed,
        |closed, acts, c| {
            if let Completion::Closed { error, token } = c {
                assert!(error.is_some(), "a reset is an error");
                *closed += 1;
                acts.push(Action::Close(token));
            }
        },
        |_, m| m.released == 1,
    );
    assert_eq!(closed, 1);
}

#[test]
fn teardown_cancels_a_send_stuck_on_a_peer_that_does_not_read() {
    let mut m = Mini::new(config(false));
    let _peer = TcpStream::connect(m.addr).unwrap();
    let mut st = ();
    m.pump(
        &mut st,
        |_, acts, c| {
            if let Completion::Accepted { socket, .. } = c {
                acts.push(Action::Register(socket));
            }
        },
        |_, m| m.next == 1,
    );
    m.queues.get_mut(&0).unwrap().push(&vec![1u8; 16 << 20]);
    m.turn(&mut st, &mut |_, _, _| {});
    assert!(m.queues[&0].in_flight());
    // What `Drop` relies on: every operation (accept, recv, the blocked send, the eventfd
    // read) ends, so nothing the kernel could touch is freed under it.
    assert!(m.d.cancel_all(Duration::from_secs(5)));
    assert_eq!(m.d.in_flight, 0);
}

#[test]
fn waker_from_another_thread_ends_the_wait() {
    let mut m = Mini::new(config(false));
    let w = m.d.waker();
    let t = std::thread::spawn(move || w.wake().unwrap());
    let mut woken = false;
    m.pump(
        &mut woken,
        |w, _, c| *w |= matches!(c, Completion::Wake),
        |w, _| *w,
    );
    t.join().unwrap();
    // The eventfd read is re-armed: a second wake-up is seen too.
    m.d.waker().wake().unwrap();
    woken = false;
    m.pump(
        &mut woken,
        |w, _, c| *w |= matches!(c, Completion::Wake),
        |w, _| *w,
    );
}

#[test]
fn unregistered_direct_descriptor_is_closed_when_dropped() {
    let mut m = Mini::new(config(true));
    let mut c = TcpStream::connect(m.addr).unwrap();
    let mut dropped = false;
    m.pump(
        &mut dropped,
        |dropped, acts, c| {
            if let Completion::Accepted { socket, .. } = c {
                assert!(matches!(socket, Socket::Direct(_)));
                acts.push(Action::Drop(socket));
                *dropped = true;
            }
        },
        |dropped, _| *dropped,
    );
    let mut st = ();
    m.turn(&mut st, &mut |_, _, _| {});
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).unwrap(), 0);
}

#[test]
fn direct_fds_serve_a_thousand_connections() {
    let mut m = Mini::new(config(true));
    let mut clients = Vec::new();
    for batch in 0..10u8 {
        for _ in 0..100 {
            let mut c = TcpStream::connect(m.addr).unwrap();
            c.write_all(&[batch; 3]).unwrap();
            clients.push(c);
        }
        let want = clients.len() * 3;
        let mut st = ();
        m.pump(&mut st, echo, |_, m| m.sent == want);
    }
    assert_eq!(m.d.conns.iter().flatten().count(), 1000);
    for (i, c) in clients.iter_mut().enumerate() {
        let mut b = [0u8; 3];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b, [(i / 100) as u8; 3]);
    }
}

#[test]
fn direct_fds_max_caps_connections_until_one_is_released() {
    let cfg = DriverConfig {
        direct_fds_max: 4,
        ..config(true)
    };
    let mut m = Mini::new(cfg);
    let mut st = ();
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(TcpStream::connect(m.addr).unwrap());
        m.pump(&mut st, echo, |_, m| m.next == i + 1);
    }
    // The cap is reached: the accept is stopped (one turn submits the cancel), and later
    // connections wait in the listen backlog.
    m.turn(&mut st, &mut echo);
    clients.push(TcpStream::connect(m.addr).unwrap());
    clients.push(TcpStream::connect(m.addr).unwrap());
    for _ in 0..10 {
        m.turn(&mut st, &mut echo);
    }
    assert_eq!(m.next, 4);
    // Releasing one connection frees a table slot: exactly one more is accepted.
    let _ = m.d.close(Token(0));
    m.pump(&mut st, echo, |_, m| m.next == 5);
    for _ in 0..10 {
        m.turn(&mut st, &mut echo);
    }
    assert_eq!(m.next, 5);
}

#[test]
fn direct_fds_max_past_the_descriptor_limit_is_clamped_to_it() {
    let cfg = DriverConfig {
        direct_fds_max: u32::MAX,
        ..config(true)
    };
    // The kernel refuses a file table larger than RLIMIT_NOFILE: clamped, the ring starts.
    let m = Mini::new(cfg);
    assert_eq!(m.d.cfg.direct_fds_max, nofile_limit());
}

#[test]
fn stop_accepting_closes_the_listener() {
    let mut m = Mini::new(config(false));
    m.d.stop_accepting();
    let mut st = ();
    for _ in 0..3 {
        m.turn(&mut st, &mut echo);
    }
    let e = TcpStream::connect(m.addr).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(m.next, 0);
}
