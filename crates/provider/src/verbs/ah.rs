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
    /// Semi mode over a NIC: the real device's twin, to the physical GID
    /// of the destination's host (NULL: none).
    pub(super) nic: *mut ibv_ah,
}

/// Semi mode over a NIC: the twin of an address handle, to where the
/// router says `dgid` is on the NIC. Err: the router refused the GID (no
/// router serves it); Ok(NULL): no twin (no NIC, or the destination's
/// host has none: datagrams on the NIC cannot reach it).
fn nic_twin(
    ctx: &ContextInner,
    pd: *mut ibv_pd,
    a: &ibv_ah_attr,
    dgid: [u8; 16],
) -> Result<*mut ibv_ah, Errno> {
    // SAFETY: pd is ours.
    let real_pd = unsafe { FvPd::from_ibv(pd) }.nic;
    if ctx.nic.is_none() || real_pd.is_null() {
        return Ok(ptr::null_mut());
    }
    let (dgid, sgid_index) = match ctx.call(&Request::NicAddress { dgid }) {
        Ok((Reply::NicPath { dgid, sgid_index }, _)) => (dgid, sgid_index),
        Ok((r, _)) => return Err(unexpected(&r)),
        Err(libc::EINVAL) if a.is_global != 0 => return Err(libc::EINVAL),
        Err(_) => return Ok(ptr::null_mut()),
    };
    let mut real = *a;
    real.is_global = 1;
    real.grh.dgid.raw = dgid;
    real.grh.sgid_index = sgid_index;
    real.port_num = ctx.nic.as_ref().map_or(1, |n| n.port());
    if a.is_global == 0 {
        real.grh.hop_limit = flowverbs_verbs::ud::DEFAULT_HOP_LIMIT;
    }
    // SAFETY: a real PD and a full attribute block.
    let ah = unsafe { ibv_create_ah(real_pd, &mut real) };
    if ah.is_null() {
        crate::fv_log!(
            2,
            "NIC: address handle refused ({})",
            std::io::Error::last_os_error()
        );
    }
    Ok(ah)
}

pub(super) unsafe extern "C" fn create_ah(pd: *mut ibv_pd, attr: *mut ibv_ah_attr) -> *mut ibv_ah {
    guard(ptr::null_mut(), || {
        // SAFETY: pd is ours, attr the caller's.
        let (ctx, a) = unsafe { ((*pd).context, &*attr) };
        if a.port_num != 1
            || !flowverbs_verbs::qp::roce_address(a.is_global != 0)
            || a.grh.sgid_index != 0
        {
            return null_with(libc::EINVAL);
        }
        // SAFETY: ctx is ours.
        let cx = unsafe { inner(ctx) };
        // SAFETY: ibv_gid is a union of plain bytes.
        let dgid = unsafe { a.grh.dgid.raw };
        let nic = match nic_twin(cx, pd, a, dgid) {
            Ok(n) => n,
            Err(e) => return null_with(e),
        };
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
            nic,
        });
        Box::into_raw(b) as *mut ibv_ah
    })
}

pub(super) unsafe extern "C" fn destroy_ah(ah: *mut ibv_ah) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: allocated by create_ah as a Box<FvAh>.
        let b = unsafe { Box::from_raw(ah as *mut FvAh) };
        if !b.nic.is_null() {
            // SAFETY: the twin, ours; destroyed only here.
            let r = unsafe { ibv_destroy_ah(b.nic) };
            if r != 0 {
                // Keep the fv0 handle: the application may try again.
                let _ = Box::into_raw(b);
                return r;
            }
        }
        0
    })
}
