//! The router's event loop: one thread that accepts sessions, answers
//! control requests and services every ring. It spins while there is work
//! (and for a short grace period after), then announces that it sleeps and
//! blocks in epoll until a doorbell, a control message or a deadline.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use log::{debug, error, info, warn};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr,
};
use rustc_hash::FxHashMap;

use flowverbs_sys::{IBV_EVENT_DEVICE_FATAL, IBV_EVENT_PORT_ACTIVE};
use flowverbs_wire::control::{self, Event, EventReply, Reply, Request, WireError};
use flowverbs_wire::segment::SESSION_SEGMENT_SIZE;
use flowverbs_wire::VERSION;

use super::control::{close_session, handle, segment, Answer};
use super::engine::Engine;
use super::events::AsyncTarget;
use super::fuse::{Call, Callers, CmdFs, SessionInfo, SysTree, View};
use super::identity;
use super::limits::{Cap, Limits, Usage};
use super::memory::{Credentials, PidFd, ProcessMemory, SessionMemoryError};
use super::objects::{Session, SessionId, Tables};
use super::sysfs::DeviceTree;
use super::throttle::Throttled;
use super::Config;

const LISTENER: u64 = 0;
const SIGNALS: u64 = 1;
const CMDFS: u64 = 2;
/// The links' own epoll set (see `link::Links::fd`).
const LINKS: u64 = 3;
/// The rdma_cm CUSE device (`rdma_cm`).
const RDMA_CM: u64 = 5;
const KIND_SOCKET: u64 = 2;
const KIND_DOORBELL: u64 = 3;
const KIND_EVENTS: u64 = 4;
const KIND_BITS: u32 = 3;

fn token(session: SessionId, kind: u64) -> u64 {
    (session << KIND_BITS) | kind
}

/// An `ibv_create_comp_channel` in progress: the application's thread is
/// blocked in its write to `cmd_fd` until the provider has made the pipe.
struct ChannelRequest {
    unique: u64,
    session: SessionId,
    response: u64,
}

/// Who asks `flowverbs status`.
enum Viewer {
    /// Root of the host (the router's user and pid namespaces): sees all.
    HostRoot,
    /// Sees the sessions of its own uid in its user and pid namespaces.
    Tenant(super::semi::TrustGroup),
    /// Its namespaces could not be read: sees nothing.
    Nobody,
}

impl Viewer {
    fn sees(&self, s: &Session) -> bool {
        match self {
            Viewer::HostRoot => true,
            Viewer::Tenant(t) => {
                s.trust.uid == t.uid && s.trust.user_ns == t.user_ns && s.trust.pid_ns == t.pid_ns
            }
            Viewer::Nobody => false,
        }
    }
}

/// A connection that has not said Hello yet.
struct Pending {
    sock: OwnedFd,
    pid: i32,
    cred: Credentials,
    /// The connecting process, named at accept (None: it is gone already).
    process: Option<PidFd>,
    /// When it was accepted: it must say Hello within `hello_within`.
    since: Instant,
}

/// A ModifyQp held until the location registry knows its GID
/// (`control::waits_for_registry`), and when it is answered regardless.
struct Deferred {
    request: Request,
    until: Instant,
}

/// How long a ModifyQp waits for the registry to learn a GID.
const REGISTRY_WAIT: Duration = Duration::from_secs(3);

/// How long the listener is not watched after `accept` ran out of
/// descriptors (it stays readable, so watching it would spin).
const LISTENER_PAUSE: Duration = Duration::from_millis(100);

pub struct Server {
    engine: Engine,
    epoll: Epoll,
    listener: OwnedFd,
    signals: SignalFd,
    socket_path: PathBuf,
    runtime_dir: PathBuf,
    /// The router's own network namespace (its processes get `gid`).
    netns: u64,
    tree: Option<DeviceTree>,
    gid: [u8; 16],
    pending: HashMap<SessionId, Pending>,
    next_session: SessionId,
    spin: Duration,
    /// The command file system (None if FUSE could not be mounted: then
    /// completion channels are not available).
    cmdfs: Option<CmdFs>,
    /// librdmacm's device, served through CUSE (None without /dev/cuse).
    rdma_cm: Option<super::rdma_cm::RdmaCmService>,
    channel_requests: HashMap<u64, ChannelRequest>,
    next_channel_request: u64,
    limits: Limits,
    /// The router's own namespaces (who is root of the host).
    own_namespaces: super::semi::TrustGroup,
    /// The listener is out of the epoll set until then (descriptors ran
    /// out).
    listener_paused_until: Option<Instant>,
    warn_accept: Throttled,
    warn_refused: Throttled,
    /// Requests held for the location registry, by session (a session's
    /// requests are answered in order: one held request at most).
    deferred: HashMap<SessionId, Deferred>,
}

/// GID 0 of the process or thread `pid` (of a router in namespace
/// `own_netns` whose own GID is `own_gid`), and its network namespace.
fn client_gid(pid: i32, own_netns: u64, own_gid: [u8; 16]) -> (u64, [u8; 16]) {
    match identity::netns_of(pid) {
        Ok(ns) if ns != own_netns => {
            let ip = identity::netns_ipv4(pid).unwrap_or(std::net::Ipv4Addr::LOCALHOST);
            (ns, identity::gid_from_ipv4(ip))
        }
        _ => (own_netns, own_gid),
    }
}

/// The device tree as thread `tid` must see it (its network namespace's
/// GID and node GUID), or None if the thread is gone. The thread is the
/// one blocked in the FUSE request, so its id cannot name another
/// process until the request is answered or interrupted.
fn reader_view(tid: i32, own_netns: u64, own_gid: [u8; 16]) -> Option<View> {
    identity::netns_of(tid).ok()?;
    let (_, gid) = client_gid(tid, own_netns, own_gid);
    // Gone between the two reads: answer nothing rather than a guess.
    identity::netns_of(tid).ok()?;
    let view = namespace_view(tid, gid);
    // Gone meanwhile: its routes may be another process's.
    identity::netns_of(tid).ok()?;
    Some(view)
}

/// The device tree for the network namespace of process (or thread) `pid`,
/// whose GID is `gid`.
fn namespace_view(pid: i32, gid: [u8; 16]) -> View {
    let ip = std::net::Ipv4Addr::new(gid[12], gid[13], gid[14], gid[15]);
    View {
        gid,
        node_guid: identity::node_guid_from_ipv4(ip),
        netdev: identity::netns_netdev(pid, ip),
    }
}

/// What the command file system asks the router about a request's caller.
struct FuseCallers<'a> {
    sessions: &'a FxHashMap<SessionId, Session>,
    own_netns: u64,
    own_gid: [u8; 16],
}

impl Callers for FuseCallers<'_> {
    fn session(&self, id: SessionId) -> Option<SessionInfo> {
        self.sessions.get(&id).map(|s| SessionInfo {
            pid: s.memory.pid,
            uid: s.uid,
        })
    }

    fn view(&self, tid: i32) -> Option<View> {
        reader_view(tid, self.own_netns, self.own_gid)
    }

    fn thread_group(&self, tid: u32) -> Option<i32> {
        super::fuse::thread_group(tid)
    }
}

impl Server {
    pub fn start(config: &Config) -> anyhow::Result<Server> {
        let dir = &config.runtime_dir;
        super::limits::raise_descriptor_limit();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket_path = dir.join("router.sock");
        if socket_path.exists() {
            let probe = socket::socket(
                AddressFamily::Unix,
                SockType::SeqPacket,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            if socket::connect(probe.as_raw_fd(), &UnixAddr::new(&socket_path)?).is_ok() {
                anyhow::bail!("another router is already serving {}", dir.display());
            }
            std::fs::remove_file(&socket_path).ok();
        }

        let mut mask = SigSet::empty();
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGTERM);
        mask.thread_block().context("blocking SIGINT/SIGTERM")?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;

        // Event pipes whose reader is gone must fail with EPIPE, not kill us.
        // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };

        // Listen for routers before router.sock appears: whoever sees the
        // socket may expect the whole router to be there.
        let links = match config.listen {
            Some(listen) => Some(super::link::Links::new(
                listen,
                config.peers.clone(),
                config.link.clone(),
                config.registry.clone(),
            )?),
            None => None,
        };

        let ip = identity::host_ipv4();
        let gid = identity::gid_from_ipv4(ip);
        let tree = DeviceTree::create(dir, &namespace_view(std::process::id() as i32, gid))?;

        let listener = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        // Bind under a temporary name and rename once listening, so that
        // router.sock never exists without a listener behind it.
        let staging = dir.join(format!(".router.sock.{}", std::process::id()));
        std::fs::remove_file(&staging).ok();
        socket::bind(listener.as_raw_fd(), &UnixAddr::new(&staging)?)
            .with_context(|| format!("binding {}", staging.display()))?;
        std::fs::set_permissions(
            &staging,
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )?;
        socket::listen(&listener, Backlog::new(128)?)?;

        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
        let real: Vec<_> = super::nic::real_devices(Path::new(super::nic::SYSFS))
            .into_iter()
            .map(|d| {
                let sys = Path::new(super::nic::SYSFS).join("class");
                let resolve = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
                (
                    resolve(sys.join("infiniband_verbs").join(&d.uverbs)),
                    resolve(sys.join("infiniband").join(&d.device)),
                    d,
                )
            })
            .map(|(u, i, d)| (d.uverbs, d.device, u, i))
            .collect();
        let sys_tree = SysTree::new(&super::sysfs::uverbs_name(dir), &real);
        let cmdfs = match CmdFs::mount(dir, sys_tree) {
            Ok(fs) => {
                epoll.add(fs.fd(), EpollEvent::new(EpollFlags::EPOLLIN, CMDFS))?;
                Some(fs)
            }
            Err(e) => {
                warn!("{e}; completion channels will not be available");
                None
            }
        };
        let names = match &config.rdma_cm {
            super::RdmaCmNode::Default => {
                super::rdma_cm::device_names(&super::sysfs::uverbs_name(dir))
            }
            super::RdmaCmNode::Named(name) => vec![name.clone()],
            super::RdmaCmNode::None => Vec::new(),
        };
        let rdma_cm = match super::rdma_cm::RdmaCmService::start(&names, config.limits.rdma_cm) {
            Ok(cm) => {
                epoll.add(cm.fd(), EpollEvent::new(EpollFlags::EPOLLIN, RDMA_CM))?;
                super::rdma_cm::service::publish_node(dir, Some(cm.path()))?;
                Some(cm)
            }
            Err(e) => {
                info!("{e}; rdma_cm is not served");
                super::rdma_cm::service::publish_node(dir, None)?;
                None
            }
        };
        // Published last: whoever sees router.sock finds the whole router
        // (its tree, its mount, its link listener).
        std::fs::rename(&staging, &socket_path)
            .with_context(|| format!("publishing {}", socket_path.display()))?;
        epoll.add(
            signals.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS),
        )?;

        let spin_us = std::env::var("FLOWVERBS_ROUTER_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut engine = Engine::new(Tables::new(config.limits.clone()));
        if config.mode == super::Mode::Semi {
            engine.key_table = Some(super::semi::KeyTable::new()?);
            engine.semi_share = config.semi_share;
            engine.nic = super::nic_path::NicPaths::new(config.nics.clone(), config.nic_loopback);
        }
        info!(
            "router serving {} (GID ::ffff:{ip}), {} mode",
            socket_path.display(),
            if engine.key_table.is_some() {
                "semi-isolated"
            } else {
                "isolated"
            }
        );
        match &engine.nic {
            Some(n) => {
                for nic in n.nics() {
                    info!("semi mode posts to the NIC {nic}");
                }
                if n.loopback {
                    info!("semi mode uses the NIC between processes of this host too");
                }
            }
            None if engine.key_table.is_some() => info!("semi mode without a NIC"),
            None => {}
        }
        if let Some(links) = links {
            epoll.add(links.fd(), EpollEvent::new(EpollFlags::EPOLLIN, LINKS))?;
            engine.links = Some(links);
        }
        Ok(Server {
            engine,
            epoll,
            listener,
            signals,
            socket_path,
            tree: Some(tree),
            gid,
            runtime_dir: dir.clone(),
            netns: identity::netns_of(std::process::id() as i32)?,
            pending: HashMap::new(),
            next_session: 1,
            spin: Duration::from_micros(spin_us),
            cmdfs,
            rdma_cm,
            channel_requests: HashMap::new(),
            next_channel_request: 1,
            limits: config.limits.clone(),
            own_namespaces: super::semi::TrustGroup::of(std::process::id() as i32, 0)?,
            listener_paused_until: None,
            warn_accept: Throttled::default(),
            warn_refused: Throttled::default(),
            deferred: HashMap::new(),
        })
    }

    fn set_sleeping(&self, sleeping: bool) {
        for s in self.engine.tables.sessions.values() {
            s.header().announce_router_sleep(sleeping);
        }
    }

    pub fn run(mut self) -> anyhow::Result<()> {
        let mut events = vec![EpollEvent::empty(); 64];
        let mut idle_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut worked = self.engine.service(now);
            self.exchange_cm();
            if !self.deferred.is_empty() {
                worked |= self.answer_deferred(now);
            }
            let mut sleeping = false;
            let timeout = if worked {
                idle_since = None;
                EpollTimeout::ZERO
            } else if now.duration_since(*idle_since.get_or_insert(now)) < self.spin {
                EpollTimeout::ZERO
            } else {
                // Announce the sleep, fence, look once more (the argument:
                // wire::segment, `impl SessionHeader`).
                self.set_sleeping(true);
                fence(Ordering::SeqCst);
                if self.engine.service(Instant::now()) {
                    self.set_sleeping(false);
                    idle_since = None;
                    continue;
                }
                sleeping = true;
                let own = self.next_deadline();
                let engine = self.engine.next_deadline();
                match engine.into_iter().chain(own).min() {
                    Some(d) => {
                        let ms = d.saturating_duration_since(Instant::now()).as_millis() + 1;
                        EpollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(EpollTimeout::NONE)
                    }
                    None => EpollTimeout::NONE,
                }
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(e).context("epoll_wait"),
            };
            if sleeping {
                self.set_sleeping(false);
                idle_since = None;
            }
            self.housekeeping(Instant::now());
            for ev in &events[..n] {
                let data = ev.data();
                match data {
                    LISTENER => self.accept(),
                    LINKS => {} // serviced on every pass
                    CMDFS => self.on_cmdfs(),
                    RDMA_CM => self.on_rdma_cm(),
                    SIGNALS => {
                        if let Ok(Some(sig)) = self.signals.read_signal() {
                            info!("signal {}: shutting down", sig.ssi_signo);
                            return self.shutdown();
                        }
                    }
                    _ => {
                        let session = data >> KIND_BITS;
                        match data & ((1 << KIND_BITS) - 1) {
                            KIND_SOCKET => self.on_socket(session, ev.events()),
                            KIND_DOORBELL => self.drain_doorbell(session),
                            KIND_EVENTS => self.on_event_socket(session, ev.events()),
                            _ => {}
                        }
                    }
                }
            }
        }
    }

    fn shutdown(mut self) -> anyhow::Result<()> {
        let ids: Vec<SessionId> = self.engine.tables.sessions.keys().copied().collect();
        for id in ids {
            let s = &self.engine.tables.sessions[&id];
            s.header().router_gone.store(1, Ordering::SeqCst);
            // The provider's watcher posts DEVICE_FATAL itself if we crash;
            // whoever claims it first writes it.
            if s.header().claim_device_fatal() {
                self.engine
                    .post_async_event(AsyncTarget::Device(id), IBV_EVENT_DEVICE_FATAL);
            }
        }
        // Close every client's descriptors first: removing the tree needs
        // descriptors, and a flood may have taken them all.
        self.pending.clear();
        self.channel_requests.clear();
        let ids: Vec<SessionId> = self.engine.tables.sessions.keys().copied().collect();
        for id in ids {
            close_session(&mut self.engine, id);
        }
        if let Some(fs) = self.cmdfs.take() {
            fs.unmount();
        }
        if self.rdma_cm.take().is_some() {
            super::rdma_cm::service::publish_node(&self.runtime_dir, None).ok();
        }
        std::fs::remove_file(&self.socket_path).ok();
        super::sysfs::remove_netns_views(&self.runtime_dir);
        if let Some(tree) = self.tree.take() {
            tree.remove()?;
        }
        Ok(())
    }

    fn accept(&mut self) {
        let now = Instant::now();
        loop {
            let fd = match socket::accept4(
                self.listener.as_raw_fd(),
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                Ok(fd) => {
                    // SAFETY: accept4 returned a new descriptor that we own.
                    unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
                }
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::ECONNABORTED) => continue,
                Err(e) => {
                    // Out of descriptors (or memory): the connection stays
                    // queued and the listener readable, so stop watching it
                    // for a while instead of spinning on it.
                    let _ = self.epoll.delete(&self.listener);
                    self.listener_paused_until = Some(now + LISTENER_PAUSE);
                    self.warn_accept.warn(now, || {
                        format!("accepting a client: {e}; not accepting for {LISTENER_PAUSE:?}")
                    });
                    return;
                }
            };
            let cred = match socket::getsockopt(&fd, sockopt::PeerCredentials) {
                Ok(c) => c,
                Err(e) => {
                    self.warn_accept.warn(now, || format!("SO_PEERCRED: {e}"));
                    continue;
                }
            };
            let uid = cred.uid();
            let of_uid = self.pending.values().filter(|p| p.cred.uid == uid).count();
            if of_uid >= self.limits.pending_per_uid
                || self.pending.len() >= self.limits.pending_total
            {
                // Dropping the descriptor closes the connection.
                self.engine.tables.budget.refused(Cap::Connections);
                self.warn_refused.warn(now, || {
                    format!(
                        "connection from pid {} uid {uid} closed: {of_uid} of its connections \
                         ({} in all) have not said Hello yet",
                        cred.pid(),
                        self.pending.len()
                    )
                });
                continue;
            }
            let id = self.next_session;
            self.next_session += 1;
            if let Err(e) = self.epoll.add(
                &fd,
                EpollEvent::new(EpollFlags::EPOLLIN, token(id, KIND_SOCKET)),
            ) {
                self.warn_accept.warn(now, || format!("epoll add: {e}"));
                continue;
            }
            debug!("connection {id} from pid {} uid {uid}", cred.pid());
            self.pending.insert(
                id,
                Pending {
                    sock: fd,
                    pid: cred.pid(),
                    cred: Credentials {
                        uid,
                        gid: cred.gid(),
                    },
                    process: PidFd::open(cred.pid()).ok(),
                    since: now,
                },
            );
        }
    }

    /// When the loop must run again for the server's own timers: a
    /// connection's Hello deadline, the listener's pause.
    fn next_deadline(&self) -> Option<Instant> {
        let hello = self
            .pending
            .values()
            .map(|p| p.since + self.limits.hello_within)
            .min();
        let deferred = self.deferred.values().map(|d| d.until).min();
        let cm = self.rdma_cm.as_ref().and_then(|c| c.next_deadline());
        hello
            .into_iter()
            .chain(self.listener_paused_until)
            .chain(deferred)
            .chain(cm)
            .min()
    }

    /// Closes connections that did not say Hello in time; watches the
    /// listener again after a pause.
    fn housekeeping(&mut self, now: Instant) {
        if self.listener_paused_until.is_some_and(|t| now >= t) {
            self.listener_paused_until = None;
            if let Err(e) = self.epoll.add(
                &self.listener,
                EpollEvent::new(EpollFlags::EPOLLIN, LISTENER),
            ) {
                warn!("watching the listener again: {e}");
            }
            // Connections may have queued meanwhile.
            self.accept();
        }
        let within = self.limits.hello_within;
        let late: Vec<SessionId> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= within)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(p) = self.pending.get(&id) {
                let (pid, uid) = (p.pid, p.cred.uid);
                self.warn_refused.warn(now, || {
                    format!(
                        "connection from pid {pid} uid {uid} closed: no Hello within {within:?}"
                    )
                });
            }
            self.close(id);
        }
    }

    fn drain_doorbell(&mut self, session: SessionId) {
        if let Some(s) = self.engine.tables.sessions.get(&session) {
            let mut buf = [0u8; 8];
            let _ = nix::unistd::read(s.doorbell.as_raw_fd(), &mut buf);
        }
    }

    fn sock_of(&self, session: SessionId) -> Option<BorrowedFd<'_>> {
        if let Some(p) = self.pending.get(&session) {
            return Some(p.sock.as_fd());
        }
        self.engine
            .tables
            .sessions
            .get(&session)
            .map(|s| s.sock.as_fd())
    }

    fn on_socket(&mut self, session: SessionId, events: EpollFlags) {
        // Handle every queued message, then hang-ups.
        loop {
            let Some(sock) = self.sock_of(session) else {
                return;
            };
            let msg = control::recv::<Request>(sock, MsgFlags::MSG_DONTWAIT);
            match msg {
                Ok((request, fds)) => {
                    // Another request before a held one's answer: the
                    // held one is answered now (replies go in order).
                    if !self.answer_one_deferred(session) || !self.on_request(session, request, fds)
                    {
                        self.close(session);
                        return;
                    }
                }
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(WireError::Closed) => {
                    self.close(session);
                    return;
                }
                Err(e) => {
                    warn!("session {session}: {e}; closing it");
                    self.close(session);
                    return;
                }
            }
        }
        if events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            self.close(session);
        }
    }

    /// Answers one request; false if the session must be closed. Only
    /// Hello and (semi mode) RegMr carry descriptors; any others are
    /// closed.
    fn on_request(&mut self, session: SessionId, request: Request, fds: Vec<OwnedFd>) -> bool {
        let answer = if let Some(p) = self.pending.remove(&session) {
            match request {
                Request::Hello { version } if version == VERSION && fds.len() == 2 => {
                    let sock = p.sock.try_clone();
                    match self.open_session(session, p, fds) {
                        Ok(a) => a,
                        Err((errno, message)) => {
                            self.warn_refused.warn(Instant::now(), || {
                                format!("session {session} refused: {message}")
                            });
                            if let Ok(sock) = sock {
                                let reply = Reply::Error { errno, message };
                                let _ = control::send(sock.as_fd(), &reply, &[]);
                            }
                            return false;
                        }
                    }
                }
                Request::Status => {
                    let viewer = self.status_viewer(&p);
                    let reply = Reply::Status {
                        sessions: super::control::status(&self.engine, |s| viewer.sees(s)),
                        totals: matches!(viewer, Viewer::HostRoot)
                            .then(|| super::control::totals(&self.engine)),
                        peers: match (&viewer, &self.engine.links) {
                            (Viewer::HostRoot, Some(links)) => links.status(),
                            _ => Vec::new(),
                        },
                        limits: match viewer {
                            Viewer::HostRoot => {
                                let t = &self.engine.tables;
                                t.budget.status(&t.limits)
                            }
                            _ => Vec::new(),
                        },
                        rdma_cm: match (&viewer, &self.rdma_cm) {
                            (Viewer::HostRoot, Some(cm)) => cm.status(),
                            _ => Vec::new(),
                        },
                    };
                    let _ = control::send(p.sock.as_fd(), &reply, &[]);
                    return false;
                }
                Request::DeviceView => {
                    let reply = match self.device_view(p.pid) {
                        Ok((path, gid)) => Reply::DeviceView {
                            sysfs_path: path.to_string_lossy().into_owned(),
                            nic: self.engine.nic.as_ref().map(|n| n.nic_for(&gid).binding()),
                        },
                        Err(e) => Reply::Error {
                            errno: libc::EIO,
                            message: format!("{e:#}"),
                        },
                    };
                    let _ = control::send(p.sock.as_fd(), &reply, &[]);
                    return false;
                }
                Request::Hello { version } => {
                    let reply = Reply::Error {
                        errno: libc::EPROTO,
                        message: format!(
                            "wire version {version} is not the router's {VERSION}, \
                             or Hello came without its two descriptors"
                        ),
                    };
                    let _ = control::send(p.sock.as_fd(), &reply, &[]);
                    return false;
                }
                _ => {
                    warn!("session {session}: first message is not Hello");
                    return false;
                }
            }
        } else {
            if let Request::ModifyQp { qp, attr, mask } = &request {
                if fds.is_empty()
                    && super::control::waits_for_registry(&self.engine, session, *qp, attr, *mask)
                {
                    debug!("session {session}: ModifyQp waits for the location registry");
                    self.deferred.insert(
                        session,
                        Deferred {
                            request,
                            until: Instant::now() + REGISTRY_WAIT,
                        },
                    );
                    return true;
                }
            }
            handle(&mut self.engine, session, request, fds)
        };
        self.reply(session, answer)
    }

    /// Answers the held requests whose GID the registry now knows (or
    /// whose wait is over). True if any was answered.
    fn answer_deferred(&mut self, now: Instant) -> bool {
        let ready: Vec<SessionId> = self
            .deferred
            .iter()
            .filter(|(s, d)| {
                now >= d.until
                    || match &d.request {
                        Request::ModifyQp { qp, attr, mask } => {
                            !super::control::waits_for_registry(&self.engine, **s, *qp, attr, *mask)
                        }
                        _ => true,
                    }
            })
            .map(|(s, _)| *s)
            .collect();
        for &s in &ready {
            if !self.answer_one_deferred(s) {
                self.close(s);
            }
        }
        !ready.is_empty()
    }

    /// Answers session `session`'s held request; false if the session
    /// must be closed.
    fn answer_one_deferred(&mut self, session: SessionId) -> bool {
        let Some(d) = self.deferred.remove(&session) else {
            return true;
        };
        let answer = handle(&mut self.engine, session, d.request, Vec::new());
        self.reply(session, answer)
    }

    fn reply(&mut self, session: SessionId, answer: Answer) -> bool {
        let Some(sock) = self.sock_of(session) else {
            return false;
        };
        let raw: Vec<i32> = answer.fds.iter().map(|f| f.as_raw_fd()).collect();
        match control::send(sock, &answer.reply, &raw) {
            Ok(()) => true,
            Err(e) => {
                warn!("session {session}: reply failed: {e}");
                false
            }
        }
    }

    /// GID 0 of a client: the IPv4-mapped address of its network namespace
    /// (read by the router from the kernel, never taken from the client),
    /// and that namespace.
    fn client_gid(&self, pid: i32) -> (u64, [u8; 16]) {
        client_gid(pid, self.netns, self.gid)
    }

    /// The `SYSFS_PATH` that shows `pid`'s network namespace its own GID,
    /// written on disk under the runtime directory (`flowverbs env`; the
    /// FUSE tree at `fuse/sysfs` shows every reader its own without it),
    /// and that GID.
    fn device_view(&self, pid: i32) -> anyhow::Result<(PathBuf, [u8; 16])> {
        let (ns, gid) = self.client_gid(pid);
        let path = match &self.tree {
            Some(tree) if ns == self.netns => tree.sysfs_root().to_path_buf(),
            _ => {
                self.sweep_views();
                super::sysfs::write_netns_view(&self.runtime_dir, ns, &namespace_view(pid, gid))?
            }
        };
        Ok((path, gid))
    }

    /// Removes the views of network namespaces that are gone.
    fn sweep_views(&self) {
        super::sysfs::sweep_netns_views(&self.runtime_dir, &identity::live_network_namespaces());
    }

    /// Whose sessions a `Status` asker sees.
    fn status_viewer(&self, p: &Pending) -> Viewer {
        match super::semi::TrustGroup::of(p.pid, p.cred.uid) {
            Ok(asker)
                if p.cred.uid == 0
                    && asker.user_ns == self.own_namespaces.user_ns
                    && asker.pid_ns == self.own_namespaces.pid_ns =>
            {
                Viewer::HostRoot
            }
            Ok(asker) => Viewer::Tenant(asker),
            Err(_) => Viewer::Nobody,
        }
    }

    /// Hello: a session for the process behind connection `id`, or the
    /// errno and message of the refusal.
    fn open_session(
        &mut self,
        id: SessionId,
        p: Pending,
        fds: Vec<OwnedFd>,
    ) -> Result<Answer, (i32, String)> {
        let uid = p.cred.uid;
        let held = self
            .engine
            .tables
            .sessions
            .values()
            .filter(|s| s.uid == uid)
            .count();
        if held >= self.limits.sessions_per_uid {
            self.engine.tables.budget.refused(Cap::SessionsPerUser);
            return Err((
                Cap::SessionsPerUser.errno(),
                format!(
                    "uid {uid} has {held} sessions open, the router's limit per user \
                     (--max-sessions-per-user)"
                ),
            ));
        }
        let process = p.process.as_ref();
        let memory =
            ProcessMemory::of_session(p.pid, p.cred, || process.is_some_and(|f| !f.exited()))
                .map_err(|e| {
                    let errno = match e {
                        SessionMemoryError::Credentials { .. } => libc::EPERM,
                        SessionMemoryError::Gone { .. } => libc::ESRCH,
                        SessionMemoryError::Open { .. } => libc::EIO,
                    };
                    (errno, e.to_string())
                })?;
        self.start_session(id, p, fds, memory)
            .map_err(|e| (libc::EIO, format!("{e:#}")))
    }

    fn start_session(
        &mut self,
        id: SessionId,
        p: Pending,
        mut fds: Vec<OwnedFd>,
        memory: ProcessMemory,
    ) -> anyhow::Result<Answer> {
        let event_sock = fds.pop().expect("two fds");
        let async_events = fds.pop().expect("two fds");
        let is_seqpacket = socket::getsockopt(&event_sock, sockopt::SockType)
            .is_ok_and(|t| t == SockType::SeqPacket);
        let is_pipe = nix::sys::stat::fstat(async_events.as_raw_fd())
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO);
        if !is_seqpacket || !is_pipe {
            anyhow::bail!("Hello needs an async-event pipe and a SOCK_SEQPACKET event socket");
        }
        set_nonblocking(&async_events)?;
        set_nonblocking(&event_sock)?;
        let (_, gid) = self.client_gid(p.pid);
        let trust = super::semi::TrustGroup::of(p.pid, p.cred.uid)?;
        let (seg_fd, segment) = segment("fv-session", SESSION_SEGMENT_SIZE)?;
        let doorbell = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let doorbell: OwnedFd = doorbell.into();
        self.epoll.add(
            &doorbell,
            EpollEvent::new(EpollFlags::EPOLLIN, token(id, KIND_DOORBELL)),
        )?;
        let provider_doorbell = doorbell.try_clone()?;
        if let Err(e) = self.epoll.add(
            &event_sock,
            EpollEvent::new(EpollFlags::EPOLLIN, token(id, KIND_EVENTS)),
        ) {
            let _ = self.epoll.delete(&doorbell);
            return Err(e.into());
        }
        info!("session {id}: pid {} uid {}", p.pid, p.cred.uid);
        self.engine.totals.sessions += 1;
        self.engine.tables.sessions.insert(
            id,
            Session {
                sock: p.sock,
                doorbell,
                segment,
                memory,
                gid,
                uid: p.cred.uid,
                trust,
                async_events,
                event_sock,
                channels: HashMap::new(),
                arena: None,
                usage: Usage::default(),
                rate: Default::default(),
            },
        );
        let semi = self.engine.key_table.is_some();
        let nic = match self.engine.nic.as_mut().filter(|_| semi) {
            Some(paths) => {
                let (nic, new) = paths.assign(&gid);
                if new {
                    info!(
                        "GID {} posts to the NIC {}",
                        std::net::Ipv6Addr::from(gid),
                        nic.device
                    );
                }
                Some(nic.binding())
            }
            None => None,
        };
        self.engine.announce_gids();
        self.engine
            .post_async_event(AsyncTarget::Port(id, 1), IBV_EVENT_PORT_ACTIVE);
        let cmd_file = self.cmdfs.as_ref().map(|_| CmdFs::session_file(id));
        let key_table_fd = match &self.engine.key_table {
            Some(k) => Some(k.fd().try_clone_to_owned()?),
            None => None,
        };
        Ok(Answer {
            reply: Reply::Hello {
                version: VERSION,
                gid,
                session_segment_size: SESSION_SEGMENT_SIZE as u64,
                cmd_file,
                semi: key_table_fd.is_some(),
                nic,
            },
            fds: [seg_fd, provider_doorbell]
                .into_iter()
                .chain(key_table_fd)
                .collect(),
        })
    }

    fn close(&mut self, session: SessionId) {
        self.deferred.remove(&session);
        if let Some(p) = self.pending.remove(&session) {
            let _ = self.epoll.delete(&p.sock);
            return;
        }
        if let Some(s) = self.engine.tables.sessions.get(&session) {
            let _ = self.epoll.delete(&s.sock);
            let _ = self.epoll.delete(&s.doorbell);
            let _ = self.epoll.delete(&s.event_sock);
            debug!("session {session} closed");
        }
        let aborted: Vec<u64> = self
            .channel_requests
            .iter()
            .filter(|(_, r)| r.session == session)
            .map(|(id, _)| *id)
            .collect();
        for id in aborted {
            self.finish_channel_request(id, Err(libc::EIO));
        }
        let netns = self
            .engine
            .tables
            .sessions
            .get(&session)
            .map(|s| s.trust.net_ns);
        close_session(&mut self.engine, session);
        self.engine.announce_gids();
        // The last session of another namespace: its view goes if the
        // namespace is gone.
        if let Some(ns) = netns.filter(|ns| *ns != self.netns) {
            if !self
                .engine
                .tables
                .sessions
                .values()
                .any(|s| s.trust.net_ns == ns)
            {
                self.sweep_views();
            }
        }
    }

    /// Requests on the command file system. A `CREATE_COMP_CHANNEL` asks
    /// the session's provider for a pipe; the write stays blocked until the
    /// provider answers on the event socket (`on_event_socket`).
    fn on_cmdfs(&mut self) {
        let Some(fs) = self.cmdfs.as_mut() else {
            return;
        };
        let calls = fs.process(&FuseCallers {
            sessions: &self.engine.tables.sessions,
            own_netns: self.netns,
            own_gid: self.gid,
        });
        for call in calls {
            let Call::CreateChannel {
                unique,
                session,
                response,
            } = call;
            let id = self.next_channel_request;
            self.next_channel_request += 1;
            self.channel_requests.insert(
                id,
                ChannelRequest {
                    unique,
                    session,
                    response,
                },
            );
            let sent = self
                .engine
                .tables
                .sessions
                .get(&session)
                .map(|s| control::send(s.event_sock.as_fd(), &Event::MakeChannel { id }, &[]));
            if !matches!(sent, Some(Ok(()))) {
                warn!("session {session}: cannot ask for a completion channel: {sent:?}");
                self.finish_channel_request(id, Err(libc::EIO));
            }
        }
    }

    /// rdma_cm messages between this router's ids and other routers'
    /// (dropped if this router does not serve rdma_cm).
    fn exchange_cm(&mut self) {
        let frames = self.engine.take_cm_frames();
        let lost = self.engine.take_cm_lost();
        if let Some(cm) = self.rdma_cm.as_mut() {
            let engine = &mut self.engine;
            let now = Instant::now();
            let worked = cm.exchange(frames, &lost, now, &mut |src, dst, payload| {
                engine.send_cm(src, dst, payload, now)
            });
            if worked {
                engine.hold_cm_gids(cm.gids_held());
            }
        }
    }

    /// Commands to librdmacm's device.
    fn on_rdma_cm(&mut self) {
        let (own_netns, own_gid) = (self.netns, self.gid);
        let view = |tid: i32| -> Option<super::rdma_cm::NetView> {
            let netns = identity::netns_of(tid).ok()?;
            let (_, gid) = client_gid(tid, own_netns, own_gid);
            let local = if netns == own_netns {
                identity::ipv4_addresses()
                    .into_iter()
                    .map(|(_, a)| a)
                    .collect()
            } else {
                Vec::new()
            };
            Some(super::rdma_cm::NetView { netns, gid, local })
        };
        if let Some(cm) = self.rdma_cm.as_mut() {
            if let Err(e) = cm.process(&view) {
                error!("rdma_cm at {}: {e}; no longer served", cm.path().display());
                let _ = self.epoll.delete(cm.fd());
                self.rdma_cm = None;
                super::rdma_cm::service::publish_node(&self.runtime_dir, None).ok();
            }
        }
        // The messages first, then the GIDs no id needs any more are
        // withdrawn (a released file's DREQs come from a GID still served;
        // a device that is gone holds none).
        self.exchange_cm();
        let held = self.rdma_cm.as_ref().map(|cm| cm.gids_held());
        self.engine.hold_cm_gids(held.unwrap_or_default());
    }

    /// Ends a pending `ibv_create_comp_channel`: its write returns.
    fn finish_channel_request(&mut self, id: u64, result: Result<(), i32>) {
        if let (Some(r), Some(fs)) = (self.channel_requests.remove(&id), self.cmdfs.as_ref()) {
            fs.reply_write(r.unique, result);
        }
    }

    /// Messages from a provider's watcher thread (answers to
    /// `Event::MakeChannel`); a hang-up means the context is closing.
    fn on_event_socket(&mut self, session: SessionId, events: EpollFlags) {
        loop {
            let Some(s) = self.engine.tables.sessions.get(&session) else {
                return;
            };
            let msg = control::recv::<EventReply>(s.event_sock.as_fd(), MsgFlags::MSG_DONTWAIT);
            match msg {
                Ok((EventReply::ChannelMade { id, fd }, mut fds)) => {
                    let write_end = fds.pop().filter(|_| fds.is_empty());
                    self.channel_made(session, id, fd, write_end);
                }
                Ok((EventReply::ChannelFailed { id, errno }, _)) => {
                    let errno = if errno > 0 { errno } else { libc::EIO };
                    if self.channel_requests.get(&id).map(|r| r.session) == Some(session) {
                        self.finish_channel_request(id, Err(errno));
                    }
                }
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(WireError::Closed) => {
                    self.close(session);
                    return;
                }
                Err(e) => {
                    warn!("session {session}: event socket: {e}; closing the session");
                    self.close(session);
                    return;
                }
            }
        }
        if events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            self.close(session);
        }
    }

    /// The provider made the pipe for channel request `id`: put its read
    /// end's number into the application's response buffer, keep the write
    /// end, and let the application's write return.
    fn channel_made(&mut self, session: SessionId, id: u64, fd: i32, write_end: Option<OwnedFd>) {
        let request = self
            .channel_requests
            .get(&id)
            .filter(|r| r.session == session)
            .map(|r| r.response);
        // A cap's refusal fails ibv_create_comp_channel with the cap's
        // errno (and was logged, throttled); anything else with EIO.
        let mut capped = None;
        let registered = match (request, write_end) {
            (Some(response), Some(w)) if fd >= 0 => {
                let is_pipe = nix::sys::stat::fstat(w.as_raw_fd())
                    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO);
                // The writer is a thread of the session's process (checked
                // by the file system); the answer goes into the session's
                // address space (never "whatever the pid is now": after an
                // exec that is another program).
                let memory = self.engine.tables.sessions.get(&session).map(|s| &s.memory);
                let written = is_pipe
                    && set_nonblocking(&w).is_ok()
                    && memory
                        .is_some_and(|m| m.write(response, &(fd as u32).to_ne_bytes()).is_ok());
                // A channel whose number the client reuses replaces the
                // old one; a new number is one more object.
                let t = &mut self.engine.tables;
                let known = t
                    .sessions
                    .get(&session)
                    .is_some_and(|s| s.channels.contains_key(&fd));
                let charged = known
                    || match t.charge(session, Usage::channel()) {
                        Ok(()) => true,
                        Err(r) => {
                            capped = Some(r.errno());
                            self.warn_refused.warn(Instant::now(), || {
                                format!(
                                    "session {session}: completion channel refused: {}",
                                    r.message
                                )
                            });
                            false
                        }
                    };
                let written = written && charged;
                if written {
                    if let Some(s) = self.engine.tables.sessions.get_mut(&session) {
                        s.channels.insert(fd, w);
                    }
                } else if charged && !known {
                    self.engine.tables.release(session, Usage::channel());
                }
                written
            }
            _ => false,
        };
        if registered {
            debug!("session {session}: completion channel fd {fd}");
            self.finish_channel_request(id, Ok(()));
        } else {
            if capped.is_none() {
                warn!("session {session}: completion channel {id} could not be set up");
            }
            if fd >= 0 {
                if let Some(s) = self.engine.tables.sessions.get(&session) {
                    let _ =
                        control::send(s.event_sock.as_fd(), &Event::DropChannel { id, fd }, &[]);
                }
            }
            if request.is_some() {
                self.finish_channel_request(id, Err(capped.unwrap_or(libc::EIO)));
            }
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_view_of_a_vanished_thread_is_none() {
        let me = std::process::id() as i32;
        let own_netns = identity::netns_of(me).unwrap();
        let own_gid = [7u8; 16];
        // A reader in the router's namespace gets the router's GID.
        let v = reader_view(me, own_netns, own_gid).expect("this process exists");
        assert_eq!(v.gid, own_gid);
        // A reader that is gone gets nothing (the FUSE request: ESRCH).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(reader_view(pid, own_netns, own_gid).is_none());
        assert!(reader_view(0, own_netns, own_gid).is_none());
        assert!(reader_view(-1, own_netns, own_gid).is_none());
    }
}
