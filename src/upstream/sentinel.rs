//! Following the primary that Redis Sentinel names (`redis+sentinel://…/master`).
//!
//! cachet asks the sentinels, in turn, `SENTINEL get-master-addr-by-name <master>`: once
//! at start-up before any connection is made, then every [`POLL_EVERY`] on one kept
//! connection. When the answer changes (a failover), new connections go to the new
//! primary and every existing one is replaced once its outstanding requests are
//! answered (`Upstream::retarget`), so nothing more is written to the demoted one; what
//! a failover may have lost is then invalidated again (`RetryQueue::replay_recent`).
//! A sentinel that does not answer, or does not know the master, is skipped for the
//! next one. Polling rather than subscribing to `+switch-master` keeps one code path
//! that also survives messages lost while no sentinel was reachable; the delay it adds
//! is small next to Sentinel's own `down-after-milliseconds`.

use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::connect::roundtrip;
use super::{Target, UpstreamError};
use crate::resp::reply::{elements, string_value};
use crate::stream::Stream;

/// How often the primary's address is asked for.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// The sentinels, the master's name, and how long to wait for a sentinel.
#[derive(Debug, Clone)]
pub struct Sentinels {
    pub addresses: Vec<String>,
    pub master: String,
    pub timeout: Duration,
}

impl Sentinels {
    /// The primary's `host:port` as the first sentinel that knows it says.
    pub async fn ask(&self) -> Result<String, UpstreamError> {
        let mut last = UpstreamError::Unavailable("no sentinel configured".into());
        for address in &self.addresses {
            match self.connect(address).await {
                Ok(mut conn) => match self.query(&mut conn).await {
                    Ok(primary) => return Ok(primary),
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn connect(&self, address: &str) -> Result<Stream, UpstreamError> {
        match tokio::time::timeout(self.timeout, TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                Ok(Stream::Plain(tcp))
            }
            Ok(Err(e)) => Err(UpstreamError::Unavailable(format!(
                "sentinel {address}: {e}"
            ))),
            Err(_) => Err(UpstreamError::Unavailable(format!(
                "sentinel {address}: connect timed out"
            ))),
        }
    }

    async fn query(&self, conn: &mut Stream) -> Result<String, UpstreamError> {
        let ask = vec![
            Bytes::from_static(b"SENTINEL"),
            Bytes::from_static(b"get-master-addr-by-name"),
            Bytes::from(self.master.clone()),
        ];
        let replies = tokio::time::timeout(self.timeout, roundtrip(conn, &[ask]))
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))??;
        let reply = replies.first().ok_or(UpstreamError::Lost)?;
        primary_of(reply).ok_or_else(|| {
            UpstreamError::Unavailable(format!(
                "the sentinel does not know a master named {:?}: {}",
                self.master,
                String::from_utf8_lossy(reply).trim_end()
            ))
        })
    }

    /// Follows the primary for the process's life: `target` always names the latest
    /// one, and `moved` is called after each change.
    pub async fn follow(self, target: std::sync::Arc<Target>, moved: impl Fn(&str)) {
        let mut next = 0;
        loop {
            let Some(address) = self.addresses.get(next % self.addresses.len().max(1)) else {
                return;
            };
            next += 1;
            let Ok(mut conn) = self.connect(address).await else {
                tokio::time::sleep(POLL_EVERY).await;
                continue;
            };
            // Ask on this connection until it fails, then go on to the next sentinel.
            while let Ok(primary) = self.query(&mut conn).await {
                if target.set(primary.clone()) {
                    tracing::warn!(master = %self.master, primary = %primary, sentinel = %address, "Sentinel names a new primary; reconnecting to it");
                    moved(&primary);
                }
                tokio::time::sleep(POLL_EVERY).await;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// `host:port` from `SENTINEL get-master-addr-by-name`'s reply (`[host, port]`).
fn primary_of(reply: &[u8]) -> Option<String> {
    let el = elements(reply)?;
    let host = std::str::from_utf8(string_value(el.first()?)?).ok()?;
    let port: u16 = std::str::from_utf8(string_value(el.get(1)?)?)
        .ok()?
        .parse()
        .ok()?;
    Some(crate::config::join_host_port(host, port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::primary_of;

    #[test]
    fn reads_the_primary() {
        assert_eq!(
            primary_of(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n").unwrap(),
            "127.0.0.1:6380"
        );
        assert_eq!(
            primary_of(b"*2\r\n$3\r\n::1\r\n$4\r\n6380\r\n").unwrap(),
            "[::1]:6380"
        );
        assert_eq!(primary_of(b"*-1\r\n"), None);
        assert_eq!(primary_of(b"-ERR nope\r\n"), None);
    }
}
