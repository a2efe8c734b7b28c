//! What a router that went away leaves behind. A NIC's driver, after a
//! fatal error, completes every outstanding work request with a flush
//! error (mlx5 does, so that applications polling a CQ see the end
//! without reading async events); fv0 does the same once the router is
//! gone (`IBV_EVENT_DEVICE_FATAL` was posted, by the router as it shut
//! down or by the watcher when it vanished): `poll_cq`, once the CQ's ring
//! is empty, completes every work request the router had not taken, and
//! every one posted since, with `IBV_WC_WR_FLUSH_ERR`, in order.
//!
//! The rings' own indices say what the router took: it publishes a
//! completion before it moves a consumer index, so whatever lies between
//! the consumer and the producer has no completion yet. The flush moves
//! the consumer index itself (the router will never again). A receive
//! queue may also be taken by a semi-mode peer's provider, so receives
//! are claimed as the router claims them. Left alone: send queues the
//! provider runs itself (semi mode, datagrams in semi mode, the NIC:
//! they complete on their own paths), and an SRQ's receives (they
//! belong to the SRQ, as when a QP enters the error state).

use super::*;

/// A QP of this context whose queues the flush may complete.
struct Member(*const FvQp);

// SAFETY: the pointer is only dereferenced under the registry's lock, and
// destroy_qp removes it (under that lock) before the QP is freed.
unsafe impl Send for Member {}

/// The context's QPs, for the flush.
#[derive(Default)]
pub struct Flushable(Mutex<Vec<Member>>);

impl Flushable {
    pub(super) fn add(&self, qp: *const FvQp) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Member(qp));
    }

    pub(super) fn remove(&self, qp: *const FvQp) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|m| m.0 != qp);
    }

    /// Writes up to `room` flush completions of the queues that complete
    /// on `cq` at `wc`; returns how many.
    ///
    /// # Safety
    /// `wc` holds `room` entries; `cq` is a CQ of this context.
    pub(super) unsafe fn flush(
        &self,
        ctx: &ContextInner,
        cq: *mut ibv_cq,
        wc: *mut ibv_wc,
        room: u32,
    ) -> u32 {
        let members = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for m in members.iter() {
            // SAFETY: a live QP (see `Member`).
            let qp = unsafe { &*m.0 };
            // SAFETY: the ibv_qp fields filled by create_qp.
            let (send_cq, recv_cq, srq, qpn) = unsafe {
                let q = &qp.vqp.__bindgen_anon_1.qp;
                (q.send_cq, q.recv_cq, q.srq, q.qp_num)
            };
            let provider_runs_sends = qp.nic.is_some()
                || qp.datagrams.is_some()
                || qp.semi.lock().unwrap_or_else(|e| e.into_inner()).is_some();
            let out = |c: Cqe, n: &mut u32| {
                if c.opcode < IBV_WC_RECV {
                    ctx.send_queues.retire(qpn, c.sq_index);
                }
                // SAFETY: the caller's array holds room > n entries.
                unsafe { wc.add(*n as usize).write(wc_of(&c)) };
                *n += 1;
            };
            if send_cq == cq && !provider_runs_sends {
                let ring = &qp.header().sq;
                let _posting = qp.sq_producer.lock().unwrap_or_else(|e| e.into_inner());
                let mut c = ring.consumer();
                while n < room && c != ring.producer() {
                    let w = qp.sq.read(c);
                    let op = flowverbs_verbs::opcode::completion_opcode(w.opcode);
                    out(Cqe::sent(&w, op, IBV_WC_WR_FLUSH_ERR, 0, qpn), &mut n);
                    c = c.wrapping_add(1);
                    ring.publish_consumer(c);
                }
            }
            if recv_cq == cq && srq.is_null() && qp.nic.is_none() {
                let ring = &qp.header().rq;
                while n < room {
                    let c = ring.consumer();
                    if c == ring.producer() {
                        break;
                    }
                    let wr_id = qp.rq.read(c).wr_id;
                    if ring.claim_consumer(c) {
                        out(
                            Cqe::receive_failed(wr_id, IBV_WC_WR_FLUSH_ERR, qpn, 0),
                            &mut n,
                        );
                    }
                }
            }
            if n == room {
                break;
            }
        }
        n
    }
}
