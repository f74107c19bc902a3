//! A real Redis Cluster on free loopback ports: three primaries with one replica each,
//! made of `redis-server --cluster-enabled yes` processes joined by
//! `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`; stopped when
//! dropped.

use std::process::Command;
use std::time::{Duration, Instant};

use super::raw::{Raw, cmd, words};
use super::redis::RedisServer;

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three primaries and three replicas, every slot assigned, the cluster `ok`.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until(
            Duration::from_secs(20),
            "every node says the cluster is ok",
            |c| {
                c.nodes.iter().all(|n| {
                    String::from_utf8_lossy(&Raw::connect(n.addr()).call(&words("CLUSTER INFO")))
                        .contains("cluster_state:ok")
                })
            },
        );
        // A replica that never synced refuses to stand in for its primary.
        cluster.wait_until(Duration::from_secs(20), "every replica is in sync", |c| {
            c.nodes.iter().all(|n| {
                let info = String::from_utf8_lossy(
                    &Raw::connect(n.addr()).call(&words("INFO replication")),
                )
                .into_owned();
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        cluster
    }

    /// `redis+cluster://` naming one node as the seed.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", self.nodes[0].addr())
    }

    /// The node that serves `key` as primary now: the one a node's `-MOVED` names,
    /// or that node itself.
    pub fn primary_of(&self, key: &str) -> &RedisServer {
        for n in &self.nodes {
            let r = Raw::connect(n.addr()).call(&cmd(&[b"TYPE", key.as_bytes()]));
            let text = String::from_utf8_lossy(&r);
            match text.strip_prefix("-MOVED ") {
                Some(rest) => {
                    let port: u16 = rest
                        .trim()
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .expect("a port");
                    if let Some(p) = self.nodes.iter().find(|n| n.port() == port) {
                        return p;
                    }
                }
                None if text.starts_with('+') => return n,
                None => {}
            }
        }
        panic!("no node serves {key}");
    }

    /// The replica of `primary`.
    pub fn replica_of(&self, primary: &RedisServer) -> &RedisServer {
        let port = format!(":{}\r\n", primary.port());
        self.nodes
            .iter()
            .find(|n| {
                let r = Raw::connect(n.addr()).call(&words("ROLE"));
                let text = String::from_utf8_lossy(&r);
                text.starts_with("*5\r\n$5\r\nslave") && text.contains(&port)
            })
            .expect("a replica")
    }

    /// The node id of `node`.
    pub fn id_of(&self, node: &RedisServer) -> String {
        let r = Raw::connect(node.addr()).call(&words("CLUSTER MYID"));
        String::from_utf8_lossy(&r)
            .lines()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    }

    /// How many slots `node` serves, as its own line of `CLUSTER NODES` says.
    pub fn slots_of(&self, node: &RedisServer) -> usize {
        let r = Raw::connect(node.addr()).call(&words("CLUSTER NODES"));
        let text = String::from_utf8_lossy(&r).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("myself"))
            .expect("its own line");
        line.split(' ')
            .skip(8)
            .filter(|r| !r.starts_with('['))
            .map(|r| match r.split_once('-') {
                Some((a, b)) => {
                    b.parse::<usize>().expect("slot") - a.parse::<usize>().expect("slot") + 1
                }
                None => 1,
            })
            .sum()
    }

    /// Moves `slots` slots from `from` to `to` with `redis-cli --cluster reshard`.
    pub fn reshard(&self, from: &RedisServer, to: &RedisServer, slots: usize) {
        let out = Command::new("redis-cli")
            .args(["--cluster", "reshard", &from.addr().to_string()])
            .args(["--cluster-from", &self.id_of(from)])
            .args(["--cluster-to", &self.id_of(to)])
            .args(["--cluster-slots", &slots.to_string()])
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// A primary other than `than`.
    pub fn other_primary(&self, than: &RedisServer) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| {
                n.port() != than.port()
                    && Raw::connect(n.addr())
                        .call(&words("ROLE"))
                        .starts_with(b"*3\r\n$6\r\nmaster")
            })
            .expect("another primary")
    }

    pub fn slot(&self, key: &str) -> u16 {
        let r = Raw::connect(self.nodes[0].addr()).call(&cmd(&[
            b"CLUSTER",
            b"KEYSLOT",
            key.as_bytes(),
        ]));
        let text = String::from_utf8_lossy(&r);
        text.trim_start_matches(':').trim().parse().expect("slot")
    }

    /// Moves `slot` (with its keys) from its primary to `to`, as `redis-cli --cluster
    /// reshard` does: `SETSLOT IMPORTING`/`MIGRATING`, `MIGRATE` the keys, `SETSLOT
    /// NODE` on both. `between` runs while the slot is half-moved.
    pub fn move_slot(
        &self,
        slot: u16,
        from: &RedisServer,
        to: &RedisServer,
        between: impl FnOnce(),
    ) {
        let (from_id, to_id) = (self.id_of(from), self.id_of(to));
        let ok = |r: Vec<u8>| assert_eq!(r, b"+OK\r\n", "{}", String::from_utf8_lossy(&r));
        ok(Raw::connect(to.addr()).call(&words(&format!(
            "CLUSTER SETSLOT {slot} IMPORTING {from_id}"
        ))));
        ok(Raw::connect(from.addr())
            .call(&words(&format!("CLUSTER SETSLOT {slot} MIGRATING {to_id}"))));
        between();
        loop {
            let r = Raw::connect(from.addr())
                .call(&words(&format!("CLUSTER GETKEYSINSLOT {slot} 100")));
            let keys = bulk_strings(&r);
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec![
                "MIGRATE".to_owned(),
                "127.0.0.1".to_owned(),
                to.port().to_string(),
                String::new(),
                "0".to_owned(),
                "5000".to_owned(),
                "KEYS".to_owned(),
            ];
            migrate.extend(keys);
            let args: Vec<&[u8]> = migrate.iter().map(|s| s.as_bytes()).collect();
            ok(Raw::connect(from.addr()).call(&cmd(&args)));
        }
        for n in &self.nodes {
            let _ = Raw::connect(n.addr())
                .call(&words(&format!("CLUSTER SETSLOT {slot} NODE {to_id}")));
        }
    }

    pub fn wait_until(&self, within: Duration, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The bulk strings of a flat array reply.
fn bulk_strings(reply: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(reply);
    let mut out = Vec::new();
    let mut lines = text.split("\r\n").skip(1);
    while let Some(l) = lines.next() {
        if l.starts_with('$')
            && let Some(v) = lines.next()
        {
            out.push(v.to_owned());
        }
    }
    out
}
