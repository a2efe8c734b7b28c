//! Warnings that a client can provoke at will (connection floods, refused
//! requests) are logged at most once a second each; the ones in between
//! are counted and reported with the next line. A flood cannot fill the
//! disk through the router's log.

use std::time::{Duration, Instant};

use log::warn;

const INTERVAL: Duration = Duration::from_secs(1);

/// One kind of warning.
#[derive(Debug, Default)]
pub struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    /// Logs `message()` unless this warning was logged less than a second
    /// ago (then only counts it). True if it was logged.
    pub fn warn(&mut self, now: Instant, message: impl FnOnce() -> String) -> bool {
        if self.last.is_some_and(|t| now.duration_since(t) < INTERVAL) {
            self.suppressed += 1;
            return false;
        }
        let m = message();
        match std::mem::take(&mut self.suppressed) {
            0 => warn!("{m}"),
            n => warn!("{m} ({n} more like it not logged)"),
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_a_second() {
        let mut t = Throttled::default();
        let t0 = Instant::now();
        assert!(t.warn(t0, || "a".into()));
        assert!(!t.warn(t0 + Duration::from_millis(10), || "b".into()));
        assert!(!t.warn(t0 + Duration::from_millis(999), || "c".into()));
        assert_eq!(t.suppressed, 2);
        assert!(t.warn(t0 + Duration::from_millis(1000), || "d".into()));
        assert_eq!(t.suppressed, 0);
    }
}
