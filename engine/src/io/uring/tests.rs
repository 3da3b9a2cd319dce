//! The io_uring driver under a minimal shard: real sockets on 127.0.0.1.

use std::net::TcpStream;
use std::time::Duration;

use crate::io::harness::{config, echo, Action};
use crate::io::{Completion, Driver, DriverConfig, Socket, Token};

use super::buf_ring::{BUSY_CALM_TRIMS, CALM_TRIMS, QUIET_USED, TRIM_INTERVAL, WINDOW_MIN};
use super::driver::{ConnIo, UringDriver, RINGS_MAX};
use super::op::{OpId, OpKind};
use super::probe::probe;
use crate::io::harness::Mini;
use crate::io::sys::nofile_limit;
use std::io::{Read, Write};

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
fn accepted_connection_echoes_with_direct_fds() {
    let mut m = Mini::<UringDriver>::new(config(true));
    let mut c = TcpStream::connect(m.addr).unwrap();
    c.write_all(b"hello ring").unwrap();
    let mut st = ();
    m.pump(&mut st, echo, |_, m| m.sent == 10);
    let mut back = [0u8; 10];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello ring");
}

#[test]
fn small_receives_share_one_buffer_when_the_ring_is_incremental() {
    let mut m = Mini::<UringDriver>::new(config(false));
    assert!(
        !m.d.rings[0].bufs.offsets.is_empty(),
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
        let mut m = Mini::<UringDriver>::new(config(direct));
        let c = TcpStream::connect(m.addr).unwrap();
        let mut peer = None;
        m.pump(
            &mut peer,
            |peer, acts, c| {
                if let Completion::Accepted {
                    socket, peer: p, ..
                } = c
                {
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
        recv_keep_bytes: 0,
        ..config(false)
    };
    let mut m = Mini::<UringDriver>::new(cfg);
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let writer = write_in_background(m.addr, payload.clone());
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
fn teardown_cancels_a_send_stuck_on_a_peer_that_does_not_read() {
    let mut m = Mini::<UringDriver>::new(config(false));
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
fn a_one_chunk_send_takes_no_send_op_and_a_close_while_it_is_in_flight_waits_for_it() {
    for direct in [false, true] {
        let mut m = Mini::<UringDriver>::new(config(direct));
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
        // One chunk the peer does not read: the send stays in flight.
        m.queues.get_mut(&0).unwrap().push(&vec![1u8; 16 << 20]);
        m.turn(&mut st, &mut |_, _, _| {});
        assert!(m.queues[&0].in_flight());
        let c = m.d.conn(Token(0)).unwrap();
        assert!(c.send_in_flight, "direct {direct}");
        assert!(
            c.send.is_none(),
            "a plain send holds no SendOp (direct {direct})"
        );
        assert!(m.d.spare.is_empty());
        // The connection closes meanwhile: released (and its queue with it) only once the
        // send's completion is reaped.
        m.closing.push(0);
        assert!(!m.d.close(Token(0)), "released with a send in flight");
        assert!(m.queues.contains_key(&0));
        m.pump(&mut st, |_, _, _| {}, |_, m| m.released == 1);
        assert!(!m.queues.contains_key(&0));
        assert!(m.d.conn(Token(0)).is_none());
    }
}

#[test]
fn unregistered_direct_descriptor_is_closed_when_dropped() {
    let mut m = Mini::<UringDriver>::new(config(true));
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
    let mut m = Mini::<UringDriver>::new(config(true));
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
fn one_poll_reaps_more_receives_than_the_kernel_runs_per_enter() {
    // The kernel runs about 20 pieces of deferred work per enter (DEFER_TASKRUN); the driver
    // enters again, without waiting, while batches come back full: 200 receives waiting are
    // all reaped by one poll, not one share of them per loop turn.
    const N: usize = 200;
    let mut m = Mini::<UringDriver>::new(config(false));
    let mut clients = Vec::new();
    let mut st = ();
    // In batches that fit the listen backlog (std's listener: 128).
    while clients.len() < N {
        for _ in 0..50 {
            let c = TcpStream::connect(m.addr).unwrap();
            c.set_nodelay(true).unwrap();
            clients.push(c);
        }
        let want = clients.len();
        m.pump(&mut st, echo_none, |_, m| m.next == want);
    }
    // The recvs of the last registered ones are submitted by the next enter.
    m.turn(&mut st, &mut echo_none);
    for c in &mut clients {
        c.write_all(b"ping").unwrap();
    }
    // Let loopback deliver every write (softirq work may run a little later under load).
    std::thread::sleep(Duration::from_millis(100));
    let mut got = 0usize;
    m.turn(
        &mut got,
        &mut |got: &mut usize, _: &mut Vec<Action>, c: Completion<'_>| {
            if let Completion::Recv { buf, .. } = c {
                *got += buf.len() / 4;
            }
        },
    );
    assert_eq!(got, N, "receives reaped by one poll");
}

#[test]
fn direct_fds_max_caps_connections_until_one_is_released() {
    let cfg = DriverConfig {
        direct_fds_max: 4,
        ..config(true)
    };
    let mut m = Mini::<UringDriver>::new(cfg);
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
fn direct_fds_table_past_the_descriptor_limit_is_clamped_to_it() {
    let cfg = DriverConfig {
        direct_fds_max: u32::MAX,
        direct_fds_table_max: u32::MAX,
        ..config(true)
    };
    // The kernel refuses a file table larger than RLIMIT_NOFILE: clamped, the ring starts,
    // and the cap becomes what the most rings of such tables hold.
    let m = Mini::<UringDriver>::new(cfg);
    assert_eq!(m.d.cfg.direct_fds_table_max, nofile_limit());
    assert_eq!(m.d.rings[0].table, nofile_limit());
    assert_eq!(
        m.d.cfg.direct_fds_max,
        nofile_limit().saturating_mul(RINGS_MAX as u32)
    );
}

/// A fake per-table cap of 64 entries stands for RLIMIT_NOFILE: 200 connections on one driver
/// (one shard thread) need four rings, each with its own table; every connection echoes, the
/// cap (200) holds, and a released slot lets exactly one waiting connection in.
#[test]
fn connections_past_one_fixed_file_table_spread_over_more_rings() {
    let cfg = DriverConfig {
        direct_fds_max: 200,
        direct_fds_table_max: 64,
        ..config(true)
    };
    let mut m = Mini::<UringDriver>::new(cfg);
    assert_eq!(m.d.rings.len(), 1);
    assert_eq!(m.d.rings[0].table, 64);
    let mut st = ();
    let mut clients = Vec::new();
    // In bursts of eight (bursts past a whole table: see the next test).
    for batch in 0..25u8 {
        for _ in 0..8 {
            let mut c = TcpStream::connect(m.addr).unwrap();
            c.write_all(&[batch; 3]).unwrap();
            clients.push(c);
        }
        let want = clients.len() * 3;
        m.pump(&mut st, echo, |_, m| m.sent == want);
    }
    assert_eq!(m.next, 200);
    assert!(m.d.rings.len() >= 4, "{} rings", m.d.rings.len());
    for r in &m.d.rings {
        assert_eq!(r.table, 64);
        assert!(r.open <= 64);
    }
    assert_eq!(m.d.rings.iter().map(|r| r.open).sum::<u32>(), 200);
    assert!(m.d.rings.iter().skip(1).all(|r| r.open > 0));
    for (i, c) in clients.iter_mut().enumerate() {
        let mut b = [0u8; 3];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b, [(i / 8) as u8; 3]);
    }
    // Echo again on every connection of the last ring: its completions come through its
    // eventfd while ring 0 waits.
    let last = m.d.rings.len() - 1;
    let on_last: Vec<usize> = (0..200)
        .filter(|&t| m.d.conns[t].as_ref().is_some_and(|c| c.sock.ring() == last))
        .collect();
    assert!(!on_last.is_empty());
    let before = m.sent;
    for &t in &on_last {
        clients[t].write_all(b"xy").unwrap();
    }
    m.pump(&mut st, echo, |_, m| m.sent == before + 2 * on_last.len());
    // The cap is reached: later connections wait in the listen backlog.
    clients.push(TcpStream::connect(m.addr).unwrap());
    for _ in 0..10 {
        m.turn(&mut st, &mut echo);
    }
    assert_eq!(m.next, 200);
    let _ = m.d.close(Token(on_last[0]));
    m.pump(&mut st, echo, |_, m| m.next == 201);
    for _ in 0..10 {
        m.turn(&mut st, &mut echo);
    }
    assert_eq!(m.next, 201);
    assert_eq!(m.d.rings.iter().map(|r| r.open).sum::<u32>(), 200);
    // Teardown cancels the operations of every ring.
    assert!(m.d.cancel_all(Duration::from_secs(5)));
}

/// A listen backlog burst larger than a table's free entries: 100 clients connect (each
/// sends at once) before the driver runs, three times, with tables of 64 entries. One accept
/// must not take more connections than its table has free entries (the kernel would close each
/// one that finds none, and its client would see EOF): every connection is registered on some
/// ring and echoes, and no table holds more than it has.
#[test]
fn backlog_bursts_larger_than_a_table_lose_no_connection() {
    let cfg = DriverConfig {
        direct_fds_max: 300,
        direct_fds_table_max: 64,
        ..config(true)
    };
    let mut m = Mini::<UringDriver>::new(cfg);
    assert!(
        m.d.slack >= 64,
        "the CQ allows bursts past a 64-entry table"
    );
    let mut st = ();
    let mut clients = Vec::new();
    for round in 0..3u8 {
        for _ in 0..100 {
            let mut c = TcpStream::connect(m.addr).unwrap();
            c.write_all(&[round; 3]).unwrap();
            clients.push(c);
        }
        let want = clients.len();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while m.next < want && std::time::Instant::now() < deadline {
            m.turn(&mut st, &mut echo);
        }
        assert_eq!(m.next, want, "round {round}: connections lost at accept");
        let want = want * 3;
        m.pump(&mut st, echo, |_, m| m.sent == want);
    }
    for r in &m.d.rings {
        assert_eq!(r.table, 64);
        assert!(r.open <= 64);
    }
    assert_eq!(m.d.rings.iter().map(|r| r.open).sum::<u32>(), 300);
    for (i, c) in clients.iter_mut().enumerate() {
        let mut b = [0u8; 3];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b, [(i / 100) as u8; 3]);
    }
}

#[test]
fn shutdown_write_works_on_direct_descriptors_too() {
    let direct = true;
    let mut m = Mini::<UringDriver>::new(config(direct));
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

/// Register the first accepted connection, then run turns until `done`.
fn accept_one(m: &mut Mini<UringDriver>) {
    let mut st = ();
    m.pump(&mut st, echo_none, |_, m| m.next == 1);
}

/// A client that connects to `addr` and writes `payload` whole from another thread.
fn write_in_background(
    addr: std::net::SocketAddr,
    payload: Vec<u8>,
) -> std::thread::JoinHandle<TcpStream> {
    std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&payload).unwrap();
        c
    })
}

fn echo_none(_: &mut (), acts: &mut Vec<Action>, c: Completion<'_>) {
    if let Completion::Accepted { socket, .. } = c {
        acts.push(Action::Register(socket));
    }
}

#[test]
fn a_trickle_of_bytes_cycles_through_the_window_only_not_the_whole_ring() {
    // 64 buffers of 4 KiB (page aligned: a buffer's index is its page), 1,000 messages of
    // 1 KiB one at a time: 4 times the ring. A ring that holds every buffer lends out all 64
    // (each receive touching new pages until all are resident); the window keeps it to
    // WINDOW_MIN.
    let mut m = Mini::<UringDriver>::new(config(false));
    let mut c = TcpStream::connect(m.addr).unwrap();
    c.set_nodelay(true).unwrap();
    accept_one(&mut m);
    let mut pages = std::collections::BTreeSet::new();
    let mut got = 0usize;
    for i in 0..1000u32 {
        c.write_all(&[i as u8; 1024]).unwrap();
        let want = (i as usize + 1) * 1024;
        let mut st = (&mut pages, &mut got);
        m.pump(
            &mut st,
            |(pages, got), _, c| {
                if let Completion::Recv { buf, .. } = c {
                    pages.insert(buf.as_ptr() as usize / 4096);
                    **got += buf.len();
                }
            },
            |(_, got), _| **got >= want,
        );
    }
    assert!(
        pages.len() <= usize::from(WINDOW_MIN) + 1,
        "{} buffers used",
        pages.len()
    );
    assert!(usize::from(m.d.rings[0].bufs.resident()) <= usize::from(WINDOW_MIN) + 1);
}

/// A 1 MiB burst from one writer, received whole; returns the writer's socket and the widest
/// window seen.
fn widen_by_a_burst(m: &mut Mini<UringDriver>) -> (std::thread::JoinHandle<TcpStream>, u16) {
    let addr = m.addr;
    let writer = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&vec![7u8; 1 << 20]).unwrap();
        c
    });
    accept_one(m);
    let mut got = 0usize;
    let mut widest = 0;
    while got < 1 << 20 {
        m.turn(&mut got, &mut |got, _, c| {
            if let Completion::Recv { buf, .. } = c {
                assert!(buf.iter().all(|&b| b == 7));
                *got += buf.len();
            }
        });
        widest = widest.max(m.d.rings[0].bufs.window());
    }
    (writer, widest)
}

#[test]
fn a_burst_widens_the_window_and_trimming_gives_the_buffers_back() {
    let mut m = Mini::<UringDriver>::new(config(false));
    let (writer, widest) = widen_by_a_burst(&mut m);
    assert!(
        widest > WINDOW_MIN,
        "the burst widened the window ({widest})"
    );
    assert!(m.d.rings[0].bufs.resident() > WINDOW_MIN);
    // Idle: the window stays wide for CALM_TRIMS - 1 trims (a burst may come back), then
    // shrinks to the minimum and the buffers it no longer needs are released.
    let wide = m.d.rings[0].bufs.window();
    let mut at = std::time::Instant::now();
    for _ in 1..CALM_TRIMS {
        at += TRIM_INTERVAL;
        m.d.rings[0].bufs.trim(at);
    }
    assert_eq!(m.d.rings[0].bufs.window(), wide);
    for _ in 0..2 {
        at += TRIM_INTERVAL;
        m.d.rings[0].bufs.trim(at);
    }
    assert_eq!(m.d.rings[0].bufs.window(), WINDOW_MIN);
    assert!(m.d.rings[0].bufs.resident() <= 2 * WINDOW_MIN);
    assert_eq!(
        m.d.rings[0].bufs.trim_at(),
        None,
        "nothing left to trim: no wake-up for it"
    );
    drop(writer.join().unwrap());
}

#[test]
fn under_steady_traffic_the_window_stays_wide_between_bursts() {
    let mut m = Mini::<UringDriver>::new(config(false));
    let (writer, _) = widen_by_a_burst(&mut m);
    let wide = m.d.rings[0].bufs.window();
    assert!(
        wide >= 4 * WINDOW_MIN,
        "the burst widened the window ({wide})"
    );
    let resident = m.d.rings[0].bufs.resident();
    // Traffic goes on between bursts (batches of QUIET_USED + 1 buffers, far below a quarter
    // of the window): the window and its resident buffers stay for BUSY_CALM_TRIMS - 1 trims,
    // past CALM_TRIMS, so that the next burst finds them.
    let mut at = std::time::Instant::now();
    let first = m.d.rings[0]
        .bufs
        .trim_at()
        .expect("a trim is due after a burst");
    at = at.max(first);
    m.d.rings[0].bufs.trim(at);
    for _ in 1..BUSY_CALM_TRIMS {
        m.d.rings[0].bufs.note_batch(QUIET_USED + 1);
        at += TRIM_INTERVAL;
        m.d.rings[0].bufs.trim(at);
    }
    assert_eq!(m.d.rings[0].bufs.window(), wide);
    assert_eq!(m.d.rings[0].bufs.resident(), resident);
    // Then it fits the load: four times its largest batch, rounded up to a power of two.
    for _ in 0..2 {
        m.d.rings[0].bufs.note_batch(QUIET_USED + 1);
        at += TRIM_INTERVAL;
        m.d.rings[0].bufs.trim(at);
    }
    let fit = (4 * (QUIET_USED + 1)).next_power_of_two().max(WINDOW_MIN);
    assert_eq!(m.d.rings[0].bufs.window(), fit);
    assert!(m.d.rings[0].bufs.resident() <= 2 * fit);
    drop(writer.join().unwrap());
}

#[test]
fn trimming_between_every_turn_loses_no_received_byte() {
    // A fast writer widens the window; a trim forced between every two turns releases ring
    // buffers past the window that the kernel has not started: the stream must arrive intact.
    let mut m = Mini::<UringDriver>::new(config(false));
    let addr = m.addr;
    let payload: Vec<u8> = (0..4u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let p2 = payload.clone();
    let writer = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        for chunk in p2.chunks(64 << 10) {
            c.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        c
    });
    accept_one(&mut m);
    let mut got = Vec::with_capacity(payload.len());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < payload.len() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        m.d.rings[0].bufs.force_trim();
        m.turn(&mut got, &mut |got, _, c| {
            if let Completion::Recv { buf, .. } = c {
                got.extend_from_slice(buf);
            }
        });
    }
    assert!(got == payload, "the stream arrived intact");
    drop(writer.join().unwrap());
}

#[test]
fn kept_bytes_come_back_first_in_place_when_the_next_follow_them_and_alone_by_the_end_of_the_poll()
{
    use crate::io::Flow;
    let cfg = DriverConfig {
        recv_buffers: 8,
        recv_buffer_bytes: 64,
        recv_keep_bytes: 0,
        ..config(false)
    };
    let mut m = Mini::<UringDriver>::new(cfg);
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let writer = write_in_background(m.addr, payload.clone());
    accept_one(&mut m);
    // A shard that keeps the last 10 bytes of every buffer it may keep from.
    let (mut got, mut kept, mut joined, mut alone) = (Vec::new(), Vec::new(), 0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.len() < payload.len() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        m.d.poll(Some(Duration::from_millis(20)), |c| {
            let Completion::Recv { buf, keep_max, .. } = c else {
                return Flow::Continue;
            };
            assert!(buf.starts_with(&kept), "kept bytes come back first");
            if buf.len() > 64 {
                joined += 1;
            }
            if keep_max == 0 && buf.len() == kept.len() {
                alone += 1;
            }
            let n = if keep_max > 10 && buf.len() > 10 {
                10
            } else {
                0
            };
            // Kept bytes were not consumed: they count when presented again.
            got.extend_from_slice(&buf[..buf.len() - n]);
            kept = buf[buf.len() - n..].to_vec();
            if n > 0 {
                Flow::Keep { kept: n, whole: 0 }
            } else {
                Flow::Continue
            }
        })
        .unwrap();
        assert!(m.d.kept.is_empty(), "nothing stays kept between polls");
        assert!(
            kept.is_empty(),
            "kept bytes are presented alone by the end of the poll"
        );
    }
    assert_eq!(got, payload);
    drop(writer.join().unwrap());
    assert!(
        joined > 0,
        "some kept bytes were joined in place with the next ones"
    );
    assert!(alone > 0, "some kept bytes were presented alone");
}
