//! `GET` and `MGET` of `cache` keys. A hit costs the upstream one plain read; only a
//! key the read found absent is handed to the `READ` script, which records the miss
//! (so that its fill is judged: `fill.rs`) or, when the client may wait, tells it to
//! wait for another client's fill or for a tombstone to end (herd control).
//!
//! Order: the client is answered only once the miss is recorded, so its fill always
//! finds the record. A command the client sent after the read may already have gone
//! upstream; then the miss is recorded whatever the key holds by now (`record` mode)
//! and the client gets the plain read's nil, as Redis would have answered it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::settle::{FollowUp, Settle, SettleContext, Settled, is_null, null, slice_of};
use super::{Engine, Plan, RuleOf, evalsha, ms_bytes};
use crate::command::CommandInfo;
use crate::keyspace::KeyspaceMatch;
use crate::resp::Request;
use crate::resp::reply::{elements, int_value, push_header};

/// Where a read of `cache` keys stands.
#[derive(Debug)]
pub struct ReadState {
    keys: Vec<Bytes>,
    /// Each key's state hash, when the key is in a `cache` keyspace.
    states: Vec<Option<Bytes>>,
    /// Each `cache` key's rule (its counters); a default for the others.
    rules: Vec<RuleOf>,
    mget: bool,
    proto: u8,
    /// Each key's value frame so far (`None`: absent so far).
    values: Vec<Option<Bytes>>,
    /// The keys asked in the script round under way, by index.
    asking: Vec<usize>,
    /// The round under way.
    round: Round,
    /// When waiting ends: `coalesce_wait` after it began, pushed back by a tombstone
    /// (at most `hold_off` more).
    deadline: Option<Instant>,
    /// When waiting began.
    started: Option<Instant>,
    /// The longest `hold_off` among the keys.
    hold_off: Duration,
    /// Some key waited for another client's lease.
    waited_for_lease: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    Plain,
    Script(&'static str),
}

impl Engine {
    /// The plan of a `GET` or `MGET` with at least one key in a `cache` keyspace.
    /// `only`: the keyspace of the command's one key, when the caller looked it up.
    pub(super) fn read_plan(
        &self,
        req: &Request,
        info: &CommandInfo,
        proto: u8,
        only: Option<KeyspaceMatch<'_>>,
    ) -> Option<Plan> {
        let (keys, mget) = match info.name.as_str() {
            "get" => (req.args.get(1..2)?, false),
            "mget" => (req.args.get(1..)?, true),
            _ => return None,
        };
        if !mget {
            // A `GET`: most are hits, which need nothing but the key's mode; the rest of
            // the read's state is made only for a miss.
            let key = keys.first()?;
            let rule = match only {
                Some(m) => self.cache_rule_of(m, key)?,
                None => self.cache_key_rule(key)?,
            };
            return Some(Plan {
                settle: Settle::Get(key.clone(), proto, rule),
                ..Plan::forward(req)
            });
        }
        self.read_state(keys, mget, proto).map(|st| Plan {
            settle: Settle::Read(Box::new(st)),
            ..Plan::forward(req)
        })
    }

    /// A plain `GET` of a `cache` key answered: a hit is the client's reply, a miss
    /// goes on as any read of `cache` keys.
    pub(super) fn settle_get(
        &self,
        key: Bytes,
        proto: u8,
        rule: RuleOf,
        reply: Bytes,
        cx: SettleContext<'_>,
    ) -> Settled {
        if reply.first() == Some(&b'-') || reply.first() == Some(&b'!') {
            return Settled::Reply(reply);
        }
        if !is_null(&reply) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = self.tally(rule, &key) {
                t.hits.fetch_add(1, Ordering::Relaxed);
            }
            return Settled::Reply(reply);
        }
        match self.read_state(std::slice::from_ref(&key), false, proto) {
            Some(st) => self.settle_read(st, reply, cx),
            // The key has no state key (its braces): a plain read after all.
            None => Settled::Reply(reply),
        }
    }

    /// Counts a read of the `i`th key, a `cache` key: a hit or a miss, in all and in
    /// its keyspace.
    fn count_read(&self, st: &ReadState, i: usize, hit: bool) {
        let tally = st
            .rules
            .get(i)
            .zip(st.keys.get(i))
            .and_then(|(&r, key)| self.tally(r, key));
        let (all, tally) = match (hit, tally) {
            (true, t) => (&self.stats.cache_hits, t.map(|t| &t.hits)),
            (false, t) => (&self.stats.cache_misses, t.map(|t| &t.misses)),
        };
        all.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = tally {
            t.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The state of a read of `keys`; `None` when none is a `cache` key.
    fn read_state(&self, keys: &[Bytes], mget: bool, proto: u8) -> Option<ReadState> {
        let mut hold_off = Duration::ZERO;
        let mut rules = Vec::with_capacity(keys.len());
        let states: Vec<Option<Bytes>> = keys
            .iter()
            .map(|k| {
                let c = self.cache_key(k);
                rules.push(c.as_ref().map(|c| c.rule).unwrap_or_default());
                c.map(|c| {
                    hold_off = hold_off.max(c.hold_off);
                    c.state
                })
            })
            .collect();
        if states.iter().all(Option::is_none) {
            return None;
        }
        Some(ReadState {
            keys: keys.to_vec(),
            values: vec![None; keys.len()],
            states,
            rules,
            mget,
            proto,
            asking: Vec::new(),
            round: Round::Plain,
            deadline: None,
            started: None,
            hold_off,
            waited_for_lease: false,
        })
    }

    pub(super) fn settle_read(
        &self,
        mut st: ReadState,
        reply: Bytes,
        cx: SettleContext<'_>,
    ) -> Settled {
        if reply.first() == Some(&b'-') || reply.first() == Some(&b'!') {
            return Settled::Reply(reply);
        }
        match st.round {
            Round::Plain => {
                if st.mget {
                    let Some(el) = elements(&reply) else {
                        return Settled::Reply(reply);
                    };
                    for (i, e) in el.iter().enumerate() {
                        if let Some(v) = st.values.get_mut(i) {
                            *v = (!is_null(e)).then(|| slice_of(&reply, e));
                        }
                    }
                } else if !is_null(&reply) {
                    self.count_read(&st, 0, true);
                    return Settled::Reply(reply);
                }
                st.asking = (0..st.keys.len())
                    .filter(|&i| st.values.get(i).is_some_and(Option::is_none))
                    .filter(|&i| st.states.get(i).is_some_and(Option::is_some))
                    .collect();
                for i in 0..st.keys.len() {
                    let hit = st.values.get(i).is_some_and(Option::is_some);
                    if hit && st.states.get(i).is_some_and(Option::is_some) {
                        self.count_read(&st, i, true);
                    }
                }
                if st.asking.is_empty() {
                    return Settled::Reply(reply);
                }
                if cx.may_wait {
                    st.started = Some(cx.now);
                    st.deadline = Some(cx.now + self.coalesce_wait);
                    self.ask(st, "wait", Duration::ZERO, true)
                } else {
                    self.ask(st, "record", Duration::ZERO, false)
                }
            }
            Round::Script(mode) => self.read_round(st, mode, &reply, cx),
        }
    }

    /// Settles the `READ` script's reply for the keys asked.
    fn read_round(
        &self,
        mut st: ReadState,
        mode: &str,
        reply: &Bytes,
        cx: SettleContext<'_>,
    ) -> Settled {
        let Some(results) = elements(reply) else {
            return Settled::Reply(reply.clone());
        };
        let mut still = Vec::new();
        let mut wait = Duration::MAX;
        let asked = std::mem::take(&mut st.asking);
        for (&i, r) in asked.iter().zip(results.iter()) {
            let Some(el) = elements(r) else { continue };
            let status = el.first().and_then(|f| int_value(f)).unwrap_or(2);
            let arg = el.get(1).copied();
            match status {
                1 if mode != "record" => {
                    if let (Some(v), Some(slot)) = (arg, st.values.get_mut(i)) {
                        *slot = Some(slice_of(reply, v));
                        // Found after all (another client's fill, or one that landed
                        // since the plain read): a hit.
                        self.count_read(&st, i, true);
                        if st.waited_for_lease {
                            self.stats.coalesce_filled.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                3 | 4 => {
                    if status == 4 && !st.waited_for_lease {
                        st.waited_for_lease = true;
                        self.stats.coalesce_waits.fetch_add(1, Ordering::Relaxed);
                    }
                    if status == 3 {
                        self.stats.held_off_waits.fetch_add(1, Ordering::Relaxed);
                    }
                    let ms = arg.and_then(int_value).unwrap_or(1).max(1);
                    let step = if status == 3 {
                        // Under a tombstone: wait for it to end, then for a fill.
                        let end = cx.now + Duration::from_millis(ms as u64);
                        let limit = st.started.map(|s| s + st.hold_off + self.coalesce_wait);
                        st.deadline = st.deadline.max(Some(end + self.coalesce_wait)).min(limit);
                        Duration::from_millis(ms as u64)
                    } else {
                        (self.coalesce_wait / 10).max(Duration::from_millis(2))
                    };
                    wait = wait.min(step);
                    still.push(i);
                }
                _ => {
                    self.count_read(&st, i, false);
                    if status == 2 && arg.and_then(int_value) == Some(1) {
                        self.stats.leases_granted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if still.is_empty() {
            return Settled::Reply(st.assemble());
        }
        st.asking = still;
        match st.deadline {
            Some(d) if cx.now < d && cx.may_wait => {
                let delay = wait.min(d - cx.now);
                self.ask(st, "wait", delay, true)
            }
            _ if cx.may_wait => {
                if st.waited_for_lease {
                    self.stats
                        .coalesce_timed_out
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.ask(st, "final", Duration::ZERO, true)
            }
            // The client sent more meanwhile: its later commands go upstream now, so
            // this read is answered nil as it was, the miss recorded.
            _ => self.ask(st, "record", Duration::ZERO, false),
        }
    }

    /// Asks the `READ` script about the keys in `st.asking`.
    fn ask(&self, mut st: ReadState, mode: &'static str, delay: Duration, holds: bool) -> Settled {
        let mut keys: Vec<Bytes> = Vec::with_capacity(2 * st.asking.len());
        keys.extend(st.asking.iter().filter_map(|&i| st.keys.get(i).cloned()));
        keys.extend(
            st.asking
                .iter()
                .filter_map(|&i| st.states.get(i).cloned().flatten()),
        );
        let argv = [
            Bytes::from_static(mode.as_bytes()),
            ms_bytes(self.lease_ttl),
            ms_bytes(self.fill_window),
        ];
        st.round = Round::Script(mode);
        Settled::Again(FollowUp {
            data: evalsha(&self.scripts.read, &keys, &argv),
            frames: 1,
            settle: Settle::Read(Box::new(st)),
            delay,
            script: true,
            holds_later: holds,
            own: true,
        })
    }
}

impl ReadState {
    /// The client's reply from the values found.
    fn assemble(self) -> Bytes {
        if !self.mget {
            return match self.values.into_iter().next().flatten() {
                Some(v) => v,
                None => null(self.proto),
            };
        }
        let len: usize = self.values.iter().flatten().map(Bytes::len).sum();
        let mut out = BytesMut::with_capacity(len + 16 + 5 * self.values.len());
        push_header(&mut out, b'*', self.values.len() as i64);
        for v in &self.values {
            match v {
                Some(v) => out.extend_from_slice(v),
                None => out.extend_from_slice(&null(self.proto)),
            }
        }
        out.freeze()
    }
}
