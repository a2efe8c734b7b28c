//! Semi mode, owner side: registered pages move into one memfd per process
//! (the arena), so that the providers of peers can map them.
//!
//! `ibv_reg_mr` copies each page of the range that is not yet in the arena
//! to a fresh place at the arena's end (`pwrite`, which fails cleanly on
//! unreadable memory), then maps that place over the page
//! (`MAP_FIXED | MAP_SHARED`). The application's addresses and contents are
//! unchanged; overlapping and repeated registrations reuse the pages already
//! there (the process's own mappings say which: /proc/self/maps). Pages are
//! never moved back: a page stays shared until the process exits or unmaps
//! it; the arena space of unmapped pages is not reused. `MADV_DONTFORK` keeps a child from sharing them too
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

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};

use flowverbs_wire::control::ArenaRun;
use flowverbs_wire::segment::PAGE;

const PAGE_U: u64 = PAGE as u64;

pub struct Arena {
    fd: OwnedFd,
    /// The memfd's inode, to recognise its mappings in /proc/self/maps.
    inode: u64,
    size: u64,
    /// The arena ranges (offsets) of each live memory region, by lkey.
    held: HashMap<u32, Vec<(u64, u64)>>,
    /// Arena ranges with pages in them (moved in, not punched), by start.
    filled: BTreeMap<u64, u64>,
    /// Where pages were moved: address -> (length, arena offset). Some may
    /// be gone (unmapped); /proc/self/maps says which are still there.
    placed: BTreeMap<u64, (u64, u64)>,
    /// Bytes moved in since the last reclaim.
    moved_since_reclaim: u64,
    /// The router has this memfd.
    pub announced: bool,
}

/// Arena space is reclaimed once this much was moved in since the last
/// time (so that deregistering does not read /proc/self/maps every time).
const RECLAIM_AFTER: u64 = 32 << 20;

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
        let inode = nix::sys::stat::fstat(fd.as_raw_fd())?.st_ino;
        Ok(Arena {
            fd,
            inode,
            size: 0,
            held: HashMap::new(),
            filled: BTreeMap::new(),
            placed: BTreeMap::new(),
            moved_since_reclaim: 0,
            announced: false,
        })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Moves the pages of `[addr, addr + len)` into the arena (those not
    /// there yet) and returns where each run of them lies.
    ///
    /// Which pages are in the arena is read from /proc/self/maps, never
    /// remembered: the application may unmap registered pages and map new
    /// memory at the same addresses (a freed and reallocated buffer, which
    /// UCX's registration cache registers again), and those new pages must
    /// move in too. Nothing moves unless every page of the range can.
    pub fn share(&mut self, addr: u64, len: u64) -> std::io::Result<Vec<ArenaRun>> {
        let start = addr & !(PAGE_U - 1);
        let end = addr
            .checked_add(len)
            .map(|e| e.div_ceil(PAGE_U) * PAGE_U)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let maps = std::fs::read_to_string("/proc/self/maps")?;
        let plan = self.plan(&maps, start, end)?;
        let mut out: Vec<ArenaRun> = Vec::new();
        for (at, n, offset) in plan {
            let run = match offset {
                Some(offset) => ArenaRun {
                    addr: at,
                    len: n,
                    offset,
                },
                None => self.move_in(at, n)?,
            };
            match out.last_mut() {
                Some(l) if l.offset + l.len == run.offset => l.len += run.len,
                _ => out.push(run),
            }
        }
        Ok(out)
    }

    /// Memory region `lkey` lives on the arena's `runs`.
    pub fn hold(&mut self, lkey: u32, runs: &[ArenaRun]) {
        let ranges = runs.iter().map(|r| (r.offset, r.offset + r.len)).collect();
        self.held.insert(lkey, ranges);
    }

    /// Memory region `lkey` is gone. Arena pages that neither a live
    /// region nor a mapping of this process uses any more (the application
    /// unmapped them) are given back to the system, now and then.
    pub fn release(&mut self, lkey: u32) {
        self.held.remove(&lkey);
        if self.moved_since_reclaim >= RECLAIM_AFTER {
            if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
                self.reclaim(&maps);
            }
        }
    }

    /// Punches out every filled arena range that no live region holds and
    /// that is no longer where it was placed (`maps`: /proc/self/maps). A
    /// peer still writing there (with a key it resolved before the region
    /// went) writes into pages no one reads, as a NIC would into pages the
    /// region no longer pins; a read of them returns zeros.
    ///
    /// Only placements count as mapped, not every mapping of the memfd: a
    /// QP of this process whose peer is in this process too maps the whole
    /// arena as a peer's (`semi::KeyCache`), and that must not keep
    /// everything alive.
    fn reclaim(&mut self, maps: &str) {
        self.moved_since_reclaim = 0;
        let mut placed = BTreeMap::new();
        for m in maps.lines().filter_map(MapsLine::parse) {
            if !m.is_arena(self.inode) {
                continue;
            }
            let shift = m.offset.wrapping_sub(m.lo);
            for (&addr, &(len, offset)) in self.placed.range(..m.hi) {
                let (lo, hi) = (addr.max(m.lo), (addr + len).min(m.hi));
                if hi > lo && offset.wrapping_sub(addr) == shift {
                    placed.insert(lo, (hi - lo, offset + (lo - addr)));
                }
            }
        }
        self.placed = placed;
        let mut live: Vec<(u64, u64)> = self
            .placed
            .values()
            .map(|&(len, offset)| (offset, offset + len))
            .chain(self.held.values().flatten().copied())
            .collect();
        live.sort_unstable();
        let mut filled = BTreeMap::new();
        for (&start, &end) in &self.filled {
            let mut at = start;
            for &(lo, hi) in live.iter().filter(|&&(lo, hi)| hi > start && lo < end) {
                if lo > at {
                    self.punch(at, lo);
                }
                let keep = (lo.max(at), hi.min(end));
                if keep.1 > keep.0 {
                    filled.insert(keep.0, keep.1);
                }
                at = at.max(hi.min(end));
            }
            if at < end {
                self.punch(at, end);
            }
        }
        self.filled = filled;
    }

    fn punch(&self, start: u64, end: u64) {
        use nix::fcntl::{fallocate, FallocateFlags};
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        // A failure leaves the pages in place: space, not correctness.
        let _ = fallocate(
            self.fd.as_raw_fd(),
            flags,
            start as libc::off_t,
            (end - start) as libc::off_t,
        );
    }

    /// The pieces of `[start, end)` as `maps` (/proc/self/maps) shows them:
    /// `(addr, len, Some(arena offset))` for pages mapped from this arena,
    /// `(addr, len, None)` for private anonymous memory (heap, stack,
    /// anonymous mappings) to move in. Anything else (a hole, a file or
    /// shared mapping, whose pages the application may reach another way)
    /// refuses the whole range.
    fn plan(
        &self,
        maps: &str,
        start: u64,
        end: u64,
    ) -> std::io::Result<Vec<(u64, u64, Option<u64>)>> {
        let refuse =
            |why: &str| std::io::Error::new(std::io::ErrorKind::Unsupported, why.to_owned());
        let mut plan = Vec::new();
        let mut at = start;
        for m in maps.lines().filter_map(MapsLine::parse) {
            if m.hi <= at || m.lo >= end {
                continue;
            }
            if m.lo > at {
                return Err(refuse("not mapped"));
            }
            let stop = m.hi.min(end);
            let arena = m.is_arena(self.inode);
            let anonymous = m.perms.ends_with('p')
                && m.inode == 0
                && (m.path.is_empty()
                    || m.path == "[heap]"
                    || m.path == "[stack]"
                    || m.path.starts_with("[anon:"));
            if arena {
                plan.push((at, stop - at, Some(m.offset + (at - m.lo))));
            } else if anonymous {
                plan.push((at, stop - at, None));
            } else {
                return Err(refuse("not private anonymous memory"));
            }
            at = stop;
            if at >= end {
                return Ok(plan);
            }
        }
        Err(refuse("not mapped"))
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
        self.filled.insert(offset, offset + len);
        self.placed.insert(addr, (len, offset));
        self.moved_since_reclaim += len;
        Ok(ArenaRun { addr, len, offset })
    }
}

/// One line of /proc/self/maps: `lo-hi perms offset dev inode path`.
struct MapsLine<'a> {
    lo: u64,
    hi: u64,
    perms: &'a str,
    offset: u64,
    inode: u64,
    path: &'a str,
}

impl<'a> MapsLine<'a> {
    /// A shared mapping of the arena whose memfd has inode `inode`.
    fn is_arena(&self, inode: u64) -> bool {
        self.path.starts_with("/memfd:fv-arena") && self.inode == inode && self.perms.ends_with('s')
    }

    fn parse(line: &'a str) -> Option<MapsLine<'a>> {
        let mut f = line.split_whitespace();
        let (lo, hi) = f.next()?.split_once('-')?;
        let perms = f.next()?;
        let offset = u64::from_str_radix(f.next()?, 16).ok()?;
        let _dev = f.next()?;
        let inode = f.next()?.parse().ok()?;
        Some(MapsLine {
            lo: u64::from_str_radix(lo, 16).ok()?,
            hi: u64::from_str_radix(hi, 16).ok()?,
            perms,
            offset,
            inode,
            path: f.next().unwrap_or(""),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
7f0000000000-7f0000002000 rw-s 00003000 00:01 4242                       /memfd:fv-arena (deleted)
7f0000002000-7f0000004000 rw-p 00000000 00:00 0 
7f0000004000-7f0000005000 rw-p 00002000 fd:01 777                        /usr/lib/x.so
7f0000006000-7f0000007000 rw-s 00000000 00:01 999                        /memfd:fv-arena (deleted)
7f0000007000-7f0000008000 rw-p 00000000 00:00 0                          [heap]
";

    fn arena() -> Arena {
        let mut a = Arena::new().expect("memfd");
        a.inode = 4242;
        a
    }

    #[test]
    fn pages_mapped_from_the_arena_keep_their_place_the_others_move_in() {
        let a = arena();
        let base = 0x7f00_0000_0000u64;
        assert_eq!(
            a.plan(MAPS, base + 0x1000, base + 0x3000).unwrap(),
            vec![
                (base + 0x1000, 0x1000, Some(0x4000)),
                (base + 0x2000, 0x1000, None)
            ]
        );
        assert_eq!(
            a.plan(MAPS, base + 0x7000, base + 0x8000).unwrap(),
            vec![(base + 0x7000, 0x1000, None)]
        );
    }

    #[test]
    fn files_holes_and_other_arenas_refuse_the_range() {
        let a = arena();
        let base = 0x7f00_0000_0000u64;
        for (lo, hi) in [
            (0x3000, 0x5000),
            (0x5000, 0x6000),
            (0x6000, 0x7000),
            (0x7000, 0x9000),
        ] {
            assert!(
                a.plan(MAPS, base + lo, base + hi).is_err(),
                "{lo:#x}..{hi:#x}"
            );
        }
    }

    fn blocks(a: &Arena) -> i64 {
        nix::sys::stat::fstat(a.fd.as_raw_fd())
            .expect("fstat")
            .st_blocks
    }

    fn anonymous(len: usize) -> *mut libc::c_void {
        // SAFETY: a fresh private anonymous mapping of our own.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p
    }

    #[test]
    fn pages_no_region_holds_and_no_mapping_shows_are_punched_out() {
        let mut a = Arena::new().expect("memfd");
        let len = 4 * PAGE;
        let (p, q) = (anonymous(len), anonymous(len));
        for x in [p, q] {
            // SAFETY: both are mapped read-write, `len` bytes.
            unsafe { std::ptr::write_bytes(x as *mut u8, 0x5a, len) };
        }
        let rp = a.share(p as u64, len as u64).expect("share p");
        let rq = a.share(q as u64, len as u64).expect("share q");
        a.hold(1, &rp);
        a.hold(2, &rq);
        let full = blocks(&a);
        assert!(full > 0);
        // SAFETY: our own mappings.
        unsafe {
            libc::munmap(p, len);
            libc::munmap(q, len);
        }
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        a.reclaim(&maps);
        assert_eq!(blocks(&a), full, "both regions still hold their pages");
        a.held.remove(&1);
        a.reclaim(&maps);
        assert_eq!(blocks(&a), full / 2, "region 1's pages are punched out");
        let mut byte = [0u8; 1];
        nix::sys::uio::pread(&a.fd, &mut byte, rq[0].offset as i64).expect("pread");
        assert_eq!(byte[0], 0x5a, "region 2's pages keep their content");
        a.held.remove(&2);
        a.reclaim(&maps);
        assert_eq!(blocks(&a), 0);
    }

    #[test]
    fn mapped_pages_are_kept_without_a_region() {
        let mut a = Arena::new().expect("memfd");
        let len = 2 * PAGE;
        let p = anonymous(len);
        // SAFETY: mapped read-write.
        unsafe { std::ptr::write_bytes(p as *mut u8, 1, len) };
        a.share(p as u64, len as u64).expect("share");
        let full = blocks(&a);
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        a.reclaim(&maps);
        assert_eq!(blocks(&a), full, "the application still maps them");
        // SAFETY: our own mapping.
        unsafe { libc::munmap(p, len) };
    }

    #[test]
    fn a_page_unmapped_and_mapped_again_moves_in_again() {
        let mut a = Arena::new().expect("memfd");
        let len = 2 * PAGE;
        let p = anonymous(len);
        let addr = p as u64;
        let first = a.share(addr, len as u64).expect("share");
        assert_eq!(
            first,
            vec![ArenaRun {
                addr,
                len: len as u64,
                offset: 0
            }]
        );
        assert_eq!(
            a.share(addr + 10, 100).unwrap()[0].offset,
            0,
            "shared already"
        );
        // SAFETY: replaces our own mapping with fresh anonymous memory.
        let q = unsafe {
            libc::mmap(
                p,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(q, p);
        // SAFETY: the page is mapped read-write.
        unsafe { *(p as *mut u8) = 7 };
        let again = a.share(addr, len as u64).expect("share");
        assert_eq!(
            again,
            vec![ArenaRun {
                addr,
                len: len as u64,
                offset: len as u64
            }]
        );
        let mut byte = [0u8; 1];
        nix::sys::uio::pread(&a.fd, &mut byte, len as i64).expect("pread");
        assert_eq!(byte[0], 7, "the new page's content is in the arena");
        // SAFETY: our own mapping.
        unsafe { libc::munmap(p, len) };
    }
}
