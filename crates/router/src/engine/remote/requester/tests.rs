//! The requester's protocol, driven through an in-memory link: chunks,
//! PSN order, go-back-N after each kind of NAK, the answer timeout, the
//! window, and the loss of the peer.

use super::*;
use crate::engine::remote::responder::{ack, nak, reply_to, Chunk, Inbound, Placed, Responder};
use crate::memory::this_process;
use crate::transport::in_memory::{Frame, InMemoryTransport};

const PEER: PeerId = 3;
const FIRST_PSN: u32 = 100;
const RKEY: u32 = 0xabcd;
const REMOTE_ADDR: u64 = 0x10_0000;

/// Work requests posted on a send queue; `completed` of them left it.
#[derive(Default)]
struct Posted {
    wqes: Vec<(SendWqe, Result<Checked, u32>)>,
    completed: u32,
    impossible: bool,
}

impl SendQueue for Posted {
    fn pending(&self) -> Option<u32> {
        (!self.impossible).then(|| self.wqes.len() as u32 - self.completed)
    }

    fn get(&self, n: u32) -> (SendWqe, Result<Checked, u32>) {
        let (w, c) = &self.wqes[(self.completed + n) as usize];
        (*w, c.clone())
    }
}

/// A requester with its send queue, its link and its memory (this
/// process's), played by the test as the engine would.
struct Bench {
    r: Requester,
    sq: Posted,
    wire: InMemoryTransport,
    mem: ProcessMemory,
    retries: Retries,
    now: Instant,
    start: Instant,
    /// The head said the peer is gone (the QP goes to error).
    peer_gone: bool,
    /// Local buffers of the work requests (kept alive).
    buffers: Vec<Vec<u8>>,
}

impl Bench {
    fn new(retries: Retries) -> Bench {
        let now = Instant::now();
        Bench {
            r: Requester::new(PEER, FIRST_PSN),
            sq: Posted::default(),
            wire: InMemoryTransport::default(),
            mem: this_process(),
            retries,
            now,
            start: now,
            peer_gone: false,
            buffers: Vec::new(),
        }
    }

    /// RC with pingpong's timeout 14 and retry_cnt 7, rnr_retry 3.
    fn rc() -> Bench {
        Bench::new(Retries::new(QpKind::Rc, 14, 7, 3))
    }

    fn uc() -> Bench {
        Bench::new(Retries::new(QpKind::Uc, 0, 0, 0))
    }

    /// Posts work request `wr_id` with `opcode` whose local buffer
    /// holds `data`; returns the buffer's index.
    fn post(&mut self, wr_id: u64, op: u32, data: Vec<u8>) -> usize {
        let mut w = SendWqe::zeroed();
        w.wr_id = wr_id;
        w.opcode = op;
        w.rkey = RKEY;
        w.remote_addr = REMOTE_ADDR;
        let len = data.len() as u64;
        self.buffers.push(data);
        let buf = self.buffers.last_mut().expect("just pushed");
        let local = if len > 0 {
            vec![(buf.as_mut_ptr() as u64, len)]
        } else {
            Vec::new()
        };
        let checked = Checked {
            local,
            len,
            inline: false,
        };
        self.sq.wqes.push((w, Ok(checked)));
        self.buffers.len() - 1
    }

    fn post_send(&mut self, wr_id: u64, len: usize) {
        self.post(wr_id, IBV_WR_SEND, pattern(wr_id, len));
    }

    /// Posts a work request the requester's checks refuse.
    fn post_refused(&mut self, wr_id: u64, status: u32) {
        let mut w = SendWqe::zeroed();
        w.wr_id = wr_id;
        self.sq.wqes.push((w, Err(status)));
    }

    fn transmit_raw(&mut self) -> Transmitted {
        let base = FrameHeader {
            kind: Kind::Request as u8,
            src_gid: [1; 16],
            dst_gid: [2; 16],
            src_qpn: 0x11.into(),
            dst_qpn: 0x22.into(),
            ..Default::default()
        };
        self.r.transmit(
            &base,
            &self.retries,
            &self.mem,
            &self.sq,
            &mut self.wire,
            self.now,
        )
    }

    /// Runs the requester's sending; the frames it queued.
    fn transmit(&mut self) -> Vec<Frame> {
        match self.transmit_raw() {
            Transmitted::Sent(_) => {}
            Transmitted::Violation => panic!("unexpected violation"),
            Transmitted::Refused(w, status) => {
                panic!("unexpected refusal of wr {} ({status})", w.wr_id)
            }
            Transmitted::Local(w) => panic!("unexpected window operation {}", w.wr_id),
        }
        self.wire.take()
    }

    fn answer(&mut self, req: &FrameHeader, kind: Kind, status: u32, aux: u32, data: &[u8]) {
        let mut a = reply_to(req, kind);
        a.status = status.into();
        a.aux = aux.into();
        a.payload_len = (data.len() as u32).into();
        self.r
            .on_answer(&a, data, &self.retries, &self.mem, self.now);
    }

    fn ack(&mut self, req: &FrameHeader) {
        self.answer(req, Kind::Ack, IBV_WC_SUCCESS, 0, &[]);
    }

    fn nak(&mut self, req: &FrameHeader, why: NakReason, aux: u32) {
        self.answer(req, Kind::Nak, why as u32, aux, &[]);
    }

    /// Completes what the head allows, as the engine does with room in
    /// its CQ: (wr_id, status, byte_len) of each, in order. An error
    /// fails the QP: nothing after it completes.
    fn complete(&mut self) -> Vec<(u64, u32, u64)> {
        let mut out = Vec::new();
        loop {
            match self.r.head(self.now, &self.retries) {
                Head::Waiting => return out,
                Head::PeerGone => {
                    self.peer_gone = true;
                    return out;
                }
                Head::Answered {
                    wqe,
                    status,
                    byte_len,
                } => {
                    out.push((wqe.wr_id, status, byte_len));
                    if status != IBV_WC_SUCCESS {
                        return out;
                    }
                    self.r.pop_head();
                    self.sq.completed += 1;
                }
            }
        }
    }

    fn later(&mut self, d: Duration) {
        self.now += d;
    }
}

/// `len` bytes that tell work request `wr_id`'s data from others'.
fn pattern(wr_id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 * 7 + wr_id) as u8).collect()
}

/// (PSN, offset, payload bytes) of each frame.
fn chunks(frames: &[Frame]) -> Vec<(u32, u64, usize)> {
    frames
        .iter()
        .map(|f| (f.hdr.psn.get(), f.hdr.offset.get(), f.payload.len()))
        .collect()
}

fn ok(wr_id: u64, len: u64) -> (u64, u32, u64) {
    (wr_id, IBV_WC_SUCCESS, len)
}

#[test]
fn messages_go_out_in_chunks_in_psn_order() {
    let mut b = Bench::rc();
    let big = MAX_CHUNK + 10;
    b.post(1, IBV_WR_RDMA_WRITE, pattern(1, big));
    b.post_send(2, 5);
    let sent = b.transmit();
    assert_eq!(
        chunks(&sent),
        [
            (100, 0, MAX_CHUNK),
            (100, MAX_CHUNK as u64, 10),
            (101, 0, 5)
        ]
    );
    let write = &sent[0].hdr;
    assert_eq!(sent[0].peer, PEER);
    assert_eq!(write.kind(), Kind::Request);
    assert_eq!(
        (write.opcode.get(), write.total_len.get()),
        (IBV_WR_RDMA_WRITE, big as u64)
    );
    assert_eq!(
        (write.rkey.get(), write.remote_addr.get()),
        (RKEY, REMOTE_ADDR)
    );
    assert_eq!((write.dst_qpn.get(), write.dst_gid), (0x22, [2; 16]));
    let whole: Vec<u8> = [&sent[0].payload[..], &sent[1].payload[..]].concat();
    assert_eq!(whole, pattern(1, big));
    assert_eq!(sent[2].payload, pattern(2, 5));
    assert_eq!(b.transmit().len(), 0, "everything is on the wire");

    assert_eq!(b.complete(), [], "nothing completes before its Ack");
    b.ack(&sent[1].hdr);
    assert_eq!(b.complete(), [ok(1, big as u64)]);
    b.ack(&sent[2].hdr);
    assert_eq!(b.complete(), [ok(2, 5)]);
}

/// A window operation runs at the requester in send-queue order: only
/// once every request ahead of it is answered, and none behind it goes
/// out before it ran.
#[test]
fn window_operations_wait_for_the_requests_ahead() {
    let mut b = Bench::rc();
    b.post_send(1, 8);
    b.post(2, IBV_WR_BIND_MW, Vec::new());
    b.post_send(3, 8);
    let sent = b.transmit();
    assert_eq!(chunks(&sent), [(100, 0, 8)], "nothing past the bind");
    assert_eq!(b.transmit().len(), 0, "still waiting for the SEND's answer");
    b.ack(&sent[0].hdr);
    assert_eq!(b.complete(), [ok(1, 8)]);
    match b.transmit_raw() {
        Transmitted::Local(w) => assert_eq!(w.wr_id, 2),
        _ => panic!("the bind is next, with nothing in flight"),
    }
    // The engine ran it and took it off the queue.
    b.sq.completed += 1;
    assert_eq!(chunks(&b.transmit()), [(101, 0, 8)]);
}

#[test]
fn answers_out_of_order_complete_in_psn_order() {
    let mut b = Bench::rc();
    for wr in 1..=3 {
        b.post_send(wr, 8);
    }
    let sent = b.transmit();
    assert_eq!(chunks(&sent), [(100, 0, 8), (101, 0, 8), (102, 0, 8)]);
    b.ack(&sent[2].hdr);
    b.ack(&sent[1].hdr);
    assert_eq!(b.complete(), [], "PSN 100 is not answered yet");
    b.ack(&sent[0].hdr);
    assert_eq!(b.complete(), [ok(1, 8), ok(2, 8), ok(3, 8)]);
}

/// Go-back-N: the responder NAKs PSN 101 and drops 102 (it expects
/// 101); the requester resends 101 alone after the wait, then 102.
#[test]
fn a_nak_resends_from_the_naked_psn_probing_it_alone() {
    let mut b = Bench::rc();
    for wr in 1..=3 {
        b.post(wr, IBV_WR_RDMA_WRITE, pattern(wr, 16));
    }
    let sent = b.transmit();
    b.ack(&sent[0].hdr);
    b.nak(&sent[1].hdr, NakReason::Busy, 0);
    assert_eq!(b.complete(), [ok(1, 16)]);
    assert_eq!(b.r.next_deadline().map(|t| t - b.now), Some(BUSY_DELAY));
    assert_eq!(b.transmit().len(), 0, "not before the busy wait");
    b.later(BUSY_DELAY);
    let probe = b.transmit();
    assert_eq!(chunks(&probe), [(101, 0, 16)], "the NAKed request alone");
    assert_eq!(probe[0].payload, pattern(2, 16));
    assert_eq!(b.transmit().len(), 0, "102 waits for the probe's answer");
    b.ack(&probe[0].hdr);
    let rest = b.transmit();
    assert_eq!(chunks(&rest), [(102, 0, 16)]);
    b.ack(&rest[0].hdr);
    assert_eq!(b.complete(), [ok(2, 16), ok(3, 16)]);
}

/// A NAK for a message whose later chunks were still on the wire: the
/// whole message goes again, from its first chunk.
#[test]
fn a_nak_resends_a_message_from_its_first_chunk() {
    let mut b = Bench::rc();
    let len = 2 * MAX_CHUNK + 1;
    b.post(1, IBV_WR_RDMA_WRITE, pattern(1, len));
    let sent = b.transmit();
    assert_eq!(sent.len(), 3);
    b.nak(&sent[0].hdr, NakReason::Busy, 0);
    b.later(BUSY_DELAY);
    let again = b.transmit();
    let offsets: Vec<u64> = again.iter().map(|f| f.hdr.offset.get()).collect();
    assert_eq!(offsets, [0, MAX_CHUNK as u64, 2 * MAX_CHUNK as u64]);
    let whole: Vec<u8> = again.iter().flat_map(|f| f.payload.clone()).collect();
    assert_eq!(whole, pattern(1, len));
}

/// The responder NAKs "no QP" for every first chunk it cannot take:
/// the NAKs for requests behind the first one are stale once the
/// requester went back, and do not make it go back again.
#[test]
fn answers_to_requests_sent_before_a_rewind_are_ignored() {
    let mut b = Bench::rc();
    for wr in 1..=3 {
        b.post_send(wr, 4);
    }
    let sent = b.transmit();
    for f in &sent {
        b.nak(&f.hdr, NakReason::NoQp, 0);
    }
    b.later(NO_QP_DELAY);
    let probe = b.transmit();
    assert_eq!(chunks(&probe), [(100, 0, 4)]);
    // A stale Ack for 101 (sent before the rewind) completes nothing.
    b.ack(&sent[1].hdr);
    b.ack(&probe[0].hdr);
    assert_eq!(b.complete(), [ok(1, 4)]);
    let rest = b.transmit();
    assert_eq!(chunks(&rest), [(101, 0, 4), (102, 0, 4)]);
    b.ack(&rest[0].hdr);
    b.ack(&rest[1].hdr);
    assert_eq!(b.complete(), [ok(2, 4), ok(3, 4)]);
}

#[test]
fn rnr_naks_are_retried_rnr_retry_times_then_fail() {
    let mut b = Bench::new(Retries::new(QpKind::Rc, 14, 7, 2));
    b.post_send(1, 8);
    b.post_send(2, 8);
    let mut req = b.transmit();
    assert_eq!(chunks(&req), [(100, 0, 8), (101, 0, 8)]);
    let timer = Duration::from_micros(640);
    for retry in 1..=2 {
        b.nak(&req[0].hdr, NakReason::Rnr, 640);
        assert_eq!(b.complete(), [], "retry {retry} of 2");
        b.later(timer - Duration::from_micros(1));
        assert_eq!(b.transmit().len(), 0, "not before the RNR timer");
        b.later(Duration::from_micros(1));
        req = b.transmit();
        assert_eq!(chunks(&req), [(100, 0, 8)], "retry {retry}: PSN 100 alone");
    }
    b.nak(&req[0].hdr, NakReason::Rnr, 640);
    assert_eq!(b.complete(), [(1, IBV_WC_RNR_RETRY_EXC_ERR, 0)]);
    b.later(timer);
    assert_eq!(b.transmit().len(), 0, "nothing after the failed request");
}

#[test]
fn rnr_retry_7_retries_forever() {
    let mut b = Bench::new(Retries::new(QpKind::Rc, 14, 7, 7));
    b.post_send(1, 8);
    let mut req = b.transmit();
    for _ in 0..50 {
        // A responder timer of 0 still means a short wait.
        b.nak(&req[0].hdr, NakReason::Rnr, 0);
        assert_eq!(b.complete(), []);
        assert_eq!(b.transmit().len(), 0);
        b.later(RNR_MIN_WAIT);
        req = b.transmit();
        assert_eq!(chunks(&req), [(100, 0, 8)]);
    }
    b.ack(&req[0].hdr);
    assert_eq!(b.complete(), [ok(1, 8)]);
}

#[test]
fn busy_naks_back_off_without_counting_retries() {
    let mut b = Bench::new(Retries::new(QpKind::Rc, 14, 0, 0));
    b.post_send(1, 8);
    b.post_send(2, 8);
    let mut req = b.transmit();
    let mut waits = Vec::new();
    for _ in 0..12 {
        b.nak(&req[0].hdr, NakReason::Busy, 0);
        let wait = b.r.next_deadline().expect("a resend is due") - b.now;
        waits.push(wait.as_micros());
        b.later(wait);
        req = b.transmit();
        assert_eq!(chunks(&req), [(100, 0, 8)]);
    }
    assert_eq!(
        waits,
        [50, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000]
    );
    b.ack(&req[0].hdr);
    assert_eq!(b.complete(), [ok(1, 8)]);
    // The Ack reset the delay.
    let next = b.transmit();
    b.nak(&next[0].hdr, NakReason::Busy, 0);
    assert_eq!(b.r.next_deadline().map(|t| t - b.now), Some(BUSY_DELAY));
}

/// A chunk the link lost (a TCP link loses none while it is up): the
/// responder cannot complete the message and answers nothing, the
/// requester does not resend, and the answer timeout fails the request.
#[test]
fn a_lost_chunk_ends_in_retry_exc_err_at_the_answer_timeout() {
    let mut b = Bench::rc();
    b.post(1, IBV_WR_RDMA_WRITE, pattern(1, MAX_CHUNK + 1));
    b.post_send(2, 4);
    let sent = b.transmit();
    assert_eq!(sent.len(), 3, "(the second chunk is lost)");
    let timeout = b.retries.answer_timeout.expect("RC with timeout 14");
    assert_eq!(b.r.next_deadline(), Some(b.start + timeout));
    b.later(timeout - Duration::from_micros(1));
    assert_eq!(b.complete(), []);
    assert_eq!(b.transmit().len(), 0, "nothing is resent");
    b.later(Duration::from_micros(1));
    assert_eq!(b.complete(), [(1, IBV_WC_RETRY_EXC_ERR, 0)]);
}

/// "No QP" is no answer: the requester resends every millisecond, but
/// the answer clock started by the first send keeps running, and the
/// request fails when it runs out, as one nobody answers would.
#[test]
fn no_qp_naks_end_in_retry_exc_err_at_the_answer_timeout() {
    // timeout 10 (4.194 ms), retry_cnt 1: 8.388 ms.
    let mut b = Bench::new(Retries::new(QpKind::Rc, 10, 1, 7));
    let timeout = b.retries.answer_timeout.expect("timeout 10");
    b.post_send(1, 4);
    let mut sent = b.transmit();
    let mut resends = 0;
    let done = loop {
        assert!(resends < 100, "still resending after {resends} NAKs");
        for f in &sent {
            b.nak(&f.hdr, NakReason::NoQp, 0);
        }
        // The engine wakes at the requester's next deadline.
        b.now = b.r.next_deadline().expect("a resend or the timeout is due");
        let done = b.complete();
        if !done.is_empty() {
            break done;
        }
        sent = b.transmit();
        assert_eq!(chunks(&sent), [(100, 0, 4)]);
        resends += 1;
    };
    assert_eq!(done, [(1, IBV_WC_RETRY_EXC_ERR, 0)]);
    assert_eq!(b.now, b.start + timeout, "from the first send");
    assert_eq!(resends, 8, "one resend a millisecond meanwhile");
}

/// A responder QP that comes up after "no QP" NAKs (its application was
/// slower): the probe is accepted, and from that answer on the clock runs
/// from each frame sent again.
#[test]
fn after_no_qp_a_real_answer_restarts_the_clock() {
    let mut b = Bench::rc();
    let timeout = b.retries.answer_timeout.expect("RC with timeout 14");
    b.post_send(1, 4);
    b.post_send(2, 4);
    let sent = b.transmit();
    b.nak(&sent[0].hdr, NakReason::NoQp, 0);
    b.nak(&sent[1].hdr, NakReason::NoQp, 0);
    b.later(NO_QP_DELAY);
    let probe = b.transmit();
    assert_eq!(chunks(&probe), [(100, 0, 4)]);
    assert_eq!(
        b.r.next_deadline(),
        Some(b.start + timeout),
        "no restart yet"
    );
    b.ack(&probe[0].hdr);
    assert_eq!(b.complete(), [ok(1, 4)]);
    b.later(Duration::from_millis(1));
    assert_eq!(chunks(&b.transmit()), [(101, 0, 4)]);
    assert_eq!(
        b.r.next_deadline(),
        Some(b.now + timeout),
        "from the last frame"
    );
}

/// An answer restarts the clock of the requests still on the wire.
#[test]
fn an_answer_restarts_the_answer_clock() {
    let mut b = Bench::rc();
    b.post_send(1, 4);
    b.post_send(2, 4);
    let sent = b.transmit();
    let timeout = b.retries.answer_timeout.expect("RC with timeout 14");
    b.later(timeout / 2);
    b.ack(&sent[0].hdr);
    assert_eq!(b.complete(), [ok(1, 4)]);
    b.later(timeout / 2);
    assert_eq!(b.complete(), [], "the Ack restarted the clock");
    b.later(timeout / 2);
    assert_eq!(b.complete(), [(2, IBV_WC_RETRY_EXC_ERR, 0)]);
}

#[test]
fn an_error_answer_fails_the_request_and_nothing_more_is_sent() {
    for (answered, completed) in [
        (IBV_WC_REM_ACCESS_ERR, IBV_WC_REM_ACCESS_ERR),
        (IBV_WC_REM_INV_REQ_ERR, IBV_WC_REM_INV_REQ_ERR),
        // A status no responder gives: an error of the remote side.
        (IBV_WC_LOC_LEN_ERR, IBV_WC_REM_OP_ERR),
    ] {
        let mut b = Bench::rc();
        b.post_send(1, 4);
        let sent = b.transmit();
        b.post_send(2, 4);
        b.answer(&sent[0].hdr, Kind::Ack, answered, 0, &[]);
        assert_eq!(b.transmit().len(), 0, "nothing behind the failure");
        assert_eq!(b.complete(), [(1, completed, 0)]);
    }
}

#[test]
fn read_data_and_an_atomic_s_old_value_land_in_local_memory() {
    let mut b = Bench::rc();
    let read = b.post(1, IBV_WR_RDMA_READ, vec![0; 12]);
    let atomic = b.post(2, IBV_WR_ATOMIC_FETCH_AND_ADD, vec![0; 8]);
    let sent = b.transmit();
    assert_eq!(chunks(&sent), [(100, 0, 0), (101, 0, 0)], "no payload");
    b.answer(&sent[0].hdr, Kind::ReadData, 0, 0, b"hello ");
    let mut second = reply_to(&sent[0].hdr, Kind::ReadData);
    second.offset = 6.into();
    b.r.on_answer(&second, b"world!", &b.retries, &b.mem, b.now);
    b.ack(&sent[0].hdr);
    let old = 0x1122_3344_5566_7788u64.to_ne_bytes();
    b.answer(&sent[1].hdr, Kind::Ack, IBV_WC_SUCCESS, 0, &old);
    assert_eq!(b.complete(), [ok(1, 12), ok(2, 8)]);
    assert_eq!(b.buffers[read], b"hello world!");
    assert_eq!(b.buffers[atomic], old);
}

#[test]
fn read_data_that_does_not_fit_is_ignored() {
    let mut b = Bench::rc();
    let read = b.post(1, IBV_WR_RDMA_READ, vec![0; 4]);
    let sent = b.transmit();
    b.answer(&sent[0].hdr, Kind::ReadData, 0, 0, b"too long");
    b.ack(&sent[0].hdr);
    assert_eq!(
        b.complete(),
        [(1, IBV_WC_REM_OP_ERR, 0)],
        "acknowledged without a byte that fits"
    );
    assert_eq!(b.buffers[read], [0; 4]);
}

/// The Ack of a READ comes after all its data; an Ack before (a broken
/// or lying peer) fails the READ instead of completing an unfilled buffer.
/// Data sent again after a rewind counts once.
#[test]
fn a_read_acknowledged_before_all_its_data_fails() {
    let mut b = Bench::rc();
    b.post(1, IBV_WR_RDMA_READ, vec![0; 12]);
    let sent = b.transmit();
    b.answer(&sent[0].hdr, Kind::ReadData, 0, 0, b"hello ");
    b.ack(&sent[0].hdr);
    assert_eq!(b.complete(), [(1, IBV_WC_REM_OP_ERR, 0)]);

    let mut b = Bench::rc();
    let read = b.post(1, IBV_WR_RDMA_READ, vec![0; 12]);
    let sent = b.transmit();
    b.answer(&sent[0].hdr, Kind::ReadData, 0, 0, b"hello ");
    b.answer(&sent[0].hdr, Kind::ReadData, 0, 0, b"hello ");
    let mut second = reply_to(&sent[0].hdr, Kind::ReadData);
    second.offset = 6.into();
    b.r.on_answer(&second, b"world!", &b.retries, &b.mem, b.now);
    b.ack(&sent[0].hdr);
    assert_eq!(b.complete(), [ok(1, 12)]);
    assert_eq!(b.buffers[read], b"hello world!");
}

/// UC resends nothing: a message the responder cannot take is lost,
/// and a lost message completes successfully.
#[test]
fn uc_messages_nobody_takes_are_lost_not_failed() {
    let mut b = Bench::uc();
    for wr in 1..=3 {
        b.post_send(wr, 4);
    }
    let sent = b.transmit();
    b.nak(&sent[0].hdr, NakReason::Rnr, 640);
    b.nak(&sent[1].hdr, NakReason::NoQp, 0);
    assert_eq!(b.complete(), [ok(1, 4), ok(2, 4)]);
    assert_eq!(b.transmit().len(), 0, "nothing is resent");
    b.later(UC_LOST_AFTER);
    assert_eq!(b.complete(), [ok(3, 4)], "unanswered: lost");
}

/// UC: when the answer timeout runs out, every message on the wire
/// was unanswered for that long; all are lost (complete), not only the
/// first one.
#[test]
fn uc_messages_nobody_answers_all_complete_as_lost() {
    let mut b = Bench::uc();
    for wr in 1..=3 {
        b.post_send(wr, 4);
    }
    assert_eq!(b.transmit().len(), 3);
    b.now = b.r.next_deadline().expect("the answer timeout");
    assert_eq!(b.now, b.start + UC_LOST_AFTER);
    assert_eq!(b.complete(), [ok(1, 4), ok(2, 4), ok(3, 4)]);
}

/// UC after a busy NAK: the message resent alone meets "receiver not
/// ready" and is lost; the messages behind it go on.
#[test]
fn uc_messages_behind_a_lost_probe_go_on() {
    let mut b = Bench::uc();
    b.post_send(1, 4);
    b.post_send(2, 4);
    let sent = b.transmit();
    b.nak(&sent[0].hdr, NakReason::Busy, 0);
    b.later(BUSY_DELAY);
    let probe = b.transmit();
    assert_eq!(chunks(&probe), [(100, 0, 4)]);
    b.nak(&probe[0].hdr, NakReason::Rnr, 640);
    assert_eq!(b.complete(), [ok(1, 4)], "lost");
    assert_eq!(chunks(&b.transmit()), [(101, 0, 4)]);

    // The same when nothing answers the probe at all.
    let mut b = Bench::uc();
    b.post_send(1, 4);
    b.post_send(2, 4);
    let sent = b.transmit();
    b.nak(&sent[0].hdr, NakReason::Busy, 0);
    b.later(BUSY_DELAY);
    assert_eq!(chunks(&b.transmit()), [(100, 0, 4)]);
    b.later(UC_LOST_AFTER);
    assert_eq!(b.complete(), [ok(1, 4)], "lost");
    assert_eq!(chunks(&b.transmit()), [(101, 0, 4)]);
}

#[test]
fn the_window_and_the_link_limit_what_is_sent() {
    let mut b = Bench::rc();
    for wr in 0..(WINDOW as u64 + 10) {
        b.post_send(wr, 0);
    }
    b.wire.full.insert(PEER);
    assert_eq!(b.transmit().len(), 0, "no room on the link");
    b.wire.full.clear();
    let sent = b.transmit();
    assert_eq!(sent.len(), WINDOW);
    assert_eq!(b.transmit().len(), 0, "the window is full");
    b.ack(&sent[0].hdr);
    b.ack(&sent[1].hdr);
    assert_eq!(b.complete().len(), 2);
    assert_eq!(chunks(&b.transmit()), [(356, 0, 0), (357, 0, 0)]);
}

#[test]
fn a_pass_sends_at_most_its_budget() {
    let mut b = Bench::rc();
    b.post(1, IBV_WR_RDMA_WRITE, pattern(1, 8 * MAX_CHUNK));
    let first = b.transmit();
    let bytes: usize = first.iter().map(|f| f.payload.len()).sum();
    assert!(bytes as u64 <= PASS_BYTES, "{bytes} bytes in one pass");
    assert_eq!(first.len(), 4, "1 MiB in 256 KiB chunks");
    let second = b.transmit();
    assert_eq!(
        second[0].hdr.offset.get(),
        bytes as u64,
        "continues where it stopped"
    );
}

#[test]
fn a_request_its_checks_refuse_fails_once_it_reaches_the_head() {
    let mut b = Bench::rc();
    b.post_send(1, 4);
    b.post_refused(2, IBV_WC_LOC_PROT_ERR);
    b.post_send(3, 4);
    let sent = b.transmit();
    assert_eq!(
        chunks(&sent),
        [(100, 0, 4)],
        "nothing from the refused one on"
    );
    b.ack(&sent[0].hdr);
    assert_eq!(b.complete(), [ok(1, 4)]);
    match b.transmit_raw() {
        Transmitted::Refused(w, status) => {
            assert_eq!((w.wr_id, status), (2, IBV_WC_LOC_PROT_ERR))
        }
        _ => panic!("the refused request is at the head now"),
    }
    b.sq.impossible = true;
    assert!(matches!(b.transmit_raw(), Transmitted::Violation));
}

#[test]
fn peer_loss_completes_answered_requests_in_order_then_fails() {
    // RC: answered ones complete, the first unanswered one fails.
    let mut b = Bench::rc();
    for wr in 1..=3 {
        b.post_send(wr, 4);
    }
    let sent = b.transmit();
    b.ack(&sent[0].hdr);
    b.ack(&sent[2].hdr);
    assert!(b.r.peer_lost(&b.retries));
    assert_eq!(b.complete(), [ok(1, 4), (2, IBV_WC_RETRY_EXC_ERR, 0)]);
    assert_eq!(b.transmit().len(), 0);

    // Everything answered: completes, then the QP goes to error.
    let mut b = Bench::rc();
    b.post_send(1, 4);
    b.post_send(2, 4);
    let sent = b.transmit();
    b.ack(&sent[0].hdr);
    b.ack(&sent[1].hdr);
    b.post_send(3, 4);
    assert!(b.r.peer_lost(&b.retries));
    assert_eq!(b.complete(), [ok(1, 4), ok(2, 4)]);
    assert!(b.peer_gone);
    assert_eq!(b.transmit().len(), 0, "wr 3 stays for the flush");

    // UC: unanswered ones are lost.
    let mut b = Bench::uc();
    b.post_send(1, 4);
    b.post_send(2, 4);
    b.transmit();
    assert!(b.r.peer_lost(&b.retries));
    assert_eq!(b.complete(), [ok(1, 4), ok(2, 4)]);
    assert!(b.peer_gone);

    // Nothing in flight: the engine fails the QP at once.
    let mut b = Bench::rc();
    assert!(!b.r.peer_lost(&b.retries));
}

/// A responder played by the test as the engine would play it: it
/// refuses the requests in `refuse` once each (a NAK), places every other
/// message at its remote address (this process's memory) and acknowledges
/// it. Returns how many chunks it dropped.
fn serve(
    r: &mut Responder,
    frames: Vec<Frame>,
    refuse: &mut Vec<(u32, NakReason)>,
    mem: &ProcessMemory,
    replies: &mut InMemoryTransport,
) -> usize {
    let mut dropped = 0;
    for f in frames {
        let hdr = &f.hdr;
        let placed = match r.on_chunk(hdr, false, mem, &f.payload) {
            Chunk::Dropped => {
                dropped += 1;
                continue;
            }
            Chunk::Placed(p) => p,
            Chunk::First => {
                if let Some(i) = refuse.iter().position(|(psn, _)| *psn == hdr.psn.get()) {
                    let (_, why) = refuse.remove(i);
                    nak(replies, PEER, hdr, why, 10);
                    continue;
                }
                let mut m = Inbound::of(hdr);
                m.dst = vec![(hdr.remote_addr.get(), hdr.total_len.get())];
                r.start(m, mem, &f.payload)
            }
        };
        match placed {
            Placed::More => {}
            Placed::Complete(_) => ack(replies, PEER, hdr, IBV_WC_SUCCESS, &[]),
            Placed::TooLong(_) | Placed::Unwritable(_) => panic!("psn {}: failed", hdr.psn.get()),
        }
    }
    dropped
}

/// Both ends through in-memory links: the responder refuses PSN 101 (RNR,
/// then busy) and drops what follows it; the requester goes back to 101
/// each time, and every message arrives whole, once, completed in order.
#[test]
fn go_back_n_between_a_requester_and_a_responder() {
    let mut b = Bench::rc();
    let mut responder = Responder::new(FIRST_PSN);
    let mut replies = InMemoryTransport::default();
    let mut refuse = vec![(101, NakReason::Rnr), (101, NakReason::Busy)];
    let len = MAX_CHUNK + 100;
    let mut targets: Vec<Vec<u8>> = (0..3).map(|_| vec![0u8; len]).collect();
    for (wr, target) in (1..=3).zip(targets.iter_mut()) {
        let i = b.post(wr, IBV_WR_RDMA_WRITE, pattern(wr, len));
        b.sq.wqes[i].0.remote_addr = target.as_mut_ptr() as u64;
    }
    let (mut completed, mut sent, mut dropped) = (Vec::new(), Vec::new(), 0);
    for _ in 0..20 {
        let frames = b.transmit();
        if frames.is_empty() {
            // Nothing may go before a NAK's wait ends.
            b.now = b.r.next_deadline().expect("a resend is due");
            continue;
        }
        sent.extend(chunks(&frames));
        dropped += serve(&mut responder, frames, &mut refuse, &b.mem, &mut replies);
        for a in replies.take() {
            b.r.on_answer(&a.hdr, &a.payload, &b.retries, &b.mem, b.now);
        }
        completed.extend(b.complete());
        if completed.len() == 3 {
            break;
        }
    }
    let whole = len as u64;
    assert_eq!(completed, [ok(1, whole), ok(2, whole), ok(3, whole)]);
    for (wr, target) in (1..=3).zip(&targets) {
        assert!(*target == pattern(wr, len), "wr {wr}'s data");
    }
    let c = MAX_CHUNK as u64;
    assert_eq!(
        sent,
        [
            // All three; 101 is refused, its second chunk and 102 dropped.
            (100, 0, MAX_CHUNK),
            (100, c, 100),
            (101, 0, MAX_CHUNK),
            (101, c, 100),
            (102, 0, MAX_CHUNK),
            (102, c, 100),
            // After the RNR timer: 101 alone, refused again (busy).
            (101, 0, MAX_CHUNK),
            (101, c, 100),
            // After the busy wait: 101 alone, accepted; then 102.
            (101, 0, MAX_CHUNK),
            (101, c, 100),
            (102, 0, MAX_CHUNK),
            (102, c, 100),
        ]
    );
    assert_eq!(dropped, 4, "101's second chunk twice, 102's two chunks");
}
