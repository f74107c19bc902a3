//! Connection-level settings: `idle_timeout`, `max_clients`, and cachet's own upstream
//! credentials taken from the URL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::Duration;

use cachet::config::UpstreamUrl;
use support::cachet::{Cachet, config_for};
use support::raw::{Raw, words};
use support::redis::RedisServer;

#[test]
fn idle_clients_are_closed_but_subscribers_and_blocked_clients_are_not() {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.listen.idle_timeout = Duration::from_millis(300);
    let cachet = Cachet::start_with(config);
    let mut idle = Raw::connect(cachet.addr);
    assert_eq!(idle.call(&words("PING")), b"+PONG\r\n");
    let mut subscriber = Raw::connect(cachet.addr);
    subscriber.call(&words("SUBSCRIBE news"));
    let mut blocked = Raw::connect(cachet.addr);
    blocked.send(&words("BLPOP queue 2"));
    let mut busy = Raw::connect(cachet.addr);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            busy.call(&words("PING")),
            b"+PONG\r\n",
            "activity keeps a client"
        );
    }
    assert!(
        idle.closed_within(Duration::from_secs(2)),
        "idle client closed"
    );
    let mut publisher = Raw::connect(redis.addr());
    publisher.call(&words("PUBLISH news hello"));
    assert!(
        subscriber.frame().ends_with(b"hello\r\n"),
        "subscriber kept"
    );
    assert_eq!(
        blocked.frame(),
        b"*-1\r\n",
        "blocked client kept until its timeout"
    );
}

#[test]
fn clients_past_max_clients_are_refused() {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.listen.max_clients = 2;
    let cachet = Cachet::start_with(config);
    let mut a = Raw::connect(cachet.addr);
    let mut b = Raw::connect(cachet.addr);
    assert_eq!(a.call(&words("PING")), b"+PONG\r\n");
    assert_eq!(b.call(&words("PING")), b"+PONG\r\n");
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.frame(), b"-ERR max number of clients reached\r\n");
    assert!(c.closed_within(Duration::from_secs(2)));
    drop(a);
    std::thread::sleep(Duration::from_millis(100));
    let mut d = Raw::connect(cachet.addr);
    assert_eq!(
        d.call(&words("PING")),
        b"+PONG\r\n",
        "a freed slot is usable again"
    );
}

#[test]
fn upstream_credentials_come_from_the_url_and_stay_cachets() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/0", redis.port());
    let mut config = config_for(&redis.url());
    config.upstream.url = UpstreamUrl::parse(&url).unwrap();
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    // cachet's credentials are its own: a client logs in as it would to Redis.
    assert_eq!(
        c.call(&words("SET k v")),
        b"-NOAUTH Authentication required.\r\n"
    );
    // A client's own AUTH is checked by the upstream and answered in its words.
    assert_eq!(
        c.call(&words("AUTH wrong")),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(c.call(&words("AUTH s3cret")), b"+OK\r\n");
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET k")), b"$1\r\nv\r\n");
    assert!(!format!("{:?}", UpstreamUrl::parse(&url).unwrap()).contains("s3cret"));
}

#[test]
fn a_subscriber_that_does_not_read_is_disconnected_past_its_output_limit() {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.limits.client_output_buffer = 1024 * 1024;
    let cachet = Cachet::start_with(config);
    let mut slow = Raw::connect(cachet.addr);
    slow.call(&words("SUBSCRIBE firehose"));
    // The subscriber stops reading; 32 MiB of messages are published.
    let mut publisher = Raw::connect(redis.addr());
    let payload = "x".repeat(1024 * 1024);
    for _ in 0..32 {
        publisher.call(&support::raw::cmd(&[
            b"PUBLISH",
            b"firehose",
            payload.as_bytes(),
        ]));
    }
    assert!(
        slow.closed_within(Duration::from_secs(10)),
        "slow subscriber disconnected"
    );
    // Everyone else is still served.
    let mut other = Raw::connect(cachet.addr);
    assert_eq!(other.call(&words("PING")), b"+PONG\r\n");
}

#[test]
fn a_credential_check_does_not_take_the_reply_of_a_pinned_command() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    // WATCH pins the session; AUTH is checked on a one-off connection; GET goes on the
    // pinned one. The replies must come back in the order the commands were sent.
    assert_eq!(c.call(&words("WATCH k")), b"+OK\r\n");
    c.send(&[words("AUTH nopass"), words("GET k")].concat());
    assert!(
        c.frame()
            .starts_with(b"-ERR AUTH <password> called without any password"),
        "AUTH answered first"
    );
    assert_eq!(c.frame(), b"$1\r\nv\r\n");
}

/// cachet holds back commands it has read while a client has many outstanding (the
/// window that bounds replies owed to a client that does not read): pipelines that
/// fill the first window exactly, or overrun it, must keep flowing, write after write.
#[test]
fn pipelines_at_and_past_the_outstanding_window_keep_flowing() {
    let redis = RedisServer::start();
    let cachet = Cachet::start_with(config_for(&redis.url()));
    let mut c = Raw::connect(cachet.addr);
    for depth in [16usize, 17, 1, 33, 16, 200] {
        for round in 0..20 {
            let pipeline: Vec<u8> = (0..depth)
                .flat_map(|i| words(&format!("SET k{i} {round}")))
                .collect();
            c.send(&pipeline);
            for i in 0..depth {
                assert_eq!(
                    c.frame(),
                    b"+OK\r\n",
                    "depth {depth}, round {round}, reply {i}"
                );
            }
        }
    }
    assert_eq!(c.call(&words("GET k15")), b"$2\r\n19\r\n");
}
