//! Semi mode, sender side: the provider executes its QP's work requests
//! itself, against its peer's receive ring, CQ and registered pages, which
//! the router let it map (`router::semi`). Posting and polling make no
//! system call; the router is asked only on a key's first use and on
//! errors.
//!
//! The checks and statuses are those of the router's engine
//! (`router::engine::Engine::execute`): opcode and SGE checks, local keys
//! (in this provider's own table), the responder's state, back path, QP
//! access flags, then the MR's access, bounds and liveness (key table);
//! RNR and retry waits with the same timers; responder errors move both
//! QPs to the error state through the router ([`Request::SemiError`]).
//!
//! Progress: a request that must wait (no receive posted, a full CQ, no
//! peer yet) stays queued here and is retried from `ibv_post_send` and
//! `ibv_poll_cq` of any CQ of the context.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::arena::Arena;
use super::context::{ContextInner, Errno};
use flowverbs_sys::*;
use flowverbs_verbs::access::{self, Region};
use flowverbs_verbs::opcode::{self, wc_opcode, Shape};
use flowverbs_verbs::{atomic, qp, receive};
use flowverbs_wire::control::{ArenaRun, Reply, Request};
use flowverbs_wire::cq_ring::CqRing;
use flowverbs_wire::entries::{Cqe, RecvWqe, SendWqe};
use flowverbs_wire::ring::{RingSlots, Take};
use flowverbs_wire::segment::{
    CqHeader, CqLayout, Mapping, QpHeader, QpLayout, SrqHeader, SrqLayout, KEY_TABLE_SLOTS,
};

/// A region this process registered (for its own local-key checks).
#[derive(Clone, Copy, Debug)]
pub struct LocalMr {
    pub pd: u32,
    pub addr: u64,
    pub length: u64,
    pub access: u32,
}

/// Semi-mode state of one context.
pub struct SemiContext {
    keys: Mapping,
    pub arena: Mutex<Option<Arena>>,
    pub local_mrs: RwLock<HashMap<u32, LocalMr>>,
    /// Peers' arenas by owner session.
    arenas: Mutex<HashMap<u64, Arc<Mapping>>>,
    waiting: Arc<Waiting>,
    progress_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// QPs with queued work requests, and the thread that retries them when
/// the application calls nothing (it waits on a completion channel while
/// a send waits for a receive, as a NIC would keep retrying).
#[derive(Default)]
struct Waiting {
    paths: Mutex<Vec<Arc<Mutex<SemiPath>>>>,
    count: AtomicU32,
    stop: std::sync::atomic::AtomicBool,
    kick: std::sync::Condvar,
}

/// How often the progress thread retries while something waits.
const RETRY_INTERVAL: Duration = Duration::from_micros(200);
/// The longest interval, while nothing moves.
const RETRY_INTERVAL_MAX: Duration = Duration::from_millis(5);

impl Waiting {
    /// Runs every waiting QP's queue once; true if any request left a
    /// queue.
    fn progress(&self) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let waiting: Vec<_> = self.paths.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut moved = false;
        for p in waiting {
            // A poster holds it: it runs the queue itself.
            if let Ok(mut path) = p.try_lock() {
                let before = path.pending.len();
                path.run();
                moved |= path.pending.len() != before;
            }
        }
        moved
    }

    /// Retries every [`RETRY_INTERVAL`] while requests wait and move;
    /// while nothing moves (a peer that never posts a receive, with
    /// infinite RNR retries) the interval doubles up to [`RETRY_INTERVAL_MAX`].
    fn thread(self: Arc<Self>) {
        let mut paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        let mut interval = RETRY_INTERVAL;
        while !self.stop.load(Ordering::Acquire) {
            if paths.is_empty() {
                interval = RETRY_INTERVAL;
                paths = self.kick.wait(paths).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            drop(paths);
            std::thread::sleep(interval);
            interval = if self.progress() {
                RETRY_INTERVAL
            } else {
                (interval * 2).min(RETRY_INTERVAL_MAX)
            };
            paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for SemiContext {
    fn drop(&mut self) {
        self.stop();
    }
}

impl SemiContext {
    /// Stops the progress thread (context close).
    pub fn stop(&self) {
        self.waiting.stop.store(true, Ordering::Release);
        {
            let _g = self.waiting.paths.lock().unwrap_or_else(|e| e.into_inner());
            self.waiting.kick.notify_all();
        }
        if let Some(t) = self
            .progress_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = t.join();
        }
    }
}

impl SemiContext {
    pub fn new(keys: Mapping) -> SemiContext {
        SemiContext {
            keys,
            arena: Mutex::new(None),
            local_mrs: RwLock::new(HashMap::new()),
            arenas: Mutex::new(HashMap::new()),
            waiting: Arc::new(Waiting::default()),
            progress_thread: Mutex::new(None),
        }
    }

    fn key_live(&self, slot: u32, key: u32) -> bool {
        if slot >= KEY_TABLE_SLOTS {
            return false;
        }
        // SAFETY: slot is inside the table mapping, u32-aligned.
        let w = unsafe { &*(self.keys.as_ptr().add(slot as usize * 4) as *const AtomicU32) };
        w.load(Ordering::Acquire) == key
    }

    fn arena_of(&self, owner: u64, fd: OwnedFd, need: u64) -> Result<Arc<Mapping>, Errno> {
        let mut arenas = self.arenas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = arenas.get(&owner).filter(|m| m.len() as u64 >= need) {
            return Ok(m.clone());
        }
        // An arena that its owner could shrink would fault (SIGBUS) here.
        let seals = nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            nix::fcntl::FcntlArg::F_GET_SEALS,
        )
        .map_err(|e| e as i32)?;
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(libc::EPROTO);
        }
        let size = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd))
            .map_err(|e| e as i32)?
            .st_size as u64;
        if size < need {
            return Err(libc::EPROTO);
        }
        let m = Arc::new(
            Mapping::map(&fd, size as usize)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::ENOMEM))?,
        );
        arenas.insert(owner, m.clone());
        Ok(m)
    }

    /// Runs the queued work of every waiting QP (from `ibv_poll_cq`).
    pub fn progress(&self) {
        self.waiting.progress();
    }

    fn wait(&self, p: &Arc<Mutex<SemiPath>>) {
        let mut w = self.waiting.paths.lock().unwrap_or_else(|e| e.into_inner());
        if !w.iter().any(|x| Arc::ptr_eq(x, p)) {
            w.push(p.clone());
            self.waiting.count.store(w.len() as u32, Ordering::Relaxed);
            self.waiting.kick.notify_all();
        }
        drop(w);
        let mut t = self
            .progress_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if t.is_none() {
            let waiting = self.waiting.clone();
            *t = std::thread::Builder::new()
                .name("flowverbs-semi".into())
                .spawn(move || waiting.thread())
                .ok();
        }
    }

    /// The QP is destroyed or reset: its path never runs again.
    pub fn retire(&self, p: &Arc<Mutex<SemiPath>>) {
        self.unwait(p);
        p.lock().unwrap_or_else(|e| e.into_inner()).dead = true;
    }

    pub fn unwait(&self, p: &Arc<Mutex<SemiPath>>) {
        let mut w = self.waiting.paths.lock().unwrap_or_else(|e| e.into_inner());
        if w.iter().any(|x| Arc::ptr_eq(x, p)) {
            w.retain(|x| !Arc::ptr_eq(x, p));
            self.waiting.count.store(w.len() as u32, Ordering::Relaxed);
        }
    }
}

/// A piece of a message: where, how many bytes.
type Seg = (*mut u8, usize);

/// A peer's MR as this sender sees it.
struct KeyView {
    addr: u64,
    length: u64,
    access: u32,
    slot: u32,
    runs: Vec<ArenaRun>,
    arena: Arc<Mapping>,
}

impl KeyView {
    /// The region as the semantics core checks it (PD already checked by
    /// the router).
    fn region(&self) -> Region {
        Region {
            pd: 0,
            addr: self.addr,
            length: self.length,
            access: self.access,
        }
    }

    /// Pointers into the arena for `[addr, addr + len)` (inside the MR).
    fn segments(&self, addr: u64, len: u64, out: &mut Vec<(*mut u8, usize)>) -> bool {
        let end = addr + len;
        let mut at = addr;
        for r in &self.runs {
            if at >= end {
                break;
            }
            if r.addr + r.len <= at || r.addr > at {
                continue;
            }
            let n = (r.addr + r.len).min(end) - at;
            let off = r.offset + (at - r.addr);
            if off + n > self.arena.len() as u64 {
                return false;
            }
            // SAFETY: off + n is inside the arena mapping (checked).
            out.push((unsafe { self.arena.as_ptr().add(off as usize) }, n as usize));
            at += n;
        }
        at >= end
    }
}

/// A CQ segment's ring (own or the peer's), with its consumer index as
/// last read (see `CqRing::has_room`).
struct CqView {
    header: *const CqHeader,
    slots: RingSlots<Cqe>,
    seen: u32,
}

impl CqView {
    fn ring(&self) -> CqRing<'_> {
        // SAFETY: the header lives in a segment that outlives this view
        // (our own CQ outlives its QPs; the peer's is held in SemiPath).
        CqRing::new(unsafe { &*self.header }, self.slots)
    }

    fn has_room(&mut self) -> bool {
        let mut seen = self.seen;
        let room = self.ring().has_room(&mut seen);
        self.seen = seen;
        room
    }

    fn push(&mut self, cqe: &Cqe) -> bool {
        let mut seen = self.seen;
        let pushed = self.ring().push_seen(cqe, &mut seen);
        self.seen = seen;
        pushed
    }
}

// SAFETY: the raw pointers point into shared mappings kept alive by the
// owner of this value (see CqView::ring).
unsafe impl Send for CqView {}

/// Why the head request waits.
enum Wait {
    /// No receive at the responder (RNR); `until`: when it fails.
    Rnr { until: Option<Instant> },
    /// No responder (yet); fails at the ACK timeout.
    Retry { until: Option<Instant> },
    /// A CQ is full.
    Cq,
}

/// The responder's rings, as the router granted them (`Request::SemiConnect`).
struct PeerRings {
    _qp_seg: Mapping,
    header: *const QpHeader,
    rq: RingSlots<RecvWqe>,
    _cq_seg: Mapping,
    cq: CqView,
    /// The responder's SRQ, if it receives through one.
    srq: Option<SrqView>,
}

/// A responder's SRQ: receives taken by compare-and-swap, shared with the
/// router and other senders.
struct SrqView {
    segment: Mapping,
    ring: RingSlots<RecvWqe>,
}

impl SrqView {
    fn header(&self) -> &SrqHeader {
        // SAFETY: the segment starts with an SrqHeader and lives in self.
        unsafe { self.segment.header::<SrqHeader>() }
    }
}

impl PeerRings {
    /// From the router's [`Reply::SemiPeer`] and its two fds.
    fn map(reply: &Reply, mut fds: Vec<OwnedFd>) -> Result<PeerRings, Errno> {
        let &Reply::SemiPeer {
            sq_capacity,
            rq_capacity,
            cq_capacity,
            srq_capacity,
            ..
        } = reply
        else {
            return Err(libc::EPROTO);
        };
        if fds.len() != 2 + usize::from(srq_capacity != 0) {
            return Err(libc::EPROTO);
        }
        let err = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::ENOMEM);
        let srq = match srq_capacity {
            0 => None,
            capacity => {
                let layout = SrqLayout::new(capacity);
                if layout.capacity != capacity {
                    return Err(libc::EPROTO);
                }
                let segment = Mapping::map(fds.pop().expect("three"), layout.size).map_err(err)?;
                // SAFETY: the segment has its layout's size (sealed by the
                // router) and holds `capacity` receives at ring_offset.
                let ring =
                    unsafe { RingSlots::new(segment.as_ptr().add(layout.ring_offset), capacity) };
                Some(SrqView { segment, ring })
            }
        };
        let cq_fd = fds.pop().expect("two");
        let qp_fd = fds.pop().expect("two");
        let ql = QpLayout::new(sq_capacity, rq_capacity);
        let cl = CqLayout::new(cq_capacity);
        if ql.sq_capacity != sq_capacity
            || ql.rq_capacity != rq_capacity
            || cl.capacity != cq_capacity
        {
            return Err(libc::EPROTO);
        }
        let qseg = Mapping::map(&qp_fd, ql.size).map_err(err)?;
        let cseg = Mapping::map(&cq_fd, cl.size).map_err(err)?;
        // SAFETY: both segments have the sizes of their layouts (the router
        // sealed them at those sizes).
        let (rq, cq_slots) = unsafe {
            (
                RingSlots::new(qseg.as_ptr().add(ql.rq_offset), rq_capacity),
                RingSlots::new(cseg.as_ptr().add(cl.ring_offset), cq_capacity),
            )
        };
        Ok(PeerRings {
            header: qseg.as_ptr() as *const QpHeader,
            _qp_seg: qseg,
            rq,
            cq: CqView {
                header: cseg.as_ptr() as *const CqHeader,
                slots: cq_slots,
                seen: 0,
            },
            _cq_seg: cseg,
            srq,
        })
    }
}

/// One semi-mode QP's send side.
pub struct SemiPath {
    pub qp_handle: u32,
    qpn: u32,
    peer_qpn: u32,
    uc: bool,
    pd: u32,
    sq_sig_all: bool,
    max_send_sge: u32,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    /// None until the router grants them (both QPs name each other).
    rings: Option<PeerRings>,
    send_cq: CqView,
    /// The QP's own header: what this path moved is counted there.
    own: *const QpHeader,
    keys: HashMap<u32, KeyView>,
    pending: VecDeque<(SendWqe, u32)>,
    wait: Option<Wait>,
    /// The QP is in the error state: everything queued is flushed.
    pub error: bool,
    /// The QP was destroyed or reset: nothing runs any more.
    pub dead: bool,
    scratch_local: Vec<Seg>,
    scratch_other: Vec<Seg>,
    me: std::sync::Weak<Mutex<SemiPath>>,
    ctx: *const ContextInner,
}

// SAFETY: pointers into mappings this value owns (peer) or that outlive it
// (own CQ, context); access is serialised by the Mutex around it.
unsafe impl Send for SemiPath {}

pub struct NewPath {
    pub qp_handle: u32,
    pub qpn: u32,
    pub uc: bool,
    pub pd: u32,
    pub sq_sig_all: bool,
    pub max_send_sge: u32,
    pub send_cq_header: *const CqHeader,
    pub send_cq_slots: RingSlots<Cqe>,
    /// The QP's own header (its segment outlives the path).
    pub own_header: *const QpHeader,
}

impl SemiPath {
    /// From the router's [`Reply::SemiPath`]: the QP runs here, to
    /// `peer_qpn`, whose rings are asked for at the first request.
    pub fn new(
        ctx: &ContextInner,
        n: NewPath,
        reply: &Reply,
    ) -> Result<Arc<Mutex<SemiPath>>, Errno> {
        let &Reply::SemiPath { peer_qpn } = reply else {
            return Err(libc::EPROTO);
        };
        let path = SemiPath {
            qp_handle: n.qp_handle,
            qpn: n.qpn,
            peer_qpn,
            uc: n.uc,
            pd: n.pd,
            sq_sig_all: n.sq_sig_all,
            max_send_sge: n.max_send_sge,
            timeout: 0,
            retry_cnt: 0,
            rnr_retry: 0,
            rings: None,
            send_cq: CqView {
                header: n.send_cq_header,
                slots: n.send_cq_slots,
                seen: 0,
            },
            own: n.own_header,
            keys: HashMap::new(),
            pending: VecDeque::new(),
            wait: None,
            error: false,
            dead: false,
            scratch_local: Vec::new(),
            scratch_other: Vec::new(),
            me: std::sync::Weak::new(),
            ctx: ctx as *const ContextInner,
        };
        let arc = Arc::new(Mutex::new(path));
        arc.lock().unwrap_or_else(|e| e.into_inner()).me = Arc::downgrade(&arc);
        Ok(arc)
    }

    /// Asks the router for the responder's rings; false until it grants
    /// them (the responder does not name this QP yet).
    fn attach(&mut self) -> bool {
        if self.rings.is_some() {
            return true;
        }
        let rings = self
            .ctx()
            .call(&Request::SemiConnect { qp: self.qp_handle })
            .and_then(|(reply, fds)| PeerRings::map(&reply, fds));
        match rings {
            Ok(r) => {
                self.rings = Some(r);
                true
            }
            Err(_) => false,
        }
    }

    fn rings(&mut self) -> &mut PeerRings {
        self.rings.as_mut().expect("rings attached before use")
    }

    fn peer(&self) -> &QpHeader {
        let r = self.rings.as_ref().expect("rings attached before use");
        // SAFETY: the peer's QP segment is mapped for the life of `r`.
        unsafe { &*r.header }
    }

    fn ctx(&self) -> &ContextInner {
        // SAFETY: the context outlives its QPs and their paths.
        unsafe { &*self.ctx }
    }

    fn semi(&self) -> &SemiContext {
        self.ctx().semi.as_ref().expect("semi context")
    }

    /// Queues a work request (`index`: its send-queue index + 1) and runs
    /// what can run.
    pub fn post(&mut self, w: SendWqe, index: u32) {
        self.pending.push_back((w, index));
    }

    /// Runs queued requests in order until one must wait.
    pub fn run(&mut self) {
        if self.dead {
            return;
        }
        let now = Instant::now();
        while let Some(&(w, idx)) = self.pending.front() {
            if self.error {
                let cqe = Cqe {
                    wr_id: w.wr_id,
                    status: IBV_WC_WR_FLUSH_ERR,
                    opcode: wc_opcode(w.opcode).unwrap_or(IBV_WC_SEND),
                    qp_num: self.qpn,
                    sq_index: idx,
                    ..Default::default()
                };
                if !self.send_cq.push(&cqe) {
                    break;
                }
                self.notify(false, false);
                self.pending.pop_front();
                continue;
            }
            match self.execute(&w, idx, now) {
                Step::Done => {
                    self.wait = None;
                    self.pending.pop_front();
                }
                Step::Wait(wait) => {
                    let expired = match (&self.wait, &wait) {
                        (Some(Wait::Rnr { until: Some(t) }), Wait::Rnr { .. })
                        | (Some(Wait::Retry { until: Some(t) }), Wait::Retry { .. }) => now >= *t,
                        _ => false,
                    };
                    if expired {
                        let status = match wait {
                            Wait::Rnr { .. } => IBV_WC_RNR_RETRY_EXC_ERR,
                            _ => IBV_WC_RETRY_EXC_ERR,
                        };
                        self.fail(&w, idx, status, None);
                        self.pending.pop_front();
                        continue;
                    }
                    let keep = matches!(
                        (&self.wait, &wait),
                        (Some(Wait::Rnr { .. }), Wait::Rnr { .. })
                            | (Some(Wait::Retry { .. }), Wait::Retry { .. })
                    );
                    if !keep {
                        self.wait = Some(wait);
                    }
                    break;
                }
            }
        }
        if let Some(me) = self.me.upgrade() {
            if self.pending.is_empty() {
                self.semi().unwait(&me);
            } else {
                self.semi().wait(&me);
            }
        }
    }

    /// After a push to a CQ: a completion event if it was armed for it.
    fn notify(&self, peer: bool, solicited: bool) {
        let cq = match (peer, self.rings.as_ref()) {
            (true, Some(r)) => &r.cq,
            _ => &self.send_cq,
        };
        // SAFETY: see CqView::ring.
        let h = unsafe { &*cq.header };
        if h.take_arm(solicited) {
            h.event_pending.store(1, Ordering::Release);
            self.ctx().wake_router();
        }
    }

    fn complete(&mut self, w: &SendWqe, idx: u32, byte_len: u64) {
        // SAFETY: the QP's own segment outlives its path.
        unsafe { &*self.own }.semi_moved.count(
            w.opcode,
            byte_len,
            w.send_flags & IBV_SEND_INLINE != 0,
        );
        if self.sq_sig_all || w.send_flags & IBV_SEND_SIGNALED != 0 {
            let cqe = Cqe {
                wr_id: w.wr_id,
                status: IBV_WC_SUCCESS,
                opcode: wc_opcode(w.opcode).unwrap_or(IBV_WC_SEND),
                byte_len: byte_len as u32,
                qp_num: self.qpn,
                sq_index: idx,
                ..Default::default()
            };
            // Room was checked before the request ran.
            self.send_cq.push(&cqe);
            self.notify(false, false);
        }
    }

    /// The request fails with `status`; this QP goes to the error state
    /// (and the responder, if `peer_event` says so: Some(event or 0)).
    fn fail(&mut self, w: &SendWqe, idx: u32, status: u32, peer: Option<u32>) {
        // SAFETY: the QP's own segment outlives its path.
        unsafe { &*self.own }.semi_moved.count_error();
        let cqe = Cqe {
            wr_id: w.wr_id,
            status,
            opcode: wc_opcode(w.opcode).unwrap_or(IBV_WC_SEND),
            qp_num: self.qpn,
            sq_index: idx,
            ..Default::default()
        };
        self.send_cq.push(&cqe);
        self.notify(false, true);
        self.wait = None;
        self.error = true;
        let _ = self.ctx().call(&Request::SemiError {
            qp: self.qp_handle,
            own: true,
            peer_event: peer,
        });
    }

    /// The peer's MR behind `key`, if live.
    fn key(&mut self, key: u32) -> Option<&KeyView> {
        let live = |s: &Self, k: &KeyView| s.semi().key_live(k.slot, key);
        if let Some(k) = self.keys.get(&key) {
            if live(self, k) {
                return self.keys.get(&key);
            }
            self.keys.remove(&key);
        }
        let (reply, fds) = self
            .ctx()
            .call(&Request::ResolveKey {
                qp: self.qp_handle,
                key,
            })
            .ok()?;
        let Reply::Key {
            addr,
            length,
            access,
            slot,
            owner,
            runs,
        } = reply
        else {
            return None;
        };
        let need = runs.iter().map(|r| r.offset + r.len).max().unwrap_or(0);
        let fd = fds.into_iter().next()?;
        let arena = self.semi().arena_of(owner, fd, need).ok()?;
        let view = KeyView {
            addr,
            length,
            access,
            slot,
            runs,
            arena,
        };
        if !live(self, &view) {
            return None;
        }
        self.keys.insert(key, view);
        self.keys.get(&key)
    }

    /// `[addr, addr+len)` of the responder's MR `key` with `access`. (The
    /// router checked that the key is in the responder's PD when it
    /// resolved it.)
    fn remote(
        &mut self,
        key: u32,
        addr: u64,
        len: u64,
        want: u32,
        out: &mut Vec<Seg>,
    ) -> Result<(), u32> {
        out.clear();
        if len == 0 {
            return Ok(());
        }
        let qp_access = self.peer().access.load(Ordering::Acquire);
        let Some(k) = self.key(key) else {
            return access::remote(None, 0, qp_access, addr, len, want);
        };
        access::remote(Some(&k.region()), 0, qp_access, addr, len, want)?;
        if !k.segments(addr, len, out) {
            return Err(IBV_WC_REM_ACCESS_ERR);
        }
        Ok(())
    }

    /// The local SGEs of a request as pointers into our own memory.
    fn local(&self, w: &SendWqe, write: bool, out: &mut Vec<Seg>) -> Result<(), u32> {
        let mrs = self
            .semi()
            .local_mrs
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut total = 0u64;
        for s in w.sges() {
            let len = u64::from(s.length);
            total += len;
            let region = mrs.get(&s.lkey).map(|m| Region {
                pd: m.pd,
                addr: m.addr,
                length: m.length,
                access: m.access,
            });
            access::local(region.as_ref(), self.pd, s.addr, len, write)?;
            if len > 0 {
                out.push((s.addr as *mut u8, s.length as usize));
            }
        }
        access::message_len(total)
    }

    /// Runs one request (with the path's scratch segment lists, kept to
    /// avoid allocating per message).
    fn execute(&mut self, w: &SendWqe, idx: u32, now: Instant) -> Step {
        let mut local = std::mem::take(&mut self.scratch_local);
        let mut other = std::mem::take(&mut self.scratch_other);
        local.clear();
        other.clear();
        let step = self.execute_with(w, idx, now, &mut local, &mut other);
        self.scratch_local = local;
        self.scratch_other = other;
        step
    }

    fn execute_with(
        &mut self,
        w: &SendWqe,
        idx: u32,
        now: Instant,
        local: &mut Vec<Seg>,
        dst: &mut Vec<Seg>,
    ) -> Step {
        if !self.send_cq.has_room() {
            return Step::Wait(Wait::Cq);
        }
        let Shape {
            inline,
            reads_local,
        } = match opcode::shape(
            if self.uc { IBV_QPT_UC } else { IBV_QPT_RC },
            w.opcode,
            w.send_flags,
            w.num_sge,
            w.inline_len,
            self.max_send_sge,
        ) {
            Ok(shape) => shape,
            Err(status) => {
                self.fail(w, idx, status, None);
                return Step::Done;
            }
        };
        if inline {
            // Read only, from the caller's copy of the WQE.
            let b = w.inline_bytes();
            local.push((b.as_ptr() as *mut u8, b.len()));
        } else if let Err(s) = self.local(w, !reads_local, local) {
            self.fail(w, idx, s, None);
            return Step::Done;
        }
        let len: u64 = local.iter().map(|s| s.1 as u64).sum();
        if opcode::is_atomic(w.opcode) {
            if let Err(status) = atomic::check_local(local.len(), len) {
                self.fail(w, idx, status, None);
                return Step::Done;
            }
        }

        // The responder: its rings granted (it names us), receiving,
        // connected back to us, on this host.
        let peer_ok = self.attach() && {
            let p = self.peer();
            qp::receives(p.state.load(Ordering::Acquire))
                && p.dest_qpn.load(Ordering::Acquire) == self.qpn
                && p.path_local.load(Ordering::Acquire) == 1
        };
        if !peer_ok {
            if self.uc {
                self.complete(w, idx, len);
                return Step::Done;
            }
            let until = qp::retry_deadline(now, self.timeout, self.retry_cnt);
            return Step::Wait(Wait::Retry { until });
        }

        let mut recv: Option<Recv> = None;
        if opcode::consumes_receive(w.opcode) {
            let pending = match &self.rings().srq {
                Some(srq) => srq.header().rq.pending(srq.ring.capacity()),
                None => {
                    let capacity = self.rings().rq.capacity();
                    self.peer().rq.pending(capacity)
                }
            };
            if pending.is_some_and(|n| n > 0) && !self.rings().cq.has_room() {
                return Step::Wait(Wait::Cq);
            }
            recv = match pending {
                Some(n) if n > 0 => self.receive(receive::lands_in_receive(w.opcode)),
                _ => None,
            };
            if recv.is_none() {
                if self.uc {
                    self.complete(w, idx, len);
                    return Step::Done;
                }
                let timer = self.peer().min_rnr_timer.load(Ordering::Acquire) as u8;
                let until = qp::rnr_deadline(now, self.rnr_retry, timer);
                return Step::Wait(Wait::Rnr { until });
            }
        }

        let mut result_len = len;
        match w.opcode {
            IBV_WR_SEND | IBV_WR_SEND_WITH_IMM => {
                let Recv {
                    wqe: r, max_sge, ..
                } = recv.expect("recv");
                // The receive's keys were checked to be in the responder's
                // PD by the router when it resolved them.
                let sges = r.sges().iter().map(|s| {
                    let n = u64::from(s.length);
                    let view = self.key(s.lkey);
                    let region = view.map(|k| k.region());
                    access::local(region.as_ref(), 0, s.addr, n, true)?;
                    if n > 0 && !view.is_some_and(|k| k.segments(s.addr, n, dst)) {
                        return Err(IBV_WC_LOC_PROT_ERR);
                    }
                    Ok(n)
                });
                if let Err(f) = receive::check(r.num_sge, max_sge, sges, len) {
                    return self.responder_error(w, idx, f.requester, recv, f.receive, len);
                }
                copy_ascending(local, dst, len);
            }
            IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM => {
                match self.remote(w.rkey, w.remote_addr, len, IBV_ACCESS_REMOTE_WRITE, dst) {
                    Ok(()) => copy_ascending(local, dst, len),
                    Err(s) => return self.responder_error(w, idx, s, None, 0, len),
                }
            }
            IBV_WR_RDMA_READ => {
                match self.remote(w.rkey, w.remote_addr, len, IBV_ACCESS_REMOTE_READ, dst) {
                    Ok(()) => copy_ascending(dst, local, len),
                    Err(s) => return self.responder_error(w, idx, s, None, 0, len),
                }
            }
            _ => {
                if let Err(status) = atomic::check_target(w.remote_addr) {
                    return self.responder_error(w, idx, status, None, 0, len);
                }
                let target =
                    match self.remote(w.rkey, w.remote_addr, 8, IBV_ACCESS_REMOTE_ATOMIC, dst) {
                        Ok(()) if dst.len() == 1 && (dst[0].0 as usize).is_multiple_of(8) => {
                            dst[0].0
                        }
                        Ok(()) => {
                            return self.responder_error(
                                w,
                                idx,
                                IBV_WC_REM_ACCESS_ERR,
                                None,
                                0,
                                len,
                            )
                        }
                        Err(s) => return self.responder_error(w, idx, s, None, 0, len),
                    };
                // SAFETY: 8 aligned bytes inside the peer's arena mapping;
                // a real atomic, so it is atomic with the peer's CPU too.
                let cell = unsafe { &*(target as *const AtomicU64) };
                let old = if w.opcode == IBV_WR_ATOMIC_CMP_AND_SWP {
                    match cell.compare_exchange(
                        w.compare_add,
                        w.swap,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(v) | Err(v) => v,
                    }
                } else {
                    cell.fetch_add(w.compare_add, Ordering::AcqRel)
                };
                // SAFETY: the local SGE is 8 bytes of our registered memory.
                unsafe { std::ptr::copy_nonoverlapping(old.to_ne_bytes().as_ptr(), local[0].0, 8) };
                result_len = 8;
            }
        }

        if let Some(r) = recv {
            let from_own = matches!(r.from, RecvFrom::Own { .. });
            let Some(r) = self.finish_receive(r) else {
                if from_own {
                    // The router flushed it meanwhile (the peer went to ERR).
                    return Step::Wait(Wait::Retry { until: Some(now) });
                }
                // WRITE_WITH_IMM on an SRQ whose receives other messages
                // took meanwhile: receiver not ready, the write is retried
                // (UC: lost).
                if self.uc {
                    self.complete(w, idx, len);
                    return Step::Done;
                }
                let timer = self.peer().min_rnr_timer.load(Ordering::Acquire) as u8;
                let until = qp::rnr_deadline(now, self.rnr_retry, timer);
                return Step::Wait(Wait::Rnr { until });
            };
            let cqe = Cqe::received(
                r.wr_id,
                w.opcode,
                len as u32,
                w.imm_data,
                self.peer_qpn,
                self.qpn,
            );
            self.rings().cq.push(&cqe);
            self.notify(true, w.send_flags & IBV_SEND_SOLICITED != 0);
        }
        self.complete(w, idx, result_len);
        Step::Done
    }

    /// As the router's `responder_error`: RC fails both QPs (the receive,
    /// if any, completes with `recv_status`); UC completes the sender.
    fn responder_error(
        &mut self,
        w: &SendWqe,
        idx: u32,
        req_status: u32,
        recv: Option<Recv>,
        recv_status: u32,
        len: u64,
    ) -> Step {
        if let Some(r) = recv {
            if let Some(r) = self.finish_receive(r) {
                let cqe = Cqe::receive_failed(r.wr_id, recv_status, self.peer_qpn, self.qpn);
                self.rings().cq.push(&cqe);
                self.notify(true, true);
            }
        }
        if self.uc {
            if recv.is_some() {
                let _ = self.ctx().call(&Request::SemiError {
                    qp: self.qp_handle,
                    own: false,
                    peer_event: Some(0),
                });
            }
            self.complete(w, idx, len);
            return Step::Done;
        }
        let event = if recv.is_some() {
            0
        } else {
            flowverbs_verbs::events::responder_error_event(req_status)
        };
        self.fail(w, idx, req_status, Some(event));
        Step::Done
    }
}

enum Step {
    Done,
    Wait(Wait),
}

/// The receive a message uses at the responder.
#[derive(Clone, Copy)]
struct Recv {
    wqe: RecvWqe,
    /// The most SGEs its queue allows (the QP's or the SRQ's).
    max_sge: u32,
    /// Where it was read: the QP's own queue at index `at` (taken when the
    /// message completes), or an SRQ.
    from: RecvFrom,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RecvFrom {
    Own {
        at: u32,
    },
    /// Taken from the SRQ already (its data lands in it).
    SrqTaken,
    /// Read at the SRQ's head, not taken (WRITE_WITH_IMM: taken when the
    /// message completes, whichever receive is at the head then).
    SrqHead,
}

impl SemiPath {
    /// The receive at the responder's head. `lands`: the message's data
    /// lands in it, so an SRQ's is taken now, before anything is written
    /// (other senders and the router take from the same SRQ). None: no
    /// receive (any more).
    fn receive(&mut self, lands: bool) -> Option<Recv> {
        if self.rings().srq.is_none() {
            let c = self.peer().rq.consumer();
            let max_sge = self.peer().max_recv_sge.load(Ordering::Acquire);
            return Some(Recv {
                wqe: self.rings().rq.read(c),
                max_sge,
                from: RecvFrom::Own { at: c },
            });
        }
        let srq = self.rings().srq.as_ref().expect("srq");
        let max_sge = srq.header().max_sge.load(Ordering::Acquire);
        if !lands {
            let wqe = srq.ring.read(srq.header().rq.consumer());
            return Some(Recv {
                wqe,
                max_sge,
                from: RecvFrom::SrqHead,
            });
        }
        let wqe = self.take_srq()?;
        Some(Recv {
            wqe,
            max_sge,
            from: RecvFrom::SrqTaken,
        })
    }

    /// Takes the receive at the head of the responder's SRQ; raises the
    /// SRQ's limit event (through the router) if this take crossed it.
    fn take_srq(&mut self) -> Option<RecvWqe> {
        let srq = self.rings().srq.as_ref().expect("srq");
        let Take::Taken {
            entry, remaining, ..
        } = srq.header().rq.take(&srq.ring)
        else {
            return None;
        };
        if srq
            .header()
            .disarm_limit(remaining, receive::srq_limit_reached)
        {
            srq.header().limit_event_pending.store(1, Ordering::Release);
            self.ctx().wake_router();
        }
        Some(entry)
    }

    /// The receive the message completes: its own queue's entry, if still
    /// there to take; an SRQ's taken entry; or the SRQ's head taken now.
    fn finish_receive(&mut self, r: Recv) -> Option<RecvWqe> {
        match r.from {
            RecvFrom::Own { at } => self.peer().rq.claim_consumer(at).then_some(r.wqe),
            RecvFrom::SrqTaken => Some(r.wqe),
            RecvFrom::SrqHead => self.take_srq(),
        }
    }
}

/// Copies `len` bytes from `src` segments to `dst` segments in ascending
/// address order: 64 KiB pieces with a release fence between them, and the
/// last 64 bytes one by one after all the others, so that a peer spinning
/// on the end of a buffer (NCCL) sees everything before it.
fn copy_ascending(src: &[(*mut u8, usize)], dst: &[(*mut u8, usize)], len: u64) {
    const PIECE: usize = 64 * 1024;
    const TAIL: u64 = 64;
    let bulk = len.saturating_sub(TAIL);
    let (mut si, mut so, mut di, mut dof) = (0usize, 0usize, 0usize, 0usize);
    let mut done = 0u64;
    while done < len {
        while si < src.len() && so == src[si].1 {
            si += 1;
            so = 0;
        }
        while di < dst.len() && dof == dst[di].1 {
            di += 1;
            dof = 0;
        }
        if si >= src.len() || di >= dst.len() {
            return;
        }
        let mut n = (src[si].1 - so)
            .min(dst[di].1 - dof)
            .min((len - done) as usize);
        if done < bulk {
            n = n.min((bulk - done) as usize).min(PIECE);
            // SAFETY: both ranges lie inside checked segments (registered
            // memory of this process, or the peer's arena mapping).
            unsafe { std::ptr::copy_nonoverlapping(src[si].0.add(so), dst[di].0.add(dof), n) };
            fence(Ordering::Release);
        } else {
            if done == bulk {
                fence(Ordering::SeqCst);
            }
            n = 1;
            // SAFETY: as above; one byte at a time, in order.
            unsafe {
                let b = std::ptr::read_volatile(src[si].0.add(so));
                std::ptr::write_volatile(dst[di].0.add(dof), b);
            }
        }
        so += n;
        dof += n;
        done += n as u64;
    }
}
