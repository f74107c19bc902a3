//! What the workers did: one event per operation, with times in microseconds since the
//! run began, kept per worker and merged at the end (so recording costs no lock). The
//! same events are what `--history` writes, one JSON object per line.

use serde::Serialize;

/// The worker id of the events that describe the database's initial rows.
pub const SETUP: u32 = u32::MAX;

/// What one operation did to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// A cache read (`GET`, or one key of an `MGET`) that found version `ver`.
    Hit { ver: i64 },
    /// A cache read that found nothing.
    Miss,
    /// A database read after a miss, which returned version `ver`.
    DbRead { ver: i64 },
    /// A fill of version `ver` (`SET … EX`, or `SET … NX EX` for `add`); the reply
    /// says nothing of whether the cache kept it.
    Fill { ver: i64, nx: bool },
    /// A committed write of version `ver`: `COMMIT` returned at `commit_us`; the event
    /// ends when the whole sequence (commit and invalidation) returned, and
    /// `invalidated` says whether its `DEL` (or write-through `SET`) succeeded.
    Write {
        ver: i64,
        commit_us: u64,
        invalidated: bool,
    },
    /// The final audit's view of the key: what the cache held (`None`: absent) and the
    /// database's current version.
    Audit { cached: Option<i64>, db: i64 },
    /// An operation that failed, by kind (`timeout`, `io`, `db`, `redis:<code>` …).
    Error { kind: String },
}

/// One operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub worker: u32,
    pub key: u32,
    pub start_us: u64,
    pub end_us: u64,
    #[serde(flatten)]
    pub op: Op,
}

impl Event {
    pub fn new(worker: u32, key: u32, start_us: u64, end_us: u64, op: Op) -> Event {
        Event {
            worker,
            key,
            start_us,
            end_us,
            op,
        }
    }

    /// The database's initial row of `key` (version 1), known to all from time 0.
    pub fn initial(key: u32) -> Event {
        Event::new(
            SETUP,
            key,
            0,
            0,
            Op::Write {
                ver: 1,
                commit_us: 0,
                invalidated: true,
            },
        )
    }
}

/// A cached value: the row's version, a colon, the payload.
pub fn cache_value(ver: i64, payload: &str) -> String {
    format!("{ver}:{payload}")
}

/// The version embedded in a cached value.
pub fn parse_version(value: &[u8]) -> Option<i64> {
    let end = value.iter().position(|&b| b == b':')?;
    std::str::from_utf8(value.get(..end)?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_version() {
        assert_eq!(
            parse_version(cache_value(42, "item-3").as_bytes()),
            Some(42)
        );
        assert_eq!(parse_version(b"nonsense"), None);
    }

    #[test]
    fn events_serialise_as_flat_json() {
        let e = Event::new(3, 9, 10, 20, Op::Hit { ver: 4 });
        let json = serde_json::to_string(&e).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"worker":3,"key":9,"start_us":10,"end_us":20,"op":"hit","ver":4}"#
        );
    }
}
