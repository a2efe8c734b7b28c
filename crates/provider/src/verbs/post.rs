//! Posting work requests on the shared rings.

use super::*;

// ------------------------------------------------------- posting ----

/// Builds the WQE for one send work request, or the errno to return.
pub(super) fn build_send_wqe(fqp: &FvQp, wr: &ibv_send_wr) -> Result<SendWqe, Errno> {
    let mut w = SendWqe::zeroed();
    w.wr_id = wr.wr_id;
    w.opcode = wr.opcode;
    w.send_flags = wr.send_flags;
    // SAFETY: reading the ibv_qp we filled in create_qp.
    let qp_type = unsafe { fqp.vqp.__bindgen_anon_1.qp.qp_type };
    if !flowverbs_verbs::opcode::allowed(qp_type, wr.opcode) {
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
        w.hop_limit = u32::from(ah.hop_limit);
        w.traffic_class = u32::from(ah.traffic_class);
    }
    match wr.opcode {
        IBV_WR_SEND_WITH_IMM | IBV_WR_RDMA_WRITE_WITH_IMM => {
            // SAFETY: imm_data is the active member for these opcodes.
            w.imm_data = unsafe { wr.__bindgen_anon_1.imm_data };
        }
        IBV_WR_SEND_WITH_INV => {
            // SAFETY: invalidate_rkey is the active member for it.
            w.imm_data = unsafe { wr.__bindgen_anon_1.invalidate_rkey };
        }
        IBV_WR_LOCAL_INV => {
            // SAFETY: as above.
            w.rkey = unsafe { wr.__bindgen_anon_1.invalidate_rkey };
        }
        IBV_WR_BIND_MW => {
            // SAFETY: bind_mw is the active member for BIND_MW.
            let b = unsafe { wr.__bindgen_anon_2.bind_mw };
            if b.mw.is_null() {
                return Err(libc::EINVAL);
            }
            // SAFETY: the caller's window (one of ours) and region.
            unsafe {
                w.mw = (*b.mw).handle;
                w.mw_lkey = if b.bind_info.mr.is_null() {
                    0
                } else {
                    (*b.bind_info.mr).lkey
                };
            }
            w.rkey = b.rkey;
            w.remote_addr = b.bind_info.addr;
            w.compare_add = b.bind_info.length;
            w.mw_access = b.bind_info.mw_access_flags;
            // A bind carries no data.
            return Ok(w);
        }
        _ => {}
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
    let inline =
        wr.send_flags & IBV_SEND_INLINE != 0 && flowverbs_verbs::opcode::carries_data(wr.opcode);
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
            w.inline_mut()[off..off + src.len()].copy_from_slice(src);
            off += src.len();
        }
        w.inline_len = off as u32;
        w.num_sge = 0;
    } else {
        for (i, s) in sges.iter().enumerate() {
            w.payload[i] = Sge {
                addr: s.addr,
                length: s.length,
                lkey: s.lkey,
            };
        }
        w.num_sge = sges.len() as u32;
    }
    Ok(w)
}

pub(super) unsafe extern "C" fn post_send(
    qp: *mut ibv_qp,
    wr: *mut ibv_send_wr,
    bad_wr: *mut *mut ibv_send_wr,
) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: qp is ours.
        let fqp = unsafe { FvQp::from_ibv(qp) };
        if let Some(n) = fqp.nic.as_ref().filter(|n| n.route() == Route::Nic) {
            if n.ud.is_none() {
                // SAFETY: the caller's chain, as ibv_post_send takes it;
                // window binds name the device's twins.
                return unsafe { post_with_twins(wr, bad_wr, |w, b| n.post_send(w, b)) };
            }
            // SAFETY: as above; every AH of ours is an FvAh.
            return unsafe { n.post_ud_send(wr, bad_wr, |ah| (*(ah as *const FvAh)).nic) };
        }
        let state = fqp.current_state();
        let semi = fqp.semi.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let slots = fqp.sq.capacity().min(fqp.caps.max_send_wr.max(1));
        let mut producer = fqp.sq_producer.lock().unwrap_or_else(|e| e.into_inner());
        let start = *producer;
        // A slot is taken until the WR has run and the application has
        // polled its completion (or a later one of the QP).
        let free = |p: u32| fqp.send_slots.in_use(p) < slots;
        let ret = if let Some(path) = semi {
            // Semi mode: the provider runs the work requests itself
            // (`provider::semi`), after the same checks at posting.
            let mut path = path.lock().unwrap_or_else(|e| e.into_inner());
            let ret = take_send_wrs(fqp, state, &mut producer, wr, bad_wr, free, |_, w| {
                path.post(w)
            });
            fqp.send_slots.posted(*producer);
            drop(producer);
            if state == IBV_QPS_ERR {
                path.error = true;
            }
            path.run();
            ret
        } else if let Some(datagrams) = &fqp.datagrams {
            // Semi mode, UD: datagrams to QPs of this trust group are
            // delivered here (`provider::semi::datagram`), the others go
            // to the router's ring, in order (a subset of the WRs the
            // application counts as posted: the ring, twice `max_send_wr`,
            // has room for them, see below).
            let mut path = datagrams.lock().unwrap_or_else(|e| e.into_inner());
            let ring_start = path.ring_producer;
            let mut clock = crate::semi::Clock::default();
            let ret = take_send_wrs(fqp, state, &mut producer, wr, bad_wr, free, |_, w| {
                if !path.deliver(&w, &mut clock) {
                    fqp.sq.write(path.ring_producer, &w);
                    path.ring_producer = path.ring_producer.wrapping_add(1);
                }
            });
            fqp.send_slots.posted(*producer);
            drop(producer);
            if path.ring_producer != ring_start {
                fqp.header().sq.publish_producer(path.ring_producer);
                fqp.context().ring_doorbell();
            }
            ret
        } else {
            // ... and the router has consumed it from the ring. The router
            // publishes a completion before it moves the consumer index past
            // its WR, one WR at a time: a slot the application has freed is
            // at most one WR away from the ring's free space, and the ring
            // holds twice `max_send_wr` (`QpLayout` as the router makes it).
            let ring = fqp.sq.capacity();
            let ring_free = |p: u32| p.wrapping_sub(fqp.header().sq.consumer()) < ring && free(p);
            let ret = take_send_wrs(fqp, state, &mut producer, wr, bad_wr, ring_free, |i, w| {
                fqp.sq.write(i, &w)
            });
            if *producer != start {
                fqp.send_slots.posted(*producer);
                fqp.header().sq.publish_producer(*producer);
                drop(producer);
                fqp.context().ring_doorbell();
            }
            ret
        };
        ret
    })
}

/// The checks at posting, for a chain of send work requests: each WR
/// that passes (state, a free slot per `free`, its own fields) goes to
/// `put` with its send-queue index. Returns the errno of the first WR that
/// fails (and points `bad_wr` at it), or 0.
fn take_send_wrs(
    fqp: &FvQp,
    state: u32,
    producer: &mut u32,
    wr: *mut ibv_send_wr,
    bad_wr: *mut *mut ibv_send_wr,
    free: impl Fn(u32) -> bool,
    mut put: impl FnMut(u32, SendWqe),
) -> i32 {
    let mut cur = wr;
    let mut ret = 0;
    while !cur.is_null() {
        // SAFETY: the caller's chain of work requests.
        let w = unsafe { &*cur };
        if !matches!(state, IBV_QPS_RTS | IBV_QPS_SQD | IBV_QPS_SQE | IBV_QPS_ERR) {
            ret = libc::EINVAL;
            break;
        }
        if !free(*producer) {
            ret = libc::ENOMEM;
            break;
        }
        match build_send_wqe(fqp, w) {
            Ok(mut wqe) => {
                wqe.sq_index = producer.wrapping_add(1);
                put(*producer, wqe);
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
    ret
}

/// The poster's side of a receive ring (under its lock): the next index
/// and the consumer index as last read.
#[derive(Debug, Default)]
pub struct RecvProducer {
    pub next: u32,
    pub seen_consumer: u32,
}

/// A receive ring the provider posts to: a QP's own queue or an SRQ.
pub(super) struct RecvRing<'a> {
    pub(super) ring: &'a RingSlots<RecvWqe>,
    pub(super) indices: &'a RingIndices,
    pub(super) producer: &'a Mutex<RecvProducer>,
    pub(super) max_wr: u32,
    pub(super) max_sge: u32,
    /// When posting must wake the router.
    pub(super) wake_router: WakeRouter<'a>,
}

/// Whether posting receives wakes the router.
pub(super) enum WakeRouter<'a> {
    /// A QP in the error state: the router flushes its receives.
    Always,
    /// Semi senders take them, or nobody waits for them (UD: a datagram
    /// without a receive is dropped).
    Never,
    /// Only while a request on the router's path waits for one (a QP's
    /// own queue in isolated mode, an SRQ).
    IfWaiting(&'a flowverbs_wire::segment::RouterWaiting),
}

/// Posts a chain of receive work requests; `refuse` (if non-zero) is the
/// errno for the whole chain (wrong state, QP with an SRQ).
pub(super) fn post_receives(
    q: RecvRing<'_>,
    ctx: &ContextInner,
    refuse: Errno,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> i32 {
    let mut guard = q.producer.lock().unwrap_or_else(|e| e.into_inner());
    let RecvProducer {
        next: producer,
        seen_consumer,
    } = &mut *guard;
    let start = *producer;
    let mut cur = wr;
    let mut ret = refuse;
    let room = q.ring.capacity().min(q.max_wr.max(1));
    while ret == 0 && !cur.is_null() {
        // SAFETY: the caller's chain of work requests.
        let w = unsafe { &*cur };
        if w.num_sge < 0 || w.num_sge as u32 > q.max_sge.max(1) {
            ret = libc::EINVAL;
            break;
        }
        // The consumer index only moves forward: read it again (a cache
        // line its consumer writes) only when the last value says full.
        if producer.wrapping_sub(*seen_consumer) >= room {
            *seen_consumer = q.indices.consumer();
            if producer.wrapping_sub(*seen_consumer) >= room {
                ret = libc::ENOMEM;
                break;
            }
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
        drop(guard);
        let wake = match q.wake_router {
            WakeRouter::Always => true,
            WakeRouter::Never => false,
            WakeRouter::IfWaiting(w) => w.router_waits(),
        };
        if wake {
            ctx.ring_doorbell();
        }
    }
    ret
}

pub(super) unsafe extern "C" fn post_recv(
    qp: *mut ibv_qp,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: qp is ours.
        let fqp = unsafe { FvQp::from_ibv(qp) };
        if let Some(n) = &fqp.nic {
            loop {
                match n.route() {
                    // SAFETY: the caller's chain, as ibv_post_recv takes it.
                    Route::Nic => return unsafe { n.post_recv(wr, bad_wr) },
                    Route::Undecided if fqp.current_state() != IBV_QPS_RESET => {
                        let max = (fqp.caps.max_recv_wr, fqp.caps.max_recv_sge);
                        // SAFETY: as above. None: the path is known now.
                        if let Some(r) = unsafe { n.receives.hold(wr, bad_wr, max.0, max.1) } {
                            return r;
                        }
                    }
                    _ => break,
                }
            }
        }
        post_own_receives(fqp, wr, bad_wr)
    })
}

/// Posts receives on the QP's own ring (every path but the NIC's).
pub(super) fn post_own_receives(
    fqp: &FvQp,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> i32 {
    {
        // SAFETY: reading the ibv_qp we filled in create_qp.
        let (has_srq, ud) = unsafe {
            let q = &fqp.vqp.__bindgen_anon_1.qp;
            (!q.srq.is_null(), q.qp_type == IBV_QPT_UD)
        };
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
            // (In ERR the router flushes them.)
            wake_router: if refuse != 0 {
                WakeRouter::Never
            } else if fqp.current_state() == IBV_QPS_ERR {
                WakeRouter::Always
            } else if ud || fqp.semi.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                WakeRouter::Never
            } else {
                WakeRouter::IfWaiting(&fqp.header().rq_router_waiting)
            },
        };
        post_receives(q, fqp.context(), refuse, wr, bad_wr)
    }
}
