//! Extended QPs (`ibv_create_qp_ex` with `IBV_QP_INIT_ATTR_SEND_OPS_FLAGS`)
//! and the `ibv_wr_*` builder. A QP made this way is an ordinary fv0 QP;
//! the builder collects the work requests of a batch (between
//! `ibv_wr_start` and `ibv_wr_complete`) as `ibv_send_wr`s with their own
//! copies of the SGE lists and inline data, and `ibv_wr_complete` checks
//! every one of them and hands the chain to `post_send`, so every path
//! (isolated, semi, NIC) and every check at posting is the one
//! `ibv_post_send` has. A builder or setter misused (an operation the QP
//! was not created for, too many SGEs, data on an operation without any)
//! makes `ibv_wr_complete` fail with EINVAL and post nothing; so does a
//! work request that `ibv_post_send` would refuse.

use super::*;

/// `verbs_qp.comp_mask`: the QP has an `ibv_qp_ex` (libibverbs'
/// `VERBS_QP_EX`, what `ibv_qp_to_qp_ex` tests).
const VERBS_QP_EX: u32 = 1 << 1;

/// One work request of a batch, with its own data.
#[derive(Default)]
struct Pending {
    /// `sg_list` and `next` are set when the batch is posted.
    wr: Option<ibv_send_wr>,
    sges: Vec<ibv_sge>,
    inline: Vec<u8>,
    /// The operation takes data (DATA setters allowed).
    takes_data: bool,
}

/// The work requests built since `ibv_wr_start`.
#[derive(Default)]
pub struct Batch {
    wrs: Vec<Pending>,
    /// The first misuse in this batch.
    error: Errno,
    /// The operations the QP was created for (`IBV_QP_EX_WITH_*`).
    send_ops: u64,
}

/// The operations each QP type can do: `IBV_QP_EX_WITH_<op>` is bit
/// `IBV_WR_<op>`, allowed as `ibv_post_send` allows it
/// (`flowverbs_verbs::opcode::allowed`: no TSO or atomic write on fv0).
fn supported_ops(qp_type: u32) -> u64 {
    (IBV_WR_RDMA_WRITE..=IBV_WR_SEND_WITH_INV)
        .filter(|&op| flowverbs_verbs::opcode::allowed(qp_type, op))
        .fold(0, |ops, op| ops | 1 << op)
}

pub(super) unsafe extern "C" fn create_qp_ex(
    ctx: *mut ibv_context,
    attr: *mut ibv_qp_init_attr_ex,
) -> *mut ibv_qp {
    guard(ptr::null_mut(), || {
        if attr.is_null() {
            return null_with(libc::EINVAL);
        }
        // SAFETY: the caller's attributes, valid for the call.
        let a = unsafe { &mut *attr };
        let known = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
        if a.comp_mask & IBV_QP_INIT_ATTR_PD == 0 || a.pd.is_null() {
            return null_with(libc::EINVAL);
        }
        // XRC domains, create flags, TSO, RSS and source QPNs: not on fv0.
        if a.comp_mask & !known != 0 {
            return null_with(libc::EOPNOTSUPP);
        }
        let ops = if a.comp_mask & IBV_QP_INIT_ATTR_SEND_OPS_FLAGS != 0 {
            a.send_ops_flags
        } else {
            0
        };
        if ops & !supported_ops(a.qp_type) != 0 {
            return null_with(libc::EOPNOTSUPP);
        }
        // SAFETY: the PD is one of this context's.
        if unsafe { (*a.pd).context } != ctx {
            return null_with(libc::EINVAL);
        }
        let mut basic = ibv_qp_init_attr {
            qp_context: a.qp_context,
            send_cq: a.send_cq,
            recv_cq: a.recv_cq,
            srq: a.srq,
            cap: a.cap,
            qp_type: a.qp_type,
            sq_sig_all: a.sq_sig_all,
        };
        // SAFETY: our PD and a full attribute block.
        let qp = unsafe { create_qp(a.pd, &mut basic) };
        if qp.is_null() {
            return qp;
        }
        a.cap = basic.cap;
        if a.comp_mask & IBV_QP_INIT_ATTR_SEND_OPS_FLAGS == 0 {
            return qp;
        }
        // SAFETY: create_qp returned a live FvQp of ours; no other thread
        // knows it yet.
        let fqp = unsafe { &mut *(qp as *mut FvQp) };
        fqp.batch
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .send_ops = ops;
        fqp.vqp.comp_mask |= VERBS_QP_EX;
        // SAFETY: the union's extended member; its ibv_qp part is the one
        // create_qp filled.
        let x = unsafe { &mut fqp.vqp.__bindgen_anon_1.qp_ex };
        x.wr_start = Some(wr_start);
        x.wr_complete = Some(wr_complete);
        x.wr_abort = Some(wr_abort);
        x.wr_send = Some(wr_send);
        x.wr_send_imm = Some(wr_send_imm);
        x.wr_rdma_write = Some(wr_rdma_write);
        x.wr_rdma_write_imm = Some(wr_rdma_write_imm);
        x.wr_rdma_read = Some(wr_rdma_read);
        x.wr_atomic_cmp_swp = Some(wr_atomic_cmp_swp);
        x.wr_atomic_fetch_add = Some(wr_atomic_fetch_add);
        x.wr_set_sge = Some(wr_set_sge);
        x.wr_set_sge_list = Some(wr_set_sge_list);
        x.wr_set_inline_data = Some(wr_set_inline_data);
        x.wr_set_inline_data_list = Some(wr_set_inline_data_list);
        x.wr_set_ud_addr = Some(wr_set_ud_addr);
        x.wr_send_inv = Some(wr_send_inv);
        x.wr_local_inv = Some(wr_local_inv);
        x.wr_bind_mw = Some(wr_bind_mw);
        qp
    })
}

/// The QP and its batch, for a builder call.
///
/// # Safety
/// `qp` comes from [`create_qp_ex`] with send operations.
unsafe fn batch<'a>(qp: *mut ibv_qp_ex) -> (&'a FvQp, std::sync::MutexGuard<'a, Batch>) {
    // SAFETY: the caller promises an extended QP of ours (the ibv_qp_ex
    // starts with its ibv_qp, which starts the FvQp).
    let fqp = unsafe { FvQp::from_ibv(qp as *mut ibv_qp) };
    (fqp, fqp.batch.lock().unwrap_or_else(|e| e.into_inner()))
}

unsafe extern "C" fn wr_start(qp: *mut ibv_qp_ex) {
    guard((), || {
        // SAFETY: libibverbs passes the application's extended QP.
        let (_, mut b) = unsafe { batch(qp) };
        b.wrs.clear();
        b.error = 0;
    })
}

unsafe extern "C" fn wr_abort(qp: *mut ibv_qp_ex) {
    // SAFETY: as wr_start.
    unsafe { wr_start(qp) }
}

unsafe extern "C" fn wr_complete(qp: *mut ibv_qp_ex) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: libibverbs passes the application's extended QP.
        let (fqp, mut b) = unsafe { batch(qp) };
        let mut pending = std::mem::take(&mut b.wrs);
        let error = std::mem::take(&mut b.error);
        drop(b);
        if error != 0 {
            return error;
        }
        if pending.is_empty() {
            return 0;
        }
        // Chain them, each pointing at its own SGEs (inline data is one
        // SGE over the copy, with IBV_SEND_INLINE).
        let mut wrs: Vec<ibv_send_wr> = Vec::with_capacity(pending.len());
        for p in &mut pending {
            let Some(mut wr) = p.wr else {
                return libc::EINVAL;
            };
            if !p.inline.is_empty() {
                p.sges = vec![ibv_sge {
                    addr: p.inline.as_ptr() as u64,
                    length: p.inline.len() as u32,
                    lkey: 0,
                }];
            }
            wr.sg_list = p.sges.as_mut_ptr();
            wr.num_sge = p.sges.len() as i32;
            // Nothing is posted unless every request passes.
            if let Err(e) = build_send_wqe(fqp, &wr) {
                return e;
            }
            wrs.push(wr);
        }
        // Nor unless the send queue has room for all of them (a batch is
        // posted whole or not at all; a thread posting to the same QP
        // meanwhile can still take the room).
        let on_nic = fqp.nic.as_ref().is_some_and(|n| n.route() == Route::Nic);
        let slots = fqp.sq.capacity().min(fqp.caps.max_send_wr.max(1));
        let producer = *fqp.sq_producer.lock().unwrap_or_else(|e| e.into_inner());
        if !on_nic && fqp.send_slots.in_use(producer) + wrs.len() as u32 > slots {
            return libc::ENOMEM;
        }
        for i in 1..wrs.len() {
            let next: *mut ibv_send_wr = &mut wrs[i];
            wrs[i - 1].next = next;
        }
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: a chain of well-formed work requests whose SGE lists
        // and inline copies live until post_send returns.
        unsafe { post_send(qp as *mut ibv_qp, wrs.as_mut_ptr(), &mut bad) }
    })
}

/// Starts a work request of operation `op` (`IBV_QP_EX_WITH_*` bit `with`),
/// `fill` setting its opcode-specific fields.
///
/// # Safety
/// `qp` comes from [`create_qp_ex`].
unsafe fn build(
    qp: *mut ibv_qp_ex,
    op: u32,
    with: u32,
    takes_data: bool,
    fill: impl FnOnce(&mut ibv_send_wr),
) {
    guard((), || {
        // SAFETY: the caller promises an extended QP of ours.
        let (wr_id, flags) = unsafe { ((*qp).wr_id, (*qp).wr_flags) };
        // SAFETY: as above.
        let (_, mut b) = unsafe { batch(qp) };
        if b.send_ops & u64::from(with) == 0 && b.error == 0 {
            b.error = libc::EINVAL;
        }
        // SAFETY: ibv_send_wr is plain C data; zero is "no fields".
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.opcode = op;
        wr.send_flags = flags;
        fill(&mut wr);
        b.wrs.push(Pending {
            wr: Some(wr),
            takes_data,
            ..Default::default()
        });
    })
}

unsafe extern "C" fn wr_send(qp: *mut ibv_qp_ex) {
    // SAFETY: libibverbs passes the application's extended QP.
    unsafe { build(qp, IBV_WR_SEND, IBV_QP_EX_WITH_SEND, true, |_| {}) }
}

unsafe extern "C" fn wr_send_imm(qp: *mut ibv_qp_ex, imm: __be32) {
    // SAFETY: as wr_send.
    unsafe {
        build(
            qp,
            IBV_WR_SEND_WITH_IMM,
            IBV_QP_EX_WITH_SEND_WITH_IMM,
            true,
            |w| w.__bindgen_anon_1.imm_data = imm,
        )
    }
}

unsafe extern "C" fn wr_send_inv(qp: *mut ibv_qp_ex, invalidate_rkey: u32) {
    // SAFETY: as wr_send.
    unsafe {
        build(
            qp,
            IBV_WR_SEND_WITH_INV,
            IBV_QP_EX_WITH_SEND_WITH_INV,
            true,
            |w| w.__bindgen_anon_1.invalidate_rkey = invalidate_rkey,
        )
    }
}

unsafe extern "C" fn wr_local_inv(qp: *mut ibv_qp_ex, invalidate_rkey: u32) {
    // SAFETY: as wr_send.
    unsafe {
        build(qp, IBV_WR_LOCAL_INV, IBV_QP_EX_WITH_LOCAL_INV, false, |w| {
            w.__bindgen_anon_1.invalidate_rkey = invalidate_rkey
        })
    }
}

unsafe extern "C" fn wr_bind_mw(
    qp: *mut ibv_qp_ex,
    mw: *mut ibv_mw,
    rkey: u32,
    bind_info: *const ibv_mw_bind_info,
) {
    // SAFETY: the caller's bind information, read now (its copy goes in
    // the work request); a NULL one leaves the request without a window,
    // which ibv_wr_complete refuses.
    let info = unsafe { bind_info.as_ref().copied() };
    // SAFETY: as wr_send.
    unsafe {
        build(qp, IBV_WR_BIND_MW, IBV_QP_EX_WITH_BIND_MW, false, |w| {
            if let Some(bind_info) = info {
                w.__bindgen_anon_2.bind_mw = ibv_send_wr__bindgen_ty_4__bindgen_ty_1 {
                    mw,
                    rkey,
                    bind_info,
                };
            }
        })
    }
}

unsafe extern "C" fn wr_rdma_write(qp: *mut ibv_qp_ex, rkey: u32, addr: u64) {
    // SAFETY: as wr_send.
    unsafe {
        build(
            qp,
            IBV_WR_RDMA_WRITE,
            IBV_QP_EX_WITH_RDMA_WRITE,
            true,
            |w| {
                w.wr.rdma.remote_addr = addr;
                w.wr.rdma.rkey = rkey;
            },
        )
    }
}

unsafe extern "C" fn wr_rdma_write_imm(qp: *mut ibv_qp_ex, rkey: u32, addr: u64, imm: __be32) {
    // SAFETY: as wr_send.
    unsafe {
        build(
            qp,
            IBV_WR_RDMA_WRITE_WITH_IMM,
            IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM,
            true,
            |w| {
                w.wr.rdma.remote_addr = addr;
                w.wr.rdma.rkey = rkey;
                w.__bindgen_anon_1.imm_data = imm;
            },
        )
    }
}

unsafe extern "C" fn wr_rdma_read(qp: *mut ibv_qp_ex, rkey: u32, addr: u64) {
    // SAFETY: as wr_send.
    unsafe {
        build(qp, IBV_WR_RDMA_READ, IBV_QP_EX_WITH_RDMA_READ, true, |w| {
            w.wr.rdma.remote_addr = addr;
            w.wr.rdma.rkey = rkey;
        })
    }
}

unsafe extern "C" fn wr_atomic_cmp_swp(
    qp: *mut ibv_qp_ex,
    rkey: u32,
    addr: u64,
    compare: u64,
    swap: u64,
) {
    // SAFETY: as wr_send.
    unsafe {
        build(
            qp,
            IBV_WR_ATOMIC_CMP_AND_SWP,
            IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP,
            true,
            |w| {
                w.wr.atomic.remote_addr = addr;
                w.wr.atomic.rkey = rkey;
                w.wr.atomic.compare_add = compare;
                w.wr.atomic.swap = swap;
            },
        )
    }
}

unsafe extern "C" fn wr_atomic_fetch_add(qp: *mut ibv_qp_ex, rkey: u32, addr: u64, add: u64) {
    // SAFETY: as wr_send.
    unsafe {
        build(
            qp,
            IBV_WR_ATOMIC_FETCH_AND_ADD,
            IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD,
            true,
            |w| {
                w.wr.atomic.remote_addr = addr;
                w.wr.atomic.rkey = rkey;
                w.wr.atomic.compare_add = add;
            },
        )
    }
}

/// Applies a setter to the last work request of the batch; a setter with
/// no work request, or a data setter on an operation without data, or a
/// second data setter, is a misuse (EINVAL at `ibv_wr_complete`).
///
/// # Safety
/// `qp` comes from [`create_qp_ex`].
unsafe fn set_last(
    qp: *mut ibv_qp_ex,
    data: bool,
    f: impl FnOnce(&mut Pending) -> Result<(), Errno>,
) {
    guard((), || {
        // SAFETY: the caller promises an extended QP of ours.
        let (_, mut b) = unsafe { batch(qp) };
        let result = match b.wrs.last_mut() {
            Some(p) if data && (!p.takes_data || !p.sges.is_empty() || !p.inline.is_empty()) => {
                Err(libc::EINVAL)
            }
            Some(p) => f(p),
            None => Err(libc::EINVAL),
        };
        if let Err(e) = result {
            if b.error == 0 {
                b.error = e;
            }
        }
    })
}

unsafe extern "C" fn wr_set_sge(qp: *mut ibv_qp_ex, lkey: u32, addr: u64, length: u32) {
    // SAFETY: libibverbs passes the application's extended QP.
    unsafe {
        set_last(qp, true, |p| {
            p.sges.push(ibv_sge { addr, length, lkey });
            Ok(())
        })
    }
}

unsafe extern "C" fn wr_set_sge_list(qp: *mut ibv_qp_ex, n: usize, list: *const ibv_sge) {
    // SAFETY: as wr_set_sge; the caller's list holds n entries.
    unsafe {
        set_last(qp, true, |p| {
            if n > MAX_SGE as usize || (n > 0 && list.is_null()) {
                return Err(libc::EINVAL);
            }
            if n > 0 {
                p.sges
                    .extend_from_slice(std::slice::from_raw_parts(list, n));
            }
            Ok(())
        })
    }
}

/// Copies inline data now, as `IBV_SEND_INLINE` does.
///
/// # Safety
/// `bufs` are the caller's buffers, each readable for its length.
unsafe fn copy_inline(p: &mut Pending, bufs: &[(*const u8, usize)]) -> Result<(), Errno> {
    // Inline data is for the SENDs and RDMA_WRITEs only (ibv_wr_post(3)).
    let op = p.wr.as_ref().map_or(u32::MAX, |w| w.opcode);
    if !flowverbs_verbs::opcode::carries_data(op) {
        return Err(libc::EINVAL);
    }
    let total = bufs.iter().try_fold(0usize, |t, (_, l)| t.checked_add(*l));
    if total.is_none_or(|t| t > MAX_INLINE_DATA as usize) {
        return Err(libc::EINVAL);
    }
    for (addr, len) in bufs {
        if *len > 0 {
            // SAFETY: the caller promises each buffer is readable.
            p.inline
                .extend_from_slice(unsafe { std::slice::from_raw_parts(*addr, *len) });
        }
    }
    if let Some(wr) = p.wr.as_mut() {
        wr.send_flags |= IBV_SEND_INLINE;
    }
    Ok(())
}

unsafe extern "C" fn wr_set_inline_data(qp: *mut ibv_qp_ex, addr: *mut libc::c_void, len: usize) {
    // SAFETY: libibverbs passes the application's extended QP and buffer.
    unsafe { set_last(qp, true, |p| copy_inline(p, &[(addr as *const u8, len)])) }
}

unsafe extern "C" fn wr_set_inline_data_list(
    qp: *mut ibv_qp_ex,
    n: usize,
    list: *const ibv_data_buf,
) {
    // SAFETY: libibverbs passes the application's extended QP; its list
    // holds n buffers.
    unsafe {
        set_last(qp, true, |p| {
            if n > 0 && list.is_null() {
                return Err(libc::EINVAL);
            }
            let bufs: Vec<(*const u8, usize)> = (0..n)
                .map(|i| {
                    let b = &*list.add(i);
                    (b.addr as *const u8, b.length)
                })
                .collect();
            copy_inline(p, &bufs)
        })
    }
}

unsafe extern "C" fn wr_set_ud_addr(qp: *mut ibv_qp_ex, ah: *mut ibv_ah, qpn: u32, qkey: u32) {
    // SAFETY: libibverbs passes the application's extended QP.
    unsafe {
        set_last(qp, false, |p| {
            let wr = p.wr.as_mut().ok_or(libc::EINVAL)?;
            wr.wr.ud.ah = ah;
            wr.wr.ud.remote_qpn = qpn;
            wr.wr.ud.remote_qkey = qkey;
            Ok(())
        })
    }
}
