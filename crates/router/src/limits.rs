//! What clients may hold of the router and how fast they may ask: the
//! rule, in one place and without I/O. The server and the control
//! handlers call it; `flowverbs status` shows the caps and what each
//! refused.
//!
//! The router serves every tenant of the host from one process, so its
//! descriptors, mappings (`vm.max_map_count`), memory and time are shared:
//! without caps one client could exhaust them for all. The caps are per
//! user (uid as the router sees it, from `SO_PEERCRED`) and per context,
//! so a tenant can only exhaust its own share:
//!
//! - connections before Hello: [`Limits::pending_per_uid`] per user and
//!   [`Limits::pending_total`] in all, each closed after
//!   [`Limits::hello_within`]; further ones are accepted and closed at once;
//! - sessions (contexts): [`Limits::sessions_per_uid`] (`EMFILE`);
//! - objects that cost the router a descriptor and a mapping (CQs, QPs,
//!   SRQs, completion channels): [`Limits::objects_per_session`], and for
//!   all sessions of a user a quarter of the router's budget (the smaller
//!   of its descriptor limit and `vm.max_map_count`, less a reserve for
//!   itself), so that at least four users can reach their caps at once;
//! - QPs, CQs and MRs, each counted on its own, per context and per user;
//! - registered bytes per user (the sum of the lengths of its MRs: what a
//!   NIC bounds with `RLIMIT_MEMLOCK`);
//! - queue entries per user: the depths of its send and receive queues,
//!   SRQs and CQs as the router sized their rings. No more work requests
//!   and completions than that can be outstanding, and the rings' memory
//!   (384 bytes a send entry, 272 a receive, 64 a completion) is bounded
//!   by it;
//! - control requests per second per context ([`RequestRate`]);
//! - link bytes in flight per user: what its QPs have sent to other hosts
//!   and not had answered ([`Limits::link_allowance`]). Past it, the
//!   user's QPs wait for answers before they send more (flow control, as
//!   a NIC's send queue waits for credits): no verb fails, and each pass
//!   that holds a QP back counts as a refusal.
//!
//! Every resource cap fails the verb with `ENOMEM`, as a NIC out of
//! resources does (and as `ib_umem_get` does past `RLIMIT_MEMLOCK`); the
//! rate with `EAGAIN`; a context past its user's cap with `EMFILE`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flowverbs_wire::control::{CapStatus, Request};
use flowverbs_wire::limits::{MAX_CQ, MAX_MR, MAX_QP};
use flowverbs_wire::segment::KEY_TABLE_SLOTS;

/// Descriptors and mappings the router keeps for itself (listeners,
/// epoll, FUSE, the links, libraries, its heap).
const RESERVE: usize = 4096;
/// The budget's share one user may take.
const USER_SHARE: usize = 4;

#[derive(Clone, Debug)]
pub struct Limits {
    pub pending_per_uid: usize,
    pub pending_total: usize,
    pub hello_within: Duration,
    pub sessions_per_uid: usize,
    pub objects_per_session: usize,
    pub objects_per_uid: usize,
    pub qps_per_session: u64,
    pub qps_per_uid: u64,
    pub cqs_per_session: u64,
    pub cqs_per_uid: u64,
    pub mrs_per_session: u64,
    pub mrs_per_uid: u64,
    /// None: no cap.
    pub registered_bytes_per_uid: Option<u64>,
    pub queue_entries_per_uid: u64,
    /// Control requests per second per context, and as many at once.
    pub requests_per_second: u32,
    /// Bytes one user's QPs may have on the links, sent and not answered
    /// (None: no cap beyond the links' own).
    pub link_bytes_per_uid: Option<u64>,
    /// rdma_cm's ids, pending requests, backlogs and files.
    pub rdma_cm: crate::rdma_cm::CmLimits,
}

impl Default for Limits {
    fn default() -> Limits {
        let objects_per_uid = (router_budget() / USER_SHARE).max(1);
        Limits {
            pending_per_uid: 16,
            pending_total: 256,
            hello_within: Duration::from_secs(5),
            sessions_per_uid: 256,
            objects_per_session: 4096,
            objects_per_uid,
            // The device's own limits per context (ibv_query_device); the
            // objects cap binds first for QPs and CQs by default.
            qps_per_session: MAX_QP.into(),
            qps_per_uid: objects_per_uid as u64,
            cqs_per_session: MAX_CQ.into(),
            cqs_per_uid: objects_per_uid as u64,
            mrs_per_session: MAX_MR.into(),
            // A quarter of semi mode's key table (one slot per MR), which
            // every user shares.
            mrs_per_uid: u64::from(KEY_TABLE_SLOTS) / USER_SHARE as u64,
            // fv0 pins nothing: registering costs the router no memory.
            registered_bytes_per_uid: None,
            // At most 6 GiB of rings (a send entry is 384 bytes).
            queue_entries_per_uid: 1 << 24,
            requests_per_second: 10_000,
            link_bytes_per_uid: None,
            rdma_cm: crate::rdma_cm::CmLimits::default(),
        }
    }
}

/// Descriptors and mappings the router can hand out to objects.
pub fn router_budget() -> usize {
    let maps = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(65530);
    let files = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft as usize)
        .unwrap_or(1024);
    maps.min(files).saturating_sub(RESERVE).max(1024)
}

/// Raises the router's descriptor limit to its hard limit (a daemon that
/// serves many clients needs more than the usual 1024), before the budget
/// is computed.
pub fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// A byte count with an optional binary suffix: `4096`, `64K`, `512M`,
/// `2G`, `1T` (for `--max-registered-bytes-per-user`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.as_bytes().last().map(|c| c.to_ascii_uppercase()) {
        Some(b'K') => (&s[..s.len() - 1], 10),
        Some(b'M') => (&s[..s.len() - 1], 20),
        Some(b'G') => (&s[..s.len() - 1], 30),
        Some(b'T') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 4096, 64K, 512M, 2G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// What a context or a user holds, or what one object costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CQs, QPs, SRQs and completion channels (a descriptor and a
    /// mapping each).
    pub objects: u64,
    pub qps: u64,
    pub cqs: u64,
    pub mrs: u64,
    pub registered_bytes: u64,
    pub queue_entries: u64,
}

impl Usage {
    /// A QP whose rings hold `entries` send and receive entries.
    pub fn qp(entries: u32) -> Usage {
        Usage {
            objects: 1,
            qps: 1,
            queue_entries: entries.into(),
            ..Usage::default()
        }
    }

    /// A CQ of `entries` completions.
    pub fn cq(entries: u32) -> Usage {
        Usage {
            objects: 1,
            cqs: 1,
            queue_entries: entries.into(),
            ..Usage::default()
        }
    }

    /// A CQ's extra ring (`ibv_resize_cq`) of `entries` completions.
    pub fn cq_ring(entries: u32) -> Usage {
        Usage {
            queue_entries: entries.into(),
            ..Usage::default()
        }
    }

    /// An SRQ of `entries` receives.
    pub fn srq(entries: u32) -> Usage {
        Usage {
            objects: 1,
            queue_entries: entries.into(),
            ..Usage::default()
        }
    }

    pub fn channel() -> Usage {
        Usage {
            objects: 1,
            ..Usage::default()
        }
    }

    /// An MR of `length` bytes.
    pub fn mr(length: u64) -> Usage {
        Usage {
            mrs: 1,
            registered_bytes: length,
            ..Usage::default()
        }
    }

    fn add(&mut self, o: &Usage) {
        self.objects = self.objects.saturating_add(o.objects);
        self.qps = self.qps.saturating_add(o.qps);
        self.cqs = self.cqs.saturating_add(o.cqs);
        self.mrs = self.mrs.saturating_add(o.mrs);
        self.registered_bytes = self.registered_bytes.saturating_add(o.registered_bytes);
        self.queue_entries = self.queue_entries.saturating_add(o.queue_entries);
    }

    fn sub(&mut self, o: &Usage) {
        self.objects = self.objects.saturating_sub(o.objects);
        self.qps = self.qps.saturating_sub(o.qps);
        self.cqs = self.cqs.saturating_sub(o.cqs);
        self.mrs = self.mrs.saturating_sub(o.mrs);
        self.registered_bytes = self.registered_bytes.saturating_sub(o.registered_bytes);
        self.queue_entries = self.queue_entries.saturating_sub(o.queue_entries);
    }

    fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

/// One cap. Its name is the router flag without `--max-`, with `_`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// Connections that have not said Hello (closed, no errno).
    Connections,
    SessionsPerUser,
    ObjectsPerContext,
    ObjectsPerUser,
    QpsPerContext,
    QpsPerUser,
    CqsPerContext,
    CqsPerUser,
    MrsPerContext,
    MrsPerUser,
    RegisteredBytesPerUser,
    QueueEntriesPerUser,
    RequestsPerSecond,
    /// Flow control, not a refusal of a verb (see [`Limits::link_allowance`]).
    LinkBytesPerUser,
}

impl Cap {
    pub const ALL: [Cap; 14] = [
        Cap::Connections,
        Cap::SessionsPerUser,
        Cap::ObjectsPerContext,
        Cap::ObjectsPerUser,
        Cap::QpsPerContext,
        Cap::QpsPerUser,
        Cap::CqsPerContext,
        Cap::CqsPerUser,
        Cap::MrsPerContext,
        Cap::MrsPerUser,
        Cap::RegisteredBytesPerUser,
        Cap::QueueEntriesPerUser,
        Cap::RequestsPerSecond,
        Cap::LinkBytesPerUser,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cap::Connections => "connections_before_hello",
            Cap::SessionsPerUser => "sessions_per_user",
            Cap::ObjectsPerContext => "objects_per_context",
            Cap::ObjectsPerUser => "objects_per_user",
            Cap::QpsPerContext => "qps_per_context",
            Cap::QpsPerUser => "qps_per_user",
            Cap::CqsPerContext => "cqs_per_context",
            Cap::CqsPerUser => "cqs_per_user",
            Cap::MrsPerContext => "mrs_per_context",
            Cap::MrsPerUser => "mrs_per_user",
            Cap::RegisteredBytesPerUser => "registered_bytes_per_user",
            Cap::QueueEntriesPerUser => "queue_entries_per_user",
            Cap::RequestsPerSecond => "requests_per_second",
            Cap::LinkBytesPerUser => "link_bytes_per_user",
        }
    }

    /// The errno of a verb this cap refuses (the link cap refuses none:
    /// it delays).
    pub fn errno(self) -> i32 {
        match self {
            Cap::Connections | Cap::SessionsPerUser => libc::EMFILE,
            Cap::RequestsPerSecond | Cap::LinkBytesPerUser => libc::EAGAIN,
            _ => libc::ENOMEM,
        }
    }

    /// Its value in `limits` (None: no cap).
    pub fn limit(self, l: &Limits) -> Option<u64> {
        Some(match self {
            Cap::Connections => l.pending_per_uid as u64,
            Cap::SessionsPerUser => l.sessions_per_uid as u64,
            Cap::ObjectsPerContext => l.objects_per_session as u64,
            Cap::ObjectsPerUser => l.objects_per_uid as u64,
            Cap::QpsPerContext => l.qps_per_session,
            Cap::QpsPerUser => l.qps_per_uid,
            Cap::CqsPerContext => l.cqs_per_session,
            Cap::CqsPerUser => l.cqs_per_uid,
            Cap::MrsPerContext => l.mrs_per_session,
            Cap::MrsPerUser => l.mrs_per_uid,
            Cap::RegisteredBytesPerUser => return l.registered_bytes_per_uid,
            Cap::QueueEntriesPerUser => l.queue_entries_per_uid,
            Cap::RequestsPerSecond => l.requests_per_second.into(),
            Cap::LinkBytesPerUser => return l.link_bytes_per_uid,
        })
    }

    fn index(self) -> usize {
        Cap::ALL.iter().position(|c| *c == self).expect("in ALL")
    }
}

/// A verb refused by a cap: its errno is the cap's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub cap: Cap,
    pub message: String,
}

impl Refusal {
    pub fn errno(&self) -> i32 {
        self.cap.errno()
    }
}

impl Limits {
    /// How many more bytes a user whose QPs have `in_flight` bytes on the
    /// links (sent, not answered) may send now; None: no cap. A QP given
    /// any allowance sends at least one chunk, so a cap below the chunk
    /// size slows a user down but never stalls it.
    pub fn link_allowance(&self, in_flight: u64) -> Option<u64> {
        self.link_bytes_per_uid
            .map(|cap| cap.saturating_sub(in_flight))
    }

    /// The rule: may a context that holds `session`, of user `uid` whose
    /// contexts hold `user` in all, take `more`? The first cap it would
    /// pass (per context before per user) refuses.
    pub fn admit(
        &self,
        uid: u32,
        session: &Usage,
        user: &Usage,
        more: &Usage,
    ) -> Result<(), Refusal> {
        let checks: [(Cap, bool, u64, u64, &str); 10] = [
            (
                Cap::ObjectsPerContext,
                true,
                session.objects,
                more.objects,
                "CQs, QPs, SRQs and completion channels",
            ),
            (
                Cap::ObjectsPerUser,
                false,
                user.objects,
                more.objects,
                "CQs, QPs, SRQs and completion channels",
            ),
            (Cap::QpsPerContext, true, session.qps, more.qps, "QPs"),
            (Cap::QpsPerUser, false, user.qps, more.qps, "QPs"),
            (Cap::CqsPerContext, true, session.cqs, more.cqs, "CQs"),
            (Cap::CqsPerUser, false, user.cqs, more.cqs, "CQs"),
            (Cap::MrsPerContext, true, session.mrs, more.mrs, "MRs"),
            (Cap::MrsPerUser, false, user.mrs, more.mrs, "MRs"),
            (
                Cap::RegisteredBytesPerUser,
                false,
                user.registered_bytes,
                more.registered_bytes,
                "registered bytes",
            ),
            (
                Cap::QueueEntriesPerUser,
                false,
                user.queue_entries,
                more.queue_entries,
                "queue entries (send, receive, SRQ and CQ depths)",
            ),
        ];
        for (cap, per_context, held, more, what) in checks {
            let Some(limit) = cap.limit(self) else {
                continue;
            };
            if more == 0 || held.saturating_add(more) <= limit {
                continue;
            }
            let who = if per_context {
                "this context".to_string()
            } else {
                format!("uid {uid}")
            };
            let scope = if per_context { "context" } else { "user" };
            let flag = cap.name().replace('_', "-");
            let asked = if more == 1 {
                String::new()
            } else {
                format!(" and asks for {more} more")
            };
            return Err(Refusal {
                cap,
                message: format!(
                    "{who} holds {held} {what}{asked}, the router's limit per {scope} is {limit} (--max-{flag})"
                ),
            });
        }
        Ok(())
    }
}

/// What each user holds, against [`Limits`], and what each cap refused.
#[derive(Debug, Default)]
pub struct Budget {
    per_uid: HashMap<u32, Usage>,
    refused: [u64; Cap::ALL.len()],
}

impl Budget {
    /// Takes `more` for a context of `uid` that holds `session` (which
    /// grows by it); a refusal is counted.
    pub fn charge(
        &mut self,
        limits: &Limits,
        uid: u32,
        session: &mut Usage,
        more: Usage,
    ) -> Result<(), Refusal> {
        let user = self.per_uid.entry(uid).or_default();
        if let Err(r) = limits.admit(uid, session, user, &more) {
            if user.is_zero() {
                self.per_uid.remove(&uid);
            }
            self.refused(r.cap);
            return Err(r);
        }
        user.add(&more);
        session.add(&more);
        Ok(())
    }

    /// Gives back `less` of a context of `uid` that holds `session`.
    pub fn release(&mut self, uid: u32, session: &mut Usage, less: Usage) {
        session.sub(&less);
        if let Some(user) = self.per_uid.get_mut(&uid) {
            user.sub(&less);
            if user.is_zero() {
                self.per_uid.remove(&uid);
            }
        }
    }

    /// What `uid` holds in all.
    pub fn of_user(&self, uid: u32) -> Usage {
        self.per_uid.get(&uid).copied().unwrap_or_default()
    }

    /// Counts one refusal by `cap`.
    pub fn refused(&mut self, cap: Cap) {
        self.refused[cap.index()] += 1;
    }

    /// Every cap, its value and its refusals, for `flowverbs status`.
    pub fn status(&self, limits: &Limits) -> Vec<CapStatus> {
        Cap::ALL
            .iter()
            .map(|&c| CapStatus {
                name: c.name().to_string(),
                limit: c.limit(limits),
                refused: self.refused[c.index()],
            })
            .collect()
    }
}

/// Whether `request` counts against [`Limits::requests_per_second`]: the
/// verbs an application calls that create, change or query objects.
/// Destroying never does (freeing must not fail, and it is cheap), nor do
/// the requests a provider makes for itself on the data path (semi mode's
/// key and peer look-ups, its error reports, the NIC path's source look-up
/// at `ibv_poll_cq`): refusing those would turn into wrong completions.
pub fn rate_limited(request: &Request) -> bool {
    match request {
        Request::AllocPd
        | Request::RegMr { .. }
        | Request::CreateCq { .. }
        | Request::ResizeCq { .. }
        | Request::CreateQp { .. }
        | Request::CreateSrq { .. }
        | Request::AllocMw { .. }
        | Request::ModifySrq { .. }
        | Request::QuerySrq { .. }
        | Request::ModifyQp { .. }
        | Request::QueryQp { .. }
        | Request::NicAddress { .. } => true,
        Request::Hello { .. }
        | Request::DeviceView
        | Request::Status
        | Request::DeallocPd { .. }
        | Request::DeregMr { .. }
        | Request::DeallocMw { .. }
        | Request::SemiWindow { .. }
        | Request::SemiInvalidate { .. }
        | Request::DestroyCq { .. }
        | Request::CommitCqResize { .. }
        | Request::DestroyQp { .. }
        | Request::DestroySrq { .. }
        | Request::ResolveKey { .. }
        | Request::SemiDatagramPeer { .. }
        | Request::SemiConnect { .. }
        | Request::SemiError { .. }
        | Request::NicSource { .. } => false,
    }
}

/// A context's request rate: a token bucket of `per_second` tokens that
/// holds at most `per_second` (one second's worth at once), kept as the
/// time at which it is full again (GCRA): no timer, no float.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestRate {
    /// When the bucket is full again (None: full).
    full_at: Option<Instant>,
}

impl RequestRate {
    /// Takes a token at `now`; false (and nothing taken) if the bucket is
    /// empty. `per_second` 0 admits nothing.
    pub fn admit(&mut self, per_second: u32, now: Instant) -> bool {
        if per_second == 0 {
            return false;
        }
        let cost = Duration::from_secs(1) / per_second;
        let burst = cost * per_second; // one second, rounded down to tokens
        let full_at = self.full_at.filter(|t| *t > now).unwrap_or(now);
        let after = full_at + cost;
        if after.duration_since(now) > burst {
            return false;
        }
        self.full_at = Some(after);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_session_and_per_user() {
        let limits = Limits {
            objects_per_session: 3,
            objects_per_uid: 4,
            ..Limits::default()
        };
        let mut b = Budget::default();
        let (mut s1, mut s2, mut s3) = (Usage::default(), Usage::default(), Usage::default());
        for _ in 0..3 {
            assert!(b.charge(&limits, 7, &mut s1, Usage::cq(4)).is_ok());
        }
        let r = b.charge(&limits, 7, &mut s1, Usage::channel()).unwrap_err();
        assert_eq!(r.cap, Cap::ObjectsPerContext);
        assert!(r.message.contains("per context"), "{}", r.message);
        assert_eq!(r.errno(), libc::ENOMEM);
        // Another session of the same user: one left for the user.
        assert!(b.charge(&limits, 7, &mut s2, Usage::qp(8)).is_ok());
        let r = b.charge(&limits, 7, &mut s2, Usage::srq(8)).unwrap_err();
        assert_eq!(r.cap, Cap::ObjectsPerUser);
        assert!(r.message.contains("per user"), "{}", r.message);
        // Another user is not affected.
        assert!(b.charge(&limits, 8, &mut s3, Usage::cq(4)).is_ok());
        // A closed session gives back all it held.
        let held = s1;
        b.release(7, &mut s1, held);
        assert_eq!(s1, Usage::default());
        assert!(b.charge(&limits, 7, &mut s2, Usage::cq(4)).is_ok());
        assert_eq!(b.refused[Cap::ObjectsPerContext.index()], 1);
        assert_eq!(b.refused[Cap::ObjectsPerUser.index()], 1);
    }

    /// Each kind is counted on its own, per context and per user, and the
    /// refusal names the cap and its flag.
    #[test]
    fn qps_cqs_mrs_each_capped() {
        let limits = Limits {
            qps_per_session: 2,
            qps_per_uid: 3,
            cqs_per_session: 1,
            cqs_per_uid: 5,
            mrs_per_session: 2,
            mrs_per_uid: 3,
            ..Limits::default()
        };
        let mut b = Budget::default();
        let (mut a, mut c) = (Usage::default(), Usage::default());
        // CQs do not count against QPs and the reverse.
        assert!(b.charge(&limits, 1, &mut a, Usage::cq(16)).is_ok());
        assert!(b.charge(&limits, 1, &mut a, Usage::qp(16)).is_ok());
        assert!(b.charge(&limits, 1, &mut a, Usage::qp(16)).is_ok());
        let r = b.charge(&limits, 1, &mut a, Usage::qp(16)).unwrap_err();
        assert_eq!(r.cap, Cap::QpsPerContext);
        assert!(r.message.contains("--max-qps-per-context"), "{}", r.message);
        let r = b.charge(&limits, 1, &mut a, Usage::cq(16)).unwrap_err();
        assert_eq!(r.cap, Cap::CqsPerContext);
        assert!(b.charge(&limits, 1, &mut c, Usage::qp(16)).is_ok());
        let r = b.charge(&limits, 1, &mut c, Usage::qp(16)).unwrap_err();
        assert_eq!(r.cap, Cap::QpsPerUser);
        assert!(r.message.contains("uid 1 holds 3 QPs"), "{}", r.message);
        // MRs: not objects, capped on their own.
        assert!(b.charge(&limits, 1, &mut a, Usage::mr(10)).is_ok());
        assert!(b.charge(&limits, 1, &mut a, Usage::mr(10)).is_ok());
        assert_eq!(
            b.charge(&limits, 1, &mut a, Usage::mr(10)).unwrap_err().cap,
            Cap::MrsPerContext
        );
        assert!(b.charge(&limits, 1, &mut c, Usage::mr(10)).is_ok());
        assert_eq!(
            b.charge(&limits, 1, &mut c, Usage::mr(10)).unwrap_err().cap,
            Cap::MrsPerUser
        );
        // A refused charge changes nothing.
        assert_eq!(a.qps, 2);
        assert_eq!(b.of_user(1).qps, 3);
        assert_eq!(b.of_user(1).mrs, 3);
        assert_eq!(b.of_user(1).queue_entries, 16 * 4);
        // Other users are not affected.
        let mut d = Usage::default();
        assert!(b.charge(&limits, 2, &mut d, Usage::qp(16)).is_ok());
    }

    #[test]
    fn registered_bytes_and_queue_entries_per_user() {
        let limits = Limits {
            registered_bytes_per_uid: Some(1 << 20),
            queue_entries_per_uid: 1000,
            ..Limits::default()
        };
        let mut b = Budget::default();
        let (mut a, mut c) = (Usage::default(), Usage::default());
        assert!(b.charge(&limits, 5, &mut a, Usage::mr(1 << 19)).is_ok());
        assert!(b.charge(&limits, 5, &mut c, Usage::mr(1 << 19)).is_ok());
        let r = b.charge(&limits, 5, &mut c, Usage::mr(1)).unwrap_err();
        assert_eq!(r.cap, Cap::RegisteredBytesPerUser);
        assert_eq!(r.errno(), libc::ENOMEM);
        // A zero-length MR costs no bytes; it still counts as an MR.
        assert!(b.charge(&limits, 5, &mut c, Usage::mr(0)).is_ok());
        b.release(5, &mut a, Usage::mr(1 << 19));
        assert!(b.charge(&limits, 5, &mut c, Usage::mr(1 << 19)).is_ok());
        // Queue entries: the sum of the depths, whatever the object.
        assert!(b.charge(&limits, 5, &mut a, Usage::qp(512)).is_ok());
        assert!(b.charge(&limits, 5, &mut a, Usage::cq(256)).is_ok());
        let r = b.charge(&limits, 5, &mut a, Usage::srq(256)).unwrap_err();
        assert_eq!(r.cap, Cap::QueueEntriesPerUser);
        assert!(r.message.contains("asks for 256 more"), "{}", r.message);
        assert!(b.charge(&limits, 5, &mut a, Usage::srq(232)).is_ok());
        // Without a byte cap, any size passes.
        let open = Limits::default();
        let mut e = Usage::default();
        assert!(b.charge(&open, 6, &mut e, Usage::mr(1 << 40)).is_ok());
    }

    #[test]
    fn empty_users_are_forgotten() {
        let limits = Limits {
            qps_per_session: 0,
            ..Limits::default()
        };
        let mut b = Budget::default();
        let mut s = Usage::default();
        assert!(b.charge(&limits, 9, &mut s, Usage::qp(1)).is_err());
        assert!(b.per_uid.is_empty());
        assert!(b.charge(&limits, 9, &mut s, Usage::cq(1)).is_ok());
        b.release(9, &mut s, Usage::cq(1));
        assert!(b.per_uid.is_empty());
    }

    #[test]
    fn status_lists_every_cap() {
        let limits = Limits {
            qps_per_uid: 7,
            ..Limits::default()
        };
        let mut b = Budget::default();
        b.refused(Cap::RequestsPerSecond);
        b.refused(Cap::RequestsPerSecond);
        let s = b.status(&limits);
        assert_eq!(s.len(), Cap::ALL.len());
        let find = |n: &str| s.iter().find(|c| c.name == n).unwrap().clone();
        assert_eq!(find("qps_per_user").limit, Some(7));
        assert_eq!(find("requests_per_second").refused, 2);
        assert_eq!(find("registered_bytes_per_user").limit, None);
    }

    #[test]
    fn request_rate_is_a_bucket_of_one_second() {
        let t0 = Instant::now();
        let mut r = RequestRate::default();
        // A full bucket: 10 at once, not 11.
        for i in 0..10 {
            assert!(r.admit(10, t0), "request {i}");
        }
        assert!(!r.admit(10, t0));
        assert!(!r.admit(10, t0 + Duration::from_millis(99)));
        // One token back every 100 ms.
        assert!(r.admit(10, t0 + Duration::from_millis(100)));
        assert!(!r.admit(10, t0 + Duration::from_millis(100)));
        // After a long pause it is full again, not fuller.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..10 {
            assert!(r.admit(10, later));
        }
        assert!(!r.admit(10, later));
        assert!(!RequestRate::default().admit(0, t0));
        // An odd rate still admits exactly its burst.
        let mut r = RequestRate::default();
        assert_eq!((0..100).filter(|_| r.admit(7, t0)).count(), 7);
    }

    #[test]
    fn what_the_rate_applies_to() {
        assert!(rate_limited(&Request::AllocPd));
        assert!(rate_limited(&Request::QueryQp { qp: 1 }));
        assert!(!rate_limited(&Request::DestroyQp { qp: 1 }));
        assert!(!rate_limited(&Request::DeregMr { mr: 1 }));
        assert!(!rate_limited(&Request::SemiConnect { qp: 1 }));
    }

    #[test]
    fn link_allowance_is_what_the_cap_leaves() {
        let mut l = Limits::default();
        assert_eq!(l.link_allowance(1 << 40), None, "no cap by default");
        l.link_bytes_per_uid = Some(256 << 10);
        assert_eq!(l.link_allowance(0), Some(256 << 10));
        assert_eq!(l.link_allowance(100 << 10), Some(156 << 10));
        assert_eq!(l.link_allowance(256 << 10), Some(0));
        assert_eq!(l.link_allowance(1 << 30), Some(0), "past the cap: nothing");
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("1T"), Ok(1 << 40));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }
}
