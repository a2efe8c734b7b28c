//! The CUSE side: a character device served over `/dev/cuse` (the
//! kernel's `cuse` module) on the router's event loop, with the FUSE
//! protocol the command file system already speaks (no libfuse). The
//! requests are parsed here ([`parse`], pure, fuzzable); [`CuseDevice`]
//! does the I/O.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::fuse::{
    reply_message, InHeader, FUSE_FLUSH, FUSE_INTERRUPT, FUSE_IOCTL, FUSE_OPEN, FUSE_READ,
    FUSE_RELEASE, FUSE_WRITE, IN_HEADER, WRITE_IN,
};

pub const CUSE_INIT: u32 = 4096;
pub const FUSE_POLL: u32 = 40;
pub const FUSE_FSYNC: u32 = 20;
const FUSE_NOTIFY_POLL: i32 = 1;
const FUSE_POLL_SCHEDULE_NOTIFY: u32 = 1;
const KERNEL_MAJOR: u32 = 7;
const OUR_MINOR: u32 = 31;
const MAX_IO: u32 = 4096;
const FOPEN_DIRECT_IO: u32 = 1;
const FOPEN_NONSEEKABLE: u32 = 4;

/// Who sent a request (from the FUSE header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct From {
    pub uid: u32,
    pub gid: u32,
    /// The thread, in the router's pid namespace.
    pub tid: u32,
}

/// One request from the CUSE device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Init {
        unique: u64,
        major: u32,
    },
    Open {
        unique: u64,
        from: From,
    },
    Write {
        unique: u64,
        fh: u64,
        nonblock: bool,
        data: &'a [u8],
        from: From,
    },
    Release {
        unique: u64,
        fh: u64,
    },
    Poll {
        unique: u64,
        fh: u64,
        kh: Option<u64>,
    },
    Interrupt {
        unique: u64,
    },
    /// Answered at once with this errno (0: success, no body).
    Simple {
        unique: u64,
        errno: i32,
    },
    /// Too short to answer.
    Nothing,
}

/// Parses one request as read from `/dev/cuse`.
pub fn parse(req: &[u8]) -> Request<'_> {
    let Some((header, body)) = InHeader::parse(req) else {
        return Request::Nothing;
    };
    let u32_at = |o: usize| u32::from_ne_bytes(req[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_ne_bytes(req[o..o + 8].try_into().expect("8 bytes"));
    let (opcode, unique) = (header.opcode, header.unique);
    let from = From {
        uid: header.uid,
        gid: header.gid,
        tid: header.tid,
    };
    match opcode {
        CUSE_INIT => Request::Init {
            unique,
            major: if body.len() >= 4 {
                u32_at(IN_HEADER)
            } else {
                0
            },
        },
        FUSE_OPEN => Request::Open { unique, from },
        FUSE_WRITE => {
            if body.len() < WRITE_IN {
                return Request::Simple {
                    unique,
                    errno: libc::EINVAL,
                };
            }
            let fh = u64_at(IN_HEADER);
            let size = u32_at(IN_HEADER + 16) as usize;
            let flags = u32_at(IN_HEADER + 32);
            let data = &body[WRITE_IN..];
            if size != data.len() {
                return Request::Simple {
                    unique,
                    errno: libc::EINVAL,
                };
            }
            Request::Write {
                unique,
                fh,
                nonblock: flags & libc::O_NONBLOCK as u32 != 0,
                data,
                from,
            }
        }
        FUSE_RELEASE if body.len() >= 8 => Request::Release {
            unique,
            fh: u64_at(IN_HEADER),
        },
        FUSE_POLL if body.len() >= 24 => {
            let flags = u32_at(IN_HEADER + 16);
            Request::Poll {
                unique,
                fh: u64_at(IN_HEADER),
                kh: (flags & FUSE_POLL_SCHEDULE_NOTIFY != 0).then(|| u64_at(IN_HEADER + 8)),
            }
        }
        FUSE_INTERRUPT if body.len() >= 8 => Request::Interrupt {
            unique: u64_at(IN_HEADER),
        },
        FUSE_INTERRUPT => Request::Nothing,
        // The kernel's rdma_cm device has no read: EINVAL, as its
        // misc device answers.
        FUSE_READ => Request::Simple {
            unique,
            errno: libc::EINVAL,
        },
        FUSE_IOCTL => Request::Simple {
            unique,
            errno: libc::ENOTTY,
        },
        FUSE_FLUSH | FUSE_FSYNC => Request::Simple { unique, errno: 0 },
        _ => Request::Simple {
            unique,
            errno: libc::ENOSYS,
        },
    }
}

/// The init reply: `cuse_init_out` and the device's name.
pub fn init_reply(devname: &str) -> Vec<u8> {
    let mut out = vec![0u8; 72];
    out[0..4].copy_from_slice(&KERNEL_MAJOR.to_ne_bytes());
    out[4..8].copy_from_slice(&OUR_MINOR.to_ne_bytes());
    out[16..20].copy_from_slice(&MAX_IO.to_ne_bytes());
    out[20..24].copy_from_slice(&MAX_IO.to_ne_bytes());
    // dev_major 0: the kernel picks the numbers.
    out.extend_from_slice(format!("DEVNAME={devname}").as_bytes());
    out.push(0);
    out
}

/// The body of a successful OPEN.
pub fn open_reply(fh: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..8].copy_from_slice(&fh.to_ne_bytes());
    out[8..12].copy_from_slice(&(FOPEN_DIRECT_IO | FOPEN_NONSEEKABLE).to_ne_bytes());
    out
}

/// A character device served through `/dev/cuse`.
pub struct CuseDevice {
    dev: OwnedFd,
    /// Its node, e.g. `/dev/infiniband/rdma_cm`.
    pub path: PathBuf,
    /// The node was made by us (no devtmpfs): removed on drop.
    made_node: bool,
    buf: Vec<u8>,
}

/// True if the kernel ended the connection of `dev` (polls as an error).
fn aborted(dev: &OwnedFd) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(dev.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).map_err(|e| cuse_error("polling /dev/cuse", e))?;
    Ok(fds[0]
        .revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)))
}

fn cuse_error(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl CuseDevice {
    /// Creates `/dev/<devname>` (`devname` may hold a folder:
    /// `infiniband/rdma_cm`): opens `/dev/cuse`, answers its INIT, waits
    /// for the node (devtmpfs makes it; without devtmpfs we do, from the
    /// numbers in `/sys/class/cuse`), and opens the node to everyone (the
    /// router checks each command's writer).
    pub fn create(devname: &str) -> io::Result<CuseDevice> {
        let path = Path::new("/dev").join(devname);
        let dev = nix::fcntl::open(
            "/dev/cuse",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| cuse_error("opening /dev/cuse", e))?;
        // SAFETY: open returned a new descriptor that we own.
        let dev = unsafe { OwnedFd::from_raw_fd(dev) };
        let mut buf = vec![0u8; 64 * 1024];
        // The first request is CUSE_INIT (blocking read: it is queued at
        // open).
        let n = nix::unistd::read(dev.as_raw_fd(), &mut buf)
            .map_err(|e| cuse_error("reading CUSE_INIT", e))?;
        match parse(&buf[..n]) {
            Request::Init { unique, major } if major == KERNEL_MAJOR => {
                write_reply(&dev, unique, 0, &init_reply(devname))
                    .map_err(|e| cuse_error("answering CUSE_INIT", e))?;
            }
            other => {
                return Err(cuse_error(
                    "CUSE handshake",
                    format!("unexpected first request {other:?}"),
                ))
            }
        }
        // The kernel handles the reply within the write: a name another
        // CUSE device holds (a router that started at the same instant)
        // aborts the connection, which polls as an error.
        if aborted(&dev)? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("/dev/{devname} is another CUSE device's"),
            ));
        }
        let flags = nix::fcntl::fcntl(dev.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| cuse_error("F_GETFL", e))?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(dev.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(|e| cuse_error("F_SETFL", e))?;
        let mut made_node = false;
        let deadline = Instant::now() + Duration::from_secs(2);
        while !is_char_device(&path) {
            if Instant::now() >= deadline {
                made_node = true;
                make_node(devname, &path)?;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
        debug!("CUSE device {} is up", path.display());
        Ok(CuseDevice {
            dev,
            path,
            made_node,
            buf,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }

    /// Reads the next request: `Ok(None)` when none is queued; an error
    /// of kind `NotConnected` once the kernel ended the connection (the
    /// device is gone for good).
    pub fn next_request(&mut self) -> io::Result<Option<&[u8]>> {
        loop {
            match nix::unistd::read(self.dev.as_raw_fd(), &mut self.buf) {
                Ok(n) => return Ok(Some(&self.buf[..n])),
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ENODEV) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the kernel ended the CUSE connection",
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Answers request `unique`: `errno` 0 with `body`, or an errno.
    pub fn reply(&self, unique: u64, errno: i32, body: &[u8]) {
        if let Err(e) = write_reply(&self.dev, unique, errno, body) {
            if e != nix::errno::Errno::ENOENT {
                warn!("answering CUSE request {unique}: {e}");
            }
        }
    }

    /// Wakes the pollers of handle `kh`.
    pub fn notify_poll(&self, kh: u64) {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&24u32.to_ne_bytes());
        out.extend_from_slice(&FUSE_NOTIFY_POLL.to_ne_bytes());
        out.extend_from_slice(&0u64.to_ne_bytes());
        out.extend_from_slice(&kh.to_ne_bytes());
        if let Err(e) = nix::unistd::write(&self.dev, &out) {
            if e != nix::errno::Errno::ENOENT {
                debug!("poll wake-up {kh}: {e}");
            }
        }
    }
}

impl Drop for CuseDevice {
    fn drop(&mut self) {
        // Closing /dev/cuse removes the device (and devtmpfs its node).
        if self.made_node {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn write_reply(dev: &OwnedFd, unique: u64, errno: i32, body: &[u8]) -> nix::Result<usize> {
    nix::unistd::write(dev, &reply_message(unique, errno, body))
}

fn is_char_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

/// Makes the node from `/sys/class/cuse/<name with ! for />/dev`.
fn make_node(devname: &str, path: &Path) -> io::Result<()> {
    let sys = Path::new("/sys/class/cuse")
        .join(devname.replace('/', "!"))
        .join("dev");
    let numbers = std::fs::read_to_string(&sys)
        .map_err(|e| cuse_error(&format!("reading {}", sys.display()), e))?;
    let (major, minor) = numbers
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .ok_or_else(|| cuse_error("device numbers", numbers.trim()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(major, minor),
    )
    .map_err(|e| cuse_error(&format!("mknod {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: u32, unique: u64, body: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; IN_HEADER];
        r[0..4].copy_from_slice(&((IN_HEADER + body.len()) as u32).to_ne_bytes());
        r[4..8].copy_from_slice(&opcode.to_ne_bytes());
        r[8..16].copy_from_slice(&unique.to_ne_bytes());
        r[24..28].copy_from_slice(&1000u32.to_ne_bytes());
        r[32..36].copy_from_slice(&4242u32.to_ne_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn write_parses_with_its_nonblock_flag_and_checks_its_size() {
        let mut body = vec![0u8; WRITE_IN];
        body[0..8].copy_from_slice(&7u64.to_ne_bytes());
        body[16..20].copy_from_slice(&3u32.to_ne_bytes());
        body[32..36].copy_from_slice(&(libc::O_NONBLOCK as u32 | 2).to_ne_bytes());
        body.extend_from_slice(&[1, 2, 3]);
        match parse(&header(FUSE_WRITE, 9, &body)) {
            Request::Write {
                unique,
                fh,
                nonblock,
                data,
                from,
            } => {
                assert_eq!((unique, fh, nonblock, data), (9, 7, true, &[1u8, 2, 3][..]));
                assert_eq!((from.uid, from.tid), (1000, 4242));
            }
            other => panic!("{other:?}"),
        }
        body[16..20].copy_from_slice(&4u32.to_ne_bytes());
        assert_eq!(
            parse(&header(FUSE_WRITE, 9, &body)),
            Request::Simple {
                unique: 9,
                errno: libc::EINVAL
            }
        );
    }

    #[test]
    fn poll_never_answers_enosys_and_short_requests_are_dropped() {
        let mut body = vec![0u8; 24];
        body[8..16].copy_from_slice(&77u64.to_ne_bytes());
        body[16..20].copy_from_slice(&FUSE_POLL_SCHEDULE_NOTIFY.to_ne_bytes());
        assert_eq!(
            parse(&header(FUSE_POLL, 5, &body)),
            Request::Poll {
                unique: 5,
                fh: 0,
                kh: Some(77)
            }
        );
        assert_eq!(parse(&[0u8; 10]), Request::Nothing);
        assert_eq!(
            parse(&header(FUSE_IOCTL, 6, &[])),
            Request::Simple {
                unique: 6,
                errno: libc::ENOTTY
            }
        );
    }

    #[test]
    fn init_reply_names_the_device() {
        let r = init_reply("infiniband/rdma_cm");
        assert_eq!(&r[72..], b"DEVNAME=infiniband/rdma_cm\0");
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 7);
    }
}
