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

mod connected;
mod datagram;

pub use connected::{NewPath, SemiPath};
pub use datagram::{DatagramPath, NewDatagramPath};

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::arena::Arena;
use super::context::{ContextInner, Errno};
use super::cq_rings::CqRings;
use flowverbs_verbs::access::{self, Region};
use flowverbs_verbs::receive;
use flowverbs_wire::control::{ArenaRun, Reply, Request};
use flowverbs_wire::cq_ring::CqRing;
use flowverbs_wire::entries::{Cqe, RecvWqe, SendWqe};
use flowverbs_wire::ring::RingSlots;
use flowverbs_wire::segment::{
    CqHeader, CqLayout, Mapping, QpHeader, QpLayout, SrqHeader, SrqLayout, KEY_TABLE_SLOTS,
};

/// Semi-mode state of one context.
pub struct SemiContext {
    keys: Mapping,
    pub arena: Mutex<Option<Arena>>,
    /// The regions this process registered, by lkey (for its own
    /// local-key checks).
    pub local_mrs: RwLock<FxHashMap<u32, Region>>,
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
                let before = path.queued();
                path.run();
                moved |= path.queued() != before;
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
            local_mrs: RwLock::new(FxHashMap::default()),
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

    /// The local SGEs of a request of a QP in PD `pd` as pointers into
    /// this process's memory (checked against its own registrations), or
    /// the status of its failure.
    fn local_segments(
        &self,
        pd: u32,
        w: &SendWqe,
        write: bool,
        out: &mut Vec<Seg>,
    ) -> Result<(), u32> {
        let mrs = self.local_mrs.read().unwrap_or_else(|e| e.into_inner());
        let mut total = 0u64;
        for s in w.sges() {
            let len = u64::from(s.length);
            total += len;
            let region = mrs.get(&s.lkey);
            access::local(region, pd, s.addr, len, write)?;
            if let Some(r) = region.filter(|_| len > 0) {
                out.push((r.va_of(s.addr) as *mut u8, s.length as usize));
            }
        }
        access::message_len(total)
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

/// The time, read at most once per call into the provider and only when a
/// request must wait or a deadline is checked: `clock_gettime` costs
/// 100-200 ns on a VM, a sixth of a 2-byte message on the semi path.
#[derive(Default)]
pub struct Clock(Option<Instant>);

impl Clock {
    pub fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// The two segment lists (ours, the peer's) a path fills for each
/// request, kept between requests so that running one does not allocate.
#[derive(Default)]
pub(super) struct Scratch {
    local: Vec<Seg>,
    remote: Vec<Seg>,
}

impl Scratch {
    /// Both lists, empty (the path lends them to itself while it runs).
    pub(super) fn take(&mut self) -> (Vec<Seg>, Vec<Seg>) {
        let (mut local, mut remote) = (
            std::mem::take(&mut self.local),
            std::mem::take(&mut self.remote),
        );
        local.clear();
        remote.clear();
        (local, remote)
    }

    pub(super) fn put_back(&mut self, local: Vec<Seg>, remote: Vec<Seg>) {
        self.local = local;
        self.remote = remote;
    }
}

/// A peer's MR (or window) as this sender sees it: `[addr, addr +
/// length)` as work requests address it, at `va` in the peer.
struct KeyView {
    addr: u64,
    length: u64,
    va: u64,
    access: u32,
    slot: u32,
    runs: Vec<ArenaRun>,
    arena: Arc<Mapping>,
}

/// The responder MRs a QP has resolved, by key (asked of the router on a
/// key's first use; dropped once the key table says the key is gone).
#[derive(Default)]
struct KeyCache(FxHashMap<u32, KeyView>);

impl KeyCache {
    /// The MR behind `key` at the responder of the context's QP
    /// `qp_handle` (its connected peer, or UD QP `dest_qpn`), if live.
    fn get(
        &mut self,
        ctx: &ContextInner,
        qp_handle: u32,
        dest_qpn: u32,
        key: u32,
    ) -> Option<&KeyView> {
        let semi = ctx.semi.as_ref()?;
        if self
            .0
            .get(&key)
            .is_some_and(|k| !semi.key_live(k.slot, key))
        {
            self.0.remove(&key);
        }
        if let std::collections::hash_map::Entry::Vacant(entry) = self.0.entry(key) {
            let (reply, fds) = ctx
                .call(&Request::ResolveKey {
                    qp: qp_handle,
                    key,
                    dest_qpn,
                })
                .ok()?;
            let Reply::Key {
                addr,
                length,
                va,
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
            let arena = semi.arena_of(owner, fd, need).ok()?;
            if !semi.key_live(slot, key) {
                return None;
            }
            let view = KeyView {
                addr,
                length,
                va,
                access,
                slot,
                runs,
                arena,
            };
            entry.insert(view);
        }
        self.0.get(&key)
    }
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
            va: self.va,
        }
    }

    /// Pointers into the arena for `[addr, addr + len)` (inside the MR,
    /// as work requests address it).
    fn segments(&self, addr: u64, len: u64, out: &mut Vec<(*mut u8, usize)>) -> bool {
        let addr = self.region().va_of(addr);
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
/// last read (see `CqRing::has_room`). It follows the CQ when
/// `ibv_resize_cq` moves it (`wire::cq_ring`): a ring found full and moved
/// is looked up again, so a completion never goes to a frozen ring.
struct CqView {
    header: *const CqHeader,
    slots: RingSlots<Cqe>,
    seen: u32,
    source: CqSource,
    ctx: *const ContextInner,
}

/// Rings a [`CqView`] follows for one completion: more resizes than this
/// while one completion is written would be absurd; the bound keeps a
/// peer that marks a full ring moved (it shares the ring) from keeping a
/// producer asking for rings forever.
const MAX_FOLLOWS: usize = 8;

/// Where a [`CqView`]'s ring comes from.
enum CqSource {
    /// This process's own CQ (a QP's send CQ): its rings.
    Own(*const CqRings),
    /// A responder's receive CQ, mapped here; `grant` asks the router for
    /// the responder's rings again, `qpn` is the responder's.
    Peer {
        _segment: Mapping,
        grant: Request,
        qpn: u32,
    },
}

impl CqView {
    /// A view of this process's CQ `rings`.
    fn own(ctx: &ContextInner, rings: *const CqRings) -> CqView {
        // SAFETY: the CQ outlives the QPs that use it (destroying it first
        // fails with EBUSY), so its rings outlive this view.
        let current = unsafe { &*rings }.current();
        CqView {
            header: current.header(),
            slots: current.slots(),
            seen: 0,
            source: CqSource::Own(rings),
            ctx,
        }
    }

    fn ring(&self) -> CqRing<'_> {
        // SAFETY: the header lives in a segment that outlives this view
        // (our own CQ's rings outlive its QPs; the peer's is held in
        // `source`).
        CqRing::new(unsafe { &*self.header }, self.slots)
    }

    fn has_room(&mut self) -> bool {
        for _ in 0..MAX_FOLLOWS {
            let mut seen = self.seen;
            let room = self.ring().has_room(&mut seen);
            self.seen = seen;
            if room || !self.follow() {
                return room;
            }
        }
        false
    }

    /// The ring is full: if a resize moved the CQ, switches to its new
    /// ring (true).
    fn follow(&mut self) -> bool {
        if !self.ring().moved() {
            return false;
        }
        match &mut self.source {
            CqSource::Own(rings) => {
                // SAFETY: see `CqView::own`.
                let rings = unsafe { &**rings };
                // The resizing thread switches right after the router's
                // answer; until then this producer waits (it cannot
                // complete into either ring before the switch). A ring
                // marked moved with no resize under way (a peer wrote the
                // flag) is only full.
                let current = loop {
                    let under_way = rings.resizing();
                    // Read after the flag: a switch made before the flag
                    // went down is seen here.
                    let current = rings.current();
                    if !std::ptr::eq(current.header(), self.header) {
                        break current;
                    }
                    if !under_way {
                        return false;
                    }
                    std::thread::yield_now();
                };
                self.header = current.header();
                self.slots = current.slots();
            }
            CqSource::Peer { grant, qpn, .. } => {
                // SAFETY: the context outlives its QPs and their paths.
                let ctx = unsafe { &*self.ctx };
                let Ok(again) = PeerRings::grant(ctx, grant.clone()) else {
                    return false;
                };
                if again.qpn != *qpn {
                    return false;
                }
                let view = again.cq;
                if std::ptr::eq(view.header, self.header) {
                    return false;
                }
                *self = view;
            }
        }
        self.seen = 0;
        true
    }

    /// After a push: a completion event if the CQ was armed for it (the
    /// router writes it: it holds the channel).
    fn notify(&self, ctx: &ContextInner, solicited: bool) {
        // SAFETY: see CqView::ring.
        let h = unsafe { &*self.header };
        if h.take_arm(solicited) {
            h.event_pending.store(1, Ordering::Release);
            ctx.wake_router();
        }
    }

    fn push(&mut self, cqe: &Cqe) -> bool {
        for _ in 0..MAX_FOLLOWS {
            let mut seen = self.seen;
            let pushed = self.ring().push_seen(cqe, &mut seen);
            self.seen = seen;
            if pushed || !self.follow() {
                return pushed;
            }
        }
        false
    }
}

// SAFETY: the raw pointers point into shared mappings kept alive by the
// owner of this value (see CqView::ring).
unsafe impl Send for CqView {}

/// The responder's rings, as the router granted them (`Request::SemiConnect`).
struct PeerRings {
    qpn: u32,
    gid: [u8; 16],
    _qp_seg: Mapping,
    header: *const QpHeader,
    rq: RingSlots<RecvWqe>,
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
    fn header(&self) -> &QpHeader {
        // SAFETY: the peer's QP segment is mapped for the life of self.
        unsafe { &*self.header }
    }

    /// The receive at the head of the peer's queue (its SRQ's, if it has
    /// one), left there: (entry, its index, the most SGEs its queue
    /// allows). None if nothing is posted (or the indices are impossible).
    fn peek_receive(&self) -> Option<(RecvWqe, u32, u32)> {
        let (indices, slots, max_sge) = match &self.srq {
            Some(srq) => (
                &srq.header().rq,
                &srq.ring,
                srq.header().max_sge.load(Ordering::Acquire),
            ),
            None => (
                &self.header().rq,
                &self.rq,
                self.header().max_recv_sge.load(Ordering::Acquire),
            ),
        };
        let at = indices.consumer();
        match indices.pending(slots.capacity()) {
            Some(n) if n > 0 => Some((slots.read(at), at, max_sge)),
            _ => None,
        }
    }

    /// Takes receive `at` (read with [`PeerRings::peek_receive`]) if no
    /// one else took it meanwhile; on an SRQ, raises its limit event
    /// (through the router) if this take crossed it.
    fn claim_receive(&self, ctx: &ContextInner, at: u32) -> bool {
        let Some(srq) = &self.srq else {
            return self.header().rq.claim_consumer(at);
        };
        let h = srq.header();
        if !h.rq.claim_consumer(at) {
            return false;
        }
        let remaining = h.rq.producer().wrapping_sub(at.wrapping_add(1));
        if h.disarm_limit(remaining, receive::srq_limit_reached) {
            h.limit_event_pending.store(1, Ordering::Release);
            ctx.wake_router();
        }
        true
    }

    /// Asks the router for a responder's rings with `grant`
    /// (`Request::SemiConnect` or `Request::SemiDatagramPeer`) and maps
    /// them.
    fn grant(ctx: &ContextInner, grant: Request) -> Result<PeerRings, Errno> {
        let (reply, fds) = ctx.call(&grant)?;
        PeerRings::map(ctx, grant, &reply, fds)
    }

    /// From the router's [`Reply::SemiPeer`] to `grant` and its two or
    /// three fds.
    fn map(
        ctx: &ContextInner,
        grant: Request,
        reply: &Reply,
        mut fds: Vec<OwnedFd>,
    ) -> Result<PeerRings, Errno> {
        let &Reply::SemiPeer {
            peer_qpn,
            peer_gid,
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
            qpn: peer_qpn,
            gid: peer_gid,
            header: qseg.as_ptr() as *const QpHeader,
            _qp_seg: qseg,
            rq,
            cq: CqView {
                header: cseg.as_ptr() as *const CqHeader,
                slots: cq_slots,
                seen: 0,
                source: CqSource::Peer {
                    _segment: cseg,
                    grant,
                    qpn: peer_qpn,
                },
                ctx,
            },
            srq,
        })
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
