//! Memory windows: `ibv_alloc_mw`, `ibv_dealloc_mw` and `ibv_bind_mw`.
//! The router owns the windows; a bind is a work request of the QP
//! (`IBV_WR_BIND_MW`), run in send-queue order by whoever runs the queue.

use super::*;

pub(super) unsafe extern "C" fn alloc_mw(pd: *mut ibv_pd, mw_type: ibv_mw_type) -> *mut ibv_mw {
    guard(ptr::null_mut(), || {
        // SAFETY: pd is one of ours (alloc_pd).
        let (ctx, pd_handle) = unsafe { ((*pd).context, (*pd).handle) };
        let req = Request::AllocMw {
            pd: pd_handle,
            mw_type,
        };
        match call(ctx, &req) {
            Ok((Reply::Mw { mw, rkey }, _)) => Box::into_raw(Box::new(ibv_mw {
                context: ctx,
                pd,
                rkey,
                handle: mw,
                type_: mw_type,
            })),
            Ok((r, _)) => null_with(unexpected(&r)),
            Err(e) => null_with(e),
        }
    })
}

pub(super) unsafe extern "C" fn dealloc_mw(mw: *mut ibv_mw) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: mw is one of ours (alloc_mw).
        let (ctx, handle) = unsafe { ((*mw).context, (*mw).handle) };
        match call(ctx, &Request::DeallocMw { mw: handle }) {
            Ok(_) => {
                // SAFETY: allocated by alloc_mw as a Box<ibv_mw>.
                drop(unsafe { Box::from_raw(mw) });
                0
            }
            Err(e) => e,
        }
    })
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
