//! A real `redis-server` on a free port, stopped when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process listening on 127.0.0.1 on a port of its own.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    /// Listens with TLS only (`--port 0 --tls-port`); `extra` carries the TLS files.
    tls: bool,
    /// A configuration file given first (a sentinel's, which it rewrites).
    conf: Option<PathBuf>,
}

/// A port that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// A free port whose cluster bus port (the port + 10000) is free too and valid, for a
/// `--cluster-enabled yes` node.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

impl RedisServer {
    /// A port for this server: a cluster node needs its bus port free too.
    fn pick_port(&self) -> u16 {
        if self.extra.iter().any(|a| a == "--cluster-enabled") {
            free_cluster_port()
        } else {
            free_port()
        }
    }

    /// Starts a server with no persistence; `extra` are more `redis-server` arguments
    /// such as `["--requirepass", "secret"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_inner(extra, false)
    }

    /// A server that speaks TLS only, with `pki`'s server certificate. Clients must
    /// present a certificate signed by `pki`'s CA when `auth_clients` is set.
    pub fn start_tls(pki: &super::certs::Pki, auth_clients: bool, extra: &[&str]) -> RedisServer {
        let (cert, key, ca) = (
            pki.server_cert.to_string_lossy(),
            pki.server_key.to_string_lossy(),
            pki.ca.to_string_lossy(),
        );
        let auth = if auth_clients { "yes" } else { "no" };
        let mut args = vec![
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            auth,
        ];
        args.extend_from_slice(extra);
        RedisServer::start_inner(&args, true)
    }

    fn start_inner(extra: &[&str], tls: bool) -> RedisServer {
        let dir = unique_dir("redis");
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
            conf: None,
        };
        let port = server.pick_port();
        server.spawn_on(port);
        server
    }

    /// A Redis Sentinel (`redis-server <file> --sentinel`) whose configuration file holds
    /// `conf`, such as `sentinel monitor mymaster 127.0.0.1 6379 1`.
    pub fn start_sentinel(conf: &str) -> RedisServer {
        let dir = unique_dir("sentinel");
        std::fs::create_dir_all(&dir).expect("create sentinel dir");
        let file = dir.join("sentinel.conf");
        std::fs::write(&file, conf).expect("write sentinel.conf");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            extra: vec!["--sentinel".into()],
            tls: false,
            conf: Some(file),
        };
        server.spawn_on(free_port());
        server
    }

    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    fn spawn_on(&mut self, port: u16) {
        for attempt in 0..5 {
            let port = if attempt == 0 { port } else { self.pick_port() };
            let child = Command::new("redis-server")
                .args(self.conf.iter())
                .args(self.port_args(port))
                .args(["--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--enable-debug-command", "yes"])
                .args(["--dir", &self.dir.to_string_lossy()])
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (apt-get install redis-server)");
            self.child = Some(child);
            self.port = port;
            if self.wait_ready(Duration::from_secs(5)) {
                return;
            }
            self.kill();
        }
        panic!("redis-server did not start");
    }

    /// `--port P`, or for TLS `--port 0 --tls-port P`.
    fn port_args(&self, port: u16) -> Vec<String> {
        let port = port.to_string();
        if self.tls {
            vec!["--port".into(), "0".into(), "--tls-port".into(), port]
        } else {
            vec!["--port".into(), port]
        }
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if let Ok(conn) = TcpStream::connect(self.addr())
                && (self.tls || answers_ping(conn))
            {
                // Still ours: a server that lost the port to another process (a cluster
                // node's bus port, say) has exited by now.
                return self
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server (SIGKILL: nothing is saved) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with an empty dataset.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = Command::new("redis-server")
                .args(self.conf.iter())
                .args(self.port_args(port))
                .args(["--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--enable-debug-command", "yes"])
                .args(["--dir", &self.dir.to_string_lossy()])
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            self.child = Some(child);
            if self.wait_ready(Duration::from_secs(5)) {
                return;
            }
            self.kill();
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether what listens on `conn` speaks RESP: `PING` gets `+PONG` or an error
/// (`-NOAUTH`, `-LOADING`). A cluster bus port, or anything else, does not.
fn answers_ping(mut conn: TcpStream) -> bool {
    use std::io::{Read, Write};
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    if conn.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(conn.read(&mut first), Ok(1) if first[0] == b'+' || first[0] == b'-')
}

/// Distinguishes the directories of servers started by one test process.
static NEXT_DIR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn unique_dir(kind: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("cachet-test-{kind}-{}-{n}", std::process::id()))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
