//! Opening one upstream connection: TCP connect within `connect_timeout`, the TLS
//! handshake for a `rediss://` upstream (within `connect_timeout` again), then the Redis
//! handshake that gives it its identity (credentials, protocol version, database).

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::login::{Login, LoginId};
use super::{Settings, UpstreamError};
use crate::resp::Scanner;
use crate::resp::request::encode_command;
use crate::stream::Stream;

/// What an upstream connection is set up as: the login it runs as, the database and the
/// protocol version of the sessions it serves, and the node it goes to (a Redis
/// Cluster's primary, `upstream/cluster.rs`; always 0 otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    pub db: u32,
    pub proto: u8,
    pub login: LoginId,
    pub node: u16,
}

/// Connects and runs the handshake as `login`; fails with the upstream's own error text
/// (for example a wrong password) or a timeout.
pub async fn connect(
    settings: &Settings,
    id: Identity,
    login: &Login,
) -> Result<Stream, UpstreamError> {
    let timeout = settings.connect_timeout;
    let address = settings.address.get();
    if address.is_empty() {
        return Err(UpstreamError::Unavailable(
            "no primary known yet (Sentinel has not named one)".into(),
        ));
    }
    if address.starts_with('/') {
        let unix = within(timeout, &address, UnixStream::connect(address.as_str())).await?;
        return handshake(settings, Stream::Unix(unix), id, login).await;
    }
    // A host name is resolved again on every connect, so a DNS change is followed.
    let tcp = within(timeout, &address, TcpStream::connect(address.as_str())).await?;
    // Requests are batched by cachet itself; Nagle would only add latency.
    let _ = tcp.set_nodelay(true);
    let stream = match &settings.tls {
        None => Stream::Plain(tcp),
        Some(tls) => {
            let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(s)) => Stream::from(s),
                Ok(Err(e)) => {
                    return Err(UpstreamError::Unavailable(format!(
                        "TLS handshake failed: {e}"
                    )));
                }
                Err(_) => {
                    return Err(UpstreamError::Unavailable(format!(
                        "TLS handshake timed out after {}",
                        fmt_duration(timeout)
                    )));
                }
            }
        }
    };
    handshake(settings, stream, id, login).await
}

/// A socket connect to `address`, given up after `timeout`.
async fn within<S>(
    timeout: std::time::Duration,
    address: &str,
    connect: impl std::future::Future<Output = std::io::Result<S>>,
) -> Result<S, UpstreamError> {
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(UpstreamError::Unavailable(format!("{address}: {e}"))),
        Err(_) => Err(UpstreamError::Unavailable(format!(
            "{address}: connect timed out after {}",
            fmt_duration(timeout)
        ))),
    }
}

/// The Redis handshake on a connected `stream`: credentials, protocol version,
/// database, and the settings' preloaded commands.
async fn handshake(
    settings: &Settings,
    mut stream: Stream,
    id: Identity,
    login: &Login,
) -> Result<Stream, UpstreamError> {
    let timeout = settings.connect_timeout;
    let mut commands: Vec<Vec<Bytes>> = Vec::new();
    if let Some(auth) = login.auth_command() {
        commands.push(auth);
    }
    if id.proto >= 3 {
        commands.push(vec![Bytes::from_static(b"HELLO"), Bytes::from_static(b"3")]);
    }
    if id.db != 0 {
        commands.push(vec![
            Bytes::from_static(b"SELECT"),
            Bytes::from(id.db.to_string()),
        ]);
    }
    let checked = commands.len();
    commands.extend(settings.preload.iter().cloned());
    if commands.is_empty() {
        return Ok(stream);
    }
    let replies = tokio::time::timeout(timeout, roundtrip(&mut stream, &commands))
        .await
        .map_err(|_| {
            UpstreamError::Unavailable(format!(
                "handshake timed out after {}",
                fmt_duration(timeout)
            ))
        })??;
    for reply in replies.iter().take(checked) {
        if reply.first() == Some(&b'-') || reply.first() == Some(&b'!') {
            let text = String::from_utf8_lossy(reply);
            return Err(UpstreamError::Handshake(
                text.trim_start_matches(['-', '!']).trim_end().to_string(),
            ));
        }
    }
    Ok(stream)
}

/// Sends `commands` pipelined and reads one reply frame per command.
pub async fn roundtrip(
    stream: &mut Stream,
    commands: &[Vec<Bytes>],
) -> Result<Vec<Bytes>, UpstreamError> {
    let mut out = BytesMut::new();
    for c in commands {
        encode_command(&mut out, c);
    }
    let written = async {
        stream.write_all(&out).await?;
        stream.flush().await
    };
    written
        .await
        .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut scanner = Scanner::default();
    let mut replies = Vec::with_capacity(commands.len());
    while replies.len() < commands.len() {
        match scanner.scan(&buf) {
            Ok(Some(frame)) => {
                replies.push(buf.split_to(frame.len).freeze());
                continue;
            }
            Ok(None) => {}
            Err(e) => return Err(UpstreamError::Protocol(e.to_string())),
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
        if n == 0 {
            return Err(UpstreamError::Unavailable(
                "connection closed during handshake".into(),
            ));
        }
    }
    Ok(replies)
}

pub use crate::config::fmt_duration;
