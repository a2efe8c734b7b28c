//! The verbs: protection domains, memory regions, completion queues and
//! queue pairs, with posting and polling on the shared rings.
//!
//! Every object embeds its libibverbs struct first, so the pointer
//! libibverbs holds converts back with one cast (`Fv*::from_*`).

mod ah;
mod cq;
mod cq_ex;
mod flush;
mod mw;
mod pd_mr;
mod post;
mod qp;
mod qp_ex;
mod srq;

use ah::*;
use cq::*;
use cq_ex::*;
pub use flush::Flushable;
use mw::*;
use pd_mr::*;
use post::*;
use qp::*;
use qp_ex::*;
use srq::*;

use std::os::fd::OwnedFd;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::arena::Arena;
use super::context::{self, inner, map_segment, take_one_fd, ContextInner, Errno};
use super::ffi::{guard, null_with};
use super::nic::{NicQp, Route};
use super::semi::{DatagramPath, NewDatagramPath, NewPath, SemiPath};
use super::send_slots::SendSlots;
use crate::fv_log;
use flowverbs_sys::*;
use flowverbs_wire::control::{AddressVector, QpAttr, QpCaps, Reply, Request};
use flowverbs_wire::control::{ArenaRun, MAX_ARENA_RUNS};
use flowverbs_wire::entries::{Cqe, RecvWqe, SendWqe, Sge};
use flowverbs_wire::limits::*;
use flowverbs_wire::ring::RingIndices;
use flowverbs_wire::ring::RingSlots;
use flowverbs_wire::segment::{CqLayout, Mapping, QpHeader, QpLayout, SrqHeader, SrqLayout};
use std::os::fd::AsRawFd;

#[repr(transparent)]
pub struct ContextOps(pub verbs_context_ops);
// SAFETY: immutable table of function pointers.
unsafe impl Sync for ContextOps {}

pub static CONTEXT_OPS: ContextOps = ContextOps(verbs_context_ops {
    alloc_pd: Some(alloc_pd),
    dealloc_pd: Some(dealloc_pd),
    reg_mr: Some(reg_mr),
    dereg_mr: Some(dereg_mr),
    rereg_mr: Some(rereg_mr),
    alloc_mw: Some(alloc_mw),
    dealloc_mw: Some(dealloc_mw),
    bind_mw: Some(bind_mw),
    create_cq: Some(create_cq),
    create_cq_ex: Some(create_cq_ex),
    resize_cq: Some(resize_cq),
    destroy_cq: Some(destroy_cq),
    poll_cq: Some(poll_cq),
    req_notify_cq: Some(req_notify_cq),
    create_qp: Some(create_qp),
    create_qp_ex: Some(create_qp_ex),
    modify_qp: Some(modify_qp),
    query_qp: Some(query_qp),
    destroy_qp: Some(destroy_qp),
    post_send: Some(post_send),
    post_recv: Some(post_recv),
    create_srq: Some(create_srq),
    modify_srq: Some(modify_srq),
    query_srq: Some(query_srq),
    destroy_srq: Some(destroy_srq),
    post_srq_recv: Some(post_srq_recv),
    create_ah: Some(create_ah),
    destroy_ah: Some(destroy_ah),
    query_device_ex: Some(context::query_device_ex),
    query_port: Some(context::query_port),
    free_context: Some(context::free_context),
    ..ZERO_OPS
});

/// Twins made for one fv0 QP or MR before it goes without one: each one's
/// QP number or key was already taken on the router (a router with several
/// NICs sees the numbers of each device, which may coincide).
const MAX_TWIN_TRIES: usize = 8;

const ZERO_OPS: verbs_context_ops = {
    // SAFETY: verbs_context_ops is pointers and Option<fn>s only; all-zero
    // means "not provided" (libibverbs keeps its dummy for those slots).
    unsafe { std::mem::zeroed() }
};

fn call(ctx: *mut ibv_context, req: &Request) -> Result<(Reply, Vec<OwnedFd>), Errno> {
    // SAFETY: every object's context is one of ours.
    unsafe { inner(ctx) }.call(req)
}

/// Maps the one segment a create reply carries. `fits`: the reply's
/// capacities give the layout the provider computes, of `segment_size`
/// bytes. On any failure the router is asked to `undo` (destroy) the object
/// it just created, and the errno is returned.
fn map_created_segment(
    ctx: *mut ibv_context,
    fds: Vec<OwnedFd>,
    fits: bool,
    segment_size: u64,
    undo: Request,
) -> Result<Mapping, Errno> {
    let mapped = take_one_fd(fds).and_then(|fd| {
        if !fits {
            return Err(libc::EPROTO);
        }
        map_segment(&fd, segment_size)
    });
    if mapped.is_err() {
        let _ = call(ctx, &undo);
    }
    mapped
}

fn unexpected(r: &Reply) -> Errno {
    crate::fv_log!(1, "unexpected reply {r:?}");
    libc::EPROTO
}

/// The allocation of a CQ, QP or SRQ, made before the router is asked to
/// create the object: its address is the cookie the router's events carry
/// (what `ibv_get_cq_event` / `ibv_get_async_event` hand back). Freed on
/// drop unless [`Slot::fill`]ed.
struct Slot<T>(*mut std::mem::MaybeUninit<T>);

impl<T> Slot<T> {
    fn new() -> Self {
        Slot(Box::into_raw(Box::new(std::mem::MaybeUninit::uninit())))
    }
    fn cookie(&self) -> u64 {
        self.0 as u64
    }
    /// Initialises the object; from here on it is a `Box<T>` allocation.
    fn fill(self, value: T) -> *mut T {
        let raw = self.0;
        std::mem::forget(self);
        // SAFETY: `raw` is our allocation, sized and aligned for T and not
        // yet initialised.
        unsafe { (*raw).write(value) };
        raw as *mut T
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        // SAFETY: an allocation of ours that was never filled.
        drop(unsafe { Box::from_raw(self.0) })
    }
}

/// Frees an object after its router-side destruction, unless events
/// reported for it are not all acknowledged yet. Those (or their records,
/// still unread in a pipe) carry its address, which the application will
/// dereference in `ibv_get_*_event`/`ibv_ack_*_events`; the kernel discards
/// unread events of a destroyed object, but bytes in a pipe cannot be taken
/// back. Such an object is left allocated (a small, bounded leak) so that
/// the late event finds valid memory.
///
/// # Safety
/// `obj` must be a `Box<T>` allocation of ours whose `ibv_*` part has the
/// `mutex` at `mutex` and an acknowledged-events count read by `acked`.
unsafe fn free_unless_events_pending<T>(
    obj: *mut T,
    mutex: *mut pthread_mutex_t,
    reported: u32,
    acked: impl Fn() -> u32,
) {
    // SAFETY: the caller promises `mutex` is the object's initialised
    // libibverbs mutex.
    unsafe { libc::pthread_mutex_lock(mutex as *mut libc::pthread_mutex_t) };
    let all_acked = acked() == reported;
    // SAFETY: as above; we hold it.
    unsafe { libc::pthread_mutex_unlock(mutex as *mut libc::pthread_mutex_t) };
    if all_acked {
        // SAFETY: the caller promises `obj` is a Box allocation of ours,
        // freed nowhere else.
        drop(unsafe { Box::from_raw(obj) });
    } else {
        crate::fv_log!(
            3,
            "object {obj:p} destroyed with {} unacknowledged events; kept allocated",
            reported.wrapping_sub(acked())
        );
    }
}
