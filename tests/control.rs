//! Commands Redis serves while it is busy, through cachet as directly: a looping
//! script killed by `SCRIPT KILL` from another client, `FUNCTION KILL`, `SHUTDOWN
//! NOSAVE`; other clients answered `-BUSY` as Redis answers them rather than queued
//! behind the script on a shared connection (docs/compatibility.md, "What behaves
//! differently through a proxy, and why").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use support::compare::{Pair, lines};
use support::raw::{cmd, words};

/// Scripts past 100 ms make Redis answer other clients `-BUSY`.
const BUSY_AFTER: &[&str] = &["--busy-reply-threshold", "100"];

#[test]
fn a_looping_script_is_killed_by_another_client() {
    let pair = Pair::start_with(BUSY_AFTER);
    let mut looping = pair.twin();
    looping.send(&cmd(&[b"EVAL", b"while true do end", b"0"]));
    std::thread::sleep(Duration::from_millis(300));
    let mut other = pair.twin();
    // Answered at once, as Redis answers it: not queued behind the script.
    other.script(&lines("GET k\nSET k v\nPING"));
    other.call(&words("SCRIPT KILL"));
    looping.frame(b"EVAL while true do end 0");
    other.script(&lines("SET k v\nGET k\nSCRIPT KILL"));
    looping.script(&lines("PING"));
}

#[test]
fn a_looping_function_is_killed_by_another_client() {
    let pair = Pair::start_with(BUSY_AFTER);
    let mut setup = pair.twin();
    setup.call(&cmd(&[
        b"FUNCTION",
        b"LOAD",
        b"#!lua name=spin\nredis.register_function('spin', function() while true do end end)",
    ]));
    let mut looping = pair.twin();
    looping.send(&words("FCALL spin 0"));
    std::thread::sleep(Duration::from_millis(300));
    let mut other = pair.twin();
    other.call(&words("GET k"));
    other.call_with(&words("FUNCTION STATS"), without_duration);
    other.call(&words("FUNCTION KILL"));
    looping.frame(b"FCALL spin 0");
    other.script(&lines("GET k\nFUNCTION KILL"));
}

#[test]
fn shutdown_nosave_during_a_busy_script_ends_both_connections() {
    let pair = Pair::start_with(BUSY_AFTER);
    let mut looping = pair.twin();
    looping.send(&cmd(&[b"EVAL", b"while true do end", b"0"]));
    std::thread::sleep(Duration::from_millis(300));
    let mut other = pair.twin();
    other.call(&words("GET k"));
    other.send(&words("SHUTDOWN NOSAVE"));
    other.closed(Duration::from_secs(5));
}

/// A client that makes Redis sleep delays another about as much through cachet as
/// directly (Redis itself is blocked either way).
#[test]
fn a_sleeping_client_delays_another_no_more_than_directly() {
    let pair = Pair::start();
    let mut sleeper = pair.twin();
    let mut other = pair.twin();
    let mut waited = |side: &str| {
        let (s, o) = match side {
            "direct" => (&mut sleeper.direct, &mut other.direct),
            _ => (&mut sleeper.proxied, &mut other.proxied),
        };
        s.send(&words("DEBUG SLEEP 0.5"));
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        assert_eq!(o.call(&words("PING")), b"+PONG\r\n");
        let took = start.elapsed();
        assert_eq!(s.frame(), b"+OK\r\n");
        took
    };
    let direct = waited("direct");
    let proxied = waited("proxied");
    assert!(
        proxied.as_secs_f64() < direct.as_secs_f64() * 1.5 + 0.05,
        "direct {direct:?}, through cachet {proxied:?}"
    );
}

/// `FUNCTION STATS` with the running script's duration zeroed (it differs by timing).
fn without_duration(reply: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(reply);
    match text.split_once("duration_ms\r\n:") {
        Some((before, after)) => {
            let rest = after.split_once("\r\n").map_or("", |(_, r)| r);
            format!("{before}duration_ms\r\n:0\r\n{rest}").into_bytes()
        }
        None => reply.to_vec(),
    }
}

/// `CLIENT UNBLOCK` names a client by the id it learnt from `CLIENT ID`: through cachet
/// that is a session's, and the session's blocking command is the one unblocked, with
/// Redis's replies, for each kind of blocking command.
#[test]
fn client_unblock_names_a_session() {
    let pair = Pair::start();
    for (blocking, mode) in [
        ("BLPOP list 0", "TIMEOUT"),
        ("BLPOP list 0", "ERROR"),
        ("BLMPOP 0 1 list LEFT", ""),
        ("XREAD BLOCK 0 STREAMS stream $", "ERROR"),
        ("WAIT 1 0", "TIMEOUT"),
    ] {
        let mut blocked = pair.twin();
        let direct_id = id_of(&mut blocked.direct);
        let proxied_id = id_of(&mut blocked.proxied);
        blocked.send(&words(blocking));
        std::thread::sleep(Duration::from_millis(200));
        let mut other = pair.twin();
        let unblock = |id: u64| words(format!("CLIENT UNBLOCK {id} {mode}").trim_end());
        other.direct.send(&unblock(direct_id));
        other.proxied.send(&unblock(proxied_id));
        other.frame(format!("CLIENT UNBLOCK <id> {mode}").as_bytes());
        blocked.frame(blocking.as_bytes());
        // Not blocked any more (and an id nobody has): 0.
        other.direct.send(&unblock(direct_id));
        other.proxied.send(&unblock(proxied_id));
        other.frame(b"CLIENT UNBLOCK again");
        other.call(&words("CLIENT UNBLOCK 999999"));
        other.call(&words("CLIENT UNBLOCK 1 NOPE"));
        other.call(&words("CLIENT UNBLOCK x"));
    }
}

/// `CLIENT KILL ID <id>` ends that session, as Redis ends that client.
#[test]
fn client_kill_id_ends_a_session() {
    let pair = Pair::start();
    let mut victim = pair.twin();
    let direct_id = id_of(&mut victim.direct);
    let proxied_id = id_of(&mut victim.proxied);
    let mut other = pair.twin();
    other
        .direct
        .send(&words(&format!("CLIENT KILL ID {direct_id}")));
    other
        .proxied
        .send(&words(&format!("CLIENT KILL ID {proxied_id}")));
    other.frame(b"CLIENT KILL ID <id>");
    victim.closed(Duration::from_secs(3));
    other.call(&words("CLIENT KILL ID 999999"));
}

fn id_of(c: &mut support::raw::Raw) -> u64 {
    let r = c.call(&words("CLIENT ID"));
    std::str::from_utf8(&r[1..r.len() - 2])
        .unwrap()
        .parse()
        .unwrap()
}

/// `CLIENT REPLY OFF` suppresses replies, not pushes: a subscription's confirmation and
/// its messages arrive as from Redis, in RESP2 and RESP3.
#[test]
fn reply_off_keeps_subscription_pushes() {
    let pair = Pair::start();
    for hello in ["HELLO 2", "HELLO 3"] {
        let mut c = pair.twin();
        c.call_with(&words(hello), support::compare::hello_without_id);
        c.send(&words("CLIENT REPLY OFF"));
        c.call(&words("SUBSCRIBE ch"));
        let mut publisher = pair.twin();
        publisher.call(&words("PUBLISH ch hi"));
        c.frame(b"message");
        c.call(&words("UNSUBSCRIBE ch"));
    }
}

/// `CLIENT TRACKING ON REDIRECT <id>` names the client that receives the invalidation
/// messages by the id it learnt from `CLIENT ID`: through cachet a session's, whose
/// subscribed connection then receives them as from Redis. An id nobody has gets
/// Redis's error.
#[test]
fn client_tracking_redirect_names_a_session() {
    let pair = Pair::start();
    let mut receiver = pair.twin();
    let direct_id = id_of(&mut receiver.direct);
    let proxied_id = id_of(&mut receiver.proxied);
    receiver.call(&words("SUBSCRIBE __redis__:invalidate"));
    let mut tracked = pair.twin();
    let redirect = |id: u64| words(&format!("CLIENT TRACKING ON REDIRECT {id}"));
    tracked.direct.send(&redirect(direct_id));
    tracked.proxied.send(&redirect(proxied_id));
    tracked.frame(b"CLIENT TRACKING ON REDIRECT <id>");
    tracked.call(&words("GET k"));
    let mut writer = pair.twin();
    writer.call(&words("SET k v"));
    // The invalidation of k reaches the receiver, not the tracked client.
    receiver.frame(b"invalidate k");
    tracked.call(&words("PING"));
    let mut other = pair.twin();
    other.call(&words("CLIENT TRACKING ON REDIRECT 999999"));
    other.call(&words("CLIENT TRACKING ON REDIRECT nope"));
}

/// A transaction whose `EXEC` runs a looping script: other clients get `-BUSY` as
/// directly, `SCRIPT KILL` from another client stops it, and the `EXEC` answers as
/// Redis does.
#[test]
fn a_transaction_running_a_looping_script_is_killed_by_another_client() {
    let pair = Pair::start_with(BUSY_AFTER);
    let mut looping = pair.twin();
    looping.call(&words("MULTI"));
    looping.call(&words("SET k before"));
    looping.call(&cmd(&[b"EVAL", b"while true do end", b"0"]));
    looping.send(&words("EXEC"));
    std::thread::sleep(Duration::from_millis(300));
    let mut other = pair.twin();
    other.script(&lines("GET k\nSET k v\nPING"));
    other.call(&words("SCRIPT KILL"));
    looping.frame(b"EXEC");
    other.script(&lines("GET k\nSCRIPT KILL"));
    looping.script(&lines("PING\nGET k"));
}
