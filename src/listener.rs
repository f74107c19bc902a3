//! The accept loop on what start-up bound (`startup.rs`): the client limit, the drain
//! on SIGTERM, and graceful shutdown (stop accepting, let in-flight commands finish
//! within the grace period, close). Also serves the admin endpoint (`admin.rs`) and
//! keeps what a reload needs (`reload.rs`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::context::Context;
use crate::reload::{ConfigSource, LogReloader};
use crate::session;
use crate::stream::{Peer, Stream};

pub use crate::startup::ServerError;

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
    /// `[listen] unix_socket`, and its path.
    unix: Option<(UnixListener, PathBuf)>,
    /// `[listen.tls]`: the acceptor and how long a handshake may take.
    tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
    admin: Option<TcpListener>,
    ctx: Arc<Context>,
    shutdown: watch::Sender<bool>,
    grace: Duration,
}

impl Server {
    /// Binds the listen address and prepares the upstream (`startup.rs`). Connections
    /// to the upstream are made lazily; if it is down now, cachet still starts and
    /// fails closed.
    pub async fn bind(config: &Config) -> Result<Server, ServerError> {
        let started = crate::startup::start(config).await?;
        Ok(Server {
            listener: started.listener,
            unix: started.unix,
            tls: started.tls,
            admin: started.admin,
            ctx: started.ctx,
            shutdown: started.shutdown,
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
        let unix_socket = self.unix.as_ref().map(|(_, p)| p.display().to_string());
        tracing::info!(version = env!("CARGO_PKG_VERSION"), address = %self.local_addr(), unix_socket, tls = self.tls.is_some(), upstream = %self.ctx.upstream.settings().address, upstream_tls = self.ctx.upstream.settings().tls.is_some(), "cachet listening");
        let stop = loop {
            tokio::select! {
                accepted = self.listener.accept() => self.accepted(accepted.map(Incoming::tcp), &active).await,
                accepted = accept_unix(&self.unix) => self.accepted(accepted.map(Incoming::Unix), &active).await,
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
                    accepted = self.listener.accept() => self.accepted(accepted.map(Incoming::tcp), &active).await,
                    accepted = accept_unix(&self.unix) => self.accepted(accepted.map(Incoming::Unix), &active).await,
                    _ = &mut until => break,
                }
            }
        }
        drop(self.listener);
        if let Some((unix, path)) = self.unix.take() {
            drop(unix);
            let _ = std::fs::remove_file(path);
        }
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

    async fn accepted(&self, accepted: std::io::Result<Incoming>, active: &Arc<Active>) {
        match accepted {
            Ok(incoming) => self.admit(incoming, active),
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn admit(&self, incoming: Incoming, active: &Arc<Active>) {
        let metrics = &self.ctx.metrics;
        // TLS is for the TCP listener only, as Redis's `tls-port`.
        let tls = match incoming {
            Incoming::Tcp(..) => self.tls.clone(),
            Incoming::Unix(_) => None,
        };
        if active.count.load(Ordering::Relaxed) >= self.ctx.max_clients.load(Ordering::Relaxed) {
            metrics.clients_rejected.fetch_add(1, Ordering::Relaxed);
            if tls.is_some() {
                // A plaintext error line would be garbage to a TLS client.
                return;
            }
            let mut stream = incoming.into_stream();
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
        tokio::spawn(async move {
            let _guard = guard;
            let peer = incoming.peer();
            let stream = match (tls, incoming) {
                // The handshake runs in the client's own task, under a deadline, so a
                // slow or hostile client delays nobody else.
                (Some((acceptor, limit)), Incoming::Tcp(stream, _)) => {
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
                (_, incoming) => incoming.into_stream(),
            };
            session::run(ctx, stream, peer).await;
        });
    }
}

/// A client connection just accepted.
enum Incoming {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Incoming {
    fn tcp((stream, peer): (TcpStream, SocketAddr)) -> Incoming {
        Incoming::Tcp(stream, peer)
    }

    fn peer(&self) -> Peer {
        match self {
            Incoming::Tcp(_, peer) => Peer::Tcp(*peer),
            Incoming::Unix(_) => Peer::Unix,
        }
    }

    /// The connection, plain.
    fn into_stream(self) -> Stream {
        match self {
            Incoming::Tcp(s, _) => Stream::Plain(s),
            Incoming::Unix(s) => Stream::Unix(s),
        }
    }
}

/// The next client on the Unix socket; never, without one.
async fn accept_unix(unix: &Option<(UnixListener, PathBuf)>) -> std::io::Result<UnixStream> {
    match unix {
        Some((listener, _)) => listener.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
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
