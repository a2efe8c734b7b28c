//! The host's RDMA identity: GID 0 is the IPv4-mapped address of the
//! router's own IP, as a RoCE v2 NIC with that address would have.

use std::net::Ipv4Addr;

use nix::net::if_::InterfaceFlags;

/// The IPv4 addresses of the up, non-loopback interfaces of this network
/// namespace, in `getifaddrs` order, with their interface names.
pub fn ipv4_addresses() -> Vec<(String, Ipv4Addr)> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    list.filter(|ifa| {
        ifa.flags.contains(InterfaceFlags::IFF_UP)
            && !ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
    })
    .filter_map(|ifa| {
        let ip = ifa.address?.as_sockaddr_in()?.ip();
        (!ip.is_loopback()).then_some((ifa.interface_name, ip))
    })
    .collect()
}

/// The first non-loopback, up IPv4 address of the router's network
/// namespace; 127.0.0.1 if there is none.
pub fn host_ipv4() -> Ipv4Addr {
    ipv4_addresses()
        .first()
        .map(|(_, ip)| *ip)
        .unwrap_or(Ipv4Addr::LOCALHOST)
}

/// The network namespace of a process, as the inode of /proc/PID/ns/net.
pub fn netns_of(pid: i32) -> std::io::Result<u64> {
    namespace_of(pid, "net")
}

/// A namespace of a process (`kind`: net, user, pid, ...) as the inode of
/// /proc/PID/ns/KIND.
pub fn namespace_of(pid: i32, kind: &str) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))?.ino())
}

/// Every network namespace that has a process in it or an `ip netns` name
/// (`/run/netns/*`), as inodes.
pub fn live_network_namespaces() -> std::collections::HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut live = std::collections::HashSet::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let name = p.file_name();
            if name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(m) = std::fs::metadata(p.path().join("ns/net")) {
                    live.insert(m.ino());
                }
            }
        }
    }
    if let Ok(named) = std::fs::read_dir("/run/netns") {
        for n in named.flatten() {
            if let Ok(m) = std::fs::metadata(n.path()) {
                live.insert(m.ino());
            }
        }
    }
    live
}

/// The interface of a process's network namespace that carries `ip` (the
/// namespace's address, hence its GID): the `ndevs` entry of the GID.
/// Read from /proc/PID/net/route, the kernel's routes of that namespace.
pub fn netns_netdev(pid: i32, ip: Ipv4Addr) -> Option<String> {
    let routes = std::fs::read_to_string(format!("/proc/{pid}/net/route")).ok()?;
    netdev_from_routes(&routes, ip)
}

/// The interface of the most specific directly connected route (no
/// gateway) whose network holds `ip`, from the text of /proc/net/route
/// (addresses and masks as hexadecimal in host byte order). None for a
/// name that is no interface name (empty, longer than 15 bytes, or with
/// '/' or white space).
pub fn netdev_from_routes(routes: &str, ip: Ipv4Addr) -> Option<String> {
    let ip = u32::from_ne_bytes(ip.octets());
    let hex = |f: &str| u32::from_str_radix(f, 16).ok();
    routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (name, dest, gateway, mask) = (
                f.first()?,
                hex(f.get(1)?)?,
                hex(f.get(2)?)?,
                hex(f.get(7)?)?,
            );
            (gateway == 0 && mask != 0 && ip & mask == dest).then_some((mask.count_ones(), *name))
        })
        .max_by_key(|(bits, _)| *bits)
        .map(|(_, name)| name.to_owned())
        .filter(|n| !n.is_empty() && n.len() < 16 && !n.contains('/'))
}

/// The first non-loopback local IPv4 address of a process's network
/// namespace, read by the router from /proc/PID/net/fib_trie (the kernel's
/// view of that namespace, not anything the process says).
pub fn netns_ipv4(pid: i32) -> Option<Ipv4Addr> {
    let trie = std::fs::read_to_string(format!("/proc/{pid}/net/fib_trie")).ok()?;
    local_ipv4_from_fib_trie(&trie)
}

pub fn local_ipv4_from_fib_trie(trie: &str) -> Option<Ipv4Addr> {
    let mut last: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let t = line.trim_start();
        if let Some(addr) = t.strip_prefix("|-- ") {
            last = addr.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last.filter(|ip| !ip.is_loopback()) {
                return Some(ip);
            }
        }
    }
    None
}

pub use flowverbs_verbs::identity::{gid_from_ipv4, node_guid_from_ipv4};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netdev_from_the_route_table() {
        let routes =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            veth7\t000212C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            veth8\t800212C6\t00000000\t0001\t0\t0\t0\t80FFFFFF\t0\t0\t0\n";
        let at = |a, b, c, d| netdev_from_routes(routes, Ipv4Addr::new(a, b, c, d));
        assert_eq!(at(192, 0, 2, 2).as_deref(), Some("eth0"));
        assert_eq!(at(198, 18, 2, 5).as_deref(), Some("veth7"));
        // The longer prefix wins.
        assert_eq!(at(198, 18, 2, 200).as_deref(), Some("veth8"));
        // Only the default route (through a gateway) reaches it: no netdev.
        assert_eq!(at(10, 0, 0, 1), None);
        assert_eq!(netdev_from_routes("", Ipv4Addr::new(192, 0, 2, 2)), None);
        let bad = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
            a/b\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(netdev_from_routes(bad, Ipv4Addr::new(192, 0, 2, 2)), None);
    }

    #[test]
    fn local_address_from_fib_trie() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n        |-- 127.0.0.1\n           /32 host LOCAL\n     +-- 198.18.0.0/24 2 0 2\n        |-- 198.18.0.0\n           /24 link UNICAST\n        |-- 198.18.0.7\n           /32 host LOCAL\n";
        assert_eq!(
            local_ipv4_from_fib_trie(trie),
            Some(Ipv4Addr::new(198, 18, 0, 7))
        );
        assert_eq!(local_ipv4_from_fib_trie("Main:\n"), None);
        let me = std::process::id() as i32;
        assert!(netns_of(me).is_ok());
    }

    #[test]
    fn host_ip_is_not_loopback_unless_alone() {
        let ip = host_ipv4();
        let all = ipv4_addresses();
        if all.is_empty() {
            assert_eq!(ip, Ipv4Addr::LOCALHOST);
        } else {
            assert!(!ip.is_loopback());
            assert!(!ip.is_unspecified());
            assert_eq!(ip, all[0].1);
            assert!(all.iter().all(|(_, a)| !a.is_loopback()));
        }
    }
}
