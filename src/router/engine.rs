//! The isolated data path: the router consumes send queues, executes each
//! work request against the memory regions it concerns (checking keys,
//! bounds, access rights and QP state as an RC responder would) and writes
//! completions. Everything read from a ring is untrusted.

use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::sys::*;
use crate::wire::entries::{Cqe, RecvWqe, SendWqe};
use crate::wire::limits::{MAX_INLINE_DATA, MAX_MSG_SIZE};

use super::memory::{ProcessMemory, Segments};
use super::objects::{Stall, Tables};
use super::qp_state::{self, QpKind, ERR, RESET, RTR, RTS, SQD, SQE};

/// Bytes moved per bounce-buffer step.
const CHUNK: usize = 1 << 20;

pub struct Engine {
    pub tables: Tables,
    bounce: Vec<u8>,
    handles: Vec<u32>,
}

/// Where a message's bytes come from.
enum Source {
    Inline(Vec<u8>),
    Memory(ProcessMemory, Segments),
}

impl Source {
    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Source::Inline(bytes) => {
                buf.copy_from_slice(&bytes[offset as usize..offset as usize + buf.len()]);
                Ok(())
            }
            Source::Memory(mem, segs) => mem.read_segments(segs, offset, buf),
        }
    }
}

/// The two work queues of a QP.
#[derive(Clone, Copy)]
enum Queue {
    Send,
    Recv,
}

/// What became of one send work request.
enum Outcome {
    Done,
    Stalled(Stall),
    /// An error completion was written and the QP moved to the error state.
    Failed,
}

/// Which side of a copy failed.
enum CopyError {
    Source,
    Destination,
}

fn wc_opcode(wr_opcode: u32) -> Option<u32> {
    Some(match wr_opcode {
        IBV_WR_SEND | IBV_WR_SEND_WITH_IMM => IBV_WC_SEND,
        IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM => IBV_WC_RDMA_WRITE,
        IBV_WR_RDMA_READ => IBV_WC_RDMA_READ,
        IBV_WR_ATOMIC_CMP_AND_SWP => IBV_WC_COMP_SWAP,
        IBV_WR_ATOMIC_FETCH_AND_ADD => IBV_WC_FETCH_ADD,
        _ => return None,
    })
}

fn total_len(segs: &Segments) -> u64 {
    segs.iter().map(|s| s.1).sum()
}

impl Engine {
    pub fn new(tables: Tables) -> Engine {
        Engine {
            tables,
            bounce: vec![0; CHUNK],
            handles: Vec::new(),
        }
    }

    /// Runs every queue once; true if any work request made progress.
    pub fn service(&mut self, now: Instant) -> bool {
        let mut handles = std::mem::take(&mut self.handles);
        handles.clear();
        handles.extend(self.tables.qps.keys().copied());
        let mut progress = false;
        for &h in &handles {
            progress |= self.service_qp(h, now);
        }
        self.handles = handles;
        progress
    }

    /// The earliest time a stalled request must fail.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tables
            .qps
            .values()
            .filter_map(|q| match q.stall {
                Some(Stall::Retry { deadline, .. }) => deadline,
                _ => None,
            })
            .min()
    }

    fn service_qp(&mut self, h: u32, now: Instant) -> bool {
        let Some(qp) = self.tables.qps.get(&h) else {
            return false;
        };
        match qp.state() {
            ERR => self.flush(h),
            RTS | SQD => self.run_send_queue(h, now),
            _ => false,
        }
    }

    /// Moves a QP to the error state; its queues are flushed by `service`.
    pub fn to_error(&mut self, h: u32) {
        if let Some(qp) = self.tables.qps.get_mut(&h) {
            if qp.state() != ERR {
                debug!("qp {:#x} -> error", qp.qpn);
                qp.set_state(ERR);
                qp.stall = None;
            }
        }
    }

    fn push_cqe(&mut self, cq: u32, cqe: &Cqe) {
        if let Some(cq) = self.tables.cqs.get_mut(&cq) {
            cq.ring.write(cq.producer, cqe);
            cq.producer = cq.producer.wrapping_add(1);
            cq.header().ring.publish_producer(cq.producer);
        }
    }

    fn cq_free(&self, cq: u32) -> u32 {
        self.tables.cqs.get(&cq).map_or(0, |c| c.free_slots())
    }

    /// Completes every posted work request of a QP in the error state with
    /// IBV_WC_WR_FLUSH_ERR, as far as its CQs have room.
    fn flush(&mut self, h: u32) -> bool {
        let sent = self.flush_queue(h, Queue::Send);
        sent | self.flush_queue(h, Queue::Recv)
    }

    /// Flushes one queue of a QP in the error state, as far as its CQ has
    /// room. True if anything was completed (or the queue was resynced).
    fn flush_queue(&mut self, h: u32, queue: Queue) -> bool {
        let mut progress = false;
        loop {
            let qp = &self.tables.qps[&h];
            let (pending, cq) = match queue {
                Queue::Send => (qp.sq_pending(), qp.send_cq),
                Queue::Recv => (qp.rq_pending(), qp.recv_cq),
            };
            let Some(pending) = pending else {
                self.resync_after_violation(h);
                return true;
            };
            if pending == 0 || self.cq_free(cq) == 0 {
                return progress;
            }
            let (wr_id, opcode) = match queue {
                Queue::Send => {
                    let w: SendWqe = qp.sq.read(qp.sq_consumer);
                    (w.wr_id, wc_opcode(w.opcode).unwrap_or(IBV_WC_SEND))
                }
                Queue::Recv => (qp.rq.read::<RecvWqe>(qp.rq_consumer).wr_id, IBV_WC_RECV),
            };
            let cqe = Cqe {
                wr_id,
                status: IBV_WC_WR_FLUSH_ERR,
                opcode,
                qp_num: qp.qpn,
                ..Default::default()
            };
            match queue {
                Queue::Send => self.consume_send(h),
                Queue::Recv => self.consume_recv(h),
            }
            self.push_cqe(cq, &cqe);
            progress = true;
        }
    }

    /// A client published an impossible producer index: its QP goes to the
    /// error state and the router drops what it cannot make sense of.
    fn resync_after_violation(&mut self, h: u32) {
        if let Some(qp) = self.tables.qps.get(&h) {
            warn!(
                "qp {:#x}: impossible ring index from the client; QP moved to error",
                qp.qpn
            );
        }
        self.drain(h);
        self.to_error(h);
    }

    fn consume_send(&mut self, h: u32) {
        let qp = self.tables.qps.get_mut(&h).expect("qp");
        qp.sq_consumer = qp.sq_consumer.wrapping_add(1);
        qp.header().sq.publish_consumer(qp.sq_consumer);
    }

    fn consume_recv(&mut self, h: u32) {
        let qp = self.tables.qps.get_mut(&h).expect("qp");
        qp.rq_consumer = qp.rq_consumer.wrapping_add(1);
        qp.header().rq.publish_consumer(qp.rq_consumer);
    }

    /// Discards everything posted on a QP's queues (modify to RESET).
    pub fn drain(&mut self, h: u32) {
        if let Some(qp) = self.tables.qps.get_mut(&h) {
            let hdr = qp.header();
            let (sp, rp) = (hdr.sq.producer(), hdr.rq.producer());
            qp.sq_consumer = sp;
            qp.rq_consumer = rp;
            qp.header().sq.publish_consumer(sp);
            qp.header().rq.publish_consumer(rp);
            qp.stall = None;
        }
    }

    fn run_send_queue(&mut self, h: u32, now: Instant) -> bool {
        let mut progress = false;
        loop {
            let qp = &self.tables.qps[&h];
            if !matches!(qp.state(), RTS | SQD) {
                break;
            }
            let Some(pending) = qp.sq_pending() else {
                self.resync_after_violation(h);
                return true;
            };
            if pending == 0 {
                break;
            }
            let wqe: SendWqe = qp.sq.read(qp.sq_consumer);
            if let Some(Stall::Retry {
                deadline: Some(d),
                rnr,
            }) = qp.stall
            {
                if now >= d {
                    let status = if rnr {
                        IBV_WC_RNR_RETRY_EXC_ERR
                    } else {
                        IBV_WC_RETRY_EXC_ERR
                    };
                    self.fail_requester(h, &wqe, status);
                    return true;
                }
            }
            match self.execute(h, &wqe, now) {
                Outcome::Done => {
                    self.tables.qps.get_mut(&h).expect("qp").stall = None;
                    progress = true;
                }
                Outcome::Stalled(stall) => {
                    let qp = self.tables.qps.get_mut(&h).expect("qp");
                    // Keep the first deadline: retries count from the first try.
                    if !matches!(
                        (qp.stall, stall),
                        (Some(Stall::Retry { .. }), Stall::Retry { .. })
                    ) {
                        qp.stall = Some(stall);
                    }
                    break;
                }
                Outcome::Failed => return true,
            }
        }
        progress
    }

    /// Consumes the WQE at the head of the send queue, writes its error
    /// completion and moves the QP to the error state. (Slots are always
    /// freed before the completion that reports them is published.)
    fn fail_requester(&mut self, h: u32, wqe: &SendWqe, status: u32) {
        let qp = &self.tables.qps[&h];
        let cqe = Cqe {
            wr_id: wqe.wr_id,
            status,
            opcode: wc_opcode(wqe.opcode).unwrap_or(IBV_WC_SEND),
            qp_num: qp.qpn,
            ..Default::default()
        };
        let cq = qp.send_cq;
        debug!(
            "qp {:#x}: wr {:#x} fails with status {}",
            qp.qpn, wqe.wr_id, status
        );
        self.consume_send(h);
        self.push_cqe(cq, &cqe);
        self.to_error(h);
    }

    /// Resolves local SGEs against the QP's protection domain. `write`: the
    /// memory will be written (needs IBV_ACCESS_LOCAL_WRITE).
    fn local_segments(
        &self,
        h: u32,
        sges: &[crate::wire::entries::Sge],
        write: bool,
    ) -> Result<Segments, u32> {
        let qp = &self.tables.qps[&h];
        let mut segs = Segments::with_capacity(sges.len());
        let mut total: u64 = 0;
        for sge in sges {
            total += u64::from(sge.length);
            if sge.length == 0 {
                continue;
            }
            let mr = self
                .tables
                .keys
                .get(&sge.lkey)
                .and_then(|m| self.tables.mrs.get(m))
                .filter(|m| m.session == qp.session && m.pd == qp.pd && m.lkey == sge.lkey)
                .ok_or(IBV_WC_LOC_PROT_ERR)?;
            if !mr.contains(sge.addr, u64::from(sge.length)) {
                return Err(IBV_WC_LOC_PROT_ERR);
            }
            if write && mr.access & IBV_ACCESS_LOCAL_WRITE == 0 {
                return Err(IBV_WC_LOC_PROT_ERR);
            }
            segs.push((sge.addr, u64::from(sge.length)));
        }
        if total > u64::from(MAX_MSG_SIZE) {
            return Err(IBV_WC_LOC_LEN_ERR);
        }
        Ok(segs)
    }

    /// The connected peer of an RC/UC QP, if it is there and accepts
    /// packets from this QP.
    fn peer(&self, h: u32) -> Option<u32> {
        let a = &self.tables.qps[&h];
        let hb = *self.tables.qpns.get(&a.attr.dest_qp_num)?;
        let b = &self.tables.qps[&hb];
        let ok = b.kind == a.kind
            && b.attr.dest_qp_num == a.qpn
            && matches!(b.state(), RTR | RTS | SQD | SQE);
        ok.then_some(hb)
    }

    fn retry_stall(&self, h: u32, now: Instant) -> Stall {
        let a = &self.tables.qps[&h];
        let deadline = qp_state::ack_timeout_us(a.attr.timeout)
            .map(|t| now + Duration::from_micros(t * (u64::from(a.attr.retry_cnt) + 1)));
        Stall::Retry {
            deadline,
            rnr: false,
        }
    }

    fn rnr_stall(&self, ha: u32, hb: u32, now: Instant) -> Stall {
        let a = &self.tables.qps[&ha];
        let b = &self.tables.qps[&hb];
        let deadline = (a.attr.rnr_retry < 7).then(|| {
            now + Duration::from_micros(
                qp_state::rnr_timer_us(b.attr.min_rnr_timer) * (u64::from(a.attr.rnr_retry) + 1),
            )
        });
        Stall::Retry {
            deadline,
            rnr: true,
        }
    }

    /// Checks an incoming RDMA access at the responder: rkey in the
    /// responder's PD, access rights on both MR and QP, bounds.
    fn remote_segment(
        &self,
        hb: u32,
        rkey: u32,
        addr: u64,
        len: u64,
        access: u32,
    ) -> Result<Segments, u32> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let b = &self.tables.qps[&hb];
        let mr = self
            .tables
            .keys
            .get(&rkey)
            .and_then(|m| self.tables.mrs.get(m))
            .filter(|m| m.session == b.session && m.pd == b.pd && m.rkey == rkey)
            .ok_or(IBV_WC_REM_ACCESS_ERR)?;
        if mr.access & access == 0
            || b.attr.qp_access_flags & access == 0
            || !mr.contains(addr, len)
        {
            return Err(IBV_WC_REM_ACCESS_ERR);
        }
        Ok(vec![(addr, len)])
    }

    /// Streams `len` bytes from `src` into `dst` (ascending order).
    fn copy(
        &mut self,
        src: &Source,
        dst_mem: ProcessMemory,
        dst: &Segments,
        len: u64,
    ) -> Result<(), CopyError> {
        let mut off = 0u64;
        while off < len {
            let n = ((len - off) as usize).min(CHUNK);
            let buf = &mut self.bounce[..n];
            src.read(off, buf).map_err(|_| CopyError::Source)?;
            dst_mem
                .write_segments(dst, off, buf)
                .map_err(|_| CopyError::Destination)?;
            off += n as u64;
        }
        Ok(())
    }

    fn memory_of(&self, h: u32) -> ProcessMemory {
        let s = self.tables.qps[&h].session;
        self.tables.sessions[&s].memory
    }

    /// Fails both ends of a connection: the requester's WQE gets
    /// `req_status`, the responder optionally completes `recv` with
    /// `resp_status`; both QPs go to the error state.
    fn fail_both(
        &mut self,
        ha: u32,
        wqe: &SendWqe,
        req_status: u32,
        hb: u32,
        recv: Option<(RecvWqe, u32)>,
    ) -> Outcome {
        if let Some((rwqe, status)) = recv {
            let b = &self.tables.qps[&hb];
            let cqe = Cqe {
                wr_id: rwqe.wr_id,
                status,
                opcode: IBV_WC_RECV,
                qp_num: b.qpn,
                src_qp: self.tables.qps[&ha].qpn,
                ..Default::default()
            };
            let cq = b.recv_cq;
            self.consume_recv(hb);
            self.push_cqe(cq, &cqe);
        }
        self.to_error(hb);
        self.fail_requester(ha, wqe, req_status);
        Outcome::Failed
    }

    fn execute(&mut self, ha: u32, w: &SendWqe, now: Instant) -> Outcome {
        let a = &self.tables.qps[&ha];
        if a.kind == QpKind::Ud {
            // UD send queues are served by a later issue; never silently drop.
            self.fail_requester(ha, w, IBV_WC_LOC_QP_OP_ERR);
            return Outcome::Failed;
        }
        let signaled = a.sq_sig_all || w.send_flags & IBV_SEND_SIGNALED != 0;
        let (send_cq, qpn_a) = (a.send_cq, a.qpn);
        if self.cq_free(send_cq) == 0 {
            return Outcome::Stalled(Stall::CqFull);
        }
        let Some(opcode) = wc_opcode(w.opcode) else {
            self.fail_requester(ha, w, IBV_WC_LOC_QP_OP_ERR);
            return Outcome::Failed;
        };
        let rc_only = matches!(
            w.opcode,
            IBV_WR_RDMA_READ | IBV_WR_ATOMIC_CMP_AND_SWP | IBV_WR_ATOMIC_FETCH_AND_ADD
        );
        if (rc_only && a.kind != QpKind::Rc) || w.num_sge > a.caps.max_send_sge.max(1) {
            self.fail_requester(ha, w, IBV_WC_LOC_QP_OP_ERR);
            return Outcome::Failed;
        }
        let inline = w.send_flags & IBV_SEND_INLINE != 0
            && matches!(
                w.opcode,
                IBV_WR_SEND | IBV_WR_SEND_WITH_IMM | IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM
            );
        let reads_local = !matches!(
            w.opcode,
            IBV_WR_RDMA_READ | IBV_WR_ATOMIC_CMP_AND_SWP | IBV_WR_ATOMIC_FETCH_AND_ADD
        );
        let (local, len) = if inline {
            if w.inline_len > MAX_INLINE_DATA {
                self.fail_requester(ha, w, IBV_WC_LOC_LEN_ERR);
                return Outcome::Failed;
            }
            (Segments::new(), u64::from(w.inline_len))
        } else {
            match self.local_segments(ha, w.sges(), !reads_local) {
                Ok(s) => {
                    let l = total_len(&s);
                    (s, l)
                }
                Err(status) => {
                    self.fail_requester(ha, w, status);
                    return Outcome::Failed;
                }
            }
        };
        let Some(hb) = self.peer(ha) else {
            return Outcome::Stalled(self.retry_stall(ha, now));
        };
        let mem_a = self.memory_of(ha);
        let mem_b = self.memory_of(hb);
        let src = if inline {
            Source::Inline(w.inline_bytes().to_vec())
        } else {
            Source::Memory(mem_a, local.clone())
        };
        let (recv_cq, qpn_b) = {
            let b = &self.tables.qps[&hb];
            (b.recv_cq, b.qpn)
        };
        let with_imm = matches!(w.opcode, IBV_WR_SEND_WITH_IMM | IBV_WR_RDMA_WRITE_WITH_IMM);
        let consumes_recv = matches!(
            w.opcode,
            IBV_WR_SEND | IBV_WR_SEND_WITH_IMM | IBV_WR_RDMA_WRITE_WITH_IMM
        );

        // A receive WQE at the responder, if the operation needs one.
        let mut recv: Option<RecvWqe> = None;
        if consumes_recv {
            let b = &self.tables.qps[&hb];
            match b.rq_pending() {
                None => {
                    self.resync_after_violation(hb);
                    return Outcome::Stalled(self.retry_stall(ha, now));
                }
                Some(0) => return Outcome::Stalled(self.rnr_stall(ha, hb, now)),
                Some(_) => {}
            }
            if self.cq_free(recv_cq) == 0 {
                return Outcome::Stalled(Stall::CqFull);
            }
            recv = Some(b.rq.read(b.rq_consumer));
        }

        let mut read_result = 0u64;
        match w.opcode {
            IBV_WR_SEND | IBV_WR_SEND_WITH_IMM => {
                let rwqe = recv.expect("recv");
                let b_caps = self.tables.qps[&hb].caps;
                if rwqe.num_sge > b_caps.max_recv_sge.max(1) {
                    return self.fail_both(
                        ha,
                        w,
                        IBV_WC_REM_OP_ERR,
                        hb,
                        Some((rwqe, IBV_WC_LOC_QP_OP_ERR)),
                    );
                }
                let dst = match self.local_segments(hb, rwqe.sges(), true) {
                    Ok(d) => d,
                    Err(_) => {
                        return self.fail_both(
                            ha,
                            w,
                            IBV_WC_REM_OP_ERR,
                            hb,
                            Some((rwqe, IBV_WC_LOC_PROT_ERR)),
                        )
                    }
                };
                if total_len(&dst) < len {
                    return self.fail_both(
                        ha,
                        w,
                        IBV_WC_REM_INV_REQ_ERR,
                        hb,
                        Some((rwqe, IBV_WC_LOC_LEN_ERR)),
                    );
                }
                match self.copy(&src, mem_b, &dst, len) {
                    Ok(()) => {}
                    Err(CopyError::Source) => {
                        self.fail_requester(ha, w, IBV_WC_LOC_PROT_ERR);
                        return Outcome::Failed;
                    }
                    Err(CopyError::Destination) => {
                        return self.fail_both(
                            ha,
                            w,
                            IBV_WC_REM_OP_ERR,
                            hb,
                            Some((rwqe, IBV_WC_LOC_PROT_ERR)),
                        )
                    }
                }
            }
            IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM => {
                let dst = match self.remote_segment(
                    hb,
                    w.rkey,
                    w.remote_addr,
                    len,
                    IBV_ACCESS_REMOTE_WRITE,
                ) {
                    Ok(d) => d,
                    Err(status) => return self.fail_both(ha, w, status, hb, None),
                };
                match self.copy(&src, mem_b, &dst, len) {
                    Ok(()) => {}
                    Err(CopyError::Source) => {
                        self.fail_requester(ha, w, IBV_WC_LOC_PROT_ERR);
                        return Outcome::Failed;
                    }
                    Err(CopyError::Destination) => {
                        return self.fail_both(ha, w, IBV_WC_REM_ACCESS_ERR, hb, None)
                    }
                }
            }
            IBV_WR_RDMA_READ => {
                let remote = match self.remote_segment(
                    hb,
                    w.rkey,
                    w.remote_addr,
                    len,
                    IBV_ACCESS_REMOTE_READ,
                ) {
                    Ok(r) => r,
                    Err(status) => return self.fail_both(ha, w, status, hb, None),
                };
                let src = Source::Memory(mem_b, remote);
                match self.copy(&src, mem_a, &local, len) {
                    Ok(()) => {}
                    Err(CopyError::Source) => {
                        return self.fail_both(ha, w, IBV_WC_REM_ACCESS_ERR, hb, None)
                    }
                    Err(CopyError::Destination) => {
                        self.fail_requester(ha, w, IBV_WC_LOC_PROT_ERR);
                        return Outcome::Failed;
                    }
                }
                read_result = len;
            }
            _ => {
                // Atomics: one 8-byte local SGE, an 8-byte aligned remote address.
                if len != 8 || local.len() != 1 {
                    self.fail_requester(ha, w, IBV_WC_LOC_LEN_ERR);
                    return Outcome::Failed;
                }
                if !w.remote_addr.is_multiple_of(8) {
                    return self.fail_both(ha, w, IBV_WC_REM_INV_REQ_ERR, hb, None);
                }
                if let Err(status) =
                    self.remote_segment(hb, w.rkey, w.remote_addr, 8, IBV_ACCESS_REMOTE_ATOMIC)
                {
                    return self.fail_both(ha, w, status, hb, None);
                }
                let mut old = [0u8; 8];
                if mem_b.read(w.remote_addr, &mut old).is_err() {
                    return self.fail_both(ha, w, IBV_WC_REM_ACCESS_ERR, hb, None);
                }
                let cur = u64::from_ne_bytes(old);
                let new = if w.opcode == IBV_WR_ATOMIC_CMP_AND_SWP {
                    if cur == w.compare_add {
                        w.swap
                    } else {
                        cur
                    }
                } else {
                    cur.wrapping_add(w.compare_add)
                };
                if new != cur && mem_b.write(w.remote_addr, &new.to_ne_bytes()).is_err() {
                    return self.fail_both(ha, w, IBV_WC_REM_ACCESS_ERR, hb, None);
                }
                if mem_a.write(local[0].0, &old).is_err() {
                    self.fail_requester(ha, w, IBV_WC_LOC_PROT_ERR);
                    return Outcome::Failed;
                }
                read_result = 8;
            }
        }

        if let Some(rwqe) = recv {
            let cqe = Cqe {
                wr_id: rwqe.wr_id,
                status: IBV_WC_SUCCESS,
                opcode: if w.opcode == IBV_WR_RDMA_WRITE_WITH_IMM {
                    IBV_WC_RECV_RDMA_WITH_IMM
                } else {
                    IBV_WC_RECV
                },
                byte_len: len as u32,
                imm_data: if with_imm { w.imm_data } else { 0 },
                wc_flags: if with_imm { IBV_WC_WITH_IMM } else { 0 },
                qp_num: qpn_b,
                src_qp: qpn_a,
                ..Default::default()
            };
            self.consume_recv(hb);
            self.push_cqe(recv_cq, &cqe);
        }
        // Free the send slot before the completion is visible: a poster that
        // sees the completion may immediately reuse the slot.
        self.consume_send(ha);
        if signaled {
            let cqe = Cqe {
                wr_id: w.wr_id,
                status: IBV_WC_SUCCESS,
                opcode,
                byte_len: if read_result > 0 {
                    read_result as u32
                } else {
                    len as u32
                },
                qp_num: qpn_a,
                ..Default::default()
            };
            self.push_cqe(send_cq, &cqe);
        }
        Outcome::Done
    }

    /// Removes a QP; a peer still sending to it will time out as on a
    /// fabric whose responder vanished.
    pub fn remove_qp(&mut self, h: u32) {
        if let Some(qp) = self.tables.qps.remove(&h) {
            self.tables.qpns.remove(&qp.qpn);
        }
    }

    /// True when a QP in RESET must not keep entries around.
    pub fn is_reset(&self, h: u32) -> bool {
        self.tables.qps.get(&h).is_some_and(|q| q.state() == RESET)
    }
}
