//! Send-queue occupancy as applications see it.
//!
//! On a NIC a send-queue slot stays taken until the completion that reports
//! its work request (or a later one of the same QP, for unsignaled WRs) has
//! been polled; `ibv_post_send` returns `ENOMEM` when `cap.max_send_wr`
//! slots are taken. The router frees its ring slots as soon as it has run
//! a WR, which is earlier, so the provider keeps the application's view
//! here: `posted` is the producer index, `retired` advances when `poll_cq`
//! returns a send-side completion (`Cqe::sq_index`).

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct SendSlots {
    posted: AtomicU32,
    retired: AtomicU32,
}

impl SendSlots {
    /// Slots taken if the producer index were `producer`.
    pub fn in_use(&self, producer: u32) -> u32 {
        producer.wrapping_sub(self.retired.load(Ordering::Acquire))
    }

    /// The producer index after posting (called with the poster's lock).
    pub fn posted(&self, producer: u32) {
        self.posted.store(producer, Ordering::Release);
    }

    /// A send-side completion carrying `sq_index` was polled. An index that
    /// does not lie in (retired, posted] is stale (a completion from before
    /// a reset) and is ignored.
    pub fn retire(&self, sq_index: u32) {
        let retired = self.retired.load(Ordering::Acquire);
        let ahead = sq_index.wrapping_sub(retired);
        let outstanding = self.posted.load(Ordering::Acquire).wrapping_sub(retired);
        if ahead != 0 && ahead <= outstanding {
            self.retired.store(sq_index, Ordering::Release);
        }
    }

    /// The QP was reset: everything posted is gone.
    pub fn reset(&self, producer: u32) {
        self.posted.store(producer, Ordering::Release);
        self.retired.store(producer, Ordering::Release);
    }
}

/// The send queues of one context by QP number, for `poll_cq` (a CQ may
/// serve several QPs).
#[derive(Debug, Default)]
pub struct SendQueues(RwLock<FxHashMap<u32, Arc<SendSlots>>>);

impl SendQueues {
    pub fn insert(&self, qpn: u32, slots: Arc<SendSlots>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(qpn, slots);
    }
    pub fn remove(&self, qpn: u32) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&qpn);
    }
    /// Retires up to `sq_index` on QP `qpn` (unknown QPs: destroyed since).
    pub fn retire(&self, qpn: u32, sq_index: u32) {
        if let Some(s) = self.0.read().unwrap_or_else(|e| e.into_inner()).get(&qpn) {
            s.retire(sq_index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_free_on_retire_and_ignore_stale_indices() {
        let s = SendSlots::default();
        s.posted(8);
        assert_eq!(s.in_use(8), 8);
        s.retire(3);
        assert_eq!(s.in_use(8), 5);
        s.retire(2); // older: ignored
        assert_eq!(s.in_use(8), 5);
        s.retire(9); // beyond what was posted: ignored
        assert_eq!(s.in_use(8), 5);
        s.reset(8);
        assert_eq!(s.in_use(8), 0);
        s.retire(5); // from before the reset
        assert_eq!(s.in_use(8), 0);
        // Wrapping indices.
        s.reset(u32::MAX - 1);
        s.posted(2);
        s.retire(1);
        assert_eq!(s.in_use(2), 1);
    }
}
