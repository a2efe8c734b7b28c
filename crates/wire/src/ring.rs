//! Single-producer single-consumer rings in shared memory.
//!
//! A ring is a pair of free-running `u32` indices, each on its own cache
//! line, and a power-of-two array of fixed-size entries. The producer writes
//! an entry, then publishes it with a release store of `producer`; the
//! consumer reads `producer` with acquire, copies the entry out, then frees
//! the slot with a release store of `consumer`.
//!
//! The router never trusts indices it did not write: it keeps its own copy
//! of the index it owns and checks the other one (`peer - own <= capacity`).

use std::sync::atomic::{AtomicU32, Ordering};

use zerocopy::{FromBytes, IntoBytes};

/// The two indices of a ring, each on its own cache line (128 bytes).
#[repr(C, align(64))]
pub struct RingIndices {
    pub producer: AtomicU32,
    _pad0: [u8; 60],
    pub consumer: AtomicU32,
    _pad1: [u8; 60],
}

const _: () = assert!(std::mem::size_of::<RingIndices>() == 128);

impl Default for RingIndices {
    fn default() -> Self {
        RingIndices {
            producer: AtomicU32::new(0),
            _pad0: [0; 60],
            consumer: AtomicU32::new(0),
            _pad1: [0; 60],
        }
    }
}

impl RingIndices {
    pub fn producer(&self) -> u32 {
        self.producer.load(Ordering::Acquire)
    }
    pub fn consumer(&self) -> u32 {
        self.consumer.load(Ordering::Acquire)
    }
    pub fn publish_producer(&self, value: u32) {
        self.producer.store(value, Ordering::Release)
    }
    pub fn publish_consumer(&self, value: u32) {
        self.consumer.store(value, Ordering::Release)
    }
    /// Several consumers (semi mode: a receive queue taken by a peer's
    /// provider and flushed by the router): takes entry `expected` if no
    /// one else did. Read the entry before claiming it; after the claim the
    /// producer may reuse the slot.
    pub fn claim_consumer(&self, expected: u32) -> bool {
        self.consumer
            .compare_exchange(
                expected,
                expected.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// What [`RingIndices::take`] found at the head of a ring that several
/// consumers share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take<T> {
    /// Nothing posted.
    Empty,
    /// The producer index is impossible (more entries than the ring
    /// holds): a confused or hostile producer.
    Violation,
    /// This caller took `entry` (index `index`); `remaining` entries are
    /// left behind it.
    Taken {
        entry: T,
        index: u32,
        remaining: u32,
    },
}

impl<T> Take<T> {
    /// The same outcome with the taken entry mapped by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Take<U> {
        match self {
            Take::Empty => Take::Empty,
            Take::Violation => Take::Violation,
            Take::Taken {
                entry,
                index,
                remaining,
            } => Take::Taken {
                entry: f(entry),
                index,
                remaining,
            },
        }
    }
}

impl RingIndices {
    /// Takes the entry at the head for this caller alone, when several
    /// consumers share the ring (an SRQ: the router and, in semi mode, the
    /// providers of senders). The entry is read before it is claimed
    /// (after the claim its producer may reuse the slot); a lost race
    /// reads the new head and tries again.
    pub fn take<T: FromBytes + IntoBytes>(&self, slots: &RingSlots<T>) -> Take<T> {
        loop {
            let Some((c, n)) = self.snapshot(slots.capacity()) else {
                return Take::Violation;
            };
            if n == 0 {
                return Take::Empty;
            }
            let entry = slots.read(c);
            if self.claim_consumer(c) {
                return Take::Taken {
                    entry,
                    index: c,
                    remaining: n - 1,
                };
            }
        }
    }

    /// Entries posted and not taken, or None for an impossible index.
    pub fn pending(&self, capacity: u32) -> Option<u32> {
        self.snapshot(capacity).map(|(_, n)| n)
    }

    /// The consumer index and the number of entries behind it, or None if
    /// the producer index is impossible. With several consumers the
    /// consumer index read first may be stale by the time the producer
    /// index is read (others took entries, the producer refilled their
    /// slots), which looks like more entries than the ring holds: only a
    /// consumer index that is the same before and after reading the
    /// producer's convicts the producer.
    fn snapshot(&self, capacity: u32) -> Option<(u32, u32)> {
        loop {
            let c = self.consumer();
            let n = distance(c, self.producer());
            if n <= capacity {
                return Some((c, n));
            }
            if self.consumer() == c {
                return None;
            }
        }
    }
}

/// Number of entries between `from` and `to` on free-running indices.
#[inline]
pub fn distance(from: u32, to: u32) -> u32 {
    to.wrapping_sub(from)
}

/// A view of a ring's entry array: `capacity` entries of type `T`.
///
/// `T` is one of the `wire::entries` types: `FromBytes` (every bit pattern
/// is a value, so a peer writing garbage or writing concurrently can only
/// produce values the reader validates) and `IntoBytes` (no padding, so
/// writing an entry leaks no uninitialised bytes to the other process).
pub struct RingSlots<T> {
    base: *mut T,
    mask: u32,
}

impl<T> Clone for RingSlots<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for RingSlots<T> {}

impl<T> std::fmt::Debug for RingSlots<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingSlots")
            .field("base", &self.base)
            .field("capacity", &self.capacity())
            .finish()
    }
}

// SAFETY: RingSlots is only a pointer into a shared mapping that outlives
// it; synchronisation is by the ring indices, as documented above.
unsafe impl<T> Send for RingSlots<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for RingSlots<T> {}

impl<T> RingSlots<T> {
    pub fn capacity(&self) -> u32 {
        self.mask + 1
    }
}

impl<T: FromBytes + IntoBytes> RingSlots<T> {
    /// # Safety
    /// `base` must point to `capacity` entries of `T`, aligned for `T`,
    /// that stay mapped for the life of this value; `capacity` must be a
    /// power of two (segment layouts guarantee both).
    pub unsafe fn new(base: *mut u8, capacity: u32) -> Self {
        assert!(capacity.is_power_of_two(), "ring capacity {capacity}");
        assert!(base.cast::<T>().is_aligned(), "misaligned ring");
        RingSlots {
            base: base.cast(),
            mask: capacity - 1,
        }
    }

    /// Pointer to entry `index` (modulo the capacity).
    pub fn slot_ptr(&self, index: u32) -> *mut T {
        // SAFETY: (index & mask) < capacity, so the offset stays inside the
        // array that `new`'s caller guaranteed.
        unsafe { self.base.add((index & self.mask) as usize) }
    }

    /// Copies entry `index` out of the ring.
    pub fn read(&self, index: u32) -> T {
        // SAFETY: the slot is inside the mapping and aligned; T is
        // FromBytes (no invalid bit patterns); read_volatile tolerates a
        // concurrent writer in the other process.
        unsafe { std::ptr::read_volatile(self.slot_ptr(index)) }
    }

    /// Writes entry `index`.
    pub fn write(&self, index: u32, value: &T)
    where
        T: Copy,
    {
        // SAFETY: the slot is inside the mapping and aligned.
        unsafe { std::ptr::write_volatile(self.slot_ptr(index), *value) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::RecvWqe;
    use std::collections::HashSet;

    #[repr(C, align(64))]
    struct Ring {
        indices: RingIndices,
        slots: [RecvWqe; 8],
    }

    #[test]
    fn take_hands_each_entry_to_one_consumer() {
        let ring: &'static mut Ring = Box::leak(Box::new(Ring {
            indices: RingIndices::default(),
            slots: [RecvWqe::zeroed(); 8],
        }));
        // SAFETY: eight entries in a leaked (static) allocation.
        let slots = unsafe { RingSlots::<RecvWqe>::new(ring.slots.as_mut_ptr().cast(), 8) };
        let indices = &ring.indices;
        assert!(matches!(indices.take(&slots), Take::Empty));
        let total = 20_000u64;
        let taken: Vec<Vec<u64>> = std::thread::scope(|s| {
            let consumers: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            match indices.take(&slots) {
                                Take::Taken { entry, .. } => mine.push(entry.wr_id),
                                Take::Empty if indices.consumer() as u64 == total => break,
                                Take::Empty => std::hint::spin_loop(),
                                Take::Violation => panic!("violation"),
                            }
                        }
                        mine
                    })
                })
                .collect();
            let mut p = 0u32;
            while u64::from(p) < total {
                if distance(indices.consumer(), p) < slots.capacity() {
                    let mut w = RecvWqe::zeroed();
                    w.wr_id = u64::from(p);
                    slots.write(p, &w);
                    p += 1;
                    indices.publish_producer(p);
                }
            }
            consumers.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let all: Vec<u64> = taken.iter().flatten().copied().collect();
        assert_eq!(all.len() as u64, total, "every entry taken once");
        assert_eq!(
            all.iter().copied().collect::<HashSet<_>>().len() as u64,
            total
        );
        for mine in &taken {
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "each in ring order");
        }
    }

    #[test]
    fn take_refuses_an_impossible_producer() {
        let ring: &'static mut Ring = Box::leak(Box::new(Ring {
            indices: RingIndices::default(),
            slots: [RecvWqe::zeroed(); 8],
        }));
        // SAFETY: as above.
        let slots = unsafe { RingSlots::<RecvWqe>::new(ring.slots.as_mut_ptr().cast(), 8) };
        ring.indices.publish_producer(9);
        assert!(matches!(ring.indices.take(&slots), Take::Violation));
        assert_eq!(ring.indices.pending(8), None);
        ring.indices.publish_producer(3);
        assert!(matches!(
            ring.indices.take(&slots),
            Take::Taken {
                index: 0,
                remaining: 2,
                ..
            }
        ));
        assert_eq!(ring.indices.pending(8), Some(2));
    }
}
