//! Device contexts: opening fv0 (a session with the router), closing it,
//! and the device and port queries.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use super::ffi::{guard, null_with};
use super::nic::NicContext;
use super::semi::SemiContext;
use super::send_slots::SendQueues;
use super::verbs;
use super::watcher::{self, Watcher};
use crate::fv_log;
use flowverbs_sys::*;
use flowverbs_wire::control::{self, Reply, Request, WireError};
use flowverbs_wire::limits::*;
use flowverbs_wire::segment::{Mapping, SessionHeader, KEY_TABLE_SIZE};
use flowverbs_wire::VERSION;

/// The provider's context block, allocated by libibverbs
/// (`_verbs_init_and_alloc_context`) with the `verbs_context` first.
#[repr(C)]
pub struct FvContext {
    pub vctx: verbs_context,
    pub inner: *mut ContextInner,
}

/// Rust-side state of a context (boxed; the block above is C memory).
pub struct ContextInner {
    client: Mutex<OwnedFd>,
    session: Arc<Mapping>,
    doorbell: OwnedFd,
    pub gid: [u8; 16],
    /// Send-queue occupancy of this context's QPs, by QP number.
    pub send_queues: SendQueues,
    /// Semi mode (the router said so at Hello): see `provider::semi`.
    pub semi: Option<SemiContext>,
    /// Semi mode over a NIC (the router named one at Hello): `provider::nic`.
    pub nic: Option<NicContext>,
    /// The write ends of this context's completion channels.
    pub channel_writers: watcher::ChannelWriters,
    /// The thread that serves the router's events and notices its death.
    watcher: Option<Watcher>,
    /// The QPs whose work the flush completes once the router is gone.
    pub flushable: crate::verbs::Flushable,
}

impl Drop for ContextInner {
    fn drop(&mut self) {
        if let Some(s) = &self.semi {
            s.stop();
        }
        if let Some(w) = self.watcher.take() {
            w.stop();
        }
    }
}

/// Errors of a control call: an errno for the verb.
pub type Errno = i32;

impl ContextInner {
    /// Sends a request and waits for its reply.
    pub fn call(&self, request: &Request) -> Result<(Reply, Vec<OwnedFd>), Errno> {
        self.call_passing(request, &[])
    }

    /// As [`ContextInner::call`], passing `fds` with the request.
    pub fn call_passing(
        &self,
        request: &Request,
        fds: &[i32],
    ) -> Result<(Reply, Vec<OwnedFd>), Errno> {
        let sock = self.client.lock().unwrap_or_else(|e| e.into_inner());
        control::send(sock.as_fd(), request, fds).map_err(wire_errno)?;
        let (reply, fds) =
            control::recv::<Reply>(sock.as_fd(), MsgFlags::empty()).map_err(wire_errno)?;
        match reply {
            Reply::Error { errno, message } => {
                fv_log!(3, "{request:?} refused: {message}");
                Err(errno)
            }
            r => Ok((r, fds)),
        }
    }

    fn session(&self) -> &SessionHeader {
        // SAFETY: the session segment is a page sized for this header.
        unsafe { self.session.header::<SessionHeader>() }
    }

    /// True once the router is gone (`IBV_EVENT_DEVICE_FATAL` was posted,
    /// by the router as it shut down or by the watcher when it vanished).
    pub fn router_gone(&self) -> bool {
        self.session().device_fatal_posted.load(Ordering::Acquire) != 0
    }

    /// Wakes the router unconditionally (semi mode: a completion event to
    /// write).
    pub fn wake_router(&self) {
        let _ = nix::unistd::write(&self.doorbell, &1u64.to_ne_bytes());
    }

    /// After publishing work on a ring: wakes the router if it may sleep
    /// (the ordering argument: wire::segment, `impl SessionHeader`).
    pub fn ring_doorbell(&self) {
        if self.session().doorbell_needed() {
            self.wake_router();
        }
    }
}

fn wire_errno(e: WireError) -> Errno {
    fv_log!(1, "router connection: {e}");
    match e {
        WireError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EIO,
    }
}

/// The context of a verbs object's `ibv_context`.
///
/// # Safety
/// `ctx` must be a context created by [`alloc_context`].
pub unsafe fn inner<'a>(ctx: *mut ibv_context) -> &'a ContextInner {
    // SAFETY: `ctx` is the `context` member of the `verbs_context` that
    // starts our `FvContext` (the caller promises it came from
    // `alloc_context`), which lives until `free_context`.
    unsafe {
        let fv =
            (ctx as *mut u8).sub(std::mem::offset_of!(verbs_context, context)) as *mut FvContext;
        &*(*fv).inner
    }
}

/// Where the router of this device listens: `FLOWVERBS_SOCKET`, or
/// `router.sock` beside the sysfs tree the device was found in.
fn socket_path(device: *mut ibv_device) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLOWVERBS_SOCKET") {
        return Some(p.into());
    }
    // SAFETY: libibverbs filled ibdev_path with a NUL-terminated string.
    let ibdev = unsafe { CStr::from_ptr((*device).ibdev_path.as_ptr()) };
    let ibdev = PathBuf::from(ibdev.to_str().ok()?);
    // <SYSFS>/class/infiniband/<name> -> <SYSFS>/.. /router.sock
    let sysfs = ibdev.parent()?.parent()?.parent()?;
    Some(sysfs.parent()?.join("router.sock"))
}

/// A session with the router, and what becomes the context's fds.
struct Connected {
    inner: ContextInner,
    /// Read end of the async-event pipe: the context's `async_fd`.
    async_read: OwnedFd,
    /// The command file on the router's FUSE mount: the context's `cmd_fd`.
    cmd_file: Option<OwnedFd>,
}

fn connect(device: *mut ibv_device) -> Result<Connected, Errno> {
    let path = socket_path(device).ok_or(libc::ENODEV)?;
    let sock = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| e as i32)?;
    let addr = UnixAddr::new(&path).map_err(|e| e as i32)?;
    if let Err(e) = socket::connect(sock.as_raw_fd(), &addr) {
        fv_log!(
            1,
            "cannot reach the flowverbs router at {}: {e}",
            path.display()
        );
        return Err(libc::ENODEV);
    }
    // The async-event pipe (the router writes, libibverbs reads async_fd)
    // and the event socket (the router asks for completion channels; its
    // hang-up tells the watcher the router is gone).
    let (async_read, async_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e as i32)?;
    let (event_sock, router_end) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| e as i32)?;
    control::send(
        sock.as_fd(),
        &Request::Hello { version: VERSION },
        &[async_write.as_raw_fd(), router_end.as_raw_fd()],
    )
    .map_err(wire_errno)?;
    drop(router_end);
    let (reply, mut fds) =
        control::recv::<Reply>(sock.as_fd(), MsgFlags::empty()).map_err(wire_errno)?;
    let (gid, seg_size, cmd_file, nic) = match reply {
        Reply::Hello {
            gid,
            session_segment_size,
            cmd_file,
            semi,
            nic,
            ..
        } if fds.len() == 2 + usize::from(semi) => (gid, session_segment_size, cmd_file, nic),
        Reply::Error { errno, message } => {
            fv_log!(1, "router refused the session: {message}");
            return Err(errno);
        }
        other => {
            fv_log!(1, "unexpected reply to Hello: {other:?}");
            return Err(libc::EPROTO);
        }
    };
    let key_table = if fds.len() == 3 {
        let fd = fds.pop().expect("three fds");
        Some(
            Mapping::map_read_only(&fd, KEY_TABLE_SIZE)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::ENOMEM))?,
        )
    } else {
        None
    };
    let doorbell = fds.pop().expect("two fds");
    let segment = fds.pop().expect("two fds");
    let session = Arc::new(
        Mapping::map(&segment, seg_size as usize)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::ENOMEM))?,
    );
    if session.len() < std::mem::size_of::<SessionHeader>() {
        return Err(libc::EPROTO);
    }
    // The command file: the router's FUSE file for this session. Without
    // it, completion channels are unavailable (cmd_fd falls back below).
    let cmd_file = cmd_file.and_then(|name| {
        let file = path.parent()?.join(name);
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
        {
            Ok(f) => Some(OwnedFd::from(f)),
            Err(e) => {
                fv_log!(
                    2,
                    "cannot open {}: {e}; no completion channels",
                    file.display()
                );
                None
            }
        }
    });
    let channel_writers = watcher::ChannelWriters::default();
    let with_nic = nic.is_some() && key_table.is_some();
    // The NIC's async events are written to the same pipe.
    let nic_async = with_nic.then(|| async_write.try_clone().ok()).flatten();
    let watcher = watcher::start(
        event_sock,
        async_write,
        session.clone(),
        with_nic.then(|| channel_writers.clone()),
    )?;
    Ok(Connected {
        inner: ContextInner {
            send_queues: SendQueues::default(),
            nic: nic
                .filter(|_| key_table.is_some())
                .map(|binding| NicContext::new(binding, nic_async)),
            channel_writers,
            semi: key_table.map(SemiContext::new),
            client: Mutex::new(sock),
            session,
            doorbell,
            gid,
            watcher: Some(watcher),
            flushable: Default::default(),
        },
        async_read,
        cmd_file,
    })
}

/// # Safety
/// Called by libibverbs with pointers it owns, as the PABI 34 op table says.
pub unsafe extern "C" fn alloc_context(
    device: *mut ibv_device,
    cmd_fd: i32,
    _private: *mut libc::c_void,
) -> *mut verbs_context {
    guard(ptr::null_mut(), || {
        // SAFETY: the documented PABI 34 call; offset 0 because vctx is the
        // first field of FvContext. On failure it closed cmd_fd itself.
        let block = unsafe {
            _verbs_init_and_alloc_context(
                device,
                cmd_fd,
                std::mem::size_of::<FvContext>(),
                ptr::null_mut(),
                0,
            )
        } as *mut FvContext;
        if block.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: `block` is the zeroed context block just allocated.
        let vctx = unsafe { &mut (*block).vctx };
        let connected = match connect(device) {
            Ok(c) => c,
            Err(e) => {
                // SAFETY: undoing _verbs_init_and_alloc_context as the
                // contract requires: uninit, then free the block.
                unsafe {
                    verbs_uninit_context(vctx);
                    libc::free(block as *mut libc::c_void);
                }
                return null_with(e);
            }
        };
        let Connected {
            inner,
            async_read,
            cmd_file,
        } = connected;
        // cmd_fd: an fd whose ioctl fails with ENOTTY (GID queries fall back
        // to sysfs). The router's command file serves CREATE_COMP_CHANNEL
        // writes (router::fuse); without it, /dev/full makes
        // ibv_create_comp_channel fail cleanly instead of returning a
        // garbage fd (docs/verbs-provider-contract.md, section 3).
        let cmd = cmd_file.or_else(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .ok()
                .map(OwnedFd::from)
        });
        if let Some(cmd) = cmd {
            // We own cmd_fd from here on (docs/verbs-provider-contract.md, section 3).
            let _ = nix::unistd::close(vctx.context.cmd_fd);
            vctx.context.cmd_fd = cmd.into_raw_fd();
        }
        // libibverbs closes async_fd (and cmd_fd) in verbs_uninit_context.
        vctx.context.async_fd = async_read.into_raw_fd();
        vctx.context.num_comp_vectors = 1;
        // SAFETY: the block is ours; `inner` is released in free_context.
        unsafe {
            (*block).inner = Box::into_raw(Box::new(inner));
            verbs_set_ops(vctx, &verbs::CONTEXT_OPS.0);
        }
        fv_log!(3, "context opened");
        vctx as *mut verbs_context
    })
}

/// # Safety
/// Called by libibverbs with pointers it owns, as the PABI 34 op table says.
pub unsafe extern "C" fn free_context(ctx: *mut ibv_context) {
    guard((), || {
        // SAFETY: ctx is the embedded ibv_context of one of our blocks.
        unsafe {
            let fv = (ctx as *mut u8).sub(std::mem::offset_of!(verbs_context, context))
                as *mut FvContext;
            if !(*fv).inner.is_null() {
                drop(Box::from_raw((*fv).inner));
                (*fv).inner = ptr::null_mut();
            }
            verbs_uninit_context(&mut (*fv).vctx);
            libc::free(fv as *mut libc::c_void);
        }
    })
}

fn node_guid(gid: &[u8; 16]) -> u64 {
    // Same derivation as the sysfs node_guid: the router's address.
    let ip = std::net::Ipv4Addr::new(gid[12], gid[13], gid[14], gid[15]);
    flowverbs_verbs::identity::node_guid_from_ipv4(ip)
}

/// # Safety
/// Called by libibverbs with pointers it owns, as the PABI 34 op table says.
pub unsafe extern "C" fn query_device_ex(
    ctx: *mut ibv_context,
    input: *const ibv_query_device_ex_input,
    attr: *mut ibv_device_attr_ex,
    attr_size: usize,
) -> i32 {
    guard(libc::EIO, || {
        // SAFETY: input, if given, points to the caller's struct.
        if !input.is_null() && unsafe { (*input).comp_mask } != 0 {
            return libc::EINVAL;
        }
        // SAFETY: ctx is one of ours.
        let inner = unsafe { inner(ctx) };
        let mut a: ibv_device_attr_ex = Default::default();
        let o = &mut a.orig_attr;
        for (d, s) in o
            .fw_ver
            .iter_mut()
            .zip(concat!("flowverbs ", env!("CARGO_PKG_VERSION")).bytes())
        {
            *d = s as libc::c_char;
        }
        o.node_guid = node_guid(&inner.gid).to_be();
        o.sys_image_guid = o.node_guid;
        o.max_mr_size = MAX_MR_SIZE;
        o.page_size_cap = 0xffff_f000;
        o.vendor_id = 0x4656; // "FV": not a vendor perftest has special cases for
        o.vendor_part_id = 0;
        o.hw_ver = 1;
        o.max_qp = MAX_QP as i32;
        o.max_qp_wr = MAX_QP_WR as i32;
        o.device_cap_flags = IBV_DEVICE_RC_RNR_NAK_GEN | IBV_DEVICE_PORT_ACTIVE_EVENT;
        o.max_sge = MAX_SGE as i32;
        o.max_sge_rd = MAX_SGE as i32;
        o.max_cq = MAX_CQ as i32;
        o.max_cqe = MAX_CQE as i32;
        o.max_mr = MAX_MR as i32;
        o.max_pd = MAX_PD as i32;
        o.max_qp_rd_atom = MAX_QP_RD_ATOM as i32;
        o.max_qp_init_rd_atom = MAX_QP_RD_ATOM as i32;
        o.max_res_rd_atom = (MAX_QP_RD_ATOM * MAX_QP) as i32;
        o.atomic_cap = IBV_ATOMIC_HCA;
        o.max_pkeys = 1;
        o.max_srq = MAX_SRQ as i32;
        o.max_srq_wr = MAX_SRQ_WR as i32;
        o.max_srq_sge = MAX_SGE as i32;
        o.max_ah = i32::MAX;
        o.local_ca_ack_delay = 15;
        o.phys_port_cnt = 1;
        a.phys_port_cnt_ex = 1;
        // Memory windows, type 1 and 2B (over a NIC, QPs on the device
        // bind the windows' twins there).
        o.device_cap_flags |= IBV_DEVICE_MEM_WINDOW | IBV_DEVICE_MEM_WINDOW_TYPE_2B;
        o.max_mw = MAX_MW as i32;
        a.device_cap_flags_ex = u64::from(o.device_cap_flags);
        a.max_dm_size = 0;
        let n = attr_size.min(std::mem::size_of::<ibv_device_attr_ex>());
        // SAFETY: the caller's buffer holds attr_size bytes; we write at
        // most that many.
        unsafe { ptr::copy_nonoverlapping(&a as *const _ as *const u8, attr as *mut u8, n) };
        0
    })
}

/// # Safety
/// Called by libibverbs with pointers it owns, as the PABI 34 op table says.
pub unsafe extern "C" fn query_port(
    ctx: *mut ibv_context,
    port: u8,
    attr: *mut ibv_port_attr,
) -> i32 {
    guard(libc::EIO, || {
        if port != 1 {
            return libc::EINVAL;
        }
        // SAFETY: libibverbs hands us a full-size, zeroed ibv_port_attr.
        let a = unsafe { &mut *attr };
        a.state = IBV_PORT_ACTIVE;
        a.max_mtu = IBV_MTU_4096;
        // Semi mode over a NIC: the real link's MTU (a larger path MTU
        // would be dropped there).
        // SAFETY: ctx is ours.
        a.active_mtu = unsafe { inner(ctx) }
            .nic
            .as_ref()
            .and_then(|n| n.active_mtu())
            .unwrap_or(IBV_MTU_4096);
        a.gid_tbl_len = 1;
        a.port_cap_flags = 0;
        a.max_msg_sz = MAX_MSG_SIZE;
        a.pkey_tbl_len = 1;
        a.lid = 0;
        a.max_vl_num = 1;
        a.active_width = 2; // 4X
        a.active_speed = 32; // EDR
        a.phys_state = 5; // LinkUp
        a.link_layer = IBV_LINK_LAYER_ETHERNET as u8;
        0
    })
}

/// Maps a segment fd the router sent.
pub fn map_segment(fd: &OwnedFd, size: u64) -> Result<Mapping, Errno> {
    Mapping::map(fd, size as usize).map_err(|e| e.raw_os_error().unwrap_or(libc::ENOMEM))
}

/// Closes fds we do not use (a hostile or confused router could send more).
pub fn take_one_fd(mut fds: Vec<OwnedFd>) -> Result<OwnedFd, Errno> {
    if fds.len() != 1 {
        return Err(libc::EPROTO);
    }
    Ok(fds.pop().expect("one fd"))
}
