//! Memory windows (IB spec 10.6.7, `ibv_alloc_mw(3)`, `ibv_bind_mw(3)`):
//! binding a window to part of a memory region, invalidating it, and what
//! a remote access through its rkey may reach.
//!
//! A type 1 window is bound by `ibv_bind_mw` and reached through any QP of
//! its protection domain; it cannot be invalidated (only unbound, by a bind
//! of length 0). A type 2 window (2B) is bound by an `IBV_WR_BIND_MW` work
//! request, only when unbound, and reached only through the QP that bound
//! it, until `IBV_WR_LOCAL_INV` or a peer's `IBV_WR_SEND_WITH_INV` frees it.
//! Every bind gives the window a new rkey: the same index (upper 24 bits),
//! the key byte the consumer chose (lower 8 bits).
//!
//! Every path (the router's engine, a semi-mode provider through the
//! router) applies these rules to the router's window table.

use super::access::Region;
use flowverbs_sys::*;

/// `enum ibv_mw_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Type1,
    Type2,
}

impl Kind {
    /// The window type of `ibv_alloc_mw`'s `type` argument.
    pub fn from_verbs(t: u32) -> Option<Kind> {
        match t {
            IBV_MW_TYPE_1 => Some(Kind::Type1),
            IBV_MW_TYPE_2 => Some(Kind::Type2),
            _ => None,
        }
    }
}

/// What a bound window gives access to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The memory region's handle (it cannot be deregistered meanwhile).
    pub mr: u32,
    /// The range in the region's address space (its IOVA), and where it
    /// lies in the owner's memory.
    pub addr: u64,
    pub length: u64,
    pub va: u64,
    /// `IBV_ACCESS_REMOTE_*` rights.
    pub access: u32,
    /// Type 2: the QP that bound it (the only one it is reached through).
    pub qp: Option<u32>,
}

/// A memory window as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub kind: Kind,
    pub pd: u32,
    /// The current rkey.
    pub rkey: u32,
    pub binding: Option<Binding>,
}

/// A bind request: the window is bound by QP `qp` (of protection domain
/// `qp_pd`) to `[addr, addr + length)` of the region `mr` (its handle and
/// region; None: no such key, or none given) with `access`, under the
/// consumer's `key` byte.
#[derive(Clone, Copy, Debug)]
pub struct Bind<'a> {
    pub qp: u32,
    pub qp_pd: u32,
    pub mr: Option<(u32, &'a Region)>,
    pub addr: u64,
    pub length: u64,
    pub access: u32,
    pub rkey: u32,
}

/// The rights a window may grant.
pub const WINDOW_ACCESS: u32 =
    IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;

impl Window {
    /// A new window: unbound, under `rkey`.
    pub fn new(kind: Kind, pd: u32, rkey: u32) -> Window {
        Window {
            kind,
            pd,
            rkey,
            binding: None,
        }
    }

    /// The window after bind `b`, or the status of the bind's error
    /// completion (`IBV_WC_MW_BIND_ERR`). A type 1 bind of length 0
    /// unbinds.
    pub fn bind(&self, b: &Bind) -> Result<Window, u32> {
        let refuse = Err(IBV_WC_MW_BIND_ERR);
        if b.qp_pd != self.pd || b.access & !WINDOW_ACCESS != 0 {
            return refuse;
        }
        if self.kind == Kind::Type2 && (self.binding.is_some() || b.length == 0) {
            return refuse;
        }
        let rkey = (self.rkey & !0xff) | (b.rkey & 0xff);
        if b.length == 0 {
            return Ok(Window {
                rkey,
                binding: None,
                ..*self
            });
        }
        let Some((mr, region)) = b.mr else {
            return refuse;
        };
        let writes = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC;
        let ok = region.pd == self.pd
            && region.access & IBV_ACCESS_MW_BIND != 0
            && (b.access & writes == 0 || region.access & IBV_ACCESS_LOCAL_WRITE != 0)
            && region.contains(b.addr, b.length);
        if !ok {
            return refuse;
        }
        Ok(Window {
            rkey,
            binding: Some(Binding {
                mr,
                addr: b.addr,
                length: b.length,
                va: region.va_of(b.addr),
                access: b.access,
                qp: (self.kind == Kind::Type2).then_some(b.qp),
            }),
            ..*self
        })
    }

    /// The window after an invalidation of `rkey` (`IBV_WR_LOCAL_INV` by a
    /// QP of protection domain `pd`, or a `SEND_WITH_INV` arriving at one),
    /// or None when it cannot be: a type 1 window, another key, another
    /// protection domain, or a window not bound.
    pub fn invalidate(&self, rkey: u32, pd: u32) -> Option<Window> {
        let ok = self.kind == Kind::Type2
            && rkey == self.rkey
            && pd == self.pd
            && self.binding.is_some();
        ok.then_some(Window {
            binding: None,
            ..*self
        })
    }

    /// What an RDMA access under `rkey` arriving at responder QP `qp` may
    /// reach through this window (checked further by
    /// [`access::remote`](super::access::remote)), None if nothing.
    pub fn region(&self, rkey: u32, qp: u32) -> Option<Region> {
        let b = self.binding.as_ref().filter(|_| rkey == self.rkey)?;
        if b.qp.is_some_and(|q| q != qp) {
            return None;
        }
        Some(Region {
            pd: self.pd,
            addr: b.addr,
            length: b.length,
            access: b.access,
            va: b.va,
        })
    }
}

/// The status of a failed `IBV_WR_LOCAL_INV`.
pub const LOCAL_INV_ERROR: u32 = IBV_WC_LOC_QP_OP_ERR;

/// The requester's status when the responder cannot invalidate the key a
/// `SEND_WITH_INV` names (an invalid request: the responder's QP goes to
/// the error state too).
pub const REMOTE_INV_ERROR: u32 = IBV_WC_REM_INV_REQ_ERR;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access;

    const ALL: u32 = IBV_ACCESS_LOCAL_WRITE | WINDOW_ACCESS | IBV_ACCESS_MW_BIND;

    fn mr(access: u32) -> Region {
        Region {
            pd: 1,
            addr: 0x1000,
            length: 0x4000,
            access,
            va: 0x9000,
        }
    }

    fn bind(r: &Region, addr: u64, length: u64, access: u32) -> Bind<'_> {
        Bind {
            qp: 7,
            qp_pd: 1,
            mr: Some((3, r)),
            addr,
            length,
            access,
            rkey: 0x42,
        }
    }

    #[test]
    fn binds_within_a_region_that_allows_it() {
        let r = mr(ALL);
        let w = Window::new(Kind::Type1, 1, 0xabcd_0001);
        let b = w
            .bind(&bind(&r, 0x2000, 0x1000, IBV_ACCESS_REMOTE_WRITE))
            .unwrap();
        assert_eq!(b.rkey, 0xabcd_0042, "index kept, key byte the consumer's");
        let got = b.region(b.rkey, 99).expect("type 1: any QP");
        assert_eq!((got.addr, got.length), (0x2000, 0x1000));
        assert_eq!(got.va_of(0x2010), 0xa010, "the region's translation");
        assert!(b.region(w.rkey, 99).is_none(), "the old rkey is gone");
        // The checks of access::remote then apply to the window's range.
        let at = |addr, len| access::remote(Some(&got), 1, ALL, addr, len, IBV_ACCESS_REMOTE_WRITE);
        assert_eq!(at(0x2000, 0x1000), Ok(()));
        assert_eq!(at(0x1ff8, 16), Err(IBV_WC_REM_ACCESS_ERR));
        assert_eq!(at(0x2ff8, 16), Err(IBV_WC_REM_ACCESS_ERR));
        let read = access::remote(Some(&got), 1, ALL, 0x2000, 8, IBV_ACCESS_REMOTE_READ);
        assert_eq!(read, Err(IBV_WC_REM_ACCESS_ERR));
        // A bind of length 0 unbinds a type 1 window.
        let mut un = bind(&r, 0, 0, 0);
        un.mr = None;
        let u = b.bind(&un).unwrap();
        assert!(u.binding.is_none() && u.region(u.rkey, 99).is_none());
    }

    #[test]
    fn refused_binds() {
        let w = Window::new(Kind::Type1, 1, 0x100);
        let cases: [(Region, u64, u64, u32); 6] = [
            (
                mr(ALL & !IBV_ACCESS_MW_BIND),
                0x2000,
                16,
                IBV_ACCESS_REMOTE_READ,
            ),
            (mr(ALL), 0x0ff8, 16, IBV_ACCESS_REMOTE_READ),
            (mr(ALL), 0x4ff8, 16, IBV_ACCESS_REMOTE_READ),
            (mr(IBV_ACCESS_MW_BIND), 0x2000, 16, IBV_ACCESS_REMOTE_WRITE),
            (mr(ALL), 0x2000, 16, IBV_ACCESS_ZERO_BASED),
            (
                Region { pd: 2, ..mr(ALL) },
                0x2000,
                16,
                IBV_ACCESS_REMOTE_READ,
            ),
        ];
        for (r, addr, len, access) in cases {
            assert_eq!(
                w.bind(&bind(&r, addr, len, access)),
                Err(IBV_WC_MW_BIND_ERR),
                "{r:?} {addr:#x}+{len} {access:#x}"
            );
        }
        let r = mr(ALL);
        let mut other_pd = bind(&r, 0x2000, 16, 0);
        other_pd.qp_pd = 2;
        assert_eq!(w.bind(&other_pd), Err(IBV_WC_MW_BIND_ERR));
        let mut no_mr = bind(&r, 0x2000, 16, 0);
        no_mr.mr = None;
        assert_eq!(w.bind(&no_mr), Err(IBV_WC_MW_BIND_ERR));
        // A read-only window on a region without local write is fine.
        let ro = mr(IBV_ACCESS_MW_BIND);
        assert!(w
            .bind(&bind(&ro, 0x2000, 16, IBV_ACCESS_REMOTE_READ))
            .is_ok());
    }

    #[test]
    fn type_2_windows_belong_to_their_qp_until_invalidated() {
        let r = mr(ALL);
        let w = Window::new(Kind::Type2, 1, 0x500);
        let mut zero = bind(&r, 0x2000, 0, IBV_ACCESS_REMOTE_READ);
        assert_eq!(w.bind(&zero), Err(IBV_WC_MW_BIND_ERR), "no unbind by bind");
        zero.length = 16;
        let b = w.bind(&zero).unwrap();
        assert!(b.region(b.rkey, 7).is_some());
        assert!(b.region(b.rkey, 8).is_none(), "another QP");
        assert_eq!(b.bind(&zero), Err(IBV_WC_MW_BIND_ERR), "already bound");
        assert_eq!(b.invalidate(b.rkey ^ 1, 1), None);
        assert_eq!(b.invalidate(b.rkey, 2), None);
        let i = b.invalidate(b.rkey, 1).unwrap();
        assert!(i.region(i.rkey, 7).is_none());
        assert_eq!(i.invalidate(i.rkey, 1), None, "not bound any more");
        assert!(i.bind(&zero).is_ok(), "free again");
    }

    #[test]
    fn type_1_windows_cannot_be_invalidated() {
        let r = mr(ALL);
        let w = Window::new(Kind::Type1, 1, 0x500);
        let b = w.bind(&bind(&r, 0x2000, 16, 0)).unwrap();
        assert_eq!(b.invalidate(b.rkey, 1), None);
        assert_eq!(Kind::from_verbs(IBV_MW_TYPE_2), Some(Kind::Type2));
        assert_eq!(Kind::from_verbs(3), None);
    }
}
