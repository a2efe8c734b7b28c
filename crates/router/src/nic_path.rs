//! Semi mode over a NIC: the router's side of the control path.
//!
//! The provider backs a connected QP of a semi session with a QP of the
//! real device and its memory regions with real registrations; the numbers
//! the NIC gave them become the fv0 QPN and keys (valid on the wire). The
//! router checks those numbers are free ([`NicPaths::claim_qpn`],
//! [`NicPaths::claim_key`]) and, at the modify to RTR, decides the path
//! ([`NicPaths::path_at_rtr`]): a peer on another host whose router has a
//! NIC is reached through the NIC, at that NIC's physical GID; a peer on
//! this host keeps shared memory (unless `--nic-loopback`); a GID no
//! router serves is refused. The router never opens the device and never
//! sees the work requests of a QP on the NIC.
//!
//! A router may have several NICs (`--nic` given more than once: rails).
//! Each GID of this host (a container's network namespace) posts to one
//! of them, assigned at its first session ([`NicPaths::assign`]) and kept
//! while it has sessions; a QP's source GID index is its own NIC's, and a
//! peer is reached at the physical GID of the peer's NIC, which its router
//! announces per GID.

use std::collections::{HashMap, HashSet};

use flowverbs_sys::{IBV_QPT_RC, IBV_QPT_UC, IBV_QPT_UD};
use flowverbs_wire::control::{NicBinding, QpAttr, Reply};

use super::engine::Engine;
use super::nic::Nic;
use super::objects::Tables;
use crate::transport::Transport;

type Gid = [u8; 16];

/// This router's NICs and how they are used.
#[derive(Clone, Debug)]
pub struct NicPaths {
    /// At least one.
    nics: Vec<Nic>,
    /// Peers on this host are reached through the NIC too.
    pub loopback: bool,
    /// The NIC (index in `nics`) each GID of this host posts to.
    assigned: HashMap<Gid, usize>,
}

impl Nic {
    /// What a provider (and `flowverbs env`) is told of the NIC.
    pub fn binding(&self) -> NicBinding {
        NicBinding {
            device: self.device.clone(),
            port: self.port,
            gid_index: self.gid_index,
            uverbs: self.uverbs.clone(),
        }
    }
}

impl NicPaths {
    /// None without NICs.
    pub fn new(nics: Vec<Nic>, loopback: bool) -> Option<NicPaths> {
        (!nics.is_empty()).then(|| NicPaths {
            nics,
            loopback,
            assigned: HashMap::new(),
        })
    }

    pub fn nics(&self) -> &[Nic] {
        &self.nics
    }

    /// The NIC `gid` posts to: the one assigned, or else the one it would
    /// get ([`NicPaths::assign`]).
    pub fn nic_for(&self, gid: &Gid) -> &Nic {
        &self.nics[self
            .assigned
            .get(gid)
            .copied()
            .unwrap_or_else(|| self.choose(gid))]
    }

    /// The NIC with the fewest GIDs assigned; among equals, the one the
    /// GID's IPv4 address picks (modulo their number), so that a lone
    /// container gets the same NIC each time.
    fn choose(&self, gid: &Gid) -> usize {
        let mut load = vec![0usize; self.nics.len()];
        for &i in self.assigned.values() {
            load[i] += 1;
        }
        let least = load.iter().copied().min().unwrap_or(0);
        let tied: Vec<usize> = (0..load.len()).filter(|&i| load[i] == least).collect();
        let address = u32::from_be_bytes([gid[12], gid[13], gid[14], gid[15]]) as usize;
        tied[address % tied.len()]
    }

    /// Assigns `gid` its NIC (at the first session of that GID); returns
    /// it and whether it was new.
    pub fn assign(&mut self, gid: &Gid) -> (&Nic, bool) {
        let new = !self.assigned.contains_key(gid);
        if new {
            let i = self.choose(gid);
            self.assigned.insert(*gid, i);
        }
        (&self.nics[self.assigned[gid]], new)
    }

    /// Forgets the GIDs that no longer have a session.
    pub fn retain(&mut self, served: &HashSet<Gid>) {
        self.assigned.retain(|g, _| served.contains(g));
    }

    /// Each GID of this host with the physical GID of its NIC (announced
    /// to the peers).
    pub fn nic_gids(&self) -> Vec<(Gid, Gid)> {
        let mut v: Vec<(Gid, Gid)> = self
            .assigned
            .iter()
            .map(|(g, &i)| (*g, self.nics[i].gid))
            .collect();
        v.sort_unstable();
        v
    }

    /// The NIC of the session of QP `h`.
    fn nic_of_qp(&self, t: &Tables, h: u32) -> Option<&Nic> {
        let q = t.qps.get(&h)?;
        Some(self.nic_for(&t.sessions.get(&q.session)?.gid))
    }

    /// The key a NIC registration brings (`Request::RegMr::nic_key`), if it
    /// is free among the router's keys.
    pub fn claim_key(&self, t: &Tables, key: Option<u32>) -> Result<Option<u32>, String> {
        match key {
            Some(0) => Err("NIC key 0".into()),
            Some(k) if t.keys.contains_key(&k) || t.window_keys.contains_key(&(k >> 8)) => {
                Err(format!("NIC key {k:#x} is already a key of this router"))
            }
            k => Ok(k),
        }
    }

    /// The QP number a NIC QP brings (`Request::CreateQp::nic_qpn`), if it
    /// is a valid number, free on this router, for a connected QP without
    /// an SRQ or with one the NIC backs too (the kinds the NIC path
    /// carries).
    pub fn claim_qpn(
        &self,
        t: &Tables,
        qp_type: u32,
        srq: u32,
        qpn: Option<u32>,
    ) -> Result<Option<u32>, (i32, String)> {
        let Some(q) = qpn else {
            return Ok(None);
        };
        let srq_on_nic = srq == 0 || t.srqs.get(&srq).is_some_and(|s| s.nic_backed);
        let kind_on_nic = match qp_type {
            IBV_QPT_RC | IBV_QPT_UC => srq_on_nic,
            IBV_QPT_UD => srq == 0,
            _ => false,
        };
        if !kind_on_nic {
            return Err((
                libc::EINVAL,
                "only RC and UC QPs (without an SRQ or with one the NIC backs) and UD QPs \
                 without an SRQ are backed by the NIC"
                    .into(),
            ));
        }
        if !(2..=flowverbs_wire::limits::MAX_QPN).contains(&q) {
            return Err((libc::EINVAL, format!("NIC QP number {q:#x} out of range")));
        }
        if t.qpns.contains_key(&q) {
            return Err((
                libc::EBUSY,
                format!("NIC QP number {q:#x} is already a QP of this router"),
            ));
        }
        Ok(Some(q))
    }

    /// Where a datagram to `dgid` goes on the NIC (`Request::NicAddress`,
    /// for an address handle of a UD QP on the NIC): this host's NIC for a
    /// GID of this host, the NIC of the host serving it otherwise; Err for
    /// a GID no router serves or whose host has no NIC.
    /// `own`: the asking session's GID (its NIC gives the source GID
    /// index).
    pub fn address(
        &self,
        own: &Gid,
        dgid: &[u8; 16],
        engine: &Engine,
    ) -> Result<Reply, (i32, String)> {
        let path = |dgid| Reply::NicPath {
            dgid,
            sgid_index: self.nic_for(own).gid_index,
        };
        if engine.serves_locally(dgid) {
            return Ok(path(self.nic_for(dgid).gid));
        }
        let name = std::net::Ipv6Addr::from(*dgid);
        let links = engine.links.as_ref();
        if links.and_then(|l| l.peers.locate(dgid)).is_none() {
            return Err((libc::EINVAL, format!("no router serves GID {name}")));
        }
        match links.and_then(|l| l.peers.nic_serving(dgid)) {
            Some(g) => Ok(path(g)),
            None => Err((
                libc::EINVAL,
                format!("the host of GID {name} has no NIC: datagrams on the NIC cannot reach it"),
            )),
        }
    }

    /// The GID of UD QP `qpn` on the NIC whose physical GID is `nic_gid`
    /// (`Request::NicSource`): a QP of this router if `nic_gid` is one of
    /// this host's NICs, else what the NIC's router announced.
    pub fn source(&self, nic_gid: &[u8; 16], qpn: u32, engine: &Engine) -> Result<Reply, String> {
        let t = &engine.tables;
        let found = if self.nics.iter().any(|n| n.gid == *nic_gid) {
            t.qpns
                .get(&qpn)
                .and_then(|h| t.qps.get(h))
                .filter(|q| q.nic_backed)
                .and_then(|q| t.sessions.get(&q.session))
                .map(|s| s.gid)
                .filter(|g| self.nic_for(g).gid == *nic_gid)
        } else {
            engine
                .links
                .as_ref()
                .and_then(|l| l.peers.nic_source(nic_gid, qpn))
        };
        found.map(|gid| Reply::NicSource { gid }).ok_or_else(|| {
            format!(
                "no UD QP {qpn:#x} known on the NIC {}",
                std::net::Ipv6Addr::from(*nic_gid)
            )
        })
    }

    /// The path of QP `h`, whose attributes become `attr` at RTR:
    /// `Some(Reply::NicPath)` for the NIC, None for fv0's own paths (shared
    /// memory or the router on this host, the link to a router without a
    /// NIC), Err for a GID no router serves or a path its SRQ cannot
    /// serve.
    ///
    /// A NIC-backed QP to another host goes over the NIC if that host's
    /// router has one; to this host, through shared memory, unless
    /// `--nic-loopback` or one of the two QPs receives from the NIC (or
    /// will: it has an SRQ on the NIC). A QP with an SRQ on the NIC takes
    /// the NIC for every peer (NIC loopback on this host), so that the
    /// SRQ's receives serve all its QPs: UCX, for one, connects a loopback
    /// QP on its SRQ before any remote one. A QP whose SRQ a QP without a
    /// twin settled on fv0's ring stays on fv0's paths, and one whose path
    /// cannot reach the SRQ's is refused.
    pub fn path_at_rtr(
        &self,
        h: u32,
        attr: &QpAttr,
        engine: &Engine,
    ) -> Result<Option<Reply>, String> {
        let t = &engine.tables;
        let q = &t.qps[&h];
        let srq_on_nic = |srq: u32| t.srqs.get(&srq).and_then(|s| s.on_nic);
        let srq_route = srq_on_nic(q.srq);
        if !q.nic_backed {
            return match srq_route {
                Some(true) => Err(format!(
                    "QP {:#x} has no twin on the NIC, but its SRQ receives from the NIC",
                    q.qpn
                )),
                _ => Ok(None),
            };
        }
        let Some(own) = self.nic_of_qp(t, h) else {
            return Ok(None);
        };
        let through_nic = |dgid| {
            Some(Reply::NicPath {
                dgid,
                sgid_index: own.gid_index,
            })
        };
        let av = &attr.ah_attr;
        // Without a GRH the peer is on this host (as everywhere in fv0).
        if !av.is_global || engine.serves_locally(&av.dgid) {
            let peer = t.qpns.get(&attr.dest_qp_num).copied();
            let peer_on_nic = peer
                .and_then(|p| t.qps.get(&p))
                .is_some_and(|p| p.on_nic || p.nic_backed && p.srq != 0);
            let nic = (self.loopback || q.srq != 0 || peer_on_nic) && srq_route != Some(false);
            // The peer's NIC: its QP's session's, or its GID's.
            let peer_nic = match peer.and_then(|p| self.nic_of_qp(t, p)) {
                Some(n) => n,
                None if av.is_global => self.nic_for(&av.dgid),
                None => own,
            };
            return Ok(if nic { through_nic(peer_nic.gid) } else { None });
        }
        let name = std::net::Ipv6Addr::from(av.dgid);
        let Some(links) = engine.links.as_ref() else {
            return Err(format!(
                "no router serves GID {name} (this router has no --listen/--peer)"
            ));
        };
        if links.peers.locate(&av.dgid).is_none() {
            return Err(format!("no router serves GID {name}"));
        }
        match (links.peers.nic_serving(&av.dgid), srq_route) {
            (Some(_), Some(false)) | (None, None | Some(false)) => Ok(None),
            (Some(g), _) => Ok(through_nic(g)),
            (None, Some(true)) => Err(format!(
                "the SRQ of QP {:#x} receives from the NIC, and the host of GID {name} has none",
                q.qpn
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use flowverbs_sys::IBV_QPT_UD;

    fn nic(i: u8) -> Nic {
        Nic {
            device: format!("rxe{i}"),
            port: 1,
            gid_index: 1 + i,
            gid: [9 + i; 16],
            address: std::net::Ipv4Addr::new(198, 18, 0, 1 + i),
            uverbs: format!("uverbs{i}"),
        }
    }

    fn paths() -> NicPaths {
        NicPaths::new(vec![nic(0)], false).unwrap()
    }

    fn gid(ip: [u8; 4]) -> Gid {
        let mut g = [0u8; 16];
        g[10] = 0xff;
        g[11] = 0xff;
        g[12..].copy_from_slice(&ip);
        g
    }

    #[test]
    fn each_gid_gets_one_nic_and_they_are_spread() {
        assert!(NicPaths::new(Vec::new(), false).is_none());
        let mut n = NicPaths::new(vec![nic(0), nic(1)], false).unwrap();
        let (a, b, c) = (gid([10, 0, 0, 2]), gid([10, 0, 0, 3]), gid([10, 0, 0, 4]));
        // Alone, a GID's address picks among equals: even -> rxe0, odd -> rxe1.
        assert_eq!(n.nic_for(&a).device, "rxe0");
        assert_eq!(n.nic_for(&b).device, "rxe1");
        let (first, new) = n.assign(&b);
        assert_eq!((first.device.as_str(), new), ("rxe1", true));
        assert!(!n.assign(&b).1, "kept");
        // The least loaded next, whatever the address.
        assert_eq!(n.assign(&c).0.device, "rxe0");
        assert_eq!(n.nic_gids(), vec![(b, [10; 16]), (c, [9; 16])]);
        // A GID without sessions is forgotten.
        n.retain(&[c].into_iter().collect());
        assert_eq!(n.nic_gids(), vec![(c, [9; 16])]);
        assert_eq!(n.assign(&a).0.device, "rxe1");
    }

    #[test]
    fn numbers_of_the_nic_must_be_free_and_valid() {
        let n = paths();
        let mut t = Tables::new(Limits::default());
        t.keys.insert(0x1234, 1);
        t.qpns.insert(0x11, 1);
        assert_eq!(n.claim_key(&t, None), Ok(None));
        assert_eq!(n.claim_key(&t, Some(0x4321)), Ok(Some(0x4321)));
        assert!(n.claim_key(&t, Some(0)).is_err());
        assert!(n.claim_key(&t, Some(0x1234)).is_err());
        assert_eq!(n.claim_qpn(&t, IBV_QPT_RC, 0, None), Ok(None));
        assert_eq!(n.claim_qpn(&t, IBV_QPT_RC, 0, Some(0x12)), Ok(Some(0x12)));
        assert_eq!(n.claim_qpn(&t, IBV_QPT_UD, 0, Some(0x12)), Ok(Some(0x12)));
        let errno = |r: Result<Option<u32>, (i32, String)>| r.map_err(|(e, _)| e);
        assert_eq!(
            errno(n.claim_qpn(&t, IBV_QPT_RC, 0, Some(0x11))),
            Err(libc::EBUSY)
        );
        assert_eq!(
            errno(n.claim_qpn(&t, IBV_QPT_RC, 0, Some(1))),
            Err(libc::EINVAL)
        );
        assert_eq!(
            errno(n.claim_qpn(&t, IBV_QPT_RC, 0, Some(1 << 24))),
            Err(libc::EINVAL)
        );
        // An SRQ the NIC does not back (here: none of that handle), and UD
        // with an SRQ.
        assert_eq!(
            errno(n.claim_qpn(&t, IBV_QPT_RC, 7, Some(0x12))),
            Err(libc::EINVAL)
        );
        assert_eq!(
            errno(n.claim_qpn(&t, IBV_QPT_UD, 7, Some(0x12))),
            Err(libc::EINVAL)
        );
    }
}
