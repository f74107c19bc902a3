//! Upstream connections: a few shared, multiplexed, pipelined connections per identity
//! (database, protocol version, login, and for a Redis Cluster the node), and dedicated
//! ("pinned") connections for sessions in a stateful mode, kept in a small idle pool for
//! reuse.

pub mod cluster;
pub mod connect;
pub mod login;
pub mod sentinel;
pub mod shared;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use thiserror::Error;
use tokio::sync::mpsc;

pub use connect::Identity;
pub use login::{Anonymous, Capability, Login, LoginId, Logins};
pub use shared::SharedConn;

use crate::metrics::Histogram;
use crate::resp::reply;
use crate::stream::Stream;

/// Where the upstream is: a fixed `host:port`, or the primary Sentinel names, which
/// changes with a failover. Every new connection reads it.
#[derive(Debug)]
pub struct Target {
    current: arc_swap::ArcSwap<String>,
}

impl Target {
    pub fn new(address: String) -> Arc<Target> {
        Arc::new(Target {
            current: arc_swap::ArcSwap::from_pointee(address),
        })
    }

    /// The address new connections go to (empty while Sentinel has named none).
    pub fn get(&self) -> Arc<String> {
        self.current.load_full()
    }

    /// Points new connections at `address`; whether it changed.
    pub fn set(&self, address: String) -> bool {
        if *self.current.load_full() == address {
            return false;
        }
        self.current.store(Arc::new(address));
        true
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.current.load())
    }
}

/// How to reach the upstream and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the upstream is now.
    pub address: Arc<Target>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Shared connections per (database, protocol, login).
    pub shared_connections: usize,
    /// Client logins (upstream users other than cachet's own) in use at once.
    pub max_users: usize,
    /// Commands run on every new connection after the handshake, whose failure is
    /// not fatal (loading cachet's scripts).
    pub preload: Vec<Vec<Bytes>>,
    /// TLS for a `rediss://` upstream; every connection (shared, pinned, auxiliary)
    /// uses it.
    pub tls: Option<crate::tls::Connector>,
    /// Told the upstream's run id and clock (milliseconds) by every new shared
    /// connection.
    pub on_connect: Option<UpstreamObserver>,
    /// A Redis Cluster node's address (its connections' settings); `None` for a
    /// single upstream, however found.
    pub node: Option<Arc<str>>,
}

/// Told which upstream (a cluster node's address, or empty), its run id and its clock
/// (milliseconds).
pub type ObserveFn = dyn Fn(&str, &str, u64) + Send + Sync;

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

/// What a job keeps for its owner until it is answered or fails (the ordering tokens
/// of the keys it writes, released when it is dropped), and what the owner does if
/// its fate becomes unknown. One box per job, however much it holds.
pub trait Guard: Send + Sync {
    /// The job failed (`err`): its connection broke, or its `MULTI` was refused.
    fn failed(self: Box<Self>, err: &UpstreamError);
}

/// One request for a shared connection: encoded command bytes and how many reply frames
/// they produce (1 for a plain command; more for a rewritten block such as
/// `MULTI … EXEC`). The reply is the contiguous bytes of all those frames.
pub struct Job {
    pub data: Bytes,
    pub frames: u32,
    /// Where the reply goes; `None` for requests nobody waits for (an invalidation
    /// that follows a blocking write).
    pub reply: Option<ReplyTx>,
    /// Kept until the job is answered (then dropped) or fails (then told why).
    pub guard: Option<Box<dyn Guard>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("bytes", &self.data.len())
            .field("frames", &self.frames)
            .field("guard", &self.guard.is_some())
            .finish()
    }
}

/// How a job that wraps a write in a transaction begins.
pub const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";

impl Job {
    pub fn complete(mut self, bytes: Bytes) {
        // A write sent as `MULTI`, the write, its invalidation, `EXEC` whose `MULTI`
        // was refused (the client's user lost `+multi` since cachet last checked its
        // rights) ran without its transaction: its fate is as unknown as if the
        // connection had broken, and its owner re-sends the invalidation.
        if bytes.first() == Some(&b'-')
            && self.data.starts_with(MULTI)
            && let Some(guard) = self.guard.take()
        {
            guard.failed(&UpstreamError::Io(
                "the upstream refused MULTI; the write may have run outside its transaction".into(),
            ));
        }
        if let Some(tx) = &self.reply {
            let _ = tx.send(Ok(bytes));
        }
    }

    pub fn fail(mut self, err: &UpstreamError) {
        if let Some(guard) = self.guard.take() {
            guard.failed(err);
        }
        if let Some(tx) = &self.reply {
            let _ = tx.send(Err(err.clone()));
        }
    }
}

/// Idle dedicated connections kept per identity for reuse by the next pinned session.
const IDLE_PINNED_PER_IDENTITY: usize = 8;
/// A shared connection whose oldest request has waited this long (a long script,
/// `DEBUG SLEEP`, a huge `KEYS`) takes no new session: they go to another one.
pub const STUCK_AFTER: Duration = Duration::from_millis(100);
/// Connections a pool may add beyond `shared_connections` while its own are stuck.
const OVERFLOW: usize = 4;

/// A pool of shared connections for one identity.
#[derive(Debug)]
struct Pool {
    conns: Arc<[SharedConn]>,
    /// Found unused by the last sweep (no session holds any of its connections).
    unused: std::sync::atomic::AtomicBool,
}

/// All upstream connections of one cachet.
#[derive(Debug)]
pub struct Upstream {
    settings: Arc<Settings>,
    /// A Redis Cluster upstream's slot map and nodes.
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// Each cluster node's settings (its address), by node number, made when first used.
    node_settings: std::sync::RwLock<Vec<Arc<Settings>>>,
    /// Round trips of shared-connection requests (a metric).
    pub rtt: Arc<Histogram>,
    pub logins: Arc<Logins>,
    /// By identity, looked up for every batch (foldhash: identities are cachet's own).
    pools: DashMap<Identity, Pool, foldhash::fast::RandomState>,
    idle: DashMap<Identity, Vec<Stream>, foldhash::fast::RandomState>,
}

impl Upstream {
    pub fn new(settings: Settings) -> Upstream {
        Upstream::with_cluster(settings, None)
    }

    /// An upstream that is a Redis Cluster (`cluster`), or a single Redis (`None`).
    pub fn with_cluster(settings: Settings, cluster: Option<cluster::Cluster>) -> Upstream {
        let own = settings
            .password
            .clone()
            .map(|p| (settings.username.clone(), p));
        let logins = Arc::new(Logins::new(own, settings.max_users));
        Upstream {
            settings: Arc::new(settings),
            cluster: cluster.map(Arc::new),
            node_settings: std::sync::RwLock::new(Vec::new()),
            rtt: Arc::new(Histogram::default()),
            logins,
            pools: DashMap::default(),
            idle: DashMap::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// cachet's own identity for database `db` and protocol `proto` (its own work:
    /// recording misses, re-sent invalidations, discovery), on the node commands
    /// without keys go to.
    pub fn own(&self, db: u32, proto: u8) -> Identity {
        self.own_on(db, proto, self.keyless_node())
    }

    /// cachet's own identity on node `node`.
    pub fn own_on(&self, db: u32, proto: u8, node: u16) -> Identity {
        Identity {
            db,
            proto,
            login: self.logins.own().id,
            node,
        }
    }

    /// The node a command without keys goes to (0 unless the upstream is a cluster).
    pub fn keyless_node(&self) -> u16 {
        self.cluster.as_ref().and_then(|c| c.any()).unwrap_or(0)
    }

    /// The node serving `key` (0 unless the upstream is a cluster).
    pub fn node_of(&self, key: &[u8]) -> u16 {
        match &self.cluster {
            None => 0,
            Some(c) => c
                .owner(crate::command::slot::key_slot(key))
                .or_else(|| c.any())
                .unwrap_or(0),
        }
    }

    /// The settings connections to `node` are made with: the upstream's own, or for a
    /// cluster node the same with that node's address.
    pub fn node_settings(&self, node: u16) -> Arc<Settings> {
        let Some(cluster) = &self.cluster else {
            return self.settings.clone();
        };
        if let Ok(known) = self.node_settings.read()
            && let Some(s) = known.get(usize::from(node))
        {
            return s.clone();
        }
        let Ok(mut known) = self.node_settings.write() else {
            return self.settings.clone();
        };
        while known.len() <= usize::from(node) {
            let n = known.len() as u16;
            let address = cluster.address(n).unwrap_or_else(|| Arc::from(""));
            known.push(Arc::new(Settings {
                address: Target::new(address.to_string()),
                node: Some(address),
                ..(*self.settings).clone()
            }));
        }
        known
            .get(usize::from(node))
            .cloned()
            .unwrap_or_else(|| self.settings.clone())
    }

    /// The login an identity runs as; a forgotten one (which no session can hold)
    /// comes back revoked, so that nothing runs as anyone else.
    fn login_of(&self, id: Identity) -> Arc<Login> {
        self.logins.get(id.login).unwrap_or_else(|| {
            let gone = Arc::new(Login::forgotten(id.login));
            gone.revoke();
            gone
        })
    }

    /// The shared connection serving `session` for `id`. A session always gets the same
    /// one for the same identity, which keeps its own pipeline in order.
    pub fn shared(&self, id: Identity, session: u64) -> SharedConn {
        let pool = match self.pools.get(&id) {
            Some(p) => {
                p.unused.store(false, std::sync::atomic::Ordering::Relaxed);
                p.conns.clone()
            }
            None => self
                .pools
                .entry(id)
                .or_insert_with(|| {
                    let login = self.login_of(id);
                    Pool {
                        conns: (0..self.settings.shared_connections.max(1))
                            .map(|_| self.spawn_shared(id, &login))
                            .collect(),
                        unused: std::sync::atomic::AtomicBool::new(false),
                    }
                })
                .conns
                .clone(),
        };
        let i = (session % pool.len().max(1) as u64) as usize;
        match pool.get(i) {
            Some(c) => c.clone(),
            // Unreachable: pools are never empty. Spawning keeps it total anyway.
            None => self.spawn_shared(id, &self.login_of(id)),
        }
    }

    /// Another shared connection for a session whose `current` one is stuck behind a
    /// long request of another client (`STUCK_AFTER`): one of the pool's that is not,
    /// or a new one while the pool has fewer than `shared_connections` + `OVERFLOW`.
    /// `None` when `current` is not stuck, or every connection is and the pool is full.
    /// Only a session with nothing outstanding may move (its pipeline stays in order).
    pub fn unstuck(&self, id: Identity, current: &SharedConn) -> Option<SharedConn> {
        if current.stuck_for() < STUCK_AFTER {
            return None;
        }
        let mut pool = self.pools.get_mut(&id)?;
        if let Some(free) = pool.conns.iter().find(|c| c.stuck_for() < STUCK_AFTER) {
            return Some(free.clone());
        }
        if pool.conns.len() >= self.settings.shared_connections.max(1) + OVERFLOW {
            return None;
        }
        let login = self.login_of(id);
        let extra = self.spawn_shared(id, &login);
        let mut conns: Vec<SharedConn> = pool.conns.iter().cloned().collect();
        conns.push(extra.clone());
        pool.conns = conns.into();
        tracing::debug!(
            db = id.db,
            connections = pool.conns.len(),
            "a shared connection is held up by a long request; opened another"
        );
        Some(extra)
    }

    fn spawn_shared(&self, id: Identity, login: &Arc<Login>) -> SharedConn {
        SharedConn::spawn(
            self.node_settings(id.node),
            id,
            login.clone(),
            self.logins.clone(),
            self.rtt.clone(),
        )
    }

    /// The login for credentials Redis (or `[auth]`) accepted. When every place is
    /// taken, connections no session holds are closed first to make room.
    pub fn login(
        &self,
        user: Option<Bytes>,
        password: Bytes,
    ) -> Result<Arc<Login>, login::TooManyUsers> {
        match self.logins.intern(user.clone(), password.clone()) {
            Err(login::TooManyUsers(_)) => {
                self.close_unheld(false);
                self.logins.intern(user, password)
            }
            ok => ok,
        }
    }

    /// Closes client logins' pools that no session holds: at once, or (`patient`) only
    /// once they were found unheld by the previous call too.
    fn close_unheld(&self, patient: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let own = self.logins.own().id;
        self.pools.retain(|id, pool| {
            if id.login == own || id.login == LoginId::ANONYMOUS {
                return true;
            }
            if pool.conns.iter().any(SharedConn::held_elsewhere) {
                pool.unused.store(false, Relaxed);
                return true;
            }
            patient && !pool.unused.swap(true, Relaxed)
        });
        self.idle.retain(|id, _| {
            id.login == own
                || id.login == LoginId::ANONYMOUS
                || self.logins.get(id.login).is_some_and(|l| !l.is_revoked())
        });
        self.logins.forget_unused();
    }

    /// Closes what client logins no longer use: a pool none of whose connections a
    /// session has held since the last sweep, idle dedicated connections of logins that
    /// are gone, and the logins themselves. cachet's own and the anonymous pools stay.
    pub fn sweep(&self) {
        self.close_unheld(true);
    }

    /// Whether a shared connection of database `db` (RESP2, cachet's own login) is up
    /// and none that is up has heard that the upstream does not serve data (loading, a
    /// replica cut off from its primary).
    /// For a cluster: every slot has a primary, and every primary's connection is so.
    pub fn is_up_db(&self, db: u32) -> bool {
        match &self.cluster {
            None => self.is_up(self.own(db, 2)),
            Some(c) => {
                let primaries = c.primaries();
                c.covered() && primaries.iter().all(|&n| self.is_up(self.own_on(db, 2, n)))
            }
        }
    }

    /// Each cluster primary's address and whether cachet's connection to it is up (for
    /// `/readyz` and `CACHET INFO`); empty for a single upstream.
    pub fn nodes_up(&self) -> Vec<(Arc<str>, bool)> {
        let Some(c) = &self.cluster else {
            return Vec::new();
        };
        c.primaries()
            .into_iter()
            .filter_map(|n| Some((c.address(n)?, self.is_up(self.own_on(0, 2, n)))))
            .collect()
    }

    fn is_up(&self, id: Identity) -> bool {
        self.pools
            .get(&id)
            .map(|p| {
                p.conns.iter().any(SharedConn::is_up)
                    && p.conns
                        .iter()
                        .filter(|c| c.is_up())
                        .all(SharedConn::is_serving)
            })
            .unwrap_or(false)
    }

    /// Shared connections connected now, and shared connections in all.
    pub fn connections_up(&self) -> (usize, usize) {
        self.pools.iter().fold((0, 0), |(up, all), p| {
            (
                up + p.conns.iter().filter(|c| c.is_up()).count(),
                all + p.conns.len(),
            )
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
                None => {
                    let login = self.login_of(id);
                    let r = connect::connect(&self.node_settings(id.node), id, &login).await;
                    if let Err(e) = &r {
                        login::refused(&login, &self.logins, e);
                    }
                    return r;
                }
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

    /// The upstream moved (Sentinel named a new primary): every shared connection is
    /// replaced once its outstanding requests are answered, and idle dedicated ones are
    /// dropped, so that nothing more is written to the old primary.
    pub fn retarget(&self) {
        for pool in self.pools.iter() {
            for conn in pool.conns.iter() {
                conn.reconnect();
            }
        }
        self.idle.clear();
    }

    /// A one-off connection as `login` (database 0, RESP2, no scripts loaded), for a
    /// check of cachet's such as a client's `AUTH`.
    pub async fn connect_as(&self, login: &Login) -> Result<Stream, UpstreamError> {
        let id = Identity {
            db: 0,
            proto: 2,
            login: login.id,
            node: self.keyless_node(),
        };
        self.connect_as_identity(login, id).await
    }

    /// A one-off connection set up as `id` (no scripts loaded), for one command that
    /// must not wait behind others.
    pub async fn connect_as_identity(
        &self,
        login: &Login,
        id: Identity,
    ) -> Result<Stream, UpstreamError> {
        let settings = Settings {
            preload: Vec::new(),
            ..(*self.node_settings(id.node)).clone()
        };
        connect::connect(&settings, id, login).await
    }
}

impl Upstream {
    /// Reads a cluster's slot map from the first node that answers `CLUSTER SHARDS` or
    /// `CLUSTER SLOTS` (known primaries, then the seeds); whether any slot changed
    /// primary.
    pub async fn refresh_cluster(&self) -> Result<bool, UpstreamError> {
        let Some(cluster) = &self.cluster else {
            return Ok(false);
        };
        let mut candidates: Vec<String> = cluster
            .primaries()
            .into_iter()
            .filter_map(|n| cluster.address(n).map(|a| a.to_string()))
            .collect();
        candidates.extend(cluster.seeds.iter().cloned());
        let mut last = UpstreamError::Unavailable("no cluster node known".into());
        let own = self.logins.own().clone();
        for address in candidates {
            let node = cluster.node(&address);
            let result = async {
                let mut conn = self
                    .connect_as_identity(&own, self.own_on(0, 2, node))
                    .await?;
                let limit = self.settings.command_timeout;
                // Both in one round trip: SHARDS where the node has it (7.0+), else
                // SLOTS.
                let replies = tokio::time::timeout(
                    limit,
                    connect::roundtrip(
                        &mut conn,
                        &[cluster::shards_command(), cluster::slots_command()],
                    ),
                )
                .await
                .map_err(|_| UpstreamError::Timeout(limit))??;
                let (shards, slots) = (replies.first(), replies.get(1));
                let shards = shards.and_then(|r| cluster::parse_shards(r, &address));
                let slots = || slots.and_then(|r| cluster::parse_slots(r, &address));
                shards.or_else(slots).ok_or_else(|| {
                    UpstreamError::Protocol(format!(
                        "CLUSTER SLOTS answered {}",
                        replies.get(1).map_or_else(
                            || "nothing".into(),
                            |r| String::from_utf8_lossy(r).trim_end().to_owned()
                        )
                    ))
                })
            }
            .await;
            match result {
                Ok((ranges, replicas)) if !ranges.is_empty() => {
                    return Ok(cluster.install(&ranges, &replicas));
                }
                Ok(_) => last = UpstreamError::Unavailable(format!("{address} serves no slots")),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Finds out whether a connection without credentials may run commands: it connects
/// without them and sends `PING`. `-NOAUTH` means clients must log in; any other
/// reply (`+PONG`, or `-NOPERM` from a `default` user without `+ping`) that they may.
/// Run at start-up and after every new shared connection, one at a time.
pub async fn probe_anonymous(settings: &Settings, logins: &Logins) {
    if !logins.start_probe() {
        return;
    }
    let anonymous = logins.anonymous().clone();
    let id = Identity {
        db: 0,
        proto: 2,
        login: LoginId::ANONYMOUS,
        node: 0,
    };
    let result = async {
        let mut conn = connect::connect(settings, id, &anonymous).await?;
        let ping = vec![Bytes::from_static(b"PING")];
        tokio::time::timeout(
            settings.command_timeout,
            connect::roundtrip(&mut conn, &[ping]),
        )
        .await
        .map_err(|_| UpstreamError::Timeout(settings.command_timeout))?
    }
    .await;
    match result {
        Ok(replies) => {
            let needs = replies.first().is_some_and(|r| r.starts_with(b"-NOAUTH"));
            logins.set_anonymous_access(if needs {
                Anonymous::NeedsAuth
            } else {
                Anonymous::Open
            });
        }
        // A handshake refused without credentials (`HELLO`, `SELECT` are not sent on
        // this one, so this is rare): clients must log in.
        Err(UpstreamError::Handshake(msg)) if msg.starts_with("NOAUTH") => {
            logins.set_anonymous_access(Anonymous::NeedsAuth);
        }
        Err(e) => tracing::debug!(error = %e, "could not probe whether the upstream needs a login"),
    }
    logins.finish_probe();
}
