//! Unreliable datagrams: the MTU, Q_Keys, and the 40-byte GRH area that
//! starts every UD receive.

use flowverbs_sys::*;
use flowverbs_wire::limits::UD_MTU;

/// A datagram longer than the MTU is LOC_LEN_ERR at the requester.
pub fn check_len(len: u64) -> Result<(), u32> {
    if len > u64::from(UD_MTU) {
        Err(IBV_WC_LOC_LEN_ERR)
    } else {
        Ok(())
    }
}

/// The Q_Key a datagram carries: the work request's, or the sending QP's
/// own when the work request's has the high bit set (IB spec 10.2.5).
pub fn qkey(wr_qkey: u32, qp_qkey: u32) -> u32 {
    if wr_qkey & 0x8000_0000 != 0 {
        qp_qkey
    } else {
        wr_qkey
    }
}

/// `wc.sl` of a UD completion whose GRH area holds an IPv4 header (what
/// RoCE v2 NICs report, and what UCX checks).
pub const SL_IPV4_GRH: u8 = 2;

/// The hop limit of a packet whose address handle has no GRH.
pub const DEFAULT_HOP_LIMIT: u8 = 64;

/// What the IPv4 header of a datagram depends on besides its addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub payload_len: u32,
    pub with_imm: bool,
    /// The sender's address handle's hop limit (IPv4 TTL).
    pub hop_limit: u8,
    /// Its traffic class (IPv4 TOS).
    pub traffic_class: u8,
}

/// The 40-byte GRH area in front of a UD message, as a RoCE v2 NIC fills
/// it for IPv4-mapped GIDs: 20 zero bytes, then the packet's IPv4 header
/// (with a valid checksum). `ibv_init_ah_from_wc` recognises this layout.
/// The total length is the packet's: IPv4 (20), UDP (8), BTH (12), DETH
/// (8), the immediate data (4) if any, the payload padded to 4 bytes, and
/// the ICRC (4); TTL and TOS are the sender's hop limit and traffic class.
pub fn grh(sgid: &[u8; 16], dgid: &[u8; 16], p: &Packet) -> [u8; 40] {
    let mut g = [0u8; 40];
    let ip = &mut g[20..40];
    ip[0] = 0x45; // IPv4, 5-word header
    ip[1] = p.traffic_class;
    let imm = if p.with_imm { 4 } else { 0 };
    let padded = p.payload_len.saturating_add(3) & !3;
    let total = (20 + 8 + 12 + 8 + imm + padded + 4).min(u32::from(u16::MAX)) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = p.hop_limit;
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&sgid[12..16]);
    ip[16..20].copy_from_slice(&dgid[12..16]);
    let sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    ip[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grh_carries_a_valid_ipv4_header() {
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s[10..16].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        d[10..16].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
        let packet = |payload_len, with_imm| Packet {
            payload_len,
            with_imm,
            hop_limit: DEFAULT_HOP_LIMIT,
            traffic_class: 0,
        };
        let g = grh(&s, &d, &packet(100, false));
        assert!(g[..20].iter().all(|&b| b == 0));
        assert_eq!(g[20], 0x45);
        assert_eq!(&g[32..36], &[10, 0, 0, 1]);
        assert_eq!(&g[36..40], &[10, 0, 0, 2]);
        assert_eq!(
            u16::from_be_bytes([g[22], g[23]]),
            20 + 8 + 12 + 8 + 100 + 4
        );
        // Padding to 4 bytes, and the immediate data's 4 bytes.
        let total = |len, imm| {
            let g = grh(&s, &d, &packet(len, imm));
            u16::from_be_bytes([g[22], g[23]])
        };
        assert_eq!(total(1, false), 56);
        assert_eq!(total(1, true), 60);
        assert_eq!(total(7, false), 60);
        assert_eq!(total(64, true), 120);
        let g = grh(
            &s,
            &d,
            &Packet {
                hop_limit: 17,
                traffic_class: 0x28,
                ..packet(4, false)
            },
        );
        assert_eq!((g[28], g[21]), (17, 0x28));
        // A header with its checksum sums to 0xffff.
        let sum: u32 = g[20..40]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!((folded & 0xffff) + (folded >> 16), 0xffff);
    }

    #[test]
    fn qkeys_and_mtu() {
        assert_eq!(qkey(0x1111, 0x2222), 0x1111);
        assert_eq!(qkey(0x8000_0000, 0x2222), 0x2222);
        assert_eq!(check_len(u64::from(UD_MTU)), Ok(()));
        assert_eq!(check_len(u64::from(UD_MTU) + 1), Err(IBV_WC_LOC_LEN_ERR));
    }
}
