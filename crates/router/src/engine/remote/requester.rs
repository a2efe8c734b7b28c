//! The requester of a QP whose responder is on another host: it numbers
//! work requests with PSNs, sends them in chunks up to [`WINDOW`] ahead of
//! their completions, and decides what each answer means. A request
//! completes only when the responder acknowledged it, in PSN order. A NAK
//! makes the requester go back to the NAKed request (go-back-N): it
//! resends that request alone (a probe) after the RNR timer, shortly after
//! "busy", or after "no QP" until the answer timeout ends it, and streams
//! the rest once the probe is accepted.
//!
//! The engine owns the send queue, the completion queue and the QP's state;
//! it hands the requester what it needs on each call and carries out the
//! completions [`Requester::head`] reports.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::warn;

use super::PASS_BYTES;
use crate::memory::{ProcessMemory, Segments};
use crate::transport::{PeerId, Transport};
use flowverbs_sys::*;
use flowverbs_verbs::opcode;
use flowverbs_verbs::qp::{self as qp_state, QpKind};
use flowverbs_wire::entries::SendWqe;
use flowverbs_wire::link::{FrameHeader, Kind, NakReason, MAX_CHUNK};

/// Work requests a QP may have on the wire ahead of its completions.
const WINDOW: usize = 256;
/// How soon a requester resends after "busy" (doubling up to
/// [`BUSY_MAX`]) and after "no QP".
const BUSY_DELAY: Duration = Duration::from_micros(50);
const BUSY_MAX: Duration = Duration::from_millis(10);
const NO_QP_DELAY: Duration = Duration::from_millis(1);
/// The shortest wait after an RNR NAK, whatever timer the responder names.
const RNR_MIN_WAIT: Duration = Duration::from_micros(10);
/// UC has no ACK timeout: a request not answered within this time (its
/// responder vanished with the link still up) completes as lost, which is
/// what UC promises.
const UC_LOST_AFTER: Duration = Duration::from_secs(1);
/// Bytes a frame header costs a pass's budget.
const FRAME_COST: u64 = 128;

/// How a QP's requests are retried and when they are given up, from its
/// type and attributes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Retries {
    /// UC: nothing is resent; a request nobody takes is lost, which
    /// completes it successfully.
    pub unreliable: bool,
    /// How long requests on the wire may go without a useful answer: the
    /// IB ACK timeout times (retry_cnt + 1); for UC, [`UC_LOST_AFTER`].
    /// None: forever (timeout 0).
    pub answer_timeout: Option<Duration>,
    /// RNR NAKs a request may meet and still be resent (7: forever).
    pub rnr_retry: u8,
}

impl Retries {
    pub fn new(kind: QpKind, timeout: u8, retry_cnt: u8, rnr_retry: u8) -> Retries {
        let unreliable = kind == QpKind::Uc;
        Retries {
            unreliable,
            answer_timeout: if unreliable {
                Some(UC_LOST_AFTER)
            } else {
                qp_state::retry_timeout(timeout, retry_cnt)
            },
            rnr_retry,
        }
    }

    pub fn of(qp: &crate::objects::Qp) -> Retries {
        Retries::new(
            qp.kind,
            qp.attr.timeout,
            qp.attr.retry_cnt,
            qp.attr.rnr_retry,
        )
    }
}

/// A work request that passed the requester's own checks: where its bytes
/// are (or that they are inline) and how many.
#[derive(Clone)]
pub(super) struct Checked {
    pub local: Segments,
    pub len: u64,
    pub inline: bool,
}

/// The send queue a requester takes its work requests from.
pub(super) trait SendQueue {
    /// Work requests posted and not completed yet; None if the client's
    /// producer index is impossible.
    fn pending(&self) -> Option<u32>;
    /// The work request `n` places behind the head, and the requester's
    /// own checks of it (Err: the status it completes with).
    fn get(&self, n: u32) -> (SendWqe, Result<Checked, u32>);
}

/// What the request at the head of the window asks of the engine.
pub(super) enum Head<'a> {
    /// Nothing to complete: nothing is in flight, or the head awaits its
    /// answer.
    Waiting,
    /// The head was answered: the engine completes it with `status` (an
    /// error moves the QP to the error state), then calls
    /// [`Requester::pop_head`].
    Answered {
        wqe: &'a SendWqe,
        status: u32,
        byte_len: u64,
    },
    /// Nothing is in flight and the responder's router went away: the QP
    /// moves to the error state.
    PeerGone,
}

/// What a call to [`Requester::transmit`] did.
pub(super) enum Transmitted {
    /// Whether any frame was queued.
    Sent(bool),
    /// The client's producer index is impossible.
    Violation,
    /// The next work request failed the requester's checks with nothing in
    /// flight ahead of it: it completes with this status (once its CQ has
    /// room) and the QP moves to the error state.
    Refused(Box<SendWqe>, u32),
    /// The next work request is a window operation with nothing in flight
    /// ahead of it: the engine runs it (`engine::window`). (One behind
    /// requests in flight waits for them: a bind takes effect in order.)
    Local(Box<SendWqe>),
}

/// One work request sent (or being sent) to the responder.
struct InFlight {
    wqe: SendWqe,
    psn: u32,
    len: u64,
    local: Segments,
    inline: bool,
    /// Bytes sent so far (requests without payload stay at 0; `tx` says
    /// whether they went).
    sent: u64,
    /// RNR NAKs it met.
    rnr_naks: u32,
    /// READ: bytes of the answer received, contiguous from the start.
    received: u64,
    /// (status, byte_len) once the responder answered.
    done: Option<(u32, u64)>,
}

/// The requester side of a QP whose responder is on another host.
pub(super) struct Requester {
    /// The router its requests go to.
    peer: PeerId,
    inflight: VecDeque<InFlight>,
    next_psn: u32,
    /// `inflight[..tx]` are completely sent.
    tx: usize,
    /// Send nothing before this instant (RNR timer, busy, no QP).
    resume_at: Option<Instant>,
    /// When requests on the wire that got no useful answer (only "no QP",
    /// or nothing at all) give up: the answer timeout from the last frame
    /// sent or the last answer. None: nothing on the wire, or no timeout.
    answer_deadline: Option<Instant>,
    /// The last answer was "no QP": nobody answered since the answer clock
    /// started, and resending does not restart it (a real answer does).
    no_qp: bool,
    /// A request failed before it was answered: send nothing from this PSN
    /// on (the QP goes to error when the failure reaches the head).
    halt_psn: Option<u32>,
    /// After a NAK, only the NAKed request is resent until it is answered
    /// (no stream of requests the responder would drop).
    probe: Option<u32>,
    /// How long to wait after the next "busy" NAK (doubles, up to
    /// [`BUSY_MAX`]; reset by an Ack).
    busy_delay: Duration,
    /// The responder's router went away: once what was answered is
    /// completed, the QP goes to the error state.
    peer_gone: bool,
}

impl Requester {
    /// A requester sending to `peer`, numbering from `first_psn` (the QP's
    /// `sq_psn`, as on a fabric; the responder starts at its `rq_psn`).
    pub fn new(peer: PeerId, first_psn: u32) -> Requester {
        Requester {
            peer,
            inflight: VecDeque::new(),
            next_psn: first_psn,
            tx: 0,
            resume_at: None,
            answer_deadline: None,
            no_qp: false,
            halt_psn: None,
            probe: None,
            busy_delay: BUSY_DELAY,
            peer_gone: false,
        }
    }

    /// Bytes of its completely sent requests that are not answered yet.
    /// A request partly sent is not counted: it is answered only once all
    /// of it arrived, so holding it back for its own bytes would wait
    /// forever (its answer timer would end it).
    pub fn unanswered_bytes(&self) -> u64 {
        self.inflight
            .iter()
            .take(self.tx)
            .filter(|f| f.done.is_none())
            .map(|f| f.sent)
            .sum()
    }

    /// Whether it has more to send than it sent: a request not completely
    /// sent, or work requests in a send queue with `pending` posted that
    /// it has not taken.
    pub fn has_more(&self, pending: u32) -> bool {
        self.tx < self.inflight.len() || pending as usize > self.inflight.len()
    }

    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The router this QP's requests are in flight to, if any: the QP stays
    /// on that route until they are answered.
    pub fn in_flight_to(&self) -> Option<PeerId> {
        (!self.inflight.is_empty()).then_some(self.peer)
    }

    /// The earliest instant the engine must look at this requester again
    /// (to resend, or to give up on an answer).
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.resume_at, self.answer_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// The request at the head of the window and what the engine is to do
    /// with it. First ends the wait for an answer if the answer timeout
    /// passed: RC's first request still waiting gives up with
    /// IBV_WC_RETRY_EXC_ERR; UC's messages on the wire were all unanswered
    /// that long, and all are lost (which is a success).
    pub fn head(&mut self, now: Instant, retries: &Retries) -> Head<'_> {
        if self.answer_deadline.is_some_and(|d| now >= d) {
            if retries.unreliable {
                for i in 0..self.on_wire() {
                    if self.inflight[i].done.is_none() {
                        self.lose(i);
                    }
                }
            } else if let Some(f) = self.inflight.iter_mut().find(|f| f.done.is_none()) {
                f.done = Some((IBV_WC_RETRY_EXC_ERR, 0));
            }
            self.answer_deadline = None;
        }
        match self.inflight.front() {
            None if self.peer_gone => Head::PeerGone,
            None => Head::Waiting,
            Some(f) => match f.done {
                Some((status, byte_len)) => Head::Answered {
                    wqe: &f.wqe,
                    status,
                    byte_len,
                },
                None => Head::Waiting,
            },
        }
    }

    /// The engine completed the head request (see [`Requester::head`]).
    pub fn pop_head(&mut self) {
        self.inflight.pop_front();
        self.tx = self.tx.saturating_sub(1);
        if self.inflight.is_empty() {
            self.answer_deadline = None;
        }
    }

    /// Sends chunks of the requests in the window, taking new ones from
    /// `sq`, while the link has room and this pass's budget lasts; nothing
    /// while a NAK's wait runs. `base` addresses the frames (kind, QP type,
    /// GIDs, QPNs); `mem` holds the requests' local data.
    pub fn transmit(
        &mut self,
        base: &FrameHeader,
        retries: &Retries,
        mem: &ProcessMemory,
        sq: &dyn SendQueue,
        peers: &mut dyn Transport,
        now: Instant,
    ) -> Transmitted {
        if self.resume_at.is_some_and(|t| now < t) {
            return Transmitted::Sent(false);
        }
        self.resume_at = None;
        let mut progress = false;
        let mut budget = PASS_BYTES;
        loop {
            if !peers.has_room(self.peer) || budget == 0 {
                break;
            }
            if let Some(f) = self.inflight.get(self.tx) {
                if self.halt_psn == Some(f.psn) {
                    break;
                }
                if self.probe.is_some_and(|p| p != f.psn) {
                    break; // only the NAKed request until it is answered
                }
            }
            if self.tx == self.inflight.len() {
                if self.probe.is_some() || self.halt_psn.is_some() {
                    break;
                }
                let Some(pending) = sq.pending() else {
                    return Transmitted::Violation;
                };
                if pending as usize <= self.inflight.len() || self.inflight.len() >= WINDOW {
                    break;
                }
                let (wqe, checked) = sq.get(self.inflight.len() as u32);
                if opcode::is_local(wqe.opcode) && checked.is_ok() {
                    if self.inflight.is_empty() {
                        return Transmitted::Local(Box::new(wqe));
                    }
                    break;
                }
                let c = match checked {
                    Ok(c) => c,
                    Err(status) if self.inflight.is_empty() => {
                        return Transmitted::Refused(Box::new(wqe), status)
                    }
                    Err(_) => break, // fails once it reaches the head
                };
                let psn = self.next_psn;
                self.next_psn = psn.wrapping_add(1);
                self.inflight.push_back(InFlight {
                    wqe,
                    psn,
                    len: c.len,
                    local: c.local,
                    inline: c.inline,
                    sent: 0,
                    rnr_naks: 0,
                    received: 0,
                    done: None,
                });
            }
            let peer = self.peer;
            let f = &mut self.inflight[self.tx];
            let w = &f.wqe;
            let carries_data = opcode::carries_data(w.opcode);
            let n = if carries_data {
                ((f.len - f.sent) as usize).min(MAX_CHUNK)
            } else {
                0
            };
            let hdr = FrameHeader {
                psn: f.psn.into(),
                opcode: w.opcode.into(),
                send_flags: w.send_flags.into(),
                imm: w.imm_data.into(),
                offset: f.sent.into(),
                total_len: f.len.into(),
                remote_addr: w.remote_addr.into(),
                rkey: w.rkey.into(),
                compare_add: w.compare_add.into(),
                swap: w.swap.into(),
                payload_len: (n as u32).into(),
                ..*base
            };
            let off = f.sent;
            let sent = if f.inline {
                peers.send(peer, hdr, &w.inline_bytes()[off as usize..off as usize + n]);
                Ok(())
            } else {
                let local = &f.local;
                peers.send_with(peer, hdr, n, &mut |buf| {
                    mem.read_segments_uninit(local, off, buf)
                })
            };
            if sent.is_err() {
                // The requester's own memory is gone: fails at the head.
                f.done = Some((IBV_WC_LOC_PROT_ERR, 0));
                self.halt_psn = Some(f.psn);
                return Transmitted::Sent(true);
            }
            f.sent += n as u64;
            budget = budget.saturating_sub(n as u64 + FRAME_COST);
            progress = true;
            if !carries_data || f.sent >= f.len {
                self.tx += 1;
            }
            // The ACK timer runs from the last packet sent, as on a NIC;
            // not a resend after "no QP", which answered nothing.
            if !self.no_qp {
                self.answer_deadline = retries.answer_timeout.map(|t| now + t);
            }
        }
        Transmitted::Sent(progress)
    }

    /// An Ack, Nak or READ data for one of its requests (already checked
    /// to come from its responder). Answers to requests that are not on
    /// the wire (from before a rewind) or already answered are ignored.
    /// READ data and an atomic's original value go to `mem`.
    pub fn on_answer(
        &mut self,
        hdr: &FrameHeader,
        payload: &[u8],
        retries: &Retries,
        mem: &ProcessMemory,
        now: Instant,
    ) {
        let Some(front) = self.inflight.front() else {
            return;
        };
        let i = hdr.psn.get().wrapping_sub(front.psn) as usize;
        if i >= self.on_wire() || self.inflight[i].done.is_some() {
            return;
        }
        let psn = self.inflight[i].psn;
        let no_qp = hdr.kind() == Kind::Nak && hdr.status.get() == NakReason::NoQp as u32;
        if !no_qp {
            // A real answer: the responder is there; restart the clock.
            self.answer_deadline = retries.answer_timeout.map(|t| now + t);
            self.no_qp = false;
        }
        if matches!(hdr.kind(), Kind::Ack | Kind::ReadData) && self.probe == Some(psn) {
            self.probe = None; // accepted: stream again
        }
        match hdr.kind() {
            Kind::Ack => self.on_ack(i, hdr, payload, mem),
            Kind::ReadData => self.on_read_data(i, hdr, payload, mem),
            Kind::Nak => match NakReason::from_u32(hdr.status.get()) {
                Some(reason) => self.on_nak(i, reason, hdr.aux.get(), retries, now),
                None => warn!("peer sent a NAK with reason {}; ignored", hdr.status.get()),
            },
            _ => {}
        }
    }

    fn on_ack(&mut self, i: usize, hdr: &FrameHeader, payload: &[u8], mem: &ProcessMemory) {
        self.busy_delay = BUSY_DELAY;
        let f = &mut self.inflight[i];
        let done = if hdr.status.get() != IBV_WC_SUCCESS {
            // Only the statuses a responder can cause reach the
            // application; anything else a peer says is an error of the
            // remote operation.
            let status = match hdr.status.get() {
                IBV_WC_REM_ACCESS_ERR | IBV_WC_REM_INV_REQ_ERR => hdr.status.get(),
                _ => IBV_WC_REM_OP_ERR,
            };
            (status, 0)
        } else if opcode::is_atomic(f.wqe.opcode) {
            match <[u8; 8]>::try_from(payload) {
                Ok(old) if mem.write(f.local[0].0, &old).is_ok() => (IBV_WC_SUCCESS, 8),
                Ok(_) => (IBV_WC_LOC_PROT_ERR, 0),
                Err(_) => (IBV_WC_REM_OP_ERR, 0),
            }
        } else if f.wqe.opcode == IBV_WR_RDMA_READ && f.received < f.len {
            // The responder sends every byte of a READ before its Ack, on
            // the same ordered stream: an Ack that comes first is a broken
            // or lying peer, and success would hand the application a
            // buffer that was never filled.
            warn!(
                "peer acknowledged a READ of {} bytes after sending {}",
                f.len, f.received
            );
            (IBV_WC_REM_OP_ERR, 0)
        } else {
            (IBV_WC_SUCCESS, f.len)
        };
        f.done = Some(done);
        if done.0 != IBV_WC_SUCCESS {
            self.halt_psn = Some(f.psn.wrapping_add(1));
        }
    }

    fn on_read_data(&mut self, i: usize, hdr: &FrameHeader, payload: &[u8], mem: &ProcessMemory) {
        let f = &mut self.inflight[i];
        let end = hdr.offset.get().checked_add(payload.len() as u64);
        let fits = f.wqe.opcode == IBV_WR_RDMA_READ && end.is_some_and(|e| e <= f.len);
        if !fits {
            warn!("peer sent READ data that does not fit the request; ignored");
            return;
        }
        if mem
            .write_segments(&f.local, hdr.offset.get(), payload)
            .is_err()
        {
            f.done = Some((IBV_WC_LOC_PROT_ERR, 0));
            self.halt_psn = Some(f.psn.wrapping_add(1));
        } else if hdr.offset.get() <= f.received {
            f.received = f.received.max(end.unwrap_or(0));
        }
    }

    fn on_nak(&mut self, i: usize, reason: NakReason, aux: u32, retries: &Retries, now: Instant) {
        let timeout = retries.answer_timeout;
        match reason {
            NakReason::Rnr => {
                let f = &mut self.inflight[i];
                f.rnr_naks += 1;
                if retries.unreliable {
                    self.lose(i);
                } else if qp_state::rnr_retries_exhausted(retries.rnr_retry, f.rnr_naks) {
                    f.done = Some((IBV_WC_RNR_RETRY_EXC_ERR, 0));
                    self.halt_psn = Some(f.psn.wrapping_add(1));
                } else {
                    let wait = Duration::from_micros(u64::from(aux)).max(RNR_MIN_WAIT);
                    self.rewind(i, now + wait, timeout);
                }
            }
            NakReason::Busy => {
                let wait = self.busy_delay;
                self.busy_delay = (wait * 2).min(BUSY_MAX);
                self.rewind(i, now + wait, timeout);
            }
            // Nobody listens: an unreliable message is lost.
            NakReason::NoQp if retries.unreliable => self.lose(i),
            NakReason::NoQp => {
                if self.answer_deadline.is_none() {
                    self.answer_deadline = timeout.map(|t| now + t);
                }
                let deadline = self.answer_deadline;
                self.rewind(i, now + NO_QP_DELAY, timeout);
                // "No QP" is no answer: the clock keeps running, through
                // the resends too.
                self.answer_deadline = deadline;
                self.no_qp = true;
            }
        }
    }

    /// How many requests are on the wire: those completely sent, and one
    /// partly sent.
    fn on_wire(&self) -> usize {
        self.tx + usize::from(self.inflight.get(self.tx).is_some_and(|f| f.sent > 0))
    }

    /// UC message `i` is lost (nobody took it): it completes successfully,
    /// and if it was being resent alone after a NAK, the rest go on.
    fn lose(&mut self, i: usize) {
        let f = &mut self.inflight[i];
        f.done = Some((IBV_WC_SUCCESS, f.len));
        if self.probe == Some(f.psn) {
            self.probe = None;
        }
    }

    /// Resend from inflight entry `i` on (after a NAK), not before `at`:
    /// first entry `i` alone (a probe), the rest once it is answered. The
    /// answer clock restarts when the resend starts.
    fn rewind(&mut self, i: usize, at: Instant, timeout: Option<Duration>) {
        for f in self.inflight.iter_mut().skip(i) {
            f.sent = 0;
        }
        self.tx = self.tx.min(i);
        self.resume_at = Some(at);
        self.probe = Some(self.inflight[i].psn);
        if self.answer_deadline.is_some() {
            self.answer_deadline = timeout.map(|t| at + t);
        }
    }

    /// The responder's router went away. Requests already answered
    /// complete as answered; the first unanswered one fails with
    /// IBV_WC_RETRY_EXC_ERR (UC: every unanswered one is lost, a success);
    /// nothing more is sent, and once the answered ones are completed
    /// [`Requester::head`] says [`Head::PeerGone`]. False if nothing was in
    /// flight: the QP goes to the error state at once.
    pub fn peer_lost(&mut self, retries: &Retries) -> bool {
        if self.inflight.is_empty() {
            return false;
        }
        if retries.unreliable {
            for i in 0..self.inflight.len() {
                if self.inflight[i].done.is_none() {
                    self.lose(i);
                }
            }
        } else if let Some(f) = self.inflight.iter_mut().find(|f| f.done.is_none()) {
            f.done = Some((IBV_WC_RETRY_EXC_ERR, 0));
        }
        self.halt_psn = Some(self.next_psn);
        self.peer_gone = true;
        true
    }
}

#[cfg(test)]
mod tests;
