//! A real client library (the `redis` crate) through cachet: many tasks sharing one
//! multiplexed connection, RESP2 and RESP3, pipelines and transactions built by the
//! crate, and RESP3 pub/sub pushes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushKind, Value};
use support::cachet::Cachet;
use support::raw::{Raw, words};
use support::redis::RedisServer;

const TASKS: usize = 32;
const OPS: usize = 500;

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// One task: `OPS` rounds of SET, GET, INCR on keys of its own, every reply checked.
async fn worker(mut con: MultiplexedConnection, t: usize) {
    for i in 0..OPS {
        let key = format!("task:{t}:key:{}", i % 50);
        let value = format!("value-{t}-{i}");
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .query_async(&mut con)
            .await
            .unwrap();
        let got: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(got, value, "task {t} round {i}");
        let n: usize = redis::cmd("INCR")
            .arg(format!("task:{t}:counter"))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, i + 1, "task {t} round {i}");
    }
}

async fn concurrent_tasks(url: &str) {
    let con = connect(url).await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        tasks.spawn(worker(con.clone(), t));
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// Every counter ended at `OPS` in the upstream itself.
fn check_counters(redis: &RedisServer) {
    let mut direct = Raw::connect(redis.addr());
    for t in 0..TASKS {
        let want = format!(":{OPS}\r\n");
        let got = direct.call(&words(&format!("INCRBY task:{t}:counter 0")));
        assert_eq!(got, want.as_bytes(), "counter of task {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_connection_shared_by_32_tasks() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    concurrent_tasks(&cachet.url()).await;
    check_counters(&redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_connection_shared_by_32_tasks_in_resp3() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    concurrent_tasks(&format!("{}?protocol=resp3", cachet.url())).await;
    check_counters(&redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_and_transactions() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    for url in [cachet.url(), format!("{}?protocol=resp3", cachet.url())] {
        let mut con = connect(&url).await;
        let () = redis::cmd("FLUSHDB").query_async(&mut con).await.unwrap();
        let (ok, got, n, list): (String, String, i64, Vec<String>) = redis::pipe()
            .set("p:k", "v")
            .get("p:k")
            .incr("p:n", 5)
            .rpush("p:l", &["a", "b"])
            .ignore()
            .lrange("p:l", 0, -1)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(
            (ok.as_str(), got.as_str(), n, list),
            ("OK", "v", 5, vec!["a".into(), "b".into()])
        );

        let (n, got): (i64, Option<String>) = redis::pipe()
            .atomic()
            .incr("p:n", 1)
            .get("p:missing")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!((n, got), (6, None));

        // A transaction whose command fails at run time still runs the others.
        let r: redis::RedisResult<(i64, i64)> = redis::pipe()
            .atomic()
            .incr("p:k", 1)
            .incr("p:n", 1)
            .query_async(&mut con)
            .await;
        assert!(r.is_err(), "INCR of a string fails: {r:?}");
        let n: i64 = redis::cmd("GET")
            .arg("p:n")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 7);

        // A large pipeline in one go.
        let mut pipe = redis::pipe();
        for i in 0..2000 {
            pipe.set(format!("p:many:{i}"), i).ignore();
        }
        pipe.cmd("DBSIZE");
        let (size,): (i64,) = pipe.query_async(&mut con).await.unwrap();
        assert_eq!(size, 2003);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_pubsub_pushes() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let url = format!("{}?protocol=resp3", cachet.url());
    let client = redis::Client::open(url.as_str()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = AsyncConnectionConfig::new().set_push_sender(tx);
    let mut sub = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let mut publisher = connect(&url).await;

    sub.subscribe("news").await.unwrap();
    sub.psubscribe("sport.*").await.unwrap();
    let mut received = Vec::new();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a push within 5s")
            .expect("push channel open")
    };
    // The subscription confirmations arrive as pushes first.
    assert_eq!(next().await.kind, PushKind::Subscribe);
    assert_eq!(next().await.kind, PushKind::PSubscribe);

    for (channel, message) in [("news", "one"), ("sport.tennis", "two"), ("news", "three")] {
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(message)
            .query_async(&mut publisher)
            .await
            .unwrap();
        assert_eq!(receivers, 1);
        let push = next().await;
        received.push((push.kind, push.data.last().cloned()));
    }
    assert_eq!(
        received,
        vec![
            (PushKind::Message, Some(Value::BulkString(b"one".to_vec()))),
            (PushKind::PMessage, Some(Value::BulkString(b"two".to_vec()))),
            (
                PushKind::Message,
                Some(Value::BulkString(b"three".to_vec()))
            ),
        ]
    );

    // Commands keep working on the subscribed connection (RESP3), and after leaving.
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut sub)
        .await
        .unwrap();
    sub.unsubscribe("news").await.unwrap();
    sub.punsubscribe("sport.*").await.unwrap();
    assert_eq!(next().await.kind, PushKind::Unsubscribe);
    assert_eq!(next().await.kind, PushKind::PUnsubscribe);
    let got: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut sub)
        .await
        .unwrap();
    assert_eq!(got, "v");
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("news")
        .arg("nobody")
        .query_async(&mut publisher)
        .await
        .unwrap();
    assert_eq!(receivers, 0);
}
