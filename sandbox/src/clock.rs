//! The sandbox clock: real time plus an offset that only the admin API moves.
//!
//! Everything time-dependent in the simulated world (token inactivity, sync cycles, mailbox
//! provisioning, the deleted-items retention window) reads this clock, so a test can jump 90 days
//! ahead with one admin call instead of sleeping, while `steward demo` still sees time pass.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};

/// Real time shifted by an admin-controlled offset.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub(crate) fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }

    /// Moves the clock forward; negative values are refused by the admin API, not here, so that
    /// unit tests can build arbitrary situations.
    pub(crate) fn advance(&self, seconds: i64) {
        self.offset_ms
            .fetch_add(seconds.saturating_mul(1000), Ordering::SeqCst);
    }

    pub(crate) fn offset_seconds(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst) / 1000
    }

    pub(crate) fn reset(&self) {
        self.offset_ms.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_now_forward_and_reset_returns() {
        let clock = Clock::default();
        let before = clock.now();
        clock.advance(90 * 24 * 3600);
        let after = clock.now();
        assert!(after - before >= Duration::days(90));
        assert_eq!(clock.offset_seconds(), 90 * 24 * 3600);
        clock.reset();
        assert!(clock.now() - before < Duration::days(1));
    }
}
