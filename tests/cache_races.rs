//! The races of docs/design.md ("The problem"), each scripted with explicit
//! interleaving between two or more clients of one cachet, against a real
//! `redis-server`, in a `cache` keyspace (`:1:*`, Django's key format). The fill
//! protocol's rules are in docs/fill-protocol.md; `fill_races.rs` scripts the races
//! that need several cachets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use support::cachet::{Cachet, config_for};
use support::raw::{Raw, words};
use support::redis::RedisServer;

const NIL: &[u8] = b"$-1\r\n";
const OK: &[u8] = b"+OK\r\n";

/// The fill window of these tests: short, so that they can wait it out.
const WINDOW: Duration = Duration::from_millis(800);

fn start(hold_off_ms: u64, coalesce_ms: u64) -> (RedisServer, Cachet) {
    start_with(hold_off_ms, coalesce_ms, |_| {})
}

fn start_with(
    hold_off_ms: u64,
    coalesce_ms: u64,
    tune: impl FnOnce(&mut cachet::Config),
) -> (RedisServer, Cachet) {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.consistency.hold_off = Duration::from_millis(hold_off_ms);
    config.consistency.coalesce_wait = Duration::from_millis(coalesce_ms);
    config.consistency.lease_ttl = WINDOW / 2;
    config.consistency.fill_window = WINDOW;
    tune(&mut config);
    let cachet = Cachet::start_with(config);
    (redis, cachet)
}

fn get(c: &mut Raw, key: &str) -> Vec<u8> {
    c.call(&words(&format!("GET {key}")))
}

#[test]
fn fill_with_a_live_lease_is_stored() {
    let (_redis, cachet) = start(300, 50);
    let mut reader = Raw::connect(cachet.addr);
    assert_eq!(get(&mut reader, ":1:user:1"), NIL, "miss: lease granted");
    assert_eq!(reader.call(&words("SET :1:user:1 v1 EX 300")), OK);
    assert_eq!(get(&mut reader, ":1:user:1"), b"$2\r\nv1\r\n");
}

#[test]
fn slow_fill_after_an_invalidation_is_rejected() {
    let (redis, cachet) = start(300, 50);
    let mut reader = Raw::connect(cachet.addr);
    let mut writer = Raw::connect(cachet.addr);
    let mut direct = Raw::connect(redis.addr());
    // The reader misses and reads the database (old row)...
    assert_eq!(get(&mut reader, ":1:user:1"), NIL);
    // ...the writer commits the new row and deletes the key...
    assert_eq!(writer.call(&words("DEL :1:user:1")), b":0\r\n");
    // ...and the reader's slow fill of the old row lands afterwards.
    assert_eq!(
        reader.call(&words("SET :1:user:1 old EX 300")),
        OK,
        "answers as stored"
    );
    // (Checked on Redis directly: a GET through cachet would itself record a miss.)
    assert_eq!(
        direct.call(&words("EXISTS :1:user:1")),
        b":0\r\n",
        "the stale value was not stored"
    );
    // Past hold_off, a new miss is recorded; but the first miss may still be filled
    // (any SET may be its fill), so no SET is trusted as a fill until its window ends.
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(get(&mut reader, ":1:user:1"), NIL);
    assert_eq!(reader.call(&words("SET :1:user:1 new EX 300")), OK);
    assert_eq!(direct.call(&words("EXISTS :1:user:1")), b":0\r\n");
    // Once it has, the next miss fills normally.
    std::thread::sleep(WINDOW);
    assert_eq!(get(&mut reader, ":1:user:1"), NIL);
    assert_eq!(reader.call(&words("SET :1:user:1 new EX 300")), OK);
    assert_eq!(get(&mut writer, ":1:user:1"), b"$3\r\nnew\r\n");
}

#[test]
fn a_miss_within_hold_off_waits_for_it_to_end_and_then_fills() {
    let (redis, cachet) = start(300, 50);
    let mut writer = Raw::connect(cachet.addr);
    let mut reader = Raw::connect(cachet.addr);
    let mut direct = Raw::connect(redis.addr());
    // The writer deletes inside its database transaction, before COMMIT (which lands
    // within hold_off).
    assert_eq!(writer.call(&words("DEL :1:order:9")), b":0\r\n");
    // A reader that misses now is answered only once hold_off is over: its database
    // read then follows the commit, and its fill is stored.
    let started = std::time::Instant::now();
    assert_eq!(get(&mut reader, ":1:order:9"), NIL);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "waited {waited:?}");
    assert!(waited < Duration::from_millis(1000), "waited {waited:?}");
    assert_eq!(reader.call(&words("SET :1:order:9 committed EX 300")), OK);
    assert_eq!(
        direct.call(&words("GET :1:order:9")),
        b"$9\r\ncommitted\r\n"
    );
}

#[test]
fn a_miss_under_a_tombstone_that_cannot_wait_is_never_filled() {
    let (redis, cachet) = start(300, 50);
    let mut writer = Raw::connect(cachet.addr);
    let mut reader = Raw::connect(cachet.addr);
    let mut direct = Raw::connect(redis.addr());
    assert_eq!(writer.call(&words("DEL :1:order:9")), b":0\r\n");
    // A GET pipelined with a later command cannot wait (the later command has gone
    // upstream already): it is answered nil at once, from before the commit...
    reader.send(&[words("GET :1:order:9"), words("PING")].concat());
    assert_eq!(reader.frame(), NIL);
    assert_eq!(reader.frame(), b"+PONG\r\n");
    // ...so its fill is refused, even after the tombstone is gone.
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(
        reader.call(&words("SET :1:order:9 uncommitted-old EX 300")),
        OK
    );
    assert_eq!(direct.call(&words("EXISTS :1:order:9")), b":0\r\n");
}

#[test]
fn a_set_on_any_connection_is_judged_as_the_fill_of_an_outstanding_miss() {
    let (_redis, cachet) = start(300, 50);
    let mut a = Raw::connect(cachet.addr);
    let mut b = Raw::connect(cachet.addr);
    assert_eq!(get(&mut a, ":1:k"), NIL, "a's miss is recorded upstream");
    // b SETs: the fill of a's miss over another pooled connection, or a writer's
    // write-through. No invalidation can have overtaken it: stored, and b reads it.
    assert_eq!(b.call(&words("SET :1:k from-b EX 300")), OK);
    assert_eq!(get(&mut b, ":1:k"), b"$6\r\nfrom-b\r\n");
    // a's own fill now may be older than b's write: refused, and since the key holds
    // another value, the key is invalidated rather than left possibly newer than a.
    assert_eq!(a.call(&words("SET :1:k from-a EX 300")), OK);
    assert_eq!(get(&mut b, ":1:k"), NIL);
    // b misses again; its fill is refused too while a's miss may still be filled.
    assert_eq!(b.call(&words("SET :1:k x EX 300")), OK);
    assert_eq!(get(&mut a, ":1:k"), NIL);
    let info = b.call(&words("CACHET INFO"));
    let info = String::from_utf8_lossy(&info);
    assert!(info.contains("fills_stored:1\r\n"), "{info}");
    assert!(info.contains("fills_rejected:2\r\n"), "{info}");
    // Once the window of every earlier miss has passed, a miss fills normally.
    std::thread::sleep(WINDOW);
    assert_eq!(get(&mut a, ":1:k"), NIL);
    assert_eq!(a.call(&words("SET :1:k fresh EX 300")), OK);
    assert_eq!(get(&mut b, ":1:k"), b"$5\r\nfresh\r\n");
}

#[test]
fn write_throughs_are_stored_in_arrival_order_by_default() {
    let (_redis, cachet) = start(300, 50);
    let mut w1 = Raw::connect(cachet.addr);
    let mut w2 = Raw::connect(cachet.addr);
    // Two writers commit v1 then v2; their SETs arrive v2 then v1. No miss explains
    // them: they are writes, and each client reads its own.
    assert_eq!(w2.call(&words("SET :1:p v2 EX 300")), OK);
    assert_eq!(get(&mut w2, ":1:p"), b"$2\r\nv2\r\n");
    assert_eq!(w1.call(&words("SET :1:p v1 EX 300")), OK);
    assert_eq!(get(&mut w1, ":1:p"), b"$2\r\nv1\r\n");
}

#[test]
fn collapse_deletes_racing_write_throughs() {
    let (_redis, cachet) = start_with(300, 50, |c| {
        for rule in &mut c.keyspace {
            if rule.pattern == ":1:*" {
                rule.write_through = Some(cachet::config::WriteThrough::Collapse);
            }
        }
    });
    let mut w1 = Raw::connect(cachet.addr);
    let mut w2 = Raw::connect(cachet.addr);
    assert_eq!(w2.call(&words("SET :1:p v2 EX 300")), OK);
    assert_eq!(w1.call(&words("SET :1:p v1 EX 300")), OK);
    // The second write-through within the fill window collapsed into an invalidation:
    // the cache holds nothing rather than the possibly older v1.
    assert_eq!(get(&mut w1, ":1:p"), NIL);
    // A lone write-through later is stored.
    std::thread::sleep(WINDOW);
    assert_eq!(w1.call(&words("SET :1:p v3 EX 300")), OK);
    assert_eq!(get(&mut w2, ":1:p"), b"$2\r\nv3\r\n");
}

#[test]
fn herd_of_missers_makes_one_database_read() {
    let (_redis, cachet) = start(300, 2000);
    let clients = 100;
    let db_reads = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(clients));
    let addr = cachet.addr;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let db_reads = db_reads.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Raw::connect(addr);
                barrier.wait();
                let got = get(&mut c, ":1:hot");
                if got == NIL {
                    // Cache-aside: a miss reads the database, then fills.
                    db_reads.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    assert_eq!(c.call(&words("SET :1:hot from-db EX 300")), OK);
                    b"$7\r\nfrom-db\r\n".to_vec()
                } else {
                    got
                }
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), b"$7\r\nfrom-db\r\n");
    }
    assert_eq!(
        db_reads.load(Ordering::SeqCst),
        1,
        "one lease, one database read"
    );
}

#[test]
fn coalesced_missers_get_nil_when_no_fill_comes() {
    let (_redis, cachet) = start(300, 100);
    let mut holder = Raw::connect(cachet.addr);
    let mut other = Raw::connect(cachet.addr);
    assert_eq!(get(&mut holder, ":1:slow"), NIL);
    let start = std::time::Instant::now();
    assert_eq!(get(&mut other, ":1:slow"), NIL);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(90), "waited {waited:?}");
    assert!(waited < Duration::from_millis(1000), "waited {waited:?}");
}

#[test]
fn cache_replies_match_redis_for_hits_errors_and_resp3() {
    let (_redis, cachet) = start(300, 50);
    let mut c = Raw::connect(cachet.addr);
    let direct_redis = RedisServer::start();
    let mut d = Raw::connect(direct_redis.addr());
    for line in [
        "GET :1:a",
        "SET :1:a 1 EX 100",
        "GET :1:a",
        "LPUSH :1:l x",
        "GET :1:l",
        "SET :1:a",
        "SETEX :1:b 100 v",
        "GET :1:b",
        "HELLO 3",
        "GET :1:zz",
        "GET :1:b",
        "SET :1:b other NX",
        "SET :1:fresh v NX EX 100",
    ] {
        let through = c.call(&words(line));
        let direct = d.call(&words(line));
        if line.starts_with("HELLO") {
            continue;
        }
        assert_eq!(
            String::from_utf8_lossy(&through),
            String::from_utf8_lossy(&direct),
            "{line}"
        );
    }
}

#[test]
fn get_many_and_set_many_follow_the_same_lease_rules() {
    let (redis, cachet) = start(300, 50);
    let mut app = Raw::connect(cachet.addr);
    let mut other = Raw::connect(cachet.addr);
    let mut direct = Raw::connect(redis.addr());
    // Django's get_many: MGET; the misses get leases on this connection.
    assert_eq!(app.call(&words("SET :1:a cached EX 300")), OK);
    assert_eq!(
        app.call(&words("MGET :1:a :1:b :1:c")),
        b"*3\r\n$6\r\ncached\r\n$-1\r\n$-1\r\n"
    );
    // A writer invalidates :1:c while the app reads the database.
    assert_eq!(other.call(&words("DEL :1:c")), b":0\r\n");
    // Django's set_many: MSET (then EXPIRE). :1:b is a fill no invalidation overtook
    // and is stored; :1:c was invalidated after its miss, so its stale fill is dropped.
    assert_eq!(app.call(&words("MSET :1:b fresh :1:c stale")), OK);
    assert_eq!(direct.call(&words("GET :1:b")), b"$5\r\nfresh\r\n");
    assert_eq!(direct.call(&words("EXISTS :1:c")), b":0\r\n");
    // Another connection's MSET of a key this one missed is judged the same way (it
    // may be the fill, over another pooled connection): nothing overtook it, stored.
    assert_eq!(app.call(&words("MGET :1:d")), b"*1\r\n$-1\r\n");
    assert_eq!(other.call(&words("MSET :1:d from-other")), OK);
    assert_eq!(direct.call(&words("GET :1:d")), b"$10\r\nfrom-other\r\n");
    // Mixed keyspaces go the general way, answered exactly as Redis would.
    assert_eq!(
        app.call(&words("MGET :1:b plain")),
        b"*2\r\n$5\r\nfresh\r\n$-1\r\n"
    );
}

#[test]
fn a_pinned_client_follows_the_same_lease_rules() {
    let (redis, cachet) = start(300, 50);
    // CLIENT TRACKING (RESP3) pins the session to a dedicated connection.
    let mut tracking = Raw::connect(cachet.addr);
    tracking.call(&words("HELLO 3"));
    assert_eq!(tracking.call(&words("CLIENT TRACKING ON")), OK);
    let mut writer = Raw::connect(cachet.addr);
    let mut direct = Raw::connect(redis.addr());
    assert_eq!(get(&mut tracking, ":1:t"), b"_\r\n", "miss: recorded");
    assert_eq!(writer.call(&words("DEL :1:t")), b":0\r\n");
    assert_eq!(tracking.call(&words("SET :1:t stale EX 300")), OK);
    assert_eq!(
        direct.call(&words("EXISTS :1:t")),
        b":0\r\n",
        "stale fill rejected"
    );
    std::thread::sleep(WINDOW);
    assert_eq!(get(&mut tracking, ":1:t"), b"_\r\n");
    assert_eq!(tracking.call(&words("SET :1:t fresh EX 300")), OK);
    // The fill is stored; the tracking invalidation push may come before the reply.
    let mut reply = tracking.call(&words("GET :1:t"));
    while reply.starts_with(b">") {
        reply = tracking.frame();
    }
    assert_eq!(reply, b"$5\r\nfresh\r\n");
}

/// After `SCRIPT FLUSH` on the upstream, cachet's lease scripts answer `NOSCRIPT`;
/// cachet re-runs them with their body and the client sees the plain replies.
#[test]
fn lease_scripts_recover_from_a_script_flush() {
    let (redis, cachet) = start(300, 50);
    let mut c = Raw::connect(cachet.addr);
    let mut direct = Raw::connect(redis.addr());
    assert_eq!(direct.call(&words("SCRIPT FLUSH")), OK);
    assert_eq!(get(&mut c, ":1:f"), NIL, "miss through the lease script");
    assert_eq!(direct.call(&words("SCRIPT FLUSH")), OK);
    assert_eq!(c.call(&words("SET :1:f v EX 300")), OK, "fill");
    assert_eq!(direct.call(&words("GET :1:f")), b"$1\r\nv\r\n");
    assert_eq!(direct.call(&words("SCRIPT FLUSH")), OK);
    assert_eq!(get(&mut c, ":1:f"), b"$1\r\nv\r\n", "hit");
    assert_eq!(direct.call(&words("SCRIPT FLUSH")), OK);
    assert_eq!(
        c.call(&words("MGET :1:f :1:g")),
        b"*2\r\n$1\r\nv\r\n$-1\r\n"
    );
}
