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
//! A distributed store backs the same interface for large clusters. With
//! etcd, a router would keep one lease (TTL a few seconds, kept alive while
//! it runs) and `put /flowverbs/routers/<listen addr>` and
//! `/flowverbs/gids/<gid hex> = <listen addr>` under it, the GID keys with a
//! transaction that fails if the key exists (one router per GID). `peers`
//! is a prefix read of `/flowverbs/routers/`; `locate` reads the GID key
//! (cached, kept current by a watch on `/flowverbs/gids/`). A crashed
//! router's lease expires and its keys disappear, which the watch turns
//! into `forget`. That backend is not implemented.

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
