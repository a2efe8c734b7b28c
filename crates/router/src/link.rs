//! Connections to the other routers (`--listen`, `--peer`).
//!
//! Each router dials every peer and sends only on the connection it dialed
//! ("out"); it reads only the connections its peers dialed ("in"). So
//! there is no tie-breaking between two routers dialing each other.
//!
//! Who may be a peer ([`LinkPolicy`]): a Hello names the sender's listen
//! address, its identity among routers, and must come from that IP (a
//! router dials from its listen address). A Hello from an address that is
//! not a `--peer` is refused unless `--accept-peers` covers it (then the
//! router becomes a peer and gets a connection back). A known peer that is
//! connected already keeps its connection: a second one is refused, so a
//! local process cannot take a live peer's place or make it look
//! restarted. With a shared key (`--link-key`), the accepting side sends a
//! random challenge first and the Hello must carry its HMAC: only routers
//! holding the key get in, and a recorded Hello is useless.
//!
//! A peer is *up* once both directions said Hello. Losing either
//! direction takes it *down*: everything it served is forgotten and the
//! engine fails the QPs connected there (a peer that restarted closed both
//! connections, so its new Hello starts afresh). Configured peers that are
//! down are redialled with a backoff; introduced ones dial us again.
//!
//! Flow control: the engine queues data only while [`Peers::has_room`]
//! (a few MiB per peer); small replies are always queued. Reading from a
//! peer stops while the replies queued for it exceed [`OUT_HARD`], so a
//! peer that does not read cannot grow this router's memory.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::Context;
use log::{debug, info, warn};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::etcd::{Change, EtcdConfig, EtcdRegistry};
use super::registry::{LocationRegistry, Registry, StaticRegistry};
pub use super::transport::{Gid, PeerId, Transport};
use flowverbs_wire::link::{
    decode_payload, encode_payload, Announce, FrameHeader, Hello, Kind, CHALLENGE_LEN, HEADER_LEN,
    MAX_CHUNK,
};

/// Who may be a peer, and how routers prove it.
#[derive(Clone, Debug, Default)]
pub struct LinkPolicy {
    /// The routers' shared key (`--link-key`): Hellos must prove it.
    pub key: Option<Vec<u8>>,
    /// Routers not named by `--peer` that may introduce themselves.
    pub accept_from: Vec<ipnet::IpNet>,
}

/// The MAC a Hello carries: HMAC-SHA256 under `key` of the challenge, the
/// listen address and the boot id.
pub fn hello_mac(
    key: &[u8],
    challenge: &[u8; CHALLENGE_LEN],
    listen: &str,
    boot_id: u64,
) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(b"flowverbs link hello v2");
    m.update(challenge);
    m.update(&(listen.len() as u64).to_le_bytes());
    m.update(listen.as_bytes());
    m.update(&boot_id.to_le_bytes());
    m.finalize().into_bytes().into()
}

/// Whether `hello` proves `key` for `challenge` (constant-time compare).
fn hello_proves(key: &[u8], challenge: &[u8; CHALLENGE_LEN], hello: &Hello) -> bool {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(b"flowverbs link hello v2");
    m.update(challenge);
    m.update(&(hello.listen.len() as u64).to_le_bytes());
    m.update(hello.listen.as_bytes());
    m.update(&hello.boot_id.to_le_bytes());
    m.verify_slice(&hello.mac).is_ok()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    b
}

/// Queued bytes per peer under which the engine may queue more data.
pub const OUT_SOFT: usize = 4 << 20;
/// Queued bytes per peer above which this router stops reading from it.
const OUT_HARD: usize = 32 << 20;
/// Bytes read from one connection per call (at most).
const READ_STEP: usize = 1 << 20;
/// An inbound connection's buffer: a whole frame and a read step.
const IN_BUF: usize = HEADER_LEN + MAX_CHUNK + READ_STEP;
/// A connection must say Hello within this time.
const HELLO_WITHIN: Duration = Duration::from_secs(10);
/// Connections that have not said Hello yet, at most.
const MAX_UNNAMED: usize = 64;
/// Routers this router keeps track of, at most (configured or introduced).
const MAX_PEERS: usize = 1024;
const REDIAL_MIN: Duration = Duration::from_millis(100);
/// How long a withdrawal waits before it is announced (and written to
/// etcd): a GID that comes back meanwhile costs nothing, so a process that
/// opens and closes fv0 (or listens and stops, through rdma_cm) in a loop
/// makes one announcement per period, not two per turn.
const WITHDRAW_AFTER: Duration = Duration::from_millis(250);
const REDIAL_MAX: Duration = Duration::from_secs(1);

const LISTENER: u64 = 0;
/// The etcd registry's wake-up descriptor (updates for the cache).
const REGISTRY: u64 = u64::MAX;

/// What happened to a peer, for the engine.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEvent {
    Up(PeerId),
    /// The peer is gone; these GIDs it served are unreachable now.
    Down(PeerId, Vec<Gid>),
}

/// Bytes waiting to be written, in order.
#[derive(Default)]
struct OutQueue {
    buf: Vec<u8>,
    start: usize,
}

impl OutQueue {
    fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Writes as much as the socket takes. Err: the connection is broken.
    fn flush(&mut self, stream: &mut TcpStream) -> std::io::Result<()> {
        while self.start < self.buf.len() {
            match stream.write(&self.buf[self.start..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.start += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.start == self.buf.len() {
            self.clear();
        } else if self.start > self.buf.len() / 2 && self.start > (1 << 20) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }
}

/// One router this router talks to.
pub struct Peer {
    pub addr: SocketAddr,
    /// Named by `--peer` (redialled while down); otherwise it introduced
    /// itself and is dialled only while it is connected to us.
    configured: bool,
    /// The connection we dialed (we write on it).
    out: Option<TcpStream>,
    out_token: u64,
    /// Not ready to send: dialing, or waiting for the peer's challenge.
    connecting: bool,
    /// The peer's challenge as it arrives (Some once the dial completed).
    challenge: Option<Vec<u8>>,
    queue: OutQueue,
    /// The connection it dialed to us (we read it), once it said Hello.
    inbound: Option<u64>,
    boot_id: Option<u64>,
    up: bool,
    next_dial: Instant,
    backoff: Duration,
    /// Logged that it cannot be reached (logged once per outage).
    told_unreachable: bool,
    /// The physical GID of the NIC each of its GIDs posts to, as it
    /// announced (semi mode over a NIC).
    nic_of: HashMap<Gid, Gid>,
    /// Its UD QPs on its NICs, by (NIC GID, QPN), and their GIDs, as it
    /// announced.
    nic_ud_qps: HashMap<(Gid, u32), Gid>,
}

impl Peer {
    /// Configured peers are dialled until they answer; introduced ones
    /// only while they are connected to us.
    fn wants_dial(&self) -> bool {
        self.configured || self.inbound.is_some()
    }
}

/// The routers and the bytes queued for them: what the engine sends on.
pub struct Peers {
    list: Vec<Peer>,
    pub registry: Registry,
    /// GIDs this router serves (announced to every peer).
    served: Vec<Gid>,
    /// The physical GID of the NIC of each GID served (announced with
    /// `served`).
    nic_gids: Vec<(Gid, Gid)>,
    /// This router's UD QPs on its NICs (announced with `served`).
    nic_ud_qps: Vec<(u32, Gid)>,
    /// Our listen address and boot id (the Hello we send, MAC aside).
    me: Hello,
    policy: LinkPolicy,
}

impl Transport for Peers {
    fn locate(&self, gid: &Gid) -> Option<PeerId> {
        let addr = self.registry.locate(gid)?;
        self.list.iter().position(|p| p.addr == addr && p.up)
    }

    fn serves(&self, peer: PeerId, gid: &Gid) -> bool {
        self.list
            .get(peer)
            .is_some_and(|p| self.registry.locate(gid) == Some(p.addr))
    }

    /// Less than [`OUT_SOFT`] bytes wait for the peer.
    fn has_room(&self, peer: PeerId) -> bool {
        self.list
            .get(peer)
            .is_some_and(|p| p.up && p.queue.len() < OUT_SOFT)
    }

    fn send(&mut self, peer: PeerId, mut hdr: FrameHeader, payload: &[u8]) {
        debug_assert!(payload.len() <= MAX_CHUNK);
        hdr.payload_len = (payload.len() as u32).into();
        let Some(p) = self.list.get_mut(peer).filter(|p| p.up) else {
            return;
        };
        p.queue.buf.extend_from_slice(&hdr.encode());
        p.queue.buf.extend_from_slice(payload);
    }

    /// The payload is read straight into the queue's spare capacity (no
    /// zeroing first).
    fn send_with(
        &mut self,
        peer: PeerId,
        mut hdr: FrameHeader,
        len: usize,
        fill: &mut dyn FnMut(&mut [MaybeUninit<u8>]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        debug_assert!(len <= MAX_CHUNK);
        hdr.payload_len = (len as u32).into();
        let Some(p) = self.list.get_mut(peer).filter(|p| p.up) else {
            return Ok(());
        };
        let q = &mut p.queue.buf;
        q.extend_from_slice(&hdr.encode());
        q.reserve(len);
        if let Err(e) = fill(&mut q.spare_capacity_mut()[..len]) {
            q.truncate(q.len() - HEADER_LEN);
            return Err(e);
        }
        // SAFETY: `fill` returned Ok, so it initialised these `len` bytes
        // (within the capacity reserved above).
        unsafe { q.set_len(q.len() + len) };
        Ok(())
    }
}

impl Peers {
    /// What the peers were told this router serves.
    fn told(&self) -> Served {
        Served {
            gids: self.served.clone(),
            nic_gids: self.nic_gids.clone(),
            nic_ud_qps: self.nic_ud_qps.clone(),
        }
    }

    fn me_addr(&self) -> SocketAddr {
        self.me.listen.parse().expect("our own listen address")
    }

    fn announce_to(&mut self, peer: PeerId) {
        let payload = encode_payload(&Announce {
            gids: self.served.clone(),
            nic_gids: self.nic_gids.clone(),
            nic_ud_qps: self.nic_ud_qps.clone(),
        });
        let p = &mut self.list[peer];
        let mut hdr = FrameHeader::new(Kind::Announce);
        hdr.payload_len = (payload.len() as u32).into();
        p.queue.buf.extend_from_slice(&hdr.encode());
        p.queue.buf.extend_from_slice(&payload);
    }

    fn find(&self, addr: SocketAddr) -> Option<PeerId> {
        self.list.iter().position(|p| p.addr == addr)
    }

    /// The physical GID of the NIC `gid` posts to, if the router serving
    /// it is up and announced one.
    pub fn nic_serving(&self, gid: &Gid) -> Option<Gid> {
        self.list.get(self.locate(gid)?)?.nic_of.get(gid).copied()
    }

    /// The GID of UD QP `qpn` on the NIC whose physical GID is `nic_gid`,
    /// as a router with that NIC announced it.
    pub fn nic_source(&self, nic_gid: &Gid, qpn: u32) -> Option<Gid> {
        self.list
            .iter()
            .filter(|p| p.up)
            .find_map(|p| p.nic_ud_qps.get(&(*nic_gid, qpn)).copied())
    }
}

/// A connection a peer dialed to us.
struct Inbound {
    stream: TcpStream,
    /// Where it comes from (its Hello must name this IP).
    from: SocketAddr,
    /// What we sent it first; its Hello proves the key on it.
    challenge: [u8; CHALLENGE_LEN],
    peer: Option<PeerId>,
    /// Allocated once ([`IN_BUF`] bytes); `buf[start..end]` is unread.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    readable: bool,
    accepted_at: Instant,
}

pub struct Links {
    epoll: Epoll,
    listener: TcpListener,
    pub peers: Peers,
    inbound: HashMap<u64, Inbound>,
    next_token: u64,
    events: Vec<LinkEvent>,
    /// A flush took some peer's queue from full (`OUT_SOFT`) to having
    /// room: work that stopped for room can go on (`take_room_opened`).
    room_opened: bool,
    /// What this router serves now, if that only withdraws from what the
    /// peers were told, and when to tell them ([`WITHDRAW_AFTER`]).
    withdrawal: Option<(Served, Instant)>,
}

/// What a router announces: its GIDs, the NIC each posts to, its UD QPs
/// on its NICs (each list sorted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Served {
    gids: Vec<Gid>,
    nic_gids: Vec<(Gid, Gid)>,
    nic_ud_qps: Vec<(u32, Gid)>,
}

impl Served {
    /// True if `self` only takes entries away from `told` (what the peers
    /// heard): it may wait. Anything new must be announced before a frame
    /// that depends on it.
    fn only_withdraws_from(&self, told: &Served) -> bool {
        fn subset<T: Ord>(a: &[T], b: &[T]) -> bool {
            a.iter().all(|x| b.binary_search(x).is_ok())
        }
        subset(&self.gids, &told.gids)
            && subset(&self.nic_gids, &told.nic_gids)
            && subset(&self.nic_ud_qps, &told.nic_ud_qps)
    }
}

/// Link sockets: no Nagle delay (acknowledgements are small and latency
/// matters), buffers big enough to keep a 64 KiB-message stream going
/// between two passes of the router loop, and keepalives with a user
/// timeout so that a peer host that vanished without closing (power loss,
/// partition) is declared down within about ten seconds.
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = socket::setsockopt(stream, sockopt::SndBuf, &SOCKET_BUFFER);
    let _ = socket::setsockopt(stream, sockopt::RcvBuf, &SOCKET_BUFFER);
    let _ = socket::setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = socket::setsockopt(stream, sockopt::TcpKeepIdle, &3);
    let _ = socket::setsockopt(stream, sockopt::TcpKeepInterval, &1);
    let _ = socket::setsockopt(stream, sockopt::TcpKeepCount, &5);
    let _ = socket::setsockopt(stream, sockopt::TcpUserTimeout, &10_000);
}

const SOCKET_BUFFER: usize = 4 << 20;

fn new_boot_id() -> u64 {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u64::from_ne_bytes(b) ^ u64::from(std::process::id())
}

impl Links {
    /// Listens on `listen` and prepares to dial `peers`.
    pub fn new(
        listen: SocketAddr,
        peers: Vec<SocketAddr>,
        policy: LinkPolicy,
        etcd: Option<EtcdConfig>,
    ) -> anyhow::Result<Links> {
        if listen.ip().is_unspecified() {
            anyhow::bail!(
                "--listen {listen}: give the address peers reach this router at (it is its name among routers), not a wildcard"
            );
        }
        let listener =
            TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
        let now = Instant::now();
        let boot_id = new_boot_id();
        let registry = match etcd {
            Some(config) => {
                let r = EtcdRegistry::start(config, listen, boot_id)?;
                epoll.add(r.wake_fd(), EpollEvent::new(EpollFlags::EPOLLIN, REGISTRY))?;
                Registry::Etcd(Box::new(r))
            }
            None => Registry::Static(StaticRegistry::new(peers.clone())),
        };
        let mut links = Links {
            epoll,
            listener,
            peers: Peers {
                list: Vec::new(),
                registry,
                served: Vec::new(),
                nic_gids: Vec::new(),
                nic_ud_qps: Vec::new(),
                me: Hello {
                    listen: listen.to_string(),
                    boot_id,
                    mac: [0; 32],
                },
                policy,
            },
            inbound: HashMap::new(),
            next_token: 1,
            events: Vec::new(),
            room_opened: false,
            withdrawal: None,
        };
        for addr in links.peers.registry.peers() {
            if addr != listen && links.peers.find(addr).is_none() {
                links.add_peer(addr, true, now);
            }
        }
        info!(
            "listening for routers on {listen}; peers: {}",
            links
                .peers
                .list
                .iter()
                .map(|p| p.addr.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(links)
    }

    /// The descriptor the server's epoll watches: readable whenever any
    /// link needs attention.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn add_peer(&mut self, addr: SocketAddr, configured: bool, now: Instant) -> PeerId {
        self.peers.list.push(Peer {
            addr,
            configured,
            out: None,
            out_token: 0,
            connecting: false,
            challenge: None,
            queue: OutQueue::default(),
            inbound: None,
            boot_id: None,
            up: false,
            next_dial: now,
            backoff: REDIAL_MIN,
            told_unreachable: false,
            nic_of: HashMap::new(),
            nic_ud_qps: HashMap::new(),
        });
        self.peers.list.len() - 1
    }

    /// Announces the GIDs this router serves, the NIC each posts to (by
    /// its physical GID) and its UD QPs on its NICs to every peer, if they
    /// changed: at once if anything is new, else (only withdrawals) after
    /// [`WITHDRAW_AFTER`] ([`Links::poll_io`]).
    pub fn set_served(
        &mut self,
        mut gids: Vec<Gid>,
        mut nic_gids: Vec<(Gid, Gid)>,
        mut nic_ud_qps: Vec<(u32, Gid)>,
    ) {
        gids.sort_unstable();
        gids.dedup();
        nic_gids.sort_unstable();
        nic_ud_qps.sort_unstable();
        let new = Served {
            gids,
            nic_gids,
            nic_ud_qps,
        };
        let told = self.peers.told();
        if new == told {
            self.withdrawal = None;
        } else if new.only_withdraws_from(&told) {
            let due = self
                .withdrawal
                .as_ref()
                .map_or_else(|| Instant::now() + WITHDRAW_AFTER, |(_, due)| *due);
            self.withdrawal = Some((new, due));
        } else {
            self.withdrawal = None;
            self.announce(new);
        }
    }

    /// Tells every peer (and etcd) what this router serves.
    fn announce(&mut self, served: Served) {
        if let Some(r) = self.peers.registry.etcd() {
            r.serve(&served.gids);
        }
        self.peers.served = served.gids;
        self.peers.nic_gids = served.nic_gids;
        self.peers.nic_ud_qps = served.nic_ud_qps;
        for i in 0..self.peers.list.len() {
            if self.peers.list[i].out.is_some() && !self.peers.list[i].connecting {
                self.peers.announce_to(i);
            }
        }
    }

    /// A QP is about to use the path to `gid` (its RTR transition). With
    /// the etcd registry: the router serving it is looked up in the cache
    /// and dialled if it is not connected yet; Err (with the reason) if
    /// the registry cannot name one now. The static registry: Ok.
    pub fn route_to(&mut self, gid: &Gid, now: Instant) -> Result<(), String> {
        let Some(r) = self.peers.registry.etcd() else {
            return Ok(());
        };
        let addr = r.resolve(gid)?;
        match self.peers.find(addr) {
            Some(i) => self.peers.list[i].configured = true,
            None if self.peers.list.len() >= MAX_PEERS => {
                return Err(format!(
                "GID {} is served by router {addr}, but this router has {MAX_PEERS} peers already",
                std::net::Ipv6Addr::from(*gid)
            ))
            }
            None => {
                info!("connecting to router {addr} (on demand)");
                self.add_peer(addr, true, now);
            }
        }
        Ok(())
    }

    /// True with the etcd registry: routers are dialled when a path needs
    /// them ([`Links::route_to`]).
    pub fn dials_on_demand(&self) -> bool {
        self.peers.registry.etcd().is_some()
    }

    /// Whether a new path to `gid` should wait for the etcd registry: it
    /// is in sync but does not know the GID (yet).
    pub fn route_pending(&self, gid: &Gid) -> bool {
        self.peers
            .registry
            .etcd()
            .is_some_and(|r| r.health().is_ok() && r.locate(gid).is_none())
    }

    /// Applies the etcd registry's updates to the cache; links to routers
    /// whose registration went (lease expired) or changed (a new run) are
    /// closed, which fails the QPs connected through them. A GID that
    /// went or moved fails nothing by itself: its QPs are gone with their
    /// process (or answer "no such QP" from its new router, which ends
    /// requests as on a fabric).
    fn poll_registry(&mut self, now: Instant) {
        let Registry::Etcd(r) = &mut self.peers.registry else {
            return;
        };
        for change in r.poll() {
            match change {
                Change::Router(addr, boot) => {
                    let Some(i) = self.peers.find(addr) else {
                        continue;
                    };
                    let p = &mut self.peers.list[i];
                    if boot.is_none() {
                        // Dialled again only when a QP needs it.
                        p.configured = false;
                    }
                    let connected = p.out.is_some() || p.inbound.is_some();
                    let stale = p.boot_id.is_some_and(|b| Some(b) != boot);
                    if stale || (boot.is_none() && connected) {
                        let why = match boot {
                            None => "its registration in etcd is gone",
                            Some(_) => "it registered again with a new boot id",
                        };
                        self.lost(i, why, now);
                    }
                }
            }
        }
    }

    /// The earliest redial, Hello or withdrawal deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        let dial = self
            .peers
            .list
            .iter()
            .filter(|p| p.out.is_none() && p.wants_dial())
            .map(|p| p.next_dial);
        let hello = self
            .inbound
            .values()
            .filter(|c| c.peer.is_none())
            .map(|c| c.accepted_at + HELLO_WITHIN + Duration::from_millis(1));
        let withdrawal = self.withdrawal.as_ref().map(|(_, due)| *due);
        dial.chain(hello).chain(withdrawal).min()
    }

    /// Peer events since the last call.
    pub fn take_events(&mut self) -> Vec<LinkEvent> {
        std::mem::take(&mut self.events)
    }

    /// True if some connection has more to read now (the caller keeps
    /// polling instead of sleeping). Bytes waiting to be written do not
    /// count: the epoll set reports when the socket takes more.
    pub fn busy(&self) -> bool {
        self.inbound.values().any(|c| {
            c.readable
                && c.peer
                    .is_none_or(|i| self.peers.list[i].queue.len() <= OUT_HARD)
        })
    }

    /// Every peer, for `flowverbs status`.
    pub fn status(&self) -> Vec<flowverbs_wire::control::PeerStatus> {
        self.peers
            .list
            .iter()
            .map(|p| flowverbs_wire::control::PeerStatus {
                addr: p.addr.to_string(),
                up: p.up,
                queued: p.queue.len() as u64,
                reading: p.queue.len() <= OUT_HARD,
            })
            .collect()
    }

    /// Accepts, dials, flushes and reads; frames are handed out by
    /// [`Links::frames`].
    pub fn poll_io(&mut self, now: Instant) {
        if self.withdrawal.as_ref().is_some_and(|(_, due)| now >= *due) {
            if let Some((served, _)) = self.withdrawal.take() {
                self.announce(served);
            }
        }
        self.poll_registry(now);
        let mut ready = [EpollEvent::empty(); 32];
        loop {
            let n = match self.epoll.wait(&mut ready, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("link epoll: {e}");
                    0
                }
            };
            for ev in &ready[..n] {
                self.on_ready(ev.data(), ev.events(), now);
            }
            if n < ready.len() {
                break;
            }
        }
        for i in 0..self.peers.list.len() {
            let p = &self.peers.list[i];
            if p.out.is_none() && p.wants_dial() && now >= p.next_dial {
                self.dial(i, now);
            }
            self.flush(i, now);
        }
        let tokens: Vec<u64> = self.inbound.keys().copied().collect();
        for t in tokens {
            self.read(t, now);
        }
        let silent: Vec<u64> = self
            .inbound
            .iter()
            .filter(|(_, c)| c.peer.is_none() && now.duration_since(c.accepted_at) > HELLO_WITHIN)
            .map(|(t, _)| *t)
            .collect();
        for t in silent {
            warn!("router connection closed: no Hello within {HELLO_WITHIN:?}");
            self.drop_inbound(t, "no Hello", now);
        }
    }

    /// Writes what is queued for every peer.
    /// True (once) if a flush made room on a link that was full since the
    /// last call: the engine must run again, as nothing else may wake it
    /// (a responder streaming READ data gets no frames while it waits).
    pub fn take_room_opened(&mut self) -> bool {
        std::mem::take(&mut self.room_opened)
    }

    pub fn flush_all(&mut self, now: Instant) {
        for i in 0..self.peers.list.len() {
            self.flush(i, now);
        }
    }

    fn on_ready(&mut self, token: u64, events: EpollFlags, now: Instant) {
        if token == LISTENER {
            self.accept(now);
            return;
        }
        if token == REGISTRY {
            return; // read on every pass (`poll_registry`)
        }
        if let Some(c) = self.inbound.get_mut(&token) {
            c.readable = true;
            return;
        }
        let Some(i) = self.peers.list.iter().position(|p| p.out_token == token) else {
            return;
        };
        if self.peers.list[i].connecting {
            if self.peers.list[i].challenge.is_none() {
                if events.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR) {
                    self.dialled(i, now);
                }
            } else if events
                .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP)
            {
                self.read_challenge(i, now);
            }
            return;
        }
        if events.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
            // Nothing is ever sent to us on our own connection: readable
            // means closed (or a confused peer).
            let mut b = [0u8; 64];
            let broken = match self.peers.list[i].out.as_mut().map(|s| s.read(&mut b)) {
                Some(Ok(_)) => true,
                Some(Err(e)) => e.kind() != ErrorKind::WouldBlock,
                None => false,
            };
            if broken {
                self.lost(i, "connection closed", now);
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, from)) => {
                    let unnamed = self.inbound.values().filter(|c| c.peer.is_none()).count();
                    if unnamed >= MAX_UNNAMED {
                        warn!("router connection from {from} refused: {unnamed} connections have not said Hello");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        warn!("router connection from {from}: {e}");
                        continue;
                    }
                    tune(&stream);
                    // The challenge goes first (a fresh socket's buffer
                    // takes it whole).
                    let challenge = random_bytes::<CHALLENGE_LEN>();
                    if !matches!((&stream).write(&challenge), Ok(CHALLENGE_LEN)) {
                        warn!("router connection from {from}: cannot send its challenge");
                        continue;
                    }
                    let t = self.token();
                    if let Err(e) = self
                        .epoll
                        .add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, t))
                    {
                        warn!("router connection from {from}: {e}");
                        continue;
                    }
                    debug!("router connection from {from}");
                    self.inbound.insert(
                        t,
                        Inbound {
                            stream,
                            from,
                            challenge,
                            peer: None,
                            buf: vec![0; IN_BUF],
                            start: 0,
                            end: 0,
                            readable: true,
                            accepted_at: now,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("accepting a router connection: {e}");
                    return;
                }
            }
        }
    }

    /// Starts a nonblocking connect to peer `i`.
    fn dial(&mut self, i: PeerId, now: Instant) {
        let addr = self.peers.list[i].addr;
        let family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let started = socket::socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .and_then(|fd: OwnedFd| {
            // From our listen address: the peer checks that our Hello
            // comes from the address it names.
            let me = SocketAddr::new(self.peers.me_addr().ip(), 0);
            socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(me))?;
            match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
                Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(fd),
                Err(e) => Err(e),
            }
        });
        let t = self.token();
        let p = &mut self.peers.list[i];
        match started {
            Ok(fd) => {
                let stream = TcpStream::from(fd);
                tune(&stream);
                if let Err(e) = self.epoll.add(
                    &stream,
                    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT, t),
                ) {
                    warn!("peer {addr}: {e}");
                    p.next_dial = now + p.backoff;
                    return;
                }
                p.out = Some(stream);
                p.out_token = t;
                p.connecting = true;
            }
            Err(e) => self.unreachable(i, &e.to_string(), now),
        }
    }

    fn unreachable(&mut self, i: PeerId, why: &str, now: Instant) {
        let p = &mut self.peers.list[i];
        if !p.told_unreachable {
            info!("peer {} unreachable ({why}); retrying", p.addr);
            p.told_unreachable = true;
        } else {
            debug!("peer {} unreachable ({why})", p.addr);
        }
        p.next_dial = now + p.backoff;
        p.backoff = (p.backoff * 2).min(REDIAL_MAX);
    }

    /// A dial finished: wait for the peer's challenge, or schedule a
    /// redial.
    fn dialled(&mut self, i: PeerId, now: Instant) {
        let p = &mut self.peers.list[i];
        let err = p
            .out
            .as_ref()
            .map(|s| socket::getsockopt(s, sockopt::SocketError))
            .unwrap_or(Ok(0));
        let why = match err {
            Ok(0) => None,
            Ok(e) => Some(nix::errno::Errno::from_raw(e).desc().to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            self.close_out(i);
            self.unreachable(i, &why, now);
            return;
        }
        p.challenge = Some(Vec::with_capacity(CHALLENGE_LEN));
        if let Some(s) = &p.out {
            let _ = self
                .epoll
                .modify(s, &mut EpollEvent::new(EpollFlags::EPOLLIN, p.out_token));
        }
    }

    /// Reads the peer's challenge; once whole, says Hello and announces.
    fn read_challenge(&mut self, i: PeerId, now: Instant) {
        let p = &mut self.peers.list[i];
        let (Some(stream), Some(got)) = (p.out.as_mut(), p.challenge.as_mut()) else {
            return;
        };
        let mut b = [0u8; CHALLENGE_LEN];
        let want = CHALLENGE_LEN - got.len();
        match stream.read(&mut b[..want]) {
            Ok(0) => {
                self.close_out(i);
                self.unreachable(i, "closed before its challenge", now);
                return;
            }
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => {
                self.close_out(i);
                self.unreachable(i, &e.to_string(), now);
                return;
            }
        }
        if got.len() == CHALLENGE_LEN {
            let challenge: [u8; CHALLENGE_LEN] = got.as_slice().try_into().expect("whole");
            self.connected(i, &challenge);
        }
    }

    /// Says Hello (proving the key on `challenge`) and announces.
    fn connected(&mut self, i: PeerId, challenge: &[u8; CHALLENGE_LEN]) {
        let mut hello = self.peers.me.clone();
        if let Some(key) = &self.peers.policy.key {
            hello.mac = hello_mac(key, challenge, &hello.listen, hello.boot_id);
        }
        let p = &mut self.peers.list[i];
        p.connecting = false;
        p.challenge = None;
        p.backoff = REDIAL_MIN;
        p.told_unreachable = false;
        debug!("connected to peer {}", p.addr);
        let payload = encode_payload(&hello);
        let mut hdr = FrameHeader::new(Kind::Hello);
        hdr.payload_len = (payload.len() as u32).into();
        p.queue.clear();
        p.queue.buf.extend_from_slice(&hdr.encode());
        p.queue.buf.extend_from_slice(&payload);
        self.peers.announce_to(i);
        self.check_up(i);
    }

    fn check_up(&mut self, i: PeerId) {
        let p = &mut self.peers.list[i];
        if !p.up && p.out.is_some() && !p.connecting && p.inbound.is_some() {
            p.up = true;
            info!("peer {} up", p.addr);
            self.events.push(LinkEvent::Up(i));
        }
    }

    fn close_out(&mut self, i: PeerId) {
        let p = &mut self.peers.list[i];
        if let Some(s) = p.out.take() {
            let _ = self.epoll.delete(&s);
        }
        p.connecting = false;
        p.challenge = None;
        p.queue.clear();
    }

    /// Either direction to peer `i` broke: the peer is down.
    fn lost(&mut self, i: PeerId, why: &str, now: Instant) {
        self.close_out(i);
        if let Some(t) = self.peers.list[i].inbound.take() {
            if let Some(c) = self.inbound.remove(&t) {
                let _ = self.epoll.delete(&c.stream);
            }
        }
        let p = &mut self.peers.list[i];
        p.next_dial = now + REDIAL_MIN;
        p.backoff = REDIAL_MIN;
        p.boot_id = None;
        p.nic_of.clear();
        p.nic_ud_qps.clear();
        let was_up = std::mem::replace(&mut p.up, false);
        let addr = p.addr;
        let gids = self.peers.registry.forget(addr);
        if was_up {
            info!("peer {addr} down ({why})");
            self.events.push(LinkEvent::Down(i, gids));
        } else {
            debug!("peer {addr}: {why}");
        }
    }

    fn flush(&mut self, i: PeerId, now: Instant) {
        let p = &mut self.peers.list[i];
        if p.connecting || p.queue.len() == 0 {
            return;
        }
        let Some(stream) = p.out.as_mut() else {
            return;
        };
        let was_full = p.queue.len() >= OUT_SOFT;
        if let Err(e) = p.queue.flush(stream) {
            self.lost(i, &e.to_string(), now);
            return;
        }
        if was_full && p.queue.len() < OUT_SOFT {
            self.room_opened = true;
        }
        let want = if p.queue.len() > 0 {
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
        } else {
            EpollFlags::EPOLLIN
        };
        if let Some(s) = &p.out {
            let _ = self
                .epoll
                .modify(s, &mut EpollEvent::new(want, p.out_token));
        }
    }

    fn drop_inbound(&mut self, t: u64, why: &str, now: Instant) {
        let Some(c) = self.inbound.remove(&t) else {
            return;
        };
        let _ = self.epoll.delete(&c.stream);
        match c.peer {
            Some(i) if self.peers.list[i].inbound == Some(t) => {
                self.peers.list[i].inbound = None;
                self.lost(i, why, now);
            }
            _ => debug!("router connection dropped: {why}"),
        }
    }

    fn read(&mut self, t: u64, now: Instant) {
        let Some(c) = self.inbound.get_mut(&t) else {
            return;
        };
        if !c.readable {
            return;
        }
        if let Some(i) = c.peer {
            if self.peers.list[i].queue.len() > OUT_HARD {
                return; // the peer is not reading our replies: wait.
            }
        }
        if c.start == c.end {
            c.start = 0;
            c.end = 0;
        } else if c.buf.len() - c.end < READ_STEP / 2 {
            c.buf.copy_within(c.start..c.end, 0);
            c.end -= c.start;
            c.start = 0;
        }
        let room = c.buf.len() - c.end;
        if room == 0 {
            return; // a whole frame is waiting to be handled
        }
        let at = c.end;
        match c.stream.read(&mut c.buf[at..]) {
            Ok(0) => self.drop_inbound(t, "connection closed", now),
            Ok(n) => {
                c.end += n;
                if n < room {
                    c.readable = false;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => c.readable = false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => self.drop_inbound(t, &e.to_string(), now),
        }
    }

    /// Hands every complete data frame read so far to `f`, with the peer
    /// it came from and the peers to answer on. Hello and Announce frames
    /// are handled here; a frame that cannot be decoded, or a data frame
    /// before Hello, closes the connection.
    pub fn frames(
        &mut self,
        now: Instant,
        mut f: impl FnMut(&mut Peers, PeerId, &FrameHeader, &[u8]),
    ) {
        let tokens: Vec<u64> = self.inbound.keys().copied().collect();
        for t in tokens {
            let Some(c) = self.inbound.get_mut(&t) else {
                continue;
            };
            let buf = std::mem::take(&mut c.buf);
            let (mut start, end) = (c.start, c.end);
            let mut failure: Option<String> = None;
            while end - start >= HEADER_LEN {
                let raw: &[u8; HEADER_LEN] =
                    buf[start..start + HEADER_LEN].try_into().expect("header");
                let hdr = match FrameHeader::decode(raw) {
                    Ok(h) => h,
                    Err(e) => {
                        failure = Some(format!("bad frame: {e}"));
                        break;
                    }
                };
                let next = start + HEADER_LEN + hdr.payload_len.get() as usize;
                if end < next {
                    break;
                }
                let payload = &buf[start + HEADER_LEN..next];
                let peer = self.inbound[&t].peer;
                match (hdr.kind(), peer) {
                    (Kind::Hello, None) => {
                        if let Err(why) = self.hello(t, payload, now) {
                            failure = Some(why);
                            break;
                        }
                    }
                    (Kind::Hello, Some(_)) => {
                        failure = Some("second Hello".into());
                        break;
                    }
                    (_, None) => {
                        failure = Some("data before Hello".into());
                        break;
                    }
                    (Kind::Announce, Some(i)) => {
                        let Some(a) = decode_payload::<Announce>(payload) else {
                            failure = Some("bad Announce".into());
                            break;
                        };
                        let addr = self.peers.list[i].addr;
                        let refused =
                            self.peers
                                .registry
                                .learn(addr, &a.gids, &self.peers.served.clone());
                        for g in &refused {
                            warn!(
                                "peer {addr} announces GID {} that another router serves: ignored",
                                std::net::Ipv6Addr::from(*g)
                            );
                        }
                        // Only its own GIDs' NICs count (a peer cannot name
                        // the NIC of a GID another router serves).
                        let own: std::collections::HashSet<Gid> = a
                            .gids
                            .iter()
                            .filter(|g| !refused.contains(g))
                            .copied()
                            .collect();
                        let p = &mut self.peers.list[i];
                        p.nic_of = a
                            .nic_gids
                            .iter()
                            .filter(|(g, _)| own.contains(g))
                            .copied()
                            .collect();
                        p.nic_ud_qps = a
                            .nic_ud_qps
                            .iter()
                            .filter_map(|&(qpn, gid)| Some(((*p.nic_of.get(&gid)?, qpn), gid)))
                            .collect();
                        debug!(
                            "peer {addr} serves {} GIDs, {} of them on a NIC",
                            a.gids.len(),
                            a.nic_gids.len()
                        );
                    }
                    (_, Some(i)) => {
                        if self.peers.list[i].up {
                            f(&mut self.peers, i, &hdr, payload);
                        }
                    }
                }
                start = next;
            }
            if let Some(why) = failure {
                warn!("router connection: {why}; closing it");
                self.drop_inbound(t, &why, now);
                continue;
            }
            if let Some(c) = self.inbound.get_mut(&t) {
                c.buf = buf;
                c.start = start;
            }
        }
    }

    fn hello(&mut self, t: u64, payload: &[u8], now: Instant) -> Result<(), String> {
        let hello: Hello = decode_payload(payload).ok_or("bad Hello")?;
        let addr: SocketAddr = hello
            .listen
            .parse()
            .map_err(|_| format!("Hello with address {:?}", hello.listen))?;
        let c = &self.inbound[&t];
        if c.from.ip().to_canonical() != addr.ip().to_canonical() {
            return Err(format!(
                "Hello names {addr} but comes from {}: refused",
                c.from.ip()
            ));
        }
        if let Some(key) = &self.peers.policy.key {
            if !hello_proves(key, &c.challenge, &hello) {
                return Err(format!(
                    "Hello from {addr} does not prove the link key: refused"
                ));
            }
        }
        let etcd = self.peers.registry.etcd();
        if let Some(r) = etcd {
            // A router registered in etcd, in the run it registered.
            match r.router_boot(&addr) {
                Some(b) if b == hello.boot_id => {}
                Some(b) => {
                    return Err(format!(
                        "Hello from {addr} with boot id {:016x}, but etcd registers boot id {b:016x}: refused",
                        hello.boot_id
                    ))
                }
                None => return Err(format!("Hello from {addr}: not registered in etcd: refused")),
            }
        }
        let i = match self.peers.find(addr) {
            Some(i) => i,
            None if etcd.is_none()
                && !self
                    .peers
                    .policy
                    .accept_from
                    .iter()
                    .any(|net| net.contains(&addr.ip())) =>
            {
                return Err(format!(
                    "Hello from {addr}: not a --peer and not covered by --accept-peers: refused"
                ));
            }
            None if self.peers.list.len() >= MAX_PEERS => {
                return Err(format!("Hello from {addr}: already {MAX_PEERS} peers"));
            }
            None => {
                info!("router {addr} introduced itself; adding it as a peer");
                self.add_peer(addr, false, now)
            }
        };
        let p = &mut self.peers.list[i];
        if p.inbound.is_some() {
            // The peer's live connection stays; this one goes. (A peer
            // that restarted closed its old connection first.)
            return Err(format!(
                "router {addr} is connected already: a second connection is refused"
            ));
        }
        p.boot_id = Some(hello.boot_id);
        p.inbound = Some(t);
        if p.out.is_none() {
            p.next_dial = now;
        }
        if let Some(c) = self.inbound.get_mut(&t) {
            c.peer = Some(i);
        }
        self.check_up(i);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Served;

    fn served(gids: &[u8], qps: &[u32]) -> Served {
        Served {
            gids: gids.iter().map(|g| [*g; 16]).collect(),
            nic_gids: Vec::new(),
            nic_ud_qps: qps.iter().map(|q| (*q, [1; 16])).collect(),
        }
    }

    /// Withdrawals may wait; anything new (a GID, a NIC's UD QP) may not.
    #[test]
    fn only_withdrawals_wait() {
        let told = served(&[1, 2, 3], &[7]);
        assert!(served(&[1, 3], &[7]).only_withdraws_from(&told));
        assert!(served(&[], &[]).only_withdraws_from(&told));
        assert!(told.only_withdraws_from(&told));
        assert!(!served(&[1, 4], &[7]).only_withdraws_from(&told));
        assert!(!served(&[1], &[8]).only_withdraws_from(&told));
        assert!(!served(&[1, 2, 3], &[7, 8]).only_withdraws_from(&told));
    }
}
