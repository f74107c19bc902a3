//! The consistency engine: what a classified command becomes upstream (its plan) and
//! what its reply becomes for the client (its settlement), so that the guarantees of
//! docs/design.md hold. It decides; it never touches a connection: plans and
//! settlements are values, and the session moves the bytes.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Engine`]: settings, keyspace modes of a command's keys, [`Engine::plan`] for a shared connection |
//! | `fill.rs` | the fill protocol of `cache` keyspaces, as pure functions (the scripts' twin) |
//! | `scripts.rs` | the Lua scripts that take those decisions upstream |
//! | `reads.rs` | `GET`/`MGET` of `cache` keys: a plain read, then the miss recorded (or waited for) |
//! | `stores.rs` | `SET` and its relatives on `cache` keys: judged by the `SET` scripts |
//! | `invalidate.rs` | invalidate-plus-set for every other write; `FLUSHDB`/`FLUSHALL`/`SWAPDB` |
//! | `queued.rs` | the same decisions for a pinned connection: inside the client's `MULTI`, while `WATCH`ing, after a blocking write |
//! | `settle.rs` | [`Settle`]: turning replies into the client's reply, or into a follow-up request |
//! | `translate.rs` | replies of rewritten commands back into the plain command's reply |
//! | `lock_mode.rs` | `lock` keyspaces: expiries for `SET`/`SETNX` |
//! | `reserved.rs` | cachet's own keys: names, hash-slot colocation, hiding them |
//! | `retry.rs` | invalidations of unknown fate, re-sent until they land |
//! | `stats.rs` | counters of what the engine decided |

pub mod acl;
pub mod explain;
pub mod fill;
mod invalidate;
pub mod lock_mode;
mod queued;
mod reads;
pub mod reserved;
pub mod retry;
pub mod scripts;
pub mod settle;
pub mod stats;
mod stores;
pub mod translate;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::command::{CommandInfo, CommandKind, KeyRef};
use crate::config::{ConsistencyConfig, KeyspaceMode, KeyspaceRule, WriteThrough};
use crate::key_lock::KeyLocks;
use crate::keyspace::{KeyspaceMatch, Keyspaces};
use crate::metrics::{KeyspaceCounters, KeyspaceTallies};
use crate::resp::Request;
use crate::resp::request::encode_command;
pub use queued::{Queued, Situation};
pub use retry::{JoinedRetry, Retry};
pub use scripts::Scripts;
pub use settle::{FollowUp, Settle, Settled};
pub use stats::Stats;
pub use translate::{JoinedWrite, Translate};

/// How many random keys the `RANDOMKEY` script draws before it scans for a visible one.
const RANDOM_KEY_DRAWS: &[u8] = b"64";

/// Where a command runs: the client's protocol and database, and whether cachet's
/// scripts must check the client's own ACL rights before acting for it (the client
/// runs as an upstream user other than cachet's own, docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scope {
    pub proto: u8,
    pub db: u32,
    pub check_acl: bool,
}

/// What a command becomes upstream.
#[derive(Debug)]
pub struct Plan {
    /// Bytes to send (the client's own bytes when nothing is rewritten).
    pub data: Bytes,
    /// Reply frames `data` produces.
    pub frames: u32,
    /// How the reply becomes the client's.
    pub settle: Settle,
    /// Keys whose ordering token the write needs (empty for reads).
    pub written: Vec<Bytes>,
    /// The write's invalidation alone, re-sent if the write's fate becomes unknown. The
    /// keys it protects are `written`, moved in by [`take_retry`](Self::take_retry)
    /// once the ordering tokens are taken (one list per write, not two).
    pub retry: Option<Retry>,
    /// `data` calls one of cachet's scripts by SHA (kept for `NOSCRIPT` recovery).
    pub script: bool,
}

impl Plan {
    /// The client's own bytes, its reply as Redis gives it.
    pub fn forward(req: &Request) -> Plan {
        Plan {
            data: req.raw.clone(),
            frames: 1,
            settle: Settle::Forward,
            written: Vec::new(),
            retry: None,
            script: false,
        }
    }

    /// The write's invalidation, with the keys it protects (`written`, which is left
    /// empty).
    pub fn take_retry(&mut self) -> Option<Retry> {
        let mut retry = self.retry.take()?;
        retry.keys = std::mem::take(&mut self.written);
        Some(retry)
    }

    /// Whether the plan sends the client's bytes and answers with Redis's reply, so
    /// that it can share one upstream request with its neighbours.
    pub fn is_plain(&self) -> bool {
        matches!(self.settle, Settle::Forward)
            && self.written.is_empty()
            && self.retry.is_none()
            && !self.script
    }
}

/// What [`Engine::plan_read`] makes of a plain read.
#[derive(Debug)]
pub enum ReadPlan {
    /// Forwarded as sent ([`Plan::forward`]), so that it can share one upstream
    /// request with its neighbours.
    AsSent,
    /// Its plan, for a read that writes nothing and runs no script: a `GET` of a
    /// `cache` key, answered by the plain read and settled by the fill protocol.
    Planned(Plan),
    /// Any other case: left to [`Engine::plan`].
    Other,
}

/// A key of a `cache` keyspace, as the fill protocol needs it.
#[derive(Debug, Clone)]
pub(crate) struct CacheKey {
    /// The hash that keeps its state (`reserved::state_key`).
    pub state: Bytes,
    pub hold_off: Duration,
    pub policy: fill::Policy,
    /// Its `[[keyspace]]` rule (its counters, [`Engine::tally`]).
    pub rule: RuleOf,
}

/// A key's `[[keyspace]]` rule: its index in the rules of the engine that looked it up.
/// A reply may be settled by a newer engine (a reload), whose rules may differ: it
/// then looks the key up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleOf {
    engine: u64,
    index: usize,
}

/// The engine of one cachet.
#[derive(Debug)]
pub struct Engine {
    keyspaces: Keyspaces,
    channel: Bytes,
    /// `PUBLISH <channel>` encoded, the start of every invalidation message.
    publish_prefix: Bytes,
    prefix: Bytes,
    hold_off: Duration,
    lease_ttl: Duration,
    fill_window: Duration,
    pub coalesce_wait: Duration,
    /// Whether any keyspace is `cache` (only then does cachet keep state upstream).
    has_cache: bool,
    pub locks: Arc<KeyLocks>,
    pub stats: Arc<Stats>,
    /// The rate-limited debug log of refusals (`stats.rs`).
    pub decisions: Arc<stats::Decisions>,
    /// Reads and fills of each `cache` keyspace, by pattern (kept across reloads).
    pub tallies: Arc<KeyspaceTallies>,
    /// The counters of each rule by index: `Some` for `cache` rules.
    rule_tallies: Vec<Option<Arc<KeyspaceCounters>>>,
    /// This engine among the generations of a cachet's engines (reloads).
    id: u64,
    pub scripts: Scripts,
    pub retries: Arc<retry::RetryQueue>,
    /// What cachet knows of the upstream's life.
    upstream: Arc<UpstreamLife>,
}

/// What the engine knows of the upstream's life: its identity as last seen, and until
/// when (upstream milliseconds) its state is known to be lost. Shared by every
/// generation of the engine (reloads), and told by new connections.
#[derive(Debug)]
pub struct UpstreamLife {
    /// The run id last seen, by node (a cluster node's address; empty for a single
    /// upstream, so that a primary Sentinel names anew counts as a restart).
    run_id: std::sync::Mutex<std::collections::HashMap<String, String>>,
    amnesia_until: AtomicU64,
    /// The upstream's clock as last read, and when: where [`lost`](Self::lost) reckons
    /// the upstream's now from.
    clock: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
    /// The current `fill_window` (ms): how long a lost state stays a reason to refuse.
    fill_window: AtomicU64,
    stats: Arc<Stats>,
}

impl UpstreamLife {
    /// What a new connection found: the upstream's run id (which changes when it
    /// restarts) and its clock. A new run id means the upstream lost the fill-protocol
    /// state it kept (or rolled it back), so for `fill_window` a `SET` of a key without
    /// state may be the fill of a miss it forgot: such a `SET` is dropped, never stored.
    pub fn observe(&self, node: &str, run_id: &str, upstream_ms: u64) {
        if let Ok(mut clock) = self.clock.lock() {
            *clock = Some((upstream_ms, std::time::Instant::now()));
        }
        let Ok(mut seen) = self.run_id.lock() else {
            return;
        };
        if seen.get(node).is_some_and(|s| s != run_id) {
            let until = upstream_ms.saturating_add(self.fill_window.load(Ordering::Relaxed));
            self.amnesia_until.fetch_max(until, Ordering::Relaxed);
            self.stats.upstream_restarts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                run_id,
                "the upstream restarted: for fill_window, SETs of cache keys without fill-protocol state are dropped"
            );
        }
        seen.insert(node.to_owned(), run_id.to_owned());
    }

    /// The upstream may have lost state it acknowledged (a cluster's replica took over
    /// a primary's slots, whose run id cachet never saw change): for `fill_window` from
    /// now, as for a restart, a `SET` of a key without state is dropped. Now is the
    /// upstream's clock as last read plus the time since, or this host's clock when no
    /// connection has read it yet.
    pub fn lost(&self) {
        let until = self
            .now_ms()
            .saturating_add(self.fill_window.load(Ordering::Relaxed));
        self.amnesia_until.fetch_max(until, Ordering::Relaxed);
        self.stats.upstream_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// The upstream's clock now, as last read plus the time since (or this host's
    /// clock when no connection has read it yet). A connection tells its reading as an
    /// upper bound (`TIME` plus the time since it was asked), so this is no earlier
    /// than the upstream's own clock, and no later than it by more than `TIME`'s way
    /// there: what a re-sent invalidation needs (`fill::resend`).
    pub fn now_ms(&self) -> u64 {
        match self.clock.lock().ok().and_then(|c| *c) {
            Some((ms, at)) => ms.saturating_add(at.elapsed().as_millis() as u64),
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

impl Engine {
    pub fn new(consistency: &ConsistencyConfig, rules: &[KeyspaceRule]) -> Engine {
        Engine::with_tallies(consistency, rules, Arc::default())
    }

    fn with_tallies(
        consistency: &ConsistencyConfig,
        rules: &[KeyspaceRule],
        tallies: Arc<KeyspaceTallies>,
    ) -> Engine {
        let stats = Arc::new(Stats::default());
        let rule_tallies = rules
            .iter()
            .map(|r| (r.mode == KeyspaceMode::Cache).then(|| tallies.get(&r.pattern)))
            .collect();
        static ENGINES: AtomicU64 = AtomicU64::new(1);
        Engine {
            tallies,
            rule_tallies,
            id: ENGINES.fetch_add(1, Ordering::Relaxed),
            keyspaces: Keyspaces::new(rules),
            channel: Bytes::copy_from_slice(consistency.invalidation_channel.as_bytes()),
            publish_prefix: {
                let mut p = bytes::BytesMut::new();
                crate::resp::reply::push_header(&mut p, b'*', 3);
                crate::resp::reply::push_bulk(&mut p, b"PUBLISH");
                crate::resp::reply::push_bulk(&mut p, consistency.invalidation_channel.as_bytes());
                p.freeze()
            },
            prefix: Bytes::copy_from_slice(consistency.reserved_prefix.as_bytes()),
            hold_off: consistency.hold_off,
            lease_ttl: consistency.lease_ttl,
            fill_window: consistency.fill_window,
            coalesce_wait: consistency.coalesce_wait,
            scripts: Scripts::default(),
            retries: Arc::new(retry::RetryQueue::default()),
            has_cache: rules.iter().any(|r| r.mode == KeyspaceMode::Cache),
            locks: Arc::new(KeyLocks::default()),
            upstream: Arc::new(UpstreamLife {
                run_id: std::sync::Mutex::new(std::collections::HashMap::new()),
                amnesia_until: AtomicU64::new(0),
                clock: std::sync::Mutex::new(None),
                fill_window: AtomicU64::new(ms(consistency.fill_window)),
                stats: stats.clone(),
            }),
            stats,
            decisions: Arc::default(),
        }
    }

    /// An engine with new settings and keyspaces (a configuration reload) that keeps
    /// this one's state: key ordering tokens, counters, the invalidation retry queue and
    /// what it knows of the upstream, so that a swap loses no ordering and no retry.
    pub fn reconfigured(&self, consistency: &ConsistencyConfig, rules: &[KeyspaceRule]) -> Engine {
        self.upstream
            .fill_window
            .store(ms(consistency.fill_window), Ordering::Relaxed);
        Engine {
            locks: self.locks.clone(),
            stats: self.stats.clone(),
            decisions: self.decisions.clone(),
            retries: self.retries.clone(),
            upstream: self.upstream.clone(),
            ..Engine::with_tallies(consistency, rules, self.tallies.clone())
        }
    }

    /// Whether cachet keeps fill-protocol state upstream (some keyspace is `cache`).
    pub fn has_cache(&self) -> bool {
        self.has_cache
    }

    pub fn keyspaces(&self) -> &Keyspaces {
        &self.keyspaces
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The fill protocol's windows, in milliseconds.
    pub fn windows(&self, hold_off: Duration) -> fill::Windows {
        fill::Windows {
            fill: ms(self.fill_window),
            lease: ms(self.lease_ttl),
            hold_off: ms(hold_off),
        }
    }

    /// What the engine knows of the upstream's life (told by new connections).
    pub fn upstream_life(&self) -> Arc<UpstreamLife> {
        self.upstream.clone()
    }

    fn amnesia_until(&self) -> Bytes {
        Bytes::from(
            self.upstream
                .amnesia_until
                .load(Ordering::Relaxed)
                .to_string(),
        )
    }

    /// Whether `key` is in a `cache` keyspace and can keep fill-protocol state (what
    /// `cache_key` needs first, without building anything): its rule.
    pub(crate) fn cache_key_rule(&self, key: &[u8]) -> Option<RuleOf> {
        if !self.has_cache {
            return None;
        }
        self.cache_rule_of(self.keyspaces.lookup(key), key)
    }

    /// [`Engine::cache_key_rule`] from `key`'s keyspace, already looked up.
    pub(crate) fn cache_rule_of(&self, m: KeyspaceMatch<'_>, key: &[u8]) -> Option<RuleOf> {
        match m {
            KeyspaceMatch {
                mode: KeyspaceMode::Cache,
                rule: Some((index, _)),
            } if reserved::has_state_key(key) => Some(RuleOf {
                engine: self.id,
                index,
            }),
            _ => None,
        }
    }

    /// The counters of `key`'s `cache` rule, found by `rule` when this engine looked it
    /// up, else looked up again.
    pub(crate) fn tally(&self, rule: RuleOf, key: &[u8]) -> Option<&KeyspaceCounters> {
        let index = if rule.engine == self.id {
            rule.index
        } else {
            self.cache_key_rule(key)?.index
        };
        self.rule_tallies.get(index)?.as_deref()
    }

    /// The fill-protocol view of `key`, if it is in a `cache` keyspace.
    pub(crate) fn cache_key(&self, key: &[u8]) -> Option<CacheKey> {
        if !self.has_cache {
            return None;
        }
        let m = self.keyspaces.lookup(key);
        if m.mode != KeyspaceMode::Cache {
            return None;
        }
        let index = m.rule.map_or(0, |(i, _)| i);
        let rule = m.rule.map(|(_, r)| r);
        Some(CacheKey {
            rule: RuleOf {
                engine: self.id,
                index,
            },
            state: reserved::state_key(&self.prefix, key)?,
            hold_off: rule.and_then(|r| r.hold_off).unwrap_or(self.hold_off),
            policy: match rule.and_then(|r| r.write_through).unwrap_or_default() {
                WriteThrough::Set => fill::Policy::Set,
                WriteThrough::Collapse => fill::Policy::Collapse,
                WriteThrough::Invalidate => fill::Policy::Invalidate,
            },
        })
    }

    /// Plans a command for a shared connection. `Err` is the error reply for a command
    /// that must not run (it touches cachet's reserved keys).
    pub fn plan(
        &self,
        req: &Request,
        info: Option<&CommandInfo>,
        keys: &mut Vec<KeyRef>,
        scope: Scope,
    ) -> Result<Plan, Bytes> {
        let Scope { proto, db, .. } = scope;
        let Some(info) = info else {
            return Ok(Plan::forward(req));
        };
        keys.clear();
        info.keys(&req.args, keys);
        self.check_reserved(req, info, keys)?;
        // The one key of most commands, looked up once: outside every `cache`
        // keyspace it needs neither the read nor the store protocol (both only ever
        // concern the command's keys).
        let only = match keys.as_slice() {
            [k] => req.args.get(k.index).map(|key| self.keyspaces.lookup(key)),
            _ => None,
        };
        if self.has_cache
            && only.is_none_or(|m| m.mode == KeyspaceMode::Cache)
            && info.arity_ok(req.args.len())
        {
            if let Some(plan) = self.read_plan(req, info, proto, only) {
                return Ok(plan);
            }
            if let Some(plan) = self.store_plan(req, info, scope) {
                return Ok(plan);
            }
        }
        match info.kind {
            CommandKind::Keys if self.has_cache => {
                return Ok(Plan {
                    settle: Settle::Translate(Translate::HideKeys(self.prefix.clone())),
                    ..Plan::forward(req)
                });
            }
            CommandKind::Scan if self.has_cache => {
                return Ok(Plan {
                    settle: Settle::Translate(Translate::HideScan(self.prefix.clone())),
                    ..Plan::forward(req)
                });
            }
            _ if info.name == "randomkey" => {
                // RANDOMKEY's reply cannot be filtered (a reserved answer has no
                // visible substitute outside Redis): a script draws again upstream.
                if let Some((script, argv)) = self.listing_script(req, info) {
                    return Ok(Plan {
                        data: evalsha(script, &[], &argv),
                        script: true,
                        ..Plan::forward(req)
                    });
                }
            }
            _ => {}
        }
        if !info.is_write() {
            return Ok(Plan::forward(req));
        }
        self.write_plan(req, info, keys, db, only.map(|m| m.mode))
    }

    /// For a command whose every invocation is a plain read
    /// ([`CommandInfo::plain_read`]) with the right number of arguments: what
    /// [`plan`](Self::plan) would make of it, decided without the general planning when
    /// it is one of the common cases ([`ReadPlan`]). A command naming a reserved key is
    /// refused as `plan` refuses it. Fills `keys`, as `plan` does.
    pub fn plan_read(
        &self,
        req: &Request,
        info: &CommandInfo,
        keys: &mut Vec<KeyRef>,
        proto: u8,
    ) -> Result<ReadPlan, Bytes> {
        keys.clear();
        info.keys(&req.args, keys);
        self.check_reserved(req, info, keys)?;
        let found = if !self.has_cache {
            ReadPlan::AsSent
        } else {
            match keys.as_slice() {
                [k] => match req.args.get(k.index).map(|key| self.keyspaces.lookup(key)) {
                    Some(m) if m.mode != KeyspaceMode::Cache => ReadPlan::AsSent,
                    Some(m) => match self.read_plan(req, info, proto, Some(m)) {
                        Some(plan)
                            if plan.written.is_empty()
                                && plan.retry.is_none()
                                && !plan.script
                                && plan.frames == 1 =>
                        {
                            ReadPlan::Planned(plan)
                        }
                        _ => ReadPlan::Other,
                    },
                    None => ReadPlan::Other,
                },
                _ => ReadPlan::Other,
            }
        };
        #[cfg(debug_assertions)]
        {
            let scope = Scope {
                proto,
                ..Scope::default()
            };
            let full = self.plan(req, Some(info), &mut Vec::new(), scope);
            let agrees = match (&found, &full) {
                (ReadPlan::AsSent, Ok(p)) => p.is_plain() && p.data == req.raw && p.frames == 1,
                (ReadPlan::Planned(mine), Ok(p)) => format!("{mine:?}") == format!("{p:?}"),
                (ReadPlan::Other, _) => true,
                _ => false,
            };
            assert!(
                agrees,
                "{:?}: {found:?} where the plan is {full:?}",
                info.name
            );
        }
        Ok(found)
    }

    /// Refuses commands naming cachet's reserved keys: as keys, as `SORT` patterns that
    /// can expand to them, or as arguments of `DEBUG` (which has no key positions but
    /// reads keys: `DEBUG OBJECT`, `DEBUG DIGEST-VALUE`).
    pub fn check_reserved(
        &self,
        req: &Request,
        info: &CommandInfo,
        keys: &[KeyRef],
    ) -> Result<(), Bytes> {
        let named = keys.iter().any(|k| {
            req.args
                .get(k.index)
                .is_some_and(|a| crate::glob::has_prefix(a, &self.prefix))
        });
        // The table's lowercase name: no case-folding compare per command.
        let name = info.name.as_str();
        let patterned = matches!(name, "sort" | "sort_ro")
            && reserved::sort_patterns_reach(&req.args, &self.prefix);
        let debugged = (name == "debug" || name.starts_with("debug|"))
            && req.args.iter().skip(2).any(|a| a.starts_with(&self.prefix));
        if named || patterned || debugged {
            self.stats
                .reserved_key_refusals
                .fetch_add(1, Ordering::Relaxed);
            return Err(reserved::refusal(&self.prefix));
        }
        Ok(())
    }

    /// `KEYS`, `SCAN` or `RANDOMKEY` as a cachet script whose reply needs no
    /// translation (it already leaves reserved keys out): for a transaction or a
    /// `WATCH`, where the reply is one element of the `EXEC` array, or follows on a
    /// connection whose replies cachet does not translate. The body is sent (`EVAL`), so
    /// that no `NOSCRIPT` can surface inside the client's transaction. `None` for any
    /// other command, or when no `cache` keyspace keeps reserved keys.
    pub fn hidden_listing(&self, req: &Request, info: &CommandInfo) -> Option<Bytes> {
        let (script, argv) = self.listing_script(req, info)?;
        Some(eval(script, &[], &argv))
    }

    /// The script and arguments that answer `req` without reserved keys.
    fn listing_script(
        &self,
        req: &Request,
        info: &CommandInfo,
    ) -> Option<(&scripts::Script, Vec<Bytes>)> {
        if !self.has_cache || !info.arity_ok(req.args.len()) {
            return None;
        }
        let mut argv = vec![self.prefix.clone()];
        let script = match info.kind {
            CommandKind::Keys => &self.scripts.listing,
            CommandKind::Scan => {
                argv.push(Bytes::from_static(b"scan"));
                &self.scripts.listing
            }
            _ if info.name == "randomkey" => {
                argv.push(Bytes::from_static(RANDOM_KEY_DRAWS));
                return Some((&self.scripts.random_key, argv));
            }
            _ => return None,
        };
        argv.extend(req.args.iter().skip(1).cloned());
        Some((script, argv))
    }
}

/// Milliseconds, at least 1 (Redis refuses a zero expiry).
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub(crate) fn ms_bytes(d: Duration) -> Bytes {
    Bytes::from(ms(d).to_string())
}

/// `EVALSHA <sha> <numkeys> keys… argv…`.
pub(crate) fn evalsha(script: &scripts::Script, keys: &[Bytes], argv: &[Bytes]) -> Bytes {
    script_call(b"EVALSHA", &script.sha, keys, argv)
}

/// `EVAL <body> <numkeys> keys… argv…`.
pub(crate) fn eval(script: &scripts::Script, keys: &[Bytes], argv: &[Bytes]) -> Bytes {
    script_call(b"EVAL", &script.body, keys, argv)
}

/// The arguments of an `EVAL`: the body, then what `script_call` puts after it.
pub(crate) fn eval_args(script: &scripts::Script, keys: &[Bytes], argv: &[Bytes]) -> Vec<Bytes> {
    let mut args = Vec::with_capacity(3 + keys.len() + argv.len());
    args.push(Bytes::from_static(b"EVAL"));
    args.push(script.body.clone());
    args.push(Bytes::from(keys.len().to_string()));
    args.extend(keys.iter().cloned());
    args.extend(argv.iter().cloned());
    args
}

fn script_call(verb: &'static [u8], id: &Bytes, keys: &[Bytes], argv: &[Bytes]) -> Bytes {
    let mut args = Vec::with_capacity(3 + keys.len() + argv.len());
    args.push(Bytes::from_static(verb));
    args.push(id.clone());
    args.push(Bytes::from(keys.len().to_string()));
    args.extend(keys.iter().cloned());
    args.extend(argv.iter().cloned());
    let mut out = BytesMut::new();
    encode_command(&mut out, &args);
    out.freeze()
}
