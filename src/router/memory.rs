//! Access to a client's memory from the router.
//!
//! In isolated mode the router reaches registered memory with
//! `process_vm_readv`/`process_vm_writev` on the client's pid (taken from
//! SO_PEERCRED, never from the client). Nothing in the client's address
//! space is remapped, so the bytes around an unaligned buffer, page
//! protections and fork semantics are exactly as the application left them.
//! The router checks every access against the memory regions first (keys,
//! bounds, access flags); these functions only move bytes.
//!
//! A pid outlives nothing: once a client exits and is reaped, its number
//! can be handed to another process. A session's memory therefore holds a
//! pidfd and, before moving bytes, checks that the process has not exited
//! (at most every [`RECHECK`], one `poll` of the pidfd). For another process
//! to receive the same pid in between, the kernel's cyclic pid allocator
//! would have to go around all of `pid_max` (at least 32768 pids) within
//! that interval, far beyond any fork rate.

use std::cell::Cell;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long an "it is still alive" answer is trusted.
pub const RECHECK: Duration = Duration::from_millis(1);

#[derive(Debug)]
struct Liveness {
    pidfd: OwnedFd,
    checked_at: Cell<Option<Instant>>,
    exited: Cell<bool>,
}

/// One client process's address space.
#[derive(Clone, Debug)]
pub struct ProcessMemory {
    pub pid: i32,
    liveness: Option<Rc<Liveness>>,
}

impl ProcessMemory {
    /// The memory of a session's process, guarded against pid reuse.
    pub fn of_session(pid: i32) -> io::Result<ProcessMemory> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor; we own it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(ProcessMemory {
            pid,
            liveness: Some(Rc::new(Liveness {
                pidfd,
                checked_at: Cell::new(None),
                exited: Cell::new(false),
            })),
        })
    }

    /// The memory of a thread that is known to be alive right now (for
    /// example blocked in a request to us), without the pid-reuse guard.
    pub fn unchecked(pid: i32) -> ProcessMemory {
        ProcessMemory {
            pid,
            liveness: None,
        }
    }

    /// Err(ESRCH) once the process has exited.
    fn check_alive(&self) -> io::Result<()> {
        let Some(l) = &self.liveness else {
            return Ok(());
        };
        let gone = || Err(io::Error::from_raw_os_error(libc::ESRCH));
        if l.exited.get() {
            return gone();
        }
        let now = Instant::now();
        if l.checked_at
            .get()
            .is_some_and(|t| now.duration_since(t) < RECHECK)
        {
            return Ok(());
        }
        let mut pfd = libc::pollfd {
            fd: l.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n > 0 && pfd.revents != 0 {
            l.exited.set(true);
            return gone();
        }
        l.checked_at.set(Some(now));
        Ok(())
    }

    /// Reads `buf.len()` bytes at `addr`; a short read is `EFAULT`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.check_alive()?;
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes our own writable buffer; the remote side
        // is checked by the kernel against the target's address space.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        complete(n, buf.len())
    }

    /// Writes `buf` at `addr`, in ascending address order; a short write is
    /// `EFAULT`.
    pub fn write(&self, addr: u64, buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.check_alive()?;
        let local = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes our own readable buffer; the kernel only
        // reads from it.
        let n = unsafe { libc::process_vm_writev(self.pid, &local, 1, &remote, 1, 0) };
        complete(n, buf.len())
    }

    /// Checks that `[addr, addr+len)` is mapped in the process (and writable
    /// if asked), from /proc/PID/maps: what pinning would check on a NIC.
    pub fn check_mapped(&self, addr: u64, len: u64, writable: bool) -> io::Result<()> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))?;
        let end = addr
            .checked_add(len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut covered = addr;
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
        for (a, b, ok) in ranges {
            if covered >= end {
                break;
            }
            if b <= covered {
                continue;
            }
            if a > covered || !ok {
                break;
            }
            covered = b;
        }
        if covered >= end {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EFAULT))
        }
    }
}

fn complete(n: isize, want: usize) -> io::Result<()> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else if n as usize != want {
        Err(io::Error::from_raw_os_error(libc::EFAULT))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_own_memory() {
        let me = ProcessMemory::of_session(std::process::id() as i32).unwrap();
        let mut src = vec![1u8, 2, 3, 4];
        let mut dst = [0u8; 4];
        me.read(src.as_ptr() as u64, &mut dst).unwrap();
        assert_eq!(dst, [1, 2, 3, 4]);
        me.write(src.as_mut_ptr() as u64, &[9, 9]).unwrap();
        assert_eq!(src, [9, 9, 3, 4]);
        assert!(me.read(8, &mut dst).is_err());
        me.check_mapped(src.as_ptr() as u64, 4, true).unwrap();
        assert!(me.check_mapped(0, 4096, false).is_err());
    }
}

/// A list of `(address, length)` pieces in one address space, walked as
/// one byte stream.
pub type Segments = Vec<(u64, u64)>;

/// The iovecs covering bytes `[offset, offset+len)` of the stream `segs`.
fn iovecs(segs: &[(u64, u64)], mut offset: u64, mut len: u64) -> Vec<libc::iovec> {
    let mut out = Vec::new();
    for &(addr, seg_len) in segs {
        if len == 0 {
            break;
        }
        if offset >= seg_len {
            offset -= seg_len;
            continue;
        }
        let take = (seg_len - offset).min(len);
        out.push(libc::iovec {
            iov_base: (addr + offset) as usize as *mut libc::c_void,
            iov_len: take as usize,
        });
        len -= take;
        offset = 0;
    }
    out
}

impl ProcessMemory {
    /// Reads `buf.len()` bytes starting `offset` bytes into the stream `segs`.
    pub fn read_segments(
        &self,
        segs: &[(u64, u64)],
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        // SAFETY: a `&mut [u8]` is valid as `&mut [MaybeUninit<u8>]` as
        // long as only initialised bytes are written to it, which the
        // kernel does.
        let uninit = unsafe {
            std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut MaybeUninit<u8>, buf.len())
        };
        self.read_segments_uninit(segs, offset, uninit)
    }

    /// Like [`ProcessMemory::read_segments`] into memory that need not be
    /// initialised; on `Ok` every byte of `buf` has been written.
    pub fn read_segments_uninit(
        &self,
        segs: &[(u64, u64)],
        offset: u64,
        buf: &mut [MaybeUninit<u8>],
    ) -> io::Result<()> {
        let remote = iovecs(segs, offset, buf.len() as u64);
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        if buf.is_empty() {
            return Ok(());
        }
        self.check_alive()?;
        // SAFETY: `local` is our own writable buffer; remote iovecs are
        // checked by the kernel against the target process. `complete`
        // fails unless all `buf.len()` bytes were written.
        let n = unsafe {
            libc::process_vm_readv(
                self.pid,
                &local,
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        complete(n, buf.len())
    }

    /// Writes `buf` starting `offset` bytes into the stream `segs`, in
    /// ascending order.
    pub fn write_segments(&self, segs: &[(u64, u64)], offset: u64, buf: &[u8]) -> io::Result<()> {
        let remote = iovecs(segs, offset, buf.len() as u64);
        let local = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        if buf.is_empty() {
            return Ok(());
        }
        self.check_alive()?;
        // SAFETY: `local` is our own readable buffer, only read by the kernel.
        let n = unsafe {
            libc::process_vm_writev(
                self.pid,
                &local,
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        complete(n, buf.len())
    }
}

#[cfg(test)]
mod segment_tests {
    use super::*;

    #[test]
    fn scatter_gather_streams() {
        let me = ProcessMemory::of_session(std::process::id() as i32).unwrap();
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
    }
}

#[cfg(test)]
mod liveness_tests {
    use super::*;

    #[test]
    fn memory_of_an_exited_process_is_refused() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mem = ProcessMemory::of_session(child.id() as i32).unwrap();
        assert!(mem.check_alive().is_ok());
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(RECHECK * 2);
        let mut buf = [0u8; 8];
        let err = mem.read(0x1000, &mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }
}
