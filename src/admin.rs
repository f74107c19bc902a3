//! The admin HTTP endpoint (`[admin] address`): `/metrics` (Prometheus text format),
//! `/healthz` (200 while the process runs) and `/readyz` (200 while the upstream
//! answers and a configuration is loaded, 503 otherwise).
//!
//! A deliberately small HTTP/1.x server: read the request head, answer, close. Scrapers
//! and probes need nothing more, and it keeps a web framework out of the binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::context::Context;
use crate::metrics::{self, Live};

/// Longest request head read; anything longer is refused.
const MAX_HEAD: usize = 8 * 1024;
/// A client that sends no complete head within this is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves admin requests until shutdown.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &ctx).await {
                            tracing::debug!(%peer, error = %e, "admin request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Whether cachet should receive traffic: the upstream's shared connections answer.
/// (A configuration is always loaded once a `Context` exists; a refused reload leaves
/// the running one in place.)
/// Never while draining (SIGTERM received, `[listen] drain_delay`).
pub fn ready(ctx: &Context) -> bool {
    !ctx.draining.load(std::sync::atomic::Ordering::Relaxed)
        && ctx.upstream.is_up_db(ctx.default_db)
}

/// The gauges read at scrape time.
pub fn live(ctx: &Context) -> Live {
    let (up, total) = ctx.upstream.connections_up();
    let nodes = ctx.upstream.nodes_up();
    let cluster = ctx.upstream.cluster.as_deref();
    let read = |c: Option<&std::sync::atomic::AtomicU64>| {
        c.map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
    };
    Live {
        upstream_connections_up: up as u64,
        upstream_connections: total as u64,
        upstream_up: ctx.upstream.is_up_db(ctx.default_db),
        uptime: ctx.started.elapsed(),
        cluster_primaries: nodes.len() as u64,
        cluster_primaries_up: nodes.iter().filter(|(_, up)| *up).count() as u64,
        cluster_nodes: nodes.iter().map(|(a, up)| (a.to_string(), *up)).collect(),
        cluster_map_changes: read(cluster.map(|c| &c.changes)),
        cluster_redirects: read(cluster.map(|c| &c.redirects)),
        cluster_failovers: read(cluster.map(|c| &c.failovers)),
    }
}

/// `/readyz`'s text: for a cluster, each primary and whether cachet reaches it.
fn readiness(ctx: &Context, ready: bool) -> String {
    let mut out = String::from(if ready {
        "ready\n"
    } else if ctx.draining.load(std::sync::atomic::Ordering::Relaxed) {
        "draining: shutting down\n"
    } else {
        "upstream unavailable\n"
    });
    for (address, up) in ctx.upstream.nodes_up() {
        out.push_str(&format!(
            "primary {address} {}\n",
            if up { "up" } else { "down" }
        ));
    }
    out
}

async fn answer(mut stream: TcpStream, ctx: &Context) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok::<bool, std::io::Error>(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                // A request line without the blank line (a bare probe) still counts.
                return Ok(!head.is_empty());
            }
            head.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    })
    .await
    .unwrap_or(Ok(false))?;
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if !complete {
        (400, "text/plain", "bad request\n".to_owned())
    } else if method != "GET" && method != "HEAD" {
        (405, "text/plain", "method not allowed\n".to_owned())
    } else {
        match path {
            "/metrics" => {
                let engine = ctx.engine.load();
                (
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics::render(&ctx.metrics, &engine.stats, &engine.tallies, live(ctx)),
                )
            }
            "/healthz" => (200, "text/plain", "ok\n".to_owned()),
            // The running configuration, as `--print-config` prints it (secrets
            // redacted by the configuration's own `Debug`).
            "/config" => (200, "text/plain", format!("{:#?}\n", ctx.config.load())),
            "/readyz" if ready(ctx) => (200, "text/plain", readiness(ctx, true)),
            "/readyz" => (503, "text/plain", readiness(ctx, false)),
            _ => (404, "text/plain", "not found\n".to_owned()),
        }
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// Binds the admin address.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}
