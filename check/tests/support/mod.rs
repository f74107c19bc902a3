//! The proxy's own test support (`tests/support/` at the top of the repository): a
//! real `redis-server` on a free port, cachet in-process.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

#[path = "../../../tests/support/cachet.rs"]
pub mod cachet;
#[path = "../../../tests/support/certs.rs"]
pub mod certs;
#[path = "../../../tests/support/redis.rs"]
pub mod redis;
