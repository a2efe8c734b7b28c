//! The router's tables of verbs objects. Every object records the session
//! that owns it; a handle from one session never reaches another's object.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::os::fd::OwnedFd;

use flowverbs_wire::control::{QpAttr, QpCaps};
use flowverbs_wire::cq_ring::CqRing;
use flowverbs_wire::entries::{Cqe, RecvWqe, SendWqe};
use flowverbs_wire::ring::RingSlots;
use flowverbs_wire::segment::{
    CqHeader, CqLayout, Mapping, QpHeader, QpLayout, SessionHeader, SrqHeader, SrqLayout,
};

use super::limits::{Budget, Limits, Refusal, RequestRate, Usage};
use super::memory::ProcessMemory;
use flowverbs_verbs::qp::QpKind;

pub type SessionId = u64;

/// One client context (one `ibv_open_device`).
pub struct Session {
    pub sock: OwnedFd,
    pub doorbell: OwnedFd,
    pub segment: Mapping,
    pub memory: ProcessMemory,
    /// GID 0 of the client: the IPv4-mapped address of its network
    /// namespace, as the router read it.
    pub gid: [u8; 16],
    pub uid: u32,
    /// Who it may share memory with in semi mode.
    pub trust: super::semi::TrustGroup,
    /// Write end of the context's async-event pipe (nonblocking).
    pub async_events: OwnedFd,
    /// The router's end of the event socket (see `wire::control::Event`).
    pub event_sock: OwnedFd,
    /// Completion channels: the read end's fd number in the client → the
    /// write end (nonblocking).
    pub channels: HashMap<i32, OwnedFd>,
    /// Semi mode: the memfd that holds the client's registered pages.
    pub arena: Option<OwnedFd>,
    /// What it holds, against the caps (see `limits`).
    pub usage: Usage,
    /// Its control requests, against the rate cap.
    pub rate: RequestRate,
}

impl Session {
    /// Unit tests and fuzz targets: a session of this process (its memory
    /// is the caller's own, /dev/null stands for its sockets and event
    /// descriptors), with `gid`, of user `uid`, in trust group `trust`.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn of_this_process(gid: [u8; 16], uid: u32, trust: crate::semi::TrustGroup) -> Session {
        let dev_null = || -> OwnedFd {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .expect("/dev/null")
                .into()
        };
        let (_, segment) = crate::control::segment(
            "fv-test-session",
            flowverbs_wire::segment::SESSION_SEGMENT_SIZE,
        )
        .expect("a session segment");
        Session {
            sock: dev_null(),
            doorbell: dev_null(),
            segment,
            memory: crate::memory::this_process(),
            gid,
            uid,
            trust,
            async_events: dev_null(),
            event_sock: dev_null(),
            channels: Default::default(),
            arena: None,
            usage: Default::default(),
            rate: Default::default(),
        }
    }
}

impl Session {
    pub fn header(&self) -> &SessionHeader {
        // SAFETY: the session segment is a page we created and sized for
        // this header.
        unsafe { self.segment.header::<SessionHeader>() }
    }
}

pub struct Pd {
    pub session: SessionId,
}

pub struct Mr {
    pub session: SessionId,
    pub pd: u32,
    /// Where the region lies in its process, and how work requests
    /// address it (`ibv_reg_mr_iova2`; the same for `ibv_reg_mr`).
    pub addr: u64,
    pub iova: u64,
    pub length: u64,
    pub access: u32,
    pub lkey: u32,
    pub rkey: u32,
    /// Semi mode: the MR's slot in the key table and where its pages lie
    /// in the owner's arena (None: not shared).
    pub slot: Option<u32>,
    pub runs: Vec<flowverbs_wire::control::ArenaRun>,
}

impl Mr {
    /// The region as the semantics core checks it.
    pub fn region(&self) -> flowverbs_verbs::access::Region {
        flowverbs_verbs::access::Region {
            pd: self.pd,
            addr: self.iova,
            length: self.length,
            access: self.access,
            va: self.addr,
        }
    }
}

/// A memory window (`ibv_alloc_mw`): its state under the rules of
/// `flowverbs_verbs::window`.
pub struct Mw {
    pub session: SessionId,
    pub window: flowverbs_verbs::window::Window,
    /// Semi mode: the window's slot in the key table while it is bound
    /// (providers that cached its rkey see it go).
    pub slot: Option<u32>,
}

pub struct Cq {
    pub session: SessionId,
    pub segment: Mapping,
    /// Semi mode: the segment's memfd, for the providers of senders.
    pub segment_fd: Option<OwnedFd>,
    pub ring: RingSlots<Cqe>,
    /// The completion channel (its fd number in the client), if any.
    pub channel: Option<i32>,
    /// The client's `ibv_cq *`: what completion and async events carry.
    pub cookie: u64,
    /// Completion events written for this CQ.
    pub events: u32,
    /// Rings that `ibv_resize_cq` moved away from, until the consumer has
    /// drained them (their headers still take semi producers' events).
    pub retired: Vec<RetiredRing>,
    /// A resize's new ring, made but not yet committed.
    pub resizing: Option<NewRing>,
}

/// A CQ ring frozen by a resize (`wire::cq_ring`).
pub struct RetiredRing {
    pub segment: Mapping,
    /// Completions lie in it up to this index (exclusive).
    pub end: u32,
    pub capacity: u32,
}

impl RetiredRing {
    pub fn header(&self) -> &CqHeader {
        // SAFETY: the segment starts with a CqHeader (see CqLayout).
        unsafe { self.segment.header::<CqHeader>() }
    }

    /// The consumer took everything up to `end`.
    pub fn drained(&self) -> bool {
        self.header().ring.consumer() == self.end
    }
}

/// The ring an uncommitted `ibv_resize_cq` made.
pub struct NewRing {
    pub segment: Mapping,
    pub fd: OwnedFd,
    pub layout: CqLayout,
}

impl Cq {
    pub fn new(
        session: SessionId,
        segment: Mapping,
        layout: CqLayout,
        channel: Option<i32>,
        cookie: u64,
    ) -> Cq {
        // SAFETY: the segment was created with `layout.size` bytes, which
        // holds `capacity` entries after `ring_offset`.
        let ring =
            unsafe { RingSlots::new(segment.as_ptr().add(layout.ring_offset), layout.capacity) };
        Cq {
            session,
            segment,
            segment_fd: None,
            ring,
            channel,
            cookie,
            events: 0,
            retired: Vec::new(),
            resizing: None,
        }
    }

    /// `ibv_resize_cq`'s commit: freezes the current ring, copies its arm
    /// to `new` and produces into `new` from now on (the argument is at
    /// `wire::cq_ring`). Returns the old ring's `end`.
    pub fn move_to(&mut self, new: NewRing, semi: bool) -> u32 {
        let end = self.cq_ring().freeze();
        // SAFETY: the new segment was created with `layout.size` bytes,
        // which hold `capacity` entries after `ring_offset`.
        let ring = unsafe {
            RingSlots::new(
                new.segment.as_ptr().add(new.layout.ring_offset),
                new.layout.capacity,
            )
        };
        let old = std::mem::replace(&mut self.segment, new.segment);
        let capacity = std::mem::replace(&mut self.ring, ring).capacity();
        // SAFETY: the old segment starts with a CqHeader.
        let arm = unsafe { old.header::<CqHeader>() }
            .arm
            .load(std::sync::atomic::Ordering::SeqCst);
        self.header()
            .arm
            .fetch_max(arm, std::sync::atomic::Ordering::SeqCst);
        self.segment_fd = semi.then_some(new.fd);
        self.retired.push(RetiredRing {
            segment: old,
            end,
            capacity,
        });
        end
    }

    /// Forgets the retired rings the consumer has drained; returns their
    /// entries (to release from the session's budget).
    pub fn drop_drained(&mut self) -> u32 {
        let mut freed = 0;
        self.retired.retain(|r| {
            let keep = !r.drained();
            if !keep {
                freed += r.capacity;
            }
            keep
        });
        freed
    }

    /// Completions the CQ holds: published or claimed, not yet polled, in
    /// its ring and in the rings a resize left.
    pub fn outstanding(&self) -> u32 {
        let cap = self.ring.capacity();
        let h = &self.header().ring;
        let here = h
            .producer
            .load(std::sync::atomic::Ordering::Acquire)
            .wrapping_sub(h.consumer())
            .min(cap);
        self.retired.iter().fold(here, |n, r| {
            let left = r
                .end
                .wrapping_sub(r.header().ring.consumer())
                .min(r.capacity);
            n.saturating_add(left)
        })
    }

    /// Every ring entry the CQ holds: its ring, retired rings and an
    /// uncommitted resize's (what its session is charged).
    pub fn entries_held(&self) -> u32 {
        let retired: u32 = self.retired.iter().map(|r| r.capacity).sum();
        let resizing = self.resizing.as_ref().map_or(0, |n| n.layout.capacity);
        self.ring.capacity() + retired + resizing
    }

    pub fn header(&self) -> &CqHeader {
        // SAFETY: the segment starts with a CqHeader (see CqLayout).
        unsafe { self.segment.header::<CqHeader>() }
    }

    /// The CQ's multi-producer ring (see `wire::cq_ring`).
    pub fn cq_ring(&self) -> CqRing<'_> {
        CqRing::new(self.header(), self.ring)
    }

    /// Free slots. Nonsensical indices (a confused client) count as a full
    /// ring: the client only stalls itself and its peers, as it could by
    /// not polling.
    pub fn free_slots(&self) -> u32 {
        self.cq_ring().free()
    }
}

/// A shared receive queue: a receive ring consumed on behalf of every QP
/// attached to it.
pub struct Srq {
    pub session: SessionId,
    pub pd: u32,
    pub segment: Mapping,
    pub ring: RingSlots<RecvWqe>,
    /// Semi mode: the segment's memfd, for the providers of senders to
    /// its QPs.
    pub segment_fd: Option<OwnedFd>,
    pub max_sge: u32,
    /// The client's `ibv_srq *`: the element of this SRQ's async events.
    pub cookie: u64,
    /// Async events written for this SRQ.
    pub async_events: u32,
    /// Semi mode over a NIC: the real device backs it too.
    pub nic_backed: bool,
    /// Where its receives go, once its first QP reached RTR: the NIC
    /// (true) or fv0's own ring (false). Every QP of the SRQ must then
    /// take the same kind of path (`router::nic_path`).
    pub on_nic: Option<bool>,
}

impl Srq {
    pub fn new(
        session: SessionId,
        pd: u32,
        segment: Mapping,
        layout: SrqLayout,
        max_sge: u32,
    ) -> Srq {
        // SAFETY: the segment holds `capacity` receive WQEs at ring_offset.
        let ring =
            unsafe { RingSlots::new(segment.as_ptr().add(layout.ring_offset), layout.capacity) };
        Srq {
            session,
            pd,
            segment,
            ring,
            segment_fd: None,
            max_sge,
            cookie: 0,
            async_events: 0,
            nic_backed: false,
            on_nic: None,
        }
    }

    pub fn header(&self) -> &SrqHeader {
        // SAFETY: the segment starts with an SrqHeader (see SrqLayout).
        unsafe { self.segment.header::<SrqHeader>() }
    }

    /// Posted receives not yet taken, or None for an impossible index.
    pub fn pending(&self) -> Option<u32> {
        self.header().rq.pending(self.ring.capacity())
    }
}

/// A send work request the router could not finish yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// Waiting for a receive at the responder (RNR) or for the responder to
    /// become reachable; fails when the deadline passes (None: never).
    Retry {
        deadline: Option<std::time::Instant>,
        rnr: bool,
    },
    /// Waiting for room in a completion queue.
    CqFull,
}

pub struct Qp {
    pub session: SessionId,
    pub pd: u32,
    pub kind: QpKind,
    pub qpn: u32,
    pub send_cq: u32,
    pub recv_cq: u32,
    /// Shared receive queue, 0 for none.
    pub srq: u32,
    pub caps: QpCaps,
    pub sq_sig_all: bool,
    pub attr: QpAttr,
    pub segment: Mapping,
    pub sq: RingSlots<SendWqe>,
    pub rq: RingSlots<RecvWqe>,
    /// The router's own consumer indices.
    pub sq_consumer: u32,
    pub rq_consumer: u32,
    pub stall: Option<Stall>,
    /// Bytes of the head send work request already moved to QP
    /// `copied_to` (a large message moves over several passes).
    pub copied: u64,
    pub copied_to: u32,
    /// The client's `ibv_qp *`: the element of this QP's async events.
    pub cookie: u64,
    /// Async events written for this QP.
    pub async_events: u32,
    /// Semi mode: the segment's memfd, for the providers of senders.
    pub segment_fd: Option<OwnedFd>,
    /// Semi mode: the provider runs this QP's send queue (`router::semi`).
    pub semi: bool,
    /// Semi mode over a NIC: a QP of the real device backs this one (its
    /// QPN is the real QP's), so its path may be the NIC.
    pub nic_backed: bool,
    /// Its path is the NIC: the provider posts to the real device, the
    /// router never sees its work requests.
    pub on_nic: bool,
    /// Send work requests the router completed for it (router and link
    /// parts; the semi part lives in the QP header).
    pub moved: flowverbs_wire::control::MovedByPath,
}

impl Qp {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        session: SessionId,
        pd: u32,
        kind: QpKind,
        qpn: u32,
        send_cq: u32,
        recv_cq: u32,
        srq: u32,
        caps: QpCaps,
        sq_sig_all: bool,
        segment: Mapping,
        layout: QpLayout,
    ) -> Qp {
        // SAFETY: the segment holds `layout.size` bytes, with the queues at
        // the offsets QpLayout computed for these capacities.
        let (sq, rq) = unsafe {
            (
                RingSlots::new(segment.as_ptr().add(layout.sq_offset), layout.sq_capacity),
                RingSlots::new(segment.as_ptr().add(layout.rq_offset), layout.rq_capacity),
            )
        };
        let attr = QpAttr {
            qp_state: flowverbs_verbs::qp::RESET,
            cap: caps,
            ..Default::default()
        };
        Qp {
            session,
            pd,
            kind,
            qpn,
            send_cq,
            recv_cq,
            srq,
            caps,
            sq_sig_all,
            attr,
            segment,
            sq,
            rq,
            sq_consumer: 0,
            rq_consumer: 0,
            stall: None,
            copied: 0,
            copied_to: 0,
            cookie: 0,
            async_events: 0,
            segment_fd: None,
            semi: false,
            nic_backed: false,
            on_nic: false,
            moved: Default::default(),
        }
    }

    /// Everything this QP completed, by path.
    pub fn moved(&self) -> flowverbs_wire::control::MovedByPath {
        let mut m = self.moved;
        m.semi = self.header().semi_moved.snapshot();
        m
    }

    pub fn header(&self) -> &QpHeader {
        // SAFETY: the segment starts with a QpHeader (see QpLayout).
        unsafe { self.segment.header::<QpHeader>() }
    }

    pub fn state(&self) -> u32 {
        self.attr.qp_state
    }

    pub fn set_state(&mut self, state: u32) {
        self.attr.qp_state = state;
        self.header()
            .state
            .store(state, std::sync::atomic::Ordering::Release);
    }

    /// Posted send WQEs not yet consumed, or None if the client's producer
    /// index is impossible (a protocol violation).
    pub fn sq_pending(&self) -> Option<u32> {
        let n = self.header().sq.producer().wrapping_sub(self.sq_consumer);
        (n <= self.sq.capacity()).then_some(n)
    }

    pub fn rq_pending(&self) -> Option<u32> {
        let n = self.header().rq.producer().wrapping_sub(self.rq_consumer);
        (n <= self.rq.capacity()).then_some(n)
    }
}

/// Every object the router serves, by handle. (FxHash: the router picks
/// every key these maps hold; SipHash was 2-3 % of a busy router.)
#[derive(Default)]
pub struct Tables {
    pub sessions: FxHashMap<SessionId, Session>,
    pub pds: FxHashMap<u32, Pd>,
    pub mrs: FxHashMap<u32, Mr>,
    /// lkey/rkey → MR handle (lkey and rkey are the same value).
    pub keys: FxHashMap<u32, u32>,
    pub mws: FxHashMap<u32, Mw>,
    /// A window's rkey index (its upper 24 bits) → its handle. No MR key
    /// has the index of a window.
    pub window_keys: FxHashMap<u32, u32>,
    pub cqs: FxHashMap<u32, Cq>,
    pub srqs: FxHashMap<u32, Srq>,
    pub qps: FxHashMap<u32, Qp>,
    /// QP number → QP handle.
    pub qpns: FxHashMap<u32, u32>,
    /// What clients may hold, and what each user holds.
    pub limits: Limits,
    pub budget: Budget,
    next_handle: u32,
    next_qpn: u32,
    rng: u64,
}

impl Tables {
    pub fn new(limits: Limits) -> Tables {
        let mut seed = [0u8; 8];
        let _ = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
        Tables {
            rng: u64::from_ne_bytes(seed) | 1,
            next_qpn: 0x100,
            next_handle: 1,
            limits,
            ..Default::default()
        }
    }

    /// The tables' invariants (checked by the fuzz targets after every
    /// request, and by tests): every object belongs to a live session;
    /// what an object refers to (a QP's PD, CQs and SRQ, an MR's or SRQ's
    /// PD) exists and belongs to the same session; the key and QP-number
    /// indexes name live objects with those numbers, and every MR and QP is
    /// indexed. Err says the first broken one.
    pub fn check(&self) -> Result<(), String> {
        let live = |s: &SessionId, what: &str, h: &u32| {
            if self.sessions.contains_key(s) {
                Ok(())
            } else {
                Err(format!("{what} {h} belongs to session {s}, which is gone"))
            }
        };
        let same =
            |owner: SessionId, what: &str, h: u32, of: Option<SessionId>, name: &str| match of {
                Some(o) if o == owner => Ok(()),
                Some(o) => Err(format!(
                    "{what} {h} (session {owner}) uses {name} of session {o}"
                )),
                None => Err(format!("{what} {h} uses a {name} that does not exist")),
            };
        for (h, p) in &self.pds {
            live(&p.session, "PD", h)?;
        }
        for (h, m) in &self.mrs {
            live(&m.session, "MR", h)?;
            same(
                m.session,
                "MR",
                *h,
                self.pds.get(&m.pd).map(|p| p.session),
                "a PD",
            )?;
            if self.keys.get(&m.lkey) != Some(h) {
                return Err(format!(
                    "MR {h}: its key {:#x} is not indexed to it",
                    m.lkey
                ));
            }
        }
        for (k, h) in &self.keys {
            match self.mrs.get(h) {
                Some(m) if m.lkey == *k || m.rkey == *k => {}
                _ => return Err(format!("key {k:#x} names MR {h}, which does not have it")),
            }
        }
        for (h, w) in &self.mws {
            live(&w.session, "MW", h)?;
            let pd = self.pds.get(&w.window.pd).map(|p| p.session);
            same(w.session, "MW", *h, pd, "a PD")?;
            if self.window_keys.get(&(w.window.rkey >> 8)) != Some(h) {
                return Err(format!("MW {h}: its rkey index is not indexed to it"));
            }
            if let Some(b) = &w.window.binding {
                let mr = self.mrs.get(&b.mr).map(|m| m.session);
                same(w.session, "MW", *h, mr, "an MR")?;
            }
        }
        for (i, h) in &self.window_keys {
            if self.mws.get(h).map(|w| w.window.rkey >> 8) != Some(*i) {
                return Err(format!(
                    "window index {i:#x} names MW {h}, which does not have it"
                ));
            }
        }
        for (h, c) in &self.cqs {
            live(&c.session, "CQ", h)?;
        }
        for (h, q) in &self.srqs {
            live(&q.session, "SRQ", h)?;
            same(
                q.session,
                "SRQ",
                *h,
                self.pds.get(&q.pd).map(|p| p.session),
                "a PD",
            )?;
        }
        for (h, q) in &self.qps {
            live(&q.session, "QP", h)?;
            same(
                q.session,
                "QP",
                *h,
                self.pds.get(&q.pd).map(|p| p.session),
                "a PD",
            )?;
            for cq in [q.send_cq, q.recv_cq] {
                same(
                    q.session,
                    "QP",
                    *h,
                    self.cqs.get(&cq).map(|c| c.session),
                    "a CQ",
                )?;
            }
            if q.srq != 0 {
                let of = self.srqs.get(&q.srq).map(|s| s.session);
                same(q.session, "QP", *h, of, "an SRQ")?;
            }
            if self.qpns.get(&q.qpn) != Some(h) {
                return Err(format!(
                    "QP {h}: its number {:#x} is not indexed to it",
                    q.qpn
                ));
            }
        }
        for (n, h) in &self.qpns {
            if self.qps.get(h).map(|q| q.qpn) != Some(*n) {
                return Err(format!(
                    "QP number {n:#x} names QP {h}, which does not have it"
                ));
            }
        }
        Ok(())
    }

    /// Takes what a new object costs (`limits::Usage`) for `session`;
    /// Err: the cap it reached (counted). A session that is gone has
    /// nothing to charge (its caller finds it gone too).
    pub fn charge(&mut self, session: SessionId, more: Usage) -> Result<(), Refusal> {
        match self.sessions.get_mut(&session) {
            Some(s) => self.budget.charge(&self.limits, s.uid, &mut s.usage, more),
            None => Ok(()),
        }
    }

    /// Gives back what an object of `session` cost.
    pub fn release(&mut self, session: SessionId, less: Usage) {
        if let Some(s) = self.sessions.get_mut(&session) {
            self.budget.release(s.uid, &mut s.usage, less);
        }
    }

    /// Takes one of `session`'s control requests per second if `request`
    /// counts against it (`limits::rate_limited`); Err: refused (counted).
    pub fn admit_request(
        &mut self,
        session: SessionId,
        request: &flowverbs_wire::control::Request,
        now: std::time::Instant,
    ) -> Result<(), Refusal> {
        use super::limits::Cap;
        if !super::limits::rate_limited(request) {
            return Ok(());
        }
        let Some(s) = self.sessions.get_mut(&session) else {
            return Ok(());
        };
        let per_second = self.limits.requests_per_second;
        if s.rate.admit(per_second, now) {
            return Ok(());
        }
        self.budget.refused(Cap::RequestsPerSecond);
        Err(Refusal {
            cap: Cap::RequestsPerSecond,
            message: format!(
                "this context sent more than {per_second} control requests in a second, \
                 the router's limit per context (--max-requests-per-second); try again"
            ),
        })
    }

    pub fn handle(&mut self) -> u32 {
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        h
    }

    fn random(&mut self) -> u32 {
        // xorshift64*: keys need to be hard to guess, not cryptographic.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }

    /// Fuzz targets: keys from a known seed, so that an input names the
    /// same keys in every run.
    #[cfg(feature = "fuzzing")]
    pub fn seed_keys(&mut self, seed: u64) {
        self.rng = seed | 1;
    }

    /// A fresh memory key, unique among live ones (never 0).
    pub fn new_key(&mut self) -> u32 {
        loop {
            let k = self.random();
            if k != 0 && !self.keys.contains_key(&k) && !self.window_keys.contains_key(&(k >> 8)) {
                return k;
            }
        }
    }

    /// A fresh rkey for a new memory window: its index (upper 24 bits) is
    /// no other window's, and no MR key has it, so every key byte a bind
    /// may choose stays the window's.
    pub fn new_window_key(&mut self) -> u32 {
        loop {
            let k = self.random();
            if self.window_key_free(k) {
                return k;
            }
        }
    }

    /// True if a window may take rkey `k`: its index is not 0, no other
    /// window's, and no MR key has it.
    pub fn window_key_free(&self, k: u32) -> bool {
        let index = k >> 8;
        index != 0
            && !self.window_keys.contains_key(&index)
            && (0..=0xffu32).all(|b| !self.keys.contains_key(&((k & !0xff) | b)))
    }

    /// A fresh 24-bit QP number unique on this router (0 and 1 are special
    /// in IB and never used).
    pub fn new_qpn(&mut self) -> Option<u32> {
        for _ in 0..=flowverbs_wire::limits::MAX_QPN {
            let q = self.next_qpn;
            self.next_qpn = if q >= flowverbs_wire::limits::MAX_QPN {
                2
            } else {
                q + 1
            };
            if !self.qpns.contains_key(&q) {
                return Some(q);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_finds_an_object_of_a_session_that_is_gone() {
        let mut t = Tables::new(Limits::default());
        assert_eq!(t.check(), Ok(()));
        t.pds.insert(7, Pd { session: 3 });
        assert!(t.check().unwrap_err().contains("PD 7 belongs to session 3"));
        t.pds.clear();
        t.qpns.insert(0x100, 9);
        assert!(t.check().unwrap_err().contains("names QP 9"));
    }
}
