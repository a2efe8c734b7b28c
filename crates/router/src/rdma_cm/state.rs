//! The connection manager's rules: ids, their files, ports per network
//! namespace, connection establishment as messages between ids (REQ, REP,
//! RTU, REJ, DREQ, SIDR REP), and the event queues. No I/O: the caller's
//! memory is reached through [`Memory`], blocked GET_EVENTs are handed
//! back to the plumbing ([`Cm::pump`]), and messages for an id of another
//! router wait in [`Cm::take_outgoing`] for the link to carry them
//! ([`super::link`] checks what comes back).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::abi::{self, *};
use log::debug;
use serde::{Deserialize, Serialize};

/// An open file of the device (one `rdma_create_event_channel`).
pub type FileId = u64;
/// An id's handle, unique in the router (what the library calls
/// `handle`).
pub type Handle = u32;

/// A GID (an id's, or the one a router serves).
pub type Gid = [u8; 16];

/// An id's counterpart in a connection: an id of this router, or id
/// `handle` of the router serving `gid` (reached over the link; handle 0
/// while a REQ waits for its first answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Here(Handle),
    There(Gid, Handle),
}

/// A message for an id of another router: the link carries `frame` from
/// `src` (the sending id's GID) to the router serving `dst`.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub src: Gid,
    pub dst: Gid,
    pub frame: Frame,
}

/// What one link frame of kind `Cm` carries: `msg` from id `from` to id
/// `to` (0: a REQ, for whoever listens at its destination; or a
/// withdrawal, for whoever answers `from`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Frame {
    pub to: Handle,
    pub from: Handle,
    pub msg: Msg,
}

/// Who wrote a command: the plumbing finds it from the request's thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The writer's process (thread group) id.
    pub tgid: i32,
    pub uid: u32,
    /// The writer's network namespace and its fv0 GID.
    pub netns: u64,
    pub gid: [u8; 16],
    /// IPv4 addresses of that namespace (loopback counts without being
    /// listed).
    pub local: Vec<Ipv4Addr>,
}

impl Caller {
    fn is_local(&self, ip: Ipv4Addr) -> bool {
        ip.is_loopback()
            || self.local.contains(&ip)
            || flowverbs_verbs::identity::ipv4_from_gid(&self.gid) == Some(ip)
    }

    fn own_ip(&self) -> Ipv4Addr {
        flowverbs_verbs::identity::ipv4_from_gid(&self.gid).unwrap_or(Ipv4Addr::LOCALHOST)
    }
}

/// The writer's memory: responses are written there, option values read.
pub trait Memory {
    /// Writes `bytes` at `addr`; fails (an errno, EFAULT for memory that
    /// is not the writer's or not writable) without writing a byte.
    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), i32>;
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), i32>;
}

/// Per-tenant limits.
#[derive(Clone, Copy, Debug)]
pub struct CmLimits {
    /// Ids a user may hold at once (children of connection requests
    /// included).
    pub ids_per_user: usize,
    /// Connection requests a user's listeners may hold unanswered;
    /// beyond, requests are rejected.
    pub pending_per_user: usize,
    /// A listener's backlog is at most this (0 or less asks for this).
    pub max_backlog: usize,
    /// Open files per user.
    pub files_per_user: usize,
}

impl Default for CmLimits {
    fn default() -> CmLimits {
        CmLimits {
            ids_per_user: 4096,
            pending_per_user: 1024,
            max_backlog: 1024,
            files_per_user: 1024,
        }
    }
}

/// Writes an event into a blocked GET_EVENT's memory: (request, address,
/// bytes).
pub type EventWriter<'a> = dyn FnMut(u64, u64, &[u8]) -> Result<(), i32> + 'a;

/// What a command comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The write returns: `Ok` (the whole write consumed) or an errno.
    Done(Result<(), i32>),
    /// A GET_EVENT with no event yet: the write stays blocked until
    /// [`Cm::pump`] answers it (or it is interrupted).
    Blocked,
}

/// A GET_EVENT waiting for an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiter {
    unique: u64,
    response: u64,
    out: usize,
}

#[derive(Clone, Debug)]
struct Event {
    resp: EventResp,
    /// The id whose count it adds to when read (the listener for a
    /// connection request).
    counts_for: Handle,
}

struct File {
    uid: u32,
    events: VecDeque<Event>,
    waiters: VecDeque<Waiter>,
    /// A poll handle to wake when an event arrives.
    poll_kh: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Bound,
    AddrResolved,
    RouteResolved,
    Listening,
    /// Active side: REQ sent to `peer`.
    ReqSent,
    /// Passive side (a child): REQ received, not yet accepted.
    ReqRcvd,
    /// Passive side: REP sent, waiting for the RTU.
    RepSent,
    /// Active side: REP received, waiting for the library's ACCEPT (RTU).
    RepRcvd,
    Established,
    /// Disconnected or rejected: only destroy remains.
    Done,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Bound => "bound",
            State::AddrResolved => "addr-resolved",
            State::RouteResolved => "route-resolved",
            State::Listening => "listening",
            State::ReqSent => "req-sent",
            State::ReqRcvd => "req-received",
            State::RepSent => "rep-sent",
            State::RepRcvd => "rep-received",
            State::Established => "established",
            State::Done => "done",
        }
    }
}

/// Connection parameters an id agreed on.
#[derive(Clone, Copy, Debug, Default)]
struct Agreed {
    qpn: u32,
    psn: u32,
    peer_qpn: u32,
    peer_psn: u32,
    responder_resources: u8,
    initiator_depth: u8,
    retry_count: u8,
    rnr_retry_count: u8,
}

struct Id {
    file: FileId,
    /// The library's cookie for the id (0 for a child until ACCEPT: its
    /// events stay hidden until then).
    uid: u64,
    owner_uid: u32,
    ps: u16,
    qp_type: u8,
    state: State,
    netns: u64,
    gid: [u8; 16],
    src: Option<SockAddr>,
    dst: Option<SockAddr>,
    /// The port this id holds in its namespace.
    port_key: Option<PortKey>,
    peer: Option<End>,
    peer_gid: [u8; 16],
    /// A child: its listener.
    listener: Option<Handle>,
    backlog: usize,
    /// Unanswered children of a listener.
    pending: usize,
    agreed: Agreed,
    events_reported: u32,
    tos: u8,
    /// A UD id's qkey once set (by INIT_QP_ATTR or ACCEPT), 0 before.
    qkey: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PortKey {
    netns: u64,
    ps: u16,
    port: u16,
}

/// A CM message between two ids (what a CM MAD carries between hosts);
/// who sends it travels beside it ([`End`], [`Frame::from`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Msg {
    Req {
        /// The requester's GID (across the link: the frame's source).
        gid: [u8; 16],
        src: SockAddr,
        dst: SockAddr,
        ps: u16,
        param: ConnParam,
        psn: u32,
    },
    Rep {
        param: ConnParam,
        psn: u32,
    },
    Rtu,
    /// A SIDR REP that grants (a UD id's answer): the server's QP, qkey
    /// and GID. A refusal is a `Rej`.
    SidrRep {
        qpn: u32,
        qkey: u32,
        gid: [u8; 16],
        private_data: Vec<u8>,
    },
    Rej {
        reason: i32,
        private_data: Vec<u8>,
    },
    Dreq,
}

/// The connection manager of one router.
pub struct Cm {
    limits: CmLimits,
    files: HashMap<FileId, File>,
    ids: BTreeMap<Handle, Id>,
    ports: BTreeMap<PortKey, Vec<(Ipv4Addr, Handle)>>,
    next_handle: Handle,
    next_port: u16,
    psn_seed: u32,
    ids_of_user: HashMap<u32, usize>,
    pending_of_user: HashMap<u32, usize>,
    files_of_user: HashMap<u32, usize>,
    /// Poll handles to wake ([`Cm::take_wakeups`]).
    wakeups: Vec<u64>,
    /// Messages for ids of other routers ([`Cm::take_outgoing`]).
    outbox: Vec<Outgoing>,
    /// Messages waiting for a link to the router of their destination
    /// (being dialled), in order, each until its deadline ([`Cm::hold`]).
    held: VecDeque<(Outgoing, Instant)>,
}

/// How long a message waits for a link being dialled before its REQ is
/// UNREACHABLE (as the kernel's REQ out of retries, sooner).
pub const HOLD_FOR_LINK: Duration = Duration::from_secs(10);

/// Where a message for another router went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Sent,
    /// The router serving the destination is known and being dialled:
    /// the message waits ([`Cm::hold`]).
    Dialing,
    /// No router serves it ([`Cm::bounce`]).
    Nowhere,
}

const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

fn err<T>(e: i32) -> Result<T, i32> {
    Err(e)
}

impl Cm {
    pub fn new(limits: CmLimits) -> Cm {
        Cm {
            limits,
            files: HashMap::new(),
            ids: BTreeMap::new(),
            ports: BTreeMap::new(),
            next_handle: 1,
            next_port: *EPHEMERAL.start(),
            psn_seed: 0x5a17,
            ids_of_user: HashMap::new(),
            pending_of_user: HashMap::new(),
            files_of_user: HashMap::new(),
            wakeups: Vec::new(),
            outbox: Vec::new(),
            held: VecDeque::new(),
        }
    }

    /// A file was opened by user `uid`; `Err(EMFILE)` over the limit.
    pub fn open(&mut self, file: FileId, uid: u32) -> Result<(), i32> {
        let n = self.files_of_user.entry(uid).or_default();
        if *n >= self.limits.files_per_user {
            return err(libc::EMFILE);
        }
        *n += 1;
        self.files.insert(
            file,
            File {
                uid,
                events: VecDeque::new(),
                waiters: VecDeque::new(),
                poll_kh: None,
            },
        );
        Ok(())
    }

    /// The file's last descriptor closed (or its process died): its ids
    /// go, their peers are told. Returns the blocked GET_EVENTs to fail.
    pub fn release(&mut self, file: FileId) -> Vec<u64> {
        let handles: Vec<Handle> = self
            .ids
            .iter()
            .filter(|(_, i)| i.file == file)
            .map(|(h, _)| *h)
            .collect();
        for h in handles {
            self.destroy(h);
        }
        let Some(f) = self.files.remove(&file) else {
            return Vec::new();
        };
        if let Some(n) = self.files_of_user.get_mut(&f.uid) {
            *n = n.saturating_sub(1);
        }
        f.waiters.iter().map(|w| w.unique).collect()
    }

    /// The file's uid (who opened it).
    pub fn file_uid(&self, file: FileId) -> Option<u32> {
        self.files.get(&file).map(|f| f.uid)
    }

    /// Whether the file has an event to read (POLLIN); `kh`: a poll
    /// handle to wake when one comes.
    pub fn poll(&mut self, file: FileId, kh: Option<u64>) -> bool {
        let Some(f) = self.files.get_mut(&file) else {
            return false;
        };
        if kh.is_some() {
            f.poll_kh = kh;
        }
        !f.events.is_empty()
    }

    /// Poll handles to wake (FUSE_NOTIFY_POLL).
    pub fn take_wakeups(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.wakeups)
    }

    /// A blocked GET_EVENT was interrupted: true if it was waiting.
    pub fn interrupt(&mut self, unique: u64) -> bool {
        for f in self.files.values_mut() {
            if let Some(p) = f.waiters.iter().position(|w| w.unique == unique) {
                f.waiters.remove(p);
                return true;
            }
        }
        false
    }

    /// Answers blocked GET_EVENTs that have an event now: `write(unique,
    /// response, bytes)` puts an event into its writer's memory. Returns
    /// each answered request with its result.
    pub fn pump(&mut self, write: &mut EventWriter<'_>) -> Vec<(u64, Result<(), i32>)> {
        let mut answered = Vec::new();
        let files: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, f)| !f.events.is_empty() && !f.waiters.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for file in files {
            loop {
                let f = self.files.get_mut(&file).expect("listed");
                if f.events.is_empty() {
                    break;
                }
                let Some(w) = f.waiters.pop_front() else {
                    break;
                };
                let bytes = f.events[0].resp.encode();
                let n = w.out.min(EVENT_RESP);
                match write(w.unique, w.response, &bytes[..n]) {
                    Ok(()) => {
                        let ev = f.events.pop_front().expect("an event");
                        if let Some(i) = self.ids.get_mut(&ev.counts_for) {
                            i.events_reported += 1;
                        }
                        answered.push((w.unique, Ok(())));
                    }
                    Err(e) => answered.push((w.unique, Err(e))),
                }
            }
        }
        answered
    }

    /// Runs one command `data` (header and payload, as written) from
    /// `caller` on `file`; `unique` names the request if it must wait.
    pub fn command(
        &mut self,
        file: FileId,
        caller: &Caller,
        unique: u64,
        nonblock: bool,
        data: &[u8],
        mem: &mut dyn Memory,
    ) -> Outcome {
        match self.command_inner(file, caller, unique, nonblock, data, mem) {
            Ok(true) => Outcome::Blocked,
            Ok(false) => Outcome::Done(Ok(())),
            Err(e) => Outcome::Done(Err(e)),
        }
    }

    fn command_inner(
        &mut self,
        file: FileId,
        caller: &Caller,
        unique: u64,
        nonblock: bool,
        data: &[u8],
        mem: &mut dyn Memory,
    ) -> Result<bool, i32> {
        if data.len() < HDR {
            return err(libc::EINVAL);
        }
        let cmd = u32_at(data, 0);
        let inlen = u16_at(data, 4) as usize;
        let out = u16_at(data, 6) as usize;
        if HDR + inlen != data.len() {
            return err(libc::EINVAL);
        }
        if !self.files.contains_key(&file) {
            return err(libc::EBADF);
        }
        let p = &data[HDR..];
        let need = |n: usize| {
            if p.len() < n {
                err(libc::EINVAL)
            } else {
                Ok(())
            }
        };
        let need_out = |n: usize| if out < n { err(libc::ENOSPC) } else { Ok(()) };
        debug!(
            "rdma_cm: file {file} command {cmd} ({inlen} bytes) by {}",
            caller.tgid
        );
        match cmd {
            CMD_CREATE_ID => {
                need(CREATE_ID_LEN)?;
                need_out(CREATE_ID_RESP)?;
                let (uid, response, ps, qp_type) =
                    (u64_at(p, 0), u64_at(p, 8), u16_at(p, 16), p[18]);
                if !matches!(ps, PS_TCP | PS_UDP | PS_IB | PS_IPOIB) {
                    return err(libc::EINVAL);
                }
                let h = self.create(file, caller, uid, ps, qp_type)?;
                if let Err(e) = mem.write(response, &h.to_ne_bytes()) {
                    self.destroy(h);
                    return err(e);
                }
                Ok(false)
            }
            CMD_DESTROY_ID => {
                need(DESTROY_ID_LEN)?;
                need_out(DESTROY_ID_RESP)?;
                let (response, h) = (u64_at(p, 0), u32_at(p, 8));
                self.own(file, h)?;
                let reported = self.destroy(h);
                mem.write(response, &reported.to_ne_bytes())?;
                Ok(false)
            }
            CMD_BIND_IP => {
                need(BIND_IP_LEN)?;
                let h = u32_at(p, 36);
                self.own(file, h)?;
                let a = parse_addr(&p[8..36])?;
                self.bind(h, caller, a)?;
                Ok(false)
            }
            CMD_BIND => {
                need(BIND_LEN)?;
                let (h, size) = (u32_at(p, 0), u16_at(p, 4) as usize);
                self.own(file, h)?;
                if size > 128 {
                    return err(libc::EINVAL);
                }
                // AF_IB must fail: librdmacm probes it at start-up under its
                // global lock and deadlocks if the bind works.
                let a = parse_addr(&p[8..8 + size])?;
                self.bind(h, caller, a)?;
                Ok(false)
            }
            CMD_RESOLVE_IP => {
                need(RESOLVE_IP_LEN)?;
                let h = u32_at(p, 56);
                self.own(file, h)?;
                let src = &p[0..28];
                let src = if SockAddr::family(src) == 0 {
                    None
                } else {
                    Some(parse_addr(src)?)
                };
                let dst = parse_addr(&p[28..56])?;
                self.resolve_addr(h, caller, src, dst)?;
                Ok(false)
            }
            CMD_RESOLVE_ADDR => {
                need(RESOLVE_ADDR_LEN)?;
                let h = u32_at(p, 0);
                self.own(file, h)?;
                let (ss, ds) = (u16_at(p, 8) as usize, u16_at(p, 10) as usize);
                if ss > 128 || ds > 128 {
                    return err(libc::EINVAL);
                }
                let src = if ss == 0 || SockAddr::family(&p[16..16 + ss]) == 0 {
                    None
                } else {
                    Some(parse_addr(&p[16..16 + ss])?)
                };
                let dst = parse_addr(&p[144..144 + ds])?;
                self.resolve_addr(h, caller, src, dst)?;
                Ok(false)
            }
            CMD_RESOLVE_ROUTE => {
                need(RESOLVE_ROUTE_LEN)?;
                let h = u32_at(p, 0);
                self.own(file, h)?;
                let id = self.ids.get_mut(&h).expect("owned");
                if id.state != State::AddrResolved {
                    return err(libc::EINVAL);
                }
                id.state = State::RouteResolved;
                self.event(h, EV_ROUTE_RESOLVED, 0, ConnParam::default(), 0);
                Ok(false)
            }
            CMD_QUERY_ROUTE => {
                need(QUERY_LEN)?;
                need_out(QUERY_ROUTE_RESP)?;
                let (response, h) = (u64_at(p, 0), u32_at(p, 8));
                self.own(file, h)?;
                let r = self.query_route(h);
                mem.write(response, &r)?;
                Ok(false)
            }
            CMD_QUERY => {
                need(QUERY_LEN)?;
                let (response, h, option) = (u64_at(p, 0), u32_at(p, 8), u32_at(p, 12));
                self.own(file, h)?;
                match option {
                    0 => {
                        need_out(QUERY_ADDR_RESP)?;
                        let r = self.query_addr(h);
                        mem.write(response, &r)?;
                    }
                    1 => {
                        // No SA path records: num_paths 0.
                        need_out(QUERY_PATH_RESP)?;
                        mem.write(response, &[0u8; QUERY_PATH_RESP])?;
                    }
                    _ => return err(libc::ENOSYS),
                }
                Ok(false)
            }
            CMD_LISTEN => {
                need(LISTEN_LEN)?;
                let (h, backlog) = (u32_at(p, 0), u32_at(p, 4) as i32);
                self.own(file, h)?;
                self.listen(h, caller, backlog)?;
                Ok(false)
            }
            CMD_CONNECT => {
                need(CONNECT_LEN)?;
                let h = u32_at(p, 272);
                self.own(file, h)?;
                let param = ConnParam::parse(&p[0..CONN_PARAM_LEN]).ok_or(libc::EINVAL)?;
                self.connect(h, param)?;
                Ok(false)
            }
            CMD_ACCEPT => {
                need(ACCEPT_LEN)?;
                let (uid, h) = (u64_at(p, 0), u32_at(p, 280));
                self.own(file, h)?;
                let param = ConnParam::parse(&p[8..8 + CONN_PARAM_LEN]).ok_or(libc::EINVAL)?;
                self.accept(h, uid, param)?;
                Ok(false)
            }
            CMD_REJECT => {
                need(REJECT_LEN)?;
                let (h, len) = (u32_at(p, 0), p[4] as usize);
                self.own(file, h)?;
                if len > REJ_PRIVATE_DATA {
                    return err(libc::EINVAL);
                }
                self.reject(h, p[8..8 + len].to_vec())?;
                Ok(false)
            }
            CMD_DISCONNECT => {
                need(DISCONNECT_LEN)?;
                let h = u32_at(p, 0);
                self.own(file, h)?;
                self.disconnect(h)?;
                Ok(false)
            }
            CMD_INIT_QP_ATTR => {
                need(INIT_QP_ATTR_LEN)?;
                need_out(QP_ATTR_RESP)?;
                let (response, h, state) = (u64_at(p, 0), u32_at(p, 8), u32_at(p, 12));
                self.own(file, h)?;
                let a = self.init_qp_attr(h, state)?;
                mem.write(response, &a.encode())?;
                Ok(false)
            }
            CMD_GET_EVENT => {
                need(GET_EVENT_LEN)?;
                need_out(EVENT_RESP_MIN)?;
                let response = u64_at(p, 0);
                let f = self.files.get_mut(&file).expect("checked");
                if let Some(ev) = f.events.front() {
                    let bytes = ev.resp.encode();
                    mem.write(response, &bytes[..out.min(EVENT_RESP)])?;
                    let ev = f.events.pop_front().expect("an event");
                    if let Some(i) = self.ids.get_mut(&ev.counts_for) {
                        i.events_reported += 1;
                    }
                    return Ok(false);
                }
                if nonblock {
                    return err(libc::EAGAIN);
                }
                f.waiters.push_back(Waiter {
                    unique,
                    response,
                    out,
                });
                Ok(true)
            }
            CMD_SET_OPTION => {
                need(SET_OPTION_LEN)?;
                let (optval, h, level, name, len) = (
                    u64_at(p, 0),
                    u32_at(p, 8),
                    u32_at(p, 12),
                    u32_at(p, 16),
                    u32_at(p, 20) as usize,
                );
                self.own(file, h)?;
                self.set_option(h, level, name, optval, len, mem)?;
                Ok(false)
            }
            CMD_NOTIFY => {
                need(NOTIFY_LEN)?;
                let h = u32_at(p, 0);
                self.own(file, h)?;
                // An async QP event the library forwards (communication
                // established): the RTU a lost-RTU path waits for.
                if self.ids[&h].state == State::RepSent {
                    self.on_msg(h, End::Here(h), Msg::Rtu);
                }
                Ok(false)
            }
            CMD_MIGRATE_ID => {
                need(MIGRATE_ID_LEN)?;
                need_out(MIGRATE_RESP)?;
                let (response, h) = (u64_at(p, 0), u32_at(p, 8));
                let id = self.ids.get(&h).ok_or(libc::ENOENT)?;
                let from = id.file;
                // The id's file must be one its writer may use: opened by
                // the same user (the plumbing checked that `fd` names an
                // rdma_cm descriptor of the writer).
                if self.files.get(&from).map(|f| f.uid) != Some(caller.uid) && caller.uid != 0 {
                    return err(libc::EINVAL);
                }
                let reported = self.migrate(h, from, file);
                if let Err(e) = mem.write(response, &reported.to_ne_bytes()) {
                    self.migrate(h, file, from);
                    return err(e);
                }
                Ok(false)
            }
            CMD_GET_OPTION | CMD_JOIN_IP_MCAST | CMD_LEAVE_MCAST | CMD_JOIN_MCAST => {
                err(libc::ENOSYS)
            }
            _ => err(libc::EINVAL),
        }
    }

    /// The id must exist (ENOENT) and be the file's (EINVAL).
    fn own(&self, file: FileId, h: Handle) -> Result<(), i32> {
        match self.ids.get(&h) {
            None => err(libc::ENOENT),
            Some(i) if i.file != file => err(libc::EINVAL),
            Some(_) => Ok(()),
        }
    }

    fn create(
        &mut self,
        file: FileId,
        caller: &Caller,
        uid: u64,
        ps: u16,
        qp_type: u8,
    ) -> Result<Handle, i32> {
        let n = self.ids_of_user.entry(caller.uid).or_default();
        if *n >= self.limits.ids_per_user {
            return err(libc::ENOMEM);
        }
        *n += 1;
        let h = self.new_handle();
        self.ids.insert(
            h,
            Id {
                file,
                uid,
                owner_uid: caller.uid,
                ps,
                qp_type,
                state: State::Idle,
                netns: caller.netns,
                gid: caller.gid,
                src: None,
                dst: None,
                port_key: None,
                peer: None,
                peer_gid: [0; 16],
                listener: None,
                backlog: 0,
                pending: 0,
                agreed: Agreed::default(),
                events_reported: 0,
                tos: 0,
                qkey: 0,
            },
        );
        Ok(h)
    }

    fn new_handle(&mut self) -> Handle {
        loop {
            let h = self.next_handle;
            self.next_handle = self.next_handle.wrapping_add(1).max(1);
            if !self.ids.contains_key(&h) {
                return h;
            }
        }
    }

    /// Removes an id: its port, its queued events, its children; its peer
    /// is told (REJ or DREQ). Returns the events it reported.
    fn destroy(&mut self, h: Handle) -> u32 {
        let Some(id) = self.ids.remove(&h) else {
            return 0;
        };
        if let Some(n) = self.ids_of_user.get_mut(&id.owner_uid) {
            *n = n.saturating_sub(1);
        }
        if let Some(k) = id.port_key {
            self.unbind_port(k, h);
        }
        if let Some(f) = self.files.get_mut(&id.file) {
            f.events.retain(|e| e.counts_for != h && e.resp.id != h);
        }
        // A child not yet answered: its listener has one less pending.
        if id.state == State::ReqRcvd {
            self.unpend(id.listener, id.owner_uid);
        }
        if let Some(peer) = id.peer {
            let me = (id.gid, h);
            let rej = |reason| Msg::Rej {
                reason,
                private_data: Vec::new(),
            };
            match id.state {
                State::ReqSent => self.send(me, peer, rej(REJ_TIMEOUT)),
                State::ReqRcvd | State::RepSent => self.send(me, peer, rej(REJ_CONSUMER_DEFINED)),
                State::RepRcvd | State::Established => self.send(me, peer, Msg::Dreq),
                _ => {}
            }
        }
        // A listener's children that are still its queued requests go too.
        if id.state == State::Listening {
            let children: Vec<Handle> = self
                .ids
                .iter()
                .filter(|(_, c)| c.listener == Some(h) && c.state == State::ReqRcvd)
                .map(|(k, _)| *k)
                .collect();
            for c in children {
                self.destroy(c);
            }
        }
        id.events_reported
    }

    fn unpend(&mut self, listener: Option<Handle>, uid: u32) {
        if let Some(l) = listener.and_then(|l| self.ids.get_mut(&l)) {
            l.pending = l.pending.saturating_sub(1);
        }
        if let Some(n) = self.pending_of_user.get_mut(&uid) {
            *n = n.saturating_sub(1);
        }
    }

    fn unbind_port(&mut self, k: PortKey, h: Handle) {
        if let Some(v) = self.ports.get_mut(&k) {
            v.retain(|(_, x)| *x != h);
            if v.is_empty() {
                self.ports.remove(&k);
            }
        }
    }

    fn bind(&mut self, h: Handle, caller: &Caller, a: SockAddr) -> Result<(), i32> {
        let id = &self.ids[&h];
        if id.state != State::Idle {
            return err(libc::EINVAL);
        }
        if !a.ip.is_unspecified() && !caller.is_local(a.ip) {
            return err(libc::EADDRNOTAVAIL);
        }
        let (netns, ps) = (id.netns, id.ps);
        let port = if a.port == 0 {
            self.ephemeral(netns, ps).ok_or(libc::EADDRINUSE)?
        } else {
            let k = PortKey {
                netns,
                ps,
                port: a.port,
            };
            let clash = self.ports.get(&k).is_some_and(|v| {
                v.iter()
                    .any(|(ip, _)| ip.is_unspecified() || a.ip.is_unspecified() || *ip == a.ip)
            });
            if clash {
                return err(libc::EADDRINUSE);
            }
            a.port
        };
        let k = PortKey { netns, ps, port };
        self.ports.entry(k).or_default().push((a.ip, h));
        let id = self.ids.get_mut(&h).expect("exists");
        id.port_key = Some(k);
        id.src = Some(SockAddr { port, ..a });
        id.state = State::Bound;
        Ok(())
    }

    fn ephemeral(&mut self, netns: u64, ps: u16) -> Option<u16> {
        let span = (*EPHEMERAL.end() - *EPHEMERAL.start()) as u32 + 1;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p >= *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                p + 1
            };
            if !self.ports.contains_key(&PortKey { netns, ps, port: p }) {
                return Some(p);
            }
        }
        None
    }

    fn resolve_addr(
        &mut self,
        h: Handle,
        caller: &Caller,
        src: Option<SockAddr>,
        dst: SockAddr,
    ) -> Result<(), i32> {
        if dst.ip.is_unspecified() || dst.ip.is_multicast() || dst.ip.is_broadcast() {
            return err(libc::EINVAL);
        }
        let state = self.ids[&h].state;
        match state {
            State::Idle => {
                let src = src.unwrap_or(SockAddr {
                    v6: dst.v6,
                    ip: if dst.ip.is_loopback() {
                        dst.ip
                    } else {
                        caller.own_ip()
                    },
                    port: 0,
                });
                self.bind(h, caller, src)?;
            }
            // Once resolved, again is EINVAL (as the kernel's): each
            // resolution queues an event, and the queue stays bounded.
            State::Bound => {}
            _ => return err(libc::EINVAL),
        }
        let id = self.ids.get_mut(&h).expect("exists");
        // The source must be a concrete address once resolved.
        if let Some(s) = id.src.as_mut() {
            if s.ip.is_unspecified() {
                s.ip = if dst.ip.is_loopback() {
                    dst.ip
                } else {
                    caller.own_ip()
                };
            }
        }
        id.peer_gid = if caller.is_local(dst.ip) {
            id.gid
        } else {
            flowverbs_verbs::identity::gid_from_ipv4(dst.ip)
        };
        id.dst = Some(dst);
        id.state = State::AddrResolved;
        self.event(h, EV_ADDR_RESOLVED, 0, ConnParam::default(), 0);
        Ok(())
    }

    fn listen(&mut self, h: Handle, caller: &Caller, backlog: i32) -> Result<(), i32> {
        let state = self.ids[&h].state;
        match state {
            State::Idle => self.bind(h, caller, SockAddr::any())?,
            State::Bound => {}
            State::Listening => {}
            _ => return err(libc::EINVAL),
        }
        let max = self.limits.max_backlog;
        let id = self.ids.get_mut(&h).expect("exists");
        id.backlog = if backlog <= 0 {
            max
        } else {
            (backlog as usize).min(max)
        };
        id.state = State::Listening;
        Ok(())
    }

    fn psn(&mut self, h: Handle) -> u32 {
        self.psn_seed = self
            .psn_seed
            .wrapping_mul(1_103_515_245)
            .wrapping_add(12345 ^ h);
        self.psn_seed & 0x00ff_ffff
    }

    fn connect(&mut self, h: Handle, param: ConnParam) -> Result<(), i32> {
        let param = param.as_sent();
        if param.private_data.len() > self.req_private_data(h) {
            return err(libc::EINVAL);
        }
        let id = &self.ids[&h];
        if id.state != State::RouteResolved {
            return err(libc::EINVAL);
        }
        let (src, dst, gid, peer_gid, ps) = (
            id.src.expect("bound"),
            id.dst.expect("resolved"),
            id.gid,
            id.peer_gid,
            id.ps,
        );
        let psn = self.psn(h);
        let id = self.ids.get_mut(&h).expect("exists");
        id.agreed.qpn = param.qp_num;
        id.agreed.psn = psn;
        id.agreed.responder_resources = param.responder_resources;
        id.agreed.initiator_depth = param.initiator_depth;
        id.agreed.retry_count = param.retry_count;
        id.agreed.rnr_retry_count = param.rnr_retry_count;
        id.state = State::ReqSent;
        let req = Msg::Req {
            gid,
            src,
            dst,
            ps,
            param,
            psn,
        };
        // Where the REQ goes: a listener of the destination GID's
        // namespace on this router; else the router serving that GID
        // (the plumbing bounces it if none does: [`Cm::bounce`]).
        match self.listener_of(peer_gid, ps, dst) {
            Some(l) => self.on_msg(l, End::Here(h), req),
            None => {
                let to = End::There(peer_gid, 0);
                self.ids.get_mut(&h).expect("exists").peer = Some(to);
                self.send((gid, h), to, req);
            }
        }
        Ok(())
    }

    /// The id listening at `dst` (port space `ps`) in the namespace of
    /// `gid`, if any.
    fn listener_of(&self, gid: Gid, ps: u16, dst: SockAddr) -> Option<Handle> {
        self.ids
            .iter()
            .find(|(_, l)| {
                l.state == State::Listening
                    && l.ps == ps
                    && l.gid == gid
                    && l.src.is_some_and(|s| {
                        s.port == dst.port && (s.ip.is_unspecified() || s.ip == dst.ip)
                    })
            })
            .map(|(k, _)| *k)
    }

    /// Sends `msg` from id `from` (its GID and handle: it may be gone
    /// already) to `to`: at once to an id here, through the outbox to an
    /// id of another router.
    fn send(&mut self, from: (Gid, Handle), to: End, msg: Msg) {
        match to {
            End::Here(t) => self.on_msg(t, End::Here(from.1), msg),
            End::There(dst, t) => self.outbox.push(Outgoing {
                src: from.0,
                dst,
                frame: Frame {
                    to: t,
                    from: from.1,
                    msg,
                },
            }),
        }
    }

    /// What a REQ (a SIDR REQ for UD) of id `h` carries of private data.
    fn req_private_data(&self, h: Handle) -> usize {
        match self.ids.get(&h).map(|i| (i.ps, i.qp_type == QPT_UD)) {
            Some((PS_IB, false)) => REQ_PRIVATE_DATA,
            Some((PS_IB, true)) => SIDR_REQ_PRIVATE_DATA,
            Some((_, true)) => SIDR_REQ_PRIVATE_DATA_IP,
            _ => REQ_PRIVATE_DATA_IP,
        }
    }

    /// ACCEPT of a UD child: the SIDR REP (the server's QP and qkey) goes
    /// to the requester; no connection remains between the two (no
    /// ESTABLISHED here, no DREQ later). A requester that went away
    /// meanwhile gets nothing (a SIDR REP into the void, as the kernel's).
    fn accept_ud(&mut self, h: Handle, uid: u64, param: ConnParam) -> Result<(), i32> {
        if param.private_data.len() > SIDR_REP_PRIVATE_DATA {
            return err(libc::EINVAL);
        }
        let id = &self.ids[&h];
        // The qkey is the id's once set (the QP was moved to INIT with
        // it); another is EINVAL, as the kernel's.
        let qkey = match (id.qkey, param.qkey) {
            (0, 0) => RDMA_UDP_QKEY,
            (0, q) => q,
            (k, 0) => k,
            (k, q) if k == q => k,
            _ => return err(libc::EINVAL),
        };
        let (listener, owner, peer, gid) = (id.listener, id.owner_uid, id.peer, id.gid);
        self.unpend(listener, owner);
        let id = self.ids.get_mut(&h).expect("exists");
        id.uid = uid;
        id.qkey = qkey;
        id.agreed.qpn = param.qp_num;
        id.state = State::Established;
        id.peer = None;
        if let Some(p) = peer {
            self.send(
                (gid, h),
                p,
                Msg::SidrRep {
                    qpn: param.qp_num,
                    qkey,
                    gid,
                    private_data: param.private_data,
                },
            );
        }
        Ok(())
    }

    fn accept(&mut self, h: Handle, uid: u64, param: ConnParam) -> Result<(), i32> {
        let param = param.as_sent();
        let state = self.ids[&h].state;
        match state {
            State::ReqRcvd if self.ids[&h].qp_type == QPT_UD => self.accept_ud(h, uid, param),
            State::ReqRcvd => {
                if param.private_data.len() > REP_PRIVATE_DATA {
                    return err(libc::EINVAL);
                }
                let (listener, owner) = (self.ids[&h].listener, self.ids[&h].owner_uid);
                self.unpend(listener, owner);
                let id = self.ids.get_mut(&h).expect("exists");
                // The PSN was chosen with the child: the library moves the
                // QP to RTS before it writes ACCEPT.
                let psn = id.agreed.psn;
                id.uid = uid;
                id.agreed.qpn = param.qp_num;
                id.agreed.responder_resources = param.responder_resources;
                id.agreed.initiator_depth = param.initiator_depth;
                id.agreed.rnr_retry_count = param.rnr_retry_count;
                id.state = State::RepSent;
                let (peer, gid) = (id.peer, id.gid);
                match peer {
                    Some(End::Here(p)) if !self.ids.contains_key(&p) => {}
                    Some(p) => {
                        self.send((gid, h), p, Msg::Rep { param, psn });
                        return Ok(());
                    }
                    None => {}
                }
                // The requester went away meanwhile.
                let id = self.ids.get_mut(&h).expect("exists");
                id.state = State::Done;
                self.event(h, EV_REJECTED, REJ_TIMEOUT, ConnParam::default(), 0);
                Ok(())
            }
            State::RepRcvd => {
                let id = self.ids.get_mut(&h).expect("exists");
                id.state = State::Established;
                if let Some(p) = id.peer {
                    let gid = id.gid;
                    self.send((gid, h), p, Msg::Rtu);
                }
                Ok(())
            }
            _ => err(libc::EINVAL),
        }
    }

    fn reject(&mut self, h: Handle, private_data: Vec<u8>) -> Result<(), i32> {
        let id = &self.ids[&h];
        if !matches!(id.state, State::ReqRcvd | State::RepRcvd) {
            return err(libc::EINVAL);
        }
        // A UD child's refusal is a SIDR REP, which carries less.
        if id.qp_type == QPT_UD && private_data.len() > SIDR_REP_PRIVATE_DATA {
            return err(libc::EINVAL);
        }
        let (listener, owner, peer, state, gid) =
            (id.listener, id.owner_uid, id.peer, id.state, id.gid);
        if state == State::ReqRcvd {
            self.unpend(listener, owner);
        }
        self.ids.get_mut(&h).expect("exists").state = State::Done;
        if let Some(p) = peer {
            self.send(
                (gid, h),
                p,
                Msg::Rej {
                    reason: REJ_CONSUMER_DEFINED,
                    private_data,
                },
            );
        }
        Ok(())
    }

    fn disconnect(&mut self, h: Handle) -> Result<(), i32> {
        let id = &self.ids[&h];
        if id.qp_type == QPT_UD {
            // A UD id has no connection to end: 0 once it sent or
            // answered a SIDR REQ, no event (the kernel's answer); EINVAL
            // before.
            return match id.state {
                State::ReqSent | State::Established | State::Done => Ok(()),
                _ => err(libc::EINVAL),
            };
        }
        match id.state {
            State::Established | State::RepSent | State::RepRcvd => {
                let (peer, gid) = (id.peer, id.gid);
                self.ids.get_mut(&h).expect("exists").state = State::Done;
                // The DREP comes back at once: this side is disconnected
                // too.
                self.event(h, EV_DISCONNECTED, 0, ConnParam::default(), 0);
                if let Some(p) = peer {
                    self.send((gid, h), p, Msg::Dreq);
                }
                Ok(())
            }
            // Already disconnected by the peer: the DREP is implied.
            State::Done => Ok(()),
            _ => err(libc::EINVAL),
        }
    }

    fn set_option(
        &mut self,
        h: Handle,
        level: u32,
        name: u32,
        optval: u64,
        len: usize,
        mem: &mut dyn Memory,
    ) -> Result<(), i32> {
        if len > 4096 {
            return err(libc::EINVAL);
        }
        let mut v = vec![0u8; len];
        mem.read(optval, &mut v)?;
        match (level, name) {
            // TOS (u8), ACK_TIMEOUT (u8).
            (0, 0) | (0, 3) => {
                if len != 1 {
                    return err(libc::EINVAL);
                }
                if name == 0 {
                    self.ids.get_mut(&h).expect("exists").tos = v[0];
                }
                Ok(())
            }
            // REUSEADDR, AFONLY (int).
            (0, 1) | (0, 2) => {
                if len != 4 {
                    return err(libc::EINVAL);
                }
                Ok(())
            }
            // IB path records: accepted, not used (fv0 has one path).
            (1, 1) => {
                if len == 0 || !len.is_multiple_of(72) {
                    return err(libc::EINVAL);
                }
                // As RESOLVE_ROUTE: librdmacm waits for ROUTE_RESOLVED.
                let id = self.ids.get_mut(&h).expect("exists");
                if id.state != State::AddrResolved {
                    return err(libc::EINVAL);
                }
                id.state = State::RouteResolved;
                self.event(h, EV_ROUTE_RESOLVED, 0, ConnParam::default(), 0);
                Ok(())
            }
            _ => err(libc::ENOSYS),
        }
    }

    fn migrate(&mut self, h: Handle, from: FileId, to: FileId) -> u32 {
        let id = self.ids.get_mut(&h).expect("exists");
        id.file = to;
        let reported = id.events_reported;
        // Queued events of the id move with it.
        let moved: Vec<Event> = match self.files.get_mut(&from) {
            Some(f) => {
                let (m, keep): (Vec<Event>, Vec<Event>) = f
                    .events
                    .drain(..)
                    .partition(|e| e.counts_for == h || e.resp.id == h);
                f.events = keep.into();
                m
            }
            None => Vec::new(),
        };
        if let Some(f) = self.files.get_mut(&to) {
            f.events.extend(moved);
            if !f.events.is_empty() {
                if let Some(kh) = f.poll_kh.take() {
                    self.wakeups.push(kh);
                }
            }
        }
        reported
    }

    fn init_qp_attr(&mut self, h: Handle, state: u32) -> Result<QpAttr, i32> {
        let id = self.ids.get_mut(&h).expect("owned");
        if id.qp_type == QPT_UD && state == QPS_INIT && id.qkey == 0 {
            // The id's qkey from now on (what ACCEPT's SIDR REP reports).
            id.qkey = RDMA_UDP_QKEY;
        }
        let id = &self.ids[&h];
        let connected = matches!(
            id.state,
            State::RepSent | State::RepRcvd | State::Established | State::ReqRcvd
        );
        let ud = id.qp_type == QPT_UD;
        let a = &id.agreed;
        let mut q = QpAttr {
            state,
            port_num: 1,
            ..QpAttr::default()
        };
        match state {
            QPS_INIT => {
                q.mask = QP_STATE | QP_PKEY_INDEX | QP_PORT;
                if ud {
                    q.mask |= QP_QKEY;
                    q.qkey = id.qkey;
                } else {
                    q.mask |= QP_ACCESS_FLAGS;
                    q.access = ACCESS_REMOTE_WRITE;
                    if connected && a.responder_resources > 0 {
                        q.access |= ACCESS_REMOTE_READ | ACCESS_REMOTE_ATOMIC;
                    }
                }
            }
            QPS_RTR if ud => q.mask = QP_STATE,
            QPS_RTS if ud => {
                q.mask = QP_STATE | QP_SQ_PSN;
            }
            QPS_RTR if connected => {
                q.mask = QP_STATE
                    | QP_AV
                    | QP_PATH_MTU
                    | abi::QP_DEST_QPN
                    | QP_RQ_PSN
                    | QP_MAX_DEST_RD_ATOMIC
                    | QP_MIN_RNR_TIMER;
                q.path_mtu = MTU_1024;
                q.dest_qp_num = a.peer_qpn;
                q.rq_psn = a.peer_psn;
                q.max_dest_rd_atomic = a.responder_resources;
                q.min_rnr_timer = 12;
                q.dgid = id.peer_gid;
                q.hop_limit = 64;
                q.traffic_class = id.tos;
                q.is_global = true;
            }
            QPS_RTS if connected => {
                q.mask = QP_STATE
                    | QP_TIMEOUT
                    | QP_RETRY_CNT
                    | QP_RNR_RETRY
                    | QP_SQ_PSN
                    | QP_MAX_QP_RD_ATOMIC;
                q.timeout = 18;
                q.retry_cnt = a.retry_count;
                q.rnr_retry = a.rnr_retry_count;
                q.sq_psn = a.psn;
                q.max_rd_atomic = a.initiator_depth;
            }
            _ => return err(libc::EINVAL),
        }
        Ok(q)
    }

    /// QUERY_ROUTE's answer.
    fn query_route(&self, h: Handle) -> [u8; QUERY_ROUTE_RESP] {
        let id = &self.ids[&h];
        let mut r = [0u8; QUERY_ROUTE_RESP];
        // Bound to an address (not the wildcard): fv0 is the device.
        let on_device = id.src.is_some_and(|s| !s.ip.is_unspecified());
        if on_device {
            let ip =
                flowverbs_verbs::identity::ipv4_from_gid(&id.gid).unwrap_or(Ipv4Addr::LOCALHOST);
            let guid = flowverbs_verbs::identity::node_guid_from_ipv4(ip);
            r[0..8].copy_from_slice(&guid.to_be_bytes());
            let dgid = if id.dst.is_some() {
                id.peer_gid
            } else {
                [0; 16]
            };
            path_rec(&id.gid, &dgid, &mut r[8..72]);
            r[196] = 1;
        }
        if let Some(s) = id.src {
            s.write(&mut r[136..164]);
        }
        if let Some(d) = id.dst {
            d.write(&mut r[164..192]);
        }
        let routed = matches!(
            id.state,
            State::RouteResolved
                | State::ReqSent
                | State::ReqRcvd
                | State::RepSent
                | State::RepRcvd
                | State::Established
        );
        put_u32(&mut r, 192, routed as u32);
        put_u32(&mut r, 200, u32::MAX); // ibdev_index: match by GUID
        r
    }

    /// QUERY (address)'s answer.
    fn query_addr(&self, h: Handle) -> [u8; QUERY_ADDR_RESP] {
        let id = &self.ids[&h];
        let mut r = [0u8; QUERY_ADDR_RESP];
        if id.src.is_some_and(|s| !s.ip.is_unspecified()) {
            let ip =
                flowverbs_verbs::identity::ipv4_from_gid(&id.gid).unwrap_or(Ipv4Addr::LOCALHOST);
            let guid = flowverbs_verbs::identity::node_guid_from_ipv4(ip);
            r[0..8].copy_from_slice(&guid.to_be_bytes());
            r[8] = 1;
        }
        put_u16(&mut r, 10, 0xffff);
        if let Some(s) = id.src {
            let n = s.write(&mut r[16..144]);
            put_u16(&mut r, 12, n as u16);
        }
        if let Some(d) = id.dst {
            let n = d.write(&mut r[144..272]);
            put_u16(&mut r, 14, n as u16);
        }
        put_u32(&mut r, 272, u32::MAX);
        r
    }

    /// Queues an event of id `h` on its file (dropped while the id is a
    /// child not yet accepted: the kernel hides those too).
    fn event(&mut self, h: Handle, event: u32, status: i32, conn: ConnParam, pad: usize) {
        self.emit(h, event, status, conn, None, pad);
    }

    /// A UD id's event: its parameters are `ud`.
    fn event_ud(&mut self, h: Handle, event: u32, status: i32, ud: UdParam, pad: usize) {
        self.emit(h, event, status, ConnParam::default(), Some(ud), pad);
    }

    fn emit(
        &mut self,
        h: Handle,
        event: u32,
        status: i32,
        conn: ConnParam,
        ud: Option<UdParam>,
        pad: usize,
    ) {
        let Some(id) = self.ids.get(&h) else {
            return;
        };
        if id.uid == 0 && id.listener.is_some() {
            debug!("rdma_cm: event {event} of id {h} hidden (not accepted)");
            return;
        }
        let resp = EventResp {
            uid: id.uid,
            id: h,
            event,
            status,
            conn,
            ud,
            pad,
        };
        let file = id.file;
        self.queue(
            file,
            Event {
                resp,
                counts_for: h,
            },
        );
    }

    fn queue(&mut self, file: FileId, ev: Event) {
        if let Some(f) = self.files.get_mut(&file) {
            f.events.push_back(ev);
            if let Some(kh) = f.poll_kh.take() {
                self.wakeups.push(kh);
            }
        }
    }

    /// A CM message from `from` arrives at id `to`. One from another
    /// router counts only if it comes from the id's counterpart there
    /// (or, while a REQ waits for its first answer, from the router it
    /// went to); a REQ only if `to` listens.
    fn on_msg(&mut self, to: Handle, from: End, msg: Msg) {
        let Some(id) = self.ids.get(&to) else {
            return;
        };
        let state = id.state;
        let answers = match (from, id.peer) {
            (End::Here(_), _) => true,
            (End::There(g, f), Some(End::There(pg, p))) => {
                g == pg && (f == p || (p == 0 && state == State::ReqSent))
            }
            (End::There(..), _) => matches!(msg, Msg::Req { .. }) && state == State::Listening,
        };
        if !answers {
            debug!("rdma_cm: id {to} in {state:?}: {msg:?} from {from:?}, not its peer; dropped");
            return;
        }
        match msg {
            Msg::Req {
                gid,
                src,
                dst,
                ps,
                param,
                psn,
            } => self.on_req(to, from, gid, src, dst, ps, param, psn),
            Msg::Rep { param, psn } if state == State::ReqSent => {
                let id = self.ids.get_mut(&to).expect("exists");
                id.peer = Some(from);
                id.agreed.peer_qpn = param.qp_num;
                id.agreed.peer_psn = psn;
                // What the peer serves bounds what this side may ask.
                id.agreed.initiator_depth =
                    id.agreed.initiator_depth.min(param.responder_resources);
                id.state = State::RepRcvd;
                let conn = param.as_received();
                self.event(to, EV_CONNECT_RESPONSE, 0, conn, REP_PRIVATE_DATA);
            }
            Msg::SidrRep {
                qpn,
                qkey,
                gid,
                private_data,
            } if state == State::ReqSent => {
                let id = self.ids.get_mut(&to).expect("exists");
                id.state = State::Established;
                id.peer = None;
                id.agreed.peer_qpn = qpn;
                let ud = UdParam {
                    qp_num: qpn,
                    qkey,
                    has_ah: true,
                    dgid: gid,
                    hop_limit: 64,
                    traffic_class: id.tos,
                    private_data,
                };
                self.event_ud(to, EV_ESTABLISHED, 0, ud, SIDR_REP_PRIVATE_DATA);
            }
            // A UD requester refused: UNREACHABLE with the SIDR status
            // (no listener, or its server refused or went away).
            Msg::Rej {
                reason,
                private_data,
            } if state == State::ReqSent && id.qp_type == QPT_UD => {
                let id = self.ids.get_mut(&to).expect("exists");
                id.state = State::Done;
                id.peer = None;
                let status = if reason == REJ_INVALID_SERVICE_ID {
                    SIDR_UNSUPPORTED
                } else {
                    SIDR_REJECT
                };
                let ud = UdParam {
                    private_data,
                    ..UdParam::default()
                };
                self.event_ud(to, EV_UNREACHABLE, status, ud, SIDR_REP_PRIVATE_DATA);
            }
            Msg::Rtu if state == State::RepSent => {
                let id = self.ids.get_mut(&to).expect("exists");
                id.state = State::Established;
                let conn = ConnParam {
                    qp_num: id.agreed.peer_qpn,
                    responder_resources: id.agreed.responder_resources,
                    initiator_depth: id.agreed.initiator_depth,
                    ..ConnParam::default()
                };
                self.event(to, EV_ESTABLISHED, 0, conn, 0);
            }
            Msg::Rej {
                reason,
                private_data,
            } if matches!(state, State::ReqSent | State::RepSent | State::ReqRcvd) => {
                let (listener, owner) = (id.listener, id.owner_uid);
                if state == State::ReqRcvd {
                    self.unpend(listener, owner);
                }
                let id = self.ids.get_mut(&to).expect("exists");
                id.state = State::Done;
                id.peer = None;
                let conn = ConnParam {
                    private_data,
                    ..ConnParam::default()
                };
                self.event(to, EV_REJECTED, reason, conn, REJ_PRIVATE_DATA);
            }
            Msg::Dreq if matches!(state, State::Established | State::RepRcvd | State::RepSent) => {
                let id = self.ids.get_mut(&to).expect("exists");
                id.state = State::Done;
                id.peer = None;
                self.event(to, EV_DISCONNECTED, 0, ConnParam::default(), 0);
            }
            other => debug!("rdma_cm: id {to} in {state:?} drops {other:?}"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_req(
        &mut self,
        listener: Handle,
        from: End,
        gid: [u8; 16],
        src: SockAddr,
        dst: SockAddr,
        ps: u16,
        param: ConnParam,
        psn: u32,
    ) {
        let l = &self.ids[&listener];
        let (file, owner, lgid, lnetns, luid, lsrc, qp_type) =
            (l.file, l.owner_uid, l.gid, l.netns, l.uid, l.src, l.qp_type);
        let full = l.pending >= l.backlog
            || self.pending_of_user.get(&owner).copied().unwrap_or(0)
                >= self.limits.pending_per_user
            || self.ids_of_user.get(&owner).copied().unwrap_or(0) >= self.limits.ids_per_user;
        if full {
            debug!("rdma_cm: listener {listener} full; rejecting {from:?}");
            self.send(
                (lgid, listener),
                from,
                Msg::Rej {
                    reason: REJ_CONSUMER_DEFINED,
                    private_data: Vec::new(),
                },
            );
            return;
        }
        *self.ids_of_user.entry(owner).or_default() += 1;
        *self.pending_of_user.entry(owner).or_default() += 1;
        let h = self.new_handle();
        let own_psn = self.psn(h);
        let local = SockAddr {
            v6: lsrc.is_some_and(|s| s.v6),
            ip: dst.ip,
            port: dst.port,
        };
        self.ids.insert(
            h,
            Id {
                file,
                uid: 0,
                owner_uid: owner,
                ps,
                qp_type,
                state: State::ReqRcvd,
                netns: lnetns,
                gid: lgid,
                src: Some(local),
                dst: Some(src),
                port_key: None,
                peer: Some(from),
                peer_gid: gid,
                listener: Some(listener),
                backlog: 0,
                pending: 0,
                agreed: Agreed {
                    peer_qpn: param.qp_num,
                    peer_psn: psn,
                    psn: own_psn,
                    responder_resources: param.initiator_depth,
                    initiator_depth: param.responder_resources,
                    retry_count: param.retry_count,
                    rnr_retry_count: param.rnr_retry_count,
                    ..Agreed::default()
                },
                events_reported: 0,
                tos: 0,
                qkey: 0,
            },
        );
        self.ids.get_mut(&listener).expect("exists").pending += 1;
        // The requester knows its child from now on: its destroy or death
        // withdraws the request (a REJ to the child). One of another
        // router learns it from the answer, and withdraws to handle 0
        // meanwhile ([`Cm::on_link`] finds the child).
        if let End::Here(r) = from {
            if let Some(r) = self.ids.get_mut(&r) {
                r.peer = Some(End::Here(h));
            }
        }
        let ud = qp_type == QPT_UD;
        let (conn, udp) = if ud {
            let u = UdParam {
                private_data: param.private_data.clone(),
                ..UdParam::default()
            };
            (ConnParam::default(), Some(u))
        } else {
            (param.as_received(), None)
        };
        let pad = match (ps, ud) {
            (PS_IB, false) => REQ_PRIVATE_DATA,
            (PS_IB, true) => SIDR_REQ_PRIVATE_DATA,
            (_, true) => SIDR_REQ_PRIVATE_DATA_IP,
            _ => REQ_PRIVATE_DATA_IP,
        };
        let resp = EventResp {
            uid: luid,
            id: h,
            event: EV_CONNECT_REQUEST,
            status: 0,
            conn,
            ud: udp,
            pad,
        };
        self.queue(
            file,
            Event {
                resp,
                counts_for: listener,
            },
        );
    }

    /// Messages for ids of other routers, in the order they were sent.
    pub fn take_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }

    pub fn has_outgoing(&self) -> bool {
        !self.outbox.is_empty() || !self.held.is_empty()
    }

    /// Sends every message for another router through `send`, in order:
    /// first those held, then the outbox. A message whose router is being
    /// dialled is held until `now` + [`HOLD_FOR_LINK`], and so is every
    /// later one to the same GID (their order stays); one held past its
    /// deadline fails its REQ (UNREACHABLE, -ETIMEDOUT); one no router
    /// takes is bounced.
    pub fn flush_outgoing(&mut self, now: Instant, send: &mut dyn FnMut(&Outgoing) -> Route) {
        let mut queue = std::mem::take(&mut self.held);
        queue.extend(
            std::mem::take(&mut self.outbox)
                .into_iter()
                .map(|o| (o, now + HOLD_FOR_LINK)),
        );
        let mut waiting: BTreeSet<Gid> = BTreeSet::new();
        for (out, until) in queue {
            if now >= until {
                self.undelivered(out);
                continue;
            }
            if waiting.contains(&out.dst) {
                self.held.push_back((out, until));
                continue;
            }
            match send(&out) {
                Route::Sent => {}
                Route::Dialing => {
                    waiting.insert(out.dst);
                    self.held.push_back((out, until));
                }
                Route::Nowhere => self.bounce(out),
            }
        }
    }

    /// When a held message's deadline comes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.held.iter().map(|(_, until)| *until).min()
    }

    /// A message that waited too long for its link: a REQ whose requester
    /// still waits is UNREACHABLE (-ETIMEDOUT); others go nowhere (their
    /// ids hear of a lost router from [`Cm::peers_lost`]).
    fn undelivered(&mut self, out: Outgoing) {
        if let Some(from) = self.requester_waiting(&out) {
            self.unreachable(from);
        }
    }

    /// No other router took `out`: its destination GID is this router's
    /// own (and no id listens there), or no router that is up serves it
    /// (yet: a server's router serves its GID once it opens fv0). A REQ's
    /// requester is refused as one to a port no one listens on (REJECTED
    /// with status 8; for UD, UNREACHABLE with SIDR status 1), which a
    /// client may try again. Other messages go nowhere (their ids hear
    /// of a lost router from [`Cm::peers_lost`]).
    pub fn bounce(&mut self, out: Outgoing) {
        if let Some(from) = self.requester_waiting(&out) {
            let rej = Msg::Rej {
                reason: REJ_INVALID_SERVICE_ID,
                private_data: Vec::new(),
            };
            self.on_msg(from, End::Here(from), rej);
        }
    }

    /// If `out` is a REQ whose requester still waits for its first answer:
    /// that requester.
    fn requester_waiting(&self, out: &Outgoing) -> Option<Handle> {
        let Frame {
            to: 0,
            from,
            msg: Msg::Req { .. },
        } = out.frame
        else {
            return None;
        };
        self.ids
            .get(&from)
            .is_some_and(|i| i.state == State::ReqSent && i.peer == Some(End::There(out.dst, 0)))
            .then_some(from)
    }

    /// A REQ that no one answered: UNREACHABLE with -ETIMEDOUT, as the
    /// kernel reports a REQ (or SIDR REQ) out of retries.
    fn unreachable(&mut self, h: Handle) {
        let Some(id) = self.ids.get_mut(&h) else {
            return;
        };
        id.state = State::Done;
        id.peer = None;
        if id.qp_type == QPT_UD {
            let ud = UdParam::default();
            self.event_ud(
                h,
                EV_UNREACHABLE,
                -libc::ETIMEDOUT,
                ud,
                SIDR_REP_PRIVATE_DATA,
            );
        } else {
            self.event(h, EV_UNREACHABLE, -libc::ETIMEDOUT, ConnParam::default(), 0);
        }
    }

    /// A frame from the router serving `src` for GID `dst` of this router
    /// (the link checked both; [`super::link::decode`] checked the
    /// frame). A REQ goes to whoever listens at its destination in the
    /// namespace of `dst` (none: REJ with status 8 back); a withdrawal
    /// (to 0) to the id that answers its sender; anything else to its id
    /// if that id's GID is `dst` and its peer the sender. A REP for an id
    /// that is gone is refused, so that its sender does not wait.
    pub fn on_link(&mut self, src: Gid, dst: Gid, frame: Frame) {
        let from = End::There(src, frame.from);
        if let Msg::Req {
            src: a,
            dst: b,
            ps,
            param,
            psn,
            ..
        } = frame.msg
        {
            // The requester's GID is the frame's source, whatever it says.
            let req = Msg::Req {
                gid: src,
                src: a,
                dst: b,
                ps,
                param,
                psn,
            };
            match self.listener_of(dst, ps, b) {
                Some(l) => self.on_msg(l, from, req),
                None => {
                    let rej = Msg::Rej {
                        reason: REJ_INVALID_SERVICE_ID,
                        private_data: Vec::new(),
                    };
                    self.send((dst, 0), from, rej);
                }
            }
            return;
        }
        let to = if frame.to == 0 {
            self.ids
                .iter()
                .find(|(_, i)| i.gid == dst && i.peer == Some(from))
                .map(|(h, _)| *h)
        } else {
            Some(frame.to).filter(|h| self.ids.get(h).is_some_and(|i| i.gid == dst))
        };
        match (to, frame.msg) {
            (Some(to), msg) => self.on_msg(to, from, msg),
            (None, Msg::Rep { .. }) => {
                let rej = Msg::Rej {
                    reason: REJ_TIMEOUT,
                    private_data: Vec::new(),
                };
                self.send((dst, frame.to), from, rej);
            }
            (None, msg) => debug!("rdma_cm: {msg:?} from {from:?} for no id; dropped"),
        }
    }

    /// The routers serving `gids` went away: every id connected (or
    /// connecting) to an id of theirs ends as if its peer had: a REQ
    /// unanswered is UNREACHABLE (-ETIMEDOUT), a request received is
    /// withdrawn, a connection is DISCONNECTED.
    pub fn peers_lost(&mut self, gids: &[Gid]) {
        let hit: Vec<(Handle, End, State)> = self
            .ids
            .iter()
            .filter_map(|(h, i)| match i.peer {
                Some(p @ End::There(g, _)) if gids.contains(&g) => Some((*h, p, i.state)),
                _ => None,
            })
            .collect();
        for (h, peer, state) in hit {
            match state {
                State::ReqSent => self.unreachable(h),
                State::ReqRcvd => {
                    let rej = Msg::Rej {
                        reason: REJ_TIMEOUT,
                        private_data: Vec::new(),
                    };
                    self.on_msg(h, peer, rej);
                }
                _ => self.on_msg(h, peer, Msg::Dreq),
            }
        }
    }

    /// The GIDs other routers must reach this router at for rdma_cm: those
    /// of its listeners and of its ids that have (or wait for) a peer on
    /// another router. The router announces them as it does its verbs
    /// sessions' GIDs, with or without a session: a server may listen
    /// before it opens fv0 (udaddy's does: librdmacm opens the device of a
    /// wildcard listener only for its first request), and a process that
    /// dies closes its verbs session before its rdma_cm file, whose
    /// release sends DREQs that must come from a GID the other router
    /// still takes frames from.
    pub fn gids_held(&self) -> BTreeSet<Gid> {
        self.ids
            .values()
            .filter(|i| i.state == State::Listening || matches!(i.peer, Some(End::There(..))))
            .map(|i| i.gid)
            .collect()
    }

    /// Every id, for `flowverbs status`.
    pub fn status(&self) -> Vec<flowverbs_wire::control::CmIdStatus> {
        let addr = |a: &Option<SockAddr>| a.map(|a| format!("{}:{}", a.ip, a.port));
        self.ids
            .values()
            .map(|i| flowverbs_wire::control::CmIdStatus {
                uid: i.owner_uid,
                netns: i.netns,
                port_space: match i.ps {
                    PS_TCP => "tcp",
                    PS_UDP => "udp",
                    PS_IPOIB => "ipoib",
                    _ => "ib",
                }
                .to_owned(),
                state: i.state.name().to_owned(),
                local: addr(&i.src),
                remote: addr(&i.dst),
                remote_router_gid: match i.peer {
                    Some(End::There(g, _)) => Some(g),
                    _ => None,
                },
            })
            .collect()
    }

    /// Ids held now (for status and tests).
    pub fn id_count(&self) -> usize {
        self.ids.len()
    }
}

fn parse_addr(b: &[u8]) -> Result<SockAddr, i32> {
    SockAddr::parse(b).map_err(|e| match e {
        AddrError::Family => libc::EAFNOSUPPORT,
        AddrError::Invalid => libc::EINVAL,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Memory as a map of addresses; addresses below 0x1000 are not
    /// writable (EFAULT).
    #[derive(Default)]
    struct Fake(HashMap<u64, Vec<u8>>);

    impl Memory for Fake {
        fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), i32> {
            if addr < 0x1000 {
                return Err(libc::EFAULT);
            }
            self.0.insert(addr, bytes.to_vec());
            Ok(())
        }
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
            let v = self.0.get(&addr).ok_or(libc::EFAULT)?;
            buf.copy_from_slice(&v[..buf.len()]);
            Ok(())
        }
    }

    const RESP: u64 = 0x10_0000;

    fn caller() -> Caller {
        Caller {
            tgid: 100,
            uid: 1000,
            netns: 7,
            gid: flowverbs_verbs::identity::gid_from_ipv4(Ipv4Addr::new(10, 0, 0, 1)),
            local: vec![],
        }
    }

    fn cmd(c: u32, payload: &[u8], out: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&c.to_ne_bytes());
        v.extend_from_slice(&(payload.len() as u16).to_ne_bytes());
        v.extend_from_slice(&out.to_ne_bytes());
        v.extend_from_slice(payload);
        v
    }

    struct T {
        cm: Cm,
        mem: Fake,
        /// No other router: messages for one are bounced.
        alone: bool,
        /// Who writes the commands.
        who: Caller,
        /// The address bound and connected to.
        ip: [u8; 4],
    }

    impl T {
        fn new(limits: CmLimits) -> T {
            let mut cm = Cm::new(limits);
            cm.open(1, 1000).unwrap();
            cm.open(2, 1000).unwrap();
            T {
                cm,
                mem: Fake::default(),
                alone: true,
                who: caller(),
                ip: [127, 0, 0, 1],
            }
        }
        /// A command from `caller()` on `file`; its messages for other
        /// routers are bounced (a router without links).
        fn run(&mut self, file: FileId, data: &[u8]) -> Result<(), i32> {
            let who = self.who.clone();
            self.run_as(file, &who, data)
        }
        fn run_as(&mut self, file: FileId, who: &Caller, data: &[u8]) -> Result<(), i32> {
            let r = match self.cm.command(file, who, 9, true, data, &mut self.mem) {
                Outcome::Done(r) => r,
                Outcome::Blocked => panic!("blocked"),
            };
            if self.alone {
                for out in self.cm.take_outgoing() {
                    self.cm.bounce(out);
                }
            }
            r
        }
        fn create(&mut self, file: FileId, uid: u64) -> Handle {
            self.create_ps(file, uid, PS_TCP, 2)
        }
        fn create_ps(&mut self, file: FileId, uid: u64, ps: u16, qp_type: u8) -> Handle {
            let mut p = [0u8; CREATE_ID_LEN];
            put_u64(&mut p, 0, uid);
            put_u64(&mut p, 8, RESP);
            put_u16(&mut p, 16, ps);
            p[18] = qp_type;
            self.run(file, &cmd(CMD_CREATE_ID, &p, 4)).unwrap();
            u32_at(&self.mem.0[&RESP], 0)
        }
        fn destroy(&mut self, file: FileId, h: Handle) -> Result<u32, i32> {
            let mut p = [0u8; DESTROY_ID_LEN];
            put_u64(&mut p, 0, RESP);
            put_u32(&mut p, 8, h);
            self.run(file, &cmd(CMD_DESTROY_ID, &p, 4))?;
            Ok(u32_at(&self.mem.0[&RESP], 0))
        }
        fn bind(&mut self, file: FileId, h: Handle, family: u16, port: u16) -> Result<(), i32> {
            let mut p = [0u8; BIND_LEN];
            put_u32(&mut p, 0, h);
            put_u16(&mut p, 4, 16);
            put_u16(&mut p, 8, family);
            p[10..12].copy_from_slice(&port.to_be_bytes());
            p[12..16].copy_from_slice(&self.ip);
            self.run(file, &cmd(CMD_BIND, &p, 0))
        }
        fn listen(&mut self, file: FileId, h: Handle, backlog: u32) {
            let mut p = [0u8; LISTEN_LEN];
            put_u32(&mut p, 0, h);
            put_u32(&mut p, 4, backlog);
            self.run(file, &cmd(CMD_LISTEN, &p, 0)).unwrap();
        }
        fn raw_event(&mut self, file: FileId) -> Result<Vec<u8>, i32> {
            let mut p = [0u8; GET_EVENT_LEN];
            put_u64(&mut p, 0, RESP);
            self.run(file, &cmd(CMD_GET_EVENT, &p, EVENT_RESP as u16))?;
            Ok(self.mem.0[&RESP].clone())
        }
        fn event(&mut self, file: FileId) -> Result<EventView, i32> {
            let b = &self.raw_event(file)?;
            Ok(EventView {
                uid: u64_at(b, 0),
                id: u32_at(b, 8),
                event: u32_at(b, 12),
                status: u32_at(b, 16) as i32,
                qp_num: u32_at(b, 20),
            })
        }
        /// An id of `file` resolved to 127.0.0.1:`port` and connected with
        /// QP number `qpn`.
        fn connect(&mut self, file: FileId, port: u16, qpn: u32) -> Handle {
            self.connect_ps(file, port, qpn, PS_TCP, 2)
        }
        fn connect_ps(&mut self, file: FileId, port: u16, qpn: u32, ps: u16, qpt: u8) -> Handle {
            let h = self.create_ps(file, 0xc1, ps, qpt);
            let mut p = [0u8; RESOLVE_IP_LEN];
            put_u16(&mut p, 28, AF_INET);
            p[30..32].copy_from_slice(&port.to_be_bytes());
            p[32..36].copy_from_slice(&self.ip);
            put_u32(&mut p, 56, h);
            self.run(file, &cmd(CMD_RESOLVE_IP, &p, 0)).unwrap();
            assert_eq!(self.event(file).unwrap().event, EV_ADDR_RESOLVED);
            let mut p = [0u8; RESOLVE_ROUTE_LEN];
            put_u32(&mut p, 0, h);
            self.run(file, &cmd(CMD_RESOLVE_ROUTE, &p, 0)).unwrap();
            assert_eq!(self.event(file).unwrap().event, EV_ROUTE_RESOLVED);
            let mut p = [0u8; CONNECT_LEN];
            put_u32(&mut p, 0, qpn);
            p[266] = 4; // responder resources
            p[267] = 4; // initiator depth
            p[269] = 15; // retry count: more than the REQ carries
            p[270] = 9; // RNR retry count: likewise
            put_u32(&mut p, 272, h);
            self.run(file, &cmd(CMD_CONNECT, &p, 0)).unwrap();
            h
        }
        fn accept(&mut self, file: FileId, h: Handle, uid: u64, qpn: u32) -> Result<(), i32> {
            let mut p = [0u8; ACCEPT_LEN];
            put_u64(&mut p, 0, uid);
            put_u32(&mut p, 8, qpn);
            p[8 + 266] = 4;
            p[8 + 267] = 4;
            put_u32(&mut p, 280, h);
            self.run(file, &cmd(CMD_ACCEPT, &p, 0))
        }
        fn qp_attr(&mut self, file: FileId, h: Handle, state: u32) -> Vec<u8> {
            let mut p = [0u8; INIT_QP_ATTR_LEN];
            put_u64(&mut p, 0, RESP);
            put_u32(&mut p, 8, h);
            put_u32(&mut p, 12, state);
            self.run(file, &cmd(CMD_INIT_QP_ATTR, &p, QP_ATTR_RESP as u16))
                .unwrap();
            self.mem.0[&RESP].clone()
        }
    }

    #[derive(Debug)]
    struct EventView {
        uid: u64,
        id: Handle,
        event: u32,
        status: i32,
        qp_num: u32,
    }

    #[test]
    fn ids_belong_to_their_file_and_af_ib_fails() {
        let mut t = T::new(CmLimits::default());
        let h = t.create(1, 5);
        assert_eq!(t.destroy(2, h), Err(libc::EINVAL));
        assert_eq!(t.destroy(1, h + 1000), Err(libc::ENOENT));
        assert_eq!(t.bind(1, h, AF_IB, 0), Err(libc::EAFNOSUPPORT));
        assert_eq!(t.bind(1, h, AF_INET, 7000), Ok(()));
        let other = t.create(1, 6);
        assert_eq!(t.bind(1, other, AF_INET, 7000), Err(libc::EADDRINUSE));
        assert_eq!(t.destroy(1, h), Ok(0));
        assert_eq!(t.bind(1, other, AF_INET, 7000), Ok(()));
        // Short payload, bad header, small response.
        assert_eq!(t.run(1, &cmd(CMD_CREATE_ID, &[0; 8], 4)), Err(libc::EINVAL));
        assert_eq!(t.run(1, &[0; 4]), Err(libc::EINVAL));
        let mut p = [0u8; CREATE_ID_LEN];
        put_u64(&mut p, 8, 8); // not writable
        put_u16(&mut p, 16, PS_TCP);
        assert_eq!(t.run(1, &cmd(CMD_CREATE_ID, &p, 4)), Err(libc::EFAULT));
        assert_eq!(t.cm.id_count(), 1, "the id whose answer failed is gone");
        assert_eq!(t.run(1, &cmd(CMD_CREATE_ID, &p, 2)), Err(libc::ENOSPC));
    }

    #[test]
    fn a_connection_end_to_end_with_exact_counts() {
        let mut t = T::new(CmLimits::default());
        let l = t.create(1, 0xaa);
        t.bind(1, l, AF_INET, 7100).unwrap();
        t.listen(1, l, 8);
        let c = t.connect(2, 7100, 0x11);
        let req = t.event(1).unwrap();
        assert_eq!(
            (req.event, req.uid, req.qp_num),
            (EV_CONNECT_REQUEST, 0xaa, 0x11)
        );
        let child = req.id;
        assert_ne!(child, l);
        t.accept(1, child, 0xcc, 0x22).unwrap();
        let rep = t.event(2).unwrap();
        assert_eq!(
            (rep.event, rep.id, rep.uid, rep.qp_num),
            (EV_CONNECT_RESPONSE, c, 0xc1, 0x22)
        );
        // RTR on both sides names the other's QP and PSN.
        let (ca, la) = (t.qp_attr(2, c, QPS_RTR), t.qp_attr(1, child, QPS_RTR));
        let (cs, ls) = (t.qp_attr(2, c, QPS_RTS), t.qp_attr(1, child, QPS_RTS));
        assert_eq!(u32_at(&ca, 32), 0x22);
        assert_eq!(u32_at(&la, 32), 0x11);
        assert_eq!(
            u32_at(&ca, 24),
            u32_at(&ls, 28),
            "client rq_psn = server sq_psn"
        );
        assert_eq!(
            u32_at(&la, 24),
            u32_at(&cs, 28),
            "server rq_psn = client sq_psn"
        );
        assert_eq!(ca[69], 1, "a GRH");
        // The retry counts the REQ carries are 3 bits: 15 and 9 are 7.
        assert_eq!((cs[135], cs[136]), (7, 7), "client retry, rnr_retry");
        assert_eq!(ls[135], 7, "server retry");
        t.accept(2, c, 0, 0).unwrap(); // the RTU
        let est = t.event(1).unwrap();
        assert_eq!((est.event, est.id, est.uid), (EV_ESTABLISHED, child, 0xcc));
        // The client's process dies: the server's child is disconnected.
        t.cm.release(2);
        let d = t.event(1).unwrap();
        assert_eq!((d.event, d.id), (EV_DISCONNECTED, child));
        // Counts: the listener read one event, the child two.
        assert_eq!(t.destroy(1, child), Ok(2));
        assert_eq!(t.destroy(1, l), Ok(1));
        assert_eq!(t.cm.id_count(), 0);
    }

    /// Two routers: A's commands come from 10.0.0.1, B's from 10.0.0.2;
    /// both bind and connect to 10.0.0.1 (A).
    fn two_routers() -> (T, T) {
        let mut a = T::new(CmLimits::default());
        let mut b = T::new(CmLimits::default());
        for (t, last) in [(&mut a, 1), (&mut b, 2)] {
            t.alone = false;
            t.who.gid = flowverbs_verbs::identity::gid_from_ipv4(Ipv4Addr::new(10, 0, 0, last));
            t.ip = [10, 0, 0, 1];
        }
        (a, b)
    }

    /// Carries the messages each router has for the other, through the
    /// link's encoding, until none is left.
    fn carry(a: &mut T, b: &mut T) {
        loop {
            let (from_a, from_b) = (a.cm.take_outgoing(), b.cm.take_outgoing());
            if from_a.is_empty() && from_b.is_empty() {
                return;
            }
            for (outs, to) in [(from_a, &mut *b), (from_b, &mut *a)] {
                for o in outs {
                    assert_eq!(o.dst, to.who.gid, "{o:?} for the other router");
                    let f = super::super::link::decode(&super::super::link::encode(&o.frame))
                        .expect("frames we send check out");
                    to.cm.on_link(o.src, o.dst, f);
                }
            }
        }
    }

    /// Messages wait for a link being dialled, in order, and a REQ that
    /// waits too long is UNREACHABLE (-ETIMEDOUT).
    #[test]
    fn messages_wait_for_a_link_being_dialled() {
        let (mut a, mut b) = two_routers();
        let l = a.create(1, 0xaa);
        a.bind(1, l, AF_INET, 7400).unwrap();
        a.listen(1, l, 8);
        let t0 = Instant::now();
        let c = b.connect(2, 7400, 0x11);
        let mut tried = Vec::new();
        b.cm.flush_outgoing(t0, &mut |o| {
            tried.push(o.frame.clone());
            Route::Dialing
        });
        assert_eq!(tried.len(), 1);
        assert_eq!(b.cm.next_deadline(), Some(t0 + HOLD_FOR_LINK));
        assert!(b.cm.take_outgoing().is_empty() && b.cm.has_outgoing());
        // Withdrawn while held: the withdrawal waits behind the REQ (not
        // even tried), and both go once the link is up, in order.
        b.destroy(2, c).unwrap();
        let mut tries = 0;
        b.cm.flush_outgoing(t0 + Duration::from_secs(1), &mut |_| {
            tries += 1;
            Route::Dialing
        });
        assert_eq!(
            tries, 1,
            "only the first message to a GID being dialled is tried"
        );
        let mut sent = Vec::new();
        b.cm.flush_outgoing(t0 + Duration::from_secs(2), &mut |o| {
            sent.push(o.clone());
            Route::Sent
        });
        assert!(matches!(sent[0].frame.msg, Msg::Req { .. }), "{sent:?}");
        assert!(matches!(sent[1].frame.msg, Msg::Rej { .. }), "{sent:?}");
        assert!(!b.cm.has_outgoing() && b.cm.next_deadline().is_none());
        for o in sent {
            a.cm.on_link(o.src, o.dst, o.frame);
        }
        let child = a.event(1).unwrap().id;
        assert_eq!(a.accept(1, child, 0xcc, 0x22), Err(libc::EINVAL));

        // A link that never comes: UNREACHABLE once the deadline passes.
        let c2 = b.connect(2, 7400, 0x12);
        b.cm.flush_outgoing(t0, &mut |_| Route::Dialing);
        assert_eq!(b.event(2).map(|e| e.event), Err(libc::EAGAIN));
        b.cm.flush_outgoing(t0 + HOLD_FOR_LINK, &mut |_| {
            panic!("tried after its deadline")
        });
        let e = b.event(2).unwrap();
        assert_eq!(
            (e.event, e.id, e.status),
            (EV_UNREACHABLE, c2, -libc::ETIMEDOUT)
        );
        assert!(!b.cm.has_outgoing());
    }

    #[test]
    fn connections_between_two_routers() {
        let (mut a, mut b) = two_routers();
        let (ga, gb) = (a.who.gid, b.who.gid);
        let l = a.create(1, 0xaa);
        a.bind(1, l, AF_INET, 7400).unwrap();
        a.listen(1, l, 8);
        // A listener's GID is served before any verbs session has it.
        assert_eq!(a.cm.gids_held(), BTreeSet::from([ga]));
        assert_eq!(b.cm.gids_held(), BTreeSet::new());
        let c = b.connect(2, 7400, 0x11);
        assert_eq!(b.cm.gids_held(), BTreeSet::from([gb]));
        assert_eq!(b.event(2).map(|e| e.event), Err(libc::EAGAIN));
        carry(&mut a, &mut b);
        let req = a.event(1).unwrap();
        assert_eq!((req.event, req.qp_num), (EV_CONNECT_REQUEST, 0x11));
        let child = req.id;
        a.accept(1, child, 0xcc, 0x22).unwrap();
        carry(&mut a, &mut b);
        let rep = b.event(2).unwrap();
        assert_eq!(
            (rep.event, rep.id, rep.qp_num),
            (EV_CONNECT_RESPONSE, c, 0x22)
        );
        let rtr = b.qp_attr(2, c, 2);
        assert_eq!(u32_at(&rtr, 32), 0x22, "dest_qp_num");
        assert_eq!(rtr[40..56], ga, "dgid");
        b.accept(2, c, 0xc1, 0).unwrap(); // the RTU
        carry(&mut a, &mut b);
        let est = a.event(1).unwrap();
        assert_eq!((est.event, est.id, est.uid), (EV_ESTABLISHED, child, 0xcc));
        // Each router goes on serving its GID while the connection lasts
        // (its process's verbs session may close first).
        assert_eq!(a.cm.gids_held(), BTreeSet::from([ga]));
        assert_eq!(b.cm.gids_held(), BTreeSet::from([gb]));
        // Forged: a DREQ from a GID that is not the peer's, or from
        // another id of the peer's router, changes nothing.
        let ghost = flowverbs_verbs::identity::gid_from_ipv4(Ipv4Addr::new(10, 0, 0, 9));
        for (src, from) in [(ghost, c), (gb, c + 100), (gb, 0)] {
            let f = Frame {
                to: child,
                from,
                msg: Msg::Dreq,
            };
            a.cm.on_link(src, ga, f);
            assert_eq!(a.event(1).map(|e| e.event), Err(libc::EAGAIN));
        }
        // The client's process dies: the server's child is disconnected.
        b.cm.release(2);
        carry(&mut a, &mut b);
        let d = a.event(1).unwrap();
        assert_eq!((d.event, d.id), (EV_DISCONNECTED, child));
        assert_eq!(b.cm.gids_held(), BTreeSet::new());
        assert_eq!(a.destroy(1, child), Ok(2));
        b.cm.open(2, 1000).unwrap();

        // No listener on A's port: REJECTED with status 8.
        let c2 = b.connect(2, 7401, 0x12);
        carry(&mut a, &mut b);
        let e = b.event(2).unwrap();
        assert_eq!(
            (e.event, e.id, e.status),
            (EV_REJECTED, c2, REJ_INVALID_SERVICE_ID)
        );

        // A request withdrawn before its answer: the child cannot be
        // accepted, and says nothing.
        let c3 = b.connect(2, 7400, 0x13);
        carry(&mut a, &mut b);
        let child3 = a.event(1).unwrap().id;
        b.destroy(2, c3).unwrap();
        carry(&mut a, &mut b);
        assert_eq!(a.accept(1, child3, 0xcc, 0x23), Err(libc::EINVAL));
        assert_eq!(a.event(1).map(|e| e.event), Err(libc::EAGAIN));
        a.destroy(1, child3).unwrap();

        // A REP for a requester that is gone (its withdrawal lost): the
        // child is refused, not left waiting.
        let c4 = b.connect(2, 7400, 0x14);
        carry(&mut a, &mut b);
        let child4 = a.event(1).unwrap().id;
        b.destroy(2, c4).unwrap();
        b.cm.take_outgoing();
        a.accept(1, child4, 0xcc, 0x24).unwrap();
        carry(&mut a, &mut b);
        let e = a.event(1).unwrap();
        assert_eq!(
            (e.event, e.id, e.status),
            (EV_REJECTED, child4, REJ_TIMEOUT)
        );
        a.destroy(1, child4).unwrap();

        // A's router goes away: B's connection is DISCONNECTED, its
        // request in flight UNREACHABLE (-ETIMEDOUT).
        let c5 = b.connect(2, 7400, 0x15);
        carry(&mut a, &mut b);
        let child5 = a.event(1).unwrap().id;
        a.accept(1, child5, 0xcc, 0x25).unwrap();
        carry(&mut a, &mut b);
        assert_eq!(b.event(2).unwrap().event, EV_CONNECT_RESPONSE);
        b.accept(2, c5, 0xc1, 0).unwrap();
        carry(&mut a, &mut b);
        assert_eq!(a.event(1).unwrap().event, EV_ESTABLISHED);
        let c6 = b.connect(2, 7400, 0x16);
        b.cm.take_outgoing();
        b.cm.peers_lost(&[ga]);
        let mut seen: Vec<(Handle, u32, i32)> = Vec::new();
        while let Ok(e) = b.event(2) {
            seen.push((e.id, e.event, e.status));
        }
        seen.sort();
        let mut want = vec![
            (c5, EV_DISCONNECTED, 0),
            (c6, EV_UNREACHABLE, -libc::ETIMEDOUT),
        ];
        want.sort();
        assert_eq!(seen, want);
        // ... and A, told of B's, disconnects its side.
        a.cm.peers_lost(&[gb]);
        let e = a.event(1).unwrap();
        assert_eq!((e.event, e.id), (EV_DISCONNECTED, child5));
        a.cm.release(1);
        assert_eq!(a.cm.gids_held(), BTreeSet::new());
    }

    #[test]
    fn ud_ids_get_sidr_answers() {
        let mut t = T::new(CmLimits::default());
        // No listener: UNREACHABLE with SIDR status 1 (unsupported).
        let lone = t.connect_ps(2, 7300, 0x31, PS_UDP, QPT_UD);
        let u = t.event(2).unwrap();
        assert_eq!(
            (u.event, u.id, u.status),
            (EV_UNREACHABLE, lone, SIDR_UNSUPPORTED)
        );
        let l = t.create_ps(1, 0xaa, PS_UDP, QPT_UD);
        t.bind(1, l, AF_INET, 7300).unwrap();
        t.listen(1, l, 8);
        let c = t.connect_ps(2, 7300, 0x31, PS_UDP, QPT_UD);
        let req = t.raw_event(1).unwrap();
        assert_eq!(
            (u32_at(&req, 12), u64_at(&req, 0)),
            (EV_CONNECT_REQUEST, 0xaa)
        );
        assert_eq!(
            req[20 + 296] as usize,
            SIDR_REQ_PRIVATE_DATA_IP,
            "a SIDR REQ's private data length, in the UD layout"
        );
        let child = u32_at(&req, 8);
        let init = t.qp_attr(1, child, QPS_INIT);
        assert_eq!(u32_at(&init, 0) & QP_QKEY, QP_QKEY);
        assert_eq!(u32_at(&init, 20), RDMA_UDP_QKEY);
        // Another qkey than the QP's is refused.
        let mut p = [0u8; ACCEPT_LEN];
        put_u32(&mut p, 8 + 4, 0x999);
        put_u32(&mut p, 280, child);
        assert_eq!(t.run(1, &cmd(CMD_ACCEPT, &p, 0)), Err(libc::EINVAL));
        t.accept(1, child, 0xcc, 0x42).unwrap();
        let est = t.raw_event(2).unwrap();
        assert_eq!((u32_at(&est, 12), u32_at(&est, 8)), (EV_ESTABLISHED, c));
        assert_eq!(u32_at(&est, 20), 0x42, "the server's QP");
        assert_eq!(u32_at(&est, 24), RDMA_UDP_QKEY, "its qkey");
        assert_eq!(est[28..44], caller().gid, "the server's GID");
        assert_eq!((est[28 + 29], est[28 + 30]), (1, 1), "global, port 1");
        assert_eq!(est[20 + 296] as usize, SIDR_REP_PRIVATE_DATA);
        // SIDR ends there: no ESTABLISHED for the server, no DREQ.
        assert_eq!(t.event(1).err(), Some(libc::EAGAIN));
        let mut p = [0u8; DISCONNECT_LEN];
        put_u32(&mut p, 0, c);
        assert_eq!(t.run(2, &cmd(CMD_DISCONNECT, &p, 0)), Ok(()));
        assert_eq!(t.destroy(2, c), Ok(3));
        assert_eq!(t.event(1).err(), Some(libc::EAGAIN));
        // A refusal: UNREACHABLE with status 2.
        let c2 = t.connect_ps(2, 7300, 0x33, PS_UDP, QPT_UD);
        let child2 = t.event(1).unwrap().id;
        let mut p = [0u8; REJECT_LEN];
        put_u32(&mut p, 0, child2);
        assert_eq!(t.run(1, &cmd(CMD_REJECT, &p, 0)), Ok(()));
        let u = t.event(2).unwrap();
        assert_eq!((u.event, u.id, u.status), (EV_UNREACHABLE, c2, SIDR_REJECT));
        assert_eq!(t.destroy(1, child), Ok(0));
        assert_eq!(t.destroy(1, child2), Ok(0));
        assert_eq!(t.destroy(1, l), Ok(2));
    }

    #[test]
    fn a_child_is_hidden_until_accepted_and_backlog_rejects() {
        let mut t = T::new(CmLimits::default());
        let l = t.create(1, 0xaa);
        t.bind(1, l, AF_INET, 7200).unwrap();
        t.listen(1, l, 1);
        let c1 = t.connect(2, 7200, 1);
        let child = t.event(1).unwrap().id;
        let c2 = t.connect(2, 7200, 2);
        let rej = t.event(2).unwrap();
        assert_eq!(
            (rej.event, rej.id, rej.status),
            (EV_REJECTED, c2, REJ_CONSUMER_DEFINED)
        );
        // The first requester withdraws: its child's REJECTED stays hidden
        // (librdmacm has no context for it), and it cannot be accepted.
        t.destroy(2, c1).unwrap();
        assert_eq!(t.event(1).map(|e| e.event), Err(libc::EAGAIN));
        assert_eq!(t.accept(1, child, 0xcc, 3), Err(libc::EINVAL));
        assert_eq!(t.event(1).map(|e| e.event), Err(libc::EAGAIN));
        assert_eq!(t.destroy(1, child), Ok(0));
        // No listener: invalid service id.
        let c3 = t.connect(2, 7201, 4);
        let e = t.event(2).unwrap();
        assert_eq!(
            (e.event, e.id, e.status),
            (EV_REJECTED, c3, REJ_INVALID_SERVICE_ID)
        );
    }

    #[test]
    fn get_event_blocks_until_an_event_and_wakes_pollers() {
        let mut t = T::new(CmLimits::default());
        let mut p = [0u8; GET_EVENT_LEN];
        put_u64(&mut p, 0, RESP);
        let data = cmd(CMD_GET_EVENT, &p, EVENT_RESP as u16);
        let o = t.cm.command(1, &caller(), 42, false, &data, &mut t.mem);
        assert_eq!(o, Outcome::Blocked);
        assert!(!t.cm.poll(1, Some(77)));
        let h = t.create(1, 5);
        let mut rp = [0u8; RESOLVE_IP_LEN];
        put_u16(&mut rp, 28, AF_INET);
        rp[32..36].copy_from_slice(&[127, 0, 0, 1]);
        put_u32(&mut rp, 56, h);
        t.run(1, &cmd(CMD_RESOLVE_IP, &rp, 0)).unwrap();
        assert_eq!(t.cm.take_wakeups(), vec![77]);
        let mut written = Vec::new();
        let answered = t.cm.pump(&mut |u, a, b| {
            written.push((u, a, u32_at(b, 12)));
            Ok(())
        });
        assert_eq!(answered, vec![(42, Ok(()))]);
        assert_eq!(written, vec![(42, RESP, EV_ADDR_RESOLVED)]);
        assert_eq!(t.destroy(1, h), Ok(1));
    }

    #[test]
    fn an_id_resolves_once_so_its_events_stay_bounded() {
        let mut t = T::new(CmLimits::default());
        let h = t.create(1, 5);
        let mut p = [0u8; RESOLVE_IP_LEN];
        put_u16(&mut p, 28, AF_INET);
        p[32..36].copy_from_slice(&[127, 0, 0, 1]);
        put_u32(&mut p, 56, h);
        t.run(1, &cmd(CMD_RESOLVE_IP, &p, 0)).unwrap();
        assert_eq!(t.run(1, &cmd(CMD_RESOLVE_IP, &p, 0)), Err(libc::EINVAL));
        assert_eq!(t.event(1).unwrap().event, EV_ADDR_RESOLVED);
        assert_eq!(t.event(1).map(|e| e.event), Err(libc::EAGAIN));
    }

    #[test]
    fn per_user_id_limit() {
        let mut t = T::new(CmLimits {
            ids_per_user: 2,
            ..CmLimits::default()
        });
        t.create(1, 1);
        t.create(2, 2);
        let mut p = [0u8; CREATE_ID_LEN];
        put_u64(&mut p, 8, RESP);
        put_u16(&mut p, 16, PS_TCP);
        assert_eq!(t.run(1, &cmd(CMD_CREATE_ID, &p, 4)), Err(libc::ENOMEM));
        t.cm.release(2);
        assert_eq!(t.run(1, &cmd(CMD_CREATE_ID, &p, 4)), Ok(()));
    }
}
