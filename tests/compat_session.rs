//! Per-client session state through cachet: what one client sets (`SELECT`, `HELLO`,
//! `CLIENT SETNAME`, `CLIENT REPLY`) behaves as with Redis directly and never reaches
//! another client sharing cachet's upstream connections. Also inline commands, `QUIT`,
//! `RESET`, and protocol errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::Duration;

use support::cachet::{Cachet, config_for};
use support::compare::{Pair, Twin, compare, compare_pipelined, hello_without_id, lines, sorted};
use support::raw::{Raw, cmd, words};
use support::redis::RedisServer;

#[test]
fn select_replies() {
    compare(&lines(
        "
        SELECT 1
        SELECT 15
        SELECT 16
        SELECT -1
        SELECT 01
        SELECT 1.5
        SELECT abc
        SELECT -0
        SELECT 99999999999999999999
        SELECT
        SELECT 1 2
        select 0
        ",
    ));
}

#[test]
fn select_pipelined_across_databases() {
    compare_pipelined(&lines(
        "
        SET a 0
        SELECT 1
        SET a 1
        GET a
        SELECT 2
        GET a
        SELECT 0
        GET a
        MOVE a 3
        SELECT 3
        GET a
        SELECT 16
        GET a
        SELECT 1
        GET a
        ",
    ));
}

/// Two clients in different databases through one cachet never see each other's keys,
/// and a third in the default database sees neither.
#[test]
fn clients_in_different_databases_are_isolated() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let mut a = Raw::connect(cachet.addr);
    let mut b = Raw::connect(cachet.addr);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(a.call(&words("SELECT 1")), b"+OK\r\n");
    assert_eq!(b.call(&words("SELECT 2")), b"+OK\r\n");
    // Interleaved pipelines: each client writes and reads the same key names.
    let mut pa = Vec::new();
    let mut pb = Vec::new();
    for i in 0..300 {
        pa.extend_from_slice(&words(&format!("SET k{i} a{i}")));
        pa.extend_from_slice(&words(&format!("GET k{i}")));
        pb.extend_from_slice(&words(&format!("SET k{i} b{i}")));
        pb.extend_from_slice(&words(&format!("GET k{i}")));
    }
    a.send(&pa);
    b.send(&pb);
    for i in 0..300 {
        assert_eq!(a.frame(), b"+OK\r\n");
        assert_eq!(b.frame(), b"+OK\r\n");
        let va = format!("a{i}");
        let vb = format!("b{i}");
        assert_eq!(a.frame(), format!("${}\r\n{va}\r\n", va.len()).as_bytes());
        assert_eq!(b.frame(), format!("${}\r\n{vb}\r\n", vb.len()).as_bytes());
    }
    assert_eq!(c.call(&words("GET k0")), b"$-1\r\n");
    assert_eq!(c.call(&words("DBSIZE")), b":0\r\n");
    assert_eq!(a.call(&words("DBSIZE")), b":300\r\n");
    // Upstream, the keys are where each client put them.
    let mut up = Raw::connect(redis.addr());
    assert_eq!(up.call(&words("SELECT 2")), b"+OK\r\n");
    assert_eq!(up.call(&words("GET k7")), b"$2\r\nb7\r\n");
}

/// With one shared upstream connection for all clients, a client that keeps switching
/// databases never moves another client.
#[test]
fn select_never_leaks_to_a_client_sharing_the_connection() {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.upstream.shared_connections = 1;
    let cachet = Cachet::start_with(config);
    let mut setup = Raw::connect(redis.addr());
    setup.call(&words("SET k zero"));
    setup.call(&words("SELECT 5"));
    setup.call(&words("SET k five"));

    let addr = cachet.addr;
    let switcher = std::thread::spawn(move || {
        let mut a = Raw::connect(addr);
        for _ in 0..100 {
            let mut p = Vec::new();
            for line in ["SELECT 5", "GET k", "SELECT 0", "GET k"] {
                p.extend_from_slice(&words(line));
            }
            a.send(&p);
            assert_eq!(a.frame(), b"+OK\r\n");
            assert_eq!(a.frame(), b"$4\r\nfive\r\n");
            assert_eq!(a.frame(), b"+OK\r\n");
            assert_eq!(a.frame(), b"$4\r\nzero\r\n");
        }
    });
    let mut b = Raw::connect(cachet.addr);
    for _ in 0..400 {
        assert_eq!(b.call(&words("GET k")), b"$4\r\nzero\r\n");
    }
    switcher.join().unwrap();
    let mut a = Raw::connect(cachet.addr);
    assert_eq!(a.call(&words("SELECT 5")), b"+OK\r\n");
    assert_eq!(b.call(&words("GET k")), b"$4\r\nzero\r\n");
    assert_eq!(a.call(&words("GET k")), b"$4\r\nfive\r\n");
}

/// The same commands in RESP3 and back in RESP2: maps, doubles, nulls, sets,
/// booleans, verbatim strings, big numbers, attributes.
fn resp3_sampler(c: &mut Twin) {
    c.script(&lines(
        "
        HSET h a 1 b 2
        HGETALL h
        HGETALL missing
        ZADD z 1.5 m 2 n
        ZSCORE z m
        ZSCORE z missing
        ZINCRBY z 0.25 m
        ZADD z INCR 1 n
        ZRANGE z 0 -1 WITHSCORES
        ZPOPMIN z
        ZMSCORE z n nope
        ZRANK z nope
        GET missing
        MGET h missing
        SADD ints 3 1 2
        SMEMBERS ints
        SMEMBERS missing
        SISMEMBER ints 1
        SMISMEMBER ints 1 9
        EXISTS h
        CONFIG GET maxmemory
        CONFIG GET nosuch
        XADD st 1-1 f v
        XINFO STREAM st
        XRANGE st - +
        XREAD STREAMS st 0
        XREAD STREAMS nostream 0
        LCS h h
        HRANDFIELD missing
        LPOP missing
        LPOP missing 2
        INCRBYFLOAT f 1.5
        PING
        PING hello
        ECHO hi
        CLIENT GETNAME
        OBJECT ENCODING h
        LPOS missing a
        DEBUG PROTOCOL map
        DEBUG PROTOCOL set
        DEBUG PROTOCOL double
        DEBUG PROTOCOL null
        DEBUG PROTOCOL true
        DEBUG PROTOCOL false
        DEBUG PROTOCOL bignum
        DEBUG PROTOCOL verbatim
        DEBUG PROTOCOL attrib
        ",
    ));
    c.call_with(&words("SADD s x y z"), sorted);
    c.call_with(&words("SMEMBERS s"), sorted);
    c.call_with(&words("SUNION s ints"), sorted);
    // SCRIPT EXISTS answers a list of flags (integers, not booleans, even in RESP3).
    let load = cmd(&[b"SCRIPT", b"LOAD", b"return 1"]);
    let sha = c.call(&load);
    c.call(&cmd(&[
        b"SCRIPT",
        b"EXISTS",
        &sha[5..45],
        b"0000000000000000000000000000000000000000",
    ]));
    c.call(&cmd(&[b"EVAL", b"return {true, false}", b"0"]));
    c.call(&cmd(&[b"EVAL", b"return {double=0.5}", b"0"]));
}

/// `DEBUG PROTOCOL` (enabled for these servers only) answers every RESP3 type with
/// fixed values, so it exercises cachet's framing of each of them.
const DEBUG: &[&str] = &["--enable-debug-command", "yes"];

#[test]
fn hello_3_replies_then_back_to_2() {
    let pair = Pair::start_with(DEBUG);
    let mut c = pair.twin();
    c.call_with(&words("HELLO"), hello_without_id);
    c.call_with(&words("HELLO 3"), hello_without_id);
    resp3_sampler(&mut c);
    c.call_with(&words("HELLO 2"), hello_without_id);
    c.call(&words("FLUSHALL"));
    resp3_sampler(&mut c);
}

#[test]
fn hello_options_and_errors() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.call(&words("HELLO 4"));
    c.call(&words("HELLO 1"));
    c.call(&words("HELLO abc"));
    c.call(&words("HELLO 3 FOO"));
    c.call(&words("HELLO 3 SETNAME"));
    c.call(&cmd(&[b"HELLO", b"3", b"SETNAME", b"has space"]));
    c.call(&words("CLIENT GETNAME"));
    c.call_with(&words("HELLO 3 SETNAME first"), hello_without_id);
    c.call(&words("CLIENT GETNAME"));
    // No password is configured: the default user takes any.
    c.call_with(&words("HELLO 2 AUTH default anything"), hello_without_id);
    c.call(&words("HELLO 3 AUTH nosuchuser pw"));
    c.call(&words("CLIENT GETNAME"));
    c.call(&words("AUTH pw"));
    c.call(&words("AUTH default pw"));
    c.call(&words("AUTH nosuchuser pw"));
    c.call_with(&words("HELLO 2 SETNAME second"), hello_without_id);
    c.call(&words("CLIENT GETNAME"));
}

#[test]
fn client_names_are_per_client() {
    let pair = Pair::start();
    let mut a = pair.twin();
    let mut b = pair.twin();
    a.call(&words("CLIENT SETNAME alice"));
    b.call(&words("CLIENT GETNAME"));
    b.call(&words("CLIENT SETNAME bob"));
    a.call(&words("CLIENT GETNAME"));
    b.call(&words("CLIENT GETNAME"));
    a.call(&cmd(&[b"CLIENT", b"SETNAME", b"with space"]));
    a.call(&cmd(&[b"CLIENT", b"SETNAME", b"new\nline"]));
    a.call(&words("CLIENT SETNAME a b"));
    a.call(&words("CLIENT SETNAME"));
    a.call(&words("CLIENT GETNAME"));
    a.call(&cmd(&[b"CLIENT", b"SETNAME", b""]));
    a.call(&words("CLIENT GETNAME"));
    b.call(&words("client getname"));
    a.call(&words("CLIENT GETNAME extra"));
    a.call(&words("CLIENT"));
    a.call(&words("CLIENT NOSUCH"));
}

#[test]
fn client_reply_off_skip_on() {
    let pair = Pair::start();
    let mut c = pair.twin();
    let frames = c.transcript(&lines(
        "
        CLIENT REPLY OFF
        SET a 1
        GET a
        NOSUCHCOMMAND
        CLIENT REPLY SKIP
        SET b 2
        GET b
        CLIENT REPLY ON
        GET a
        CLIENT REPLY SKIP
        GET a
        GET b
        CLIENT REPLY FOO
        CLIENT REPLY
        CLIENT REPLY SKIP
        CLIENT REPLY ON
        CLIENT REPLY SKIP
        CLIENT REPLY SKIP
        GET a
        GET b
        CLIENT REPLY SKIP
        CLIENT GETNAME
        SELECT 1
        SELECT 0
        CLIENT REPLY SKIP
        SELECT 1
        GET a
        ",
    ));
    assert!(frames.len() >= 8, "replies were produced: {frames:?}");
}

#[test]
fn inline_commands() {
    let pair = Pair::start();
    let mut c = pair.twin();
    for line in [
        &b"PING\r\n"[..],
        b"SET \"a b\" 'c d'\r\n",
        b"GET \"a b\"\r\n",
        b"  GET   'a b'  \r\n",
        b"ECHO \"\\x41\\x42\\n\\t\\\\\"\r\n",
        b"ECHO 'it\\'s'\r\n",
        b"ECHO \"\\x4\"\r\n",
        b"ECHO \"\\xZZ\"\r\n",
        b"ECHO \"\\q\\\"\"\r\n",
        b"ECHO '\\x41\\n'\r\n",
        b"EXISTS \"a b\" nope\n",
        b"ECHO \"\"\r\n",
        b"\r\nPING\r\n",
        b"*0\r\n*-1\r\nPING\r\n",
        b"set k inline\r\nGET k\r\n",
    ] {
        c.send(line);
        c.frame(line);
    }
    c.frame(b"GET k (second command on the last line)");
    c.send(b"ECHO \"unbalanced\r\n");
    c.frame(b"unbalanced quotes");
    c.closed(Duration::from_secs(2));

    let mut c = pair.twin();
    c.send(b"ECHO \"closing\"quote\r\n");
    c.frame(b"closing quote followed by a character");
    c.closed(Duration::from_secs(2));
}

#[test]
fn quit_answers_ok_and_closes() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.call(&words("SET a 1"));
    c.call(&words("QUIT"));
    c.closed(Duration::from_secs(2));

    // Pipelined: what precedes QUIT is answered, what follows is not run.
    let mut c = pair.twin();
    let mut p = words("SET b 2");
    p.extend_from_slice(&words("QUIT"));
    p.extend_from_slice(&words("SET c 3"));
    c.send(&p);
    c.frame(b"SET b 2");
    c.frame(b"QUIT");
    c.closed(Duration::from_secs(2));
    let mut c = pair.twin();
    c.call(&words("EXISTS b c"));
}

#[test]
fn reset_returns_to_a_fresh_session() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.script(&lines(
        "
        SELECT 3
        SET k three
        CLIENT SETNAME named
        ",
    ));
    c.call_with(&words("HELLO 3"), hello_without_id);
    c.script(&lines(
        "
        RESET
        GET k
        CLIENT GETNAME
        HGETALL missing
        SET k zero
        MULTI
        SET k inside
        RESET
        EXEC
        GET k
        WATCH k
        RESET
        MULTI
        SET k after
        EXEC
        SUBSCRIBE ch
        RESET
        GET k
        ",
    ));
    // RESET also turns CLIENT REPLY back on.
    c.transcript(&lines("CLIENT REPLY OFF\nGET k\nRESET\nGET k"));
}

#[test]
fn protocol_errors_close_the_connection() {
    let pair = Pair::start();
    for bad in [
        &b"*1\r\n$x\r\n"[..],
        b"PING\r\n*1\r\n$x\r\n",
        b"*x\r\n",
        b"*1\r\n+foo\r\n",
        b"*1\r\n$-5\r\n",
        b"*2\r\n$3\r\nGET\r\n:1\r\n",
        b"*1\r\n$999999999999\r\n",
        b"*99999999999\r\n",
    ] {
        let mut c = pair.twin();
        c.send(bad);
        c.frame(bad);
        if bad.starts_with(b"PING") {
            c.frame(bad);
        }
        c.closed(Duration::from_secs(2));
    }
}

/// Commands cachet answers itself reject a wrong argument count as Redis does, inside
/// a transaction too (where the rejection aborts `EXEC`).
#[test]
fn locally_answered_commands_check_arity() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.script(&lines(
        "
        CLIENT ID extra
        CLIENT GETNAME extra
        CLIENT REPLY
        CLIENT REPLY ON extra
        RESET extra
        SELECT
        MULTI
        SET k v
        RESET extra
        EXEC
        EXISTS k
        ",
    ));
}

/// A protocol switch pipelined right behind a command that needs a dedicated connection
/// for a moment (a blocking command, a watch that is dropped again) waits for it, as
/// Redis runs it once the earlier commands are done.
#[test]
fn hello_pipelined_behind_a_dedicated_connection_command() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.send(&[words("BLPOP empty 0.01"), words("HELLO 3")].concat());
    c.frame(b"BLPOP empty 0.01");
    c.frame_with(b"HELLO 3", hello_without_id);
    c.call(&words("HGETALL missing"));
    c.send(&[words("WATCH k"), words("UNWATCH"), words("HELLO 2")].concat());
    c.frame(b"WATCH k");
    c.frame(b"UNWATCH");
    c.frame_with(b"HELLO 2", hello_without_id);
    c.call(&words("HGETALL missing"));
    // Inside a real stateful mode the switch is refused (a documented difference),
    // so only check that the client is told and keeps its protocol.
    let mut p = Raw::connect(pair.cachet.addr);
    assert_eq!(p.call(&words("WATCH k")), b"+OK\r\n");
    assert!(p.call(&words("HELLO 3")).starts_with(b"-ERR"));
    assert_eq!(p.call(&words("HGETALL missing")), b"*0\r\n");
}

/// Requests arriving a byte at a time are decoded as a whole.
#[test]
fn requests_split_into_single_bytes() {
    let pair = Pair::start();
    let mut c = pair.twin();
    let script = [
        words("SET k hello"),
        b"GET k\r\n".to_vec(),
        cmd(&[b"SET", b"bin", b"a\r\nb\0c"]),
        words("GET bin"),
        b"ECHO \"x y\"\r\n".to_vec(),
    ];
    for byte in script.concat() {
        c.send(&[byte]);
    }
    for command in &script {
        c.frame(command);
    }
}

#[test]
fn oversized_requests_are_protocol_errors() {
    let pair = Pair::start();
    // An inline request longer than 64 KiB without a line end.
    let mut c = pair.twin();
    c.send(&vec![b'a'; 70_000]);
    c.frame(b"70,000 bytes without a newline");
    c.closed(Duration::from_secs(2));
    // A bulk length above proto-max-bulk-len (512 MiB).
    let mut c = pair.twin();
    c.send(b"*2\r\n$3\r\nGET\r\n$536870913\r\n");
    c.frame(b"bulk of 512 MiB + 1");
    c.closed(Duration::from_secs(2));
    // A multibulk count above INT_MAX.
    let mut c = pair.twin();
    c.send(b"*2147483648\r\n");
    c.frame(b"*2147483648");
    c.closed(Duration::from_secs(2));
}

/// Binary garbage is an inline command as far as Redis is concerned: without a NUL it
/// is an unknown command; a NUL before the newline hides the newline (Redis 7.0 looks
/// for it with `strchr`), so nothing is answered until the line passes 64 KiB.
#[test]
fn binary_garbage_is_handled_as_redis_does() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.call(b"\x01\x02\xff\xfe\x80A\r\n");
    c.call(b"\xff\xfe\"oops\r\n");
    c.closed(Duration::from_secs(2));
    let mut c = pair.twin();
    c.send(b"\x16\x03\x01\x02\x00\x01\r\nPING\r\n");
    c.quiet(Duration::from_millis(300));
    c.send(&vec![b'a'; 70_000]);
    c.frame(b"a NUL, then 70,000 bytes");
    c.closed(Duration::from_secs(2));
}

/// `SELECT` honours the upstream's configured number of databases from the first
/// command on.
#[test]
fn select_range_follows_the_upstream_configuration() {
    let pair = Pair::start_with(&["--databases", "4"]);
    let mut c = pair.twin();
    c.script(&lines(
        "SELECT 4\nSELECT 3\nSET k v\nSELECT 0\nSWAPDB 0 4\nGET k",
    ));
}

/// Redis takes the two bytes after a bulk as its terminator without looking at them.
#[test]
fn bytes_after_a_bulk_are_skipped_unread() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.send(b"*1\r\n$4\r\nPINGxx*2\r\n$4\r\nECHO\r\n$1\r\nayy");
    c.frame(b"PING with xx");
    c.frame(b"ECHO a with yy");
    c.call(&words("PING"));
}

/// `QUIT` inside a transaction is not queued: it answers and closes, and the
/// transaction never runs.
#[test]
fn quit_inside_multi() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.script(&lines("MULTI\nSET k v"));
    c.call(&words("QUIT"));
    c.closed(Duration::from_secs(2));
    let mut c = pair.twin();
    c.call(&words("EXISTS k"));
}

/// `RESET` also ends client-side caching.
#[test]
fn reset_ends_tracking() {
    let pair = Pair::start();
    let mut c = pair.twin();
    let mut writer = pair.twin();
    c.call_with(&words("HELLO 3"), hello_without_id);
    c.script(&lines("CLIENT TRACKING ON\nGET k\nRESET\nGET k"));
    writer.call(&words("SET k v"));
    c.quiet(Duration::from_millis(100));
    c.script(&lines(
        "GET k\nCLIENT SETINFO LIB-NAME mylib\nCLIENT SETINFO LIB-VER 1.0",
    ));
}

/// With a password on the upstream, Redis answers `NOAUTH` until the client has
/// authenticated, and so does cachet, although it holds the upstream password itself
/// (docs/security.md).
#[test]
fn unauthenticated_clients_are_refused_like_redis_refuses_them() {
    let direct = RedisServer::start_with(&["--requirepass", "secret"]);
    let upstream = RedisServer::start_with(&["--requirepass", "secret"]);
    let mut config = config_for(&upstream.url());
    config.upstream.password = Some("secret".into());
    let cachet = Cachet::start_with(config);
    let mut c = Twin {
        direct: Raw::connect(direct.addr()),
        proxied: Raw::connect(cachet.addr),
    };
    c.script(&lines(
        "GET k\nSET k v\nAUTH wrong\nGET k\nAUTH secret\nSET k v\nGET k",
    ));
}

/// With several shared upstream connections, clients are spread over all of them and
/// each client's pipelined commands still run and answer in its own order.
#[test]
fn clients_spread_over_several_shared_connections_keep_their_order() {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.upstream.shared_connections = 3;
    let cachet = Cachet::start_with(config);
    let addr = cachet.addr;
    let clients: Vec<_> = (0..6)
        .map(|c| {
            std::thread::spawn(move || {
                let mut r = Raw::connect(addr);
                for round in 0..50 {
                    let mut p = Vec::new();
                    for line in [
                        format!("SET seq{c} {round}"),
                        format!("INCR seq{c}"),
                        format!("APPEND log{c} {round},"),
                        format!("GET seq{c}"),
                    ] {
                        p.extend_from_slice(&words(&line));
                    }
                    r.send(&p);
                    assert_eq!(r.frame(), b"+OK\r\n");
                    assert_eq!(r.frame(), format!(":{}\r\n", round + 1).as_bytes());
                    assert!(r.frame().starts_with(b":"));
                    let next = (round + 1).to_string();
                    assert_eq!(
                        r.frame(),
                        format!("${}\r\n{next}\r\n", next.len()).as_bytes()
                    );
                }
                let log: String = (0..50).map(|i| format!("{i},")).collect();
                assert_eq!(
                    r.call(&words(&format!("GET log{c}"))),
                    format!("${}\r\n{log}\r\n", log.len()).as_bytes()
                );
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let info = Raw::connect(cachet.addr).call(&words("CACHET INFO"));
    let info = String::from_utf8_lossy(&info);
    assert!(
        info.contains("upstream_connections_up:3/3"),
        "three shared connections: {info}"
    );
    // Each of them carried clients' commands: its last one was a client's final GET.
    let list = Raw::connect(redis.addr()).call(&words("CLIENT LIST"));
    let list = String::from_utf8_lossy(&list);
    let served = list.lines().filter(|l| l.contains(" cmd=get ")).count();
    assert_eq!(served, 3, "{list}");
}
