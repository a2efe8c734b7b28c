//! Access to a client's memory from the router.
//!
//! A session's memory is one *address space*, not a pid. At Hello the
//! router opens `/proc/PID/mem` and `/proc/PID/maps` of the connecting
//! process; the kernel binds each of these files to the address space the
//! process has at that moment. Every later read, write and mapping check
//! goes through them, so:
//!
//! - after an `execve` (by any thread of the process), both files refer to
//!   the old address space, which the kernel tears down: reads and writes
//!   fail and the mapping list is empty. A setuid program that the client
//!   execs is never reached through the session, and failing
//!   registrations say nothing about its mappings;
//! - a pid that is reused after the client exits is never reached either:
//!   the files do not follow the pid;
//! - a process that shares the address space (`clone(CLONE_VM)`) keeps it
//!   alive, and then the accesses reach exactly that address space, which
//!   the session's process registered.
//!
//! Opening the files is where the router (root, with `CAP_SYS_PTRACE`)
//! could be tricked: the pid from `SO_PEERCRED` may have exec'd a setuid
//! program between `connect` and Hello. [`ProcessMemory::of_session`]
//! therefore checks, after opening, that the process still has exactly the
//! credentials it connected with and is dumpable (the kernel's own
//! condition for a process of that user to trace it). The kernel updates
//! an exec's address space and credentials under one lock, which
//! `/proc/PID/mem`'s open also takes: either the files belong to the old
//! address space (dead after the exec, harmless), or the check sees the new
//! credentials and refuses.
//!
//! The router checks every access against the memory regions first (keys,
//! bounds, access flags); these functions only move bytes. A write reaches
//! registered pages whatever their current protection, as a NIC's DMA
//! into pinned pages does.

use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::rc::Rc;

#[derive(Debug)]
struct Handles {
    /// `/proc/PID/mem`, read-write.
    mem: File,
    /// `/proc/PID/maps`, re-read from offset 0 for every check.
    maps: File,
}

/// One client process's address space, fixed when the session began.
#[derive(Clone, Debug)]
pub struct ProcessMemory {
    /// The process's pid in the router's pid namespace (for status and
    /// messages; never used to reach memory).
    pub pid: i32,
    handles: Rc<Handles>,
}

/// The credentials a process connected with (from `SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

/// Why a session's address space cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SessionMemoryError {
    #[error("process {pid} is gone")]
    Gone { pid: i32 },
    #[error(
        "process {pid} no longer has the credentials it connected with, or is not dumpable \
         (a setuid or setgid program, or one that changed its user): fv0 does not reach its memory"
    )]
    Credentials { pid: i32 },
    #[error("opening {what} of process {pid}: {source}")]
    Open {
        what: &'static str,
        pid: i32,
        source: io::Error,
    },
}

impl ProcessMemory {
    /// The address space of process `pid`, which connected with `cred` and
    /// is `alive` (a pidfd taken when its connection was accepted: it tells
    /// whether the pid still names that process).
    pub fn of_session(
        pid: i32,
        cred: Credentials,
        alive: impl Fn() -> bool,
    ) -> Result<ProcessMemory, SessionMemoryError> {
        let open = |what: &'static str, write: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(format!("/proc/{pid}/{what}"))
                .map_err(|source| match source.raw_os_error() {
                    Some(libc::ENOENT) | Some(libc::ESRCH) => SessionMemoryError::Gone { pid },
                    _ => SessionMemoryError::Open { what, pid, source },
                })
        };
        let mem = open("mem", true)?;
        let maps = open("maps", false)?;
        // The files are bound now; what follows checks whose they are.
        if !alive() {
            return Err(SessionMemoryError::Gone { pid });
        }
        match same_credentials(pid, cred) {
            Ok(true) => {}
            Ok(false) => return Err(SessionMemoryError::Credentials { pid }),
            Err(_) => return Err(SessionMemoryError::Gone { pid }),
        }
        Ok(ProcessMemory {
            pid,
            handles: Rc::new(Handles { mem, maps }),
        })
    }

    /// Reads `buf.len()` bytes at `addr`; a short read is `EFAULT`, an
    /// address space that is gone `ESRCH`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        // SAFETY: a `&mut [u8]` is valid as `&mut [MaybeUninit<u8>]` as
        // long as only initialised bytes are written to it, which the
        // kernel does.
        let uninit = unsafe {
            std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut MaybeUninit<u8>, buf.len())
        };
        self.read_uninit(addr, uninit)
    }

    /// Like [`ProcessMemory::read`] into memory that need not be
    /// initialised; on `Ok` every byte of `buf` has been written.
    pub fn read_uninit(&self, addr: u64, buf: &mut [MaybeUninit<u8>]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset(addr, done)?;
            let rest = &mut buf[done..];
            let n = retry(|| {
                // SAFETY: `rest` is writable memory of `rest.len()` bytes
                // that we own; pread only writes into it.
                let n = unsafe {
                    libc::pread(
                        self.handles.mem.as_raw_fd(),
                        rest.as_mut_ptr() as *mut libc::c_void,
                        rest.len(),
                        at as libc::off_t,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })?;
            if n == 0 {
                return Err(gone());
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `buf` at `addr`, in ascending address order; a short write
    /// is `EFAULT`, an address space that is gone `ESRCH`.
    pub fn write(&self, addr: u64, buf: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset(addr, done)?;
            let n = retry(|| self.handles.mem.write_at(&buf[done..], at))?;
            if n == 0 {
                return Err(gone());
            }
            done += n;
        }
        Ok(())
    }

    /// Checks that `[addr, addr+len)` is mapped in the address space (and
    /// writable if asked), from its maps file: what pinning would check on
    /// a NIC. An address space that is gone has no mappings.
    pub fn check_mapped(&self, addr: u64, len: u64, writable: bool) -> io::Result<()> {
        let maps = self.maps_text()?;
        let end = addr
            .checked_add(len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        if covered(&maps, addr, end, writable) {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EFAULT))
        }
    }

    fn maps_text(&self) -> io::Result<String> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = retry(|| self.handles.maps.read_at(&mut chunk, out.len() as u64))?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Whether `[addr, end)` is covered by readable (and, if asked, writable)
/// mappings listed in a maps file's text.
fn covered(maps: &str, addr: u64, end: u64, writable: bool) -> bool {
    let mut ranges: Vec<(u64, u64, bool)> = maps
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let range = parts.next()?;
            let perms = parts.next()?;
            let (a, b) = range.split_once('-')?;
            let a = u64::from_str_radix(a, 16).ok()?;
            let b = u64::from_str_radix(b, 16).ok()?;
            let ok =
                perms.starts_with('r') && (!writable || perms.as_bytes().get(1) == Some(&b'w'));
            Some((a, b, ok))
        })
        .collect();
    ranges.sort_unstable();
    let mut at = addr;
    for (a, b, ok) in ranges {
        if at >= end {
            break;
        }
        if b <= at {
            continue;
        }
        if a > at || !ok {
            break;
        }
        at = b;
    }
    at >= end
}

/// The file offset of byte `done` of an access at `addr` (addresses are
/// offsets of `/proc/PID/mem`).
fn offset(addr: u64, done: usize) -> io::Result<u64> {
    addr.checked_add(done as u64)
        .filter(|a| *a <= i64::MAX as u64)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))
}

fn gone() -> io::Error {
    io::Error::from_raw_os_error(libc::ESRCH)
}

/// Runs `f` again while it is interrupted; `EIO` (an unmapped page, as
/// `/proc/PID/mem` reports it) becomes `EFAULT`.
fn retry(mut f: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                return Err(io::Error::from_raw_os_error(libc::EFAULT))
            }
            r => return r,
        }
    }
}

/// True when every real, effective, saved and file-system id of `pid` is
/// the connecting credential's and the process is dumpable (its `/proc`
/// folder then belongs to its effective uid; a non-dumpable process's
/// belongs to root). Root's processes pass the dumpable test trivially:
/// root may trace anything.
fn same_credentials(pid: i32, cred: Credentials) -> io::Result<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ids = |key: &str| -> Option<Vec<u32>> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        line.split_whitespace().map(|v| v.parse().ok()).collect()
    };
    let all = |key: &str, want: u32| {
        ids(key).is_some_and(|v| v.len() == 4 && v.iter().all(|&x| x == want))
    };
    if !all("Uid:", cred.uid) || !all("Gid:", cred.gid) {
        return Ok(false);
    }
    let owner = std::fs::metadata(format!("/proc/{pid}"))?.uid();
    Ok(owner == cred.uid)
}

/// A pidfd: names one process for as long as it lives, whatever happens
/// to its pid number afterwards.
#[derive(Debug)]
pub struct PidFd(std::os::fd::OwnedFd);

impl PidFd {
    pub fn open(pid: i32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor; we own it.
        Ok(PidFd(unsafe {
            std::os::fd::FromRawFd::from_raw_fd(fd as i32)
        }))
    }

    /// True once the process has exited (the pidfd polls readable).
    pub fn exited(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }
}

/// A list of `(address, length)` pieces in one address space, walked as
/// one byte stream.
pub type Segments = Vec<(u64, u64)>;

/// Calls `f(address, range)` for the pieces covering bytes
/// `[offset, offset+len)` of the stream `segs`, where `range` is the
/// piece's place in the caller's buffer.
fn pieces(
    segs: &[(u64, u64)],
    mut offset: u64,
    len: usize,
    mut f: impl FnMut(u64, std::ops::Range<usize>) -> io::Result<()>,
) -> io::Result<()> {
    let mut at = 0usize;
    for &(addr, seg_len) in segs {
        if at == len {
            break;
        }
        if offset >= seg_len {
            offset -= seg_len;
            continue;
        }
        let take = ((seg_len - offset) as usize).min(len - at);
        f(addr + offset, at..at + take)?;
        at += take;
        offset = 0;
    }
    if at == len {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EFAULT))
    }
}

impl ProcessMemory {
    /// Reads `buf.len()` bytes starting `offset` bytes into the stream `segs`.
    pub fn read_segments(
        &self,
        segs: &[(u64, u64)],
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        let len = buf.len();
        pieces(segs, offset, len, |addr, r| self.read(addr, &mut buf[r]))
    }

    /// Like [`ProcessMemory::read_segments`] into memory that need not be
    /// initialised; on `Ok` every byte of `buf` has been written.
    pub fn read_segments_uninit(
        &self,
        segs: &[(u64, u64)],
        offset: u64,
        buf: &mut [MaybeUninit<u8>],
    ) -> io::Result<()> {
        let len = buf.len();
        pieces(segs, offset, len, |addr, r| {
            self.read_uninit(addr, &mut buf[r])
        })
    }

    /// Writes `buf` starting `offset` bytes into the stream `segs`, in
    /// ascending order.
    pub fn write_segments(&self, segs: &[(u64, u64)], offset: u64, buf: &[u8]) -> io::Result<()> {
        pieces(segs, offset, buf.len(), |addr, r| self.write(addr, &buf[r]))
    }
}

/// The test process's own address space, as a session's (unit tests and
/// the fuzz targets use it for memory regions).
#[cfg(any(test, feature = "fuzzing"))]
pub fn this_process() -> ProcessMemory {
    let me = std::fs::metadata("/proc/self").expect("/proc/self");
    let cred = Credentials {
        uid: me.uid(),
        gid: me.gid(),
    };
    ProcessMemory::of_session(std::process::id() as i32, cred, || true)
        .expect("the test process's own memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> ProcessMemory {
        this_process()
    }

    #[test]
    fn reads_and_writes_own_memory() {
        let me = me();
        let mut src = vec![1u8, 2, 3, 4];
        let mut dst = [0u8; 4];
        me.read(src.as_ptr() as u64, &mut dst).unwrap();
        assert_eq!(dst, [1, 2, 3, 4]);
        me.write(src.as_mut_ptr() as u64, &[9, 9]).unwrap();
        assert_eq!(src, [9, 9, 3, 4]);
        assert_eq!(
            me.read(8, &mut dst).unwrap_err().raw_os_error(),
            Some(libc::EFAULT)
        );
        me.check_mapped(src.as_ptr() as u64, 4, true).unwrap();
        assert!(me.check_mapped(0, 4096, false).is_err());
    }

    #[test]
    fn scatter_gather_streams() {
        let me = me();
        let src: Vec<u8> = (0..100u8).collect();
        let segs = vec![
            (src.as_ptr() as u64 + 10, 5),
            (src.as_ptr() as u64 + 50, 20),
        ];
        let mut buf = [0u8; 10];
        me.read_segments(&segs, 2, &mut buf).unwrap();
        assert_eq!(buf, [12, 13, 14, 50, 51, 52, 53, 54, 55, 56]);
        let mut dst = vec![0u8; 30];
        let dsegs = vec![
            (dst.as_mut_ptr() as u64 + 1, 3),
            (dst.as_mut_ptr() as u64 + 20, 7),
        ];
        me.write_segments(&dsegs, 0, &buf).unwrap();
        assert_eq!(&dst[1..4], &[12, 13, 14]);
        assert_eq!(&dst[20..27], &[50, 51, 52, 53, 54, 55, 56]);
        assert_eq!(dst[0], 0);
        assert_eq!(dst[27], 0);
        // More bytes than the segments hold.
        let mut big = [0u8; 30];
        assert!(me.read_segments(&segs, 0, &mut big).is_err());
    }

    #[test]
    fn wrong_credentials_are_refused() {
        let cred = Credentials {
            uid: 12345,
            gid: 12345,
        };
        let e = ProcessMemory::of_session(std::process::id() as i32, cred, || true).unwrap_err();
        assert!(matches!(e, SessionMemoryError::Credentials { .. }), "{e}");
        let e = ProcessMemory::of_session(std::process::id() as i32, cred, || false).unwrap_err();
        assert!(matches!(e, SessionMemoryError::Gone { .. }), "{e}");
    }

    /// The address space of a process that exec'd is gone, although the
    /// pid is the same process.
    #[test]
    fn an_exec_ends_access() {
        use std::io::{BufRead, Write};
        // `sh` reads a line, then execs `sleep`: same pid, new program.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let me = std::fs::metadata("/proc/self").unwrap();
        let cred = Credentials {
            uid: me.uid(),
            gid: me.gid(),
        };
        let mem = ProcessMemory::of_session(pid, cred, || true).unwrap();
        let maps = mem.maps_text().unwrap();
        let first = maps.lines().next().unwrap();
        let addr = u64::from_str_radix(first.split('-').next().unwrap(), 16).unwrap();
        let mut b = [0u8; 4];
        mem.read(addr, &mut b).unwrap();
        let exe_before = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        writeln!(child.stdin.as_mut().unwrap()).unwrap();
        // Wait until the exec happened: /proc/PID/exe changes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() == Some(&exe_before) {
            assert!(std::time::Instant::now() < deadline, "no exec");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(
            mem.read(addr, &mut b).unwrap_err().raw_os_error(),
            Some(libc::ESRCH)
        );
        assert!(mem.write(addr, &b).is_err());
        assert!(mem.check_mapped(addr, 4, false).is_err());
        assert_eq!(mem.maps_text().unwrap(), "");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
