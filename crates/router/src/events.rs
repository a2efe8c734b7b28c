//! Events the router writes straight into descriptors that libibverbs reads:
//! completion events on completion channels (`ibv_get_cq_event`) and
//! asynchronous events on the context's `async_fd` (`ibv_get_async_event`).
//! Both are pipes made by the provider in the client's process; the router
//! holds their write ends, nonblocking, and never waits on them: an event
//! that does not fit (a client that never reads) is dropped and logged.

use std::os::fd::OwnedFd;

use log::{debug, warn};

use flowverbs_sys::*;
use flowverbs_wire::entries::Cqe;
use flowverbs_wire::events::{async_event_record, cq_event_record};

use super::engine::Engine;
use super::objects::SessionId;

/// What an async event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsyncTarget {
    /// A QP, by handle (its element is the client's `ibv_qp *`).
    Qp(u32),
    /// A CQ, by handle.
    Cq(u32),
    /// A shared receive queue, by handle (element: the `ibv_srq *`).
    Srq(u32),
    /// A port of a session's device (element: the port number).
    Port(SessionId, u8),
    /// A session's device as a whole.
    Device(SessionId),
}

/// Writes one whole record to a nonblocking pipe; false if it did not fit
/// or the reader is gone.
fn write_record(fd: &OwnedFd, record: &[u8]) -> bool {
    match nix::unistd::write(fd, record) {
        Ok(n) if n == record.len() => true,
        Ok(_) => false,
        Err(nix::errno::Errno::EPIPE) => false,
        Err(e) => {
            warn!("writing an event: {e}");
            false
        }
    }
}

impl Engine {
    /// Posts an async event: `event_type` is an `enum ibv_event_type`.
    /// The one entry point for every async event the router reports
    /// (QP errors, port and device events, and for SRQs the same way).
    pub fn post_async_event(&mut self, target: AsyncTarget, event_type: u32) {
        let t = &mut self.tables;
        let (session, element) = match target {
            AsyncTarget::Qp(h) => match t.qps.get_mut(&h) {
                Some(q) => {
                    q.async_events = q.async_events.wrapping_add(1);
                    (q.session, q.cookie)
                }
                None => return,
            },
            AsyncTarget::Cq(h) => match t.cqs.get(&h) {
                Some(c) => (c.session, c.cookie),
                None => return,
            },
            AsyncTarget::Srq(h) => match t.srqs.get_mut(&h) {
                Some(s) => {
                    s.async_events = s.async_events.wrapping_add(1);
                    (s.session, s.cookie)
                }
                None => return,
            },
            AsyncTarget::Port(s, port) => (s, u64::from(port)),
            AsyncTarget::Device(s) => (s, 0),
        };
        let Some(s) = t.sessions.get(&session) else {
            return;
        };
        debug!("session {session}: async event {event_type} for {target:?}");
        if !write_record(&s.async_events, &async_event_record(element, event_type)) {
            warn!("session {session}: async event {event_type} for {target:?} dropped (pipe full or closed)");
            match target {
                AsyncTarget::Qp(h) => {
                    if let Some(q) = t.qps.get_mut(&h) {
                        q.async_events = q.async_events.wrapping_sub(1);
                    }
                }
                AsyncTarget::Srq(h) => {
                    if let Some(s) = t.srqs.get_mut(&h) {
                        s.async_events = s.async_events.wrapping_sub(1);
                    }
                }
                _ => {}
            }
        }
    }

    /// Writes a CQE on a CQ's ring and publishes it; then, if the CQ has a
    /// channel and is armed for this CQE, writes one completion event.
    /// `solicited`: a receive completion of a message sent with
    /// `IBV_SEND_SOLICITED` (error completions always count as solicited).
    /// The arm/publish ordering is argued at `wire::segment::CqHeader::arm`.
    pub fn publish_cqe(&mut self, cq: u32, cqe: &Cqe, solicited: bool) {
        let t = &mut self.tables;
        let Some(c) = t.cqs.get_mut(&cq) else {
            return;
        };
        let cqe = Cqe {
            from_router: 1,
            ..*cqe
        };
        if !c.cq_ring().push(&cqe) {
            // Callers check room first; a client that moved its own
            // indices loses the completion.
            warn!("cq {cq}: full, completion of qp {:#x} lost", cqe.qp_num);
            return;
        }
        let Some(_) = c.channel else {
            return;
        };
        let solicited = solicited || cqe.status != IBV_WC_SUCCESS;
        if !c.header().take_arm(solicited) {
            return;
        }
        self.write_cq_event(cq);
    }

    /// Writes one completion event for `cq` to its channel.
    pub fn write_cq_event(&mut self, cq: u32) {
        let t = &mut self.tables;
        let Some(c) = t.cqs.get_mut(&cq) else {
            return;
        };
        let Some(fd) = c.channel else {
            return;
        };
        let pipe = t.sessions.get(&c.session).and_then(|s| s.channels.get(&fd));
        match pipe {
            Some(p) if write_record(p, &cq_event_record(c.cookie)) => {
                c.events = c.events.wrapping_add(1);
            }
            _ => debug!("cq {cq}: completion event lost (channel {fd} closed or full)"),
        }
    }
}
