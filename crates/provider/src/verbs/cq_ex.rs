//! Extended CQs (`ibv_create_cq_ex`): the same CQ and ring as
//! `ibv_create_cq`, polled one completion at a time with
//! `ibv_start_poll`/`ibv_next_poll`/`ibv_end_poll` and read field by field
//! with `ibv_wc_read_*`. `ibv_cq_ex_to_cq` gives the plain CQ, so
//! `ibv_poll_cq`, `ibv_req_notify_cq` and completion channels work on it
//! unchanged.

use super::*;

/// The `wc_flags` fv0 can honour: every field of `struct ibv_wc`. No
/// completion timestamps (`ibv_query_device_ex` reports no clock), no
/// CVLAN, flow tag or tag matching.
const SUPPORTED_WC_FLAGS: u64 = IBV_WC_STANDARD_FLAGS as u64;

pub(super) unsafe extern "C" fn create_cq_ex(
    ctx: *mut ibv_context,
    attr: *mut ibv_cq_init_attr_ex,
) -> *mut ibv_cq_ex {
    guard(ptr::null_mut(), || {
        if attr.is_null() {
            return null_with(libc::EINVAL);
        }
        // SAFETY: the caller's attributes, valid for the call.
        let a = unsafe { &*attr };
        if a.wc_flags & !SUPPORTED_WC_FLAGS != 0 {
            return null_with(libc::EOPNOTSUPP);
        }
        // A parent domain (IBV_CQ_INIT_ATTR_MASK_PD) needs
        // ibv_alloc_parent_domain, which fv0 does not offer.
        if a.comp_mask & !IBV_CQ_INIT_ATTR_MASK_FLAGS != 0 {
            return null_with(libc::EOPNOTSUPP);
        }
        if a.comp_mask & IBV_CQ_INIT_ATTR_MASK_FLAGS != 0
            && a.flags & !IBV_CREATE_CQ_ATTR_SINGLE_THREADED != 0
        {
            return null_with(libc::EOPNOTSUPP);
        }
        let Ok(cqe) = i32::try_from(a.cqe) else {
            return null_with(libc::EINVAL);
        };
        let Ok(vector) = i32::try_from(a.comp_vector) else {
            return null_with(libc::EINVAL);
        };
        // SAFETY: ctx is ours; the channel is the caller's, of this context.
        let fcq = match unsafe { new_cq(ctx, cqe, a.channel, vector) } {
            Ok(c) => c,
            Err(e) => return null_with(e),
        };
        // SAFETY: new_cq returned a live FvCq of ours; its verbs_cq is
        // sized for the extended CQ.
        let ex = unsafe { &mut (*fcq).vcq.__bindgen_anon_1.cq_ex };
        ex.start_poll = Some(start_poll);
        ex.next_poll = Some(next_poll);
        ex.end_poll = Some(end_poll);
        ex.read_opcode = Some(read_opcode);
        ex.read_vendor_err = Some(read_vendor_err);
        ex.read_byte_len = Some(read_byte_len);
        ex.read_imm_data = Some(read_imm_data);
        ex.read_qp_num = Some(read_qp_num);
        ex.read_src_qp = Some(read_src_qp);
        ex.read_wc_flags = Some(read_wc_flags);
        ex.read_slid = Some(read_slid);
        ex.read_sl = Some(read_sl);
        ex.read_dlid_path_bits = Some(read_dlid_path_bits);
        ex as *mut ibv_cq_ex
    })
}

/// Takes the next completion into the CQ's current one: 0, or ENOENT when
/// the CQ is empty.
///
/// # Safety
/// `cq` comes from [`create_cq_ex`].
unsafe fn take_one(cq: *mut ibv_cq_ex) -> i32 {
    // SAFETY: the caller promises an extended CQ of ours.
    let fcq = unsafe { FvCq::from_ibv(cq as *mut ibv_cq) };
    let wc = fcq.current.get();
    // SAFETY: a CQ of ours; `current` holds one completion.
    match unsafe { poll_cq(cq as *mut ibv_cq, 1, wc) } {
        1 => {
            // SAFETY: poll_cq filled `current`; the caller polls this CQ.
            unsafe {
                (*cq).status = (*wc).status;
                (*cq).wr_id = (*wc).wr_id;
            }
            0
        }
        0 => libc::ENOENT,
        _ => libc::EIO,
    }
}

unsafe extern "C" fn start_poll(cq: *mut ibv_cq_ex, attr: *mut ibv_poll_cq_attr) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: the caller's attributes, valid for the call.
        if !attr.is_null() && unsafe { (*attr).comp_mask } != 0 {
            return libc::EINVAL;
        }
        // SAFETY: libibverbs passes the CQ the application created.
        unsafe { take_one(cq) }
    })
}

unsafe extern "C" fn next_poll(cq: *mut ibv_cq_ex) -> i32 {
    // SAFETY: libibverbs passes the CQ the application created.
    guard(libc::EIO, || unsafe { take_one(cq) })
}

unsafe extern "C" fn end_poll(_cq: *mut ibv_cq_ex) {}

/// The current completion of an extended CQ.
///
/// # Safety
/// `cq` comes from [`create_cq_ex`] and a poll of it returned 0.
unsafe fn current<'a>(cq: *mut ibv_cq_ex) -> &'a ibv_wc {
    // SAFETY: the caller promises an extended CQ of ours, polled by this
    // thread.
    unsafe { &*FvCq::from_ibv(cq as *mut ibv_cq).current.get() }
}

/// One `ibv_wc_read_*` function per field of the current completion.
macro_rules! readers {
    ($($name:ident -> $ty:ty = |$wc:ident| $get:expr;)*) => {$(
        unsafe extern "C" fn $name(cq: *mut ibv_cq_ex) -> $ty {
            // SAFETY: libibverbs passes the CQ the application polls; a
            // plain field read cannot panic.
            let $wc = unsafe { current(cq) };
            $get
        }
    )*};
}

readers! {
    read_opcode -> ibv_wc_opcode = |wc| wc.opcode;
    read_vendor_err -> u32 = |wc| wc.vendor_err;
    read_byte_len -> u32 = |wc| wc.byte_len;
    // SAFETY: imm_data and invalidated_rkey share the union's bytes.
    read_imm_data -> __be32 = |wc| unsafe { wc.__bindgen_anon_1.imm_data };
    read_qp_num -> u32 = |wc| wc.qp_num;
    read_src_qp -> u32 = |wc| wc.src_qp;
    read_wc_flags -> u32 = |wc| wc.wc_flags;
    read_slid -> u32 = |wc| u32::from(wc.slid);
    read_sl -> u8 = |wc| wc.sl;
    read_dlid_path_bits -> u8 = |wc| wc.dlid_path_bits;
}
