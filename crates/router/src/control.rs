//! Control requests from one session: creation, modification and
//! destruction of verbs objects, one file per object as in the provider's
//! `verbs/` (pd_mr, cq, qp, srq; semi mode's requests are `crate::semi`'s).
//! Every handle is checked to belong to the requesting session; every
//! value is checked against the device limits.

mod cq;
mod mw;
mod pd_mr;
mod qp;
pub use qp::waits_for_registry;
mod srq;

use std::os::fd::{AsRawFd, OwnedFd};

use log::debug;

use flowverbs_sys::*;
use flowverbs_wire::control::{ArenaRun, QpAttr, QpCaps, Reply, Request};
use flowverbs_wire::limits::*;
use flowverbs_wire::segment::{create_sealed_memfd, CqLayout, Mapping, QpLayout, SrqLayout};

use super::engine::Engine;
use super::limits::Usage;
use super::objects::{Cq, Mr, Mw, NewRing, Pd, Qp, SessionId, Srq};
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

/// A verb refused by one of the router's caps (`limits`): its errno and
/// message, which the provider logs (at `FLOWVERBS_LOG=info`).
pub(super) fn refused(r: crate::limits::Refusal) -> Answer {
    err(r.errno(), r.message)
}

fn count<T>(
    map: &rustc_hash::FxHashMap<u32, T>,
    session: SessionId,
    owner: impl Fn(&T) -> SessionId,
) -> usize {
    map.values().filter(|v| owner(v) == session).count()
}

/// The handles of `session`'s objects in `map`.
fn handles_of<T>(
    map: &rustc_hash::FxHashMap<u32, T>,
    session: SessionId,
    owner: impl Fn(&T) -> SessionId,
) -> Vec<u32> {
    map.iter()
        .filter(|(_, v)| owner(v) == session)
        .map(|(h, _)| *h)
        .collect()
}

/// True when `handle` names an object of `session` in `map`.
fn owned<T>(
    map: &rustc_hash::FxHashMap<u32, T>,
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
    fds: Vec<OwnedFd>,
) -> Answer {
    if let Err(r) = engine
        .tables
        .admit_request(session, &request, std::time::Instant::now())
    {
        return refused(r);
    }
    match request {
        Request::Hello { .. } => err(libc::EPROTO, "session already established"),
        Request::DeviceView | Request::Status => err(
            libc::EPROTO,
            "DeviceView and Status are asked on a connection of their own, before Hello",
        ),
        Request::AllocPd => pd_mr::alloc_pd(engine, session),
        Request::DeallocPd { pd } => pd_mr::dealloc_pd(engine, session, pd),
        Request::RegMr {
            pd,
            addr,
            iova,
            length,
            access,
            runs,
            nic_key,
        } => {
            let range = pd_mr::Range { addr, iova, length };
            pd_mr::reg_mr(engine, session, pd, range, access, runs, nic_key, fds)
        }
        Request::DeregMr { mr } => pd_mr::dereg_mr(engine, session, mr),
        Request::AllocMw {
            pd,
            mw_type,
            nic_rkey,
        } => mw::alloc_mw(engine, session, pd, mw_type, nic_rkey),
        Request::DeallocMw { mw } => mw::dealloc_mw(engine, session, mw),
        Request::SemiWindow { qp, op } => engine.semi_window(session, qp, &op),
        Request::SemiInvalidate { qp, rkey } => engine.semi_invalidate(session, qp, rkey),
        Request::CreateCq {
            cqe,
            channel,
            cookie,
        } => cq::create_cq(engine, session, cqe, channel, cookie),
        Request::DestroyCq { cq } => cq::destroy_cq(engine, session, cq),
        Request::ResizeCq { cq, cqe } => cq::resize_cq(engine, session, cq, cqe),
        Request::CommitCqResize { cq } => cq::commit_cq_resize(engine, session, cq),
        Request::CreateQp {
            pd,
            qp_type,
            send_cq,
            recv_cq,
            srq,
            caps,
            sq_sig_all,
            cookie,
            nic_qpn,
        } => qp::create_qp(
            engine, session, pd, qp_type, send_cq, recv_cq, srq, caps, sq_sig_all, cookie, nic_qpn,
        ),
        Request::CreateSrq {
            pd,
            max_wr,
            max_sge,
            srq_limit,
            cookie,
            nic,
        } => srq::create_srq(engine, session, pd, max_wr, max_sge, srq_limit, cookie, nic),
        Request::ModifySrq {
            srq,
            max_wr,
            srq_limit,
            mask,
        } => srq::modify_srq(engine, session, srq, max_wr, srq_limit, mask),
        Request::QuerySrq { srq } => srq::query_srq(engine, session, srq),
        Request::DestroySrq { srq } => srq::destroy_srq(engine, session, srq),
        Request::ModifyQp { qp, attr, mask } => qp::modify_qp(engine, session, qp, attr, mask),
        Request::ResolveKey { qp, key, dest_qpn } => engine.resolve_key(session, qp, key, dest_qpn),
        Request::SemiDatagramPeer { qp, dest_qpn, dgid } => {
            engine.semi_datagram_peer(session, qp, dest_qpn, dgid)
        }
        Request::SemiConnect { qp } => engine.semi_connect(session, qp),
        Request::NicAddress { dgid } => {
            match (engine.nic.as_ref(), engine.tables.sessions.get(&session)) {
                (Some(n), Some(s)) => match n.address(&s.gid, &dgid, engine) {
                    Ok(r) => Answer::ok(r),
                    Err((errno, why)) => err(errno, why),
                },
                _ => err(libc::EINVAL, "this router has no NIC"),
            }
        }
        Request::NicSource { nic_gid, qpn } => match engine.nic.as_ref() {
            Some(n) => match n.source(&nic_gid, qpn, engine) {
                Ok(r) => Answer::ok(r),
                Err(why) => err(libc::ENOENT, why),
            },
            None => err(libc::EINVAL, "this router has no NIC"),
        },
        Request::SemiError {
            qp,
            own,
            peer_event,
        } => engine.semi_error(session, qp, own, peer_event),
        Request::QueryQp { qp } => qp::query_qp(engine, session, qp),
        Request::DestroyQp { qp } => qp::destroy_qp(engine, session, qp),
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
    for h in handles_of(&engine.tables.qps, session, |q| q.session) {
        engine.remove_qp(h);
    }
    for h in handles_of(&engine.tables.mws, session, |w| w.session) {
        mw::remove_mw(engine, h);
    }
    for h in handles_of(&engine.tables.mrs, session, |m| m.session) {
        pd_mr::remove_mr(engine, h);
    }
    let t = &mut engine.tables;
    t.cqs.retain(|_, c| c.session != session);
    t.srqs.retain(|_, s| s.session != session);
    t.pds.retain(|_, p| p.session != session);
    if let Some(mut s) = t.sessions.remove(&session) {
        let held = s.usage;
        t.budget.release(s.uid, &mut s.usage, held);
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
                nic: engine
                    .nic
                    .as_ref()
                    .filter(|_| engine.key_table.is_some())
                    .map(|n| n.nic_for(&s.gid).device.clone()),
                qp_list,
            }
        })
        .collect();
    out.sort_by_key(|s| s.pid);
    out
}
