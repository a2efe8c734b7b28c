//! Completion queues: `ibv_create_cq`, `ibv_resize_cq`, `ibv_destroy_cq`.
//! Every handle is checked to belong to the requesting session; every
//! value against the device limits.

use super::*;
use crate::objects::Tables;

pub(super) fn create_cq(
    engine: &mut Engine,
    session: SessionId,
    cqe: u32,
    channel: Option<i32>,
    cookie: u64,
) -> Answer {
    let semi = engine.key_table.is_some();
    let t = &mut engine.tables;
    if cqe == 0 || cqe > MAX_CQE {
        return err(libc::EINVAL, format!("cqe {cqe} outside 1..={MAX_CQE}"));
    }
    if let Some(fd) = channel {
        if !t.sessions[&session].channels.contains_key(&fd) {
            return err(libc::EINVAL, format!("no completion channel {fd}"));
        }
    }
    if count(&t.cqs, session, |c| c.session) >= MAX_CQ as usize {
        return err(libc::ENOMEM, "too many completion queues");
    }
    let layout = CqLayout::new(cqe);
    let (fd, map) = match charged_ring(t, session, layout, Usage::cq(layout.capacity)) {
        Ok(x) => x,
        Err(refusal) => return *refusal,
    };
    let cq = t.handle();
    let mut c = Cq::new(session, map, layout, channel, cookie);
    if semi {
        c.segment_fd = fd.try_clone().ok();
    }
    t.cqs.insert(cq, c);
    ring_answer(cq, layout, fd)
}

/// A CQ ring's segment of `layout`, its `cost` charged to `session`
/// (released again if the segment cannot be made).
fn charged_ring(
    t: &mut Tables,
    session: SessionId,
    layout: CqLayout,
    cost: Usage,
) -> Result<(OwnedFd, Mapping), Box<Answer>> {
    t.charge(session, cost).map_err(|r| Box::new(refused(r)))?;
    segment("fv-cq", layout.size).map_err(|e| {
        t.release(session, cost);
        Box::new(err(libc::ENOMEM, format!("CQ segment: {e}")))
    })
}

/// The answer that hands a CQ ring's segment to its provider.
fn ring_answer(cq: u32, layout: CqLayout, fd: OwnedFd) -> Answer {
    Answer {
        reply: Reply::Cq {
            cq,
            capacity: layout.capacity,
            segment_size: layout.size as u64,
        },
        fds: vec![fd],
    }
}

pub(super) fn destroy_cq(engine: &mut Engine, session: SessionId, cq: u32) -> Answer {
    let t = &mut engine.tables;
    if !owned(&t.cqs, cq, session, |c| c.session) {
        return err(libc::EINVAL, "no such completion queue");
    }
    if t.qps.values().any(|q| q.send_cq == cq || q.recv_cq == cq) {
        return err(libc::EBUSY, "completion queue still used by a QP");
    }
    let Some(c) = t.cqs.remove(&cq) else {
        return err(libc::EINVAL, "no such completion queue");
    };
    t.release(session, Usage::cq(c.ring.capacity()));
    t.release(
        session,
        Usage::cq_ring(c.entries_held() - c.ring.capacity()),
    );
    let events = c.events;
    Answer::ok(Reply::Destroyed { events })
}

/// `ibv_resize_cq`, first step: a new ring of at least `cqe` entries, for
/// the caller to map. As on rxe, `cqe` below the completions the CQ holds
/// is EINVAL (they stay in the old ring until polled, but the verb
/// promises room for them).
pub(super) fn resize_cq(engine: &mut Engine, session: SessionId, cq: u32, cqe: u32) -> Answer {
    let t = &mut engine.tables;
    if !owned(&t.cqs, cq, session, |c| c.session) {
        return err(libc::EINVAL, "no such completion queue");
    }
    if cqe == 0 || cqe > MAX_CQE {
        return err(libc::EINVAL, format!("cqe {cqe} outside 1..={MAX_CQE}"));
    }
    let held = t.cqs[&cq].outstanding();
    if cqe < held {
        return err(
            libc::EINVAL,
            format!("cqe {cqe} is below the {held} completions the CQ holds"),
        );
    }
    let layout = CqLayout::new(cqe);
    let cost = Usage::cq_ring(layout.capacity);
    let (fd, segment) = match charged_ring(t, session, layout, cost) {
        Ok(x) => x,
        Err(refusal) => return *refusal,
    };
    let theirs = match fd.try_clone() {
        Ok(f) => f,
        Err(e) => {
            t.release(session, cost);
            return err(libc::EMFILE, format!("CQ segment: {e}"));
        }
    };
    let c = t.cqs.get_mut(&cq).expect("owned");
    let replaced = c.resizing.replace(NewRing {
        segment,
        fd,
        layout,
    });
    if let Some(r) = replaced {
        t.release(session, Usage::cq_ring(r.layout.capacity));
    }
    ring_answer(cq, layout, theirs)
}

/// `ibv_resize_cq`, second step: the CQ moves to the ring of the first
/// step (`Cq::move_to`).
pub(super) fn commit_cq_resize(engine: &mut Engine, session: SessionId, cq: u32) -> Answer {
    let semi = engine.key_table.is_some();
    let t = &mut engine.tables;
    if !owned(&t.cqs, cq, session, |c| c.session) {
        return err(libc::EINVAL, "no such completion queue");
    }
    let c = t.cqs.get_mut(&cq).expect("owned");
    let Some(new) = c.resizing.take() else {
        return err(libc::EINVAL, "no resize of this completion queue under way");
    };
    let old_capacity = c.ring.capacity();
    let end = c.move_to(new, semi);
    let freed = c.drop_drained();
    debug!(
        "cq {cq}: resized from {old_capacity} to {}, old ring ends at {end}",
        c.ring.capacity()
    );
    t.release(session, Usage::cq_ring(freed));
    Answer::ok(Reply::CqMoved { end })
}
