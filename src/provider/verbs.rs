//! The verbs: protection domains, memory regions, completion queues and
//! queue pairs, with posting and polling on the shared rings.
//!
//! Every object embeds its libibverbs struct first, so the pointer
//! libibverbs holds converts back with one cast (`Fv*::from_*`).

use std::os::fd::OwnedFd;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use super::context::{self, inner, map_segment, take_one_fd, ContextInner, Errno};
use super::ffi::{guard, null_with};
use crate::sys::*;
use crate::wire::control::{AddressVector, QpAttr, QpCaps, Reply, Request};
use crate::wire::entries::{Cqe, RecvWqe, SendWqe, Sge, CQE_SIZE, RECV_WQE_SIZE, SEND_WQE_SIZE};
use crate::wire::limits::*;
use crate::wire::ring::RingIndices;
use crate::wire::ring::RingSlots;
use crate::wire::segment::{CqHeader, CqLayout, Mapping, QpHeader, QpLayout, SrqHeader, SrqLayout};

#[repr(transparent)]
pub struct ContextOps(pub verbs_context_ops);
// SAFETY: immutable table of function pointers.
unsafe impl Sync for ContextOps {}

pub static CONTEXT_OPS: ContextOps = ContextOps(verbs_context_ops {
    alloc_pd: Some(alloc_pd),
    dealloc_pd: Some(dealloc_pd),
    reg_mr: Some(reg_mr),
    dereg_mr: Some(dereg_mr),
    create_cq: Some(create_cq),
    destroy_cq: Some(destroy_cq),
    poll_cq: Some(poll_cq),
    req_notify_cq: Some(req_notify_cq),
    create_qp: Some(create_qp),
    modify_qp: Some(modify_qp),
    query_qp: Some(query_qp),
    destroy_qp: Some(destroy_qp),
    post_send: Some(post_send),
    post_recv: Some(post_recv),
    create_srq: Some(create_srq),
    modify_srq: Some(modify_srq),
    query_srq: Some(query_srq),
    destroy_srq: Some(destroy_srq),
    post_srq_recv: Some(post_srq_recv),
    create_ah: Some(create_ah),
    destroy_ah: Some(destroy_ah),
    query_device_ex: Some(context::query_device_ex),
    query_port: Some(context::query_port),
    free_context: Some(context::free_context),
    ..ZERO_OPS
});

const ZERO_OPS: verbs_context_ops = {
    // SAFETY: verbs_context_ops is pointers and Option<fn>s only; all-zero
    // means "not provided" (libibverbs keeps its dummy for those slots).
    unsafe { std::mem::zeroed() }
};

fn call(ctx: *mut ibv_context, req: &Request) -> Result<(Reply, Vec<OwnedFd>), Errno> {
    // SAFETY: every object's context is one of ours.
    unsafe { inner(ctx) }.call(req)
}

fn unexpected(r: &Reply) -> Errno {
    crate::fv_log!(1, "unexpected reply {r:?}");
    libc::EPROTO
}

// ---------------------------------------------------------------- PD ----

#[repr(C)]
pub struct FvPd {
    pub pd: ibv_pd,
}

unsafe extern "C" fn alloc_pd(ctx: *mut ibv_context) -> *mut ibv_pd {
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

unsafe extern "C" fn dealloc_pd(pd: *mut ibv_pd) -> i32 {
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

unsafe extern "C" fn reg_mr(
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

unsafe extern "C" fn dereg_mr(vmr: *mut verbs_mr) -> i32 {
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

// ---------------------------------------------------------------- CQ ----

#[repr(C)]
pub struct FvCq {
    pub vcq: verbs_cq,
    segment: Mapping,
    ring: RingSlots,
    /// Our consumer index; the lock serialises pollers of one CQ.
    consumer: Mutex<u32>,
}

impl FvCq {
    /// # Safety
    /// `cq` must come from [`create_cq`].
    unsafe fn from_ibv<'a>(cq: *mut ibv_cq) -> &'a FvCq {
        &*(cq as *const FvCq)
    }
    fn header(&self) -> &CqHeader {
        // SAFETY: the CQ segment starts with a CqHeader.
        unsafe { self.segment.header::<CqHeader>() }
    }
}

unsafe extern "C" fn create_cq(
    ctx: *mut ibv_context,
    cqe: i32,
    channel: *mut ibv_comp_channel,
    comp_vector: i32,
) -> *mut ibv_cq {
    guard(ptr::null_mut(), || {
        if cqe < 1 || cqe as u32 > MAX_CQE || comp_vector != 0 {
            return null_with(libc::EINVAL);
        }
        let channel = if channel.is_null() {
            None
        } else {
            // SAFETY: a channel of this context, from ibv_create_comp_channel.
            Some(unsafe { (*channel).fd })
        };
        // The CQ's address is its cookie (what ibv_get_cq_event reads), so
        // it is allocated first and filled once the router has answered.
        let slot = Slot::<FvCq>::new();
        let req = Request::CreateCq {
            cqe: cqe as u32,
            channel,
            cookie: slot.cookie(),
        };
        let (reply, fds) = match call(ctx, &req) {
            Ok(x) => x,
            Err(e) => return null_with(e),
        };
        let Reply::Cq {
            cq,
            capacity,
            segment_size,
        } = reply
        else {
            return null_with(unexpected(&reply));
        };
        let layout = CqLayout::new(capacity);
        let built = take_one_fd(fds).and_then(|fd| {
            if layout.capacity != capacity || layout.size as u64 != segment_size {
                return Err(libc::EPROTO);
            }
            map_segment(&fd, segment_size)
        });
        let segment = match built {
            Ok(s) => s,
            Err(e) => {
                let _ = call(ctx, &Request::DestroyCq { cq });
                return null_with(e);
            }
        };
        // SAFETY: the segment holds `capacity` CQEs at ring_offset.
        let ring =
            unsafe { RingSlots::new(segment.as_ptr().add(layout.ring_offset), CQE_SIZE, capacity) };
        // SAFETY: verbs_cq is plain C data; libibverbs' wrapper initialises
        // the mutex, cond and channel fields (verbs_init_cq) after we return.
        let mut vcq: verbs_cq = unsafe { std::mem::zeroed() };
        vcq.__bindgen_anon_1.cq.context = ctx;
        vcq.__bindgen_anon_1.cq.handle = cq;
        vcq.__bindgen_anon_1.cq.cqe = capacity as i32;
        slot.fill(FvCq {
            vcq,
            segment,
            ring,
            consumer: Mutex::new(0),
        }) as *mut ibv_cq
    })
}

/// The allocation of a CQ, QP or SRQ, made before the router is asked to
/// create the object: its address is the cookie the router's events carry
/// (what `ibv_get_cq_event` / `ibv_get_async_event` hand back). Freed on
/// drop unless [`Slot::fill`]ed.
struct Slot<T>(*mut std::mem::MaybeUninit<T>);

impl<T> Slot<T> {
    fn new() -> Self {
        Slot(Box::into_raw(Box::new(std::mem::MaybeUninit::uninit())))
    }
    fn cookie(&self) -> u64 {
        self.0 as u64
    }
    /// Initialises the object; from here on it is a `Box<T>` allocation.
    fn fill(self, value: T) -> *mut T {
        let raw = self.0;
        std::mem::forget(self);
        // SAFETY: `raw` is our allocation, sized and aligned for T and not
        // yet initialised.
        unsafe { (*raw).write(value) };
        raw as *mut T
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        // SAFETY: an allocation of ours that was never filled.
        drop(unsafe { Box::from_raw(self.0) })
    }
}

/// Frees an object after its router-side destruction, unless events
/// reported for it are not all acknowledged yet. Those (or their records,
/// still unread in a pipe) carry its address, which the application will
/// dereference in `ibv_get_*_event`/`ibv_ack_*_events`; the kernel discards
/// unread events of a destroyed object, but bytes in a pipe cannot be taken
/// back. Such an object is left allocated (a small, bounded leak) so that
/// the late event finds valid memory.
///
/// # Safety
/// `obj` must be a `Box<T>` allocation of ours whose `ibv_*` part has the
/// `mutex` at `mutex` and an acknowledged-events count read by `acked`.
unsafe fn free_unless_events_pending<T>(
    obj: *mut T,
    mutex: *mut pthread_mutex_t,
    reported: u32,
    acked: impl Fn() -> u32,
) {
    libc::pthread_mutex_lock(mutex as *mut libc::pthread_mutex_t);
    let all_acked = acked() == reported;
    libc::pthread_mutex_unlock(mutex as *mut libc::pthread_mutex_t);
    if all_acked {
        drop(Box::from_raw(obj));
    } else {
        crate::fv_log!(
            3,
            "object {obj:p} destroyed with {} unacknowledged events; kept allocated",
            reported.wrapping_sub(acked())
        );
    }
}

unsafe extern "C" fn destroy_cq(cq: *mut ibv_cq) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: cq is one of ours.
        let (ctx, handle) = unsafe { ((*cq).context, (*cq).handle) };
        match call(ctx, &Request::DestroyCq { cq: handle }) {
            Ok((Reply::Destroyed { events }, _)) => {
                // SAFETY: allocated by create_cq as a Box<FvCq>; libibverbs
                // initialised its mutex (verbs_init_cq).
                unsafe {
                    free_unless_events_pending(cq as *mut FvCq, &mut (*cq).mutex, events, || {
                        (*cq).comp_events_completed
                    })
                };
                0
            }
            Ok((r, _)) => unexpected(&r),
            Err(e) => e,
        }
    })
}

unsafe extern "C" fn poll_cq(cq: *mut ibv_cq, num_entries: i32, wc: *mut ibv_wc) -> i32 {
    guard(-1, || {
        // SAFETY: cq is one of ours.
        let fcq = unsafe { FvCq::from_ibv(cq) };
        if num_entries <= 0 {
            return 0;
        }
        let mut consumer = fcq.consumer.lock().unwrap_or_else(|e| e.into_inner());
        let producer = fcq.header().ring.producer();
        let available = producer.wrapping_sub(*consumer).min(fcq.ring.capacity());
        let n = available.min(num_entries as u32);
        for i in 0..n {
            let c: Cqe = fcq.ring.read(consumer.wrapping_add(i));
            let w = ibv_wc {
                wr_id: c.wr_id,
                status: c.status,
                opcode: c.opcode,
                vendor_err: c.vendor_err,
                byte_len: c.byte_len,
                __bindgen_anon_1: ibv_wc__bindgen_ty_1 {
                    imm_data: c.imm_data,
                },
                qp_num: c.qp_num,
                src_qp: c.src_qp,
                wc_flags: c.wc_flags,
                pkey_index: c.pkey_index,
                slid: c.slid,
                sl: c.sl,
                dlid_path_bits: c.dlid_path_bits,
            };
            // SAFETY: the caller's array holds num_entries >= n entries.
            unsafe { wc.add(i as usize).write(w) };
        }
        if n > 0 {
            *consumer = consumer.wrapping_add(n);
            fcq.header().ring.publish_consumer(*consumer);
        }
        n as i32
    })
}

unsafe extern "C" fn req_notify_cq(cq: *mut ibv_cq, solicited_only: i32) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: cq is one of ours.
        let fcq = unsafe { FvCq::from_ibv(cq) };
        // The router consumes the arm when it publishes the next CQE (of
        // the right kind) and writes one event to the CQ's channel; without
        // a channel the arm is harmless. Ordering: wire::segment::CqHeader.
        fcq.header().arm(solicited_only != 0);
        0
    })
}

// ---------------------------------------------------------------- QP ----

#[repr(C)]
pub struct FvQp {
    pub vqp: verbs_qp,
    /// Padding so that `verbs_qp.comp_mask` reads as 0 at the offsets other
    /// PABI-34 builds use (344 to 360): see the contract, §1.
    _pad: [u64; 2],
    segment: Mapping,
    sq: RingSlots,
    rq: RingSlots,
    caps: QpCaps,
    /// Our view of the state, as set by modify_qp; the router may move the
    /// QP to ERR on its own (QpHeader::state).
    state: AtomicU32,
    /// Producer indices; the locks serialise posters.
    sq_producer: Mutex<u32>,
    rq_producer: Mutex<u32>,
}

impl FvQp {
    /// # Safety
    /// `qp` must come from [`create_qp`].
    unsafe fn from_ibv<'a>(qp: *mut ibv_qp) -> &'a FvQp {
        &*(qp as *const FvQp)
    }
    fn header(&self) -> &QpHeader {
        // SAFETY: the QP segment starts with a QpHeader.
        unsafe { self.segment.header::<QpHeader>() }
    }
    fn handle(&self) -> u32 {
        // SAFETY: reading the `qp` member of the union, which we filled.
        unsafe { self.vqp.__bindgen_anon_1.qp.handle }
    }
    fn context(&self) -> &ContextInner {
        // SAFETY: as above; the context is one of ours.
        unsafe { inner(self.vqp.__bindgen_anon_1.qp.context) }
    }
    fn current_state(&self) -> u32 {
        let routed = self.header().state.load(Ordering::Acquire);
        if routed == IBV_QPS_ERR {
            IBV_QPS_ERR
        } else {
            self.state.load(Ordering::Acquire)
        }
    }
}

unsafe extern "C" fn create_qp(pd: *mut ibv_pd, attr: *mut ibv_qp_init_attr) -> *mut ibv_qp {
    guard(ptr::null_mut(), || {
        // SAFETY: pd is ours, attr is the caller's init attributes.
        let (ctx, pdh, a) = unsafe { ((*pd).context, (*pd).handle, &mut *attr) };
        if a.send_cq.is_null() || a.recv_cq.is_null() {
            return null_with(libc::EINVAL);
        }
        let c = &a.cap;
        if c.max_send_wr > MAX_QP_WR
            || c.max_recv_wr > MAX_QP_WR
            || c.max_send_sge > MAX_SGE
            || c.max_recv_sge > MAX_SGE
            || c.max_inline_data > MAX_INLINE_DATA
        {
            return null_with(libc::EINVAL);
        }
        let caps = QpCaps {
            max_send_wr: c.max_send_wr,
            max_recv_wr: c.max_recv_wr,
            max_send_sge: c.max_send_sge,
            max_recv_sge: c.max_recv_sge,
            max_inline_data: c.max_inline_data,
        };
        // SAFETY: both CQs are ours (checked non-NULL above), the SRQ too
        // if given.
        let (scq, rcq, srq) = unsafe {
            let srq = if a.srq.is_null() { 0 } else { (*a.srq).handle };
            ((*a.send_cq).handle, (*a.recv_cq).handle, srq)
        };
        // The QP's address is the element of its async events: allocate
        // first, fill after the router's answer.
        let slot = Slot::<FvQp>::new();
        let req = Request::CreateQp {
            pd: pdh,
            qp_type: a.qp_type,
            send_cq: scq,
            recv_cq: rcq,
            srq,
            caps,
            sq_sig_all: a.sq_sig_all != 0,
            cookie: slot.cookie(),
        };
        let (reply, fds) = match call(ctx, &req) {
            Ok(x) => x,
            Err(e) => return null_with(e),
        };
        let Reply::Qp {
            qp: handle,
            qpn,
            caps,
            sq_capacity,
            rq_capacity,
            segment_size,
        } = reply
        else {
            return null_with(unexpected(&reply));
        };
        let layout = QpLayout::new(sq_capacity, rq_capacity);
        let built = take_one_fd(fds).and_then(|fd| {
            if layout.sq_capacity != sq_capacity
                || layout.rq_capacity != rq_capacity
                || layout.size as u64 != segment_size
            {
                return Err(libc::EPROTO);
            }
            map_segment(&fd, segment_size)
        });
        let segment = match built {
            Ok(s) => s,
            Err(e) => {
                let _ = call(ctx, &Request::DestroyQp { qp: handle });
                return null_with(e);
            }
        };
        // SAFETY: the segment holds both queues at the layout's offsets.
        let (sq, rq) = unsafe {
            (
                RingSlots::new(
                    segment.as_ptr().add(layout.sq_offset),
                    SEND_WQE_SIZE,
                    sq_capacity,
                ),
                RingSlots::new(
                    segment.as_ptr().add(layout.rq_offset),
                    RECV_WQE_SIZE,
                    rq_capacity,
                ),
            )
        };
        // SAFETY: verbs_qp is plain C data; all-zero is its initial value
        // (comp_mask 0: no ibv_qp_ex).
        let vqp: verbs_qp = unsafe { std::mem::zeroed() };
        let b = FvQp {
            vqp,
            _pad: [0; 2],
            segment,
            sq,
            rq,
            caps,
            state: AtomicU32::new(IBV_QPS_RESET),
            sq_producer: Mutex::new(0),
            rq_producer: Mutex::new(0),
        };
        let raw = slot.fill(b);
        // SAFETY: `raw` is our fresh allocation; we fill the ibv_qp fields
        // libibverbs' ibv_create_qp leaves to the provider.
        unsafe {
            let q = &mut (*raw).vqp.__bindgen_anon_1.qp;
            q.context = ctx;
            q.qp_context = a.qp_context;
            q.pd = pd;
            q.send_cq = a.send_cq;
            q.recv_cq = a.recv_cq;
            q.srq = a.srq;
            q.handle = handle;
            q.qp_num = qpn;
            q.state = IBV_QPS_RESET;
            q.qp_type = a.qp_type;
            libc::pthread_mutex_init(
                &mut q.mutex as *mut _ as *mut libc::pthread_mutex_t,
                ptr::null(),
            );
            libc::pthread_cond_init(
                &mut q.cond as *mut _ as *mut libc::pthread_cond_t,
                ptr::null(),
            );
            q.events_completed = 0;
        }
        a.cap.max_send_wr = caps.max_send_wr;
        a.cap.max_recv_wr = caps.max_recv_wr;
        a.cap.max_send_sge = caps.max_send_sge;
        a.cap.max_recv_sge = caps.max_recv_sge;
        a.cap.max_inline_data = caps.max_inline_data;
        raw as *mut ibv_qp
    })
}

fn av_from(ah: &ibv_ah_attr) -> AddressVector {
    AddressVector {
        dlid: ah.dlid,
        sl: ah.sl,
        src_path_bits: ah.src_path_bits,
        static_rate: ah.static_rate,
        is_global: ah.is_global != 0,
        port_num: ah.port_num,
        // SAFETY: ibv_gid is a union of plain bytes.
        dgid: unsafe { ah.grh.dgid.raw },
        flow_label: ah.grh.flow_label,
        sgid_index: ah.grh.sgid_index,
        hop_limit: ah.grh.hop_limit,
        traffic_class: ah.grh.traffic_class,
    }
}

fn av_to(av: &AddressVector, ah: &mut ibv_ah_attr) {
    ah.dlid = av.dlid;
    ah.sl = av.sl;
    ah.src_path_bits = av.src_path_bits;
    ah.static_rate = av.static_rate;
    ah.is_global = u8::from(av.is_global);
    ah.port_num = av.port_num;
    ah.grh.dgid.raw = av.dgid;
    ah.grh.flow_label = av.flow_label;
    ah.grh.sgid_index = av.sgid_index;
    ah.grh.hop_limit = av.hop_limit;
    ah.grh.traffic_class = av.traffic_class;
}

fn attr_from(a: &ibv_qp_attr) -> QpAttr {
    QpAttr {
        qp_state: a.qp_state,
        cur_qp_state: a.cur_qp_state,
        path_mtu: a.path_mtu,
        path_mig_state: a.path_mig_state,
        qkey: a.qkey,
        rq_psn: a.rq_psn,
        sq_psn: a.sq_psn,
        dest_qp_num: a.dest_qp_num,
        qp_access_flags: a.qp_access_flags,
        cap: QpCaps {
            max_send_wr: a.cap.max_send_wr,
            max_recv_wr: a.cap.max_recv_wr,
            max_send_sge: a.cap.max_send_sge,
            max_recv_sge: a.cap.max_recv_sge,
            max_inline_data: a.cap.max_inline_data,
        },
        ah_attr: av_from(&a.ah_attr),
        alt_ah_attr: av_from(&a.alt_ah_attr),
        pkey_index: a.pkey_index,
        alt_pkey_index: a.alt_pkey_index,
        en_sqd_async_notify: a.en_sqd_async_notify,
        sq_draining: a.sq_draining,
        max_rd_atomic: a.max_rd_atomic,
        max_dest_rd_atomic: a.max_dest_rd_atomic,
        min_rnr_timer: a.min_rnr_timer,
        port_num: a.port_num,
        timeout: a.timeout,
        retry_cnt: a.retry_cnt,
        rnr_retry: a.rnr_retry,
        alt_port_num: a.alt_port_num,
        alt_timeout: a.alt_timeout,
        rate_limit: a.rate_limit,
    }
}

unsafe extern "C" fn modify_qp(qp: *mut ibv_qp, attr: *mut ibv_qp_attr, mask: i32) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: qp is ours; attr is the caller's.
        let (fqp, a) = unsafe { (FvQp::from_ibv(qp), &*attr) };
        let req = Request::ModifyQp {
            qp: fqp.handle(),
            attr: attr_from(a),
            mask: mask as u32,
        };
        match fqp.context().call(&req) {
            Ok(_) => {
                if mask as u32 & IBV_QP_STATE != 0 {
                    fqp.state.store(a.qp_state, Ordering::Release);
                }
                0
            }
            Err(e) => e,
        }
    })
}

unsafe extern "C" fn query_qp(
    qp: *mut ibv_qp,
    attr: *mut ibv_qp_attr,
    _mask: i32,
    init: *mut ibv_qp_init_attr,
) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: qp is ours; attr and init are the caller's.
        let (fqp, out, init) = unsafe { (FvQp::from_ibv(qp), &mut *attr, &mut *init) };
        let q = match fqp.context().call(&Request::QueryQp { qp: fqp.handle() }) {
            Ok((Reply::QpAttr { attr }, _)) => attr,
            Ok((r, _)) => return unexpected(&r),
            Err(e) => return e,
        };
        out.qp_state = q.qp_state;
        out.cur_qp_state = q.cur_qp_state;
        out.path_mtu = q.path_mtu;
        out.path_mig_state = q.path_mig_state;
        out.qkey = q.qkey;
        out.rq_psn = q.rq_psn;
        out.sq_psn = q.sq_psn;
        out.dest_qp_num = q.dest_qp_num;
        out.qp_access_flags = q.qp_access_flags;
        out.cap = ibv_qp_cap {
            max_send_wr: fqp.caps.max_send_wr,
            max_recv_wr: fqp.caps.max_recv_wr,
            max_send_sge: fqp.caps.max_send_sge,
            max_recv_sge: fqp.caps.max_recv_sge,
            max_inline_data: fqp.caps.max_inline_data,
        };
        av_to(&q.ah_attr, &mut out.ah_attr);
        av_to(&q.alt_ah_attr, &mut out.alt_ah_attr);
        out.pkey_index = q.pkey_index;
        out.alt_pkey_index = q.alt_pkey_index;
        out.en_sqd_async_notify = q.en_sqd_async_notify;
        out.sq_draining = q.sq_draining;
        out.max_rd_atomic = q.max_rd_atomic;
        out.max_dest_rd_atomic = q.max_dest_rd_atomic;
        out.min_rnr_timer = q.min_rnr_timer;
        out.port_num = q.port_num;
        out.timeout = q.timeout;
        out.retry_cnt = q.retry_cnt;
        out.rnr_retry = q.rnr_retry;
        out.alt_port_num = q.alt_port_num;
        out.alt_timeout = q.alt_timeout;
        out.rate_limit = q.rate_limit;
        // SAFETY: reading the ibv_qp we filled in create_qp.
        let base = unsafe { &fqp.vqp.__bindgen_anon_1.qp };
        init.qp_context = base.qp_context;
        init.send_cq = base.send_cq;
        init.recv_cq = base.recv_cq;
        init.srq = base.srq;
        init.cap = out.cap;
        init.qp_type = base.qp_type;
        init.sq_sig_all = 0;
        fqp.state.store(q.qp_state, Ordering::Release);
        0
    })
}

unsafe extern "C" fn destroy_qp(qp: *mut ibv_qp) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: qp is ours.
        let fqp = unsafe { FvQp::from_ibv(qp) };
        match fqp.context().call(&Request::DestroyQp { qp: fqp.handle() }) {
            Ok((Reply::Destroyed { events }, _)) => {
                // SAFETY: allocated by create_qp as a Box<FvQp>; the mutex
                // was initialised there and stays valid if the QP is kept.
                unsafe {
                    free_unless_events_pending(qp as *mut FvQp, &mut (*qp).mutex, events, || {
                        (*qp).events_completed
                    })
                };
                0
            }
            Ok((r, _)) => unexpected(&r),
            Err(e) => e,
        }
    })
}

// ------------------------------------------------------- posting ----

/// Builds the WQE for one send work request, or the errno to return.
fn build_send_wqe(fqp: &FvQp, wr: &ibv_send_wr) -> Result<SendWqe, Errno> {
    let mut w = SendWqe::zeroed();
    w.wr_id = wr.wr_id;
    w.opcode = wr.opcode;
    w.send_flags = wr.send_flags;
    // SAFETY: reading the ibv_qp we filled in create_qp.
    let qp_type = unsafe { fqp.vqp.__bindgen_anon_1.qp.qp_type };
    let allowed = match qp_type {
        IBV_QPT_UD => matches!(wr.opcode, IBV_WR_SEND | IBV_WR_SEND_WITH_IMM),
        IBV_QPT_UC => matches!(
            wr.opcode,
            IBV_WR_SEND | IBV_WR_SEND_WITH_IMM | IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM
        ),
        _ => true,
    };
    if !allowed {
        return Err(libc::EINVAL);
    }
    if qp_type == IBV_QPT_UD {
        // SAFETY: `ud` is the active member for UD QPs.
        let ud = unsafe { wr.wr.ud };
        if ud.ah.is_null() {
            return Err(libc::EINVAL);
        }
        // SAFETY: every AH we hand out is an FvAh.
        let ah = unsafe { &*(ud.ah as *const FvAh) };
        w.remote_qpn = ud.remote_qpn;
        w.remote_qkey = ud.remote_qkey;
        w.ah_global = u32::from(ah.global);
        w.dgid = ah.dgid;
    }
    match wr.opcode {
        IBV_WR_SEND | IBV_WR_RDMA_WRITE | IBV_WR_RDMA_READ => {}
        IBV_WR_SEND_WITH_IMM | IBV_WR_RDMA_WRITE_WITH_IMM => {
            // SAFETY: imm_data is the active member for these opcodes.
            w.imm_data = unsafe { wr.__bindgen_anon_1.imm_data };
        }
        IBV_WR_ATOMIC_CMP_AND_SWP | IBV_WR_ATOMIC_FETCH_AND_ADD => {}
        _ => return Err(libc::EINVAL),
    }
    // SAFETY: the union member matching the opcode; all are plain data.
    unsafe {
        match wr.opcode {
            IBV_WR_ATOMIC_CMP_AND_SWP | IBV_WR_ATOMIC_FETCH_AND_ADD => {
                w.remote_addr = wr.wr.atomic.remote_addr;
                w.rkey = wr.wr.atomic.rkey;
                w.compare_add = wr.wr.atomic.compare_add;
                w.swap = wr.wr.atomic.swap;
            }
            IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM | IBV_WR_RDMA_READ => {
                w.remote_addr = wr.wr.rdma.remote_addr;
                w.rkey = wr.wr.rdma.rkey;
            }
            _ => {}
        }
    }
    if wr.num_sge < 0 || wr.num_sge as u32 > fqp.caps.max_send_sge.max(1) {
        return Err(libc::EINVAL);
    }
    let sges: &[ibv_sge] = if wr.num_sge == 0 {
        &[]
    } else {
        // SAFETY: the caller promises sg_list has num_sge entries.
        unsafe { std::slice::from_raw_parts(wr.sg_list, wr.num_sge as usize) }
    };
    let inline = wr.send_flags & IBV_SEND_INLINE != 0
        && matches!(
            wr.opcode,
            IBV_WR_SEND | IBV_WR_SEND_WITH_IMM | IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM
        );
    if inline {
        let total: u64 = sges.iter().map(|s| u64::from(s.length)).sum();
        if total > u64::from(fqp.caps.max_inline_data) {
            return Err(libc::EINVAL);
        }
        let mut off = 0usize;
        for s in sges {
            // SAFETY: inline data is read from the caller's buffers right
            // now, as the verbs semantics say (no lkey involved).
            let src = unsafe {
                std::slice::from_raw_parts(s.addr as usize as *const u8, s.length as usize)
            };
            // SAFETY: writing the inline member of a union of plain bytes.
            unsafe { w.payload.inline[off..off + src.len()].copy_from_slice(src) };
            off += src.len();
        }
        w.inline_len = off as u32;
        w.num_sge = 0;
    } else {
        for (i, s) in sges.iter().enumerate() {
            // SAFETY: writing the sge member of a union of plain data.
            unsafe {
                w.payload.sge[i] = Sge {
                    addr: s.addr,
                    length: s.length,
                    lkey: s.lkey,
                }
            };
        }
        w.num_sge = sges.len() as u32;
    }
    Ok(w)
}

unsafe extern "C" fn post_send(
    qp: *mut ibv_qp,
    wr: *mut ibv_send_wr,
    bad_wr: *mut *mut ibv_send_wr,
) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: qp is ours.
        let fqp = unsafe { FvQp::from_ibv(qp) };
        let state = fqp.current_state();
        let mut producer = fqp.sq_producer.lock().unwrap_or_else(|e| e.into_inner());
        let start = *producer;
        let mut cur = wr;
        let mut ret = 0;
        while !cur.is_null() {
            // SAFETY: the caller's chain of work requests.
            let w = unsafe { &*cur };
            if !matches!(state, IBV_QPS_RTS | IBV_QPS_SQD | IBV_QPS_SQE | IBV_QPS_ERR) {
                ret = libc::EINVAL;
                break;
            }
            let consumer = fqp.header().sq.consumer();
            if producer.wrapping_sub(consumer) >= fqp.sq.capacity().min(fqp.caps.max_send_wr.max(1))
            {
                ret = libc::ENOMEM;
                break;
            }
            match build_send_wqe(fqp, w) {
                Ok(wqe) => {
                    fqp.sq.write(*producer, &wqe);
                    *producer = producer.wrapping_add(1);
                }
                Err(e) => {
                    ret = e;
                    break;
                }
            }
            cur = w.next;
        }
        if ret != 0 && !bad_wr.is_null() {
            // SAFETY: the caller's out-pointer.
            unsafe { *bad_wr = cur };
        }
        if *producer != start {
            fqp.header().sq.publish_producer(*producer);
            drop(producer);
            fqp.context().ring_doorbell();
        }
        ret
    })
}

/// A receive ring the provider posts to: a QP's own queue or an SRQ.
struct RecvRing<'a> {
    ring: &'a RingSlots,
    indices: &'a RingIndices,
    producer: &'a Mutex<u32>,
    max_wr: u32,
    max_sge: u32,
}

/// Posts a chain of receive work requests; `refuse` (if non-zero) is the
/// errno for the whole chain (wrong state, QP with an SRQ).
fn post_receives(
    q: RecvRing<'_>,
    ctx: &ContextInner,
    refuse: Errno,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> i32 {
    let mut producer = q.producer.lock().unwrap_or_else(|e| e.into_inner());
    let start = *producer;
    let mut cur = wr;
    let mut ret = refuse;
    while ret == 0 && !cur.is_null() {
        // SAFETY: the caller's chain of work requests.
        let w = unsafe { &*cur };
        if w.num_sge < 0 || w.num_sge as u32 > q.max_sge.max(1) {
            ret = libc::EINVAL;
            break;
        }
        if producer.wrapping_sub(q.indices.consumer()) >= q.ring.capacity().min(q.max_wr.max(1)) {
            ret = libc::ENOMEM;
            break;
        }
        let mut r = RecvWqe::zeroed();
        r.wr_id = w.wr_id;
        r.num_sge = w.num_sge as u32;
        for i in 0..w.num_sge as usize {
            // SAFETY: sg_list has num_sge entries.
            let s = unsafe { &*w.sg_list.add(i) };
            r.sge[i] = Sge {
                addr: s.addr,
                length: s.length,
                lkey: s.lkey,
            };
        }
        q.ring.write(*producer, &r);
        *producer = producer.wrapping_add(1);
        cur = w.next;
    }
    if ret != 0 && !bad_wr.is_null() {
        // SAFETY: the caller's out-pointer.
        unsafe { *bad_wr = cur };
    }
    if *producer != start {
        q.indices.publish_producer(*producer);
        drop(producer);
        ctx.ring_doorbell();
    }
    ret
}

unsafe extern "C" fn post_recv(
    qp: *mut ibv_qp,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: qp is ours.
        let fqp = unsafe { FvQp::from_ibv(qp) };
        // SAFETY: reading the ibv_qp we filled in create_qp.
        let has_srq = unsafe { !fqp.vqp.__bindgen_anon_1.qp.srq.is_null() };
        let refuse = if has_srq || fqp.current_state() == IBV_QPS_RESET {
            libc::EINVAL
        } else {
            0
        };
        let q = RecvRing {
            ring: &fqp.rq,
            indices: &fqp.header().rq,
            producer: &fqp.rq_producer,
            max_wr: fqp.caps.max_recv_wr,
            max_sge: fqp.caps.max_recv_sge,
        };
        post_receives(q, fqp.context(), refuse, wr, bad_wr)
    })
}

// --------------------------------------------------------------- SRQ ----

#[repr(C)]
pub struct FvSrq {
    pub vsrq: verbs_srq,
    segment: Mapping,
    ring: RingSlots,
    max_sge: u32,
    producer: Mutex<u32>,
}

impl FvSrq {
    /// # Safety
    /// `srq` must come from [`create_srq`].
    unsafe fn from_ibv<'a>(srq: *mut ibv_srq) -> &'a FvSrq {
        &*(srq as *const FvSrq)
    }
    fn header(&self) -> &SrqHeader {
        // SAFETY: the SRQ segment starts with an SrqHeader.
        unsafe { self.segment.header::<SrqHeader>() }
    }
    fn context(&self) -> &ContextInner {
        // SAFETY: the context of one of our SRQs is one of ours.
        unsafe { inner(self.vsrq.srq.context) }
    }
}

unsafe extern "C" fn create_srq(pd: *mut ibv_pd, init: *mut ibv_srq_init_attr) -> *mut ibv_srq {
    guard(ptr::null_mut(), || {
        // SAFETY: pd is ours; init is the caller's.
        let (ctx, pdh, a) = unsafe { ((*pd).context, (*pd).handle, &mut *init) };
        // The SRQ's address is the element of its async events: allocate
        // first, fill after the router's answer.
        let slot = Slot::<FvSrq>::new();
        let req = Request::CreateSrq {
            pd: pdh,
            max_wr: a.attr.max_wr,
            max_sge: a.attr.max_sge,
            srq_limit: a.attr.srq_limit,
            cookie: slot.cookie(),
        };
        let (reply, fds) = match call(ctx, &req) {
            Ok(x) => x,
            Err(e) => return null_with(e),
        };
        let Reply::Srq {
            srq,
            capacity,
            max_sge,
            segment_size,
        } = reply
        else {
            return null_with(unexpected(&reply));
        };
        let layout = SrqLayout::new(capacity);
        let built = take_one_fd(fds).and_then(|fd| {
            if layout.capacity != capacity || layout.size as u64 != segment_size {
                return Err(libc::EPROTO);
            }
            map_segment(&fd, segment_size)
        });
        let segment = match built {
            Ok(s) => s,
            Err(e) => {
                let _ = call(ctx, &Request::DestroySrq { srq });
                return null_with(e);
            }
        };
        // SAFETY: the segment holds `capacity` receive WQEs at ring_offset.
        let ring = unsafe {
            RingSlots::new(
                segment.as_ptr().add(layout.ring_offset),
                RECV_WQE_SIZE,
                capacity,
            )
        };
        // SAFETY: verbs_srq is plain C data; libibverbs' wrapper fills
        // context, srq_context, pd, mutex, cond and events_completed.
        let mut vsrq: verbs_srq = unsafe { std::mem::zeroed() };
        vsrq.srq.handle = srq;
        vsrq.srq.context = ctx;
        vsrq.srq_type = IBV_SRQT_BASIC;
        a.attr.max_wr = capacity;
        a.attr.max_sge = max_sge;
        slot.fill(FvSrq {
            vsrq,
            segment,
            ring,
            max_sge,
            producer: Mutex::new(0),
        }) as *mut ibv_srq
    })
}

unsafe extern "C" fn modify_srq(srq: *mut ibv_srq, attr: *mut ibv_srq_attr, mask: i32) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: srq is ours, attr the caller's.
        let (fsrq, a) = unsafe { (FvSrq::from_ibv(srq), &*attr) };
        let req = Request::ModifySrq {
            srq: fsrq.vsrq.srq.handle,
            max_wr: a.max_wr,
            srq_limit: a.srq_limit,
            mask: mask as u32,
        };
        fsrq.context().call(&req).map_or_else(|e| e, |_| 0)
    })
}

unsafe extern "C" fn query_srq(srq: *mut ibv_srq, attr: *mut ibv_srq_attr) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: srq is ours, attr the caller's.
        let (fsrq, out) = unsafe { (FvSrq::from_ibv(srq), &mut *attr) };
        match fsrq.context().call(&Request::QuerySrq {
            srq: fsrq.vsrq.srq.handle,
        }) {
            Ok((
                Reply::SrqAttr {
                    max_wr,
                    max_sge,
                    srq_limit,
                },
                _,
            )) => {
                *out = ibv_srq_attr {
                    max_wr,
                    max_sge,
                    srq_limit,
                };
                0
            }
            Ok((r, _)) => unexpected(&r),
            Err(e) => e,
        }
    })
}

unsafe extern "C" fn destroy_srq(srq: *mut ibv_srq) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: srq is ours.
        let fsrq = unsafe { FvSrq::from_ibv(srq) };
        match fsrq.context().call(&Request::DestroySrq {
            srq: fsrq.vsrq.srq.handle,
        }) {
            Ok((Reply::Destroyed { events }, _)) => {
                // SAFETY: allocated by create_srq as a Box<FvSrq>;
                // libibverbs initialised its mutex (ibv_create_srq).
                unsafe {
                    free_unless_events_pending(srq as *mut FvSrq, &mut (*srq).mutex, events, || {
                        (*srq).events_completed
                    })
                };
                0
            }
            Ok((r, _)) => unexpected(&r),
            Err(e) => e,
        }
    })
}

unsafe extern "C" fn post_srq_recv(
    srq: *mut ibv_srq,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: srq is ours.
        let fsrq = unsafe { FvSrq::from_ibv(srq) };
        let q = RecvRing {
            ring: &fsrq.ring,
            indices: &fsrq.header().rq,
            producer: &fsrq.producer,
            max_wr: fsrq.ring.capacity(),
            max_sge: fsrq.max_sge,
        };
        post_receives(q, fsrq.context(), 0, wr, bad_wr)
    })
}

// ---------------------------------------------------------------- AH ----

/// An address handle: kept in the provider (the router checks the
/// destination of every UD send itself).
#[repr(C)]
pub struct FvAh {
    pub ah: ibv_ah,
    global: bool,
    dgid: [u8; 16],
}

unsafe extern "C" fn create_ah(pd: *mut ibv_pd, attr: *mut ibv_ah_attr) -> *mut ibv_ah {
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
        });
        Box::into_raw(b) as *mut ibv_ah
    })
}

unsafe extern "C" fn destroy_ah(ah: *mut ibv_ah) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: allocated by create_ah as a Box<FvAh>.
        drop(unsafe { Box::from_raw(ah as *mut FvAh) });
        0
    })
}
