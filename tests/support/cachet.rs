//! cachet in-process on a free port, on a runtime of its own so that both plain and
//! async tests can use it; stopped (gracefully) when dropped.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use cachet::config::{Config, UpstreamUrl};
use cachet::reload::ConfigSource;
use tokio::sync::oneshot;

pub struct Cachet {
    pub addr: SocketAddr,
    /// The admin endpoint, when the configuration enables it (bind it to port 0).
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The default configuration pointed at `upstream_url`, listening on a free port.
pub fn config_for(upstream_url: &str) -> Config {
    let mut config = Config::default();
    config.listen.address = "127.0.0.1:0".parse().expect("addr");
    config.upstream.url = UpstreamUrl::parse(upstream_url).expect("upstream url");
    config.admin.address = None;
    config
}

impl Cachet {
    /// cachet in front of the Redis at `upstream_url`, with default settings.
    pub fn start(upstream_url: &str) -> Cachet {
        Cachet::start_with(config_for(upstream_url))
    }

    pub fn start_with(config: Config) -> Cachet {
        Cachet::start_from(config, None)
    }

    /// cachet running `config`, reloadable from `source` (`CACHET RELOAD`).
    pub fn start_from(config: Config, source: Option<ConfigSource>) -> Cachet {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let server = cachet::Server::bind(&config).await.expect("bind cachet");
                if let Some(source) = source {
                    server.set_config_source(source);
                }
                addr_tx
                    .send((server.local_addr(), server.admin_addr()))
                    .expect("send addr");
                server
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        let (addr, admin) = addr_rx.recv().expect("cachet started");
        Cachet {
            addr,
            admin,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Stops accepting, drains, and waits for the server to finish.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Cachet {
    fn drop(&mut self) {
        self.stop();
    }
}
