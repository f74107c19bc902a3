//! A primary watched by Redis Sentinel (`redis+sentinel://…/mymaster`): cachet finds the
//! primary through the sentinel, follows a failover with its clients recovering within
//! seconds, and after it no cache entry the old primary had invalidated comes back
//! from the new one (docs/design.md, "The promise").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use support::cachet::{Cachet, config_for};
use support::raw::{Raw, words};
use support::redis::RedisServer;

const OK: &[u8] = b"+OK\r\n";
const MASTER: &str = "mymaster";

/// The failovers of this file run one at a time: two sentinels failing over at once on
/// a loaded machine made the replay test miss its window.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A primary, a replica of it (writable, so that a test can give it what a lost
/// replication stream would have left), and one sentinel that may fail over on its own
/// (quorum 1).
struct Watched {
    primary: RedisServer,
    replica: RedisServer,
    sentinel: RedisServer,
}

impl Watched {
    fn start() -> Watched {
        let primary = RedisServer::start();
        let replica = RedisServer::start_with(&[
            "--replicaof",
            "127.0.0.1",
            &primary.port().to_string(),
            "--replica-read-only",
            "no",
        ]);
        let sentinel = RedisServer::start_sentinel(&format!(
            "sentinel monitor {MASTER} 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 3000\n",
            primary.port()
        ));
        let w = Watched {
            primary,
            replica,
            sentinel,
        };
        // Ready: the replica is in sync and the sentinel knows it.
        wait_until(Duration::from_secs(10), "the replica is in sync", || {
            info(&w.replica, "replication").contains("master_link_status:up")
        });
        wait_until(
            Duration::from_secs(10),
            "the sentinel sees the replica",
            || {
                let r = Raw::connect(w.sentinel.addr())
                    .call(&words(&format!("SENTINEL REPLICAS {MASTER}")));
                r.starts_with(b"*1")
            },
        );
        w
    }

    fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{MASTER}/0",
            self.sentinel.port()
        )
    }

    fn fail_over(&self) {
        let r =
            Raw::connect(self.sentinel.addr()).call(&words(&format!("SENTINEL FAILOVER {MASTER}")));
        assert_eq!(r, OK, "{}", String::from_utf8_lossy(&r));
        wait_until(Duration::from_secs(10), "the replica is promoted", || {
            info(&self.replica, "replication").contains("role:master")
        });
    }
}

/// `INFO <section>` of a server, or nothing if it does not answer within 2 s (a
/// demoted primary busy with its first sync from the new one): callers poll.
fn info(redis: &RedisServer, section: &str) -> String {
    let mut c = Raw::connect(redis.addr());
    c.send(&words(&format!("INFO {section}")));
    c.try_frame(Duration::from_secs(2))
        .map(|r| String::from_utf8_lossy(&r).into_owned())
        .unwrap_or_default()
}

fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(redis: &RedisServer, key: &str) -> Vec<u8> {
    Raw::connect(redis.addr()).call(&words(&format!("GET {key}")))
}

#[test]
fn clients_follow_a_failover_within_seconds() {
    let _serial = one_at_a_time();
    let w = Watched::start();
    let cachet = Cachet::start(&w.url());
    let addr = cachet.addr;
    let mut c = Raw::connect(addr);
    assert_eq!(c.call(&words("SET before 1")), OK);
    assert_eq!(get(&w.primary, "before"), b"$1\r\n1\r\n");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = Raw::connect(addr);
            let mut last_error: Option<Instant> = None;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let r = c.call(&words(&format!("SET load {n}")));
                if r != OK {
                    last_error = Some(Instant::now());
                }
                let r = c.call(&words("GET load"));
                if r != format!("${}\r\n{n}\r\n", n.to_string().len()).into_bytes() {
                    last_error = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (n, last_error)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let failed_over = Instant::now();
    w.fail_over();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (n, last_error) = load.join().unwrap();
    assert!(n > 100, "{n} rounds");
    if let Some(e) = last_error {
        let recovered = e.duration_since(failed_over);
        assert!(
            recovered < Duration::from_secs(3),
            "errors until {recovered:?} after the failover"
        );
    }
    // Writes land on the new primary, and the old one takes none.
    assert_eq!(c.call(&words("SET after 2")), OK);
    assert_eq!(get(&w.replica, "after"), b"$1\r\n2\r\n");
    wait_until(
        Duration::from_secs(10),
        "the old primary is a replica",
        || info(&w.primary, "replication").contains("role:slave"),
    );
}

/// The old primary acknowledged a delete that never reached the replica; the replica
/// is promoted, still holding the deleted entry. cachet sends the invalidations of its
/// recent writes again to the new primary, so the entry does not come back. (The lost
/// replication is simulated: the entry is written back on the replica by hand, which
/// leaves it exactly as a replication stream cut before the delete would have.)
#[test]
fn an_invalidation_the_new_primary_never_got_is_sent_again() {
    let _serial = one_at_a_time();
    let w = Watched::start();
    let cachet = Cachet::start_with(config_for(&w.url()));
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET :1:item v1")), OK);
    wait_until(Duration::from_secs(5), "the entry is replicated", || {
        get(&w.replica, ":1:item") == b"$2\r\nv1\r\n"
    });
    // The key's fill-protocol state as the replica has it before the delete.
    let state = "__cachet:{:1:item}:s::1:item";
    let mut replica = Raw::connect(w.replica.addr());
    let before = replica.call(&words(&format!("HGETALL {state}")));
    let fields = cachet::resp::reply::elements(&before).expect("the state hash");
    assert!(!fields.is_empty(), "the write recorded itself");
    assert_eq!(c.call(&words("DEL :1:item")), b":1\r\n");
    wait_until(Duration::from_secs(5), "the delete is replicated", || {
        get(&w.replica, ":1:item") == b"$-1\r\n"
    });
    // The replica as if the delete's transaction (the key's deletion and its state's
    // update) had been lost on the way.
    assert_eq!(replica.call(&words("SET :1:item v1")), OK);
    let mut restore = vec![b"HSET".to_vec(), state.as_bytes().to_vec()];
    restore.extend(fields.iter().map(|f| {
        cachet::resp::reply::string_value(f)
            .expect("a field or value")
            .to_vec()
    }));
    let restore: Vec<&[u8]> = restore.iter().map(Vec::as_slice).collect();
    replica.call(&support::raw::cmd(&restore));
    w.fail_over();
    // Sentinel names the new primary within its own timing (a few seconds under load);
    // cachet polls every 250 ms and replays at once.
    wait_until(Duration::from_secs(15), "the delete is sent again", || {
        get(&w.replica, ":1:item") == b"$-1\r\n"
    });
    assert_eq!(c.call(&words("GET :1:item")), b"$-1\r\n");
}
