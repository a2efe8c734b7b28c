//! The C boundary's helpers: panic containment and errno.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, turning a panic into `on_panic` (and errno EIO) so that
/// nothing unwinds into C.
pub fn guard<R>(on_panic: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            crate::fv_log!(1, "internal error (panic) in a verb; returning EIO");
            set_errno(libc::EIO);
            on_panic
        }
    }
}

pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e }
}

/// Sets errno and returns NULL, for verbs that return an object.
pub fn null_with<T>(e: i32) -> *mut T {
    set_errno(e);
    std::ptr::null_mut()
}
