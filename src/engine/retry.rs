//! Invalidations whose fate is unknown are retried until they succeed (G6).
//!
//! A write and its invalidation run as one atomic unit, so they fail together; but when
//! the connection breaks after the unit was sent, nobody knows whether it ran. cachet
//! then assumes it did: the invalidation is re-sent (it is idempotent: voiding a lease,
//! leaving a tombstone, publishing) until the upstream confirms it, and until then
//! fills of those keys are refused. A re-send answered with an error (`-LOADING` while
//! the upstream loads its dataset, `-READONLY` from a replica after a failover,
//! `-MASTERDOWN`) has not landed either and is tried again. Neither has one that a
//! replica accepted: for a strict key the re-send is a bare `PUBLISH`, which a replica
//! answers `:0` without telling anyone, so every re-send is followed by `ROLE` on the
//! same connection and counts only if the upstream answers that it is the primary.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::resp::Scanner;
use crate::resp::reply::{Role, role};
use crate::resp::request::encode_command;

/// One invalidation to re-send: encoded commands, their reply count, the database,
/// and the keys it protects.
#[derive(Debug, Clone)]
pub struct Retry {
    pub data: Bytes,
    pub frames: u32,
    pub db: u32,
    pub keys: Vec<Bytes>,
}

impl Retry {
    /// `commands` as one retry (the database is the session's, set when the write is
    /// sent; the keys are the plan's, moved in by `Plan::take_retry`); `None` when
    /// there is nothing to re-send.
    pub fn of(commands: &[Vec<Bytes>]) -> Option<Retry> {
        if commands.is_empty() {
            return None;
        }
        let mut data = BytesMut::new();
        for c in commands {
            encode_command(&mut data, c);
        }
        Some(Retry {
            data: data.freeze(),
            frames: commands.len() as u32,
            db: 0,
            keys: Vec::new(),
        })
    }
}

/// Several retries joined into one, in order, as they come (the writes of one
/// transaction, a chunk of a replay): each one's commands and keys are moved in, so
/// that nothing of a write's own retry outlives it.
#[derive(Debug, Default)]
pub struct JoinedRetry {
    data: BytesMut,
    frames: u32,
    keys: Vec<Bytes>,
}

impl JoinedRetry {
    pub fn push(&mut self, retry: Retry) {
        if self.frames == 0 {
            // Room for a typical pipeline's writes (16 or so).
            self.data.reserve(16 * retry.data.len());
            self.keys.reserve(16 * retry.keys.len());
        }
        self.data.extend_from_slice(&retry.data);
        self.frames += retry.frames;
        self.keys.extend(retry.keys);
    }

    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The joined retry, of the database `db`.
    pub fn finish(self, db: u32) -> Retry {
        Retry {
            data: self.data.freeze(),
            frames: self.frames,
            db,
            keys: self.keys,
        }
    }
}

/// Invalidations waiting to be re-sent, and the keys whose fills are refused meanwhile.
#[derive(Debug)]
pub struct RetryQueue {
    tx: mpsc::UnboundedSender<Retry>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Retry>>>,
    pending: DashMap<Bytes, u32>,
    /// The invalidations of the writes of the last `window`, kept when the upstream can
    /// fail over (Sentinel): a new primary may lack what the old one acknowledged.
    recent: std::sync::Mutex<Recent>,
    keeping: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Recent {
    window: Duration,
    entries: std::collections::VecDeque<(tokio::time::Instant, Retry)>,
}

impl Default for RetryQueue {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        RetryQueue {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            pending: DashMap::new(),
            recent: std::sync::Mutex::new(Recent::default()),
            keeping: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Invalidations re-sent together after a failover, at most this many per request.
const REPLAY_CHUNK: usize = 128;

/// What a re-send came to, as [`RetryQueue::run`]'s transport reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every reply is a success and `ROLE` named the primary (or was refused, so the
    /// role cannot be known: counted as landed rather than refusing fills forever).
    Landed,
    /// Every reply is a success, but on a replica, which tells nobody.
    OnReplica,
    /// An error, or a reply cut short, or no reply at all.
    Failed,
}

impl RetryQueue {
    /// Keeps the invalidations of every write of the last `window` (see [`remember`]).
    pub fn keep_recent(&self, window: Duration) {
        if let Ok(mut r) = self.recent.lock() {
            r.window = window;
        }
        self.keeping
            .store(!window.is_zero(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Remembers a write's invalidation, when recent ones are kept.
    pub fn remember(&self, retry: &Retry) {
        if !self.keeping.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let now = tokio::time::Instant::now();
        if let Ok(mut r) = self.recent.lock() {
            let window = r.window;
            while r
                .entries
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > window)
            {
                r.entries.pop_front();
            }
            r.entries.push_back((now, retry.clone()));
        }
    }

    /// Re-sends the invalidation of every write of the last window (the upstream failed
    /// over: the new primary may lack writes the old one acknowledged, and with them
    /// their invalidations), as deletes, in chunks. Returns how many.
    pub fn replay_recent(&self) -> usize {
        self.replay_where(|_| Some(0))
    }

    /// Re-sends, as [`replay_recent`](Self::replay_recent), the recent invalidations
    /// whose first key `pick` gives a group (a cluster's slot: one chunk goes to one
    /// node), and keeps the others for a later failover. Returns how many.
    pub fn replay_where(&self, pick: impl Fn(&[u8]) -> Option<u32>) -> usize {
        let mut chosen: std::collections::BTreeMap<(u32, u32), Vec<Retry>> = Default::default();
        let mut n = 0;
        match self.recent.lock() {
            Ok(mut r) => {
                let mut kept = std::collections::VecDeque::new();
                for (at, retry) in r.entries.drain(..) {
                    match retry.keys.first().and_then(|k| pick(k)) {
                        Some(group) => {
                            n += 1;
                            chosen.entry((retry.db, group)).or_default().push(retry);
                        }
                        None => kept.push_back((at, retry)),
                    }
                }
                r.entries = kept;
            }
            Err(_) => return 0,
        }
        for ((db, _), retries) in chosen {
            for chunk in retries.chunks(REPLAY_CHUNK) {
                let mut joined = JoinedRetry::default();
                chunk.iter().cloned().for_each(|r| joined.push(r));
                self.submit(joined.finish(db));
            }
        }
        n
    }

    /// Refuses fills of the retry's keys from now on and queues it.
    pub fn submit(&self, retry: Retry) {
        for k in &retry.keys {
            *self.pending.entry(k.clone()).or_insert(0) += 1;
        }
        let _ = self.tx.send(retry);
    }

    /// Whether `key` has an invalidation not yet confirmed.
    pub fn is_pending(&self, key: &[u8]) -> bool {
        !self.pending.is_empty() && self.pending.contains_key(key)
    }

    fn done(&self, retry: &Retry) {
        for k in &retry.keys {
            self.pending.remove_if_mut(k, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }

    /// Re-sends queued invalidations until each lands; runs for the process's life.
    /// `send(db, key, data, frames)` sends them (followed by `ROLE`) on a connection of
    /// database `db` (to the node serving `key`, the first key the retry protects) and
    /// returns the replies, or `None`; `landed` is told of each
    /// confirmed one; `on_replica` of a re-send a replica took.
    pub async fn run<S, F>(
        self: Arc<Self>,
        send: S,
        landed_one: impl Fn(),
        on_replica: impl Fn(u32),
    ) where
        S: Fn(u32, Option<&Bytes>, Bytes, u32) -> F,
        F: Future<Output = Option<Bytes>>,
    {
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        let Some(mut rx) = rx else { return };
        while let Some(retry) = rx.recv().await {
            let mut wait = Duration::from_millis(50);
            loop {
                let data: Bytes = [&retry.data[..], ROLE].concat().into();
                let outcome = match send(
                    retry.db,
                    retry.keys.first(),
                    data,
                    retry.frames.saturating_add(1),
                )
                .await
                {
                    Some(reply) => landed(&reply),
                    None => Outcome::Failed,
                };
                if outcome == Outcome::OnReplica {
                    on_replica(retry.db);
                }
                if outcome == Outcome::Landed {
                    landed_one();
                    self.done(&retry);
                    break;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        }
    }
}

const ROLE: &[u8] = b"*1\r\n$4\r\nROLE\r\n";

fn landed(reply: &[u8]) -> Outcome {
    let mut scanner = Scanner::default();
    let mut rest = reply;
    let mut last: &[u8] = &[];
    let mut errors = false;
    while !rest.is_empty() {
        let Ok(Some(frame)) = scanner.scan(rest) else {
            return Outcome::Failed;
        };
        errors |= last.first() == Some(&b'-');
        last = rest.get(..frame.len).unwrap_or_default();
        rest = rest.get(frame.len..).unwrap_or_default();
    }
    if errors || last.is_empty() {
        return Outcome::Failed;
    }
    match role(last) {
        Some(Role::Primary) => Outcome::Landed,
        Some(_) => Outcome::OnReplica,
        // `ROLE` itself answered an error: one that says the upstream does not take
        // writes is a failure, any other (`-NOPERM`, renamed) leaves the role unknown.
        None if [&b"-LOADING"[..], b"-MASTERDOWN", b"-READONLY", b"-BUSY "]
            .iter()
            .any(|e| last.starts_with(e)) =>
        {
            Outcome::Failed
        }
        None => Outcome::Landed,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{Outcome, Retry, RetryQueue, landed};
    use bytes::Bytes;

    #[tokio::test]
    async fn a_failover_replays_only_the_invalidations_it_picks() {
        let q = RetryQueue::default();
        q.keep_recent(std::time::Duration::from_secs(10));
        for key in ["a", "b", "c"] {
            let cmd = vec![Bytes::from_static(b"DEL"), Bytes::from(key)];
            let mut retry = Retry::of(&[cmd]).unwrap();
            retry.keys.push(Bytes::from(key));
            q.remember(&retry);
        }
        let only_b = q.replay_where(|k| (k == b"b").then_some(7));
        assert_eq!(only_b, 1);
        assert!(q.is_pending(b"b") && !q.is_pending(b"a") && !q.is_pending(b"c"));
        // The others are kept for a later failover; each is replayed once.
        assert_eq!(q.replay_recent(), 2);
        assert_eq!(q.replay_recent(), 0);
        assert!(q.is_pending(b"a") && q.is_pending(b"c"));
    }

    const MASTER: &[u8] = b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n";
    const SLAVE: &[u8] =
        b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6380\r\n$9\r\nconnected\r\n:14\r\n";

    #[test]
    fn an_error_among_the_replies_means_not_landed() {
        let ok = [&b":1\r\n+OK\r\n:0\r\n"[..], MASTER].concat();
        assert_eq!(landed(&ok), Outcome::Landed);
        let readonly = [
            &b"-READONLY You can't write against a read only replica.\r\n+OK\r\n:0\r\n"[..],
            MASTER,
        ]
        .concat();
        assert_eq!(landed(&readonly), Outcome::Failed);
        let loading = [
            &b":1\r\n-LOADING Redis is loading the dataset in memory\r\n"[..],
            MASTER,
        ]
        .concat();
        assert_eq!(landed(&loading), Outcome::Failed);
        assert_eq!(landed(b":1\r\n:"), Outcome::Failed);
        assert_eq!(landed(b""), Outcome::Failed);
    }

    #[test]
    fn a_publish_a_replica_accepted_has_not_landed() {
        assert_eq!(landed(&[b":0\r\n", SLAVE].concat()), Outcome::OnReplica);
        assert_eq!(
            landed(b":0\r\n*2\r\n$8\r\nsentinel\r\n*0\r\n"),
            Outcome::OnReplica
        );
        // ROLE refused by the ACL: the role cannot be known.
        assert_eq!(
            landed(b":1\r\n-NOPERM User cachet has no permissions to run the 'role' command\r\n"),
            Outcome::Landed
        );
        assert_eq!(
            landed(b":1\r\n-LOADING Redis is loading the dataset in memory\r\n"),
            Outcome::Failed
        );
    }
}
