//! A Redis Cluster upstream (`redis+cluster://seed,seed`): which primary serves each of
//! the 16384 hash slots, and how cachet keeps knowing it.
//!
//! The map comes from `CLUSTER SHARDS` (`CLUSTER SLOTS` before Redis 7.0), asked of a
//! known primary (or, failing those, a seed): at start-up, every [`REFRESH_EVERY`], and
//! at once when a reply says a slot moved (`-MOVED`, whose slot and address also update
//! the map on the spot). Nodes get
//! a small number, their index in an append-only table, which is part of a connection's
//! [`Identity`](super::Identity): every primary has its own shared and dedicated
//! connections, made by the same code as a single upstream's.
//!
//! cachet adds no cluster logic of its own: Redis decides where a key lives; cachet only
//! routes a command to the node that serves its keys' slot, re-sends it where `-MOVED`
//! or `-ASK` says (a slot being migrated), and answers commands whose keys span slots
//! with Redis's own `-CROSSSLOT` error. The fill protocol's state lives beside each key,
//! in its slot (`engine/reserved.rs`), so every atomic unit stays on one node.
//!
//! A slot whose new primary was its old primary's replica has failed over (a migration
//! moves slots between primaries instead). The promoted replica may lack what the old
//! primary acknowledged, fill-protocol state included, so the failover is told to the
//! hook set with [`Cluster::on_failover`] (`startup.rs`: unexplained fills are dropped
//! for a while, and the recent invalidations of those slots are sent again;
//! `docs/design.md`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::command::slot::SLOTS;
use crate::resp::reply::{elements, int_value, string_value};

/// How often the slot map is read again without a reason.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// The shortest time between two refreshes (a burst of `-MOVED` asks for one).
pub const REFRESH_AT_MOST_EVERY: Duration = Duration::from_millis(100);
/// A node number no node has: the slot is served by nobody cachet knows.
const NONE: u16 = u16::MAX;
/// Times one command is re-sent after `-MOVED`/`-ASK` before the client sees the error.
pub const MAX_REDIRECTS: u8 = 5;

/// The slot map and the node table of one cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The addresses the URL names, tried when no known primary answers.
    pub seeds: Vec<String>,
    /// `host:port` of every node ever seen, by node number (never shrinks, so that a
    /// number in an [`Identity`](super::Identity) always means the same node).
    nodes: std::sync::RwLock<Vec<Arc<str>>>,
    map: ArcSwap<SlotMap>,
    /// Wakes the refresh task early.
    pub wake: tokio::sync::Notify,
    /// Times the map changed (a metric, and how tests see a refresh).
    pub changes: AtomicU64,
    /// Commands sent again after a redirect (a metric).
    pub redirects: AtomicU64,
    /// Failovers seen: slots whose new primary was the old one's replica (a metric).
    pub failovers: AtomicU64,
    /// The primary each replica last replicated, by node number.
    replica_of: std::sync::RwLock<std::collections::HashMap<u16, u16>>,
    hook: std::sync::OnceLock<FailoverHook>,
}

/// Told `(old primary, new primary)` when slots fail over to a replica.
pub struct FailoverHook(Box<dyn Fn(u16, u16) + Send + Sync>);

impl std::fmt::Debug for FailoverHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailoverHook")
    }
}

/// Which node serves each slot.
#[derive(Debug, Clone)]
pub struct SlotMap {
    owner: Vec<u16>,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap {
            owner: vec![NONE; usize::from(SLOTS)],
        }
    }
}

/// Where `-MOVED` or `-ASK` sends a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub slot: u16,
    pub address: String,
    /// `-ASK`: the slot is being migrated; the command goes there once, after `ASKING`.
    pub ask: bool,
}

impl Redirect {
    /// Reads `-MOVED <slot> <host:port>` or `-ASK <slot> <host:port>`; `None` for
    /// anything else.
    pub fn parse(reply: &[u8]) -> Option<Redirect> {
        let (ask, rest) = if let Some(rest) = reply.strip_prefix(b"-MOVED ") {
            (false, rest)
        } else {
            (true, reply.strip_prefix(b"-ASK ")?)
        };
        let end = memchr::memchr(b'\r', rest).unwrap_or(rest.len());
        let line = std::str::from_utf8(rest.get(..end)?).ok()?;
        let (slot, address) = line.split_once(' ')?;
        let slot: u16 = slot.parse().ok().filter(|s| *s < SLOTS)?;
        Some(Redirect {
            slot,
            address: address.to_owned(),
            ask,
        })
    }
}

impl Cluster {
    pub fn new(seeds: Vec<String>) -> Cluster {
        Cluster {
            seeds,
            nodes: std::sync::RwLock::new(Vec::new()),
            map: ArcSwap::from_pointee(SlotMap::default()),
            wake: tokio::sync::Notify::new(),
            changes: AtomicU64::new(0),
            redirects: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            replica_of: std::sync::RwLock::new(std::collections::HashMap::new()),
            hook: std::sync::OnceLock::new(),
        }
    }

    /// Sets what is done when slots fail over (once; later calls are ignored).
    pub fn on_failover(&self, hook: impl Fn(u16, u16) + Send + Sync + 'static) {
        let _ = self.hook.set(FailoverHook(Box::new(hook)));
    }

    /// Whether `new` taking over slots from `old` is a failover: `new` was `old`'s
    /// replica.
    fn is_failover(&self, old: u16, new: u16) -> bool {
        old != NONE
            && old != new
            && self
                .replica_of
                .read()
                .is_ok_and(|r| r.get(&new) == Some(&old))
    }

    /// Tells the hook of each failover in `pairs` (old, new), after the map shows it.
    fn failed_over(&self, pairs: &[(u16, u16)]) {
        for &(old, new) in pairs {
            self.failovers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                from = self.address(old).as_deref().unwrap_or("?"),
                to = self.address(new).as_deref().unwrap_or("?"),
                "cluster slots failed over to a replica"
            );
            if let Some(hook) = self.hook.get() {
                (hook.0)(old, new);
            }
        }
    }

    /// The number of the node at `address`, given one if it is new.
    pub fn node(&self, address: &str) -> u16 {
        if let Ok(nodes) = self.nodes.read()
            && let Some(i) = nodes.iter().position(|n| &**n == address)
        {
            return i as u16;
        }
        let Ok(mut nodes) = self.nodes.write() else {
            return NONE;
        };
        if let Some(i) = nodes.iter().position(|n| &**n == address) {
            return i as u16;
        }
        nodes.push(Arc::from(address));
        (nodes.len() - 1) as u16
    }

    /// Whether the slot map ever named `address` (a primary or a replica): only
    /// such a node is followed on a redirect.
    pub fn knows(&self, address: &str) -> bool {
        self.nodes
            .read()
            .is_ok_and(|nodes| nodes.iter().any(|n| &**n == address))
    }

    /// The address of node `node`.
    pub fn address(&self, node: u16) -> Option<Arc<str>> {
        self.nodes.read().ok()?.get(usize::from(node)).cloned()
    }

    /// The node serving `slot`, if the map knows one.
    pub fn owner(&self, slot: u16) -> Option<u16> {
        let o = *self.map.load().owner.get(usize::from(slot))?;
        (o != NONE).then_some(o)
    }

    /// Where commands without keys go: the node serving slot 0, or any primary.
    pub fn any(&self) -> Option<u16> {
        self.owner(0).or_else(|| self.primaries().first().copied())
    }

    /// Every node that serves a slot now (the primaries), in the order of the first
    /// slot each serves (stable across a failover, which `SCAN` cursors rely on).
    pub fn primaries(&self) -> Vec<u16> {
        let map = self.map.load();
        let mut out: Vec<u16> = Vec::new();
        for &o in map.owner.iter() {
            if o != NONE && out.last() != Some(&o) && !out.contains(&o) {
                out.push(o);
            }
        }
        out
    }

    /// Whether every slot has a node.
    pub fn covered(&self) -> bool {
        self.map.load().owner.iter().all(|&o| o != NONE)
    }

    /// A reply said `slot` is served at `address` now: the map says so at once (so
    /// that the next command goes there), and a refresh is asked for. Returns the node.
    pub fn moved(&self, slot: u16, address: &str) -> u16 {
        let node = self.node(address);
        if self.owner(slot) != Some(node) {
            let mut map = (**self.map.load()).clone();
            let mut old = NONE;
            if let Some(o) = map.owner.get_mut(usize::from(slot)) {
                old = *o;
                *o = node;
            }
            self.map.store(Arc::new(map));
            self.changes.fetch_add(1, Ordering::Relaxed);
            if self.is_failover(old, node) {
                self.failed_over(&[(old, node)]);
            }
        }
        self.wake.notify_one();
        node
    }

    /// Installs the map read from `CLUSTER SHARDS` or `SLOTS`; whether any slot changed owner
    /// (slots no node serves in `slots` keep their last known owner).
    pub fn install(&self, ranges: &[SlotRange], replicas: &[Replica]) -> bool {
        let now: std::collections::HashMap<u16, u16> = replicas
            .iter()
            .map(|(replica, primary)| (self.node(replica), self.node(primary)))
            .collect();
        let old = self.map.load_full();
        let mut map = (*old).clone();
        let mut failovers: Vec<(u16, u16)> = Vec::new();
        for (start, end, address) in ranges {
            let node = self.node(address);
            for s in *start..=(*end).min(SLOTS - 1) {
                if let Some(o) = map.owner.get_mut(usize::from(s)) {
                    // The new primary was the old one's replica, or the old one is the
                    // new one's replica now (demoted by a manual failover).
                    let failover = *o != NONE
                        && *o != node
                        && (self.is_failover(*o, node) || now.get(o) == Some(&node));
                    if failover && !failovers.contains(&(*o, node)) {
                        failovers.push((*o, node));
                    }
                    *o = node;
                }
            }
        }
        let changed = map.owner != old.owner;
        if changed {
            self.map.store(Arc::new(map));
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut r) = self.replica_of.write() {
            r.extend(now);
        }
        self.failed_over(&failovers);
        changed
    }
}

/// A range of slots (first, last) and its primary's `host:port`.
pub type SlotRange = (u16, u16, String);
/// A replica's `host:port` and its primary's.
pub type Replica = (String, String);

/// The slot ranges and their primaries' addresses from a `CLUSTER SLOTS` reply asked
/// of `asked` (whose host stands in for a node that does not know its own), and the
/// replicas' addresses, each with its primary's.
pub fn parse_slots(reply: &[u8], asked: &str) -> Option<(Vec<SlotRange>, Vec<Replica>)> {
    let asked_host = host_of(asked);
    let address = |node: &[u8]| -> Option<String> {
        let node = elements(node)?;
        let host = std::str::from_utf8(string_value(node.first()?)?).ok()?;
        let host = if host.is_empty() || host == "?" {
            asked_host
        } else {
            host
        };
        let port = u16::try_from(int_value(node.get(1)?)?).ok()?;
        Some(crate::config::join_host_port(host, port))
    };
    let mut out = Vec::new();
    let mut replicas = Vec::new();
    for range in elements(reply)? {
        let el = elements(range)?;
        let start = u16::try_from(int_value(el.first()?)?).ok()?;
        let end = u16::try_from(int_value(el.get(1)?)?).ok()?;
        let primary = address(el.get(2)?)?;
        replicas.extend(
            el.iter()
                .skip(3)
                .filter_map(|r| address(r))
                .map(|r| (r, primary.clone())),
        );
        out.push((start, end, primary));
    }
    Some((out, replicas))
}

/// The same as [`parse_slots`] from a `CLUSTER SHARDS` reply (Redis 7.0 and later),
/// which, unlike `CLUSTER SLOTS`, names replicas that are still loading or whose
/// offset the asked node has not heard of yet: a failover is then recognised from the
/// first map on. `None` when the reply is not one (an error from an older Redis).
pub fn parse_shards(reply: &[u8], asked: &str) -> Option<(Vec<SlotRange>, Vec<Replica>)> {
    let asked_host = host_of(asked);
    let mut ranges = Vec::new();
    let mut replicas = Vec::new();
    for shard in elements(reply)? {
        let fields = elements(shard)?;
        let mut slots = Vec::new();
        let mut primary = None;
        let mut others = Vec::new();
        for pair in fields.chunks(2) {
            let (Some(name), Some(value)) = (pair.first(), pair.get(1)) else {
                return None;
            };
            match string_value(name)? {
                b"slots" => {
                    for bound in elements(value)? {
                        let n = int_value(bound).or_else(|| {
                            std::str::from_utf8(string_value(bound)?).ok()?.parse().ok()
                        })?;
                        slots.push(u16::try_from(n).ok()?);
                    }
                }
                b"nodes" => {
                    for node in elements(value)? {
                        let (address, role) = shard_node(node, asked_host)?;
                        match role {
                            b"master" => primary = Some(address),
                            _ => others.push(address),
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(primary) = primary else { continue };
        for pair in slots.chunks(2) {
            if let (Some(&start), Some(&end)) = (pair.first(), pair.get(1)) {
                ranges.push((start, end, primary.clone()));
            }
        }
        replicas.extend(others.into_iter().map(|r| (r, primary.clone())));
    }
    Some((ranges, replicas))
}

/// A node of a `CLUSTER SHARDS` shard: its `host:port` (the endpoint clients are to
/// use, else its IP, else the asked node's host) and its role.
fn shard_node<'a>(node: &'a [u8], asked_host: &str) -> Option<(String, &'a [u8])> {
    let fields = elements(node)?;
    let (mut endpoint, mut ip, mut port, mut tls_port, mut role) = (None, None, None, None, None);
    for pair in fields.chunks(2) {
        let (Some(name), Some(value)) = (pair.first(), pair.get(1)) else {
            return None;
        };
        match string_value(name)? {
            b"endpoint" => endpoint = string_value(value),
            b"ip" => ip = string_value(value),
            b"port" => port = int_value(value),
            b"tls-port" => tls_port = int_value(value),
            b"role" => role = string_value(value),
            _ => {}
        }
    }
    let usable = |h: Option<&'a [u8]>| h.filter(|h| !h.is_empty() && *h != b"?");
    let host = match usable(endpoint).or(usable(ip)) {
        Some(h) => std::str::from_utf8(h).ok()?,
        None => asked_host,
    };
    let port = u16::try_from(port.or(tls_port)?).ok()?;
    Some((crate::config::join_host_port(host, port), role?))
}

/// The host of `host:port` (an IPv6 address without its brackets).
fn host_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// `CLUSTER SHARDS`, encoded.
pub fn shards_command() -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"CLUSTER"),
        Bytes::from_static(b"SHARDS"),
    ]
}

/// `CLUSTER SLOTS`, encoded.
pub fn slots_command() -> Vec<Bytes> {
    vec![Bytes::from_static(b"CLUSTER"), Bytes::from_static(b"SLOTS")]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redirects_parse() {
        assert_eq!(
            Redirect::parse(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect {
                slot: 3999,
                address: "127.0.0.1:6381".into(),
                ask: false
            })
        );
        assert!(Redirect::parse(b"-ASK 1 h:2\r\n").unwrap().ask);
        let block = Redirect::parse(b"-ASK 1 h:2\r\n+QUEUED\r\n").unwrap();
        assert_eq!(block.address, "h:2");
        assert_eq!(Redirect::parse(b"-MOVED 16384 h:1\r\n"), None);
        assert_eq!(Redirect::parse(b"-ERR MOVED\r\n"), None);
        assert_eq!(Redirect::parse(b"+OK\r\n"), None);
    }

    #[test]
    fn slot_map_follows_slots_and_moves() {
        let reply = b"*2\r\n*3\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n\
*4\r\n:8192\r\n:16383\r\n*3\r\n$0\r\n\r\n:7001\r\n$2\r\nid\r\n*2\r\n$1\r\nh\r\n:7003\r\n";
        let (ranges, replicas) = parse_slots(reply, "10.0.0.1:7000").unwrap();
        assert_eq!(
            replicas,
            vec![("h:7003".to_owned(), "10.0.0.1:7001".to_owned())]
        );
        assert_eq!(
            ranges,
            vec![
                (0, 8191, "127.0.0.1:7000".to_owned()),
                (8192, 16383, "10.0.0.1:7001".to_owned())
            ]
        );
        let c = Cluster::new(vec!["10.0.0.1:7000".into()]);
        assert!(c.install(&ranges, &replicas));
        assert!(!c.install(&ranges, &replicas));
        assert!(c.knows("h:7003") && !c.knows("evil:1"));
        assert!(c.covered());
        let (a, b) = (c.owner(0).unwrap(), c.owner(16383).unwrap());
        assert_ne!(a, b);
        assert_eq!(c.primaries(), vec![a, b]);
        assert_eq!(&*c.address(b).unwrap(), "10.0.0.1:7001");
        assert_eq!(c.moved(5, "10.0.0.1:7001"), b);
        assert_eq!(c.owner(5), Some(b));
        assert_eq!(c.owner(6), Some(a));
        assert_eq!(c.any(), Some(a));
    }

    #[test]
    fn shards_name_primaries_ranges_and_loading_replicas() {
        // As Redis 7.0 answers, a replica still loading included (CLUSTER SLOTS leaves
        // it out); the second shard's primary has no endpoint and two ranges.
        let node = |id: &str, endpoint: &str, port: u16, role: &str, health: &str| {
            format!(
                "*14\r\n$2\r\nid\r\n${}\r\n{id}\r\n$4\r\nport\r\n:{port}\r\n$2\r\nip\r\n$8\r\n10.0.0.9\r\n\
$8\r\nendpoint\r\n${}\r\n{endpoint}\r\n$4\r\nrole\r\n${}\r\n{role}\r\n\
$18\r\nreplication-offset\r\n:0\r\n$6\r\nhealth\r\n${}\r\n{health}\r\n",
                id.len(),
                endpoint.len(),
                role.len(),
                health.len()
            )
        };
        let reply = format!(
            "*2\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:8191\r\n$5\r\nnodes\r\n*2\r\n{}{}\
*4\r\n$5\r\nslots\r\n*4\r\n:8192\r\n:9000\r\n:9001\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n{}",
            node("a", "127.0.0.1", 7000, "master", "online"),
            node("b", "127.0.0.1", 7003, "replica", "loading"),
            node("c", "?", 7001, "master", "online"),
        );
        let (ranges, replicas) = parse_shards(reply.as_bytes(), "h:7000").unwrap();
        assert_eq!(
            ranges,
            vec![
                (0, 8191, "127.0.0.1:7000".to_owned()),
                (8192, 9000, "10.0.0.9:7001".to_owned()),
                (9001, 16383, "10.0.0.9:7001".to_owned()),
            ]
        );
        assert_eq!(
            replicas,
            vec![("127.0.0.1:7003".to_owned(), "127.0.0.1:7000".to_owned())]
        );
        assert_eq!(parse_shards(b"-ERR unknown subcommand\r\n", "h:1"), None);
    }

    #[test]
    fn a_replica_taking_over_is_a_failover_and_a_migration_is_not() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let c = Cluster::new(vec!["p1:1".into()]);
        let log = seen.clone();
        c.on_failover(move |old, new| log.lock().unwrap().push((old, new)));
        let range = |a: u16, b: u16, n: &str| (a, b, n.to_owned());
        let replica = |r: &str, p: &str| (r.to_owned(), p.to_owned());
        c.install(
            &[range(0, 99, "p1:1"), range(100, 16383, "p2:1")],
            &[replica("r1:1", "p1:1"), replica("r2:1", "p2:1")],
        );
        // Slots 0-9 migrate to the other primary: no failover.
        c.install(
            &[
                range(0, 9, "p2:1"),
                range(10, 99, "p1:1"),
                range(100, 16383, "p2:1"),
            ],
            &[replica("r1:1", "p1:1"), replica("r2:1", "p2:1")],
        );
        assert!(seen.lock().unwrap().is_empty());
        // p1's replica takes over its slots: one failover, told once.
        let (p1, r1) = (c.node("p1:1"), c.node("r1:1"));
        c.install(
            &[
                range(0, 9, "p2:1"),
                range(10, 99, "r1:1"),
                range(100, 16383, "p2:1"),
            ],
            &[replica("p1:1", "r1:1"), replica("r2:1", "p2:1")],
        );
        assert_eq!(*seen.lock().unwrap(), vec![(p1, r1)]);
        // And back, learnt from a -MOVED first: the old primary is now r1's replica.
        assert_eq!(c.moved(10, "p1:1"), p1);
        assert_eq!(*seen.lock().unwrap(), vec![(p1, r1), (r1, p1)]);
        assert_eq!(c.failovers.load(Ordering::Relaxed), 2);
    }
}
