//! cachet's reserved keys (leases and tombstones under `__cachet:`) are out of a
//! client's reach on every path: no command reads or writes them, no listing or random
//! pick names them, and no message (client tracking, keyspace notifications) tells
//! about them. Each test first makes reserved keys exist in a real Redis, through
//! cachet's own `cache` keyspace (`:1:*` by default).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::Duration;

use support::cachet::{Cachet, config_for};
use support::raw::{Raw, cmd, words};
use support::redis::RedisServer;

const REFUSED: &[u8] = b"-ERR cachet: keys starting with '__cachet:' are reserved\r\n";
const QUIET: Duration = Duration::from_millis(300);

/// cachet whose leases and tombstones outlive the test.
fn cachet_for(redis: &RedisServer) -> Cachet {
    let mut config = config_for(&redis.url());
    config.consistency.lease_ttl = Duration::from_secs(60);
    config.consistency.fill_window = Duration::from_secs(60);
    config.consistency.hold_off = Duration::from_secs(60);
    Cachet::start_with(config)
}

/// Misses `n` `cache` keys through cachet: `n` state keys exist upstream afterwards.
fn make_leases(c: &mut Raw, n: usize) {
    for i in 0..n {
        assert_eq!(c.call(&words(&format!("GET :1:miss{i}"))), b"$-1\r\n");
    }
}

fn resp3(addr: std::net::SocketAddr) -> Raw {
    let mut c = Raw::connect(addr);
    c.call(&words("HELLO 3"));
    c
}

fn mentions_reserved(frame: &[u8]) -> bool {
    frame.windows(9).any(|w| w == b"__cachet:")
}

#[test]
fn randomkey_never_answers_a_reserved_key() {
    let redis = RedisServer::start();
    let cachet = cachet_for(&redis);
    let mut direct = Raw::connect(redis.addr());
    let mut c = Raw::connect(cachet.addr);
    let mut c3 = resp3(cachet.addr);
    let mut d3 = resp3(redis.addr());

    // An empty database: Redis's own nulls.
    assert_eq!(
        c.call(&words("RANDOMKEY")),
        direct.call(&words("RANDOMKEY"))
    );
    assert_eq!(c3.call(&words("RANDOMKEY")), d3.call(&words("RANDOMKEY")));
    assert_eq!(c3.call(&words("RANDOMKEY")), b"_\r\n");

    // Only reserved keys: Redis would name one; cachet answers as for an empty database.
    make_leases(&mut c, 20);
    assert!(mentions_reserved(&direct.call(&words("RANDOMKEY"))));
    for _ in 0..20 {
        assert_eq!(c.call(&words("RANDOMKEY")), b"$-1\r\n");
        assert_eq!(c3.call(&words("RANDOMKEY")), b"_\r\n");
    }

    // One visible key among 20 reserved ones is always the answer, also after the
    // script cache is flushed (NOSCRIPT recovery) and pipelined.
    direct.call(&words("SET visible 1"));
    for i in 0..40 {
        if i == 20 {
            assert_eq!(direct.call(&words("SCRIPT FLUSH")), b"+OK\r\n");
        }
        assert_eq!(c.call(&words("RANDOMKEY")), b"$7\r\nvisible\r\n");
    }
    c.send(&[words("RANDOMKEY"), words("RANDOMKEY"), words("RANDOMKEY")].concat());
    for _ in 0..3 {
        assert_eq!(c.frame(), b"$7\r\nvisible\r\n");
    }
    // Malformed: Redis's own error.
    assert_eq!(
        c.call(&words("RANDOMKEY x")),
        direct.call(&words("RANDOMKEY x"))
    );
}

/// Inside `MULTI`, and while `WATCH`ing, the replies of `KEYS`, `SCAN` and
/// `RANDOMKEY` come from Redis without cachet's translation: they must still hide
/// reserved keys.
#[test]
fn listings_in_transactions_and_watches_hide_reserved_keys() {
    let redis = RedisServer::start();
    let cachet = cachet_for(&redis);
    let mut direct = Raw::connect(redis.addr());
    let mut c = Raw::connect(cachet.addr);
    make_leases(&mut c, 5);
    direct.call(&words("SET visible 1"));

    let listings = [
        words("RANDOMKEY"),
        words("KEYS *"),
        words("SCAN 0 COUNT 1000"),
        words("SCAN 0 MATCH __cachet:* TYPE string COUNT 1000"),
    ];
    let expected: [&[u8]; 4] = [
        b"$7\r\nvisible\r\n",
        b"*1\r\n$7\r\nvisible\r\n",
        b"*2\r\n$1\r\n0\r\n*1\r\n$7\r\nvisible\r\n",
        b"*2\r\n$1\r\n0\r\n*0\r\n",
    ];
    let mut exec = b"*4\r\n".to_vec();
    exec.extend(expected.concat());

    for resp in [2, 3] {
        let mut c = if resp == 3 {
            resp3(cachet.addr)
        } else {
            Raw::connect(cachet.addr)
        };
        assert_eq!(c.call(&words("MULTI")), b"+OK\r\n");
        for l in &listings {
            assert_eq!(c.call(l), b"+QUEUED\r\n");
        }
        assert_eq!(c.call(&words("EXEC")), exec, "RESP{resp}");

        // Pipelined, on the shared connection.
        c.send(&listings.concat());
        for e in expected {
            assert_eq!(c.frame(), e, "RESP{resp}");
        }

        // While WATCHing (a dedicated connection, replies not translated).
        assert_eq!(c.call(&words("WATCH visible")), b"+OK\r\n");
        for (l, e) in listings.iter().zip(expected) {
            assert_eq!(c.call(l), e, "RESP{resp}");
        }
        assert_eq!(c.call(&words("UNWATCH")), b"+OK\r\n");
    }

    // Errors are Redis's own, inside the transaction too.
    assert_eq!(c.call(&words("MULTI")), b"+OK\r\n");
    assert_eq!(c.call(&words("SCAN x")), b"+QUEUED\r\n");
    assert_eq!(c.call(&words("EXEC")), b"*1\r\n-ERR invalid cursor\r\n");
}

#[test]
fn sort_patterns_that_can_reach_reserved_keys_are_refused() {
    let redis = RedisServer::start();
    let cachet = cachet_for(&redis);
    let mut direct = Raw::connect(redis.addr());
    let mut c = Raw::connect(cachet.addr);
    make_leases(&mut c, 1);
    let lease = "{:1:miss0}:s::1:miss0";
    assert_eq!(
        direct.call(&words(&format!("EXISTS __cachet:{lease}"))),
        b":1\r\n"
    );
    // A list whose element completes a pattern into a reserved key name.
    c.call(&words(&format!("RPUSH l {lease} x")));
    c.call(&words("RPUSH m :{:1:miss0}:s::1:miss0"));
    for refused in [
        "SORT l BY nosort GET __cachet:*",
        "SORT l BY __cachet:* ALPHA",
        "SORT_RO l BY nosort GET # GET __cachet:*->f",
        "SORT m BY nosort GET __cachet*",
        "SORT l BY nosort GET *",
        "SORT l ALPHA LIMIT 0 1 GET _* STORE dest",
    ] {
        assert_eq!(c.call(&words(refused)), REFUSED, "{refused}");
    }
    assert_eq!(c.call(&words("EXISTS dest")), b":0\r\n");
    // Patterns that cannot produce a reserved name run as sent.
    for allowed in [
        "SORT l BY nosort GET #",
        "SORT l ALPHA",
        "SORT l BY w_* GET # GET o_* ALPHA",
        "SORT_RO l BY nosort GET __cachet:fixed",
        "SORT l BY nosort GET x*->f",
    ] {
        assert_eq!(
            c.call(&words(allowed)),
            direct.call(&words(allowed)),
            "{allowed}"
        );
    }
}

/// Every frame `s` receives until it has been quiet for `QUIET`.
fn drain(s: &mut Raw) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Some(f) = s.try_frame(QUIET) {
        frames.push(f);
    }
    frames
}

#[test]
fn tracking_redirect_in_resp2_hides_reserved_keys() {
    let redis = RedisServer::start();
    let cachet = cachet_for(&redis);
    let mut target = Raw::connect(cachet.addr);
    // The id the target learns from CLIENT ID (its session's) names it.
    let id = target.call(&words("CLIENT ID"));
    let id = String::from_utf8_lossy(&id[1..id.len() - 2]).to_string();
    assert!(
        target
            .call(&words("SUBSCRIBE __redis__:invalidate"))
            .starts_with(b"*3\r\n$9\r\nsubscribe\r\n")
    );
    let mut tracker = Raw::connect(cachet.addr);
    assert_eq!(
        tracker.call(&words(&format!("CLIENT TRACKING on REDIRECT {id} BCAST"))),
        b"+OK\r\n"
    );
    let mut prefixed = Raw::connect(cachet.addr);
    assert_eq!(
        prefixed.call(&words(&format!(
            "CLIENT TRACKING on REDIRECT {id} BCAST PREFIX __cachet:"
        ))),
        b"+OK\r\n"
    );
    let mut writer = Raw::connect(cachet.addr);
    // A miss writes a lease key, a write of a cache key deletes it and writes a
    // tombstone: BCAST tracking reports all of them to the redirect target.
    make_leases(&mut writer, 1);
    assert_eq!(writer.call(&words("SET :1:miss0 filled")), b"+OK\r\n");
    assert_eq!(writer.call(&words("DEL :1:miss0")), b":1\r\n");
    assert_eq!(writer.call(&words("SET plain 1")), b"+OK\r\n");
    let frames = drain(&mut target);
    assert!(
        frames.iter().all(|f| !mentions_reserved(f)),
        "{:?}",
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(f))
            .collect::<Vec<_>>()
    );
    let told = |key: &str| {
        frames.iter().any(|f| {
            f.starts_with(b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n")
                && f.windows(key.len()).any(|w| w == key.as_bytes())
        })
    };
    assert!(
        told("\r\n:1:miss0\r\n") && told("\r\nplain\r\n"),
        "{frames:?}"
    );
}

#[test]
fn keyspace_notifications_about_reserved_keys_are_not_delivered() {
    let redis = RedisServer::start_with(&["--notify-keyspace-events", "KEA"]);
    let cachet = cachet_for(&redis);
    let mut all = Raw::connect(cachet.addr);
    all.call(&words("PSUBSCRIBE __key*__:*"));
    let mut exact = Raw::connect(cachet.addr);
    exact.call(&words(
        "SUBSCRIBE __keyspace@0__:__cachet:{:1:miss0}:s::1:miss0",
    ));
    let mut all3 = resp3(cachet.addr);
    all3.call(&words("PSUBSCRIBE __key*__:*"));
    let mut writer = Raw::connect(cachet.addr);
    make_leases(&mut writer, 1);
    assert_eq!(writer.call(&words("SET :1:miss0 filled")), b"+OK\r\n");
    assert_eq!(writer.call(&words("DEL :1:miss0")), b":1\r\n");
    assert_eq!(writer.call(&words("SET plain 1")), b"+OK\r\n");

    for (name, s) in [("RESP2", &mut all), ("RESP3", &mut all3)] {
        let frames = drain(s);
        let shown: Vec<_> = frames.iter().map(|f| String::from_utf8_lossy(f)).collect();
        assert!(
            frames.iter().all(|f| !mentions_reserved(f)),
            "{name}: {shown:?}"
        );
        // The data keys' own notifications still arrive (set, del, set plain).
        for wanted in [
            "__keyspace@0__::1:miss0",
            "__keyevent@0__:del",
            "__keyspace@0__:plain",
        ] {
            assert!(shown.iter().any(|f| f.contains(wanted)), "{name}: {wanted}");
        }
    }
    assert_eq!(drain(&mut exact), Vec::<Vec<u8>>::new());
}

/// Every command form that names keys, with a reserved key in the key position the
/// command table knows for it (movable keys included), is refused, on a shared
/// connection, pipelined, inside `MULTI`, and blocking; the reserved key is untouched.
#[test]
fn every_key_position_refuses_reserved_keys() {
    let redis = RedisServer::start();
    let cachet = cachet_for(&redis);
    let mut direct = Raw::connect(redis.addr());
    let mut c = Raw::connect(cachet.addr);
    make_leases(&mut c, 1);
    let r = "__cachet:{:1:miss0}:s::1:miss0";
    let before = direct.call(&words(&format!("HGETALL {r}")));
    assert!(before.starts_with(b"*12\r\n"), "the state key exists");
    let dump = direct.call(&words(&format!("DUMP {r}")));
    let payload = dump.split(|&b| b == b'\n').nth(1).unwrap();
    let payload = &payload[..payload.len() - 1];

    let forms = [
        "OBJECT ENCODING R",
        "OBJECT FREQ R",
        "OBJECT IDLETIME R",
        "OBJECT REFCOUNT R",
        "XINFO STREAM R",
        "XGROUP CREATE R g $ MKSTREAM",
        "HGETALL R",
        "GETRANGE R 0 -1",
        "SETRANGE R 0 x",
        "GETEX R PERSIST",
        "PFADD R a",
        "MEMORY USAGE R",
        "MEMORY USAGE R SAMPLES 0",
        "DEBUG OBJECT R",
        "DEBUG DIGEST-VALUE a R",
        "DUMP R",
        "MIGRATE 127.0.0.1 1 R 0 1000",
        "COPY a R",
        "COPY R a REPLACE",
        "RENAME R a",
        "RENAMENX a R",
        "MOVE R 1",
        "WATCH a R",
        "TYPE R",
        "TTL R",
        "PERSIST R",
        "EXPIRE R 1",
        "TOUCH a R",
        "EXISTS a R",
        "UNLINK R",
        "GETDEL R",
        "STRLEN R",
        "APPEND R x",
        "LCS a R",
        "XREAD STREAMS R 0",
        "XREAD COUNT 1 STREAMS a R 0 0",
        "XREADGROUP GROUP g c STREAMS R >",
        "GEORADIUS a 0 0 1 km STORE R",
        "GEORADIUS a 0 0 1 km STOREDIST R",
        "GEORADIUSBYMEMBER a m 1 km STORE R",
        "GEOSEARCHSTORE R a FROMLONLAT 0 0 BYRADIUS 1 km",
        "ZUNIONSTORE d 2 a R",
        "ZINTERSTORE R 1 a",
        "ZDIFFSTORE d 2 a R",
        "ZUNION 2 a R",
        "ZINTERCARD 2 a R",
        "SINTERCARD 2 a R LIMIT 1",
        "SUNIONSTORE d a R",
        "LMPOP 2 a R LEFT",
        "ZMPOP 2 a R MIN",
        "SORT R",
        "SORT a STORE R",
        "SORT_RO R",
        "BITOP AND d a R",
        "BITCOUNT R",
        "PFCOUNT a R",
        "PFMERGE d R",
        "SMOVE a R m",
        "LMOVE R a LEFT LEFT",
        "MSETNX a 1 R 2",
        "EVAL return(1) 1 R",
        "EVAL_RO return(1) 2 a R",
        "EVALSHA e0e1f9fabfc9d4800c877a703b823ac0578ff8db 1 R",
        "FCALL f 1 R",
        "FCALL_RO f 2 a R",
    ];
    let blocking = [
        "BLPOP R 0.1",
        "BRPOPLPUSH a R 0.1",
        "BLMPOP 0.1 2 a R LEFT",
        "BZMPOP 0.1 1 R MIN",
        "BZPOPMIN a R 0.1",
        "XREAD BLOCK 100 STREAMS R $",
    ];
    let refusals: Vec<Vec<u8>> = forms
        .iter()
        .chain(&blocking)
        .map(|f| {
            let args: Vec<&[u8]> = f
                .split(' ')
                .map(|w| if w == "R" { r.as_bytes() } else { w.as_bytes() })
                .collect();
            cmd(&args)
        })
        .collect();
    let mut all = refusals.clone();
    all.push(cmd(&[b"RESTORE", r.as_bytes(), b"0", payload, b"REPLACE"]));
    all.push(cmd(&[
        b"MIGRATE",
        b"127.0.0.1",
        b"1",
        b"",
        b"0",
        b"1000",
        b"KEYS",
        r.as_bytes(),
    ]));
    for f in &all {
        assert_eq!(c.call(f), REFUSED, "{}", String::from_utf8_lossy(f));
    }
    // Pipelined.
    c.send(&all.concat());
    for f in &all {
        assert_eq!(
            c.frame(),
            REFUSED,
            "pipelined {}",
            String::from_utf8_lossy(f)
        );
    }
    // Queued in a transaction.
    assert_eq!(c.call(&words("MULTI")), b"+OK\r\n");
    for f in &all {
        assert_eq!(
            c.call(f),
            REFUSED,
            "in MULTI {}",
            String::from_utf8_lossy(f)
        );
    }
    assert_eq!(c.call(&words("DISCARD")), b"+OK\r\n");
    assert_eq!(direct.call(&words(&format!("HGETALL {r}"))), before);
    // Every refusal is counted (cachet_reserved_key_refusals_total).
    let info = String::from_utf8_lossy(&c.call(&words("CACHET INFO"))).to_string();
    let want = format!("reserved_key_refusals:{}\r\n", 3 * all.len());
    assert!(info.contains(&want), "{want:?} in {info}");
}
