//! Memory windows on the router's paths: the window operations of a send
//! queue (BIND_MW, LOCAL_INV), an RDMA access through a window's rkey, and
//! a SEND_WITH_INV's invalidation at the responder, all under the rules of
//! `flowverbs_verbs::window`. The windows live in the router's tables; a
//! semi-mode provider asks for these through [`Engine::semi_window`] and
//! [`Engine::semi_invalidate`].

use flowverbs_sys::*;
use flowverbs_verbs::access::Region;
use flowverbs_verbs::window::{Bind, Window, LOCAL_INV_ERROR, REMOTE_INV_ERROR};
use flowverbs_wire::control::{Reply, WindowOp};
use flowverbs_wire::entries::SendWqe;
use log::warn;

use super::{Engine, Outcome};
use crate::control::{err, Answer};
use crate::objects::SessionId;

impl Engine {
    /// Runs window operation `op` of QP `h`: the status of its completion.
    pub(crate) fn window_op(&mut self, h: u32, op: &WindowOp) -> u32 {
        let qp = &self.tables.qps[&h];
        let (session, pd) = (qp.session, qp.pd);
        match op.opcode {
            IBV_WR_BIND_MW => self.bind_window(h, session, pd, op),
            IBV_WR_LOCAL_INV if self.invalidate_window(session, pd, op.rkey) => IBV_WC_SUCCESS,
            IBV_WR_LOCAL_INV => LOCAL_INV_ERROR,
            _ => IBV_WC_LOC_QP_OP_ERR,
        }
    }

    /// The work request at the head of QP `h`'s send queue is a window
    /// operation: runs it and completes it.
    pub(super) fn run_window_op(&mut self, h: u32, w: &SendWqe) -> Outcome {
        match self.window_op(h, &WindowOp::of(w)) {
            IBV_WC_SUCCESS => {
                self.finish_send(h, w, 0);
                Outcome::Done
            }
            status => {
                self.fail_requester(h, w, status);
                Outcome::Failed
            }
        }
    }

    fn bind_window(&mut self, h: u32, session: SessionId, pd: u32, op: &WindowOp) -> u32 {
        let t = &self.tables;
        let Some(w) = t.mws.get(&op.mw).filter(|w| w.session == session) else {
            return IBV_WC_MW_BIND_ERR;
        };
        let mr = t
            .keys
            .get(&op.lkey)
            .and_then(|m| Some((*m, t.mrs.get(m)?)))
            .filter(|(_, m)| m.session == session && m.lkey == op.lkey)
            .map(|(handle, m)| (handle, m.region()));
        let bind = Bind {
            qp: h,
            qp_pd: pd,
            mr: mr.as_ref().map(|(handle, r)| (*handle, r)),
            addr: op.addr,
            length: op.length,
            access: op.access,
            rkey: op.rkey,
        };
        match w.window.bind(&bind) {
            Ok(window) => {
                self.set_window(op.mw, window);
                IBV_WC_SUCCESS
            }
            Err(status) => status,
        }
    }

    /// Invalidates `rkey` if it is the rkey of a bound type 2 window of
    /// `session` in protection domain `pd` (false otherwise).
    fn invalidate_window(&mut self, session: SessionId, pd: u32, rkey: u32) -> bool {
        let t = &self.tables;
        let found = t.window_keys.get(&(rkey >> 8)).and_then(|h| {
            let w = t.mws.get(h).filter(|w| w.session == session)?;
            Some((*h, w.window.invalidate(rkey, pd)?))
        });
        if let Some((h, window)) = found {
            self.set_window(h, window);
        }
        found.is_some()
    }

    /// A SEND_WITH_INV naming `rkey` arrived at QP `hb`: Err is the
    /// requester's status (the responder's receive fails with it too).
    pub(super) fn invalidate_at_responder(&mut self, hb: u32, rkey: u32) -> Result<(), u32> {
        let b = &self.tables.qps[&hb];
        if self.invalidate_window(b.session, b.pd, rkey) {
            Ok(())
        } else {
            Err(REMOTE_INV_ERROR)
        }
    }

    /// Window `mw` is now `window`; its rkey is live in the key table (semi
    /// mode) while it is bound, under a new slot after every change.
    fn set_window(&mut self, mw: u32, window: Window) {
        let Some(w) = self.tables.mws.get_mut(&mw) else {
            return;
        };
        w.window = window;
        if let Some(k) = self.key_table.as_mut() {
            if let Some(slot) = w.slot.take() {
                k.remove(slot);
            }
            if window.binding.is_some() {
                w.slot = k.add(window.rkey);
                if w.slot.is_none() {
                    warn!("key table full: semi-mode senders cannot reach window {mw}");
                }
            }
        }
    }

    /// What an RDMA access under `key` at responder QP `hb` may reach: a
    /// memory region of its session, or a window bound for this QP.
    pub(super) fn remote_region(&self, hb: u32, key: u32) -> Option<Region> {
        let b = &self.tables.qps[&hb];
        self.region(b.session, key).or_else(|| {
            let h = self.tables.window_keys.get(&(key >> 8))?;
            let w = self.tables.mws.get(h).filter(|w| w.session == b.session)?;
            w.window.region(key, hb)
        })
    }

    /// `Request::SemiWindow`: a window operation of the session's semi QP.
    pub fn semi_window(&mut self, session: SessionId, h: u32, op: &WindowOp) -> Answer {
        let own = self
            .tables
            .qps
            .get(&h)
            .is_some_and(|q| q.session == session && q.semi);
        if !own {
            return err(libc::EINVAL, "no such semi-mode QP");
        }
        let status = self.window_op(h, op);
        Answer::ok(Reply::WcStatus { status })
    }

    /// `Request::SemiInvalidate`: the session's semi QP `h` delivered a
    /// SEND_WITH_INV of `rkey` to its responder.
    pub fn semi_invalidate(&mut self, session: SessionId, h: u32, rkey: u32) -> Answer {
        let Some(hb) = self.semi_responder(session, h) else {
            return err(libc::ENOENT, "the QP's responder is gone");
        };
        let status = match self.invalidate_at_responder(hb, rkey) {
            Ok(()) => IBV_WC_SUCCESS,
            Err(status) => status,
        };
        Answer::ok(Reply::WcStatus { status })
    }
}
