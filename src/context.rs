//! What every session shares: the upstream, the command table, facts about the upstream
//! server (for `HELLO` and `SELECT`), limits and timeouts, the shutdown signal, the
//! metrics, and what a configuration reload swaps (the engine, the command policy,
//! client credentials, limits; see `reload.rs`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::watch;

use crate::auth::Auth;
use crate::command::CommandTable;
use crate::config::{Config, ConfigSource};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::resp::{Limits, reply};
use crate::upstream::connect::{connect, roundtrip};
use crate::upstream::{Settings, Upstream, UpstreamError};

/// Sets the log filter to a directive (`info`, `warn,cachet::session=debug`).
pub type SetLogFilter = dyn Fn(&str) -> Result<(), String> + Send + Sync;

/// What a reload calls to change the log filter.
pub struct LogReloader(pub Box<SetLogFilter>);

impl std::fmt::Debug for LogReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogReloader")
    }
}

/// Facts about the upstream server that sessions answer from locally.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `HELLO` reply fields as raw frames, per protocol version (index 0: RESP2,
    /// 1: RESP3), in the server's order. `proto` and `id` are replaced per session.
    pub hello: [Vec<(Bytes, Bytes)>; 2],
    /// Number of databases (`CONFIG GET databases`), for `SELECT` range checks.
    pub databases: u32,
    /// Whether the upstream knows `CLIENT SETINFO` (Redis 7.2+).
    pub has_setinfo: bool,
    /// cachet's own upstream user may run every command on every key and channel
    /// (`ACL GETUSER`, read at start-up): then no command of a client's pipeline can be
    /// refused when queued for its rights, and pipelined writes may share one
    /// transaction (`session/shared.rs`).
    pub own_user_unrestricted: bool,
    /// Whether these facts came from the upstream (false: built-in defaults).
    pub live: bool,
}

impl Default for ServerInfo {
    fn default() -> Self {
        let field = |k: &str, v: &[u8]| {
            let mut key = bytes::BytesMut::new();
            reply::push_bulk(&mut key, k.as_bytes());
            (key.freeze(), Bytes::copy_from_slice(v))
        };
        let fields = vec![
            field("server", b"$5\r\nredis\r\n"),
            field("version", b"$5\r\n7.0.0\r\n"),
            field("proto", b":2\r\n"),
            field("id", b":0\r\n"),
            field("mode", b"$10\r\nstandalone\r\n"),
            field("role", b"$6\r\nmaster\r\n"),
            field("modules", b"*0\r\n"),
        ];
        ServerInfo {
            hello: [fields.clone(), fields],
            databases: 16,
            has_setinfo: false,
            own_user_unrestricted: false,
            live: false,
        }
    }
}

/// How many times a [`Swapped`] value changed, in any context of the process: a
/// session re-reads its copies of them only when this moved.
static SWAPS: AtomicU64 = AtomicU64::new(0);

/// The number of changes to [`Swapped`] values so far. Read it before the values: a
/// change made meanwhile then shows as a different number next time.
pub fn swaps() -> u64 {
    SWAPS.load(Ordering::Acquire)
}

/// A value a reload or a discovery replaces whole (`ArcSwap`), whose every change is
/// counted in [`swaps`].
#[derive(Debug)]
pub struct Swapped<T> {
    value: ArcSwap<T>,
}

impl<T> Swapped<T> {
    pub fn from_pointee(value: T) -> Swapped<T> {
        Swapped {
            value: ArcSwap::from_pointee(value),
        }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<T>> {
        self.value.load()
    }

    pub fn load_full(&self) -> Arc<T> {
        self.value.load_full()
    }

    pub fn store(&self, value: Arc<T>) {
        self.value.store(value);
        SWAPS.fetch_add(1, Ordering::AcqRel);
    }
}

/// Process-wide state handed to every session.
#[derive(Debug)]
pub struct Context {
    pub upstream: Upstream,
    /// Swapped whole by a reload; its ordering tokens, counters and retry queue are
    /// shared by every generation (`Engine::reconfigured`). A session loads it again,
    /// with the other swapped values, before the first command it reads after any
    /// of them changed ([`swaps`]).
    pub engine: Swapped<Engine>,
    pub table: Swapped<CommandTable>,
    pub server: Swapped<ServerInfo>,
    /// Applies to sessions that start after a reload.
    pub limits: ArcSwap<Limits>,
    /// `[commands]`: denied, renamed and disabled commands, scripts.
    pub policy: Swapped<Policy>,
    /// `[auth]`: the credentials clients log in with.
    pub auth: Swapped<Auth>,
    /// `[listen] max_clients`, read by the listener for every new client.
    pub max_clients: AtomicUsize,
    /// The configuration running now (after command-line overrides).
    pub config: Swapped<Config>,
    /// Where the configuration came from, for reloads (none: not reloadable).
    pub source: OnceLock<ConfigSource>,
    /// Changes the log filter on reload (installed by `main.rs`).
    pub log_reloader: OnceLock<LogReloader>,
    pub metrics: Arc<Metrics>,
    pub started: std::time::Instant,
    /// The database a new session starts in (the upstream URL's).
    pub default_db: u32,
    /// Clients idle this long are disconnected (zero: never).
    pub idle_timeout: Duration,
    /// A digest of the TLS certificate and key files as loaded at start: a reload
    /// that finds them changed reports that a restart is needed.
    pub tls_files: u64,
    next_session: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    /// Every live session, by the id its client sees (`CLIENT ID`), for the commands
    /// that name a client by id (`CLIENT UNBLOCK`, `CLIENT KILL ID`).
    pub sessions: dashmap::DashMap<u64, Arc<SessionControl>>,
    /// SIGTERM received: serving on for `[listen] drain_delay`, not ready.
    pub draining: std::sync::atomic::AtomicBool,
}

/// How the upstream knows a session's dedicated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinnedAt {
    /// Its address on cachet's side, as `CLIENT LIST` shows it (TCP).
    Addr(std::net::SocketAddr),
    /// Its `CLIENT ID`, asked when it was pinned (a Unix socket, where every
    /// connection has the same address).
    Id(u64),
}

/// What other sessions may ask of a session, or know of it.
#[derive(Debug, Default)]
pub struct SessionControl {
    /// The upstream connection the session holds for itself now, if any.
    pinned: std::sync::Mutex<Option<PinnedAt>>,
    killed: std::sync::atomic::AtomicBool,
    kill: tokio::sync::Notify,
}

impl SessionControl {
    pub fn set_pinned(&self, addr: Option<PinnedAt>) {
        if let Ok(mut p) = self.pinned.lock()
            && *p != addr
        {
            *p = addr;
        }
    }

    pub fn pinned(&self) -> Option<PinnedAt> {
        self.pinned.lock().ok().and_then(|p| *p)
    }

    /// Ends the session (`CLIENT KILL ID`).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill.notify_one();
    }

    /// Completes once the session is to end.
    pub async fn killed(&self) {
        if self.killed.load(Ordering::Acquire) {
            return;
        }
        self.kill.notified().await;
    }
}

impl Context {
    pub fn new(
        upstream: Upstream,
        engine: Engine,
        limits: Limits,
        default_db: u32,
        shutdown: watch::Receiver<bool>,
    ) -> Context {
        let metrics = Arc::new(Metrics::with_upstream_rtt(upstream.rtt.clone()));
        let mut table = CommandTable::builtin();
        metrics.commands.attach(&mut table);
        Context {
            upstream,
            engine: Swapped::from_pointee(engine),
            table: Swapped::from_pointee(table),
            server: Swapped::from_pointee(ServerInfo::default()),
            limits: ArcSwap::from_pointee(limits),
            policy: Swapped::from_pointee(Policy::default()),
            auth: Swapped::from_pointee(Auth::default()),
            max_clients: AtomicUsize::new(usize::MAX),
            config: Swapped::from_pointee(Config::default()),
            source: OnceLock::new(),
            log_reloader: OnceLock::new(),
            metrics,
            started: std::time::Instant::now(),
            default_db,
            idle_timeout: Duration::ZERO,
            tls_files: 0,
            next_session: AtomicU64::new(1),
            shutdown,
            sessions: dashmap::DashMap::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Takes `[commands]` and `[auth]` from `config` (at start and on reload).
    pub fn set_access(&self, config: &Config) {
        self.policy.store(Arc::new(Policy::new(&config.commands)));
        self.auth.store(Arc::new(Auth::new(config.auth.as_ref())));
    }

    /// A new session id, used for `CLIENT ID` and to spread sessions over connections.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Reads the command table and server facts from the upstream. On failure the
    /// built-in table and defaults stay in place.
    pub async fn discover(&self) -> Result<(), UpstreamError> {
        let node = self.upstream.keyless_node();
        let settings: &Settings = &self.upstream.node_settings(node);
        let own = self.upstream.logins.own().clone();
        let mut conn = connect(settings, self.upstream.own_on(0, 2, node), &own).await?;
        let cmd = |args: &[&str]| -> Vec<Bytes> {
            args.iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect()
        };
        let replies = tokio::time::timeout(
            settings.command_timeout.max(Duration::from_secs(1)),
            roundtrip(
                &mut conn,
                &[
                    cmd(&["COMMAND"]),
                    cmd(&["HELLO", "3"]),
                    cmd(&["HELLO", "2"]),
                    cmd(&["CONFIG", "GET", "databases"]),
                ],
            ),
        )
        .await
        .map_err(|_| UpstreamError::Timeout(settings.command_timeout))??;
        let [command, hello3, hello2, databases] = replies.as_slice() else {
            return Err(UpstreamError::Protocol("missing discovery replies".into()));
        };
        match CommandTable::from_command_reply(command) {
            Ok(table) => {
                let mut table = table.merged_with_builtin();
                self.metrics.commands.attach(&mut table);
                tracing::debug!(commands = table.len(), "command table read from upstream");
                self.table.store(Arc::new(table));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read COMMAND from upstream; using the built-in Redis 7 table");
            }
        }
        let mut info = ServerInfo::default();
        if let (Some(h2), Some(h3)) = (hello_fields(hello2), hello_fields(hello3)) {
            info.hello = [h2, h3];
        }
        if let Some(n) = reply::elements(databases)
            .and_then(|el| el.get(1).and_then(|v| reply::string_value(v)))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        {
            info.databases = n;
        }
        if self.upstream.cluster.is_some() {
            // A cluster has database 0 only: `SELECT 1` is refused.
            info.databases = 1;
        }
        info.has_setinfo = self
            .table
            .load()
            .lookup(&[
                Bytes::from_static(b"client"),
                Bytes::from_static(b"setinfo"),
            ])
            .map(|c| c.name == "client|setinfo")
            .unwrap_or(false);
        info.own_user_unrestricted = own_user_unrestricted(&mut conn, settings).await;
        info.live = true;
        self.server.store(Arc::new(info));
        Ok(())
    }
}

/// Whether the user `conn` is logged in as may run every command on every key and
/// channel: `ACL GETUSER` of `ACL WHOAMI` says `+@all`, `~*` (or `allkeys`) and `&*` (or
/// `allchannels`), with no selectors. Any other answer, or none, counts as restricted:
/// an unknown `ACL` too (a Redis before 6.0, but also one where `ACL` is renamed or
/// hidden by a managed service, whose users may well be restricted).
async fn own_user_unrestricted(conn: &mut crate::stream::Stream, settings: &Settings) -> bool {
    let ask = |args: Vec<&str>| -> Vec<Bytes> {
        args.into_iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    };
    let limit = settings.command_timeout.max(Duration::from_secs(1));
    let Ok(Ok(who)) =
        tokio::time::timeout(limit, roundtrip(conn, &[ask(vec!["ACL", "WHOAMI"])])).await
    else {
        return false;
    };
    let Some(who) = who.first() else {
        return false;
    };
    let Some(name) = reply::string_value(who).and_then(|n| std::str::from_utf8(n).ok()) else {
        return false;
    };
    let Ok(Ok(user)) =
        tokio::time::timeout(limit, roundtrip(conn, &[ask(vec!["ACL", "GETUSER", name])])).await
    else {
        return false;
    };
    user.first().is_some_and(|u| unrestricted(u))
}

/// [`own_user_unrestricted`]'s reading of an `ACL GETUSER` reply (a RESP2 flat array of
/// field names and values, Redis 6.2 or 7).
fn unrestricted(reply: &[u8]) -> bool {
    let Some(el) = reply::elements(reply) else {
        return false;
    };
    let mut flags: Vec<&[u8]> = Vec::new();
    let (mut commands, mut keys, mut channels, mut selectors) = (false, false, false, true);
    for pair in el.chunks_exact(2) {
        let (Some(name), Some(value)) = (pair.first(), pair.get(1)) else {
            continue;
        };
        let strings = || -> Vec<&[u8]> {
            match reply::elements(value) {
                Some(items) => items.into_iter().filter_map(reply::string_value).collect(),
                None => reply::string_value(value).into_iter().collect(),
            }
        };
        match reply::string_value(name).unwrap_or_default() {
            b"flags" => flags = strings(),
            b"commands" => commands = strings() == [b"+@all".as_slice()],
            b"keys" => keys = matches!(strings().as_slice(), [b"~*"] | [b"*"]),
            b"channels" => channels = matches!(strings().as_slice(), [b"&*"] | [b"*"]),
            b"selectors" => selectors = reply::elements(value).is_some_and(|s| s.is_empty()),
            _ => {}
        }
    }
    commands
        && (keys || flags.contains(&b"allkeys".as_slice()))
        && (channels || flags.contains(&b"allchannels".as_slice()))
        && selectors
}

/// The key/value frames of a `HELLO` reply (a RESP3 map or a RESP2 flat array).
fn hello_fields(frame: &[u8]) -> Option<Vec<(Bytes, Bytes)>> {
    let el = reply::elements(frame)?;
    if el.len() % 2 != 0 || el.is_empty() {
        return None;
    }
    Some(
        el.chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((Bytes::copy_from_slice(k), Bytes::copy_from_slice(v))),
                _ => None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod own_user_tests {
    use super::unrestricted;

    #[test]
    fn reads_acl_getuser_as_redis_7_and_6_answer_it() {
        // Redis 7.0, the `default` user of a fresh server.
        let all = b"*12\r\n$5\r\nflags\r\n*2\r\n$2\r\non\r\n$6\r\nnopass\r\n$9\r\npasswords\r\n*0\r\n$8\r\ncommands\r\n$5\r\n+@all\r\n$4\r\nkeys\r\n$2\r\n~*\r\n$8\r\nchannels\r\n$2\r\n&*\r\n$9\r\nselectors\r\n*0\r\n";
        assert!(unrestricted(all));
        // One command less (`+@all -restore`).
        let less = b"*12\r\n$5\r\nflags\r\n*2\r\n$2\r\non\r\n$6\r\nnopass\r\n$9\r\npasswords\r\n*0\r\n$8\r\ncommands\r\n$14\r\n+@all -restore\r\n$4\r\nkeys\r\n$2\r\n~*\r\n$8\r\nchannels\r\n$2\r\n&*\r\n$9\r\nselectors\r\n*0\r\n";
        assert!(!unrestricted(less));
        // Some keys only.
        let keys = b"*12\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$9\r\npasswords\r\n*0\r\n$8\r\ncommands\r\n$5\r\n+@all\r\n$4\r\nkeys\r\n$7\r\n~app:*\r\n$8\r\nchannels\r\n$2\r\n&*\r\n$9\r\nselectors\r\n*0\r\n";
        assert!(!unrestricted(keys));
        // A selector may add or restrict anything: counted as restricted.
        let selector = b"*12\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$9\r\npasswords\r\n*0\r\n$8\r\ncommands\r\n$5\r\n+@all\r\n$4\r\nkeys\r\n$2\r\n~*\r\n$8\r\nchannels\r\n$2\r\n&*\r\n$9\r\nselectors\r\n*1\r\n*2\r\n$8\r\ncommands\r\n$4\r\n+get\r\n";
        assert!(!unrestricted(selector));
        // Redis 6.2: `allkeys`/`allchannels` flags, key patterns without `~`.
        let six = b"*10\r\n$5\r\nflags\r\n*4\r\n$2\r\non\r\n$7\r\nallkeys\r\n$11\r\nallchannels\r\n$6\r\nnopass\r\n$9\r\npasswords\r\n*0\r\n$8\r\ncommands\r\n$5\r\n+@all\r\n$4\r\nkeys\r\n*1\r\n$1\r\n*\r\n$8\r\nchannels\r\n*1\r\n$1\r\n*\r\n";
        assert!(unrestricted(six));
        assert!(!unrestricted(
            b"-NOPERM this user has no permissions to run the 'acl|getuser' command\r\n"
        ));
        assert!(!unrestricted(b"*-1\r\n"));
    }
}
