//! The isolated engine's datagrams: a UD send on this host (delivered
//! after a 40-byte GRH, or lost as on a fabric) or to another host's router.

use flowverbs_sys::*;
use flowverbs_verbs::qp::{self as qp_state, QpKind};
use flowverbs_verbs::ud;
use flowverbs_wire::entries::{Cqe, SendWqe};
use flowverbs_wire::limits::GRH_SIZE;
use flowverbs_wire::ring::Take;

use super::{Engine, Outcome, Source, CHUNK};
use crate::objects::Stall;

/// A datagram arriving at a UD QP: who sent it and how.
pub struct Datagram {
    pub sgid: [u8; 16],
    pub src_qpn: u32,
    pub imm: Option<u32>,
    pub solicited: bool,
    pub hop_limit: u8,
    pub traffic_class: u8,
}

impl Engine {
    /// A UD send: one datagram of at most the MTU to `remote_qpn`, delivered
    /// after a 40-byte GRH, or silently lost (unknown destination, wrong
    /// Q_Key, no receive posted) as on a real fabric. The sender's
    /// completion does not depend on delivery. A datagram to a GID another
    /// router serves goes over the link to it.
    pub(super) fn execute_ud(&mut self, ha: u32, w: &SendWqe, src: &Source, len: u64) -> Outcome {
        if let Err(status) = ud::check_len(len) {
            self.fail_requester(ha, w, status);
            return Outcome::Failed;
        }
        let a = &self.tables.qps[&ha];
        let qkey = ud::qkey(w.remote_qkey, a.attr.qkey);
        let qpn_a = a.qpn;
        let sgid = self.tables.sessions[&a.session].gid;
        if w.ah_global != 0 && !self.serves_locally(&w.dgid) {
            match self.send_datagram(&sgid, qpn_a, w, qkey, src, len) {
                Ok(()) => {}
                Err(status) => {
                    self.fail_requester(ha, w, status);
                    return Outcome::Failed;
                }
            }
            self.finish_send(ha, w, len);
            return Outcome::Done;
        }
        let dest = self.tables.qpns.get(&w.remote_qpn).copied().filter(|hb| {
            let b = &self.tables.qps[hb];
            b.kind == QpKind::Ud
                && qp_state::receives(b.state())
                && b.attr.qkey == qkey
                && (w.ah_global == 0 || w.dgid == self.tables.sessions[&b.session].gid)
        });
        if let Some(hb) = dest {
            let d = Datagram {
                sgid,
                src_qpn: qpn_a,
                imm: (w.opcode == IBV_WR_SEND_WITH_IMM).then_some(w.imm_data),
                solicited: w.send_flags & IBV_SEND_SOLICITED != 0,
                hop_limit: w.hop_limit as u8,
                traffic_class: w.traffic_class as u8,
            };
            if !self.deliver_ud(hb, &d, src, len) {
                return Outcome::Stalled(Stall::CqFull);
            }
        }
        self.finish_send(ha, w, len);
        Outcome::Done
    }

    /// Delivers one datagram of `len` bytes from `src` to UD QP `hb` (whose
    /// Q_Key and state the caller checked): into the receive at the head of
    /// its queue, after the GRH, or dropped if no receive is posted. False
    /// if the receiver's CQ is full (nothing was consumed).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver_ud(&mut self, hb: u32, d: &Datagram, src: &Source, len: u64) -> bool {
        let (sgid, src_qpn, imm, solicited) = (&d.sgid, d.src_qpn, d.imm, d.solicited);
        let recv_cq = self.tables.qps[&hb].recv_cq;
        // Senders' providers take from the queue too (semi mode).
        self.sync_rq(hb);
        match self.recv_pending(hb) {
            None => {
                self.recv_violation(hb);
                return true;
            }
            Some(0) => return true,
            Some(_) => {}
        }
        if self.cq_free(recv_cq) == 0 {
            return false;
        }
        // Taken before anything is written (other senders take from the
        // same queue); a lost race finds it empty: the datagram drops.
        let (rwqe, max_sge) = match self.take_recv(hb) {
            Take::Taken { entry, .. } => entry,
            Take::Empty => return true,
            Take::Violation => {
                self.recv_violation(hb);
                return true;
            }
        };
        let dgid = self.tables.sessions[&self.tables.qps[&hb].session].gid;
        let qpn_b = self.tables.qps[&hb].qpn;
        let (segs, verdict) = self.receive_segments(hb, &rwqe, max_sge, len + u64::from(GRH_SIZE));
        let dst = verdict.map(|()| segs).map_err(|f| f.receive);
        let mem_b = self.memory_of(hb);
        let delivered = dst.and_then(|dst| {
            let grh = ud::grh(
                sgid,
                &dgid,
                &ud::Packet {
                    payload_len: len as u32,
                    with_imm: imm.is_some(),
                    hop_limit: d.hop_limit,
                    traffic_class: d.traffic_class,
                },
            );
            mem_b
                .write_segments(&dst, 0, &grh)
                .map_err(|_| IBV_WC_LOC_PROT_ERR)?;
            // The payload follows the GRH in the receive's byte stream.
            let mut off = 0u64;
            while off < len {
                let n = ((len - off) as usize).min(CHUNK);
                let buf = &mut self.bounce[..n];
                src.read(off, buf).map_err(|_| IBV_WC_LOC_PROT_ERR)?;
                mem_b
                    .write_segments(&dst, u64::from(GRH_SIZE) + off, buf)
                    .map_err(|_| IBV_WC_LOC_PROT_ERR)?;
                off += n as u64;
            }
            Ok(())
        });
        let cqe = match delivered {
            Ok(()) => {
                Cqe::datagram_received(rwqe.wr_id, len as u32, imm, qpn_b, src_qpn, ud::SL_IPV4_GRH)
            }
            Err(status) => Cqe::receive_failed(rwqe.wr_id, status, qpn_b, src_qpn),
        };
        let failed = cqe.status != IBV_WC_SUCCESS;
        self.publish_cqe(recv_cq, &cqe, solicited);
        if failed {
            self.to_error(hb);
        }
        true
    }
}
