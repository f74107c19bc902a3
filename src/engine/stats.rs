//! Counters of what the engine decided. They are declared with the rest of cachet's
//! counters (`metrics.rs`), where `/metrics` and `CACHET INFO` read them from the
//! same declaration; what is counted where is the engine's business.

use std::sync::atomic::Ordering;

pub use crate::metrics::EngineCounters as Stats;

use super::fill::Verdict;

impl Stats {
    pub fn invalidations(&self, n: u64) {
        self.invalidations_published.fetch_add(n, Ordering::Relaxed);
    }

    pub fn lock_expiry_added(&self) {
        self.lock_expiries_added.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lock_expiry_capped(&self) {
        self.lock_expiries_capped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lock_expiry_refused(&self) {
        self.lock_expiries_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what a judged `SET` came to.
    pub fn count_verdict(&self, v: Verdict) {
        let c = match v {
            Verdict::StoredWrite => &self.writes_stored,
            Verdict::StoredFill => &self.fills_stored,
            Verdict::Kept | Verdict::Deleted | Verdict::Dropped => &self.fills_rejected,
            Verdict::Invalidated => &self.writes_collapsed,
            Verdict::NotSet => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
