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
}
