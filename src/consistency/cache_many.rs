//! `MGET` and `MSET` of `cache` keys (Django's `get_many` and `set_many`): the same
//! lease rules as `GET` and `SET`, key by key, in one script call. A key of an `MGET`
//! whose lease another client holds is answered nil at once (no coalescing wait).

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::cache::{Leases, evalsha, millis};
use super::reserved::state_keys;
use super::{Engine, Plan, Translate};
use crate::config::{KeyspaceMode, WriteThrough};
use crate::resp::Request;
use crate::resp::request::encode_command;

impl Engine {
    /// The plan of an `MGET` whose keys are all in `cache` keyspaces.
    pub fn mget_plan(&self, req: &Request, session: u64) -> Option<Plan> {
        let keys = req.args.get(1..)?;
        let mut leases = Vec::with_capacity(keys.len());
        let mut tombs = Vec::with_capacity(keys.len());
        for k in keys {
            if self.keyspaces().lookup(k).mode != KeyspaceMode::Cache {
                return None;
            }
            let state = state_keys(self.prefix(), k)?;
            leases.push(state.lease);
            tombs.push(state.tomb);
        }
        let token = self.new_token(session);
        let mut script_keys: Vec<Bytes> = keys.to_vec();
        script_keys.extend(leases);
        script_keys.extend(tombs);
        Some(Plan {
            data: evalsha(
                &self.scripts.lease_mget,
                &script_keys,
                &[token.clone(), millis(self.lease_ttl)],
            ),
            frames: 1,
            translate: Translate::LeaseMget {
                keys: keys.to_vec(),
                token,
            },
            written: Vec::new(),
            retry: None,
            retry_frames: 0,
        })
    }

    /// The plan of an `MSET` whose keys are all in `cache` keyspaces: each pair is a
    /// fill (the connection holds the key's lease), a dropped fill (another connection's
    /// lease is live here), or a write-through.
    pub fn mset_plan(&self, req: &Request, leases: &mut Leases) -> Option<Plan> {
        let pairs = req.args.get(1..)?;
        if pairs.is_empty() || pairs.len() % 2 != 0 {
            return None;
        }
        let mut keys = Vec::with_capacity(pairs.len() / 2);
        let mut write_through = None;
        for pair in pairs.chunks(2) {
            let k = pair.first()?;
            let m = self.keyspaces().lookup(k);
            if m.mode != KeyspaceMode::Cache {
                return None;
            }
            let wt = m
                .rule
                .and_then(|(_, r)| r.write_through)
                .unwrap_or(WriteThrough::Set);
            // One script call applies one write-through rule.
            if write_through.is_some_and(|w| w != wt) {
                return None;
            }
            write_through = Some(wt);
            keys.push((k.clone(), state_keys(self.prefix(), k)?));
        }
        let mode: &'static [u8] = match write_through {
            Some(WriteThrough::Invalidate) => b"invalidate",
            _ => b"set",
        };
        // One tombstone lifetime for the call: the longest `hold_off` among the keys.
        let hold_off = keys
            .iter()
            .map(|(k, _)| self.hold_off_of(k))
            .max()
            .unwrap_or(self.hold_off);
        let mut argv = vec![
            self.channel.clone(),
            millis(hold_off),
            Bytes::from_static(mode),
        ];
        // If the call's fate becomes unknown, the write-throughs' invalidations are
        // re-sent alone.
        let mut retry = BytesMut::new();
        let mut retry_frames = 0;
        for pair in pairs.chunks(2) {
            let (Some(k), Some(v)) = (pair.first(), pair.get(1)) else {
                return None;
            };
            if self.retries.is_pending(k) {
                leases.take(k);
                self.stats.fills_rejected.fetch_add(1, Ordering::Relaxed);
                argv.extend([Bytes::from_static(b"r"), Bytes::new(), v.clone()]);
            } else if let Some(token) = leases.take(k) {
                self.leased.remove(k);
                argv.extend([Bytes::from_static(b"f"), token, v.clone()]);
            } else {
                // Without a lease while another connection fills (or just was voided):
                // not stored, but still a write that voids the lease (see `cache_plan`).
                let rejected = self.recently_leased(k);
                if rejected {
                    self.stats.fills_rejected.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.lease_voided(k);
                }
                self.stats.invalidations(1);
                if let Some(state) = state_keys(self.prefix(), k) {
                    encode_command(&mut retry, &[Bytes::from_static(b"DEL"), state.lease]);
                    encode_command(
                        &mut retry,
                        &[
                            Bytes::from_static(b"SET"),
                            state.tomb,
                            Bytes::from_static(b"1"),
                            Bytes::from_static(b"PX"),
                            millis(hold_off),
                        ],
                    );
                    retry_frames += 2;
                }
                encode_command(
                    &mut retry,
                    &[
                        Bytes::from_static(b"PUBLISH"),
                        self.channel.clone(),
                        k.clone(),
                    ],
                );
                retry_frames += 1;
                let kind: &'static [u8] = if rejected { b"v" } else { b"b" };
                argv.extend([Bytes::from_static(kind), Bytes::new(), v.clone()]);
            }
        }
        let mut script_keys: Vec<Bytes> = keys.iter().map(|(k, _)| k.clone()).collect();
        script_keys.extend(keys.iter().map(|(_, s)| s.lease.clone()));
        script_keys.extend(keys.iter().map(|(_, s)| s.tomb.clone()));
        Some(Plan {
            data: evalsha(&self.scripts.mset_many, &script_keys, &argv),
            frames: 1,
            translate: Translate::None,
            written: keys.into_iter().map(|(k, _)| k).collect(),
            retry: (retry_frames > 0).then(|| retry.freeze()),
            retry_frames,
        })
    }
}

/// `MGET` values, the keys whose lease the caller now holds, and the keys it missed
/// within `hold_off` (whose fills it must not store), from the script's
/// `{values, statuses}` reply.
pub fn split_mget(reply: &Bytes, keys: &[Bytes]) -> Option<(Bytes, Vec<Bytes>, Vec<Bytes>)> {
    let el = crate::resp::reply::elements(reply)?;
    let (values, statuses) = (el.first()?, el.get(1)?);
    let st = crate::resp::reply::elements(statuses)?;
    let with = |status: i64| -> Vec<Bytes> {
        keys.iter()
            .zip(st.iter())
            .filter(|(_, s)| crate::resp::reply::int_value(s) == Some(status))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let (leased, held_off) = (with(2), with(4));
    let mut out = BytesMut::with_capacity(values.len());
    out.extend_from_slice(values);
    Some((out.freeze(), leased, held_off))
}
