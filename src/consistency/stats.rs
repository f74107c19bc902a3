//! Counters of what the engine did: invalidations published, expiries given to locks,
//! writes that waited for a key's ordering token. Kept in one place so the metrics
//! endpoint can expose them without the engine knowing about it.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub invalidations_published: AtomicU64,
    pub lock_expiries_added: AtomicU64,
    pub key_lock_waits: AtomicU64,
    pub key_lock_timeouts: AtomicU64,
    pub reserved_key_refusals: AtomicU64,
    pub leases_granted: AtomicU64,
    pub leases_voided: AtomicU64,
    pub fills_stored: AtomicU64,
    pub fills_rejected: AtomicU64,
    pub writes_collapsed: AtomicU64,
    /// Missers that found another client's lease and waited for its fill.
    pub coalesced: AtomicU64,
    pub coalesce_filled: AtomicU64,
    pub coalesce_timed_out: AtomicU64,
    pub noscript_recoveries: AtomicU64,
    /// Invalidations re-sent after their write's fate became unknown, once confirmed.
    pub invalidations_retried: AtomicU64,
}

impl Stats {
    pub fn invalidations(&self, n: u64) {
        self.invalidations_published.fetch_add(n, Ordering::Relaxed);
    }

    pub fn lock_expiry_added(&self) {
        self.lock_expiries_added.fetch_add(1, Ordering::Relaxed);
    }
}
