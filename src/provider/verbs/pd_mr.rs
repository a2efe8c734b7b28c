//! Protection domains and memory regions.

use super::*;

// ---------------------------------------------------------------- PD ----

#[repr(C)]
pub struct FvPd {
    pub pd: ibv_pd,
}

pub(super) unsafe extern "C" fn alloc_pd(ctx: *mut ibv_context) -> *mut ibv_pd {
    guard(ptr::null_mut(), || match call(ctx, &Request::AllocPd) {
        Ok((Reply::Pd { pd }, _)) => {
            let b = Box::new(FvPd {
                pd: ibv_pd {
                    context: ctx,
                    handle: pd,
                },
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
        let (ctx, handle) = unsafe { ((*pd).context, (*pd).handle) };
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

pub(super) unsafe extern "C" fn reg_mr(
    pd: *mut ibv_pd,
    addr: *mut libc::c_void,
    length: usize,
    hca_va: u64,
    access: i32,
) -> *mut ibv_mr {
    guard(ptr::null_mut(), || {
        if hca_va != addr as u64 {
            // IOVA-based registration is not supported yet.
            return null_with(libc::EOPNOTSUPP);
        }
        // SAFETY: pd is one of ours.
        let (ctx, pdh) = unsafe { ((*pd).context, (*pd).handle) };
        let req = Request::RegMr {
            pd: pdh,
            addr: addr as u64,
            length: length as u64,
            access: access as u32,
        };
        match call(ctx, &req) {
            Ok((Reply::Mr { mr, lkey, rkey }, _)) => {
                // SAFETY: verbs_mr is plain C data; zero is a valid start.
                let mut v: Box<verbs_mr> = Box::new(unsafe { std::mem::zeroed() });
                v.ibv_mr.context = ctx;
                v.ibv_mr.pd = pd;
                v.ibv_mr.addr = addr;
                v.ibv_mr.length = length;
                v.ibv_mr.handle = mr;
                v.ibv_mr.lkey = lkey;
                v.ibv_mr.rkey = rkey;
                v.mr_type = 0; // IBV_MR_TYPE_MR
                v.access = access;
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
        let (ctx, handle) = unsafe { ((*vmr).ibv_mr.context, (*vmr).ibv_mr.handle) };
        match call(ctx, &Request::DeregMr { mr: handle }) {
            Ok(_) => {
                // SAFETY: allocated by reg_mr as a Box<verbs_mr>.
                drop(unsafe { Box::from_raw(vmr) });
                0
            }
            Err(e) => e,
        }
    })
}
