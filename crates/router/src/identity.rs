//! The host's RDMA identity: GID 0 is the IPv4-mapped address of the
//! router's own IP (DESIGN.md section 7).

use std::ffi::CStr;
use std::net::Ipv4Addr;

/// The IPv4 addresses of the up, non-loopback interfaces of this network
/// namespace, in `getifaddrs` order, with their interface names.
pub fn ipv4_addresses() -> Vec<(String, Ipv4Addr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`; we free it below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned,
        // valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let flags = ifa.ifa_flags as libc::c_int;
        if ifa.ifa_addr.is_null() || flags & libc::IFF_UP == 0 || flags & libc::IFF_LOOPBACK != 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of at least
        // the size of its family's struct.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if family as libc::c_int != libc::AF_INET {
            continue;
        }
        // SAFETY: the family is AF_INET, so the address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if ip.is_loopback() {
            continue;
        }
        let name = if ifa.ifa_name.is_null() {
            String::new()
        } else {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            unsafe { CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned()
        };
        out.push((name, ip));
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
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

/// The first non-loopback local IPv4 address of a process's network
/// namespace, read by the router from /proc/PID/net/fib_trie (the kernel's
/// view of that namespace, not anything the process says).
pub fn netns_ipv4(pid: i32) -> Option<Ipv4Addr> {
    let trie = std::fs::read_to_string(format!("/proc/{pid}/net/fib_trie")).ok()?;
    local_ipv4_from_fib_trie(&trie)
}

fn local_ipv4_from_fib_trie(trie: &str) -> Option<Ipv4Addr> {
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
