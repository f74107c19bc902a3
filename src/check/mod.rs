//! `cachet-check`: runs a cache-aside application's workload (Django's Redis cache
//! backend command sequences) against a real database and Redis, directly and through
//! cachet, and reports exactly how stale the cache got (DESIGN section 8).
//!
//! | concern | file |
//! |---|---|
//! | events of a run, cached value format | `history.rs` |
//! | per-key linearizability of reads | `linearizability.rs` |

pub mod history;
pub mod linearizability;
