//! Protection domains and memory regions: `ibv_alloc_pd`, `ibv_dealloc_pd`, `ibv_reg_mr`, `ibv_dereg_mr`.
//! Every handle is checked to belong to the requesting session; every
//! value against the device limits.

use super::*;

pub(super) fn alloc_pd(engine: &mut Engine, session: SessionId) -> Answer {
    let t = &mut engine.tables;
    if count(&t.pds, session, |p| p.session) >= MAX_PD as usize {
        return err(libc::ENOMEM, "too many protection domains");
    }
    let pd = t.handle();
    t.pds.insert(pd, Pd { session });
    Answer::ok(Reply::Pd { pd })
}

pub(super) fn dealloc_pd(engine: &mut Engine, session: SessionId, pd: u32) -> Answer {
    let t = &mut engine.tables;
    if !owned(&t.pds, pd, session, |p| p.session) {
        return err(libc::EINVAL, "no such protection domain");
    }
    let busy = t.mrs.values().any(|m| m.pd == pd)
        || t.mws.values().any(|w| w.window.pd == pd)
        || t.qps.values().any(|q| q.pd == pd)
        || t.srqs.values().any(|s| s.pd == pd);
    if busy {
        return err(
            libc::EBUSY,
            "protection domain still has memory regions, windows or QPs",
        );
    }
    t.pds.remove(&pd);
    Answer::ok(Reply::Done)
}

/// What an MR registers: `[addr, addr + length)` of the caller's memory,
/// addressed as `[iova, iova + length)`.
pub(super) struct Range {
    pub addr: u64,
    pub iova: u64,
    pub length: u64,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn reg_mr(
    engine: &mut Engine,
    session: SessionId,
    pd: u32,
    range: Range,
    access: u32,
    runs: Vec<ArenaRun>,
    nic_key: Option<u32>,
    mut fds: Vec<OwnedFd>,
) -> Answer {
    let nic_key = match engine
        .nic
        .as_ref()
        .map(|n| n.claim_key(&engine.tables, nic_key))
    {
        Some(Err(why)) => return err(libc::EBUSY, why),
        Some(Ok(k)) => k,
        None if nic_key.is_some() => {
            return err(libc::EINVAL, "a NIC key, but this router has no NIC")
        }
        None => None,
    };
    let semi = engine.key_table.is_some();
    let t = &mut engine.tables;
    if !owned(&t.pds, pd, session, |p| p.session) {
        return err(libc::EINVAL, "no such protection domain");
    }
    let known = IBV_ACCESS_LOCAL_WRITE
        | IBV_ACCESS_REMOTE_WRITE
        | IBV_ACCESS_REMOTE_READ
        | IBV_ACCESS_REMOTE_ATOMIC
        | IBV_ACCESS_MW_BIND
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
    let Range { addr, iova, length } = range;
    if length > MAX_MR_SIZE
        || addr.checked_add(length).is_none()
        || iova.checked_add(length).is_none()
    {
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
        if let Err(why) = crate::semi::check_runs(addr, length, &runs) {
            return err(libc::EINVAL, why);
        }
        if let Some(fd) = fds.pop() {
            t.sessions.get_mut(&session).expect("session").arena = Some(fd);
        }
        if t.sessions[&session].arena.is_none() {
            return err(libc::EINVAL, "arena runs without an arena");
        }
    }
    let cost = Usage::mr(length);
    if let Err(r) = t.charge(session, cost) {
        return refused(r);
    }
    let mr = t.handle();
    let key = nic_key.unwrap_or_else(|| t.new_key());
    let slot = if runs.is_empty() {
        None
    } else {
        match engine.key_table.as_mut().and_then(|k| k.add(key)) {
            Some(s) => Some(s),
            None => {
                engine.tables.release(session, cost);
                return err(libc::ENOMEM, "key table full");
            }
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
            iova,
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

/// A region with memory windows bound to it stays (EINVAL, as rxe: IB
/// spec 10.6.7.2.1, the windows must be unbound first).
pub(super) fn dereg_mr(engine: &mut Engine, session: SessionId, mr: u32) -> Answer {
    let t = &engine.tables;
    if !owned(&t.mrs, mr, session, |m| m.session) {
        return err(libc::EINVAL, "no such memory region");
    }
    let bound = t
        .mws
        .values()
        .any(|w| w.window.binding.is_some_and(|b| b.mr == mr));
    if bound {
        return err(libc::EINVAL, "memory windows are bound to the region");
    }
    remove_mr(engine, mr);
    Answer::ok(Reply::Done)
}

/// Removes region `mr`: its key, its key-table slot and what it cost.
pub(super) fn remove_mr(engine: &mut Engine, mr: u32) {
    let t = &mut engine.tables;
    if let Some(m) = t.mrs.remove(&mr) {
        t.keys.remove(&m.lkey);
        t.release(m.session, Usage::mr(m.length));
        if let (Some(slot), Some(k)) = (m.slot, engine.key_table.as_mut()) {
            k.remove(slot);
        }
    }
}
