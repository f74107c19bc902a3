//! `SET` and every command that stores a string value whole (`SETEX`, `PSETEX`,
//! `SETNX`, `GETSET`, `MSET`, `MSETNX`) on `cache` keys: judged by the `SET` and `MSET`
//! scripts (`fill::judge_set`), with the command's own options. The client gets what
//! Redis would answer for what was done: `+OK` for a plain `SET` even when it was
//! refused (a cache may always drop a fill), nil or `0` for an `NX` that did not store
//! (cachet never lets a client believe it holds a mutex it does not), the old value for
//! `GET`.
//!
//! A command whose options Redis would reject is not judged: it goes the general way
//! and Redis answers its error, storing nothing.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::fill::Verdict;
use super::scripts::Script;
use super::settle::{FollowUp, Settle, Settled, is_null, null, slice_of};
use super::{CacheKey, Engine, Plan, Retry, Scope, evalsha, ms_bytes};
use crate::command::CommandInfo;
use crate::resp::Request;
use crate::resp::reply::{elements, int_value};
use crate::resp::request::parse_int;

/// How the judged command answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `SET` (and `SETEX`, `PSETEX`): `+OK`, or nil for an `NX`/`XX` that did not
    /// store; with `GET`, the old value.
    Set { nx: bool, get: bool },
    /// `SETNX`: `:1` or `:0`.
    SetNx,
    /// `MSET`: `+OK`.
    MSet,
    /// `MSETNX`: `:1` when every key was stored, else `:0`.
    MSetNx { keys: usize },
}

/// The settlement of a judged store.
#[derive(Debug, Clone)]
pub struct StoreReply {
    kind: StoreKind,
    proto: u8,
    /// The client's command as it sent it, when the script checks the client's ACL:
    /// sent as is when the check refuses it, so that Redis answers its own refusal.
    resend: Option<Bytes>,
    /// The keys judged, in the order of the script's verdicts.
    keys: Vec<Bytes>,
}

/// A `SET`'s options that matter to the judgement, parsed as Redis parses them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SetOptions {
    pub nx: bool,
    pub xx: bool,
    pub get: bool,
}

/// Parses `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]` as Redis 7
/// does; `None` when Redis would answer an error.
pub fn parse_set(args: &[Bytes]) -> Option<SetOptions> {
    let mut o = SetOptions::default();
    let (mut keepttl, mut expiry) = (false, false);
    let mut i = 3;
    while let Some(a) = args.get(i) {
        let has_next = i + 1 < args.len();
        if a.eq_ignore_ascii_case(b"NX") && !o.xx {
            o.nx = true;
        } else if a.eq_ignore_ascii_case(b"XX") && !o.nx {
            o.xx = true;
        } else if a.eq_ignore_ascii_case(b"GET") {
            o.get = true;
        } else if a.eq_ignore_ascii_case(b"KEEPTTL") && !expiry {
            keepttl = true;
        } else if ["EX", "PX", "EXAT", "PXAT"]
            .iter()
            .any(|u| a.eq_ignore_ascii_case(u.as_bytes()))
            && !keepttl
            && !expiry
            && has_next
        {
            expiry = true;
            let seconds = a.eq_ignore_ascii_case(b"EX") || a.eq_ignore_ascii_case(b"EXAT");
            valid_expiry(args.get(i + 1)?, seconds)?;
            i += 1;
        } else {
            return None;
        }
        i += 1;
    }
    Some(o)
}

/// Whether Redis accepts an expiry argument: an integer above zero that does not
/// overflow once made absolute in milliseconds (with a wide margin for the clock).
fn valid_expiry(arg: &[u8], seconds: bool) -> Option<()> {
    let n = parse_int(arg)?;
    let ms = if seconds { n.checked_mul(1000)? } else { n };
    (n > 0 && ms < i64::MAX / 2).then_some(())
}

/// A judged store's script call, before it is encoded.
pub(super) struct StoreCall<'a> {
    pub script: &'a Script,
    pub keys: Vec<Bytes>,
    pub argv: Vec<Bytes>,
    pub reply: StoreReply,
    pub written: Vec<Bytes>,
    pub retry: Option<Retry>,
}

impl Engine {
    /// The plan of a command that stores whole string values, when a key is `cache`.
    pub(super) fn store_plan(
        &self,
        req: &Request,
        info: &CommandInfo,
        scope: Scope,
    ) -> Option<Plan> {
        let call = self.store_call(req, info, scope, false)?;
        Some(Plan {
            data: evalsha(call.script, &call.keys, &call.argv),
            frames: 1,
            settle: Settle::Store(Box::new(call.reply)),
            written: call.written,
            retry: call.retry,
            script: true,
        })
    }

    /// The script call that judges a store; `bare`: it answers what the command itself
    /// would (for a client's transaction, where cachet cannot translate the reply).
    pub(super) fn store_call(
        &self,
        req: &Request,
        info: &CommandInfo,
        scope: Scope,
        bare: bool,
    ) -> Option<StoreCall<'_>> {
        let style = Bytes::from_static(if bare { b"bare" } else { b"tagged" });
        let args = &req.args;
        let proto = scope.proto;
        let (set_args, kind, flags) = match info.name.as_str() {
            "mset" => return self.mset_call(req, StoreKind::MSet, scope, style),
            "msetnx" => {
                let keys = args.len().saturating_sub(1) / 2;
                return self.mset_call(req, StoreKind::MSetNx { keys }, scope, style);
            }
            // The key's keyspace first: most stores are of `strict` keys, which are
            // not judged, and need nothing parsed or built.
            name => {
                if !matches!(name, "set" | "setex" | "psetex" | "setnx" | "getset") {
                    return None;
                }
                let key = args.get(1)?;
                self.cache_key_rule(key)?;
                set_form(name, args)?
            }
        };
        let value_at = if matches!(info.name.as_str(), "setex" | "psetex") {
            3
        } else {
            2
        };
        let key = args.get(1)?;
        let c = self.cache_key(key)?;
        let (check, resend) = acl_check(req, scope, |i| i == value_at);
        let mut argv = vec![
            Bytes::from_static(c.policy.as_str().as_bytes()),
            ms_bytes(self.fill_window),
            self.channel.clone(),
            Bytes::from_static(flags.as_bytes()),
            self.amnesia_until(),
            style,
        ];
        argv.extend(check);
        argv.extend(set_args);
        self.stats.invalidations(1);
        let retry = self.invalidate_command(&[(key.clone(), c.clone())], true);
        Some(StoreCall {
            script: &self.scripts.set,
            keys: vec![key.clone(), c.state],
            argv,
            reply: StoreReply {
                kind,
                proto,
                resend,
                keys: vec![key.clone()],
            },
            written: vec![key.clone()],
            retry: Retry::of(&[retry]),
        })
    }

    /// `MSET`/`MSETNX` with at least one `cache` key: every pair in one `MSET` script call.
    fn mset_call(
        &self,
        req: &Request,
        kind: StoreKind,
        scope: Scope,
        style: Bytes,
    ) -> Option<StoreCall<'_>> {
        let pairs = req.args.get(1..)?;
        if pairs.is_empty() || pairs.len() % 2 != 0 {
            return None;
        }
        let mut keys = Vec::with_capacity(pairs.len());
        let mut states = Vec::with_capacity(pairs.len() / 2);
        let mut cache: Vec<(Bytes, CacheKey)> = Vec::new();
        let mut tail = Vec::with_capacity(pairs.len());
        for pair in pairs.chunks(2) {
            let (Some(k), Some(v)) = (pair.first(), pair.get(1)) else {
                return None;
            };
            let policy: Bytes = match self.cache_key(k) {
                Some(c) => {
                    states.push(c.state.clone());
                    let p = Bytes::from_static(c.policy.as_str().as_bytes());
                    cache.push((k.clone(), c));
                    p
                }
                None => {
                    // Any name in the key's slot: the script does not read it.
                    states.push(k.clone());
                    let mode = self.keyspaces().lookup(k).mode;
                    Bytes::from_static(match mode {
                        crate::config::KeyspaceMode::Strict => b"strict",
                        _ => b"pass",
                    })
                }
            };
            keys.push(k.clone());
            tail.push(policy);
            tail.push(v.clone());
        }
        if cache.is_empty() {
            return None;
        }
        let written = keys.clone();
        keys.extend(states);
        let mut argv = vec![
            ms_bytes(self.fill_window),
            self.channel.clone(),
            self.amnesia_until(),
            Bytes::from_static(if matches!(kind, StoreKind::MSetNx { .. }) {
                b"nx"
            } else {
                b"all"
            }),
            style,
        ];
        let (check, resend) = acl_check(req, scope, |i| i >= 2 && i % 2 == 0);
        argv.extend(check);
        argv.extend(tail);
        self.stats.invalidations(written.len() as u64);
        let retry = self.invalidate_command(&cache, true);
        Some(StoreCall {
            script: &self.scripts.mset,
            keys,
            argv,
            reply: StoreReply {
                kind,
                proto: scope.proto,
                resend,
                keys: written.clone(),
            },
            retry: Retry::of(&[retry]),
            written,
        })
    }

    /// The client's reply to a judged store, from the script's verdicts; or, when the
    /// script's ACL check refused the client's command, that command sent as is for
    /// Redis to refuse in its own words.
    pub(super) fn settle_store(&self, s: &StoreReply, reply: Bytes) -> Settled {
        if let Some(resend) = &s.resend
            && reply.as_ref() == b"*1\r\n:8\r\n"
        {
            return Settled::Again(FollowUp {
                data: resend.clone(),
                frames: 1,
                settle: Settle::Forward,
                delay: std::time::Duration::ZERO,
                script: false,
                holds_later: false,
                own: false,
            });
        }
        Settled::Reply(self.store_reply(s, reply))
    }

    fn store_reply(&self, s: &StoreReply, reply: Bytes) -> Bytes {
        let Some(el) = elements(&reply) else {
            // An error (the key holds another type, for `GET`): Redis's own.
            return reply;
        };
        let verdicts: Vec<Verdict> = el
            .iter()
            .map(|e| {
                int_value(e)
                    .and_then(Verdict::from_code)
                    .unwrap_or(Verdict::NotSet)
            })
            .collect();
        for (i, v) in verdicts.iter().enumerate() {
            self.stats.count_verdict(*v);
            let Some(key) = s.keys.get(i) else { continue };
            if let Some(what) = v.refusal() {
                self.decisions.log(what, key);
            }
            let fill = match v {
                Verdict::StoredFill => true,
                Verdict::Kept | Verdict::Deleted | Verdict::Dropped => false,
                _ => continue,
            };
            if let Some(t) = self.cache_key_rule(key).and_then(|r| self.tally(r, key)) {
                let c = if fill {
                    &t.fills_stored
                } else {
                    &t.fills_refused
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        let stored = |v: &Verdict| v.stored();
        match s.kind {
            StoreKind::Set { get: true, .. } => match el.get(1) {
                Some(old) if !is_null(old) => slice_of(&reply, old),
                _ => null(s.proto),
            },
            StoreKind::Set { nx, .. } => {
                let v = verdicts.first().copied().unwrap_or(Verdict::NotSet);
                let set = v.stored() || (!nx && v != Verdict::NotSet);
                if set {
                    Bytes::from_static(b"+OK\r\n")
                } else {
                    null(s.proto)
                }
            }
            StoreKind::SetNx => {
                if verdicts.first().is_some_and(stored) {
                    Bytes::from_static(b":1\r\n")
                } else {
                    Bytes::from_static(b":0\r\n")
                }
            }
            StoreKind::MSet => Bytes::from_static(b"+OK\r\n"),
            StoreKind::MSetNx { keys } => {
                if verdicts.len() == keys && verdicts.iter().all(stored) {
                    Bytes::from_static(b":1\r\n")
                } else {
                    Bytes::from_static(b":0\r\n")
                }
            }
        }
    }
}

/// The ACL check arguments of a judged store (`0` for none) and the command to send as
/// is if the check refuses it.
fn acl_check(
    req: &Request,
    scope: Scope,
    values: impl Fn(usize) -> bool,
) -> (Vec<Bytes>, Option<Bytes>) {
    if !scope.check_acl {
        return (vec![Bytes::from_static(b"0")], None);
    }
    let mut resend = bytes::BytesMut::new();
    crate::resp::request::encode_command(&mut resend, &req.args);
    (
        super::acl::check_args(&req.args, values),
        Some(resend.freeze()),
    )
}

/// A store command as `SET`'s arguments after the key, how it answers, and the
/// `SET` script's flags; `None` when it is not one or Redis would refuse it.
fn set_form(name: &str, args: &[Bytes]) -> Option<(Vec<Bytes>, StoreKind, &'static str)> {
    Some(match name {
        "set" => {
            let o = parse_set(args)?;
            let flags = match (o.nx, o.xx, o.get) {
                (true, _, true) => "ng",
                (true, _, false) => "n",
                (_, true, true) => "xg",
                (_, true, false) => "x",
                (_, _, true) => "g",
                _ => "",
            };
            let kind = StoreKind::Set {
                nx: o.nx,
                get: o.get,
            };
            (args.get(2..)?.to_vec(), kind, flags)
        }
        "setex" | "psetex" => {
            valid_expiry(args.get(2)?, name == "setex")?;
            let unit: &'static [u8] = if name == "setex" { b"EX" } else { b"PX" };
            let set = vec![
                args.get(3)?.clone(),
                Bytes::from_static(unit),
                args.get(2)?.clone(),
            ];
            (
                set,
                StoreKind::Set {
                    nx: false,
                    get: false,
                },
                "",
            )
        }
        "setnx" => (
            vec![args.get(2)?.clone(), Bytes::from_static(b"NX")],
            StoreKind::SetNx,
            "ni",
        ),
        "getset" => (
            vec![args.get(2)?.clone(), Bytes::from_static(b"GET")],
            StoreKind::Set {
                nx: false,
                get: true,
            },
            "g",
        ),
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ')
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    }

    #[test]
    fn set_options_are_parsed_as_redis_parses_them() {
        let ok = |s: &str| parse_set(&args(s));
        assert_eq!(ok("SET k v"), Some(SetOptions::default()));
        assert_eq!(
            ok("SET k v nx get EX 10"),
            Some(SetOptions {
                nx: true,
                xx: false,
                get: true
            })
        );
        assert_eq!(ok("SET k v XX KEEPTTL").map(|o| o.xx), Some(true));
        assert!(ok("SET k v PXAT 1700000000000").is_some());
        for bad in [
            "SET k v NX XX",
            "SET k v EX",
            "SET k v EX 0",
            "SET k v EX -5",
            "SET k v EX 01",
            "SET k v EX 1.5",
            "SET k v EX 10 PX 10",
            "SET k v EX 10 KEEPTTL",
            "SET k v KEEPTTL EX 10",
            "SET k v EX 9223372036854775",
            "SET k v PERSIST",
            "SET k v FOO",
        ] {
            assert_eq!(ok(bad), None, "{bad}");
        }
    }
}
