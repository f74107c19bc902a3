//! The engine's decisions for a command on a session's dedicated connection, where the
//! shared path's atomic units cannot be used as they are:
//!
//! - inside the client's own `MULTI` (Redis forbids nesting one): a `SET` of a `cache`
//!   key is queued as the `SET` script answering exactly what `SET` would (`bare`), a
//!   read of `cache` keys is followed by the `READ` script recording its misses (its
//!   reply removed from the `EXEC` array), and every other write's invalidation is
//!   queued just before `EXEC`;
//! - while `WATCH`ing: a `SET` of a `cache` key is the `SET` script (one command, so the
//!   watch stays the client's); another write is followed by its invalidation (cachet's
//!   own `MULTI` would end the watch);
//! - a blocking write (inside `MULTI` it would not block) is invalidated after its reply;
//! - anything else (a subscriber in RESP3, a tracking client) as on a shared connection.
//!
//! Scripts are sent with their body (`EVAL`): a dedicated connection is rare enough that
//! `NOSCRIPT` recovery is not worth its round trip.

use bytes::Bytes;

use super::settle::Settle;
use super::{Engine, Scope, eval, eval_args, ms_bytes};
use crate::command::{CommandInfo, KeyRef};
use crate::resp::Request;

/// Where the dedicated connection stands when a command is sent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Situation {
    /// Inside the client's `MULTI`: the command is queued.
    Transaction,
    /// Outside `MULTI`, with keys `WATCH`ed.
    Watching,
    /// A blocking command outside `MULTI`.
    Blocking,
    /// Any other mode (subscriber, tracking, monitor).
    Other,
}

/// What a command on a dedicated connection becomes.
#[derive(Debug, Default)]
pub struct Queued {
    /// Sent instead of the client's bytes, when set.
    pub data: Option<Bytes>,
    /// Reply frames of `data` beyond the client's one (outside a transaction).
    pub extra_frames: u32,
    /// Inside a transaction: cachet's commands queued right after the client's; their
    /// `+QUEUED` and their elements of the `EXEC` array are not the client's.
    pub after: Vec<Vec<Bytes>>,
    /// Invalidations: queued for `EXEC` inside a transaction, appended after a write
    /// while `WATCH`ing, or sent after a blocking write's reply.
    pub invalidations: Vec<Vec<Bytes>>,
    pub settle: Settle,
}

impl Engine {
    /// Plans `req` for a dedicated connection in `situation`. `Err` is the refusal of a
    /// command that names reserved keys.
    pub fn plan_queued(
        &self,
        req: &Request,
        info: &CommandInfo,
        keys: &mut Vec<KeyRef>,
        scope: Scope,
        situation: Situation,
    ) -> Result<Queued, Bytes> {
        let Scope { proto, db, .. } = scope;
        if situation == Situation::Other {
            let plan = self.plan(req, Some(info), keys, scope)?;
            return Ok(Queued {
                data: Some(plan.data),
                extra_frames: plan.frames.saturating_sub(1),
                settle: plan.settle,
                ..Queued::default()
            });
        }
        keys.clear();
        info.keys(&req.args, keys);
        self.check_reserved(req, info, keys)?;
        let arity = info.arity_ok(req.args.len());
        let in_multi = situation == Situation::Transaction;
        if self.has_cache() && arity && situation != Situation::Blocking {
            if let Some(call) = self.store_call(req, info, scope, in_multi) {
                return Ok(Queued {
                    data: Some(eval(call.script, &call.keys, &call.argv)),
                    settle: if in_multi {
                        Settle::Forward
                    } else {
                        Settle::Store(Box::new(call.reply))
                    },
                    ..Queued::default()
                });
            }
            if let Some(plan) = self.read_plan(req, info, proto, None) {
                if !in_multi {
                    return Ok(Queued {
                        settle: plan.settle,
                        ..Queued::default()
                    });
                }
                return Ok(Queued {
                    after: self.record_misses(req, info).into_iter().collect(),
                    ..Queued::default()
                });
            }
        }
        if !info.is_write() {
            // A listing inside the transaction answers within the EXEC array.
            return Ok(Queued {
                data: self.hidden_listing(req, info),
                ..Queued::default()
            });
        }
        self.lock_refusal(req, info, keys)?;
        let mut inval = self.invalidation(req, info, keys, db);
        self.stats.invalidations(inval.published);
        let caps = self.lock_caps_after_script(req, info, keys);
        if !caps.is_empty() {
            self.stats.lock_expiry_capped();
            inval.commands.extend(caps);
        }
        let mut queued = Queued {
            invalidations: inval.commands,
            ..Queued::default()
        };
        self.queue_lock_rewrite(req, info, keys, in_multi, &mut queued);
        Ok(queued)
    }

    /// A `lock` key's expiry added or capped (`lock_mode.rs`) on a dedicated connection.
    fn queue_lock_rewrite(
        &self,
        req: &Request,
        info: &CommandInfo,
        keys: &[KeyRef],
        in_multi: bool,
        queued: &mut Queued,
    ) {
        let Some(plan) = self.lock_rewrite(req, info, keys) else {
            return;
        };
        match (in_multi, &plan.settle) {
            // Inside MULTI the reply is an element of EXEC's array, which cannot be
            // translated: SETNX stays itself, and the expiry follows it (`NX`: a lock
            // another holder set keeps its own).
            (true, Settle::Translate(super::Translate::SetNxAsInt)) => {
                if let (Some(key), Some((max_ttl, _))) =
                    (req.args.get(1), self.lock_rule(req, keys))
                {
                    queued.after.push(vec![
                        Bytes::from_static(b"PEXPIRE"),
                        key.clone(),
                        ms_bytes(max_ttl),
                        Bytes::from_static(b"NX"),
                    ]);
                }
            }
            (true, _) => queued.data = Some(plan.data),
            (false, _) => {
                queued.data = Some(plan.data);
                queued.settle = plan.settle;
            }
        }
    }

    /// The `READ` script in `record` mode for the `cache` keys a `GET`/`MGET` reads,
    /// queued right after it inside a transaction: whatever the read answers, its misses
    /// are recorded before the client can fill them.
    fn record_misses(&self, req: &Request, info: &CommandInfo) -> Option<Vec<Bytes>> {
        let keys = match info.name.as_str() {
            "get" => req.args.get(1..2)?,
            _ => req.args.get(1..)?,
        };
        let cached: Vec<(Bytes, Bytes)> = keys
            .iter()
            .filter_map(|k| Some((k.clone(), self.cache_key(k)?.state)))
            .collect();
        if cached.is_empty() {
            return None;
        }
        let mut script_keys: Vec<Bytes> = cached.iter().map(|(k, _)| k.clone()).collect();
        script_keys.extend(cached.into_iter().map(|(_, s)| s));
        let argv = [
            Bytes::from_static(b"record"),
            ms_bytes(self.lease_ttl),
            ms_bytes(self.fill_window),
        ];
        Some(eval_args(&self.scripts.read, &script_keys, &argv))
    }
}
