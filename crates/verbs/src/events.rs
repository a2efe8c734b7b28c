//! Which affiliated asynchronous event a responder's error raises.

use flowverbs_sys::*;

/// The event a responder QP raises when it moves to the error state for a
/// request that failed with `requester_status` and no receive reports it
/// (IB spec 11.6.3): an access violation is a "local access violation work
/// queue error"; a malformed request (e.g. a misaligned atomic) an "invalid
/// request local work queue error"; anything else a "local work queue
/// catastrophic error".
pub fn responder_error_event(requester_status: u32) -> u32 {
    match requester_status {
        IBV_WC_REM_ACCESS_ERR => IBV_EVENT_QP_ACCESS_ERR,
        IBV_WC_REM_INV_REQ_ERR => IBV_EVENT_QP_REQ_ERR,
        _ => IBV_EVENT_QP_FATAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_by_status() {
        assert_eq!(
            responder_error_event(IBV_WC_REM_ACCESS_ERR),
            IBV_EVENT_QP_ACCESS_ERR
        );
        assert_eq!(
            responder_error_event(IBV_WC_REM_INV_REQ_ERR),
            IBV_EVENT_QP_REQ_ERR
        );
        assert_eq!(responder_error_event(IBV_WC_REM_OP_ERR), IBV_EVENT_QP_FATAL);
    }
}
