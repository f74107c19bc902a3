//! Data-type commands through cachet answer byte for byte what Redis answers directly
//! (G1): every family of commands, errors, a large value, a long mixed pipeline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use support::compare::{Pair, compare, compare_pipelined, lines, sorted};
use support::raw::cmd;

#[test]
fn strings() {
    compare(&lines(
        "
        SET s hello
        GET s
        APPEND s _world
        STRLEN s
        SETRANGE s 6 Redis
        GET s
        GETRANGE s 0 4
        GETRANGE s -5 -1
        GETRANGE s 100 200
        SETRANGE padded 5 x
        GET padded
        INCR n
        INCRBY n 10
        DECRBY n 3
        DECR n
        INCRBYFLOAT f 10.5
        INCRBYFLOAT f 0.1
        INCRBYFLOAT f -5.0e3
        INCRBYFLOAT f abc
        INCR s
        SET big 9223372036854775807
        INCR big
        SET e 1 EX 100
        TTL e
        GETEX e PERSIST
        TTL e
        GETEX e EX 50
        TTL e
        GETEX missing
        GETDEL e
        GETDEL e
        EXISTS e
        MSET a 1 b 2 c 3
        MGET a b c missing
        MSETNX a 9 d 4
        SETNX a 9
        SET a 5 GET
        SET a 6 NX
        SET a 7 XX KEEPTTL
        GETSET a 8
        SET fresh 1 XX
        SET k1 ohmytext
        SET k2 mynewtext
        LCS k1 k2
        LCS k1 k2 LEN
        LCS k1 k2 IDX MINMATCHLEN 4 WITHMATCHLEN
        STRLEN missing
        get s
        GeT s
        SET e 1 EX -1
        SET e 1 EX notanumber
        SETEX e 10 v
        PSETEX e 100000 v
        OBJECT ENCODING n
        OBJECT ENCODING s
        ",
    ));
}

#[test]
fn hashes() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.script(&lines(
        "
        HSET h f1 v1 f2 v2 f3 3
        HGET h f1
        HGET h nope
        HMGET h f1 nope f3
        HGETALL h
        HINCRBY h f3 7
        HINCRBYFLOAT h f3 0.5
        HINCRBY h f1 1
        HKEYS h
        HVALS h
        HLEN h
        HEXISTS h f1
        HEXISTS h nope
        HDEL h f2 nope
        HSTRLEN h f1
        HSETNX h f1 x
        HSETNX h f9 x
        HMSET h a 1 b 2
        HGETALL h
        HSET h
        HGETALL missing
        OBJECT ENCODING h
        ",
    ));
    // Past 128 fields a hash is a hash table, listed in the order of a randomly seeded
    // hash function: compare as sorted.
    let mut fill = vec![b"HSET".to_vec(), b"large".to_vec()];
    for i in 0..200 {
        fill.push(format!("field{i}").into_bytes());
        fill.push(format!("value{i}").into_bytes());
    }
    let fill: Vec<&[u8]> = fill.iter().map(Vec::as_slice).collect();
    c.call(&cmd(&fill));
    c.call_with(&cmd(&[b"HGETALL", b"large"]), sorted);
    c.call_with(&cmd(&[b"HKEYS", b"large"]), sorted);
    c.script(&lines(
        "
        HLEN large
        HGET large field150
        OBJECT ENCODING large
        ",
    ));
}

#[test]
fn lists() {
    compare(&lines(
        "
        RPUSH l a b c d e
        LPUSH l z
        LRANGE l 0 -1
        LINDEX l 2
        LINDEX l 99
        LLEN l
        LPOP l
        RPOP l 2
        LINSERT l BEFORE c x
        LINSERT l AFTER nope y
        LSET l 0 first
        LSET l 99 nope
        LREM l 1 x
        LRANGE l 0 -1
        LPOS l c
        LPOS l nope
        RPUSH dup a b a c a
        LPOS dup a RANK 2 COUNT 0
        LTRIM dup 1 -2
        LRANGE dup 0 -1
        LMOVE l l2 LEFT RIGHT
        RPOPLPUSH l l2
        LRANGE l2 0 -1
        LMPOP 2 nolist l2 LEFT COUNT 5
        LMPOP 1 nolist RIGHT
        LPUSHX nolist a
        RPUSHX l2 a
        LPOP nolist
        LRANGE nolist 0 -1
        OBJECT ENCODING l
        ",
    ));
}

#[test]
fn sets() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.script(&lines(
        "
        SADD ints 3 1 2 10
        SMEMBERS ints
        SADD s1 a b c d
        SADD s1 a
        SADD s2 c d e
        SCARD s1
        SISMEMBER s1 a
        SISMEMBER s1 z
        SMISMEMBER s1 a z b
        SREM s1 d z
        SINTERCARD 2 s1 s2
        SINTERSTORE i s1 s2
        SUNIONSTORE u s1 s2
        SDIFFSTORE d s1 s2
        SCARD u
        SMOVE s1 s2 a
        SMOVE s1 s2 nope
        SCARD s2
        SMEMBERS missing
        OBJECT ENCODING ints
        ",
    ));
    // A set of strings is a hash table in Redis 7.0: its order is the hash seed's.
    for q in [
        "SMEMBERS s1",
        "SMEMBERS s2",
        "SINTER s1 s2",
        "SUNION s1 s2",
        "SDIFF s2 s1",
    ] {
        c.call_with(&support::raw::words(q), sorted);
    }
}

#[test]
fn sorted_sets() {
    compare(&lines(
        "
        ZADD z 1 a 2 b 3 c 4.5 d
        ZADD z 1 a
        ZADD z XX CH 5 a
        ZADD z NX 9 e
        ZADD z GT 1 a
        ZADD z INCR 1.5 b
        ZADD z nan a
        ZRANGE z 0 -1 WITHSCORES
        ZRANGE z 2 4 BYSCORE WITHSCORES
        ZRANGE z (1 +inf BYSCORE LIMIT 1 2
        ZRANGE z +inf -inf BYSCORE REV WITHSCORES
        ZRANGEBYSCORE z -inf +inf WITHSCORES
        ZREVRANGE z 0 1
        ZADD lex 0 a 0 b 0 c 0 d
        ZRANGE lex [b (d BYLEX
        ZRANGEBYLEX lex - +
        ZLEXCOUNT lex - [c
        ZSCORE z d
        ZSCORE z nope
        ZMSCORE z a nope d
        ZINCRBY z 1.5 a
        ZINCRBY z 0.1 a
        ZRANK z c
        ZREVRANK z c
        ZCOUNT z 2 5
        ZCARD z
        ZREM z e nope
        ZADD z2 10 a 20 x 0.5 c
        ZUNIONSTORE out 2 z z2 WEIGHTS 1 2 AGGREGATE MAX
        ZRANGE out 0 -1 WITHSCORES
        ZUNIONSTORE out2 2 z z2
        ZRANGE out2 0 -1 WITHSCORES
        ZINTERSTORE both 2 z z2 AGGREGATE SUM
        ZRANGE both 0 -1 WITHSCORES
        ZUNION 2 z z2 WITHSCORES
        ZINTER 2 z z2
        ZDIFF 2 z z2 WITHSCORES
        ZDIFFSTORE dz 2 z z2
        ZINTERCARD 2 z z2
        ZRANGESTORE top z 0 1
        ZRANGE top 0 -1 WITHSCORES
        ZPOPMIN z
        ZPOPMAX z 2
        ZMPOP 2 nope z MIN COUNT 1
        ZREMRANGEBYSCORE out 0 10
        ZREMRANGEBYRANK out2 0 0
        ZRANGE out2 0 -1 WITHSCORES
        ZRANDMEMBER missing
        OBJECT ENCODING z2
        ",
    ));
}

#[test]
fn streams_with_explicit_ids() {
    compare(&lines(
        "
        XADD st 1-1 f v
        XADD st 1-2 f2 v2
        XADD st 2-0 a b
        XADD st 1-5 late x
        XADD st 0-0 x y
        XLEN st
        XRANGE st - +
        XRANGE st 1-2 + COUNT 1
        XRANGE st (1-1 +
        XREVRANGE st + - COUNT 2
        XREAD COUNT 2 STREAMS st 0
        XREAD STREAMS st 1-2
        XREAD STREAMS st 2-0
        XREAD STREAMS st nope 0 0
        XGROUP CREATE st g 0
        XGROUP CREATE st g 0
        XGROUP CREATE nostream g 0
        XGROUP CREATE nostream g $ MKSTREAM
        XREADGROUP GROUP g c1 COUNT 2 STREAMS st >
        XREADGROUP GROUP g c2 STREAMS st >
        XREADGROUP GROUP g c1 STREAMS st 0
        XREADGROUP GROUP nogroup c1 STREAMS st >
        XPENDING st g
        XACK st g 1-1 9-9
        XPENDING st g
        XPENDING st g - + 10 c9
        XINFO STREAM st
        XINFO GROUPS st
        XGROUP CREATECONSUMER st g c3
        XGROUP DELCONSUMER st g c3
        XGROUP SETID st g 0
        XDEL st 1-2 9-9
        XTRIM st MAXLEN 1
        XRANGE st - +
        XINFO STREAM st
        XADD capped MAXLEN 2 1-1 a 1
        XADD capped MAXLEN 2 1-2 a 2
        XADD capped MAXLEN 2 1-3 a 3
        XRANGE capped - +
        XADD capped NOMKSTREAM 1-4 a 4
        XADD nomk NOMKSTREAM 1-1 a 1
        EXISTS nomk
        XGROUP DESTROY st g
        XINFO GROUPS st
        ",
    ));
}

#[test]
fn hyperloglog_and_bitmaps() {
    compare(&lines(
        "
        PFADD hll a b c d
        PFADD hll a
        PFCOUNT hll
        PFADD hll2 c d e f g
        PFCOUNT hll hll2
        PFMERGE merged hll hll2
        PFCOUNT merged
        GET hll
        SETBIT b 7 1
        SETBIT b 7 1
        SETBIT b 100 1
        SETBIT b 2 x
        GETBIT b 7
        GETBIT b 8
        GETBIT nope 0
        BITCOUNT b
        BITCOUNT b 0 0
        BITCOUNT b 0 7 BIT
        BITPOS b 1
        BITPOS b 0
        SET x1 foobar
        SET x2 abcdef
        BITOP AND and x1 x2
        BITOP OR or x1 x2
        BITOP XOR xor x1 x2
        BITOP NOT not x1
        GET and
        GET or
        GET xor
        GET not
        BITOP NOT bad x1 x2
        BITFIELD bf SET u8 0 255 GET u8 0 INCRBY u4 4 3
        BITFIELD bf OVERFLOW SAT INCRBY u4 4 100 OVERFLOW FAIL INCRBY u4 4 100 OVERFLOW WRAP INCRBY i8 0 200
        BITFIELD_RO bf GET u8 0 GET i4 4
        BITFIELD bf GET u99 0
        GET bf
        ",
    ));
}

#[test]
fn geo() {
    compare(&lines(
        "
        GEOADD geo 13.361389 38.115556 Palermo 15.087269 37.502669 Catania
        GEOADD geo 200 100 Nowhere
        GEODIST geo Palermo Catania
        GEODIST geo Palermo Catania km
        GEODIST geo Palermo Nope
        GEOPOS geo Palermo Nope Catania
        GEOHASH geo Palermo Catania
        GEOSEARCH geo FROMLONLAT 15 37 BYRADIUS 200 km ASC WITHCOORD WITHDIST WITHHASH
        GEOSEARCH geo FROMMEMBER Palermo BYBOX 400 400 km DESC COUNT 1
        GEOSEARCHSTORE near geo FROMLONLAT 15 37 BYRADIUS 100 km STOREDIST
        ZRANGE near 0 -1 WITHSCORES
        GEORADIUS geo 15 37 200 km WITHDIST ASC
        GEORADIUSBYMEMBER geo Palermo 300 km
        ",
    ));
}

#[test]
fn sort() {
    compare(&lines(
        "
        RPUSH ids 3 1 2
        MSET w_1 30 w_2 10 w_3 20
        MSET name_1 one name_2 two name_3 three
        HSET obj_1 n uno
        HSET obj_2 n dos
        SORT ids
        SORT ids DESC
        SORT ids LIMIT 0 2
        SORT ids BY w_*
        SORT ids BY w_* GET # GET name_*
        SORT ids BY nosort GET name_* GET obj_*->n
        SORT ids BY w_* STORE dst
        LRANGE dst 0 -1
        SORT ids BY w_* GET name_* STORE dst2
        LRANGE dst2 0 -1
        RPUSH words b a c
        SORT words
        SORT words ALPHA DESC
        SORT_RO ids BY w_* GET name_*
        SADD nums 5 3 9
        SORT nums
        ZADD zs 1 c 2 a
        SORT zs ALPHA
        ",
    ));
}

#[test]
fn expiry_rename_copy() {
    compare(&lines(
        "
        SET k v
        TTL k
        EXPIRE k 100
        TTL k
        EXPIRE k 200 NX
        EXPIRE k 200 XX
        EXPIRE k 50 GT
        TTL k
        PERSIST k
        PERSIST k
        TTL k
        TTL missing
        EXPIRE missing 10
        PEXPIRE k 100000
        TTL k
        SET gone v
        EXPIRE gone 0
        EXISTS gone
        TYPE k
        TYPE missing
        RENAME k k2
        GET k
        TTL k2
        RENAME missing x
        SET other o
        RENAMENX k2 other
        RENAMENX k2 k3
        COPY k3 copy
        COPY k3 copy
        COPY k3 copy REPLACE
        COPY k3 copy DB 1
        COPY k3 copy DB 99
        GET copy
        SELECT 1
        GET copy
        SELECT 0
        RPUSH lst a b
        COPY lst lst2
        LRANGE lst2 0 -1
        DEL k3 lst lst2 missing
        UNLINK copy
        TOUCH other missing
        EXISTS other other missing
        DBSIZE
        RANDOMKEY
        MOVE other 2
        MOVE other 2
        SELECT 2
        GET other
        SWAPDB 0 2
        GET other
        SELECT 0
        GET other
        FLUSHDB
        DBSIZE
        ",
    ));
}

#[test]
fn keys_listing_in_hash_order() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.script(&lines("MSET a 1 b 2 c 3 d 4 key:1 x key:2 y"));
    // The keyspace is a hash table seeded at random: compare as sorted.
    c.call_with(&support::raw::words("KEYS *"), sorted);
    c.call_with(&support::raw::words("KEYS key:*"), sorted);
    c.call(&support::raw::words("KEYS nothing*"));
}

#[test]
fn errors() {
    compare(&lines(
        "
        RPUSH l a
        SET s v
        GET l
        LPUSH s x
        HGET s f
        ZADD s 1 m
        SADD l m
        INCR l
        ZADD z notafloat m
        FOO bar baz
        FOO
        GET
        GET a b
        SET k
        HSET h f
        OBJECT nosuchsub k
        CLIENT nosuchsub
        CONFIG GET nosuchparam
        XADD st 1-1
        EXPIRE s notanumber
        INCRBY s 1
        SET n 9223372036854775807
        INCR n
        LRANGE l a b
        ZRANGE l 0 -1
        ",
    ));
    // An empty command name, and one that differs from a real one only in case.
    let pair = Pair::start();
    let mut c = pair.twin();
    c.call(b"*1\r\n$0\r\n\r\n");
    c.call(b"*2\r\n$0\r\n\r\n$1\r\nx\r\n");
    c.call(&cmd(&[b"gEt", b"s"]));
}

/// A 4 MiB value goes through whole in both directions, alone and pipelined with small
/// commands on either side.
#[test]
fn four_mib_value() {
    let value: Vec<u8> = (0..4 * 1024 * 1024)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let pair = Pair::start();
    let mut c = pair.twin();
    c.call(&cmd(&[b"SET", b"big", &value]));
    let got = c.call(&cmd(&[b"GET", b"big"]));
    assert_eq!(got.len(), value.len() + 12, "the whole value came back");
    c.pipeline(&[
        cmd(&[b"SET", b"before", b"1"]),
        cmd(&[b"SET", b"big2", &value]),
        cmd(&[b"GET", b"big2"]),
        cmd(&[b"STRLEN", b"big"]),
        cmd(&[b"GETRANGE", b"big", b"4194300", b"-1"]),
        cmd(&[b"APPEND", b"big", b"tail"]),
        cmd(&[b"GET", b"before"]),
    ]);
    // A 16 MiB reply: more than cachet buffers for a client before it stops reading.
    c.call(&cmd(&[b"MGET", b"big", b"big2", b"big", b"big2"]));
}

/// A reply of 100,000 elements.
#[test]
fn long_aggregate_reply() {
    let pair = Pair::start();
    let mut c = pair.twin();
    let items: Vec<Vec<u8>> = (0..100_000)
        .map(|i| format!("item{i}").into_bytes())
        .collect();
    let mut rpush: Vec<&[u8]> = vec![b"RPUSH", b"l"];
    rpush.extend(items.iter().map(Vec::as_slice));
    c.call(&cmd(&rpush));
    c.call(&cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
    c.call(&cmd(&[b"LRANGE", b"l", b"99990", b"-1"]));
}

/// 5,000 commands of every kind written in one go, with transactions, watches and
/// database switches among them, answered in order.
#[test]
fn pipeline_of_5000_mixed_commands() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        // xorshift: the same script every run, no dependency.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut script = Vec::with_capacity(5000);
    for i in 0..5000u64 {
        let r = next();
        let k = r % 37;
        let line = match r % 20 {
            0 => format!("SET k{k} v{i}"),
            1 => format!("GET k{k}"),
            2 => format!("INCR n{}", k % 7),
            3 => format!("LPUSH l{} {i}", k % 5),
            4 => format!("LRANGE l{} 0 2", k % 5),
            5 => format!("HSET h{} f{} {i}", k % 3, k % 11),
            6 => format!("HGET h{} f{}", k % 3, k % 11),
            7 => format!("ZADD z {} m{}", i % 13, k),
            8 => "ZRANGE z 0 2 WITHSCORES".to_string(),
            9 => format!("DEL k{k}"),
            10 => format!("EXISTS k{k} n{}", k % 7),
            11 => format!("APPEND a{} x{i}", k % 4),
            12 => format!("SADD s{} {}", k % 4, i % 100),
            13 => format!("SCARD s{}", k % 4),
            14 => format!("INCR k{k}"),
            15 => "PING".to_string(),
            16 => format!("ECHO e{i}"),
            17 => format!("NOSUCHCOMMAND {i}"),
            18 => format!("MGET k{k} k{} missing", k / 2),
            _ => format!("STRLEN a{}", k % 4),
        };
        script.push(support::raw::words(&line));
        // Now and then the pipeline moves to a dedicated connection (a transaction, a
        // watch) or another database and back, which cachet must keep in order.
        let extra: &[&str] = match i % 500 {
            100 => &["MULTI", "INCR n0", "GET k1", "LPUSH l0 m", "EXEC"],
            200 => &["SELECT 1", "SET k1 other-db", "GET k1", "SELECT 0"],
            300 => &["WATCH k2", "GET k2", "UNWATCH"],
            400 => &["MULTI", "SET k3", "EXEC"],
            _ => &[],
        };
        script.extend(extra.iter().map(|l| support::raw::words(l)));
    }
    compare_pipelined(&script);
}

/// Keys of every shape are written and read back as sent: spaces, line ends, binary,
/// empty, braces (hash tags), long.
#[test]
fn unusual_key_names() {
    let long = vec![b'k'; 100_000];
    let keys: Vec<&[u8]> = vec![
        b"with space",
        b"line\r\nend",
        b"nul\0byte",
        b"",
        b"{tag}key",
        b"{}",
        b"{",
        b"}{",
        b"{a}{b}",
        "ключ-キー".as_bytes(),
        &long,
    ];
    let pair = Pair::start();
    let mut c = pair.twin();
    for k in &keys {
        c.call(&cmd(&[b"SET", k, b"v"]));
        c.call(&cmd(&[b"APPEND", k, b"w"]));
        c.call(&cmd(&[b"GET", k]));
        c.call(&cmd(&[b"HSET", &[k, &b"h"[..]].concat(), b"f", k]));
        c.call(&cmd(&[b"HGET", &[k, &b"h"[..]].concat(), b"f"]));
        c.call(&cmd(&[b"EXPIRE", k, b"100"]));
        c.call(&cmd(&[b"TTL", k]));
    }
    let mut del: Vec<&[u8]> = vec![b"DEL"];
    del.extend(keys.iter().copied());
    del.extend(keys.iter().copied());
    c.call(&cmd(&del));
    c.call(&cmd(&[b"DBSIZE"]));
}

/// Multi-key writes of thousands of keys, and the same key repeated.
#[test]
fn multi_key_writes_of_many_keys() {
    let pair = Pair::start();
    let mut c = pair.twin();
    let names: Vec<Vec<u8>> = (0..5000).map(|i| format!("mk:{i}").into_bytes()).collect();
    let mut mset: Vec<&[u8]> = vec![b"MSET"];
    for n in &names {
        mset.push(n);
        mset.push(b"v");
    }
    c.call(&cmd(&mset));
    c.call(&cmd(&[b"DBSIZE"]));
    let mut del: Vec<&[u8]> = vec![b"DEL"];
    del.extend(names.iter().take(2500).map(Vec::as_slice));
    c.call(&cmd(&del));
    c.script(&lines(
        "
        SET a 1
        DEL a a a
        MSET a 1 a 2 a 3
        GET a
        MSETNX a 4 b 5
        RENAME a a
        GET a
        SUNIONSTORE s s s
        DBSIZE
        ",
    ));
}

/// A pipeline of nothing but writes, as a bulk loader or Django's `set_many` sends
/// them: cachet joins consecutive writes in one transaction, and every write is still
/// answered as Redis answers it alone, errors included (a wrong type, a bad option or
/// a bad number fail inside the transaction; a wrong argument count is refused before
/// it, so it is never joined). In both protocols; and Redis really ran fewer
/// transactions than writes.
#[test]
fn pipelined_writes_are_answered_one_by_one() {
    let pair = Pair::start();
    for proto in ["2", "3"] {
        let mut c = twin_speaking(&pair, proto);
        let mut script = Vec::new();
        for i in 0..600u32 {
            let line = match i % 15 {
                0 => format!("SET w{} v{i}", i % 50),
                1 => format!("SET w{} v{i} GET", i % 50),
                2 => format!("HSET wh{} f{i} {i}", i % 7),
                3 => format!("LPUSH w{} x", i % 50),
                4 => format!("INCR w{}", i % 50),
                5 => format!("SET w{} v{i} BADOPTION", i % 50),
                6 => format!("DEL w{} w{}", i % 50, (i + 1) % 50),
                7 => format!("ZADD wz {i} m{}", i % 9),
                8 => format!("EXPIRE w{} 100", i % 50),
                9 => format!("SET w{}", i % 50),
                10 => format!("INCRBY n{} notanumber", i % 3),
                11 => format!("MSET w{} a w{} b", i % 50, (i + 7) % 50),
                12 => format!("GETDEL w{}", i % 50),
                13 => format!("SADD ws{} {i}", i % 4),
                _ => format!("APPEND w{} tail", i % 50),
            };
            script.push(support::raw::words(&line));
        }
        c.pipeline(&script);
    }
    let calls = |name: &str| calls(&pair.upstream, name);
    // 1,200 writes, 80 of them refused for their argument count and sent alone.
    assert!(
        calls("exec") < 300,
        "{} transactions for 1,200 pipelined writes",
        calls("exec")
    );
}

/// Runs of plain `SET key value` in a pipeline (a bulk loader's, a benchmark's) go
/// upstream as one `MSET` per run, each `SET` still answered as Redis answers it alone:
/// a key set twice in a run keeps the later value, a TTL set before the run is cleared,
/// lowercase and inline `SET`s join the run, `SET`s with options and other writes
/// around them keep their own replies, in both protocols. Out of memory, every `SET`
/// of a run gets the refusal it would get alone. The keys are compared value by value
/// and TTL by TTL.
#[test]
fn runs_of_plain_sets_are_answered_one_by_one() {
    let pair = Pair::start();
    for proto in ["2", "3"] {
        let mut c = twin_speaking(&pair, proto);
        let mut script = Vec::new();
        for i in 0..400u32 {
            let k = i % 13;
            script.push(match i % 40 {
                7 => support::raw::words(&format!("EXPIRE r{k} 1000")),
                13 => support::raw::words(&format!("SET r{k} x{i} NX")),
                19 => support::raw::words(&format!("set r{k} lower{i}")),
                23 => format!("SET r{k} inline{i}\r\n").into_bytes(),
                29 => support::raw::words(&format!("INCR r{k}")),
                31 => support::raw::words(&format!("SET r{k} v{i} KEEPTTL")),
                37 => support::raw::words(&format!("GET r{k}")),
                _ => support::raw::words(&format!("SET r{k} v{i}")),
            });
        }
        c.pipeline(&script);
        let check: Vec<Vec<u8>> = (0..13)
            .flat_map(|k| {
                [
                    support::raw::words(&format!("GET r{k}")),
                    support::raw::words(&format!("TTL r{k}")),
                ]
            })
            .collect();
        c.script(&check);
    }
    assert!(
        calls(&pair.upstream, "mset") > 20,
        "{} MSETs",
        calls(&pair.upstream, "mset")
    );
    assert!(calls(&pair.upstream, "set") < 150);
    // Out of memory: Redis refuses each `SET`, cachet each of the `MSET`'s, alike.
    for redis in [&pair.direct, &pair.upstream] {
        support::raw::Raw::connect(redis.addr())
            .call(&support::raw::words("CONFIG SET maxmemory 1"));
    }
    let mut c = pair.twin();
    let mut script: Vec<Vec<u8>> = (0..20)
        .map(|i| support::raw::words(&format!("SET r{} full{i}", i % 5)))
        .collect();
    script.push(support::raw::words("GET r1"));
    c.pipeline(&script);
    for redis in [&pair.direct, &pair.upstream] {
        support::raw::Raw::connect(redis.addr())
            .call(&support::raw::words("CONFIG SET maxmemory 0"));
    }
    c.script(&[support::raw::words("GET r1"), support::raw::words("GET r2")]);
}

/// Forty clients writing at once, one command at a time each: every client gets the
/// reply its own write got, errors included, and every write published its own
/// invalidation. (Writes of different clients never share a transaction: one
/// refused when queued would refuse the others.)
#[test]
fn writes_of_many_clients_are_answered_each_its_own() {
    let pair = Pair::start();
    let (clients, rounds) = (40u64, 150u64);
    let addr = pair.cachet.addr;
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = support::raw::Raw::connect(addr);
                for i in 0..rounds {
                    let (line, expected) = match i % 3 {
                        0 => (format!("SET t{t}:s v{i}"), "+OK\r\n".to_string()),
                        1 => (format!("INCR t{t}:n"), format!(":{}\r\n", i / 3 + 1)),
                        _ => (
                            format!("INCR t{t}:s"),
                            "-ERR value is not an integer or out of range\r\n".to_string(),
                        ),
                    };
                    let r = c.call(&support::raw::words(&line));
                    assert_eq!(String::from_utf8_lossy(&r), expected, "{line}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let calls = |name: &str| calls(&pair.upstream, name);
    let writes = clients * rounds;
    assert_eq!(calls("publish"), writes, "one invalidation per write");
    assert_eq!(calls("exec"), writes, "one transaction per client's write");
}

/// A new client of each side, speaking RESP `proto` (`HELLO`, compared).
fn twin_speaking(pair: &Pair, proto: &str) -> support::compare::Twin {
    let mut c = pair.twin();
    c.call_with(
        &support::raw::words(&format!("HELLO {proto}")),
        support::compare::hello_without_id,
    );
    c
}

/// How many times Redis ran the command `name` (`INFO commandstats`).
fn calls(redis: &support::redis::RedisServer, name: &str) -> u64 {
    let stats =
        support::raw::Raw::connect(redis.addr()).call(&support::raw::words("INFO commandstats"));
    String::from_utf8_lossy(&stats)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("cmdstat_{name}:calls="))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}
