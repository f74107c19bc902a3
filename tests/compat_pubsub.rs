//! Pub/sub and client-side caching through cachet, compared with Redis directly:
//! confirmations, messages published by other clients, `PING` and other commands in
//! subscribe mode, leaving subscribe mode, RESP2 and RESP3, shard channels, and
//! `CLIENT TRACKING` invalidation pushes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::Duration;

use cachet::resp::reply::elements;
use support::compare::{Pair, Twin, hello_without_id, lines};
use support::raw::words;

/// Nothing more arrives: short, since every expected frame has been read by then.
const QUIET: Duration = Duration::from_millis(100);

/// `sub` receives `n` frames (messages, pushes), identical on both sides.
fn receive(sub: &mut Twin, n: usize, what: &str) {
    for _ in 0..n {
        sub.frame(what.as_bytes());
    }
}

/// The confirmations of an argument-less `UNSUBSCRIBE`/`SUNSUBSCRIBE` name the
/// channels in the order of the client's channel hash table, which Redis seeds at
/// random: compare which channels were confirmed as a set, and the remaining counts
/// (which decrease one by one) in order.
fn receive_unsubscribed(sub: &mut Twin, n: usize, what: &str) {
    let read = |raw: &mut support::raw::Raw| {
        let mut names = Vec::new();
        let mut counts = Vec::new();
        for _ in 0..n {
            let f = raw.frame();
            let el = elements(&f).expect("a confirmation");
            names.push([el[0], el[1]].concat());
            counts.push(el[2].to_vec());
        }
        names.sort();
        (names, counts)
    };
    let d = read(&mut sub.direct);
    let p = read(&mut sub.proxied);
    assert!(d == p, "{what}: direct {d:?}, cachet {p:?}");
}

#[test]
fn subscribe_family_in_resp2() {
    let pair = Pair::start();
    let mut sub = pair.twin();
    let mut publisher = pair.twin();
    sub.send(&words("SUBSCRIBE a b"));
    receive(&mut sub, 2, "SUBSCRIBE a b");
    publisher.call(&words("PUBLISH a hello"));
    receive(&mut sub, 1, "message on a");
    sub.send(&words("PSUBSCRIBE p* q?"));
    receive(&mut sub, 2, "PSUBSCRIBE p* q?");
    publisher.call(&words("PUBLISH pa x"));
    receive(&mut sub, 1, "pmessage on pa");
    publisher.call(&words("PUBLISH b y"));
    receive(&mut sub, 1, "message on b");
    publisher.call(&words("PUBLISH nobody z"));
    sub.call(&words("PING"));
    sub.call(&words("PING hi"));
    sub.call(&words("GET k"));
    sub.call(&words("SUBSCRIBE a"));
    sub.send(&words("UNSUBSCRIBE a nosuch"));
    receive(&mut sub, 2, "UNSUBSCRIBE a nosuch");
    publisher.call(&words("PUBLISH a gone"));
    sub.send(&words("PUNSUBSCRIBE"));
    receive(&mut sub, 2, "PUNSUBSCRIBE");
    sub.quiet(QUIET);
    // Still subscribed to b, so still in subscribe mode.
    sub.call(&words("GET k"));
    sub.call(&words("UNSUBSCRIBE"));
    // Out of subscribe mode: plain commands again.
    sub.script(&lines("SET k v\nGET k\nPING"));
    publisher.call(&words("PUBLISH b none"));
    sub.quiet(QUIET);
    // Unsubscribing with nothing subscribed still answers.
    sub.script(&lines("UNSUBSCRIBE\nPUNSUBSCRIBE\nUNSUBSCRIBE x\nGET k"));
}

#[test]
fn many_messages_arrive_in_order() {
    let pair = Pair::start();
    let mut sub = pair.twin();
    let mut publisher = pair.twin();
    sub.call(&words("SUBSCRIBE ch"));
    let mut p = Vec::new();
    for i in 0..500 {
        p.extend_from_slice(&words(&format!("PUBLISH ch message-{i}")));
    }
    publisher.send(&p);
    receive(&mut publisher, 500, "PUBLISH");
    receive(&mut sub, 500, "message");
    sub.call(&words("UNSUBSCRIBE ch"));
    sub.call(&words("GET k"));
}

#[test]
fn subscribe_family_in_resp3() {
    let pair = Pair::start();
    let mut sub = pair.twin();
    let mut publisher = pair.twin();
    sub.call_with(&words("HELLO 3"), hello_without_id);
    sub.send(&words("SUBSCRIBE a b"));
    receive(&mut sub, 2, "SUBSCRIBE a b");
    publisher.call(&words("PUBLISH a hello"));
    receive(&mut sub, 1, "message push on a");
    // RESP3 allows every command while subscribed.
    sub.script(&lines("SET k v\nGET k\nPING\nPING hi\nHGETALL missing"));
    sub.send(&words("PSUBSCRIBE p*"));
    receive(&mut sub, 1, "PSUBSCRIBE p*");
    publisher.call(&words("PUBLISH pa x"));
    receive(&mut sub, 1, "pmessage push on pa");
    sub.send(&words("UNSUBSCRIBE"));
    receive_unsubscribed(&mut sub, 2, "UNSUBSCRIBE");
    sub.send(&words("PUNSUBSCRIBE"));
    receive(&mut sub, 1, "PUNSUBSCRIBE");
    publisher.call(&words("PUBLISH a gone"));
    sub.quiet(QUIET);
    sub.script(&lines("GET k\nDEL k"));
    // Unsubscribing with nothing subscribed answers a push too.
    sub.script(&lines("UNSUBSCRIBE\nPUNSUBSCRIBE x\nSUNSUBSCRIBE"));
    sub.call_with(&words("HELLO 2"), hello_without_id);
    sub.call(&words("GET k"));
}

/// A message published while the subscriber's own command is in flight is delivered
/// between replies, as Redis delivers it.
#[test]
fn resp3_messages_interleave_with_replies() {
    let pair = Pair::start();
    let mut sub = pair.twin();
    let mut publisher = pair.twin();
    sub.call_with(&words("HELLO 3"), hello_without_id);
    sub.call(&words("SUBSCRIBE ch"));
    for i in 0..20 {
        publisher.call(&words(&format!("PUBLISH ch m{i}")));
        // The push was sent before the reply to this GET.
        sub.send(&words("GET k"));
        sub.frame(b"message push");
        sub.frame(b"GET k");
    }
}

#[test]
fn shard_channels_on_a_standalone_server() {
    let pair = Pair::start();
    let mut sub = pair.twin();
    let mut publisher = pair.twin();
    sub.send(&words("SSUBSCRIBE s1 s2"));
    receive(&mut sub, 2, "SSUBSCRIBE s1 s2");
    publisher.call(&words("SPUBLISH s1 hello"));
    receive(&mut sub, 1, "smessage on s1");
    publisher.call(&words("PUBLISH s1 not-a-shard-message"));
    sub.call(&words("PING"));
    sub.send(&words("SUNSUBSCRIBE"));
    receive_unsubscribed(&mut sub, 2, "SUNSUBSCRIBE");
    sub.script(&lines("SET k v\nGET k"));
    publisher.call(&words("SPUBLISH s1 gone"));
    sub.quiet(QUIET);
}

#[test]
fn client_tracking_invalidation_pushes_in_resp3() {
    let pair = Pair::start();
    let mut tracker = pair.twin();
    let mut writer = pair.twin();
    writer.script(&lines("SET k v1\nSET other x"));
    tracker.call_with(&words("HELLO 3"), hello_without_id);
    tracker.call(&words("CLIENT TRACKING ON"));
    tracker.script(&lines("GET k\nGET other"));
    writer.call(&words("SET k v2"));
    receive(&mut tracker, 1, "invalidation of k");
    tracker.quiet(QUIET);
    // Tracking holds for keys read again; writes to an unread key are silent.
    tracker.call(&words("GET k"));
    writer.call(&words("DEL k"));
    receive(&mut tracker, 1, "invalidation of k after DEL");
    writer.call(&words("SET unread 1"));
    tracker.quiet(QUIET);
    // A FLUSHDB invalidates everything (a null key list).
    writer.call(&words("FLUSHDB"));
    receive(&mut tracker, 1, "invalidation of everything");
    tracker.call(&words("CLIENT TRACKING OFF"));
    tracker.call(&words("GET k"));
    writer.call(&words("SET k v3"));
    tracker.quiet(QUIET);
    tracker.call(&words("GET k"));
}

#[test]
fn client_tracking_broadcast_with_prefix() {
    let pair = Pair::start();
    let mut tracker = pair.twin();
    let mut writer = pair.twin();
    tracker.call_with(&words("HELLO 3"), hello_without_id);
    tracker.call(&words("CLIENT TRACKING ON BCAST PREFIX user:"));
    writer.call(&words("SET user:1 a"));
    receive(&mut tracker, 1, "invalidation of user:1");
    writer.call(&words("SET session:1 b"));
    tracker.quiet(QUIET);
    tracker.call(&words("CLIENT TRACKING ON BCAST PREFIX user"));
    tracker.call(&words("CLIENT TRACKING OFF"));
    tracker.call(&words("GET user:1"));
}

/// In RESP2, tracking without a redirect is accepted; whatever Redis sends the client
/// after a write to a tracked key, cachet sends the same.
#[test]
fn client_tracking_in_resp2() {
    let pair = Pair::start();
    let mut tracker = pair.twin();
    let mut writer = pair.twin();
    tracker.script(&lines("CLIENT TRACKING ON\nGET k"));
    writer.call(&words("SET k v"));
    tracker.transcript(&lines("GET k\nCLIENT TRACKING OFF\nSET k w\nGET k"));
}

#[test]
fn client_tracking_optin_and_caching() {
    let pair = Pair::start();
    let mut tracker = pair.twin();
    let mut writer = pair.twin();
    tracker.call(&words("CLIENT CACHING yes"));
    tracker.call_with(&words("HELLO 3"), hello_without_id);
    tracker.call(&words("CLIENT TRACKING ON OPTIN"));
    tracker.script(&lines(
        "GET untracked\nCLIENT CACHING yes\nGET tracked\nCLIENT CACHING no",
    ));
    writer.script(&lines("SET untracked 1\nSET tracked 1"));
    receive(&mut tracker, 1, "invalidation of tracked only");
    tracker.quiet(QUIET);
}

/// A 1 MiB message reaches the subscriber whole.
#[test]
fn large_message() {
    let pair = Pair::start();
    let mut sub = pair.twin();
    let mut publisher = pair.twin();
    sub.call(&words("SUBSCRIBE big"));
    let payload = vec![b'm'; 1024 * 1024];
    publisher.call(&support::raw::cmd(&[b"PUBLISH", b"big", &payload]));
    receive(&mut sub, 1, "1 MiB message");
}

/// MONITOR lines carry timestamps and addresses that differ between any two servers;
/// what must hold is that the monitor sees other clients' commands.
#[test]
fn monitor_sees_commands_of_other_clients() {
    let redis = support::redis::RedisServer::start();
    let cachet = support::cachet::Cachet::start(&redis.url());
    let mut monitor = support::raw::Raw::connect(cachet.addr);
    let mut other = support::raw::Raw::connect(cachet.addr);
    assert_eq!(monitor.call(&words("MONITOR")), b"+OK\r\n");
    assert_eq!(other.call(&words("SET mk 1")), b"+OK\r\n");
    // cachet runs a write together with its invalidation (docs/design.md, G2), so the monitor
    // also shows the MULTI around it; upstream connections opening meanwhile (in any
    // order) ask ROLE, PING, INFO server and TIME and load cachet's scripts. The SET
    // must come right after the transaction opens, with nothing but connection set-up
    // before it.
    let setup: [&[u8]; 5] = [
        b"\"ROLE\"",
        b"\"PING\"",
        b"\"SCRIPT\"",
        b"\"INFO\" \"server\"",
        b"\"TIME\"",
    ];
    let mut seen = Vec::new();
    loop {
        let line = monitor.frame();
        assert!(line.starts_with(b"+"), "{}", String::from_utf8_lossy(&line));
        if line.ends_with(b"\"SET\" \"mk\" \"1\"\r\n") {
            break;
        }
        let is_setup = setup
            .iter()
            .any(|word| line.windows(word.len()).any(|w| w == *word));
        if !is_setup {
            seen.push(String::from_utf8_lossy(&line).into_owned());
        }
        assert!(seen.len() < 2, "no SET among {seen:?}");
    }
}

/// Subscribing, unsubscribing and plain commands in one pipeline, in RESP2: Redis
/// leaves subscribe mode with the last unsubscription, so what follows runs normally.
#[test]
fn subscribe_and_unsubscribe_within_one_pipeline() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.pipeline(&lines(
        "
        SET k v
        SUBSCRIBE a
        PING
        UNSUBSCRIBE a
        GET k
        PSUBSCRIBE p*
        GET k
        PUNSUBSCRIBE p*
        GET k
        ",
    ));
}

/// Shard subscriptions keep a RESP2 client in subscribe mode after it leaves its
/// ordinary channels, and the other way round.
#[test]
fn shard_and_ordinary_subscriptions_together() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.script(&lines(
        "
        SSUBSCRIBE s
        SUBSCRIBE c
        UNSUBSCRIBE
        GET k
        PING
        SUBSCRIBE c
        SUNSUBSCRIBE
        GET k
        UNSUBSCRIBE
        GET k
        ",
    ));
}

/// Keyspace notifications name the database the writer is in: a client of cachet in
/// database 3 produces `__keyspace@3__` events.
#[test]
fn keyspace_notifications() {
    let pair = Pair::start();
    let mut sub = pair.twin();
    let mut writer = pair.twin();
    writer.call(&words("CONFIG SET notify-keyspace-events KEA"));
    sub.send(&words("PSUBSCRIBE __key*@*__:*"));
    receive(&mut sub, 1, "PSUBSCRIBE");
    writer.call(&words("SET k v"));
    receive(&mut sub, 2, "keyspace and keyevent of SET in db 0");
    writer.script(&lines("SELECT 3\nLPUSH l x"));
    receive(&mut sub, 2, "keyspace and keyevent of LPUSH in db 3");
    sub.quiet(QUIET);
}

/// In RESP2 subscribe mode Redis refuses everything but the subscribe family, `PING`,
/// `QUIT` and `RESET`, including the commands cachet otherwise answers itself.
#[test]
fn session_commands_in_resp2_subscribe_mode() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.script(&lines(
        "
        CLIENT SETNAME before
        SUBSCRIBE ch
        CLIENT SETNAME x
        CLIENT GETNAME
        CLIENT ID
        CLIENT REPLY OFF
        HELLO 3
        HELLO
        SELECT 1
        AUTH pw
        PING
        UNSUBSCRIBE
        CLIENT GETNAME
        SELECT 1
        GET k
        ",
    ));
}

/// A tracking client that writes a key it read gets its own invalidation, in the same
/// place relative to the write's reply as from Redis.
#[test]
fn client_tracking_own_writes() {
    let pair = Pair::start();
    let mut tracker = pair.twin();
    tracker.call_with(&words("HELLO 3"), hello_without_id);
    tracker.script(&lines("CLIENT TRACKING ON\nSET k v1\nGET k"));
    let frames = tracker.transcript(&lines("SET k v2\nGET k\nDEL k\nGET k"));
    assert!(
        frames
            .iter()
            .any(|f| f.starts_with(b">2\r\n$10\r\ninvalidate"))
    );
    tracker.call(&words("CLIENT TRACKING OFF"));
    tracker.script(&lines("CLIENT TRACKING ON NOLOOP\nGET k\nSET k v3"));
    tracker.quiet(QUIET);
}
