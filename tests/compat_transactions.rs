//! Transactions through cachet behave as with Redis directly (G1): `MULTI`/`EXEC`,
//! `DISCARD`, `EXECABORT`, `WATCH` conflicts caused by other clients of the same cachet,
//! pipelines around transaction blocks, and `SELECT` inside a transaction. A client's
//! transaction state never leaks to another client through a reused connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use support::compare::{Pair, compare, compare_pipelined, lines};
use support::raw::{Raw, words};

#[test]
fn multi_exec_and_discard() {
    compare(&lines(
        "
        MULTI
        SET a 1
        INCR a
        GET a
        LPUSH a x
        EXEC
        GET a
        MULTI
        SET a 9
        DISCARD
        GET a
        EXEC
        DISCARD
        MULTI
        MULTI
        WATCH a
        PING
        EXEC
        MULTI
        EXEC
        ",
    ));
}

#[test]
fn queued_syntax_error_aborts_exec() {
    compare(&lines(
        "
        SET a 1
        MULTI
        INCR a
        SET a
        GET a
        EXEC
        GET a
        MULTI
        NOSUCHCOMMAND x
        INCR a
        EXEC
        GET a
        MULTI
        INCR a
        EXEC
        ",
    ));
}

/// A write by another client of the same cachet to a watched key makes `EXEC` fail.
#[test]
fn watch_conflict_from_another_client_aborts_exec() {
    let pair = Pair::start();
    let mut a = pair.twin();
    let mut b = pair.twin();
    a.script(&lines(
        "
        SET k 1
        WATCH k
        GET k
        ",
    ));
    b.call(&words("SET k 2"));
    let exec = {
        a.script(&lines("MULTI\nSET k 3"));
        a.call(&words("EXEC"))
    };
    assert_eq!(exec, b"*-1\r\n", "the transaction was aborted");
    a.call(&words("GET k"));
    // The watch is gone after EXEC: the same transaction now runs.
    b.call(&words("SET k 4"));
    a.script(&lines("MULTI\nSET k 3\nEXEC\nGET k"));
}

#[test]
fn watch_without_conflict_and_unwatch() {
    let pair = Pair::start();
    let mut a = pair.twin();
    let mut b = pair.twin();
    a.script(&lines(
        "
        SET k 1
        WATCH k other
        GET k
        ",
    ));
    // Reads and writes of other keys are no conflict.
    b.script(&lines("GET k\nSET unrelated 1"));
    a.script(&lines("MULTI\nINCR k\nEXEC"));
    // UNWATCH forgets the watch: a later write by another client does not abort.
    a.script(&lines("WATCH k\nUNWATCH"));
    b.call(&words("SET k 10"));
    let exec = {
        a.script(&lines("MULTI\nINCR k"));
        a.call(&words("EXEC"))
    };
    assert_eq!(exec, b"*1\r\n:11\r\n");
    // DISCARD also ends the watch.
    a.script(&lines("WATCH k\nMULTI\nDISCARD"));
    b.call(&words("SET k 20"));
    a.script(&lines("MULTI\nINCR k\nEXEC"));
}

#[test]
fn commands_pipelined_around_transactions() {
    compare_pipelined(&lines(
        "
        SET a 1
        MULTI
        INCR a
        GET a
        EXEC
        GET a
        MULTI
        SET b 2
        DISCARD
        GET b
        WATCH a
        GET a
        MULTI
        INCR a
        EXEC
        INCR a
        MULTI
        SET a
        EXEC
        GET a
        MULTI
        BLPOP empty 0
        EXEC
        PING
        ",
    ));
}

/// A blocking command queued in a transaction does not block (Redis runs it
/// non-blocking inside `EXEC`), and does not stall the client.
#[test]
fn blocking_command_inside_multi_does_not_block() {
    compare(&lines(
        "
        MULTI
        BLPOP empty 0
        BRPOPLPUSH empty other 0
        XREAD BLOCK 0 STREAMS nostream 0
        EXEC
        RPUSH full a
        MULTI
        BLPOP full 0
        EXEC
        ",
    ));
}

/// `SELECT` queued in a transaction moves the client once `EXEC` ran it, and only then.
#[test]
fn select_inside_multi_applies_after_exec() {
    let pair = Pair::start();
    let mut a = pair.twin();
    a.script(&lines(
        "
        MULTI
        SELECT 1
        SET k one
        EXEC
        GET k
        SET k2 two
        SELECT 0
        GET k
        GET k2
        SELECT 1
        GET k2
        SELECT 0
        MULTI
        SELECT 2
        DISCARD
        SET k zero
        SELECT 2
        GET k
        SELECT 0
        MULTI
        SELECT 3
        SET k x
        SELECT
        EXEC
        GET k
        SELECT 3
        GET k
        ",
    ));
    // The data is where it would be without cachet.
    let mut up = Raw::connect(pair.upstream.addr());
    assert_eq!(up.call(&words("GET k")), b"$4\r\nzero\r\n");
    assert_eq!(up.call(&words("SELECT 1")), b"+OK\r\n");
    assert_eq!(up.call(&words("GET k")), b"$3\r\none\r\n");
    assert_eq!(up.call(&words("GET k2")), b"$3\r\ntwo\r\n");
}

/// A `SELECT` that fails inside `EXEC` leaves the client where it was.
#[test]
fn failed_select_inside_multi_keeps_the_database() {
    compare(&lines(
        "
        MULTI
        SELECT 99
        SET k v
        EXEC
        SET k2 v2
        GET k2
        MULTI
        SELECT 1
        SELECT notanumber
        EXEC
        SET k3 v3
        SELECT 1
        GET k3
        MULTI
        SELECT 5
        SELECT 1
        EXEC
        SET k4 v4
        SELECT 5
        GET k4
        SELECT 1
        GET k4
        ",
    ));
}

/// After a transaction that switched databases, the next client to run a transaction
/// through the same cachet still runs it in its own database.
#[test]
fn select_in_a_transaction_does_not_leak_to_the_next_client() {
    let pair = Pair::start();
    let mut a = pair.twin();
    a.script(&lines("MULTI\nSELECT 1\nSET k a\nEXEC"));
    drop(a);
    for i in 0..3 {
        let mut b = pair.twin();
        b.script(&lines(&format!(
            "MULTI\nSET x{i} b\nEXEC\nGET x{i}\nDBSIZE"
        )));
    }
}

/// `EXEC` or `DISCARD` without `MULTI` is an error and keeps the client's watches, so a
/// later transaction of that client still sees the conflict — and no other client
/// inherits them.
#[test]
fn exec_without_multi_keeps_watches_to_itself() {
    let pair = Pair::start();
    let mut a = pair.twin();
    let mut b = pair.twin();
    let mut w = pair.twin();
    a.script(&lines("SET k 1\nWATCH k\nEXEC\nDISCARD"));
    // Another client's transaction is not affected by a's watch.
    w.call(&words("SET k 2"));
    b.script(&lines("MULTI\nSET j 1\nEXEC"));
    // a's own watch still holds.
    a.script(&lines("MULTI\nSET k 3\nEXEC\nGET k"));
}

/// Transactions in a selected database and in RESP3.
#[test]
fn transactions_in_another_database_and_resp3() {
    let pair = Pair::start();
    let mut a = pair.twin();
    a.script(&lines(
        "
        SELECT 3
        MULTI
        SET k 1
        INCRBYFLOAT k 0.5
        HSET h f v
        HGETALL h
        EXEC
        SELECT 0
        EXISTS k
        ",
    ));
    a.call_with(&words("HELLO 3"), support::compare::hello_without_id);
    a.script(&lines(
        "
        SELECT 3
        MULTI
        GET k
        HGETALL h
        ZADD z 1.5 m
        ZSCORE z m
        GET nope
        EXEC
        ",
    ));
    a.call_with(&words("HELLO 2"), support::compare::hello_without_id);
    a.call(&words("GET k"));
}

/// Large values in and out of a transaction on the dedicated connection.
#[test]
fn large_values_inside_a_transaction() {
    let value = vec![b'v'; 2 * 1024 * 1024];
    let pair = Pair::start();
    let mut c = pair.twin();
    c.pipeline(&[
        words("MULTI"),
        support::raw::cmd(&[b"SET", b"big", &value]),
        words("GET big"),
        words("STRLEN big"),
        words("EXEC"),
        words("GET big"),
    ]);
}

/// Redis 7.0 queues `SUBSCRIBE` inside a transaction and enters subscribe mode when
/// `EXEC` runs it: the client then gets messages and subscribe-mode errors, and no
/// other client inherits the subscribed connection.
#[test]
fn subscribe_inside_multi_takes_effect_at_exec() {
    let pair = Pair::start();
    let mut a = pair.twin();
    let mut publisher = pair.twin();
    a.script(&lines("MULTI\nSUBSCRIBE ch\nEXEC\nGET k\nPING"));
    publisher.call(&words("PUBLISH ch hello"));
    a.frame(b"message on ch");
    a.script(&lines("UNSUBSCRIBE\nGET k"));
    // Another client's transaction runs on a clean connection.
    drop(a);
    let mut b = pair.twin();
    b.script(&lines("MULTI\nSET k v\nEXEC\nGET k"));
}

/// `CLIENT TRACKING ON` run by `EXEC` turns tracking on for the client (RESP3).
#[test]
fn tracking_switched_on_inside_multi() {
    let pair = Pair::start();
    let mut a = pair.twin();
    let mut writer = pair.twin();
    a.call_with(&words("HELLO 3"), support::compare::hello_without_id);
    a.script(&lines("MULTI\nCLIENT TRACKING ON\nEXEC\nGET k"));
    writer.call(&words("SET k v"));
    a.frame(b"invalidation of k");
    a.script(&lines("CLIENT TRACKING OFF\nGET k"));
}
