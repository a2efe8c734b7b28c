//! Memory windows: `ibv_alloc_mw`, `ibv_dealloc_mw` and `ibv_bind_mw`.
//! The router owns the windows; a bind is a work request of the QP
//! (`IBV_WR_BIND_MW`), run in send-queue order by whoever runs the queue.

use super::*;

/// A memory window: the libibverbs struct, and in semi mode over a NIC its
/// twin on the device, whose rkey it carries (NULL: none).
#[repr(C)]
pub struct FvMw {
    pub mw: ibv_mw,
    nic: *mut ibv_mw,
}

pub(super) unsafe extern "C" fn alloc_mw(pd: *mut ibv_pd, mw_type: ibv_mw_type) -> *mut ibv_mw {
    guard(ptr::null_mut(), || {
        // SAFETY: pd is one of ours (alloc_pd).
        let (ctx, pd_handle, nic_pd) =
            unsafe { ((*pd).context, (*pd).handle, FvPd::from_ibv(pd).nic) };
        let twin = || {
            if nic_pd.is_null() {
                ptr::null_mut()
            } else {
                crate::nic::alloc_mw(nic_pd, mw_type)
            }
        };
        // The router takes the twin's rkey if its index is free there;
        // otherwise another twin is tried (as for MRs).
        let mut nic = twin();
        let mut taken = Vec::new();
        let reply = loop {
            let req = Request::AllocMw {
                pd: pd_handle,
                mw_type,
                // SAFETY: a live real window.
                nic_rkey: (!nic.is_null()).then(|| unsafe { (*nic).rkey }),
            };
            match call(ctx, &req) {
                Err(libc::EBUSY) if !nic.is_null() => {
                    taken.push(nic);
                    nic = if taken.len() < super::MAX_TWIN_TRIES {
                        twin()
                    } else {
                        ptr::null_mut()
                    };
                }
                r => break r,
            }
        };
        for t in taken {
            let _ = crate::nic::dealloc_mw(t);
        }
        match reply {
            Ok((Reply::Mw { mw, rkey }, _)) => {
                let fmw = Box::new(FvMw {
                    mw: ibv_mw {
                        context: ctx,
                        pd,
                        rkey,
                        handle: mw,
                        type_: mw_type,
                    },
                    nic,
                });
                Box::into_raw(fmw) as *mut ibv_mw
            }
            other => {
                if !nic.is_null() {
                    let _ = crate::nic::dealloc_mw(nic);
                }
                match other {
                    Ok((r, _)) => null_with(unexpected(&r)),
                    Err(e) => null_with(e),
                }
            }
        }
    })
}

pub(super) unsafe extern "C" fn dealloc_mw(mw: *mut ibv_mw) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: mw is one of ours (alloc_mw): an FvMw.
        let fmw = unsafe { &mut *(mw as *mut FvMw) };
        let (ctx, handle) = (fmw.mw.context, fmw.mw.handle);
        // The twin first: the device may refuse (a window bound on it).
        if !fmw.nic.is_null() {
            if let Err(e) = crate::nic::dealloc_mw(fmw.nic) {
                return e;
            }
            fmw.nic = ptr::null_mut();
        }
        match call(ctx, &Request::DeallocMw { mw: handle }) {
            Ok(_) => {
                // SAFETY: allocated by alloc_mw as a Box<FvMw>.
                drop(unsafe { Box::from_raw(mw as *mut FvMw) });
                0
            }
            Err(e) => e,
        }
    })
}

/// Posts `wr` to a QP on the NIC through `post`: a chain with window binds
/// is copied with each bind naming the device's twins of the window and
/// the region (the device knows no fv0 object); the twin's rkey is set to
/// the window's current one first (rxe finds a window by it). A window or
/// region without a twin cannot be bound there: EINVAL, nothing posted.
///
/// # Safety
/// `wr` and `bad` as `ibv_post_send` takes them; every window and region
/// they name is one of ours.
pub(super) unsafe fn post_with_twins(
    wr: *mut ibv_send_wr,
    bad: *mut *mut ibv_send_wr,
    post: impl FnOnce(*mut ibv_send_wr, *mut *mut ibv_send_wr) -> i32,
) -> i32 {
    let mut originals = Vec::new();
    let mut cur = wr;
    let mut binds = false;
    while !cur.is_null() {
        originals.push(cur);
        // SAFETY: the caller's chain.
        let w = unsafe { &*cur };
        binds |= w.opcode == IBV_WR_BIND_MW;
        cur = w.next;
    }
    if !binds {
        return post(wr, bad);
    }
    // SAFETY: the caller's chain; copies are plain C data.
    let mut copies: Vec<ibv_send_wr> = originals.iter().map(|&w| unsafe { *w }).collect();
    for (i, c) in copies.iter_mut().enumerate() {
        if c.opcode != IBV_WR_BIND_MW {
            continue;
        }
        // SAFETY: the bind member of a BIND_MW request; its window is ours.
        let b = unsafe { &mut c.__bindgen_anon_2.bind_mw };
        let fmw = b.mw as *mut FvMw;
        let mr = b.bind_info.mr;
        // SAFETY: our window and (if any) our region.
        let (twin, twin_mr) = unsafe {
            (
                if fmw.is_null() {
                    ptr::null_mut()
                } else {
                    (*fmw).nic
                },
                if mr.is_null() {
                    ptr::null_mut()
                } else {
                    (*(mr as *mut FvMr)).nic
                },
            )
        };
        if twin.is_null() || (!mr.is_null() && twin_mr.is_null()) {
            // SAFETY: the caller's bad pointer.
            unsafe { *bad = originals[i] };
            return libc::EINVAL;
        }
        // SAFETY: our window and its live twin.
        unsafe { (*twin).rkey = (*fmw).mw.rkey };
        b.mw = twin;
        b.bind_info.mr = twin_mr;
    }
    let n = copies.len();
    for i in 1..n {
        let next: *mut ibv_send_wr = &mut copies[i];
        copies[i - 1].next = next;
    }
    copies[n - 1].next = ptr::null_mut();
    let mut failed = ptr::null_mut();
    let rc = post(copies.as_mut_ptr(), &mut failed);
    if rc != 0 {
        let at = copies.iter().position(|c| ptr::eq(c, failed));
        // SAFETY: the caller's bad pointer.
        unsafe { *bad = at.map_or(wr, |i| originals[i]) };
    }
    rc
}

/// `ibv_bind_mw` (libibverbs checked the window's type and the region's
/// PD): posts the bind under the window's next rkey, which `mw->rkey`
/// takes now, as on rxe and mlx5. A bind that then fails completes with
/// `IBV_WC_MW_BIND_ERR`; the window keeps its old rkey at the router.
pub(super) unsafe extern "C" fn bind_mw(
    qp: *mut ibv_qp,
    mw: *mut ibv_mw,
    mw_bind: *mut ibv_mw_bind,
) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: libibverbs passes the caller's bind, window and QP.
        let (b, next) = unsafe { (&*mw_bind, ibv_inc_rkey((*mw).rkey)) };
        if b.bind_info.mw_access_flags & IBV_ACCESS_ZERO_BASED != 0 {
            return libc::EINVAL;
        }
        // SAFETY: an all-zero ibv_send_wr is a valid value (pointers NULL).
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = b.wr_id;
        wr.opcode = IBV_WR_BIND_MW;
        wr.send_flags = b.send_flags;
        wr.__bindgen_anon_2.bind_mw = ibv_send_wr__bindgen_ty_4__bindgen_ty_1 {
            mw,
            rkey: next,
            bind_info: b.bind_info,
        };
        let mut bad = ptr::null_mut();
        // SAFETY: qp is ours; wr is a chain of one.
        let rc = unsafe { post_send(qp, &mut wr, &mut bad) };
        if rc == 0 {
            // SAFETY: the caller's window.
            unsafe { (*mw).rkey = next };
        }
        rc
    })
}

/// `ibv_inc_rkey`: the same index, the next key byte.
pub(super) fn ibv_inc_rkey(rkey: u32) -> u32 {
    (rkey & !0xff) | (rkey.wrapping_add(1) & 0xff)
}
