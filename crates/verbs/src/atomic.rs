//! Atomic operations: the requester's local buffer, the responder's
//! target, and the arithmetic.

use flowverbs_sys::*;

/// The requester's buffer for the original value: exactly one SGE of 8
/// bytes. Err: LOC_LEN_ERR.
pub fn check_local(num_segments: usize, len: u64) -> Result<(), u32> {
    if num_segments == 1 && len == 8 {
        Ok(())
    } else {
        Err(IBV_WC_LOC_LEN_ERR)
    }
}

/// The responder's target must be 8-byte aligned. Err: REM_INV_REQ_ERR.
pub fn check_target(remote_addr: u64) -> Result<(), u32> {
    if remote_addr.is_multiple_of(8) {
        Ok(())
    } else {
        Err(IBV_WC_REM_INV_REQ_ERR)
    }
}

/// The value an atomic `op` leaves in a target that holds `cur`
/// (compare-and-swap: `swap` if `cur == compare_add`; fetch-and-add:
/// `cur + compare_add`, wrapping). The requester gets `cur` back.
pub fn apply(op: u32, cur: u64, compare_add: u64, swap: u64) -> u64 {
    if op == IBV_WR_ATOMIC_CMP_AND_SWP {
        if cur == compare_add {
            swap
        } else {
            cur
        }
    } else {
        cur.wrapping_add(compare_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        assert_eq!(apply(IBV_WR_ATOMIC_CMP_AND_SWP, 5, 5, 9), 9);
        assert_eq!(apply(IBV_WR_ATOMIC_CMP_AND_SWP, 5, 4, 9), 5);
        assert_eq!(apply(IBV_WR_ATOMIC_FETCH_AND_ADD, 5, 4, 9), 9);
        assert_eq!(apply(IBV_WR_ATOMIC_FETCH_AND_ADD, u64::MAX, 2, 0), 1);
    }

    #[test]
    fn buffers_and_targets() {
        assert_eq!(check_local(1, 8), Ok(()));
        assert_eq!(check_local(1, 4), Err(IBV_WC_LOC_LEN_ERR));
        assert_eq!(check_local(2, 8), Err(IBV_WC_LOC_LEN_ERR));
        assert_eq!(check_local(0, 0), Err(IBV_WC_LOC_LEN_ERR));
        assert_eq!(check_target(0x1008), Ok(()));
        assert_eq!(check_target(0x1004), Err(IBV_WC_REM_INV_REQ_ERR));
    }
}
