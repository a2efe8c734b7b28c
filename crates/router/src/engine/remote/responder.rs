//! The responder of a QP whose requester is on another host: which PSN it
//! takes, the message it is receiving in chunks, and the RDMA READs it is
//! answering.
//!
//! It accepts only the PSN it expects: after a NAK (which does not advance
//! it) everything behind the NAKed request is dropped until that request
//! comes again (go-back-N). A message is placed chunk by chunk as it
//! arrives, in ascending addresses. READ data streams back as the link has
//! room; requests behind a streaming READ wait (busy) unless they are READs
//! too, so a READ never sees a later WRITE.
//!
//! The engine checks each request (keys, bounds, access rights, receives,
//! QP state), completes receives and answers; this type keeps the order.

use std::collections::VecDeque;

use crate::memory::{ProcessMemory, Segments};
use crate::transport::{PeerId, Transport};
use flowverbs_sys::*;
use flowverbs_wire::entries::RecvWqe;
use flowverbs_wire::link::{FrameHeader, Kind, NakReason, MAX_CHUNK};

/// READ requests a responder keeps queued (more: busy).
const MAX_READS: usize = 256;

/// A message arriving in chunks.
pub(super) struct Inbound {
    pub psn: u32,
    pub opcode: u32,
    pub total_len: u64,
    pub received: u64,
    /// The receive WQE it consumes (SEND, WRITE_WITH_IMM).
    pub recv: Option<RecvWqe>,
    /// Whether `recv` has left its ring yet: a QP's own receive queue is
    /// consumed when the message completes (nobody else takes from it); an
    /// SRQ's at the start (other QPs take from it too).
    pub recv_consumed: bool,
    /// Where its bytes go.
    pub dst: Segments,
    pub imm: u32,
    pub send_flags: u32,
    pub src_qpn: u32,
    /// UC only: the message is being dropped (no receive posted, or a
    /// destination it may not write).
    pub discard: bool,
}

impl Inbound {
    /// The message request `hdr` starts, with nowhere to go yet.
    pub fn of(hdr: &FrameHeader) -> Inbound {
        Inbound {
            psn: hdr.psn.get(),
            opcode: hdr.opcode.get(),
            total_len: hdr.total_len.get(),
            received: 0,
            recv: None,
            recv_consumed: false,
            dst: Segments::new(),
            imm: hdr.imm.get(),
            send_flags: hdr.send_flags.get(),
            src_qpn: hdr.src_qpn.get(),
            discard: false,
        }
    }
}

/// An RDMA READ being answered.
struct PendingRead {
    peer: PeerId,
    /// The header of its data frames (and, with kind Ack, of its answer).
    reply: FrameHeader,
    segs: Segments,
    len: u64,
    sent: u64,
}

/// What became of a chunk that arrived for the responder.
pub(super) enum Chunk {
    /// Dropped: not the PSN it expects (behind a NAKed request, which
    /// comes again), or not the next chunk of the message in progress.
    Dropped,
    /// The first chunk of the request it expects: the engine checks the
    /// request, then executes it or [`Responder::start`]s receiving it.
    First,
    /// The next chunk of the message in progress, placed.
    Placed(Placed),
}

/// The outcome of placing one chunk.
pub(super) enum Placed {
    /// More chunks are to come.
    More,
    /// That was the last chunk: the message is complete.
    Complete(Box<Inbound>),
    /// The chunk goes beyond the message's length: the message fails.
    TooLong(Box<Inbound>),
    /// The chunk could not be written: the message fails.
    Unwritable(Box<Inbound>),
}

/// What a call to [`Responder::stream_reads`] did.
pub(super) struct Streamed {
    /// Whether any frame was queued.
    pub progress: bool,
    /// A READ whose memory could not be read: the request as it came
    /// (addressed from its requester) and the router it came from. The
    /// READs queued behind it are dropped.
    pub failed: Option<(PeerId, FrameHeader)>,
}

/// The responder side of a QP whose requester is on another host.
#[derive(Default)]
pub(super) struct Responder {
    /// The PSN it expects next.
    epsn: u32,
    inbound: Option<Box<Inbound>>,
    reads: VecDeque<PendingRead>,
    /// UC: an SRQ receive taken by a message that was abandoned halfway;
    /// the next message uses it.
    spare_recv: Option<RecvWqe>,
}

impl Responder {
    /// A responder expecting `first_psn` (the QP's `rq_psn`).
    pub fn new(first_psn: u32) -> Responder {
        Responder {
            epsn: first_psn,
            ..Default::default()
        }
    }

    /// Takes a chunk of a request: places it if it continues the message
    /// in progress (into `mem`), says whether it starts the request this
    /// responder expects, or drops it.
    pub fn on_chunk(
        &mut self,
        hdr: &FrameHeader,
        unreliable: bool,
        mem: &ProcessMemory,
        payload: &[u8],
    ) -> Chunk {
        let (psn, offset) = (hdr.psn.get(), hdr.offset.get());
        if unreliable && offset == 0 && psn != self.epsn {
            // UC has no retransmission: a new message after a lost one
            // resynchronises (an abandoned message's SRQ receive is kept).
            self.epsn = psn;
            if let Some(m) = self.inbound.take() {
                if m.recv_consumed {
                    self.spare_recv = m.recv;
                }
            }
        }
        if psn != self.epsn {
            return Chunk::Dropped; // behind a NAKed request: it comes again
        }
        match self.inbound.take() {
            Some(m) if m.psn == psn && m.received == offset => {
                Chunk::Placed(self.place(m, mem, payload))
            }
            Some(m) => {
                self.inbound = Some(m);
                Chunk::Dropped
            }
            None if offset != 0 => Chunk::Dropped,
            None => Chunk::First,
        }
    }

    /// Whether a new request with `opcode` must wait (a busy NAK): READs
    /// are streaming and it is not a READ, or the READ queue is full.
    pub fn must_wait(&self, opcode: u32) -> bool {
        !self.reads.is_empty() && (opcode != IBV_WR_RDMA_READ || self.reads.len() >= MAX_READS)
    }

    /// Queues the answer of READ request `hdr` from `from` (its memory,
    /// `segs`, was checked); the next PSN is expected.
    pub fn queue_read(&mut self, from: PeerId, hdr: &FrameHeader, segs: Segments) {
        self.epsn = self.epsn.wrapping_add(1);
        self.reads.push_back(PendingRead {
            peer: from,
            reply: reply_to(hdr, Kind::ReadData),
            segs,
            len: hdr.total_len.get(),
            sent: 0,
        });
    }

    /// The expected request was executed at once (an atomic): the next
    /// PSN is expected.
    pub fn executed(&mut self) {
        self.epsn = self.epsn.wrapping_add(1);
    }

    /// The expected request failed (and was answered with its error): the
    /// next PSN is expected.
    pub fn failed(&mut self) {
        self.inbound = None;
        self.epsn = self.epsn.wrapping_add(1);
    }

    /// UC: the receive an abandoned message took from the SRQ, if any.
    pub fn take_spare_recv(&mut self) -> Option<RecvWqe> {
        self.spare_recv.take()
    }

    /// Starts receiving message `m` (checked by the engine) and places its
    /// first chunk.
    pub fn start(&mut self, m: Inbound, mem: &ProcessMemory, payload: &[u8]) -> Placed {
        self.place(Box::new(m), mem, payload)
    }

    /// Places one chunk of `m`; a message that completes or fails is
    /// handed back, and the next PSN is expected.
    fn place(&mut self, mut m: Box<Inbound>, mem: &ProcessMemory, payload: &[u8]) -> Placed {
        let len = payload.len() as u64;
        let placed = if m.received + len > m.total_len {
            Placed::TooLong(m)
        } else if !m.discard && mem.write_segments(&m.dst, m.received, payload).is_err() {
            Placed::Unwritable(m)
        } else {
            m.received += len;
            if m.received < m.total_len {
                self.inbound = Some(m);
                return Placed::More;
            }
            Placed::Complete(m)
        };
        self.epsn = self.epsn.wrapping_add(1);
        placed
    }

    pub fn has_reads(&self) -> bool {
        !self.reads.is_empty()
    }

    /// Streams READ data (from `mem`), in order, while the links have room
    /// and `budget` bytes last; each READ is acknowledged after its last
    /// byte.
    pub fn stream_reads(
        &mut self,
        mem: &ProcessMemory,
        peers: &mut dyn Transport,
        mut budget: u64,
    ) -> Streamed {
        let mut progress = false;
        while let Some(rd) = self.reads.front_mut() {
            if !peers.has_room(rd.peer) || budget == 0 {
                break;
            }
            progress = true;
            if rd.sent < rd.len {
                let n = ((rd.len - rd.sent) as usize).min(MAX_CHUNK);
                let hdr = FrameHeader {
                    offset: rd.sent.into(),
                    total_len: rd.len.into(),
                    ..rd.reply
                };
                let (segs, off) = (&rd.segs, rd.sent);
                let sent = peers.send_with(rd.peer, hdr, n, &mut |buf| {
                    mem.read_segments_uninit(segs, off, buf)
                });
                if sent.is_err() {
                    // Answer as the request it was (addresses swapped back).
                    let (peer, mut req) = (rd.peer, rd.reply);
                    std::mem::swap(&mut req.src_gid, &mut req.dst_gid);
                    std::mem::swap(&mut req.src_qpn, &mut req.dst_qpn);
                    self.reads.clear();
                    return Streamed {
                        progress,
                        failed: Some((peer, req)),
                    };
                }
                rd.sent += n as u64;
                budget = budget.saturating_sub(n as u64);
                continue;
            }
            let mut ack = rd.reply;
            ack.kind = Kind::Ack as u8;
            ack.status = IBV_WC_SUCCESS.into();
            peers.send(rd.peer, ack, &[]);
            self.reads.pop_front();
        }
        Streamed {
            progress,
            failed: None,
        }
    }

    /// The QP entered the error state: nothing more is answered. Returns
    /// the receives it had taken from their rings (a message in progress
    /// on an SRQ, a spare one), which the engine flushes.
    pub fn entered_error(&mut self) -> Vec<RecvWqe> {
        self.reads.clear();
        let taken = self
            .inbound
            .take()
            .filter(|m| m.recv_consumed)
            .and_then(|m| m.recv);
        // (A receive still in its QP's own ring is flushed with the ring.)
        taken.into_iter().chain(self.spare_recv.take()).collect()
    }
}

/// The header of an answer to request `hdr` (addressed back to its sender).
pub(super) fn reply_to(hdr: &FrameHeader, kind: Kind) -> FrameHeader {
    FrameHeader {
        kind: kind as u8,
        qp_kind: hdr.qp_kind,
        psn: hdr.psn,
        src_gid: hdr.dst_gid,
        dst_gid: hdr.src_gid,
        src_qpn: hdr.dst_qpn,
        dst_qpn: hdr.src_qpn,
        opcode: hdr.opcode,
        ..Default::default()
    }
}

/// Refuses request `hdr` from `from` for `why` (`aux`: the RNR timer in
/// microseconds); the requester resends it.
pub(super) fn nak(
    peers: &mut dyn Transport,
    from: PeerId,
    hdr: &FrameHeader,
    why: NakReason,
    aux: u32,
) {
    log::debug!(
        "qp {:#x}: NAK {why:?} for psn {} from qp {:#x}",
        hdr.dst_qpn.get(),
        hdr.psn.get(),
        hdr.src_qpn.get()
    );
    let mut n = reply_to(hdr, Kind::Nak);
    n.status = (why as u32).into();
    n.aux = aux.into();
    peers.send(from, n, &[]);
}

/// Answers request `hdr` from `from`: executed, with `status` (an atomic's
/// original value as `payload`).
pub(super) fn ack(
    peers: &mut dyn Transport,
    from: PeerId,
    hdr: &FrameHeader,
    status: u32,
    payload: &[u8],
) {
    let mut a = reply_to(hdr, Kind::Ack);
    a.status = status.into();
    peers.send(from, a, payload);
}

#[cfg(test)]
mod tests;
