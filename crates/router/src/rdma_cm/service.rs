//! The router's `rdma_cm` device: [`CuseDevice`] requests fed to [`Cm`],
//! responses written into the writer's memory.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;

use log::{debug, info, warn};

use super::cuse::{self, CuseDevice, Request};
use super::state::{Caller, Cm, CmLimits, FileId, Gid, Memory, Outcome, Route};
use crate::memory::{Credentials, ProcessMemory};

/// What the router knows of a thread's network namespace.
pub struct NetView {
    pub netns: u64,
    pub gid: [u8; 16],
    pub local: Vec<Ipv4Addr>,
}

/// The writer's memory, opened at its first use.
struct WriterMemory {
    tgid: i32,
    cred: Credentials,
    mem: Option<Result<ProcessMemory, ()>>,
}

impl WriterMemory {
    fn get(&mut self) -> Result<&ProcessMemory, i32> {
        let (tgid, cred) = (self.tgid, self.cred);
        let m = self.mem.get_or_insert_with(|| {
            // The writer is blocked in its write: `tgid` names it.
            ProcessMemory::of_session(tgid, cred, || true).map_err(|e| {
                debug!("rdma_cm: memory of {tgid}: {e}");
            })
        });
        m.as_ref().map_err(|_| libc::EFAULT)
    }
}

impl Memory for WriterMemory {
    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), i32> {
        let m = self.get()?;
        // /proc/PID/mem writes through read-only mappings: check first,
        // as copy_to_user would fail there.
        m.check_mapped(addr, bytes.len() as u64, true)
            .map_err(|_| libc::EFAULT)?;
        m.write(addr, bytes).map_err(|_| libc::EFAULT)
    }

    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
        let m = self.get()?;
        m.check_mapped(addr, buf.len() as u64, false)
            .map_err(|_| libc::EFAULT)?;
        m.read(addr, buf).map_err(|_| libc::EFAULT)
    }
}

/// The served device.
pub struct RdmaCmService {
    dev: CuseDevice,
    rdev: u64,
    cm: Cm,
    next_fh: FileId,
    /// Blocked GET_EVENTs: the writer's memory, by request.
    waiting: HashMap<u64, WriterMemory>,
}

/// The file in the router's runtime directory naming its rdma_cm node
/// (absent: the router serves none), for `flowverbs exec`.
pub const NODE_FILE: &str = "rdma_cm.node";

/// Records (or, with None, removes the record of) the node this router
/// serves rdma_cm at.
pub fn publish_node(
    runtime_dir: &std::path::Path,
    node: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let file = runtime_dir.join(NODE_FILE);
    match node {
        Some(n) => std::fs::write(&file, format!("{}\n", n.display()))
            .with_context(|| format!("writing {}", file.display())),
        None => match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", file.display()))
            }
            _ => Ok(()),
        },
    }
}

/// The node the router of `runtime_dir` serves rdma_cm at, if any.
pub fn served_node(runtime_dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(runtime_dir.join(NODE_FILE)).ok()?;
    Some(std::path::PathBuf::from(text.trim_end()))
}

/// A node name under /dev as the operator gives it (`/dev/` may lead):
/// relative, plain components, no `..`.
pub fn node_name(name: &str) -> Result<String, String> {
    let rel = name.strip_prefix("/dev/").unwrap_or(name);
    let plain = !rel.is_empty()
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if plain {
        Ok(rel.to_owned())
    } else {
        Err(format!(
            "the rdma_cm node {name:?} must be a name under /dev, such as infiniband/rdma_cm_a"
        ))
    }
}

/// The device names under /dev to try, in order: `infiniband/rdma_cm`
/// where no kernel (or other router) has it, then
/// `infiniband/rdma_cm_fv<hash>` with the hash of the router's
/// `uverbs_fv<hash>` node (two routers that start together may both find
/// the first free; the kernel gives it to one).
pub fn device_names(uverbs: &str) -> Vec<String> {
    let own = format!(
        "infiniband/rdma_cm_fv{}",
        uverbs.trim_start_matches("uverbs_fv")
    );
    if std::path::Path::new("/dev/infiniband/rdma_cm").exists() {
        vec![own]
    } else {
        vec!["infiniband/rdma_cm".to_owned(), own]
    }
}

impl RdmaCmService {
    /// Serves rdma_cm at the first of `devnames` the kernel grants.
    pub fn start(devnames: &[String], limits: CmLimits) -> std::io::Result<RdmaCmService> {
        let mut dev = Err(std::io::Error::other("not asked to serve it"));
        for name in devnames {
            dev = CuseDevice::create(name);
            match &dev {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                _ => break,
            }
        }
        let dev = dev?;
        let rdev = std::fs::metadata(&dev.path)?.rdev();
        info!("rdma_cm served at {}", dev.path.display());
        Ok(RdmaCmService {
            dev,
            rdev,
            cm: Cm::new(limits),
            next_fh: 1,
            waiting: HashMap::new(),
        })
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dev.fd()
    }

    pub fn path(&self) -> &std::path::Path {
        &self.dev.path
    }

    /// Answers every queued request; `view(tid)` is the network namespace
    /// of a writer's thread (None: gone). Err: the device is gone (the
    /// kernel ended its connection), and with it every file.
    pub fn process(&mut self, view: &dyn Fn(i32) -> Option<NetView>) -> std::io::Result<()> {
        loop {
            let req = match self.dev.next_request() {
                Ok(Some(r)) => r.to_vec(),
                Ok(None) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotConnected => return Err(e),
                Err(e) => {
                    warn!("reading the rdma_cm CUSE device: {e}");
                    break;
                }
            };
            self.one(&req, view);
        }
        self.pump();
        Ok(())
    }

    fn one(&mut self, req: &[u8], view: &dyn Fn(i32) -> Option<NetView>) {
        match cuse::parse(req) {
            Request::Init { unique, .. } => self.dev.reply(unique, libc::EPROTO, &[]),
            Request::Open { unique, from } => {
                let fh = self.next_fh;
                self.next_fh += 1;
                match self.cm.open(fh, from.uid) {
                    Ok(()) => {
                        debug!("rdma_cm: file {fh} opened by thread {}", from.tid);
                        self.dev.reply(unique, 0, &cuse::open_reply(fh));
                    }
                    Err(e) => self.dev.reply(unique, e, &[]),
                }
            }
            Request::Write {
                unique,
                fh,
                nonblock,
                data,
                from,
            } => {
                let Some(owner) = self.cm.file_uid(fh) else {
                    return self.dev.reply(unique, libc::EBADF, &[]);
                };
                // As the kernel's ucma refuses a descriptor written by
                // other credentials than its opener's.
                if from.uid != owner && from.uid != 0 {
                    warn!(
                        "rdma_cm: file {fh} of uid {owner} written by uid {}",
                        from.uid
                    );
                    return self.dev.reply(unique, libc::EACCES, &[]);
                }
                let tid = from.tid as i32;
                let (Some(tgid), Some(v)) = (crate::fuse::thread_group(from.tid), view(tid)) else {
                    return self.dev.reply(unique, libc::ESRCH, &[]);
                };
                let caller = Caller {
                    tgid,
                    uid: from.uid,
                    netns: v.netns,
                    gid: v.gid,
                    local: v.local,
                };
                if let Err(e) = self.check_migrate(tgid, data) {
                    return self.dev.reply(unique, e, &[]);
                }
                let mut mem = WriterMemory {
                    tgid,
                    cred: Credentials {
                        uid: from.uid,
                        gid: from.gid,
                    },
                    mem: None,
                };
                match self
                    .cm
                    .command(fh, &caller, unique, nonblock, data, &mut mem)
                {
                    Outcome::Done(Ok(())) => {
                        let mut out = [0u8; 8];
                        out[0..4].copy_from_slice(&(data.len() as u32).to_ne_bytes());
                        self.dev.reply(unique, 0, &out);
                    }
                    Outcome::Done(Err(e)) => {
                        debug!("rdma_cm: file {fh}: command failed: errno {e}");
                        self.dev.reply(unique, e, &[]);
                    }
                    Outcome::Blocked => {
                        // Bind the memory now: the request may be answered
                        // after its thread is gone.
                        let _ = mem.get();
                        self.waiting.insert(unique, mem);
                    }
                }
            }
            Request::Release { unique, fh } => {
                for u in self.cm.release(fh) {
                    self.waiting.remove(&u);
                    self.dev.reply(u, libc::EBADF, &[]);
                }
                debug!("rdma_cm: file {fh} released");
                self.dev.reply(unique, 0, &[]);
            }
            Request::Poll { unique, fh, kh } => {
                let readable = self.cm.poll(fh, kh);
                let mut out = [0u8; 8];
                if readable {
                    let ev = (libc::POLLIN | libc::POLLRDNORM) as u32;
                    out[0..4].copy_from_slice(&ev.to_ne_bytes());
                }
                self.dev.reply(unique, 0, &out);
            }
            Request::Interrupt { unique } => {
                if self.cm.interrupt(unique) {
                    self.waiting.remove(&unique);
                    self.dev.reply(unique, libc::EINTR, &[]);
                }
            }
            Request::Simple { unique, errno } => self.dev.reply(unique, errno, &[]),
            Request::Nothing => {}
        }
    }

    /// The connection manager and the other routers: `frames` that came
    /// from them (source GID, destination GID, payload; one that does not
    /// check out is dropped), the GIDs of routers that went away; then
    /// every message for an id of another router goes out through `send`
    /// ([`Cm::flush_outgoing`]), and events are delivered. False if there
    /// was nothing to do.
    pub fn exchange(
        &mut self,
        frames: Vec<(Gid, Gid, Vec<u8>)>,
        lost: &[Gid],
        now: std::time::Instant,
        send: &mut dyn FnMut(Gid, Gid, &[u8]) -> Route,
    ) -> bool {
        if frames.is_empty() && lost.is_empty() && !self.cm.has_outgoing() {
            return false;
        }
        for (src, dst, payload) in frames {
            match super::link::decode(&payload) {
                Ok(f) => self.cm.on_link(src, dst, f),
                Err(e) => warn!("rdma_cm: a frame from another router refused: {e}"),
            }
        }
        if !lost.is_empty() {
            self.cm.peers_lost(lost);
        }
        self.cm.flush_outgoing(now, &mut |out| {
            send(out.src, out.dst, &super::link::encode(&out.frame))
        });
        self.pump();
        true
    }

    /// Every id, for `flowverbs status`.
    pub fn status(&self) -> Vec<flowverbs_wire::control::CmIdStatus> {
        self.cm.status()
    }

    /// When a message waiting for a link must be given up.
    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        self.cm.next_deadline()
    }

    /// The GIDs the router must go on serving for rdma_cm
    /// ([`Cm::gids_held`]).
    pub fn gids_held(&self) -> std::collections::BTreeSet<Gid> {
        self.cm.gids_held()
    }

    /// MIGRATE_ID names the id's old descriptor by number in the writer's
    /// table: it must be an rdma_cm descriptor of this device.
    fn check_migrate(&self, tgid: i32, data: &[u8]) -> Result<(), i32> {
        use super::abi::*;
        if data.len() < HDR + MIGRATE_ID_LEN || u32_at(data, 0) != CMD_MIGRATE_ID {
            return Ok(());
        }
        let fd = u32_at(data, HDR + 12);
        let m = std::fs::metadata(format!("/proc/{tgid}/fd/{fd}")).map_err(|_| libc::EBADF)?;
        if m.rdev() != self.rdev {
            return Err(libc::EINVAL);
        }
        Ok(())
    }

    /// Answers blocked GET_EVENTs that have their event now, and wakes
    /// pollers.
    fn pump(&mut self) {
        let waiting = &mut self.waiting;
        let answered = self
            .cm
            .pump(&mut |unique, addr, bytes| match waiting.get_mut(&unique) {
                Some(m) => m.write(addr, bytes),
                None => Err(libc::EINTR),
            });
        for (unique, result) in answered {
            self.waiting.remove(&unique);
            match result {
                Ok(()) => {
                    let mut out = [0u8; 8];
                    let n = (super::abi::HDR + super::abi::GET_EVENT_LEN) as u32;
                    out[0..4].copy_from_slice(&n.to_ne_bytes());
                    self.dev.reply(unique, 0, &out);
                }
                Err(e) => self.dev.reply(unique, e, &[]),
            }
        }
        for kh in self.cm.take_wakeups() {
            self.dev.notify_poll(kh);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::node_name;

    #[test]
    fn node_names_stay_under_dev() {
        assert_eq!(
            node_name("infiniband/rdma_cm_a").unwrap(),
            "infiniband/rdma_cm_a"
        );
        assert_eq!(
            node_name("/dev/infiniband/rdma_cm").unwrap(),
            "infiniband/rdma_cm"
        );
        for bad in [
            "",
            "/dev/",
            "../etc/x",
            "infiniband/../../x",
            "a//b",
            "/etc/passwd",
            "./x",
        ] {
            assert!(node_name(bad).is_err(), "{bad:?}");
        }
    }
}
