//! rdma_cm between routers: one link frame of kind `Cm` carries one
//! [`Frame`] (a REQ, REP, RTU, REJ, DREQ or SIDR REP between two ids),
//! from the GID in the frame header's `src_gid` to `dst_gid`; the link
//! has checked that the sending router serves the one and this router the
//! other. Everything else in the payload comes from another host and is
//! checked here, as the local commands are, before [`super::state::Cm`]
//! sees it.

use super::abi::*;
use super::state::{Frame, Msg};

/// The payload of a frame.
pub fn encode(frame: &Frame) -> Vec<u8> {
    flowverbs_wire::codec::encode(frame)
}

/// The frame in `payload`, if it decodes and every field is one a router
/// of ours could have sent.
pub fn decode(payload: &[u8]) -> Result<Frame, String> {
    let f: Frame = flowverbs_wire::codec::decode(payload)?;
    check(&f).map(|()| f)
}

const QPN_MASK: u32 = 0x00ff_ffff;

fn check(f: &Frame) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{what} in {:?}", f.msg));
    let param_ok =
        |p: &ConnParam| p.qp_num <= QPN_MASK && p.retry_count <= 7 && p.rnr_retry_count <= 7;
    match &f.msg {
        Msg::Req { ps, param, psn, .. } => {
            if f.to != 0 || f.from == 0 {
                return fail("a REQ not from an id to a listener");
            }
            if !matches!(*ps, PS_TCP | PS_UDP | PS_IB | PS_IPOIB) {
                return fail("an unknown port space");
            }
            // The most any REQ carries (a SIDR REQ in the IB space).
            if param.private_data.len() > SIDR_REQ_PRIVATE_DATA || !param_ok(param) {
                return fail("parameters out of range");
            }
            if *psn > QPN_MASK {
                return fail("a PSN of more than 24 bits");
            }
        }
        Msg::Rep { param, psn } => {
            if f.to == 0 || f.from == 0 {
                return fail("a REP without both ids");
            }
            if param.private_data.len() > REP_PRIVATE_DATA || !param_ok(param) || *psn > QPN_MASK {
                return fail("parameters out of range");
            }
        }
        Msg::SidrRep {
            qpn, private_data, ..
        } => {
            if f.to == 0 || f.from == 0 {
                return fail("a SIDR REP without both ids");
            }
            if *qpn > QPN_MASK || private_data.len() > SIDR_REP_PRIVATE_DATA {
                return fail("parameters out of range");
            }
        }
        Msg::Rej {
            reason,
            private_data,
        } => {
            // A REJ may come from no id (no one listens) or go to none
            // (a request withdrawn before its answer), not both.
            if f.to == 0 && f.from == 0 {
                return fail("a REJ between no ids");
            }
            if !(0..=0xffff).contains(reason) || private_data.len() > REJ_PRIVATE_DATA {
                return fail("parameters out of range");
            }
        }
        Msg::Rtu | Msg::Dreq => {
            if f.to == 0 || f.from == 0 {
                return fail("a message without both ids");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn req(private: usize) -> Frame {
        let a = SockAddr {
            v6: false,
            ip: Ipv4Addr::new(10, 0, 0, 1),
            port: 7174,
        };
        Frame {
            to: 0,
            from: 5,
            msg: Msg::Req {
                gid: [1; 16],
                src: a,
                dst: a,
                ps: PS_TCP,
                param: ConnParam {
                    qp_num: 0x11,
                    retry_count: 7,
                    private_data: vec![9; private],
                    ..ConnParam::default()
                },
                psn: 0x123,
            },
        }
    }

    #[test]
    fn frames_round_trip_and_out_of_range_fields_are_refused() {
        let f = req(56);
        let back = decode(&encode(&f)).expect("a good REQ");
        assert!(
            matches!(back.msg, Msg::Req { ref param, .. } if param.private_data == vec![9; 56])
        );
        assert!(decode(&encode(&req(SIDR_REQ_PRIVATE_DATA + 1))).is_err());
        let mut f = req(0);
        f.to = 3;
        assert!(decode(&encode(&f)).is_err(), "a REQ to an id");
        let mut f = req(0);
        if let Msg::Req { param, psn, .. } = &mut f.msg {
            param.retry_count = 15;
            *psn = 0;
        }
        assert!(decode(&encode(&f)).is_err(), "retry count 15");
        let mut f = req(0);
        if let Msg::Req { ps, .. } = &mut f.msg {
            *ps = 7;
        }
        assert!(decode(&encode(&f)).is_err(), "port space 7");
        for (to, from, msg, ok) in [
            (1, 2, Msg::Rtu, true),
            (0, 2, Msg::Rtu, false),
            (1, 0, Msg::Dreq, false),
            (
                0,
                2,
                Msg::Rej {
                    reason: 28,
                    private_data: vec![],
                },
                true,
            ),
            (
                2,
                0,
                Msg::Rej {
                    reason: 8,
                    private_data: vec![],
                },
                true,
            ),
            (
                0,
                0,
                Msg::Rej {
                    reason: 8,
                    private_data: vec![],
                },
                false,
            ),
            (
                1,
                2,
                Msg::Rej {
                    reason: -1,
                    private_data: vec![],
                },
                false,
            ),
            (
                1,
                2,
                Msg::Rej {
                    reason: 28,
                    private_data: vec![0; 149],
                },
                false,
            ),
            (
                1,
                2,
                Msg::SidrRep {
                    qpn: 1 << 24,
                    qkey: 1,
                    gid: [0; 16],
                    private_data: vec![],
                },
                false,
            ),
        ] {
            let f = Frame { to, from, msg };
            assert_eq!(decode(&encode(&f)).is_ok(), ok, "{f:?}");
        }
        let mut bytes = encode(&req(0));
        bytes.push(0);
        assert!(decode(&bytes).is_err(), "trailing bytes");
        assert!(decode(&[0xff; 9]).is_err());
    }
}
