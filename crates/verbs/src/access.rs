//! Memory regions: the checks of a local key (the requester's SGEs, a
//! receive's SGEs) and of a remote key (an RDMA access at the responder),
//! and the message length limit. Every path looks a key up in its own
//! table (the router's, or a semi-mode provider's view) and hands the
//! region here.

use flowverbs_sys::*;
use flowverbs_wire::limits::MAX_MSG_SIZE;

/// A memory region as a check sees it: `[addr, addr + length)` as work
/// requests address it (its IOVA, `ibv_reg_mr_iova2`), which lies at `va`
/// in its owner's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub pd: u32,
    pub addr: u64,
    pub length: u64,
    /// `ibv_access_flags` it was registered with.
    pub access: u32,
    pub va: u64,
}

impl Region {
    /// Where address `addr` of the region (checked to lie inside it) is
    /// in its owner's memory.
    pub fn va_of(&self, addr: u64) -> u64 {
        self.va.wrapping_add(addr.wrapping_sub(self.addr))
    }

    /// True when `[addr, addr + len)` lies inside the region (no overflow
    /// anywhere).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        match (addr.checked_add(len), self.addr.checked_add(self.length)) {
            (Some(end), Some(limit)) => addr >= self.addr && end <= limit,
            _ => false,
        }
    }
}

/// A local SGE `[addr, addr + len)` with the key that resolved to
/// `region` (None: no such key in the QP's session), on a QP of protection
/// domain `pd`; `write`: the device writes there (a receive, a READ's
/// destination, an atomic's original value). Err: LOC_PROT_ERR.
pub fn local(
    region: Option<&Region>,
    pd: u32,
    addr: u64,
    len: u64,
    write: bool,
) -> Result<(), u32> {
    if len == 0 {
        return Ok(());
    }
    match region {
        Some(r)
            if r.pd == pd
                && r.contains(addr, len)
                && (!write || r.access & IBV_ACCESS_LOCAL_WRITE != 0) =>
        {
            Ok(())
        }
        _ => Err(IBV_WC_LOC_PROT_ERR),
    }
}

/// An RDMA access of `want` (`IBV_ACCESS_REMOTE_READ`, `_WRITE` or
/// `_ATOMIC`) to `[addr, addr + len)` through an rkey that resolved to
/// `region` (None: no such key in the responder's session), at a responder
/// QP of protection domain `pd` that grants `qp_access`. Err:
/// REM_ACCESS_ERR.
pub fn remote(
    region: Option<&Region>,
    pd: u32,
    qp_access: u32,
    addr: u64,
    len: u64,
    want: u32,
) -> Result<(), u32> {
    if len == 0 {
        return Ok(());
    }
    match region {
        Some(r)
            if r.pd == pd
                && r.access & want != 0
                && qp_access & want != 0
                && r.contains(addr, len) =>
        {
            Ok(())
        }
        _ => Err(IBV_WC_REM_ACCESS_ERR),
    }
}

/// A message of `len` bytes in all: more than the device's maximum is
/// LOC_LEN_ERR.
pub fn message_len(len: u64) -> Result<(), u32> {
    if len > u64::from(MAX_MSG_SIZE) {
        Err(IBV_WC_LOC_LEN_ERR)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u32 = IBV_ACCESS_LOCAL_WRITE
        | IBV_ACCESS_REMOTE_WRITE
        | IBV_ACCESS_REMOTE_READ
        | IBV_ACCESS_REMOTE_ATOMIC;

    fn region(access: u32) -> Region {
        Region {
            pd: 1,
            addr: 0x1000,
            length: 0x100,
            access,
            va: 0x1000,
        }
    }

    /// (addr, len, inside the region 0x1000..0x1100)
    const BOUNDS: [(u64, u64, bool); 9] = [
        (0x1000, 0x100, true),
        (0x1000, 0, true),
        (0x10ff, 1, true),
        (0x0fff, 1, false),
        (0x10ff, 2, false),
        (0x1100, 1, false),
        (0x1000, 0x101, false),
        (u64::MAX, 2, false),
        (0x1001, u64::MAX, false),
    ];

    #[test]
    fn local_keys() {
        for (addr, len, inside) in BOUNDS {
            for access in [0, IBV_ACCESS_LOCAL_WRITE, ALL] {
                for write in [false, true] {
                    let r = region(access);
                    let ok =
                        len == 0 || (inside && (!write || access & IBV_ACCESS_LOCAL_WRITE != 0));
                    let want = if ok { Ok(()) } else { Err(IBV_WC_LOC_PROT_ERR) };
                    assert_eq!(
                        local(Some(&r), 1, addr, len, write),
                        want,
                        "{addr:#x}+{len:#x} access {access:#x} write {write}"
                    );
                    // Another PD, or no such key: refused (unless empty).
                    let other = if len == 0 {
                        Ok(())
                    } else {
                        Err(IBV_WC_LOC_PROT_ERR)
                    };
                    assert_eq!(local(Some(&r), 2, addr, len, write), other);
                    assert_eq!(local(None, 1, addr, len, write), other);
                }
            }
        }
    }

    #[test]
    fn remote_keys() {
        let wants = [
            IBV_ACCESS_REMOTE_READ,
            IBV_ACCESS_REMOTE_WRITE,
            IBV_ACCESS_REMOTE_ATOMIC,
        ];
        for (addr, len, inside) in BOUNDS {
            for mr_access in [0, IBV_ACCESS_LOCAL_WRITE, ALL, IBV_ACCESS_REMOTE_READ] {
                for qp_access in [0, ALL, IBV_ACCESS_REMOTE_WRITE] {
                    for want in wants {
                        let r = region(mr_access);
                        let ok =
                            len == 0 || (inside && mr_access & want != 0 && qp_access & want != 0);
                        let expect = if ok {
                            Ok(())
                        } else {
                            Err(IBV_WC_REM_ACCESS_ERR)
                        };
                        assert_eq!(
                            remote(Some(&r), 1, qp_access, addr, len, want),
                            expect,
                            "{addr:#x}+{len:#x} mr {mr_access:#x} qp {qp_access:#x} want {want:#x}"
                        );
                        let other = if len == 0 {
                            Ok(())
                        } else {
                            Err(IBV_WC_REM_ACCESS_ERR)
                        };
                        assert_eq!(remote(Some(&r), 9, qp_access, addr, len, want), other);
                        assert_eq!(remote(None, 1, qp_access, addr, len, want), other);
                    }
                }
            }
        }
    }

    /// A region registered under an IOVA: checked in the IOVA's space,
    /// translated to where it lies.
    #[test]
    fn iova_translation() {
        let r = Region {
            va: 0x7f00_0000_1000,
            ..region(IBV_ACCESS_LOCAL_WRITE)
        };
        assert_eq!(local(Some(&r), 1, 0x1080, 16, true), Ok(()));
        assert_eq!(r.va_of(0x1080), 0x7f00_0000_1080);
        assert_eq!(
            local(Some(&r), 1, 0x7f00_0000_1080, 16, true),
            Err(IBV_WC_LOC_PROT_ERR),
            "its address is not its IOVA"
        );
    }

    #[test]
    fn message_limit() {
        assert_eq!(message_len(u64::from(MAX_MSG_SIZE)), Ok(()));
        assert_eq!(
            message_len(u64::from(MAX_MSG_SIZE) + 1),
            Err(IBV_WC_LOC_LEN_ERR)
        );
    }
}
