//! Queue pairs: creation, modification, queries.

use super::*;

// ---------------------------------------------------------------- QP ----

#[repr(C)]
pub struct FvQp {
    pub vqp: verbs_qp,
    /// Padding so that `verbs_qp.comp_mask` reads as 0 at the offsets other
    /// PABI-34 builds use (344 to 360): see docs/verbs-provider-contract.md, section 5.
    pub(super) _pad: [u64; 2],
    pub(super) segment: Mapping,
    pub(super) sq: RingSlots<SendWqe>,
    pub(super) rq: RingSlots<RecvWqe>,
    pub(super) caps: QpCaps,
    /// Our view of the state, as set by modify_qp; the router may move the
    /// QP to ERR on its own (QpHeader::state).
    pub(super) state: AtomicU32,
    /// Producer indices; the locks serialise posters.
    pub(super) sq_producer: Mutex<u32>,
    pub(super) rq_producer: Mutex<RecvProducer>,
    /// Send slots as the application sees them (freed by polling).
    pub(super) send_slots: Arc<SendSlots>,
    /// Semi mode: this provider runs the send queue (`provider::semi`).
    pub(super) semi: Mutex<Option<Arc<Mutex<SemiPath>>>>,
    /// Semi mode, UD QPs: the datagrams this provider delivers itself.
    pub(super) datagrams: Option<Mutex<DatagramPath>>,
    /// timeout, retry_cnt, rnr_retry as last set (for the semi path).
    pub(super) retry_attrs: Mutex<(u8, u8, u8)>,
    pub(super) sq_sig_all: bool,
    /// Semi mode over a NIC: the real device's twin (`provider::nic`).
    pub(super) nic: Option<NicQp>,
    /// Extended QPs: the `ibv_wr_*` batch being built (`qp_ex`).
    pub(super) batch: Mutex<Batch>,
}

impl FvQp {
    /// # Safety
    /// `qp` must come from [`create_qp`].
    pub(super) unsafe fn from_ibv<'a>(qp: *mut ibv_qp) -> &'a FvQp {
        // SAFETY: the caller promises `qp` came from create_qp: it starts
        // a live `FvQp` (the ibv struct is its first member).
        unsafe { &*(qp as *const FvQp) }
    }
    pub(super) fn header(&self) -> &QpHeader {
        // SAFETY: the QP segment starts with a QpHeader.
        unsafe { self.segment.header::<QpHeader>() }
    }
    pub(super) fn handle(&self) -> u32 {
        // SAFETY: reading the `qp` member of the union, which we filled.
        unsafe { self.vqp.__bindgen_anon_1.qp.handle }
    }
    pub(super) fn context(&self) -> &ContextInner {
        // SAFETY: as above; the context is one of ours.
        unsafe { inner(self.vqp.__bindgen_anon_1.qp.context) }
    }
    pub(super) fn current_state(&self) -> u32 {
        let routed = self.header().state.load(Ordering::Acquire);
        if routed == IBV_QPS_ERR {
            IBV_QPS_ERR
        } else {
            self.state.load(Ordering::Acquire)
        }
    }
}

pub(super) unsafe extern "C" fn create_qp(
    pd: *mut ibv_pd,
    attr: *mut ibv_qp_init_attr,
) -> *mut ibv_qp {
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
        // SAFETY: ctx is ours (the PD's context).
        let cx = unsafe { inner(ctx) };
        let mut nic = nic_twin(cx, pd, a);
        // Twins whose number another QP of the router already has (a
        // router with several NICs sees each device's numbers): kept until
        // the device has given a free one, so that it gives a new one.
        let mut taken = Vec::new();
        let (reply, fds) = loop {
            let req = Request::CreateQp {
                pd: pdh,
                qp_type: a.qp_type,
                send_cq: scq,
                recv_cq: rcq,
                srq,
                caps,
                sq_sig_all: a.sq_sig_all != 0,
                cookie: slot.cookie(),
                nic_qpn: nic.as_ref().map(|(q, _)| q.qpn()),
            };
            match call(ctx, &req) {
                Ok(x) => break x,
                // The NIC's QP number is taken on the router: another
                // twin, a few times; then fv0-only.
                Err(libc::EBUSY) if nic.is_some() => {
                    taken.extend(nic.take());
                    if taken.len() < super::MAX_TWIN_TRIES {
                        nic = nic_twin(cx, pd, a);
                    }
                }
                Err(e) => return null_with(e),
            }
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
        let fits = layout.sq_capacity == sq_capacity
            && layout.rq_capacity == rq_capacity
            && layout.size as u64 == segment_size
            && nic.as_ref().is_none_or(|(q, _)| q.qpn() == qpn);
        // What the application may use: what both the router and the twin
        // give.
        let caps = match &nic {
            Some((_, real)) => QpCaps {
                max_send_wr: caps.max_send_wr.min(real.max_send_wr),
                max_recv_wr: caps.max_recv_wr.min(real.max_recv_wr),
                max_send_sge: caps.max_send_sge.min(real.max_send_sge),
                max_recv_sge: caps.max_recv_sge.min(real.max_recv_sge),
                max_inline_data: caps.max_inline_data.min(real.max_inline_data),
            },
            None => caps,
        };
        let undo = Request::DestroyQp { qp: handle };
        let segment = match map_created_segment(ctx, fds, fits, segment_size, undo) {
            Ok(s) => s,
            Err(e) => return null_with(e),
        };
        // SAFETY: the segment holds both queues at the layout's offsets.
        let (sq, rq) = unsafe {
            (
                RingSlots::new(segment.as_ptr().add(layout.sq_offset), sq_capacity),
                RingSlots::new(segment.as_ptr().add(layout.rq_offset), rq_capacity),
            )
        };
        // SAFETY: verbs_qp is plain C data; all-zero is its initial value
        // (comp_mask 0: no ibv_qp_ex).
        let vqp: verbs_qp = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is ours (the PD's context).
        let context = unsafe { inner(ctx) };
        let datagrams = match (&context.semi, a.qp_type) {
            (Some(_), IBV_QPT_UD) => {
                // SAFETY: the send CQ is ours and outlives the QP.
                let scq = unsafe { FvCq::from_ibv(a.send_cq) };
                let n = NewDatagramPath {
                    qp_handle: handle,
                    qpn,
                    pd: pdh,
                    sq_sig_all: a.sq_sig_all != 0,
                    max_send_sge: caps.max_send_sge,
                    send_cq: &scq.rings,
                    own_header: segment.as_ptr() as *const QpHeader,
                };
                Some(Mutex::new(DatagramPath::new(context, n)))
            }
            _ => None,
        };
        let b = FvQp {
            vqp,
            _pad: [0; 2],
            segment,
            sq,
            rq,
            caps,
            state: AtomicU32::new(IBV_QPS_RESET),
            sq_producer: Mutex::new(0),
            rq_producer: Mutex::new(RecvProducer::default()),
            send_slots: Arc::new(SendSlots::default()),
            semi: Mutex::new(None),
            datagrams,
            retry_attrs: Mutex::new((0, 0, 0)),
            sq_sig_all: a.sq_sig_all != 0,
            nic: nic.map(|(q, _)| q),
            batch: Mutex::new(Batch::default()),
        };
        let slots = b.send_slots.clone();
        let raw = slot.fill(b);
        // SAFETY: ctx is ours (the PD's context).
        let context = unsafe { inner(ctx) };
        context.send_queues.insert(qpn, slots);
        context.flushable.add(raw);
        // SAFETY: `raw` is our fresh allocation, filled above.
        if let (Some(n), Some(twin)) = (&context.nic, unsafe { &(*raw).nic }) {
            n.adopt(twin.raw() as *const _, raw as u64);
        }
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

/// Semi mode over a NIC: the real twin of an RC or UC QP without an SRQ
/// whose PD and CQs have twins, and the capabilities the device gave it.
fn nic_twin(
    ctx: &ContextInner,
    pd: *mut ibv_pd,
    a: &ibv_qp_init_attr,
) -> Option<(NicQp, ibv_qp_cap)> {
    let nic = ctx.nic.as_ref()?;
    if !matches!(a.qp_type, IBV_QPT_RC | IBV_QPT_UC | IBV_QPT_UD)
        || a.qp_type == IBV_QPT_UD && !a.srq.is_null()
    {
        return None;
    }
    let real_srq = if a.srq.is_null() {
        ptr::null_mut()
    } else {
        // SAFETY: the caller's SRQ is one of ours.
        match &unsafe { FvSrq::from_ibv(a.srq) }.nic {
            Some(s) => s.raw(),
            None => return None,
        }
    };
    // SAFETY: pd and both CQs are ours (checked non-NULL by the caller).
    let (real_pd, scq, rcq) = unsafe {
        (
            FvPd::from_ibv(pd).nic,
            FvCq::from_ibv(a.send_cq).nic,
            FvCq::from_ibv(a.recv_cq).nic,
        )
    };
    if real_pd.is_null() || scq.is_null() || rcq.is_null() {
        return None;
    }
    let mut init = ibv_qp_init_attr {
        qp_context: a.qp_context,
        send_cq: scq,
        recv_cq: rcq,
        srq: real_srq,
        cap: a.cap,
        qp_type: a.qp_type,
        sq_sig_all: a.sq_sig_all,
    };
    let mut q = nic.create_qp(real_pd, &mut init)?;
    if a.qp_type == IBV_QPT_UD {
        nic.track_ud(&mut q);
    }
    Some((q, init.cap))
}

pub(super) fn av_from(ah: &ibv_ah_attr) -> AddressVector {
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

pub(super) fn av_to(av: &AddressVector, ah: &mut ibv_ah_attr) {
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

pub(super) fn attr_from(a: &ibv_qp_attr) -> QpAttr {
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

pub(super) unsafe extern "C" fn modify_qp(
    qp: *mut ibv_qp,
    attr: *mut ibv_qp_attr,
    mask: i32,
) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: qp is ours; attr is the caller's.
        let (fqp, a) = unsafe { (FvQp::from_ibv(qp), &*attr) };
        let req = Request::ModifyQp {
            qp: fqp.handle(),
            attr: attr_from(a),
            mask: mask as u32,
        };
        match fqp.context().call(&req) {
            Ok((reply, _)) => {
                let m = mask as u32;
                let mut r = fqp.retry_attrs.lock().unwrap_or_else(|e| e.into_inner());
                if m & IBV_QP_TIMEOUT != 0 {
                    r.0 = a.timeout;
                }
                if m & IBV_QP_RETRY_CNT != 0 {
                    r.1 = a.retry_cnt;
                }
                if m & IBV_QP_RNR_RETRY != 0 {
                    r.2 = a.rnr_retry;
                }
                let retry = *r;
                drop(r);
                if m & IBV_QP_STATE != 0 {
                    if a.qp_state == IBV_QPS_RESET {
                        // The router discarded the queue (and its CQEs
                        // still in the CQ are stale for the slots).
                        let producer = fqp.sq_producer.lock().unwrap_or_else(|e| e.into_inner());
                        fqp.send_slots.reset(*producer);
                    }
                    fqp.state.store(a.qp_state, Ordering::Release);
                }
                if let Err(e) = semi_after_modify(fqp, m, a.qp_state, retry, &reply) {
                    return e;
                }
                if let Some(n) = &fqp.nic {
                    let path = match reply {
                        Reply::NicPath { dgid, sgid_index } => Some((dgid, sgid_index)),
                        _ => None,
                    };
                    let own =
                        |held| post_held(held, "QP", |wr, bad| post_own_receives(fqp, wr, bad));
                    if let Err(e) = n.after_modify(a, m, path, own) {
                        return e;
                    }
                    if let Err(e) = settle_srq(fqp, n.route()) {
                        return e;
                    }
                }
                0
            }
            Err(e) => e,
        }
    })
}

/// Semi mode: the path a modify created (RTR), changed or ended.
fn semi_after_modify(
    fqp: &FvQp,
    mask: u32,
    state: u32,
    retry: (u8, u8, u8),
    reply: &Reply,
) -> Result<(), Errno> {
    let ctx = fqp.context();
    let Some(semi) = ctx.semi.as_ref() else {
        return Ok(());
    };
    let mut slot = fqp.semi.lock().unwrap_or_else(|e| e.into_inner());
    if mask & IBV_QP_STATE != 0 && state == IBV_QPS_RESET {
        if let Some(p) = slot.take() {
            semi.retire(&p);
        }
    }
    if let Reply::SemiPath { .. } = reply {
        // SAFETY: reading the ibv_qp we filled in create_qp; its send CQ
        // is one of ours and outlives the QP.
        let (qpn, qp_type, pd, scq) = unsafe {
            let q = &fqp.vqp.__bindgen_anon_1.qp;
            (
                q.qp_num,
                q.qp_type,
                (*q.pd).handle,
                FvCq::from_ibv(q.send_cq),
            )
        };
        let n = NewPath {
            qp_handle: fqp.handle(),
            qpn,
            uc: qp_type == IBV_QPT_UC,
            pd,
            sq_sig_all: fqp.sq_sig_all,
            max_send_sge: fqp.caps.max_send_sge,
            send_cq: &scq.rings,
            own_header: fqp.header() as *const QpHeader,
        };
        *slot = Some(SemiPath::new(ctx, n, reply)?);
    }
    if let Some(p) = slot.as_ref() {
        let mut path = p.lock().unwrap_or_else(|e| e.into_inner());
        (path.timeout, path.retry_cnt, path.rnr_retry) = retry;
        if mask & IBV_QP_STATE != 0 && state == IBV_QPS_ERR {
            path.error = true;
            path.run();
        }
    }
    Ok(())
}

/// Semi mode over a NIC: the first QP of an SRQ backed by the NIC that
/// settles its path settles the SRQ's (the router keeps the others on the
/// same kind of path); receives held for fv0's own path go to its ring.
fn settle_srq(fqp: &FvQp, route: Route) -> Result<(), Errno> {
    // SAFETY: reading the ibv_qp we filled in create_qp.
    let srq = unsafe { fqp.vqp.__bindgen_anon_1.qp.srq };
    if srq.is_null() || route == Route::Undecided {
        return Ok(());
    }
    // SAFETY: the QP's SRQ is one of ours and outlives it.
    let fsrq = unsafe { FvSrq::from_ibv(srq) };
    let Some(n) = &fsrq.nic else {
        return Ok(());
    };
    n.settle(route, |held| {
        post_held(held, "SRQ", |wr, bad| post_own_srq_receives(fsrq, wr, bad))
    })
}

/// Posts receives that waited for the path (semi mode over a NIC) on
/// fv0's own ring (`post`), as if they had been posted there.
fn post_held(
    mut held: Vec<crate::nic::HeldReceive>,
    what: &str,
    post: impl FnOnce(*mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> i32,
) {
    let mut wrs = crate::nic::chain(&mut held);
    if let Some(first) = wrs.first_mut() {
        let mut bad = ptr::null_mut();
        let r = post(first, &mut bad);
        if r != 0 {
            crate::fv_log!(1, "{what} receives held for the path are lost: errno {r}");
        }
    }
}

pub(super) unsafe extern "C" fn query_qp(
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
        // On the NIC, the real QP's state: a transport error moves it to
        // ERR without the router knowing.
        let state = match fqp.nic.as_ref().filter(|n| n.route() == Route::Nic) {
            Some(n) => n.state().unwrap_or(q.qp_state),
            None => q.qp_state,
        };
        out.qp_state = state;
        out.cur_qp_state = state;
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
        init.sq_sig_all = i32::from(fqp.sq_sig_all);
        fqp.state.store(state, Ordering::Release);
        0
    })
}

pub(super) unsafe extern "C" fn destroy_qp(qp: *mut ibv_qp) -> i32 {
    guard(libc::EIO, || {
        // The twin first (its CQs and PD must be free when the
        // application destroys them next). SAFETY: qp is ours, and the
        // application is destroying it: nothing else uses it now.
        let twin = unsafe { (*(qp as *mut FvQp)).nic.take() };
        // SAFETY: the QP's context is ours.
        let cx = unsafe { inner((*qp).context) };
        let mut nic_events = 0;
        if let (Some(t), Some(n)) = (&twin, cx.nic.as_ref()) {
            n.untrack_ud(t.qpn());
            nic_events = n.forget(t.raw() as *const _);
        }
        drop(twin);
        // SAFETY: qp is ours.
        let fqp = unsafe { FvQp::from_ibv(qp) };
        match fqp.context().call(&Request::DestroyQp { qp: fqp.handle() }) {
            Ok((Reply::Destroyed { events }, _)) => {
                // SAFETY: reading the ibv_qp we filled in create_qp.
                let qpn = unsafe { fqp.vqp.__bindgen_anon_1.qp.qp_num };
                fqp.context().send_queues.remove(qpn);
                fqp.context().flushable.remove(fqp);
                let path = fqp.semi.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let (Some(p), Some(semi)) = (path, fqp.context().semi.as_ref()) {
                    semi.retire(&p);
                }
                // SAFETY: allocated by create_qp as a Box<FvQp>; the mutex
                // was initialised there and stays valid if the QP is kept.
                unsafe {
                    free_unless_events_pending(
                        qp as *mut FvQp,
                        &mut (*qp).mutex,
                        events.wrapping_add(nic_events),
                        || (*qp).events_completed,
                    )
                };
                0
            }
            Ok((r, _)) => unexpected(&r),
            Err(e) => e,
        }
    })
}
