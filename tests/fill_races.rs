//! Every way a stale fill used to get in, scripted step by step against a real
//! `redis-server`, with several cachets in front of it where the race needs them and
//! the fill on another pooled connection than the miss (docs/fill-protocol.md). Each
//! test ends by reading Redis directly: the stale value must not be there.
//!
//! (Each of these failed on the previous protocol: a lease per client connection, a
//! "recently leased" mark per cachet, `hold_off` checked when the fill arrives.)
//!
//! Every race runs twice: with clients that never log in, and with clients logged in
//! as an ACL user of their own against a Redis with `requirepass` (their commands then
//! run on that user's connections, and cachet's scripts check that user's rights), so
//! that authentication changes none of the guarantees. And every race that does not
//! cut the one upstream's connection runs a third time against a Redis Cluster of
//! three primaries with a replica each (the fill protocol's state lives in each key's
//! slot, so the same rules hold on whichever node serves it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::Duration;

use support::cachet::{Cachet, config_for};
use support::cluster::RedisCluster;
use support::raw::{Raw, words};
use support::redis::RedisServer;
use support::shim::{Fault, Shim};

const NIL: &[u8] = b"$-1\r\n";
const OK: &[u8] = b"+OK\r\n";
const HOLD_OFF: Duration = Duration::from_millis(300);
const LEASE: Duration = Duration::from_millis(600);
const WINDOW: Duration = Duration::from_secs(3);

/// Who the clients of a race are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clients {
    /// Clients that never log in; Redis has no password.
    Anonymous,
    /// Redis has `requirepass`; clients log in as the ACL user `app`.
    AclUser,
    /// Clients that never log in, in front of a Redis Cluster.
    OnACluster,
}

/// The upstream of a race: one Redis, or a cluster.
enum Upstream {
    One(RedisServer),
    Cluster(RedisCluster),
}

impl Upstream {
    fn url(&self) -> String {
        match self {
            Upstream::One(redis) => redis.url(),
            Upstream::Cluster(cluster) => cluster.url(),
        }
    }

    /// The Redis that serves `key`.
    fn serving(&self, key: &str) -> &RedisServer {
        match self {
            Upstream::One(redis) => redis,
            Upstream::Cluster(cluster) => cluster.primary_of(key),
        }
    }

    /// The one Redis (for the races that cut its connection).
    fn one(&self) -> &RedisServer {
        match self {
            Upstream::One(redis) => redis,
            Upstream::Cluster(_) => panic!("this race needs one Redis"),
        }
    }
}

thread_local! {
    static CLIENTS: std::cell::Cell<Clients> = const { std::cell::Cell::new(Clients::Anonymous) };
}

const ADMIN_PASSWORD: &str = "admin-pw";
const APP_LOGIN: &str = "AUTH app app-pw";

fn clients() -> Clients {
    CLIENTS.with(|c| c.get())
}

/// The Redis of a race: with a password and the user `app` for `Clients::AclUser`,
/// a cluster for `Clients::OnACluster`.
fn start_redis() -> Upstream {
    match clients() {
        Clients::Anonymous => Upstream::One(RedisServer::start()),
        Clients::AclUser => {
            let redis = RedisServer::start_with(&["--requirepass", ADMIN_PASSWORD]);
            let mut admin = admin(&redis);
            assert_eq!(
                admin.call(&words("ACL SETUSER app on >app-pw ~* &* +@all -@dangerous")),
                OK
            );
            Upstream::One(redis)
        }
        Clients::OnACluster => Upstream::Cluster(RedisCluster::start()),
    }
}

/// An upstream URL with cachet's own credentials (the admin's) when Redis has them.
fn with_admin(url: &str) -> String {
    match clients() {
        Clients::Anonymous | Clients::OnACluster => url.to_owned(),
        Clients::AclUser => url.replacen("://", &format!("://:{ADMIN_PASSWORD}@"), 1),
    }
}

/// A client of `cachet`, logged in as `app` when the race is run with an ACL user.
fn client(cachet: &Cachet) -> Raw {
    let mut c = Raw::connect(cachet.addr);
    if clients() == Clients::AclUser {
        assert_eq!(c.call(&words(APP_LOGIN)), OK);
        assert_eq!(c.call(&words("ACL WHOAMI")), b"$3\r\napp\r\n");
    }
    c
}

/// A connection straight to Redis, as its administrator.
fn admin(redis: &RedisServer) -> Raw {
    let mut c = Raw::connect(redis.addr());
    if clients() == Clients::AclUser {
        assert_eq!(c.call(&words(&format!("AUTH {ADMIN_PASSWORD}"))), OK);
    }
    c
}

fn config(url: &str) -> cachet::Config {
    let mut config = config_for(url);
    config.consistency.hold_off = HOLD_OFF;
    config.consistency.lease_ttl = LEASE;
    config.consistency.fill_window = WINDOW;
    config.consistency.coalesce_wait = Duration::from_millis(50);
    config
}

fn cachet(redis: &Upstream) -> Cachet {
    Cachet::start_with(config(&with_admin(&redis.url())))
}

fn get(c: &mut Raw, key: &str) -> Vec<u8> {
    c.call(&words(&format!("GET {key}")))
}

/// What Redis itself holds for `key` (a GET through cachet would record a miss).
fn upstream(redis: &Upstream, key: &str) -> Vec<u8> {
    admin(redis.serving(key)).call(&words(&format!("GET {key}")))
}

fn a_coalesced_misser_on_another_cachet_cannot_fill_after_an_invalidation() {
    let redis = start_redis();
    let (a, b) = (cachet(&redis), cachet(&redis));
    let mut r2 = client(&b);
    let mut r1 = client(&a);
    let mut writer = client(&b);
    // R2 misses through cachet B and takes the lease; R1 misses through cachet A,
    // waits for R2's fill, gets nil and reads the database (the old row).
    assert_eq!(get(&mut r2, ":1:item"), NIL);
    assert_eq!(get(&mut r1, ":1:item"), NIL);
    // The writer commits and deletes.
    assert_eq!(writer.call(&words("DEL :1:item")), b":0\r\n");
    // More than hold_off later, R1's fill of the old row arrives through A.
    std::thread::sleep(HOLD_OFF * 2);
    assert_eq!(r1.call(&words("SET :1:item old EX 600")), OK);
    assert_eq!(upstream(&redis, ":1:item"), NIL);
}

fn a_coalesced_fill_after_the_holders_fill_and_a_delete_is_refused() {
    let redis = start_redis();
    let a = cachet(&redis);
    let (mut holder, mut waiter, mut writer) = (client(&a), client(&a), client(&a));
    assert_eq!(get(&mut holder, ":1:item"), NIL);
    assert_eq!(get(&mut waiter, ":1:item"), NIL, "coalesced, then nil");
    assert_eq!(holder.call(&words("SET :1:item v0 EX 600")), OK);
    assert_eq!(writer.call(&words("DEL :1:item")), b":1\r\n");
    std::thread::sleep(HOLD_OFF * 2);
    assert_eq!(waiter.call(&words("SET :1:item v0 EX 600")), OK);
    assert_eq!(upstream(&redis, ":1:item"), NIL);
}

fn a_miss_answered_within_hold_off_is_never_filled() {
    let redis = start_redis();
    let a = cachet(&redis);
    let (mut reader, mut writer) = (client(&a), client(&a));
    assert_eq!(writer.call(&words("DEL :1:item")), b":0\r\n");
    // Answered at once (a pipelined command follows it), within hold_off...
    reader.send(&[words("GET :1:item"), words("PING")].concat());
    assert_eq!(reader.frame(), NIL);
    assert_eq!(reader.frame(), b"+PONG\r\n");
    // ...a second delete, then the slow fill after every tombstone has expired.
    assert_eq!(writer.call(&words("DEL :1:item")), b":0\r\n");
    std::thread::sleep(HOLD_OFF * 3);
    assert_eq!(reader.call(&words("SET :1:item old EX 600")), OK);
    assert_eq!(upstream(&redis, ":1:item"), NIL);
}

fn a_fill_after_its_lease_expired_is_still_judged_by_its_miss() {
    let redis = start_redis();
    let a = cachet(&redis);
    let (mut reader, mut writer) = (client(&a), client(&a));
    assert_eq!(get(&mut reader, ":1:item"), NIL);
    assert_eq!(writer.call(&words("DEL :1:item")), b":0\r\n");
    std::thread::sleep(LEASE + HOLD_OFF);
    assert_eq!(reader.call(&words("SET :1:item old EX 600")), OK);
    assert_eq!(upstream(&redis, ":1:item"), NIL);
}

fn a_cachet_restarted_between_a_miss_and_its_fill_still_refuses_it() {
    let redis = start_redis();
    let mut a = cachet(&redis);
    let mut reader = client(&a);
    assert_eq!(get(&mut reader, ":1:item"), NIL);
    a.stop();
    let restarted = cachet(&redis);
    let mut writer = client(&restarted);
    assert_eq!(writer.call(&words("DEL :1:item")), b":0\r\n");
    std::thread::sleep(HOLD_OFF * 2);
    let mut reader = client(&restarted);
    assert_eq!(reader.call(&words("SET :1:item old EX 600")), OK);
    assert_eq!(upstream(&redis, ":1:item"), NIL);
}

fn django_set_many_in_a_transaction_is_judged_like_a_set() {
    let redis = start_redis();
    let a = cachet(&redis);
    let (mut app, mut writer) = (client(&a), client(&a));
    // get_many misses both keys; a writer invalidates one of them.
    assert_eq!(
        app.call(&words("MGET :1:{s}a :1:{s}b")),
        b"*2\r\n$-1\r\n$-1\r\n"
    );
    assert_eq!(writer.call(&words("DEL :1:{s}b")), b":0\r\n");
    // set_many is redis-py's pipeline(): MULTI, MSET, EXPIRE each, EXEC. (The keys
    // share a hash tag: a cluster runs a transaction in one slot.)
    for line in [
        "MULTI",
        "MSET :1:{s}a fresh :1:{s}b stale",
        "EXPIRE :1:{s}a 60",
        "EXPIRE :1:{s}b 60",
    ] {
        let r = app.call(&words(line));
        assert!(r == OK || r == b"+QUEUED\r\n", "{line}: {r:?}");
    }
    // The replies are exactly Redis's (EXPIRE of the dropped key answers 0, as it
    // would had the key expired).
    assert_eq!(app.call(&words("EXEC")), b"*3\r\n+OK\r\n:1\r\n:0\r\n");
    assert_eq!(upstream(&redis, ":1:{s}a"), b"$5\r\nfresh\r\n");
    assert_eq!(upstream(&redis, ":1:{s}b"), NIL);
}

fn every_set_form_is_judged_and_other_writes_invalidate() {
    let redis = start_redis();
    let a = cachet(&redis);
    let (mut app, mut writer) = (client(&a), client(&a));
    let stale_after = |app: &mut Raw, writer: &mut Raw, key: &str| {
        assert_eq!(get(app, key), NIL);
        assert_eq!(writer.call(&words(&format!("DEL {key}"))), b":0\r\n");
    };
    // Each SET form, after its miss was overtaken by an invalidation, stores nothing
    // and answers what Redis answers when it sets (or, for NX, does not set).
    for (i, (cmd, reply)) in [
        ("SET {} old GET", NIL),
        ("SET {} old KEEPTTL", OK),
        ("SET {} old NX", NIL),
        ("SET {} old PXAT 99999999999999", OK),
        ("SETEX {} 100 old", OK),
        ("PSETEX {} 100000 old", OK),
        ("SETNX {} old", b":0\r\n"),
        ("GETSET {} old", NIL),
        ("MSET {} old", OK),
        ("MSETNX {} old", b":0\r\n"),
        ("MSET {} old plain:key x", OK),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!(":1:form{i}");
        stale_after(&mut app, &mut writer, &key);
        assert_eq!(app.call(&words(&cmd.replace("{}", &key))), reply, "{cmd}");
        assert_eq!(upstream(&redis, &key), NIL, "{cmd}");
    }
    // SET XX of a key refilled meanwhile by a fresh fill: refused, and since it may
    // be older than what the key holds, the key is invalidated.
    assert_eq!(get(&mut app, ":1:xx"), NIL);
    assert_eq!(writer.call(&words("SET :1:xx fresh")), OK);
    assert_eq!(app.call(&words("SET :1:xx old XX")), OK);
    assert_eq!(upstream(&redis, ":1:xx"), NIL);
    // APPEND, SETRANGE and INCR are writes: stored with their invalidation, which a
    // fill from before them cannot overtake.
    for (i, write) in ["APPEND {} x", "SETRANGE {} 0 x", "INCR {}"]
        .into_iter()
        .enumerate()
    {
        let key = format!(":1:w{i}");
        assert_eq!(get(&mut app, &key), NIL);
        writer.call(&words(&write.replace("{}", &key)));
        assert_ne!(upstream(&redis, &key), NIL, "{write} stored");
        std::thread::sleep(HOLD_OFF);
        assert_eq!(app.call(&words(&format!("SET {key} old"))), OK);
        assert_ne!(upstream(&redis, &key), b"$3\r\nold\r\n", "{write}");
    }
}

fn a_fill_on_a_third_pooled_connection_after_a_later_fill_is_refused() {
    let redis = start_redis();
    let a = cachet(&redis);
    let mut conns: Vec<Raw> = (0..3).map(|_| client(&a)).collect();
    let mut writer = client(&a);
    // Thread 1 misses on connection 0 and reads the old row.
    assert_eq!(get(&mut conns[0], ":1:item"), NIL);
    assert_eq!(writer.call(&words("DEL :1:item")), b":0\r\n");
    std::thread::sleep(HOLD_OFF * 2);
    // Thread 2 misses and fills on connection 1 (refused: thread 1's miss, older than
    // the delete, may still be filled).
    assert_eq!(get(&mut conns[1], ":1:item"), NIL);
    assert_eq!(conns[1].call(&words("SET :1:item new EX 600")), OK);
    // Thread 1's fill of the old row arrives on connection 2.
    assert_eq!(conns[2].call(&words("SET :1:item old EX 600")), OK);
    assert_ne!(upstream(&redis, ":1:item"), b"$3\r\nold\r\n");
}

/// A cachet whose connections to the one Redis pass through a shim that can stall
/// them, giving up on a command after 300 ms.
fn cachet_behind_a_shim(up: &Upstream) -> (Shim, Cachet) {
    let shim = Shim::start(up.one().addr());
    let mut config = config(&with_admin(&shim.url()));
    config.upstream.command_timeout = Duration::from_millis(300);
    (shim, Cachet::start_with(config))
}

/// How long a re-sent invalidation may take to land once the upstream is reachable
/// again: the connection attempts made while it was not back off to a second each, the
/// re-send's own attempts too, and a loaded CI machine runs thirty of these tests at
/// once. What the tests check is where the re-send leaves the key, not how fast.
const RESENT_WITHIN: Duration = Duration::from_secs(20);

fn an_invalidation_lost_on_a_broken_connection_is_re_sent_as_a_delete() {
    let up = start_redis();
    let redis = up.one();
    let (shim, a) = cachet_behind_a_shim(&up);
    let mut direct = admin(redis);
    assert_eq!(direct.call(&words("SET :1:item old")), OK);
    let mut writer = client(&a);
    assert_eq!(get(&mut writer, ":1:item"), b"$3\r\nold\r\n");
    // A first write while all is well (an ACL user's rights are checked with it).
    assert_eq!(writer.call(&words("DEL :1:other")), b":0\r\n");
    // The writer's delete never reaches Redis: its connection stalls and is dropped.
    shim.set(Fault::Stall {
        to_server: true,
        to_client: true,
    });
    let r = writer.call(&words("DEL :1:item"));
    assert!(r.starts_with(b"-ERR cachet: upstream"), "{r:?}");
    // (The shim drops what it held: the delete is lost.)
    shim.reset_all();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(upstream(&up, ":1:item"), b"$3\r\nold\r\n");
    // Once the upstream is reachable again, cachet's re-sent invalidation deletes it.
    shim.set(Fault::Pass);
    let deadline = std::time::Instant::now() + RESENT_WITHIN;
    while upstream(&up, ":1:item") != NIL {
        assert!(
            std::time::Instant::now() < deadline,
            "the invalidation was not re-sent"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A write of unknown fate whose re-sent invalidation lands after another client's
/// later write of the key leaves that write in place: a `cache.add` mutex taken, and
/// a counter incremented, through another cachet meanwhile (deleting either would lose
/// an acknowledged write: a second holder could take the mutex).
fn a_re_sent_invalidation_leaves_a_later_write_in_place() {
    let up = start_redis();
    let redis = up.one();
    let (shim, a) = cachet_behind_a_shim(&up);
    let b = cachet(&up);
    let mut direct = admin(redis);
    assert_eq!(direct.call(&words("SET :1:hits 5")), OK);
    let (mut one, mut two) = (client(&a), client(&b));
    assert_eq!(one.call(&words("DEL :1:other")), b":0\r\n");
    let mut sub = admin(redis);
    sub.call(&words("SUBSCRIBE cachet:invalidate"));
    for (lost, later, reply, key, kept) in [
        (
            "SET :1:lock one NX EX 30",
            "SET :1:lock two NX EX 30",
            OK,
            ":1:lock",
            "two",
        ),
        (
            "INCR :1:hits",
            "INCR :1:hits",
            &b":6\r\n"[..],
            ":1:hits",
            "6",
        ),
    ] {
        // The first client's write is lost on a stalled connection.
        shim.set(Fault::Stall {
            to_server: true,
            to_client: true,
        });
        let r = one.call(&words(lost));
        assert!(r.starts_with(b"-ERR cachet: upstream"), "{lost}: {r:?}");
        shim.reset_all();
        // Meanwhile the second client writes the key through its own cachet.
        assert_eq!(two.call(&words(later)), reply);
        let published = format!("${}\r\n{key}\r\n", key.len());
        let deadline = std::time::Instant::now() + RESENT_WITHIN;
        let mut wait_for_message = || loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let msg = sub.try_frame(left).expect("the invalidation is published");
            if msg.ends_with(published.as_bytes()) {
                break;
            }
        };
        // (The second client's own invalidation.)
        wait_for_message();
        // The first cachet's re-sent invalidation lands...
        shim.set(Fault::Pass);
        wait_for_message();
        // ...and leaves the later write in place.
        let want = format!("${}\r\n{kept}\r\n", kept.len());
        assert_eq!(upstream(&up, key), want.as_bytes(), "{lost}");
    }
    // The mutex is still the second client's.
    assert_eq!(one.call(&words("SET :1:lock one NX EX 30")), NIL);
}

fn a_refused_set_nx_never_claims_the_mutex() {
    let redis = start_redis();
    let (a, b) = (cachet(&redis), cachet(&redis));
    let (mut one, mut two) = (client(&a), client(&b));
    // A client checks the lock key (a miss), another releases it meanwhile...
    assert_eq!(get(&mut one, ":1:lock"), NIL);
    assert_eq!(two.call(&words("DEL :1:lock")), b":0\r\n");
    // ...the first one's cache.add is refused: answered nil, nothing set.
    assert_eq!(one.call(&words("SET :1:lock me NX EX 30")), NIL);
    assert_eq!(upstream(&redis, ":1:lock"), NIL);
    // An add no miss explains takes the lock; a second one is told it did not.
    std::thread::sleep(WINDOW);
    assert_eq!(two.call(&words("SET :1:lock two NX EX 30")), OK);
    assert_eq!(one.call(&words("SET :1:lock one NX EX 30")), NIL);
    assert_eq!(upstream(&redis, ":1:lock"), b"$3\r\ntwo\r\n");
}

/// Each race as a test with anonymous clients, as one with an ACL user, and (unless it
/// is marked `one_redis`) as one in front of a cluster.
macro_rules! races {
    ($($name:ident),* $(,)?; one_redis: $($one:ident),* $(,)?) => {
        mod anonymous_clients {
            $(#[test]
            fn $name() {
                super::CLIENTS.with(|c| c.set(super::Clients::Anonymous));
                super::$name();
            })*
            $(#[test]
            fn $one() {
                super::CLIENTS.with(|c| c.set(super::Clients::Anonymous));
                super::$one();
            })*
        }
        mod acl_user_clients {
            $(#[test]
            fn $name() {
                super::CLIENTS.with(|c| c.set(super::Clients::AclUser));
                super::$name();
            })*
            $(#[test]
            fn $one() {
                super::CLIENTS.with(|c| c.set(super::Clients::AclUser));
                super::$one();
            })*
        }
        mod on_a_cluster {
            $(#[test]
            fn $name() {
                super::CLIENTS.with(|c| c.set(super::Clients::OnACluster));
                super::$name();
            })*
        }
    };
}

races!(
    a_coalesced_misser_on_another_cachet_cannot_fill_after_an_invalidation,
    a_coalesced_fill_after_the_holders_fill_and_a_delete_is_refused,
    a_miss_answered_within_hold_off_is_never_filled,
    a_fill_after_its_lease_expired_is_still_judged_by_its_miss,
    a_cachet_restarted_between_a_miss_and_its_fill_still_refuses_it,
    django_set_many_in_a_transaction_is_judged_like_a_set,
    every_set_form_is_judged_and_other_writes_invalidate,
    a_fill_on_a_third_pooled_connection_after_a_later_fill_is_refused,
    a_refused_set_nx_never_claims_the_mutex;
    one_redis: an_invalidation_lost_on_a_broken_connection_is_re_sent_as_a_delete,
    a_re_sent_invalidation_leaves_a_later_write_in_place,
);
