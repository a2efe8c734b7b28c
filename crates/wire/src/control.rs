//! Control messages on the router's Unix socket (`SOCK_SEQPACKET`, one
//! message per packet, encoded by `wire::codec`, file descriptors as
//! SCM_RIGHTS).
//!
//! The provider sends a [`Request`] and waits for the matching [`Reply`];
//! control verbs are synchronous, the data path never uses the socket.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// Largest control message either side accepts.
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Most file descriptors one message carries.
pub const MAX_FDS: usize = 4;

/// Address vector of `struct ibv_ah_attr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressVector {
    pub dlid: u16,
    pub sl: u8,
    pub src_path_bits: u8,
    pub static_rate: u8,
    pub is_global: bool,
    pub port_num: u8,
    pub dgid: [u8; 16],
    pub flow_label: u32,
    pub sgid_index: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
}

/// Queue pair capacities, as in `struct ibv_qp_cap`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QpCaps {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

/// The attributes of `struct ibv_qp_attr` that flowverbs implements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QpAttr {
    pub qp_state: u32,
    pub cur_qp_state: u32,
    pub path_mtu: u32,
    pub path_mig_state: u32,
    pub qkey: u32,
    pub rq_psn: u32,
    pub sq_psn: u32,
    pub dest_qp_num: u32,
    pub qp_access_flags: u32,
    pub cap: QpCaps,
    pub ah_attr: AddressVector,
    pub alt_ah_attr: AddressVector,
    pub pkey_index: u16,
    pub alt_pkey_index: u16,
    pub en_sqd_async_notify: u8,
    pub sq_draining: u8,
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub port_num: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub alt_port_num: u8,
    pub alt_timeout: u8,
    pub rate_limit: u32,
}

/// One session in [`Reply::Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub pid: i32,
    pub uid: u32,
    pub gid: [u8; 16],
    pub pds: u32,
    pub mrs: u32,
    pub cqs: u32,
    pub qps: u32,
    pub srqs: u32,
    /// Semi mode over a NIC: the real device the session posts to.
    pub nic: Option<String>,
    /// Every QP of the session.
    pub qp_list: Vec<QpStatus>,
}

/// Which data path carries a QP's sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QpPath {
    /// The router copies (isolated mode, or semi mode where it does not
    /// apply).
    Router,
    /// Semi mode: the sender's provider writes into its peer's memory.
    Semi,
    /// To a QP of another host, over the routers' link.
    Link,
    /// Semi mode over a NIC: the provider posts to the real device.
    Nic,
}

/// The real RDMA device a semi-mode session uses ([`Reply::Hello`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicBinding {
    /// Its libibverbs name (`ibv_get_device_name`), e.g. `mlx5_0`, `rxe0`.
    pub device: String,
    pub port: u8,
    /// The index of this host's RoCE v2 IPv4 GID in the port's table.
    pub gid_index: u8,
    /// Its uverbs node under `/dev/infiniband`.
    pub uverbs: String,
}

/// One QP as `flowverbs status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QpStatus {
    pub qpn: u32,
    /// `ibv_qp_type`.
    pub qp_type: u32,
    /// `ibv_qp_state`.
    pub state: u32,
    pub dest_qpn: u32,
    pub path: QpPath,
    /// Send work requests this QP completed, by the path that moved them.
    pub moved: MovedByPath,
}

/// Work requests completed (as a requester) and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// SEND and SEND_WITH_IMM.
    pub sends: u64,
    /// RDMA_WRITE and RDMA_WRITE_WITH_IMM.
    pub writes: u64,
    pub reads: u64,
    pub atomics: u64,
    pub bytes: u64,
    /// Requests whose data was inline in the work request.
    pub inline: u64,
    /// Requests that ended in an error completion (not counted above;
    /// flushed ones are not counted at all).
    pub errors: u64,
}

impl Moved {
    pub fn kind_of(opcode: u32) -> crate::segment::MovedKind {
        use crate::segment::MovedKind;
        use flowverbs_sys::*;
        match opcode {
            IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM => MovedKind::Write,
            IBV_WR_RDMA_READ => MovedKind::Read,
            IBV_WR_ATOMIC_CMP_AND_SWP | IBV_WR_ATOMIC_FETCH_AND_ADD => MovedKind::Atomic,
            IBV_WR_BIND_MW | IBV_WR_LOCAL_INV => MovedKind::Nothing,
            _ => MovedKind::Send,
        }
    }

    pub fn count(&mut self, opcode: u32, bytes: u64, inline: bool) {
        use crate::segment::MovedKind;
        match Moved::kind_of(opcode) {
            MovedKind::Send => self.sends += 1,
            MovedKind::Write => self.writes += 1,
            MovedKind::Read => self.reads += 1,
            MovedKind::Atomic => self.atomics += 1,
            MovedKind::Nothing => return,
        }
        self.bytes += bytes;
        self.inline += u64::from(inline);
    }

    pub fn add(&mut self, o: &Moved) {
        self.sends += o.sends;
        self.writes += o.writes;
        self.reads += o.reads;
        self.atomics += o.atomics;
        self.bytes += o.bytes;
        self.inline += o.inline;
        self.errors += o.errors;
    }
}

/// [`Moved`] split by data path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedByPath {
    /// Copied by the router between two processes of this host.
    pub router: Moved,
    /// Moved by the sender's provider (semi mode; as its provider reports).
    pub semi: Moved,
    /// Carried to another host over the routers' link.
    pub link: Moved,
}

impl MovedByPath {
    pub fn add(&mut self, o: &MovedByPath) {
        self.router.add(&o.router);
        self.semi.add(&o.semi);
        self.link.add(&o.link);
    }
}

/// A router of another host, as `flowverbs status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its listen address.
    pub addr: String,
    /// Both directions said Hello.
    pub up: bool,
    /// Bytes queued for it, not yet taken by its socket.
    pub queued: u64,
    /// Whether this router reads what it sends (false while the replies
    /// queued for it exceed the cap: it is not reading them).
    pub reading: bool,
}

/// An rdma_cm id, as `flowverbs status` shows it to root of the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmIdStatus {
    /// The user whose rdma_cm descriptor holds it.
    pub uid: u32,
    /// Its network namespace (inode).
    pub netns: u64,
    /// `tcp`, `udp`, `ipoib` or `ib` (the port space).
    pub port_space: String,
    /// `idle`, `bound`, `addr-resolved`, `route-resolved`, `listening`,
    /// `req-sent`, `req-received`, `rep-sent`, `rep-received`,
    /// `established` or `done`.
    pub state: String,
    /// Its address (`IP:PORT`), once bound.
    pub local: Option<String>,
    /// Its peer's address, once known.
    pub remote: Option<String>,
    /// Its peer's GID when the peer is an id of another router.
    pub remote_router_gid: Option<[u8; 16]>,
}

/// Everything the router did since it started (closed QPs included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterTotals {
    pub sessions: u64,
    pub qps: u64,
    pub moved: MovedByPath,
}

/// One of the router's caps on what clients hold or ask (`router::limits`),
/// as `flowverbs status` shows it to root of the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapStatus {
    /// Its name, e.g. `qps_per_user` (the router flag without `--max-`).
    pub name: String,
    /// The configured cap (None: no cap).
    pub limit: Option<u64>,
    /// Requests or connections it refused since the router started.
    pub refused: u64,
}

/// Semi mode: where a run of a registered range lives in its owner's
/// arena memfd (`addr` page-aligned, `len` a multiple of the page size).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArenaRun {
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
}

/// Most runs one semi-mode registration may have.
pub const MAX_ARENA_RUNS: usize = 256;

/// What a provider asks of the router.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First message of a session. Carries two fds: the write end of the
    /// context's async-event pipe (whose read end is `async_fd`) and the
    /// router's end of the event socket (see [`Event`]).
    Hello {
        version: u32,
    },
    /// First and only message of a short connection: which `SYSFS_PATH`
    /// shows the caller's network namespace its own GID (answered with
    /// [`Reply::DeviceView`]; the router creates that view if needed).
    DeviceView,
    /// First and only message of a short connection: what the router
    /// serves (answered with [`Reply::Status`]).
    Status,
    AllocPd,
    DeallocPd {
        pd: u32,
    },
    /// Registers `[addr, addr + length)` of the caller's address space.
    /// Semi mode: `runs` say where the range's pages live in the caller's
    /// arena (empty: not shared); the arena's memfd comes with the first
    /// registration that uses it (and again whenever it is a new one).
    /// `[addr, addr + length)` of the caller's memory, addressed by work
    /// requests as `[iova, iova + length)` (`ibv_reg_mr_iova2`; `iova` is
    /// `addr` for `ibv_reg_mr`).
    RegMr {
        pd: u32,
        addr: u64,
        iova: u64,
        length: u64,
        access: u32,
        runs: Vec<ArenaRun>,
        /// Semi mode over a NIC: the key the NIC gave the same range
        /// (`ibv_reg_mr` on the real device), which becomes the MR's lkey
        /// and rkey so that work requests carry it to the NIC unchanged.
        nic_key: Option<u32>,
    },
    /// Semi mode: the MR behind `key` at the responder of the caller's QP
    /// `qp` (an rkey of a request, or an lkey of the responder's receive),
    /// answered with [`Reply::Key`]. The responder: `qp`'s connected peer,
    /// or for a UD QP the UD QP `dest_qpn` (0 for connected QPs).
    ResolveKey {
        qp: u32,
        key: u32,
        dest_qpn: u32,
    },
    /// Semi mode: the rings of UD QP `dest_qpn` (at GID `dgid`, when the
    /// address handle has a GRH), for the caller's UD QP `qp` to deliver
    /// datagrams itself; answered with [`Reply::SemiPeer`] if the two QPs'
    /// processes share memory (their trust group), otherwise refused: the
    /// datagrams go through the router.
    SemiDatagramPeer {
        qp: u32,
        dest_qpn: u32,
        dgid: Option<[u8; 16]>,
    },
    /// Semi mode over a NIC: where a datagram to `dgid` goes on the NIC
    /// (for `ibv_create_ah`), answered with [`Reply::NicPath`].
    NicAddress {
        dgid: [u8; 16],
    },
    /// Semi mode over a NIC: the GID of the UD QP `qpn` on the NIC whose
    /// physical GID is `nic_gid` (the sender of a datagram, as the NIC's
    /// GRH names it), answered with [`Reply::NicSource`].
    NicSource {
        nic_gid: [u8; 16],
        qpn: u32,
    },
    /// Semi mode: the rings of the responder of the caller's semi QP `qp`,
    /// answered with [`Reply::SemiPeer`] once both QPs name each other
    /// (`EAGAIN` until then).
    SemiConnect {
        qp: u32,
    },
    /// Semi mode: a request of the caller's QP `qp` failed. `own`: the QP
    /// goes to the error state; `peer_event`: its responder does too, after
    /// this affiliated async event (0: none, the error was reported on a
    /// receive).
    SemiError {
        qp: u32,
        own: bool,
        peer_event: Option<u32>,
    },
    DeregMr {
        mr: u32,
    },
    /// `ibv_alloc_mw` in `pd`: a window of `mw_type` (`enum ibv_mw_type`),
    /// answered with [`Reply::Mw`].
    /// `nic_rkey`: semi mode over a NIC, the rkey of the window's twin on
    /// the real device, which the window takes (as `RegMr::nic_key`).
    AllocMw {
        pd: u32,
        mw_type: u32,
        nic_rkey: Option<u32>,
    },
    DeallocMw {
        mw: u32,
    },
    /// Semi mode: the caller's QP `qp` reached a window operation in its
    /// send queue (what its provider runs itself goes to the router, which
    /// owns the windows), answered with [`Reply::WcStatus`].
    SemiWindow {
        qp: u32,
        op: WindowOp,
    },
    /// Semi mode: a SEND_WITH_INV of the caller's QP `qp` was delivered;
    /// the responder invalidates `rkey` (answered with
    /// [`Reply::WcStatus`], the requester's status).
    SemiInvalidate {
        qp: u32,
        rkey: u32,
    },
    /// `channel`: the completion channel's fd number in the caller (one
    /// the router made with [`Event::MakeChannel`]); `cookie`: the
    /// `ibv_cq *`, written to the channel for each completion event and to
    /// `async_fd` for CQ events.
    CreateCq {
        cqe: u32,
        channel: Option<i32>,
        cookie: u64,
    },
    DestroyCq {
        cq: u32,
    },
    /// `ibv_resize_cq`, first step: a new, empty ring of at least `cqe`
    /// entries (answered with [`Reply::Cq`] and its segment). Nothing
    /// moves until [`Request::CommitCqResize`]; a second `ResizeCq`
    /// replaces an uncommitted one.
    ResizeCq {
        cq: u32,
        cqe: u32,
    },
    /// `ibv_resize_cq`, second step, once the caller has mapped the new
    /// segment: the router freezes the old ring (`wire::cq_ring`), produces
    /// into the new one from now on, and answers [`Reply::CqMoved`].
    CommitCqResize {
        cq: u32,
    },
    CreateQp {
        pd: u32,
        qp_type: u32,
        send_cq: u32,
        recv_cq: u32,
        /// Shared receive queue handle, 0 for none.
        srq: u32,
        caps: QpCaps,
        sq_sig_all: bool,
        /// The `ibv_qp *`, the element of the QP's async events.
        cookie: u64,
        /// Semi mode over a NIC: the number of the real device's QP that
        /// backs this one, which becomes its QP number (valid on the wire).
        nic_qpn: Option<u32>,
    },
    CreateSrq {
        pd: u32,
        max_wr: u32,
        max_sge: u32,
        srq_limit: u32,
        /// The `ibv_srq *`, the element of the SRQ's async events.
        cookie: u64,
        /// Semi mode over a NIC: the real device backs this SRQ too (its
        /// QPs may then be backed by the NIC).
        nic: bool,
    },
    /// `mask`: IBV_SRQ_MAX_WR and/or IBV_SRQ_LIMIT.
    ModifySrq {
        srq: u32,
        max_wr: u32,
        srq_limit: u32,
        mask: u32,
    },
    QuerySrq {
        srq: u32,
    },
    DestroySrq {
        srq: u32,
    },
    ModifyQp {
        qp: u32,
        attr: QpAttr,
        mask: u32,
    },
    QueryQp {
        qp: u32,
    },
    DestroyQp {
        qp: u32,
    },
}

/// A window operation of a send queue (`IBV_WR_BIND_MW` or
/// `IBV_WR_LOCAL_INV`), as the router runs it
/// (`flowverbs_verbs::window`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowOp {
    /// `IBV_WR_BIND_MW` or `IBV_WR_LOCAL_INV`.
    pub opcode: u32,
    /// BIND_MW: the window's handle, the region's lkey (0: none), the
    /// range and rights.
    pub mw: u32,
    pub lkey: u32,
    pub addr: u64,
    pub length: u64,
    pub access: u32,
    /// BIND_MW: the new rkey (its low byte is the consumer's key);
    /// LOCAL_INV: the rkey to invalidate.
    pub rkey: u32,
}

impl WindowOp {
    /// The window operation of send work request `w`.
    pub fn of(w: &crate::entries::SendWqe) -> WindowOp {
        WindowOp {
            opcode: w.opcode,
            mw: w.mw,
            lkey: w.mw_lkey,
            addr: w.remote_addr,
            length: w.compare_add,
            access: w.mw_access,
            rkey: w.rkey,
        }
    }
}

/// The router's answer to one [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Carries two fds: the session segment and the doorbell eventfd.
    /// `cmd_file`: the file the provider opens as `cmd_fd` (on the router's
    /// FUSE mount), relative to the router's runtime directory (the folder
    /// of its socket), if the router serves one.
    Hello {
        version: u32,
        gid: [u8; 16],
        session_segment_size: u64,
        cmd_file: Option<String>,
        /// Semi mode: a third fd, the key table (`segment::KEY_TABLE_SIZE`).
        semi: bool,
        /// Semi mode over a NIC: the real device that backs connected QPs
        /// whose peer is on another host.
        nic: Option<NicBinding>,
    },
    DeviceView {
        sysfs_path: String,
        /// Semi mode over a NIC: the device a container also needs.
        nic: Option<NicBinding>,
    },
    Status {
        sessions: Vec<SessionStatus>,
        /// Root of the host only (others get None).
        totals: Option<RouterTotals>,
        /// The routers of other hosts (root of the host only).
        peers: Vec<PeerStatus>,
        /// The router's caps and their refusals (root of the host only).
        limits: Vec<CapStatus>,
        /// rdma_cm ids (root of the host only).
        rdma_cm: Vec<CmIdStatus>,
    },
    Mw {
        mw: u32,
        rkey: u32,
    },
    /// The status of a work request's completion (`enum ibv_wc_status`).
    WcStatus {
        status: u32,
    },
    Pd {
        pd: u32,
    },
    Mr {
        mr: u32,
        lkey: u32,
        rkey: u32,
    },
    /// Carries one fd: the CQ segment.
    Cq {
        cq: u32,
        capacity: u32,
        segment_size: u64,
    },
    /// Answer to [`Request::CommitCqResize`]: the old ring holds
    /// completions up to index `end` (exclusive); the consumer drains them,
    /// then polls the new ring.
    CqMoved {
        end: u32,
    },
    /// Carries one fd: the QP segment.
    Qp {
        qp: u32,
        qpn: u32,
        caps: QpCaps,
        sq_capacity: u32,
        rq_capacity: u32,
        segment_size: u64,
    },
    QpAttr {
        attr: QpAttr,
    },
    /// Semi mode, answer to a modify to RTR: the caller's provider runs
    /// the QP's send queue itself, to `peer_qpn`, whose rings it asks for
    /// with [`Request::SemiConnect`].
    SemiPath {
        peer_qpn: u32,
    },
    /// Semi mode over a NIC, answer to a modify to RTR of a QP backed by
    /// the real device: its peer is reached through the NIC. The provider
    /// moves the real QP to RTR with `dgid` (the physical GID of the NIC
    /// of the peer's host) and `sgid_index` (this host's NIC GID) in place
    /// of the application's virtual GIDs; everything else is the
    /// application's.
    NicPath {
        dgid: [u8; 16],
        sgid_index: u8,
    },
    /// Semi mode over a NIC, answer to [`Request::NicSource`].
    NicSource {
        gid: [u8; 16],
    },
    /// Semi mode, answer to [`Request::SemiConnect`]. Carries two or three
    /// fds: the peer's QP segment, its receive CQ's segment and, if it
    /// receives through one, its SRQ's segment.
    SemiPeer {
        peer_qpn: u32,
        peer_session: u64,
        /// The GID of the peer's session (a datagram's GRH names it).
        peer_gid: [u8; 16],
        sq_capacity: u32,
        rq_capacity: u32,
        cq_capacity: u32,
        /// The responder's SRQ (0: it has none; otherwise a third fd).
        srq_capacity: u32,
    },
    /// Carries one fd: the owner's arena.
    /// What a key reaches: `[addr, addr + length)` as work requests
    /// address it, which lies at `va` in its owner's memory.
    Key {
        addr: u64,
        length: u64,
        va: u64,
        access: u32,
        slot: u32,
        owner: u64,
        runs: Vec<ArenaRun>,
    },
    /// Carries one fd: the SRQ segment.
    Srq {
        srq: u32,
        capacity: u32,
        max_sge: u32,
        segment_size: u64,
    },
    SrqAttr {
        max_wr: u32,
        max_sge: u32,
        srq_limit: u32,
    },
    /// A CQ, QP or SRQ is gone; `events`: how many events the router
    /// reported for it (completion events for a CQ, async events for a QP
    /// or SRQ), to be matched against the application's acknowledgements.
    Destroyed {
        events: u32,
    },
    Done,
    /// The request failed: `errno` for the verb, and a message for humans.
    Error {
        errno: i32,
        message: String,
    },
}

/// Router → provider, on the event socket (a `SOCK_SEQPACKET` pair made by
/// the provider; its watcher thread serves this end and notices a router
/// that goes away by the socket's hang-up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The application is in `ibv_create_comp_channel`: make a pipe and
    /// answer [`EventReply::ChannelMade`] with its write end.
    MakeChannel { id: u64 },
    /// The channel made for an aborted `ibv_create_comp_channel`: close it.
    DropChannel { id: u64, fd: i32 },
}

/// Provider → router, on the event socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventReply {
    /// Carries one fd: the pipe's write end; `fd` is its read end's number
    /// in the provider's process.
    ChannelMade {
        id: u64,
        fd: i32,
    },
    ChannelFailed {
        id: u64,
        errno: i32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection")]
    Closed,
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Sends one message with optional file descriptors.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> Result<(), WireError> {
    let bytes = super::codec::encode(msg);
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::Malformed(format!(
            "a message of {} bytes (at most {MAX_MESSAGE})",
            bytes.len()
        )));
    }
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EPIPE) | Err(nix::errno::Errno::ECONNRESET) => {
                return Err(WireError::Closed)
            }
            Err(e) => return Err(WireError::Io(e.into())),
        }
    }
}

/// Receives one message and the file descriptors that came with it.
/// A message that does not decode, is truncated, or carries more than
/// [`MAX_FDS`] descriptors is an error; its fds are closed.
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
    flags: MsgFlags,
) -> Result<(T, Vec<OwnedFd>), WireError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, truncated, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            flags | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(|e| WireError::Io(e.into()))? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: the kernel just installed this fd for
                            // us; nothing else owns it.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                let truncated = msg
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                break (msg.bytes, truncated, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ECONNRESET) => return Err(WireError::Closed),
            Err(e) => return Err(WireError::Io(e.into())),
        }
    };
    if len == 0 && fds.is_empty() {
        return Err(WireError::Closed);
    }
    if truncated {
        return Err(WireError::Malformed(
            "message or its descriptors truncated".into(),
        ));
    }
    if fds.len() > MAX_FDS {
        return Err(WireError::Malformed("too many descriptors".into()));
    }
    let msg = super::codec::decode(&buf[..len]).map_err(WireError::Malformed)?;
    Ok((msg, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    #[test]
    fn round_trip_with_fd() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        let req = Request::RegMr {
            pd: 1,
            addr: 0x1234,
            iova: 0x1234,
            length: 99,
            access: 7,
            runs: vec![],
            nic_key: None,
        };
        send(a.as_fd(), &req, &[a.as_raw_fd()]).unwrap();
        let (got, fds): (Request, _) = recv(b.as_fd(), MsgFlags::empty()).unwrap();
        assert_eq!(got, req);
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn garbage_is_rejected() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        nix::unistd::write(&a, &[0xff; 40]).unwrap();
        assert!(matches!(
            recv::<Request>(b.as_fd(), MsgFlags::empty()),
            Err(WireError::Malformed(_))
        ));
        drop(a);
        assert!(matches!(
            recv::<Request>(b.as_fd(), MsgFlags::empty()),
            Err(WireError::Closed)
        ));
    }
}
