//! What clients may hold of the router: connections that have not said
//! Hello, sessions, and objects that cost the router a mapping or a
//! descriptor (CQ, QP and SRQ segments, completion channels).
//!
//! The router serves every tenant of the host from one process, so its
//! descriptors and mappings (`vm.max_map_count`) are shared: without caps
//! one client could exhaust them for all. The caps are per user (uid as the
//! router sees it), so a tenant can only exhaust its own share:
//!
//! - connections before Hello: [`Limits::pending_per_uid`] per user and
//!   [`Limits::pending_total`] in all, each closed after
//!   [`Limits::hello_within`]; further ones are accepted and closed at once;
//! - sessions: [`Limits::sessions_per_uid`];
//! - objects: [`Limits::objects_per_session`], and for all sessions of a
//!   user a quarter of the router's budget (the smaller of its descriptor
//!   limit and `vm.max_map_count`, less a reserve for itself), so that at
//!   least four users can reach their caps at once.

use std::collections::HashMap;
use std::time::Duration;

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
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            pending_per_uid: 16,
            pending_total: 256,
            hello_within: Duration::from_secs(5),
            sessions_per_uid: 256,
            objects_per_session: 4096,
            objects_per_uid: (router_budget() / USER_SHARE).max(1),
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

/// The objects each user holds, against [`Limits`].
#[derive(Debug, Default)]
pub struct Budget {
    per_uid: HashMap<u32, usize>,
}

impl Budget {
    /// Takes one object for a session of `uid` that holds `held` objects
    /// now; Err says which cap was reached.
    pub fn charge(&mut self, limits: &Limits, uid: u32, held: usize) -> Result<(), String> {
        if held >= limits.objects_per_session {
            return Err(format!(
                "this context holds {held} CQs, QPs, SRQs and completion channels, the router's limit per context"
            ));
        }
        let user = self.per_uid.entry(uid).or_default();
        if *user >= limits.objects_per_uid {
            return Err(format!(
                "uid {uid} holds {user} CQs, QPs, SRQs and completion channels, the router's limit per user"
            ));
        }
        *user += 1;
        Ok(())
    }

    /// Gives back `n` objects of `uid`.
    pub fn release(&mut self, uid: u32, n: usize) {
        if let Some(user) = self.per_uid.get_mut(&uid) {
            *user = user.saturating_sub(n);
            if *user == 0 {
                self.per_uid.remove(&uid);
            }
        }
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
        assert!(b.charge(&limits, 7, 0).is_ok());
        assert!(b.charge(&limits, 7, 1).is_ok());
        assert!(b.charge(&limits, 7, 2).is_ok());
        assert!(b.charge(&limits, 7, 3).unwrap_err().contains("per context"));
        // Another session of the same user: one left for the user.
        assert!(b.charge(&limits, 7, 0).is_ok());
        assert!(b.charge(&limits, 7, 1).unwrap_err().contains("per user"));
        // Another user is not affected.
        assert!(b.charge(&limits, 8, 0).is_ok());
        b.release(7, 4);
        assert!(b.charge(&limits, 7, 0).is_ok());
    }
}
