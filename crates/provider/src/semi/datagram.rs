//! Semi mode for UD QPs: a datagram to a UD QP of this host whose process
//! shares memory with this one (the router's trust group) is delivered by
//! the sending provider itself, into the destination's receive (after the
//! 40-byte GRH area) and CQ, with the checks and statuses of the router's
//! datagram path (`router::engine::datagram`). Everything else (another
//! host, another trust group, a request the router would fail, a full CQ)
//! goes on the QP's send ring to the router, as in isolated mode.
//!
//! Order: the send queue completes in order, so a datagram is delivered
//! here only while the router has nothing of this QP left on its ring (it
//! publishes a send completion before it moves its consumer index);
//! otherwise it goes on the ring behind the others.
//!
//! Receives are taken by compare-and-swap: other senders' providers and
//! the router take from the same queue.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

use super::{copy_ascending, Clock, CqView, KeyCache, PeerRings, Scratch, Seg, SemiContext};
use crate::context::ContextInner;
use crate::cq_rings::CqRings;
use flowverbs_sys::*;
use flowverbs_verbs::access;
use flowverbs_verbs::opcode::{self, completion_opcode};
use flowverbs_verbs::{qp, receive, ud};
use flowverbs_wire::control::Request;
use flowverbs_wire::entries::{Cqe, SendWqe};
use flowverbs_wire::limits::GRH_SIZE;
use flowverbs_wire::segment::QpHeader;

/// How long a destination the router refused (another host, another trust
/// group, no such QP yet) goes through the router before it is asked again.
const REASK_AFTER: Duration = Duration::from_millis(100);

/// A destination: its QPN and, if the address handle has a GRH, its GID.
type Dest = (u32, Option<[u8; 16]>);

/// A destination whose receive side this process maps.
struct Peer {
    rings: PeerRings,
    keys: KeyCache,
}

/// One UD QP's datagrams that this provider delivers itself.
pub struct DatagramPath {
    qp_handle: u32,
    qpn: u32,
    pd: u32,
    sq_sig_all: bool,
    max_send_sge: u32,
    send_cq: CqView,
    /// The QP's own header: its Q_Key, and what this path moved.
    own: *const QpHeader,
    /// Work requests put on the router's send ring (its producer index).
    pub ring_producer: u32,
    peers: FxHashMap<Dest, Peer>,
    refused: HashMap<Dest, Instant>,
    scratch: Scratch,
    ctx: *const ContextInner,
}

// SAFETY: pointers into mappings that outlive the path (the QP's own
// segment and send CQ, the context); access is serialised by the Mutex
// around it.
unsafe impl Send for DatagramPath {}

/// What a UD QP's datagram path needs of the QP.
pub struct NewDatagramPath {
    pub qp_handle: u32,
    pub qpn: u32,
    pub pd: u32,
    pub sq_sig_all: bool,
    pub max_send_sge: u32,
    /// The QP's send CQ (which outlives it).
    pub send_cq: *const CqRings,
    pub own_header: *const QpHeader,
}

impl DatagramPath {
    pub fn new(ctx: &ContextInner, n: NewDatagramPath) -> DatagramPath {
        DatagramPath {
            qp_handle: n.qp_handle,
            qpn: n.qpn,
            pd: n.pd,
            sq_sig_all: n.sq_sig_all,
            max_send_sge: n.max_send_sge,
            send_cq: CqView::own(ctx, n.send_cq),
            own: n.own_header,
            ring_producer: 0,
            peers: FxHashMap::default(),
            refused: HashMap::new(),
            scratch: Scratch::default(),
            ctx: ctx as *const ContextInner,
        }
    }

    fn ctx(&self) -> &ContextInner {
        // SAFETY: the context outlives its QPs and their paths.
        unsafe { &*self.ctx }
    }

    fn semi(&self) -> &SemiContext {
        self.ctx().semi.as_ref().expect("semi context")
    }

    fn own(&self) -> &QpHeader {
        // SAFETY: the QP's own segment outlives its path.
        unsafe { &*self.own }
    }

    /// The router has taken everything this QP put on its ring: a datagram
    /// delivered here now completes after all of them.
    pub fn ring_idle(&self) -> bool {
        self.own().sq.consumer() == self.ring_producer
    }

    /// The router's view of the QP's state allows sending.
    fn sending(&self) -> bool {
        self.own().state.load(std::sync::atomic::Ordering::Acquire) == IBV_QPS_RTS
    }

    /// Delivers work request `w` (send-queue index + 1 `sq_index`) here and
    /// completes it, if this provider can; false: it goes to the router.
    pub fn deliver(&mut self, w: &SendWqe, clock: &mut Clock) -> bool {
        if !self.ring_idle() || !self.sending() {
            return false;
        }
        let (mut local, mut remote) = self.scratch.take();
        let done = self.deliver_with(w, clock, &mut local, &mut remote);
        self.scratch.put_back(local, remote);
        done
    }

    fn deliver_with(
        &mut self,
        w: &SendWqe,
        clock: &mut Clock,
        local: &mut Vec<Seg>,
        dst: &mut Vec<Seg>,
    ) -> bool {
        // The requester's checks: any failure is the router's to report.
        let Ok(shape) = opcode::shape(
            IBV_QPT_UD,
            w.opcode,
            w.send_flags,
            w.num_sge,
            w.inline_len,
            self.max_send_sge,
        ) else {
            return false;
        };
        if shape.inline {
            let b = w.inline_bytes();
            local.push((b.as_ptr() as *mut u8, b.len()));
        } else if self
            .semi()
            .local_segments(self.pd, w, false, local)
            .is_err()
        {
            return false;
        }
        let len: u64 = local.iter().map(|s| s.1 as u64).sum();
        if ud::check_len(len).is_err() {
            return false;
        }
        let signaled = opcode::signaled(self.sq_sig_all, w.send_flags);
        if signaled && !self.send_cq.has_room() {
            return false;
        }
        let dest: Dest = (w.remote_qpn, (w.ah_global != 0).then_some(w.dgid));
        let own_qkey = self.own().qkey.load(std::sync::atomic::Ordering::Acquire);
        let qkey = ud::qkey(w.remote_qkey, own_qkey);
        let (ctx, qp_handle, qpn) = (self.ctx, self.qp_handle, self.qpn);
        let Some(peer) = self.peer(dest, clock) else {
            return false;
        };
        // SAFETY: the context outlives its QPs and their paths.
        let ctx = unsafe { &*ctx };
        let hdr = peer.rings.header();
        let state = hdr.state.load(std::sync::atomic::Ordering::Acquire);
        if state == IBV_QPS_RESET {
            // Destroyed or reset since it was granted: ask again later.
            self.peers.remove(&dest);
            return false;
        }
        let accepts = hdr.qp_type.load(std::sync::atomic::Ordering::Acquire) == IBV_QPT_UD
            && qp::receives(state)
            && hdr.qkey.load(std::sync::atomic::Ordering::Acquire) == qkey;
        if accepts {
            if !peer.rings.cq.has_room() {
                return false;
            }
            // The receive: checked, then taken (or lost to another
            // sender: the next one), then written.
            // (No receive posted: the datagram is lost.)
            while let Some((r, at, max_sge)) = peer.rings.peek_receive() {
                dst.clear();
                let keys = &mut peer.keys;
                let rings = &peer.rings;
                let sges = r.sges().iter().map(|s| {
                    let n = u64::from(s.length);
                    let view = keys.get(ctx, qp_handle, rings.qpn, s.lkey);
                    let region = view.map(|k| k.region());
                    access::local(region.as_ref(), 0, s.addr, n, true)?;
                    if n > 0 && !view.is_some_and(|k| k.segments(s.addr, n, dst)) {
                        return Err(IBV_WC_LOC_PROT_ERR);
                    }
                    Ok(n)
                });
                if receive::check(r.num_sge, max_sge, sges, len + u64::from(GRH_SIZE)).is_err() {
                    // The router fails the receive and the destination QP.
                    return false;
                }
                if !peer.rings.claim_receive(ctx, at) {
                    continue;
                }
                let grh = ud::grh(
                    &ctx.gid,
                    &peer.rings.gid,
                    &ud::Packet {
                        payload_len: len as u32,
                        with_imm: w.opcode == IBV_WR_SEND_WITH_IMM,
                        hop_limit: w.hop_limit as u8,
                        traffic_class: w.traffic_class as u8,
                    },
                );
                local.insert(0, (grh.as_ptr() as *mut u8, grh.len()));
                copy_ascending(local, dst, len + u64::from(GRH_SIZE));
                let imm = (w.opcode == IBV_WR_SEND_WITH_IMM).then_some(w.imm_data);
                let cqe = Cqe::datagram_received(
                    r.wr_id,
                    len as u32,
                    imm,
                    peer.rings.qpn,
                    qpn,
                    ud::SL_IPV4_GRH,
                );
                peer.rings.cq.push(&cqe);
                peer.rings
                    .cq
                    .notify(ctx, w.send_flags & IBV_SEND_SOLICITED != 0);
                break;
            }
        }
        self.own()
            .semi_moved
            .count(w.opcode, len, w.send_flags & IBV_SEND_INLINE != 0);
        if signaled {
            let cqe = Cqe::sent(
                w,
                completion_opcode(w.opcode),
                IBV_WC_SUCCESS,
                len,
                self.qpn,
            );
            self.send_cq.push(&cqe);
            self.send_cq.notify(ctx, false);
        }
        true
    }

    /// The receive side of destination `dest`, granted by the router (asked
    /// once; a refusal is remembered for [`REASK_AFTER`]).
    fn peer(&mut self, dest: Dest, clock: &mut Clock) -> Option<&mut Peer> {
        if !self.peers.contains_key(&dest) {
            if self
                .refused
                .get(&dest)
                .is_some_and(|t| clock.now().duration_since(*t) < REASK_AFTER)
            {
                return None;
            }
            let granted = PeerRings::grant(
                self.ctx(),
                Request::SemiDatagramPeer {
                    qp: self.qp_handle,
                    dest_qpn: dest.0,
                    dgid: dest.1,
                },
            );
            match granted {
                Ok(rings) => {
                    self.refused.remove(&dest);
                    let peer = Peer {
                        rings,
                        keys: KeyCache::default(),
                    };
                    self.peers.insert(dest, peer);
                }
                Err(_) => {
                    self.refused.insert(dest, clock.now());
                    return None;
                }
            }
        }
        self.peers.get_mut(&dest)
    }
}
