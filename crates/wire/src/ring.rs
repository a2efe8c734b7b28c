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

/// A view of a ring's entry array: base pointer, entry size, capacity.
#[derive(Clone, Copy, Debug)]
pub struct RingSlots {
    base: *mut u8,
    entry_size: usize,
    mask: u32,
}

// SAFETY: RingSlots is only a pointer into a shared mapping that outlives
// it; synchronisation is by the ring indices, as documented above.
unsafe impl Send for RingSlots {}
// SAFETY: as above.
unsafe impl Sync for RingSlots {}

impl RingSlots {
    /// # Safety
    /// `base` must point to `capacity * entry_size` bytes that stay mapped
    /// for the life of this value; `capacity` must be a power of two.
    pub unsafe fn new(base: *mut u8, entry_size: usize, capacity: u32) -> Self {
        debug_assert!(capacity.is_power_of_two());
        RingSlots {
            base,
            entry_size,
            mask: capacity - 1,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.mask + 1
    }

    fn slot(&self, index: u32) -> *mut u8 {
        // SAFETY: (index & mask) < capacity, so the offset stays inside the
        // array that `new`'s caller guaranteed.
        unsafe {
            self.base
                .add((index & self.mask) as usize * self.entry_size)
        }
    }

    /// Copies entry `index` out of the ring. Any bit pattern is a valid `T`
    /// (entries are plain integers), so a peer writing concurrently can only
    /// produce garbage values, which the reader validates.
    pub fn read<T: Copy + Plain>(&self, index: u32) -> T {
        debug_assert!(std::mem::size_of::<T>() <= self.entry_size);
        // SAFETY: the slot is inside the mapping and large enough for T;
        // T is Plain (no invalid bit patterns); read_volatile tolerates a
        // concurrent writer in the other process.
        unsafe { std::ptr::read_volatile(self.slot(index) as *const T) }
    }

    /// Writes entry `index`.
    pub fn write<T: Copy + Plain>(&self, index: u32, value: &T) {
        debug_assert!(std::mem::size_of::<T>() <= self.entry_size);
        // SAFETY: the slot is inside the mapping and large enough for T.
        unsafe { std::ptr::write_volatile(self.slot(index) as *mut T, *value) }
    }

    /// Raw pointer to entry `index`, for filling large entries in place.
    pub fn slot_ptr(&self, index: u32) -> *mut u8 {
        self.slot(index)
    }
}

/// Marker for `#[repr(C)]` types made only of integers and arrays of them:
/// every bit pattern is a valid value.
///
/// # Safety
/// Implement only for such types.
pub unsafe trait Plain {}
