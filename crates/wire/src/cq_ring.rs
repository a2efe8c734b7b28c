//! Completion rings with several producers.
//!
//! In isolated mode only the router writes CQEs; in semi mode the providers
//! of senders write into their peers' CQs directly, and the router still
//! writes the CQEs of the traffic it carries (flushes, other hosts). So a
//! CQ ring is multi-producer, single-consumer:
//!
//! - `ring.producer` counts claimed slots. A producer claims slot `p` with
//!   a compare-exchange from `p` to `p + 1`, after checking that
//!   `p - consumer < capacity`.
//! - It writes the entry with its old `seq`, then stores `seq = p + 1`
//!   (release). The consumer takes entry `c` once it loads (acquire)
//!   `seq == c + 1`, then frees slots with a release store of `consumer`.
//! - An entry's previous `seq` is `p + 1 - capacity` (or 0 when fresh),
//!   never `p + 1`, so a half-written entry is never taken.
//!
//! The arm/publish argument of `segment::CqHeader` carries over: the
//! producer's `seq` store plays the role of the producer-index store.
//!
//! A producer that claims a slot and dies before publishing it blocks the
//! consumer at that slot. Only semi mode, where senders' providers are
//! trusted with their peers' rings, has such producers (docs/DESIGN.md section 3).
//!
//! Resizing (`ibv_resize_cq`), argued once here. A ring cannot grow in
//! place (slot = index mod capacity), and producers in other processes
//! claim slots without asking anyone, so a resize moves the CQ to a new
//! ring and freezes the old one with one atomic step, [`CqRing::freeze`]:
//! the router adds `capacity` to the producer index and keeps the old value
//! as the ring's `end`.
//!
//! - Every slot before `end` was claimed by a real producer, which
//!   publishes it as usual; the consumer drains them.
//! - Slot `end` is claimed by nobody who publishes, so the consumer never
//!   passes it, and the producer index stays `capacity` or more ahead of
//!   the consumer's: the ring looks full to every producer, forever. No
//!   claim after the freeze can succeed, so none is lost.
//! - A producer that finds the ring full and [`CqRing::moved`] set asks
//!   for the new ring (the router's engine swaps its own at once; a semi
//!   producer re-maps the CQ). Its entries in the old ring precede its
//!   entries in the new one, and the consumer drains the old ring up to
//!   `end` before it polls the new one, so each producer's order holds.
//! - Completion events: the router copies the old ring's arm to the new
//!   one when it swaps; the consumer arms every ring it has not drained.
//!   A producer that published into the old ring and then consumes the old
//!   arm raises the event there (`event_pending`), which the router still
//!   watches. One arm can then yield two events (one per ring) during a
//!   resize, never none.

use std::sync::atomic::{AtomicU32, Ordering};

use super::entries::Cqe;
use super::ring::RingSlots;
use super::segment::CqHeader;

/// A CQ ring in a mapped CQ segment.
#[derive(Clone, Copy)]
pub struct CqRing<'a> {
    pub header: &'a CqHeader,
    pub slots: RingSlots<Cqe>,
}

impl<'a> CqRing<'a> {
    pub fn new(header: &'a CqHeader, slots: RingSlots<Cqe>) -> Self {
        CqRing { header, slots }
    }

    fn seq(&self, index: u32) -> &AtomicU32 {
        // SAFETY: the slot holds an aligned Cqe whose `seq` is a u32 (same
        // size and alignment as AtomicU32); the mapping outlives `self`.
        unsafe { AtomicU32::from_ptr(&raw mut (*self.slots.slot_ptr(index)).seq) }
    }

    /// Free slots. A nonsensical index pair (a confused consumer) counts as
    /// a full ring: producers wait, nobody writes outside the ring.
    pub fn free(&self) -> u32 {
        let p = self.header.ring.producer.load(Ordering::Acquire);
        let c = self.header.ring.consumer();
        self.slots.capacity().saturating_sub(p.wrapping_sub(c))
    }

    /// Claims a slot and publishes `cqe` in it; false if the ring is full.
    pub fn push(&self, cqe: &Cqe) -> bool {
        let mut seen = self.header.ring.consumer();
        self.push_seen(cqe, &mut seen)
    }

    /// True when a slot is free, judged from `seen`, a consumer index read
    /// earlier, and read again only if that says full. (The consumer index
    /// only moves forward, so an old value can only underestimate the
    /// room; re-reading it costs a cache line the consumer writes.)
    pub fn has_room(&self, seen: &mut u32) -> bool {
        let p = self.header.ring.producer.load(Ordering::Acquire);
        self.room_for(p, seen)
    }

    fn room_for(&self, p: u32, seen: &mut u32) -> bool {
        let cap = self.slots.capacity();
        if p.wrapping_sub(*seen) < cap {
            return true;
        }
        *seen = self.header.ring.consumer();
        p.wrapping_sub(*seen) < cap
    }

    /// As [`CqRing::push`], with the consumer index as last read in `seen`.
    pub fn push_seen(&self, cqe: &Cqe, seen: &mut u32) -> bool {
        let producer = &self.header.ring.producer;
        let mut p = producer.load(Ordering::Relaxed);
        loop {
            if !self.room_for(p, seen) {
                return false;
            }
            match producer.compare_exchange_weak(
                p,
                p.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => p = now,
            }
        }
        let seq = self.seq(p);
        let e = Cqe {
            seq: seq.load(Ordering::Relaxed),
            ..*cqe
        };
        self.slots.write(p, &e);
        seq.store(p.wrapping_add(1), Ordering::Release);
        true
    }

    /// Router side, `ibv_resize_cq`: no producer can claim a slot of this
    /// ring any more (see the module's argument). Returns `end`: the
    /// consumer finds published entries up to it, and none from it on.
    pub fn freeze(&self) -> u32 {
        let end = self
            .header
            .ring
            .producer
            .fetch_add(self.slots.capacity(), Ordering::AcqRel);
        self.header.moved.store(1, Ordering::Release);
        end
    }

    /// True once the router froze this ring: a producer that finds it
    /// full must look for the CQ's new ring.
    pub fn moved(&self) -> bool {
        self.header.moved.load(Ordering::Acquire) != 0
    }

    /// Consumer side: entry `index` if it has been published.
    pub fn peek(&self, index: u32) -> Option<Cqe> {
        (self.seq(index).load(Ordering::Acquire) == index.wrapping_add(1))
            .then(|| self.slots.read(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(64))]
    struct Seg {
        header: CqHeader,
        ring: [Cqe; 4],
    }

    #[test]
    fn several_producers_one_consumer() {
        let seg: &'static mut Seg = Box::leak(Box::new(Seg {
            header: CqHeader::default(),
            ring: [Cqe::default(); 4],
        }));
        // SAFETY: four CQE slots in a leaked (static) allocation.
        let slots = unsafe { RingSlots::new(seg.ring.as_mut_ptr().cast(), 4) };
        let ring = CqRing::new(&seg.header, slots);
        assert_eq!(ring.peek(0), None);
        let total = 4000u64;
        std::thread::scope(|s| {
            for t in 0..2u64 {
                s.spawn(move || {
                    for i in 0..total / 2 {
                        let c = Cqe {
                            wr_id: t << 32 | i,
                            ..Default::default()
                        };
                        while !ring.push(&c) {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
            let mut next = [0u64; 2];
            let mut c = 0u32;
            while u64::from(c) < total {
                if let Some(e) = ring.peek(c) {
                    let t = (e.wr_id >> 32) as usize;
                    assert_eq!(e.wr_id & 0xffff_ffff, next[t], "per-producer order");
                    next[t] += 1;
                    c += 1;
                    ring.header.ring.publish_consumer(c);
                }
            }
        });
        assert_eq!(ring.free(), 4);
    }

    #[test]
    fn a_frozen_ring_takes_nothing_more_and_ends_where_claims_stopped() {
        let seg: &'static mut Seg = Box::leak(Box::new(Seg {
            header: CqHeader::default(),
            ring: [Cqe::default(); 4],
        }));
        // SAFETY: four CQE slots in a leaked (static) allocation.
        let slots = unsafe { RingSlots::new(seg.ring.as_mut_ptr().cast(), 4) };
        let ring = CqRing::new(&seg.header, slots);
        let cqe = |wr_id| Cqe {
            wr_id,
            ..Default::default()
        };
        for i in 0..6u64 {
            assert!(ring.push(&cqe(i)) || i >= 4);
            if i == 1 {
                // The consumer takes two: room for two more.
                assert!(ring.peek(0).is_some() && ring.peek(1).is_some());
                ring.header.ring.publish_consumer(2);
            }
        }
        assert!(!ring.moved());
        let end = ring.freeze();
        assert_eq!(end, 6);
        assert!(ring.moved());
        // Nothing more gets in, even once the consumer drained everything.
        for c in 2..end {
            assert_eq!(ring.peek(c).map(|e| e.wr_id), Some(u64::from(c)));
        }
        ring.header.ring.publish_consumer(end);
        assert!(!ring.push(&cqe(99)));
        assert_eq!(ring.free(), 0);
        assert_eq!(ring.peek(end), None);
    }
}
