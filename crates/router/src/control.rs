//! Control requests from one session: creation, modification and
//! destruction of verbs objects. Every handle is checked to belong to the
//! requesting session; every value is checked against the device limits.

use std::os::fd::{AsRawFd, OwnedFd};

use log::debug;

use flowverbs_sys::*;
use flowverbs_wire::control::{QpCaps, Reply, Request};
use flowverbs_wire::limits::*;
use flowverbs_wire::segment::{create_sealed_memfd, CqLayout, Mapping, QpLayout, SrqLayout};

use super::engine::Engine;
use super::objects::{Cq, Mr, Pd, Qp, SessionId, Srq};
use flowverbs_verbs::qp::{self as qp_state, QpKind};

/// A reply and the descriptors that travel with it.
pub struct Answer {
    pub reply: Reply,
    pub fds: Vec<OwnedFd>,
}

impl Answer {
    pub(super) fn ok(reply: Reply) -> Answer {
        Answer {
            reply,
            fds: Vec::new(),
        }
    }
}

pub(super) fn err(errno: i32, message: impl Into<String>) -> Answer {
    let message = message.into();
    debug!("request refused ({errno}): {message}");
    Answer::ok(Reply::Error { errno, message })
}

fn count<T>(
    map: &std::collections::HashMap<u32, T>,
    session: SessionId,
    owner: impl Fn(&T) -> SessionId,
) -> usize {
    map.values().filter(|v| owner(v) == session).count()
}

/// True when `handle` names an object of `session` in `map`.
fn owned<T>(
    map: &std::collections::HashMap<u32, T>,
    handle: u32,
    session: SessionId,
    owner: impl Fn(&T) -> SessionId,
) -> bool {
    map.get(&handle).is_some_and(|v| owner(v) == session)
}

pub fn handle(
    engine: &mut Engine,
    session: SessionId,
    request: Request,
    mut fds: Vec<OwnedFd>,
) -> Answer {
    let semi = engine.key_table.is_some();
    let t = &mut engine.tables;
    match request {
        Request::Hello { .. } => err(libc::EPROTO, "session already established"),
        Request::DeviceView | Request::Status => err(
            libc::EPROTO,
            "DeviceView and Status are asked on a connection of their own, before Hello",
        ),
        Request::AllocPd => {
            if count(&t.pds, session, |p| p.session) >= MAX_PD as usize {
                return err(libc::ENOMEM, "too many protection domains");
            }
            let pd = t.handle();
            t.pds.insert(pd, Pd { session });
            Answer::ok(Reply::Pd { pd })
        }
        Request::DeallocPd { pd } => {
            if !owned(&t.pds, pd, session, |p| p.session) {
                return err(libc::EINVAL, "no such protection domain");
            }
            let busy = t.mrs.values().any(|m| m.pd == pd)
                || t.qps.values().any(|q| q.pd == pd)
                || t.srqs.values().any(|s| s.pd == pd);
            if busy {
                return err(
                    libc::EBUSY,
                    "protection domain still has memory regions or QPs",
                );
            }
            t.pds.remove(&pd);
            Answer::ok(Reply::Done)
        }
        Request::RegMr {
            pd,
            addr,
            length,
            access,
            runs,
        } => {
            if !owned(&t.pds, pd, session, |p| p.session) {
                return err(libc::EINVAL, "no such protection domain");
            }
            let known = IBV_ACCESS_LOCAL_WRITE
                | IBV_ACCESS_REMOTE_WRITE
                | IBV_ACCESS_REMOTE_READ
                | IBV_ACCESS_REMOTE_ATOMIC
                | IBV_ACCESS_ZERO_BASED
                | IBV_ACCESS_RELAXED_ORDERING;
            if access & !known != 0 || access & IBV_ACCESS_ZERO_BASED != 0 {
                return err(
                    libc::EINVAL,
                    format!("unsupported access flags {access:#x}"),
                );
            }
            let needs_local_write = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC;
            if access & needs_local_write != 0 && access & IBV_ACCESS_LOCAL_WRITE == 0 {
                return err(
                    libc::EINVAL,
                    "remote write/atomic access requires IBV_ACCESS_LOCAL_WRITE",
                );
            }
            if length > MAX_MR_SIZE || addr.checked_add(length).is_none() {
                return err(libc::EINVAL, "memory region too large");
            }
            if count(&t.mrs, session, |m| m.session) >= MAX_MR as usize {
                return err(libc::ENOMEM, "too many memory regions");
            }
            let memory = t.sessions[&session].memory.clone();
            let writable = access & IBV_ACCESS_LOCAL_WRITE != 0;
            if length > 0 {
                if let Err(e) = memory.check_mapped(addr, length, writable) {
                    return err(
                        e.raw_os_error().unwrap_or(libc::EFAULT),
                        "range is not mapped (with the needed protection)",
                    );
                }
            }
            if !runs.is_empty() {
                if !semi {
                    return err(libc::EINVAL, "arena runs outside semi mode");
                }
                if let Err(why) = super::semi::check_runs(addr, length, &runs) {
                    return err(libc::EINVAL, why);
                }
                if let Some(fd) = fds.pop() {
                    t.sessions.get_mut(&session).expect("session").arena = Some(fd);
                }
                if t.sessions[&session].arena.is_none() {
                    return err(libc::EINVAL, "arena runs without an arena");
                }
            }
            let mr = t.handle();
            let key = t.new_key();
            let slot = if runs.is_empty() {
                None
            } else {
                match engine.key_table.as_mut().and_then(|k| k.add(key)) {
                    Some(s) => Some(s),
                    None => return err(libc::ENOMEM, "key table full"),
                }
            };
            let t = &mut engine.tables;
            t.keys.insert(key, mr);
            t.mrs.insert(
                mr,
                Mr {
                    session,
                    pd,
                    addr,
                    length,
                    access,
                    lkey: key,
                    rkey: key,
                    slot,
                    runs,
                },
            );
            Answer::ok(Reply::Mr {
                mr,
                lkey: key,
                rkey: key,
            })
        }
        Request::DeregMr { mr } => match t.mrs.get(&mr) {
            Some(m) if m.session == session => {
                let (key, slot) = (m.lkey, m.slot);
                t.keys.remove(&key);
                t.mrs.remove(&mr);
                if let (Some(slot), Some(k)) = (slot, engine.key_table.as_mut()) {
                    k.remove(slot);
                }
                Answer::ok(Reply::Done)
            }
            _ => err(libc::EINVAL, "no such memory region"),
        },
        Request::CreateCq {
            cqe,
            channel,
            cookie,
        } => {
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
            if let Err(why) = t.charge(session) {
                return err(libc::ENOMEM, why);
            }
            let (fd, map) = match segment("fv-cq", layout.size) {
                Ok(x) => x,
                Err(e) => {
                    t.release(session);
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
        Request::DestroyCq { cq } => {
            if !owned(&t.cqs, cq, session, |c| c.session) {
                return err(libc::EINVAL, "no such completion queue");
            }
            if t.qps.values().any(|q| q.send_cq == cq || q.recv_cq == cq) {
                return err(libc::EBUSY, "completion queue still used by a QP");
            }
            let events = t.cqs.remove(&cq).map_or(0, |c| c.events);
            t.release(session);
            Answer::ok(Reply::Destroyed { events })
        }
        Request::CreateQp {
            pd,
            qp_type,
            send_cq,
            recv_cq,
            srq,
            caps,
            sq_sig_all,
            cookie,
        } => {
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
            let layout = QpLayout::new(caps.max_send_wr, rq_wr);
            let caps = QpCaps {
                max_send_wr: layout.sq_capacity,
                max_recv_wr: if srq != 0 { 0 } else { layout.rq_capacity },
                max_send_sge: MAX_SGE,
                max_recv_sge: if srq != 0 { 0 } else { MAX_SGE },
                max_inline_data: MAX_INLINE_DATA,
            };
            let Some(qpn) = t.new_qpn() else {
                return err(libc::ENOMEM, "out of QP numbers");
            };
            if let Err(why) = t.charge(session) {
                return err(libc::ENOMEM, why);
            }
            let (fd, map) = match segment("fv-qp", layout.size) {
                Ok(x) => x,
                Err(e) => {
                    t.release(session);
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
            if semi {
                q.segment_fd = fd.try_clone().ok();
            }
            t.qps.insert(qp, q);
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
        Request::CreateSrq {
            pd,
            max_wr,
            max_sge,
            srq_limit,
            cookie,
        } => {
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
            if let Err(why) = t.charge(session) {
                return err(libc::ENOMEM, why);
            }
            let (fd, map) = match segment("fv-srq", layout.size) {
                Ok(x) => x,
                Err(e) => {
                    t.release(session);
                    return err(libc::ENOMEM, format!("SRQ segment: {e}"));
                }
            };
            let srq = t.handle();
            // srq_limit is ignored at creation (ibv_create_srq(3)); it is
            // armed with ibv_modify_srq.
            let _ = srq_limit;
            let mut s = Srq::new(session, pd, map, layout, MAX_SGE, 0);
            s.cookie = cookie;
            t.srqs.insert(srq, s);
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
        Request::ModifySrq {
            srq,
            max_wr,
            srq_limit,
            mask,
        } => {
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
                s.limit = srq_limit;
            }
            Answer::ok(Reply::Done)
        }
        Request::QuerySrq { srq } => match t.srqs.get(&srq).filter(|s| s.session == session) {
            Some(s) => Answer::ok(Reply::SrqAttr {
                max_wr: s.ring.capacity(),
                max_sge: s.max_sge,
                srq_limit: s.limit,
            }),
            None => err(libc::EINVAL, "no such shared receive queue"),
        },
        Request::DestroySrq { srq } => {
            if !owned(&t.srqs, srq, session, |s| s.session) {
                return err(libc::EINVAL, "no such shared receive queue");
            }
            if t.qps.values().any(|q| q.srq == srq) {
                return err(libc::EBUSY, "shared receive queue still used by a QP");
            }
            let events = t.srqs.remove(&srq).map_or(0, |s| s.async_events);
            t.release(session);
            Answer::ok(Reply::Destroyed { events })
        }
        Request::ModifyQp { qp, attr, mask } => {
            let Some(q) = t.qps.get_mut(&qp).filter(|q| q.session == session) else {
                return err(libc::EINVAL, "no such QP");
            };
            let next = match qp_state::check_modify(q.kind, q.state(), &attr, mask) {
                Ok(n) => n,
                Err(qp_state::Invalid(why)) => return err(libc::EINVAL, why),
            };
            qp_state::apply(&mut q.attr, &attr, mask);
            let prev = q.state();
            q.set_state(next);
            if next == qp_state::RESET {
                q.semi = false;
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
            if next == qp_state::RTR && prev != qp_state::RTR {
                if let Some(a) = engine.connect_semi(qp) {
                    return a;
                }
            }
            Answer::ok(Reply::Done)
        }
        Request::ResolveKey { qp, key } => engine.resolve_key(session, qp, key),
        Request::SemiConnect { qp } => engine.semi_connect(session, qp),
        Request::SemiError {
            qp,
            own,
            peer_event,
        } => engine.semi_error(session, qp, own, peer_event),
        Request::QueryQp { qp } => match t.qps.get(&qp).filter(|q| q.session == session) {
            Some(q) => {
                let mut attr = q.attr;
                attr.cur_qp_state = attr.qp_state;
                attr.cap = q.caps;
                Answer::ok(Reply::QpAttr { attr })
            }
            None => err(libc::EINVAL, "no such QP"),
        },
        Request::DestroyQp { qp } => {
            if !owned(&t.qps, qp, session, |q| q.session) {
                return err(libc::EINVAL, "no such QP");
            }
            let events = t.qps[&qp].async_events;
            engine.remove_qp(qp);
            engine.tables.release(session);
            Answer::ok(Reply::Destroyed { events })
        }
    }
}

/// A new sealed segment and the router's mapping of it.
pub fn segment(name: &str, size: usize) -> std::io::Result<(OwnedFd, Mapping)> {
    let fd = create_sealed_memfd(name, size)?;
    let map = Mapping::map(&fd, size)?;
    debug!("segment {name} fd {} size {size}", fd.as_raw_fd());
    Ok((fd, map))
}

/// Releases everything a session owned.
pub fn close_session(engine: &mut Engine, session: SessionId) {
    let qps: Vec<u32> = engine
        .tables
        .qps
        .iter()
        .filter(|(_, q)| q.session == session)
        .map(|(h, _)| *h)
        .collect();
    for h in qps {
        engine.remove_qp(h);
    }
    let t = &mut engine.tables;
    t.cqs.retain(|_, c| c.session != session);
    t.srqs.retain(|_, s| s.session != session);
    let keys: Vec<u32> = t
        .mrs
        .values()
        .filter(|m| m.session == session)
        .map(|m| m.lkey)
        .collect();
    for k in keys {
        t.keys.remove(&k);
    }
    t.mrs.retain(|_, m| m.session != session);
    t.pds.retain(|_, p| p.session != session);
    if let Some(s) = t.sessions.remove(&session) {
        t.budget.release(s.uid, s.objects);
    }
}

/// What the router did since it started: closed QPs' counts plus the live
/// ones'.
pub fn totals(engine: &Engine) -> flowverbs_wire::control::RouterTotals {
    let mut t = engine.totals;
    for q in engine.tables.qps.values() {
        t.moved.add(&q.moved());
    }
    t
}

/// The router's sessions that `visible` accepts, and what each owns, for
/// `flowverbs status`.
pub fn status(
    engine: &Engine,
    visible: impl Fn(&super::objects::Session) -> bool,
) -> Vec<flowverbs_wire::control::SessionStatus> {
    let t = &engine.tables;
    let mut out: Vec<_> = t
        .sessions
        .iter()
        .filter(|(_, s)| visible(s))
        .map(|(&id, s)| {
            let mut qp_list: Vec<_> = t
                .qps
                .iter()
                .filter(|(_, q)| q.session == id)
                .map(|(&h, q)| flowverbs_wire::control::QpStatus {
                    qpn: q.qpn,
                    qp_type: q.kind.ibv_type(),
                    state: q.state(),
                    dest_qpn: q.attr.dest_qp_num,
                    path: engine.path_of(h),
                    moved: q.moved(),
                })
                .collect();
            qp_list.sort_by_key(|q| q.qpn);
            flowverbs_wire::control::SessionStatus {
                pid: s.memory.pid,
                uid: s.uid,
                gid: s.gid,
                pds: count(&t.pds, id, |p| p.session) as u32,
                mrs: count(&t.mrs, id, |m| m.session) as u32,
                cqs: count(&t.cqs, id, |c| c.session) as u32,
                qps: qp_list.len() as u32,
                srqs: count(&t.srqs, id, |s| s.session) as u32,
                qp_list,
            }
        })
        .collect();
    out.sort_by_key(|s| s.pid);
    out
}
