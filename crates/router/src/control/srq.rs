//! Shared receive queues: `ibv_create_srq`, `ibv_modify_srq`, `ibv_query_srq`, `ibv_destroy_srq`.
//! Every handle is checked to belong to the requesting session; every
//! value against the device limits.

use super::*;
use std::sync::atomic::Ordering;

#[allow(clippy::too_many_arguments)]
pub(super) fn create_srq(
    engine: &mut Engine,
    session: SessionId,
    pd: u32,
    max_wr: u32,
    max_sge: u32,
    srq_limit: u32,
    cookie: u64,
    nic: bool,
) -> Answer {
    if nic && engine.nic.is_none() {
        return err(libc::EINVAL, "a NIC-backed SRQ, but this router has no NIC");
    }
    let t = &mut engine.tables;
    if !owned(&t.pds, pd, session, |p| p.session) {
        return err(libc::EINVAL, "no such protection domain");
    }
    if max_wr == 0 || max_wr > MAX_SRQ_WR || max_sge > MAX_SGE {
        return err(
            libc::EINVAL,
            format!("SRQ max_wr {max_wr} max_sge {max_sge} outside the device limits"),
        );
    }
    if count(&t.srqs, session, |s| s.session) >= MAX_SRQ as usize {
        return err(libc::ENOMEM, "too many shared receive queues");
    }
    let layout = SrqLayout::new(max_wr);
    let cost = Usage::srq(layout.capacity);
    if let Err(r) = t.charge(session, cost) {
        return refused(r);
    }
    let (fd, map) = match segment("fv-srq", layout.size) {
        Ok(x) => x,
        Err(e) => {
            t.release(session, cost);
            return err(libc::ENOMEM, format!("SRQ segment: {e}"));
        }
    };
    let srq = engine.tables.handle();
    // srq_limit is ignored at creation (ibv_create_srq(3)); it is
    // armed with ibv_modify_srq.
    let _ = srq_limit;
    let mut s = Srq::new(session, pd, map, layout, MAX_SGE);
    s.cookie = cookie;
    s.nic_backed = nic;
    s.header().max_sge.store(MAX_SGE, Ordering::Release);
    if engine.key_table.is_some() {
        s.segment_fd = fd.try_clone().ok();
    }
    engine.tables.srqs.insert(srq, s);
    Answer {
        reply: Reply::Srq {
            srq,
            capacity: layout.capacity,
            max_sge: MAX_SGE,
            segment_size: layout.size as u64,
        },
        fds: vec![fd],
    }
}

pub(super) fn modify_srq(
    engine: &mut Engine,
    session: SessionId,
    srq: u32,
    max_wr: u32,
    srq_limit: u32,
    mask: u32,
) -> Answer {
    let t = &mut engine.tables;
    let Some(s) = t.srqs.get_mut(&srq).filter(|s| s.session == session) else {
        return err(libc::EINVAL, "no such shared receive queue");
    };
    if mask & !(IBV_SRQ_MAX_WR | IBV_SRQ_LIMIT) != 0 {
        return err(libc::EINVAL, format!("SRQ attribute mask {mask:#x}"));
    }
    if mask & IBV_SRQ_MAX_WR != 0 && (max_wr == 0 || max_wr > s.ring.capacity()) {
        return err(
            libc::EINVAL,
            "resizing a shared receive queue beyond its size is not supported",
        );
    }
    if mask & IBV_SRQ_LIMIT != 0 {
        if srq_limit > s.ring.capacity() {
            return err(libc::EINVAL, format!("srq_limit {srq_limit} above max_wr"));
        }
        s.header().limit.store(srq_limit, Ordering::Release);
    }
    Answer::ok(Reply::Done)
}

pub(super) fn query_srq(engine: &mut Engine, session: SessionId, srq: u32) -> Answer {
    let t = &mut engine.tables;
    match t.srqs.get(&srq).filter(|s| s.session == session) {
        Some(s) => Answer::ok(Reply::SrqAttr {
            max_wr: s.ring.capacity(),
            max_sge: s.max_sge,
            srq_limit: s.header().limit.load(Ordering::Acquire),
        }),
        None => err(libc::EINVAL, "no such shared receive queue"),
    }
}

pub(super) fn destroy_srq(engine: &mut Engine, session: SessionId, srq: u32) -> Answer {
    let t = &mut engine.tables;
    if !owned(&t.srqs, srq, session, |s| s.session) {
        return err(libc::EINVAL, "no such shared receive queue");
    }
    if t.qps.values().any(|q| q.srq == srq) {
        return err(libc::EBUSY, "shared receive queue still used by a QP");
    }
    let Some(s) = t.srqs.remove(&srq) else {
        return err(libc::EINVAL, "no such shared receive queue");
    };
    t.release(session, Usage::srq(s.ring.capacity()));
    let events = s.async_events;
    Answer::ok(Reply::Destroyed { events })
}
