//! Test support: real `redis-server` processes on free ports, cachet in-process, raw
//! RESP clients. Each test owns its servers; nothing depends on a fixed port.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

pub mod cachet;
pub mod certs;
pub mod cluster;
pub mod compare;
pub mod http;
pub mod process;
pub mod raw;
pub mod redis;
pub mod shim;
