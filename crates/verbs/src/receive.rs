//! The responder's checks of the receive work request a message lands in
//! (a SEND's data, or a datagram with its GRH area). The receive of an
//! RDMA WRITE WITH IMMEDIATE only reports the immediate: its SGEs are not
//! looked at.

use flowverbs_sys::*;

/// Why a message cannot land in a receive: the requester's completion
/// status (RC; UC and UD requesters complete successfully) and the
/// receive's completion status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub requester: u32,
    pub receive: u32,
}

/// Whether a message of `op` (`enum ibv_wr_opcode`) is written into its
/// receive's SGEs (SENDs; a datagram always).
pub fn lands_in_receive(op: u32) -> bool {
    crate::opcode::is_send(op)
}

/// Whether taking a receive from an SRQ armed with `limit` (0: not
/// armed), leaving `remaining`, raises `IBV_EVENT_SRQ_LIMIT_REACHED`:
/// fewer receives than the limit are left (ibv_modify_srq(3)).
pub fn srq_limit_reached(remaining: u32, limit: u32) -> bool {
    limit > 0 && remaining < limit
}

/// Checks a receive of `num_sge` SGEs on a queue that allows `max_sge`
/// (the QP's `max_recv_sge`, or its SRQ's), whose SGEs passed
/// [`crate::access::local`] with write access or not (`sges`: each
/// SGE's length, or the status of its failed check), for a message of
/// `len` bytes (a datagram's with its 40-byte GRH area):
/// - more SGEs than allowed: LOC_QP_OP_ERR (the requester REM_OP_ERR);
/// - an SGE that is not the responder's writable memory: LOC_PROT_ERR
///   (REM_OP_ERR);
/// - less room than the message: LOC_LEN_ERR (REM_INV_REQ_ERR).
pub fn check(
    num_sge: u32,
    max_sge: u32,
    sges: impl IntoIterator<Item = Result<u64, u32>>,
    len: u64,
) -> Result<(), Fault> {
    if num_sge > max_sge.max(1) {
        return Err(Fault {
            requester: IBV_WC_REM_OP_ERR,
            receive: IBV_WC_LOC_QP_OP_ERR,
        });
    }
    let mut room: u64 = 0;
    for sge in sges {
        match sge {
            Ok(n) => room = room.saturating_add(n),
            Err(_) => {
                return Err(Fault {
                    requester: IBV_WC_REM_OP_ERR,
                    receive: IBV_WC_LOC_PROT_ERR,
                })
            }
        }
    }
    if room < len {
        return Err(Fault {
            requester: IBV_WC_REM_INV_REQ_ERR,
            receive: IBV_WC_LOC_LEN_ERR,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srq_limit() {
        assert!(!srq_limit_reached(0, 0), "not armed");
        assert!(srq_limit_reached(0, 1));
        assert!(srq_limit_reached(3, 4));
        assert!(
            !srq_limit_reached(4, 4),
            "fewer than the limit, not as many"
        );
        assert!(!srq_limit_reached(10, 4));
    }

    #[test]
    fn the_ladder_in_order() {
        let qp_op = Err(Fault {
            requester: IBV_WC_REM_OP_ERR,
            receive: IBV_WC_LOC_QP_OP_ERR,
        });
        let prot = Err(Fault {
            requester: IBV_WC_REM_OP_ERR,
            receive: IBV_WC_LOC_PROT_ERR,
        });
        let short = Err(Fault {
            requester: IBV_WC_REM_INV_REQ_ERR,
            receive: IBV_WC_LOC_LEN_ERR,
        });
        // Too many SGEs comes first, whatever they hold.
        assert_eq!(check(3, 2, [Ok(10), Ok(10), Ok(10)], 5), qp_op);
        assert_eq!(check(3, 2, [Err(IBV_WC_LOC_PROT_ERR)], 5), qp_op);
        assert_eq!(check(1, 0, [Ok(8)], 8), Ok(()), "max 0 still allows one");
        // Then the keys.
        assert_eq!(check(2, 2, [Ok(10), Err(IBV_WC_LOC_PROT_ERR)], 5), prot);
        assert_eq!(check(2, 2, [Err(IBV_WC_LOC_PROT_ERR), Ok(10)], 50), prot);
        // Then the room.
        assert_eq!(check(2, 2, [Ok(10), Ok(10)], 21), short);
        assert_eq!(check(2, 2, [Ok(10), Ok(10)], 20), Ok(()));
        assert_eq!(check(0, 2, [], 0), Ok(()));
        assert_eq!(check(0, 2, [], 1), short);
        assert_eq!(check(2, 2, [Ok(u64::MAX), Ok(u64::MAX)], u64::MAX), Ok(()));
    }

    #[test]
    fn only_sends_land_in_the_receive() {
        assert!(lands_in_receive(IBV_WR_SEND));
        assert!(lands_in_receive(IBV_WR_SEND_WITH_IMM));
        assert!(lands_in_receive(IBV_WR_SEND_WITH_INV));
        assert!(!lands_in_receive(IBV_WR_RDMA_WRITE_WITH_IMM));
        assert!(!lands_in_receive(IBV_WR_RDMA_WRITE));
        assert!(!lands_in_receive(IBV_WR_RDMA_READ));
    }
}
