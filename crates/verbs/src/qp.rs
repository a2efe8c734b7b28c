//! QPs: their types, states and the state machine with the attribute
//! checks of `ibv_modify_qp` (after the IB specification's table of
//! required and optional attributes per transition, the rules the kernel's
//! `ib_modify_qp_is_ok` applies), which states send and receive, and the
//! RNR and ACK timers.

use flowverbs_sys::*;
use flowverbs_wire::control::QpAttr;
use flowverbs_wire::limits::{MAX_QPN, MAX_QP_RD_ATOM};

pub const RESET: u32 = IBV_QPS_RESET;
pub const INIT: u32 = IBV_QPS_INIT;
pub const RTR: u32 = IBV_QPS_RTR;
pub const RTS: u32 = IBV_QPS_RTS;
pub const SQD: u32 = IBV_QPS_SQD;
pub const SQE: u32 = IBV_QPS_SQE;
pub const ERR: u32 = IBV_QPS_ERR;

const STATE: u32 = IBV_QP_STATE;
const CUR_STATE: u32 = IBV_QP_CUR_STATE;
const EN_SQD: u32 = IBV_QP_EN_SQD_ASYNC_NOTIFY;
const ACCESS: u32 = IBV_QP_ACCESS_FLAGS;
const PKEY: u32 = IBV_QP_PKEY_INDEX;
const PORT: u32 = IBV_QP_PORT;
const QKEY: u32 = IBV_QP_QKEY;
const AV: u32 = IBV_QP_AV;
const MTU: u32 = IBV_QP_PATH_MTU;
const TIMEOUT: u32 = IBV_QP_TIMEOUT;
const RETRY: u32 = IBV_QP_RETRY_CNT;
const RNR_RETRY: u32 = IBV_QP_RNR_RETRY;
const RQ_PSN: u32 = IBV_QP_RQ_PSN;
const RD_ATOMIC: u32 = IBV_QP_MAX_QP_RD_ATOMIC;
const ALT: u32 = IBV_QP_ALT_PATH;
const MIN_RNR: u32 = IBV_QP_MIN_RNR_TIMER;
const SQ_PSN: u32 = IBV_QP_SQ_PSN;
const DEST_RD_ATOMIC: u32 = IBV_QP_MAX_DEST_RD_ATOMIC;
const MIG: u32 = IBV_QP_PATH_MIG_STATE;
const DEST_QPN: u32 = IBV_QP_DEST_QPN;

/// QP transport types flowverbs knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpKind {
    Rc,
    Uc,
    Ud,
}

impl QpKind {
    pub fn from_ibv(qp_type: u32) -> Option<QpKind> {
        match qp_type {
            IBV_QPT_RC => Some(QpKind::Rc),
            IBV_QPT_UC => Some(QpKind::Uc),
            IBV_QPT_UD => Some(QpKind::Ud),
            _ => None,
        }
    }
    pub fn ibv_type(self) -> u32 {
        match self {
            QpKind::Rc => IBV_QPT_RC,
            QpKind::Uc => IBV_QPT_UC,
            QpKind::Ud => IBV_QPT_UD,
        }
    }
}

/// (required, optional) attribute masks for `cur -> next`, or None when the
/// transition does not exist.
fn transition(kind: QpKind, cur: u32, next: u32) -> Option<(u32, u32)> {
    use QpKind::*;
    let rc = kind == Rc;
    let ud = kind == Ud;
    let conn = kind != Ud;
    Some(match (cur, next) {
        (_, RESET) | (_, ERR) => (0, 0),
        (RESET, INIT) if ud => (PKEY | PORT | QKEY, 0),
        (RESET, INIT) => (PKEY | PORT | ACCESS, 0),
        (INIT, INIT) if ud => (0, PKEY | PORT | QKEY),
        (INIT, INIT) => (0, PKEY | PORT | ACCESS),
        (INIT, RTR) if ud => (0, PKEY | QKEY),
        (INIT, RTR) if rc => (
            AV | MTU | DEST_QPN | RQ_PSN | DEST_RD_ATOMIC | MIN_RNR,
            ALT | ACCESS | PKEY,
        ),
        (INIT, RTR) => (AV | MTU | DEST_QPN | RQ_PSN, ALT | ACCESS | PKEY),
        (RTR, RTS) if ud => (SQ_PSN, CUR_STATE | QKEY),
        (RTR, RTS) if rc => (
            SQ_PSN | TIMEOUT | RETRY | RNR_RETRY | RD_ATOMIC,
            CUR_STATE | ALT | ACCESS | MIN_RNR | MIG,
        ),
        (RTR, RTS) => (SQ_PSN, CUR_STATE | ALT | ACCESS | MIG),
        (RTS, RTS) if ud => (0, CUR_STATE | QKEY),
        (RTS, RTS) if rc => (0, CUR_STATE | ACCESS | ALT | MIG | MIN_RNR),
        (RTS, RTS) => (0, CUR_STATE | ACCESS | ALT | MIG),
        (RTS, SQD) => (0, EN_SQD),
        (SQD, RTS) if ud => (0, CUR_STATE | QKEY),
        (SQD, RTS) if rc => (0, CUR_STATE | ALT | ACCESS | MIN_RNR | MIG),
        (SQD, RTS) => (0, CUR_STATE | ALT | ACCESS | MIG),
        (SQD, SQD) if ud => (0, PKEY | QKEY),
        (SQD, SQD) if rc => (
            0,
            AV | ALT
                | ACCESS
                | PKEY
                | MIN_RNR
                | MIG
                | TIMEOUT
                | RETRY
                | RNR_RETRY
                | RD_ATOMIC
                | DEST_RD_ATOMIC,
        ),
        (SQD, SQD) => (0, AV | ALT | ACCESS | PKEY | MIG),
        (SQE, RTS) if !rc => (0, CUR_STATE | QKEY | if conn { ACCESS } else { 0 }),
        _ => return None,
    })
}

/// Why a modify was refused; every case is `EINVAL` to the caller.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

fn check(ok: bool, why: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid(why()))
    }
}

/// fv0's port is RoCE (link layer Ethernet): every address vector, of an
/// address handle or of a connected QP's path, needs a GRH, since the GID
/// is the only address there is. A real RoCE device refuses one without
/// (EINVAL).
pub fn roce_address(is_global: bool) -> bool {
    is_global
}

/// Checks `ibv_modify_qp(attr, mask)` on a QP of `kind` in state `cur` and
/// returns the state it moves to.
pub fn check_modify(kind: QpKind, cur: u32, attr: &QpAttr, mask: u32) -> Result<u32, Invalid> {
    let next = if mask & STATE != 0 {
        attr.qp_state
    } else {
        cur
    };
    check(next <= ERR, || format!("unknown qp_state {next}"))?;
    if mask & CUR_STATE != 0 {
        check(attr.cur_qp_state == cur, || {
            format!(
                "cur_qp_state {} does not match the QP's state {cur}",
                attr.cur_qp_state
            )
        })?;
    }
    let (req, opt) = transition(kind, cur, next).ok_or_else(|| {
        Invalid(format!(
            "no transition from state {cur} to {next} for {kind:?}"
        ))
    })?;
    let given = mask & !STATE;
    check(given & req == req, || {
        format!(
            "{cur}->{next} needs attribute mask bits {:#x}, got {mask:#x}",
            req & !given
        )
    })?;
    check(given & !(req | opt) == 0, || {
        format!(
            "attribute mask bits {:#x} are not allowed for {cur}->{next}",
            given & !(req | opt)
        )
    })?;
    if mask & PORT != 0 {
        check(attr.port_num == 1, || {
            format!("port_num {} (fv0 has port 1)", attr.port_num)
        })?;
    }
    if mask & PKEY != 0 {
        check(attr.pkey_index == 0, || {
            format!("pkey_index {} (table length 1)", attr.pkey_index)
        })?;
    }
    if mask & MTU != 0 {
        check(
            (IBV_MTU_256..=IBV_MTU_4096).contains(&attr.path_mtu),
            || format!("path_mtu {}", attr.path_mtu),
        )?;
    }
    if mask & AV != 0 {
        check(attr.ah_attr.port_num <= 1, || {
            format!("ah port_num {}", attr.ah_attr.port_num)
        })?;
        check(roce_address(attr.ah_attr.is_global), || {
            "an address vector without a GRH on a RoCE port".into()
        })?;
        check(
            !attr.ah_attr.is_global || attr.ah_attr.sgid_index == 0,
            || {
                format!(
                    "sgid_index {} (GID table length 1)",
                    attr.ah_attr.sgid_index
                )
            },
        )?;
    }
    if mask & DEST_QPN != 0 {
        check(attr.dest_qp_num <= MAX_QPN, || {
            format!("dest_qp_num {:#x}", attr.dest_qp_num)
        })?;
    }
    if mask & RD_ATOMIC != 0 {
        check(u32::from(attr.max_rd_atomic) <= MAX_QP_RD_ATOM, || {
            format!("max_rd_atomic {} > {MAX_QP_RD_ATOM}", attr.max_rd_atomic)
        })?;
    }
    if mask & DEST_RD_ATOMIC != 0 {
        check(u32::from(attr.max_dest_rd_atomic) <= MAX_QP_RD_ATOM, || {
            format!(
                "max_dest_rd_atomic {} > {MAX_QP_RD_ATOM}",
                attr.max_dest_rd_atomic
            )
        })?;
    }
    if mask & TIMEOUT != 0 {
        check(attr.timeout <= 31, || format!("timeout {}", attr.timeout))?;
    }
    if mask & RETRY != 0 {
        check(attr.retry_cnt <= 7, || {
            format!("retry_cnt {}", attr.retry_cnt)
        })?;
    }
    if mask & RNR_RETRY != 0 {
        check(attr.rnr_retry <= 7, || {
            format!("rnr_retry {}", attr.rnr_retry)
        })?;
    }
    if mask & MIN_RNR != 0 {
        check(attr.min_rnr_timer <= 31, || {
            format!("min_rnr_timer {}", attr.min_rnr_timer)
        })?;
    }
    if mask & (RQ_PSN) != 0 {
        check(attr.rq_psn <= 0xff_ffff, || {
            format!("rq_psn {:#x}", attr.rq_psn)
        })?;
    }
    if mask & (SQ_PSN) != 0 {
        check(attr.sq_psn <= 0xff_ffff, || {
            format!("sq_psn {:#x}", attr.sq_psn)
        })?;
    }
    if mask & ACCESS != 0 {
        let known = IBV_ACCESS_LOCAL_WRITE
            | IBV_ACCESS_REMOTE_WRITE
            | IBV_ACCESS_REMOTE_READ
            | IBV_ACCESS_REMOTE_ATOMIC;
        check(attr.qp_access_flags & !known == 0, || {
            format!("qp_access_flags {:#x}", attr.qp_access_flags)
        })?;
    }
    Ok(next)
}

/// Copies the attributes named in `mask` from `new` into `cur`.
pub fn apply(cur: &mut QpAttr, new: &QpAttr, mask: u32) {
    macro_rules! take {
        ($bit:expr, $($f:ident),+) => { if mask & $bit != 0 { $(cur.$f = new.$f;)+ } };
    }
    take!(ACCESS, qp_access_flags);
    take!(PKEY, pkey_index);
    take!(PORT, port_num);
    take!(QKEY, qkey);
    take!(AV, ah_attr);
    take!(MTU, path_mtu);
    take!(TIMEOUT, timeout);
    take!(RETRY, retry_cnt);
    take!(RNR_RETRY, rnr_retry);
    take!(RQ_PSN, rq_psn);
    take!(RD_ATOMIC, max_rd_atomic);
    take!(ALT, alt_ah_attr, alt_pkey_index, alt_port_num, alt_timeout);
    take!(MIN_RNR, min_rnr_timer);
    take!(SQ_PSN, sq_psn);
    take!(DEST_RD_ATOMIC, max_dest_rd_atomic);
    take!(MIG, path_mig_state);
    take!(DEST_QPN, dest_qp_num);
    take!(EN_SQD, en_sqd_async_notify);
}

/// Whether a QP in `state` accepts incoming requests as a responder (IB
/// spec: RTR and the states after it, until an error).
pub fn receives(state: u32) -> bool {
    matches!(state, RTR | RTS | SQD | SQE)
}

/// Whether a QP in `state` runs its send queue.
pub fn sends(state: u32) -> bool {
    matches!(state, RTS | SQD)
}

/// The RNR NAK timer values of the IB specification, in microseconds.
pub fn rnr_timer_us(code: u8) -> u64 {
    const TABLE: [u64; 32] = [
        655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920, 2560, 3840,
        5120, 7680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880, 163_840,
        245_760, 327_680, 491_520,
    ];
    TABLE[(code & 31) as usize]
}

/// The local ACK timeout, 4.096 us * 2^timeout (0 means infinite: None).
pub fn ack_timeout_us(timeout: u8) -> Option<u64> {
    if timeout == 0 {
        None
    } else {
        Some((4096u64 << timeout.min(31)) / 1000)
    }
}

/// How long a request may go unanswered before it fails with
/// RETRY_EXC_ERR: the ACK timeout, `retry_cnt` + 1 times (never, for
/// timeout 0).
pub fn retry_timeout(timeout: u8, retry_cnt: u8) -> Option<std::time::Duration> {
    ack_timeout_us(timeout)
        .map(|t| std::time::Duration::from_micros(t * (u64::from(retry_cnt) + 1)))
}

/// When a request that gets no answer from `now` on fails with
/// RETRY_EXC_ERR ([`retry_timeout`]).
pub fn retry_deadline(
    now: std::time::Instant,
    timeout: u8,
    retry_cnt: u8,
) -> Option<std::time::Instant> {
    retry_timeout(timeout, retry_cnt).map(|t| now + t)
}

/// When a request that meets receiver-not-ready fails with
/// RNR_RETRY_EXC_ERR: the responder's RNR timer, `rnr_retry` + 1 times
/// (never for rnr_retry 7, which means "retry forever").
pub fn rnr_deadline(
    now: std::time::Instant,
    rnr_retry: u8,
    responder_min_rnr_timer: u8,
) -> Option<std::time::Instant> {
    (rnr_retry < 7).then(|| {
        now + std::time::Duration::from_micros(
            rnr_timer_us(responder_min_rnr_timer) * (u64::from(rnr_retry) + 1),
        )
    })
}

/// Whether a request that met its `naks`-th RNR NAK fails with
/// RNR_RETRY_EXC_ERR: it may be retried `rnr_retry` times (7: forever).
pub fn rnr_retries_exhausted(rnr_retry: u8, naks: u32) -> bool {
    rnr_retry < 7 && naks > u32::from(rnr_retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtr_attr() -> QpAttr {
        QpAttr {
            qp_state: RTR,
            path_mtu: IBV_MTU_1024,
            dest_qp_num: 5,
            ah_attr: flowverbs_wire::control::AddressVector {
                is_global: true,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn roce_path_needs_a_grh() {
        let local = QpAttr {
            ah_attr: Default::default(),
            ..rtr_attr()
        };
        let uc_rtr = STATE | AV | MTU | DEST_QPN | IBV_QP_RQ_PSN;
        assert!(check_modify(QpKind::Rc, INIT, &local, 0x129181).is_err());
        assert!(check_modify(QpKind::Uc, INIT, &local, uc_rtr).is_err());
        assert_eq!(check_modify(QpKind::Uc, INIT, &rtr_attr(), uc_rtr), Ok(RTR));
    }

    #[test]
    fn states_that_send_and_receive() {
        for s in [RESET, INIT, RTR, RTS, SQD, SQE, ERR] {
            assert_eq!(receives(s), [RTR, RTS, SQD, SQE].contains(&s), "state {s}");
            assert_eq!(sends(s), [RTS, SQD].contains(&s), "state {s}");
        }
    }

    #[test]
    fn timers() {
        let now = std::time::Instant::now();
        assert_eq!(rnr_timer_us(0), 655_360);
        assert_eq!(rnr_timer_us(12), 640);
        assert_eq!(rnr_timer_us(31), 491_520);
        assert_eq!(ack_timeout_us(0), None);
        assert_eq!(ack_timeout_us(14), Some(67_108));
        assert_eq!(retry_deadline(now, 0, 7), None);
        assert_eq!(
            retry_deadline(now, 14, 7),
            Some(now + std::time::Duration::from_micros(67_108 * 8))
        );
        assert_eq!(
            rnr_deadline(now, 7, 12),
            None,
            "rnr_retry 7 retries forever"
        );
        assert_eq!(
            rnr_deadline(now, 2, 12),
            Some(now + std::time::Duration::from_micros(640 * 3))
        );
    }

    #[test]
    fn rnr_retries() {
        // (rnr_retry, NAKs so far, exhausted)
        let table = [
            (0, 1, true),
            (2, 1, false),
            (2, 2, false),
            (2, 3, true),
            (6, 7, true),
            (7, 1, false),
            (7, u32::MAX, false),
        ];
        for (rnr_retry, naks, exhausted) in table {
            assert_eq!(
                rnr_retries_exhausted(rnr_retry, naks),
                exhausted,
                "rnr_retry {rnr_retry}, {naks} NAKs"
            );
        }
    }

    #[test]
    fn perftest_masks_pass() {
        let init = QpAttr {
            qp_state: INIT,
            port_num: 1,
            ..Default::default()
        };
        assert_eq!(check_modify(QpKind::Rc, RESET, &init, 0x39), Ok(INIT));
        assert_eq!(
            check_modify(QpKind::Rc, INIT, &rtr_attr(), 0x129181),
            Ok(RTR)
        );
        let rts = QpAttr {
            qp_state: RTS,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            ..Default::default()
        };
        assert_eq!(check_modify(QpKind::Rc, RTR, &rts, 0x12e01), Ok(RTS));
    }

    #[test]
    fn bad_transitions_are_refused() {
        assert!(check_modify(QpKind::Rc, RESET, &rtr_attr(), 0x129181).is_err());
        // INIT -> RTR without DEST_QPN
        assert!(check_modify(QpKind::Rc, INIT, &rtr_attr(), 0x129181 & !DEST_QPN).is_err());
        // a bit that is not allowed
        assert!(check_modify(QpKind::Rc, INIT, &rtr_attr(), 0x129181 | SQ_PSN).is_err());
        let bad_port = QpAttr {
            qp_state: INIT,
            port_num: 2,
            ..Default::default()
        };
        assert!(check_modify(QpKind::Rc, RESET, &bad_port, 0x39).is_err());
        let err = QpAttr {
            qp_state: ERR,
            ..Default::default()
        };
        assert_eq!(check_modify(QpKind::Rc, RTS, &err, STATE), Ok(ERR));
    }
}
