//! Invalidate-plus-set for every write that is not a judged `SET`: the write goes
//! upstream as `MULTI`, the write, its invalidation, `EXEC`, written contiguously on one
//! connection, so that no observer sees the new value without the invalidation. For a
//! `strict` key the invalidation is a `PUBLISH`; for a `cache` key the `INVALIDATE`
//! script (queued as `EVAL`, so that no `NOSCRIPT` can split it from the write), which
//! also publishes. Which keys a command writes comes from the command table's key
//! specifications; a write into another database (`MOVE`, `COPY … DB`) is invalidated
//! there too. `FLUSHDB`, `FLUSHALL` and `SWAPDB` take cachet's state with the data,
//! as Redis takes everything: a fill in flight across one is judged as if its key had
//! never been missed (docs/fill-protocol.md, "Limits").

use bytes::{Bytes, BytesMut};

use super::settle::Settle;
use super::{CacheKey, Engine, Plan, Retry, Translate, eval_args, ms_bytes};
use crate::command::{CommandFlags, CommandInfo, CommandKind, KeyFlags, KeyRef};
use crate::config::KeyspaceMode;
use crate::resp::Request;
use crate::resp::request::{encode_command, parse_int};

/// What invalidating one write takes.
#[derive(Debug, Default)]
pub struct Invalidation {
    /// Commands to run in the write's atomic unit.
    pub commands: Vec<Vec<Bytes>>,
    /// The same invalidation alone, deleting `cache` keys, for a write of unknown fate.
    pub retry: Vec<Vec<Bytes>>,
    /// Keys written in `strict` or `cache` keyspaces (the current database's).
    pub written: Vec<Bytes>,
    /// `PUBLISH` messages the commands send.
    pub published: u64,
}

/// Keys of one database to invalidate.
#[derive(Default)]
struct Written {
    strict: Vec<Bytes>,
    cache: Vec<(Bytes, CacheKey)>,
}

impl Written {
    fn is_empty(&self) -> bool {
        self.strict.is_empty() && self.cache.is_empty()
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.strict.iter().any(|k| k == key) || self.cache.iter().any(|(k, _)| k == key)
    }
}

impl Engine {
    /// The plan of a write: the command (or its `lock` rewrite) and its invalidation in
    /// one transaction. `Err` refuses a lock expiry its keyspace does not allow (checked
    /// after the fast path of `strict` keys, which are never locks).
    pub(super) fn write_plan(
        &self,
        req: &Request,
        info: &CommandInfo,
        keys: &[KeyRef],
        db: u32,
        only: Option<KeyspaceMode>,
    ) -> Result<Plan, Bytes> {
        if let Some(plan) = self.strict_write_plan(req, info, keys, only) {
            return Ok(plan);
        }
        self.lock_refusal(req, info, keys)?;
        let inval = self.invalidation(req, info, keys, db);
        let base = self
            .lock_rewrite(req, info, keys)
            .unwrap_or_else(|| Plan::forward(req));
        let caps = self.lock_caps_after_script(req, info, keys);
        if (inval.commands.is_empty() && caps.is_empty())
            || info.flags.contains(CommandFlags::NO_MULTI)
        {
            return Ok(Plan {
                written: inval.written,
                ..base
            });
        }
        let settle = match base.settle {
            Settle::Translate(t) => Translate::ExecFirst(Box::new(t)),
            _ => Translate::Exec,
        };
        let mut data = BytesMut::with_capacity(base.data.len() + 128 * inval.commands.len() + 32);
        data.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
        data.extend_from_slice(&base.data);
        for c in inval.commands.iter().chain(&caps) {
            encode_command(&mut data, c);
        }
        data.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
        self.stats.invalidations(inval.published);
        if !caps.is_empty() {
            self.stats.lock_expiry_capped();
        }
        Ok(Plan {
            data: data.freeze(),
            frames: 3 + (inval.commands.len() + caps.len()) as u32,
            settle: Settle::Translate(settle),
            retry: Retry::of(&inval.retry),
            written: inval.written,
            script: false,
        })
    }

    /// The plan of the most common write, built without intermediate lists: a command
    /// cachet sends as is, whose written keys are all `strict`, in the current
    /// database. `MULTI`, the command, one `PUBLISH` per key, `EXEC`; the re-sent
    /// invalidation is a slice of the same bytes. `None` for anything else. `only`:
    /// the mode of the command's one key, when the caller looked it up.
    fn strict_write_plan(
        &self,
        req: &Request,
        info: &CommandInfo,
        keys: &[KeyRef],
        only: Option<KeyspaceMode>,
    ) -> Option<Plan> {
        if info.flags.contains(CommandFlags::NO_MULTI)
            || !matches!(info.kind, CommandKind::Plain)
            || keys.is_empty()
        {
            return None;
        }
        let written_flags = KeyFlags::RW | KeyFlags::OW | KeyFlags::RM;
        let mut written: Vec<Bytes> = Vec::with_capacity(keys.len());
        for k in keys {
            let key = req.args.get(k.index)?;
            if !(k.flags.intersects(written_flags) || k.flags.is_empty())
                || written.iter().any(|w| w == key)
            {
                continue;
            }
            let mode = match (only, keys.len()) {
                (Some(mode), 1) => mode,
                _ => self.keyspaces().lookup(key).mode,
            };
            if mode != KeyspaceMode::Strict {
                return None;
            }
            written.push(key.clone());
        }
        if written.is_empty() {
            return None;
        }
        let publish_len = |k: &Bytes| 40 + self.channel.len() + k.len();
        let mut data = BytesMut::with_capacity(
            req.raw.len() + 32 + written.iter().map(publish_len).sum::<usize>(),
        );
        data.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
        data.extend_from_slice(&req.raw);
        let start = data.len();
        for k in &written {
            data.extend_from_slice(&self.publish_prefix);
            crate::resp::reply::push_bulk(&mut data, k);
        }
        let end = data.len();
        data.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
        let data = data.freeze();
        let n = written.len() as u32;
        self.stats.invalidations(u64::from(n));
        Some(Plan {
            frames: 3 + n,
            settle: Settle::Translate(Translate::Exec),
            retry: Some(Retry {
                data: data.slice(start..end),
                frames: n,
                db: 0,
                keys: Vec::new(),
            }),
            written,
            data,
            script: false,
        })
    }

    /// The commands that invalidate what `req` writes, in the database `db`.
    pub fn invalidation(
        &self,
        req: &Request,
        info: &CommandInfo,
        keys: &[KeyRef],
        db: u32,
    ) -> Invalidation {
        if matches!(
            info.kind,
            CommandKind::FlushDb | CommandKind::FlushAll | CommandKind::SwapDb
        ) {
            // Every key is gone (or moved), cachet's state with it, as Redis has it; one
            // message with an empty key tells subscribers "everything".
            let publish = vec![
                Bytes::from_static(b"PUBLISH"),
                self.channel.clone(),
                Bytes::new(),
            ];
            return Invalidation {
                commands: vec![publish.clone()],
                retry: vec![publish],
                written: Vec::new(),
                published: 1,
            };
        }
        let mut here = Written::default();
        let written_flags = KeyFlags::RW | KeyFlags::OW | KeyFlags::RM;
        for k in keys {
            let Some(key) = req.args.get(k.index) else {
                continue;
            };
            if !(k.flags.intersects(written_flags) || k.flags.is_empty()) || here.contains(key) {
                continue;
            }
            self.classify(key, &mut here);
        }
        let mut out = Invalidation {
            written: here
                .strict
                .iter()
                .cloned()
                .chain(here.cache.iter().map(|(k, _)| k.clone()))
                .collect(),
            ..Invalidation::default()
        };
        self.push_invalidation(&here, &mut out);
        if let Some((target, key)) = other_database(req, info)
            && target != i64::from(db)
        {
            let mut there = Written::default();
            self.classify(key, &mut there);
            if !there.is_empty() {
                let select =
                    |n: i64| vec![Bytes::from_static(b"SELECT"), Bytes::from(n.to_string())];
                out.commands.push(select(target));
                out.retry.push(select(target));
                self.push_invalidation(&there, &mut out);
                out.commands.push(select(i64::from(db)));
                out.retry.push(select(i64::from(db)));
            }
        }
        out
    }

    fn classify(&self, key: &Bytes, into: &mut Written) {
        match self.keyspaces().lookup(key).mode {
            KeyspaceMode::Passthrough | KeyspaceMode::Lock => {}
            KeyspaceMode::Cache => match self.cache_key(key) {
                Some(c) => into.cache.push((key.clone(), c)),
                // Braces that make colocated state impossible: handled as `strict`.
                None => into.strict.push(key.clone()),
            },
            KeyspaceMode::Strict => into.strict.push(key.clone()),
        }
    }

    /// Appends the invalidation of `w` (and its retry form) to `out`.
    fn push_invalidation(&self, w: &Written, out: &mut Invalidation) {
        for k in &w.strict {
            let publish = vec![
                Bytes::from_static(b"PUBLISH"),
                self.channel.clone(),
                k.clone(),
            ];
            out.commands.push(publish.clone());
            out.retry.push(publish);
            out.published += 1;
        }
        if !w.cache.is_empty() {
            out.commands.push(self.invalidate_command(&w.cache, false));
            out.retry.push(self.invalidate_command(&w.cache, true));
            out.published += w.cache.len() as u64;
        }
    }

    /// The `INVALIDATE` script's call (as `EVAL`) for `keys`. `resend`: the form re-sent
    /// if the write's fate becomes unknown, which deletes the keys too unless they are
    /// written at or after now (the upstream's clock as last read, an upper bound: a
    /// write that ran then came after this one was planned).
    pub(crate) fn invalidate_command(
        &self,
        keys: &[(Bytes, CacheKey)],
        resend: bool,
    ) -> Vec<Bytes> {
        let mut script_keys: Vec<Bytes> = keys.iter().map(|(k, _)| k.clone()).collect();
        script_keys.extend(keys.iter().map(|(_, c)| c.state.clone()));
        let mut argv = vec![
            if resend {
                Bytes::from(self.upstream.now_ms().to_string())
            } else {
                Bytes::from_static(b"keep")
            },
            self.channel.clone(),
            ms_bytes(self.fill_window),
        ];
        argv.extend(keys.iter().map(|(_, c)| ms_bytes(c.hold_off)));
        eval_args(&self.scripts.invalidate, &script_keys, &argv)
    }
}

/// The database and key a command writes outside the current database: `MOVE key db`,
/// `COPY source destination DB db`.
fn other_database<'a>(req: &'a Request, info: &CommandInfo) -> Option<(i64, &'a Bytes)> {
    match info.kind {
        CommandKind::Move => Some((parse_int(req.args.get(2)?)?, req.args.get(1)?)),
        CommandKind::Copy => {
            let mut rest = req.args.iter().skip(3);
            while let Some(a) = rest.next() {
                if a.eq_ignore_ascii_case(b"DB") {
                    return Some((parse_int(rest.next()?)?, req.args.get(2)?));
                }
            }
            None
        }
        _ => None,
    }
}
