//! The data path between hosts: RC/UC work requests whose path names a GID
//! another router serves are carried over the link to that router, which
//! executes them as the responder with the same checks as on one host.
//!
//! Each such QP has a [`Requester`] (its send queue on the wire: PSNs,
//! chunks, the window, go-back-N after a NAK) and a [`Responder`] (which
//! PSN it takes, the message arriving, the READs it answers); they hold
//! the protocol and send through a [`Transport`]. The engine looks up the
//! QP, hands them what they need (attributes, memory, the links, the time)
//! and does what only it can: read send queues, take receives, check keys,
//! write completions, move QPs to the error state. This file drives the
//! requesters and the links; `serve.rs` executes requests from other hosts.
//!
//! Requests complete only when the responder's Ack arrives (the data is
//! placed), in order. The responder answers every request with one Ack or
//! one Nak: RNR (no receive posted: resent after the RNR timer, counting
//! RNR retries), busy (resent shortly) or no QP (resent until the ACK
//! timeout ends the request).
//!
//! When a peer router goes away, every QP connected to a GID it served
//! moves to the error state: its state there is gone, as when a responder
//! loses power and the requester's retries run out.

mod requester;
mod responder;
mod serve;
#[cfg(test)]
mod tests;

use std::time::Instant;

use log::{debug, warn};

use super::{Engine, Source};
use crate::link::{LinkEvent, Links};
use crate::rdma_cm::Route;
use crate::transport::{Gid, PeerId, Transport};
use flowverbs_sys::*;
use flowverbs_verbs::qp::{self as qp_state, QpKind};
use flowverbs_wire::entries::{Cqe, RecvWqe, SendWqe};
use flowverbs_wire::limits::UD_MTU;
use flowverbs_wire::link::{FrameHeader, Kind, QP_RC, QP_UC, QP_UD};
use requester::{Checked, Head, Requester, Retries, SendQueue, Transmitted};
use responder::Responder;

/// Bytes one QP may queue on a link per pass (fairness between QPs).
const PASS_BYTES: u64 = 1 << 20;

#[derive(Default)]
pub(super) struct Remote {
    /// The GIDs this router serves: its sessions' and `cm_held`
    /// (kept by `announce_gids`).
    served: std::collections::HashSet<Gid>,
    /// GIDs the connection manager still speaks for across the links
    /// (`hold_cm_gids`).
    cm_held: std::collections::BTreeSet<Gid>,
    req: std::collections::HashMap<u32, Requester>,
    resp: std::collections::HashMap<u32, Responder>,
    /// With a cap on link bytes per user: each user's unanswered bytes on
    /// the links, counted at the start of a pass and grown as its QPs send.
    link_bytes: std::collections::HashMap<u32, u64>,
    /// rdma_cm frames from other routers (source GID, destination GID,
    /// payload), for the server's connection manager.
    cm_frames: Vec<(Gid, Gid, Vec<u8>)>,
    /// GIDs of routers that went away, for the connection manager.
    cm_lost: Vec<Gid>,
}

/// The transport as one user's QP sees it under the link-bytes cap: no
/// room once its allowance is spent (a frame started with allowance left
/// goes whole).
struct Allowance<'a> {
    peers: &'a mut dyn Transport,
    left: u64,
    /// Bytes sent through it.
    sent: u64,
}

impl Transport for Allowance<'_> {
    fn locate(&self, gid: &Gid) -> Option<PeerId> {
        self.peers.locate(gid)
    }
    fn serves(&self, peer: PeerId, gid: &Gid) -> bool {
        self.peers.serves(peer, gid)
    }
    fn has_room(&self, peer: PeerId) -> bool {
        self.left > 0 && self.peers.has_room(peer)
    }
    fn send(&mut self, peer: PeerId, hdr: FrameHeader, payload: &[u8]) {
        self.spend(payload.len());
        self.peers.send(peer, hdr, payload);
    }
    fn send_with(
        &mut self,
        peer: PeerId,
        hdr: FrameHeader,
        len: usize,
        fill: &mut dyn FnMut(&mut [std::mem::MaybeUninit<u8>]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.peers.send_with(peer, hdr, len, fill)?;
        self.spend(len);
        Ok(())
    }
}

impl Allowance<'_> {
    fn spend(&mut self, n: usize) {
        self.left = self.left.saturating_sub(n as u64);
        self.sent += n as u64;
    }
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

/// A QP's send queue as its requester sees it: the work requests posted
/// behind the head, each with the requester's own checks.
struct PostedSends<'a> {
    engine: &'a Engine,
    h: u32,
}

impl SendQueue for PostedSends<'_> {
    fn pending(&self) -> Option<u32> {
        self.engine.tables.qps[&self.h].sq_pending()
    }

    fn get(&self, n: u32) -> (SendWqe, Result<Checked, u32>) {
        let qp = &self.engine.tables.qps[&self.h];
        let wqe: SendWqe = qp.sq.read(qp.sq_consumer.wrapping_add(n));
        let checked = self
            .engine
            .validate_send(self.h, &wqe)
            .map(|(local, len, inline)| Checked { local, len, inline });
        (wqe, checked)
    }
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

    /// Runs `f` with the transport to the other routers taken out of the
    /// engine: the links' peers, or (unit tests and fuzz targets) the
    /// in-memory wire. None if this router has neither.
    fn with_peers<R>(&mut self, f: impl FnOnce(&mut Engine, &mut dyn Transport) -> R) -> Option<R> {
        if self.links.is_some() {
            return self.with_links(|eng, links| f(eng, &mut links.peers));
        }
        #[cfg(any(test, feature = "fuzzing"))]
        if let Some(mut wire) = self.wire.take() {
            let r = f(self, &mut wire);
            self.wire = Some(wire);
            return Some(r);
        }
        None
    }

    /// The transport to the other routers, if this router has one.
    fn peers(&self) -> Option<&dyn Transport> {
        if let Some(links) = &self.links {
            return Some(&links.peers);
        }
        #[cfg(any(test, feature = "fuzzing"))]
        if let Some(wire) = &self.wire {
            return Some(wire);
        }
        None
    }

    /// True if this router reaches other routers.
    pub(super) fn has_peers(&self) -> bool {
        self.peers().is_some()
    }

    /// Unit tests and fuzz targets: one frame from router `from`, as the
    /// links hand it to the engine (replies go to the in-memory wire).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn deliver_frame(&mut self, from: PeerId, hdr: &FrameHeader, payload: &[u8], now: Instant) {
        self.with_peers(|eng, peers| eng.on_frame(peers, from, hdr, payload, now));
    }

    /// Unit tests and fuzz targets: router `peer`, which served `gids`,
    /// went away (as the links report it).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn lose_peer(&mut self, peer: PeerId, gids: &[Gid]) {
        self.peer_down(peer, gids);
    }

    /// rdma_cm frames that arrived from other routers since the last call:
    /// (source GID, destination GID, payload).
    pub(crate) fn take_cm_frames(&mut self) -> Vec<(Gid, Gid, Vec<u8>)> {
        std::mem::take(&mut self.remote.cm_frames)
    }

    /// GIDs whose routers went away since the last call.
    pub(crate) fn take_cm_lost(&mut self) -> Vec<Gid> {
        std::mem::take(&mut self.remote.cm_lost)
    }

    /// Sends an rdma_cm frame from `src` (a GID of this router) to the
    /// router serving `dst`, written out at once. With the etcd registry,
    /// a router not connected yet is dialled, and the frame must wait
    /// (`Dialing`); `Nowhere` if no other router serves `dst`.
    pub(crate) fn send_cm(&mut self, src: Gid, dst: Gid, payload: &[u8], now: Instant) -> Route {
        if self.serves_locally(&dst) {
            return Route::Nowhere;
        }
        let sent = self.with_peers(|_, peers| {
            let peer = peers.locate(&dst)?;
            let hdr = FrameHeader {
                kind: Kind::Cm as u8,
                src_gid: src,
                dst_gid: dst,
                ..Default::default()
            };
            peers.send(peer, hdr, payload);
            Some(())
        });
        if sent.flatten().is_some() {
            self.flush_links();
            return Route::Sent;
        }
        match self.links.as_mut() {
            Some(links) if links.dials_on_demand() => match links.route_to(&dst, now) {
                Ok(()) => Route::Dialing,
                Err(why) => {
                    debug!("rdma_cm: no router for {}: {why}", gid_text(&dst));
                    Route::Nowhere
                }
            },
            _ => Route::Nowhere,
        }
    }

    /// True if some session of this router has GID `gid`.
    pub(crate) fn serves_locally(&self, gid: &Gid) -> bool {
        self.remote.served.contains(gid)
    }

    /// The GIDs of rdma_cm ids connected to other routers, which this
    /// router goes on serving while they last, with or without a session
    /// (announced again if they changed).
    pub(crate) fn hold_cm_gids(&mut self, gids: std::collections::BTreeSet<Gid>) {
        if gids != self.remote.cm_held {
            self.remote.cm_held = gids;
            self.announce_gids();
        }
    }

    /// Records which GIDs this router serves and tells the peers (call
    /// whenever sessions come or go).
    pub fn announce_gids(&mut self) {
        self.remote.served = self.tables.sessions.values().map(|s| s.gid).collect();
        self.remote
            .served
            .extend(self.remote.cm_held.iter().copied());
        let t = &self.tables;
        let nic_ud_qps = t
            .qps
            .values()
            .filter(|q| q.kind == QpKind::Ud && q.nic_backed)
            .filter_map(|q| Some((q.qpn, t.sessions.get(&q.session)?.gid)))
            .collect();
        let nic_gids = match self.nic.as_mut() {
            Some(n) => {
                n.retain(&self.remote.served);
                n.nic_gids()
            }
            None => Vec::new(),
        };
        if let Some(links) = self.links.as_mut() {
            links.set_served(
                self.remote.served.iter().copied().collect(),
                nic_gids,
                nic_ud_qps,
            );
        }
    }

    /// The peer router an RC/UC QP's path leads to, if it names a GID
    /// another router serves (and that router is up), or the one its
    /// requests are still in flight to.
    pub(super) fn remote_route(&self, h: u32) -> Option<PeerId> {
        if let Some(peer) = self.remote.req.get(&h).and_then(Requester::in_flight_to) {
            return Some(peer);
        }
        let peers = self.peers()?;
        let a = &self.tables.qps[&h];
        if a.kind == QpKind::Ud || !a.attr.ah_attr.is_global {
            return None;
        }
        let dgid = a.attr.ah_attr.dgid;
        if self.serves_locally(&dgid) {
            return None;
        }
        peers.locate(&dgid)
    }

    /// The earliest instant a remote requester or a link must be looked at
    /// again.
    pub(super) fn remote_deadline(&self) -> Option<Instant> {
        let q = self
            .remote
            .req
            .values()
            .filter_map(Requester::next_deadline)
            .min();
        let l = self.links.as_ref().and_then(|l| l.next_deadline());
        match (q, l) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// With a cap on link bytes per user: counts each user's unanswered
    /// bytes on the links (call at the start of a pass).
    pub(super) fn count_link_bytes(&mut self) {
        self.remote.link_bytes.clear();
        if self.tables.limits.link_bytes_per_uid.is_none() {
            return;
        }
        for (h, r) in &self.remote.req {
            let Some(s) = self
                .tables
                .qps
                .get(h)
                .and_then(|q| self.tables.sessions.get(&q.session))
            else {
                continue;
            };
            *self.remote.link_bytes.entry(s.uid).or_default() += r.unanswered_bytes();
        }
    }

    /// A QP was reset or destroyed: its remote state goes.
    pub(super) fn forget_remote(&mut self, h: u32) {
        self.remote.req.remove(&h);
        self.remote.resp.remove(&h);
    }

    /// A QP entered the error state: nothing more is sent for it, nothing
    /// more is answered; a receive taken by a message still arriving is
    /// flushed (it left the ring).
    pub(super) fn remote_entered_error(&mut self, h: u32) {
        self.remote.req.remove(&h);
        self.responder_entered_error(h);
    }

    fn responder_entered_error(&mut self, h: u32) {
        let Some(r) = self.remote.resp.get_mut(&h) else {
            return;
        };
        for rwqe in r.entered_error() {
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
            self.post_async_event(crate::events::AsyncTarget::Cq(cq), IBV_EVENT_CQ_ERR);
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
    /// error state: at once if nothing is in flight; otherwise once the
    /// requests it answered are completed, in order, and the first
    /// unanswered one failed with IBV_WC_RETRY_EXC_ERR (UC: is lost).
    fn peer_down(&mut self, peer: PeerId, gids: &[Gid]) {
        self.remote.cm_lost.extend_from_slice(gids);
        let hit: Vec<u32> = self
            .tables
            .qps
            .iter()
            .filter(|(h, q)| {
                q.kind != QpKind::Ud
                    && qp_state::receives(q.state())
                    && ((q.attr.ah_attr.is_global && gids.contains(&q.attr.ah_attr.dgid))
                        || self.remote.req.get(h).is_some_and(|r| r.peer() == peer))
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
            let retries = Retries::of(qp);
            let draining = self
                .remote
                .req
                .get_mut(&h)
                .is_some_and(|r| r.peer_lost(&retries));
            if !draining {
                self.to_error(h);
            }
        }
    }

    // ---- requester ----------------------------------------------------

    /// Runs the send queue of a QP whose peer is on another host: completes
    /// what was answered, then sends more as the window and the link allow.
    pub(super) fn run_remote(&mut self, h: u32, peer: PeerId, now: Instant) -> bool {
        // The requester is out of the table while the engine works with it;
        // it goes back unless the QP failed (then its requester is gone, as
        // `remote_entered_error` would have made it).
        let mut r = match self.remote.req.remove(&h) {
            Some(r) => r,
            None => Requester::new(peer, self.tables.qps[&h].attr.sq_psn),
        };
        let Some(progress) = self.complete_answered(h, &mut r, now) else {
            return true;
        };
        let sent = self
            .with_peers(|eng, peers| eng.send_within_allowance(h, &mut r, peers, now))
            .unwrap_or(Some(false));
        match sent {
            Some(sent) => {
                self.remote.req.insert(h, r);
                progress | sent
            }
            None => true,
        }
    }

    /// [`Engine::send_requests`] within the allowance of the QP's user
    /// under the link-bytes cap (`limits::Limits::link_allowance`).
    fn send_within_allowance(
        &mut self,
        h: u32,
        r: &mut Requester,
        peers: &mut dyn Transport,
        now: Instant,
    ) -> Option<bool> {
        let uid = self.tables.sessions[&self.tables.qps[&h].session].uid;
        let in_flight = self.remote.link_bytes.get(&uid).copied().unwrap_or(0);
        let Some(left) = self.tables.limits.link_allowance(in_flight) else {
            return self.send_requests(h, r, peers, now);
        };
        let mut capped = Allowance {
            peers,
            left,
            sent: 0,
        };
        let sent = self.send_requests(h, r, &mut capped, now);
        *self.remote.link_bytes.entry(uid).or_default() += capped.sent;
        // Held back: the allowance ran out with more to send while the
        // link itself had room.
        let pending = self.tables.qps.get(&h).and_then(|q| q.sq_pending());
        let held = sent.is_some()
            && capped.left == 0
            && capped.peers.has_room(r.peer())
            && pending.is_some_and(|p| r.has_more(p));
        if held {
            self.tables
                .budget
                .refused(crate::limits::Cap::LinkBytesPerUser);
        }
        sent
    }

    /// Lets `r` send QP `h`'s requests on `peers`. Some: whether it sent
    /// anything; None: the QP failed and is in the error state now.
    fn send_requests(
        &mut self,
        h: u32,
        r: &mut Requester,
        peers: &mut dyn Transport,
        now: Instant,
    ) -> Option<bool> {
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
        let retries = Retries::of(qp);
        let mem = self.memory_of(h);
        let sq = PostedSends { engine: self, h };
        match r.transmit(&base, &retries, &mem, &sq, peers, now) {
            Transmitted::Sent(sent) => Some(sent),
            Transmitted::Violation => {
                self.resync_after_violation(h);
                None
            }
            Transmitted::Refused(wqe, status) => {
                if self.cq_free(self.tables.qps[&h].send_cq) == 0 {
                    return Some(false); // the error completion needs room
                }
                self.fail_requester(h, &wqe, status);
                None
            }
            Transmitted::Local(wqe) => {
                if self.cq_free(self.tables.qps[&h].send_cq) == 0 {
                    return Some(false);
                }
                match self.run_window_op(h, &wqe) {
                    super::Outcome::Failed => None,
                    _ => Some(true),
                }
            }
        }
    }

    /// Completes answered requests at the head, in order, as far as the
    /// send CQ has room. A failed one fails the QP (None).
    fn complete_answered(&mut self, h: u32, r: &mut Requester, now: Instant) -> Option<bool> {
        let retries = Retries::of(&self.tables.qps[&h]);
        let mut progress = false;
        loop {
            let (wqe, status, byte_len) = match r.head(now, &retries) {
                Head::Waiting => return Some(progress),
                Head::PeerGone => {
                    self.to_error(h);
                    return None;
                }
                Head::Answered {
                    wqe,
                    status,
                    byte_len,
                } => (*wqe, status, byte_len),
            };
            let qp = &self.tables.qps[&h];
            if status != IBV_WC_SUCCESS {
                if self.cq_free(qp.send_cq) == 0 {
                    return Some(progress); // the error completion needs room too
                }
                self.fail_requester(h, &wqe, status);
                return None;
            }
            let signaled = flowverbs_verbs::opcode::signaled(qp.sq_sig_all, wqe.send_flags);
            if signaled && self.cq_free(qp.send_cq) == 0 {
                return Some(progress);
            }
            r.pop_head();
            self.finish_send(h, &wqe, byte_len);
            progress = true;
        }
    }

    /// An Ack, Nak or READ data for one of our requests.
    fn on_response(&mut self, from: PeerId, hdr: &FrameHeader, payload: &[u8], now: Instant) {
        let Some(&ha) = self.tables.qpns.get(&hdr.dst_qpn.get()) else {
            return;
        };
        let a = &self.tables.qps[&ha];
        let ours = self.tables.sessions[&a.session].gid == hdr.dst_gid
            && a.attr.ah_attr.dgid == hdr.src_gid
            && a.attr.dest_qp_num == hdr.src_qpn.get();
        if !ours {
            return;
        }
        let retries = Retries::of(a);
        let mem = self.memory_of(ha);
        if let Some(r) = self.remote.req.get_mut(&ha).filter(|r| r.peer() == from) {
            r.on_answer(hdr, payload, &retries, &mem, now);
        }
    }

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
            Kind::Cm => self
                .remote
                .cm_frames
                .push((hdr.src_gid, hdr.dst_gid, payload.to_vec())),
            Kind::Hello | Kind::Announce => {}
        }
    }

    // ---- datagrams ----------------------------------------------------

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
        let r = self.with_peers(|_, peers| {
            let Some(peer) = peers.locate(&w.dgid) else {
                return Ok(());
            };
            if !peers.has_room(peer) {
                debug!("datagram to {} dropped: link full", gid_text(&w.dgid));
                return Ok(());
            }
            let mut bytes = vec![0u8; len as usize];
            src.read(0, &mut bytes).map_err(|_| IBV_WC_LOC_PROT_ERR)?;
            peers.send(peer, hdr, &bytes);
            Ok(())
        });
        r.unwrap_or(Ok(()))
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
}
