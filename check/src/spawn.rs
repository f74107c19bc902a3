//! `--spawn`: a `redis-server` and a `cachet` started as child processes on free ports,
//! restartable on the same port (the restart profiles), stopped when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process listening on `127.0.0.1:port`.
pub struct Proc {
    child: Option<Child>,
    pub port: u16,
    program: PathBuf,
    args: Vec<String>,
    dir: Option<PathBuf>,
}

/// The configuration file of the spawned cachets: the checker's windows, the
/// write-through profile's keys (`:1:wt:*`) in a `collapse` keyspace, the other
/// profiles' keys (`:1:*`) in a `cache` keyspace, everything else `strict`.
pub fn cachet_config(w: &super::Windows) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("cachet-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("cachet.toml");
    let text = format!(
        r#"[consistency]
hold_off = "{}ms"
lease_ttl = "{}ms"
fill_window = "{}ms"

[[keyspace]]
pattern = ":1:wt:*"
mode = "cache"
write_through = "collapse"

[[keyspace]]
pattern = ":1:*"
mode = "cache"

[[keyspace]]
pattern = "*"
mode = "strict"
"#,
        w.hold_off.as_millis(),
        w.lease.as_millis(),
        w.fill.as_millis()
    );
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl Proc {
    /// A `redis-server` with no persistence (a restart empties it).
    pub fn redis() -> Result<Proc, String> {
        Proc::redis_with(free_port()?, &[])
    }

    /// A Redis Cluster of `n` primaries (no replicas) joined with `redis-cli --cluster
    /// create`, its state `ok` on every node.
    pub fn cluster(n: usize) -> Result<Vec<Proc>, String> {
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            // The cluster bus listens on the port + 10000.
            let port = loop {
                let p = free_port()?;
                if p <= 55535 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                    break p;
                }
            };
            nodes.push(Proc::redis_with(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ],
            )?);
        }
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|p| p.addr().to_string()))
            .arg("--cluster-yes")
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .map_err(|e| format!("redis-cli: {e}"))?;
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err("the cluster did not come up".into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(nodes)
    }

    /// A primary, its replica and one `redis-sentinel` watching them as `master`
    /// (quorum 1, down after 1 s), the replica in sync and known to the sentinel.
    /// Returns the three, the sentinel last.
    pub fn sentinel_set(master: &str) -> Result<Vec<Proc>, String> {
        let primary = Proc::redis()?;
        let replica = Proc::redis_with(
            free_port()?,
            &["--replicaof", "127.0.0.1", &primary.port.to_string()],
        )?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("cachet-check-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor {master} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 3000\n",
                primary.port
            ),
        )
        .map_err(|e| format!("{}: {e}", conf.display()))?;
        let mut sentinel = Proc {
            child: None,
            port,
            program: "redis-server".into(),
            args: vec![
                conf.to_string_lossy().into_owned(),
                "--sentinel".into(),
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--dir".into(),
                dir.to_string_lossy().into_owned(),
            ],
            dir: Some(dir),
        };
        sentinel.start()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let ask = |port: u16, words: &[&str]| -> Result<String, String> {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string()])
                .args(words)
                .output()
                .map_err(|e| format!("redis-cli: {e}"))?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        loop {
            let synced =
                ask(replica.port, &["INFO", "replication"])?.contains("master_link_status:up");
            let known = ask(port, &["SENTINEL", "REPLICAS", master])?.contains("ip");
            if synced && known {
                break;
            }
            if Instant::now() > deadline {
                return Err("the replica did not sync, or the sentinel did not see it".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(vec![primary, replica, sentinel])
    }

    /// Asks the sentinel on `port` to fail `master` over, and waits (up to 20 s) until
    /// it names another primary and that primary says so itself.
    pub fn fail_over(port: u16, master: &str) -> Result<(), String> {
        let ask = |port: &str, words: &[&str]| -> Result<String, String> {
            let out = Command::new("redis-cli")
                .args(["-p", port])
                .args(words)
                .output()
                .map_err(|e| format!("redis-cli: {e}"))?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let sentinel = port.to_string();
        let named = |s: &str| -> Result<String, String> {
            let out = ask(s, &["SENTINEL", "get-master-addr-by-name", master])?;
            Ok(out.lines().nth(1).unwrap_or_default().to_owned())
        };
        let before = named(&sentinel)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut asked = false;
        loop {
            if !asked {
                asked = ask(&sentinel, &["SENTINEL", "FAILOVER", master])? == "OK";
            }
            let now = named(&sentinel)?;
            if !now.is_empty() && now != before && ask(&now, &["ROLE"])?.starts_with("master") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the sentinel did not fail {master} over"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn redis_with(port: u16, extra: &[&str]) -> Result<Proc, String> {
        let dir = std::env::temp_dir().join(format!("cachet-check-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.to_string_lossy(),
        ]
        .map(String::from)
        .to_vec();
        let args = args
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect();
        let mut p = Proc {
            child: None,
            port,
            program: "redis-server".into(),
            args,
            dir: Some(dir),
        };
        p.start()?;
        Ok(p)
    }

    /// The `cachet` binary `exe` with configuration file `config`, in front of the
    /// Redis at `upstream` (a URL).
    pub fn cachet(exe: &Path, upstream: &str, config: &Path) -> Result<Proc, String> {
        let port = free_port()?;
        let args = [
            "--config".to_string(),
            config.to_string_lossy().into_owned(),
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--upstream".into(),
            upstream.to_owned(),
            "--admin".into(),
            "off".into(),
            "--log-level".into(),
            "error".into(),
        ]
        .to_vec();
        let mut p = Proc {
            child: None,
            port,
            program: exe.to_path_buf(),
            args,
            dir: None,
        };
        p.start()?;
        Ok(p)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn start(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = Command::new(&self.program)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{}: {e}", self.program.display()))?;
            self.child = Some(child);
            if self.wait_ready(Duration::from_secs(5)) {
                return Ok(());
            }
            self.kill();
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not listen on port {}",
                    self.program.display(),
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if TcpStream::connect(self.addr()).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILL, and wait for the process to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process (SIGKILL) and starts it again on the same port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.start()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
