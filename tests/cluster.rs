//! A Redis Cluster upstream (`redis+cluster://`): three primaries with a replica each,
//! real `redis-server --cluster-enabled yes` processes on free ports. Keys are routed to
//! the primary serving their slot, cross-slot commands answer as a cluster node does,
//! a slot moved under load and a primary killed are followed without the client seeing
//! redirects, and the fill protocol keeps its promise with its state in each key's
//! slot (docs/design.md, "Redis Cluster").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use support::cachet::{Cachet, config_for};
use support::cluster::RedisCluster;
use support::raw::{Raw, cmd, words};
use support::redis::RedisServer;

const OK: &[u8] = b"+OK\r\n";
const NIL: &[u8] = b"$-1\r\n";
const HOLD_OFF: Duration = Duration::from_millis(300);
const LEASE: Duration = Duration::from_millis(600);

fn cachet(cluster: &RedisCluster) -> Cachet {
    let mut config = config_for(&cluster.url());
    config.admin.address = Some("127.0.0.1:0".parse().unwrap());
    config.consistency.hold_off = HOLD_OFF;
    config.consistency.lease_ttl = LEASE;
    config.consistency.fill_window = Duration::from_secs(3);
    config.consistency.coalesce_wait = Duration::from_millis(50);
    Cachet::start_with(config)
}

fn bulk(v: &str) -> Vec<u8> {
    format!("${}\r\n{v}\r\n", v.len()).into_bytes()
}

/// What the primary serving `key` holds (read directly, not through cachet).
fn upstream(cluster: &RedisCluster, key: &str) -> Vec<u8> {
    Raw::connect(cluster.primary_of(key).addr()).call(&cmd(&[b"GET", key.as_bytes()]))
}

#[test]
fn thousands_of_keys_land_on_their_primaries_and_read_back() {
    let cluster = RedisCluster::start();
    let cachet = cachet(&cluster);
    let mut c = Raw::connect(cachet.addr);
    // Ready once a connection to every primary is up, each listed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let (status, ready) = support::http::get(cachet.admin.unwrap(), "/readyz");
        if status == 200 {
            break ready;
        }
        assert!(Instant::now() < deadline, "{ready}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready.matches(" up\n").count(), 3, "{ready}");
    const N: usize = 3000;
    // Pipelined, as a client would: the replies come back in order across nodes.
    let mut sets = Vec::new();
    for i in 0..N {
        sets.extend(words(&format!("SET key:{i} v{i}")));
    }
    c.send(&sets);
    for i in 0..N {
        assert_eq!(c.frame(), OK, "SET key:{i}");
    }
    let mut gets = Vec::new();
    for i in 0..N {
        gets.extend(words(&format!("GET key:{i}")));
    }
    c.send(&gets);
    for i in 0..N {
        assert_eq!(c.frame(), bulk(&format!("v{i}")), "GET key:{i}");
    }
    // Each key is on the primary serving its slot, and the keys are spread.
    let mut ports = std::collections::BTreeSet::new();
    for i in (0..N).step_by(97) {
        let key = format!("key:{i}");
        assert_eq!(upstream(&cluster, &key), bulk(&format!("v{i}")));
        ports.insert(cluster.primary_of(&key).port());
    }
    assert_eq!(ports.len(), 3, "keys on every primary");
    assert_eq!(c.call(&words("DBSIZE")), format!(":{N}\r\n").into_bytes());
}

#[test]
fn commands_answer_as_a_cluster_node_does() {
    let cluster = RedisCluster::start();
    let cachet = cachet(&cluster);
    let mut c = Raw::connect(cachet.addr);
    let mut node = Raw::connect(cluster.primary_of("a").addr());
    // Multi-key commands across slots: split by slot, answered as one Redis would.
    let standalone = RedisServer::start();
    let mut one = Raw::connect(standalone.addr());
    for line in [
        "MSET a 1 b 2 c 3 {a}x 4 :1:d 5",
        "MGET c nope a {a}x b :1:d",
        "EXISTS a b nope c a",
        "TOUCH a b nope",
        "MGET a",
        "DEL a b nope {a}x",
        "UNLINK c :1:d",
        "MGET a b c {a}x :1:d",
        "MSET a",
    ] {
        assert_eq!(
            String::from_utf8_lossy(&c.call(&words(line))),
            String::from_utf8_lossy(&one.call(&words(line))),
            "{line}"
        );
    }
    // Other commands across slots: Redis Cluster's own refusal, byte for byte.
    for line in ["SINTER a b", "RENAME a b", "MSETNX a 1 b 2"] {
        assert_eq!(c.call(&words(line)), node.call(&words(line)), "{line}");
    }
    // Keys sharing a hash tag go together.
    assert_eq!(c.call(&words("MSET {u1}:a 1 {u1}:b 2")), OK);
    assert_eq!(
        c.call(&words("MGET {u1}:a {u1}:b")),
        b"*2\r\n$1\r\n1\r\n$1\r\n2\r\n"
    );
    assert_eq!(c.call(&words("DEL {u1}:a {u1}:b")), b":2\r\n");
    // A cluster has database 0 only.
    assert!(c.call(&words("SELECT 1")).starts_with(b"-ERR"));
    assert_eq!(c.call(&words("SELECT 0")), OK);
    // Keyless commands: one node, or every primary.
    assert_eq!(c.call(&words("PING")), b"+PONG\r\n");
    // (Cache keys above left fill-protocol state behind, which DBSIZE counts.)
    assert_eq!(c.call(&words("FLUSHALL")), OK);
    for i in 0..30 {
        assert_eq!(c.call(&words(&format!("SET k{i} x"))), OK);
    }
    assert_eq!(c.call(&words("DBSIZE")), b":30\r\n");
    let keys = c.call(&words("KEYS k*"));
    assert!(
        keys.starts_with(b"*30\r\n"),
        "{}",
        String::from_utf8_lossy(&keys)
    );
    assert_eq!(c.call(&words("FLUSHALL")), OK);
    assert_eq!(c.call(&words("DBSIZE")), b":0\r\n");
    // A transaction on one slot.
    assert_eq!(c.call(&words("WATCH {t}x")), OK);
    assert_eq!(c.call(&words("MULTI")), OK);
    assert_eq!(c.call(&words("SET {t}x 1")), b"+QUEUED\r\n");
    assert_eq!(c.call(&words("INCR {t}y")), b"+QUEUED\r\n");
    assert_eq!(c.call(&words("EXEC")), b"*2\r\n+OK\r\n:1\r\n");
    assert_eq!(upstream(&cluster, "{t}y"), bulk("1"));
    // A transaction without WATCH goes where its first command's keys live, on
    // whichever primary that is.
    for tag in ["a", "b", "c", "d"] {
        assert_eq!(c.call(&words("MULTI")), OK);
        assert_eq!(c.call(&words(&format!("SET {{{tag}}}x 1"))), b"+QUEUED\r\n");
        assert_eq!(c.call(&words(&format!("INCR {{{tag}}}y"))), b"+QUEUED\r\n");
        assert_eq!(c.call(&words("EXEC")), b"*2\r\n+OK\r\n:1\r\n", "{tag}");
        assert_eq!(upstream(&cluster, &format!("{{{tag}}}y")), bulk("1"));
    }
    // Empty and nested transactions answer as Redis does.
    assert_eq!(c.call(&words("MULTI")), OK);
    assert_eq!(c.call(&words("EXEC")), b"*0\r\n");
    assert_eq!(c.call(&words("MULTI")), OK);
    assert_eq!(
        c.call(&words("MULTI")),
        b"-ERR MULTI calls can not be nested\r\n"
    );
    assert_eq!(c.call(&words("DISCARD")), OK);
    assert_eq!(c.call(&words("GET {a}x")), bulk("1"));
    // A split command's reply follows CLIENT REPLY like any other.
    c.send(&words("CLIENT REPLY OFF"));
    c.send(&words("MGET a b c {a}x"));
    assert_eq!(c.call(&words("CLIENT REPLY ON")), OK);
    assert_eq!(c.call(&words("GET {a}x")), bulk("1"));
}

/// A slot migrated with `SETSLOT MIGRATING/IMPORTING` and `MIGRATE`, as `redis-cli
/// --cluster reshard` does, while a client reads and writes keys in it: `-ASK` and
/// `-MOVED` are followed by cachet, the client sees no error and reads its writes.
/// A client writing and reading back its own writes through `addr` until `stop`: keys
/// from `key(n)`, strict ones and cache ones (whose writes run the fill protocol's
/// scripts, their state in the same slot). Returns the rounds and every error, a read
/// that did not return its own write with what each node holds.
fn read_your_writes(
    addr: std::net::SocketAddr,
    nodes: Vec<std::net::SocketAddr>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    key: fn(u64) -> String,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let mut c = Raw::connect(addr);
        let mut errors = Vec::new();
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            let key = match n % 2 {
                0 => key(n),
                _ => format!(":1:{}", key(n)),
            };
            let r = c.call(&words(&format!("SET {key} {n}")));
            if r != OK {
                errors.push(String::from_utf8_lossy(&r).into_owned());
            }
            let r = c.call(&words(&format!("GET {key}")));
            if r != bulk(&n.to_string()) {
                let direct: Vec<String> = nodes
                    .iter()
                    .map(|a| {
                        let mut d = Raw::connect(*a);
                        d.send(&words("ASKING"));
                        let _ = d.frame();
                        String::from_utf8_lossy(&d.call(&words(&format!("GET {key}")))).into_owned()
                    })
                    .collect();
                let again =
                    String::from_utf8_lossy(&c.call(&words(&format!("GET {key}")))).into_owned();
                errors.push(format!(
                    "GET {key} after SET {n}: {} (again: {again}; nodes: {direct:?})",
                    String::from_utf8_lossy(&r)
                ));
            }
        }
        (n, errors)
    })
}

fn no_errors(load: std::thread::JoinHandle<(u64, Vec<String>)>) {
    let (n, errors) = load.join().unwrap();
    assert!(n > 100, "{n} rounds");
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

#[test]
fn a_slot_moved_under_load_is_followed_without_client_errors() {
    let cluster = RedisCluster::start();
    let cachet = cachet(&cluster);
    let from = cluster.primary_of("{hot}");
    let to = cluster.other_primary(from);
    let slot = cluster.slot("{hot}");
    let addr = cachet.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let nodes: Vec<std::net::SocketAddr> = cluster.nodes.iter().map(|n| n.addr()).collect();
    let load = read_your_writes(addr, nodes, stop.clone(), |n| format!("{{hot}}:{}", n % 50));
    std::thread::sleep(Duration::from_millis(300));
    cluster.move_slot(slot, from, to, || {
        std::thread::sleep(Duration::from_millis(300))
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    no_errors(load);
    assert_eq!(cluster.primary_of("{hot}").port(), to.port());
    // Followed, not avoided: commands were sent again, and the map changed.
    let (_, metrics) = support::http::get(cachet.admin.unwrap(), "/metrics");
    assert!(support::http::sample(&metrics, "cachet_cluster_redirects_total") > 0.0);
    assert!(support::http::sample(&metrics, "cachet_cluster_slot_map_changes_total") > 0.0);
    assert_eq!(
        support::http::sample(&metrics, "cachet_cluster_failovers_total"),
        0.0
    );
    let mut c = Raw::connect(addr);
    assert_eq!(c.call(&words("SET {hot}:after 1")), OK);
    assert_eq!(upstream(&cluster, "{hot}:after"), bulk("1"));
}

/// `redis-cli --cluster reshard` moves a thousand slots between primaries while two
/// clients write keys spread over every slot and read each write back: no error, no
/// lost write, and no failover seen where there was none.
#[test]
fn slots_resharded_by_redis_cli_under_load_lose_no_write() {
    let cluster = RedisCluster::start();
    let cachet = cachet(&cluster);
    let from = cluster.primary_of("{hot}");
    let to = cluster.other_primary(from);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let nodes: Vec<std::net::SocketAddr> = cluster.nodes.iter().map(|n| n.addr()).collect();
    let loads = [
        read_your_writes(cachet.addr, nodes.clone(), stop.clone(), |n| {
            format!("spread:{}", n % 3000)
        }),
        read_your_writes(cachet.addr, nodes, stop.clone(), |n| {
            format!("other:{}", (n * 7) % 3000)
        }),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let before = cluster.slots_of(from);
    cluster.reshard(from, to, 1000);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for load in loads {
        no_errors(load);
    }
    assert_eq!(cluster.slots_of(from), before - 1000);
    let (_, metrics) = support::http::get(cachet.admin.unwrap(), "/metrics");
    assert!(support::http::sample(&metrics, "cachet_cluster_redirects_total") > 0.0);
    assert_eq!(
        support::http::sample(&metrics, "cachet_cluster_failovers_total"),
        0.0
    );
}

/// A primary dies; its replica is promoted by the cluster; cachet's clients are served
/// again within seconds.
#[test]
fn a_killed_primary_is_replaced_and_clients_recover_within_seconds() {
    let mut cluster = RedisCluster::start();
    let cachet = cachet(&cluster);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET victim 1")), OK);
    let port = cluster.primary_of("victim").port();
    let i = cluster.nodes.iter().position(|n| n.port() == port).unwrap();
    let killed = Instant::now();
    cluster.nodes[i].kill();
    let deadline = killed + Duration::from_secs(20);
    let recovered = loop {
        let r = c.call(&words("SET victim 2"));
        if r == OK {
            break killed.elapsed();
        }
        if Instant::now() >= deadline {
            let alive = cluster.nodes.iter().find(|n| n.port() != port).unwrap();
            let nodes = Raw::connect(alive.addr()).call(&words("CLUSTER NODES"));
            panic!(
                "still failing: {}; the cluster says {}",
                String::from_utf8_lossy(&r),
                String::from_utf8_lossy(&nodes)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (_, metrics) = support::http::get(cachet.admin.unwrap(), "/metrics");
    assert_eq!(
        support::http::sample(&metrics, "cachet_cluster_primaries_up"),
        3.0
    );
    // Each primary by address: the promoted replica up, the dead one gone.
    let up: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("cachet_cluster_primary_up{") && l.ends_with(" 1"))
        .collect();
    assert_eq!(up.len(), 3, "{metrics}");
    assert!(
        !metrics.contains(&format!("node=\"127.0.0.1:{port}\"")),
        "{metrics}"
    );
    // The cluster itself needs node-timeout (2 s) and an election; cachet adds at most
    // its map refresh.
    assert!(
        recovered < Duration::from_secs(10),
        "recovered after {recovered:?}"
    );
    assert_eq!(c.call(&words("GET victim")), bulk("2"));
}

/// A replica promoted by a failover may lack what its old primary acknowledged: here an
/// invalidation and a miss's record. cachet recognises the failover in the slot map
/// (the replica now serves its primary's slots), sends its recent invalidations of
/// those slots again, and drops fills of keys without state for `fill_window`: the
/// entry deleted before the failover does not come back, and the miss's slow fill is
/// not stored. (The lost replication is simulated: the replica saves its dataset before
/// the commands and reloads it after they replicated, which leaves it exactly as a
/// replication stream cut before them would have.)
#[test]
fn after_a_failover_lost_invalidations_are_sent_again_and_lost_misses_refuse_fills() {
    let cluster = RedisCluster::start();
    let cachet = cachet(&cluster);
    let (entry, missed) = (":1:{fo}entry", ":1:{fo}missed");
    let mut c = Raw::connect(cachet.addr);
    let mut reader = Raw::connect(cachet.addr);
    assert_eq!(c.call(&cmd(&[b"SET", entry.as_bytes(), b"v1"])), OK);
    let primary = cluster.primary_of(entry);
    let replica = cluster.replica_of(primary);
    let mut on_replica = Raw::connect(replica.addr());
    assert_eq!(on_replica.call(&words("READONLY")), OK);
    let mut replica_get = |key: &str| on_replica.call(&cmd(&[b"GET", key.as_bytes()]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while replica_get(entry) != bulk("v1") {
        assert!(Instant::now() < deadline, "the entry never replicated");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(Raw::connect(replica.addr()).call(&words("SAVE")), OK);
    // A miss (recorded upstream), then a writer's delete of both keys.
    assert_eq!(reader.call(&cmd(&[b"GET", missed.as_bytes()])), NIL);
    assert_eq!(
        c.call(&cmd(&[b"DEL", entry.as_bytes(), missed.as_bytes()])),
        b":1\r\n"
    );
    while replica_get(entry) != NIL {
        assert!(Instant::now() < deadline, "the delete never replicated");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The replica as if the miss and the delete had been lost on the way.
    assert_eq!(
        Raw::connect(replica.addr()).call(&words("DEBUG RELOAD NOSAVE")),
        OK
    );
    assert_eq!(replica_get(entry), bulk("v1"));
    assert_eq!(
        Raw::connect(replica.addr()).call(&words("CLUSTER FAILOVER FORCE")),
        OK
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while replica_get(entry) != NIL {
        if Instant::now() > deadline {
            let (_, metrics) = support::http::get(cachet.admin.unwrap(), "/metrics");
            let nodes = Raw::connect(replica.addr()).call(&words("CLUSTER NODES"));
            panic!(
                "the delete was not sent again to the promoted replica: {} {}",
                String::from_utf8_lossy(&nodes),
                metrics
                    .lines()
                    .filter(|l| l.contains("cluster")
                        || l.contains("restart")
                        || l.contains("retr"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.call(&cmd(&[b"GET", entry.as_bytes()])), NIL);
    // The reader's fill, from before the delete, arrives: dropped, not stored.
    assert_eq!(
        reader.call(&cmd(&[b"SET", missed.as_bytes(), b"old", b"EX", b"600"])),
        OK
    );
    assert_eq!(replica_get(missed), NIL);
    let (_, metrics) = support::http::get(cachet.admin.unwrap(), "/metrics");
    assert_eq!(
        support::http::sample(&metrics, "cachet_cluster_failovers_total"),
        1.0
    );
    // After fill_window, fills are judged by the state the new primary keeps again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(reader.call(&cmd(&[b"GET", missed.as_bytes()])), NIL);
    assert_eq!(
        reader.call(&cmd(&[b"SET", missed.as_bytes(), b"new", b"EX", b"600"])),
        OK
    );
    assert_eq!(replica_get(missed), bulk("new"));
}

// The fill protocol against a cluster: its state lives beside each key, in its slot.

#[test]
fn a_coalesced_misser_on_another_cachet_cannot_fill_after_an_invalidation() {
    let cluster = RedisCluster::start();
    let (a, b) = (cachet(&cluster), cachet(&cluster));
    let (mut r2, mut r1, mut writer) = (
        Raw::connect(b.addr),
        Raw::connect(a.addr),
        Raw::connect(b.addr),
    );
    for key in [":1:item", ":1:other", ":1:third"] {
        assert_eq!(r2.call(&words(&format!("GET {key}"))), NIL);
        assert_eq!(r1.call(&words(&format!("GET {key}"))), NIL);
        assert_eq!(writer.call(&words(&format!("DEL {key}"))), b":0\r\n");
        std::thread::sleep(HOLD_OFF * 2);
        assert_eq!(r1.call(&words(&format!("SET {key} old EX 600"))), OK);
        assert_eq!(upstream(&cluster, key), NIL, "{key}");
    }
}

#[test]
fn fills_after_a_lease_expired_or_on_another_connection_are_judged() {
    let cluster = RedisCluster::start();
    let a = cachet(&cluster);
    let mut conns: Vec<Raw> = (0..4).map(|_| Raw::connect(a.addr)).collect();
    // A fill after its lease expired, judged by its miss.
    assert_eq!(conns[0].call(&words("GET :1:late")), NIL);
    assert_eq!(conns[3].call(&words("DEL :1:late")), b":0\r\n");
    std::thread::sleep(LEASE + HOLD_OFF);
    assert_eq!(conns[0].call(&words("SET :1:late old EX 600")), OK);
    assert_eq!(upstream(&cluster, ":1:late"), NIL);
    // A fill on a third pooled connection after a later fill.
    assert_eq!(conns[0].call(&words("GET :1:item")), NIL);
    assert_eq!(conns[3].call(&words("DEL :1:item")), b":0\r\n");
    std::thread::sleep(HOLD_OFF * 2);
    assert_eq!(conns[1].call(&words("GET :1:item")), NIL);
    assert_eq!(conns[1].call(&words("SET :1:item new EX 600")), OK);
    assert_eq!(conns[2].call(&words("SET :1:item old EX 600")), OK);
    assert_ne!(upstream(&cluster, ":1:item"), bulk("old"));
    // A fresh fill is stored.
    assert_eq!(conns[0].call(&words("GET :1:fresh")), NIL);
    assert_eq!(conns[0].call(&words("SET :1:fresh v EX 600")), OK);
    assert_eq!(upstream(&cluster, ":1:fresh"), bulk("v"));
}

/// Django's `get_many`/`set_many` without a transaction: an `MGET` and an `MSET` across
/// slots, split by cachet; each part is judged, so the key deleted in between is not
/// filled with the stale value and the others are.
#[test]
fn a_split_mset_fill_is_judged_key_by_key() {
    let cluster = RedisCluster::start();
    let a = cachet(&cluster);
    let (mut app, mut writer) = (Raw::connect(a.addr), Raw::connect(a.addr));
    assert_eq!(
        app.call(&words("MGET :1:m1 :1:m2 :1:m3")),
        b"*3\r\n$-1\r\n$-1\r\n$-1\r\n"
    );
    assert_eq!(writer.call(&words("DEL :1:m2")), b":0\r\n");
    std::thread::sleep(HOLD_OFF * 2);
    assert_eq!(app.call(&words("MSET :1:m1 a :1:m2 stale :1:m3 c")), OK);
    assert_eq!(upstream(&cluster, ":1:m1"), bulk("a"));
    assert_eq!(upstream(&cluster, ":1:m2"), NIL);
    assert_eq!(upstream(&cluster, ":1:m3"), bulk("c"));
}

/// Pub/sub through cachet: `PUBLISH` reaches subscribers whatever node either is on,
/// and sharded channels reach theirs.
#[test]
fn published_messages_reach_subscribers_across_the_cluster() {
    let cluster = RedisCluster::start();
    let a = cachet(&cluster);
    let mut sub = Raw::connect(a.addr);
    sub.send(&words("SUBSCRIBE news"));
    assert!(sub.frame().starts_with(b"*3\r\n$9\r\nsubscribe"));
    let mut ssub = Raw::connect(a.addr);
    ssub.send(&words("SSUBSCRIBE {s}chan"));
    assert!(ssub.frame().starts_with(b"*3\r\n$10\r\nssubscribe"));
    let mut publisher = Raw::connect(a.addr);
    // Published on a node other than the subscriber's (the channel name's slot does
    // not matter for PUBLISH; the key before it moves the session to another node).
    for key in ["a", "b", "c"] {
        assert_eq!(publisher.call(&words(&format!("SET {key} 1"))), OK);
    }
    assert_eq!(publisher.call(&words("PUBLISH news hello")), b":1\r\n");
    assert_eq!(
        sub.frame(),
        b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
    );
    assert_eq!(publisher.call(&words("SPUBLISH {s}chan hi")), b":1\r\n");
    assert_eq!(
        ssub.frame(),
        b"*3\r\n$8\r\nsmessage\r\n$7\r\n{s}chan\r\n$2\r\nhi\r\n"
    );
}

/// Before cachet knows any slot (the cluster never answered `CLUSTER SLOTS`: here the
/// "cluster" is a Redis without cluster support), every command gets Redis Cluster's
/// own `-CLUSTERDOWN` at once: none hangs, none loops.
#[test]
fn without_a_slot_map_commands_are_refused_not_hung() {
    let standalone = RedisServer::start();
    let mut config = config_for(&format!("redis+cluster://{}", standalone.addr()));
    config.upstream.command_timeout = Duration::from_secs(2);
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    for line in [
        "GET k",
        "DEL k",
        "MGET a b",
        "MSET a 1 b 2",
        "FLUSHALL",
        "DBSIZE",
    ] {
        let r = c.call(&words(line));
        assert!(
            r.starts_with(b"-CLUSTERDOWN"),
            "{line}: {}",
            String::from_utf8_lossy(&r)
        );
    }
    assert_eq!(c.call(&words("PING")), b"+PONG\r\n");
}

/// Redirects are read from Redis's replies, never from values or script errors: a
/// value that reads like `-TRYAGAIN` inside a transaction's reply does not re-run the
/// write, and a script's `MOVED` error to an unknown node moves nothing.
#[test]
fn values_and_scripts_cannot_redirect() {
    let cluster = RedisCluster::start();
    let cachet = cachet(&cluster);
    let mut c = Raw::connect(cachet.addr);
    let tricky = b"x\r\n-TRYAGAIN y\r\n-MOVED 0 127.0.0.1:1";
    assert_eq!(c.call(&cmd(&[b"SET", b"{v}", tricky])), OK);
    // GETDEL is a write: sent as MULTI … EXEC, whose reply holds the value.
    let r = c.call(&cmd(&[b"GETDEL", b"{v}"]));
    assert_eq!(
        r,
        [format!("${}\r\n", tricky.len()).as_bytes(), tricky, b"\r\n"].concat()
    );
    assert_eq!(c.call(&words("EXISTS {v}")), b":0\r\n");
    let r = c.call(&cmd(&[
        b"EVAL",
        b"return redis.error_reply('MOVED 0 127.0.0.1:1')",
        b"0",
    ]));
    assert!(
        r.starts_with(b"-MOVED 0 127.0.0.1:1"),
        "{}",
        String::from_utf8_lossy(&r)
    );
    assert_eq!(c.call(&words("SET {v} 1")), OK);
    assert_eq!(upstream(&cluster, "{v}"), bulk("1"));
}
