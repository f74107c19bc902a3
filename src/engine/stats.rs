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

/// Debug lines a second about the engine's refusals, at most.
const DECISIONS_PER_SECOND: u64 = 10;

/// A `debug` line for each thing the engine refused or changed (a fill dropped, deleted
/// or kept, a write collapsed, a lock's expiry capped or refused): at most
/// [`DECISIONS_PER_SECOND`] a second, the lines left out counted in the next one.
/// Shared by every generation of the engine (reloads).
#[derive(Debug, Default)]
pub struct Decisions {
    second: std::sync::atomic::AtomicU64,
    used: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
}

impl Decisions {
    pub fn log(&self, what: &str, key: &[u8]) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) >= DECISIONS_PER_SECOND {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let skipped = self.skipped.swap(0, Ordering::Relaxed);
        tracing::debug!(key = %String::from_utf8_lossy(key), skipped, "{what}");
    }
}

impl Verdict {
    /// What a refusal or change means, for the decision log; `None` for a `SET` stored
    /// or not set as Redis would.
    pub fn refusal(self) -> Option<&'static str> {
        Some(match self {
            Verdict::Kept => {
                "fill refused (an invalidation may have overtaken it); the key already holds this value"
            }
            Verdict::Deleted => {
                "fill refused (an invalidation may have overtaken it); the key deleted, it may be newer"
            }
            Verdict::Dropped => {
                "fill dropped: an invalidation may have overtaken it, or the upstream lost the state that would say"
            }
            Verdict::Invalidated => "write turned into an invalidation (write_through)",
            Verdict::StoredWrite | Verdict::StoredFill | Verdict::NotSet => return None,
        })
    }
}
