//! The first thing a user notices: cachet answers like Redis.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use support::cachet::Cachet;
use support::raw::{Raw, words};
use support::redis::RedisServer;

#[test]
fn set_get_through_cachet() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET k hello")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET k")), b"$5\r\nhello\r\n");
    assert_eq!(c.call(b"PING\r\n"), b"+PONG\r\n");
    // The value really is in the upstream.
    let mut direct = Raw::connect(redis.addr());
    assert_eq!(direct.call(&words("GET k")), b"$5\r\nhello\r\n");
}
