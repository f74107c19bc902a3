//! `cache` keyspaces: leases on misses, lease-checked fills, write-through `SET`s, and
//! what the session does with their replies (DESIGN G4, G5).
//!
//! A `GET` miss grants the missing connection a lease (one live lease per key across
//! all cachets, kept upstream with `lease_ttl`). A `SET` from that connection is a
//! fill: stored only if its lease is still the live one and no invalidation happened
//! within `hold_off`, checked atomically upstream. Any write of the key voids the
//! lease and leaves a tombstone. A `SET` from a connection without a lease is a fill
//! without a lease (rejected) while the key has a live or recently voided lease in this
//! cachet, and otherwise a write-through (`write_through`). Rejected and collapsed
//! `SET`s answer as successful ones: a cache may always drop an entry.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::reserved::state_keys;
use super::scripts::Script;
use super::{Engine, Plan, Translate};
use crate::command::CommandInfo;
use crate::config::{KeyspaceMode, WriteThrough};
use crate::resp::Request;
use crate::resp::reply::{elements, int_value, push_null};
use crate::resp::request::encode_command;

/// The leases one client connection holds: key -> token, valid until. An empty token
/// records a miss within `hold_off` (no lease granted): a fill before it runs out is
/// dropped; after it, the connection's `SET` is a write-through like any other.
#[derive(Debug, Default)]
pub struct Leases {
    map: HashMap<Bytes, (Bytes, Instant)>,
}

impl Leases {
    pub fn new() -> Leases {
        Leases::default()
    }

    pub fn hold(&mut self, key: Bytes, token: Bytes, valid_for: Duration) {
        if self.map.len() >= 1024 {
            // Misses that were never filled: forget the expired ones.
            let now = Instant::now();
            self.map.retain(|_, (_, until)| *until > now);
        }
        self.map.insert(key, (token, Instant::now() + valid_for));
    }

    /// The connection's live lease token for `key` (used up by this call).
    pub fn take(&mut self, key: &[u8]) -> Option<Bytes> {
        let (token, until) = self.map.remove(key)?;
        (until > Instant::now()).then_some(token)
    }
}

/// What the session does with the reply of a cache command.
#[derive(Debug)]
pub enum Finish {
    /// Answer this.
    Reply(Bytes),
    /// Answer this (a miss) and remember the lease the connection now holds.
    Leased {
        reply: Bytes,
        key: Bytes,
        token: Bytes,
        valid_for: Duration,
    },
    /// Answer this (an `MGET`) and remember the leases the connection now holds.
    LeasedMany {
        reply: Bytes,
        keys: Vec<Bytes>,
        /// Missed within `hold_off`: no lease, fills dropped.
        held_off: Vec<Bytes>,
        token: Bytes,
    },
    /// Another client holds the lease: wait up to `coalesce_wait` for its fill.
    Coalesce { key: Bytes },
}

/// A `SET`'s arguments after the key, if it can be a fill: no `XX`, no `GET`.
fn fill_args(info: &CommandInfo, args: &[Bytes]) -> Option<(Vec<Bytes>, bool)> {
    match info.name.as_str() {
        "set" => {
            let rest = args.get(2..)?.to_vec();
            let mut nx = false;
            for a in rest.iter().skip(1) {
                if a.eq_ignore_ascii_case(b"XX") || a.eq_ignore_ascii_case(b"GET") {
                    return None;
                }
                nx |= a.eq_ignore_ascii_case(b"NX");
            }
            Some((rest, nx))
        }
        // SETEX k s v -> SET k v EX s; PSETEX likewise with PX.
        "setex" | "psetex" if args.len() == 4 => {
            let unit = if info.name == "setex" { "EX" } else { "PX" };
            Some((
                vec![
                    args.get(3)?.clone(),
                    Bytes::from_static(unit.as_bytes()),
                    args.get(2)?.clone(),
                ],
                false,
            ))
        }
        _ => None,
    }
}

impl Engine {
    /// The plan of a `GET` or `SET`-like command on one key of a `cache` keyspace, or
    /// `None` when the command is not one (it then goes the general way).
    pub fn cache_plan(
        &self,
        req: &Request,
        info: &CommandInfo,
        leases: &mut Leases,
        session: u64,
        proto: u8,
    ) -> Option<Plan> {
        // A malformed command goes the general way, to get Redis's own error.
        if !self.has_cache || !info.arity_ok(req.args.len()) {
            return None;
        }
        match info.name.as_str() {
            "mget" => return self.mget_plan(req, session),
            "mset" => return self.mset_plan(req, leases),
            _ => {}
        }
        let key = req.args.get(1)?;
        let m = self.keyspaces().lookup(key);
        if m.mode != KeyspaceMode::Cache {
            return None;
        }
        let rule = m.rule.map(|(_, r)| r);
        let hold_off = rule.and_then(|r| r.hold_off).unwrap_or(self.hold_off);
        let write_through = rule
            .and_then(|r| r.write_through)
            .unwrap_or(WriteThrough::Set);
        let state = state_keys(self.prefix(), key)?;
        if info.name == "get" && req.args.len() == 2 {
            let token = self.new_token(session);
            let data = evalsha(
                &self.scripts.lease_get,
                &[key.clone(), state.lease, state.tomb],
                &[token.clone(), millis(self.lease_ttl)],
            );
            return Some(Plan {
                data,
                frames: 1,
                translate: Translate::LeaseGet {
                    key: key.clone(),
                    token,
                    proto,
                },
                written: Vec::new(),
                retry: None,
                retry_frames: 0,
            });
        }
        let (set_args, nx) = fill_args(info, &req.args)?;
        if self.retries.is_pending(key) {
            // An earlier write's invalidation is not confirmed yet: no fill may land.
            leases.take(key);
            return Some(self.reject_fill(key, nx, proto));
        }
        if let Some(token) = leases.take(key) {
            self.leased.remove(key);
            let mut argv = vec![token];
            argv.extend(set_args);
            return Some(Plan {
                data: evalsha(
                    &self.scripts.fill,
                    &[key.clone(), state.lease, state.tomb],
                    &argv,
                ),
                frames: 1,
                translate: Translate::Fill {
                    key: key.clone(),
                    nx,
                    proto,
                },
                written: vec![key.clone()],
                retry: None,
                retry_frames: 0,
            });
        }
        // Another connection is filling (or just was voided): this SET is a fill
        // without a lease, and it is not stored. It may as well be a write-through of
        // a newer value than the lease holder read, so it still runs as a write (G2):
        // it voids the lease, deletes the key and leaves a tombstone, so the holder's
        // older fill is refused too and the next reader reads the database.
        let rejected = self.recently_leased(key);
        if rejected {
            self.stats.fills_rejected.fetch_add(1, Ordering::Relaxed);
        }
        let mode = match write_through {
            _ if rejected => "invalidate",
            WriteThrough::Set => "set",
            WriteThrough::Invalidate => "invalidate",
        };
        let mut argv = vec![
            self.channel.clone(),
            millis(hold_off),
            Bytes::from_static(mode.as_bytes()),
            Bytes::from_static(if nx { b"nx" } else { b"" }),
        ];
        argv.extend(set_args);
        self.stats.invalidations(1);
        // If the script's fate becomes unknown, its invalidation is re-sent alone.
        let mut retry = BytesMut::new();
        encode_command(
            &mut retry,
            &[Bytes::from_static(b"DEL"), state.lease.clone()],
        );
        encode_command(
            &mut retry,
            &[
                Bytes::from_static(b"SET"),
                state.tomb.clone(),
                Bytes::from_static(b"1"),
                Bytes::from_static(b"PX"),
                millis(hold_off),
            ],
        );
        encode_command(
            &mut retry,
            &[
                Bytes::from_static(b"PUBLISH"),
                self.channel.clone(),
                key.clone(),
            ],
        );
        Some(Plan {
            data: evalsha(
                &self.scripts.blind_set,
                &[key.clone(), state.lease, state.tomb],
                &argv,
            ),
            frames: 1,
            translate: Translate::Blind { nx, proto },
            written: vec![key.clone()],
            retry: Some(retry.freeze()),
            retry_frames: 3,
        })
    }

    /// A fill that is dropped: answered `+OK`, or for `SET NX` what it would answer,
    /// which needs the key's existence, asked upstream.
    fn reject_fill(&self, key: &Bytes, nx: bool, proto: u8) -> Plan {
        self.stats.fills_rejected.fetch_add(1, Ordering::Relaxed);
        let mut data = BytesMut::new();
        encode_command(&mut data, &[Bytes::from_static(b"EXISTS"), key.clone()]);
        Plan {
            data: data.freeze(),
            frames: 1,
            translate: Translate::Rejected { nx, proto },
            written: Vec::new(),
            retry: None,
            retry_frames: 0,
        }
    }

    /// `hold_off` of the keyspace `key` falls into.
    pub fn hold_off_of(&self, key: &[u8]) -> Duration {
        self.keyspaces()
            .lookup(key)
            .rule
            .and_then(|(_, r)| r.hold_off)
            .unwrap_or(self.hold_off)
    }

    /// How long a lease lives.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// A lease token unique across cachets and restarts.
    pub(super) fn new_token(&self, session: u64) -> Bytes {
        let seq = self.lease_seq.fetch_add(1, Ordering::Relaxed);
        Bytes::from(format!("{:x}-{session:x}-{seq:x}", self.instance))
    }

    /// Whether `key` has a live or recently voided lease granted by this cachet.
    pub fn recently_leased(&self, key: &Bytes) -> bool {
        match self.leased.get(key).map(|until| *until) {
            Some(until) if until > Instant::now() => true,
            Some(_) => {
                self.leased
                    .remove_if(key, |_, until| *until <= Instant::now());
                false
            }
            None => false,
        }
    }

    /// Records a lease granted to a connection of this cachet.
    pub fn lease_granted(&self, key: Bytes) {
        self.stats.leases_granted.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + self.lease_ttl;
        if self.leased.len() > 100_000 {
            let now = Instant::now();
            self.leased.retain(|_, t| *t > now);
        }
        self.leased.insert(key, until);
    }

    /// Keeps a key's "recently voided" mark for `hold_off` after a write through this
    /// cachet, when the key had a lease here.
    pub fn lease_voided(&self, key: &Bytes) {
        if let Some(mut until) = self.leased.get_mut(key) {
            let after = Instant::now() + self.hold_off_of(key);
            if *until < after {
                *until = after;
            }
            self.stats.leases_voided.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What to do with the reply of a cache command.
    pub fn finish(&self, t: &Translate, reply: Bytes) -> Finish {
        if let Translate::LeaseMget { keys, token } = t {
            return match super::cache_many::split_mget(&reply, keys) {
                Some((values, leased, held_off)) => {
                    if leased.is_empty() && held_off.is_empty() {
                        Finish::Reply(values)
                    } else {
                        Finish::LeasedMany {
                            reply: values,
                            keys: leased,
                            held_off,
                            token: token.clone(),
                        }
                    }
                }
                None => Finish::Reply(reply),
            };
        }
        if !matches!(
            t,
            Translate::LeaseGet { .. } | Translate::Fill { .. } | Translate::Blind { .. }
        ) {
            return Finish::Reply(t.apply(reply));
        }
        let el = elements(&reply);
        let tag = el
            .as_ref()
            .and_then(|e| e.first().and_then(|f| int_value(f)));
        match t {
            Translate::LeaseGet { key, token, proto } => match (tag, el.as_ref()) {
                (Some(1), Some(e)) => Finish::Reply(slice_of(&reply, e.get(1).copied())),
                (Some(2), _) => Finish::Leased {
                    reply: null(*proto),
                    key: key.clone(),
                    token: token.clone(),
                    valid_for: self.lease_ttl,
                },
                (Some(3), _) => {
                    self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                    Finish::Coalesce { key: key.clone() }
                }
                // Within hold_off: no lease; the connection's fill will be dropped
                // (it is recorded with an empty token, which never matches a lease).
                (Some(4), _) => Finish::Leased {
                    reply: null(*proto),
                    key: key.clone(),
                    token: Bytes::new(),
                    valid_for: self.hold_off_of(key),
                },
                _ => Finish::Reply(reply),
            },
            Translate::Fill { nx, proto, .. } | Translate::Blind { nx, proto } => {
                match (tag, el.as_ref()) {
                    (Some(1), Some(e)) => {
                        if matches!(t, Translate::Fill { .. }) {
                            self.stats.fills_stored.fetch_add(1, Ordering::Relaxed);
                        }
                        match e.get(1).copied() {
                            // `SET NX` that did not set: Lua's false arrives as RESP3
                            // `#f`, where Redis's own reply is a null.
                            Some(b"#f\r\n") => Finish::Reply(null(*proto)),
                            other => Finish::Reply(slice_of(&reply, other)),
                        }
                    }
                    (Some(0), Some(e)) => {
                        if matches!(t, Translate::Fill { .. }) {
                            self.stats.fills_rejected.fetch_add(1, Ordering::Relaxed);
                        } else {
                            self.stats.writes_collapsed.fetch_add(1, Ordering::Relaxed);
                        }
                        let existed = e.get(1).and_then(|f| int_value(f)).unwrap_or(0) > 0;
                        Finish::Reply(if *nx && existed {
                            null(*proto)
                        } else {
                            Bytes::from_static(b"+OK\r\n")
                        })
                    }
                    _ => Finish::Reply(reply),
                }
            }
            other => Finish::Reply(other.apply(reply)),
        }
    }

    /// The same command with the script's body (`EVAL`), for `NOSCRIPT` recovery.
    pub fn eval_fallback(&self, data: &Bytes) -> Option<Bytes> {
        let args = crate::resp::Decoder::new(crate::resp::Limits::default())
            .decode(&mut BytesMut::from(&data[..]))
            .ok()??
            .args;
        // `EVALSHA <sha> …`: the SHA is the second argument (past the first 60 bytes of
        // the encoded command, so it is matched on the decoded arguments).
        let sha = self
            .scripts
            .all()
            .into_iter()
            .find(|s| args.get(1) == Some(&s.sha))?;
        let mut eval = vec![Bytes::from_static(b"EVAL"), sha.body.clone()];
        eval.extend(args.into_iter().skip(2));
        let mut out = BytesMut::new();
        encode_command(&mut out, &eval);
        Some(out.freeze())
    }
}

pub(super) fn evalsha(script: &Script, keys: &[Bytes], argv: &[Bytes]) -> Bytes {
    let mut args = Vec::with_capacity(3 + keys.len() + argv.len());
    args.push(Bytes::from_static(b"EVALSHA"));
    args.push(script.sha.clone());
    args.push(Bytes::from(keys.len().to_string()));
    args.extend(keys.iter().cloned());
    args.extend(argv.iter().cloned());
    let mut out = BytesMut::new();
    encode_command(&mut out, &args);
    out.freeze()
}

pub(super) fn millis(d: std::time::Duration) -> Bytes {
    Bytes::from(d.as_millis().max(1).to_string())
}

fn null(proto: u8) -> Bytes {
    let mut b = BytesMut::new();
    push_null(&mut b, proto);
    b.freeze()
}

/// `part` (a sub-slice of `whole`) as a `Bytes` sharing `whole`'s buffer.
fn slice_of(whole: &Bytes, part: Option<&[u8]>) -> Bytes {
    match part {
        Some(p) => {
            let start = p.as_ptr() as usize - whole.as_ptr() as usize;
            whole.slice(start..start + p.len())
        }
        None => whole.clone(),
    }
}
