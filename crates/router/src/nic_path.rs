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

use flowverbs_sys::{IBV_QPT_RC, IBV_QPT_UC, IBV_QPT_UD};
use flowverbs_wire::control::{NicBinding, QpAttr, Reply};

use super::engine::Engine;
use super::nic::Nic;
use super::objects::Tables;
use crate::transport::Transport;

/// This router's NIC and how it is used.
#[derive(Clone, Debug)]
pub struct NicPaths {
    pub nic: Nic,
    /// Peers on this host are reached through the NIC too.
    pub loopback: bool,
}

impl NicPaths {
    /// What a provider (and `flowverbs env`) is told of the NIC.
    pub fn binding(&self) -> NicBinding {
        NicBinding {
            device: self.nic.device.clone(),
            port: self.nic.port,
            gid_index: self.nic.gid_index,
            uverbs: self.nic.uverbs.clone(),
        }
    }

    /// The key a NIC registration brings (`Request::RegMr::nic_key`), if it
    /// is free among the router's keys.
    pub fn claim_key(&self, t: &Tables, key: Option<u32>) -> Result<Option<u32>, String> {
        match key {
            Some(0) => Err("NIC key 0".into()),
            Some(k) if t.keys.contains_key(&k) => {
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
    pub fn address(&self, dgid: &[u8; 16], engine: &Engine) -> Result<Reply, (i32, String)> {
        let path = |dgid| Reply::NicPath {
            dgid,
            sgid_index: self.nic.gid_index,
        };
        if engine.serves_locally(dgid) {
            return Ok(path(self.nic.gid));
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
    /// (`Request::NicSource`): a QP of this router if `nic_gid` is this
    /// host's NIC, else what the NIC's router announced.
    pub fn source(&self, nic_gid: &[u8; 16], qpn: u32, engine: &Engine) -> Result<Reply, String> {
        let t = &engine.tables;
        let found = if *nic_gid == self.nic.gid {
            t.qpns
                .get(&qpn)
                .and_then(|h| t.qps.get(h))
                .filter(|q| q.nic_backed)
                .and_then(|q| t.sessions.get(&q.session))
                .map(|s| s.gid)
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
        let through_nic = |dgid| {
            Some(Reply::NicPath {
                dgid,
                sgid_index: self.nic.gid_index,
            })
        };
        let av = &attr.ah_attr;
        // Without a GRH the peer is on this host (as everywhere in fv0).
        if !av.is_global || engine.serves_locally(&av.dgid) {
            let peer_on_nic = t
                .qpns
                .get(&attr.dest_qp_num)
                .and_then(|p| t.qps.get(p))
                .is_some_and(|p| p.on_nic || p.nic_backed && p.srq != 0);
            let nic = (self.loopback || q.srq != 0 || peer_on_nic) && srq_route != Some(false);
            return Ok(if nic { through_nic(self.nic.gid) } else { None });
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

    fn paths() -> NicPaths {
        NicPaths {
            nic: Nic {
                device: "rxe0".into(),
                port: 1,
                gid_index: 1,
                gid: [9; 16],
                address: std::net::Ipv4Addr::new(198, 18, 0, 1),
                uverbs: "uverbs0".into(),
            },
            loopback: false,
        }
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
