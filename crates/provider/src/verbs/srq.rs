//! Shared receive queues.

use super::*;

// --------------------------------------------------------------- SRQ ----

#[repr(C)]
pub struct FvSrq {
    pub vsrq: verbs_srq,
    pub(super) segment: Mapping,
    pub(super) ring: RingSlots<RecvWqe>,
    pub(super) max_sge: u32,
    /// Receives it holds, as the application was told.
    pub(super) max_wr: u32,
    pub(super) producer: Mutex<RecvProducer>,
    /// Semi mode over a NIC: the real device's twin (`provider::nic`).
    pub(super) nic: Option<crate::nic::NicSrq>,
}

impl FvSrq {
    /// # Safety
    /// `srq` must come from [`create_srq`].
    pub(super) unsafe fn from_ibv<'a>(srq: *mut ibv_srq) -> &'a FvSrq {
        // SAFETY: the caller promises `srq` came from create_srq: it starts
        // a live `FvSrq` (the ibv struct is its first member).
        unsafe { &*(srq as *const FvSrq) }
    }
    pub(super) fn header(&self) -> &SrqHeader {
        // SAFETY: the SRQ segment starts with an SrqHeader.
        unsafe { self.segment.header::<SrqHeader>() }
    }
    pub(super) fn context(&self) -> &ContextInner {
        // SAFETY: the context of one of our SRQs is one of ours.
        unsafe { inner(self.vsrq.srq.context) }
    }
}

pub(super) unsafe extern "C" fn create_srq(
    pd: *mut ibv_pd,
    init: *mut ibv_srq_init_attr,
) -> *mut ibv_srq {
    guard(ptr::null_mut(), || {
        // SAFETY: pd is ours; init is the caller's.
        let (ctx, pdh, a) = unsafe { ((*pd).context, (*pd).handle, &mut *init) };
        // The SRQ's address is the element of its async events: allocate
        // first, fill after the router's answer.
        let slot = Slot::<FvSrq>::new();
        // SAFETY: ctx is ours; pd is ours.
        let (cx, real_pd) = unsafe { (inner(ctx), FvPd::from_ibv(pd).nic) };
        let nic = match &cx.nic {
            Some(n) if !real_pd.is_null() => {
                let mut init = ibv_srq_init_attr {
                    srq_context: a.srq_context,
                    attr: ibv_srq_attr {
                        max_wr: a.attr.max_wr,
                        max_sge: a.attr.max_sge,
                        srq_limit: 0,
                    },
                };
                n.create_srq(real_pd, &mut init)
                    .map(|s| (s, init.attr.max_wr))
            }
            _ => None,
        };
        // What the application may post: what both the router and the twin
        // hold (receives held before the path go to either).
        let (nic, twin_max_wr) = match nic {
            Some((s, max_wr)) => (Some(s), max_wr),
            None => (None, u32::MAX),
        };
        let req = Request::CreateSrq {
            pd: pdh,
            max_wr: a.attr.max_wr,
            max_sge: a.attr.max_sge,
            srq_limit: a.attr.srq_limit,
            cookie: slot.cookie(),
            nic: nic.is_some(),
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
        let fits = layout.capacity == capacity && layout.size as u64 == segment_size;
        let segment =
            match map_created_segment(ctx, fds, fits, segment_size, Request::DestroySrq { srq }) {
                Ok(s) => s,
                Err(e) => return null_with(e),
            };
        // SAFETY: the segment holds `capacity` receive WQEs at ring_offset.
        let ring = unsafe { RingSlots::new(segment.as_ptr().add(layout.ring_offset), capacity) };
        // SAFETY: verbs_srq is plain C data; libibverbs' wrapper fills
        // context, srq_context, pd, mutex, cond and events_completed.
        let mut vsrq: verbs_srq = unsafe { std::mem::zeroed() };
        vsrq.srq.handle = srq;
        vsrq.srq.context = ctx;
        vsrq.srq_type = IBV_SRQT_BASIC;
        let max_wr = capacity.min(twin_max_wr);
        a.attr.max_wr = max_wr;
        a.attr.max_sge = max_sge;
        let raw = slot.fill(FvSrq {
            vsrq,
            segment,
            ring,
            max_sge,
            max_wr,
            producer: Mutex::new(RecvProducer::default()),
            nic,
        });
        // SAFETY: `raw` is our fresh allocation, filled above.
        if let (Some(n), Some(twin)) = (&cx.nic, unsafe { &(*raw).nic }) {
            n.adopt(twin.raw() as *const _, raw as u64);
        }
        raw as *mut ibv_srq
    })
}

pub(super) unsafe extern "C" fn modify_srq(
    srq: *mut ibv_srq,
    attr: *mut ibv_srq_attr,
    mask: i32,
) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: srq is ours, attr the caller's.
        let (fsrq, a) = unsafe { (FvSrq::from_ibv(srq), &*attr) };
        let req = Request::ModifySrq {
            srq: fsrq.vsrq.srq.handle,
            max_wr: a.max_wr,
            srq_limit: a.srq_limit,
            mask: mask as u32,
        };
        if let Err(e) = fsrq.context().call(&req) {
            return e;
        }
        // The limit is armed on the twin too: the receives are on one of
        // the two queues, and the one that holds them raises the event.
        match &fsrq.nic {
            Some(twin) if mask as u32 & IBV_SRQ_LIMIT != 0 => {
                twin.arm_limit(a.srq_limit).map_or_else(|e| e, |()| 0)
            }
            _ => 0,
        }
    })
}

pub(super) unsafe extern "C" fn query_srq(srq: *mut ibv_srq, attr: *mut ibv_srq_attr) -> i32 {
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

pub(super) unsafe extern "C" fn destroy_srq(srq: *mut ibv_srq) -> i32 {
    guard(libc::EIO, || {
        // The twin first. SAFETY: srq is ours, and the application is
        // destroying it: nothing else uses it now.
        let twin = unsafe { (*(srq as *mut FvSrq)).nic.take() };
        // SAFETY: srq is ours.
        let fsrq = unsafe { FvSrq::from_ibv(srq) };
        let nic_events = match (&twin, fsrq.context().nic.as_ref()) {
            (Some(t), Some(n)) => n.forget(t.raw() as *const _),
            _ => 0,
        };
        drop(twin);
        match fsrq.context().call(&Request::DestroySrq {
            srq: fsrq.vsrq.srq.handle,
        }) {
            Ok((Reply::Destroyed { events }, _)) => {
                // SAFETY: allocated by create_srq as a Box<FvSrq>;
                // libibverbs initialised its mutex (ibv_create_srq).
                unsafe {
                    free_unless_events_pending(
                        srq as *mut FvSrq,
                        &mut (*srq).mutex,
                        events.wrapping_add(nic_events),
                        || (*srq).events_completed,
                    )
                };
                0
            }
            Ok((r, _)) => unexpected(&r),
            Err(e) => e,
        }
    })
}

pub(super) unsafe extern "C" fn post_srq_recv(
    srq: *mut ibv_srq,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: srq is ours.
        let fsrq = unsafe { FvSrq::from_ibv(srq) };
        if let Some(n) = &fsrq.nic {
            loop {
                match n.receives.route() {
                    // SAFETY: the caller's chain, as ibv_post_srq_recv takes it.
                    Route::Nic => return unsafe { n.post_recv(wr, bad_wr) },
                    Route::Undecided => {
                        let max = (fsrq.max_wr, fsrq.max_sge);
                        // SAFETY: as above. None: the path is known now.
                        if let Some(r) = unsafe { n.receives.hold(wr, bad_wr, max.0, max.1) } {
                            return r;
                        }
                    }
                    Route::Own => break,
                }
            }
        }
        post_own_srq_receives(fsrq, wr, bad_wr)
    })
}

/// Posts receives on the SRQ's own ring (every path but the NIC's).
pub(super) fn post_own_srq_receives(
    fsrq: &FvSrq,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> i32 {
    {
        let q = RecvRing {
            ring: &fsrq.ring,
            indices: &fsrq.header().rq,
            producer: &fsrq.producer,
            max_wr: fsrq.max_wr,
            max_sge: fsrq.max_sge,
            wake_router: WakeRouter::IfWaiting(&fsrq.header().router_waiting),
        };
        post_receives(q, fsrq.context(), 0, wr, bad_wr)
    }
}
