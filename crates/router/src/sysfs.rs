//! The generated device tree that makes the stock libibverbs list `fv0`
//! (verbs-provider-contract.md section 3.2, "Minimal working tree"):
//!
//! ```text
//! S/class/infiniband_verbs/abi_version                  "6"
//! S/class/infiniband_verbs/U/{ibdev,dev,abi_version}    "fv0", "0:0", "1"
//! S/class/infiniband/fv0/node_type                      "1: CA"
//! S/class/infiniband/fv0/node_guid                      "xxxx:xxxx:xxxx:xxxx"
//! S/class/infiniband/fv0/ports/1/gids/0                 eight ':'-separated groups
//! S/class/infiniband/fv0/ports/1/gid_attrs/types/0      "RoCE v2"
//! S/class/infiniband/fv0/ports/1/gid_attrs/ndevs/0      the interface with the address
//! S/class/infiniband/fv0/ports/1/pkeys/0                "0xffff"
//! /dev/infiniband/U                                     char device 1:3 (/dev/null's numbers)
//! ```
//!
//! The host's real RDMA devices, if any, are linked in beside fv0
//! (`nic::link_real_devices`).
//!
//! `S` is `RUNTIME_DIR/sysfs` (what `SYSFS_PATH` must be) and `U` is
//! [`uverbs_name`], unique per runtime directory, so that routers with
//! different runtime directories never touch each other's files.
//! The port reports `gid_tbl_len` 1: exactly one `gids` file.

use anyhow::{bail, Context};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The device tree as one network namespace sees it: its GID, its node
/// GUID and the interface that carries its address (the GID's `ndevs`
/// entry; None: no file, and libibverbs reports no netdev).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub gid: [u8; 16],
    pub node_guid: u64,
    pub netdev: Option<String>,
}

/// The IB device name the provider serves.
pub const IBDEV: &str = "fv0";
/// Where libibverbs looks for character devices (compiled in, no override).
pub const DEV_DIR: &str = "/dev/infiniband";
/// `/dev/null`'s device numbers; `dev` in the tree is `0:0`, so libibverbs
/// accepts any character device (contract section 3.3).
const NODE_MAJOR: u32 = 1;
const NODE_MINOR: u32 = 3;

/// The `class/infiniband_verbs/<name>` folder and `/dev/infiniband/<name>`
/// node name for a router with this runtime directory:
/// `uverbs_fv<8 hex digits of a hash of the canonical directory>`.
pub fn uverbs_name(runtime_dir: &Path) -> String {
    let canonical = fs::canonicalize(runtime_dir).unwrap_or_else(|_| {
        if runtime_dir.is_absolute() {
            runtime_dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(runtime_dir))
                .unwrap_or_else(|_| runtime_dir.to_path_buf())
        }
    });
    // FNV-1a, 64 bit, folded to 32 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("uverbs_fv{:08x}", (h ^ (h >> 32)) as u32)
}

/// `node_guid` text: four 16-bit groups, most significant first.
pub fn format_node_guid(guid: u64) -> String {
    format!(
        "{:04x}:{:04x}:{:04x}:{:04x}",
        (guid >> 48) & 0xffff,
        (guid >> 32) & 0xffff,
        (guid >> 16) & 0xffff,
        guid & 0xffff
    )
}

/// `gids/<i>` text: eight groups of four hex digits separated by ':'.
pub fn format_gid(gid: [u8; 16]) -> String {
    gid.chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join(":")
}

/// The generated tree of one router; removed by [`DeviceTree::remove`] or,
/// best effort, on drop.
#[derive(Debug)]
pub struct DeviceTree {
    sysfs_root: PathBuf,
    dev_node: PathBuf,
    /// We created `/dev/infiniband`: remove it on teardown if it is empty.
    created_dev_dir: bool,
    removed: bool,
}

impl DeviceTree {
    /// Creates `RUNTIME_DIR/sysfs/…` and the `/dev/infiniband/<uverbs name>`
    /// node. A stale tree left by a previous router with the same runtime
    /// directory is replaced.
    pub fn create(runtime_dir: &Path, view: &View) -> anyhow::Result<DeviceTree> {
        fs::create_dir_all(runtime_dir)
            .with_context(|| format!("creating runtime dir {}", runtime_dir.display()))?;
        let name = uverbs_name(runtime_dir);
        let mut tree = DeviceTree {
            sysfs_root: runtime_dir.join("sysfs"),
            dev_node: Path::new(DEV_DIR).join(&name),
            created_dev_dir: false,
            removed: false,
        };
        if tree.sysfs_root.symlink_metadata().is_ok() {
            log::warn!("replacing stale device tree {}", tree.sysfs_root.display());
            fs::remove_dir_all(&tree.sysfs_root)
                .with_context(|| format!("removing stale {}", tree.sysfs_root.display()))?;
        }
        if let Err(e) = tree.populate(&name, view) {
            tree.cleanup();
            return Err(e);
        }
        log::info!(
            "device tree at {} (SYSFS_PATH), node {}",
            tree.sysfs_root.display(),
            tree.dev_node.display()
        );
        Ok(tree)
    }

    fn populate(&mut self, name: &str, view: &View) -> anyhow::Result<()> {
        write_sysfs(&self.sysfs_root, name, view)?;
        self.make_dev_node()
    }

    fn make_dev_node(&mut self) -> anyhow::Result<()> {
        // Another router may remove an empty /dev/infiniband between our
        // create_dir and mknod: retry a few times.
        for _ in 0..5 {
            match fs::create_dir(DEV_DIR) {
                Ok(()) => self.created_dev_dir = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating {DEV_DIR}")),
            }
            if self.dev_node.symlink_metadata().is_ok() {
                log::warn!("replacing stale {}", self.dev_node.display());
                fs::remove_file(&self.dev_node)
                    .with_context(|| format!("removing stale {}", self.dev_node.display()))?;
            }
            let made = nix::sys::stat::mknod(
                &self.dev_node,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(NODE_MAJOR.into(), NODE_MINOR.into()),
            );
            if made.is_ok() {
                // mknod applies the umask; make the node usable by everyone.
                fs::set_permissions(
                    &self.dev_node,
                    std::os::unix::fs::PermissionsExt::from_mode(0o666),
                )
                .with_context(|| format!("chmod {}", self.dev_node.display()))?;
                return Ok(());
            }
            let err = made.unwrap_err();
            if err != nix::errno::Errno::ENOENT {
                return Err(io::Error::from(err)).with_context(|| {
                    format!(
                        "mknod {} c {NODE_MAJOR} {NODE_MINOR} (needs root or CAP_MKNOD)",
                        self.dev_node.display()
                    )
                });
            }
        }
        bail!(
            "mknod {}: {DEV_DIR} keeps disappearing",
            self.dev_node.display()
        )
    }

    fn ibdev_dir(&self) -> PathBuf {
        self.sysfs_root.join("class/infiniband").join(IBDEV)
    }

    /// What `SYSFS_PATH` must be for processes using this router.
    pub fn sysfs_root(&self) -> &Path {
        &self.sysfs_root
    }

    /// The `/dev/infiniband/<uverbs name>` node.
    pub fn dev_node(&self) -> &Path {
        &self.dev_node
    }

    /// Rewrites `ports/1/gids/0` (atomically: readers see the old or the new GID).
    pub fn set_gid(&self, gid: [u8; 16]) -> anyhow::Result<()> {
        write_atomic(&self.ibdev_dir().join("ports/1/gids/0"), &format_gid(gid))
    }

    /// Removes everything [`DeviceTree::create`] made.
    pub fn remove(mut self) -> anyhow::Result<()> {
        self.removed = true;
        let mut errors = Vec::new();
        match fs::remove_file(&self.dev_node) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                errors.push(format!("removing {}: {e}", self.dev_node.display()))
            }
            _ => {}
        }
        self.remove_dev_dir_if_ours();
        match fs::remove_dir_all(&self.sysfs_root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                errors.push(format!("removing {}: {e}", self.sysfs_root.display()))
            }
            _ => {}
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(())
    }

    fn remove_dev_dir_if_ours(&self) {
        if self.created_dev_dir {
            // Fails harmlessly (ENOTEMPTY) while other nodes remain.
            let _ = fs::remove_dir(DEV_DIR);
        }
    }

    fn cleanup(&mut self) {
        self.removed = true;
        let _ = fs::remove_file(&self.dev_node);
        self.remove_dev_dir_if_ours();
        let _ = fs::remove_dir_all(&self.sysfs_root);
    }
}

impl Drop for DeviceTree {
    fn drop(&mut self) {
        if !self.removed {
            self.cleanup();
        }
    }
}

/// Writes the sysfs-like files of fv0 under `root` (what `SYSFS_PATH` names),
/// with `name` as the uverbs folder.
fn write_sysfs(root: &Path, name: &str, view: &View) -> anyhow::Result<()> {
    let verbs = root.join("class/infiniband_verbs");
    let udir = verbs.join(name);
    let ibdev = root.join("class/infiniband").join(IBDEV);
    let port = ibdev.join("ports/1");
    for d in [
        &udir,
        &port.join("gids"),
        &port.join("gid_attrs/types"),
        &port.join("gid_attrs/ndevs"),
        &port.join("pkeys"),
    ] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    write_atomic(&verbs.join("abi_version"), "6")?;
    // librdmacm's ABI (its device is served through CUSE: rdma_cm).
    let cm = root.join("class/misc/rdma_cm");
    fs::create_dir_all(&cm).with_context(|| format!("creating {}", cm.display()))?;
    write_atomic(&cm.join("abi_version"), "4")?;
    write_atomic(&udir.join("ibdev"), IBDEV)?;
    write_atomic(&udir.join("dev"), "0:0")?;
    write_atomic(&udir.join("abi_version"), "1")?;
    write_atomic(&ibdev.join("node_type"), "1: CA")?;
    write_atomic(&ibdev.join("node_guid"), &format_node_guid(view.node_guid))?;
    write_atomic(&port.join("gids/0"), &format_gid(view.gid))?;
    write_atomic(&port.join("gid_attrs/types/0"), "RoCE v2")?;
    match &view.netdev {
        Some(n) => write_atomic(&port.join("gid_attrs/ndevs/0"), n)?,
        None => {
            let _ = fs::remove_file(port.join("gid_attrs/ndevs/0"));
        }
    }
    write_atomic(&port.join("pkeys/0"), "0xffff")?;
    // The host's real devices stay visible beside fv0.
    if let Err(e) = crate::nic::link_real_devices(root, Path::new(crate::nic::SYSFS)) {
        log::warn!(
            "the real RDMA devices are not listed in {}: {e:#}",
            root.display()
        );
    }
    Ok(())
}

/// The device tree seen from another network namespace: the same device
/// (uverbs folder, `/dev` node and router) with that namespace's GID, at
/// `RUNTIME_DIR/netns/<id>/sysfs`. `router.sock` and `fuse` beside it are
/// links to the router's own, so the provider finds them as usual.
/// Returns the `SYSFS_PATH` for that namespace.
pub fn write_netns_view(runtime_dir: &Path, netns: u64, view: &View) -> anyhow::Result<PathBuf> {
    let base = runtime_dir.join("netns").join(netns.to_string());
    let root = base.join("sysfs");
    write_sysfs(&root, &uverbs_name(runtime_dir), view)?;
    for link in ["router.sock", "fuse"] {
        let path = base.join(link);
        if path.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new("../..").join(link), &path)
                .with_context(|| format!("linking {}", path.display()))?;
        }
    }
    Ok(root)
}

/// Removes every namespace view (router shutdown).
pub fn remove_netns_views(runtime_dir: &Path) {
    let _ = fs::remove_dir_all(runtime_dir.join("netns"));
}

/// Removes the views of network namespaces that are gone: no process
/// lives in them and no `ip netns` name pins them (`live` lists the
/// namespaces that are not gone). A namespace that still runs processes
/// keeps its view, so a container's programs started later find it.
pub fn sweep_netns_views(runtime_dir: &Path, live: &std::collections::HashSet<u64>) {
    let Ok(entries) = fs::read_dir(runtime_dir.join("netns")) else {
        return;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().parse::<u64>().ok();
        if id.is_some_and(|id| !live.contains(&id)) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Writes `text` plus a newline to `path` through a temporary file and a
/// rename, so that libibverbs' single `read()` never sees a partial file.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().context("path without parent")?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        drop(f);
        fs::rename(&tmp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fv-sysfs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn formats() {
        assert_eq!(
            format_node_guid(0x0002_c9ff_fe00_0001),
            "0002:c9ff:fe00:0001"
        );
        let mut gid = [0u8; 16];
        gid[10] = 0xff;
        gid[11] = 0xff;
        gid[12..].copy_from_slice(&[10, 0, 0, 1]);
        let s = format_gid(gid);
        assert_eq!(s, "0000:0000:0000:0000:0000:ffff:0a00:0001");
        assert_eq!(s.len(), 39);
    }

    #[test]
    fn names_are_unique_and_stable() {
        let a = temp_dir("name-a");
        let b = temp_dir("name-b");
        let na = uverbs_name(&a);
        assert_eq!(na, uverbs_name(&a));
        assert_eq!(na, uverbs_name(&a.join("../").join(a.file_name().unwrap())));
        assert_ne!(na, uverbs_name(&b));
        assert!(na.starts_with("uverbs_fv") && na.len() == "uverbs_fv".len() + 8);
        assert!(!na.contains("rxe"));
        fs::remove_dir_all(a).unwrap();
        fs::remove_dir_all(b).unwrap();
    }

    #[test]
    fn create_set_gid_remove() {
        assert!(is_root(), "this test makes device nodes: run it as root");
        let run = temp_dir("tree");
        let run2 = temp_dir("tree2");
        let gid = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 2];
        let view = View {
            gid,
            node_guid: 0x0002_c9ff_fe00_0001,
            netdev: Some("eth7".into()),
        };
        let tree = DeviceTree::create(&run, &view).unwrap();
        let tree2 = DeviceTree::create(
            &run2,
            &View {
                node_guid: 2,
                netdev: None,
                ..view
            },
        )
        .unwrap();
        let s = tree.sysfs_root().to_path_buf();
        assert_eq!(s, run.join("sysfs"));
        let read = |p: &str| fs::read_to_string(s.join(p)).unwrap();
        let u = uverbs_name(&run);
        assert_eq!(read("class/infiniband_verbs/abi_version"), "6\n");
        assert_eq!(read(&format!("class/infiniband_verbs/{u}/ibdev")), "fv0\n");
        assert_eq!(read(&format!("class/infiniband_verbs/{u}/dev")), "0:0\n");
        assert_eq!(
            read(&format!("class/infiniband_verbs/{u}/abi_version")),
            "1\n"
        );
        assert_eq!(read("class/infiniband/fv0/node_type"), "1: CA\n");
        assert_eq!(
            read("class/infiniband/fv0/node_guid"),
            "0002:c9ff:fe00:0001\n"
        );
        assert_eq!(
            read("class/infiniband/fv0/ports/1/gids/0"),
            "0000:0000:0000:0000:0000:ffff:c000:0202\n"
        );
        assert_eq!(
            read("class/infiniband/fv0/ports/1/gid_attrs/types/0"),
            "RoCE v2\n"
        );
        assert_eq!(
            read("class/infiniband/fv0/ports/1/gid_attrs/ndevs/0"),
            "eth7\n"
        );
        assert!(!run2
            .join("sysfs/class/infiniband/fv0/ports/1/gid_attrs/ndevs/0")
            .exists());
        assert_eq!(read("class/infiniband/fv0/ports/1/pkeys/0"), "0xffff\n");
        let gids: Vec<_> = fs::read_dir(s.join("class/infiniband/fv0/ports/1/gids"))
            .unwrap()
            .collect();
        assert_eq!(gids.len(), 1);
        let md = fs::metadata(tree.dev_node()).unwrap();
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), libc::makedev(1, 3));

        let mut gid2 = gid;
        gid2[15] = 9;
        tree.set_gid(gid2).unwrap();
        assert_eq!(
            read("class/infiniband/fv0/ports/1/gids/0"),
            "0000:0000:0000:0000:0000:ffff:c000:0209\n"
        );

        let node = tree.dev_node().to_path_buf();
        tree.remove().unwrap();
        assert!(!s.exists());
        assert!(node.symlink_metadata().is_err());
        // The other router's tree is untouched.
        assert!(tree2.dev_node().exists());
        assert!(tree2.sysfs_root().join("class/infiniband/fv0").exists());
        let s2 = tree2.sysfs_root().to_path_buf();
        drop(tree2);
        assert!(!s2.exists());
        fs::remove_dir_all(run).unwrap();
        fs::remove_dir_all(run2).unwrap();
    }
}
