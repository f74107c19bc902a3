//! What cachet counts, and its Prometheus exposition (`/metrics`).
//!
//! The hot path only touches atomics: every command's counters hang off its
//! [`CommandInfo`](crate::command::CommandInfo) (a [`Tally`], shared by name across
//! command tables), the latency histogram is a fixed array of atomic buckets, and the
//! engine's [`EngineCounters`] are read where they already are. Nothing here takes a lock per
//! command; the registry of command tallies is locked only when a command table is
//! installed and at scrape time. Labels and metric families are assembled per scrape
//! by a `prometheus-client` [`Collector`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::command::CommandTable;

/// Declares a set of counters once: each field's name is its metric's name (with
/// `cachet_` before and `_total` after) and its `CACHET INFO` line, and its text is the
/// metric's help. `/metrics` and `CACHET INFO` both read [`each`](EngineCounters::each).
macro_rules! counters {
    ($(#[$meta:meta])* pub struct $name:ident { $($field:ident: $help:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $(#[doc = $help] pub $field: AtomicU64,)*
        }

        impl $name {
            /// Every counter: its name, its help text, its value now.
            pub fn each(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
                [$((stringify!($field), $help, &self.$field)),*]
                    .into_iter()
                    .map(|(name, help, v)| (name, help, v.load(Ordering::Relaxed)))
            }
        }
    };
}

counters! {
    /// What the consistency engine decided (`engine/`).
    pub struct EngineCounters {
        invalidations_published: "Invalidation messages published with writes.",
        invalidations_retried: "Invalidations re-sent after their write's fate became unknown, once confirmed.",
        lock_expiries_added: "Expiries given to lock keys set without one.",
        lock_expiries_capped: "Commands on lock keys whose expiry above max_ttl (or removal) was shortened to max_ttl (over_max_ttl = \"cap\", and scripts).",
        lock_expiries_refused: "Commands on lock keys refused for an expiry above max_ttl or its removal (over_max_ttl = \"refuse\").",
        key_lock_waits: "Writes that waited for earlier writes of the same key.",
        key_lock_timeouts: "Writes refused after waiting command_timeout for a key.",
        reserved_key_refusals: "Commands refused for naming cachet's reserved keys.",
        cache_hits: "Reads of cache keys (GET, and each key of MGET) that found a value.",
        cache_misses: "Reads of cache keys answered nil; each miss is recorded upstream so that its fill is judged.",
        leases_granted: "Misses that took the herd lease (other missers of the key wait for its fill).",
        fills_stored: "SETs of cache keys that a recorded miss explained and no invalidation can have overtaken: stored.",
        fills_rejected: "SETs of cache keys that a recorded miss explained but an invalidation may have overtaken: refused (kept, deleted or dropped).",
        writes_stored: "SETs of cache keys that no recorded miss explained: stored as writes, with their invalidation.",
        writes_collapsed: "SETs of cache keys turned into an invalidation by the keyspace's write_through setting.",
        coalesce_waits: "Missers that waited for another client's fill (the herd lease).",
        coalesce_filled: "Missers that waited and were answered with the value another client filled.",
        coalesce_timed_out: "Missers that waited coalesce_wait and were answered nil.",
        held_off_waits: "Missers that waited for a tombstone (hold_off after an invalidation) to end.",
        noscript_recoveries: "Script calls re-sent with their body after NOSCRIPT.",
        upstream_restarts: "Times the upstream lost its fill-protocol state: a shared connection found a new run id (a restart), or a cluster's slots failed over to a replica.",
    }
}

pub use crate::command::tally::{CommandTally, Outcome, Tally};

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Why a session holds a dedicated upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    Transaction,
    Watch,
    Subscribe,
    Blocking,
    Tracking,
    Monitor,
    Other,
}

impl PinReason {
    pub const ALL: [PinReason; 7] = [
        PinReason::Transaction,
        PinReason::Watch,
        PinReason::Subscribe,
        PinReason::Blocking,
        PinReason::Tracking,
        PinReason::Monitor,
        PinReason::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            PinReason::Transaction => "transaction",
            PinReason::Watch => "watch",
            PinReason::Subscribe => "subscribe",
            PinReason::Blocking => "blocking",
            PinReason::Tracking => "tracking",
            PinReason::Monitor => "monitor",
            PinReason::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl EncodeLabelValue for PinReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Upper bounds of the latency buckets, in nanoseconds (the last is +Inf).
const LATENCY_BOUNDS_NS: [u64; 15] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
    1_000_000_000,
    u64::MAX,
];

/// A histogram of durations with atomic buckets (prometheus-client's own takes a lock
/// per observation).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len()],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(LATENCY_BOUNDS_NS.len() - 1);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn encode(&self, enc: &mut DescriptorEncoder, name: &str, help: &str) -> std::fmt::Result {
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_NS
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, n)| {
                let upper = if bound == u64::MAX {
                    f64::INFINITY
                } else {
                    bound as f64 / 1e9
                };
                (upper, n.load(Ordering::Relaxed))
            })
            .collect();
        // The count is the buckets' sum so that the exposition is self-consistent even
        // while observations land during the scrape.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Command counters by command name, shared by every command table this cachet
/// installs (the built-in one, then the upstream's), so counts survive the switch.
#[derive(Debug, Default)]
pub struct CommandTallies {
    by_name: Mutex<BTreeMap<String, Tally>>,
    /// Commands the table does not know.
    pub unknown: Tally,
    /// cachet's own `CACHET …` commands.
    pub cachet: Tally,
}

impl CommandTallies {
    /// Gives every command of `table` its counters.
    pub fn attach(&self, table: &mut CommandTable) {
        let Ok(mut map) = self.by_name.lock() else {
            return;
        };
        table.set_tallies(|name| map.entry(name.to_owned()).or_default().clone());
    }

    /// The counters of the command named `name` (`get`, `client|setname`).
    pub fn get(&self, name: &str) -> Option<Tally> {
        self.by_name.lock().ok()?.get(name).cloned()
    }

    /// Every command's counters.
    pub fn all(&self) -> Vec<Arc<CommandTally>> {
        let mut out: Vec<Arc<CommandTally>> = self
            .by_name
            .lock()
            .map(|m| m.values().map(|t| t.0.clone()).collect())
            .unwrap_or_default();
        out.push(self.unknown.0.clone());
        out.push(self.cachet.0.clone());
        out
    }

    fn snapshot(&self) -> Vec<(String, u64, u64)> {
        let mut out: Vec<(String, u64, u64)> = self
            .by_name
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(n, t)| (n.clone(), t.0.get(Outcome::Ok), t.0.get(Outcome::Error)))
                    .filter(|(_, ok, err)| ok + err > 0)
                    .collect()
            })
            .unwrap_or_default();
        for (name, t) in [("unknown", &self.unknown), ("cachet", &self.cachet)] {
            let (ok, err) = (t.0.get(Outcome::Ok), t.0.get(Outcome::Error));
            if ok + err > 0 {
                out.push((name.to_owned(), ok, err));
            }
        }
        out
    }
}

/// The reads and fills of one `cache` keyspace, by its rule's pattern: what the hit
/// ratio and the refusals of each keyspace are read from.
#[derive(Debug, Default)]
pub struct KeyspaceCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fills_stored: AtomicU64,
    pub fills_refused: AtomicU64,
}

/// [`KeyspaceCounters`] by pattern, shared by every generation of the engine so that a
/// reload keeps the counts of the rules it keeps. Locked only when an engine is built
/// and at scrape time.
#[derive(Debug, Default)]
pub struct KeyspaceTallies {
    by_pattern: Mutex<BTreeMap<String, Arc<KeyspaceCounters>>>,
}

impl KeyspaceTallies {
    /// The counters of the rule whose pattern is `pattern`.
    pub fn get(&self, pattern: &str) -> Arc<KeyspaceCounters> {
        match self.by_pattern.lock() {
            Ok(mut m) => m.entry(pattern.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    fn snapshot(&self) -> Vec<(String, [u64; 4])> {
        self.by_pattern
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(p, c)| {
                        let v = [&c.hits, &c.misses, &c.fills_stored, &c.fills_refused];
                        (p.clone(), v.map(load))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Everything cachet counts outside the engine.
#[derive(Debug, Default)]
pub struct Metrics {
    pub commands: CommandTallies,
    /// Time from a command's decoding to its hand-off upstream (or its local reply).
    pub latency: Histogram,
    pub clients_current: AtomicU64,
    pub clients_total: AtomicU64,
    pub clients_rejected: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// `AUTH`/`HELLO … AUTH` refused by `[auth]` (wrong password or unknown user).
    pub auth_failures: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pinned_total: [AtomicU64; PinReason::ALL.len()],
    pinned_current: [AtomicU64; PinReason::ALL.len()],
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Upstream round trip of shared-connection requests, shared with the upstream.
    pub upstream_rtt: Arc<Histogram>,
    /// How long writes waited for earlier writes of the same key.
    pub key_lock_wait: Histogram,
}

impl Metrics {
    /// Metrics sharing the upstream's round-trip histogram.
    pub fn with_upstream_rtt(upstream_rtt: Arc<Histogram>) -> Metrics {
        Metrics {
            upstream_rtt,
            ..Metrics::default()
        }
    }

    /// Counts a session pinning a connection; the gauge goes down when the guard drops.
    pub fn pinned(self: &Arc<Self>, reason: PinReason) -> PinGauge {
        let i = reason.index();
        if let Some(c) = self.pinned_total.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(c) = self.pinned_current.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        PinGauge {
            metrics: self.clone(),
            reason,
        }
    }

    pub fn pinned_now(&self, reason: PinReason) -> u64 {
        self.pinned_current
            .get(reason.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Holds one session's place in `cachet_pinned_sessions{reason}`.
#[derive(Debug)]
pub struct PinGauge {
    metrics: Arc<Metrics>,
    reason: PinReason,
}

impl Drop for PinGauge {
    fn drop(&mut self) {
        if let Some(c) = self.metrics.pinned_current.get(self.reason.index()) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Gauges read from elsewhere at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub upstream_connections_up: u64,
    pub upstream_connections: u64,
    pub upstream_up: bool,
    pub uptime: Duration,
    /// A Redis Cluster upstream's primaries, and those cachet's connection reaches.
    pub cluster_primaries: u64,
    pub cluster_primaries_up: u64,
    /// Each primary's address, and whether cachet's own connection to it is up.
    pub cluster_nodes: Vec<(String, bool)>,
    pub cluster_map_changes: u64,
    pub cluster_redirects: u64,
    pub cluster_failovers: u64,
}

/// The process's own figures, from `/proc/self` (Linux; `None` elsewhere or when
/// unreadable).
#[derive(Debug, Default, Clone, Copy)]
struct Process {
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    cpu_seconds: Option<f64>,
}

/// Clock ticks per second of `/proc/self/stat`'s times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

impl Process {
    fn read() -> Process {
        let resident_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024)
            });
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        // After the command name (in parentheses, which may hold spaces): state, then
        // utime and stime are the 12th and 13th fields.
        let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let rest = s.get(s.rfind(')')? + 1..)?;
                let mut f = rest.split_whitespace().skip(11);
                let utime: u64 = f.next()?.parse().ok()?;
                let stime: u64 = f.next()?.parse().ok()?;
                Some((utime + stime) as f64 / USER_HZ)
            });
        Process {
            resident_bytes,
            open_fds,
            cpu_seconds,
        }
    }
}

/// One scrape's view: the counters plus gauges read just now.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    stats: Arc<EngineCounters>,
    keyspaces: Arc<KeyspaceTallies>,
    live: Live,
}

/// The Prometheus text exposition (format 0.0.4) of everything cachet counts.
pub fn render(
    metrics: &Arc<Metrics>,
    stats: &Arc<EngineCounters>,
    keyspaces: &Arc<KeyspaceTallies>,
    live: Live,
) -> String {
    let mut registry = Registry::with_prefix("cachet");
    registry.register_collector(Box::new(Scrape {
        metrics: metrics.clone(),
        stats: stats.clone(),
        keyspaces: keyspaces.clone(),
        live,
    }));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    out
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    m.encode_gauge(&v)
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.metrics;
        {
            let mut f = enc.encode_descriptor(
                "build_info",
                "Always 1; its version label is the version of cachet running.",
                None,
                MetricType::Gauge,
            )?;
            f.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?
                .encode_gauge(&1i64)?;
        }
        let process = Process::read();
        if let Some(v) = process.resident_bytes {
            gauge(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory of the cachet process (Linux only, as the open descriptors and CPU time).",
                i64::try_from(v).unwrap_or(i64::MAX),
            )?;
        }
        if let Some(v) = process.open_fds {
            gauge(
                &mut enc,
                "process_open_fds",
                "File descriptors the cachet process has open (clients, upstream connections, listeners).",
                i64::try_from(v).unwrap_or(i64::MAX),
            )?;
        }
        if let Some(v) = process.cpu_seconds {
            let mut m = enc.encode_descriptor(
                "process_cpu_seconds",
                "CPU time (user and system) the cachet process has used.",
                None,
                MetricType::Counter,
            )?;
            m.encode_counter::<NoLabelSet, f64, u64>(&v, None)?;
        }
        {
            let mut f = enc.encode_descriptor(
                "commands",
                "Commands answered, by command (lowercase, subcommands as container|sub) and outcome.",
                None,
                MetricType::Counter,
            )?;
            for (name, ok, err) in m.commands.snapshot() {
                for (outcome, v) in [(Outcome::Ok, ok), (Outcome::Error, err)] {
                    let labels = [("command", name.as_str())];
                    let labels = (labels, [("outcome", outcome)]);
                    f.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
                }
            }
        }
        m.latency.encode(
            &mut enc,
            "command_handling_seconds",
            "Time cachet spends on a command before handing it upstream or answering it (upstream time excluded); sampled: the first command of each read and every 16th of a pipeline.",
        )?;
        m.upstream_rtt.encode(
            &mut enc,
            "upstream_round_trip_seconds",
            "Time from writing a request on a shared upstream connection to reading its reply.",
        )?;
        m.key_lock_wait.encode(
            &mut enc,
            "key_lock_wait_seconds",
            "Time writes waited for earlier writes of the same key on another connection.",
        )?;
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            &mut enc,
            "client_connections",
            "Client connections open.",
            g(load(&m.clients_current)),
        )?;
        counter(
            &mut enc,
            "client_connections_accepted",
            "Client connections accepted.",
            load(&m.clients_total),
        )?;
        counter(
            &mut enc,
            "client_connections_rejected",
            "Client connections refused at listen.max_clients.",
            load(&m.clients_rejected),
        )?;
        counter(
            &mut enc,
            "client_received_bytes",
            "Bytes read from clients.",
            load(&m.bytes_in),
        )?;
        counter(
            &mut enc,
            "client_sent_bytes",
            "Bytes written to clients.",
            load(&m.bytes_out),
        )?;
        counter(
            &mut enc,
            "protocol_errors",
            "Clients disconnected for malformed input.",
            load(&m.protocol_errors),
        )?;
        counter(
            &mut enc,
            "auth_failures",
            "Client logins refused by [auth] (wrong password or unknown user).",
            load(&m.auth_failures),
        )?;
        {
            let mut f = enc.encode_descriptor(
                "pinned_sessions",
                "Sessions holding a dedicated upstream connection, by the mode that pinned it.",
                None,
                MetricType::Gauge,
            )?;
            for r in PinReason::ALL {
                f.encode_family(&[("reason", r)])?
                    .encode_gauge(&g(m.pinned_now(r)))?;
            }
        }
        {
            let mut f = enc.encode_descriptor(
                "pinnings",
                "Dedicated upstream connections taken by sessions, by the mode that pinned them.",
                None,
                MetricType::Counter,
            )?;
            for r in PinReason::ALL {
                let v = m.pinned_total.get(r.index()).map_or(0, load);
                f.encode_family(&[("reason", r)])?
                    .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
            }
        }
        let live = &self.live;
        gauge(
            &mut enc,
            "upstream_up",
            "1 while the upstream's shared connections answer.",
            i64::from(live.upstream_up),
        )?;
        gauge(
            &mut enc,
            "upstream_connections_up",
            "Shared upstream connections currently connected.",
            g(live.upstream_connections_up),
        )?;
        gauge(
            &mut enc,
            "upstream_connections",
            "Shared upstream connections configured (connected or not).",
            g(live.upstream_connections),
        )?;
        gauge(
            &mut enc,
            "uptime_seconds",
            "Seconds since cachet started.",
            g(live.uptime.as_secs()),
        )?;
        gauge(
            &mut enc,
            "cluster_primaries",
            "A Redis Cluster upstream's primaries (0 for a single upstream).",
            g(live.cluster_primaries),
        )?;
        gauge(
            &mut enc,
            "cluster_primaries_up",
            "Cluster primaries whose connection of cachet's own is up.",
            g(live.cluster_primaries_up),
        )?;
        {
            // No sample for a single upstream.
            let mut f = enc.encode_descriptor(
                "cluster_primary_up",
                "1 while cachet's own connection to this cluster primary is up, by its address.",
                None,
                MetricType::Gauge,
            )?;
            for (node, up) in &live.cluster_nodes {
                f.encode_family(&[("node", node.as_str())])?
                    .encode_gauge(&i64::from(*up))?;
            }
        }
        counter(
            &mut enc,
            "cluster_slot_map_changes",
            "Times the cluster's slot map changed (a slot moved, a failover).",
            live.cluster_map_changes,
        )?;
        counter(
            &mut enc,
            "cluster_redirects",
            "Commands sent again after -MOVED, -ASK or -TRYAGAIN (clients never see them).",
            live.cluster_redirects,
        )?;
        counter(
            &mut enc,
            "cluster_failovers",
            "Times slots failed over to their primary's replica (fills without state dropped for fill_window, recent invalidations of those slots sent again).",
            live.cluster_failovers,
        )?;
        counter(
            &mut enc,
            "tls_handshake_failures",
            "Client connections closed because their TLS handshake failed or timed out.",
            load(&m.tls_handshake_failures),
        )?;
        counter(
            &mut enc,
            "config_reloads",
            "Configuration reloads applied.",
            load(&m.reloads),
        )?;
        counter(
            &mut enc,
            "config_reload_failures",
            "Configuration reloads refused (the running configuration stayed).",
            load(&m.reload_failures),
        )?;
        for (name, help, v) in self.stats.each() {
            counter(&mut enc, name, help, v)?;
        }
        let keyspaces = self.keyspaces.snapshot();
        let families = [
            (
                "keyspace_reads",
                "Reads of keys of each cache keyspace (GET, and each key of MGET), by the keyspace's pattern and outcome (hit or miss).",
                ["hit", "miss"],
                0,
            ),
            (
                "keyspace_fills",
                "SETs of keys of each cache keyspace that a recorded miss explained, by the keyspace's pattern and outcome (stored, or refused: kept, deleted or dropped).",
                ["stored", "refused"],
                2,
            ),
        ];
        for (name, help, outcomes, first) in families {
            let mut f = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (pattern, counts) in &keyspaces {
                for (i, outcome) in outcomes.into_iter().enumerate() {
                    let v = counts.get(first + i).copied().unwrap_or(0);
                    let labels = [("keyspace", pattern.as_str()), ("outcome", outcome)];
                    f.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_exposition() {
        let metrics = Arc::new(Metrics::default());
        metrics.latency.observe(Duration::from_micros(3));
        metrics.latency.observe(Duration::from_micros(7));
        metrics.latency.observe(Duration::from_secs(5));
        let text = render(
            &metrics,
            &Arc::new(EngineCounters::default()),
            &Arc::default(),
            Live::default(),
        );
        assert!(
            text.contains("cachet_command_handling_seconds_bucket{le=\"5e-06\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("cachet_command_handling_seconds_bucket{le=\"1e-05\"} 2\n"));
        assert!(text.contains("cachet_command_handling_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("cachet_command_handling_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("cachet_command_handling_seconds_count 3\n"));
    }

    #[test]
    fn command_tallies_survive_a_new_table_and_skip_idle_commands() {
        let metrics = Metrics::default();
        let mut builtin = CommandTable::builtin();
        metrics.commands.attach(&mut builtin);
        let get = builtin.get("get").unwrap().tally.clone();
        get.0.count(Outcome::Ok);
        let mut other = CommandTable::builtin();
        metrics.commands.attach(&mut other);
        other.get("get").unwrap().tally.0.count(Outcome::Error);
        assert_eq!(get.0.get(Outcome::Error), 1);
        let text = render(
            &Arc::new(metrics),
            &Arc::new(EngineCounters::default()),
            &Arc::default(),
            Live::default(),
        );
        assert!(
            text.contains("cachet_commands_total{command=\"get\",outcome=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("cachet_commands_total{command=\"get\",outcome=\"error\"} 1\n"));
        assert!(!text.contains("command=\"set\""));
    }

    #[test]
    fn outcome_of_replies() {
        assert_eq!(Outcome::of_reply(b"-ERR x\r\n"), Outcome::Error);
        assert_eq!(Outcome::of_reply(b"!3\r\nerr\r\n"), Outcome::Error);
        assert_eq!(Outcome::of_reply(b"$-1\r\n"), Outcome::Ok);
        assert_eq!(Outcome::of_reply(b""), Outcome::Ok);
    }
}
