//! A TCP proxy in front of a Redis that can reset every connection through it, for
//! the `dropped-invalidation` profile: a command written just before a reset never
//! reaches Redis, and its client is told the connection broke.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    pub addr: SocketAddr,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
    /// Whether a chaos loop runs.
    chaos: AtomicBool,
}

impl FaultProxy {
    /// A proxy on a free port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Result<Arc<FaultProxy>, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (resets, _) = watch::channel(0);
        let proxy = Arc::new(FaultProxy {
            addr,
            resets,
            chaos: AtomicBool::new(false),
        });
        let p = Arc::clone(&proxy);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut reset = p.resets.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut client, mut server) = (client, server);
                    // On a reset both sockets are dropped: what was in flight is lost.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = reset.changed() => {}
                    }
                });
            }
        });
        Ok(proxy)
    }

    /// Resets every connection open now.
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Resets every connection every 150 to 450 milliseconds until `stop` is called.
    pub fn start_chaos(self: &Arc<Self>, seed: u64) {
        self.chaos.store(true, Ordering::Relaxed);
        let p = Arc::clone(self);
        tokio::spawn(async move {
            let mut rng = super::workload::Rng::new(seed);
            while p.chaos.load(Ordering::Relaxed) {
                tokio::time::sleep(rng.millis((150, 450))).await;
                if p.chaos.load(Ordering::Relaxed) {
                    p.reset_all();
                }
            }
        });
    }

    pub fn stop_chaos(&self) {
        self.chaos.store(false, Ordering::Relaxed);
    }
}
