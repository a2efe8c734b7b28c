//! A device's identity from an IPv4 address: GID 0 is the IPv4-mapped
//! address (RoCE v2), the node GUID embeds the address.

use std::net::Ipv4Addr;

/// The IPv4-mapped GID `::ffff:a.b.c.d`.
pub fn gid_from_ipv4(ip: Ipv4Addr) -> [u8; 16] {
    ip.to_ipv6_mapped().octets()
}

/// The address an IPv4-mapped GID holds (None for any other GID).
pub fn ipv4_from_gid(gid: &[u8; 16]) -> Option<Ipv4Addr> {
    std::net::Ipv6Addr::from(*gid).to_ipv4_mapped()
}

/// A node GUID derived from an IPv4 address: `02:66:76:ff` ("fv", locally
/// administered) followed by the four address bytes.
pub fn node_guid_from_ipv4(ip: Ipv4Addr) -> u64 {
    0x0266_76ff_0000_0000 | u64::from(u32::from(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_is_ipv4_mapped() {
        let gid = gid_from_ipv4(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(
            gid,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 2]
        );
        assert_eq!(
            std::net::Ipv6Addr::from(gid).to_string(),
            "::ffff:192.0.2.2"
        );
    }

    #[test]
    fn node_guid_embeds_ip() {
        assert_eq!(
            node_guid_from_ipv4(Ipv4Addr::new(10, 0, 0, 1)),
            0x0266_76ff_0a00_0001
        );
    }
}
