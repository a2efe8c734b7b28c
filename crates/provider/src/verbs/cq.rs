//! Completion queues: creation, polling, arming, resizing.

use super::*;
use crate::cq_rings::{CqRings, CqSegment};
use std::collections::VecDeque;

// ---------------------------------------------------------------- CQ ----

#[repr(C)]
pub struct FvCq {
    pub vcq: verbs_cq,
    /// Its rings: the current one, and those `ibv_resize_cq` left.
    pub(super) rings: CqRings,
    /// Where polling is; the lock serialises pollers (and resizes) of one
    /// CQ.
    pub(super) consumer: Mutex<Consumer>,
    /// Polls in a row that found nothing (see [`EMPTY_POLLS_BEFORE_YIELD`]).
    pub(super) empty_polls: std::sync::atomic::AtomicU32,
    /// Completions polled since the last one the router produced
    /// (saturating): while it is below [`PEER_COMPLETIONS_TO_STOP_YIELDING`]
    /// the router is feeding this CQ, and polling yields the CPU to it.
    /// Isolated mode starts at 0 (the router produces everything); semi
    /// mode starts saturated, so a CQ only semi peers fill (or that shares
    /// a QP with no traffic on the router's path, such as UCX's loopback
    /// QP) is polled without yielding, as on a NIC.
    pub(super) since_router: std::sync::atomic::AtomicU32,
    /// Semi mode over a NIC: the real device's twin, polled first (NULL:
    /// none).
    pub(super) nic: *mut ibv_cq,
    /// The completion channel's fd (-1: none), where the twin's events
    /// are written too.
    channel_fd: i32,
    /// Completion events of the twin written to the channel (the router
    /// counts its own).
    nic_events: AtomicU32,
    /// An extended CQ's current completion (`ibv_start_poll` /
    /// `ibv_next_poll` fill it, the `ibv_wc_read_*` calls read it). Only the
    /// thread between start and end of a poll touches it (the verbs
    /// contract).
    pub(super) current: std::cell::UnsafeCell<ibv_wc>,
}

/// The consumer's place: its index in the current ring, and the rings a
/// resize left that it has not drained yet, oldest first (the protocol is
/// argued at `wire::cq_ring`).
pub(super) struct Consumer {
    index: u32,
    draining: VecDeque<Draining>,
}

/// An old ring with completions left in it, up to `end`.
struct Draining {
    ring: *const CqSegment,
    index: u32,
    end: u32,
}

// SAFETY: `ring` points into the CQ's `CqRings`, which keeps every ring
// mapped for the life of the CQ that holds this value.
unsafe impl Send for Draining {}

impl Consumer {
    fn new() -> Consumer {
        Consumer {
            index: 0,
            draining: VecDeque::new(),
        }
    }

    /// Takes up to `max` published completions in order, the old rings'
    /// first; `each` gets every one with its position. A ring whose next
    /// entry is claimed but not yet published stops the take there (each
    /// producer's order holds across rings).
    fn take(&mut self, rings: &CqRings, max: u32, mut each: impl FnMut(&Cqe, u32)) -> u32 {
        let mut n = 0;
        while let Some(d) = self.draining.front_mut() {
            // SAFETY: see `Draining`.
            let old = unsafe { &*d.ring };
            if d.index == d.end {
                // Tells the router it may forget this ring.
                old.header().ring.publish_consumer(d.end);
                self.draining.pop_front();
                continue;
            }
            if n == max {
                return n;
            }
            let Some(c) = old.ring().peek(d.index) else {
                return n;
            };
            each(&c, n);
            d.index = d.index.wrapping_add(1);
            n += 1;
        }
        let current = rings.current();
        let ring = current.ring();
        let start = n;
        while n < max {
            let Some(c) = ring.peek(self.index) else {
                break;
            };
            each(&c, n);
            self.index = self.index.wrapping_add(1);
            n += 1;
        }
        if n > start {
            current.header().ring.publish_consumer(self.index);
        }
        n
    }

    /// `ibv_req_notify_cq`: arms the current ring and every ring not yet
    /// drained (a late producer there raises the event on that ring).
    fn arm(&self, rings: &CqRings, solicited_only: bool) {
        rings.current().header().arm(solicited_only);
        for d in &self.draining {
            // SAFETY: see `Draining`.
            unsafe { &*d.ring }.header().arm(solicited_only);
        }
    }
}

/// Semi mode over a NIC: a completion event of a CQ's real twin, written
/// to the fv0 CQ's channel as the router writes its own (the `ibv_cq *`).
fn deliver_nic_event(writers: &crate::watcher::ChannelWriters, cq_context: *mut libc::c_void) {
    // SAFETY: the twin's cq_context is its fv0 CQ, which outlives the
    // twin (destroy_cq destroys the twin first, and that waits for this
    // event's acknowledgement, which comes after this call).
    let fcq = unsafe { &*(cq_context as *const FvCq) };
    fcq.nic_events.fetch_add(1, Ordering::SeqCst);
    let writers = writers.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = writers.get(&fcq.channel_fd) {
        let _ = nix::unistd::write(w, &(cq_context as u64).to_ne_bytes());
    }
}

/// After this many empty polls in a row, `poll_cq` yields the CPU once per
/// empty poll. Applications busy-poll their CQs; on a host with fewer cores
/// than busy threads, the router that produces the completions would
/// otherwise wait for the scheduler to preempt a poller. Yielding costs one
/// cheap system call when nothing else wants the CPU.
/// `FLOWVERBS_POLL_YIELD=N` sets it (0: never yield).
const EMPTY_POLLS_BEFORE_YIELD: u32 = 32;

/// Completions from semi peers in a row after which a CQ counts as no
/// longer fed by the router.
const PEER_COMPLETIONS_TO_STOP_YIELDING: u32 = 64;

fn empty_polls_before_yield(router_fed: bool) -> u32 {
    static N: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    let configured = *N.get_or_init(|| {
        std::env::var("FLOWVERBS_POLL_YIELD")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(|n: u32| if n == 0 { u32::MAX } else { n })
    });
    // A CQ that only semi-mode peers fill needs no router: yielding would
    // only add a scheduling round trip to every wait.
    configured.unwrap_or(if router_fed {
        EMPTY_POLLS_BEFORE_YIELD
    } else {
        u32::MAX
    })
}

impl FvCq {
    /// # Safety
    /// `cq` must come from [`create_cq`].
    pub(super) unsafe fn from_ibv<'a>(cq: *mut ibv_cq) -> &'a FvCq {
        // SAFETY: the caller promises `cq` came from create_cq: it starts
        // a live `FvCq` (the ibv struct is its first member).
        unsafe { &*(cq as *const FvCq) }
    }
}

pub(super) unsafe extern "C" fn create_cq(
    ctx: *mut ibv_context,
    cqe: i32,
    channel: *mut ibv_comp_channel,
    comp_vector: i32,
) -> *mut ibv_cq {
    guard(ptr::null_mut(), || {
        // SAFETY: libibverbs passes its context and the caller's channel.
        match unsafe { new_cq(ctx, cqe, channel, comp_vector) } {
            Ok(cq) => cq as *mut ibv_cq,
            Err(e) => null_with(e),
        }
    })
}

/// Creates a CQ (`ibv_create_cq` and `ibv_create_cq_ex`): asks the router,
/// maps the ring, and makes the real twin in semi mode over a NIC.
///
/// # Safety
/// `ctx` is one of our contexts; `channel` is NULL or one of its channels.
pub(super) unsafe fn new_cq(
    ctx: *mut ibv_context,
    cqe: i32,
    channel: *mut ibv_comp_channel,
    comp_vector: i32,
) -> Result<*mut FvCq, Errno> {
    {
        if cqe < 1 || cqe as u32 > MAX_CQE || comp_vector != 0 {
            return Err(libc::EINVAL);
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
        let (reply, fds) = call(ctx, &req)?;
        let Reply::Cq {
            cq,
            capacity,
            segment_size,
        } = reply
        else {
            return Err(unexpected(&reply));
        };
        let layout = CqLayout::new(capacity);
        let fits = layout.capacity == capacity && layout.size as u64 == segment_size;
        let segment = map_created_segment(ctx, fds, fits, segment_size, Request::DestroyCq { cq })?;
        // SAFETY: ctx is ours.
        let cx = unsafe { inner(ctx) };
        let nic = match cx.nic.as_ref() {
            Some(n) => {
                let writers = cx.channel_writers.clone();
                let deliver = channel.map(|_| -> crate::nic::Deliver {
                    Box::new(move |cq_context| deliver_nic_event(&writers, cq_context))
                });
                n.create_cq(cqe, slot.cookie() as *mut libc::c_void, deliver)
            }
            None => ptr::null_mut(),
        };
        // SAFETY: verbs_cq is plain C data; libibverbs' wrapper initialises
        // the mutex, cond and channel fields (verbs_init_cq) after we return.
        let mut vcq: verbs_cq = unsafe { std::mem::zeroed() };
        vcq.__bindgen_anon_1.cq.context = ctx;
        vcq.__bindgen_anon_1.cq.handle = cq;
        vcq.__bindgen_anon_1.cq.cqe = capacity as i32;
        Ok(slot.fill(FvCq {
            vcq,
            rings: CqRings::new(CqSegment::new(segment, layout)),
            consumer: Mutex::new(Consumer::new()),
            empty_polls: std::sync::atomic::AtomicU32::new(0),
            // SAFETY: ctx is ours.
            since_router: std::sync::atomic::AtomicU32::new(
                if unsafe { inner(ctx) }.semi.is_none() {
                    0
                } else {
                    u32::MAX
                },
            ),
            nic,
            channel_fd: channel.unwrap_or(-1),
            nic_events: AtomicU32::new(0),
            // SAFETY: ibv_wc is plain C data.
            current: std::cell::UnsafeCell::new(unsafe { std::mem::zeroed() }),
        }))
    }
}

pub(super) unsafe extern "C" fn destroy_cq(cq: *mut ibv_cq) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: cq is one of ours.
        let (ctx, handle) = unsafe { ((*cq).context, (*cq).handle) };
        // The twin first: the device refuses (EBUSY) a CQ still in use.
        // SAFETY: cq is one of ours.
        let nic = unsafe { FvCq::from_ibv(cq) }.nic;
        if !nic.is_null() {
            if let Err(e) = crate::nic::destroy_cq(nic) {
                return e;
            }
            // SAFETY: ours; the twin is gone.
            unsafe { (*(cq as *mut FvCq)).nic = ptr::null_mut() };
        }
        match call(ctx, &Request::DestroyCq { cq: handle }) {
            Ok((Reply::Destroyed { events }, _)) => {
                // SAFETY: cq is ours.
                let events = events.wrapping_add(
                    unsafe { FvCq::from_ibv(cq) }
                        .nic_events
                        .load(Ordering::SeqCst),
                );
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

pub(super) unsafe extern "C" fn poll_cq(cq: *mut ibv_cq, num_entries: i32, wc: *mut ibv_wc) -> i32 {
    guard(-1, || {
        // SAFETY: cq is one of ours.
        let fcq = unsafe { FvCq::from_ibv(cq) };
        if num_entries <= 0 {
            return 0;
        }
        // SAFETY: the CQ's context is ours.
        let ctx = unsafe { inner((*cq).context) };
        // The twin's completions first, straight from the vendor provider.
        let from_nic = if fcq.nic.is_null() {
            0
        } else {
            // SAFETY: a live real CQ; the caller's array holds num_entries.
            let n = unsafe { crate::nic::poll_cq(fcq.nic, num_entries, wc) };
            if n > 0 {
                if let Some(nic) = &ctx.nic {
                    // SAFETY: the real provider filled n entries.
                    let wcs = unsafe { std::slice::from_raw_parts(wc, n as usize) };
                    nic.rewrite_grhs(wcs, ctx.gid, |nic_gid, qpn| {
                        match ctx.call(&Request::NicSource { nic_gid, qpn }) {
                            Ok((Reply::NicSource { gid }, _)) => Some(gid),
                            _ => None,
                        }
                    });
                }
            }
            if n < 0 || n == num_entries {
                return n;
            }
            n
        };
        // SAFETY: the caller's array holds num_entries > from_nic entries.
        let (wc, num_entries) = (unsafe { wc.add(from_nic as usize) }, num_entries - from_nic);
        if let Some(semi) = ctx.semi.as_ref() {
            semi.progress();
        }
        let mut consumer = fcq.consumer.lock().unwrap_or_else(|e| e.into_inner());
        let mut since_router = fcq.since_router.load(Ordering::Relaxed);
        let mut n = consumer.take(&fcq.rings, num_entries as u32, |c, at| {
            if c.opcode < IBV_WC_RECV {
                ctx.send_queues.retire(c.qp_num, c.sq_index);
            }
            since_router = if c.from_router != 0 {
                0
            } else {
                since_router.saturating_add(1)
            };
            // SAFETY: the caller's array holds num_entries > at entries.
            unsafe { wc.add(at as usize).write(wc_of(c)) };
        });
        if n < num_entries as u32 && ctx.router_gone() {
            // SAFETY: the caller's array holds num_entries > n entries; cq
            // is one of this context's.
            n += unsafe {
                ctx.flushable
                    .flush(ctx, cq, wc.add(n as usize), num_entries as u32 - n)
            };
        }
        if n > 0 {
            fcq.since_router.store(since_router, Ordering::Relaxed);
            fcq.empty_polls
                .store(0, std::sync::atomic::Ordering::Relaxed);
        } else {
            drop(consumer);
            let empty = fcq
                .empty_polls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let router_fed =
                fcq.since_router.load(Ordering::Relaxed) < PEER_COMPLETIONS_TO_STOP_YIELDING;
            if from_nic == 0 && empty >= empty_polls_before_yield(router_fed) {
                std::thread::yield_now();
            }
        }
        from_nic + n as i32
    })
}

/// A completion as `ibv_poll_cq` returns it.
pub(super) fn wc_of(c: &Cqe) -> ibv_wc {
    ibv_wc {
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
    }
}

pub(super) unsafe extern "C" fn req_notify_cq(cq: *mut ibv_cq, solicited_only: i32) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: cq is one of ours.
        let fcq = unsafe { FvCq::from_ibv(cq) };
        // The router consumes the arm when it publishes the next CQE (of
        // the right kind) and writes one event to the CQ's channel; without
        // a channel the arm is harmless. Ordering: wire::segment::CqHeader.
        fcq.consumer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .arm(&fcq.rings, solicited_only != 0);
        if fcq.nic.is_null() {
            0
        } else {
            // SAFETY: a live real CQ.
            unsafe { crate::nic::req_notify_cq(fcq.nic, solicited_only) }
        }
    })
}

/// `ibv_resize_cq`: the router makes a ring of at least `cqe` entries, this
/// process maps it, then the router moves the CQ there (two requests, so
/// that a failure to map leaves the CQ as it was). The consumer drains the
/// old ring first. A CQ with a NIC twin (semi mode over a NIC) has the
/// twin resized first, with the device's own rules.
pub(super) unsafe extern "C" fn resize_cq(cq: *mut ibv_cq, cqe: i32) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: cq is one of ours.
        let fcq = unsafe { FvCq::from_ibv(cq) };
        if cqe < 1 || cqe as u32 > MAX_CQE {
            return libc::EINVAL;
        }
        if !fcq.nic.is_null() {
            if let Err(e) = crate::nic::resize_cq(fcq.nic, cqe) {
                return e;
            }
        }
        // SAFETY: cq is one of ours.
        let (ctx, handle) = unsafe { ((*cq).context, (*cq).handle) };
        let next = match call(
            ctx,
            &Request::ResizeCq {
                cq: handle,
                cqe: cqe as u32,
            },
        ) {
            Ok((
                Reply::Cq {
                    capacity,
                    segment_size,
                    ..
                },
                fds,
            )) => {
                let layout = CqLayout::new(capacity);
                if layout.capacity != capacity || layout.size as u64 != segment_size {
                    return libc::EPROTO;
                }
                match take_one_fd(fds).and_then(|fd| map_segment(&fd, segment_size)) {
                    Ok(m) => CqSegment::new(m, layout),
                    Err(e) => return e,
                }
            }
            Ok((r, _)) => return unexpected(&r),
            Err(e) => return e,
        };
        let capacity = next.slots().capacity();
        // Pollers wait while the CQ moves; this process's semi paths that
        // find the old ring moved wait for `switch_to` (`CqView`).
        let mut consumer = fcq.consumer.lock().unwrap_or_else(|e| e.into_inner());
        fcq.rings.set_resizing(true);
        let end = match call(ctx, &Request::CommitCqResize { cq: handle }) {
            Ok((Reply::CqMoved { end }, _)) => end,
            Ok((r, _)) => {
                fcq.rings.set_resizing(false);
                return unexpected(&r);
            }
            Err(e) => {
                fcq.rings.set_resizing(false);
                return e;
            }
        };
        let old = fcq.rings.switch_to(next);
        fcq.rings.set_resizing(false);
        let index = std::mem::replace(&mut consumer.index, 0);
        consumer.draining.push_back(Draining {
            ring: old,
            index,
            end,
        });
        // SAFETY: cq is ours; its users read `cqe` as the capacity.
        unsafe { (*cq).cqe = capacity as i32 };
        0
    })
}
