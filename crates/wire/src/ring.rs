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
