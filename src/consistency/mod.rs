//! The consistency engine: what a classified command becomes upstream so that the
//! guarantees of DESIGN section 2 hold.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Engine`]: keyspace modes of a command's keys, the plan for a write |
//! | `translate.rs` | turning the upstream reply of a rewritten command back into the plain command's reply |
//! | `lock_mode.rs` | `lock` keyspaces: expiries for `SET`/`SETNX` |
//! | `reserved.rs` | cachet's own keys: names, hash-slot colocation, hiding them |
//! | `stats.rs` | counters of everything rejected, collapsed or retried |
//!
//! Invalidate-plus-set: a write of keys in `strict` or `cache` keyspaces goes upstream
//! as `MULTI`, the write, the invalidation (`PUBLISH <channel> <key>` per key; in `cache`
//! keyspaces also voiding the key's lease and leaving a tombstone for `hold_off`),
//! `EXEC`, written contiguously on one connection. No observer can see the new value
//! without the invalidation having happened.

pub mod cache;
pub mod cache_many;
pub mod lock_mode;
pub mod reserved;
pub mod retry;
pub mod scripts;
pub mod stats;
pub mod translate;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::command::{CommandInfo, CommandKind, KeyFlags, KeyRef};
use crate::config::{ConsistencyConfig, KeyspaceMode, KeyspaceRule};
use crate::key_lock::KeyLocks;
use crate::keyspace::Keyspaces;
use crate::resp::Request;
use crate::resp::request::encode_command;
pub use scripts::Scripts;
pub use stats::Stats;
pub use translate::Translate;

/// How many random keys the `RANDOMKEY` script draws before it scans for a visible one.
const RANDOM_KEY_DRAWS: &[u8] = b"64";

/// What a command becomes upstream.
#[derive(Debug)]
pub struct Plan {
    /// Bytes to send (the client's own bytes when nothing is rewritten).
    pub data: Bytes,
    /// Reply frames `data` produces.
    pub frames: u32,
    /// How to turn those frames back into the client's reply.
    pub translate: Translate,
    /// Keys whose ordering token the write needs (empty for reads).
    pub written: Vec<Bytes>,
    /// The write's invalidation alone, re-sent if the write's fate becomes unknown.
    pub retry: Option<Bytes>,
    /// Reply frames of `retry`.
    pub retry_frames: u32,
}

impl Plan {
    fn forward(req: &Request) -> Plan {
        Plan {
            data: req.raw.clone(),
            frames: 1,
            translate: Translate::None,
            written: Vec::new(),
            retry: None,
            retry_frames: 0,
        }
    }
}

/// The engine of one cachet.
#[derive(Debug)]
pub struct Engine {
    keyspaces: Keyspaces,
    channel: Bytes,
    prefix: Bytes,
    hold_off: Duration,
    lease_ttl: Duration,
    pub coalesce_wait: Duration,
    /// Whether any keyspace is `cache` (only then does cachet keep state upstream).
    has_cache: bool,
    pub locks: Arc<KeyLocks>,
    pub stats: Arc<Stats>,
    pub scripts: Scripts,
    /// Distinguishes this cachet's lease tokens from other cachets' and earlier runs'.
    instance: u64,
    lease_seq: AtomicU64,
    /// Keys with a live or recently voided lease granted here, and until when.
    leased: Arc<DashMap<Bytes, Instant>>,
    pub retries: Arc<retry::RetryQueue>,
}

impl Engine {
    pub fn new(consistency: &ConsistencyConfig, rules: &[KeyspaceRule]) -> Engine {
        Engine {
            keyspaces: Keyspaces::new(rules),
            channel: Bytes::copy_from_slice(consistency.invalidation_channel.as_bytes()),
            prefix: Bytes::copy_from_slice(consistency.reserved_prefix.as_bytes()),
            hold_off: consistency.hold_off,
            lease_ttl: consistency.lease_ttl,
            coalesce_wait: consistency.coalesce_wait,
            scripts: Scripts::default(),
            instance: instance_id(),
            lease_seq: AtomicU64::new(0),
            leased: Arc::new(DashMap::new()),
            retries: Arc::new(retry::RetryQueue::default()),
            has_cache: rules.iter().any(|r| r.mode == KeyspaceMode::Cache),
            locks: Arc::new(KeyLocks::default()),
            stats: Arc::new(Stats::default()),
        }
    }

    /// An engine with new settings and keyspaces (a configuration reload) that keeps
    /// this one's state: key ordering tokens, counters, the invalidation retry queue and
    /// the record of recent leases, so that a swap loses no ordering and no lease.
    pub fn reconfigured(&self, consistency: &ConsistencyConfig, rules: &[KeyspaceRule]) -> Engine {
        Engine {
            locks: self.locks.clone(),
            stats: self.stats.clone(),
            retries: self.retries.clone(),
            leased: self.leased.clone(),
            ..Engine::new(consistency, rules)
        }
    }

    /// Whether cachet keeps lease state upstream (some keyspace is `cache`).
    pub fn has_cache(&self) -> bool {
        self.has_cache
    }

    pub fn keyspaces(&self) -> &Keyspaces {
        &self.keyspaces
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Plans a command for a shared connection. `Err` is the error reply for a command
    /// that must not run (it touches cachet's reserved keys).
    pub fn plan(
        &self,
        req: &Request,
        info: Option<&CommandInfo>,
        keys: &mut Vec<KeyRef>,
        cache: Option<(&mut cache::Leases, u64, u8)>,
    ) -> Result<Plan, Bytes> {
        let Some(info) = info else {
            return Ok(Plan::forward(req));
        };
        keys.clear();
        info.keys(&req.args, keys);
        self.check_reserved(req, keys)?;
        if let Some((leases, session, proto)) = cache
            && let Some(plan) = self.cache_plan(req, info, leases, session, proto)
        {
            return Ok(plan);
        }
        match info.kind {
            CommandKind::Keys if self.has_cache => {
                return Ok(Plan {
                    translate: Translate::HideKeys(self.prefix.clone()),
                    ..Plan::forward(req)
                });
            }
            CommandKind::Scan if self.has_cache => {
                return Ok(Plan {
                    translate: Translate::HideScan(self.prefix.clone()),
                    ..Plan::forward(req)
                });
            }
            _ if info.name == "randomkey" => {
                // RANDOMKEY's reply cannot be filtered (a reserved answer has no
                // visible substitute outside Redis): a script draws again upstream.
                if let Some((script, argv)) = self.listing_script(req, info) {
                    return Ok(Plan {
                        data: cache::evalsha(script, &[], &argv),
                        ..Plan::forward(req)
                    });
                }
            }
            _ => {}
        }
        if !info.is_write() {
            return Ok(Plan::forward(req));
        }
        let mut inval = self.invalidations(req, info, keys);
        let base = match self.lock_rewrite(req, info, keys) {
            Some(rewritten) => rewritten,
            None => Plan::forward(req),
        };
        if inval.commands.is_empty() || info.flags.contains(crate::command::CommandFlags::NO_MULTI)
        {
            return Ok(Plan {
                written: inval.written,
                ..base
            });
        }
        // MULTI, the command, the invalidation commands, EXEC: one atomic unit.
        let mut data = BytesMut::with_capacity(base.data.len() + 64 * inval.commands.len() + 32);
        data.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
        data.extend_from_slice(&base.data);
        for c in &inval.commands {
            encode_command(&mut data, c);
        }
        data.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
        self.stats.invalidations(inval.published);
        let mut retry = BytesMut::new();
        for c in &inval.commands {
            encode_command(&mut retry, c);
        }
        Ok(Plan {
            data: data.freeze(),
            frames: 3 + inval.commands.len() as u32,
            translate: Translate::ExecFirst(Box::new(base.translate)),
            retry: Some(retry.freeze()),
            retry_frames: inval.commands.len() as u32,
            written: std::mem::take(&mut inval.written),
        })
    }

    /// Refuses commands naming cachet's reserved keys: as keys, as `SORT` patterns that
    /// can expand to them, or as arguments of `DEBUG` (which has no key positions but
    /// reads keys: `DEBUG OBJECT`, `DEBUG DIGEST-VALUE`).
    pub fn check_reserved(&self, req: &Request, keys: &[KeyRef]) -> Result<(), Bytes> {
        let named = keys.iter().any(|k| {
            req.args
                .get(k.index)
                .is_some_and(|a| a.starts_with(&self.prefix))
        });
        let name = req.args.first().map_or(&[][..], |n| &n[..]);
        let patterned = (name.eq_ignore_ascii_case(b"SORT")
            || name.eq_ignore_ascii_case(b"SORT_RO"))
            && reserved::sort_patterns_reach(&req.args, &self.prefix);
        let debugged = name.eq_ignore_ascii_case(b"DEBUG")
            && req.args.iter().skip(2).any(|a| a.starts_with(&self.prefix));
        if named || patterned || debugged {
            self.stats
                .reserved_key_refusals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        let mut args = vec![
            Bytes::from_static(b"EVAL"),
            script.body.clone(),
            Bytes::from_static(b"0"),
        ];
        args.extend(argv);
        let mut data = BytesMut::new();
        encode_command(&mut data, &args);
        Some(data.freeze())
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

    /// The commands that invalidate what `req` writes, and the written keys.
    pub fn invalidations(
        &self,
        req: &Request,
        info: &CommandInfo,
        keys: &[KeyRef],
    ) -> Invalidation {
        let mut out = Invalidation::default();
        if matches!(info.kind, CommandKind::FlushDb | CommandKind::FlushAll) {
            // Every key is gone (leases and tombstones with them, which voids every
            // lease); one message with an empty key tells subscribers "everything".
            out.commands.push(vec![
                Bytes::from_static(b"PUBLISH"),
                self.channel.clone(),
                Bytes::new(),
            ]);
            out.published = 1;
            return out;
        }
        let written_flags = KeyFlags::RW | KeyFlags::OW | KeyFlags::RM;
        for k in keys {
            let Some(key) = req.args.get(k.index) else {
                continue;
            };
            if !(k.flags.intersects(written_flags) || k.flags.is_empty()) {
                continue;
            }
            if out.written.contains(key) {
                continue;
            }
            let mode = self.keyspaces.lookup(key).mode;
            match mode {
                KeyspaceMode::Passthrough | KeyspaceMode::Lock => continue,
                KeyspaceMode::Strict => {}
                KeyspaceMode::Cache => {
                    self.lease_voided(key);
                    if let Some(state) = reserved::state_keys(&self.prefix, key) {
                        out.commands
                            .push(vec![Bytes::from_static(b"DEL"), state.lease]);
                        out.commands.push(vec![
                            Bytes::from_static(b"SET"),
                            state.tomb,
                            Bytes::from_static(b"1"),
                            Bytes::from_static(b"PX"),
                            Bytes::from(self.hold_off_of(key).as_millis().max(1).to_string()),
                        ]);
                    }
                }
            }
            out.commands.push(vec![
                Bytes::from_static(b"PUBLISH"),
                self.channel.clone(),
                key.clone(),
            ]);
            out.published += 1;
            out.written.push(key.clone());
        }
        out
    }

    fn lock_rewrite(&self, req: &Request, info: &CommandInfo, keys: &[KeyRef]) -> Option<Plan> {
        let key = keys.first().and_then(|k| req.args.get(k.index))?;
        let rule = self.keyspaces.lookup(key);
        if rule.mode != KeyspaceMode::Lock {
            return None;
        }
        let max_ttl = rule
            .rule
            .and_then(|(_, r)| r.max_ttl)
            .unwrap_or(crate::config::DEFAULT_LOCK_MAX_TTL);
        let (args, translate) = lock_mode::rewrite(&info.name, &req.args, max_ttl)?;
        self.stats.lock_expiry_added();
        let mut data = BytesMut::new();
        encode_command(&mut data, &args);
        Some(Plan {
            data: data.freeze(),
            frames: 1,
            translate,
            written: Vec::new(),
            retry: None,
            retry_frames: 0,
        })
    }
}

/// A value unlikely to repeat across processes and restarts (process id and start
/// time), so that a lease granted before a restart never matches one granted after.
fn instance_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// What invalidating one write takes.
#[derive(Debug, Default)]
pub struct Invalidation {
    /// Commands to run in the write's atomic unit.
    pub commands: Vec<Vec<Bytes>>,
    /// Keys written in `strict` or `cache` keyspaces.
    pub written: Vec<Bytes>,
    /// `PUBLISH` messages among `commands`.
    pub published: u64,
}
