//! Requests from another host, executed here as the responder: the QP's
//! [`Responder`] says which request is next and places its chunks; the
//! engine checks each request exactly as the local path does (opcode,
//! length, keys, bounds, access rights, receives, room in the CQ), runs
//! READs and atomics, completes receives and answers.

use log::warn;

use super::responder::{ack, nak, Chunk, Inbound, Placed, Responder};
use super::{qp_kind_code, Engine, PASS_BYTES};
use crate::events::AsyncTarget;
use crate::transport::{PeerId, Transport};
use flowverbs_sys::*;
use flowverbs_verbs::events::responder_error_event;
use flowverbs_verbs::qp::{self as qp_state, QpKind, ERR};
use flowverbs_verbs::{access, atomic, opcode, receive};
use flowverbs_wire::entries::{Cqe, RecvWqe};
use flowverbs_wire::link::{FrameHeader, NakReason};
use flowverbs_wire::ring::Take;

impl Engine {
    /// One chunk of a request from router `from`.
    pub(super) fn on_request(
        &mut self,
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        payload: &[u8],
    ) {
        let Some(hb) = self.responder_qp(hdr) else {
            if hdr.offset.get() == 0 {
                nak(peers, from, hdr, NakReason::NoQp, 0);
            }
            return;
        };
        let b = &self.tables.qps[&hb];
        let uc = b.kind == QpKind::Uc;
        // The responder is out of the table while the engine serves the
        // request with it (see `put_back_responder`).
        let mut r = match self.remote.resp.remove(&hb) {
            Some(r) => r,
            None => Responder::new(b.attr.rq_psn),
        };
        let mem = self.memory_of(hb);
        let placed = match r.on_chunk(hdr, uc, &mem, payload) {
            Chunk::Dropped => None,
            Chunk::Placed(p) => Some(p),
            Chunk::First => self
                .start_request(&mut r, peers, from, hdr, hb, payload.len())
                .map(|m| r.start(m, &mem, payload)),
        };
        if let Some(p) = placed {
            self.after_placing(peers, from, hdr, hb, p);
        }
        self.put_back_responder(hb, r);
    }

    /// Puts QP `hb`'s responder back after serving a request with it. If
    /// the request moved the QP to the error state, `remote_entered_error`
    /// did not see the responder then: it is done now (nothing more is
    /// answered; taken receives are flushed).
    fn put_back_responder(&mut self, hb: u32, r: Responder) {
        let Some(qp) = self.tables.qps.get(&hb) else {
            return;
        };
        let failed = qp.state() == ERR;
        self.remote.resp.insert(hb, r);
        if failed {
            self.responder_entered_error(hb);
        }
    }

    /// The local QP a request is for, if it accepts requests from the
    /// sender: same type, connected to exactly that GID and QPN, in a state
    /// that receives.
    fn responder_qp(&self, hdr: &FrameHeader) -> Option<u32> {
        let &hb = self.tables.qpns.get(&hdr.dst_qpn.get())?;
        let b = &self.tables.qps[&hb];
        let ok = qp_kind_code(b.kind) == hdr.qp_kind
            && b.kind != QpKind::Ud
            && self.tables.sessions[&b.session].gid == hdr.dst_gid
            && b.attr.ah_attr.is_global
            && b.attr.ah_attr.dgid == hdr.src_gid
            && b.attr.dest_qp_num == hdr.src_qpn.get()
            && qp_state::receives(b.state());
        ok.then_some(hb)
    }

    /// The first chunk of the request `r` expects: checks it and, for READ
    /// and atomics, answers it. Some: the message to receive (its chunks
    /// are placed).
    fn start_request(
        &mut self,
        r: &mut Responder,
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        hb: u32,
        payload_len: usize,
    ) -> Option<Inbound> {
        let b = &self.tables.qps[&hb];
        let uc = b.kind == QpKind::Uc;
        let op = hdr.opcode.get();
        let len = hdr.total_len.get();
        let allowed = opcode::allowed(b.kind.ibv_type(), op);
        let sane = access::message_len(len).is_ok()
            && (payload_len as u64) <= len
            && (opcode::carries_data(op) || payload_len == 0);
        if !allowed || !sane {
            r.failed();
            self.remote_responder_error(peers, from, hdr, hb, IBV_WC_REM_INV_REQ_ERR, None);
            return None;
        }
        if r.must_wait(op) {
            nak(peers, from, hdr, NakReason::Busy, 0);
            return None;
        }
        match op {
            IBV_WR_RDMA_READ => {
                match self.remote_segment(
                    hb,
                    hdr.rkey.get(),
                    hdr.remote_addr.get(),
                    len,
                    IBV_ACCESS_REMOTE_READ,
                ) {
                    Ok(segs) => r.queue_read(from, hdr, segs),
                    Err(status) => {
                        r.failed();
                        self.remote_responder_error(peers, from, hdr, hb, status, None);
                    }
                }
                None
            }
            op if opcode::is_atomic(op) => {
                self.remote_atomic(r, peers, from, hdr, hb);
                None
            }
            _ => {
                let mut inbound = Inbound::of(hdr);
                if matches!(op, IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM) {
                    match self.remote_segment(
                        hb,
                        hdr.rkey.get(),
                        hdr.remote_addr.get(),
                        len,
                        IBV_ACCESS_REMOTE_WRITE,
                    ) {
                        Ok(d) => inbound.dst = d,
                        // UC: the message is silently dropped.
                        Err(_) if uc => inbound.discard = true,
                        Err(status) => {
                            r.failed();
                            self.remote_responder_error(peers, from, hdr, hb, status, None);
                            return None;
                        }
                    }
                }
                if opcode::consumes_receive(op) && !inbound.discard {
                    self.take_receive(r, peers, from, hdr, hb, &mut inbound)?;
                }
                Some(inbound)
            }
        }
    }

    /// Takes the receive WQE message `m` consumes (a spare one first),
    /// with the segments its data lands in. None: refused (NAK) or failed
    /// (answered); UC without a receive posted: `m` is discarded.
    fn take_receive(
        &mut self,
        r: &mut Responder,
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        hb: u32,
        m: &mut Inbound,
    ) -> Option<()> {
        let b = &self.tables.qps[&hb];
        let (uc, recv_cq, on_srq) = (b.kind == QpKind::Uc, b.recv_cq, b.srq != 0);
        match self.recv_pending(hb) {
            None => {
                self.recv_violation(hb);
                nak(peers, from, hdr, NakReason::NoQp, 0);
                return None;
            }
            Some(0) if uc => {
                m.discard = true;
                return Some(());
            }
            Some(0) => {
                self.nak_rnr(peers, from, hdr, hb);
                return None;
            }
            Some(_) => {}
        }
        if self.cq_free(recv_cq) == 0 {
            nak(peers, from, hdr, NakReason::Busy, 0);
            return None;
        }
        let (rwqe, max_sge) = match r.take_spare_recv() {
            Some(w) => (w, self.recv_head(hb).1),
            // Other QPs (and senders' providers) take from an SRQ too:
            // taken now, before anything is written.
            None if on_srq => match self.take_recv(hb) {
                Take::Taken { entry, .. } => entry,
                Take::Empty if uc => {
                    m.discard = true;
                    return Some(());
                }
                Take::Empty => {
                    self.nak_rnr(peers, from, hdr, hb);
                    return None;
                }
                Take::Violation => {
                    self.recv_violation(hb);
                    nak(peers, from, hdr, NakReason::NoQp, 0);
                    return None;
                }
            },
            None => self.recv_head(hb),
        };
        m.recv_consumed = on_srq;
        // A SEND's data lands in the receive; a WRITE WITH IMM's receive
        // only reports it.
        if receive::lands_in_receive(m.opcode) {
            let (dst, verdict) = self.receive_segments(hb, &rwqe, max_sge, m.total_len);
            if let Err(f) = verdict {
                r.failed();
                let recv = Some((rwqe, f.receive));
                self.fail_with_recv(peers, from, hdr, hb, f.requester, recv, on_srq);
                return None;
            }
            m.dst = dst;
        }
        m.recv = Some(rwqe);
        Some(())
    }

    /// "Receiver not ready", with QP `hb`'s RNR timer (the requester
    /// counts its retries).
    fn nak_rnr(&self, peers: &mut dyn Transport, from: PeerId, hdr: &FrameHeader, hb: u32) {
        let t = qp_state::rnr_timer_us(self.tables.qps[&hb].attr.min_rnr_timer);
        nak(
            peers,
            from,
            hdr,
            NakReason::Rnr,
            t.min(u64::from(u32::MAX)) as u32,
        );
    }

    /// What follows placing a chunk: nothing until the last one; then the
    /// receive's completion (if any) and the Ack, or the message's failure.
    fn after_placing(
        &mut self,
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        hb: u32,
        placed: Placed,
    ) {
        let m = match placed {
            Placed::More => return,
            Placed::TooLong(m) => {
                let consumed = m.recv_consumed || m.recv.is_none();
                let recv = m.recv.map(|w| (w, IBV_WC_LOC_LEN_ERR));
                let status = IBV_WC_REM_INV_REQ_ERR;
                self.fail_with_recv(peers, from, hdr, hb, status, recv, consumed);
                return;
            }
            Placed::Unwritable(m) => {
                let consumed = m.recv_consumed || m.recv.is_none();
                let (status, recv) = match m.recv {
                    Some(w) if m.opcode != IBV_WR_RDMA_WRITE_WITH_IMM => {
                        (IBV_WC_REM_OP_ERR, Some((w, IBV_WC_LOC_PROT_ERR)))
                    }
                    w => (IBV_WC_REM_ACCESS_ERR, w.map(|w| (w, IBV_WC_LOC_PROT_ERR))),
                };
                self.fail_with_recv(peers, from, hdr, hb, status, recv, consumed);
                return;
            }
            Placed::Complete(m) => m,
        };
        if let Some(rwqe) = m.recv {
            if m.opcode == IBV_WR_SEND_WITH_INV {
                if let Err(status) = self.invalidate_at_responder(hb, m.imm) {
                    let recv = Some((rwqe, status));
                    self.fail_with_recv(peers, from, hdr, hb, status, recv, m.recv_consumed);
                    return;
                }
            }
            let b = &self.tables.qps[&hb];
            let recv_cq = b.recv_cq;
            let cqe = Cqe::received(
                rwqe.wr_id,
                m.opcode,
                m.total_len as u32,
                m.imm,
                b.qpn,
                m.src_qpn,
            );
            let uc = b.kind == QpKind::Uc;
            if !m.recv_consumed {
                self.consume_recv(hb);
            }
            if self.cq_free(recv_cq) == 0 {
                // Room was checked when the message started; another
                // sender filled the CQ meanwhile: a CQ overrun.
                warn!("cq {recv_cq}: overrun by a remote message; QP moved to error");
                self.post_async_event(AsyncTarget::Cq(recv_cq), IBV_EVENT_CQ_ERR);
                self.to_error(hb);
                let status = if uc {
                    IBV_WC_SUCCESS
                } else {
                    IBV_WC_REM_OP_ERR
                };
                ack(peers, from, hdr, status, &[]);
                return;
            }
            let solicited = m.send_flags & IBV_SEND_SOLICITED != 0;
            self.publish_cqe(recv_cq, &cqe, solicited);
        }
        ack(peers, from, hdr, IBV_WC_SUCCESS, &[]);
    }

    fn remote_atomic(
        &mut self,
        r: &mut Responder,
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        hb: u32,
    ) {
        let addr = hdr.remote_addr.get();
        let target = if hdr.total_len.get() == 8 {
            atomic::check_target(addr)
        } else {
            Err(IBV_WC_REM_INV_REQ_ERR)
        };
        let old = target
            .and_then(|()| {
                self.remote_segment(hb, hdr.rkey.get(), addr, 8, IBV_ACCESS_REMOTE_ATOMIC)
            })
            .and_then(|segs| {
                let mem_b = self.memory_of(hb);
                let (op, compare_add, swap) =
                    (hdr.opcode.get(), hdr.compare_add.get(), hdr.swap.get());
                crate::engine::atomic_at(&mem_b, segs[0].0, op, compare_add, swap)
            });
        match old {
            Ok(old) => {
                r.executed();
                ack(peers, from, hdr, IBV_WC_SUCCESS, &old);
            }
            Err(status) => {
                r.failed();
                self.remote_responder_error(peers, from, hdr, hb, status, None);
            }
        }
    }

    /// A responder-side error on request `hdr` for QP `hb` (its responder
    /// already moved past it): RC answers with `req_status` and both ends
    /// go to the error state (with an affiliated event when no receive
    /// reports it); UC completes the request and only the responder sees an
    /// error (if a receive was involved).
    fn remote_responder_error(
        &mut self,
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        hb: u32,
        req_status: u32,
        recv: Option<(RecvWqe, u32)>,
    ) {
        let b = &self.tables.qps[&hb];
        let uc = b.kind == QpKind::Uc;
        if let Some((rwqe, status)) = recv {
            self.complete_recv_with_error(hb, &rwqe, status, hdr.src_qpn.get());
        } else if !uc && b.state() != ERR {
            self.post_async_event(AsyncTarget::Qp(hb), responder_error_event(req_status));
        }
        if !uc || recv.is_some() {
            self.to_error(hb);
        }
        let status = if uc { IBV_WC_SUCCESS } else { req_status };
        ack(peers, from, hdr, status, &[]);
    }

    /// A responder error that completes receive `rwqe` (taken for the
    /// message) with `recv_status`: a receive still in its QP's own ring
    /// (`consumed` false) leaves it.
    #[allow(clippy::too_many_arguments)]
    fn fail_with_recv(
        &mut self,
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        hb: u32,
        req_status: u32,
        recv: Option<(RecvWqe, u32)>,
        consumed: bool,
    ) {
        if !consumed {
            self.consume_recv(hb);
        }
        self.remote_responder_error(peers, from, hdr, hb, req_status, recv);
    }

    /// Streams READ responses while the links have room.
    pub(in crate::engine) fn serve_reads(&mut self) -> bool {
        if !self.remote.resp.values().any(Responder::has_reads) {
            return false;
        }
        self.with_peers(|eng, peers| eng.stream_reads(peers))
            .unwrap_or(false)
    }

    fn stream_reads(&mut self, peers: &mut dyn Transport) -> bool {
        let mut progress = false;
        let mut failed = Vec::new();
        let tables = &self.tables;
        for (&hb, r) in self.remote.resp.iter_mut().filter(|(_, r)| r.has_reads()) {
            let mem = &tables.sessions[&tables.qps[&hb].session].memory;
            let streamed = r.stream_reads(mem, peers, PASS_BYTES);
            progress |= streamed.progress;
            failed.extend(streamed.failed.map(|f| (hb, f)));
        }
        for (hb, (peer, req)) in failed {
            self.remote_responder_error(peers, peer, &req, hb, IBV_WC_REM_ACCESS_ERR, None);
        }
        progress
    }
}
