//! The host's real RDMA devices, as the kernel's sysfs describes them:
//! which exist (listed beside fv0 in every device tree the router
//! writes), and which one semi mode posts to (`--nic DEVICE[:PORT]`, or
//! the automatic choice: the device whose GID table holds the host's
//! address). The router never opens a device: it reads sysfs only, and
//! the provider opens the device in the application's process.

use anyhow::{bail, Context};
use flowverbs_verbs::identity::ipv4_from_gid;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The kernel's sysfs.
pub const SYSFS: &str = "/sys";

/// A real device and port that semi mode posts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The device's name (`class/infiniband/<device>`).
    pub device: String,
    pub port: u8,
    /// The index of the port's RoCE v2 GID that holds `address`.
    pub gid_index: u8,
    /// That GID: the IPv4-mapped address, the NIC's name on the wire.
    pub gid: [u8; 16],
    pub address: Ipv4Addr,
    /// Its uverbs node (`class/infiniband_verbs/<uverbs>`, `/dev/infiniband/<uverbs>`).
    pub uverbs: String,
}

impl std::fmt::Display for Nic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} port {} (GID index {}, {}, /dev/infiniband/{})",
            self.device, self.port, self.gid_index, self.address, self.uverbs
        )
    }
}

/// A real device's uverbs folder and IB device name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealDevice {
    pub uverbs: String,
    pub device: String,
}

/// Every RDMA device sysfs lists under `sysfs` (a kernel without RDMA:
/// none), sorted by uverbs name.
pub fn real_devices(sysfs: &Path) -> Vec<RealDevice> {
    let Ok(entries) = fs::read_dir(sysfs.join("class/infiniband_verbs")) else {
        return Vec::new();
    };
    let mut found: Vec<RealDevice> = entries
        .flatten()
        .filter_map(|e| {
            let uverbs = e.file_name().to_str()?.to_string();
            let device = fs::read_to_string(e.path().join("ibdev")).ok()?;
            Some(RealDevice {
                uverbs,
                device: device.trim().to_string(),
            })
        })
        .collect();
    found.sort_by(|a, b| a.uverbs.cmp(&b.uverbs));
    found
}

/// Parses `DEVICE[:PORT]` (port 1 if not given).
pub fn parse_spec(spec: &str) -> anyhow::Result<(String, u8)> {
    let (device, port) = match spec.rsplit_once(':') {
        Some((d, p)) => (
            d,
            p.parse::<u8>()
                .ok()
                .filter(|p| *p >= 1)
                .with_context(|| format!("--nic {spec}: port {p:?} is not a number from 1"))?,
        ),
        None => (spec, 1),
    };
    if device.is_empty() || device.contains('/') || device.starts_with('.') {
        bail!("--nic {spec}: {device:?} is not a device name");
    }
    Ok((device.to_string(), port))
}

/// Parses sysfs' GID text: eight ':'-separated groups of four hex digits.
pub fn parse_gid(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.trim().split(':').collect();
    if groups.len() != 8 {
        return None;
    }
    let mut gid = [0u8; 16];
    for (i, g) in groups.iter().enumerate() {
        let v = u16::from_str_radix(g, 16).ok()?;
        gid[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
    }
    Some(gid)
}

/// The RoCE v2 IPv4 GIDs of a device's port: (index, GID, address).
fn ipv4_gids(sysfs: &Path, device: &str, port: u8) -> Vec<(u8, [u8; 16], Ipv4Addr)> {
    let dir = sysfs
        .join("class/infiniband")
        .join(device)
        .join("ports")
        .join(port.to_string());
    let Ok(entries) = fs::read_dir(dir.join("gids")) else {
        return Vec::new();
    };
    let mut found: Vec<(u8, [u8; 16], Ipv4Addr)> = entries
        .flatten()
        .filter_map(|e| {
            let index: u8 = e.file_name().to_str()?.parse().ok()?;
            let gid = parse_gid(&fs::read_to_string(e.path()).ok()?)?;
            let kind =
                fs::read_to_string(dir.join("gid_attrs/types").join(index.to_string())).ok()?;
            let address = ipv4_from_gid(&gid).filter(|a| !a.is_unspecified())?;
            (kind.trim() == "RoCE v2").then_some((index, gid, address))
        })
        .collect();
    found.sort();
    found
}

/// The NIC `--nic DEVICE[:PORT]` names: its port must have a RoCE v2 GID
/// holding an IPv4 address (the first such GID is used).
pub fn named(sysfs: &Path, spec: &str) -> anyhow::Result<Nic> {
    let (device, port) = parse_spec(spec)?;
    let Some(dev) = real_devices(sysfs).into_iter().find(|d| d.device == device) else {
        let known: Vec<String> = real_devices(sysfs).into_iter().map(|d| d.device).collect();
        bail!(
            "--nic {spec}: no RDMA device {device:?} in {}/class/infiniband_verbs (found: {})",
            sysfs.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    };
    let Some((gid_index, gid, address)) = ipv4_gids(sysfs, &device, port).into_iter().next() else {
        bail!(
            "--nic {spec}: port {port} of {device} has no RoCE v2 GID with an IPv4 address \
             (give its network device an address)"
        );
    };
    Ok(Nic {
        device,
        port,
        gid_index,
        gid,
        address,
        uverbs: dev.uverbs,
    })
}

/// The automatic choice: the first device (by uverbs name) whose port 1
/// has a RoCE v2 GID holding one of `host_addresses`.
pub fn automatic(sysfs: &Path, host_addresses: &[Ipv4Addr]) -> Option<Nic> {
    real_devices(sysfs).into_iter().find_map(|d| {
        let (gid_index, gid, address) = ipv4_gids(sysfs, &d.device, 1)
            .into_iter()
            .find(|(_, _, a)| host_addresses.contains(a))?;
        Some(Nic {
            device: d.device,
            port: 1,
            gid_index,
            gid,
            address,
            uverbs: d.uverbs,
        })
    })
}

/// Links every real device of `sysfs` into a generated device tree at
/// `root` (its `class/infiniband_verbs/<uverbs>` and
/// `class/infiniband/<device>` folders), so that libibverbs lists them
/// beside fv0 and a program can still open them.
pub fn link_real_devices(root: &Path, sysfs: &Path) -> anyhow::Result<()> {
    for d in real_devices(sysfs) {
        let pairs: [(PathBuf, PathBuf); 2] = [
            (
                sysfs.join("class/infiniband_verbs").join(&d.uverbs),
                root.join("class/infiniband_verbs").join(&d.uverbs),
            ),
            (
                sysfs.join("class/infiniband").join(&d.device),
                root.join("class/infiniband").join(&d.device),
            ),
        ];
        for (target, link) in pairs {
            if link.symlink_metadata().is_ok() {
                continue;
            }
            // The real folder, resolved: sysfs' own entries are relative
            // links that would not resolve from the generated tree.
            let target = fs::canonicalize(&target).unwrap_or(target);
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs with one device `rxe0` (uverbs3) whose port 1 has a
    /// link-local GID 0 and `addr` as GID 1.
    fn fake_sysfs(tag: &str, addr: Ipv4Addr) -> PathBuf {
        let root = std::env::temp_dir().join(format!("fv-nic-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let u = root.join("class/infiniband_verbs/uverbs3");
        let port = root.join("class/infiniband/rxe0/ports/1");
        fs::create_dir_all(&u).unwrap();
        fs::create_dir_all(port.join("gids")).unwrap();
        fs::create_dir_all(port.join("gid_attrs/types")).unwrap();
        fs::write(u.join("ibdev"), "rxe0\n").unwrap();
        fs::write(
            port.join("gids/0"),
            "fe80:0000:0000:0000:0000:00ff:fe00:0001\n",
        )
        .unwrap();
        fs::write(port.join("gid_attrs/types/0"), "RoCE v2\n").unwrap();
        let o = addr.octets();
        fs::write(
            port.join("gids/1"),
            format!(
                "0000:0000:0000:0000:0000:ffff:{:02x}{:02x}:{:02x}{:02x}\n",
                o[0], o[1], o[2], o[3]
            ),
        )
        .unwrap();
        fs::write(port.join("gid_attrs/types/1"), "RoCE v2\n").unwrap();
        // An empty slot, as the kernel shows unused entries.
        fs::write(
            port.join("gids/2"),
            "0000:0000:0000:0000:0000:0000:0000:0000\n",
        )
        .unwrap();
        fs::write(port.join("gid_attrs/types/2"), "RoCE v2\n").unwrap();
        root
    }

    #[test]
    fn specs_parse() {
        assert_eq!(parse_spec("mlx5_0").unwrap(), ("mlx5_0".into(), 1));
        assert_eq!(parse_spec("rxe1:2").unwrap(), ("rxe1".into(), 2));
        assert!(parse_spec("rxe1:0").is_err());
        assert!(parse_spec("rxe1:x").is_err());
        assert!(parse_spec("../etc").is_err());
        assert!(parse_spec("").is_err());
    }

    #[test]
    fn named_and_automatic_choice_find_the_ipv4_gid() {
        let addr = Ipv4Addr::new(198, 18, 0, 1);
        let sysfs = fake_sysfs("choice", addr);
        let nic = named(&sysfs, "rxe0").unwrap();
        assert_eq!((nic.gid_index, nic.address), (1, addr));
        assert_eq!(nic.uverbs, "uverbs3");
        assert_eq!(ipv4_from_gid(&nic.gid), Some(addr));
        assert!(named(&sysfs, "rxe9")
            .unwrap_err()
            .to_string()
            .contains("rxe0"));
        assert!(named(&sysfs, "rxe0:2").is_err());
        assert_eq!(automatic(&sysfs, &[addr]), Some(nic));
        assert_eq!(automatic(&sysfs, &[Ipv4Addr::new(10, 0, 0, 1)]), None);
        assert!(real_devices(&sysfs.join("nothing")).is_empty());
        fs::remove_dir_all(&sysfs).unwrap();
    }

    #[test]
    fn real_devices_are_linked_into_a_tree() {
        let sysfs = fake_sysfs("link", Ipv4Addr::new(198, 18, 0, 2));
        let tree = sysfs.join("tree");
        fs::create_dir_all(tree.join("class/infiniband_verbs")).unwrap();
        fs::create_dir_all(tree.join("class/infiniband")).unwrap();
        link_real_devices(&tree, &sysfs).unwrap();
        // Twice is harmless (views are rewritten).
        link_real_devices(&tree, &sysfs).unwrap();
        let ibdev = fs::read_to_string(tree.join("class/infiniband_verbs/uverbs3/ibdev")).unwrap();
        assert_eq!(ibdev.trim(), "rxe0");
        assert!(tree.join("class/infiniband/rxe0/ports/1/gids/1").is_file());
        fs::remove_dir_all(&sysfs).unwrap();
    }

    #[test]
    fn gids_parse() {
        let g = parse_gid("0000:0000:0000:0000:0000:ffff:c612:0001").unwrap();
        assert_eq!(ipv4_from_gid(&g), Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert!(parse_gid("0000:0000").is_none());
        assert!(parse_gid("zzzz:0000:0000:0000:0000:ffff:c612:0001").is_none());
        assert_eq!(ipv4_from_gid(&[0xfe; 16]), None);
    }
}
