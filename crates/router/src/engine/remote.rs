//! The data path between hosts: RC/UC work requests whose path names a GID
//! another router serves are carried over the link to that router, which
//! executes them as the responder with the same checks as on one host.
//!
//! Requester: each work request gets a PSN and is sent in chunks of at
//! most `MAX_CHUNK` bytes, up to [`WINDOW`] requests ahead of the
//! completions. A request completes only when the responder's Ack arrives
//! (the data is placed), in order. A NAK makes the requester resend from
//! the NAKed request: after the RNR timer (counting RNR retries), shortly
//! (busy), or until the ACK timeout expires (no QP answers).
//!
//! Responder: accepts only the PSN it expects (everything behind a NAKed
//! request is dropped until it comes again), checks keys, bounds, access
//! rights and QP state exactly as the local path does, places each chunk as
//! it arrives (ascending addresses), completes receives, and answers every
//! request with one Ack or one Nak. RDMA READ data streams back as the
//! link has room; requests behind a streaming READ wait (busy) unless they
//! are READs too, so a READ never sees a later WRITE.
//!
//! When a peer router goes away, every QP connected to a GID it served
//! moves to the error state: its state there is gone, as when a responder
//! loses power and the requester's retries run out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::{Engine, Source};
use crate::events::AsyncTarget;
use crate::link::{LinkEvent, Links};
use crate::memory::Segments;
use crate::transport::{PeerId, Transport};
use flowverbs_sys::*;
use flowverbs_verbs::events::responder_error_event;
use flowverbs_verbs::qp::{self as qp_state, QpKind, ERR};
use flowverbs_verbs::{access, atomic, opcode, receive};
use flowverbs_wire::entries::{Cqe, RecvWqe, SendWqe};
use flowverbs_wire::limits::UD_MTU;
use flowverbs_wire::link::{FrameHeader, Kind, NakReason, MAX_CHUNK, QP_RC, QP_UC, QP_UD};

/// Work requests a QP may have on the wire ahead of its completions.
const WINDOW: usize = 256;
/// Bytes one QP may queue on a link per pass (fairness between QPs).
const PASS_BYTES: u64 = 1 << 20;
/// READ requests a responder QP keeps queued (more: busy).
const MAX_READS: usize = 256;
/// How soon a requester resends after "busy" and after "no QP".
const BUSY_DELAY: Duration = Duration::from_micros(50);
const BUSY_MAX: Duration = Duration::from_millis(10);
/// UC has no ACK timeout: a request not answered within this time (its
/// responder vanished with the link still up) completes as lost, which is
/// what UC promises.
const UC_LOST_AFTER: Duration = Duration::from_secs(1);
const NO_QP_DELAY: Duration = Duration::from_millis(1);

use crate::transport::Gid;

/// How long requests on the wire may go without a useful answer: the IB
/// ACK timeout times (retry_cnt + 1); for UC, [`UC_LOST_AFTER`].
fn answer_timeout(qp: &crate::objects::Qp) -> Option<Duration> {
    if qp.kind == QpKind::Uc {
        return Some(UC_LOST_AFTER);
    }
    qp_state::retry_timeout(qp.attr.timeout, qp.attr.retry_cnt)
}

/// One work request sent (or being sent) to a remote responder.
struct InFlight {
    wqe: SendWqe,
    psn: u32,
    len: u64,
    local: Segments,
    inline: bool,
    /// Bytes sent so far (requests without payload: 0 or `len` once sent).
    sent: u64,
    /// True once its last frame is queued.
    complete: bool,
    rnr_tries: u32,
    /// (status, byte_len) once the responder answered.
    done: Option<(u32, u64)>,
}

/// The requester side of a QP whose peer is on another host.
struct Requester {
    peer: PeerId,
    inflight: VecDeque<InFlight>,
    next_psn: u32,
    /// `inflight[..tx]` are completely sent.
    tx: usize,
    /// Send nothing before this instant (RNR timer, busy, no QP).
    resume_at: Option<Instant>,
    /// When requests on the wire that got no useful answer (only "no QP",
    /// or nothing at all) end in IBV_WC_RETRY_EXC_ERR: the IB ACK timeout
    /// times (retry_cnt + 1), from the last answer. None: nothing on the
    /// wire, or the QP's timeout is 0 (wait forever).
    answer_deadline: Option<Instant>,
    /// A request failed before it was sent: send nothing from it on (the
    /// QP goes to error when it reaches the head).
    halt_psn: Option<u32>,
    /// After a NAK, only the NAKed request is resent until it is answered
    /// (no stream of requests the responder would drop).
    probe: Option<u32>,
    /// How long to wait after the next "busy" NAK (doubles, up to
    /// [`BUSY_MAX`]; reset by an Ack).
    busy_delay: Duration,
    /// The responder's router went away: once what was answered is
    /// completed, the QP goes to the error state.
    doomed: bool,
}

/// A message arriving in chunks.
struct Inbound {
    psn: u32,
    opcode: u32,
    total_len: u64,
    received: u64,
    /// The receive WQE it consumes (SEND, WRITE_WITH_IMM).
    recv: Option<RecvWqe>,
    /// Whether `recv` has left its ring yet: a QP's own receive queue is
    /// consumed when the message completes (nobody else takes from it); an
    /// SRQ's at the start (other QPs take from it too).
    recv_consumed: bool,
    dst: Segments,
    imm: u32,
    send_flags: u32,
    src_qpn: u32,
    /// UC only: the message is being dropped (no receive posted).
    discard: bool,
}

/// An RDMA READ being answered.
struct PendingRead {
    peer: PeerId,
    psn: u32,
    reply: FrameHeader,
    segs: Segments,
    len: u64,
    sent: u64,
}

/// The responder side of a QP whose peer is on another host.
#[derive(Default)]
struct Responder {
    epsn: u32,
    inbound: Option<Inbound>,
    reads: VecDeque<PendingRead>,
    /// UC: an SRQ receive taken by a message that was abandoned halfway;
    /// the next message uses it.
    spare_recv: Option<RecvWqe>,
}

#[derive(Default)]
pub(super) struct Remote {
    /// The GIDs of this router's sessions (kept by `announce_gids`).
    served: std::collections::HashSet<Gid>,
    req: std::collections::HashMap<u32, Requester>,
    resp: std::collections::HashMap<u32, Responder>,
}

fn qp_kind_code(kind: QpKind) -> u8 {
    match kind {
        QpKind::Rc => QP_RC,
        QpKind::Uc => QP_UC,
        QpKind::Ud => QP_UD,
    }
}

/// A datagram frame's `aux`: the sender's hop limit and traffic class
/// (for the receiver's GRH area).
fn datagram_aux(hop_limit: u8, traffic_class: u8) -> u32 {
    u32::from(hop_limit) | u32::from(traffic_class) << 8
}

fn gid_text(g: &Gid) -> String {
    std::net::Ipv6Addr::from(*g).to_string()
}

impl Engine {
    /// Runs `f` with the links taken out of the engine (so that `f` may use
    /// both). None if this router has no links.
    fn with_links<R>(&mut self, f: impl FnOnce(&mut Engine, &mut Links) -> R) -> Option<R> {
        let mut links = self.links.take()?;
        let r = f(self, &mut links);
        self.links = Some(links);
        Some(r)
    }

    /// True if some session of this router has GID `gid`.
    pub(super) fn serves_locally(&self, gid: &Gid) -> bool {
        self.remote.served.contains(gid)
    }

    /// Records which GIDs this router serves and tells the peers (call
    /// whenever sessions come or go).
    pub fn announce_gids(&mut self) {
        self.remote.served = self.tables.sessions.values().map(|s| s.gid).collect();
        if let Some(links) = self.links.as_mut() {
            links.set_served(self.remote.served.iter().copied().collect());
        }
    }

    /// The peer router an RC/UC QP's path leads to, if it names a GID
    /// another router serves (and that router is up).
    pub(super) fn remote_route(&self, h: u32) -> Option<PeerId> {
        if let Some(r) = self.remote.req.get(&h) {
            if !r.inflight.is_empty() {
                return Some(r.peer);
            }
        }
        let links = self.links.as_ref()?;
        let a = &self.tables.qps[&h];
        if a.kind == QpKind::Ud || !a.attr.ah_attr.is_global {
            return None;
        }
        let dgid = a.attr.ah_attr.dgid;
        if self.serves_locally(&dgid) {
            return None;
        }
        links.peers.locate(&dgid)
    }

    /// The earliest instant a remote requester must be looked at again.
    pub(super) fn remote_deadline(&self) -> Option<Instant> {
        let q = self
            .remote
            .req
            .values()
            .flat_map(|r| [r.resume_at, r.answer_deadline])
            .flatten()
            .min();
        let l = self.links.as_ref().and_then(|l| l.next_deadline());
        match (q, l) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A QP was reset or destroyed: its remote state goes.
    pub(super) fn forget_remote(&mut self, h: u32) {
        self.remote.req.remove(&h);
        self.remote.resp.remove(&h);
    }

    /// A QP entered the error state: nothing more is sent for it; a receive
    /// taken by a message still arriving is flushed (it left the ring).
    pub(super) fn remote_entered_error(&mut self, h: u32) {
        self.remote.req.remove(&h);
        let Some(r) = self.remote.resp.get_mut(&h) else {
            return;
        };
        r.reads.clear();
        let taken = match r.inbound.take() {
            Some(Inbound {
                recv: Some(w),
                recv_consumed: true,
                ..
            }) => Some(w),
            _ => None,
        };
        // (A receive still in its QP's own ring is flushed with the ring.)
        for rwqe in taken.into_iter().chain(r.spare_recv.take()) {
            self.complete_recv_with_error(h, &rwqe, IBV_WC_WR_FLUSH_ERR, 0);
        }
    }

    /// Completes a receive that already left its ring with an error status;
    /// a full CQ is an overrun (IBV_EVENT_CQ_ERR), as on a NIC.
    fn complete_recv_with_error(&mut self, h: u32, rwqe: &RecvWqe, status: u32, src_qp: u32) {
        let qp = &self.tables.qps[&h];
        let cqe = Cqe::receive_failed(rwqe.wr_id, status, qp.qpn, src_qp);
        let cq = qp.recv_cq;
        if self.cq_free(cq) > 0 {
            self.push_cqe(cq, &cqe);
        } else {
            warn!(
                "cq {cq}: overrun by an error completion of qp {:#x}",
                qp.qpn
            );
            self.post_async_event(AsyncTarget::Cq(cq), IBV_EVENT_CQ_ERR);
        }
    }

    /// Link I/O and every frame that arrived; then peer events. True if
    /// anything happened (or is still waiting to be read or written).
    pub(super) fn pump_links(&mut self, now: Instant) -> bool {
        let Some((mut progress, events)) = self.with_links(|eng, links| {
            links.poll_io(now);
            let mut any = false;
            links.frames(now, |peers, from, hdr, payload| {
                any = true;
                eng.on_frame(peers, from, hdr, payload, now);
            });
            (any || links.busy(), links.take_events())
        }) else {
            return false;
        };
        for ev in events {
            progress = true;
            match ev {
                LinkEvent::Up(_) => self.announce_gids(),
                LinkEvent::Down(peer, gids) => self.peer_down(peer, &gids),
            }
        }
        progress
    }

    /// Writes what the engine queued on the links.
    pub(super) fn flush_links(&mut self) {
        self.with_links(|_, links| links.flush_all(Instant::now()));
    }

    /// A full link got room since the last pass (see `Links::take_room_opened`).
    pub(super) fn link_room_opened(&mut self) -> bool {
        self.with_links(|_, links| links.take_room_opened())
            .unwrap_or(false)
    }

    /// Every QP connected to a GID of a router that went away moves to the
    /// error state; a request at the head of its send queue completes with
    /// IBV_WC_RETRY_EXC_ERR.
    fn peer_down(&mut self, peer: PeerId, gids: &[Gid]) {
        let hit: Vec<u32> = self
            .tables
            .qps
            .iter()
            .filter(|(h, q)| {
                q.kind != QpKind::Ud
                    && qp_state::receives(q.state())
                    && ((q.attr.ah_attr.is_global && gids.contains(&q.attr.ah_attr.dgid))
                        || self.remote.req.get(h).is_some_and(|r| r.peer == peer))
            })
            .map(|(h, _)| *h)
            .collect();
        for h in hit {
            let qp = &self.tables.qps[&h];
            warn!(
                "qp {:#x}: the router serving {} went away; QP moved to error",
                qp.qpn,
                gid_text(&qp.attr.ah_attr.dgid)
            );
            let uc = qp.kind == QpKind::Uc;
            match self.remote.req.get_mut(&h) {
                Some(r) if !r.inflight.is_empty() => {
                    // Requests already answered complete as answered; the
                    // first unanswered one fails (UC: is lost), then the
                    // QP goes to error (complete_answered, with CQ room).
                    if uc {
                        for f in r.inflight.iter_mut().filter(|f| f.done.is_none()) {
                            f.done = Some((IBV_WC_SUCCESS, f.len));
                        }
                    } else if let Some(f) = r.inflight.iter_mut().find(|f| f.done.is_none()) {
                        f.done = Some((IBV_WC_RETRY_EXC_ERR, 0));
                    }
                    r.halt_psn = Some(r.next_psn);
                    r.doomed = true;
                }
                _ => self.to_error(h),
            }
        }
    }

    // ---- requester ----------------------------------------------------

    /// Sends a UD datagram to the router serving `w.dgid` (dropped, as on
    /// a fabric, if no router serves it or its link is full). Err: the
    /// local memory could not be read.
    pub(super) fn send_datagram(
        &mut self,
        sgid: &Gid,
        src_qpn: u32,
        w: &SendWqe,
        qkey: u32,
        src: &Source,
        len: u64,
    ) -> Result<(), u32> {
        let hdr = FrameHeader {
            kind: Kind::Datagram as u8,
            qp_kind: QP_UD,
            src_gid: *sgid,
            dst_gid: w.dgid,
            src_qpn: src_qpn.into(),
            dst_qpn: w.remote_qpn.into(),
            opcode: w.opcode.into(),
            send_flags: w.send_flags.into(),
            imm: w.imm_data.into(),
            total_len: len.into(),
            qkey: qkey.into(),
            aux: (datagram_aux(w.hop_limit as u8, w.traffic_class as u8)).into(),
            ..Default::default()
        };
        let r = self.with_links(|_, links| {
            let Some(peer) = links.peers.locate(&w.dgid) else {
                return Ok(());
            };
            if !links.peers.has_room(peer) {
                debug!("datagram to {} dropped: link full", gid_text(&w.dgid));
                return Ok(());
            }
            let mut bytes = vec![0u8; len as usize];
            src.read(0, &mut bytes).map_err(|_| IBV_WC_LOC_PROT_ERR)?;
            links.peers.send(peer, hdr, &bytes);
            Ok(())
        });
        r.unwrap_or(Ok(()))
    }

    /// Runs the send queue of a QP whose peer is on another host: completes
    /// what was answered, then sends more as the window and the link allow.
    pub(super) fn run_remote(&mut self, h: u32, peer: PeerId, now: Instant) -> bool {
        // PSNs start where the application said (`sq_psn`; the responder
        // starts at its `rq_psn`), as on a fabric.
        let sq_psn = self.tables.qps[&h].attr.sq_psn;
        self.remote.req.entry(h).or_insert_with(|| Requester {
            peer,
            inflight: VecDeque::new(),
            next_psn: sq_psn,
            tx: 0,
            resume_at: None,
            answer_deadline: None,
            halt_psn: None,
            probe: None,
            busy_delay: BUSY_DELAY,
            doomed: false,
        });
        let mut progress = self.complete_answered(h, now);
        if !self.remote.req.contains_key(&h) {
            return true; // failed: the QP is in the error state now
        }
        let r = &self.remote.req[&h];
        if r.resume_at.is_some_and(|t| now < t) {
            return progress;
        }
        self.remote.req.get_mut(&h).expect("requester").resume_at = None;
        progress |= self
            .with_links(|eng, links| eng.transmit(h, &mut links.peers, now))
            .unwrap_or(false);
        progress
    }

    /// Completes answered requests at the head, in order. A failed one
    /// fails the QP. Also ends unanswered retries past their deadline.
    fn complete_answered(&mut self, h: u32, now: Instant) -> bool {
        let mut progress = false;
        loop {
            let Some(r) = self.remote.req.get_mut(&h) else {
                return true;
            };
            if r.answer_deadline.is_some_and(|d| now >= d) {
                // The first request still waiting for an answer gives up.
                let uc = self.tables.qps[&h].kind == QpKind::Uc;
                if let Some(f) = r.inflight.iter_mut().find(|f| f.done.is_none()) {
                    f.done = Some(if uc {
                        (IBV_WC_SUCCESS, f.len)
                    } else {
                        (IBV_WC_RETRY_EXC_ERR, 0)
                    });
                }
                r.answer_deadline = None;
            }
            let Some(front) = r.inflight.front() else {
                if r.doomed {
                    self.remote.req.remove(&h);
                    self.to_error(h);
                    return true;
                }
                return progress;
            };
            let Some((status, len)) = front.done else {
                return progress;
            };
            let wqe = front.wqe;
            let qp = &self.tables.qps[&h];
            if status != IBV_WC_SUCCESS {
                if self.cq_free(qp.send_cq) == 0 {
                    return progress; // the error completion needs room too
                }
                self.remote.req.remove(&h);
                self.fail_requester(h, &wqe, status);
                return true;
            }
            let signaled = qp.sq_sig_all || wqe.send_flags & IBV_SEND_SIGNALED != 0;
            if signaled && self.cq_free(qp.send_cq) == 0 {
                return progress;
            }
            let r = self.remote.req.get_mut(&h).expect("requester");
            r.inflight.pop_front();
            r.tx = r.tx.saturating_sub(1);
            if r.inflight.is_empty() {
                r.answer_deadline = None;
            }
            self.finish_send(h, &wqe, len);
            progress = true;
        }
    }

    /// Sends chunks of the requests in the window, taking new ones from
    /// the send queue, while the link has room and this pass's budget lasts.
    fn transmit(&mut self, h: u32, peers: &mut dyn Transport, now: Instant) -> bool {
        let mut progress = false;
        let mut budget = PASS_BYTES;
        let qp = &self.tables.qps[&h];
        let base = FrameHeader {
            kind: Kind::Request as u8,
            qp_kind: qp_kind_code(qp.kind),
            src_gid: self.tables.sessions[&qp.session].gid,
            dst_gid: qp.attr.ah_attr.dgid,
            src_qpn: qp.qpn.into(),
            dst_qpn: qp.attr.dest_qp_num.into(),
            ..Default::default()
        };
        let timeout = answer_timeout(qp);
        let mem = self.memory_of(h);
        loop {
            let peer = self.remote.req[&h].peer;
            if !peers.has_room(peer) || budget == 0 {
                break;
            }
            let r = self.remote.req.get_mut(&h).expect("requester");
            if let Some(f) = r.inflight.get(r.tx) {
                if r.halt_psn == Some(f.psn) {
                    break;
                }
                if r.probe.is_some_and(|p| p != f.psn) {
                    break; // only the NAKed request until it is answered
                }
            }
            if r.tx == r.inflight.len() {
                if r.probe.is_some() || r.halt_psn.is_some() {
                    break;
                }
                // Take the next work request from the send queue.
                let qp = &self.tables.qps[&h];
                let Some(pending) = qp.sq_pending() else {
                    self.remote.req.remove(&h);
                    self.resync_after_violation(h);
                    return true;
                };
                if pending as usize <= r.inflight.len() || r.inflight.len() >= WINDOW {
                    break;
                }
                let idx = qp.sq_consumer.wrapping_add(r.inflight.len() as u32);
                let wqe: SendWqe = qp.sq.read(idx);
                let (local, len, inline) = match self.validate_send(h, &wqe) {
                    Ok(v) => v,
                    Err(status) => {
                        let r = self.remote.req.get_mut(&h).expect("requester");
                        let send_cq = self.tables.qps[&h].send_cq;
                        if r.inflight.is_empty() && self.cq_free(send_cq) > 0 {
                            self.remote.req.remove(&h);
                            self.fail_requester(h, &wqe, status);
                            return true;
                        }
                        break; // fails once it reaches the head (and has room)
                    }
                };
                let r = self.remote.req.get_mut(&h).expect("requester");
                let psn = r.next_psn;
                r.next_psn = psn.wrapping_add(1);
                r.inflight.push_back(InFlight {
                    wqe,
                    psn,
                    len,
                    local,
                    inline,
                    sent: 0,
                    complete: false,
                    rnr_tries: 0,
                    done: None,
                });
            }
            let r = self.remote.req.get_mut(&h).expect("requester");
            let peer = r.peer;
            let f = &mut r.inflight[r.tx];
            let w = &f.wqe;
            let mut hdr = FrameHeader {
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
                ..base
            };
            let n = if opcode::carries_data(w.opcode) {
                ((f.len - f.sent) as usize).min(MAX_CHUNK)
            } else {
                0
            };
            hdr.payload_len = (n as u32).into();
            let (off, inline) = (f.sent, f.inline);
            let sent = if inline {
                let bytes = &w.inline_bytes()[off as usize..off as usize + n];
                peers.send(peer, hdr, bytes);
                Ok(())
            } else {
                let local = &f.local;
                peers.send_with(peer, hdr, n, &mut |buf| {
                    mem.read_segments_uninit(local, off, buf)
                })
            };
            let f = &mut r.inflight[r.tx];
            if sent.is_err() {
                // The requester's own memory is gone: fails at the head.
                f.done = Some((IBV_WC_LOC_PROT_ERR, 0));
                r.halt_psn = Some(f.psn);
                return true;
            }
            f.sent += n as u64;
            budget = budget.saturating_sub(n as u64 + 128);
            progress = true;
            // The ACK timer runs from the last packet sent, as on a NIC.
            r.answer_deadline = timeout.map(|t| now + t);
            if !opcode::carries_data(f.wqe.opcode) || f.sent >= f.len {
                f.complete = true;
                r.tx += 1;
            }
        }
        progress
    }

    /// Resend from inflight entry `i` on (after a NAK), not before `at`:
    /// first entry `i` alone (a probe), the rest once it is answered. The
    /// answer clock restarts when the resend starts.
    fn rewind(r: &mut Requester, i: usize, at: Instant, timeout: Option<Duration>) {
        for f in r.inflight.iter_mut().skip(i) {
            f.sent = 0;
            f.complete = false;
        }
        r.tx = r.tx.min(i);
        r.resume_at = Some(at);
        r.probe = Some(r.inflight[i].psn);
        if r.answer_deadline.is_some() {
            r.answer_deadline = timeout.map(|t| at + t);
        }
    }

    /// An Ack, Nak or READ data for one of our requests.
    fn on_response(&mut self, from: PeerId, hdr: &FrameHeader, payload: &[u8], now: Instant) {
        let Some(&ha) = self.tables.qpns.get(&hdr.dst_qpn.get()) else {
            return;
        };
        let a = &self.tables.qps[&ha];
        let ok = self.tables.sessions[&a.session].gid == hdr.dst_gid
            && a.attr.ah_attr.dgid == hdr.src_gid
            && a.attr.dest_qp_num == hdr.src_qpn.get();
        let timeout = answer_timeout(a);
        let (rnr_retry, kind) = (a.attr.rnr_retry, a.kind);
        let mem = self.memory_of(ha);
        let Some(r) = self
            .remote
            .req
            .get_mut(&ha)
            .filter(|r| ok && r.peer == from)
        else {
            return;
        };
        let Some(front) = r.inflight.front() else {
            return;
        };
        let i = hdr.psn.get().wrapping_sub(front.psn) as usize;
        // Requests on the wire: those completely sent, and one partly sent.
        let on_wire = r.tx + usize::from(r.inflight.get(r.tx).is_some_and(|f| f.sent > 0));
        if i >= on_wire {
            return; // stale: from before a rewind
        }
        if r.inflight[i].done.is_some() {
            return;
        }
        let psn = r.inflight[i].psn;
        let no_qp = hdr.kind() == Kind::Nak && hdr.status.get() == NakReason::NoQp as u32;
        if !no_qp {
            // A real answer: the responder is there; restart the clock.
            r.answer_deadline = timeout.map(|t| now + t);
        }
        if matches!(hdr.kind(), Kind::Ack | Kind::ReadData) && r.probe == Some(psn) {
            r.probe = None; // accepted: stream again
        }
        match hdr.kind() {
            Kind::Ack => {
                r.busy_delay = BUSY_DELAY;
                let f = &mut r.inflight[i];
                let w = f.wqe;
                let is_atomic = opcode::is_atomic(w.opcode);
                f.done = Some(if hdr.status.get() != IBV_WC_SUCCESS {
                    // Only the statuses a responder can cause reach the
                    // application; anything else a peer says is an error
                    // of the remote operation.
                    let status = match hdr.status.get() {
                        IBV_WC_REM_ACCESS_ERR | IBV_WC_REM_INV_REQ_ERR => hdr.status.get(),
                        _ => IBV_WC_REM_OP_ERR,
                    };
                    (status, 0)
                } else if is_atomic {
                    match <[u8; 8]>::try_from(payload) {
                        Ok(old) if mem.write(f.local[0].0, &old).is_ok() => (IBV_WC_SUCCESS, 8),
                        Ok(_) => (IBV_WC_LOC_PROT_ERR, 0),
                        Err(_) => (IBV_WC_REM_OP_ERR, 0),
                    }
                } else {
                    (IBV_WC_SUCCESS, f.len)
                });
                if f.done.is_some_and(|d| d.0 != IBV_WC_SUCCESS) {
                    r.halt_psn = Some(psn.wrapping_add(1));
                }
            }
            Kind::ReadData => {
                let f = &mut r.inflight[i];
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
                    r.halt_psn = Some(psn.wrapping_add(1));
                }
            }
            Kind::Nak => match NakReason::from_u32(hdr.status.get()) {
                Some(NakReason::Rnr) => {
                    let f = &mut r.inflight[i];
                    f.rnr_tries += 1;
                    if kind == QpKind::Uc {
                        f.done = Some((IBV_WC_SUCCESS, f.len));
                    } else if rnr_retry < 7 && f.rnr_tries > u32::from(rnr_retry) {
                        f.done = Some((IBV_WC_RNR_RETRY_EXC_ERR, 0));
                        r.halt_psn = Some(psn.wrapping_add(1));
                    } else {
                        let wait = Duration::from_micros(u64::from(hdr.aux.get()).max(10));
                        Self::rewind(r, i, now + wait, timeout);
                    }
                }
                Some(NakReason::Busy) => {
                    let wait = r.busy_delay;
                    r.busy_delay = (wait * 2).min(BUSY_MAX);
                    Self::rewind(r, i, now + wait, timeout);
                }
                Some(NakReason::NoQp) => {
                    if kind == QpKind::Uc {
                        // Nobody listens: an unreliable message is lost.
                        let f = &mut r.inflight[i];
                        f.done = Some((IBV_WC_SUCCESS, f.len));
                        if r.probe == Some(psn) {
                            r.probe = None;
                        }
                        return;
                    }
                    if r.answer_deadline.is_none() {
                        r.answer_deadline = timeout.map(|t| now + t);
                    }
                    let deadline = r.answer_deadline;
                    Self::rewind(r, i, now + NO_QP_DELAY, timeout);
                    // "No QP" is no answer: the clock keeps running.
                    r.answer_deadline = deadline;
                }
                None => warn!("peer sent a NAK with reason {}; ignored", hdr.status.get()),
            },
            _ => {}
        }
    }

    // ---- responder ----------------------------------------------------

    /// Dispatches one frame from a peer router.
    fn on_frame(
        &mut self,
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        payload: &[u8],
        now: Instant,
    ) {
        // A router speaks only for the GIDs it announced, and only to ours.
        if !peers.serves(from, &hdr.src_gid) || !self.serves_locally(&hdr.dst_gid) {
            debug!(
                "frame from {} to {} dropped: not that router's GID, or not ours",
                gid_text(&hdr.src_gid),
                gid_text(&hdr.dst_gid)
            );
            return;
        }
        match hdr.kind() {
            Kind::Request => self.on_request(peers, from, hdr, payload),
            Kind::Ack | Kind::Nak | Kind::ReadData => self.on_response(from, hdr, payload, now),
            Kind::Datagram => self.on_datagram(hdr, payload),
            Kind::Hello | Kind::Announce => {}
        }
    }

    fn on_datagram(&mut self, hdr: &FrameHeader, payload: &[u8]) {
        if payload.len() > UD_MTU as usize || hdr.qp_kind != QP_UD {
            return;
        }
        let Some(&hb) = self.tables.qpns.get(&hdr.dst_qpn.get()) else {
            return;
        };
        let b = &self.tables.qps[&hb];
        let ok = b.kind == QpKind::Ud
            && qp_state::receives(b.state())
            && b.attr.qkey == hdr.qkey.get()
            && self.tables.sessions[&b.session].gid == hdr.dst_gid;
        if !ok {
            return;
        }
        let d = super::Datagram {
            sgid: hdr.src_gid,
            src_qpn: hdr.src_qpn.get(),
            imm: (hdr.opcode.get() == IBV_WR_SEND_WITH_IMM).then_some(hdr.imm.get()),
            solicited: hdr.send_flags.get() & IBV_SEND_SOLICITED != 0,
            hop_limit: (hdr.aux.get() & 0xff) as u8,
            traffic_class: (hdr.aux.get() >> 8) as u8,
        };
        let src = Source::Inline(payload.to_vec());
        // A full CQ drops the datagram, as a receiver without room would.
        let _ = self.deliver_ud(hb, &d, &src, payload.len() as u64);
    }

    /// The reply header for request `hdr` (addressed back to its sender).
    fn reply(hdr: &FrameHeader, kind: Kind) -> FrameHeader {
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

    fn nak(peers: &mut dyn Transport, from: PeerId, hdr: &FrameHeader, why: NakReason, aux: u32) {
        debug!(
            "qp {:#x}: NAK {why:?} for psn {} from qp {:#x}",
            hdr.dst_qpn.get(),
            hdr.psn.get(),
            hdr.src_qpn.get()
        );
        let mut n = Self::reply(hdr, Kind::Nak);
        n.status = (why as u32).into();
        n.aux = aux.into();
        peers.send(from, n, &[]);
    }

    fn ack(
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        status: u32,
        payload: &[u8],
    ) {
        let mut a = Self::reply(hdr, Kind::Ack);
        a.status = status.into();
        peers.send(from, a, payload);
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

    /// A responder-side error on request `hdr` for QP `hb`: RC answers
    /// with `req_status` and both ends go to the error state (with an
    /// affiliated event when no receive reports it); UC completes the
    /// request and only the responder sees an error (if a receive was
    /// involved).
    #[allow(clippy::too_many_arguments)]
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
        if let Some(r) = self.remote.resp.get_mut(&hb) {
            r.inbound = None;
            r.epsn = r.epsn.wrapping_add(1);
        }
        if !uc || recv.is_some() {
            self.to_error(hb);
        }
        let status = if uc { IBV_WC_SUCCESS } else { req_status };
        Self::ack(peers, from, hdr, status, &[]);
    }

    /// A responder error that completes receive `rwqe` (taken for `inbound`)
    /// with `recv_status`: a receive still in its QP's own ring leaves it.
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

    fn on_request(
        &mut self,
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        payload: &[u8],
    ) {
        let Some(hb) = self.responder_qp(hdr) else {
            if hdr.offset.get() == 0 {
                Self::nak(peers, from, hdr, NakReason::NoQp, 0);
            }
            return;
        };
        let (rq_psn, uc) = {
            let b = &self.tables.qps[&hb];
            (b.attr.rq_psn, b.kind == QpKind::Uc)
        };
        let r = self.remote.resp.entry(hb).or_insert_with(|| Responder {
            epsn: rq_psn,
            ..Default::default()
        });
        if uc && hdr.offset.get() == 0 && hdr.psn.get() != r.epsn {
            // UC has no retransmission: a new message after a lost one
            // resynchronises (an abandoned message's SRQ receive is kept).
            r.epsn = hdr.psn.get();
            if let Some(m) = r.inbound.take() {
                if m.recv_consumed {
                    r.spare_recv = m.recv;
                }
            }
        }
        if hdr.psn.get() != r.epsn {
            return; // behind a NAKed request: it comes again
        }
        let continues = r
            .inbound
            .as_ref()
            .is_some_and(|m| m.psn == hdr.psn.get() && m.received == hdr.offset.get());
        if !continues {
            if hdr.offset.get() != 0 || r.inbound.is_some() {
                return;
            }
            if !self.start_request(peers, from, hdr, hb, payload) {
                return;
            }
        }
        self.place_chunk(peers, from, hdr, hb, payload);
    }

    /// The first chunk of a request: checks it and, for READ and atomics,
    /// answers it. True if chunks are to be placed (an Inbound is set up).
    fn start_request(
        &mut self,
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        hb: u32,
        payload: &[u8],
    ) -> bool {
        let b = &self.tables.qps[&hb];
        let uc = b.kind == QpKind::Uc;
        let reads_pending = !self.remote.resp[&hb].reads.is_empty();
        let allowed = opcode::allowed(b.kind.ibv_type(), hdr.opcode.get());
        let sane = access::message_len(hdr.total_len.get()).is_ok()
            && (payload.len() as u64) <= hdr.total_len.get()
            && (opcode::carries_data(hdr.opcode.get()) || payload.is_empty());
        if !allowed || !sane {
            self.remote_responder_error(peers, from, hdr, hb, IBV_WC_REM_INV_REQ_ERR, None);
            return false;
        }
        if reads_pending
            && (hdr.opcode.get() != IBV_WR_RDMA_READ
                || self.remote.resp[&hb].reads.len() >= MAX_READS)
        {
            Self::nak(peers, from, hdr, NakReason::Busy, 0);
            return false;
        }
        let len = hdr.total_len.get();
        match hdr.opcode.get() {
            IBV_WR_RDMA_READ => {
                match self.remote_segment(
                    hb,
                    hdr.rkey.get(),
                    hdr.remote_addr.get(),
                    len,
                    IBV_ACCESS_REMOTE_READ,
                ) {
                    Ok(segs) => {
                        let r = self.remote.resp.get_mut(&hb).expect("responder");
                        r.epsn = r.epsn.wrapping_add(1);
                        r.reads.push_back(PendingRead {
                            peer: from,
                            psn: hdr.psn.get(),
                            reply: Self::reply(hdr, Kind::ReadData),
                            segs,
                            len,
                            sent: 0,
                        });
                    }
                    Err(status) => self.remote_responder_error(peers, from, hdr, hb, status, None),
                }
                false
            }
            op if opcode::is_atomic(op) => {
                self.remote_atomic(peers, from, hdr, hb);
                false
            }
            _ => {
                let needs_recv = opcode::consumes_receive(hdr.opcode.get());
                let mut inbound = Inbound {
                    psn: hdr.psn.get(),
                    opcode: hdr.opcode.get(),
                    total_len: len,
                    received: 0,
                    recv: None,
                    recv_consumed: false,
                    dst: Segments::new(),
                    imm: hdr.imm.get(),
                    send_flags: hdr.send_flags.get(),
                    src_qpn: hdr.src_qpn.get(),
                    discard: false,
                };
                if matches!(
                    hdr.opcode.get(),
                    IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM
                ) {
                    match self.remote_segment(
                        hb,
                        hdr.rkey.get(),
                        hdr.remote_addr.get(),
                        len,
                        IBV_ACCESS_REMOTE_WRITE,
                    ) {
                        Ok(d) => inbound.dst = d,
                        Err(status) => {
                            if uc {
                                // UC: the message is silently dropped.
                                inbound.discard = true;
                            } else {
                                self.remote_responder_error(peers, from, hdr, hb, status, None);
                                return false;
                            }
                        }
                    }
                }
                if needs_recv && !inbound.discard {
                    let recv_cq = self.tables.qps[&hb].recv_cq;
                    match self.recv_pending(hb) {
                        None => {
                            self.recv_violation(hb);
                            Self::nak(peers, from, hdr, NakReason::NoQp, 0);
                            return false;
                        }
                        Some(0) if uc => inbound.discard = true,
                        Some(0) => {
                            let t = qp_state::rnr_timer_us(self.tables.qps[&hb].attr.min_rnr_timer);
                            // (The requester counts its retries.)
                            Self::nak(
                                peers,
                                from,
                                hdr,
                                NakReason::Rnr,
                                t.min(u64::from(u32::MAX)) as u32,
                            );
                            return false;
                        }
                        Some(_) => {
                            if self.cq_free(recv_cq) == 0 {
                                Self::nak(peers, from, hdr, NakReason::Busy, 0);
                                return false;
                            }
                            let on_srq = self.tables.qps[&hb].srq != 0;
                            let spare = self
                                .remote
                                .resp
                                .get_mut(&hb)
                                .and_then(|r| r.spare_recv.take());
                            let (rwqe, max_sge) = match spare {
                                Some(w) => (w, self.recv_head(hb).1),
                                None => {
                                    let (w, m) = self.recv_head(hb);
                                    if on_srq {
                                        self.consume_recv(hb);
                                    }
                                    (w, m)
                                }
                            };
                            inbound.recv_consumed = on_srq;
                            // A SEND's data lands in the receive; a WRITE
                            // WITH IMM's receive only reports it.
                            if receive::lands_in_receive(hdr.opcode.get()) {
                                let (dst, verdict) = self.receive_segments(hb, &rwqe, max_sge, len);
                                if let Err(f) = verdict {
                                    self.fail_with_recv(
                                        peers,
                                        from,
                                        hdr,
                                        hb,
                                        f.requester,
                                        Some((rwqe, f.receive)),
                                        on_srq,
                                    );
                                    return false;
                                }
                                inbound.dst = dst;
                            }
                            inbound.recv = Some(rwqe);
                        }
                    }
                }
                self.remote.resp.get_mut(&hb).expect("responder").inbound = Some(inbound);
                true
            }
        }
    }

    /// Places one chunk of the message in progress; on its last chunk
    /// completes the receive (if any) and acknowledges.
    fn place_chunk(
        &mut self,
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        hb: u32,
        payload: &[u8],
    ) {
        let mem_b = self.memory_of(hb);
        let r = self.remote.resp.get_mut(&hb).expect("responder");
        let m = r.inbound.as_mut().expect("inbound");
        let (recv, opcode, consumed) = (m.recv, m.opcode, m.recv_consumed || m.recv.is_none());
        if m.received + payload.len() as u64 > m.total_len {
            let recv = recv.map(|w| (w, IBV_WC_LOC_LEN_ERR));
            self.fail_with_recv(peers, from, hdr, hb, IBV_WC_REM_INV_REQ_ERR, recv, consumed);
            return;
        }
        if !m.discard && mem_b.write_segments(&m.dst, m.received, payload).is_err() {
            let (status, recv) = match recv {
                Some(w) if opcode != IBV_WR_RDMA_WRITE_WITH_IMM => {
                    (IBV_WC_REM_OP_ERR, Some((w, IBV_WC_LOC_PROT_ERR)))
                }
                w => (IBV_WC_REM_ACCESS_ERR, w.map(|w| (w, IBV_WC_LOC_PROT_ERR))),
            };
            self.fail_with_recv(peers, from, hdr, hb, status, recv, consumed);
            return;
        }
        m.received += payload.len() as u64;
        if m.received < m.total_len {
            return;
        }
        let m = r.inbound.take().expect("inbound");
        r.epsn = r.epsn.wrapping_add(1);
        if let Some(rwqe) = m.recv {
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
                Self::ack(peers, from, hdr, status, &[]);
                return;
            }
            let solicited = m.send_flags & IBV_SEND_SOLICITED != 0;
            self.publish_cqe(recv_cq, &cqe, solicited);
        }
        Self::ack(peers, from, hdr, IBV_WC_SUCCESS, &[]);
    }

    fn remote_atomic(
        &mut self,
        peers: &mut dyn Transport,
        from: PeerId,
        hdr: &FrameHeader,
        hb: u32,
    ) {
        let target = if hdr.total_len.get() == 8 {
            atomic::check_target(hdr.remote_addr.get())
        } else {
            Err(IBV_WC_REM_INV_REQ_ERR)
        };
        if let Err(status) = target {
            self.remote_responder_error(peers, from, hdr, hb, status, None);
            return;
        }
        if let Err(status) = self.remote_segment(
            hb,
            hdr.rkey.get(),
            hdr.remote_addr.get(),
            8,
            IBV_ACCESS_REMOTE_ATOMIC,
        ) {
            self.remote_responder_error(peers, from, hdr, hb, status, None);
            return;
        }
        let mem_b = self.memory_of(hb);
        let old = match super::atomic_at(
            &mem_b,
            hdr.remote_addr.get(),
            hdr.opcode.get(),
            hdr.compare_add.get(),
            hdr.swap.get(),
        ) {
            Ok(old) => old,
            Err(status) => {
                self.remote_responder_error(peers, from, hdr, hb, status, None);
                return;
            }
        };
        let r = self.remote.resp.get_mut(&hb).expect("responder");
        r.epsn = r.epsn.wrapping_add(1);
        Self::ack(peers, from, hdr, IBV_WC_SUCCESS, &old);
    }

    /// Streams READ responses while the links have room.
    pub(super) fn serve_reads(&mut self) -> bool {
        if self.remote.resp.values().all(|r| r.reads.is_empty()) {
            return false;
        }
        self.with_links(|eng, links| eng.stream_reads(&mut links.peers))
            .unwrap_or(false)
    }

    fn stream_reads(&mut self, peers: &mut dyn Transport) -> bool {
        let mut progress = false;
        let hs: Vec<u32> = self
            .remote
            .resp
            .iter()
            .filter(|(_, r)| !r.reads.is_empty())
            .map(|(h, _)| *h)
            .collect();
        for hb in hs {
            let mem = self.memory_of(hb);
            let mut budget = PASS_BYTES;
            loop {
                let r = self.remote.resp.get_mut(&hb).expect("responder");
                let Some(rd) = r.reads.front_mut() else {
                    break;
                };
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
                    let segs = &rd.segs;
                    let off = rd.sent;
                    if peers
                        .send_with(rd.peer, hdr, n, &mut |buf| {
                            mem.read_segments_uninit(segs, off, buf)
                        })
                        .is_err()
                    {
                        let (peer, mut req) = (rd.peer, rd.reply);
                        // Answer as the request it was (addresses swapped back).
                        std::mem::swap(&mut req.src_gid, &mut req.dst_gid);
                        std::mem::swap(&mut req.src_qpn, &mut req.dst_qpn);
                        r.reads.clear();
                        self.remote_responder_error(
                            peers,
                            peer,
                            &req,
                            hb,
                            IBV_WC_REM_ACCESS_ERR,
                            None,
                        );
                        break;
                    }
                    rd.sent += n as u64;
                    budget = budget.saturating_sub(n as u64);
                    continue;
                }
                let mut ack = rd.reply;
                ack.kind = Kind::Ack as u8;
                ack.status = IBV_WC_SUCCESS.into();
                let (peer, psn) = (rd.peer, rd.psn);
                debug_assert_eq!(ack.psn.get(), psn);
                peers.send(peer, ack, &[]);
                r.reads.pop_front();
            }
        }
        progress
    }
}
