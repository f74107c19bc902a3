//! `lock` keyspaces: a lock must not outlive its holder, and a holder must know how long
//! it holds it. `SET`/`SETNX` without an expiry get the keyspace's `max_ttl`. Every
//! command that would give a lock key a longer expiry, or remove it, is refused with an
//! error by default (`over_max_ttl = "refuse"`), or run with the expiry shortened to
//! `max_ttl` (`"cap"`): `SET … EX|PX|EXAT|PXAT`, `SETEX`, `PSETEX`, the `EXPIRE` family,
//! `GETEX`, `PERSIST`. `SET … KEEPTTL` keeps an expiry this rule already bounded. A
//! script that declares a lock key (redis-py's `Lock.extend` and `reacquire`) cannot be
//! read before it runs: the key's expiry is capped right after it, in the same
//! transaction (docs/design.md, "Keyspaces").

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::settle::Settle;
use super::{Engine, Plan, Translate};
use crate::command::{CommandInfo, CommandKind, KeyRef};
use crate::config::{KeyspaceMode, OverMaxTtl};
use crate::resp::Request;
use crate::resp::request::{encode_command, parse_int};

/// Caps a lock key's expiry after a script ran: KEYS[1], ARGV[1] = `max_ttl` (ms).
const CAP_AFTER_SCRIPT: &str = "local t = redis.call('PTTL', KEYS[1]) \
if t == -1 or t > tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
return 0";

/// What a command asks of a lock key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// Nothing about it (a `SET` without an expiry gets `max_ttl`).
    Nothing,
    /// An expiry this many ms from now; `at`: where its option sits in the arguments
    /// (`SET`, `GETEX`: the option's name), if it is an option.
    In { ms: i64, at: Option<usize> },
    /// No expiry any more (`PERSIST`, `GETEX … PERSIST` at `at`).
    Removed { at: Option<usize> },
    /// Left as it is (`KEEPTTL`, `GETEX` without options), or a form Redis will refuse
    /// in its own words.
    Untouched,
}

impl Engine {
    /// The `lock` rule of the write's first key: its `max_ttl` and what goes above it.
    pub(super) fn lock_rule(
        &self,
        req: &Request,
        keys: &[KeyRef],
    ) -> Option<(Duration, OverMaxTtl)> {
        let key = keys.first().and_then(|k| req.args.get(k.index))?;
        let rule = self.keyspaces().lookup(key);
        if rule.mode != KeyspaceMode::Lock {
            return None;
        }
        let r = rule.rule.map(|(_, r)| r);
        Some((
            r.and_then(|r| r.max_ttl)
                .unwrap_or(crate::config::DEFAULT_LOCK_MAX_TTL),
            r.and_then(|r| r.over_max_ttl).unwrap_or_default(),
        ))
    }

    /// The refusal of a write that would give a lock key an expiry above its keyspace's
    /// `max_ttl`, or remove it, where the keyspace refuses those.
    pub(super) fn lock_refusal(
        &self,
        req: &Request,
        info: &CommandInfo,
        keys: &[KeyRef],
    ) -> Result<(), Bytes> {
        let Some((max_ttl, OverMaxTtl::Refuse)) = self.lock_rule(req, keys) else {
            return Ok(());
        };
        let max_ms = ms(max_ttl);
        let key = keys
            .first()
            .and_then(|k| req.args.get(k.index))
            .cloned()
            .unwrap_or_default();
        let refuse = |what: String| {
            self.stats.lock_expiry_refused();
            self.decisions.log(
                &format!("{} refused: {what} (max_ttl {max_ms} ms)", info.name),
                &key,
            );
            Err(crate::resp::reply::error(&format!(
                "ERR cachet: {what}; this lock keyspace's max_ttl is {max_ms} ms (over_max_ttl = \"refuse\")"
            )))
        };
        match asked(&info.name, &req.args, now_ms()) {
            Asked::In { ms, .. } if ms > max_ms => {
                refuse(format!("a lock key may not expire in {ms} ms"))
            }
            Asked::Removed { .. } => refuse("a lock key must keep an expiry".into()),
            _ => Ok(()),
        }
    }

    /// The `lock` rewrite of a write whose first key is in a `lock` keyspace, if it
    /// needs one: an expiry added, or (`over_max_ttl = "cap"`) shortened.
    pub(super) fn lock_rewrite(
        &self,
        req: &Request,
        info: &CommandInfo,
        keys: &[KeyRef],
    ) -> Option<Plan> {
        let (max_ttl, _) = self.lock_rule(req, keys)?;
        let (args, translate) = rewrite(&info.name, &req.args, max_ttl)?;
        if asked(&info.name, &req.args, now_ms()) == Asked::Nothing {
            self.stats.lock_expiry_added();
        } else {
            self.stats.lock_expiry_capped();
            let key = keys.first().and_then(|k| req.args.get(k.index));
            self.decisions.log(
                &format!(
                    "{}: lock expiry capped to max_ttl ({} ms)",
                    info.name,
                    ms(max_ttl)
                ),
                key.map_or(&b""[..], |k| &k[..]),
            );
        }
        let mut data = BytesMut::new();
        encode_command(&mut data, &args);
        Some(Plan {
            data: data.freeze(),
            settle: Settle::Translate(translate),
            ..Plan::forward(req)
        })
    }

    /// After a script that declares lock keys: a command per key that caps its expiry
    /// to its keyspace's `max_ttl` (run in the script's transaction).
    pub(super) fn lock_caps_after_script(
        &self,
        req: &Request,
        info: &CommandInfo,
        keys: &[KeyRef],
    ) -> Vec<Vec<Bytes>> {
        if !matches!(
            info.kind,
            CommandKind::Eval | CommandKind::EvalSha | CommandKind::FCall
        ) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for k in keys {
            let Some(key) = req.args.get(k.index) else {
                continue;
            };
            let rule = self.keyspaces().lookup(key);
            if rule.mode != KeyspaceMode::Lock {
                continue;
            }
            let max_ttl = rule
                .rule
                .and_then(|(_, r)| r.max_ttl)
                .unwrap_or(crate::config::DEFAULT_LOCK_MAX_TTL);
            out.push(vec![
                Bytes::from_static(b"EVAL"),
                Bytes::from_static(CAP_AFTER_SCRIPT.as_bytes()),
                Bytes::from_static(b"1"),
                key.clone(),
                Bytes::from(ms(max_ttl).to_string()),
            ]);
        }
        out
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis().clamp(1, i64::MAX as u128) as i64
}

/// This host's clock in Unix ms (absolute expiries are compared with it).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What `name` with `args` asks of its key's expiry, `now` being Unix ms.
fn asked(name: &str, args: &[Bytes], now: i64) -> Asked {
    let n = |i: usize| args.get(i).and_then(|a| parse_int(a));
    let relative = |ms: Option<i64>, at| match ms {
        Some(ms) if ms > 0 => Asked::In { ms, at },
        _ => Asked::Untouched,
    };
    match name {
        "set" => options(args, 3, now),
        "getex" => options(args, 2, now),
        "setnx" => Asked::Nothing,
        "setex" => relative(n(2).and_then(|s| s.checked_mul(1000)), None),
        "psetex" | "pexpire" => relative(n(2), None),
        "expire" => relative(n(2).and_then(|s| s.checked_mul(1000)), None),
        "expireat" => relative(
            n(2).and_then(|s| s.checked_mul(1000))
                .map(|at| at.saturating_sub(now)),
            None,
        ),
        "pexpireat" => relative(n(2).map(|at| at.saturating_sub(now)), None),
        "persist" => Asked::Removed { at: None },
        _ => Asked::Untouched,
    }
}

/// The expiry options of `SET` (from argument 3) or `GETEX` (from argument 2).
fn options(args: &[Bytes], from: usize, now: i64) -> Asked {
    let mut out = Asked::Nothing;
    let mut i = from;
    while let Some(opt) = args.get(i) {
        let value = args.get(i + 1).and_then(|a| parse_int(a));
        let upper = opt.to_ascii_uppercase();
        let ms = match upper.as_slice() {
            b"NX" | b"XX" | b"GET" => {
                i += 1;
                continue;
            }
            b"KEEPTTL" => {
                out = Asked::Untouched;
                i += 1;
                continue;
            }
            b"PERSIST" => {
                out = Asked::Removed { at: Some(i) };
                i += 1;
                continue;
            }
            b"EX" => value.and_then(|s| s.checked_mul(1000)),
            b"PX" => value,
            b"EXAT" => value
                .and_then(|s| s.checked_mul(1000))
                .map(|at| at.saturating_sub(now)),
            b"PXAT" => value.map(|at| at.saturating_sub(now)),
            // Anything else: Redis answers with its own error.
            _ => return Asked::Untouched,
        };
        match ms {
            Some(ms) if ms > 0 && out == Asked::Nothing => out = Asked::In { ms, at: Some(i) },
            _ => return Asked::Untouched,
        }
        i += 2;
    }
    if from == 2 && out == Asked::Nothing {
        // GETEX without options changes nothing.
        return Asked::Untouched;
    }
    out
}

/// The rewritten arguments and the reply translation, or `None` to send the command as
/// it is (it already has an acceptable expiry, or it is malformed and Redis should say
/// so in its own words). Refusals are decided before (`lock_refusal`): whatever reaches
/// this is added an expiry or capped.
pub fn rewrite(name: &str, args: &[Bytes], max_ttl: Duration) -> Option<(Vec<Bytes>, Translate)> {
    let max_ms = ms(max_ttl);
    let px = || Bytes::from(max_ms.to_string());
    let asked = asked(name, args, now_ms());
    let too_long = match asked {
        Asked::In { ms, .. } => ms > max_ms,
        Asked::Removed { .. } => true,
        Asked::Nothing => true,
        Asked::Untouched => false,
    };
    if !too_long {
        return None;
    }
    let key = args.get(1)?;
    match (name, asked) {
        ("setnx", _) if args.len() == 3 => {
            let mut out = vec![Bytes::from_static(b"SET")];
            out.extend(args.iter().skip(1).cloned());
            out.push(Bytes::from_static(b"NX"));
            out.push(Bytes::from_static(b"PX"));
            out.push(px());
            Some((out, Translate::SetNxAsInt))
        }
        ("set", Asked::Nothing) => {
            let mut out = args.to_vec();
            out.push(Bytes::from_static(b"PX"));
            out.push(px());
            Some((out, Translate::None))
        }
        ("set" | "getex", Asked::In { at: Some(at), .. }) => {
            let mut out = args.to_vec();
            *out.get_mut(at)? = Bytes::from_static(b"PX");
            *out.get_mut(at + 1)? = px();
            Some((out, Translate::None))
        }
        ("getex", Asked::Removed { at: Some(at) }) => {
            let mut out = args.to_vec();
            *out.get_mut(at)? = Bytes::from_static(b"PX");
            out.insert(at + 1, px());
            Some((out, Translate::None))
        }
        ("setex" | "psetex", _) if args.len() == 4 => Some((
            vec![
                Bytes::from_static(b"PSETEX"),
                key.clone(),
                px(),
                args.get(3)?.clone(),
            ],
            Translate::None,
        )),
        ("expire" | "pexpire" | "expireat" | "pexpireat", _) => {
            // The same conditions (NX, XX, GT, LT), relative to now.
            let mut out = vec![Bytes::from_static(b"PEXPIRE"), key.clone(), px()];
            out.extend(args.iter().skip(3).cloned());
            Some((out, Translate::None))
        }
        // PERSIST becomes the longest expiry allowed: `:1` for a key that exists.
        ("persist", _) if args.len() == 2 => Some((
            vec![Bytes::from_static(b"PEXPIRE"), key.clone(), px()],
            Translate::None,
        )),
        _ => None,
    }
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

    fn words(v: &[Bytes]) -> String {
        v.iter()
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn rewritten(s: &str) -> Option<String> {
        let a = args(s);
        let name = s.split(' ').next().unwrap().to_ascii_lowercase();
        rewrite(&name, &a, Duration::from_secs(30)).map(|(a, _)| words(&a))
    }

    #[test]
    fn expiries_are_added_and_capped() {
        let max = Duration::from_secs(30);
        let (a, t) = rewrite("set", &args("SET lock:a me NX"), max).unwrap();
        assert_eq!(words(&a), "SET lock:a me NX PX 30000");
        assert_eq!(t, Translate::None);
        let (a, _) = rewrite("set", &args("SET lock:a me NX EX 3600"), max).unwrap();
        assert_eq!(words(&a), "SET lock:a me NX PX 30000");
        assert!(rewrite("set", &args("SET lock:a me NX PX 5000"), max).is_none());
        assert!(rewrite("set", &args("SET lock:a me KEEPTTL"), max).is_none());
        assert!(rewrite("set", &args("SET lock:a me EX nope"), max).is_none());
        let (a, t) = rewrite("setnx", &args("SETNX lock:a me"), max).unwrap();
        assert_eq!(words(&a), "SET lock:a me NX PX 30000");
        assert_eq!(t, Translate::SetNxAsInt);
        let (a, _) = rewrite("setex", &args("SETEX lock:a 100 me"), max).unwrap();
        assert_eq!(words(&a), "PSETEX lock:a 30000 me");
        assert!(rewrite("setex", &args("SETEX lock:a 10 me"), max).is_none());
    }

    #[test]
    fn every_way_to_extend_or_remove_an_expiry_is_capped() {
        let far = now_ms() + 3_600_000;
        assert_eq!(
            rewritten(&format!("SET lock:a me PXAT {far}")).as_deref(),
            Some("SET lock:a me PX 30000")
        );
        assert_eq!(
            rewritten("EXPIRE lock:a 120 GT").as_deref(),
            Some("PEXPIRE lock:a 30000 GT")
        );
        assert_eq!(rewritten("EXPIRE lock:a 20"), None);
        assert_eq!(
            rewritten(&format!("PEXPIREAT lock:a {far}")).as_deref(),
            Some("PEXPIRE lock:a 30000")
        );
        assert_eq!(
            rewritten("PERSIST lock:a").as_deref(),
            Some("PEXPIRE lock:a 30000")
        );
        assert_eq!(
            rewritten("GETEX lock:a EX 120").as_deref(),
            Some("GETEX lock:a PX 30000")
        );
        assert_eq!(
            rewritten("GETEX lock:a PERSIST").as_deref(),
            Some("GETEX lock:a PX 30000")
        );
        assert_eq!(rewritten("GETEX lock:a"), None);
        assert_eq!(rewritten("GETEX lock:a PX 100"), None);
        // Malformed: Redis says so itself.
        assert_eq!(rewritten("EXPIRE lock:a soon"), None);
        assert_eq!(rewritten("SET lock:a me EX 10 PX 10"), None);
    }

    #[test]
    fn what_each_command_asks() {
        let now = 1_000_000;
        assert_eq!(asked("set", &args("SET k v"), now), Asked::Nothing);
        assert_eq!(
            asked("set", &args("SET k v GET EX 2"), now),
            Asked::In {
                ms: 2000,
                at: Some(4)
            }
        );
        assert_eq!(
            asked("expireat", &args("EXPIREAT k 1100"), now),
            Asked::In {
                ms: 100_000,
                at: None
            }
        );
        assert_eq!(
            asked("persist", &args("PERSIST k"), now),
            Asked::Removed { at: None }
        );
        assert_eq!(
            asked("set", &args("SET k v KEEPTTL"), now),
            Asked::Untouched
        );
        // An expiry in the past deletes the key: nothing to bound.
        assert_eq!(asked("expire", &args("EXPIRE k -1"), now), Asked::Untouched);
    }
}
