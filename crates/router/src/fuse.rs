//! The router's command file system: a tiny FUSE file system, mounted at
//! `RUNTIME_DIR/fuse`, served on the router's own event loop over the raw
//! `/dev/fuse` protocol (no libfuse, no extra thread).
//!
//! Why: stock libibverbs creates a completion channel by writing the
//! `CREATE_COMP_CHANNEL` command to `context->cmd_fd` and reading the new
//! fd from the caller's response buffer as soon as `write` returns
//! (docs/verbs-provider-contract.md section 3). A FUSE `write` is synchronous: the writer sleeps
//! until the file system answers, so the router can put the answer in
//! place first. The provider opens its session's file here (`<session>`)
//! and makes it its context's `cmd_fd`.
//!
//! The file system holds one regular file per session and nothing else:
//! - `open` is allowed only to the session's own process (the opener's
//!   thread group id must be the session's pid from SO_PEERCRED);
//! - `write` of a well-formed `CREATE_COMP_CHANNEL` (by the session's
//!   process) is handed to the server ([`Call::CreateChannel`]) and
//!   answered later ([`CmdFs::reply_write`]); any other write fails with
//!   `EOPNOTSUPP`; reads fail with `EINVAL`;
//! - `ioctl` fails with `ENOTTY`, so libibverbs falls back to its write
//!   path and to sysfs for GID queries;
//! - everything else is answered `ENOSYS` (the kernel then stops asking).
//!
//! Beside the session files it serves the device tree, read-only, at
//! `fuse/sysfs` ([`SysTree`]): the same folders as `RUNTIME_DIR/sysfs`, but
//! every reader gets the GID (and node GUID) of its own network namespace,
//! found from the FUSE request's thread id (the router reads the thread's
//! namespace and address from /proc; the reader says nothing). So one
//! `SYSFS_PATH=RUNTIME_DIR/fuse/sysfs` serves every container, which is
//! what a static CDI spec needs (`flowverbs cdi`). `fuse/router.sock`
//! (-> `../router.sock`) and `fuse/fuse` (-> `.`) are links, so that the
//! provider finds the router and its command files beside that tree as it
//! does beside `RUNTIME_DIR/sysfs`. A reader whose thread is gone, or is
//! not visible in the router's pid namespace, gets `ESRCH`; a reader never
//! sees another namespace's view (nothing in the tree names or lists
//! other namespaces).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use log::{debug, warn};

use super::objects::SessionId;

pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_FORGET: u32 = 2;
pub const FUSE_GETATTR: u32 = 3;
pub const FUSE_READLINK: u32 = 5;
pub const FUSE_OPEN: u32 = 14;
pub const FUSE_READ: u32 = 15;
pub const FUSE_WRITE: u32 = 16;
pub const FUSE_RELEASE: u32 = 18;
pub const FUSE_FLUSH: u32 = 25;
pub const FUSE_INIT: u32 = 26;
pub const FUSE_OPENDIR: u32 = 27;
pub const FUSE_READDIR: u32 = 28;
pub const FUSE_RELEASEDIR: u32 = 29;
pub const FUSE_INTERRUPT: u32 = 36;
pub const FUSE_DESTROY: u32 = 38;
pub const FUSE_IOCTL: u32 = 39;
pub const FUSE_BATCH_FORGET: u32 = 42;

pub const ROOT_ID: u64 = 1;
const KERNEL_MAJOR: u32 = 7;
/// The protocol minor we speak (7.31: 64-byte init reply, 40-byte
/// write_in); the kernel adapts to an older minor than its own.
const OUR_MINOR: u32 = 31;
const MAX_WRITE: u32 = 64 * 1024;
pub const IN_HEADER: usize = 40;
pub const WRITE_IN: usize = 40;
const FOPEN_DIRECT_IO: u32 = 1;
const FOPEN_NONSEEKABLE: u32 = 4;
/// Node ids of the device tree start here (session files are
/// `session + 1`, far below).
pub const TREE_BASE: u64 = 1 << 48;

pub use crate::sysfs::View;

/// What a file of the device tree holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Content {
    Text(String),
    /// The reader's GID (`ports/1/gids/0`).
    Gid,
    /// The reader's node GUID.
    NodeGuid,
    /// The reader's interface with its address (`gid_attrs/ndevs/0`).
    Netdev,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Content),
    Link(String),
}

#[derive(Clone, Debug)]
struct Node {
    /// The node id of the folder holding it (`ROOT_ID` for the mount's root).
    parent: u64,
    name: String,
    kind: Kind,
}

/// The read-only device tree served at `fuse/sysfs`, plus the two links
/// in the mount's root. Its shape is the same for every reader; the
/// contents of two files depend on the reader ([`View`]).
#[derive(Clone, Debug, Default)]
pub struct SysTree {
    nodes: Vec<Node>,
}

impl SysTree {
    /// The tree of fv0 (uverbs folder `uverbs`, the router's
    /// `/dev/infiniband` name) and, as links into the kernel's sysfs, the
    /// host's real RDMA devices (`real`: uverbs name, device name and
    /// their resolved sysfs folders).
    pub fn new(uverbs: &str, real: &[(String, String, PathBuf, PathBuf)]) -> SysTree {
        let mut t = SysTree::default();
        t.add(ROOT_ID, "router.sock", Kind::Link("../router.sock".into()));
        t.add(ROOT_ID, "fuse", Kind::Link(".".into()));
        let text = |s: &str| Kind::File(Content::Text(s.into()));
        let root = t.add(ROOT_ID, "sysfs", Kind::Dir);
        let class = t.add(root, "class", Kind::Dir);
        let misc = t.add(class, "misc", Kind::Dir);
        let cm = t.add(misc, "rdma_cm", Kind::Dir);
        t.add(cm, "abi_version", text("4"));
        let verbs = t.add(class, "infiniband_verbs", Kind::Dir);
        t.add(verbs, "abi_version", text("6"));
        let u = t.add(verbs, uverbs, Kind::Dir);
        t.add(u, "ibdev", text(crate::sysfs::IBDEV));
        t.add(u, "dev", text("0:0"));
        t.add(u, "abi_version", text("1"));
        let ib = t.add(class, "infiniband", Kind::Dir);
        let dev = t.add(ib, crate::sysfs::IBDEV, Kind::Dir);
        t.add(dev, "node_type", text("1: CA"));
        t.add(dev, "node_guid", Kind::File(Content::NodeGuid));
        let ports = t.add(dev, "ports", Kind::Dir);
        let port = t.add(ports, "1", Kind::Dir);
        let gids = t.add(port, "gids", Kind::Dir);
        t.add(gids, "0", Kind::File(Content::Gid));
        let attrs = t.add(port, "gid_attrs", Kind::Dir);
        let types = t.add(attrs, "types", Kind::Dir);
        t.add(types, "0", text("RoCE v2"));
        let ndevs = t.add(attrs, "ndevs", Kind::Dir);
        t.add(ndevs, "0", Kind::File(Content::Netdev));
        let pkeys = t.add(port, "pkeys", Kind::Dir);
        t.add(pkeys, "0", text("0xffff"));
        for (uverbs, device, uverbs_dir, device_dir) in real {
            t.add(
                verbs,
                uverbs,
                Kind::Link(uverbs_dir.to_string_lossy().into()),
            );
            t.add(ib, device, Kind::Link(device_dir.to_string_lossy().into()));
        }
        t
    }

    fn add(&mut self, parent: u64, name: &str, kind: Kind) -> u64 {
        self.nodes.push(Node {
            parent,
            name: name.into(),
            kind,
        });
        TREE_BASE + self.nodes.len() as u64 - 1
    }

    fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes
            .get(usize::try_from(ino.checked_sub(TREE_BASE)?).ok()?)
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.nodes
            .iter()
            .position(|n| n.parent == parent && n.name.as_bytes() == name)
            .map(|i| TREE_BASE + i as u64)
    }

    /// The entries of folder `dir`: (node id, name, kind).
    fn children(&self, dir: u64) -> impl Iterator<Item = (u64, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(_, n)| n.parent == dir)
            .map(|(i, n)| (TREE_BASE + i as u64, n))
    }

    /// The bytes of file `ino` as `view`'s reader sees them (None: not a
    /// file).
    pub fn file(&self, ino: u64, view: &View) -> Option<Vec<u8>> {
        let text = match &self.node(ino)?.kind {
            Kind::File(Content::Text(t)) => t.clone(),
            Kind::File(Content::Gid) => crate::sysfs::format_gid(view.gid),
            Kind::File(Content::NodeGuid) => crate::sysfs::format_node_guid(view.node_guid),
            // No interface: an empty file, which libibverbs reads as no netdev.
            Kind::File(Content::Netdev) => match &view.netdev {
                Some(n) => n.clone(),
                None => return Some(Vec::new()),
            },
            _ => return None,
        };
        Some(format!("{text}\n").into_bytes())
    }

    fn attr(&self, ino: u64) -> Option<[u8; 88]> {
        let (mode, nlink, size) = match &self.node(ino)?.kind {
            Kind::Dir => (libc::S_IFDIR | 0o555, 2, 0),
            // sysfs' size: libibverbs reads once into a bigger buffer.
            Kind::File(_) => (libc::S_IFREG | 0o444, 1, 4096),
            Kind::Link(t) => (libc::S_IFLNK | 0o777, 1, t.len() as u64),
        };
        Some(attr_of(ino, mode, nlink, 0, size))
    }
}

/// Appends one `struct fuse_dirent` to `out`.
fn push_dirent(out: &mut Vec<u8>, ino: u64, off: u64, name: &[u8], kind: u32) {
    out.extend_from_slice(&ino.to_ne_bytes());
    out.extend_from_slice(&off.to_ne_bytes());
    out.extend_from_slice(&(name.len() as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(name);
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
}

fn dirent_len(name: &[u8]) -> usize {
    (24 + name.len()).div_ceil(8) * 8
}

/// What the file system needs to know about a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionInfo {
    pub pid: i32,
    pub uid: u32,
}

/// A request only the server can answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `CREATE_COMP_CHANNEL` from `session`, written by a thread of the
    /// session's process: write the new fd number at `response` in the
    /// session's address space, then [`CmdFs::reply_write`].
    CreateChannel {
        unique: u64,
        session: SessionId,
        response: u64,
    },
}

/// The mounted file system and its `/dev/fuse` connection.
pub struct CmdFs {
    dev: OwnedFd,
    mountpoint: PathBuf,
    buf: Vec<u8>,
    tree: SysTree,
}

/// Reads `Tgid:` of a thread from /proc: the process a FUSE request's
/// thread id belongs to ([`Callers::thread_group`] of the router).
pub fn thread_group(tid: u32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn mount_error(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl CmdFs {
    /// The mount point under a runtime directory.
    pub fn mountpoint(runtime_dir: &Path) -> PathBuf {
        runtime_dir.join("fuse")
    }

    /// Mounts the file system at `RUNTIME_DIR/fuse` (needs CAP_SYS_ADMIN).
    /// A stale mount left by a router that died is detached first.
    pub fn mount(runtime_dir: &Path, tree: SysTree) -> io::Result<CmdFs> {
        let mountpoint = Self::mountpoint(runtime_dir);
        let _ = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH);
        std::fs::create_dir_all(&mountpoint)?;
        let dev = nix::fcntl::open(
            "/dev/fuse",
            nix::fcntl::OFlag::O_RDWR
                | nix::fcntl::OFlag::O_CLOEXEC
                | nix::fcntl::OFlag::O_NONBLOCK,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| mount_error("opening /dev/fuse", e))?;
        // SAFETY: open returned a new descriptor that we own.
        let dev = unsafe { OwnedFd::from_raw_fd(dev) };
        let options = format!(
            "fd={},rootmode=40755,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        );
        nix::mount::mount(
            Some("flowverbs"),
            &mountpoint,
            Some("fuse"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some(options.as_str()),
        )
        .map_err(|e| mount_error(&format!("mounting FUSE at {}", mountpoint.display()), e))?;
        debug!("command file system mounted at {}", mountpoint.display());
        Ok(CmdFs {
            dev,
            mountpoint,
            buf: vec![0; MAX_WRITE as usize + 64 * 1024],
            tree,
        })
    }

    /// The `/dev/fuse` descriptor, for epoll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }

    /// The file a session's provider opens as its `cmd_fd`, relative to
    /// the runtime directory.
    pub fn session_file(session: SessionId) -> String {
        format!("fuse/{session}")
    }

    /// Detaches the mount; requests in flight fail with ENOTCONN.
    pub fn unmount(self) {
        if let Err(e) = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            warn!("unmounting {}: {e}", self.mountpoint.display());
        }
        let _ = std::fs::remove_dir(&self.mountpoint);
    }

    /// Reads and answers every queued request ([`answer`]). Returns the
    /// requests that need the server.
    pub fn process(&mut self, callers: &impl Callers) -> Vec<Call> {
        let mut calls = Vec::new();
        loop {
            let n = match nix::unistd::read(self.dev.as_raw_fd(), &mut self.buf) {
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN) => break,
                // The request was interrupted before we read it.
                Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("reading /dev/fuse: {e}");
                    break;
                }
            };
            match answer(&self.tree, &self.buf[..n], callers) {
                Answer::Reply {
                    unique,
                    errno,
                    body,
                } => self.reply(unique, errno, &body),
                Answer::Call(call) => calls.push(call),
                Answer::Nothing => {}
            }
        }
        calls
    }

    /// Answers a `CREATE_COMP_CHANNEL` write: `Ok(())` (the whole command
    /// was consumed) or an errno.
    pub fn reply_write(&self, unique: u64, result: Result<(), i32>) {
        match result {
            Ok(()) => {
                let mut out = [0u8; 8];
                out[0..4].copy_from_slice(
                    &(flowverbs_wire::events::CREATE_COMP_CHANNEL_LEN as u32).to_ne_bytes(),
                );
                self.reply(unique, 0, &out);
            }
            Err(errno) => self.reply(unique, errno, &[]),
        }
    }

    fn reply(&self, unique: u64, errno: i32, body: &[u8]) {
        // ENOENT: the request was interrupted (its caller is gone).
        if let Err(e) = nix::unistd::write(&self.dev, &reply_message(unique, errno, body)) {
            if e != nix::errno::Errno::ENOENT {
                warn!("answering FUSE request {unique}: {e}");
            }
        }
    }
}

/// What the file system asks the router about a request's caller;
/// [`answer`] does no I/O of its own.
pub trait Callers {
    /// Who owns session `id` (None: no such session).
    fn session(&self, id: SessionId) -> Option<SessionInfo>;
    /// The device tree as the thread `tid` (in the router's pid namespace)
    /// must see it (None: the thread is gone).
    fn view(&self, tid: i32) -> Option<View>;
    /// The process (thread group) thread `tid` belongs to.
    fn thread_group(&self, tid: u32) -> Option<i32>;
}

/// The answer to one FUSE request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Reply now: `errno` 0 and `body`, or an errno and no body.
    Reply {
        unique: u64,
        errno: i32,
        body: Vec<u8>,
    },
    /// Only the server can answer ([`CmdFs::reply_write`] later).
    Call(Call),
    /// No reply: the request has none (`FORGET`, `INTERRUPT`) or is too
    /// short to have a header.
    Nothing,
}

fn reply(unique: u64, errno: i32, body: &[u8]) -> Answer {
    Answer::Reply {
        unique,
        errno,
        body: if errno == 0 {
            body.to_vec()
        } else {
            Vec::new()
        },
    }
}

/// A request's header (`struct fuse_in_header`), as `/dev/fuse` and
/// `/dev/cuse` deliver it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InHeader {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    /// The calling thread, in the router's pid namespace.
    pub tid: u32,
}

impl InHeader {
    /// The header of request `req` and its body; None if it is too short.
    pub fn parse(req: &[u8]) -> Option<(InHeader, &[u8])> {
        if req.len() < IN_HEADER {
            return None;
        }
        let u32_at = |o: usize| u32::from_ne_bytes(req[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_ne_bytes(req[o..o + 8].try_into().expect("8 bytes"));
        let h = InHeader {
            opcode: u32_at(4),
            unique: u64_at(8),
            nodeid: u64_at(16),
            uid: u32_at(24),
            gid: u32_at(28),
            tid: u32_at(32),
        };
        Some((h, &req[IN_HEADER..]))
    }
}

/// The reply to request `unique` as written to the device: `struct
/// fuse_out_header`, then `body` (none with an error).
pub fn reply_message(unique: u64, errno: i32, body: &[u8]) -> Vec<u8> {
    let body = if errno != 0 { &[][..] } else { body };
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&(-errno).to_ne_bytes());
    out.extend_from_slice(&unique.to_ne_bytes());
    out.extend_from_slice(body);
    out
}

/// Answers one request `req` (header and body, as read from `/dev/fuse`)
/// against the device tree `tree`.
pub fn answer(tree: &SysTree, req: &[u8], callers: &impl Callers) -> Answer {
    let Some((header, body)) = InHeader::parse(req) else {
        return Answer::Nothing;
    };
    let InHeader {
        opcode,
        unique,
        nodeid,
        uid,
        tid,
        ..
    } = header;
    let u32_at = |o: usize| u32::from_ne_bytes(req[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_ne_bytes(req[o..o + 8].try_into().expect("8 bytes"));
    // The session a node stands for (node 1 is the root folder).
    let node_session = |node: u64| -> Option<(SessionId, SessionInfo)> {
        let s = node.checked_sub(1).filter(|s| *s > 0 && node < TREE_BASE)?;
        callers.session(s).map(|i| (s, i))
    };
    // The caller must be a thread of the session's process.
    let caller_is = |info: &SessionInfo| -> bool {
        tid != 0 && callers.thread_group(tid) == Some(info.pid) && (uid == info.uid || uid == 0)
    };
    match opcode {
        FUSE_INIT => {
            let major = if body.len() >= 4 {
                u32_at(IN_HEADER)
            } else {
                0
            };
            let readahead = if body.len() >= 12 {
                u32_at(IN_HEADER + 8)
            } else {
                0
            };
            if major != KERNEL_MAJOR {
                warn!("FUSE protocol {major} is not {KERNEL_MAJOR}");
                return reply(unique, libc::EPROTO, &[]);
            }
            let mut out = [0u8; 64];
            out[0..4].copy_from_slice(&KERNEL_MAJOR.to_ne_bytes());
            out[4..8].copy_from_slice(&OUR_MINOR.to_ne_bytes());
            out[8..12].copy_from_slice(&readahead.to_ne_bytes());
            // flags 0; max_background 16, congestion_threshold 12.
            out[16..18].copy_from_slice(&16u16.to_ne_bytes());
            out[18..20].copy_from_slice(&12u16.to_ne_bytes());
            out[20..24].copy_from_slice(&MAX_WRITE.to_ne_bytes());
            out[24..28].copy_from_slice(&1u32.to_ne_bytes()); // time_gran
            reply(unique, 0, &out)
        }
        FUSE_LOOKUP => {
            let name = body.split(|b| *b == 0).next().unwrap_or_default();
            if let Some(ino) = tree.lookup(nodeid, name) {
                let mut out = vec![0u8; 40];
                out[0..8].copy_from_slice(&ino.to_ne_bytes());
                out.extend_from_slice(&tree.attr(ino).expect("a tree node"));
                return reply(unique, 0, &out);
            }
            let s = std::str::from_utf8(name)
                .ok()
                .and_then(|n| n.parse::<SessionId>().ok())
                .filter(|s| nodeid == ROOT_ID && callers.session(*s).is_some());
            match s {
                Some(s) => {
                    let mut out = vec![0u8; 40];
                    out[0..8].copy_from_slice(&(s + 1).to_ne_bytes());
                    // generation, entry_valid, attr_valid: 0 (no caching).
                    out.extend_from_slice(&attr(
                        s + 1,
                        false,
                        callers.session(s).map_or(0, |i| i.uid),
                    ));
                    reply(unique, 0, &out)
                }
                None => reply(unique, libc::ENOENT, &[]),
            }
        }
        FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => Answer::Nothing,
        FUSE_GETATTR if nodeid >= TREE_BASE => match tree.attr(nodeid) {
            Some(a) => {
                let mut out = vec![0u8; 16];
                out.extend_from_slice(&a);
                reply(unique, 0, &out)
            }
            None => reply(unique, libc::ENOENT, &[]),
        },
        FUSE_READLINK => match tree.node(nodeid).map(|n| &n.kind) {
            Some(Kind::Link(target)) => reply(unique, 0, target.as_bytes()),
            _ => reply(unique, libc::EINVAL, &[]),
        },
        FUSE_OPEN if nodeid >= TREE_BASE => {
            let flags = if body.len() >= 4 {
                u32_at(IN_HEADER)
            } else {
                0
            };
            match tree.node(nodeid).map(|n| &n.kind) {
                Some(Kind::File(_)) if flags & libc::O_ACCMODE as u32 == 0 => {
                    // Direct I/O: every read comes to us (no page
                    // cache shared between readers of other views).
                    let mut out = [0u8; 16];
                    out[8..12].copy_from_slice(&FOPEN_DIRECT_IO.to_ne_bytes());
                    reply(unique, 0, &out)
                }
                Some(Kind::File(_)) => reply(unique, libc::EACCES, &[]),
                Some(_) => reply(unique, libc::EISDIR, &[]),
                None => reply(unique, libc::ENOENT, &[]),
            }
        }
        FUSE_READ if nodeid >= TREE_BASE => {
            if body.len() < 20 {
                return reply(unique, libc::EINVAL, &[]);
            }
            let offset = u64_at(IN_HEADER + 8);
            let size = u32_at(IN_HEADER + 16) as usize;
            let Some(v) = i32::try_from(tid)
                .ok()
                .filter(|t| *t > 0)
                .and_then(|t| callers.view(t))
            else {
                debug!("FUSE read of the device tree by thread {tid}: no such thread");
                return reply(unique, libc::ESRCH, &[]);
            };
            match tree.file(nodeid, &v) {
                Some(data) => {
                    let start = usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    let end = start.saturating_add(size).min(data.len());
                    reply(unique, 0, &data[start..end])
                }
                None => reply(unique, libc::EISDIR, &[]),
            }
        }
        FUSE_OPENDIR
            if matches!(
                tree.node(nodeid),
                Some(Node {
                    kind: Kind::Dir,
                    ..
                })
            ) =>
        {
            reply(unique, 0, &[0u8; 16])
        }
        FUSE_READDIR if nodeid == ROOT_ID || nodeid >= TREE_BASE => {
            if body.len() < 20 {
                return reply(unique, libc::EINVAL, &[]);
            }
            let offset = u64_at(IN_HEADER + 8);
            let size = u32_at(IN_HEADER + 16) as usize;
            let mut out = Vec::new();
            for (i, (ino, n)) in tree.children(nodeid).enumerate() {
                if (i as u64) < offset {
                    continue;
                }
                if out.len() + dirent_len(n.name.as_bytes()) > size {
                    break;
                }
                let kind = match n.kind {
                    Kind::Dir => libc::DT_DIR,
                    Kind::File(_) => libc::DT_REG,
                    Kind::Link(_) => libc::DT_LNK,
                };
                push_dirent(&mut out, ino, i as u64 + 1, n.name.as_bytes(), kind.into());
            }
            reply(unique, 0, &out)
        }
        FUSE_GETATTR => {
            let owner = node_session(nodeid).map(|(_, i)| i.uid);
            if nodeid == ROOT_ID || owner.is_some() {
                let mut out = vec![0u8; 16];
                out.extend_from_slice(&attr(nodeid, nodeid == ROOT_ID, owner.unwrap_or(0)));
                reply(unique, 0, &out)
            } else {
                reply(unique, libc::ENOENT, &[])
            }
        }
        FUSE_OPEN => match node_session(nodeid) {
            Some((s, info)) if caller_is(&info) => {
                let mut out = [0u8; 16];
                out[0..8].copy_from_slice(&s.to_ne_bytes());
                out[8..12].copy_from_slice(&(FOPEN_DIRECT_IO | FOPEN_NONSEEKABLE).to_ne_bytes());
                reply(unique, 0, &out)
            }
            Some(_) => {
                warn!("FUSE open of session {nodeid}'s file by thread {tid}: not its process");
                reply(unique, libc::EACCES, &[])
            }
            None => reply(unique, libc::ENOENT, &[]),
        },
        FUSE_OPENDIR if nodeid == ROOT_ID => reply(unique, 0, &[0u8; 16]),
        FUSE_READDIR | FUSE_RELEASEDIR | FUSE_RELEASE | FUSE_FLUSH => reply(unique, 0, &[]),
        FUSE_DESTROY => reply(unique, 0, &[]),
        FUSE_READ => reply(unique, libc::EINVAL, &[]),
        FUSE_IOCTL => reply(unique, libc::ENOTTY, &[]),
        FUSE_WRITE => {
            if body.len() < WRITE_IN {
                return reply(unique, libc::EINVAL, &[]);
            }
            let fh = u64_at(IN_HEADER);
            let size = u32_at(IN_HEADER + 16) as usize;
            let data = &body[WRITE_IN..];
            let target = node_session(nodeid).filter(|(s, _)| *s == fh);
            let Some((s, info)) = target else {
                return reply(unique, libc::EBADF, &[]);
            };
            if !caller_is(&info) {
                warn!("write to session {s}'s command file by thread {tid}: not its process");
                return reply(unique, libc::EACCES, &[]);
            }
            let cmd = (size == data.len())
                .then(|| flowverbs_wire::events::CreateCompChannel::parse(data))
                .flatten();
            match cmd {
                Some(c) => Answer::Call(Call::CreateChannel {
                    unique,
                    session: s,
                    response: c.response,
                }),
                None => reply(unique, libc::EOPNOTSUPP, &[]),
            }
        }
        _ => reply(unique, libc::ENOSYS, &[]),
    }
}

/// `struct fuse_attr` of the root folder or of a session's file (owned by
/// the session's user; the mode is informative, `open` checks the pid).
fn attr(ino: u64, dir: bool, uid: u32) -> [u8; 88] {
    if dir {
        attr_of(ino, libc::S_IFDIR | 0o755, 2, uid, 0)
    } else {
        attr_of(ino, libc::S_IFREG | 0o600, 1, uid, 0)
    }
}

fn attr_of(ino: u64, mode: u32, nlink: u32, uid: u32, size: u64) -> [u8; 88] {
    let mut a = [0u8; 88];
    a[0..8].copy_from_slice(&ino.to_ne_bytes());
    a[8..16].copy_from_slice(&size.to_ne_bytes());
    a[60..64].copy_from_slice(&mode.to_ne_bytes());
    a[64..68].copy_from_slice(&nlink.to_ne_bytes());
    a[68..72].copy_from_slice(&uid.to_ne_bytes());
    a[80..84].copy_from_slice(&4096u32.to_ne_bytes()); // blksize
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> SysTree {
        SysTree::new(
            "uverbs_fv01234567",
            &[(
                "uverbs3".into(),
                "rxe0".into(),
                "/sys/devices/virtual/infiniband_verbs/uverbs3".into(),
                "/sys/devices/virtual/infiniband/rxe0".into(),
            )],
        )
    }

    fn walk(t: &SysTree, path: &str) -> Option<u64> {
        path.split('/')
            .try_fold(ROOT_ID, |dir, name| t.lookup(dir, name.as_bytes()))
    }

    #[test]
    fn tree_answers_each_view_with_its_own_gid() {
        let t = tree();
        let a = View {
            gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1],
            node_guid: 0x0266_76ff_0a00_0001,
            netdev: Some("eth0".into()),
        };
        let b = View {
            gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2],
            node_guid: 2,
            netdev: None,
        };
        let gid = walk(&t, "sysfs/class/infiniband/fv0/ports/1/gids/0").unwrap();
        assert_eq!(
            t.file(gid, &a).unwrap(),
            b"0000:0000:0000:0000:0000:ffff:0a00:0001\n"
        );
        assert_eq!(
            t.file(gid, &b).unwrap(),
            b"0000:0000:0000:0000:0000:ffff:0a00:0002\n"
        );
        let ndev = walk(&t, "sysfs/class/infiniband/fv0/ports/1/gid_attrs/ndevs/0").unwrap();
        assert_eq!(t.file(ndev, &a).unwrap(), b"eth0\n");
        assert_eq!(t.file(ndev, &b).unwrap(), b"");
        let guid = walk(&t, "sysfs/class/infiniband/fv0/node_guid").unwrap();
        assert_eq!(t.file(guid, &a).unwrap(), b"0266:76ff:0a00:0001\n");
        let ibdev = walk(&t, "sysfs/class/infiniband_verbs/uverbs_fv01234567/ibdev").unwrap();
        assert_eq!(t.file(ibdev, &a).unwrap(), b"fv0\n");
        for p in [
            "sysfs/class/infiniband_verbs/abi_version",
            "sysfs/class/infiniband/fv0/node_type",
            "sysfs/class/infiniband/fv0/ports/1/gid_attrs/types/0",
            "sysfs/class/infiniband/fv0/ports/1/pkeys/0",
        ] {
            let n = walk(&t, p).unwrap_or_else(|| panic!("{p}"));
            assert!(t.file(n, &a).is_some(), "{p}");
        }
        // Folders and links are not files; unknown names and ids are absent.
        assert!(t.file(walk(&t, "sysfs/class").unwrap(), &a).is_none());
        assert!(walk(&t, "sysfs/class/infiniband/fv1").is_none());
        assert!(t.node(TREE_BASE + 10_000).is_none());
        assert!(t.node(5).is_none());
        assert!(t.attr(ROOT_ID).is_none());
    }

    #[test]
    fn tree_links_and_listing() {
        let t = tree();
        let link = |p: &str| match &t.node(walk(&t, p).unwrap()).unwrap().kind {
            Kind::Link(target) => target.clone(),
            k => panic!("{p}: {k:?}"),
        };
        assert_eq!(link("router.sock"), "../router.sock");
        assert_eq!(link("fuse"), ".");
        assert_eq!(
            link("sysfs/class/infiniband/rxe0"),
            "/sys/devices/virtual/infiniband/rxe0"
        );
        let names = |p: &str| -> Vec<String> {
            let dir = walk(&t, p).unwrap();
            t.children(dir).map(|(_, n)| n.name.clone()).collect()
        };
        assert_eq!(
            names("sysfs/class/infiniband_verbs"),
            ["abi_version", "uverbs_fv01234567", "uverbs3"]
        );
        assert_eq!(names("sysfs/class/infiniband"), ["fv0", "rxe0"]);
        let root: Vec<String> = t.children(ROOT_ID).map(|(_, n)| n.name.clone()).collect();
        assert_eq!(root, ["router.sock", "fuse", "sysfs"]);
        // Attributes: mode and size of each kind.
        let mode = |p: &str| {
            let a = t.attr(walk(&t, p).unwrap()).unwrap();
            u32::from_ne_bytes(a[60..64].try_into().unwrap())
        };
        assert_eq!(mode("sysfs/class"), libc::S_IFDIR | 0o555);
        assert_eq!(
            mode("sysfs/class/infiniband/fv0/node_type"),
            libc::S_IFREG | 0o444
        );
        assert_eq!(mode("fuse"), libc::S_IFLNK | 0o777);
    }

    #[test]
    fn dirents_are_aligned() {
        let mut out = Vec::new();
        push_dirent(&mut out, 7, 1, b"abc", libc::DT_REG.into());
        assert_eq!(out.len(), dirent_len(b"abc"));
        assert_eq!(out.len(), 32);
        push_dirent(&mut out, 8, 2, b"12345678", libc::DT_DIR.into());
        assert_eq!(out.len(), 32 + 32);
    }
}
