//! Upstream faults injected between cachet and real `redis-server`s (the fault shim of
//! `tests/support/shim.rs`), and upstreams that answer but do not serve: refused
//! connections, a reset in the middle of a reply, a stall past `command_timeout`, a
//! restart with an empty dataset, `-LOADING`, `-READONLY` from a replica after a
//! failover, `-MASTERDOWN`. Each asserts the exact replies, that other clients keep
//! being answered, readiness, and that writes are neither lost nor duplicated.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cachet::config::Config;
use support::cachet::{Cachet, config_for};
use support::http::get;
use support::raw::{Raw, cmd, served_again, words};
use support::redis::RedisServer;
use support::shim::{Fault, Shim};

fn with_admin(mut config: Config) -> Config {
    config.admin.address = Some("127.0.0.1:0".parse().unwrap());
    config
}

fn ready(cachet: &Cachet) -> u16 {
    get(cachet.admin.expect("admin enabled"), "/readyz").0
}

fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).into_owned()
}

/// A value of `INFO` (`field:value` lines) from a direct connection.
fn info_field(redis: SocketAddr, section: &str, field: &str) -> Option<String> {
    let info = text(&Raw::connect(redis).call(&words(&format!("INFO {section}"))));
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_owned))
}

#[test]
fn refused_connections_fail_fast_and_cachet_reconnects() {
    let redis = RedisServer::start();
    let shim = Shim::start(redis.addr());
    let cachet = Cachet::start_with(with_admin(config_for(&shim.url())));
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    eventually("ready", Duration::from_secs(5), || ready(&cachet) == 200);

    shim.refuse(true);
    shim.reset_all();
    eventually("not ready", Duration::from_secs(5), || {
        ready(&cachet) == 503
    });
    // Every client, old and new, gets an error at once: no hang, no stale success.
    let mut other = Raw::connect(cachet.addr);
    for client in [&mut c, &mut other] {
        let start = Instant::now();
        let r = client.call(&words("GET k"));
        assert_eq!(
            text(&r),
            format!(
                "-ERR cachet: upstream unavailable: {}: Connection refused (os error 111)\r\n",
                shim.addr()
            )
        );
        // Well under the default command_timeout (what a request queued for a down
        // upstream would wait), with room for a loaded machine.
        let took = start.elapsed();
        assert!(took < Duration::from_millis(500), "answered after {took:?}");
    }

    shim.refuse(false);
    let took = served_again(&mut other, Duration::from_secs(3));
    // The backoff caps at 1 s; an uncapped doubling would wait 1.6 s, then 3.2 s.
    assert!(
        took < Duration::from_millis(2500),
        "backoff caps at 1s: {took:?}"
    );
    assert_eq!(c.call(&words("GET k")), b"$1\r\nv\r\n");
    eventually("ready again", Duration::from_secs(5), || {
        ready(&cachet) == 200
    });
}

#[test]
fn a_reset_mid_reply_fails_what_is_outstanding_and_never_resends_a_write() {
    let redis = RedisServer::start();
    let shim = Shim::start(redis.addr());
    let cachet = Cachet::start(&shim.url());
    let mut c = Raw::connect(cachet.addr);
    let mut bystander = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET counter 0")), b"+OK\r\n");

    // 2,000 pipelined INCRs of a strict key (each MULTI, INCR, PUBLISH, EXEC upstream);
    // the connection is reset after 8 KiB of replies, in the middle of one.
    let n = 2000;
    shim.set(Fault::CutAfter(8 * 1024 + 7));
    let pipeline: Vec<u8> = (0..n).flat_map(|_| words("INCR counter")).collect();
    let start = Instant::now();
    c.send(&pipeline);
    let (mut ok, mut failed) = (Vec::new(), 0);
    for _ in 0..n {
        let r = c
            .try_frame(Duration::from_secs(5))
            .expect("every command is answered");
        if let Some(v) = r.strip_prefix(b":") {
            ok.push(text(v).trim_end().parse::<i64>().unwrap());
        } else {
            // Reset while reading (ECONNRESET) or while writing (EPIPE).
            let r = text(&r);
            assert!(
                r.starts_with("-ERR cachet: upstream connection lost: ")
                    && r.ends_with("; the command may or may not have been applied\r\n"),
                "{r}"
            );
            failed += 1;
        }
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        failed > 0 && !ok.is_empty(),
        "{} ok, {failed} failed",
        ok.len()
    );
    assert!(shim.accepted() > 2, "the shared connection was replaced");
    // The client saw each acknowledged increment once, in order.
    assert!(ok.windows(2).all(|w| w[0] < w[1]), "{ok:?}");
    assert_eq!(bystander.call(&words("PING")), b"+PONG\r\n");

    // No INCR reached Redis twice: what Redis ran is exactly the counter, at most one
    // per INCR sent, and at least every acknowledged one.
    let calls: i64 = info_field(redis.addr(), "commandstats", "cmdstat_incr")
        .and_then(|s| s.split(',').next()?.strip_prefix("calls=")?.parse().ok())
        .expect("cmdstat_incr");
    let counter = text(&c.call(&words("GET counter")));
    assert_eq!(
        counter,
        format!("${}\r\n{calls}\r\n", calls.to_string().len())
    );
    assert!(calls <= n as i64, "{calls} INCRs ran for {n} sent");
    assert!(calls >= *ok.last().unwrap(), "acknowledged INCRs ran");
}

#[test]
fn a_stall_past_command_timeout_answers_promptly_and_replaces_the_connection() {
    let redis = RedisServer::start();
    let shim = Shim::start(redis.addr());
    let mut config = config_for(&shim.url());
    config.upstream.command_timeout = Duration::from_millis(300);
    config.upstream.shared_connections = 1;
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    let before = shim.accepted();

    shim.set(Fault::Stall {
        to_server: false,
        to_client: true,
    });
    let start = Instant::now();
    c.send(&[words("GET k"), words("INCR n")].concat());
    for _ in 0..2 {
        assert_eq!(
            text(&c.frame()),
            "-ERR cachet: upstream did not answer within 300ms; \
             the command may or may not have been applied\r\n"
        );
    }
    let waited = start.elapsed();
    // Both answered at (about) the 300 ms timeout, not one timeout after the other and
    // not at some later reconnect; generous for a loaded machine.
    assert!(
        waited < Duration::from_millis(1500),
        "answered after {waited:?}"
    );
    // The stalled connection is closed and a new one opened.
    eventually("a new connection", Duration::from_secs(2), || {
        shim.accepted() > before
    });

    shim.set(Fault::Pass);
    served_again(&mut c, Duration::from_secs(3));
    eventually(
        "the stalled connection closed",
        Duration::from_secs(2),
        || shim.open() <= 2,
    );
    assert_eq!(c.call(&words("GET k")), b"$1\r\nv\r\n");
    // The INCR reached Redis (only replies were stalled) and was not sent again.
    assert_eq!(c.call(&words("GET n")), b"$1\r\n1\r\n");
}

#[test]
fn delayed_replies_within_command_timeout_are_served() {
    let redis = RedisServer::start();
    let shim = Shim::start(redis.addr());
    let cachet = Cachet::start(&shim.url());
    let mut c = Raw::connect(cachet.addr);
    shim.set(Fault::Delay(Duration::from_millis(30)));
    let start = Instant::now();
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET k")), b"$1\r\nv\r\n");
    assert!(
        start.elapsed() >= Duration::from_millis(120),
        "both ways delayed"
    );
}

#[test]
fn an_upstream_restarted_empty_is_reconnected_and_leases_do_not_wedge() {
    let mut redis = RedisServer::start();
    let mut config = with_admin(config_for(&redis.url()));
    config.consistency.lease_ttl = Duration::from_millis(500);
    config.consistency.fill_window = Duration::from_secs(1);
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    // `:1:*` is a cache keyspace: the miss takes a lease kept upstream.
    assert_eq!(c.call(&words("GET :1:page")), b"$-1\r\n");
    eventually("ready", Duration::from_secs(5), || ready(&cachet) == 200);

    redis.kill();
    eventually("not ready", Duration::from_secs(5), || {
        ready(&cachet) == 503
    });
    assert!(
        c.call(&words("SET :1:page old"))
            .starts_with(b"-ERR cachet: upstream")
    );
    redis.restart();
    served_again(&mut c, Duration::from_secs(3));
    eventually("ready again", Duration::from_secs(5), || {
        ready(&cachet) == 200
    });

    // The dataset (and every recorded miss) is gone: for fill_window no SET of a
    // cache key is stored (it may be the fill of a miss the upstream forgot)...
    assert_eq!(c.call(&words("GET :1:page")), b"$-1\r\n");
    assert_eq!(c.call(&words("SET :1:page early EX 60")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET :1:page")), b"$-1\r\n");
    // ...after it, a new miss, fill and hit work, on this client and a new one, and
    // the scripts were loaded again.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(c.call(&words("GET :1:page")), b"$-1\r\n");
    assert_eq!(c.call(&words("SET :1:page fresh EX 60")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET :1:page")), b"$5\r\nfresh\r\n");
    let mut other = Raw::connect(cachet.addr);
    assert_eq!(other.call(&words("GET :1:page")), b"$5\r\nfresh\r\n");
    assert_eq!(other.call(&words("KEYS *")), b"*1\r\n$7\r\n:1:page\r\n");
}

#[test]
fn loading_is_passed_through_and_readiness_is_false_meanwhile() {
    let redis = RedisServer::start();
    let cachet = Cachet::start_with(with_admin(config_for(&redis.url())));
    let mut c = Raw::connect(cachet.addr);
    let mut direct = Raw::connect(redis.addr());
    assert_eq!(
        direct.call(&words("DEBUG POPULATE 20000")),
        b"+OK\r\n",
        "a dataset to load"
    );
    // Loading takes about a second: 50 µs per key, other clients served in between.
    direct.call(&words("CONFIG SET key-load-delay 50"));
    direct.call(&words(
        "CONFIG SET loading-process-events-interval-bytes 1024",
    ));
    eventually("ready", Duration::from_secs(5), || ready(&cachet) == 200);
    direct.send(&words("DEBUG RELOAD"));

    let loading = b"-LOADING Redis is loading the dataset in memory\r\n";
    let mut seen = 0;
    let mut not_ready = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.call(&words("GET key:1"));
        if r == loading {
            seen += 1;
            not_ready |= ready(&cachet) == 503;
        } else {
            assert_eq!(text(&r), "$7\r\nvalue:1\r\n");
            if seen > 0 {
                break;
            }
        }
        // A write is refused as a whole (its invalidation did not run either), unless
        // loading ended since the GET.
        if seen == 1 {
            let r = c.call(&words("SET k v"));
            assert!(r == loading || r == b"+OK\r\n", "{}", text(&r));
        }
        assert!(
            Instant::now() < deadline,
            "loading never seen or never ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(direct.frame(), b"+OK\r\n", "DEBUG RELOAD finished");
    assert!(seen > 1, "LOADING seen {seen} times");
    assert!(not_ready, "readiness false while loading");
    eventually("ready after loading", Duration::from_secs(3), || {
        ready(&cachet) == 200
    });
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
}

#[test]
fn readonly_after_a_failover_reconnects_to_the_new_primary() {
    let primary = RedisServer::start();
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    let shim = Shim::start(replica.addr());
    let mut config = config_for(&shim.url());
    config.upstream.shared_connections = 1;
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    let readonly = b"-READONLY You can't write against a read only replica.\r\n";
    // The address reaches a replica: writes are refused verbatim, reads served.
    assert_eq!(c.call(&words("SET k v")), readonly);
    // Pointed straight at a replica, the connection is not replaced on every refused
    // write: at most once a second.
    let (start, before) = (Instant::now(), shim.accepted());
    for _ in 0..30 {
        assert_eq!(c.call(&words("SET k v")), readonly);
    }
    let replaced = shim.accepted() - before;
    // One a second, and the one the first write may have started meanwhile.
    let allowed = start.elapsed().as_secs() as usize + 2;
    assert!(replaced <= allowed, "{replaced} reconnects for 30 writes");
    Raw::connect(primary.addr()).call(&words("SET k from-primary"));
    eventually("replicated", Duration::from_secs(5), || {
        c.call(&words("GET k")) == b"$12\r\nfrom-primary\r\n"
    });

    // A transaction runs on a dedicated connection; refused the same way.
    let tx = |c: &mut Raw| {
        c.send(&[words("MULTI"), words("SET t v"), words("EXEC")].concat());
        (c.frame(), c.frame(), c.frame())
    };
    let (multi, set, exec) = tx(&mut c);
    assert_eq!(
        (multi.as_slice(), set.as_slice()),
        (&b"+OK\r\n"[..], &readonly[..])
    );
    assert_eq!(
        text(&exec),
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );

    // Failover behind the address: new connections reach the primary. The first write
    // still lands on the old connection and is refused; the connection is replaced.
    // The -READONLY reply is only a hint (a client's script could forge it): cachet
    // asks ROLE, which names a replica, and replaces the connection. It reached a
    // replica from the start, so that happens at most once a second.
    shim.retarget(primary.addr());
    let before = shim.accepted();
    assert_eq!(c.call(&words("SET k v2")), readonly);
    eventually(
        "a write reaches the new primary",
        Duration::from_secs(5),
        || {
            let r = c.call(&words("SET k v2"));
            assert!(r == readonly || r == b"+OK\r\n", "{}", text(&r));
            r == b"+OK\r\n"
        },
    );
    assert!(shim.accepted() > before);
    assert_eq!(
        Raw::connect(primary.addr()).call(&words("GET k")),
        b"$2\r\nv2\r\n"
    );
    // The dedicated connection that heard READONLY was not kept for reuse.
    let (_, set, exec) = tx(&mut c);
    assert_eq!(set, b"+QUEUED\r\n");
    assert_eq!(exec, b"*1\r\n+OK\r\n");
}

/// A primary, its replica, and cachet reaching the primary through a shim, with a short
/// `command_timeout`.
struct Failover {
    primary: RedisServer,
    replica: RedisServer,
    shim: Shim,
    cachet: Cachet,
}

impl Failover {
    fn start() -> Failover {
        let primary = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
        let shim = Shim::start(primary.addr());
        let mut config = config_for(&shim.url());
        config.upstream.command_timeout = Duration::from_millis(300);
        let cachet = Cachet::start_with(config);
        Failover {
            primary,
            replica,
            shim,
            cachet,
        }
    }

    /// Sends `write` through a stalled link, so that its fate is unknown and its
    /// invalidation is re-sent, then points the address at the replica.
    fn unknown_fate_then_replica(&self, c: &mut Raw, write: &str) {
        self.shim.set(Fault::Stall {
            to_server: true,
            to_client: true,
        });
        let r = c.call(&words(write));
        assert!(
            r.starts_with(b"-ERR cachet: upstream did not answer"),
            "{}",
            text(&r)
        );
        // Reset before passing again: bytes queued on the stalled link to the primary
        // are dropped, not forwarded.
        self.shim.retarget(self.replica.addr());
        self.shim.reset_all();
        self.shim.set(Fault::Pass);
    }

    /// Points the address at the primary again.
    fn back_to_the_primary(&self) {
        self.shim.retarget(self.primary.addr());
        self.shim.reset_all();
    }
}

#[test]
fn an_invalidation_refused_as_readonly_is_retried_until_it_lands() {
    let f = Failover::start();
    let mut c = Raw::connect(f.cachet.addr);
    assert_eq!(c.call(&words("GET :1:k")), b"$-1\r\n");
    // Subscribed before anything is re-sent, so the message cannot pass unseen.
    let mut sub = Raw::connect(f.primary.addr());
    sub.call(&words("SUBSCRIBE cachet:invalidate"));

    // The re-sent invalidation is answered READONLY, which is not a success.
    f.unknown_fate_then_replica(&mut c, "DEL :1:k");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sub.try_frame(Duration::from_millis(10)), None);
    // Once the address reaches a primary again, the invalidation lands there.
    f.back_to_the_primary();
    let msg = sub
        .try_frame(Duration::from_secs(5))
        .expect("the invalidation is re-sent to the primary");
    assert!(msg.ends_with(b"$4\r\n:1:k\r\n"), "{}", text(&msg));
}

#[test]
fn a_strict_invalidation_a_replica_accepted_is_re_sent_until_a_primary_has_it() {
    let f = Failover::start();
    let mut c = Raw::connect(f.cachet.addr);
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    let mut on_primary = Raw::connect(f.primary.addr());
    on_primary.call(&words("SUBSCRIBE cachet:invalidate"));
    let mut on_replica = Raw::connect(f.replica.addr());
    on_replica.call(&words("SUBSCRIBE cachet:invalidate"));

    // `k` is strict: its invalidation is re-sent as a bare PUBLISH, which a replica
    // accepts (and tells nobody but its own subscribers).
    f.unknown_fate_then_replica(&mut c, "DEL k");
    let msg = on_replica
        .try_frame(Duration::from_secs(5))
        .expect("the invalidation is re-sent to the replica");
    assert!(msg.ends_with(b"$1\r\nk\r\n"), "{}", text(&msg));
    // The replica's `:1` did not count: it is sent again once a primary is reached.
    f.back_to_the_primary();
    let msg = on_primary
        .try_frame(Duration::from_secs(5))
        .expect("the invalidation is re-sent to the primary");
    assert!(msg.ends_with(b"$1\r\nk\r\n"), "{}", text(&msg));
}

#[test]
fn errors_a_client_forges_with_a_script_neither_reconnect_nor_flap_readiness() {
    let redis = RedisServer::start();
    let shim = Shim::start(redis.addr());
    let mut config = with_admin(config_for(&shim.url()));
    config.upstream.shared_connections = 1;
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    eventually("ready", Duration::from_secs(5), || ready(&cachet) == 200);
    let before = shim.accepted();

    for err in [
        "READONLY You can't write against a read only replica.",
        "LOADING Redis is loading the dataset in memory",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    ] {
        let script = format!("return redis.error_reply(\"{err}\")");
        for _ in 0..10 {
            let r = c.call(&cmd(&[b"EVAL", script.as_bytes(), b"0"]));
            assert_eq!(text(&r), format!("-{err}\r\n"));
            assert_eq!(ready(&cachet), 200, "after a forged -{err}");
            assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
        }
    }
    // cachet checked with ROLE and PING of its own, and kept its one connection.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ready(&cachet), 200);
    assert_eq!(
        shim.accepted(),
        before,
        "the shared connection was replaced"
    );
    assert_eq!(shim.open(), 1);
}

#[test]
fn readiness_does_not_need_ping_to_be_allowed() {
    // PING renamed away upstream.
    let renamed = RedisServer::start_with(&["--rename-command", "PING", ""]);
    // PING denied to cachet's user.
    let denied = RedisServer::start();
    Raw::connect(denied.addr()).call(&words("ACL SETUSER cachet on >pw ~* &* +@all -ping"));
    let urls = [
        renamed.url(),
        format!("redis://cachet:pw@{}/0", denied.addr()),
    ];
    for url in urls {
        let cachet = Cachet::start_with(with_admin(config_for(&url)));
        let mut c = Raw::connect(cachet.addr);
        assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
        assert_eq!(c.call(&words("GET k")), b"$1\r\nv\r\n");
        eventually("ready", Duration::from_secs(3), || ready(&cachet) == 200);
        // And it stays so: the probe's error is no reason to stop serving.
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(ready(&cachet), 200, "{url}");
    }
}

#[test]
fn masterdown_is_passed_through_and_readiness_follows_the_replica() {
    let mut primary = RedisServer::start();
    primary.kill();
    let replica = RedisServer::start_with(&[
        "--replicaof",
        "127.0.0.1",
        &primary.port().to_string(),
        "--replica-serve-stale-data",
        "no",
    ]);
    let cachet = Cachet::start_with(with_admin(config_for(&replica.url())));
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(
        text(&c.call(&words("GET k"))),
        "-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n"
    );
    // The probe sent on connect hears -MASTERDOWN too.
    eventually(
        "not ready while the replica serves nothing",
        Duration::from_secs(3),
        || ready(&cachet) == 503,
    );
    // cachet itself keeps answering: local commands and other clients.
    let mut other = Raw::connect(cachet.addr);
    assert_eq!(other.call(&words("CLIENT GETNAME")), b"$-1\r\n");

    primary.restart();
    Raw::connect(primary.addr()).call(&words("SET k v"));
    eventually("the replica serves", Duration::from_secs(10), || {
        c.call(&words("GET k")) == b"$1\r\nv\r\n"
    });
    eventually("ready", Duration::from_secs(3), || ready(&cachet) == 200);
}
