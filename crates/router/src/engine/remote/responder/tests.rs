//! The responder's order of things, through an in-memory link: which PSN
//! it takes, chunks placed in order, UC resynchronisation, READs streamed
//! as the link has room, what it hands back on error.

use super::*;
use crate::engine::remote::PASS_BYTES;
use crate::memory::this_process;
use crate::transport::in_memory::InMemoryTransport;
use flowverbs_wire::link::QP_RC;

const PEER: PeerId = 5;
const REQUESTER_GID: [u8; 16] = [1; 16];
const RESPONDER_GID: [u8; 16] = [2; 16];

/// The header of a request's chunk.
fn request(psn: u32, offset: u64, total_len: u64, op: u32) -> FrameHeader {
    FrameHeader {
        kind: Kind::Request as u8,
        qp_kind: QP_RC,
        psn: psn.into(),
        src_gid: REQUESTER_GID,
        dst_gid: RESPONDER_GID,
        src_qpn: 0x11.into(),
        dst_qpn: 0x22.into(),
        opcode: op.into(),
        offset: offset.into(),
        total_len: total_len.into(),
        ..Default::default()
    }
}

fn recv_wqe(wr_id: u64) -> RecvWqe {
    let mut w = RecvWqe::zeroed();
    w.wr_id = wr_id;
    w
}

fn is_first(c: Chunk) -> bool {
    matches!(c, Chunk::First)
}

fn is_dropped(c: Chunk) -> bool {
    matches!(c, Chunk::Dropped)
}

/// A message of `total_len` bytes for the buffer at `dst`.
fn message(hdr: &FrameHeader, dst: &mut [u8]) -> Inbound {
    let mut m = Inbound::of(hdr);
    m.dst = vec![(dst.as_mut_ptr() as u64, dst.len() as u64)];
    m
}

#[test]
fn only_the_expected_psn_is_taken() {
    let mem = this_process();
    let mut r = Responder::new(500);
    let chunk =
        |r: &mut Responder, psn| r.on_chunk(&request(psn, 0, 0, IBV_WR_SEND), false, &mem, &[]);
    assert!(is_dropped(chunk(&mut r, 501)), "ahead of the expected PSN");
    assert!(is_first(chunk(&mut r, 500)));
    // The engine NAKed 500 (the responder did not move on): what the
    // requester had sent behind it is dropped until 500 comes again.
    assert!(is_dropped(chunk(&mut r, 501)));
    assert!(is_dropped(chunk(&mut r, 502)));
    assert!(is_first(chunk(&mut r, 500)));
    r.executed();
    assert!(is_first(chunk(&mut r, 501)));
    assert!(is_dropped(chunk(&mut r, 500)), "behind: already executed");
    r.failed();
    assert!(
        is_first(chunk(&mut r, 502)),
        "a failed request was answered"
    );
}

#[test]
fn a_message_is_placed_chunk_by_chunk_and_a_gap_drops_the_rest() {
    let mem = this_process();
    let mut r = Responder::new(500);
    let mut dst = vec![0u8; 10];
    let first = request(500, 0, 10, IBV_WR_RDMA_WRITE);
    assert!(is_first(r.on_chunk(&first, false, &mem, b"0123")));
    let m = message(&first, &mut dst);
    assert!(matches!(r.start(m, &mem, b"0123"), Placed::More));
    // The chunk at offset 4 is lost: the one after it does not fit.
    let at = |off| request(500, off, 10, IBV_WR_RDMA_WRITE);
    assert!(is_dropped(r.on_chunk(&at(7), false, &mem, b"789")));
    assert!(is_dropped(r.on_chunk(
        &request(501, 0, 0, IBV_WR_SEND),
        false,
        &mem,
        &[]
    )));
    assert!(
        is_dropped(r.on_chunk(&at(0), false, &mem, b"0123")),
        "no restart"
    );
    assert!(matches!(
        r.on_chunk(&at(4), false, &mem, b"456"),
        Chunk::Placed(Placed::More)
    ));
    match r.on_chunk(&at(7), false, &mem, b"789") {
        Chunk::Placed(Placed::Complete(m)) => assert_eq!((m.psn, m.received), (500, 10)),
        _ => panic!("the last chunk completes the message"),
    }
    assert_eq!(dst, b"0123456789");
    assert!(is_first(r.on_chunk(
        &request(501, 0, 0, IBV_WR_SEND),
        false,
        &mem,
        &[]
    )));
}

#[test]
fn a_chunk_beyond_the_message_or_into_unwritable_memory_fails_it() {
    let mem = this_process();
    let mut dst = vec![0u8; 4];

    let mut r = Responder::new(500);
    let hdr = request(500, 0, 4, IBV_WR_SEND);
    let m = message(&hdr, &mut dst);
    assert!(matches!(r.start(m, &mem, b"too long"), Placed::TooLong(_)));
    assert_eq!(dst, [0; 4], "nothing written");
    assert!(is_first(r.on_chunk(
        &request(501, 0, 0, IBV_WR_SEND),
        false,
        &mem,
        &[]
    )));

    let mut r = Responder::new(500);
    let mut m = Inbound::of(&hdr);
    m.dst = vec![(8, 4)]; // not mapped
    assert!(matches!(r.start(m, &mem, b"four"), Placed::Unwritable(_)));
    assert!(is_first(r.on_chunk(
        &request(501, 0, 0, IBV_WR_SEND),
        false,
        &mem,
        &[]
    )));

    // UC drops a message it may not write: nothing is written, it ends.
    let mut r = Responder::new(500);
    let mut m = Inbound::of(&hdr);
    m.dst = vec![(8, 4)];
    m.discard = true;
    assert!(matches!(r.start(m, &mem, b"four"), Placed::Complete(_)));
}

#[test]
fn uc_resynchronises_on_a_new_message_and_keeps_the_srq_receive() {
    let mem = this_process();
    let mut dst = vec![0u8; 8];
    let hdr = request(500, 0, 8, IBV_WR_SEND);

    // RC waits for the PSN it expects.
    let mut r = Responder::new(500);
    assert!(is_dropped(r.on_chunk(
        &request(503, 0, 0, IBV_WR_SEND),
        false,
        &mem,
        &[]
    )));

    // UC: message 500 took a receive from its SRQ, then its end was lost.
    let mut r = Responder::new(500);
    assert!(is_first(r.on_chunk(&hdr, true, &mem, b"abcd")));
    let mut m = message(&hdr, &mut dst);
    m.recv = Some(recv_wqe(77));
    m.recv_consumed = true;
    assert!(matches!(r.start(m, &mem, b"abcd"), Placed::More));
    assert!(r.take_spare_recv().is_none());
    assert!(is_first(r.on_chunk(
        &request(503, 0, 4, IBV_WR_SEND),
        true,
        &mem,
        b"next"
    )));
    assert_eq!(r.take_spare_recv().map(|w| w.wr_id), Some(77));
    // The rest of the abandoned message is dropped.
    assert!(is_dropped(r.on_chunk(
        &request(500, 4, 8, IBV_WR_SEND),
        true,
        &mem,
        b"efgh"
    )));
}

#[test]
fn requests_behind_streaming_reads_wait_unless_they_are_reads() {
    let src = [7u8; 4];
    let mut r = Responder::new(500);
    assert!(!r.must_wait(IBV_WR_RDMA_WRITE));
    r.queue_read(
        PEER,
        &request(500, 0, 4, IBV_WR_RDMA_READ),
        vec![(src.as_ptr() as u64, 4)],
    );
    for op in [
        IBV_WR_RDMA_WRITE,
        IBV_WR_RDMA_WRITE_WITH_IMM,
        IBV_WR_SEND,
        IBV_WR_ATOMIC_CMP_AND_SWP,
        IBV_WR_ATOMIC_FETCH_AND_ADD,
    ] {
        assert!(r.must_wait(op), "opcode {op} behind a READ");
    }
    assert!(!r.must_wait(IBV_WR_RDMA_READ));
    for psn in 501..(500 + MAX_READS as u32) {
        r.queue_read(
            PEER,
            &request(psn, 0, 4, IBV_WR_RDMA_READ),
            vec![(src.as_ptr() as u64, 4)],
        );
    }
    assert!(r.must_wait(IBV_WR_RDMA_READ), "{MAX_READS} READs queued");
}

#[test]
fn read_data_streams_as_the_link_has_room_then_its_ack() {
    let mem = this_process();
    let mut wire = InMemoryTransport::default();
    let len = 2 * MAX_CHUNK + 5;
    let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut r = Responder::new(500);
    let req = request(500, 0, len as u64, IBV_WR_RDMA_READ);
    r.queue_read(PEER, &req, vec![(src.as_ptr() as u64, len as u64)]);
    assert!(is_first(r.on_chunk(
        &request(501, 0, 4, IBV_WR_RDMA_READ),
        false,
        &mem,
        &[]
    )));

    wire.full.insert(PEER);
    let s = r.stream_reads(&mem, &mut wire, PASS_BYTES);
    assert!(!s.progress && s.failed.is_none());
    assert!(wire.sent.is_empty(), "no room");
    wire.full.clear();
    let s = r.stream_reads(&mem, &mut wire, MAX_CHUNK as u64);
    assert!(s.progress && s.failed.is_none());
    assert_eq!(wire.sent.len(), 1, "one chunk's budget");
    r.stream_reads(&mem, &mut wire, PASS_BYTES);
    let frames = wire.take();
    let kinds: Vec<(Kind, u64, usize)> = frames
        .iter()
        .map(|f| (f.hdr.kind(), f.hdr.offset.get(), f.payload.len()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Kind::ReadData, 0, MAX_CHUNK),
            (Kind::ReadData, MAX_CHUNK as u64, MAX_CHUNK),
            (Kind::ReadData, 2 * MAX_CHUNK as u64, 5),
            (Kind::Ack, 0, 0),
        ]
    );
    let data: Vec<u8> = frames.iter().flat_map(|f| f.payload.clone()).collect();
    assert_eq!(data, src);
    let ack = &frames[3];
    assert_eq!(ack.peer, PEER);
    assert_eq!(
        (
            ack.hdr.psn.get(),
            ack.hdr.status.get(),
            ack.hdr.dst_qpn.get()
        ),
        (500, IBV_WC_SUCCESS, 0x11)
    );
    assert_eq!(
        (ack.hdr.src_gid, ack.hdr.dst_gid),
        (RESPONDER_GID, REQUESTER_GID)
    );
    assert!(!r.has_reads());
}

#[test]
fn a_read_of_memory_it_cannot_read_fails_as_the_request_came() {
    let mem = this_process();
    let mut wire = InMemoryTransport::default();
    let src = [1u8; 4];
    let mut r = Responder::new(500);
    let req = request(500, 0, 4, IBV_WR_RDMA_READ);
    r.queue_read(PEER, &req, vec![(8, 4)]); // not mapped
    r.queue_read(
        PEER,
        &request(501, 0, 4, IBV_WR_RDMA_READ),
        vec![(src.as_ptr() as u64, 4)],
    );
    let s = r.stream_reads(&mem, &mut wire, PASS_BYTES);
    let (peer, failed) = s.failed.expect("the first READ fails");
    assert_eq!(peer, PEER);
    assert_eq!(
        (
            failed.src_gid,
            failed.dst_gid,
            failed.src_qpn.get(),
            failed.dst_qpn.get()
        ),
        (REQUESTER_GID, RESPONDER_GID, 0x11, 0x22),
        "addressed as the request was"
    );
    assert_eq!(failed.psn.get(), 500);
    assert!(wire.sent.is_empty());
    assert!(!r.has_reads(), "the READs behind it go too");
}

#[test]
fn entering_the_error_state_hands_back_the_receives_it_took() {
    let mem = this_process();
    let mut dst = vec![0u8; 8];
    let src = [1u8; 4];

    // A message in progress whose receive is still in its QP's own ring:
    // the ring's flush completes it, not the responder.
    let mut r = Responder::new(500);
    let hdr = request(500, 0, 8, IBV_WR_SEND);
    let mut m = message(&hdr, &mut dst);
    m.recv = Some(recv_wqe(76));
    assert!(matches!(r.start(m, &mem, b"abcd"), Placed::More));
    r.queue_read(
        PEER,
        &request(501, 0, 4, IBV_WR_RDMA_READ),
        vec![(src.as_ptr() as u64, 4)],
    );
    assert!(r.entered_error().is_empty());
    assert!(!r.has_reads());

    // UC on an SRQ: a spare receive from an abandoned message, and the one
    // the message in progress took.
    let mut r = Responder::new(500);
    let mut m = message(&hdr, &mut dst);
    m.recv = Some(recv_wqe(77));
    m.recv_consumed = true;
    assert!(matches!(r.start(m, &mem, b"abcd"), Placed::More));
    let next = request(501, 0, 8, IBV_WR_SEND);
    assert!(is_first(r.on_chunk(
        &request(501, 0, 8, IBV_WR_SEND),
        true,
        &mem,
        b"ef"
    )));
    let mut m = message(&next, &mut dst);
    m.recv = Some(recv_wqe(78));
    m.recv_consumed = true;
    assert!(matches!(r.start(m, &mem, b"ef"), Placed::More));
    let ids: Vec<u64> = r.entered_error().iter().map(|w| w.wr_id).collect();
    assert_eq!(ids, [78, 77]);
    assert!(r.entered_error().is_empty(), "handed back once");
}
