//! Lua scripts and functions through cachet answer as Redis does directly (G1): `EVAL`
//! reply conversions in RESP2 and RESP3, `EVALSHA` and the `NOSCRIPT` error, read-only
//! variants, `SCRIPT` subcommands, `FUNCTION LOAD` and `FCALL`/`FCALL_RO`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use support::compare::{Pair, hello_without_id, lines};
use support::raw::{cmd, words};

/// `EVAL <script> <numkeys> <args…>`.
fn eval(script: &str, args: &[&str]) -> Vec<u8> {
    named("EVAL", script, args)
}

fn named(command: &str, first: &str, args: &[&str]) -> Vec<u8> {
    let mut all: Vec<&[u8]> = vec![command.as_bytes(), first.as_bytes()];
    all.extend(args.iter().map(|a| a.as_bytes()));
    cmd(&all)
}

const GET: &str = "return redis.call('GET', KEYS[1])";
const SET: &str = "return redis.call('SET', KEYS[1], ARGV[1])";

#[test]
fn eval_replies_and_errors() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.script(&[
        eval(SET, &["1", "k", "v"]),
        eval(GET, &["1", "k"]),
        eval(GET, &["1", "missing"]),
        eval("return {1, 2, {3, 'x'}, false, true, nil, 'after nil'}", &["0"]),
        eval("return 3.99", &["0"]),
        eval("return redis.error_reply('MYERR custom')", &["0"]),
        eval("return redis.status_reply('FINE')", &["0"]),
        eval("return {err='ERR from table'}", &["0"]),
        eval("return redis.call('INCR', KEYS[1])", &["1", "k"]),
        eval("return redis.pcall('INCR', KEYS[1])", &["1", "k"]),
        eval("return redis.call('NOSUCHCOMMAND')", &["0"]),
        eval("this is not lua", &["0"]),
        eval("return 1", &["2", "onlyone"]),
        eval("return 1", &["-1"]),
        eval("return 1", &["notanumber"]),
        eval(
            "redis.call('RPUSH', KEYS[1], ARGV[1], ARGV[2]); return redis.call('LRANGE', KEYS[1], 0, -1)",
            &["1", "list", "a", "b"],
        ),
        eval("return #KEYS + #ARGV", &["2", "a", "b", "c"]),
        eval("return redis.sha1hex('')", &["0"]),
    ]);
    // A script's writes are visible to plain commands, in the selected database too.
    c.script(&lines("GET k\nLRANGE list 0 -1\nSELECT 2"));
    c.script(&[
        eval(SET, &["1", "k", "in-db-2"]),
        words("GET k"),
        words("SELECT 0"),
        words("GET k"),
    ]);
}

#[test]
fn evalsha_script_cache_and_noscript() {
    let pair = Pair::start();
    let mut c = pair.twin();
    let load = named("SCRIPT", "LOAD", &["return ARGV[1]"]);
    let sha = c.call(&load);
    let sha = String::from_utf8(sha[5..45].to_vec()).unwrap();
    let unknown = "ffffffffffffffffffffffffffffffffffffffff";
    c.script(&[
        named("EVALSHA", &sha, &["0", "hello"]),
        named("EVALSHA_RO", &sha, &["0", "ro"]),
        named("evalsha", &sha.to_uppercase(), &["0", "upper"]),
        named("SCRIPT", "EXISTS", &[&sha, unknown]),
        named("EVALSHA", unknown, &["0"]),
        named("EVALSHA", "tooshort", &["0"]),
        words("SCRIPT FLUSH"),
        named("SCRIPT", "EXISTS", &[&sha]),
        named("EVALSHA", &sha, &["0", "gone"]),
        // EVAL caches the script again.
        eval("return ARGV[1]", &["0", "again"]),
        named("EVALSHA", &sha, &["0", "back"]),
        words("SCRIPT FLUSH SYNC"),
        words("SCRIPT KILL"),
        words("SCRIPT NOSUCHSUB"),
    ]);
    // Pipelined: load, call, flush, call.
    c.pipeline(&[
        load.clone(),
        named("EVALSHA", &sha, &["0", "p1"]),
        words("SCRIPT FLUSH"),
        named("EVALSHA", &sha, &["0", "p2"]),
        load,
        named("EVALSHA", &sha, &["0", "p3"]),
    ]);
}

#[test]
fn read_only_scripts() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.script(&[
        words("SET k v"),
        named("EVAL_RO", GET, &["1", "k"]),
        named("EVAL_RO", SET, &["1", "k", "x"]),
        eval(
            "#!lua flags=no-writes\nreturn redis.call('GET', KEYS[1])",
            &["1", "k"],
        ),
        eval(
            "#!lua flags=no-writes\nreturn redis.call('SET', KEYS[1], 'x')",
            &["1", "k"],
        ),
        eval("#!lua\nreturn redis.call('GET', KEYS[1])", &["1", "k"]),
        eval("#!lua flags=bogus\nreturn 1", &["0"]),
        words("GET k"),
    ]);
}

#[test]
fn scripts_in_resp3() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.call_with(&words("HELLO 3"), hello_without_id);
    c.script(&[
        words("HSET h a 1 b 2"),
        eval("return {double=3.5}", &["0"]),
        eval("return {map={a=1, b=2}}", &["0"]),
        eval("return {1, false, true, nil}", &["0"]),
        eval(
            "redis.setresp(3); return redis.call('HGETALL', KEYS[1])",
            &["1", "h"],
        ),
        eval(
            "redis.setresp(3); return redis.call('ZSCORE', KEYS[1], 'm')",
            &["1", "z"],
        ),
        eval(
            "redis.setresp(3); return redis.call('GET', KEYS[1])",
            &["1", "missing"],
        ),
        eval("return redis.call('GET', KEYS[1])", &["1", "missing"]),
        eval("return redis.error_reply('ERR three')", &["0"]),
    ]);
}

const LIB: &str = "#!lua name=mylib
redis.register_function('echoarg', function(keys, args) return args[1] end)
redis.register_function('setkey', function(keys, args) return redis.call('SET', keys[1], args[1]) end)
redis.register_function{function_name='getkey', callback=function(keys, args) return redis.call('GET', keys[1]) end, flags={'no-writes'}}";

const ONE: &str = "#!lua name=onelib
redis.register_function{function_name='one', callback=function() return 1 end, flags={'no-writes'}, description='returns one'}";

#[test]
fn functions() {
    let pair = Pair::start();
    let mut c = pair.twin();
    c.script(&[
        named("FUNCTION", "LOAD", &[LIB]),
        named("FUNCTION", "LOAD", &[LIB]),
        named("FUNCTION", "LOAD", &["REPLACE", LIB]),
        named("FUNCTION", "LOAD", &["#!lua name=broken\nthis is not lua"]),
        named("FUNCTION", "LOAD", &["#!lua name=empty\nreturn 1"]),
        named("FCALL", "echoarg", &["0", "hello"]),
        named("FCALL", "setkey", &["1", "k", "v"]),
        named("FCALL_RO", "getkey", &["1", "k"]),
        named("FCALL_RO", "setkey", &["1", "k", "x"]),
        named("FCALL", "nosuchfunction", &["0"]),
        named("FCALL", "echoarg", &["5"]),
        named("FUNCTION", "LOAD", &[ONE]),
        // One library with one function: its listing has no hash-table order.
        named("FUNCTION", "LIST", &["LIBRARYNAME", "onelib"]),
        named("FCALL_RO", "one", &["0"]),
        named("FUNCTION", "DELETE", &["onelib"]),
        named("FUNCTION", "DELETE", &["onelib"]),
        named("FCALL_RO", "one", &["0"]),
        words("GET k"),
        words("FUNCTION FLUSH"),
        named("FCALL", "echoarg", &["0", "gone"]),
        words("FUNCTION LIST"),
    ]);
}
