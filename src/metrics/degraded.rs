//! `graphgate_degraded{reason}`: 1 while a dependency this replica serves around is found away
//! (Meta unreachable, the shared limits backend away), 0 otherwise; every reason is exported at 0
//! from the start (`preset.rs`), so an alert sees the first time it turns 1.
//!
//! It owns setting the gauge. It must never decide what "away" means (the admin listener's
//! readiness does, and calls it) and never take a reason from outside the fixed set.

use super::labels::{DegradedLabels, DEGRADED_REASONS};
use super::Metrics;

impl Metrics {
    /// Sets `graphgate_degraded{reason}`; a reason outside [`DEGRADED_REASONS`] is ignored.
    pub fn set_degraded(&self, reason: &'static str, on: bool) {
        if DEGRADED_REASONS.contains(&reason) {
            self.degraded
                .get_or_create(&DegradedLabels { reason })
                .set(i64::from(on));
        }
    }
}
