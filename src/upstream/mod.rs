//! Upstream connections: a few shared, multiplexed, pipelined connections per (database,
//! protocol version), and dedicated ("pinned") connections for sessions in a stateful
//! mode, kept in a small idle pool for reuse.

pub mod connect;
pub mod shared;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use thiserror::Error;
use tokio::sync::mpsc;

pub use connect::Identity;
pub use shared::SharedConn;

use crate::metrics::Histogram;
use crate::resp::reply;
use crate::stream::Stream;

/// How to reach the upstream and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `host:port`.
    pub address: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Shared connections per (database, protocol).
    pub shared_connections: usize,
    /// Commands run on every new connection after the handshake, whose failure is
    /// not fatal (loading cachet's scripts).
    pub preload: Vec<Vec<Bytes>>,
    /// TLS for a `rediss://` upstream; every connection (shared, pinned, auxiliary)
    /// uses it.
    pub tls: Option<crate::tls::Connector>,
    /// Told the upstream's run id and clock (milliseconds) by every new shared
    /// connection.
    pub on_connect: Option<UpstreamObserver>,
}

/// Told an upstream's run id and its clock (milliseconds).
pub type ObserveFn = dyn Fn(&str, u64) + Send + Sync;

/// A callback told what a new shared connection found out about its upstream.
#[derive(Clone)]
pub struct UpstreamObserver(pub Arc<ObserveFn>);

impl std::fmt::Debug for UpstreamObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamObserver")
    }
}

/// Why an upstream request got no reply from Redis. Every variant reaches the client as
/// an `-ERR` line; none of them closes the client's connection by itself.
#[derive(Debug, Clone, Error)]
pub enum UpstreamError {
    /// Could not connect (or the connection is down and reconnecting).
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// Connected, but the upstream refused cachet's handshake (credentials, database).
    #[error("upstream refused the connection: {0}")]
    Handshake(String),
    /// The connection broke with the request written and its reply not read.
    #[error("upstream connection lost: {0}")]
    Io(String),
    /// The connection was closed while the request was outstanding.
    #[error("upstream connection closed")]
    Lost,
    /// No reply within `command_timeout`; the connection was dropped.
    #[error("upstream did not answer within {}", connect::fmt_duration(*.0))]
    Timeout(Duration),
    /// The upstream sent bytes that are not RESP.
    #[error("upstream sent a malformed reply: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// Whether the request may have reached Redis (so a write may have been applied).
    pub fn maybe_applied(&self) -> bool {
        !matches!(
            self,
            UpstreamError::Unavailable(_) | UpstreamError::Handshake(_)
        )
    }

    /// The error line the client receives.
    pub fn reply(&self) -> Bytes {
        if self.maybe_applied() {
            reply::error(&format!(
                "ERR cachet: {self}; the command may or may not have been applied"
            ))
        } else {
            reply::error(&format!("ERR cachet: {self}"))
        }
    }
}

/// What a session receives for each request it sent upstream, in the order it sent them.
pub type Reply = Result<Bytes, UpstreamError>;
pub type ReplyTx = mpsc::UnboundedSender<Reply>;
pub type ReplyRx = mpsc::UnboundedReceiver<Reply>;

/// What a job's owner does when the job fails (with the error).
pub type OnFail = Box<dyn FnOnce(&UpstreamError) + Send + Sync>;

/// One request for a shared connection: encoded command bytes and how many reply frames
/// they produce (1 for a plain command; more for a rewritten block such as
/// `MULTI … EXEC`). The reply is the contiguous bytes of all those frames.
pub struct Job {
    pub data: Bytes,
    pub frames: u32,
    /// Where the reply goes; `None` for requests nobody waits for (an invalidation
    /// that follows a blocking write).
    pub reply: Option<ReplyTx>,
    /// Held until the job is answered or fails, then dropped (the owner's guard: key
    /// ordering tokens of the keys it writes).
    pub held: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// Called if the job fails (the owner decides what an unknown fate means).
    pub on_fail: Option<OnFail>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("bytes", &self.data.len())
            .field("frames", &self.frames)
            .field("held", &self.held.is_some())
            .field("on_fail", &self.on_fail.is_some())
            .finish()
    }
}

impl Job {
    pub fn complete(self, bytes: Bytes) {
        if let Some(tx) = &self.reply {
            let _ = tx.send(Ok(bytes));
        }
    }

    pub fn fail(mut self, err: &UpstreamError) {
        if let Some(on_fail) = self.on_fail.take() {
            on_fail(err);
        }
        if let Some(tx) = &self.reply {
            let _ = tx.send(Err(err.clone()));
        }
    }
}

/// Idle dedicated connections kept per identity for reuse by the next pinned session.
const IDLE_PINNED_PER_IDENTITY: usize = 8;

/// All upstream connections of one cachet.
#[derive(Debug)]
pub struct Upstream {
    settings: Arc<Settings>,
    /// Round trips of shared-connection requests (a metric).
    pub rtt: Arc<Histogram>,
    pools: DashMap<Identity, Arc<[SharedConn]>>,
    idle: DashMap<Identity, Vec<Stream>>,
}

impl Upstream {
    pub fn new(settings: Settings) -> Upstream {
        Upstream {
            settings: Arc::new(settings),
            rtt: Arc::new(Histogram::default()),
            pools: DashMap::new(),
            idle: DashMap::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The shared connection serving `session` for `id`. A session always gets the same
    /// one for the same identity, which keeps its own pipeline in order.
    pub fn shared(&self, id: Identity, session: u64) -> SharedConn {
        let pool = match self.pools.get(&id) {
            Some(p) => p.clone(),
            None => self
                .pools
                .entry(id)
                .or_insert_with(|| {
                    (0..self.settings.shared_connections.max(1))
                        .map(|_| SharedConn::spawn(self.settings.clone(), id, self.rtt.clone()))
                        .collect()
                })
                .clone(),
        };
        let i = (session % pool.len().max(1) as u64) as usize;
        match pool.get(i) {
            Some(c) => c.clone(),
            // Unreachable: pools are never empty. Spawning keeps it total anyway.
            None => SharedConn::spawn(self.settings.clone(), id, self.rtt.clone()),
        }
    }

    /// Whether a shared connection of database `db` (RESP2) is up and none that is up
    /// has heard that the upstream does not serve data (loading, a replica cut off from
    /// its primary).
    pub fn is_up_db(&self, db: u32) -> bool {
        let id = Identity { db, proto: 2 };
        self.pools
            .get(&id)
            .map(|p| {
                p.iter().any(SharedConn::is_up)
                    && p.iter().filter(|c| c.is_up()).all(SharedConn::is_serving)
            })
            .unwrap_or(false)
    }

    /// Shared connections connected now, and shared connections in all.
    pub fn connections_up(&self) -> (usize, usize) {
        self.pools.iter().fold((0, 0), |(up, all), p| {
            (up + p.iter().filter(|c| c.is_up()).count(), all + p.len())
        })
    }

    /// A dedicated connection set up for `id`: an idle one if there is one, a new one
    /// otherwise.
    pub async fn pin(&self, id: Identity) -> Result<Stream, UpstreamError> {
        loop {
            let idle = self.idle.get_mut(&id).and_then(|mut v| v.pop());
            match idle {
                // A connection that the upstream closed while idle is readable (EOF);
                // skip it rather than hand the session a dead socket.
                Some(conn) if conn.idle_and_open() => return Ok(conn),
                Some(_) => continue,
                None => return connect::connect(&self.settings, id).await,
            }
        }
    }

    /// Takes back a dedicated connection whose state is again what `pin` hands out.
    pub fn unpin(&self, id: Identity, conn: Stream) {
        let mut idle = self.idle.entry(id).or_default();
        if idle.len() < IDLE_PINNED_PER_IDENTITY {
            idle.push(conn);
        }
    }
}
