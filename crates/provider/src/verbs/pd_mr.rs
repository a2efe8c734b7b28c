//! Protection domains and memory regions.

use super::*;

// ---------------------------------------------------------------- PD ----

#[repr(C)]
pub struct FvPd {
    pub pd: ibv_pd,
    /// Semi mode over a NIC: the real device's twin (NULL: none).
    pub(super) nic: *mut ibv_pd,
}

impl FvPd {
    /// # Safety
    /// `pd` must come from [`alloc_pd`].
    pub(super) unsafe fn from_ibv<'a>(pd: *mut ibv_pd) -> &'a FvPd {
        // SAFETY: the caller promises `pd` starts a live FvPd.
        unsafe { &*(pd as *const FvPd) }
    }
}

pub(super) unsafe extern "C" fn alloc_pd(ctx: *mut ibv_context) -> *mut ibv_pd {
    guard(ptr::null_mut(), || match call(ctx, &Request::AllocPd) {
        Ok((Reply::Pd { pd }, _)) => {
            // SAFETY: ctx is ours.
            let nic = unsafe { inner(ctx) }
                .nic
                .as_ref()
                .map_or(ptr::null_mut(), |n| n.alloc_pd());
            let b = Box::new(FvPd {
                pd: ibv_pd {
                    context: ctx,
                    handle: pd,
                },
                nic,
            });
            Box::into_raw(b) as *mut ibv_pd
        }
        Ok((r, _)) => null_with(unexpected(&r)),
        Err(e) => null_with(e),
    })
}

pub(super) unsafe extern "C" fn dealloc_pd(pd: *mut ibv_pd) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: pd is one of ours (alloc_pd).
        let (ctx, handle, nic) = unsafe { ((*pd).context, (*pd).handle, FvPd::from_ibv(pd).nic) };
        // The twin first: the device refuses (EBUSY) a PD still in use.
        if !nic.is_null() {
            if let Err(e) = crate::nic::dealloc_pd(nic) {
                return e;
            }
            // SAFETY: ours; the twin is gone.
            unsafe { (*(pd as *mut FvPd)).nic = ptr::null_mut() };
        }
        match call(ctx, &Request::DeallocPd { pd: handle }) {
            Ok(_) => {
                // SAFETY: allocated by alloc_pd as a Box<FvPd>.
                drop(unsafe { Box::from_raw(pd as *mut FvPd) });
                0
            }
            Err(e) => e,
        }
    })
}

// ---------------------------------------------------------------- MR ----

/// A memory region: libibverbs' `verbs_mr` first.
#[repr(C)]
pub struct FvMr {
    pub vmr: verbs_mr,
    /// Semi mode over a NIC: the real registration whose keys this MR
    /// carries (NULL: none).
    pub(super) nic: *mut ibv_mr,
    /// How work requests address it (`ibv_reg_mr_iova2`).
    iova: u64,
}

pub(super) unsafe extern "C" fn reg_mr(
    pd: *mut ibv_pd,
    addr: *mut libc::c_void,
    length: usize,
    hca_va: u64,
    access: i32,
) -> *mut ibv_mr {
    guard(ptr::null_mut(), || {
        // SAFETY: pd is one of ours.
        let (ctx, pdh) = unsafe { ((*pd).context, (*pd).handle) };
        // SAFETY: ctx is ours (the PD's).
        let cx = unsafe { inner(ctx) };
        let (runs, arena_fd) = semi_share(cx, addr as u64, length as u64);
        // The twin registers the range where it now lives (after the
        // arena move above), and lends fv0 its keys.
        // SAFETY: pd is one of ours.
        let nic_pd = unsafe { FvPd::from_ibv(pd) }.nic;
        let mut nic_mr = if nic_pd.is_null() {
            ptr::null_mut()
        } else {
            crate::nic::reg_mr(nic_pd, addr, length, hca_va, access)
        };
        let fds: Vec<i32> = arena_fd.into_iter().collect();
        let mut taken = Vec::new();
        let reply = loop {
            let req = Request::RegMr {
                pd: pdh,
                addr: addr as u64,
                iova: hca_va,
                length: length as u64,
                access: access as u32,
                runs: runs.clone(),
                // SAFETY: a live real MR.
                nic_key: (!nic_mr.is_null()).then(|| unsafe { (*nic_mr).lkey }),
            };
            match cx.call_passing(&req, &fds) {
                Err(libc::EBUSY) if !nic_mr.is_null() => {
                    // The NIC's key is taken on the router (a router with
                    // several NICs sees each device's keys): another
                    // registration, kept apart until the device has given
                    // a free key; after a few, fv0-only.
                    taken.push(nic_mr);
                    nic_mr = if taken.len() < super::MAX_TWIN_TRIES {
                        crate::nic::reg_mr(nic_pd, addr, length, hca_va, access)
                    } else {
                        ptr::null_mut()
                    };
                }
                other => break other,
            }
        };
        for mr in taken {
            let _ = crate::nic::dereg_mr(mr);
        }
        if reply.is_err() && !nic_mr.is_null() {
            let _ = crate::nic::dereg_mr(nic_mr);
        }
        match reply {
            Ok((Reply::Mr { mr, lkey, rkey }, _)) => {
                // A NIC registration without remote access has rkey 0.
                let rkey = if nic_mr.is_null() {
                    rkey
                } else {
                    // SAFETY: a live real MR.
                    unsafe { (*nic_mr).rkey }
                };
                if let Some(semi) = cx.semi.as_ref() {
                    if let Some(a) = semi
                        .arena
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_mut()
                    {
                        a.announced |= !fds.is_empty();
                        a.hold(lkey, &runs);
                    }
                    semi.local_mrs
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(
                            lkey,
                            flowverbs_verbs::access::Region {
                                pd: pdh,
                                addr: hca_va,
                                length: length as u64,
                                access: access as u32,
                                va: addr as u64,
                            },
                        );
                }
                let mut v = Box::new(FvMr {
                    // SAFETY: verbs_mr is plain C data; zero is a valid start.
                    vmr: unsafe { std::mem::zeroed() },
                    nic: nic_mr,
                    iova: hca_va,
                });
                v.vmr.ibv_mr.context = ctx;
                v.vmr.ibv_mr.pd = pd;
                v.vmr.ibv_mr.addr = addr;
                v.vmr.ibv_mr.length = length;
                v.vmr.ibv_mr.handle = mr;
                v.vmr.ibv_mr.lkey = lkey;
                v.vmr.ibv_mr.rkey = rkey;
                v.vmr.mr_type = 0; // IBV_MR_TYPE_MR
                v.vmr.access = access;
                Box::into_raw(v) as *mut ibv_mr
            }
            Ok((r, _)) => null_with(unexpected(&r)),
            Err(e) => null_with(e),
        }
    })
}

pub(super) unsafe extern "C" fn dereg_mr(vmr: *mut verbs_mr) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: vmr is one of ours (reg_mr).
        match release_mr(unsafe { &mut *(vmr as *mut FvMr) }) {
            Ok(()) => {
                // SAFETY: allocated by reg_mr as a Box<FvMr>.
                drop(unsafe { Box::from_raw(vmr as *mut FvMr) });
                0
            }
            Err(e) => e,
        }
    })
}

/// Ends registration `m` (its NIC twin, the router's MR, the semi-mode
/// records), leaving the struct to its owner.
fn release_mr(m: &mut FvMr) -> Result<(), Errno> {
    let (ctx, handle, lkey) = (m.vmr.ibv_mr.context, m.vmr.ibv_mr.handle, m.vmr.ibv_mr.lkey);
    if !m.nic.is_null() {
        crate::nic::dereg_mr(m.nic)?;
        m.nic = ptr::null_mut();
    }
    call(ctx, &Request::DeregMr { mr: handle })?;
    // SAFETY: ctx is ours.
    if let Some(semi) = unsafe { inner(ctx) }.semi.as_ref() {
        semi.local_mrs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&lkey);
        if let Some(a) = semi
            .arena
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            a.release(lkey);
        }
    }
    Ok(())
}

/// `ibv_rereg_mr`: what `ibv_rereg_mr(3)` calls a deregistration followed
/// by a registration, done the other way round so that a failure leaves
/// the region as it was: a new registration with what `flags` change (the
/// rest as it was, the IOVA too unless the translation changes), then the
/// old one's end; the `ibv_mr` takes the new handle and keys (old keys stop
/// working). A region with memory windows bound stays (EINVAL).
pub(super) unsafe extern "C" fn rereg_mr(
    vmr: *mut verbs_mr,
    flags: i32,
    pd: *mut ibv_pd,
    addr: *mut libc::c_void,
    length: usize,
    access: i32,
) -> i32 {
    guard(libc::EIO, || {
        let known =
            IBV_REREG_MR_CHANGE_TRANSLATION | IBV_REREG_MR_CHANGE_PD | IBV_REREG_MR_CHANGE_ACCESS;
        let flags = flags as u32;
        if flags & !known != 0 {
            return libc::EINVAL;
        }
        // SAFETY: vmr is one of ours (reg_mr).
        let old = unsafe { &mut *(vmr as *mut FvMr) };
        let m = &old.vmr.ibv_mr;
        let pd = if flags & IBV_REREG_MR_CHANGE_PD != 0 {
            pd
        } else {
            m.pd
        };
        let (addr, length, iova) = if flags & IBV_REREG_MR_CHANGE_TRANSLATION != 0 {
            (addr, length, addr as u64)
        } else {
            (m.addr, m.length, old.iova)
        };
        let access = if flags & IBV_REREG_MR_CHANGE_ACCESS != 0 {
            access
        } else {
            old.vmr.access
        };
        // SAFETY: pd is ours (the caller's or the region's).
        let fresh = unsafe { reg_mr(pd, addr, length, iova, access) };
        if fresh.is_null() {
            return std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL);
        }
        if let Err(e) = release_mr(old) {
            // SAFETY: fresh is the registration just made.
            unsafe { dereg_mr(fresh as *mut verbs_mr) };
            return e;
        }
        // SAFETY: reg_mr made fresh as a Box<FvMr>; its contents move into
        // the caller's region and the box goes without a deregistration.
        *old = *unsafe { Box::from_raw(fresh as *mut FvMr) };
        0
    })
}

/// Semi mode: moves the pages of a registration into the arena; the runs
/// for the router, and the arena's fd if the router does not have it yet.
/// Pages that cannot be moved leave the region unshared (peers then get
/// IBV_WC_REM_ACCESS_ERR for it); `reg_mr` itself still succeeds.
fn semi_share(cx: &ContextInner, addr: u64, length: u64) -> (Vec<ArenaRun>, Option<i32>) {
    let Some(semi) = cx.semi.as_ref() else {
        return (Vec::new(), None);
    };
    if length == 0 {
        return (Vec::new(), None);
    }
    let mut guard = semi.arena.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        match Arena::new() {
            Ok(a) => *guard = Some(a),
            Err(e) => {
                fv_log!(2, "semi mode: no arena ({e}); memory regions stay unshared");
                return (Vec::new(), None);
            }
        }
    }
    let arena = guard.as_mut().expect("arena");
    match arena.share(addr, length) {
        Ok(runs) if runs.len() <= MAX_ARENA_RUNS => {
            let fd = (!arena.announced).then(|| arena.fd().as_raw_fd());
            (runs, fd)
        }
        Ok(_) => (Vec::new(), None),
        Err(e) => {
            fv_log!(
                2,
                "semi mode: region {addr:#x}+{length} stays unshared: {e}"
            );
            (Vec::new(), None)
        }
    }
}
