//! Where every GID lives: the location registry.
//!
//! A GID is served by exactly one router (the one whose host runs the
//! network namespace with that address). The registry answers "which
//! router serves this GID" and "which routers should I connect to".
//!
//! [`StaticRegistry`] is the embedded default: the routers to connect to
//! come from `--peer`, and each router learns the GIDs of its peers from
//! their announcements over the link (`wire::link::Announce`), so no address
//! map is ever written by hand.
//!
//! [`crate::etcd::EtcdRegistry`] backs the same interface for large
//! clusters (`--registry etcd://...`): routers and GIDs are keys under
//! leases in etcd, the router keeps a copy kept current by a watch, and
//! connects to another router only when a QP needs it (see `etcd.rs` for
//! the key layout and the threads).

use std::collections::HashMap;
use std::net::SocketAddr;

pub use super::transport::Gid;

/// The questions the router asks about locations.
pub trait LocationRegistry {
    /// Routers this router connects to.
    fn peers(&self) -> Vec<SocketAddr>;
    /// `router` now serves exactly `gids` (replacing what it served).
    /// Returns the GIDs refused because another router already serves them.
    fn learn(&mut self, router: SocketAddr, gids: &[Gid], local: &[Gid]) -> Vec<Gid>;
    /// `router` is gone: everything it served becomes unreachable. Returns
    /// those GIDs.
    fn forget(&mut self, router: SocketAddr) -> Vec<Gid>;
    /// The router serving `gid`, if it is known and reachable.
    fn locate(&self, gid: &Gid) -> Option<SocketAddr>;
}

/// The registry a router runs with.
pub enum Registry {
    Static(StaticRegistry),
    Etcd(Box<crate::etcd::EtcdRegistry>),
}

impl Registry {
    fn get(&self) -> &dyn LocationRegistry {
        match self {
            Registry::Static(r) => r,
            Registry::Etcd(r) => r.as_ref(),
        }
    }

    fn get_mut(&mut self) -> &mut dyn LocationRegistry {
        match self {
            Registry::Static(r) => r,
            Registry::Etcd(r) => r.as_mut(),
        }
    }

    /// The etcd registry, if that is the one.
    pub fn etcd(&self) -> Option<&crate::etcd::EtcdRegistry> {
        match self {
            Registry::Etcd(r) => Some(r),
            Registry::Static(_) => None,
        }
    }
}

impl LocationRegistry for Registry {
    fn peers(&self) -> Vec<SocketAddr> {
        self.get().peers()
    }
    fn learn(&mut self, router: SocketAddr, gids: &[Gid], local: &[Gid]) -> Vec<Gid> {
        self.get_mut().learn(router, gids, local)
    }
    fn forget(&mut self, router: SocketAddr) -> Vec<Gid> {
        self.get_mut().forget(router)
    }
    fn locate(&self, gid: &Gid) -> Option<SocketAddr> {
        self.get().locate(gid)
    }
}

/// Peers from the command line; GIDs from the peers' announcements.
#[derive(Default)]
pub struct StaticRegistry {
    peers: Vec<SocketAddr>,
    owners: HashMap<Gid, SocketAddr>,
}

impl StaticRegistry {
    pub fn new(peers: Vec<SocketAddr>) -> StaticRegistry {
        StaticRegistry {
            peers,
            owners: HashMap::new(),
        }
    }
}

impl LocationRegistry for StaticRegistry {
    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.clone()
    }

    fn learn(&mut self, router: SocketAddr, gids: &[Gid], local: &[Gid]) -> Vec<Gid> {
        self.owners.retain(|_, r| *r != router);
        let mut refused = Vec::new();
        for g in gids {
            if local.contains(g) || self.owners.get(g).is_some_and(|r| *r != router) {
                refused.push(*g);
                continue;
            }
            self.owners.insert(*g, router);
        }
        refused
    }

    fn forget(&mut self, router: SocketAddr) -> Vec<Gid> {
        let gone: Vec<Gid> = self
            .owners
            .iter()
            .filter(|(_, r)| **r == router)
            .map(|(g, _)| *g)
            .collect();
        self.owners.retain(|_, r| *r != router);
        gone
    }

    fn locate(&self, gid: &Gid) -> Option<SocketAddr> {
        self.owners.get(gid).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_gid_has_one_owner() {
        let (a, b) = (addr("198.18.0.1:1"), addr("198.18.0.2:1"));
        let mut r = StaticRegistry::new(vec![a, b]);
        let local = [[9; 16]];
        assert!(r.learn(a, &[[1; 16], [2; 16]], &local).is_empty());
        // b claims a GID a serves, and one this router serves: refused.
        assert_eq!(
            r.learn(b, &[[2; 16], [3; 16], [9; 16]], &local),
            vec![[2; 16], [9; 16]]
        );
        assert_eq!(r.locate(&[2; 16]), Some(a));
        assert_eq!(r.locate(&[3; 16]), Some(b));
        assert_eq!(r.locate(&[9; 16]), None);
        // A new announcement replaces the old one.
        r.learn(a, &[[1; 16]], &local);
        assert_eq!(r.locate(&[2; 16]), None);
        let mut gone = r.forget(b);
        gone.sort();
        assert_eq!(gone, vec![[3; 16]]);
        assert_eq!(r.locate(&[3; 16]), None);
        assert_eq!(r.locate(&[1; 16]), Some(a));
    }
}
