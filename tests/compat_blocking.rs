//! Blocking commands through cachet: they time out and wake up as with Redis directly,
//! a blocked client never holds up other clients, and a client that hangs up while
//! blocked stops waiting (as Redis drops it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::cachet::{Cachet, config_for};
use support::compare::{Pair, Twin, hello_without_id, lines};
use support::raw::{Raw, words};
use support::redis::RedisServer;

/// Waits until the Redis at `addr` reports `n` clients blocked.
fn wait_blocked(addr: SocketAddr, n: usize) {
    let mut c = Raw::connect(addr);
    let want = format!("blocked_clients:{n}\r\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = c.call(&words("INFO clients"));
        if info.windows(want.len()).any(|w| w == want.as_bytes()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} never had {n} blocked clients: {}",
            String::from_utf8_lossy(&info)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends a blocking command on both sides and waits until both servers hold it
/// blocked, so that what follows really wakes it.
fn block(pair: &Pair, c: &mut Twin, command: &str, blocked: usize) {
    c.send(&words(command));
    wait_blocked(pair.direct.addr(), blocked);
    wait_blocked(pair.upstream.addr(), blocked);
}

#[test]
fn blpop_times_out_with_nil() {
    let pair = Pair::start();
    let mut c = pair.twin();
    let start = Instant::now();
    c.call(&words("BLPOP empty 1"));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "timed out after {waited:?}"
    );
    c.call(&words("BLPOP empty 0.05"));
    c.call_with(&words("HELLO 3"), hello_without_id);
    c.script(&lines(
        "
        BLPOP empty 0.05
        BZPOPMIN emptyz 0.05
        XREAD BLOCK 50 STREAMS nostream 0
        BLMOVE empty other LEFT RIGHT 0.05
        BLPOP empty -1
        BLPOP empty notanumber
        ",
    ));
}

#[test]
fn blpop_woken_by_another_client() {
    let pair = Pair::start();
    let mut a = pair.twin();
    let mut b = pair.twin();
    block(&pair, &mut a, "BLPOP l1 l2 0", 1);
    b.call(&words("RPUSH l2 x y"));
    a.frame(b"BLPOP l1 l2 0");
    a.script(&lines("LRANGE l2 0 -1\nBRPOP l2 0"));
    // Commands pipelined behind a blocked one wait for it, in order.
    a.send(&words("BLPOP l3 0"));
    a.send(&words("GET k"));
    wait_blocked(pair.direct.addr(), 1);
    wait_blocked(pair.upstream.addr(), 1);
    b.call(&words("LPUSH l3 z"));
    a.frame(b"BLPOP l3 0");
    a.frame(b"GET k");
}

#[test]
fn blmove_brpoplpush_blmpop() {
    let pair = Pair::start();
    let mut a = pair.twin();
    let mut b = pair.twin();
    block(&pair, &mut a, "BLMOVE src dst LEFT RIGHT 0", 1);
    b.call(&words("RPUSH src x y"));
    a.frame(b"BLMOVE");
    block(&pair, &mut a, "BRPOPLPUSH empty dst 0", 1);
    b.call(&words("RPUSH empty z"));
    a.frame(b"BRPOPLPUSH");
    block(&pair, &mut a, "BLMPOP 0 2 m1 m2 RIGHT COUNT 2", 1);
    b.call(&words("RPUSH m2 1 2 3"));
    a.frame(b"BLMPOP");
    a.script(&lines("LRANGE src 0 -1\nLRANGE dst 0 -1\nLRANGE m2 0 -1"));
}

#[test]
fn xread_block_woken_by_xadd() {
    let pair = Pair::start();
    let mut a = pair.twin();
    let mut b = pair.twin();
    b.call(&words("XADD st 1-1 f v"));
    block(&pair, &mut a, "XREAD BLOCK 0 STREAMS st $", 1);
    b.call(&words("XADD st 5-1 f w"));
    a.frame(b"XREAD BLOCK");
    a.call(&words("XREAD BLOCK 50 STREAMS st $"));
    b.call(&words("XGROUP CREATE st g $"));
    block(
        &pair,
        &mut a,
        "XREADGROUP GROUP g c BLOCK 0 STREAMS st >",
        1,
    );
    b.call(&words("XADD st 6-1 f x"));
    a.frame(b"XREADGROUP BLOCK");
    a.call(&words("XPENDING st g"));
}

#[test]
fn bzpopmin_woken_by_zadd_in_resp2_and_resp3() {
    let pair = Pair::start();
    let mut a = pair.twin();
    let mut b = pair.twin();
    block(&pair, &mut a, "BZPOPMIN z 0", 1);
    b.call(&words("ZADD z 1.5 a 2 b"));
    a.frame(b"BZPOPMIN");
    a.call_with(&words("HELLO 3"), hello_without_id);
    block(&pair, &mut a, "BZPOPMAX empty z2 0", 1);
    b.call(&words("ZADD z2 3 c 2.5 d"));
    a.frame(b"BZPOPMAX (RESP3)");
    a.call(&words("BZPOPMIN z 0"));
}

/// Two clients blocked at once hold no shared connection: a third client keeps its
/// usual latency, even with a single shared upstream connection.
#[test]
fn blocked_clients_do_not_stall_others() {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.upstream.shared_connections = 1;
    let cachet = Cachet::start_with(config);
    let mut a = Raw::connect(cachet.addr);
    let mut b = Raw::connect(cachet.addr);
    let mut c = Raw::connect(cachet.addr);
    a.send(&words("BLPOP jobs 0"));
    b.send(&words("BZPOPMIN zjobs 0"));
    wait_blocked(redis.addr(), 2);
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let t = Instant::now();
        assert_eq!(c.call(&words(&format!("SET k{i} {i}"))), b"+OK\r\n");
        assert_eq!(
            c.call(&words(&format!("GET k{i}"))),
            format!("${}\r\n{i}\r\n", i.to_string().len()).as_bytes()
        );
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(200),
        "a SET/GET took {slowest:?} while others were blocked"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(a.try_frame(Duration::ZERO), None, "a is still blocked");
    assert_eq!(b.try_frame(Duration::ZERO), None, "b is still blocked");
    assert_eq!(c.call(&words("RPUSH jobs j1")), b":1\r\n");
    assert_eq!(a.frame(), b"*2\r\n$4\r\njobs\r\n$2\r\nj1\r\n");
    assert_eq!(c.call(&words("ZADD zjobs 1 z1")), b":1\r\n");
    assert_eq!(b.frame(), b"*3\r\n$5\r\nzjobs\r\n$2\r\nz1\r\n$1\r\n1\r\n");
    // Both are back to normal service.
    assert_eq!(a.call(&words("GET k1")), b"$1\r\n1\r\n");
    assert_eq!(b.call(&words("GET k2")), b"$1\r\n2\r\n");
}

/// Blocking commands are exempt from `command_timeout`: they wait as long as they ask.
#[test]
fn blocking_commands_outlast_the_command_timeout() {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.upstream.command_timeout = Duration::from_millis(200);
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("BLPOP empty 0.5")), b"*-1\r\n");
    assert_eq!(c.call(&words("XREAD BLOCK 400 STREAMS st 0")), b"*-1\r\n");
    assert_eq!(c.call(&words("WAIT 1 300")), b":0\r\n");
    assert_eq!(c.call(&words("PING")), b"+PONG\r\n");
}

/// A client that hangs up while blocked is dropped by Redis, cancelling its command.
/// Through cachet the same must hold: an element pushed afterwards stays in the list
/// instead of being popped for a client that is gone.
#[test]
fn hanging_up_while_blocked_cancels_the_command() {
    let pair = Pair::start();
    let mut a = pair.twin();
    block(&pair, &mut a, "BLPOP l 0", 1);
    drop(a);
    wait_blocked(pair.direct.addr(), 0);
    wait_blocked(pair.upstream.addr(), 0);
    let mut b = pair.twin();
    b.script(&lines("RPUSH l x\nLLEN l\nLRANGE l 0 -1"));
}

/// A client blocked in another database is woken by a push to that database only.
#[test]
fn blocking_in_a_selected_database() {
    let pair = Pair::start();
    let mut a = pair.twin();
    let mut b = pair.twin();
    a.call(&words("SELECT 5"));
    block(&pair, &mut a, "BLPOP l 0", 1);
    b.call(&words("RPUSH l in-db-0"));
    a.quiet(Duration::from_millis(50));
    b.script(&lines("SELECT 5\nRPUSH l in-db-5"));
    a.frame(b"BLPOP l 0 in db 5");
    a.call(&words("LLEN l"));
}

/// One pipeline moving between shared connections of two databases, a blocking
/// command, a transaction and a subscription, answered in order.
#[test]
fn pipeline_across_every_kind_of_connection() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.pipeline(&lines(
        "
        SET a 1
        SELECT 1
        SET a 2
        BLPOP empty 0.01
        GET a
        SELECT 0
        MULTI
        GET a
        INCR a
        EXEC
        SUBSCRIBE x
        UNSUBSCRIBE x
        GET a
        WATCH a
        SELECT 1
        GET a
        UNWATCH
        GET a
        SELECT 0
        GET a
        ",
    ));
}
