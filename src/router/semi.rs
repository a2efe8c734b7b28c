//! Semi mode, the router's part: it decides who may map what and stays off
//! the data path (DESIGN.md §3, `docs/NOTES.md` "What semi mode shares").
//!
//! - At a modify to RTR of an RC or UC QP whose peer is a QP of this host,
//!   of a process of the same user, without an SRQ, the router marks the QP `semi` (it no longer runs its
//!   send queue) and hands the provider the peer's QP segment and receive
//!   CQ segment ([`Reply::SemiPeer`]). The provider then executes the QP's
//!   work requests itself against those rings and the peer's memory.
//! - Registered pages live in a per-process arena memfd (the provider
//!   remaps them there); the router keeps each MR's runs and hands the
//!   arena to the providers of QPs connected to the MR's PD
//!   (`Request::ResolveKey`), checking that the key belongs to the
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
use super::qp_state::QpKind;
use super::qp_state::ERR;
use crate::wire::control::{ArenaRun, Reply, MAX_ARENA_RUNS};
use crate::wire::segment::{create_sealed_memfd, Mapping, KEY_TABLE_SIZE, KEY_TABLE_SLOTS, PAGE};

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
    }

    /// At a modify of QP `h` to RTR: if semi mode applies, marks it and
    /// answers with its peer's rings.
    pub fn connect_semi(&mut self, h: u32) -> Option<Answer> {
        self.key_table.as_ref()?;
        let a = self.tables.qps.get(&h)?;
        if !matches!(a.kind, QpKind::Rc | QpKind::Uc) {
            return None;
        }
        let hb = *self.tables.qpns.get(&a.attr.dest_qp_num)?;
        let b = self.tables.qps.get(&hb)?;
        let (sa, sb) = (
            self.tables.sessions.get(&a.session)?,
            self.tables.sessions.get(&b.session)?,
        );
        let routed = !a.attr.ah_attr.is_global || a.attr.ah_attr.dgid == sb.gid;
        // Only processes of one user share memory; others keep the
        // isolated path (the router copies).
        let same_user = sa.uid == sb.uid;
        if !routed || !same_user || b.kind != a.kind || b.srq != 0 || hb == h {
            return None;
        }
        let cq = self.tables.cqs.get(&b.recv_cq)?;
        let fds = vec![
            b.segment_fd.as_ref()?.try_clone().ok()?,
            cq.segment_fd.as_ref()?.try_clone().ok()?,
        ];
        let reply = Reply::SemiPeer {
            peer_qpn: b.qpn,
            peer_session: b.session,
            sq_capacity: b.sq.capacity(),
            rq_capacity: b.rq.capacity(),
            cq_capacity: cq.ring.capacity(),
        };
        info!("qp {:#x}: semi path to qp {:#x}", a.qpn, b.qpn);
        self.tables.qps.get_mut(&h)?.semi = true;
        Some(Answer { reply, fds })
    }

    /// `Request::ResolveKey`: the MR behind `key` at the responder of
    /// the session's semi QP `h`.
    pub fn resolve_key(&self, session: SessionId, h: u32, key: u32) -> Answer {
        let t = &self.tables;
        let Some(a) = t.qps.get(&h).filter(|q| q.session == session && q.semi) else {
            return err(libc::EINVAL, "no such semi-mode QP");
        };
        let Some(b) = t.qpns.get(&a.attr.dest_qp_num).and_then(|hb| t.qps.get(hb)) else {
            return err(libc::ENOENT, "the QP's peer is gone");
        };
        let mr = t
            .keys
            .get(&key)
            .and_then(|m| t.mrs.get(m))
            .filter(|m| m.session == b.session && m.pd == b.pd);
        let Some(mr) = mr else {
            return err(
                libc::EACCES,
                "key is not in the responder's protection domain",
            );
        };
        let (Some(slot), Some(arena)) = (
            mr.slot,
            t.sessions.get(&b.session).and_then(|s| s.arena.as_ref()),
        ) else {
            return err(libc::EACCES, "memory region is not shared (semi mode)");
        };
        let Ok(fd) = arena.try_clone() else {
            return err(libc::EMFILE, "cannot pass the arena");
        };
        Answer {
            reply: Reply::Key {
                addr: mr.addr,
                length: mr.length,
                access: mr.access,
                slot,
                owner: b.session,
                runs: mr.runs.clone(),
            },
            fds: vec![fd],
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

    /// Writes the completion events that semi-mode producers asked for.
    pub fn fire_events(&mut self) {
        if self.key_table.is_none() {
            return;
        }
        let fired: Vec<u32> = self
            .tables
            .cqs
            .iter()
            .filter(|(_, c)| c.channel.is_some())
            .filter(|(_, c)| c.header().event_pending.swap(0, Ordering::AcqRel) != 0)
            .map(|(h, _)| *h)
            .collect();
        for cq in fired {
            self.write_cq_event(cq);
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
