//! Invalidations whose fate is unknown are retried until they succeed (G6).
//!
//! A write and its invalidation run as one atomic unit, so they fail together; but when
//! the connection breaks after the unit was sent, nobody knows whether it ran. cachet
//! then assumes it did: the invalidation is re-sent (it is idempotent: voiding a lease,
//! leaving a tombstone, publishing) until the upstream confirms it, and until then
//! fills of those keys are refused. A re-send answered with an error (`-LOADING` while
//! the upstream loads its dataset, `-READONLY` from a replica after a failover,
//! `-MASTERDOWN`) has not landed either and is tried again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::context::Context;
use crate::resp::Scanner;
use crate::upstream::{Identity, Job};

/// One invalidation to re-send: encoded commands, their reply count, the database,
/// and the keys it protects.
#[derive(Debug, Clone)]
pub struct Retry {
    pub data: Bytes,
    pub frames: u32,
    pub db: u32,
    pub keys: Vec<Bytes>,
}

/// Invalidations waiting to be re-sent, and the keys whose fills are refused meanwhile.
#[derive(Debug)]
pub struct RetryQueue {
    tx: mpsc::UnboundedSender<Retry>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Retry>>>,
    pending: DashMap<Bytes, u32>,
}

impl Default for RetryQueue {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        RetryQueue {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            pending: DashMap::new(),
        }
    }
}

/// Handed to a job that carries a write: what to re-send if its fate is unknown.
#[derive(Debug)]
pub struct RetryTicket {
    pub retry: Retry,
    pub queue: Arc<RetryQueue>,
}

impl RetryQueue {
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

    /// Re-sends queued invalidations until each succeeds; runs for the process's life.
    pub async fn run(self: Arc<Self>, ctx: Arc<Context>) {
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        let Some(mut rx) = rx else { return };
        while let Some(retry) = rx.recv().await {
            let mut wait = Duration::from_millis(50);
            loop {
                let conn = ctx.upstream.shared(
                    Identity {
                        db: retry.db,
                        proto: 2,
                    },
                    0,
                );
                let (tx, mut replies) = mpsc::unbounded_channel();
                conn.send(Job {
                    data: retry.data.clone(),
                    frames: retry.frames,
                    reply: Some(tx),
                    held: None,
                    on_fail: None,
                });
                let reply = replies.recv().await;
                if reply.is_some_and(|r| r.is_ok_and(|b| landed(&b))) {
                    ctx.engine
                        .load()
                        .stats
                        .invalidations_retried
                        .fetch_add(1, Ordering::Relaxed);
                    self.done(&retry);
                    break;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Whether every reply frame of a re-sent invalidation is a success (none is an error).
fn landed(reply: &[u8]) -> bool {
    let mut scanner = Scanner::default();
    let mut rest = reply;
    while !rest.is_empty() {
        match scanner.scan(rest) {
            Ok(Some(frame)) if frame.kind != b'-' => {
                rest = rest.get(frame.len..).unwrap_or_default();
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::landed;

    #[test]
    fn an_error_among_the_replies_means_not_landed() {
        assert!(landed(b":1\r\n+OK\r\n:0\r\n"));
        assert!(!landed(
            b"-READONLY You can't write against a read only replica.\r\n+OK\r\n:0\r\n"
        ));
        assert!(!landed(
            b":1\r\n-LOADING Redis is loading the dataset in memory\r\n"
        ));
        assert!(!landed(b":1\r\n:"));
    }
}
