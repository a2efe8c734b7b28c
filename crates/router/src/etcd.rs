//! The location registry on etcd (`flowverbs router --registry
//! etcd://HOST:PORT[,HOST:PORT...]`).
//!
//! Keys, all written under one lease per router run (TTL
//! `--registry-ttl`, kept alive while the router runs):
//!
//! - `/flowverbs/routers/<listen IP:PORT>` = `boot <boot id, 16 hex>`: the
//!   router is alive, and which run of it (a restarted router has a new
//!   boot id; its Hello must carry it).
//! - `/flowverbs/gids/<GID, 32 hex>` = `<listen IP:PORT> <boot id>`: the
//!   router serving that GID. Written by a transaction that succeeds only
//!   if the key does not exist: the first owner keeps a GID, a second
//!   claimant logs and refuses (it claims the GID again if the key goes).
//!
//! A router killed stops keeping its lease alive: etcd deletes its keys
//! after the TTL, and every other router's watch sees them go.
//!
//! Threads: etcd is spoken only on a thread of its own (the *registry
//! thread*, a current-thread tokio runtime). The data-path thread owns an
//! [`EtcdRegistry`]: a copy of both prefixes (the cache), loaded by a
//! paged range read and kept current by a watch from the next revision,
//! fed through a channel and an eventfd that wakes the router's epoll.
//! `locate` reads the cache and never waits. The engine hands the GIDs it
//! serves to the registry thread through another channel.
//!
//! While etcd cannot be reached the cache stays as it was: connections
//! already made keep working, but a *new* path (`resolve`, at the RTR
//! transition of a QP) is refused with the reason, because a stale cache
//! could name a router that no longer serves the GID. Everything comes
//! back on reconnect (a fresh snapshot replaces the cache; routers that went
//! meanwhile are reported, and their links closed).
//!
//! Everything read from etcd is untrusted: keys and values that do not
//! parse are skipped with a (counted, rate-limited) warning.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use log::{debug, info, warn};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::transport::Gid;

/// Every key of the registry starts with this.
pub const PREFIX: &str = "/flowverbs/";
/// Routers: `ROUTERS<listen addr>`.
pub const ROUTERS: &str = "/flowverbs/routers/";
/// GIDs: `GIDS<32 hex digits>`.
pub const GIDS: &str = "/flowverbs/gids/";
/// Keys read per page of the snapshot.
const PAGE: i64 = 5000;
/// Values longer than this are not ours.
const MAX_VALUE: usize = 128;
/// How long one etcd request may take before the registry thread calls
/// etcd unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// `--registry etcd://...` and its lease TTL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each etcd endpoint.
    pub endpoints: Vec<String>,
    /// Seconds a router's keys outlive it.
    pub ttl: i64,
}

impl EtcdConfig {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]`.
    pub fn parse(url: &str, ttl_secs: u64) -> Result<EtcdConfig, String> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("registry {url:?}: expected etcd://HOST:PORT[,HOST:PORT...]"))?;
        let mut endpoints = Vec::new();
        for ep in rest.split(',') {
            let (host, port) = ep
                .rsplit_once(':')
                .ok_or_else(|| format!("registry endpoint {ep:?}: expected HOST:PORT"))?;
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("registry endpoint {ep:?}: bad port"))?;
            let host_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c));
            if !host_ok {
                return Err(format!("registry endpoint {ep:?}: bad host"));
            }
            endpoints.push(format!("{host}:{port}"));
        }
        if !(1..=3600).contains(&ttl_secs) {
            return Err(format!(
                "--registry-ttl {ttl_secs}: between 1 and 3600 seconds"
            ));
        }
        Ok(EtcdConfig {
            endpoints,
            ttl: ttl_secs as i64,
        })
    }

    fn urls(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|e| format!("http://{e}"))
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `/flowverbs/gids/<32 hex>`.
pub fn gid_key(g: &Gid) -> String {
    format!("{GIDS}{}", hex(g))
}

/// The GID a key under [`GIDS`] names (32 lowercase hex digits).
pub fn parse_gid_key(key: &[u8]) -> Option<Gid> {
    let h = key.strip_prefix(GIDS.as_bytes())?;
    if h.len() != 32 || !h.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut g = [0u8; 16];
    for (i, pair) in h.chunks(2).enumerate() {
        g[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(g)
}

/// `<listen> <boot id>`: who serves a GID.
pub fn gid_value(listen: SocketAddr, boot: u64) -> String {
    format!("{listen} {boot:016x}")
}

pub fn parse_gid_value(v: &[u8]) -> Option<(SocketAddr, u64)> {
    if v.len() > MAX_VALUE {
        return None;
    }
    let s = std::str::from_utf8(v).ok()?;
    let (addr, boot) = s.split_once(' ')?;
    Some((addr.parse().ok()?, parse_boot(boot)?))
}

pub fn router_key(listen: SocketAddr) -> String {
    format!("{ROUTERS}{listen}")
}

pub fn parse_router_key(key: &[u8]) -> Option<SocketAddr> {
    let a = key.strip_prefix(ROUTERS.as_bytes())?;
    if a.len() > MAX_VALUE {
        return None;
    }
    std::str::from_utf8(a).ok()?.parse().ok()
}

pub fn router_value(boot: u64) -> String {
    format!("boot {boot:016x}")
}

pub fn parse_router_value(v: &[u8]) -> Option<u64> {
    if v.len() > MAX_VALUE {
        return None;
    }
    parse_boot(std::str::from_utf8(v).ok()?.strip_prefix("boot ")?)
}

fn parse_boot(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn gid_text(g: &Gid) -> String {
    std::net::Ipv6Addr::from(*g).to_string()
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// From the registry thread to the data path.
#[derive(Debug)]
enum Update {
    /// The whole registry at one revision (replaces the cache).
    Snapshot {
        routers: HashMap<SocketAddr, u64>,
        gids: HashMap<Gid, SocketAddr>,
    },
    /// A router registered (with its boot id) or went.
    Router(SocketAddr, Option<u64>),
    /// A GID's owner, or None: nobody serves it.
    Gid(Gid, Option<SocketAddr>),
    /// In sync with etcd, or why not.
    Health(Result<(), String>),
}

/// From the data path to the registry thread.
enum Command {
    /// This router serves exactly these GIDs now.
    Serve(Vec<Gid>),
    /// Revoke the lease (the keys go at once) and end.
    Stop,
}

/// What the cache learned that the links must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// The router at this address went (None) or registered with this
    /// boot id: a link to another run of it is stale.
    Router(SocketAddr, Option<u64>),
}

/// The data-path side: the cache and the channels to the registry thread.
pub struct EtcdRegistry {
    me: SocketAddr,
    routers: HashMap<SocketAddr, u64>,
    gids: HashMap<Gid, SocketAddr>,
    health: Result<(), String>,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    updates: std::sync::mpsc::Receiver<Update>,
    wake: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Updates applied since start (snapshots count their entries).
    pub applied: u64,
}

impl EtcdRegistry {
    /// Starts the registry thread for the router listening on `me` with
    /// boot id `boot`. Returns at once; the cache fills in the background.
    pub fn start(config: EtcdConfig, me: SocketAddr, boot: u64) -> anyhow::Result<EtcdRegistry> {
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let (commands, commands_rx) = tokio::sync::mpsc::unbounded_channel();
        let (updates_tx, updates) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the etcd registry's runtime")?;
        let worker = Worker {
            config: config.clone(),
            me,
            boot,
            out: updates_tx,
            wake: wake.clone(),
            commands: commands_rx,
            wanted: HashSet::new(),
            owned: HashSet::new(),
            refused: HashSet::new(),
            lease: None,
            told: None,
            bad_entries: 0,
        };
        let thread = std::thread::Builder::new()
            .name("fv-etcd".into())
            .spawn(move || runtime.block_on(worker.run()))
            .context("starting the etcd registry thread")?;
        info!(
            "location registry: etcd at {} (lease TTL {} s)",
            config.endpoints.join(","),
            config.ttl
        );
        Ok(EtcdRegistry {
            me,
            routers: HashMap::new(),
            gids: HashMap::new(),
            health: Err("not synchronised with etcd yet".into()),
            commands,
            updates,
            wake,
            thread: Some(thread),
            applied: 0,
        })
    }

    /// Readable when updates wait for [`EtcdRegistry::poll`].
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Applies what the registry thread sent; returns what the links must
    /// act on. Never blocks.
    pub fn poll(&mut self) -> Vec<Change> {
        let _ = self.wake.read();
        let mut changes = Vec::new();
        while let Ok(u) = self.updates.try_recv() {
            match u {
                Update::Snapshot { routers, gids } => {
                    self.applied += (routers.len() + gids.len()) as u64;
                    for (r, boot) in &self.routers {
                        match routers.get(r) {
                            Some(b) if b == boot => {}
                            other => changes.push(Change::Router(*r, other.copied())),
                        }
                    }
                    self.routers = routers;
                    self.gids = gids;
                }
                Update::Router(addr, boot) => {
                    self.applied += 1;
                    let old = match boot {
                        Some(b) => self.routers.insert(addr, b),
                        None => self.routers.remove(&addr),
                    };
                    if old.is_some() && old != boot {
                        changes.push(Change::Router(addr, boot));
                    }
                }
                Update::Gid(g, owner) => {
                    self.applied += 1;
                    match owner {
                        Some(a) => self.gids.insert(g, a),
                        None => self.gids.remove(&g),
                    };
                }
                Update::Health(h) => {
                    match (&self.health, &h) {
                        (Err(_), Ok(())) => info!("location registry: in sync with etcd"),
                        (Ok(()), Err(why)) => warn!(
                            "location registry: {why}; connections made stay, new ones are refused until etcd is back"
                        ),
                        _ => {}
                    }
                    self.health = h;
                }
            }
        }
        changes
    }

    /// The GIDs this router serves now (registered by the registry thread).
    pub fn serve(&self, gids: &[Gid]) {
        let _ = self.commands.send(Command::Serve(gids.to_vec()));
    }

    /// The router serving `gid`, for a new connection: refused while the
    /// cache is not in sync with etcd.
    pub fn resolve(&self, gid: &Gid) -> Result<SocketAddr, String> {
        if let Err(why) = &self.health {
            return Err(format!(
                "cannot locate GID {}: the etcd registry is unavailable ({why})",
                gid_text(gid)
            ));
        }
        match self.gids.get(gid) {
            Some(a) if *a == self.me => Err(format!(
                "GID {} is registered to this router, but none of its sessions serves it",
                gid_text(gid)
            )),
            Some(a) if !self.routers.contains_key(a) => Err(format!(
                "GID {} is registered to router {a}, which is not registered itself",
                gid_text(gid)
            )),
            Some(a) => Ok(*a),
            None => Err(format!(
                "no router is registered in etcd for GID {}",
                gid_text(gid)
            )),
        }
    }

    /// The boot id under which `router` registered, if it is registered.
    pub fn router_boot(&self, router: &SocketAddr) -> Option<u64> {
        self.routers.get(router).copied()
    }

    /// In sync with etcd, or why not.
    pub fn health(&self) -> Result<(), &str> {
        self.health.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Routers and GIDs in the cache.
    pub fn cache_len(&self) -> (usize, usize) {
        (self.routers.len(), self.gids.len())
    }
}

impl super::registry::LocationRegistry for EtcdRegistry {
    /// Nobody: routers connect on demand.
    fn peers(&self) -> Vec<SocketAddr> {
        Vec::new()
    }

    /// etcd says who serves what: announcements change nothing, and the
    /// GIDs `router` announces that etcd gives to another are refused.
    fn learn(&mut self, router: SocketAddr, gids: &[Gid], _local: &[Gid]) -> Vec<Gid> {
        gids.iter()
            .filter(|g| self.gids.get(*g) != Some(&router))
            .copied()
            .collect()
    }

    /// The GIDs etcd gives to `router` (its link went; the GIDs stay in
    /// the cache for as long as etcd has them).
    fn forget(&mut self, router: SocketAddr) -> Vec<Gid> {
        self.gids
            .iter()
            .filter(|(_, r)| **r == router)
            .map(|(g, _)| *g)
            .collect()
    }

    fn locate(&self, gid: &Gid) -> Option<SocketAddr> {
        self.gids.get(gid).copied()
    }
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The registry thread's state.
struct Worker {
    config: EtcdConfig,
    me: SocketAddr,
    boot: u64,
    out: std::sync::mpsc::Sender<Update>,
    wake: Arc<EventFd>,
    commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
    /// What the engine serves.
    wanted: HashSet<Gid>,
    /// What etcd gives to this run of the router.
    owned: HashSet<Gid>,
    /// Wanted, but another router had it first.
    refused: HashSet<Gid>,
    lease: Option<i64>,
    /// The last outage logged (each new reason is logged once).
    told: Option<String>,
    bad_entries: u64,
}

type Res<T> = Result<T, String>;

fn e(what: &str) -> impl Fn(etcd_client::Error) -> String + '_ {
    move |err| format!("{what}: {err}")
}

/// What ended a session with etcd.
enum End {
    Stop,
    Lost(String),
}

impl Worker {
    fn send(&self, u: Update) {
        if self.out.send(u).is_ok() {
            let _ = self.wake.write(1);
        }
    }

    async fn run(mut self) {
        let mut backoff = RETRY_MIN;
        loop {
            let why = match self.session().await {
                End::Stop => return,
                End::Lost(why) => why,
            };
            if self.told.as_deref() != Some(why.as_str()) {
                warn!("etcd registry: {why}; retrying");
                self.told = Some(why.clone());
            } else {
                debug!("etcd registry: {why}; retrying");
            }
            self.send(Update::Health(Err(why)));
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    c = self.commands.recv() => match c {
                        None | Some(Command::Stop) => return,
                        Some(Command::Serve(g)) => self.wanted = g.into_iter().collect(),
                    }
                }
            }
            backoff = (backoff * 2).min(RETRY_MAX);
            if backoff == RETRY_MAX {
                backoff = RETRY_MIN.max(RETRY_MAX / 2);
            }
        }
    }

    async fn session(&mut self) -> End {
        match self.session_inner().await {
            Ok(()) => End::Stop,
            Err(why) => End::Lost(why),
        }
    }

    async fn session_inner(&mut self) -> Res<()> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let endpoints = self.config.endpoints.join(",");
        let mut c = Client::connect(self.config.urls(), Some(options))
            .await
            .map_err(|err| format!("cannot connect to etcd at {endpoints}: {err}"))?;

        // The lease: the previous one if etcd still has it, else a new one.
        let mut lease = None;
        if let Some(id) = self.lease {
            let (mut k, mut s) = c.lease_keep_alive(id).await.map_err(e("lease"))?;
            k.keep_alive().await.map_err(e("lease keep-alive"))?;
            if let Ok(Some(r)) = s.message().await {
                if r.ttl() > 0 {
                    lease = Some(id);
                }
            }
        }
        let lease = match lease {
            Some(id) => id,
            None => {
                let r = c
                    .lease_grant(self.config.ttl, None)
                    .await
                    .map_err(e("granting a lease"))?;
                self.owned.clear();
                r.id()
            }
        };
        self.lease = Some(lease);
        c.put(
            router_key(self.me),
            router_value(self.boot),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(e("registering this router"))?;

        // GIDs: claim what is served (also what we held: it may be gone).
        self.owned.clear();
        self.refused.clear();
        let wanted: Vec<Gid> = self.wanted.iter().copied().collect();
        for g in wanted {
            self.claim(&mut c, lease, g).await?;
        }

        // The cache: everything at one revision, then a watch from the next.
        let rev = self.snapshot(&mut c).await?;
        let mut watch = c
            .watch(
                PREFIX,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            )
            .await
            .map_err(e("watching the registry"))?;
        let (mut keeper, mut kept) = c.lease_keep_alive(lease).await.map_err(e("lease"))?;
        if self.told.take().is_some() {
            info!("etcd registry: connected again");
        } else {
            info!(
                "etcd registry: registered {} (boot id {:016x})",
                self.me, self.boot
            );
        }
        self.send(Update::Health(Ok(())));
        let every = Duration::from_millis((self.config.ttl as u64 * 1000 / 3).max(300));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Stop) => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), c.lease_revoke(lease)).await;
                        return Ok(());
                    }
                    Some(Command::Serve(g)) => self.serve(&mut c, lease, g).await?,
                },
                _ = tick.tick() => keeper.keep_alive().await.map_err(e("lease keep-alive"))?,
                m = kept.message() => match m.map_err(e("lease keep-alive"))? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => {
                        self.lease = None;
                        return Err("this router's lease expired in etcd; registering again".into());
                    }
                },
                w = watch.message() => {
                    let Some(resp) = w.map_err(e("watch"))? else {
                        return Err("etcd closed the watch".into());
                    };
                    if resp.canceled() {
                        return Err(format!(
                            "etcd cancelled the watch ({}; compacted at revision {})",
                            resp.cancel_reason(),
                            resp.compact_revision()
                        ));
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let put = ev.event_type() == EventType::Put;
                        self.on_event(&mut c, lease, kv.key(), put.then(|| kv.value())).await?;
                    }
                }
            }
        }
    }

    /// Reads the whole registry (paged, at one revision) into a snapshot
    /// for the cache; returns the revision.
    async fn snapshot(&mut self, c: &mut Client) -> Res<i64> {
        let end = prefix_end(PREFIX.as_bytes());
        let mut from = PREFIX.as_bytes().to_vec();
        let mut rev = 0;
        let mut routers = HashMap::new();
        let mut gids = HashMap::new();
        loop {
            let mut o = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if rev > 0 {
                o = o.with_revision(rev);
            }
            let r = c
                .get(from.clone(), Some(o))
                .await
                .map_err(e("reading the registry"))?;
            if rev == 0 {
                rev = r.header().map_or(0, |h| h.revision());
            }
            for kv in r.kvs() {
                if let Some(a) = parse_router_key(kv.key()) {
                    match parse_router_value(kv.value()) {
                        Some(b) => {
                            routers.insert(a, b);
                        }
                        None => self.bad(kv.key()),
                    }
                } else if let Some(g) = parse_gid_key(kv.key()) {
                    match parse_gid_value(kv.value()) {
                        Some((a, _)) => {
                            gids.insert(g, a);
                        }
                        None => self.bad(kv.key()),
                    }
                } else {
                    self.bad(kv.key());
                }
            }
            match r.kvs().last() {
                Some(last) if r.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        debug!(
            "etcd registry: {} routers, {} GIDs at revision {rev}",
            routers.len(),
            gids.len()
        );
        self.send(Update::Snapshot { routers, gids });
        Ok(rev)
    }

    fn bad(&mut self, key: &[u8]) {
        self.bad_entries += 1;
        if self.bad_entries <= 10 || self.bad_entries.is_power_of_two() {
            warn!(
                "etcd registry: ignoring the entry {:?} (not a flowverbs router or GID record; {} so far)",
                String::from_utf8_lossy(&key[..key.len().min(200)]),
                self.bad_entries
            );
        }
    }

    async fn on_event(
        &mut self,
        c: &mut Client,
        lease: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Res<()> {
        if let Some(a) = parse_router_key(key) {
            let boot = match value {
                Some(v) => match parse_router_value(v) {
                    Some(b) => Some(b),
                    None => {
                        self.bad(key);
                        None
                    }
                },
                None => None,
            };
            if a == self.me && boot != Some(self.boot) {
                return Err(format!(
                    "this router's registration {} was removed or overwritten",
                    router_key(a)
                ));
            }
            self.send(Update::Router(a, boot));
        } else if let Some(g) = parse_gid_key(key) {
            let owner = match value {
                Some(v) => match parse_gid_value(v) {
                    Some((a, _)) => Some(a),
                    None => {
                        self.bad(key);
                        None
                    }
                },
                None => None,
            };
            if self.owned.contains(&g)
                && value.is_none_or(|v| v != gid_value(self.me, self.boot).as_bytes())
            {
                self.owned.remove(&g);
            }
            self.send(Update::Gid(g, owner));
            // Wanted and free now (its owner released it, or its lease
            // expired): claim it.
            if value.is_none() && self.wanted.contains(&g) && !self.owned.contains(&g) {
                self.claim(c, lease, g).await?;
            }
        } else {
            self.bad(key);
        }
        Ok(())
    }

    /// The engine serves `gids` now: claims the new ones, releases the
    /// ones it no longer serves.
    async fn serve(&mut self, c: &mut Client, lease: i64, gids: Vec<Gid>) -> Res<()> {
        let new: HashSet<Gid> = gids.into_iter().collect();
        let added: Vec<Gid> = new.difference(&self.wanted).copied().collect();
        let removed: Vec<Gid> = self.wanted.difference(&new).copied().collect();
        self.wanted = new;
        for g in removed {
            self.refused.remove(&g);
            if self.owned.remove(&g) {
                let key = gid_key(&g);
                let txn = Txn::new()
                    .when([Compare::value(
                        key.clone(),
                        CompareOp::Equal,
                        gid_value(self.me, self.boot),
                    )])
                    .and_then([TxnOp::delete(key, None)]);
                c.txn(txn).await.map_err(e("releasing a GID"))?;
                info!("GID {} released in etcd", gid_text(&g));
            }
        }
        for g in added {
            self.claim(c, lease, g).await?;
        }
        Ok(())
    }

    /// Registers GID `g` for this router unless another router has it.
    async fn claim(&mut self, c: &mut Client, lease: i64, g: Gid) -> Res<()> {
        let key = gid_key(&g);
        let mine = gid_value(self.me, self.boot);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                mine.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let r = c.txn(txn).await.map_err(e("registering a GID"))?;
        if r.succeeded() {
            self.owned.insert(g);
            self.refused.remove(&g);
            info!("GID {} registered in etcd", gid_text(&g));
            return Ok(());
        }
        let existing = r.op_responses().into_iter().find_map(|o| match o {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let Some(kv) = existing else {
            // Gone between the compare and the read: the watch's delete
            // event claims it again.
            return Ok(());
        };
        match parse_gid_value(kv.value()) {
            Some((a, b)) if a == self.me && (b != self.boot || kv.lease() != lease) => {
                // An earlier run of this router (only one process can
                // listen on this address): take the key over.
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::put(
                        key,
                        mine,
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                let r = c.txn(txn).await.map_err(e("registering a GID"))?;
                if r.succeeded() {
                    self.owned.insert(g);
                    info!(
                        "GID {} registered in etcd (taken over from an earlier run of this router)",
                        gid_text(&g)
                    );
                }
            }
            Some((a, _)) if a == self.me => {
                self.owned.insert(g);
            }
            Some((a, _)) => {
                if self.refused.insert(g) {
                    warn!(
                        "GID {} is registered in etcd by router {a}: this router does not serve it to other hosts (the first owner keeps a GID)",
                        gid_text(&g)
                    );
                }
            }
            None => {
                if self.refused.insert(g) {
                    warn!(
                        "GID {}: its etcd key holds something that is not a flowverbs record; not claimed",
                        gid_text(&g)
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_refused() {
        let c = EtcdConfig::parse("etcd://198.18.70.1:2379,localhost:1", 5).unwrap();
        assert_eq!(c.endpoints, vec!["198.18.70.1:2379", "localhost:1"]);
        assert_eq!(c.ttl, 5);
        for bad in [
            "http://x:1",
            "etcd://",
            "etcd://host",
            "etcd://host:0",
            "etcd://host:99999",
            "etcd://:1",
            "etcd://a b:1",
            "etcd://a:1,",
        ] {
            assert!(EtcdConfig::parse(bad, 5).is_err(), "{bad}");
        }
        assert!(EtcdConfig::parse("etcd://a:1", 0).is_err());
    }

    #[test]
    fn records_round_trip_and_junk_is_refused() {
        let g: Gid = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 70, 1];
        let k = gid_key(&g);
        assert_eq!(k, "/flowverbs/gids/00000000000000000000ffffc6124601");
        assert_eq!(parse_gid_key(k.as_bytes()), Some(g));
        let a: SocketAddr = "198.18.70.1:4791".parse().unwrap();
        assert_eq!(
            parse_gid_value(gid_value(a, 0xabc).as_bytes()),
            Some((a, 0xabc))
        );
        assert_eq!(parse_router_key(router_key(a).as_bytes()), Some(a));
        assert_eq!(parse_router_value(router_value(7).as_bytes()), Some(7));
        for junk in [
            &b"/flowverbs/gids/00"[..],
            b"/flowverbs/gids/00000000000000000000FFFFC6124601",
            b"/flowverbs/gids/0000000000000000000zffffc6124601",
            b"/flowverbs/gids/+0000000000000000000ffffc6124601",
            b"/other/00000000000000000000ffffc6124601",
        ] {
            assert_eq!(parse_gid_key(junk), None, "{junk:?}");
        }
        for junk in [
            &b""[..],
            b"198.18.70.1:4791",
            b"198.18.70.1:4791 12",
            b"nonsense 0000000000000abc",
            b"198.18.70.1:4791 000000000000zabc",
            &[0xff; 40],
            &[b'1'; 400],
        ] {
            assert_eq!(parse_gid_value(junk), None, "{junk:?}");
        }
        assert_eq!(parse_router_value(b"boot 12"), None);
        assert_eq!(parse_router_key(b"/flowverbs/routers/not-an-addr"), None);
        assert_eq!(prefix_end(b"/flowverbs/"), b"/flowverbs0".to_vec());
    }

    /// The cache as the data path sees it, fed by hand (the registry
    /// thread's side is tested against a real etcd in tests/e2e_etcd.rs).
    #[test]
    fn cache_follows_updates_and_reports_routers_that_went() {
        let a: SocketAddr = "198.18.70.1:1".parse().unwrap();
        let b: SocketAddr = "198.18.70.2:1".parse().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (commands, _commands_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut r = EtcdRegistry {
            me: a,
            routers: HashMap::new(),
            gids: HashMap::new(),
            health: Err("not yet".into()),
            commands,
            updates: rx,
            wake: Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap()),
            thread: None,
            applied: 0,
        };
        let (g1, g2) = ([1u8; 16], [2u8; 16]);
        assert!(r.resolve(&g1).unwrap_err().contains("unavailable"));
        tx.send(Update::Snapshot {
            routers: [(a, 1), (b, 2)].into(),
            gids: [(g1, b), (g2, a)].into(),
        })
        .unwrap();
        tx.send(Update::Health(Ok(()))).unwrap();
        assert_eq!(r.poll(), vec![]);
        assert_eq!(r.resolve(&g1), Ok(b));
        assert!(r.resolve(&g2).unwrap_err().contains("none of its sessions"));
        assert!(r.resolve(&[3; 16]).unwrap_err().contains("no router"));
        // b restarts (new boot id) and g1 moves to a.
        tx.send(Update::Router(b, Some(3))).unwrap();
        tx.send(Update::Gid(g1, Some(a))).unwrap();
        assert_eq!(r.poll(), vec![Change::Router(b, Some(3))]);
        assert!(r.resolve(&g1).unwrap_err().contains("none of its sessions"));
        // etcd goes away: lookups are refused, the cache stays.
        tx.send(Update::Health(Err("etcd down".into()))).unwrap();
        r.poll();
        assert!(r.resolve(&g1).unwrap_err().contains("etcd down"));
        assert_eq!(
            super::super::registry::LocationRegistry::locate(&r, &g1),
            Some(a)
        );
        // A snapshot after the outage: b and g2 went meanwhile.
        tx.send(Update::Snapshot {
            routers: [(a, 1)].into(),
            gids: [(g1, a)].into(),
        })
        .unwrap();
        assert_eq!(r.poll(), vec![Change::Router(b, None)]);
        assert_eq!(
            super::super::registry::LocationRegistry::locate(&r, &g2),
            None
        );
    }
}
