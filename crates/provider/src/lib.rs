//! The libibverbs provider: `libflowverbs-rdmav34.so`.
//!
//! The stock libibverbs loads this library, calls the ELF constructor below,
//! which registers [`DEVICE_OPS`]; devices named `fv<N>` in the generated
//! sysfs tree are then served by it. Every `extern "C"` function catches
//! panics ([`ffi::guard`]) so that nothing unwinds into C.
//!
//! - [`context`]: device open/close, device and port queries, the session
//!   with the router.
//! - [`verbs`]: PD, MR, CQ and QP verbs, posting and polling.
//! - [`send_slots`]: send-queue occupancy as applications see it.
//! - [`arena`], [`semi`]: semi mode (registered pages in a shared memfd;
//!   the sender's data path).
//! - [`nic`]: semi mode over a real NIC (fv0 objects backed by the real
//!   device's, the data path on the vendor provider).

pub mod arena;
pub mod context;
pub mod cq_rings;
pub mod ffi;
pub mod log;
pub mod nic;
pub mod semi;
pub mod send_slots;
pub mod verbs;
pub mod watcher;

use std::ptr;

use flowverbs_sys::*;

/// Name-matches IB devices called `fv<digits>` (docs/verbs-provider-contract.md, section 2).
static MATCH_TABLE: [MatchEnt; 2] = [
    MatchEnt(verbs_match_ent {
        driver_data: ptr::null_mut(),
        u: verbs_match_ent__bindgen_ty_1 {
            modalias: c"rdma_device:*Nfv[0-9]*".as_ptr(),
        },
        vendor: 0,
        device: 0,
        kind: FV_MATCH_MODALIAS as u8,
    }),
    MatchEnt(verbs_match_ent {
        driver_data: ptr::null_mut(),
        u: verbs_match_ent__bindgen_ty_1 { driver_id: 0 },
        vendor: 0,
        device: 0,
        kind: FV_MATCH_SENTINEL as u8,
    }),
];

#[repr(transparent)]
struct MatchEnt(verbs_match_ent);
// SAFETY: the table is immutable and its pointers point to static strings.
unsafe impl Sync for MatchEnt {}

#[repr(transparent)]
pub struct DeviceOps(verbs_device_ops);
// SAFETY: immutable after construction; pointers are to statics.
unsafe impl Sync for DeviceOps {}

pub static DEVICE_OPS: DeviceOps = DeviceOps(verbs_device_ops {
    name: c"flowverbs".as_ptr(),
    match_min_abi_version: 0,
    match_max_abi_version: 0x7fff_ffff,
    match_table: &MATCH_TABLE as *const [MatchEnt; 2] as *const verbs_match_ent,
    static_providers: ptr::null_mut(),
    match_device: None,
    alloc_context: Some(context::alloc_context),
    import_context: None,
    alloc_device: Some(alloc_device),
    uninit_device: Some(uninit_device),
});

unsafe extern "C" fn alloc_device(_sysfs: *mut verbs_sysfs_dev) -> *mut verbs_device {
    ffi::guard(ptr::null_mut(), || {
        // SAFETY: calloc returns zeroed memory (or NULL), as libibverbs
        // requires; it is released by uninit_device with free().
        unsafe { libc::calloc(1, std::mem::size_of::<verbs_device>()) as *mut verbs_device }
    })
}

unsafe extern "C" fn uninit_device(dev: *mut verbs_device) {
    ffi::guard((), || {
        // SAFETY: `dev` came from alloc_device's calloc.
        unsafe { libc::free(dev as *mut libc::c_void) }
    })
}

extern "C" fn register() {
    // SAFETY: DEVICE_OPS is a static that lives as long as the process, as
    // verbs_register_driver_34 requires.
    unsafe { verbs_register_driver_34(&DEVICE_OPS.0) }
}

/// The ELF constructor: registers the provider when libibverbs dlopen()s us.
#[used]
#[link_section = ".init_array"]
static REGISTER: extern "C" fn() = register;
