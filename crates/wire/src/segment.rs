//! Shared-memory segments: memfds created and sealed by the router, mapped
//! by both sides, and the layouts of the three kinds of segment.
//!
//! The router creates every segment, sizes it and seals it against
//! shrinking and growing before handing the fd to the provider, so a client
//! can never make the router's mapping fault (SIGBUS) by truncating it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};

use super::entries::{CQE_SIZE, RECV_WQE_SIZE, SEND_WQE_SIZE};
use super::ring::RingIndices;

pub const PAGE: usize = 4096;

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Session segment header: one page shared by a client and the router.
#[repr(C)]
pub struct SessionHeader {
    /// 1 while the router sleeps (or is about to): a provider that
    /// publishes work and then sees it writes the doorbell eventfd. Only
    /// through [`SessionHeader::announce_router_sleep`] and
    /// [`SessionHeader::doorbell_needed`], which carry the ordering argument.
    pub router_sleeping: AtomicU32,
    /// Set by the router when it shuts down.
    pub router_gone: AtomicU32,
    /// 0 until `IBV_EVENT_DEVICE_FATAL` has been written to the context's
    /// async fd. The router (graceful shutdown) and the provider's watcher
    /// (router crash) both try; whoever swaps it to 1 first writes the event,
    /// so the application sees it exactly once.
    pub device_fatal_posted: AtomicU32,
}

impl SessionHeader {
    /// True for exactly one caller over the life of the session.
    pub fn claim_device_fatal(&self) -> bool {
        self.device_fatal_posted.swap(1, Ordering::SeqCst) == 0
    }
}

/// QP segment header: ring indices for the send and receive queues and
/// router-owned status.
#[repr(C)]
pub struct QpHeader {
    pub sq: RingIndices,
    pub rq: RingIndices,
    /// Current `enum ibv_qp_state` as the router sees it (the router moves a
    /// QP to ERR on its own when a work request fails).
    pub state: AtomicU32,
    /// What a semi-mode sender checks of this QP as its responder, written
    /// by the router at every modify: `dest_qp_num`, `qp_access_flags`,
    /// `min_rnr_timer`, `qp_type`, and whether its path leads to a QP of
    /// this host (no GRH, or a GID served here).
    pub dest_qpn: AtomicU32,
    pub access: AtomicU32,
    pub min_rnr_timer: AtomicU32,
    pub qp_type: AtomicU32,
    pub path_local: AtomicU32,
    /// Most SGEs a receive of this QP may have (its `max_recv_sge`).
    pub max_recv_sge: AtomicU32,
    /// Its Q_Key (UD).
    pub qkey: AtomicU32,
    /// Whether a request on the router's path waits for a receive of
    /// its own receive queue.
    pub rq_router_waiting: RouterWaiting,
    /// What this QP's own provider moved on the semi path as a requester
    /// (only that provider writes them; `flowverbs status` reports them).
    pub semi_moved: MovedCounters,
}

/// Work requests completed, by kind, and their bytes, as counters in
/// shared memory (one writer).
#[repr(C)]
#[derive(Debug, Default)]
pub struct MovedCounters {
    pub sends: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
    pub reads: std::sync::atomic::AtomicU64,
    pub atomics: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    pub inline: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
}

impl MovedCounters {
    /// Counts one completed work request of `opcode` (`ibv_wr_opcode`).
    pub fn count(&self, opcode: u32, bytes: u64, inline: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let add = |c: &std::sync::atomic::AtomicU64, n: u64| {
            c.store(c.load(Relaxed).wrapping_add(n), Relaxed)
        };
        match crate::control::Moved::kind_of(opcode) {
            MovedKind::Send => add(&self.sends, 1),
            MovedKind::Write => add(&self.writes, 1),
            MovedKind::Read => add(&self.reads, 1),
            MovedKind::Atomic => add(&self.atomics, 1),
            MovedKind::Nothing => return,
        }
        add(&self.bytes, bytes);
        add(&self.inline, u64::from(inline));
    }

    /// Counts one request that ended in an error completion.
    pub fn count_error(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.errors
            .store(self.errors.load(Relaxed).wrapping_add(1), Relaxed);
    }

    pub fn snapshot(&self) -> crate::control::Moved {
        use std::sync::atomic::Ordering::Relaxed;
        crate::control::Moved {
            sends: self.sends.load(Relaxed),
            writes: self.writes.load(Relaxed),
            reads: self.reads.load(Relaxed),
            atomics: self.atomics.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            inline: self.inline.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// The kinds of work request a [`MovedCounters`] tells apart.
pub enum MovedKind {
    Send,
    Write,
    Read,
    Atomic,
    /// The window operations (BIND_MW, LOCAL_INV) move nothing and are
    /// not counted.
    Nothing,
}

/// Whether the router waits for receives of a queue (a QP's own or an
/// SRQ): set while a request on its path found the queue empty (receiver
/// not ready), cleared when it takes a receive. Only then does posting a
/// receive ring its doorbell: semi senders take receives themselves, a
/// datagram without a receive is dropped, and a sleeping router woken for
/// nothing costs the poster's core a reschedule.
///
/// The router sets it before its last look at the rings before it sleeps
/// (its passes run the waiting request again), and the poster publishes
/// its receive before it reads the flag, each with a full fence between:
/// either the router sees the new receive or the poster sees the flag
/// (store buffering, as for the doorbell itself).
#[repr(transparent)]
#[derive(Default)]
pub struct RouterWaiting(AtomicU32);

impl RouterWaiting {
    /// Router: a request waits for a receive of this queue.
    pub fn wait_for_receives(&self) {
        if self.0.load(Ordering::Relaxed) == 0 {
            self.0.store(1, Ordering::SeqCst);
        }
    }

    /// Router: it took a receive; whoever still waits sets the flag again
    /// on its next try.
    pub fn receives_taken(&self) {
        if self.0.load(Ordering::Relaxed) != 0 {
            self.0.store(0, Ordering::Relaxed);
        }
    }

    /// Poster, after publishing receives: must the router be woken?
    pub fn router_waits(&self) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.0.load(Ordering::Relaxed) != 0
    }
}

/// SRQ segment header. Several consumers take receives from one SRQ: the
/// router, and in semi mode the providers of senders to its QPs; each
/// takes with [`RingIndices::take`] (compare-and-swap of `rq.consumer`).
#[repr(C)]
pub struct SrqHeader {
    pub rq: RingIndices,
    /// The armed limit (`srq_limit`; 0: not armed). Written by the router
    /// (modify_srq); whoever takes the receive that crosses it disarms it
    /// ([`SrqHeader::disarm_limit`]) and raises the event.
    pub limit: AtomicU32,
    /// Set by a semi-mode provider that disarmed the limit: the router
    /// writes `IBV_EVENT_SRQ_LIMIT_REACHED` when its doorbell rings.
    pub limit_event_pending: AtomicU32,
    /// The SRQ's `max_sge`, written by the router at creation.
    pub max_sge: AtomicU32,
    /// Whether a request on the router's path waits for one of its
    /// receives.
    pub router_waiting: RouterWaiting,
}

impl SrqHeader {
    /// After a take that left `remaining` receives: true if this caller
    /// disarmed the limit (`crossed(remaining, limit)`, the verbs rule) and
    /// so must raise the event; at most one caller per arming does.
    pub fn disarm_limit(&self, remaining: u32, crossed: impl Fn(u32, u32) -> bool) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        crossed(remaining, limit)
            && self
                .limit
                .compare_exchange(limit, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// Byte layout of an SRQ segment: the header page, then the receive ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrqLayout {
    pub capacity: u32,
    pub ring_offset: usize,
    pub size: usize,
}

impl SrqLayout {
    pub fn new(capacity: u32) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        SrqLayout {
            capacity,
            ring_offset: PAGE,
            size: round_up(PAGE + capacity as usize * RECV_WQE_SIZE, PAGE),
        }
    }
}

/// CQ segment header.
#[repr(C)]
pub struct CqHeader {
    pub ring: RingIndices,
    /// Completion-event arm (`ibv_req_notify_cq`): [`DISARMED`],
    /// [`ARMED_SOLICITED`] or [`ARMED_ANY`]. Set by the provider, consumed
    /// by the router; see [`CqHeader::arm`] for the ordering argument.
    pub arm: AtomicU32,
    /// Set by a semi-mode producer that consumed the arm: the router writes
    /// the completion event (it holds the channel) when its doorbell rings.
    pub event_pending: AtomicU32,
    /// Set by the router when it froze this ring for `ibv_resize_cq`
    /// (`wire::cq_ring`): producers that find it full look for the new one.
    pub moved: AtomicU32,
}

impl Default for CqHeader {
    fn default() -> Self {
        CqHeader {
            ring: RingIndices::default(),
            arm: AtomicU32::new(DISARMED),
            event_pending: AtomicU32::new(0),
            moved: AtomicU32::new(0),
        }
    }
}

/// The router's sleep and the providers' doorbell, solved here once.
///
/// The router spins over the rings while there is work; when there is none
/// for a while it blocks in epoll until a doorbell (an eventfd per
/// session), a control message or a deadline. A provider publishes a WQE
/// (release store of the ring's producer index) and then decides whether
/// to ring the doorbell, a system call it skips while the router spins.
///
/// Lost wake-up: the provider publishes and reads `router_sleeping` as 0
/// while the router announces its sleep and then looks at the rings
/// without seeing that WQE; the router then blocks with work pending. As
/// for completion events (below), this is the store-buffering pattern and
/// needs a SeqCst fence on each side between its write and its read:
///
/// - router: [`SessionHeader::announce_router_sleep`] on every session
///   (SeqCst store), one `fence(SeqCst)`, one more pass over the rings,
///   then block;
/// - provider: publish the producer index, then
///   [`SessionHeader::doorbell_needed`] (fence(SeqCst), then load).
///
/// With both fences at least one side sees the other's write: the router's
/// last pass finds the WQE, or the provider sees the flag and rings. A
/// doorbell rung while the router is awake only costs one empty eventfd
/// read.
impl SessionHeader {
    /// Router side: `sleeping` true before it blocks (then fence(SeqCst)
    /// and look at the rings once more), false when it wakes.
    pub fn announce_router_sleep(&self, sleeping: bool) {
        self.router_sleeping
            .store(u32::from(sleeping), Ordering::SeqCst);
    }

    /// Provider side, after publishing work: true if the router may be
    /// asleep and the doorbell must be rung.
    pub fn doorbell_needed(&self) -> bool {
        fence(Ordering::SeqCst);
        self.router_sleeping.load(Ordering::Relaxed) != 0
    }
}

pub const DISARMED: u32 = 0;
pub const ARMED_SOLICITED: u32 = 1;
/// Any other non-zero value (a confused client's) also counts as "any".
pub const ARMED_ANY: u32 = 2;

/// The arm/publish race of completion events, solved here once.
///
/// The application's protocol is: `ibv_req_notify_cq` (arm), then poll the
/// CQ empty, then sleep in `ibv_get_cq_event`. The router's is: write a
/// CQE, publish the producer index, then consume the arm and, if it was
/// armed for this kind of CQE, write one event to the channel.
///
/// Lost wake-up: the router publishes a CQE and reads the arm as disarmed
/// while the application arms and then polls without seeing that CQE; it
/// then sleeps although a CQE is there. This is the store-buffering pattern
/// (each side writes one location and then reads the other), which needs a
/// SeqCst fence on both sides between the write and the read:
///
/// - provider ([`CqHeader::arm`]): RMW on `arm` (SeqCst), fence(SeqCst);
///   the poll that follows loads `ring.producer`;
/// - router ([`CqHeader::take_arm`]): store `ring.producer` (Release),
///   fence(SeqCst), RMW on `arm`.
///
/// With both fences, at least one side sees the other's write: either the
/// router sees the arm (and writes the event), or the application's poll
/// sees the CQE. Spurious or doubled events: only the router clears the arm,
/// with a compare-exchange, so one arm yields at most one event; a CQE
/// published before the arm was set yields none (it is found by the poll).
impl CqHeader {
    /// Provider side: arms the CQ for the next CQE (or the next solicited
    /// one). Arming for any CQE is never downgraded to solicited-only.
    pub fn arm(&self, solicited_only: bool) {
        let want = if solicited_only {
            ARMED_SOLICITED
        } else {
            ARMED_ANY
        };
        self.arm.fetch_max(want, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Router side, right after publishing a CQE: consumes the arm if it
    /// covers this CQE (`solicited`: an error completion, or a receive
    /// completion of a message sent with `IBV_SEND_SOLICITED`). True when a
    /// completion event must be written.
    pub fn take_arm(&self, solicited: bool) -> bool {
        fence(Ordering::SeqCst);
        let mut cur = self.arm.load(Ordering::Relaxed);
        loop {
            let covers = match cur {
                DISARMED => false,
                ARMED_SOLICITED => solicited,
                _ => true,
            };
            if !covers {
                return false;
            }
            match self
                .arm
                .compare_exchange(cur, DISARMED, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }
}

const _: () = assert!(std::mem::size_of::<QpHeader>() <= PAGE);

/// Byte layout of a QP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpLayout {
    pub sq_capacity: u32,
    pub rq_capacity: u32,
    pub sq_offset: usize,
    pub rq_offset: usize,
    pub size: usize,
}

impl QpLayout {
    /// Capacities must be powers of two (0 for no receive queue is allowed
    /// and becomes 1 slot, never used).
    pub fn new(sq_capacity: u32, rq_capacity: u32) -> Self {
        let sq_capacity = sq_capacity.max(1).next_power_of_two();
        let rq_capacity = rq_capacity.max(1).next_power_of_two();
        let sq_offset = PAGE;
        let rq_offset = round_up(sq_offset + sq_capacity as usize * SEND_WQE_SIZE, PAGE);
        let size = round_up(rq_offset + rq_capacity as usize * RECV_WQE_SIZE, PAGE);
        QpLayout {
            sq_capacity,
            rq_capacity,
            sq_offset,
            rq_offset,
            size,
        }
    }
}

/// Byte layout of a CQ segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CqLayout {
    pub capacity: u32,
    pub ring_offset: usize,
    pub size: usize,
}

impl CqLayout {
    pub fn new(capacity: u32) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        CqLayout {
            capacity,
            ring_offset: PAGE,
            size: round_up(PAGE + capacity as usize * CQE_SIZE, PAGE),
        }
    }
}

pub const SESSION_SEGMENT_SIZE: usize = PAGE;

/// Semi mode: the router's table of live memory keys, one `u32` per MR
/// slot (0: free), mapped read-only by every provider. A sender that cached
/// a peer's MR checks `table[slot] == rkey` before each access, so a
/// deregistered MR stops being reachable (as on a NIC) without a call.
pub const KEY_TABLE_SLOTS: u32 = 1 << 20;
pub const KEY_TABLE_SIZE: usize = KEY_TABLE_SLOTS as usize * 4;

/// A shared mapping of a memfd segment, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all concurrent access goes
// through atomics or the ring protocol.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared, read-write.
    pub fn map(fd: impl AsFd, len: usize) -> std::io::Result<Mapping> {
        Self::map_with(fd, len, libc::PROT_READ | libc::PROT_WRITE)
    }

    /// Maps `len` bytes of `fd` shared, read-only.
    pub fn map_read_only(fd: impl AsFd, len: usize) -> std::io::Result<Mapping> {
        Self::map_with(fd, len, libc::PROT_READ)
    }

    fn map_with(fd: impl AsFd, len: usize, prot: libc::c_int) -> std::io::Result<Mapping> {
        // SAFETY: a fresh mapping at an address of the kernel's choosing;
        // it aliases nothing in this process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(ptr as *mut u8).expect("mmap returned NULL"),
            len,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A reference to a header type at offset 0.
    ///
    /// # Safety
    /// `T` must be a header made of atomics/plain integers that fits the
    /// mapping.
    pub unsafe fn header<T>(&self) -> &T {
        debug_assert!(std::mem::size_of::<T>() <= self.len);
        // SAFETY: the caller promises `T` fits the mapping and is valid for
        // any bytes; the mapping lives as long as `self`.
        unsafe { &*(self.ptr.as_ptr() as *const T) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own this mapping and nothing borrows it past our life.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

/// Creates a memfd of `len` bytes, zero-filled, sealed against shrink, grow
/// and further sealing.
pub fn create_sealed_memfd(name: &str, len: usize) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let cname = std::ffi::CString::new(name).unwrap_or_default();
    let fd = memfd_create(
        &cname,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    nix::unistd::ftruncate(&fd, len as libc::off_t)?;
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_page_aligned_and_disjoint() {
        let l = QpLayout::new(100, 3);
        assert_eq!(l.sq_capacity, 128);
        assert_eq!(l.rq_capacity, 4);
        assert!(l.rq_offset >= l.sq_offset + 128 * SEND_WQE_SIZE);
        assert_eq!(l.size % PAGE, 0);
        let c = CqLayout::new(1);
        assert_eq!(c.capacity, 1);
        assert_eq!(c.size, 2 * PAGE);
    }

    #[test]
    fn one_arm_one_event() {
        let h = CqHeader::default();
        assert!(!h.take_arm(true));
        h.arm(true);
        assert!(!h.take_arm(false));
        h.arm(false);
        h.arm(true);
        assert!(h.take_arm(false));
        assert!(!h.take_arm(true));
        h.arm(true);
        assert!(h.take_arm(true));
        assert!(!h.take_arm(true));
    }

    #[test]
    fn sealed_memfd_cannot_shrink() {
        let fd = create_sealed_memfd("t", 8192).unwrap();
        assert!(nix::unistd::ftruncate(&fd, 0).is_err());
        let m = Mapping::map(&fd, 8192).unwrap();
        assert_eq!(m.len(), 8192);
    }
}
