//! The accept loop: binding, the client limit, and graceful shutdown (stop accepting,
//! let in-flight commands finish within the grace period, close). Also binds the admin
//! endpoint (`admin.rs`) and keeps what a reload needs (`reload.rs`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::context::Context;
use crate::engine::Engine;
use crate::reload::{ConfigSource, LogReloader};
use crate::session;
use crate::stream::Stream;
use crate::upstream::{Settings, Upstream};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen for admin requests on {address}: {source}")]
    AdminBind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("upstream.password_file: {0}")]
    PasswordFile(String),
}

/// How a running cachet is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stop accepting and finish what is in flight (SIGINT, a test's stop).
    Now,
    /// Serve on for `[listen] drain_delay`, not ready, then as `Now` (SIGTERM).
    Drain,
}

impl From<()> for Stop {
    fn from(_: ()) -> Stop {
        Stop::Now
    }
}

/// A bound, not yet running, cachet.
pub struct Server {
    listener: TcpListener,
    /// `[listen.tls]`: the acceptor and how long a handshake may take.
    tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
    admin: Option<TcpListener>,
    ctx: Arc<Context>,
    shutdown: watch::Sender<bool>,
    grace: Duration,
}

impl Server {
    /// Binds the listen address and prepares the upstream. Connections to the upstream
    /// are made lazily; if it is down now, cachet still starts and fails closed.
    pub async fn bind(config: &Config) -> Result<Server, ServerError> {
        let address = config.listen.address;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServerError::Bind { address, source })?;
        let admin = match config.admin.address {
            Some(address) => Some(
                crate::admin::bind(address)
                    .await
                    .map_err(|source| ServerError::AdminBind { address, source })?,
            ),
            None => None,
        };
        let tls = match &config.listen.tls {
            Some(tls) => Some((
                crate::tls::acceptor(tls)
                    .map_err(|e| ServerError::Tls(format!("listen.tls.{e}")))?,
                tls.handshake_timeout,
            )),
            None => None,
        };
        let url = &config.upstream.url;
        let upstream_tls = if url.tls {
            let tls = config.upstream.tls.clone().unwrap_or_default();
            if tls.insecure {
                tracing::warn!(upstream = %url, "upstream.tls.insecure = true: the upstream's certificate is NOT verified; anyone on the path can impersonate it");
            }
            Some(
                crate::tls::connector(&url.host, &tls)
                    .map_err(|e| ServerError::Tls(format!("upstream.tls.{e}")))?,
            )
        } else {
            None
        };
        let settings = Settings {
            address: crate::upstream::Target::new(match &url.sentinel {
                // Named by Sentinel before the first connection (below).
                Some(_) => String::new(),
                // A cluster's first seed (each node's connections have their own).
                None => url.address(),
            }),
            username: config
                .upstream
                .username
                .clone()
                .or_else(|| url.username.clone()),
            password: config
                .upstream
                .resolved_password()
                .map_err(ServerError::PasswordFile)?,
            connect_timeout: config.upstream.connect_timeout,
            command_timeout: config.upstream.command_timeout,
            shared_connections: config.upstream.shared_connections,
            max_users: config.upstream.max_users,
            preload: Vec::new(),
            tls: upstream_tls,
            on_connect: None,
            node: None,
        };
        let limits = crate::reload::limits_of(config);
        let engine = Engine::new(&config.consistency, &config.keyspace);
        let mut settings = settings;
        if engine.has_cache() {
            // Every shared connection loads the lease scripts as it connects, so that
            // EVALSHA finds them after an upstream restart too.
            settings.preload = engine
                .scripts
                .all()
                .iter()
                .map(|s| {
                    vec![
                        bytes::Bytes::from_static(b"SCRIPT"),
                        bytes::Bytes::from_static(b"LOAD"),
                        s.body.clone(),
                    ]
                })
                .collect();
        }
        let life = engine.upstream_life();
        settings.on_connect = Some(crate::upstream::UpstreamObserver(Arc::new(
            move |node: &str, run_id: &str, clock: u64| life.observe(node, run_id, clock),
        )));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let cluster = url
            .cluster
            .clone()
            .map(crate::upstream::cluster::Cluster::new);
        let upstream = Upstream::with_cluster(settings, cluster);
        let mut ctx = Context::new(upstream, engine, limits, url.db, shutdown_rx);
        ctx.idle_timeout = config.listen.idle_timeout;
        ctx.config = arc_swap::ArcSwap::from_pointee(config.clone());
        ctx.set_access(config);
        ctx.max_clients = AtomicUsize::new(config.listen.max_clients);
        ctx.tls_files = crate::tls::files_digest(config);
        let ctx = Arc::new(ctx);
        spawn_retries(&ctx);
        spawn_sweeper(&ctx);
        if let Some(sentinel) = &url.sentinel {
            follow_sentinels(&ctx, sentinel, config).await;
        }
        if ctx.upstream.cluster.is_some() {
            follow_cluster(&ctx, config).await;
        }
        match ctx.discover().await {
            Ok(()) => {
                // Whether clients must log in, before the first one connects.
                crate::upstream::probe_anonymous(ctx.upstream.settings(), &ctx.upstream.logins)
                    .await;
                // Open the default shared connections now so the first client does not
                // pay for them (a cluster's: one to each primary).
                let _ = ctx.upstream.shared(ctx.upstream.own(url.db, 2), 0);
                if let Some(cluster) = &ctx.upstream.cluster {
                    for node in cluster.primaries() {
                        let _ = ctx.upstream.shared(ctx.upstream.own_on(0, 2, node), 0);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %ctx.upstream.settings().address, error = %e, "upstream not reachable at start-up; serving with the built-in command table and retrying");
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let mut wait = Duration::from_millis(200);
                    loop {
                        tokio::time::sleep(wait).await;
                        if *ctx.shutdown.borrow() {
                            return;
                        }
                        if ctx.discover().await.is_ok() {
                            crate::upstream::probe_anonymous(
                                ctx.upstream.settings(),
                                &ctx.upstream.logins,
                            )
                            .await;
                            tracing::info!("upstream reachable; command table read");
                            return;
                        }
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                });
            }
        }
        Ok(Server {
            listener,
            tls,
            admin,
            ctx,
            shutdown,
            grace: config.listen.shutdown_grace,
        })
    }

    /// Makes the configuration reloadable (SIGHUP, `CACHET RELOAD`): where it came
    /// from. Without it, a reload is refused.
    pub fn set_config_source(&self, source: ConfigSource) {
        let _ = self.ctx.source.set(source);
    }

    /// Lets a reload change the log filter.
    pub fn set_log_reloader(&self, reloader: LogReloader) {
        let _ = self.ctx.log_reloader.set(reloader);
    }

    /// The admin endpoint's bound address, if it is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Serves until `signal` completes, then drains: no new connections, sessions finish
    /// what they have started, and whatever is left after the grace period is dropped.
    /// A signal that says [`Stop::Drain`] (SIGTERM) first keeps serving for `[listen]
    /// drain_delay` with `/readyz` saying 503.
    pub async fn run<S: Into<Stop>>(mut self, signal: impl Future<Output = S>) {
        let active = Arc::new(Active::default());
        tokio::pin!(signal);
        if let Some(admin) = self.admin.take() {
            let address = admin.local_addr().ok();
            tracing::info!(address = ?address, "admin endpoint listening");
            tokio::spawn(crate::admin::serve(
                admin,
                self.ctx.clone(),
                self.shutdown.subscribe(),
            ));
        }
        tracing::info!(version = env!("CARGO_PKG_VERSION"), address = %self.local_addr(), tls = self.tls.is_some(), upstream = %self.ctx.upstream.settings().address, upstream_tls = self.ctx.upstream.settings().tls.is_some(), "cachet listening");
        let stop = loop {
            tokio::select! {
                accepted = self.listener.accept() => self.accepted(accepted, &active).await,
                s = &mut signal => break s.into(),
            }
        };
        let delay = self.ctx.config.load().listen.drain_delay;
        if stop == Stop::Drain && !delay.is_zero() {
            // The application beside cachet is told to stop at the same moment: it
            // still needs Redis while it drains. Load balancers stop sending meanwhile.
            self.ctx.draining.store(true, Ordering::Relaxed);
            tracing::info!(drain_delay = ?delay, "draining: not ready any more; serving old and new clients until the drain delay ends");
            let until = tokio::time::sleep(delay);
            tokio::pin!(until);
            loop {
                tokio::select! {
                    accepted = self.listener.accept() => self.accepted(accepted, &active).await,
                    _ = &mut until => break,
                }
            }
        }
        drop(self.listener);
        let _ = self.shutdown.send(true);
        let clients = active.count.load(Ordering::Relaxed);
        tracing::info!(clients, grace = ?self.grace, "shutting down: draining clients");
        let drained = tokio::time::timeout(self.grace, active.drained())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                clients = active.count.load(Ordering::Relaxed),
                "grace period over; closing the remaining connections"
            );
        }
        tracing::info!("cachet stopped");
    }

    async fn accepted(
        &self,
        accepted: std::io::Result<(TcpStream, SocketAddr)>,
        active: &Arc<Active>,
    ) {
        match accepted {
            Ok((stream, peer)) => self.admit(stream, peer, active),
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn admit(&self, mut stream: TcpStream, peer: SocketAddr, active: &Arc<Active>) {
        let metrics = &self.ctx.metrics;
        if active.count.load(Ordering::Relaxed) >= self.ctx.max_clients.load(Ordering::Relaxed) {
            metrics.clients_rejected.fetch_add(1, Ordering::Relaxed);
            if self.tls.is_some() {
                // A plaintext error line would be garbage to a TLS client.
                return;
            }
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
            return;
        }
        active.count.fetch_add(1, Ordering::Relaxed);
        metrics.clients_total.fetch_add(1, Ordering::Relaxed);
        metrics.clients_current.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(active.clone(), metrics.clone());
        let ctx = self.ctx.clone();
        let tls = self.tls.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let stream = match tls {
                None => Stream::Plain(stream),
                // The handshake runs in the client's own task, under a deadline, so a
                // slow or hostile client delays nobody else.
                Some((acceptor, limit)) => {
                    let _ = stream.set_nodelay(true);
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => Stream::from(s),
                        Ok(Err(e)) => {
                            ctx.metrics
                                .tls_handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            ctx.metrics
                                .tls_handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            session::run(ctx, stream, peer).await;
        });
    }
}

/// Re-sends invalidations of unknown fate (`engine/retry.rs`) on shared connections,
/// followed by `ROLE`, until each lands on a primary.
fn spawn_retries(ctx: &Arc<Context>) {
    let queue = ctx.engine.load().retries.clone();
    let (send_ctx, landed_ctx, replica_ctx) = (ctx.clone(), ctx.clone(), ctx.clone());
    let send = move |db: u32, key: Option<&bytes::Bytes>, data: bytes::Bytes, frames: u32| {
        let upstream = &send_ctx.upstream;
        let node = key.map_or_else(|| upstream.keyless_node(), |k| upstream.node_of(k));
        let conn = upstream.shared(upstream.own_on(db, 2, node), 0);
        let cluster = upstream.cluster.clone();
        async move {
            let (tx, mut replies) = tokio::sync::mpsc::unbounded_channel();
            conn.send(crate::upstream::Job {
                data,
                frames,
                reply: Some(tx),
                held: None,
                on_fail: None,
            });
            let reply = replies.recv().await.and_then(Result::ok);
            // A slot that moved: the map learns where, and the next try goes there.
            if let (Some(cluster), Some(reply)) = (&cluster, &reply)
                && let Some(r) = crate::upstream::cluster::Redirect::parse(reply)
                && !r.ask
            {
                cluster.moved(r.slot, &r.address);
            }
            reply
        }
    };
    let landed = move || {
        landed_ctx
            .engine
            .load()
            .stats
            .invalidations_retried
            .fetch_add(1, Ordering::Relaxed);
    };
    let on_replica = move |db: u32| {
        replica_ctx
            .upstream
            .shared(replica_ctx.upstream.own(db, 2), 0)
            .suspect_replica();
    };
    tokio::spawn(queue.run(send, landed, on_replica));
}

/// Finds the primary the sentinels name before the first connection, then follows it
/// (`upstream/sentinel.rs`): after a failover every connection is replaced and the
/// invalidations of the last `failover_replay` are sent again to the new primary.
async fn follow_sentinels(ctx: &Arc<Context>, sentinel: &crate::config::Sentinel, config: &Config) {
    let sentinels = crate::upstream::sentinel::Sentinels {
        addresses: sentinel.addresses.clone(),
        master: sentinel.master.clone(),
        timeout: config.upstream.connect_timeout,
    };
    let target = ctx.upstream.settings().address.clone();
    match sentinels.ask().await {
        Ok(primary) => {
            tracing::info!(master = %sentinel.master, primary = %primary, "Sentinel names the primary");
            target.set(primary);
        }
        Err(e) => {
            tracing::warn!(master = %sentinel.master, error = %e, "no sentinel names the primary yet; asking again")
        }
    }
    ctx.engine
        .load()
        .retries
        .keep_recent(config.upstream.failover_replay);
    let weak = Arc::downgrade(ctx);
    tokio::spawn(sentinels.follow(target, move |_primary| {
        let Some(ctx) = weak.upgrade() else { return };
        ctx.upstream.retarget();
        let replayed = ctx.engine.load().retries.replay_recent();
        tracing::info!(
            replayed,
            "invalidations of recent writes sent again to the new primary"
        );
    }));
}

/// Reads a Redis Cluster's slot map before the first connection, then keeps it fresh
/// (`upstream/cluster.rs`): every `REFRESH_EVERY`, and soon after a reply said a slot
/// moved. When slots fail over to a replica, the new primary may lack what the old one
/// acknowledged: for `fill_window` unexplained fills are dropped (as after a restart),
/// and the invalidations of the last `failover_replay` in those slots are sent again.
/// (A migration between primaries replays nothing: it loses no write.)
async fn follow_cluster(ctx: &Arc<Context>, config: &Config) {
    use crate::upstream::cluster::{REFRESH_AT_MOST_EVERY, REFRESH_EVERY};
    ctx.engine
        .load()
        .retries
        .keep_recent(config.upstream.failover_replay);
    if let Some(cluster) = &ctx.upstream.cluster {
        let weak = Arc::downgrade(ctx);
        cluster.on_failover(move |_old, new| {
            let Some(ctx) = weak.upgrade() else { return };
            let Some(cluster) = &ctx.upstream.cluster else {
                return;
            };
            let engine = ctx.engine.load();
            engine.upstream_life().lost();
            let replayed = engine.retries.replay_where(|key| {
                let slot = crate::command::slot::key_slot(key);
                (cluster.owner(slot) == Some(new)).then_some(u32::from(slot))
            });
            tracing::info!(
                replayed,
                "invalidations of recent writes in the failed-over slots sent again"
            );
        });
    }
    match ctx.upstream.refresh_cluster().await {
        Ok(_) => tracing::info!(
            primaries = ctx.upstream.nodes_up().len(),
            "Redis Cluster slot map read"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "no cluster node answered CLUSTER SLOTS yet; asking again")
        }
    }
    let weak = Arc::downgrade(ctx);
    tokio::spawn(async move {
        loop {
            let Some(cluster) = weak.upgrade().and_then(|c| c.upstream.cluster.clone()) else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = cluster.wake.notified() => {}
            }
            drop(cluster);
            tokio::time::sleep(REFRESH_AT_MOST_EVERY).await;
            let Some(ctx) = weak.upgrade() else { return };
            if *ctx.shutdown.borrow() {
                return;
            }
            match ctx.upstream.refresh_cluster().await {
                Ok(_) => {
                    // A connection of cachet's own to every primary (readiness), new
                    // ones included, whoever changed the map (a reply's -MOVED too).
                    for node in ctx.upstream.cluster.iter().flat_map(|c| c.primaries()) {
                        let _ = ctx.upstream.shared(ctx.upstream.own_on(0, 2, node), 0);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cluster slot map refresh failed"),
            }
        }
    });
}

/// How often connections of client logins nobody uses are looked for; one unused for a
/// whole period is closed.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Closes client logins' connections once no session uses them (`Upstream::sweep`).
fn spawn_sweeper(ctx: &Arc<Context>) {
    let ctx = Arc::downgrade(ctx);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(ctx) = ctx.upgrade() else { return };
            if *ctx.shutdown.borrow() {
                return;
            }
            ctx.upstream.sweep();
        }
    });
}

/// Live client connections, and a way to wait for there to be none.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

impl Active {
    async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct ActiveGuard(Arc<Active>, Arc<crate::metrics::Metrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.1.clients_current.fetch_sub(1, Ordering::Relaxed);
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
