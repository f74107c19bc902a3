//! A worker's Redis connection: its own (one connection per thread), or a pool it
//! shares with the other workers of its cachet, from which every command takes any
//! connection (as redis-py's pool, and Django's cache with threads, do: a miss and its
//! fill often travel on different connections). A broken connection is replaced on
//! the next command.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue};

/// How long a command may take before it counts as a `timeout` error.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection of a worker's own, or a handle on a shared pool.
pub enum Conn {
    Own(Box<Single>),
    Pooled(Arc<Pool>),
}

/// Connections shared by workers, as redis-py's pool shares them between threads: a
/// command takes a free connection (the search starts at a rotating place, so that a
/// worker's miss and fill rarely travel on the same one), and a new one is opened
/// when none is free. A connection carries one command at a time.
pub struct Pool {
    addr: SocketAddr,
    conns: std::sync::Mutex<Vec<Arc<tokio::sync::Mutex<Single>>>>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(addr: SocketAddr, size: usize) -> Result<Pool, String> {
        Ok(Pool {
            addr,
            conns: std::sync::Mutex::new(
                (0..size.max(1))
                    .map(|_| Single::new(addr).map(|s| Arc::new(tokio::sync::Mutex::new(s))))
                    .collect::<Result<_, _>>()?,
            ),
            next: AtomicUsize::new(0),
        })
    }

    fn all(&self) -> Vec<Arc<tokio::sync::Mutex<Single>>> {
        self.conns.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// A free connection, or a new one.
    fn take(&self) -> Result<tokio::sync::OwnedMutexGuard<Single>, String> {
        let all = self.all();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..all.len() {
            if let Some(c) = all.get((start + i) % all.len())
                && let Ok(guard) = Arc::clone(c).try_lock_owned()
            {
                return Ok(guard);
            }
        }
        let c = Arc::new(tokio::sync::Mutex::new(Single::new(self.addr)?));
        let guard = Arc::clone(&c).try_lock_owned().map_err(|e| e.to_string())?;
        if let Ok(mut conns) = self.conns.lock() {
            conns.push(c);
        }
        Ok(guard)
    }
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Result<Conn, String> {
        Single::new(addr).map(|s| Conn::Own(Box::new(s)))
    }

    pub fn pooled(pool: Arc<Pool>) -> Conn {
        Conn::Pooled(pool)
    }

    /// Connects (every connection of a pool) unless connected.
    pub async fn connect(&mut self) -> Result<(), String> {
        match self {
            Conn::Own(c) => c.connect().await,
            Conn::Pooled(p) => {
                for c in p.all() {
                    c.lock().await.connect().await?;
                }
                Ok(())
            }
        }
    }

    /// Runs `cmd` (see [`Single::run`]).
    pub async fn run<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, String> {
        match self {
            Conn::Own(c) => c.run(cmd).await,
            Conn::Pooled(p) => p.take()?.run(cmd).await,
        }
    }

    /// Runs a pipeline whose replies are all ignored.
    pub async fn run_pipe(&mut self, pipe: &redis::Pipeline) -> Result<(), String> {
        match self {
            Conn::Own(c) => c.run_pipe(pipe).await,
            Conn::Pooled(p) => p.take()?.run_pipe(pipe).await,
        }
    }
}

/// One connection.
pub struct Single {
    client: Client,
    conn: Option<MultiplexedConnection>,
}

impl Single {
    pub fn new(addr: SocketAddr) -> Result<Single, String> {
        let client = Client::open(format!("redis://{addr}/0")).map_err(|e| e.to_string())?;
        Ok(Single { client, conn: None })
    }

    /// Connects unless connected.
    pub async fn connect(&mut self) -> Result<(), String> {
        if self.conn.is_none() {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            match self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(c) => self.conn = Some(c),
                Err(_) => return Err("connect".into()),
            }
        }
        Ok(())
    }

    /// Runs `cmd`; an error comes back as its kind (`timeout`, `io`, `connect`,
    /// `redis:<CODE>` …), and a connection-level one drops the connection.
    pub async fn run<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, String> {
        self.connect().await?;
        let Some(conn) = self.conn.as_mut() else {
            return Err("connect".into());
        };
        match cmd.query_async(conn).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(&e)),
        }
    }

    async fn run_pipe(&mut self, pipe: &redis::Pipeline) -> Result<(), String> {
        self.connect().await?;
        let Some(conn) = self.conn.as_mut() else {
            return Err("connect".into());
        };
        match pipe.query_async::<()>(conn).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(&e)),
        }
    }

    /// The error's kind; a connection-level one drops the connection.
    fn failed(&mut self, e: &redis::RedisError) -> String {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
            self.conn = None;
        }
        error_kind(e)
    }
}

fn error_kind(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connection_dropped() || e.is_connection_refusal() {
        "disconnected".into()
    } else if e.is_io_error() {
        "io".into()
    } else if let Some(code) = e.code() {
        format!("redis:{code}")
    } else {
        format!("redis:{:?}", e.kind())
    }
}
