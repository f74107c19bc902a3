//! Failing upstreams: clients get prompt errors (never a hang), and cachet recovers by
//! itself once Redis is back. Also graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use support::cachet::{Cachet, config_for};
use support::raw::{Raw, served_again, words};
use support::redis::RedisServer;

#[test]
fn killed_mid_pipeline_answers_every_command_then_recovers() {
    let mut redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");

    let n = 20_000;
    let mut pipeline = Vec::new();
    for i in 0..n {
        pipeline.extend_from_slice(&words(&format!("SET key:{i} {i}")));
    }
    c.send(&pipeline);
    // Let part of the pipeline through, then pull the plug.
    let first = c.frame();
    assert_eq!(first, b"+OK\r\n");
    redis.kill();
    let start = Instant::now();
    let (mut ok, mut errors) = (1, 0);
    for _ in 1..n {
        let r = c
            .try_frame(Duration::from_secs(5))
            .expect("every command is answered, none hangs");
        if r == b"+OK\r\n" {
            ok += 1;
        } else {
            assert!(
                r.starts_with(b"-ERR cachet: upstream"),
                "{:?}",
                String::from_utf8_lossy(&r)
            );
            errors += 1;
        }
    }
    assert!(errors > 0, "the kill must have hit the pipeline ({ok} ok)");
    assert!(start.elapsed() < Duration::from_secs(5));

    redis.restart();
    let took = served_again(&mut c, Duration::from_secs(5));
    assert!(took < Duration::from_secs(5));
    assert_eq!(c.call(&words("SET k again")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET k")), b"$5\r\nagain\r\n");
}

#[test]
fn down_at_start_fails_fast_then_serves() {
    let mut redis = RedisServer::start();
    redis.kill();
    let cachet = Cachet::start(&redis.url());
    let mut c = Raw::connect(cachet.addr);
    let start = Instant::now();
    let r = c.call(&words("GET k"));
    assert!(
        r.starts_with(b"-ERR cachet: upstream unavailable"),
        "{:?}",
        String::from_utf8_lossy(&r)
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "fails fast, not after a hang"
    );
    redis.restart();
    served_again(&mut c, Duration::from_secs(5));
    assert_eq!(c.call(&words("SET k 1")), b"+OK\r\n");
}

#[test]
fn stalled_upstream_times_out_then_recovers() {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.upstream.command_timeout = Duration::from_millis(300);
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    // DEBUG SLEEP stalls the whole server: the next command's reply is late.
    let mut sleeper = Raw::connect(redis.addr());
    sleeper.send(&words("DEBUG SLEEP 1.5"));
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    let r = c.call(&words("GET k"));
    let waited = start.elapsed();
    assert!(
        r.starts_with(b"-ERR cachet: upstream did not answer within 300ms"),
        "{:?}",
        String::from_utf8_lossy(&r)
    );
    assert!(
        waited < Duration::from_millis(1000),
        "answered after {waited:?}"
    );
    assert_eq!(sleeper.frame(), b"+OK\r\n");
    served_again(&mut c, Duration::from_secs(5));
    assert_eq!(c.call(&words("GET k")), b"$1\r\nv\r\n");
}

#[test]
fn blocked_client_gets_an_error_when_upstream_dies() {
    let mut redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let mut blocked = Raw::connect(cachet.addr);
    blocked.send(&words("BLPOP nothing 0"));
    // Make sure the BLPOP reached Redis before the kill.
    let mut direct = Raw::connect(redis.addr());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = direct.call(&words("INFO clients"));
        if String::from_utf8_lossy(&info).contains("blocked_clients:1") {
            break;
        }
        assert!(Instant::now() < deadline, "BLPOP never blocked upstream");
        std::thread::sleep(Duration::from_millis(10));
    }
    redis.kill();
    let r = blocked
        .try_frame(Duration::from_secs(3))
        .expect("the blocked client is answered");
    assert!(
        r.starts_with(b"-ERR cachet: upstream connection lost"),
        "{:?}",
        String::from_utf8_lossy(&r)
    );
    redis.restart();
    served_again(&mut blocked, Duration::from_secs(5));
}

#[test]
fn shutdown_lets_in_flight_commands_finish() {
    let redis = RedisServer::start();
    let mut cachet = Cachet::start(&redis.url());
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    // A slow command in flight when the shutdown begins.
    c.send(&words("DEBUG SLEEP 0.3"));
    c.send(&words("GET k"));
    std::thread::sleep(Duration::from_millis(50));
    let addr = cachet.addr;
    let stopper = std::thread::spawn(move || {
        cachet.stop();
    });
    assert_eq!(c.frame(), b"+OK\r\n");
    assert_eq!(c.frame(), b"$1\r\nv\r\n");
    assert!(
        c.closed_within(Duration::from_secs(3)),
        "connection closed after draining"
    );
    stopper.join().unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer accepting"
    );
}

#[test]
fn an_invalidation_of_unknown_fate_is_retried_until_it_lands() {
    let mut redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.upstream.command_timeout = Duration::from_millis(300);
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET k v0")), b"+OK\r\n");
    // Stall Redis, send a write (it reaches Redis's socket but not its event loop),
    // then kill Redis: nobody can tell whether the write and its invalidation ran.
    let mut sleeper = Raw::connect(redis.addr());
    sleeper.send(&words("DEBUG SLEEP 2"));
    std::thread::sleep(Duration::from_millis(50));
    let r = c.call(&words("SET k v1"));
    assert!(
        r.starts_with(b"-ERR cachet: upstream did not answer"),
        "{:?}",
        String::from_utf8_lossy(&r)
    );
    redis.kill();
    redis.restart();
    // cachet re-sends the invalidation once Redis is back: a subscriber sees it.
    let mut sub = Raw::connect(redis.addr());
    sub.call(&words("SUBSCRIBE cachet:invalidate"));
    let msg = sub
        .try_frame(Duration::from_secs(5))
        .expect("the invalidation is re-sent after the restart");
    assert!(
        msg.ends_with(b"$1\r\nk\r\n"),
        "{:?}",
        String::from_utf8_lossy(&msg)
    );
}

/// An upstream that moves (Sentinel names a new primary): a command queued the moment
/// after the connection is told to reconnect is written to the new upstream, never to
/// the old one. (An invalidation replayed after a failover is such a command: sent to
/// the old primary, which is still a primary for a while, it would be lost with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_queued_after_a_retarget_reaches_the_new_upstream() {
    use cachet::upstream::{Job, Settings, Target, Upstream};
    let servers = [RedisServer::start(), RedisServer::start()];
    let target = Target::new(servers[0].addr().to_string());
    let upstream = Upstream::new(Settings {
        address: target.clone(),
        username: None,
        password: None,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(5),
        shared_connections: 1,
        max_users: 4,
        preload: Vec::new(),
        tls: None,
        on_connect: None,
        node: None,
    });
    let conn = upstream.shared(upstream.own(0, 2), 0);
    let call = |data: Vec<u8>| {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        conn.send(Job {
            data: data.into(),
            frames: 1,
            reply: Some(tx),
            guard: None,
        });
        async move { rx.recv().await.unwrap().unwrap() }
    };
    assert_eq!(&call(words("PING")).await[..], b"+PONG\r\n");
    for i in 1..=40 {
        let now = &servers[i % 2];
        target.set(now.addr().to_string());
        upstream.retarget();
        let reply = call(words(&format!("SET moved:{i} x"))).await;
        assert_eq!(&reply[..], OK_REPLY, "round {i}");
        let (here, there) = (
            Raw::connect(now.addr()).call(&words(&format!("EXISTS moved:{i}"))),
            Raw::connect(servers[(i + 1) % 2].addr()).call(&words(&format!("EXISTS moved:{i}"))),
        );
        assert_eq!(
            (here.as_slice(), there.as_slice()),
            (&b":1\r\n"[..], &b":0\r\n"[..]),
            "round {i}"
        );
    }
}

const OK_REPLY: &[u8] = b"+OK\r\n";
