//! `CACHET EXPLAIN <key>`: a key's fill-protocol state as Redis holds it, and what a
//! `SET` of it would come to now and why, judged by the same rules the scripts apply
//! (`fill::judge_set`, on a copy: nothing is changed).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Engine;
use super::fill::{self, Current, KeyState, Ms, SetFlags, Verdict};
use crate::resp::reply::{elements, int_value, string_value};

/// What Redis answered about a key: whether it exists, its state, its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub exists: bool,
    pub state: KeyState,
    pub now: Ms,
}

impl Snapshot {
    /// From the replies to `EXISTS key`, `HMGET state m s t l w x` and `TIME`.
    pub fn read(exists: &[u8], fields: &[u8], time: &[u8]) -> Option<Snapshot> {
        let exists = int_value(exists)? == 1;
        let f = elements(fields)?;
        let field = |i: usize| -> Ms {
            f.get(i)
                .and_then(|v| string_value(v))
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0)
        };
        let t = elements(time)?;
        let part = |i: usize| -> Option<u64> {
            std::str::from_utf8(string_value(t.get(i)?)?)
                .ok()?
                .parse()
                .ok()
        };
        let now = part(0)? * 1000 + part(1)? / 1000;
        let state = KeyState {
            m: field(0),
            s: field(1),
            t: field(2),
            l: field(3),
            w: field(4),
            x: field(5),
        }
        .at(now);
        Some(Snapshot { exists, state, now })
    }
}

impl Engine {
    /// The state key of a `cache` key (`None` outside `cache` keyspaces).
    pub fn cache_key_state(&self, key: &[u8]) -> Option<Bytes> {
        self.cache_key(key).map(|c| c.state)
    }

    /// `key:value` lines: the state's horizons relative to Redis's clock, and the verdict
    /// a `SET` of the key would get now, with the reason.
    pub fn explain(&self, key: &[u8], snap: &Snapshot) -> String {
        let mut s = String::new();
        let Some(c) = self.cache_key(key) else {
            return s;
        };
        let st = snap.state;
        let when = |at: Ms| {
            if at > snap.now {
                format!("in {} ms", at - snap.now)
            } else {
                "none".to_owned()
            }
        };
        let _ = write!(
            s,
            "exists:{}\r\nstate_key:{}\r\nmiss_horizon:{}\r\nstale_horizon:{}\r\ntombstone:{}\r\nlease:{}\r\ncollapse_horizon:{}\r\nwrite_horizon:{}\r\nwrite_through:{}\r\nhold_off_ms:{}\r\n",
            if snap.exists { "yes" } else { "no" },
            String::from_utf8_lossy(&c.state),
            when(st.m),
            when(st.s),
            when(st.t),
            when(st.l),
            when(st.w),
            when(st.x),
            c.policy.as_str(),
            c.hold_off.as_millis(),
        );
        let amnesia = self.upstream.amnesia_until.load(Ordering::Relaxed);
        let mut copy = st;
        let verdict = fill::judge_set(
            &mut copy,
            snap.now,
            Current {
                exists: snap.exists,
                same_value: false,
            },
            SetFlags::default(),
            c.policy,
            amnesia,
            self.windows(c.hold_off),
        );
        let _ = write!(s, "set_now:{}\r\n", reason(verdict, &st, snap, amnesia));
        s
    }
}

/// Why a `SET` now gets `verdict`, in words.
fn reason(verdict: Verdict, st: &KeyState, snap: &Snapshot, amnesia: Ms) -> String {
    let now = snap.now;
    match verdict {
        Verdict::StoredWrite => "stored as a write (no recorded miss explains it)".into(),
        Verdict::StoredFill => {
            "stored as a fill (a recorded miss explains it, and no invalidation can have overtaken it)".into()
        }
        Verdict::Invalidated => {
            "deleted instead (this keyspace's write_through turns such a write into an invalidation)".into()
        }
        Verdict::Dropped if now < amnesia => format!(
            "refused (Redis restarted and lost the recorded misses; for {} ms more no SET is trusted)",
            amnesia - now
        ),
        Verdict::Kept | Verdict::Deleted | Verdict::Dropped => {
            let what = match verdict {
                Verdict::Deleted => "refused, and the key deleted",
                _ => "refused",
            };
            if st.s > now {
                format!(
                    "{what} (a miss that may still be filled is older than an invalidation or fell under a tombstone; for {} ms more no SET is trusted as a fill)",
                    st.s - now
                )
            } else {
                format!("{what} (a write-through within the collapse horizon)")
            }
        }
        Verdict::NotSet => "not set (NX/XX)".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{ConsistencyConfig, KeyspaceMode, KeyspaceRule};

    #[test]
    fn explains_a_refused_fill() {
        let rules = vec![KeyspaceRule {
            pattern: "*".into(),
            mode: KeyspaceMode::Cache,
            max_ttl: None,
            hold_off: None,
            write_through: None,
            over_max_ttl: None,
        }];
        let e = Engine::new(&ConsistencyConfig::default(), &rules);
        let time = b"*2\r\n$10\r\n1000000000\r\n$1\r\n0\r\n";
        let now = 1_000_000_000_000;
        let fields = format!(
            "*5\r\n${}\r\n{}\r\n${}\r\n{}\r\n$-1\r\n$-1\r\n$-1\r\n",
            (now + 5000).to_string().len(),
            now + 5000,
            (now + 3000).to_string().len(),
            now + 3000
        );
        let snap = Snapshot::read(b":1\r\n", fields.as_bytes(), time).unwrap();
        assert_eq!(snap.state.m, now + 5000);
        let text = e.explain(b"k", &snap);
        assert!(text.contains("miss_horizon:in 5000 ms"), "{text}");
        assert!(
            text.contains("set_now:refused, and the key deleted"),
            "{text}"
        );
        assert!(text.contains("for 3000 ms more"), "{text}");
        let fresh = Snapshot::read(
            b":0\r\n",
            b"*5\r\n$-1\r\n$-1\r\n$-1\r\n$-1\r\n$-1\r\n",
            time,
        )
        .unwrap();
        assert!(
            e.explain(b"k", &fresh)
                .contains("set_now:stored as a write")
        );
    }
}
