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

use flowverbs_sys::{IBV_QPT_RC, IBV_QPT_UC};
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
        if qp_type != IBV_QPT_RC && qp_type != IBV_QPT_UC || !srq_on_nic {
            return Err((
                libc::EINVAL,
                "only RC and UC QPs, without an SRQ or with one the NIC backs, are backed by the NIC"
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

    /// The path of QP `h`, whose attributes become `attr` at RTR:
    /// `Some(Reply::NicPath)` for the NIC, None for fv0's own paths (shared
    /// memory or the router on this host, the link to a router without a
    /// NIC), Err for a GID no router serves or a path its SRQ cannot
    /// serve.
    ///
    /// A NIC-backed QP to another host goes over the NIC if that host's
    /// router has one; to this host, through shared memory, unless
    /// `--nic-loopback` or one of the two QPs already receives from the
    /// NIC. An SRQ takes the kind of path of its first QP; every later QP
    /// follows it (over NIC loopback on this host, over the link to a host
    /// with a NIC), and one whose path cannot is refused.
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
                .is_some_and(|p| p.on_nic || srq_on_nic(p.srq) == Some(true));
            let nic = self.loopback || srq_route == Some(true) || peer_on_nic;
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
