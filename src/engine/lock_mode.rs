//! `lock` keyspaces: a lock must not outlive its holder. `SET`/`SETNX` without an expiry
//! get the keyspace's `max_ttl`, and a longer explicit expiry is capped to it; releases
//! (`DEL`, scripts) and extensions (`PEXPIRE`) pass through.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::settle::Settle;
use super::{Engine, Plan, Translate};
use crate::command::{CommandInfo, KeyRef};
use crate::config::KeyspaceMode;
use crate::resp::Request;
use crate::resp::request::{encode_command, parse_int};

impl Engine {
    /// The `lock` rewrite of a write whose first key is in a `lock` keyspace, if it
    /// needs one.
    pub(super) fn lock_rewrite(
        &self,
        req: &Request,
        info: &CommandInfo,
        keys: &[KeyRef],
    ) -> Option<Plan> {
        let key = keys.first().and_then(|k| req.args.get(k.index))?;
        let rule = self.keyspaces().lookup(key);
        if rule.mode != KeyspaceMode::Lock {
            return None;
        }
        let max_ttl = rule
            .rule
            .and_then(|(_, r)| r.max_ttl)
            .unwrap_or(crate::config::DEFAULT_LOCK_MAX_TTL);
        let (args, translate) = rewrite(&info.name, &req.args, max_ttl)?;
        self.stats.lock_expiry_added();
        let mut data = BytesMut::new();
        encode_command(&mut data, &args);
        Some(Plan {
            data: data.freeze(),
            settle: Settle::Translate(translate),
            ..Plan::forward(req)
        })
    }
}

/// The rewritten arguments and the reply translation, or `None` to send the command as
/// it is (it already has an acceptable expiry, or it is malformed and Redis should say
/// so in its own words).
pub fn rewrite(name: &str, args: &[Bytes], max_ttl: Duration) -> Option<(Vec<Bytes>, Translate)> {
    let max_ms = max_ttl.as_millis().max(1) as i64;
    let px = || Bytes::from(max_ms.to_string());
    match name {
        "set" => set(args, max_ms, px()),
        "setnx" if args.len() == 3 => {
            let mut out = vec![Bytes::from_static(b"SET")];
            out.extend(args.iter().skip(1).cloned());
            out.push(Bytes::from_static(b"NX"));
            out.push(Bytes::from_static(b"PX"));
            out.push(px());
            Some((out, Translate::SetNxAsInt))
        }
        "setex" | "psetex" if args.len() == 4 => {
            let n = parse_int(args.get(2)?)?;
            let ms = if name == "setex" {
                n.checked_mul(1000)?
            } else {
                n
            };
            if n <= 0 || ms <= max_ms {
                return None;
            }
            Some((
                vec![
                    Bytes::from_static(b"PSETEX"),
                    args.get(1)?.clone(),
                    px(),
                    args.get(3)?.clone(),
                ],
                Translate::None,
            ))
        }
        _ => None,
    }
}

/// `SET` of a lock key: an expiry added when there is none, capped when longer.
fn set(args: &[Bytes], max_ms: i64, px: Bytes) -> Option<(Vec<Bytes>, Translate)> {
    let opts = args.get(3..)?;
    let mut expiry_at: Option<usize> = None;
    let mut i = 0;
    while let Some(opt) = opts.get(i) {
        let upper = opt.to_ascii_uppercase();
        match upper.as_slice() {
            b"NX" | b"XX" | b"GET" => i += 1,
            // Absolute expiries and KEEPTTL are left as the client wrote them.
            b"KEEPTTL" | b"EXAT" | b"PXAT" => return None,
            b"EX" | b"PX" => {
                if expiry_at.is_some() {
                    return None;
                }
                expiry_at = Some(i);
                i += 2;
            }
            _ => return None,
        }
    }
    let mut out: Vec<Bytes> = args.to_vec();
    match expiry_at {
        None => {
            out.push(Bytes::from_static(b"PX"));
            out.push(px);
        }
        Some(at) => {
            let unit = opts.get(at)?.to_ascii_uppercase();
            let n = parse_int(opts.get(at + 1)?)?;
            if n <= 0 {
                return None;
            }
            let ms = if unit == b"EX" {
                n.checked_mul(1000)?
            } else {
                n
            };
            if ms <= max_ms {
                return None;
            }
            *out.get_mut(3 + at)? = Bytes::from_static(b"PX");
            *out.get_mut(4 + at)? = px;
        }
    }
    Some((out, Translate::None))
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
}
