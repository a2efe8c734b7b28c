//! The kernel text the router parses: a network namespace's
//! `/proc/PID/net/fib_trie` (its address, hence its GID), its
//! `/proc/PID/net/route` (the interface with that address), a sysfs GID,
//! and the `--nic` and byte-count arguments. No panic, and what comes out
//! is well formed.
#![no_main]

use flowverbs_router::{identity, limits, nic};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(ip) = identity::local_ipv4_from_fib_trie(&text) {
        assert!(
            !ip.is_loopback(),
            "a loopback address taken for the namespace's"
        );
    }
    if let Some(name) = identity::netdev_from_routes(&text, std::net::Ipv4Addr::new(192, 0, 2, 2)) {
        assert!(
            !name.is_empty() && name.len() < 16 && !name.contains(['/', ' ', '\t', '\n']),
            "{name:?} taken for an interface name"
        );
    }
    if let Some(gid) = nic::parse_gid(&text) {
        let printed: Vec<String> = gid
            .chunks(2)
            .map(|c| format!("{:04x}", u16::from_be_bytes([c[0], c[1]])))
            .collect();
        assert_eq!(nic::parse_gid(&printed.join(":")), Some(gid));
    }
    if let Ok((device, port)) = nic::parse_spec(&text) {
        assert!(port >= 1 && !device.is_empty() && !device.contains('/'));
    }
    let _ = limits::parse_bytes(&text);
});
