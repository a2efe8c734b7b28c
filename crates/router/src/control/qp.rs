//! Queue pairs: `ibv_create_qp`, `ibv_modify_qp`, `ibv_query_qp`, `ibv_destroy_qp`.
//! Every handle is checked to belong to the requesting session; every
//! value against the device limits.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) fn create_qp(
    engine: &mut Engine,
    session: SessionId,
    pd: u32,
    qp_type: u32,
    send_cq: u32,
    recv_cq: u32,
    srq: u32,
    caps: QpCaps,
    sq_sig_all: bool,
    cookie: u64,
    nic_qpn: Option<u32>,
) -> Answer {
    let semi = engine.key_table.is_some();
    let nic_qpn = match engine.nic.as_ref() {
        Some(n) => match n.claim_qpn(&engine.tables, qp_type, srq, nic_qpn) {
            Ok(q) => q,
            Err((errno, why)) => return err(errno, why),
        },
        None if nic_qpn.is_some() => {
            return err(libc::EINVAL, "a NIC QP number, but this router has no NIC")
        }
        None => None,
    };
    let t = &mut engine.tables;
    let Some(kind) = QpKind::from_ibv(qp_type) else {
        return err(
            libc::EOPNOTSUPP,
            format!("QP type {qp_type} is not supported"),
        );
    };
    if !owned(&t.pds, pd, session, |p| p.session) {
        return err(libc::EINVAL, "no such protection domain");
    }
    if srq != 0 && !owned(&t.srqs, srq, session, |s| s.session) {
        return err(libc::EINVAL, "no such shared receive queue");
    }
    for cq in [send_cq, recv_cq] {
        if !owned(&t.cqs, cq, session, |c| c.session) {
            return err(libc::EINVAL, "no such completion queue");
        }
    }
    if caps.max_send_wr > MAX_QP_WR
        || caps.max_recv_wr > MAX_QP_WR
        || caps.max_send_sge > MAX_SGE
        || caps.max_recv_sge > MAX_SGE
        || caps.max_inline_data > MAX_INLINE_DATA
    {
        return err(
            libc::EINVAL,
            format!("QP capabilities {caps:?} exceed the device limits"),
        );
    }
    if count(&t.qps, session, |q| q.session) >= MAX_QP as usize {
        return err(libc::ENOMEM, "too many QPs");
    }
    let rq_wr = if srq != 0 { 1 } else { caps.max_recv_wr };
    // The send ring has room for twice the application's send queue: the
    // router publishes a WR's completion before it moves the ring's
    // consumer index past the WR (`Engine::retire_send`), so for a moment
    // one more WR than the application counts as posted is still on the
    // ring (see `provider::verbs::post::post_send`).
    let max_send_wr = caps.max_send_wr.max(1).next_power_of_two();
    let layout = QpLayout::new(2 * max_send_wr, rq_wr);
    let caps = QpCaps {
        max_send_wr,
        max_recv_wr: if srq != 0 { 0 } else { layout.rq_capacity },
        max_send_sge: MAX_SGE,
        max_recv_sge: if srq != 0 { 0 } else { MAX_SGE },
        max_inline_data: MAX_INLINE_DATA,
    };
    let Some(qpn) = nic_qpn.or_else(|| t.new_qpn()) else {
        return err(libc::ENOMEM, "out of QP numbers");
    };
    let cost = Usage::qp(layout.sq_capacity + layout.rq_capacity);
    if let Err(r) = t.charge(session, cost) {
        return refused(r);
    }
    let (fd, map) = match segment("fv-qp", layout.size) {
        Ok(x) => x,
        Err(e) => {
            t.release(session, cost);
            return err(libc::ENOMEM, format!("QP segment: {e}"));
        }
    };
    let qp = t.handle();
    t.qpns.insert(qpn, qp);
    engine.totals.qps += 1;
    let t = &mut engine.tables;
    let mut q = Qp::new(
        session, pd, kind, qpn, send_cq, recv_cq, srq, caps, sq_sig_all, map, layout,
    );
    q.cookie = cookie;
    q.nic_backed = nic_qpn.is_some();
    // A UD QP on the NIC is there from the start: its datagrams name
    // their destination one by one (address handles on the NIC).
    q.on_nic = q.nic_backed && kind == QpKind::Ud;
    let announce = q.on_nic;
    if semi {
        q.segment_fd = fd.try_clone().ok();
    }
    t.qps.insert(qp, q);
    if announce {
        engine.announce_gids();
    }
    Answer {
        reply: Reply::Qp {
            qp,
            qpn,
            caps,
            sq_capacity: layout.sq_capacity,
            rq_capacity: layout.rq_capacity,
            segment_size: layout.size as u64,
        },
        fds: vec![fd],
    }
}

pub(super) fn modify_qp(
    engine: &mut Engine,
    session: SessionId,
    qp: u32,
    attr: QpAttr,
    mask: u32,
) -> Answer {
    let t = &mut engine.tables;
    let Some(q) = t.qps.get_mut(&qp).filter(|q| q.session == session) else {
        return err(libc::EINVAL, "no such QP");
    };
    let next = match qp_state::check_modify(q.kind, q.state(), &attr, mask) {
        Ok(n) => n,
        Err(qp_state::Invalid(why)) => return err(libc::EINVAL, why),
    };
    // A connected QP whose path leads to another host: with the etcd
    // registry its router is looked up (in the cache) and dialled now; a
    // GID no router serves, or a registry that cannot answer, is refused
    // with the QP untouched.
    if next == qp_state::RTR && q.state() != qp_state::RTR && q.kind != QpKind::Ud {
        let mut merged = q.attr;
        qp_state::apply(&mut merged, &attr, mask);
        let dgid = merged.ah_attr.dgid;
        if merged.ah_attr.is_global && !engine.serves_locally(&dgid) {
            if let Some(links) = engine.links.as_mut() {
                if let Err(why) = links.route_to(&dgid, std::time::Instant::now()) {
                    log::warn!("qp {:#x}: {why}", engine.tables.qps[&qp].qpn);
                    return err(libc::EHOSTUNREACH, why);
                }
            }
        }
    }
    let q = engine.tables.qps.get_mut(&qp).expect("checked above");
    // A QP backed by the NIC learns its path at RTR, before anything
    // changes: a path nothing serves is refused with the QP untouched.
    let nic_path = if next == qp_state::RTR && q.state() != qp_state::RTR {
        let mut merged = q.attr;
        qp_state::apply(&mut merged, &attr, mask);
        let nic = engine.nic.as_ref();
        match nic.map_or(Ok(None), |n| n.path_at_rtr(qp, &merged, engine)) {
            Ok(p) => p,
            Err(why) => {
                log::warn!("qp {:#x}: {why}", engine.tables.qps[&qp].qpn);
                return err(libc::EINVAL, why);
            }
        }
    } else {
        None
    };
    let t = &mut engine.tables;
    let q = t.qps.get_mut(&qp).expect("checked above");
    qp_state::apply(&mut q.attr, &attr, mask);
    let prev = q.state();
    q.set_state(next);
    if next == qp_state::RESET {
        q.semi = false;
        q.on_nic = false;
    }
    if next == qp_state::RESET && prev != qp_state::RESET {
        let caps = q.caps;
        q.attr = flowverbs_wire::control::QpAttr {
            cap: caps,
            ..Default::default()
        };
        engine.drain(qp);
    }
    if next == qp_state::ERR && prev != qp_state::ERR {
        engine.entered_error(qp);
    }
    engine.publish_responder_attrs(qp);
    let srq = engine.tables.qps[&qp].srq;
    if let Some(s) = engine.tables.srqs.get_mut(&srq).filter(|s| s.nic_backed) {
        if next == qp_state::RTR && s.on_nic.is_none() {
            s.on_nic = Some(nic_path.is_some());
        }
    }
    if let Some(path) = nic_path {
        engine.tables.qps.get_mut(&qp).expect("live").on_nic = true;
        return Answer::ok(path);
    }
    if next == qp_state::RTR && prev != qp_state::RTR {
        if let Some(a) = engine.connect_semi(qp) {
            return a;
        }
    }
    Answer::ok(Reply::Done)
}

/// Whether this ModifyQp must wait for the location registry: the RTR
/// transition of a connected QP whose path names a GID of another host
/// that the etcd registry (in sync) does not know yet: it may be a GID
/// registered a moment ago, whose watch event is on its way. The server
/// holds the request (not the data path) and answers it once the GID is
/// known or its wait is over (`modify_qp` then fails it).
pub fn waits_for_registry(
    engine: &Engine,
    session: SessionId,
    qp: u32,
    attr: &QpAttr,
    mask: u32,
) -> bool {
    let Some(links) = engine.links.as_ref() else {
        return false;
    };
    let Some(q) = engine.tables.qps.get(&qp).filter(|q| q.session == session) else {
        return false;
    };
    if q.kind == QpKind::Ud || q.state() == qp_state::RTR {
        return false;
    }
    if qp_state::check_modify(q.kind, q.state(), attr, mask) != Ok(qp_state::RTR) {
        return false;
    }
    let mut merged = q.attr;
    qp_state::apply(&mut merged, attr, mask);
    merged.ah_attr.is_global
        && !engine.serves_locally(&merged.ah_attr.dgid)
        && links.route_pending(&merged.ah_attr.dgid)
}

pub(super) fn query_qp(engine: &mut Engine, session: SessionId, qp: u32) -> Answer {
    let t = &mut engine.tables;
    match t.qps.get(&qp).filter(|q| q.session == session) {
        Some(q) => {
            let mut attr = q.attr;
            attr.cur_qp_state = attr.qp_state;
            attr.cap = q.caps;
            Answer::ok(Reply::QpAttr { attr })
        }
        None => err(libc::EINVAL, "no such QP"),
    }
}

pub(super) fn destroy_qp(engine: &mut Engine, session: SessionId, qp: u32) -> Answer {
    let t = &mut engine.tables;
    if !owned(&t.qps, qp, session, |q| q.session) {
        return err(libc::EINVAL, "no such QP");
    }
    let events = t.qps[&qp].async_events;
    let announce = t.qps[&qp].on_nic && t.qps[&qp].kind == QpKind::Ud;
    let cost = Usage::qp(t.qps[&qp].sq.capacity() + t.qps[&qp].rq.capacity());
    engine.remove_qp(qp);
    if announce {
        engine.announce_gids();
    }
    engine.tables.release(session, cost);
    Answer::ok(Reply::Destroyed { events })
}
