//! A CQ's rings across `ibv_resize_cq`, as this process maps them.
//!
//! A resize moves a CQ to a new ring and freezes the old one; the protocol
//! and why no completion is lost or duplicated is argued once at
//! `flowverbs_wire::cq_ring`. Here: which ring is current (where this
//! process's semi-mode paths produce into their own send CQ), and the old
//! ones, kept mapped until the CQ is destroyed because such a path may hold
//! a pointer into one until it sees it moved.

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Mutex;

use flowverbs_wire::cq_ring::CqRing;
use flowverbs_wire::entries::Cqe;
use flowverbs_wire::ring::RingSlots;
use flowverbs_wire::segment::{CqHeader, CqLayout, Mapping};

/// One ring of a CQ, mapped here.
pub struct CqSegment {
    mapping: Mapping,
    slots: RingSlots<Cqe>,
}

impl CqSegment {
    /// `mapping` must hold a CQ segment of `layout` (the router sealed it
    /// at `layout.size`).
    pub fn new(mapping: Mapping, layout: CqLayout) -> CqSegment {
        // SAFETY: the mapping has the layout's size, which holds
        // `capacity` entries after `ring_offset`.
        let slots =
            unsafe { RingSlots::new(mapping.as_ptr().add(layout.ring_offset), layout.capacity) };
        CqSegment { mapping, slots }
    }

    pub fn header(&self) -> &CqHeader {
        // SAFETY: a CQ segment starts with a CqHeader.
        unsafe { self.mapping.header::<CqHeader>() }
    }

    pub fn slots(&self) -> RingSlots<Cqe> {
        self.slots
    }

    pub fn ring(&self) -> CqRing<'_> {
        CqRing::new(self.header(), self.slots)
    }
}

/// Every ring a CQ had, the last one current.
pub struct CqRings {
    current: AtomicPtr<CqSegment>,
    /// Boxed: `current` points at one, which must not move when the
    /// vector grows.
    #[allow(clippy::vec_box)]
    all: Mutex<Vec<Box<CqSegment>>>,
    /// A resize of this CQ is under way in this process: from before the
    /// router freezes the current ring until `switch_to`.
    resizing: AtomicBool,
}

impl CqRings {
    pub fn new(first: CqSegment) -> CqRings {
        let mut first = Box::new(first);
        CqRings {
            current: AtomicPtr::new(&mut *first),
            all: Mutex::new(vec![first]),
            resizing: AtomicBool::new(false),
        }
    }

    /// Marks a resize under way (true) or over (false).
    pub fn set_resizing(&self, on: bool) {
        self.resizing.store(on, Ordering::SeqCst);
    }

    /// True while a resize of this CQ is under way in this process.
    pub fn resizing(&self) -> bool {
        self.resizing.load(Ordering::SeqCst)
    }

    /// The ring completions go to now.
    pub fn current(&self) -> &CqSegment {
        // SAFETY: `current` always points into a Box of `all`, which lives
        // (unmoved: boxed) as long as self.
        unsafe { &*self.current.load(Ordering::Acquire) }
    }

    /// The router moved the CQ to `next` (`Request::CommitCqResize`);
    /// returns the ring it left.
    pub fn switch_to(&self, next: CqSegment) -> &CqSegment {
        let mut next = Box::new(next);
        let ptr: *mut CqSegment = &mut *next;
        self.all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(next);
        let old = self.current.swap(ptr, Ordering::AcqRel);
        // SAFETY: as in `current`: every ring stays in `all`.
        unsafe { &*old }
    }
}
