//! The real device's events, delivered as fv0's: the completion events of
//! real CQs reach the fv0 CQ's completion channel, and the real context's
//! async events (QP, SRQ, CQ, port, device) reach the fv0 context's async
//! fd. The application waits on fv0's descriptors only and sees the
//! router's events and the NIC's there alike.
//!
//! Each kind has one thread per context ([`Forwarder`]), asleep in
//! poll(2) on the real descriptor and a stop eventfd: it never spins, and
//! it is joined before the real context closes.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::{Arc, Mutex};

use crate::fv_log;
use flowverbs_sys::*;
use flowverbs_wire::events::async_event_record;

/// What a completion event of a real CQ becomes: called with the real
/// CQ's `cq_context` (the fv0 CQ) on the forwarder's thread.
pub type Deliver = Box<dyn Fn(*mut libc::c_void) + Send>;

/// A thread asleep in poll(2) on one descriptor of the real context and a
/// stop eventfd; `drain` runs whenever the descriptor is readable and
/// reads it until EAGAIN (the descriptor is made non-blocking here, as
/// `ibv_get_async_event(3)` and `ibv_get_cq_event(3)` allow).
struct Forwarder {
    stop: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    fn start(name: &str, fd: RawFd, mut drain: Box<dyn FnMut() + Send>) -> Option<Forwarder> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = fcntl(fd, FcntlArg::F_GETFL).ok()?;
        fcntl(
            fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .ok()?;
        let stop: OwnedFd =
            nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
                .ok()?
                .into();
        let stop_for_thread = stop.try_clone().ok()?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .stack_size(256 * 1024)
            .spawn(move || {
                // SAFETY: the descriptor belongs to a real context or
                // channel that is closed only after this thread is joined
                // (Drop below, called first by its owners).
                let watched = unsafe { BorrowedFd::borrow_raw(fd) };
                wait_and_drain(watched, &stop_for_thread, &mut drain)
            })
            .ok()?;
        Some(Forwarder {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = nix::unistd::write(&self.stop, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A forwarder's loop.
fn wait_and_drain(watched: BorrowedFd, stop: &OwnedFd, drain: &mut dyn FnMut()) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let _ = nix::sys::signal::SigSet::all().thread_block();
    loop {
        let mut fds = [
            PollFd::new(watched, PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                fv_log!(1, "NIC events: poll: {e}");
                return;
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        drain();
    }
}

/// The completion events of the real CQs that have an fv0 channel: one
/// real channel per context, handed to [`Deliver`], which writes each to
/// the fv0 CQ's own channel.
pub(super) struct CompletionEvents {
    /// Dropped (joined) before the channel is destroyed.
    forwarder: Option<Forwarder>,
    channel: *mut ibv_comp_channel,
}

// SAFETY: the channel is used by the forwarder's thread and, after that
// thread is joined, destroyed by Drop.
unsafe impl Send for CompletionEvents {}
// SAFETY: as above.
unsafe impl Sync for CompletionEvents {}

struct ChannelPtr(*mut ibv_comp_channel);
// SAFETY: moved to the forwarder's thread, its only user until joined.
unsafe impl Send for ChannelPtr {}

impl CompletionEvents {
    pub(super) fn start(ctx: *mut ibv_context, deliver: Deliver) -> Option<CompletionEvents> {
        // SAFETY: a live real context.
        let channel = unsafe { ibv_create_comp_channel(ctx) };
        if channel.is_null() {
            fv_log!(
                1,
                "NIC: no completion channel ({})",
                std::io::Error::last_os_error()
            );
            return None;
        }
        let ch = ChannelPtr(channel);
        let drain = move || {
            let ch = &ch;
            loop {
                let mut cq = ptr::null_mut();
                let mut cq_context = ptr::null_mut();
                // SAFETY: our channel (non-blocking: EAGAIN when drained).
                if unsafe { ibv_get_cq_event(ch.0, &mut cq, &mut cq_context) } != 0 {
                    break;
                }
                // Delivered before the acknowledgement: destroying the
                // real CQ waits for it, so no event reaches a fv0 CQ being
                // destroyed.
                deliver(cq_context);
                // SAFETY: the CQ the event came from.
                unsafe { ibv_ack_cq_events(cq, 1) };
            }
        };
        // SAFETY: the channel just made.
        let fd = unsafe { (*channel).fd };
        match Forwarder::start("flowverbs-nic-cq", fd, Box::new(drain)) {
            Some(f) => Some(CompletionEvents {
                forwarder: Some(f),
                channel,
            }),
            None => {
                // SAFETY: ours, unused.
                unsafe { ibv_destroy_comp_channel(channel) };
                None
            }
        }
    }

    pub(super) fn channel(&self) -> *mut ibv_comp_channel {
        self.channel
    }
}

impl Drop for CompletionEvents {
    fn drop(&mut self) {
        drop(self.forwarder.take());
        // SAFETY: ours; its thread is gone and its CQs destroyed (the
        // application destroys CQs before closing the device).
        unsafe { ibv_destroy_comp_channel(self.channel) };
    }
}

/// The fv0 object behind each real QP and SRQ (by the real object's
/// address), and how many async events were forwarded for it: destroying
/// the fv0 object waits until the application has acknowledged them, as
/// for the router's own events (`ibv_destroy_qp(3)`).
#[derive(Default)]
pub(super) struct Elements {
    by_real: Mutex<HashMap<usize, Forwarded>>,
}

struct Forwarded {
    element: u64,
    events: u32,
}

impl Elements {
    /// `real`'s events are `element`'s (the fv0 object's address).
    pub(super) fn adopt(&self, real: usize, element: u64) {
        self.lock().insert(real, Forwarded { element, events: 0 });
    }

    /// Stops forwarding `real`'s events; returns how many were forwarded.
    pub(super) fn forget(&self, real: usize) -> u32 {
        self.lock().remove(&real).map_or(0, |f| f.events)
    }

    /// Writes `event_type` for the fv0 object behind `real`, counted if
    /// written; under the lock, so that [`Elements::forget`] sees the count.
    fn forward(&self, real: usize, event_type: u32, write: &dyn Fn(&[u8]) -> bool) -> bool {
        let mut map = self.lock();
        let Some(f) = map.get_mut(&real) else {
            return false;
        };
        let written = write(&async_event_record(f.element, event_type));
        if written {
            f.events = f.events.wrapping_add(1);
        }
        written
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Forwarded>> {
        self.by_real.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What an async event of the real device is about, for fv0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    /// A real QP or SRQ (its address): the fv0 one behind it, counted.
    Counted(usize),
    /// A real CQ: its `cq_context` is the fv0 CQ.
    Cq(u64),
    /// fv0's port (1): the real port is the one fv0 posts to.
    Port,
    Device,
    /// Nothing fv0 has: another port, a WQ, or a port event whose meaning
    /// does not carry over (fv0's GIDs are the containers' addresses, not
    /// the NIC's).
    Ignored,
}

/// The one rule of which real events reach fv0, and as what.
fn subject(ev: &ibv_async_event, port: u8) -> Subject {
    // SAFETY: the union member read is the one libibverbs filled for this
    // event type (ibv_get_async_event(3)).
    unsafe {
        match ev.event_type {
            IBV_EVENT_QP_FATAL
            | IBV_EVENT_QP_REQ_ERR
            | IBV_EVENT_QP_ACCESS_ERR
            | IBV_EVENT_COMM_EST
            | IBV_EVENT_SQ_DRAINED
            | IBV_EVENT_PATH_MIG
            | IBV_EVENT_PATH_MIG_ERR
            | IBV_EVENT_QP_LAST_WQE_REACHED => Subject::Counted(ev.element.qp as usize),
            IBV_EVENT_SRQ_ERR | IBV_EVENT_SRQ_LIMIT_REACHED => {
                Subject::Counted(ev.element.srq as usize)
            }
            IBV_EVENT_CQ_ERR => Subject::Cq((*ev.element.cq).cq_context as u64),
            IBV_EVENT_PORT_ACTIVE | IBV_EVENT_PORT_ERR
                if ev.element.port_num == i32::from(port) =>
            {
                Subject::Port
            }
            IBV_EVENT_DEVICE_FATAL => Subject::Device,
            _ => Subject::Ignored,
        }
    }
}

/// The real context's async events, written to the fv0 context's async
/// fd (the write end of the pipe whose read end libibverbs reads; the
/// router writes its own events there too, each record whole).
pub(super) struct AsyncEvents {
    _forwarder: Forwarder,
}

struct ContextPtr(*mut ibv_context);
// SAFETY: an ibv_context is used from any thread (libibverbs' contract).
unsafe impl Send for ContextPtr {}

impl AsyncEvents {
    /// `port`: the real port fv0 posts to.
    pub(super) fn start(
        ctx: *mut ibv_context,
        fv0_async: OwnedFd,
        elements: Arc<Elements>,
        port: u8,
    ) -> Option<AsyncEvents> {
        // SAFETY: a live real context.
        let fd = unsafe { (*ctx).async_fd };
        let real = ContextPtr(ctx);
        let write = move |record: &[u8]| match nix::unistd::write(&fv0_async, record) {
            Ok(n) => n == record.len(),
            Err(e) => {
                fv_log!(1, "NIC: an async event for fv0 is lost: {e}");
                false
            }
        };
        let drain = move || {
            let real = &real;
            loop {
                // SAFETY: plain C data, filled by libibverbs.
                let mut ev: ibv_async_event = unsafe { std::mem::zeroed() };
                // SAFETY: a live real context (non-blocking: EAGAIN when
                // drained).
                if unsafe { ibv_get_async_event(real.0, &mut ev) } != 0 {
                    break;
                }
                let kind = ev.event_type;
                let delivered = match subject(&ev, port) {
                    Subject::Counted(r) => elements.forward(r, kind, &write),
                    Subject::Cq(cq) => write(&async_event_record(cq, kind)),
                    Subject::Port => write(&async_event_record(1, kind)),
                    Subject::Device => write(&async_event_record(0, kind)),
                    Subject::Ignored => false,
                };
                fv_log!(3, "NIC: async event {kind}, forwarded to fv0: {delivered}");
                // Acknowledged after forwarding: destroying the real object
                // waits for it, so no event reaches a fv0 object being
                // destroyed.
                // SAFETY: the event just got.
                unsafe { ibv_ack_async_event(&mut ev) };
            }
        };
        let forwarder = Forwarder::start("flowverbs-nic-async", fd, Box::new(drain))?;
        Some(AsyncEvents {
            _forwarder: forwarder,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: u32) -> ibv_async_event {
        // SAFETY: plain C data.
        let mut ev: ibv_async_event = unsafe { std::mem::zeroed() };
        ev.event_type = event_type;
        ev
    }

    #[test]
    fn which_events_reach_fv0() {
        let mut ev = event(IBV_EVENT_SRQ_LIMIT_REACHED);
        ev.element.srq = 0x1000 as *mut ibv_srq;
        assert_eq!(subject(&ev, 1), Subject::Counted(0x1000));
        let mut ev = event(IBV_EVENT_QP_FATAL);
        ev.element.qp = 0x2000 as *mut ibv_qp;
        assert_eq!(subject(&ev, 1), Subject::Counted(0x2000));
        let mut ev = event(IBV_EVENT_PORT_ERR);
        ev.element.port_num = 2;
        assert_eq!(subject(&ev, 2), Subject::Port);
        assert_eq!(subject(&ev, 1), Subject::Ignored);
        let mut ev = event(IBV_EVENT_GID_CHANGE);
        ev.element.port_num = 1;
        assert_eq!(subject(&ev, 1), Subject::Ignored);
        assert_eq!(subject(&event(IBV_EVENT_DEVICE_FATAL), 1), Subject::Device);
    }

    #[test]
    fn forwarded_events_are_counted_until_forgotten() {
        let e = Elements::default();
        let written = std::cell::RefCell::new(Vec::new());
        let write = |r: &[u8]| {
            written.borrow_mut().push(r.to_vec());
            true
        };
        assert!(!e.forward(7, IBV_EVENT_QP_FATAL, &write), "unknown object");
        e.adopt(7, 0xabc);
        assert!(e.forward(7, IBV_EVENT_QP_FATAL, &write));
        assert!(e.forward(7, IBV_EVENT_COMM_EST, &write));
        assert!(!e.forward(7, IBV_EVENT_COMM_EST, &|_| false), "not written");
        assert_eq!(
            written.borrow()[0],
            async_event_record(0xabc, IBV_EVENT_QP_FATAL)
        );
        assert_eq!(e.forget(7), 2);
        assert_eq!(e.forget(7), 0);
        assert!(!e.forward(7, IBV_EVENT_QP_FATAL, &write));
    }
}
