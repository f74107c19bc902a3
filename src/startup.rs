//! Start-up wiring, in the order it happens: the sockets clients and operators reach,
//! TLS, the upstream's settings, the engine (and the scripts every connection loads),
//! the shared context, the background tasks (invalidation retries, the sweeper of
//! unused logins, Sentinel or cluster followers), and the first contact with the
//! upstream. `listener.rs` then accepts clients on what this returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::path::{Path, PathBuf};
use thiserror::Error;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::config::Config;
use crate::context::Context;
use crate::engine::Engine;
use crate::upstream::{Settings, Upstream};

/// Why cachet could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    // (`error`, not `source`: the message already says it, and a source would be
    // printed again after it.)
    #[error("cannot listen on {address}: {error}")]
    Bind {
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot listen for admin requests on {address}: {error}")]
    AdminBind {
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot listen on {}: {error}", path.display())]
    UnixBind {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("upstream.password_file: {0}")]
    PasswordFile(String),
}

/// What start-up made, for the accept loop.
pub struct Started {
    pub listener: TcpListener,
    /// `[listen] unix_socket`: the listener and its path (removed at exit).
    pub unix: Option<(UnixListener, PathBuf)>,
    /// `[listen.tls]`: the acceptor and how long a handshake may take.
    pub tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
    pub admin: Option<TcpListener>,
    pub ctx: Arc<Context>,
    pub shutdown: watch::Sender<bool>,
}

/// Binds, builds and starts everything `config` asks for.
pub async fn start(config: &Config) -> Result<Started, ServerError> {
    let address = config.listen.address;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|error| ServerError::Bind { address, error })?;
    let unix = match &config.listen.unix_socket {
        Some(path) => Some((
            bind_unix(path, config.listen.unix_socket_perm).map_err(|error| {
                ServerError::UnixBind {
                    path: path.clone(),
                    error,
                }
            })?,
            path.clone(),
        )),
        None => None,
    };
    let admin = match config.admin.address {
        Some(address) => Some(
            crate::admin::bind(address)
                .await
                .map_err(|error| ServerError::AdminBind { address, error })?,
        ),
        None => None,
    };
    let tls = match &config.listen.tls {
        Some(tls) => Some((
            crate::tls::acceptor(tls).map_err(|e| ServerError::Tls(format!("listen.tls.{e}")))?,
            tls.handshake_timeout,
        )),
        None => None,
    };
    let url = &config.upstream.url;
    let limits = crate::reload::limits_of(config);
    let engine = Engine::new(&config.consistency, &config.keyspace);
    let settings = upstream_settings(config, &engine)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let cluster = url
        .cluster
        .clone()
        .map(crate::upstream::cluster::Cluster::new);
    let upstream = Upstream::with_cluster(settings, cluster);
    let mut ctx = Context::new(upstream, engine, limits, url.db, shutdown_rx);
    ctx.idle_timeout = config.listen.idle_timeout;
    ctx.config = crate::context::Swapped::from_pointee(config.clone());
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
    first_contact(&ctx, url.db).await;
    Ok(Started {
        listener,
        unix,
        tls,
        admin,
        ctx,
        shutdown,
    })
}

/// Listens on the Unix socket at `path`, as Redis does: a socket left there by a
/// process that is gone (a cachet that did not exit cleanly) is replaced; one that
/// still accepts connections, or any other file, is an error.
fn bind_unix(path: &Path, perm: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process listens on this socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    if let Some(perm) = perm {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm))?;
    }
    Ok(listener)
}

/// The upstream's connection settings: its address (or Sentinel's, found later), the
/// credentials, the timeouts, TLS, the scripts every shared connection loads (the
/// engine's), and the observer of its run id and clock (the engine's too).
fn upstream_settings(config: &Config, engine: &Engine) -> Result<Settings, ServerError> {
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
    Ok(settings)
}

/// The first contact with the upstream: its command table, whether clients must log
/// in, and the default shared connections opened before the first client needs them;
/// if it is down, the same in the background until it answers.
async fn first_contact(ctx: &Arc<Context>, db: u32) {
    match ctx.discover().await {
        Ok(()) => {
            // Whether clients must log in, before the first one connects.
            crate::upstream::probe_anonymous(ctx.upstream.settings(), &ctx.upstream.logins).await;
            // Open the default shared connections now so the first client does not
            // pay for them (a cluster's: one to each primary).
            let _ = ctx.upstream.shared(ctx.upstream.own(db, 2), 0);
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
                guard: None,
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
