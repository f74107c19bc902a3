//! Invalidate-plus-set (docs/design.md, G2): every write of a `strict` or `cache` key publishes
//! one invalidation message per key, atomically with the write; `passthrough` and
//! `lock` keys publish nothing; `lock` keys get an expiry; reserved keys are out of
//! reach.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::Duration;

use cachet::config::{KeyspaceMode, KeyspaceRule, OverMaxTtl};
use support::cachet::{Cachet, config_for};
use support::raw::{Raw, cmd, words};
use support::redis::RedisServer;

/// A subscriber of the invalidation channel, connected straight to Redis.
fn subscriber(redis: &RedisServer) -> Raw {
    let mut s = Raw::connect(redis.addr());
    s.call(&words("SUBSCRIBE cachet:invalidate"));
    s
}

/// The keys of every invalidation message that arrives within `within`.
fn invalidated(s: &mut Raw, within: Duration) -> Vec<String> {
    let mut keys = Vec::new();
    while let Some(frame) = s.try_frame(within) {
        let text = String::from_utf8_lossy(&frame).to_string();
        let parts: Vec<&str> = text.split("\r\n").collect();
        // *3 $7 message $17 cachet:invalidate $N key
        assert_eq!(parts[2], "message", "{text:?}");
        keys.push(parts[6].to_string());
    }
    keys
}

fn rule(pattern: &str, mode: KeyspaceMode) -> KeyspaceRule {
    KeyspaceRule {
        pattern: pattern.into(),
        mode,
        max_ttl: None,
        hold_off: None,
        write_through: None,
        over_max_ttl: None,
    }
}

#[test]
fn every_write_path_publishes_each_written_key() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let mut sub = subscriber(&redis);
    let mut c = Raw::connect(cachet.addr);
    let short = Duration::from_millis(200);

    assert_eq!(c.call(&words("SET a 1")), b"+OK\r\n");
    assert_eq!(invalidated(&mut sub, short), ["a"]);

    assert_eq!(c.call(&words("MSET b 1 c 2")), b"+OK\r\n");
    assert_eq!(invalidated(&mut sub, short), ["b", "c"]);

    assert_eq!(c.call(&words("DEL a b nothing")), b":2\r\n");
    assert_eq!(invalidated(&mut sub, short), ["a", "b", "nothing"]);

    // Reads publish nothing; the source of SORT … STORE is read, its destination written.
    c.call(&words("RPUSH list 3 1 2"));
    assert_eq!(invalidated(&mut sub, short), ["list"]);
    assert_eq!(
        c.call(&words("LRANGE list 0 -1")),
        b"*3\r\n$1\r\n3\r\n$1\r\n1\r\n$1\r\n2\r\n"
    );
    assert_eq!(c.call(&words("SORT list STORE sorted")), b":3\r\n");
    assert_eq!(invalidated(&mut sub, short), ["sorted"]);

    // Scripts: every declared key of a script that may write; none for EVAL_RO.
    assert_eq!(
        c.call(&cmd(&[
            b"EVAL",
            b"return redis.call('SET', KEYS[1], ARGV[1])",
            b"1",
            b"s",
            b"v"
        ])),
        b"+OK\r\n"
    );
    assert_eq!(invalidated(&mut sub, short), ["s"]);
    c.call(&cmd(&[
        b"EVAL_RO",
        b"return redis.call('GET', KEYS[1])",
        b"1",
        b"s",
    ]));
    assert!(invalidated(&mut sub, short).is_empty());

    // Inside the client's own transaction.
    c.send(&words("MULTI"));
    c.send(&words("SET t1 x"));
    c.send(&words("INCR t2"));
    c.send(&words("GET t1"));
    c.send(&words("EXEC"));
    assert_eq!(c.frame(), b"+OK\r\n");
    assert_eq!(c.frame(), b"+QUEUED\r\n");
    assert_eq!(c.frame(), b"+QUEUED\r\n");
    assert_eq!(c.frame(), b"+QUEUED\r\n");
    assert_eq!(c.frame(), b"*3\r\n+OK\r\n:1\r\n$1\r\nx\r\n");
    assert_eq!(invalidated(&mut sub, short), ["t1", "t2"]);

    // FLUSHDB: one message with an empty key, meaning "everything".
    assert_eq!(c.call(&words("FLUSHDB")), b"+OK\r\n");
    assert_eq!(invalidated(&mut sub, short), [""]);

    // A failing write still answers exactly as Redis would.
    c.call(&words("SET str x"));
    invalidated(&mut sub, short);
    assert_eq!(
        c.call(&words("LPUSH str y")),
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    );
    assert_eq!(
        c.call(&words("SET onlykey")),
        b"-ERR wrong number of arguments for 'set' command\r\n"
    );
}

#[test]
fn passthrough_and_lock_keys_publish_nothing_and_locks_expire() {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.keyspace = vec![
        rule("raw:*", KeyspaceMode::Passthrough),
        KeyspaceRule {
            max_ttl: Some(Duration::from_secs(30)),
            ..rule("lock:*", KeyspaceMode::Lock)
        },
        KeyspaceRule {
            max_ttl: Some(Duration::from_secs(30)),
            over_max_ttl: Some(OverMaxTtl::Cap),
            ..rule("capped:*", KeyspaceMode::Lock)
        },
        rule("*", KeyspaceMode::Strict),
    ];
    let cachet = Cachet::start_with(config);
    let mut sub = subscriber(&redis);
    let mut c = Raw::connect(cachet.addr);
    let mut direct = Raw::connect(redis.addr());
    let short = Duration::from_millis(200);

    assert_eq!(c.call(&words("SET raw:1 x")), b"+OK\r\n");
    assert_eq!(c.call(&words("SET lock:job me NX")), b"+OK\r\n");
    assert_eq!(c.call(&words("SETNX lock:other me")), b":1\r\n");
    assert_eq!(c.call(&words("SETNX lock:other you")), b":0\r\n");
    assert!(invalidated(&mut sub, short).is_empty());
    for key in ["lock:job", "lock:other"] {
        let ttl = direct.call(&words(&format!("PTTL {key}")));
        let ms: i64 = String::from_utf8_lossy(&ttl[1..ttl.len() - 2])
            .parse()
            .unwrap();
        assert!((29_000..=30_000).contains(&ms), "{key} has PTTL {ms}");
    }
    // A longer explicit expiry is refused (or, where the keyspace says so, capped); a
    // shorter one is kept; release passes through.
    assert_eq!(
        c.call(&words("SET lock:long me EX 3600")),
        b"-ERR cachet: a lock key may not expire in 3600000 ms; this lock keyspace's max_ttl is 30000 ms (over_max_ttl = \"refuse\")\r\n"
    );
    assert_eq!(direct.call(&words("EXISTS lock:long")), b":0\r\n");
    assert_eq!(c.call(&words("SET capped:long me EX 3600")), b"+OK\r\n");
    assert_eq!(direct.call(&words("TTL capped:long")), b":30\r\n");
    assert_eq!(c.call(&words("PERSIST capped:long")), b":1\r\n");
    assert_eq!(direct.call(&words("TTL capped:long")), b":30\r\n");
    // Inside a transaction too; there the refusal aborts it at EXEC, as a command
    // Redis cannot queue does; SETNX keeps its reply and gets its expiry after it.
    assert_eq!(c.call(&words("SET lock:tx me EX 10")), b"+OK\r\n");
    assert_eq!(c.call(&words("MULTI")), b"+OK\r\n");
    assert_eq!(c.call(&words("SET raw:tx 1")), b"+QUEUED\r\n");
    assert!(
        c.call(&words("PERSIST lock:tx"))
            .starts_with(b"-ERR cachet: a lock key must keep an expiry")
    );
    assert_eq!(
        c.call(&words("EXEC")),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(direct.call(&words("EXISTS raw:tx")), b":0\r\n");
    assert_eq!(c.call(&words("MULTI")), b"+OK\r\n");
    assert_eq!(c.call(&words("SETNX lock:txnx me")), b"+QUEUED\r\n");
    assert_eq!(c.call(&words("EXPIRE lock:tx 20")), b"+QUEUED\r\n");
    assert_eq!(c.call(&words("EXEC")), b"*2\r\n:1\r\n:1\r\n");
    assert_eq!(direct.call(&words("TTL lock:txnx")), b":30\r\n");
    assert_eq!(direct.call(&words("TTL lock:tx")), b":20\r\n");
    assert_eq!(c.call(&words("SET lock:short me PX 5000")), b"+OK\r\n");
    let ttl = direct.call(&words("PTTL lock:short"));
    assert!(ttl.starts_with(b":4") || ttl.starts_with(b":5"), "{ttl:?}");
    assert_eq!(c.call(&words("DEL lock:short")), b":1\r\n");
    // Other keys stay strict.
    assert_eq!(c.call(&words("SET plain 1")), b"+OK\r\n");
    assert_eq!(invalidated(&mut sub, short), ["plain"]);
}

#[test]
fn reserved_keys_are_out_of_reach() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let mut c = Raw::connect(cachet.addr);
    let mut direct = Raw::connect(redis.addr());
    direct.call(&words("SET __cachet:{x}:lease:x token"));
    let refused = b"-ERR cachet: keys starting with '__cachet:' are reserved\r\n";
    assert_eq!(c.call(&words("GET __cachet:{x}:lease:x")), refused);
    assert_eq!(c.call(&words("DEL __cachet:{x}:lease:x")), refused);
    assert_eq!(c.call(&words("MSET a 1 __cachet:b 2")), refused);
    assert_eq!(
        c.call(&words("GET a")),
        b"$-1\r\n",
        "a refused MSET wrote nothing"
    );
    c.call(&words("SET visible 1"));
    // The default configuration has a cache keyspace, so listings hide reserved keys.
    assert_eq!(c.call(&words("KEYS *")), b"*1\r\n$7\r\nvisible\r\n");
    assert_eq!(
        c.call(&words("SCAN 0 COUNT 100")),
        b"*2\r\n$1\r\n0\r\n*1\r\n$7\r\nvisible\r\n"
    );
}

#[test]
fn one_client_pipelining_writes_to_one_key_keeps_order_and_pace() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let mut c = Raw::connect(cachet.addr);
    let mut pipeline = Vec::new();
    for i in 0..1000 {
        pipeline.extend_from_slice(&words(&format!("SET hot {i}")));
    }
    pipeline.extend_from_slice(&words("GET hot"));
    c.send(&pipeline);
    for _ in 0..1000 {
        assert_eq!(c.frame(), b"+OK\r\n");
    }
    assert_eq!(c.frame(), b"$3\r\n999\r\n");
}

#[test]
fn blocking_and_watched_writes_are_invalidated_too() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let mut sub = subscriber(&redis);
    let short = Duration::from_millis(300);
    // A blocking write cannot share MULTI (it would not block): its invalidation
    // follows its reply.
    let mut blocked = Raw::connect(cachet.addr);
    blocked.send(&words("BLMOVE src dst LEFT RIGHT 5"));
    std::thread::sleep(Duration::from_millis(100));
    let mut pusher = Raw::connect(cachet.addr);
    assert_eq!(pusher.call(&words("RPUSH src item")), b":1\r\n");
    assert_eq!(blocked.frame(), b"$4\r\nitem\r\n");
    let mut got = invalidated(&mut sub, short);
    got.sort();
    assert_eq!(got, ["dst", "src", "src"]);

    // A write while WATCHing keeps the watch (cachet's own MULTI would end it).
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("WATCH w")), b"+OK\r\n");
    assert_eq!(c.call(&words("SET other 1")), b"+OK\r\n");
    assert_eq!(invalidated(&mut sub, short), ["other"]);
    assert_eq!(pusher.call(&words("SET w changed")), b"+OK\r\n");
    assert_eq!(c.call(&words("MULTI")), b"+OK\r\n");
    assert_eq!(c.call(&words("SET w mine")), b"+QUEUED\r\n");
    assert_eq!(
        c.call(&words("EXEC")),
        b"*-1\r\n",
        "the watch saw the other write"
    );
    assert_eq!(c.call(&words("GET w")), b"$7\r\nchanged\r\n");
}
