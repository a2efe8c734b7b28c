//! The `rdma_ucm` command ABI (version 4, as librdmacm of rdma-core 44
//! writes it): command numbers, sizes and the byte layouts the router
//! reads and writes. Pure: no I/O. Offsets are those of the kernel's
//! `rdma_user_cm.h` structs on x86-64 (checked by the unit tests against
//! the sizes the header gives).

use std::net::Ipv4Addr;

/// What `class/misc/rdma_cm/abi_version` says.
pub const ABI_VERSION: u32 = 4;

pub const CMD_CREATE_ID: u32 = 0;
pub const CMD_DESTROY_ID: u32 = 1;
pub const CMD_BIND_IP: u32 = 2;
pub const CMD_RESOLVE_IP: u32 = 3;
pub const CMD_RESOLVE_ROUTE: u32 = 4;
pub const CMD_QUERY_ROUTE: u32 = 5;
pub const CMD_CONNECT: u32 = 6;
pub const CMD_LISTEN: u32 = 7;
pub const CMD_ACCEPT: u32 = 8;
pub const CMD_REJECT: u32 = 9;
pub const CMD_DISCONNECT: u32 = 10;
pub const CMD_INIT_QP_ATTR: u32 = 11;
pub const CMD_GET_EVENT: u32 = 12;
pub const CMD_GET_OPTION: u32 = 13;
pub const CMD_SET_OPTION: u32 = 14;
pub const CMD_NOTIFY: u32 = 15;
pub const CMD_JOIN_IP_MCAST: u32 = 16;
pub const CMD_LEAVE_MCAST: u32 = 17;
pub const CMD_MIGRATE_ID: u32 = 18;
pub const CMD_QUERY: u32 = 19;
pub const CMD_BIND: u32 = 20;
pub const CMD_RESOLVE_ADDR: u32 = 21;
pub const CMD_JOIN_MCAST: u32 = 22;

/// The command header: `cmd`, `in` (payload bytes), `out` (response
/// bytes).
pub const HDR: usize = 8;

/// Payload sizes (`struct rdma_ucm_*`).
pub const CREATE_ID_LEN: usize = 24;
pub const DESTROY_ID_LEN: usize = 16;
pub const BIND_IP_LEN: usize = 40;
pub const BIND_LEN: usize = 136;
pub const RESOLVE_IP_LEN: usize = 64;
pub const RESOLVE_ADDR_LEN: usize = 272;
pub const RESOLVE_ROUTE_LEN: usize = 8;
pub const QUERY_LEN: usize = 16;
pub const CONN_PARAM_LEN: usize = 272;
pub const CONNECT_LEN: usize = 288;
pub const LISTEN_LEN: usize = 8;
pub const ACCEPT_LEN: usize = 296;
pub const REJECT_LEN: usize = 264;
pub const DISCONNECT_LEN: usize = 4;
pub const INIT_QP_ATTR_LEN: usize = 16;
pub const NOTIFY_LEN: usize = 8;
pub const GET_EVENT_LEN: usize = 8;
pub const SET_OPTION_LEN: usize = 24;
pub const MIGRATE_ID_LEN: usize = 16;

/// Response sizes.
pub const CREATE_ID_RESP: usize = 4;
pub const DESTROY_ID_RESP: usize = 4;
pub const QUERY_ROUTE_RESP: usize = 208;
pub const QUERY_ADDR_RESP: usize = 280;
pub const QUERY_PATH_RESP: usize = 8;
pub const EVENT_RESP: usize = 336;
/// The event response without its trailing `reserved` and `ece`: what
/// older libraries ask for; less is `ENOSPC`.
pub const EVENT_RESP_MIN: usize = 324;
pub const QP_ATTR_RESP: usize = 144;
pub const MIGRATE_RESP: usize = 4;

pub const MAX_PRIVATE_DATA: usize = 256;

/// Port spaces.
pub const PS_IPOIB: u16 = 0x0002;
pub const PS_IB: u16 = 0x013F;
pub const PS_TCP: u16 = 0x0106;
pub const PS_UDP: u16 = 0x0111;

/// Event types (`enum rdma_cm_event_type`).
pub const EV_ADDR_RESOLVED: u32 = 0;
pub const EV_ADDR_ERROR: u32 = 1;
pub const EV_ROUTE_RESOLVED: u32 = 2;
pub const EV_ROUTE_ERROR: u32 = 3;
pub const EV_CONNECT_REQUEST: u32 = 4;
pub const EV_CONNECT_RESPONSE: u32 = 5;
pub const EV_CONNECT_ERROR: u32 = 6;
pub const EV_UNREACHABLE: u32 = 7;
pub const EV_REJECTED: u32 = 8;
pub const EV_ESTABLISHED: u32 = 9;
pub const EV_DISCONNECTED: u32 = 10;

/// IB CM reject reasons the router sends.
pub const REJ_TIMEOUT: i32 = 1;
pub const REJ_INVALID_SERVICE_ID: i32 = 8;
pub const REJ_CONSUMER_DEFINED: i32 = 28;

/// Private data sizes an IB CM message carries (what a receiver's event
/// reports as `private_data_len`): REQ less the 36-byte address header the
/// kernel's CM puts first for IP port spaces, REP, REJ.
pub const REQ_PRIVATE_DATA: usize = 92;
pub const REQ_PRIVATE_DATA_IP: usize = 56;
pub const REP_PRIVATE_DATA: usize = 196;
pub const REJ_PRIVATE_DATA: usize = 148;
/// SIDR (UD) messages: a SIDR REQ's private data (216 bytes) less the
/// address header for IP port spaces, and a SIDR REP's.
pub const SIDR_REQ_PRIVATE_DATA: usize = 216;
pub const SIDR_REQ_PRIVATE_DATA_IP: usize = 180;
pub const SIDR_REP_PRIVATE_DATA: usize = 136;
/// SIDR REP statuses (what an UNREACHABLE event reports): no one serves
/// the service id, or its server refused.
pub const SIDR_UNSUPPORTED: i32 = 1;
pub const SIDR_REJECT: i32 = 2;

/// Address families.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const AF_IB: u16 = 27;

/// QP states (`enum ibv_qp_state`) and attribute mask bits.
pub const QPS_INIT: u32 = 1;
pub const QPS_RTR: u32 = 2;
pub const QPS_RTS: u32 = 3;
pub const QP_STATE: u32 = 1;
pub const QP_ACCESS_FLAGS: u32 = 1 << 3;
pub const QP_PKEY_INDEX: u32 = 1 << 4;
pub const QP_PORT: u32 = 1 << 5;
pub const QP_QKEY: u32 = 1 << 6;
pub const QP_AV: u32 = 1 << 7;
pub const QP_PATH_MTU: u32 = 1 << 8;
pub const QP_TIMEOUT: u32 = 1 << 9;
pub const QP_RETRY_CNT: u32 = 1 << 10;
pub const QP_RNR_RETRY: u32 = 1 << 11;
pub const QP_RQ_PSN: u32 = 1 << 12;
pub const QP_MAX_QP_RD_ATOMIC: u32 = 1 << 13;
pub const QP_MIN_RNR_TIMER: u32 = 1 << 15;
pub const QP_SQ_PSN: u32 = 1 << 16;
pub const QP_DEST_QPN: u32 = 1 << 20;
pub const QP_MAX_DEST_RD_ATOMIC: u32 = 1 << 17;
pub const ACCESS_REMOTE_WRITE: u32 = 1 << 1;
pub const ACCESS_REMOTE_READ: u32 = 1 << 2;
pub const ACCESS_REMOTE_ATOMIC: u32 = 1 << 3;
/// `IBV_MTU_1024`.
pub const MTU_1024: u32 = 3;
/// The UD QKEY the kernel's CM gives IP port spaces.
pub const RDMA_UDP_QKEY: u32 = 0x0123_4567;
/// `IBV_QPT_UD`.
pub const QPT_UD: u8 = 4;

pub fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}
pub fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
pub fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}
pub fn put_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_ne_bytes());
}
pub fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_ne_bytes());
}
pub fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_ne_bytes());
}

/// An IP socket address as fv0 knows them: IPv4 (an IPv6 socket address
/// counts when it is `::` or IPv4-mapped), and the family the caller used
/// (echoed back in answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SockAddr {
    pub v6: bool,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// Why a socket address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrError {
    /// `AF_IB`, or an IPv6 address that is not IPv4-mapped.
    Family,
    /// Too short for its family, or an unknown family.
    Invalid,
}

impl SockAddr {
    pub fn any() -> SockAddr {
        SockAddr {
            v6: false,
            ip: Ipv4Addr::UNSPECIFIED,
            port: 0,
        }
    }

    /// Parses a `sockaddr_in`/`sockaddr_in6` at the start of `b`.
    pub fn parse(b: &[u8]) -> Result<SockAddr, AddrError> {
        if b.len() < 2 {
            return Err(AddrError::Invalid);
        }
        match u16_at(b, 0) {
            AF_INET if b.len() >= 16 => Ok(SockAddr {
                v6: false,
                ip: Ipv4Addr::new(b[4], b[5], b[6], b[7]),
                port: u16::from_be_bytes([b[2], b[3]]),
            }),
            AF_INET6 if b.len() >= 28 => {
                let a: [u8; 16] = b[8..24].try_into().expect("16 bytes");
                let v6 = std::net::Ipv6Addr::from(a);
                let ip = if v6.is_unspecified() {
                    Ipv4Addr::UNSPECIFIED
                } else {
                    v6.to_ipv4_mapped().ok_or(AddrError::Family)?
                };
                Ok(SockAddr {
                    v6: true,
                    ip,
                    port: u16::from_be_bytes([b[2], b[3]]),
                })
            }
            AF_IB => Err(AddrError::Family),
            AF_INET6 => Err(AddrError::Invalid),
            _ => Err(AddrError::Invalid),
        }
    }

    /// The family field of an address at the start of `b` (0 if none).
    pub fn family(b: &[u8]) -> u16 {
        if b.len() < 2 {
            0
        } else {
            u16_at(b, 0)
        }
    }

    /// Writes the address at the start of `out` (16 bytes for IPv4, 28
    /// for IPv6); returns the length written.
    pub fn write(&self, out: &mut [u8]) -> usize {
        let port = self.port.to_be_bytes();
        if self.v6 {
            put_u16(out, 0, AF_INET6);
            out[2..4].copy_from_slice(&port);
            let a = if self.ip.is_unspecified() {
                [0u8; 16]
            } else {
                self.ip.to_ipv6_mapped().octets()
            };
            out[8..24].copy_from_slice(&a);
            28
        } else {
            put_u16(out, 0, AF_INET);
            out[2..4].copy_from_slice(&port);
            out[4..8].copy_from_slice(&self.ip.octets());
            16
        }
    }
}

/// `struct rdma_ucm_conn_param`, the parts the router uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnParam {
    pub qp_num: u32,
    pub qkey: u32,
    pub private_data: Vec<u8>,
    pub srq: u8,
    pub responder_resources: u8,
    pub initiator_depth: u8,
    pub flow_control: u8,
    pub retry_count: u8,
    pub rnr_retry_count: u8,
    pub valid: u8,
}

impl ConnParam {
    /// What the other side's event reports of these parameters (a REQ's
    /// or REP's): the sender's resources and depth swap roles.
    pub fn as_received(&self) -> ConnParam {
        ConnParam {
            qp_num: self.qp_num,
            private_data: self.private_data.clone(),
            srq: self.srq,
            responder_resources: self.initiator_depth,
            initiator_depth: self.responder_resources,
            flow_control: self.flow_control,
            retry_count: self.retry_count,
            rnr_retry_count: self.rnr_retry_count,
            ..ConnParam::default()
        }
    }

    /// What a REQ or REP carries of these parameters: the retry counts
    /// are 3-bit fields, so more than 7 is 7 (the kernel's CM clamps them
    /// so; libfabric's verbs provider asks for 15).
    pub fn as_sent(self) -> ConnParam {
        ConnParam {
            retry_count: self.retry_count.min(7),
            rnr_retry_count: self.rnr_retry_count.min(7),
            ..self
        }
    }

    /// Parses 272 bytes; `None` if `private_data_len` is over 256.
    pub fn parse(b: &[u8]) -> Option<ConnParam> {
        let len = b[264] as usize;
        (len <= MAX_PRIVATE_DATA).then(|| ConnParam {
            qp_num: u32_at(b, 0),
            qkey: u32_at(b, 4),
            private_data: b[8..8 + len].to_vec(),
            srq: b[265],
            responder_resources: b[266],
            initiator_depth: b[267],
            flow_control: b[268],
            retry_count: b[269],
            rnr_retry_count: b[270],
            valid: b[271],
        })
    }

    /// Writes 272 bytes; private data padded to `pad` bytes (the size the
    /// CM message carries) and reported as that long.
    pub fn write(&self, out: &mut [u8], pad: usize) {
        put_u32(out, 0, self.qp_num);
        put_u32(out, 4, self.qkey);
        let n = self.private_data.len().min(MAX_PRIVATE_DATA);
        out[8..8 + n].copy_from_slice(&self.private_data[..n]);
        out[264] = pad.max(n).min(MAX_PRIVATE_DATA) as u8;
        out[265] = self.srq;
        out[266] = self.responder_resources;
        out[267] = self.initiator_depth;
        out[268] = self.flow_control;
        out[269] = self.retry_count;
        out[270] = self.rnr_retry_count;
        out[271] = self.valid;
    }
}

/// `struct rdma_ucm_ud_param`, what a UD id's events carry instead of
/// the connection parameters: the remote QP, its qkey and an address
/// (`struct ib_uverbs_ah_attr`: a global route to `dgid`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdParam {
    pub qp_num: u32,
    pub qkey: u32,
    /// Whether the address is set (then global, port 1, source GID
    /// index 0).
    pub has_ah: bool,
    pub dgid: [u8; 16],
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub private_data: Vec<u8>,
}

impl UdParam {
    /// Writes 304 bytes; private data padded to `pad` bytes.
    pub fn write(&self, out: &mut [u8], pad: usize) {
        put_u32(out, 0, self.qp_num);
        put_u32(out, 4, self.qkey);
        if self.has_ah {
            // ah_attr at 8: grh (dgid, flow_label, sgid_index, hop_limit,
            // traffic_class), dlid, sl, src_path_bits, static_rate,
            // is_global at 29, port_num at 30.
            out[8..24].copy_from_slice(&self.dgid);
            out[8 + 21] = self.hop_limit;
            out[8 + 22] = self.traffic_class;
            out[8 + 29] = 1;
            out[8 + 30] = 1;
        }
        let n = self.private_data.len().min(MAX_PRIVATE_DATA);
        out[40..40 + n].copy_from_slice(&self.private_data[..n]);
        out[296] = pad.max(n).min(MAX_PRIVATE_DATA) as u8;
    }
}

/// The size of `struct rdma_ucm_ud_param`.
pub const UD_PARAM_LEN: usize = 304;

/// One event as GET_EVENT returns it (`struct rdma_ucm_event_resp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventResp {
    pub uid: u64,
    pub id: u32,
    pub event: u32,
    pub status: i32,
    pub conn: ConnParam,
    /// A UD id's parameters: written instead of `conn` (the two share
    /// the event's union).
    pub ud: Option<UdParam>,
    /// How many private data bytes the receiver sees (the CM message's
    /// size), 0 for none.
    pub pad: usize,
}

impl EventResp {
    pub fn encode(&self) -> [u8; EVENT_RESP] {
        let mut out = [0u8; EVENT_RESP];
        put_u64(&mut out, 0, self.uid);
        put_u32(&mut out, 8, self.id);
        put_u32(&mut out, 12, self.event);
        put_u32(&mut out, 16, self.status as u32);
        match &self.ud {
            Some(ud) => ud.write(&mut out[20..20 + UD_PARAM_LEN], self.pad),
            None => self.conn.write(&mut out[20..20 + CONN_PARAM_LEN], self.pad),
        }
        out
    }
}

/// The answer to INIT_QP_ATTR (`struct ib_uverbs_qp_attr`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QpAttr {
    pub mask: u32,
    pub state: u32,
    pub path_mtu: u32,
    pub qkey: u32,
    pub rq_psn: u32,
    pub sq_psn: u32,
    pub dest_qp_num: u32,
    pub access: u32,
    pub dgid: [u8; 16],
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub is_global: bool,
    pub port_num: u8,
    pub pkey_index: u16,
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
}

impl QpAttr {
    pub fn encode(&self) -> [u8; QP_ATTR_RESP] {
        let mut o = [0u8; QP_ATTR_RESP];
        put_u32(&mut o, 0, self.mask);
        put_u32(&mut o, 4, self.state);
        put_u32(&mut o, 12, self.path_mtu);
        put_u32(&mut o, 20, self.qkey);
        put_u32(&mut o, 24, self.rq_psn);
        put_u32(&mut o, 28, self.sq_psn);
        put_u32(&mut o, 32, self.dest_qp_num);
        put_u32(&mut o, 36, self.access);
        // ah_attr at 40: grh (dgid, flow_label, sgid_index 0, hop_limit,
        // traffic_class), dlid 0, sl 0, is_global, port_num.
        o[40..56].copy_from_slice(&self.dgid);
        o[61] = self.hop_limit;
        o[62] = self.traffic_class;
        o[69] = self.is_global as u8;
        o[70] = self.port_num;
        put_u16(&mut o, 124, self.pkey_index);
        o[130] = self.max_rd_atomic;
        o[131] = self.max_dest_rd_atomic;
        o[132] = self.min_rnr_timer;
        o[133] = self.port_num;
        o[134] = self.timeout;
        o[135] = self.retry_cnt;
        o[136] = self.rnr_retry;
        o
    }
}

/// `struct ib_user_path_rec` of a RoCE path between two GIDs.
pub fn path_rec(sgid: &[u8; 16], dgid: &[u8; 16], out: &mut [u8]) {
    out[0..16].copy_from_slice(dgid);
    out[16..32].copy_from_slice(sgid);
    put_u32(out, 44, 1); // reversible
    put_u32(out, 48, MTU_1024);
    out[52..54].copy_from_slice(&0xffffu16.to_be_bytes()); // pkey
    out[54] = 64; // hop_limit
    out[56] = 1; // numb_path
    out[58] = 2; // mtu_selector: exactly
    out[59] = 2; // rate_selector: exactly
    out[60] = 3; // rate: 10 Gb/s
    out[61] = 2; // packet_life_time_selector
    out[62] = 16; // packet_life_time
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_refuse_af_ib() {
        let mut b = [0u8; 28];
        let a = SockAddr {
            v6: false,
            ip: Ipv4Addr::new(10, 1, 2, 3),
            port: 7174,
        };
        assert_eq!(a.write(&mut b), 16);
        assert_eq!(SockAddr::parse(&b), Ok(a));
        let a6 = SockAddr { v6: true, ..a };
        assert_eq!(a6.write(&mut b), 28);
        assert_eq!(SockAddr::parse(&b), Ok(a6));
        put_u16(&mut b, 0, AF_IB);
        assert_eq!(SockAddr::parse(&b), Err(AddrError::Family));
        put_u16(&mut b, 0, AF_INET6);
        b[8..24].copy_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        assert_eq!(SockAddr::parse(&b), Err(AddrError::Family));
        assert_eq!(SockAddr::parse(&b[..10]), Err(AddrError::Invalid));
        put_u16(&mut b, 0, 99);
        assert_eq!(SockAddr::parse(&b), Err(AddrError::Invalid));
    }

    #[test]
    fn conn_param_round_trip_pads_private_data() {
        let p = ConnParam {
            qp_num: 17,
            private_data: vec![1, 2, 3],
            responder_resources: 4,
            initiator_depth: 5,
            retry_count: 7,
            rnr_retry_count: 6,
            ..ConnParam::default()
        };
        let mut b = [0u8; CONN_PARAM_LEN];
        p.write(&mut b, REQ_PRIVATE_DATA_IP);
        assert_eq!(b[264] as usize, REQ_PRIVATE_DATA_IP);
        let back = ConnParam::parse(&b).unwrap();
        assert_eq!(back.private_data[..3], [1, 2, 3]);
        assert!(back.private_data[3..].iter().all(|x| *x == 0));
        assert_eq!(back.qp_num, 17);
        assert_eq!(back.rnr_retry_count, 6);
    }
}
