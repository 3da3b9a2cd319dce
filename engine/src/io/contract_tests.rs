//! The [`Driver`] contract (see `io/mod.rs`), checked by the same test bodies on every
//! backend: accept, receive, send (partial writes included), half-close, close and release, the
//! peer's end, the waker, and stopping the listener.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use super::harness::{config, echo, Action, Mini};
use super::{Completion, Driver, Socket, Token};

/// `contract_tests! { body, ... }` runs each generic body once per backend: `epoll::body` and
/// `io_uring::body`.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $(
                #[test]
                fn $name() {
                    super::$name::<crate::io::epoll::EpollDriver>();
                }
            )*
        }
        mod io_uring {
            $(
                #[test]
                fn $name() {
                    super::$name::<crate::io::uring::UringDriver>();
                }
            )*
        }
    };
}

contract_tests! {
    accepted_connection_echoes,
    accepted_socket_reports_the_peer_address,
    large_queue_arrives_whole_and_in_order_across_short_sends,
    close_cancels_the_armed_recv_then_releases_the_token,
    peer_close_is_reported_once_as_orderly_end_of_stream,
    reset_peer_is_reported_closed_once_then_released,
    waker_from_another_thread_ends_the_wait,
    stop_accepting_closes_the_listener,
    shutdown_write_sends_fin_and_keeps_receiving,
    paused_receive_reads_nothing_until_resumed_then_everything_in_order,
    two_listeners_accept_and_say_which_and_both_stop,
}

fn accepted_connection_echoes<D: Driver>() {
    let mut m = Mini::<D>::new(config(false));
    let mut c = TcpStream::connect(m.addr).unwrap();
    c.write_all(b"hello driver").unwrap();
    let mut st = ();
    m.pump(&mut st, echo, |_, m| m.sent == 12);
    let mut back = [0u8; 12];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello driver");
}

fn accepted_socket_reports_the_peer_address<D: Driver>() {
    let mut m = Mini::<D>::new(config(false));
    let c = TcpStream::connect(m.addr).unwrap();
    let mut peer = None;
    m.pump(
        &mut peer,
        |peer, acts, c| {
            if let Completion::Accepted {
                socket,
                peer: p,
                listener,
            } = c
            {
                assert_eq!(listener, 0);
                assert!(matches!(socket, Socket::Stream(_)));
                *peer = Some(p);
                acts.push(Action::Drop(socket));
            }
        },
        |peer, _| peer.is_some(),
    );
    assert_eq!(peer, Some(c.local_addr().unwrap()));
}

fn large_queue_arrives_whole_and_in_order_across_short_sends<D: Driver>() {
    let mut m = Mini::<D>::new(config(false));
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
    // Released now (epoll) or once the kernel let go of the queue (io_uring).
    if m.d.close(Token(0)) {
        m.queues.remove(&0);
        m.released += 1;
    }
    let mut st = ();
    m.pump(&mut st, |_, _, _| {}, |_, m| m.released == 1);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), total);
    assert!(got[..expected.len()] == expected[..]);
    assert_eq!(&got[expected.len()..], b"tail");
}

fn close_cancels_the_armed_recv_then_releases_the_token<D: Driver>() {
    let mut m = Mini::<D>::new(config(false));
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
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).unwrap(), 0);
}

fn peer_close_is_reported_once_as_orderly_end_of_stream<D: Driver>() {
    let mut m = Mini::<D>::new(config(false));
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

fn reset_peer_is_reported_closed_once_then_released<D: Driver>() {
    let mut m = Mini::<D>::new(config(false));
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
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
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

fn waker_from_another_thread_ends_the_wait<D: Driver>() {
    let mut m = Mini::<D>::new(config(false));
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

fn stop_accepting_closes_the_listener<D: Driver>() {
    let mut m = Mini::<D>::new(config(false));
    m.d.stop_accepting();
    let mut st = ();
    for _ in 0..3 {
        m.turn(&mut st, &mut echo);
    }
    let e = TcpStream::connect(m.addr).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(m.next, 0);
}

fn shutdown_write_sends_fin_and_keeps_receiving<D: Driver>() {
    let direct = false;
    let mut m = Mini::<D>::new(config(direct));
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

fn paused_receive_reads_nothing_until_resumed_then_everything_in_order<D: Driver>() {
    let mut m = Mini::<D>::new(config(false));
    let mut c = TcpStream::connect(m.addr).unwrap();
    let mut got = Vec::new();
    let mut on = |got: &mut Vec<u8>, acts: &mut Vec<Action>, c: Completion<'_>| match c {
        Completion::Accepted { socket, .. } => acts.push(Action::Register(socket)),
        Completion::Recv { buf, .. } => got.extend_from_slice(buf),
        _ => {}
    };
    m.pump(&mut got, &mut on, |_, m| m.next == 1);
    m.pausing.push(0);
    c.write_all(b"first").unwrap();
    m.pump(&mut got, &mut on, |got, _| !got.is_empty());
    assert_eq!(got, b"first");
    // Paused: what the peer sends now stays in the kernel, turn after turn.
    let more: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    c.write_all(&more).unwrap();
    for _ in 0..20 {
        m.turn(&mut got, &mut on);
    }
    assert_eq!(got, b"first", "nothing read while paused");
    // Resumed: everything, in order.
    m.pausing.clear();
    m.d.resume_recv(Token(0));
    m.pump(&mut got, &mut on, |got, _| got.len() >= 5 + more.len());
    assert_eq!(&got[..5], b"first");
    assert!(got[5..] == more[..], "in order, nothing lost");
}

fn two_listeners_accept_and_say_which_and_both_stop<D: Driver>() {
    let mut m = Mini::<D>::with_listeners(config(false), 2);
    // Three connections to the second listener, two to the first, interleaved.
    let order = [1usize, 0, 1, 1, 0];
    let mut clients = Vec::new();
    for &i in &order {
        clients.push((i, TcpStream::connect(m.addrs[i]).unwrap()));
    }
    let mut seen: Vec<(usize, std::net::SocketAddr)> = Vec::new();
    m.pump(
        &mut seen,
        |seen, acts, c| {
            if let Completion::Accepted {
                socket,
                peer,
                listener,
            } = c
            {
                seen.push((listener, peer));
                acts.push(Action::Register(socket));
            }
        },
        |seen, _| seen.len() == order.len(),
    );
    for (i, c) in &clients {
        let me = c.local_addr().unwrap();
        assert!(
            seen.contains(&(*i, me)),
            "{me} accepted by listener {i}: {seen:?}"
        );
    }
    // Each registered connection echoes, whichever listener took it.
    for (n, (_, c)) in clients.iter_mut().enumerate() {
        c.write_all(&[n as u8; 3]).unwrap();
    }
    let mut st = ();
    m.pump(&mut st, echo, |_, m| m.sent == 3 * order.len());
    m.d.stop_accepting();
    for _ in 0..3 {
        m.turn(&mut st, &mut echo);
    }
    for (i, a) in m.addrs.iter().enumerate() {
        let e = TcpStream::connect(a).map(|_| i).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{a}");
    }
}
