//! Semi mode, the router's part: it decides who may map what and stays off
//! the data path (docs/DESIGN.md section 3, `docs/NOTES.md` "What semi mode shares").
//!
//! - Who shares with whom: only processes of one trust group
//!   ([`TrustGroup`], chosen by `--semi-share`): by default the same uid in
//!   the same user, pid and network namespaces, i.e. one container as far
//!   as the kernel tells (such processes can already trace each other);
//!   `same-user` widens it to one uid in one user namespace. Containers
//!   that run as root without user namespaces are different groups by
//!   default (their pid and network namespaces differ).
//! - At a modify to RTR of an RC or UC QP whose peer is a QP of this host
//!   in the same trust group, the router marks the QP
//!   `semi` (it no longer runs its send queue) and tells the provider
//!   ([`Reply::SemiPath`]). The provider asks for the peer's QP segment,
//!   receive CQ segment and SRQ segment (if it has one) when it first sends (`Request::SemiConnect`): they
//!   are granted only once both QPs name each other, so a QP cannot take
//!   another's rings by naming its QPN. The provider then executes the
//!   QP's work requests itself against those rings and the peer's memory.
//! - Registered pages live in a per-process arena memfd (the provider
//!   remaps them there); the router keeps each MR's runs and hands the
//!   arena to the providers of QPs connected (both ways) to a QP of the
//!   MR's PD (`Request::ResolveKey`), checking that the key belongs to the
//!   responder's session and PD.
//! - The key table ([`KeyTable`]) tells cached senders when an MR is gone.
//! - A producer that consumed a CQ's arm sets `event_pending` and rings
//!   its doorbell; the router writes the event ([`Engine::fire_events`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use log::info;

use super::control::{err, Answer};
use super::engine::Engine;
use super::events::AsyncTarget;
use super::objects::SessionId;
use flowverbs_sys::IBV_EVENT_SRQ_LIMIT_REACHED;
use flowverbs_verbs::qp::QpKind;
use flowverbs_verbs::qp::ERR;
use flowverbs_wire::control::{ArenaRun, Reply, MAX_ARENA_RUNS};
use flowverbs_wire::segment::{
    create_sealed_memfd, Mapping, KEY_TABLE_SIZE, KEY_TABLE_SLOTS, PAGE,
};

/// Which sessions may share memory in semi mode (`--semi-share`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SemiShare {
    /// Same uid, user, pid and network namespaces (one container).
    #[default]
    SameContainer,
    /// Same uid and user namespace.
    SameUser,
}

/// What the router knows of a session's process for sharing decisions,
/// read from the kernel at Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustGroup {
    pub uid: u32,
    pub user_ns: u64,
    pub pid_ns: u64,
    pub net_ns: u64,
}

impl TrustGroup {
    /// The trust group of process `pid` connected as `uid`.
    pub fn of(pid: i32, uid: u32) -> std::io::Result<TrustGroup> {
        use super::identity::namespace_of;
        Ok(TrustGroup {
            uid,
            user_ns: namespace_of(pid, "user")?,
            pid_ns: namespace_of(pid, "pid")?,
            net_ns: namespace_of(pid, "net")?,
        })
    }

    /// Whether the two may map each other's registered memory.
    pub fn shares_with(&self, other: &TrustGroup, scope: SemiShare) -> bool {
        let user = self.uid == other.uid && self.user_ns == other.user_ns;
        match scope {
            SemiShare::SameUser => user,
            SemiShare::SameContainer => {
                user && self.pid_ns == other.pid_ns && self.net_ns == other.net_ns
            }
        }
    }
}

/// The live memory keys, one `u32` per slot, shared read-only with every
/// provider of a semi-mode router.
pub struct KeyTable {
    fd: OwnedFd,
    map: Mapping,
    free: Vec<u32>,
    next: u32,
}

impl KeyTable {
    pub fn new() -> std::io::Result<KeyTable> {
        let fd = create_sealed_memfd("fv-keys", KEY_TABLE_SIZE)?;
        let map = Mapping::map(&fd, KEY_TABLE_SIZE)?;
        Ok(KeyTable {
            fd,
            map,
            free: Vec::new(),
            next: 0,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn word(&self, slot: u32) -> &std::sync::atomic::AtomicU32 {
        assert!(slot < KEY_TABLE_SLOTS);
        // SAFETY: slot < KEY_TABLE_SLOTS, so the word lies in the mapping,
        // which lives as long as self; u32 words are 4-aligned.
        unsafe { &*(self.map.as_ptr().add(slot as usize * 4) as *const _) }
    }

    /// A slot now holding `key`, or None when the table is full.
    pub fn add(&mut self, key: u32) -> Option<u32> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.next < KEY_TABLE_SLOTS => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.word(slot).store(key, Ordering::Release);
        Some(slot)
    }

    pub fn remove(&mut self, slot: u32) {
        self.word(slot).store(0, Ordering::Release);
        self.free.push(slot);
    }
}

/// Checks a registration's runs: page-aligned, in order, contiguous, and
/// covering exactly the pages of `[addr, addr + length)`.
pub fn check_runs(addr: u64, length: u64, runs: &[ArenaRun]) -> Result<(), &'static str> {
    if runs.len() > MAX_ARENA_RUNS {
        return Err("too many arena runs");
    }
    let page = PAGE as u64;
    let start = addr & !(page - 1);
    let end = (addr + length).div_ceil(page) * page;
    let mut at = start;
    for r in runs {
        if r.addr != at || r.len == 0 || r.len % page != 0 || r.offset % page != 0 {
            return Err("arena runs are not contiguous page runs");
        }
        at = r.addr.checked_add(r.len).ok_or("arena run overflows")?;
        r.offset.checked_add(r.len).ok_or("arena run overflows")?;
    }
    if at != end {
        return Err("arena runs do not cover the region's pages");
    }
    Ok(())
}

impl Engine {
    /// After a modify of QP `h`: publishes what semi-mode senders check of
    /// it as a responder.
    pub fn publish_responder_attrs(&mut self, h: u32) {
        let Some(q) = self.tables.qps.get(&h) else {
            return;
        };
        let local = !q.attr.ah_attr.is_global
            || self
                .tables
                .sessions
                .values()
                .any(|s| s.gid == q.attr.ah_attr.dgid);
        let hdr = q.header();
        hdr.dest_qpn.store(q.attr.dest_qp_num, Ordering::Release);
        hdr.access.store(q.attr.qp_access_flags, Ordering::Release);
        hdr.min_rnr_timer
            .store(u32::from(q.attr.min_rnr_timer), Ordering::Release);
        hdr.qp_type.store(q.kind.ibv_type(), Ordering::Release);
        hdr.path_local.store(u32::from(local), Ordering::Release);
        hdr.max_recv_sge
            .store(q.caps.max_recv_sge, Ordering::Release);
        hdr.qkey.store(q.attr.qkey, Ordering::Release);
    }

    /// Whether QP `ha` may run on the semi path to QP `hb`: RC or UC of
    /// the same type, `ha`'s path leading to `hb`'s GID (or no GRH),
    /// sessions of one trust group. (`hb` may receive through an SRQ: its
    /// receives are taken by compare-and-swap, as everyone takes them.)
    fn semi_pair(&self, ha: u32, hb: u32) -> bool {
        let t = &self.tables;
        let (Some(a), Some(b)) = (t.qps.get(&ha), t.qps.get(&hb)) else {
            return false;
        };
        let (Some(sa), Some(sb)) = (t.sessions.get(&a.session), t.sessions.get(&b.session)) else {
            return false;
        };
        let routed = !a.attr.ah_attr.is_global || a.attr.ah_attr.dgid == sb.gid;
        matches!(a.kind, QpKind::Rc | QpKind::Uc)
            && b.kind == a.kind
            && ha != hb
            && routed
            && sa.trust.shares_with(&sb.trust, self.semi_share)
    }

    /// QP `h`'s responder if both QPs name each other and it receives:
    /// what a grant of its rings or memory needs.
    fn connected_back(&self, h: u32) -> Option<u32> {
        let t = &self.tables;
        let a = t.qps.get(&h)?;
        let hb = *t.qpns.get(&a.attr.dest_qp_num)?;
        let b = t.qps.get(&hb)?;
        let sa = t.sessions.get(&a.session)?;
        let back = !b.attr.ah_attr.is_global || b.attr.ah_attr.dgid == sa.gid;
        (b.attr.dest_qp_num == a.qpn && back && flowverbs_verbs::qp::receives(b.state()))
            .then_some(hb)
    }

    /// At a modify of QP `h` to RTR: if semi mode applies, marks it and
    /// tells the provider to run its send queue ([`Reply::SemiPath`]).
    pub fn connect_semi(&mut self, h: u32) -> Option<Answer> {
        self.key_table.as_ref()?;
        let a = self.tables.qps.get(&h)?;
        let hb = *self.tables.qpns.get(&a.attr.dest_qp_num)?;
        if !self.semi_pair(h, hb) {
            return None;
        }
        let peer_qpn = self.tables.qps[&hb].qpn;
        info!(
            "qp {:#x}: semi path to qp {peer_qpn:#x}",
            self.tables.qps[&h].qpn
        );
        self.tables.qps.get_mut(&h)?.semi = true;
        Some(Answer::ok(Reply::SemiPath { peer_qpn }))
    }

    /// True if `h` is a semi-mode QP of `session`.
    fn is_own_semi_qp(&self, session: SessionId, h: u32) -> bool {
        self.tables
            .qps
            .get(&h)
            .is_some_and(|q| q.session == session && q.semi)
    }

    /// `Request::SemiConnect`: the rings of the responder of the session's
    /// semi QP `h`, once the two QPs name each other.
    pub fn semi_connect(&self, session: SessionId, h: u32) -> Answer {
        if !self.is_own_semi_qp(session, h) {
            return err(libc::EINVAL, "no such semi-mode QP");
        }
        let Some(hb) = self.connected_back(h).filter(|hb| self.semi_pair(h, *hb)) else {
            return err(
                libc::EAGAIN,
                "the responder QP is not connected back to this QP (yet)",
            );
        };
        self.grant_rings(hb)
    }

    /// The segments of QP `hb`'s receive side (its QP segment, receive CQ
    /// and SRQ), for a sender's provider ([`Reply::SemiPeer`]).
    fn grant_rings(&self, hb: u32) -> Answer {
        let t = &self.tables;
        let b = &t.qps[&hb];
        let Some(cq) = t.cqs.get(&b.recv_cq) else {
            return err(libc::EAGAIN, "the responder's receive CQ is gone");
        };
        let srq = match b.srq {
            0 => None,
            h => match t.srqs.get(&h) {
                Some(s) => Some(s),
                None => return err(libc::EAGAIN, "the responder's SRQ is gone"),
            },
        };
        let mut fds = Vec::with_capacity(3);
        let segments = [b.segment_fd.as_ref(), cq.segment_fd.as_ref()]
            .into_iter()
            .chain(srq.map(|s| s.segment_fd.as_ref()));
        for fd in segments {
            match fd.map(|f| f.try_clone()) {
                Some(Ok(f)) => fds.push(f),
                _ => return err(libc::EMFILE, "cannot pass the responder's rings"),
            }
        }
        Answer {
            reply: Reply::SemiPeer {
                peer_qpn: b.qpn,
                peer_session: b.session,
                peer_gid: t.sessions.get(&b.session).map_or([0; 16], |s| s.gid),
                sq_capacity: b.sq.capacity(),
                rq_capacity: b.rq.capacity(),
                cq_capacity: cq.ring.capacity(),
                srq_capacity: srq.map_or(0, |s| s.ring.capacity()),
            },
            fds,
        }
    }

    /// `Request::ResolveKey`: the MR behind `key` at the responder of
    /// the session's semi QP `h` (connected to it both ways).
    pub fn resolve_key(&self, session: SessionId, h: u32, key: u32, dest_qpn: u32) -> Answer {
        let t = &self.tables;
        let responder = if dest_qpn != 0 {
            match self.datagram_peer(session, h, dest_qpn, None) {
                Ok(hb) => hb,
                Err((errno, why)) => return err(errno, why),
            }
        } else {
            if !self.is_own_semi_qp(session, h) {
                return err(libc::EINVAL, "no such semi-mode QP");
            }
            match self.semi_responder(session, h) {
                Some(hb) => hb,
                None => {
                    return err(
                        libc::ENOENT,
                        "the QP's responder is gone or not connected back to it",
                    )
                }
            }
        };
        let b = &t.qps[&responder];
        let mr = t
            .keys
            .get(&key)
            .and_then(|m| t.mrs.get(m))
            .filter(|m| m.session == b.session && m.pd == b.pd);
        // A key of a memory region, or of a window bound for this
        // responder (its range and rights, the region's pages, its own slot).
        let (region, slot, mr) = match mr {
            Some(m) => (m.region(), m.slot, m),
            None => {
                let window = t
                    .window_keys
                    .get(&(key >> 8))
                    .and_then(|w| t.mws.get(w))
                    .filter(|w| w.session == b.session && w.window.pd == b.pd);
                let reach = window.and_then(|w| {
                    let r = w.window.region(key, responder)?;
                    let m = t.mrs.get(&w.window.binding?.mr)?;
                    Some((r, w.slot, m))
                });
                let Some(reach) = reach else {
                    return err(
                        libc::EACCES,
                        "key is not in the responder's protection domain",
                    );
                };
                reach
            }
        };
        let (Some(slot), Some(arena), false) = (
            slot,
            t.sessions.get(&b.session).and_then(|s| s.arena.as_ref()),
            mr.runs.is_empty(),
        ) else {
            return err(libc::EACCES, "memory region is not shared (semi mode)");
        };
        let Ok(fd) = arena.try_clone() else {
            return err(libc::EMFILE, "cannot pass the arena");
        };
        Answer {
            reply: Reply::Key {
                addr: region.addr,
                length: region.length,
                va: region.va,
                access: region.access,
                slot,
                owner: b.session,
                runs: mr.runs.clone(),
            },
            fds: vec![fd],
        }
    }

    /// The responder of the session's connected semi QP `h`, if both name
    /// each other.
    pub(crate) fn semi_responder(&self, session: SessionId, h: u32) -> Option<u32> {
        if !self.is_own_semi_qp(session, h) {
            return None;
        }
        self.connected_back(h).filter(|hb| self.semi_pair(h, *hb))
    }

    /// UD QP `dest_qpn` (at `dgid`, if given) as a destination the
    /// session's UD QP `h` may deliver to itself: both UD, their processes
    /// of one trust group.
    fn datagram_peer(
        &self,
        session: SessionId,
        h: u32,
        dest_qpn: u32,
        dgid: Option<[u8; 16]>,
    ) -> Result<u32, (i32, &'static str)> {
        let t = &self.tables;
        if self.key_table.is_none() {
            return Err((libc::EINVAL, "the router is not in semi mode"));
        }
        let Some(a) = t
            .qps
            .get(&h)
            .filter(|q| q.session == session && q.kind == QpKind::Ud)
        else {
            return Err((libc::EINVAL, "no such UD QP"));
        };
        let Some(&hb) = t.qpns.get(&dest_qpn) else {
            return Err((libc::ENOENT, "no such destination QP on this host"));
        };
        let b = &t.qps[&hb];
        let (Some(sa), Some(sb)) = (t.sessions.get(&a.session), t.sessions.get(&b.session)) else {
            return Err((libc::ENOENT, "no such destination QP on this host"));
        };
        if b.kind != QpKind::Ud || dgid.is_some_and(|g| g != sb.gid) {
            return Err((libc::ENOENT, "no such destination QP on this host"));
        }
        if !sa.trust.shares_with(&sb.trust, self.semi_share) {
            return Err((
                libc::EPERM,
                "the destination's process is of another trust group",
            ));
        }
        Ok(hb)
    }

    /// `Request::SemiDatagramPeer`: the rings of UD QP `dest_qpn` for the
    /// session's UD QP `h`.
    pub fn semi_datagram_peer(
        &self,
        session: SessionId,
        h: u32,
        dest_qpn: u32,
        dgid: Option<[u8; 16]>,
    ) -> Answer {
        match self.datagram_peer(session, h, dest_qpn, dgid) {
            Ok(hb) => self.grant_rings(hb),
            Err((errno, why)) => err(errno, why),
        }
    }

    /// `Request::SemiError`: a semi-mode request failed.
    pub fn semi_error(
        &mut self,
        session: SessionId,
        h: u32,
        own: bool,
        peer_event: Option<u32>,
    ) -> Answer {
        let t = &self.tables;
        let Some(a) = t.qps.get(&h).filter(|q| q.session == session && q.semi) else {
            return err(libc::EINVAL, "no such semi-mode QP");
        };
        let peer = t
            .qpns
            .get(&a.attr.dest_qp_num)
            .copied()
            .filter(|hb| t.qps.get(hb).is_some_and(|b| b.attr.dest_qp_num == a.qpn));
        if own {
            self.to_error(h);
        }
        if let (Some(event), Some(hb)) = (peer_event, peer) {
            let was_ok = self.tables.qps.get(&hb).is_some_and(|b| b.state() != ERR);
            if event != 0 && was_ok {
                self.post_async_event(AsyncTarget::Qp(hb), event);
            }
            self.to_error(hb);
        }
        Answer::ok(Reply::Done)
    }

    /// Writes the completion events and SRQ limit events that semi-mode
    /// producers asked for.
    pub fn fire_events(&mut self) {
        if self.key_table.is_none() {
            return;
        }
        // A CQ's rings: its own and those a resize left, whose late
        // producers may still raise an event there (`wire::cq_ring`).
        let fired: Vec<u32> = self
            .tables
            .cqs
            .iter()
            .filter(|(_, c)| c.channel.is_some())
            .filter(|(_, c)| {
                let headers =
                    std::iter::once(c.header()).chain(c.retired.iter().map(|r| r.header()));
                headers
                    .filter(|h| h.event_pending.swap(0, Ordering::AcqRel) != 0)
                    .count()
                    > 0
            })
            .map(|(h, _)| *h)
            .collect();
        for cq in fired {
            self.write_cq_event(cq);
        }
        let limits: Vec<u32> = self
            .tables
            .srqs
            .iter()
            .filter(|(_, s)| s.header().limit_event_pending.swap(0, Ordering::AcqRel) != 0)
            .map(|(h, _)| *h)
            .collect();
        for srq in limits {
            self.post_async_event(AsyncTarget::Srq(srq), IBV_EVENT_SRQ_LIMIT_REACHED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_must_cover_the_pages() {
        let r = |addr, len, offset| ArenaRun { addr, len, offset };
        assert!(check_runs(0x1010, 0x2000, &[r(0x1000, 0x3000, 0)]).is_ok());
        assert!(check_runs(
            0x1010,
            0x2000,
            &[r(0x1000, 0x1000, 0x5000), r(0x2000, 0x2000, 0)]
        )
        .is_ok());
        assert!(check_runs(0x1010, 0x2000, &[r(0x1000, 0x2000, 0)]).is_err());
        assert!(check_runs(0x1010, 0x2000, &[r(0x1000, 0x3000, 1)]).is_err());
        assert!(check_runs(0x1010, 0x2000, &[]).is_err());
        assert!(check_runs(0x1000, 0x1000, &[r(0x1000, 0x1000, !0xfff)]).is_err());
    }

    #[test]
    fn key_table_reuses_slots() {
        let mut t = KeyTable::new().unwrap();
        let a = t.add(7).unwrap();
        let b = t.add(9).unwrap();
        assert_ne!(a, b);
        t.remove(a);
        assert_eq!(t.add(11), Some(a));
    }
}
