//! Semi mode over a NIC: fv0's objects backed by the real device's.
//!
//! When the router names a real device at Hello ([`NicBinding`]), the
//! provider opens it through the stock libibverbs (lazily, at the first
//! PD or CQ) and gives every fv0 PD, MR and CQ a twin on it, and every RC
//! or UC QP without an SRQ a twin QP. The twins' numbers are fv0's: the QP
//! number and the memory keys the application sees are the NIC's, valid on
//! the wire, and the router only checks they are free.
//!
//! At the modify to RTR the router decides the QP's path: `NicPath` (the
//! peer's host has a NIC) moves the twin to RTR with the physical GIDs the
//! router gave, and from then on `ibv_post_send`, `ibv_post_recv`,
//! `ibv_poll_cq` and `ibv_req_notify_cq` call the vendor provider's
//! functions straight through the real context's ops (no router, no copy);
//! any other answer keeps fv0's own paths (shared memory on this host, the
//! routers' link), and the twin stays in INIT, unused. Until that answer a
//! QP's receives wait here ([`Receives::hold`]) and then go where the
//! path is.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::context::Errno;
use crate::fv_log;
use flowverbs_sys::*;
use flowverbs_wire::control::NicBinding;

mod events;
pub use events::Deliver;
use events::{AsyncEvents, CompletionEvents, Elements};

/// The real device of a context, opened at first use.
pub struct NicContext {
    binding: NicBinding,
    /// Its UD QPs on the NIC (for the GRH rewrite).
    ud_qps: UdQps,
    /// The fv0 GIDs of datagram senders, as the router said.
    sources: Mutex<Sources>,
    /// The completion events of real CQs that have an fv0 channel (made
    /// with the first such CQ). Declared before `device`: it goes first.
    events: OnceLock<Option<CompletionEvents>>,
    /// The real context's async events, forwarded to fv0's async fd from
    /// its opening on. Before `device` too.
    async_events: OnceLock<Option<AsyncEvents>>,
    /// The write end of fv0's async-event pipe (until the forwarder takes it).
    fv0_async: Mutex<Option<OwnedFd>>,
    /// The fv0 QPs and SRQs behind the real ones, for their async events.
    elements: Arc<Elements>,
    device: OnceLock<Option<RealContext>>,
}

struct RealContext {
    ctx: *mut ibv_context,
    /// The port's active MTU (`ibv_mtu`), as it was at opening.
    active_mtu: u32,
}
// SAFETY: an ibv_context is used from any thread (libibverbs' contract).
unsafe impl Send for RealContext {}
// SAFETY: as above.
unsafe impl Sync for RealContext {}

impl Drop for RealContext {
    fn drop(&mut self) {
        // SAFETY: opened by `open` and closed only here.
        unsafe { ibv_close_device(self.ctx) };
    }
}

/// `ibv_query_port` of a real context, through its provider's
/// `verbs_context` (the exported symbol takes the old, shorter struct).
fn query_port(ctx: *mut ibv_context, port: u8) -> Option<ibv_port_attr> {
    let mut attr = ibv_port_attr::default();
    // SAFETY: a real context opened by libibverbs sits inside its
    // verbs_context (PABI 34 layout, asserted in flowverbs-sys); its
    // query_port takes the full struct and its size.
    let r = unsafe {
        let v = (ctx as *mut u8).sub(std::mem::offset_of!(verbs_context, context))
            as *mut verbs_context;
        (*v).query_port?(ctx, port, &mut attr, std::mem::size_of::<ibv_port_attr>())
    };
    (r == 0).then_some(attr)
}

/// Opens the device called `name` through libibverbs' own device list.
fn open(name: &str, port: u8) -> Option<RealContext> {
    let mut n = 0i32;
    // SAFETY: libibverbs' public API; the list is freed below.
    let list = unsafe { ibv_get_device_list(&mut n) };
    if list.is_null() {
        fv_log!(
            1,
            "NIC {name}: no device list ({})",
            std::io::Error::last_os_error()
        );
        return None;
    }
    let mut opened = None;
    for i in 0..n.max(0) as usize {
        // SAFETY: the list holds n devices.
        let dev = unsafe { *list.add(i) };
        // SAFETY: a device of the list; its name is a C string.
        let dev_name = unsafe { CStr::from_ptr(ibv_get_device_name(dev)) };
        if dev_name.to_bytes() == name.as_bytes() {
            // SAFETY: a device of the list (which stays valid until freed;
            // an opened device outlives the list).
            let ctx = unsafe { ibv_open_device(dev) };
            if ctx.is_null() {
                fv_log!(
                    1,
                    "NIC {name}: cannot open it ({}); is /dev/infiniband given to this container?",
                    std::io::Error::last_os_error()
                );
            } else {
                let active_mtu = query_port(ctx, port).map_or(IBV_MTU_1024, |a| a.active_mtu);
                opened = Some(RealContext { ctx, active_mtu });
            }
            break;
        }
    }
    // SAFETY: the list from ibv_get_device_list above.
    unsafe { ibv_free_device_list(list) };
    if opened.is_none() {
        fv_log!(
            2,
            "NIC {name}: not in this process's device list; fv0 keeps its own paths"
        );
    }
    opened
}

impl NicContext {
    /// `fv0_async`: the write end of the context's async-event pipe.
    pub fn new(binding: NicBinding, fv0_async: Option<OwnedFd>) -> NicContext {
        fv_log!(
            3,
            "semi mode over NIC {} port {}",
            binding.device,
            binding.port
        );
        NicContext {
            binding,
            ud_qps: UdQps::default(),
            sources: Mutex::new(Default::default()),
            events: OnceLock::new(),
            async_events: OnceLock::new(),
            fv0_async: Mutex::new(fv0_async),
            elements: Arc::default(),
            device: OnceLock::new(),
        }
    }

    /// The real device's context (opened on first use), if it opens.
    fn context(&self) -> Option<*mut ibv_context> {
        self.opened().map(|c| c.ctx)
    }

    fn opened(&self) -> Option<&RealContext> {
        let opened = self
            .device
            .get_or_init(|| open(&self.binding.device, self.binding.port))
            .as_ref()?;
        self.async_events.get_or_init(|| {
            let write = self
                .fv0_async
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()?;
            let forwarder =
                AsyncEvents::start(opened.ctx, write, self.elements.clone(), self.binding.port);
            if forwarder.is_none() {
                fv_log!(1, "NIC: its async events cannot be forwarded to fv0");
            }
            forwarder
        });
        Some(opened)
    }

    /// The async events of real QP or SRQ `real` are fv0's `element`'s
    /// (the address of the fv0 object) from now on.
    pub fn adopt(&self, real: *const libc::c_void, element: u64) {
        self.elements.adopt(real as usize, element);
    }

    /// Stops forwarding the async events of `real` (before it is
    /// destroyed); returns how many were forwarded, which the fv0 object's
    /// destruction waits for the application to acknowledge.
    pub fn forget(&self, real: *const libc::c_void) -> u32 {
        self.elements.forget(real as usize)
    }

    /// The real port this context posts to.
    pub fn port(&self) -> u8 {
        self.binding.port
    }

    /// The real port's active MTU (what fv0's port reports too: a path MTU
    /// above it would be dropped on the real link).
    pub fn active_mtu(&self) -> Option<u32> {
        self.opened().map(|c| c.active_mtu)
    }

    /// A PD on the real device (NULL if the device is unavailable).
    pub fn alloc_pd(&self) -> *mut ibv_pd {
        match self.context() {
            // SAFETY: a live real context.
            Some(c) => unsafe { ibv_alloc_pd(c) },
            None => ptr::null_mut(),
        }
    }

    /// A CQ on the real device whose completions carry `cq_context` (the
    /// fv0 CQ), or NULL. `with_events`: the fv0 CQ has a completion
    /// channel; the real CQ's events go to `Deliver` (the same one for
    /// every CQ of the context: the first given is kept).
    pub(crate) fn create_cq(
        &self,
        cqe: i32,
        cq_context: *mut libc::c_void,
        with_events: Option<Deliver>,
    ) -> *mut ibv_cq {
        let Some(c) = self.context() else {
            return ptr::null_mut();
        };
        let channel = match with_events {
            None => ptr::null_mut(),
            Some(deliver) => match self
                .events
                .get_or_init(|| CompletionEvents::start(c, deliver))
            {
                Some(f) => f.channel(),
                None => return ptr::null_mut(),
            },
        };
        // SAFETY: a live real context and, if any, its channel; vector 0.
        unsafe { ibv_create_cq(c, cqe, cq_context, channel, 0) }
    }

    /// A QP on the real device (NULL if the device refuses it); `init`'s
    /// CQs must be real ones, its capabilities are updated by the device.
    pub(crate) fn create_qp(&self, pd: *mut ibv_pd, init: &mut ibv_qp_init_attr) -> Option<NicQp> {
        // SAFETY: pd is a real PD; init names real CQs.
        let qp = unsafe { ibv_create_qp(pd, init) };
        if qp.is_null() {
            fv_log!(
                2,
                "NIC {}: QP refused ({}); this QP keeps fv0's own paths",
                self.binding.device,
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(NicQp {
            qp,
            port: self.binding.port,
            mtu: self.active_mtu().unwrap_or(IBV_MTU_1024),
            receives: Receives::default(),
            ud: None,
        })
    }

    /// A UD QP's twin is on the NIC from the start (each datagram names its
    /// destination); its receives are tracked for the GRH rewrite.
    pub(crate) fn track_ud(&self, q: &mut NicQp) {
        q.receives.set_route(Route::Nic);
        let r = Arc::new(UdReceives::default());
        q.ud = Some(r.clone());
        self.ud_qps
            .by_qpn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(q.qpn(), r);
        self.ud_qps.any.store(true, Ordering::Release);
    }

    pub(crate) fn untrack_ud(&self, qpn: u32) {
        self.ud_qps
            .by_qpn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&qpn);
    }

    /// After a poll of a real CQ: for each receive of a UD QP on the NIC,
    /// the GRH the NIC wrote names the sender's and this host's NICs; it is
    /// rewritten to name the sender's fv0 GID (`ask` asks the router, once
    /// per sender) and ours (`own_gid`), as fv0 addresses them, so that
    /// `ibv_create_ah_from_wc` answers the sender.
    pub(crate) fn rewrite_grhs(
        &self,
        wcs: &[ibv_wc],
        own_gid: [u8; 16],
        ask: impl Fn([u8; 16], u32) -> Option<[u8; 16]>,
    ) {
        if !self.ud_qps.any.load(Ordering::Acquire) {
            return;
        }
        for wc in wcs.iter().filter(|w| w.opcode & IBV_WC_RECV != 0) {
            let qps = self.ud_qps.by_qpn.lock().unwrap_or_else(|e| e.into_inner());
            let Some(r) = qps.get(&wc.qp_num).cloned() else {
                continue;
            };
            drop(qps);
            let buffer = r
                .buffers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            let Some((addr, len)) = buffer else {
                continue;
            };
            if wc.status != IBV_WC_SUCCESS || wc.wc_flags & IBV_WC_GRH == 0 || len < 40 {
                continue;
            }
            // SAFETY: the first 40 bytes of the receive buffer the
            // application posted; it sees them only after this poll.
            let grh = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, 40) };
            let Some(nic_src) = grh_source(grh) else {
                continue;
            };
            let key = (nic_src, wc.src_qp);
            let cached = self
                .sources
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .copied();
            let Some(src) = cached.or_else(|| ask(nic_src, wc.src_qp)) else {
                continue;
            };
            self.sources
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, src);
            grh_rewrite(grh, src, own_gid);
        }
    }

    /// An SRQ on the real device (None if it refuses).
    pub(crate) fn create_srq(
        &self,
        pd: *mut ibv_pd,
        init: &mut ibv_srq_init_attr,
    ) -> Option<NicSrq> {
        // SAFETY: pd is a real PD; init is a full attribute block.
        let srq = unsafe { ibv_create_srq(pd, init) };
        if srq.is_null() {
            fv_log!(
                2,
                "NIC {}: SRQ refused ({}); it and its QPs keep fv0's own paths",
                self.binding.device,
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(NicSrq {
            srq,
            receives: Receives::default(),
        })
    }
}

/// The sender's NIC GID in a received GRH: RoCE v2 over IPv4 leaves an
/// IPv4 header in its last 20 bytes (where `ibv_init_ah_from_wc` reads
/// it), otherwise the GRH's own source GID.
fn grh_source(grh: &[u8]) -> Option<[u8; 16]> {
    if grh[0] >> 4 != 6 && grh[20] >> 4 == 4 {
        let src = std::net::Ipv4Addr::new(grh[32], grh[33], grh[34], grh[35]);
        return Some(flowverbs_verbs::identity::gid_from_ipv4(src));
    }
    grh[8..24].try_into().ok()
}

/// Writes `src` and `dst` (fv0 GIDs) where [`grh_source`] reads, fixing
/// the IPv4 header's checksum.
fn grh_rewrite(grh: &mut [u8], src: [u8; 16], dst: [u8; 16]) {
    if grh[0] >> 4 != 6 && grh[20] >> 4 == 4 {
        grh[32..36].copy_from_slice(&src[12..16]);
        grh[36..40].copy_from_slice(&dst[12..16]);
        grh[30] = 0;
        grh[31] = 0;
        let mut sum: u32 = grh[20..40]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        grh[30..32].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    } else {
        grh[8..24].copy_from_slice(&src);
        grh[24..40].copy_from_slice(&dst);
    }
}

/// Destroys a real object (the fv0 object goes first only if this works).
pub(crate) fn dealloc_pd(pd: *mut ibv_pd) -> Result<(), Errno> {
    // SAFETY: a real PD of ours.
    errno_of(unsafe { ibv_dealloc_pd(pd) })
}

pub(crate) fn dereg_mr(mr: *mut ibv_mr) -> Result<(), Errno> {
    // SAFETY: a real MR of ours.
    errno_of(unsafe { ibv_dereg_mr(mr) })
}

/// A memory window on the real device (NULL if it refuses), through its
/// context's ops as `ibv_alloc_mw` does.
pub(crate) fn alloc_mw(pd: *mut ibv_pd, mw_type: ibv_mw_type) -> *mut ibv_mw {
    // SAFETY: a real PD of ours; its context's ops are the vendor's.
    unsafe {
        match (*(*pd).context).ops.alloc_mw {
            Some(alloc) => alloc(pd, mw_type),
            None => ptr::null_mut(),
        }
    }
}

pub(crate) fn dealloc_mw(mw: *mut ibv_mw) -> Result<(), Errno> {
    // SAFETY: a real window of ours; its context's ops are the vendor's.
    unsafe {
        match (*(*mw).context).ops.dealloc_mw {
            Some(dealloc) => errno_of(dealloc(mw)),
            None => Err(libc::EOPNOTSUPP),
        }
    }
}

/// `ibv_resize_cq` of a real CQ (its device's errno on failure).
pub(crate) fn resize_cq(cq: *mut ibv_cq, cqe: i32) -> Result<(), Errno> {
    // SAFETY: a real CQ of ours.
    errno_of(unsafe { ibv_resize_cq(cq, cqe) })
}

pub(crate) fn destroy_cq(cq: *mut ibv_cq) -> Result<(), Errno> {
    // SAFETY: a real CQ of ours.
    errno_of(unsafe { ibv_destroy_cq(cq) })
}

/// Registers a range on the real device (NULL if it refuses).
pub(crate) fn reg_mr(
    pd: *mut ibv_pd,
    addr: *mut libc::c_void,
    length: usize,
    iova: u64,
    access: i32,
) -> *mut ibv_mr {
    // SAFETY: a real PD; the range is the application's, as given to fv0.
    let mr = unsafe { ibv_reg_mr_iova2(pd, addr, length, iova, access as u32) };
    if mr.is_null() {
        fv_log!(
            2,
            "NIC: registration of {addr:p}+{length} refused ({}); it stays fv0-only",
            std::io::Error::last_os_error()
        );
    }
    mr
}

/// Polls a real CQ straight through its provider's function.
///
/// # Safety
/// `cq` must be a live real CQ and `wc` hold `n` entries.
#[inline]
pub unsafe fn poll_cq(cq: *mut ibv_cq, n: i32, wc: *mut ibv_wc) -> i32 {
    // SAFETY: the caller's promise; the ops are the vendor provider's.
    unsafe {
        let poll = (*(*cq).context).ops.poll_cq.expect("every provider polls");
        poll(cq, n, wc)
    }
}

/// Arms a real CQ.
///
/// # Safety
/// `cq` must be a live real CQ.
pub unsafe fn req_notify_cq(cq: *mut ibv_cq, solicited_only: i32) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        let arm = (*(*cq).context)
            .ops
            .req_notify_cq
            .expect("every provider arms");
        arm(cq, solicited_only)
    }
}

fn errno_of(r: i32) -> Result<(), Errno> {
    if r == 0 {
        Ok(())
    } else {
        Err(r)
    }
}

/// Where a NIC-backed QP's work goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Route {
    /// Not at RTR yet: receives wait in [`NicQp::held`].
    Undecided,
    /// The real QP carries everything.
    Nic,
    /// fv0's own paths; the real QP is unused.
    Own,
}

/// A receive posted before the path was known.
pub struct HeldReceive {
    pub wr_id: u64,
    pub sges: Vec<ibv_sge>,
}

/// Links held receives into one chain of work requests (pointing into
/// `held`, which must outlive the chain's use); the chain's head is the
/// first element.
pub fn chain(held: &mut [HeldReceive]) -> Vec<ibv_recv_wr> {
    let mut wrs: Vec<ibv_recv_wr> = held
        .iter_mut()
        .map(|h| ibv_recv_wr {
            wr_id: h.wr_id,
            next: ptr::null_mut(),
            sg_list: h.sges.as_mut_ptr(),
            num_sge: h.sges.len() as i32,
        })
        .collect();
    for i in 1..wrs.len() {
        let next: *mut ibv_recv_wr = &mut wrs[i];
        wrs[i - 1].next = next;
    }
    wrs
}

/// Where the receives of a receive queue backed by the NIC go (a QP's own
/// queue or an SRQ), and those posted before that was known.
pub struct Receives {
    route: AtomicU8,
    held: Mutex<Vec<HeldReceive>>,
}

impl Default for Receives {
    fn default() -> Self {
        Receives {
            route: AtomicU8::new(Route::Undecided as u8),
            held: Mutex::new(Vec::new()),
        }
    }
}

impl Receives {
    pub fn route(&self) -> Route {
        match self.route.load(Ordering::Acquire) {
            0 => Route::Undecided,
            1 => Route::Nic,
            _ => Route::Own,
        }
    }

    fn set_route(&self, r: Route) {
        self.route.store(r as u8, Ordering::Release);
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, Vec<HeldReceive>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before the path is known: keeps a chain of receives (at most
    /// `max_wr` in all, `max_sge` SGEs each), as `ibv_post_recv` would,
    /// and returns what `ibv_post_recv` returns. None: the path became
    /// known meanwhile (another thread's modify to RTR); the caller posts
    /// on that path instead.
    ///
    /// The race with [`Receives::settle`] is argued once, here: both run
    /// under the `held` lock; `settle` posts the receives held so far and
    /// only then publishes the route, before it unlocks. So a receive is
    /// either held before `settle` takes the held ones (and posted by it,
    /// in order), or finds the route published and goes after them.
    ///
    /// # Safety
    /// `wr` and `bad` as `ibv_post_recv` takes them.
    pub unsafe fn hold(
        &self,
        mut wr: *mut ibv_recv_wr,
        bad: *mut *mut ibv_recv_wr,
        max_wr: u32,
        max_sge: u32,
    ) -> Option<i32> {
        let mut held = self.lock_held();
        if self.route() != Route::Undecided {
            return None;
        }
        while !wr.is_null() {
            // SAFETY: the caller's chain.
            let w = unsafe { &*wr };
            let errno = if w.num_sge < 0 || w.num_sge as u32 > max_sge.max(1) {
                libc::EINVAL
            } else if held.len() >= max_wr.max(1) as usize {
                libc::ENOMEM
            } else {
                0
            };
            if errno != 0 {
                if !bad.is_null() {
                    // SAFETY: the caller's out-pointer.
                    unsafe { *bad = wr };
                }
                return Some(errno);
            }
            let sges = if w.num_sge == 0 {
                Vec::new()
            } else {
                // SAFETY: sg_list holds num_sge entries.
                unsafe { std::slice::from_raw_parts(w.sg_list, w.num_sge as usize) }.to_vec()
            };
            held.push(HeldReceive {
                wr_id: w.wr_id,
                sges,
            });
            wr = w.next;
        }
        Some(0)
    }

    /// The path is known: `Nic` posts the held receives with `post_nic`
    /// (one at a time), `Own` hands them to `post_own` (fv0's ring); then
    /// the route is published (the order [`Receives::hold`] relies on). A
    /// route already settled stays (an SRQ follows its first QP).
    fn settle(
        &self,
        route: Route,
        post_nic: impl Fn(*mut ibv_recv_wr) -> i32,
        post_own: impl FnOnce(Vec<HeldReceive>),
    ) -> Result<(), Errno> {
        let mut held = self.lock_held();
        if self.route() != Route::Undecided {
            return Ok(());
        }
        let held = std::mem::take(&mut *held);
        let posted = if route == Route::Nic {
            let n = held.len();
            held.into_iter().enumerate().try_for_each(|(i, mut h)| {
                let mut wr = ibv_recv_wr {
                    wr_id: h.wr_id,
                    next: ptr::null_mut(),
                    sg_list: h.sges.as_mut_ptr(),
                    num_sge: h.sges.len() as i32,
                };
                errno_of(post_nic(&mut wr)).inspect_err(|e| {
                    fv_log!(
                        1,
                        "NIC: receive {i} of {n} held for the path refused by the device: errno {e}"
                    )
                })
            })
        } else {
            post_own(held);
            Ok(())
        };
        self.set_route(route);
        posted
    }

    fn reset(&self) {
        let mut held = self.lock_held();
        held.clear();
        self.set_route(Route::Undecided);
    }
}

/// The real SRQ behind a fv0 SRQ: it follows the path of its first QP.
pub struct NicSrq {
    srq: *mut ibv_srq,
    pub receives: Receives,
}

// SAFETY: the real SRQ is used from any thread (libibverbs' contract).
unsafe impl Send for NicSrq {}
// SAFETY: as above.
unsafe impl Sync for NicSrq {}

impl Drop for NicSrq {
    fn drop(&mut self) {
        // SAFETY: created by NicContext::create_srq, destroyed only here.
        let r = unsafe { ibv_destroy_srq(self.srq) };
        if r != 0 {
            fv_log!(1, "NIC: destroying an SRQ: errno {r}");
        }
    }
}

impl NicSrq {
    pub fn raw(&self) -> *mut ibv_srq {
        self.srq
    }

    /// Arms the real SRQ's limit (`ibv_modify_srq(3)` with `IBV_SRQ_LIMIT`).
    pub fn arm_limit(&self, srq_limit: u32) -> Result<(), Errno> {
        let mut attr = ibv_srq_attr {
            max_wr: 0,
            max_sge: 0,
            srq_limit,
        };
        // SAFETY: a live real SRQ and a full attribute block.
        errno_of(unsafe { ibv_modify_srq(self.srq, &mut attr, IBV_SRQ_LIMIT as i32) })
    }

    /// Posts receives to the real SRQ.
    ///
    /// # Safety
    /// `wr` and `bad` as `ibv_post_srq_recv` takes them.
    #[inline]
    pub unsafe fn post_recv(&self, wr: *mut ibv_recv_wr, bad: *mut *mut ibv_recv_wr) -> i32 {
        // SAFETY: a live real SRQ and the caller's chain.
        unsafe {
            let post = (*(*self.srq).context)
                .ops
                .post_srq_recv
                .expect("every provider with SRQs posts to them");
            post(self.srq, wr, bad)
        }
    }

    /// One of its QPs reached RTR on `route`: the first one decides (see
    /// [`Receives::settle`]; `post_own` posts held receives on fv0's ring).
    pub fn settle(
        &self,
        route: Route,
        post_own: impl FnOnce(Vec<HeldReceive>),
    ) -> Result<(), Errno> {
        self.receives.settle(
            route,
            |wr| {
                let mut bad = ptr::null_mut();
                // SAFETY: one work request built by settle.
                unsafe { self.post_recv(wr, &mut bad) }
            },
            post_own,
        )
    }
}

/// The real QP behind a fv0 QP.
pub struct NicQp {
    qp: *mut ibv_qp,
    port: u8,
    /// The real port's active MTU: path MTUs are clamped to it.
    mtu: u32,
    /// Its own receive queue (unused with an SRQ).
    pub receives: Receives,
    /// UD: the receive buffers posted, in order (see [`UdReceives`]).
    pub ud: Option<Arc<UdReceives>>,
}

/// A UD QP on the NIC: the buffers of its posted receives, oldest first
/// (a UD QP without an SRQ completes its receives in posting order), so
/// that polling finds the GRH of each received datagram and shows the
/// sender's fv0 GID there instead of its NIC's
/// ([`NicContext::rewrite_grhs`]).
#[derive(Default)]
pub struct UdReceives {
    buffers: Mutex<std::collections::VecDeque<(u64, u32)>>,
}

/// A datagram sender's NIC GID and QPN -> its fv0 GID.
type Sources = rustc_hash::FxHashMap<([u8; 16], u32), [u8; 16]>;

/// What polling needs to know of a context's UD QPs on the NIC.
#[derive(Default)]
struct UdQps {
    any: std::sync::atomic::AtomicBool,
    by_qpn: Mutex<rustc_hash::FxHashMap<u32, Arc<UdReceives>>>,
}

// SAFETY: the real QP is used from any thread (libibverbs' contract); the
// rest is atomics and a mutex.
unsafe impl Send for NicQp {}
// SAFETY: as above.
unsafe impl Sync for NicQp {}

impl Drop for NicQp {
    fn drop(&mut self) {
        // SAFETY: created by NicContext::create_qp, destroyed only here.
        let r = unsafe { ibv_destroy_qp(self.qp) };
        if r != 0 {
            fv_log!(1, "NIC: destroying QP {:#x}: errno {r}", self.qpn());
        }
    }
}

impl NicQp {
    pub fn raw(&self) -> *mut ibv_qp {
        self.qp
    }

    pub fn qpn(&self) -> u32 {
        // SAFETY: a live real QP.
        unsafe { (*self.qp).qp_num }
    }

    pub fn route(&self) -> Route {
        self.receives.route()
    }

    /// Posts sends to the real QP.
    ///
    /// # Safety
    /// `wr` and `bad` as `ibv_post_send` takes them.
    #[inline]
    pub unsafe fn post_send(&self, wr: *mut ibv_send_wr, bad: *mut *mut ibv_send_wr) -> i32 {
        // SAFETY: a live real QP and the caller's chain.
        unsafe {
            let post = (*(*self.qp).context)
                .ops
                .post_send
                .expect("every provider posts");
            post(self.qp, wr, bad)
        }
    }

    /// Posts receives to the real QP (a UD QP's buffers are recorded first,
    /// for the GRH rewrite).
    ///
    /// # Safety
    /// `wr` and `bad` as `ibv_post_recv` takes them.
    #[inline]
    pub unsafe fn post_recv(&self, wr: *mut ibv_recv_wr, bad: *mut *mut ibv_recv_wr) -> i32 {
        let Some(ud) = &self.ud else {
            // SAFETY: a live real QP and the caller's chain.
            return unsafe { self.post_recv_raw(wr, bad) };
        };
        let mut buffers = ud.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let before = buffers.len();
        let mut cur = wr;
        while !cur.is_null() {
            // SAFETY: the caller's chain.
            let w = unsafe { &*cur };
            let first = if w.num_sge > 0 && !w.sg_list.is_null() {
                // SAFETY: sg_list holds num_sge > 0 entries.
                let s = unsafe { &*w.sg_list };
                (s.addr, s.length)
            } else {
                (0, 0)
            };
            buffers.push_back(first);
            cur = w.next;
        }
        let mut failed: *mut ibv_recv_wr = ptr::null_mut();
        // SAFETY: as above.
        let r = unsafe { self.post_recv_raw(wr, &mut failed) };
        if r != 0 {
            // The work requests from `failed` on were not posted.
            let mut posted = 0;
            let mut cur = wr;
            while !cur.is_null() && cur != failed {
                posted += 1;
                // SAFETY: the caller's chain.
                cur = unsafe { (*cur).next };
            }
            buffers.truncate(before + posted);
            if !bad.is_null() {
                // SAFETY: the caller's out-pointer.
                unsafe { *bad = failed };
            }
        }
        r
    }

    /// # Safety
    /// As [`NicQp::post_recv`].
    unsafe fn post_recv_raw(&self, wr: *mut ibv_recv_wr, bad: *mut *mut ibv_recv_wr) -> i32 {
        // SAFETY: a live real QP and the caller's chain.
        unsafe {
            let post = (*(*self.qp).context)
                .ops
                .post_recv
                .expect("every provider posts");
            post(self.qp, wr, bad)
        }
    }

    /// UD: posts sends to the real QP with each address handle replaced by
    /// its twin (`twin_of` gives it; NULL: the destination cannot be
    /// reached on the NIC, EINVAL for that work request).
    ///
    /// # Safety
    /// `wr` and `bad` as `ibv_post_send` takes them.
    pub unsafe fn post_ud_send(
        &self,
        wr: *mut ibv_send_wr,
        bad: *mut *mut ibv_send_wr,
        twin_of: impl Fn(*mut ibv_ah) -> *mut ibv_ah,
    ) -> i32 {
        let mut originals = Vec::new();
        let mut copies: Vec<ibv_send_wr> = Vec::new();
        let mut cur = wr;
        let mut refused = None;
        while !cur.is_null() {
            // SAFETY: the caller's chain.
            let mut c = unsafe { *cur };
            // SAFETY: `ud` is the active member for UD QPs.
            let twin = twin_of(unsafe { c.wr.ud.ah });
            if twin.is_null() {
                refused = Some(cur);
                break;
            }
            c.wr.ud.ah = twin;
            c.next = ptr::null_mut();
            originals.push(cur);
            copies.push(c);
            // SAFETY: the caller's chain.
            cur = unsafe { (*cur).next };
        }
        for i in 1..copies.len() {
            let next: *mut ibv_send_wr = &mut copies[i];
            copies[i - 1].next = next;
        }
        if let Some(first) = copies.first_mut() {
            let mut failed: *mut ibv_send_wr = ptr::null_mut();
            // SAFETY: a live real QP and the copied chain.
            let r = unsafe {
                let post = (*(*self.qp).context)
                    .ops
                    .post_send
                    .expect("every provider posts");
                post(self.qp, first, &mut failed)
            };
            if r != 0 {
                let base: *const ibv_send_wr = copies.as_ptr();
                // SAFETY: `failed` points into `copies`.
                let i = unsafe { (failed as *const ibv_send_wr).offset_from(base) };
                if !bad.is_null() {
                    let original = usize::try_from(i).ok().and_then(|i| originals.get(i));
                    // SAFETY: the caller's out-pointer.
                    unsafe { *bad = original.copied().unwrap_or(wr) };
                }
                return r;
            }
        }
        match refused {
            Some(w) => {
                if !bad.is_null() {
                    // SAFETY: the caller's out-pointer.
                    unsafe { *bad = w };
                }
                libc::EINVAL
            }
            None => 0,
        }
    }

    /// Mirrors a modify the router accepted onto the real QP, and settles
    /// the path at RTR: `nic_path` is the router's `NicPath` answer (the
    /// physical destination GID and this host's GID index), None for any
    /// other answer. If the path became fv0's, the receives held until
    /// then go to `post_own` (fv0's ring).
    pub fn after_modify(
        &self,
        attr: &ibv_qp_attr,
        mask: u32,
        nic_path: Option<([u8; 16], u8)>,
        post_own: impl FnOnce(Vec<HeldReceive>),
    ) -> Result<(), Errno> {
        let target = (mask & IBV_QP_STATE != 0).then_some(attr.qp_state);
        match (self.route(), nic_path) {
            (_, Some((dgid, sgid_index))) => {
                let mut a = *attr;
                a.ah_attr.is_global = 1;
                a.ah_attr.grh.dgid.raw = dgid;
                a.ah_attr.grh.sgid_index = sgid_index;
                self.modify(a, mask)?;
                self.receives.settle(
                    Route::Nic,
                    |wr| {
                        let mut bad = ptr::null_mut();
                        // SAFETY: one work request built by settle.
                        unsafe { self.post_recv(wr, &mut bad) }
                    },
                    post_own,
                )
            }
            (Route::Undecided, None) if matches!(target, Some(IBV_QPS_RTR | IBV_QPS_ERR)) => {
                // The router's own paths: the real QP stays where it is.
                self.receives.settle(Route::Own, |_| 0, post_own)
            }
            (Route::Undecided | Route::Nic, None) => {
                self.modify(*attr, mask)?;
                if target == Some(IBV_QPS_RESET) {
                    self.receives.reset();
                }
                Ok(())
            }
            (Route::Own, None) => {
                if target == Some(IBV_QPS_RESET) {
                    self.modify(*attr, mask)?;
                    self.receives.reset();
                }
                Ok(())
            }
        }
    }

    /// `ibv_modify_qp` on the real QP, on the real port.
    /// The real QP's state (it moves to ERR by itself on a transport
    /// error, which the router does not see), or None if it cannot say.
    pub fn state(&self) -> Option<u32> {
        // SAFETY: plain C data, filled by the device.
        let (mut attr, mut init): (ibv_qp_attr, ibv_qp_init_attr) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: a live real QP and full attribute blocks.
        let r = unsafe { ibv_query_qp(self.qp, &mut attr, IBV_QP_STATE as i32, &mut init) };
        (r == 0).then_some(attr.qp_state)
    }

    fn modify(&self, mut a: ibv_qp_attr, mask: u32) -> Result<(), Errno> {
        if mask & IBV_QP_PORT != 0 {
            a.port_num = self.port;
        }
        if mask & IBV_QP_AV != 0 {
            a.ah_attr.port_num = self.port;
        }
        if mask & IBV_QP_PATH_MTU != 0 {
            a.path_mtu = a.path_mtu.min(self.mtu);
        }
        // SAFETY: a live real QP; `a` is a full attribute block.
        let r = unsafe { ibv_modify_qp(self.qp, &mut a, mask as i32) };
        if r != 0 {
            fv_log!(
                2,
                "NIC: modify of QP {:#x} (mask {mask:#x}) refused: errno {r}",
                self.qpn()
            );
        }
        errno_of(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One thread posts receives 0..N one by one while another settles the
    /// path: each receive reaches the path's queue once, in posting order,
    /// whether it was held or posted after the path was known.
    fn race(route: Route) {
        const N: u64 = 1000;
        let r = Arc::new(Receives::default());
        let queue = Arc::new(Mutex::new(Vec::new()));
        let poster = std::thread::spawn({
            let (r, queue) = (r.clone(), queue.clone());
            move || {
                for i in 0..N {
                    let mut wr = ibv_recv_wr {
                        wr_id: i,
                        next: ptr::null_mut(),
                        sg_list: ptr::null_mut(),
                        num_sge: 0,
                    };
                    loop {
                        if r.route() != Route::Undecided {
                            queue.lock().unwrap().push(i);
                            break;
                        }
                        // SAFETY: one work request without SGEs.
                        if let Some(rc) = unsafe { r.hold(&mut wr, ptr::null_mut(), N as u32, 1) } {
                            assert_eq!(rc, 0);
                            break;
                        }
                    }
                    // Slow enough that the path settles mid-way.
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
            }
        });
        while r.lock_held().len() < 100 {
            std::thread::yield_now();
        }
        let to_queue = |id: u64| queue.lock().unwrap().push(id);
        r.settle(
            route,
            |wr| {
                // SAFETY: settle's one work request.
                to_queue(unsafe { (*wr).wr_id });
                0
            },
            |held| held.iter().for_each(|h| to_queue(h.wr_id)),
        )
        .unwrap();
        poster.join().unwrap();
        assert_eq!(*queue.lock().unwrap(), (0..N).collect::<Vec<_>>());
        assert_eq!(r.route(), route);
    }

    #[test]
    fn receives_posted_while_the_path_settles_keep_their_order() {
        race(Route::Nic);
        race(Route::Own);
    }
}
