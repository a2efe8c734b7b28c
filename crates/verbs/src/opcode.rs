//! What a send work request's opcode (`enum ibv_wr_opcode`) means, and the
//! requester's first checks of a work request (before any memory is
//! looked at).

use flowverbs_sys::*;
use flowverbs_wire::limits::MAX_INLINE_DATA;

/// The SENDs and RDMA_WRITE_WITH_IMM take a receive at the responder.
pub fn consumes_receive(op: u32) -> bool {
    is_send(op) || op == IBV_WR_RDMA_WRITE_WITH_IMM
}

/// SENDs and RDMA WRITEs carry the requester's data to the responder.
pub fn carries_data(op: u32) -> bool {
    is_send(op) || matches!(op, IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM)
}

pub fn is_send(op: u32) -> bool {
    matches!(
        op,
        IBV_WR_SEND | IBV_WR_SEND_WITH_IMM | IBV_WR_SEND_WITH_INV
    )
}

/// BIND_MW and LOCAL_INV change the requester's own memory windows: they
/// run at the requester, in send-queue order, and reach no peer
/// ([`window`](super::window)).
pub fn is_local(op: u32) -> bool {
    matches!(op, IBV_WR_BIND_MW | IBV_WR_LOCAL_INV)
}

pub fn is_atomic(op: u32) -> bool {
    matches!(op, IBV_WR_ATOMIC_CMP_AND_SWP | IBV_WR_ATOMIC_FETCH_AND_ADD)
}

/// The `ibv_wc_opcode` reported for a completed send work request.
pub fn wc_opcode(op: u32) -> Option<u32> {
    Some(match op {
        IBV_WR_SEND | IBV_WR_SEND_WITH_IMM | IBV_WR_SEND_WITH_INV => IBV_WC_SEND,
        IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM => IBV_WC_RDMA_WRITE,
        IBV_WR_RDMA_READ => IBV_WC_RDMA_READ,
        IBV_WR_ATOMIC_CMP_AND_SWP => IBV_WC_COMP_SWAP,
        IBV_WR_ATOMIC_FETCH_AND_ADD => IBV_WC_FETCH_ADD,
        IBV_WR_BIND_MW => IBV_WC_BIND_MW,
        IBV_WR_LOCAL_INV => IBV_WC_LOCAL_INV,
        _ => return None,
    })
}

/// The `ibv_wc_opcode` of a send work request's completion, also for a
/// request whose opcode is not one (its error completion says SEND).
pub fn completion_opcode(op: u32) -> u32 {
    wc_opcode(op).unwrap_or(IBV_WC_SEND)
}

/// Whether a send work request's successful completion is reported: every
/// one on a QP created with `sq_sig_all`, otherwise those posted with
/// IBV_SEND_SIGNALED (error completions always are).
pub fn signaled(sq_sig_all: bool, send_flags: u32) -> bool {
    sq_sig_all || send_flags & IBV_SEND_SIGNALED != 0
}

/// Whether a QP of `qp_type` (`enum ibv_qp_type`) may post `op`: RC every
/// operation, UC SENDs, WRITEs and the window operations, UD SEND and
/// SEND_WITH_IMM.
pub fn allowed(qp_type: u32, op: u32) -> bool {
    match qp_type {
        IBV_QPT_RC => wc_opcode(op).is_some(),
        IBV_QPT_UC => carries_data(op) || is_local(op),
        IBV_QPT_UD => matches!(op, IBV_WR_SEND | IBV_WR_SEND_WITH_IMM),
        _ => false,
    }
}

/// How a send work request's data is to be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// The data is inline in the work request.
    pub inline: bool,
    /// The local SGEs are read (SEND, WRITE); otherwise written (READ,
    /// atomics' original value).
    pub reads_local: bool,
}

/// The requester's first checks of a send work request: the opcode is
/// allowed for the QP type, at most `max_send_sge` SGEs, inline data within
/// the limit (INLINE is ignored on operations that carry no data, as by
/// NICs). Err: the status of its error completion.
pub fn shape(
    qp_type: u32,
    op: u32,
    send_flags: u32,
    num_sge: u32,
    inline_len: u32,
    max_send_sge: u32,
) -> Result<Shape, u32> {
    if !allowed(qp_type, op) || num_sge > max_send_sge.max(1) {
        return Err(IBV_WC_LOC_QP_OP_ERR);
    }
    let inline = send_flags & IBV_SEND_INLINE != 0 && carries_data(op);
    if inline && inline_len > MAX_INLINE_DATA {
        return Err(IBV_WC_LOC_LEN_ERR);
    }
    Ok(Shape {
        inline,
        reads_local: carries_data(op),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPS: [u32; 10] = [
        IBV_WR_RDMA_WRITE,
        IBV_WR_RDMA_WRITE_WITH_IMM,
        IBV_WR_SEND,
        IBV_WR_SEND_WITH_IMM,
        IBV_WR_RDMA_READ,
        IBV_WR_ATOMIC_CMP_AND_SWP,
        IBV_WR_ATOMIC_FETCH_AND_ADD,
        IBV_WR_SEND_WITH_INV,
        IBV_WR_BIND_MW,
        IBV_WR_LOCAL_INV,
    ];

    /// Every opcode on every QP type (IB spec: RC all, UC SENDs, WRITEs and
    /// the window operations, UD SEND and SEND_WITH_IMM only).
    #[test]
    fn opcode_by_qp_type() {
        for op in OPS {
            let data = [
                IBV_WR_RDMA_WRITE,
                IBV_WR_RDMA_WRITE_WITH_IMM,
                IBV_WR_SEND,
                IBV_WR_SEND_WITH_IMM,
                IBV_WR_SEND_WITH_INV,
            ]
            .contains(&op);
            let send = [IBV_WR_SEND, IBV_WR_SEND_WITH_IMM].contains(&op);
            let local = [IBV_WR_BIND_MW, IBV_WR_LOCAL_INV].contains(&op);
            assert_eq!(is_local(op), local);
            assert!(allowed(IBV_QPT_RC, op), "{op}");
            assert_eq!(allowed(IBV_QPT_UC, op), data || local, "{op}");
            assert_eq!(allowed(IBV_QPT_UD, op), send, "{op}");
            assert!(!allowed(99, op));
            let want = if allowed(IBV_QPT_UD, op) {
                Ok(true)
            } else {
                Err(IBV_WC_LOC_QP_OP_ERR)
            };
            assert_eq!(
                shape(IBV_QPT_UD, op, 0, 1, 0, 1).map(|s| s.reads_local),
                want
            );
        }
        assert!(!allowed(IBV_QPT_RC, 99));
        assert_eq!(shape(IBV_QPT_RC, 99, 0, 1, 0, 1), Err(IBV_WC_LOC_QP_OP_ERR));
    }

    #[test]
    fn receives_consumed_and_completion_opcodes() {
        for op in OPS {
            assert_eq!(
                consumes_receive(op),
                [
                    IBV_WR_SEND,
                    IBV_WR_SEND_WITH_IMM,
                    IBV_WR_SEND_WITH_INV,
                    IBV_WR_RDMA_WRITE_WITH_IMM
                ]
                .contains(&op)
            );
        }
        assert_eq!(wc_opcode(IBV_WR_SEND_WITH_INV), Some(IBV_WC_SEND));
        assert_eq!(wc_opcode(IBV_WR_BIND_MW), Some(IBV_WC_BIND_MW));
        assert_eq!(wc_opcode(IBV_WR_LOCAL_INV), Some(IBV_WC_LOCAL_INV));
        assert_eq!(
            wc_opcode(IBV_WR_RDMA_WRITE_WITH_IMM),
            Some(IBV_WC_RDMA_WRITE)
        );
        assert_eq!(wc_opcode(IBV_WR_ATOMIC_CMP_AND_SWP), Some(IBV_WC_COMP_SWAP));
        assert_eq!(
            wc_opcode(IBV_WR_ATOMIC_FETCH_AND_ADD),
            Some(IBV_WC_FETCH_ADD)
        );
        assert_eq!(wc_opcode(IBV_WR_RDMA_READ), Some(IBV_WC_RDMA_READ));
        assert_eq!(wc_opcode(42), None);
    }

    #[test]
    fn sges_and_inline() {
        assert_eq!(
            shape(IBV_QPT_RC, IBV_WR_SEND, 0, 3, 0, 2),
            Err(IBV_WC_LOC_QP_OP_ERR)
        );
        // max_send_sge 0 still allows one SGE (a QP created with 0).
        assert!(shape(IBV_QPT_RC, IBV_WR_SEND, 0, 1, 0, 0).is_ok());
        let inline = shape(IBV_QPT_UD, IBV_WR_SEND, IBV_SEND_INLINE, 0, 8, 1);
        assert_eq!(inline.map(|s| s.inline), Ok(true));
        assert_eq!(
            shape(
                IBV_QPT_UD,
                IBV_WR_SEND,
                IBV_SEND_INLINE,
                0,
                MAX_INLINE_DATA + 1,
                1
            ),
            Err(IBV_WC_LOC_LEN_ERR)
        );
        // INLINE on a READ is ignored, as by NICs.
        let r = shape(IBV_QPT_RC, IBV_WR_RDMA_READ, IBV_SEND_INLINE, 1, 9999, 1);
        assert_eq!(
            r,
            Ok(Shape {
                inline: false,
                reads_local: false
            })
        );
    }
}
