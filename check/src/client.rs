//! One worker's Redis connection, as Django's backend uses it: the commands of a
//! read-miss-fill sequence go on one connection (cachet's leases belong to the
//! connection that missed). A broken connection is replaced on the next command, as a
//! connection pool would; the new connection holds no lease.

use std::net::SocketAddr;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue};

/// How long a command may take before it counts as a `timeout` error.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Conn {
    client: Client,
    conn: Option<MultiplexedConnection>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Result<Conn, String> {
        let client = Client::open(format!("redis://{addr}/0")).map_err(|e| e.to_string())?;
        Ok(Conn { client, conn: None })
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
            Err(e) => {
                let kind = error_kind(&e);
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.conn = None;
                }
                Err(kind)
            }
        }
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
