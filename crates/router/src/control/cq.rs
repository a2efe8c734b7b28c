//! Completion queues: `ibv_create_cq`, `ibv_destroy_cq`.
//! Every handle is checked to belong to the requesting session; every
//! value against the device limits.

use super::*;

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
    let cost = Usage::cq(layout.capacity);
    if let Err(r) = t.charge(session, cost) {
        return refused(r);
    }
    let (fd, map) = match segment("fv-cq", layout.size) {
        Ok(x) => x,
        Err(e) => {
            t.release(session, cost);
            return err(libc::ENOMEM, format!("CQ segment: {e}"));
        }
    };
    let cq = t.handle();
    let mut c = Cq::new(session, map, layout, channel, cookie);
    if semi {
        c.segment_fd = fd.try_clone().ok();
    }
    t.cqs.insert(cq, c);
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
    let events = c.events;
    Answer::ok(Reply::Destroyed { events })
}
