//! The send queue's tests: its three states, the stock, replacing and discarding.

use super::*;

fn collect(q: &SendQueue) -> Vec<u8> {
    let mut s = [IoSlice::new(&[]); 64];
    let n = q.io_slices(&mut s);
    s[..n].iter().flat_map(|s| s.iter().copied()).collect()
}

fn ping() -> Arc<[u8]> {
    Arc::from(&b"\x89\x08tick-clk"[..])
}

#[test]
fn a_send_queue_takes_16_bytes() {
    assert_eq!(std::mem::size_of::<SendQueue>(), 16);
}

#[test]
fn one_shared_control_frame_takes_no_heap_then_grows_into_a_fifo_and_back() {
    let mut pool = QueuePool::default();
    let mut q = SendQueue::default();
    let frame = ping();
    q.push_shared_control(&frame, &mut pool);
    assert!(q.is_one());
    assert_eq!(q.heap_bytes(), 0);
    assert_eq!(q.len(), frame.len());
    assert_eq!(q.single_slice(), Some(&frame[..]));
    assert_eq!(collect(&q), &frame[..]);
    // The bytes are the shard's frame, not a copy.
    assert_eq!(q.single_slice().map(<[u8]>::as_ptr), Some(frame.as_ptr()));
    // A second frame: the queue grows into a body, the frame stays first and shared.
    q.push(b"echo");
    assert!(!q.is_one());
    assert!(q.heap_bytes() > 0);
    assert_eq!(q.len(), frame.len() + 4);
    assert_eq!(
        q.chunks().0.next().map(<[u8]>::as_ptr),
        Some(frame.as_ptr())
    );
    let mut want = frame.to_vec();
    want.extend_from_slice(b"echo");
    assert_eq!(collect(&q), want);
    // Written and recycled: no heap again, and the next control frame is held thin again.
    q.advance(want.len());
    q.recycle(&mut pool);
    assert_eq!(q.heap_bytes(), 0);
    assert_eq!(pool.free.len(), 1);
    q.push_shared_control(&frame, &mut pool);
    assert!(q.is_one());
    q.advance(frame.len());
    assert!(q.is_empty() && !q.is_one() && q.heap_bytes() == 0);
}

#[test]
fn control_frames_of_one_turn_share_one_thin_reference_and_outlive_their_sender() {
    let mut pool = QueuePool::default();
    let mut frame = ping();
    let mut qs: Vec<SendQueue> = (0..1000).map(|_| SendQueue::default()).collect();
    for q in &mut qs {
        q.push_shared_control(&frame, &mut pool);
    }
    // One thin reference for the frame, held by every queue; the frame itself is held by
    // its sender and that reference only.
    assert_eq!(Arc::strong_count(&frame), 2);
    let thin = pool.thin[0].clone().unwrap();
    assert_eq!(Arc::strong_count(&thin), 1000 + 2);
    assert!(pool.thin[1].is_none());
    // The sender moves on (the next tick's ping): the queues still hold the old bytes.
    let old = frame.to_vec();
    let old_frame = Arc::downgrade(&frame);
    frame = Arc::from(&b"\x89\x08tick-two"[..]);
    drop(thin);
    let mut fresh = SendQueue::default();
    fresh.push_shared_control(&frame, &mut pool);
    for q in &mut qs[..3] {
        q.push_shared_control(&frame, &mut pool);
    }
    assert_eq!(collect(&qs[0]), [&old[..], &frame[..]].concat());
    assert_eq!(collect(&qs[999]), old);
    // The empty pong and the close come in the same turn: at most THIN_FRAMES are kept,
    // the oldest goes first.
    let pong: Arc<[u8]> = Arc::from(&b"\x8a\x00"[..]);
    let close: Arc<[u8]> = Arc::from(&b"\x88\x02\x03\xe9"[..]);
    let mut q = SendQueue::default();
    q.push_shared_control(&pong, &mut pool);
    let mut r = SendQueue::default();
    r.push_shared_control(&close, &mut pool);
    assert_eq!(pool.thin.iter().flatten().count(), THIN_FRAMES);
    let old_ptr = Weak::as_ptr(&old_frame) as *const u8;
    assert!(pool
        .thin
        .iter()
        .flatten()
        .all(|t| !std::ptr::eq(Arc::as_ptr(&**t) as *const u8, old_ptr)));
    assert_eq!(collect(&q), &pong[..]);
    assert_eq!(collect(&r), &close[..]);
    // Once every queue has written it, the old frame is freed.
    for q in &mut qs {
        let n = q.len();
        q.advance(n);
    }
    assert!(old_frame.upgrade().is_none());
}

#[test]
fn a_control_frame_in_flight_stays_whole_while_more_is_queued_and_the_rest_discarded() {
    let mut pool = QueuePool::default();
    let frame = ping();
    let mut q = SendQueue::default();
    q.push_shared_control(&frame, &mut pool);
    q.set_in_flight(true);
    // Not recycled, not replaced, not discarded while the backend holds it.
    q.recycle(&mut pool);
    assert!(q.is_one() && q.in_flight());
    q.discard_unsent();
    assert_eq!(collect(&q), &frame[..]);
    // The connection fails meanwhile: its close frame queues behind the ping in flight,
    // which is the submitted chunk (kept by a later discard, never appended to).
    q.push(b"close");
    assert!(!q.is_one() && q.in_flight());
    assert_eq!(
        q.chunks().0.next().map(<[u8]>::as_ptr),
        Some(frame.as_ptr())
    );
    q.discard_unsent();
    assert_eq!(collect(&q), &frame[..]);
    q.push(b"close");
    q.complete(frame.len());
    assert!(!q.in_flight());
    assert_eq!(collect(&q), b"close");
    q.advance(5);
    q.recycle(&mut pool);
    assert_eq!(q.heap_bytes(), 0);
}

#[test]
fn a_control_frame_not_yet_sent_is_discarded_one_written_in_part_is_kept_whole() {
    let mut pool = QueuePool::default();
    let frame = ping();
    let mut q = SendQueue::default();
    q.push_shared_control(&frame, &mut pool);
    q.discard_unsent();
    assert!(q.is_empty() && !q.is_one());
    q.push_shared_control(&frame, &mut pool);
    // A short write (epoll) or a short send completion (io_uring).
    q.set_in_flight(true);
    q.complete(3);
    assert_eq!(q.len(), frame.len() - 3);
    assert_eq!(collect(&q), &frame[3..]);
    q.discard_unsent();
    assert_eq!(collect(&q), &frame[3..]);
    q.push(b"close");
    q.advance(frame.len() - 3);
    assert_eq!(collect(&q), b"close");
}

#[test]
fn a_control_frame_behind_other_bytes_and_other_bytes_behind_it_take_the_stock() {
    let mut pool = QueuePool::default();
    let frame = ping();
    // A body in the stock.
    let mut q = SendQueue::default();
    q.push(b"x");
    q.advance(1);
    q.recycle(&mut pool);
    assert_eq!(pool.free.len(), 1);
    // A ping onto an empty queue leaves the stock alone; the reply queued behind it
    // adopts the stock's body.
    q.push_shared_control(&frame, &mut pool);
    assert_eq!(pool.free.len(), 1);
    q.reuse(&mut pool);
    assert!(pool.free.is_empty() && !q.is_one());
    q.push(b"reply");
    assert_eq!(collect(&q), [&frame[..], b"reply"].concat());
    // A control frame behind queued bytes joins the body.
    q.push_shared_control(&frame, &mut pool);
    assert_eq!(q.len(), 2 * frame.len() + 5);
    let mut s = [IoSlice::new(&[]); 8];
    assert_eq!(q.io_slices(&mut s), 3);
}

#[test]
fn send_queue_advance_across_chunks_keeps_order() {
    let mut q = SendQueue::default();
    q.push(b"hello ");
    q.push_shared(Arc::from(&b"shared "[..]));
    q.push(b"world");
    assert_eq!(q.len(), 18);
    assert_eq!(collect(&q), b"hello shared world");
    q.advance(8);
    assert_eq!(collect(&q), b"ared world");
    q.advance(10);
    assert!(q.is_empty());
    assert_eq!(collect(&q), b"");
}

#[test]
fn send_queue_storage_recycled_through_the_pool_is_reused_and_leaves_no_heap() {
    let mut pool = QueuePool::default();
    let mut q = SendQueue::default();
    q.reuse(&mut pool);
    q.push(b"hello");
    let p = q.chunks().0.next().map(<[u8]>::as_ptr);
    q.advance(5);
    q.recycle(&mut pool);
    assert_eq!(q.heap_bytes(), 0);
    let mut r = SendQueue::default();
    r.reuse(&mut pool);
    r.push(b"again");
    assert_eq!(r.chunks().0.next().map(<[u8]>::as_ptr), p);
    assert_eq!(collect(&r), b"again");
    assert_eq!(r.len(), 5);
}

#[test]
fn a_queue_left_with_a_chunk_of_no_bytes_is_recycled_empty() {
    let mut pool = QueuePool::default();
    let mut q = SendQueue::default();
    q.push_with(100, |_| {});
    assert!(q.is_empty());
    q.recycle(&mut pool);
    let mut r = SendQueue::default();
    r.reuse(&mut pool);
    assert_eq!(collect(&r), b"");
    r.push(b"x");
    assert_eq!(collect(&r), b"x");
}

#[test]
fn send_queue_not_written_or_in_flight_is_not_recycled() {
    let mut pool = QueuePool::default();
    let mut q = SendQueue::default();
    q.push(b"abc");
    q.recycle(&mut pool);
    assert_eq!(collect(&q), b"abc");
    q.set_in_flight(true);
    q.recycle(&mut pool);
    assert_eq!(collect(&q), b"abc");
    assert!(pool.free.is_empty());
    q.complete(3);
    q.recycle(&mut pool);
    assert_eq!(pool.free.len(), 1);
}

#[test]
fn queue_pool_keeps_at_most_entries_max_and_no_large_buffers() {
    let mut pool = QueuePool::default();
    for _ in 0..QueuePool::ENTRIES_MAX + 10 {
        let mut q = SendQueue::default();
        q.push(b"x");
        q.advance(1);
        q.recycle(&mut pool);
        assert_eq!(q.heap_bytes(), 0);
    }
    assert_eq!(pool.free.len(), QueuePool::ENTRIES_MAX);
    // Without room for large buffers, a large chunk buffer is freed once written.
    let mut q = SendQueue::default();
    q.push(&vec![0u8; SPARE_BYTES_MAX + 1]);
    q.advance(SPARE_BYTES_MAX + 1);
    q.recycle(&mut pool);
    assert_eq!(q.heap_bytes(), 0);
    assert_eq!(pool.large_bytes(), 0);
    assert!(pool.take_released() > SPARE_BYTES_MAX);
}

#[test]
fn large_chunk_buffers_are_reused_through_the_pool_up_to_its_bound() {
    let mut pool = QueuePool::new(100 << 10);
    let frame = vec![7u8; 40 << 10];
    let mut ptrs = Vec::new();
    let mut qs: Vec<SendQueue> = (0..3).map(|_| SendQueue::default()).collect();
    for q in &mut qs {
        q.reuse(&mut pool);
        q.reserve_large(frame.len(), &mut pool);
        q.push(&frame);
        ptrs.push(q.chunks().0.next().map(<[u8]>::as_ptr));
    }
    for q in &mut qs {
        q.advance(frame.len());
        q.recycle(&mut pool);
        assert_eq!(q.heap_bytes(), 0);
    }
    // Two of three 40 KiB buffers fit the 100 KiB bound; the third was freed.
    assert_eq!(pool.large_bytes(), 2 * (40 << 10));
    assert_eq!(pool.take_released(), 40 << 10);
    let mut q = SendQueue::default();
    q.reuse(&mut pool);
    q.reserve_large(frame.len(), &mut pool);
    q.push(&frame);
    let p = q.chunks().0.next().map(<[u8]>::as_ptr);
    assert!(ptrs.contains(&p), "a kept buffer is reused");
    assert_eq!(pool.large_bytes(), 40 << 10);
    // A much smaller frame does not take a large buffer; a buffer no frame takes is freed
    // at the second look.
    let mut small = SendQueue::default();
    small.reserve_large(8 << 10, &mut pool);
    assert_eq!(pool.large_bytes(), 40 << 10);
    assert_eq!(pool.age_large(2), 0);
    assert_eq!(pool.age_large(2), 40 << 10);
    assert_eq!(pool.take_released(), 40 << 10);
}

#[test]
fn large_buffers_stock_holds_what_a_steady_load_uses_not_its_bound() {
    // Every second (one look), 8 connections send a 16 KiB frame each, and one sends a
    // frame of a size no earlier buffer fits (as a coalesced chunk that grew may be): more
    // than 32 KiB (no 16 KiB frame takes it) and larger each time.
    const LOOKS_MAX: u32 = 2;
    let mut pool = QueuePool::new(1 << 20);
    let steady = vec![1u8; 16 << 10];
    let mut qs: Vec<SendQueue> = (0..9).map(|_| SendQueue::default()).collect();
    let (mut odd_bytes, mut freed) = (0, 0);
    for round in 0..60usize {
        let odd = vec![2u8; (33 << 10) + round * 1000];
        for (i, q) in qs.iter_mut().enumerate() {
            let frame = if i == 8 { &odd } else { &steady };
            q.reuse(&mut pool);
            q.reserve_large(frame.len(), &mut pool);
            q.push(frame);
        }
        for q in &mut qs {
            let n = q.len();
            q.advance(n);
            q.recycle(&mut pool);
        }
        odd_bytes += odd.len();
        let aged = pool.age_large(LOOKS_MAX);
        assert_eq!(pool.take_released(), aged, "counted as released");
        freed += aged;
        // The 8 steady buffers, and the odd ones of the last looks only.
        let most = 8 * steady.len() + LOOKS_MAX as usize * odd.len();
        assert!(
            pool.large_bytes() <= most,
            "round {round}: {} bytes kept, at most {most}",
            pool.large_bytes()
        );
    }
    // The steady buffers were reused all along: only odd ones were freed.
    assert!(pool.large_bytes() >= 8 * steady.len());
    assert!(freed <= odd_bytes, "{freed} freed, odd frames {odd_bytes}");
    assert!(
        odd_bytes > 1 << 20,
        "the old stock would have filled its bound"
    );
}

#[test]
fn send_queue_single_slice_only_when_one_chunk_is_left() {
    let mut q = SendQueue::default();
    assert_eq!(q.single_slice(), None);
    q.push(b"hello ");
    q.push(b"world");
    assert_eq!(q.single_slice(), Some(&b"hello world"[..]));
    q.push_shared(Arc::from(&b"!"[..]));
    assert_eq!(q.single_slice(), None);
    q.advance(11);
    assert_eq!(q.single_slice(), Some(&b"!"[..]));
    q.push(b"ab");
    q.advance(2);
    assert_eq!(q.single_slice(), Some(&b"b"[..]));
}

#[test]
fn replace_shared_swaps_an_unsent_chunk_and_keeps_the_length_right() {
    let mut q = SendQueue::default();
    let old: Arc<[u8]> = Arc::from(&b"old-1"[..]);
    q.push(b"a");
    q.push_shared(old.clone());
    q.push(b"z");
    let w = Arc::downgrade(&old);
    assert!(q.replace_shared(&w, Arc::from(&b"new-22"[..])));
    assert_eq!(collect(&q), b"anew-22z");
    assert_eq!(q.len(), 8);
    // Already replaced: the old frame is not in the queue any more.
    assert!(!q.replace_shared(&w, Arc::from(&b"x"[..])));
}

#[test]
fn replace_shared_never_touches_a_partly_written_or_submitted_chunk() {
    let mut q = SendQueue::default();
    let first: Arc<[u8]> = Arc::from(&b"first"[..]);
    q.push_shared(first.clone());
    q.advance(2);
    assert!(!q.replace_shared(&Arc::downgrade(&first), Arc::from(&b"x"[..])));
    let second: Arc<[u8]> = Arc::from(&b"second"[..]);
    q.push_shared(second.clone());
    q.set_in_flight(true);
    assert!(!q.replace_shared(&Arc::downgrade(&second), Arc::from(&b"x"[..])));
    let third: Arc<[u8]> = Arc::from(&b"third"[..]);
    q.push_shared(third.clone());
    assert!(q.replace_shared(&Arc::downgrade(&third), Arc::from(&b"3"[..])));
    q.complete(3);
    assert_eq!(collect(&q), b"second3");
}

#[test]
fn discard_unsent_keeps_a_partly_written_frame_whole() {
    let mut q = SendQueue::default();
    q.push_shared(Arc::from(&b"frame-one"[..]));
    q.push_shared(Arc::from(&b"frame-two"[..]));
    q.advance(3);
    q.discard_unsent();
    assert_eq!(collect(&q), b"me-one");
    assert_eq!(q.len(), 6);
    q.push(b"close");
    assert_eq!(collect(&q), b"me-oneclose");
    let mut q = SendQueue::default();
    q.push_shared(Arc::from(&b"sent"[..]));
    q.discard_unsent();
    assert!(q.is_empty());
}

#[test]
fn discard_unsent_keeps_the_rest_of_a_frame_started_outside_the_queue() {
    let mut q = SendQueue::default();
    q.push_rest(b"ad", b"er-rest", 12);
    q.push_shared(Arc::from(&b"next"[..]));
    q.discard_unsent();
    assert_eq!(collect(&q), b"ader-rest");
    q.push(b"close");
    assert_eq!(collect(&q), b"ader-restclose");
    // Once that chunk is written, a whole frame behind it may be discarded again.
    q.advance(14);
    q.push_shared(Arc::from(&b"whole"[..]));
    q.discard_unsent();
    assert!(q.is_empty());
}

#[test]
fn the_rest_of_a_frame_takes_a_buffer_sized_for_the_whole_frame() {
    // Whatever part of a 60 KiB frame the socket took, the rest's buffer is the one the whole
    // frame would have needed: the same size every time, so that the stock and the heap see
    // one size per frame size and not one per partial write.
    let frame = 60 << 10;
    for rest in [1usize, 5000, 37_000, frame - 1] {
        let mut q = SendQueue::default();
        q.push_rest(&[], &vec![7u8; rest], frame);
        assert_eq!(q.len(), rest);
        assert_eq!(
            q.heap_bytes() - std::mem::size_of::<Fifo>(),
            q_deque_bytes(&q) + frame,
            "rest {rest}"
        );
    }
}

/// Heap bytes of a queue's chunk deque.
fn q_deque_bytes(q: &SendQueue) -> usize {
    match &q.0 {
        State::Full(f) => f.chunks.capacity() * std::mem::size_of::<Chunk>(),
        _ => 0,
    }
}

#[test]
fn send_queue_in_flight_never_appends_to_submitted_chunk() {
    let mut q = SendQueue::default();
    q.push(b"abc");
    let p = q.chunks().0.next().map(<[u8]>::as_ptr);
    q.set_in_flight(true);
    q.push(b"def");
    let first = q.chunks().0.next().map(<[u8]>::as_ptr);
    assert_eq!(first, p);
    assert_eq!(q.chunks().0.nth(1), Some(&b"def"[..]));
    q.complete(3);
    assert_eq!(collect(&q), b"def");
}
