//! Address handles.

use super::*;

// ---------------------------------------------------------------- AH ----

/// An address handle: kept in the provider (the router checks the
/// destination of every UD send itself).
#[repr(C)]
pub struct FvAh {
    pub ah: ibv_ah,
    pub(super) global: bool,
    pub(super) dgid: [u8; 16],
    pub(super) hop_limit: u8,
    pub(super) traffic_class: u8,
}

pub(super) unsafe extern "C" fn create_ah(pd: *mut ibv_pd, attr: *mut ibv_ah_attr) -> *mut ibv_ah {
    guard(ptr::null_mut(), || {
        // SAFETY: pd is ours, attr the caller's.
        let (ctx, a) = unsafe { ((*pd).context, &*attr) };
        if a.port_num != 1 || (a.is_global != 0 && a.grh.sgid_index != 0) {
            return null_with(libc::EINVAL);
        }
        let b = Box::new(FvAh {
            ah: ibv_ah {
                context: ctx,
                pd,
                handle: 0,
            },
            global: a.is_global != 0,
            // SAFETY: ibv_gid is a union of plain bytes.
            dgid: unsafe { a.grh.dgid.raw },
            hop_limit: if a.is_global != 0 {
                a.grh.hop_limit
            } else {
                flowverbs_verbs::ud::DEFAULT_HOP_LIMIT
            },
            traffic_class: if a.is_global != 0 {
                a.grh.traffic_class
            } else {
                0
            },
        });
        Box::into_raw(b) as *mut ibv_ah
    })
}

pub(super) unsafe extern "C" fn destroy_ah(ah: *mut ibv_ah) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: allocated by create_ah as a Box<FvAh>.
        drop(unsafe { Box::from_raw(ah as *mut FvAh) });
        0
    })
}
