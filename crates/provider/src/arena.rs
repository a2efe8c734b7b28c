//! Semi mode, owner side: registered pages move into one memfd per process
//! (the arena), so that the providers of peers can map them.
//!
//! `ibv_reg_mr` copies each page of the range that is not yet in the arena
//! to a fresh place at the arena's end (`pwrite`, which fails cleanly on
//! unreadable memory), then maps that place over the page
//! (`MAP_FIXED | MAP_SHARED`). The application's addresses and contents are
//! unchanged; overlapping and repeated registrations reuse the pages already
//! there. Pages are never moved back: a page stays shared until the process
//! exits or unmaps it. `MADV_DONTFORK` keeps a child from sharing them too
//! (as `ibv_fork_init` would for a NIC).
//!
//! Only private anonymous memory (heap, stack, anonymous mappings) is moved:
//! a file or shared mapping keeps its own backing (the application may
//! reach those pages through the file or another process), so a region
//! that touches one stays unshared and peers get `IBV_WC_REM_ACCESS_ERR`
//! for it.
//!
//! Known limits: a page being written by another thread during
//! `ibv_reg_mr` may lose that write; read-only memory becomes writable.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

use flowverbs_wire::control::ArenaRun;
use flowverbs_wire::segment::PAGE;

const PAGE_U: u64 = PAGE as u64;

pub struct Arena {
    fd: OwnedFd,
    size: u64,
    /// Shared runs by start address: (length, arena offset); disjoint.
    runs: BTreeMap<u64, (u64, u64)>,
    /// The router has this memfd.
    pub announced: bool,
}

impl Arena {
    pub fn new() -> std::io::Result<Arena> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        let fd = memfd_create(
            c"fv-arena",
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )?;
        // Peers map it: it must never shrink under them (SIGBUS).
        fcntl(
            fd.as_raw_fd(),
            FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK),
        )?;
        Ok(Arena {
            fd,
            size: 0,
            runs: BTreeMap::new(),
            announced: false,
        })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Moves the pages of `[addr, addr + len)` into the arena (those not
    /// there yet) and returns where each run of them lies.
    pub fn share(&mut self, addr: u64, len: u64) -> std::io::Result<Vec<ArenaRun>> {
        let start = addr & !(PAGE_U - 1);
        let end = addr
            .checked_add(len)
            .map(|e| e.div_ceil(PAGE_U) * PAGE_U)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let maps = std::fs::read_to_string("/proc/self/maps")?;
        if !self.movable(&maps, start, end) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "not private anonymous memory",
            ));
        }
        let mut out: Vec<ArenaRun> = Vec::new();
        let mut at = start;
        while at < end {
            // The run containing `at`, if any.
            let existing = self
                .runs
                .range(..=at)
                .next_back()
                .filter(|(&s, &(l, _))| s + l > at)
                .map(|(&s, &(l, o))| (s, l, o));
            let run = match existing {
                Some((s, l, o)) => {
                    let n = (s + l).min(end) - at;
                    ArenaRun {
                        addr: at,
                        len: n,
                        offset: o + (at - s),
                    }
                }
                None => {
                    let next = self
                        .runs
                        .range(at..)
                        .next()
                        .map_or(end, |(&s, _)| s.min(end));
                    self.move_in(at, next - at)?
                }
            };
            at += run.len;
            match out.last_mut() {
                Some(l) if l.offset + l.len == run.offset => l.len += run.len,
                _ => out.push(run),
            }
        }
        Ok(out)
    }

    /// True when every page of `[start, end)` is either in the arena
    /// already or private anonymous memory (`maps`: /proc/self/maps).
    fn movable(&self, maps: &str, start: u64, end: u64) -> bool {
        let mut at = start;
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            let Some((lo, hi)) = range.split_once('-') else {
                continue;
            };
            let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
            else {
                continue;
            };
            if hi <= at || lo >= end {
                continue;
            }
            if lo > at {
                return false; // a hole: not mapped
            }
            let path = f.nth(3).unwrap_or("");
            let anonymous = perms.ends_with('p')
                && (path.is_empty()
                    || path == "[heap]"
                    || path == "[stack]"
                    || path.starts_with("[anon:"));
            let ours = path.starts_with("/memfd:fv-arena");
            if !anonymous && !ours {
                return false;
            }
            at = hi;
            if at >= end {
                return true;
            }
        }
        at >= end
    }

    /// Copies `[addr, addr + len)` (page-aligned, not shared yet) to the
    /// arena's end and maps it there.
    fn move_in(&mut self, addr: u64, len: u64) -> std::io::Result<ArenaRun> {
        let offset = self.size;
        nix::unistd::ftruncate(&self.fd, (offset + len) as libc::off_t)?;
        self.size = offset + len;
        let mut done = 0u64;
        while done < len {
            // SAFETY: pwrite reads from our own address space and reports
            // EFAULT (no signal) if the range is not readable.
            let n = unsafe {
                libc::pwrite(
                    self.fd.as_raw_fd(),
                    (addr + done) as *const libc::c_void,
                    (len - done) as usize,
                    (offset + done) as libc::off_t,
                )
            };
            if n <= 0 {
                return Err(std::io::Error::last_os_error());
            }
            done += n as u64;
        }
        // SAFETY: replaces the pages of [addr, addr+len), whose content we
        // just copied, with the same content in the arena; the caller
        // registered this range, so it is the application's memory.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: advice on the range we just mapped.
        unsafe { libc::madvise(p, len as usize, libc::MADV_DONTFORK) };
        self.runs.insert(addr, (len, offset));
        Ok(ArenaRun { addr, len, offset })
    }
}
