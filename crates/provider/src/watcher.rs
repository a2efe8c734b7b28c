//! One thread per context, asleep in poll(2) on the event socket shared
//! with the router. It does two things, neither of which an application
//! thread can do:
//!
//! - it makes completion channels: while the application's thread is
//!   blocked in its `CREATE_COMP_CHANNEL` write to `cmd_fd` (the router's
//!   FUSE file), the router asks for a pipe ([`Event::MakeChannel`]); the
//!   watcher makes it here, in the application's process, keeps the read
//!   end open (it becomes the channel's fd) and hands the write end to the
//!   router, which writes the read end's number into the application's
//!   response and lets the write return;
//! - it notices a router that goes away (the socket hangs up) and then
//!   writes `IBV_EVENT_DEVICE_FATAL` to the context's async fd, unless the
//!   router, shutting down cleanly, already did (`claim_device_fatal`).
//!
//! It never spins: it sleeps until the router writes or hangs up, or until
//! the context closes it ([`Watcher::stop`]).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{MsgFlags, Shutdown};

use super::context::Errno;
use crate::fv_log;
use flowverbs_sys::IBV_EVENT_DEVICE_FATAL;
use flowverbs_wire::control::{self, Event, EventReply, WireError};
use flowverbs_wire::events::async_event_record;
use flowverbs_wire::segment::{Mapping, SessionHeader};

struct Shared {
    sock: OwnedFd,
    closing: AtomicBool,
}

/// The write ends of the completion channels the watcher made, by the
/// channel's fd (its read end): semi mode over a NIC writes the completion
/// events of real CQs there too (`provider::nic`). A number the
/// application closed and a new channel reuses is overwritten. Kept only
/// with a NIC (a write end held here would keep a channel's reader from
/// seeing the router go away), and dropped when the router goes.
pub type ChannelWriters = Arc<std::sync::Mutex<HashMap<i32, OwnedFd>>>;

/// The running watcher of one context.
pub struct Watcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the watcher. `async_write`: the write end of the async-event
/// pipe (for DEVICE_FATAL); `session`: the session segment.
pub fn start(
    sock: OwnedFd,
    async_write: OwnedFd,
    session: Arc<Mapping>,
    writers: Option<ChannelWriters>,
) -> Result<Watcher, Errno> {
    let shared = Arc::new(Shared {
        sock,
        closing: AtomicBool::new(false),
    });
    let s = shared.clone();
    let thread = std::thread::Builder::new()
        .name("flowverbs-watch".into())
        .stack_size(256 * 1024)
        .spawn(move || run(&s, &async_write, &session, writers.as_ref()))
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EAGAIN))?;
    Ok(Watcher {
        shared,
        thread: Some(thread),
    })
}

impl Watcher {
    /// Wakes the thread (shutting the socket down makes its poll return)
    /// and waits for it.
    pub fn stop(mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        let _ = nix::sys::socket::shutdown(self.shared.sock.as_raw_fd(), Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn block_signals() {
    // Signals meant for the application must not land on our thread (and
    // a write to a pipe whose reader is gone must not kill the process).
    let all = nix::sys::signal::SigSet::all();
    let _ = all.thread_block();
}

fn run(
    shared: &Shared,
    async_write: &OwnedFd,
    session: &Mapping,
    writers: Option<&ChannelWriters>,
) {
    block_signals();
    // Pipes made for channels, by read-end number: only those may be
    // closed on the router's word (Event::DropChannel).
    let mut made: HashMap<i32, u64> = HashMap::new();
    loop {
        let mut fds = [PollFd::new(shared.sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                fv_log!(1, "watcher: poll: {e}");
                return;
            }
        }
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        let mut gone = revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
        loop {
            match control::recv::<Event>(shared.sock.as_fd(), MsgFlags::MSG_DONTWAIT) {
                Ok((event, _)) => serve(shared, event, &mut made, writers),
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(WireError::Malformed(m)) => fv_log!(1, "watcher: bad event: {m}"),
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        if gone {
            // Channels must see the router's end close (EOF wakes a
            // thread blocked in ibv_get_cq_event).
            if let Some(w) = writers {
                w.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            if shared.closing.load(Ordering::SeqCst) {
                return;
            }
            fv_log!(1, "the flowverbs router went away; the device is gone");
            // SAFETY: the session segment is a page holding a SessionHeader
            // (checked when it was mapped).
            let header = unsafe { session.header::<SessionHeader>() };
            if header.claim_device_fatal() {
                let record = async_event_record(0, IBV_EVENT_DEVICE_FATAL);
                let _ = nix::unistd::write(async_write, &record);
            }
            return;
        }
    }
}

fn serve(
    shared: &Shared,
    event: Event,
    made: &mut HashMap<i32, u64>,
    writers: Option<&ChannelWriters>,
) {
    match event {
        Event::MakeChannel { id } => {
            let reply = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
            match reply {
                Ok((read, write)) => {
                    let fd = read.into_raw_fd();
                    made.insert(fd, id);
                    if let Some(writers) = writers {
                        let mut w = writers.lock().unwrap_or_else(|e| e.into_inner());
                        match write.try_clone() {
                            Ok(dup) => drop(w.insert(fd, dup)),
                            Err(_) => drop(w.remove(&fd)),
                        }
                    }
                    let msg = EventReply::ChannelMade { id, fd };
                    if control::send(shared.sock.as_fd(), &msg, &[write.as_raw_fd()]).is_err() {
                        made.remove(&fd);
                        // We made this fd just now; nobody else has seen
                        // its number.
                        let _ = nix::unistd::close(fd);
                    }
                }
                Err(e) => {
                    let msg = EventReply::ChannelFailed {
                        id,
                        errno: e as i32,
                    };
                    let _ = control::send(shared.sock.as_fd(), &msg, &[]);
                }
            }
        }
        Event::DropChannel { id, fd } => {
            if made.get(&fd) == Some(&id) {
                made.remove(&fd);
                // A pipe end we made whose channel the router could not
                // set up: the application never got its number.
                let _ = nix::unistd::close(fd);
            }
        }
    }
}
