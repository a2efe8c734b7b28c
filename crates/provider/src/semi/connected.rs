//! Semi mode for connected QPs (RC, UC): the provider executes its QP's
//! work requests against its one responder's rings and memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{
    copy_ascending, Clock, CqView, KeyCache, KeyView, PeerRings, Scratch, Seg, SemiContext,
};
use crate::context::{ContextInner, Errno};
use crate::cq_rings::CqRings;
use flowverbs_sys::*;
use flowverbs_verbs::access;
use flowverbs_verbs::opcode::{self, completion_opcode, Shape};
use flowverbs_verbs::{atomic, qp, receive};
use flowverbs_wire::control::{Reply, Request, WindowOp};
use flowverbs_wire::entries::{Cqe, RecvWqe, SendWqe};
use flowverbs_wire::ring::Take;
use flowverbs_wire::segment::QpHeader;

/// Why the head request waits.
enum Wait {
    /// No receive at the responder (RNR); `until`: when it fails.
    Rnr { until: Option<Instant> },
    /// No responder (yet); fails at the ACK timeout.
    Retry { until: Option<Instant> },
    /// A CQ is full.
    Cq,
}

/// One semi-mode QP's send side.
pub struct SemiPath {
    pub qp_handle: u32,
    qpn: u32,
    peer_qpn: u32,
    uc: bool,
    pd: u32,
    sq_sig_all: bool,
    max_send_sge: u32,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    /// None until the router grants them (both QPs name each other).
    rings: Option<PeerRings>,
    send_cq: CqView,
    /// The QP's own header: what this path moved is counted there.
    own: *const QpHeader,
    keys: KeyCache,
    pending: VecDeque<SendWqe>,
    wait: Option<Wait>,
    /// The QP is in the error state: everything queued is flushed.
    pub error: bool,
    /// The QP was destroyed or reset: nothing runs any more.
    pub dead: bool,
    scratch: Scratch,
    me: std::sync::Weak<Mutex<SemiPath>>,
    ctx: *const ContextInner,
}

// SAFETY: pointers into mappings this value owns (peer) or that outlive it
// (own CQ, context); access is serialised by the Mutex around it.
unsafe impl Send for SemiPath {}

pub struct NewPath {
    pub qp_handle: u32,
    pub qpn: u32,
    pub uc: bool,
    pub pd: u32,
    pub sq_sig_all: bool,
    pub max_send_sge: u32,
    /// The QP's send CQ (which outlives it).
    pub send_cq: *const CqRings,
    /// The QP's own header (its segment outlives the path).
    pub own_header: *const QpHeader,
}

impl SemiPath {
    /// From the router's [`Reply::SemiPath`]: the QP runs here, to
    /// `peer_qpn`, whose rings are asked for at the first request.
    pub fn new(
        ctx: &ContextInner,
        n: NewPath,
        reply: &Reply,
    ) -> Result<Arc<Mutex<SemiPath>>, Errno> {
        let &Reply::SemiPath { peer_qpn } = reply else {
            return Err(libc::EPROTO);
        };
        let path = SemiPath {
            qp_handle: n.qp_handle,
            qpn: n.qpn,
            peer_qpn,
            uc: n.uc,
            pd: n.pd,
            sq_sig_all: n.sq_sig_all,
            max_send_sge: n.max_send_sge,
            timeout: 0,
            retry_cnt: 0,
            rnr_retry: 0,
            rings: None,
            send_cq: CqView::own(ctx, n.send_cq),
            own: n.own_header,
            keys: KeyCache::default(),
            pending: VecDeque::new(),
            wait: None,
            error: false,
            dead: false,
            scratch: Scratch::default(),
            me: std::sync::Weak::new(),
            ctx: ctx as *const ContextInner,
        };
        let arc = Arc::new(Mutex::new(path));
        arc.lock().unwrap_or_else(|e| e.into_inner()).me = Arc::downgrade(&arc);
        Ok(arc)
    }

    /// Asks the router for the responder's rings; false until it grants
    /// them (the responder does not name this QP yet).
    fn attach(&mut self) -> bool {
        if self.rings.is_some() {
            return true;
        }
        let rings = PeerRings::grant(self.ctx(), Request::SemiConnect { qp: self.qp_handle });
        match rings {
            Ok(r) => {
                self.rings = Some(r);
                true
            }
            Err(_) => false,
        }
    }

    fn rings(&mut self) -> &mut PeerRings {
        self.rings.as_mut().expect("rings attached before use")
    }

    fn peer(&self) -> &QpHeader {
        let r = self.rings.as_ref().expect("rings attached before use");
        // SAFETY: the peer's QP segment is mapped for the life of `r`.
        unsafe { &*r.header }
    }

    fn ctx(&self) -> &ContextInner {
        // SAFETY: the context outlives its QPs and their paths.
        unsafe { &*self.ctx }
    }

    fn semi(&self) -> &SemiContext {
        self.ctx().semi.as_ref().expect("semi context")
    }

    /// Work requests queued here.
    pub(super) fn queued(&self) -> usize {
        self.pending.len()
    }

    /// Queues a work request (run by [`SemiPath::run`]).
    pub fn post(&mut self, w: SendWqe) {
        self.pending.push_back(w);
    }

    /// Runs queued requests in order until one must wait.
    pub fn run(&mut self) {
        if self.dead {
            return;
        }
        let mut clock = Clock::default();
        while let Some(&w) = self.pending.front() {
            if self.error {
                let cqe = Cqe::sent(
                    &w,
                    completion_opcode(w.opcode),
                    IBV_WC_WR_FLUSH_ERR,
                    0,
                    self.qpn,
                );
                if !self.send_cq.push(&cqe) {
                    break;
                }
                self.notify(false, false);
                self.pending.pop_front();
                continue;
            }
            match self.execute(&w, &mut clock) {
                Step::Done => {
                    self.wait = None;
                    self.pending.pop_front();
                }
                Step::Wait(wait) => {
                    let expired = match (&self.wait, &wait) {
                        (Some(Wait::Rnr { until: Some(t) }), Wait::Rnr { .. })
                        | (Some(Wait::Retry { until: Some(t) }), Wait::Retry { .. }) => {
                            clock.now() >= *t
                        }
                        _ => false,
                    };
                    if expired {
                        let status = match wait {
                            Wait::Rnr { .. } => IBV_WC_RNR_RETRY_EXC_ERR,
                            _ => IBV_WC_RETRY_EXC_ERR,
                        };
                        self.fail(&w, status, None);
                        self.pending.pop_front();
                        continue;
                    }
                    let keep = matches!(
                        (&self.wait, &wait),
                        (Some(Wait::Rnr { .. }), Wait::Rnr { .. })
                            | (Some(Wait::Retry { .. }), Wait::Retry { .. })
                    );
                    if !keep {
                        self.wait = Some(wait);
                    }
                    break;
                }
            }
        }
        if let Some(me) = self.me.upgrade() {
            if self.pending.is_empty() {
                self.semi().unwait(&me);
            } else {
                self.semi().wait(&me);
            }
        }
    }

    /// After a push to a CQ: a completion event if it was armed for it.
    fn notify(&self, peer: bool, solicited: bool) {
        let cq = match (peer, self.rings.as_ref()) {
            (true, Some(r)) => &r.cq,
            _ => &self.send_cq,
        };
        cq.notify(self.ctx(), solicited);
    }

    fn complete(&mut self, w: &SendWqe, byte_len: u64) {
        // SAFETY: the QP's own segment outlives its path.
        unsafe { &*self.own }.semi_moved.count(
            w.opcode,
            byte_len,
            w.send_flags & IBV_SEND_INLINE != 0,
        );
        if opcode::signaled(self.sq_sig_all, w.send_flags) {
            let op = completion_opcode(w.opcode);
            let cqe = Cqe::sent(w, op, IBV_WC_SUCCESS, byte_len, self.qpn);
            // Room was checked before the request ran.
            self.send_cq.push(&cqe);
            self.notify(false, false);
        }
    }

    /// The request fails with `status`; this QP goes to the error state
    /// (and the responder, if `peer_event` says so: Some(event or 0)).
    fn fail(&mut self, w: &SendWqe, status: u32, peer: Option<u32>) {
        // SAFETY: the QP's own segment outlives its path.
        unsafe { &*self.own }.semi_moved.count_error();
        let cqe = Cqe::sent(w, completion_opcode(w.opcode), status, 0, self.qpn);
        self.send_cq.push(&cqe);
        self.notify(false, true);
        self.wait = None;
        self.error = true;
        let _ = self.ctx().call(&Request::SemiError {
            qp: self.qp_handle,
            own: true,
            peer_event: peer,
        });
    }

    /// What the router answers a window request with: a completion
    /// status (LOC_QP_OP_ERR if it cannot be asked).
    fn router_status(&self, req: &Request) -> u32 {
        match self.ctx().call(req) {
            Ok((Reply::WcStatus { status }, _)) => status,
            _ => IBV_WC_LOC_QP_OP_ERR,
        }
    }

    /// The peer's MR behind `key`, if live.
    fn key(&mut self, key: u32) -> Option<&KeyView> {
        // SAFETY: the context outlives its QPs and their paths.
        let ctx = unsafe { &*self.ctx };
        self.keys.get(ctx, self.qp_handle, 0, key)
    }

    /// `[addr, addr+len)` of the responder's MR `key` with `access`. (The
    /// router checked that the key is in the responder's PD when it
    /// resolved it.)
    fn remote(
        &mut self,
        key: u32,
        addr: u64,
        len: u64,
        want: u32,
        out: &mut Vec<Seg>,
    ) -> Result<(), u32> {
        out.clear();
        if len == 0 {
            return Ok(());
        }
        let qp_access = self.peer().access.load(Ordering::Acquire);
        let Some(k) = self.key(key) else {
            return access::remote(None, 0, qp_access, addr, len, want);
        };
        access::remote(Some(&k.region()), 0, qp_access, addr, len, want)?;
        if !k.segments(addr, len, out) {
            return Err(IBV_WC_REM_ACCESS_ERR);
        }
        Ok(())
    }

    /// The local SGEs of a request as pointers into our own memory.
    fn local(&self, w: &SendWqe, write: bool, out: &mut Vec<Seg>) -> Result<(), u32> {
        self.semi().local_segments(self.pd, w, write, out)
    }

    /// A message that needs a receive finds none: UC drops it (the
    /// sender completes), RC waits out the responder's RNR timer.
    fn no_receive(&mut self, w: &SendWqe, len: u64, clock: &mut Clock) -> Step {
        if self.uc {
            self.complete(w, len);
            return Step::Done;
        }
        let timer = self.peer().min_rnr_timer.load(Ordering::Acquire) as u8;
        let until = qp::rnr_deadline(clock.now(), self.rnr_retry, timer);
        Step::Wait(Wait::Rnr { until })
    }

    /// Runs one request (with the path's scratch segment lists, kept to
    /// avoid allocating per message).
    fn execute(&mut self, w: &SendWqe, clock: &mut Clock) -> Step {
        let (mut local, mut other) = self.scratch.take();
        let step = self.execute_with(w, clock, &mut local, &mut other);
        self.scratch.put_back(local, other);
        step
    }

    fn execute_with(
        &mut self,
        w: &SendWqe,
        clock: &mut Clock,
        local: &mut Vec<Seg>,
        dst: &mut Vec<Seg>,
    ) -> Step {
        if !self.send_cq.has_room() {
            return Step::Wait(Wait::Cq);
        }
        let Shape {
            inline,
            reads_local,
        } = match opcode::shape(
            if self.uc { IBV_QPT_UC } else { IBV_QPT_RC },
            w.opcode,
            w.send_flags,
            w.num_sge,
            w.inline_len,
            self.max_send_sge,
        ) {
            Ok(shape) => shape,
            Err(status) => {
                self.fail(w, status, None);
                return Step::Done;
            }
        };
        if inline {
            // Read only, from the caller's copy of the WQE.
            let b = w.inline_bytes();
            local.push((b.as_ptr() as *mut u8, b.len()));
        } else if let Err(s) = self.local(w, !reads_local, local) {
            self.fail(w, s, None);
            return Step::Done;
        }
        let len: u64 = local.iter().map(|s| s.1 as u64).sum();
        if opcode::is_atomic(w.opcode) {
            if let Err(status) = atomic::check_local(local.len(), len) {
                self.fail(w, status, None);
                return Step::Done;
            }
        }
        if opcode::is_local(w.opcode) {
            let op = Request::SemiWindow {
                qp: self.qp_handle,
                op: WindowOp::of(w),
            };
            match self.router_status(&op) {
                IBV_WC_SUCCESS => self.complete(w, 0),
                status => self.fail(w, status, None),
            }
            return Step::Done;
        }

        // The responder: its rings granted (it names us), receiving,
        // connected back to us, on this host.
        let peer_ok = self.attach() && {
            let p = self.peer();
            qp::receives(p.state.load(Ordering::Acquire))
                && p.dest_qpn.load(Ordering::Acquire) == self.qpn
                && p.path_local.load(Ordering::Acquire) == 1
        };
        if !peer_ok {
            if self.uc {
                self.complete(w, len);
                return Step::Done;
            }
            let until = qp::retry_deadline(clock.now(), self.timeout, self.retry_cnt);
            return Step::Wait(Wait::Retry { until });
        }

        let mut recv: Option<Recv> = None;
        if opcode::consumes_receive(w.opcode) {
            let pending = match &self.rings().srq {
                Some(srq) => srq.header().rq.pending(srq.ring.capacity()),
                None => {
                    let capacity = self.rings().rq.capacity();
                    self.peer().rq.pending(capacity)
                }
            };
            if pending.is_some_and(|n| n > 0) && !self.rings().cq.has_room() {
                return Step::Wait(Wait::Cq);
            }
            recv = match pending {
                Some(n) if n > 0 => self.receive(receive::lands_in_receive(w.opcode)),
                _ => None,
            };
            if recv.is_none() {
                return self.no_receive(w, len, clock);
            }
        }

        let mut result_len = len;
        match w.opcode {
            IBV_WR_SEND | IBV_WR_SEND_WITH_IMM | IBV_WR_SEND_WITH_INV => {
                let Recv {
                    wqe: r, max_sge, ..
                } = recv.expect("recv");
                // The receive's keys were checked to be in the responder's
                // PD by the router when it resolved them.
                let sges = r.sges().iter().map(|s| {
                    let n = u64::from(s.length);
                    let view = self.key(s.lkey);
                    let region = view.map(|k| k.region());
                    access::local(region.as_ref(), 0, s.addr, n, true)?;
                    if n > 0 && !view.is_some_and(|k| k.segments(s.addr, n, dst)) {
                        return Err(IBV_WC_LOC_PROT_ERR);
                    }
                    Ok(n)
                });
                if let Err(f) = receive::check(r.num_sge, max_sge, sges, len) {
                    return self.responder_error(w, f.requester, recv, f.receive, len);
                }
                copy_ascending(local, dst, len);
                if w.opcode == IBV_WR_SEND_WITH_INV {
                    let inv = Request::SemiInvalidate {
                        qp: self.qp_handle,
                        rkey: w.imm_data,
                    };
                    let status = self.router_status(&inv);
                    if status != IBV_WC_SUCCESS {
                        return self.responder_error(w, status, recv, status, len);
                    }
                }
            }
            IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM => {
                match self.remote(w.rkey, w.remote_addr, len, IBV_ACCESS_REMOTE_WRITE, dst) {
                    Ok(()) => copy_ascending(local, dst, len),
                    Err(s) => return self.responder_error(w, s, None, 0, len),
                }
            }
            IBV_WR_RDMA_READ => {
                match self.remote(w.rkey, w.remote_addr, len, IBV_ACCESS_REMOTE_READ, dst) {
                    Ok(()) => copy_ascending(dst, local, len),
                    Err(s) => return self.responder_error(w, s, None, 0, len),
                }
            }
            _ => {
                if let Err(status) = atomic::check_target(w.remote_addr) {
                    return self.responder_error(w, status, None, 0, len);
                }
                let target =
                    match self.remote(w.rkey, w.remote_addr, 8, IBV_ACCESS_REMOTE_ATOMIC, dst) {
                        Ok(()) if dst.len() == 1 && (dst[0].0 as usize).is_multiple_of(8) => {
                            dst[0].0
                        }
                        Ok(()) => {
                            return self.responder_error(w, IBV_WC_REM_ACCESS_ERR, None, 0, len)
                        }
                        Err(s) => return self.responder_error(w, s, None, 0, len),
                    };
                // SAFETY: 8 aligned bytes inside the peer's arena mapping;
                // a real atomic, so it is atomic with the peer's CPU too.
                let cell = unsafe { &*(target as *const AtomicU64) };
                let old = if w.opcode == IBV_WR_ATOMIC_CMP_AND_SWP {
                    match cell.compare_exchange(
                        w.compare_add,
                        w.swap,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(v) | Err(v) => v,
                    }
                } else {
                    cell.fetch_add(w.compare_add, Ordering::AcqRel)
                };
                // SAFETY: the local SGE is 8 bytes of our registered memory.
                unsafe { std::ptr::copy_nonoverlapping(old.to_ne_bytes().as_ptr(), local[0].0, 8) };
                result_len = 8;
            }
        }

        if let Some(r) = recv {
            let from_own = matches!(r.from, RecvFrom::Own { .. });
            let Some(r) = self.finish_receive(r) else {
                if from_own {
                    // The router flushed it meanwhile (the peer went to ERR).
                    return Step::Wait(Wait::Retry {
                        until: Some(clock.now()),
                    });
                }
                // WRITE_WITH_IMM on an SRQ whose receives other messages
                // took meanwhile: receiver not ready, the write is retried
                // (UC: lost).
                return self.no_receive(w, len, clock);
            };
            let cqe = Cqe::received(
                r.wr_id,
                w.opcode,
                len as u32,
                w.imm_data,
                self.peer_qpn,
                self.qpn,
            );
            self.rings().cq.push(&cqe);
            self.notify(true, w.send_flags & IBV_SEND_SOLICITED != 0);
        }
        self.complete(w, result_len);
        Step::Done
    }

    /// As the router's `responder_error`: RC fails both QPs (the receive,
    /// if any, completes with `recv_status`); UC completes the sender.
    fn responder_error(
        &mut self,
        w: &SendWqe,
        req_status: u32,
        recv: Option<Recv>,
        recv_status: u32,
        len: u64,
    ) -> Step {
        if let Some(r) = recv {
            if let Some(r) = self.finish_receive(r) {
                let cqe = Cqe::receive_failed(r.wr_id, recv_status, self.peer_qpn, self.qpn);
                self.rings().cq.push(&cqe);
                self.notify(true, true);
            }
        }
        if self.uc {
            if recv.is_some() {
                let _ = self.ctx().call(&Request::SemiError {
                    qp: self.qp_handle,
                    own: false,
                    peer_event: Some(0),
                });
            }
            self.complete(w, len);
            return Step::Done;
        }
        let event = if recv.is_some() {
            0
        } else {
            flowverbs_verbs::events::responder_error_event(req_status)
        };
        self.fail(w, req_status, Some(event));
        Step::Done
    }
}

enum Step {
    Done,
    Wait(Wait),
}

/// The receive a message uses at the responder.
#[derive(Clone, Copy)]
struct Recv {
    wqe: RecvWqe,
    /// The most SGEs its queue allows (the QP's or the SRQ's).
    max_sge: u32,
    /// Where it was read: the QP's own queue at index `at` (taken when the
    /// message completes), or an SRQ.
    from: RecvFrom,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RecvFrom {
    Own {
        at: u32,
    },
    /// Taken from the SRQ already (its data lands in it).
    SrqTaken,
    /// Read at the SRQ's head, not taken (WRITE_WITH_IMM: taken when the
    /// message completes, whichever receive is at the head then).
    SrqHead,
}

impl SemiPath {
    /// The receive at the responder's head. `lands`: the message's data
    /// lands in it, so an SRQ's is taken now, before anything is written
    /// (other senders and the router take from the same SRQ). None: no
    /// receive (any more).
    fn receive(&mut self, lands: bool) -> Option<Recv> {
        if self.rings().srq.is_none() {
            let c = self.peer().rq.consumer();
            let max_sge = self.peer().max_recv_sge.load(Ordering::Acquire);
            return Some(Recv {
                wqe: self.rings().rq.read(c),
                max_sge,
                from: RecvFrom::Own { at: c },
            });
        }
        let srq = self.rings().srq.as_ref().expect("srq");
        let max_sge = srq.header().max_sge.load(Ordering::Acquire);
        if !lands {
            let wqe = srq.ring.read(srq.header().rq.consumer());
            return Some(Recv {
                wqe,
                max_sge,
                from: RecvFrom::SrqHead,
            });
        }
        let wqe = self.take_srq()?;
        Some(Recv {
            wqe,
            max_sge,
            from: RecvFrom::SrqTaken,
        })
    }

    /// Takes the receive at the head of the responder's SRQ; raises the
    /// SRQ's limit event (through the router) if this take crossed it.
    fn take_srq(&mut self) -> Option<RecvWqe> {
        let srq = self.rings().srq.as_ref().expect("srq");
        let Take::Taken {
            entry, remaining, ..
        } = srq.header().rq.take(&srq.ring)
        else {
            return None;
        };
        if srq
            .header()
            .disarm_limit(remaining, receive::srq_limit_reached)
        {
            srq.header().limit_event_pending.store(1, Ordering::Release);
            self.ctx().wake_router();
        }
        Some(entry)
    }

    /// The receive the message completes: its own queue's entry, if still
    /// there to take; an SRQ's taken entry; or the SRQ's head taken now.
    fn finish_receive(&mut self, r: Recv) -> Option<RecvWqe> {
        match r.from {
            RecvFrom::Own { at } => self.peer().rq.claim_consumer(at).then_some(r.wqe),
            RecvFrom::SrqTaken => Some(r.wqe),
            RecvFrom::SrqHead => self.take_srq(),
        }
    }
}
