//! Configuration: the TOML schema, its defaults, loading and validation.
//!
//! The schema is the set of `*Config` structs below; their `Default`s are exactly the
//! values of the shipped `config/cachet.toml`. Loading (`load.rs`) reports every
//! problem of a file at once, each with file, line and dotted key; the semantic rules
//! (`validate.rs`) also run on their own after command-line overrides. Durations and
//! sizes are written as strings (`"10s"`, `"64MiB"`, see `units.rs`).
//!
//! Secrets: `Debug` and `Display` of the upstream URL and of [`UpstreamConfig`] never
//! show a password, so a whole `Config` may be logged.

mod error;
mod load;
mod overrides;
mod source;
mod units;
mod url;
mod validate;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `max_ttl` of a `lock` keyspace that does not set one.
pub const DEFAULT_LOCK_MAX_TTL: Duration = Duration::from_secs(30);
pub use error::{ConfigError, ConfigErrors};
pub use overrides::Overrides;
pub use source::ConfigSource;
pub use units::fmt_duration;
pub use units::{parse_duration, parse_size};
pub use url::{DEFAULT_REDIS_PORT, DEFAULT_SENTINEL_PORT, Sentinel, UpstreamUrl, join_host_port};

/// The whole configuration; one field per TOML section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub limits: LimitsConfig,
    pub consistency: ConsistencyConfig,
    /// `[[keyspace]]` rules in file order; the first match wins, unmatched keys are
    /// `strict`. A file without any `[[keyspace]]` gets the default three rules;
    /// `keyspace = []` means none.
    pub keyspace: Vec<KeyspaceRule>,
    pub commands: CommandsConfig,
    /// `[auth]`; `None` (no section): clients are not asked to authenticate by cachet,
    /// and `AUTH` is checked against the upstream.
    pub auth: Option<AuthConfig>,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

/// `[listen]`: the client-facing socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    #[serde(deserialize_with = "units::socket_addr")]
    pub address: SocketAddr,
    /// Connections beyond this are refused.
    pub max_clients: usize,
    /// A client idle this long is disconnected; zero = never.
    #[serde(deserialize_with = "units::duration")]
    pub idle_timeout: Duration,
    /// How long in-flight commands may finish after SIGTERM/SIGINT.
    #[serde(deserialize_with = "units::duration")]
    pub shutdown_grace: Duration,
    /// On SIGTERM, how long cachet goes on serving (old and new clients) with
    /// `/readyz` saying 503 before it shuts down: a sidecar outlives its application's
    /// own drain. SIGINT does not wait.
    #[serde(deserialize_with = "units::duration")]
    pub drain_delay: Duration,
    /// `[listen.tls]`: when present, the listener speaks TLS only.
    pub tls: Option<ListenTls>,
    /// A Unix socket to listen on as well (plain RESP, never TLS), as Redis's
    /// `unixsocket`: a file left at the path is replaced, and removed at exit.
    pub unix_socket: Option<PathBuf>,
    /// The socket file's permissions (Redis's `unixsocketperm`), such as `0o660`.
    pub unix_socket_perm: Option<u32>,
}

/// `[listen.tls]`: the certificate cachet presents to clients, and optionally the CA
/// that client certificates must be signed by (mutual TLS). Paths are PEM files,
/// relative to the working directory. `certificate` and `key` are required; they are
/// options here so that the loader can blame each key on its own.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenTls {
    /// The certificate chain, leaf first.
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
    /// A client that has not finished its TLS handshake after this long is dropped.
    #[serde(deserialize_with = "units::duration")]
    pub handshake_timeout: Duration,
}

impl Default for ListenTls {
    fn default() -> Self {
        ListenTls {
            certificate: None,
            key: None,
            client_ca: None,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6380),
            max_clients: 10_000,
            idle_timeout: Duration::ZERO,
            shutdown_grace: Duration::from_secs(10),
            drain_delay: Duration::from_secs(5),
            tls: None,
            unix_socket: None,
            unix_socket_perm: None,
        }
    }
}

/// `[upstream]`: the Redis that cachet fronts.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub url: UpstreamUrl,
    /// Overrides the URL's user name.
    pub username: Option<String>,
    /// Overrides the URL's password.
    pub password: Option<String>,
    /// A file holding the password (its first line), so that it need not sit in this
    /// file or on the command line; overrides `password` and the URL's.
    pub password_file: Option<PathBuf>,
    #[serde(deserialize_with = "units::duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "units::duration")]
    pub command_timeout: Duration,
    /// Multiplexed connections shared by all clients of one upstream user, per
    /// database and protocol (1..=64).
    pub shared_connections: usize,
    /// Upstream users other than cachet's own that clients may be logged in as at
    /// once (each has connections of its own).
    pub max_users: usize,
    /// With Sentinel: after a failover, the invalidations of the writes of this long
    /// before it are sent again to the new primary (which may lack them).
    #[serde(deserialize_with = "units::duration")]
    pub failover_replay: Duration,
    /// `[upstream.tls]`: how to verify the upstream (with a `rediss://` URL).
    pub tls: Option<UpstreamTls>,
}

/// `[upstream.tls]`: TLS settings for a `rediss://` upstream. Without the section, a
/// `rediss://` upstream is verified against the bundled Mozilla root certificates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// PEM file of the CA certificates the upstream's certificate must chain to,
    /// instead of the bundled Mozilla roots.
    pub ca: Option<PathBuf>,
    /// A client certificate chain (PEM) for upstreams that verify clients; needs `key`.
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the upstream's certificate must carry, instead of the URL's host.
    pub server_name: Option<String>,
    /// Skip verifying the upstream's certificate. Only by explicit choice; logged.
    pub insecure: bool,
}

impl UpstreamConfig {
    /// The user name to authenticate as: the field, else the URL's.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref().or(self.url.username.as_deref())
    }

    /// The password to authenticate with: the field, else the URL's (`password_file`
    /// is read by [`UpstreamConfig::resolved_password`]).
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref().or(self.url.password.as_deref())
    }

    /// The password cachet logs in with: `password_file`'s first line, else
    /// [`UpstreamConfig::password`].
    pub fn resolved_password(&self) -> Result<Option<String>, String> {
        match &self.password_file {
            None => Ok(self.password().map(str::to_owned)),
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                let line = text.lines().next().unwrap_or_default();
                Ok(Some(line.to_owned()))
            }
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: UpstreamUrl {
                tls: false,
                host: "127.0.0.1".to_owned(),
                port: DEFAULT_REDIS_PORT,
                sentinel: None,
                cluster: None,
                db: 0,
                username: None,
                password: None,
            },
            username: None,
            password: None,
            password_file: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(5),
            shared_connections: 1,
            max_users: 64,
            failover_replay: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Written by hand so the password never reaches a log.
impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("shared_connections", &self.shared_connections)
            .field("max_users", &self.max_users)
            .field("failover_replay", &self.failover_replay)
            .field("tls", &self.tls)
            .finish()
    }
}

/// `[limits]`: bounds on what one client may send or have queued, in bytes or elements.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest bulk string in a request (Redis's `proto-max-bulk-len`).
    #[serde(deserialize_with = "units::size")]
    pub max_bulk_len: u64,
    /// Most arguments in one request.
    #[serde(deserialize_with = "units::size")]
    pub max_multibulk_len: u64,
    /// Longest inline (telnet-style) command line.
    #[serde(deserialize_with = "units::size")]
    pub max_inline_len: u64,
    /// Replies queued for a client past this disconnect it (slow subscribers).
    #[serde(deserialize_with = "units::size")]
    pub client_output_buffer: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_bulk_len: 512 << 20,
            max_multibulk_len: 1_048_576,
            max_inline_len: 64 << 10,
            client_output_buffer: 64 << 20,
        }
    }
}

/// `[consistency]`: invalidation events, leases and their timing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyConfig {
    /// Channel every invalidation is `PUBLISH`ed on, one message per key.
    pub invalidation_channel: String,
    /// Prefix of cachet's own keys upstream; clients can neither see nor touch them.
    pub reserved_prefix: String,
    /// How long the first misser of a key is waited for by the others (herd control).
    #[serde(deserialize_with = "units::duration")]
    pub lease_ttl: Duration,
    /// The slowest fill cachet judges: for this long after a miss a `SET` of the key may
    /// be that miss's fill (refused if an invalidation may have overtaken it); a `SET`
    /// later than this after every miss is taken for a write.
    #[serde(deserialize_with = "units::duration")]
    pub fill_window: Duration,
    /// A miss this soon after an invalidation can never be filled (its database read
    /// may precede the writer's commit); such misses wait for it to pass.
    #[serde(deserialize_with = "units::duration")]
    pub hold_off: Duration,
    /// How long other missers of a leased key wait for the fill.
    #[serde(deserialize_with = "units::duration")]
    pub coalesce_wait: Duration,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        ConsistencyConfig {
            invalidation_channel: "cachet:invalidate".to_owned(),
            reserved_prefix: "__cachet:".to_owned(),
            lease_ttl: Duration::from_secs(5),
            fill_window: Duration::from_secs(10),
            hold_off: Duration::from_millis(500),
            coalesce_wait: Duration::from_millis(50),
        }
    }
}

/// One `[[keyspace]]` rule: keys matching `pattern` are handled in `mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyspaceRule {
    /// Redis glob (`*`, `?`, `[a-z]`, `\` escapes), matched against raw key bytes.
    pub pattern: String,
    pub mode: KeyspaceMode,
    /// `lock` only: expiry given to `SET`/`SETNX` without one. A loaded `lock` rule
    /// always has it ([`DEFAULT_LOCK_MAX_TTL`] when the file sets none).
    pub max_ttl: Option<Duration>,
    /// `cache` only: overrides `[consistency] hold_off` for these keys.
    pub hold_off: Option<Duration>,
    /// `cache` only: what a blind `SET` becomes; `None` means [`WriteThrough::Set`].
    pub write_through: Option<WriteThrough>,
    /// `lock` only: what an expiry above `max_ttl` gets. A loaded `lock` rule always
    /// has it ([`OverMaxTtl::Refuse`] when the file sets none).
    pub over_max_ttl: Option<OverMaxTtl>,
}

/// What a `lock` keyspace does with a command that would give a lock key an expiry
/// above its `max_ttl`, or remove it (`engine/lock_mode.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverMaxTtl {
    /// Refused with an error, nothing run: a holder that asked for a longer lock
    /// learns it cannot have one.
    #[default]
    Refuse,
    /// Run with the expiry shortened to `max_ttl` (an expiry removed becomes
    /// `max_ttl`): the lock may then expire while its holder still works.
    Cap,
}

/// How a keyspace's keys are handled (docs/design.md, "Keyspaces").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyspaceMode {
    Passthrough,
    Strict,
    Cache,
    Lock,
}

impl fmt::Display for KeyspaceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyspaceMode::Passthrough => "passthrough",
            KeyspaceMode::Strict => "strict",
            KeyspaceMode::Cache => "cache",
            KeyspaceMode::Lock => "lock",
        })
    }
}

/// What a `SET` that no recorded miss explains (a write-through) becomes in a `cache`
/// keyspace (docs/fill-protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteThrough {
    /// Stored, in arrival order: a client reads its own writes.
    #[default]
    Set,
    /// Stored, unless another write-through landed within `fill_window`: then the key
    /// is deleted, so two racing write-throughs leave nothing rather than the older
    /// value; every refused fill invalidates too. Loses data for keys used as a store.
    Collapse,
    /// Never stored: the key is deleted.
    Invalidate,
}

/// `[commands]`: what clients may run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    /// Commands refused with an error; stored uppercased.
    #[serde(deserialize_with = "units::command_names")]
    pub deny: Vec<String>,
    /// Redis's `rename-command`: original name to new name, both stored uppercased;
    /// an empty new name disables the command.
    #[serde(deserialize_with = "units::command_renames")]
    pub rename: BTreeMap<String, String>,
    /// Whether clients may run or load Lua scripts and functions.
    pub scripts: ScriptPolicy,
}

/// `[commands] scripts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptPolicy {
    #[default]
    Allow,
    /// `EVAL`, `EVALSHA`, `EVAL_RO`, `EVALSHA_RO`, `FCALL`, `FCALL_RO`, `SCRIPT LOAD`
    /// and `FUNCTION LOAD` are refused.
    Refuse,
}

/// `[auth]`: the passwords clients must give (`AUTH`, `HELLO … AUTH`) before cachet
/// serves them anything. Only SHA-256 digests are stored, as 64 hex digits.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The `default` user's password (Redis's `requirepass`), for `AUTH <password>`;
    /// `None`: the `default` user cannot log in.
    pub password_sha256: Option<String>,
    /// A file whose first line is `password_sha256` (a mounted Secret), read at every
    /// load and reload.
    pub password_sha256_file: Option<PathBuf>,
    /// `[[auth.users]]`: named users, for `AUTH <name> <password>`.
    pub users: Vec<AuthUser>,
    /// The upstream user the `default` user's commands run as (with
    /// `upstream_password_file`); unset: cachet's own.
    pub upstream_user: Option<String>,
    pub upstream_password_file: Option<PathBuf>,
}

/// One `[[auth.users]]` entry.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthUser {
    pub name: String,
    /// Empty when it comes from `password_sha256_file` (filled in at load).
    #[serde(default)]
    pub password_sha256: String,
    /// A file whose first line is `password_sha256`, read at every load and reload.
    #[serde(default)]
    pub password_sha256_file: Option<PathBuf>,
    /// The upstream user this user's commands run as, so that Redis enforces that
    /// user's ACL on them; unset: cachet's own user.
    #[serde(default)]
    pub upstream_user: Option<String>,
    /// A file holding `upstream_user`'s password (one line).
    #[serde(default)]
    pub upstream_password_file: Option<PathBuf>,
}

/// Written by hand: a digest of a weak password is as good as the password, so it
/// never reaches a log.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        f.debug_struct("AuthConfig")
            .field(
                "password_sha256",
                &self.password_sha256.as_ref().map(|_| "***"),
            )
            .field("password_sha256_file", &self.password_sha256_file)
            .field("users", &users)
            .field("upstream_user", &self.upstream_user)
            .field("upstream_password_file", &self.upstream_password_file)
            .finish()
    }
}

/// `[admin]`: the HTTP metrics and health endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `None` (written `""` or `"off"`) disables the endpoint.
    #[serde(deserialize_with = "units::optional_socket_addr")]
    pub address: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9180)),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level (`info`) or a `tracing_subscriber::EnvFilter` directive list
    /// (`info,cachet::session=debug`).
    pub level: String,
    pub format: LogFormat,
    /// Commands whose reply takes at least this long are logged (name, key count,
    /// duration; never arguments or values). Zero: off.
    #[serde(deserialize_with = "units::duration")]
    pub slow_command: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
            slow_command: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    /// Exactly the shipped `config/cachet.toml`.
    fn default() -> Self {
        let rule = |pattern: &str, mode, max_ttl| KeyspaceRule {
            pattern: pattern.to_owned(),
            mode,
            max_ttl,
            hold_off: None,
            write_through: None,
            over_max_ttl: (mode == KeyspaceMode::Lock).then_some(OverMaxTtl::Refuse),
        };
        Config {
            listen: ListenConfig::default(),
            upstream: UpstreamConfig::default(),
            limits: LimitsConfig::default(),
            consistency: ConsistencyConfig::default(),
            keyspace: vec![
                // Django's cache-backed sessions are a store, not derived data.
                rule(
                    ":1:django.contrib.sessions.cache*",
                    KeyspaceMode::Strict,
                    None,
                ),
                // Django's default key format.
                rule(":1:*", KeyspaceMode::Cache, None),
                rule("lock:*", KeyspaceMode::Lock, Some(DEFAULT_LOCK_MAX_TTL)),
                rule("*", KeyspaceMode::Strict, None),
            ],
            commands: CommandsConfig::default(),
            auth: None,
            admin: AdminConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// A check of settings another module owns (the TLS files it reads, the command names
/// it knows): each problem as the key it is about and a message. The loader attaches
/// files and lines to them as to its own.
pub type Check = fn(&Config) -> Vec<(String, String)>;

impl Config {
    /// Reads, parses and validates the file at `path`; errors name it as given.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_with(path, &[])
    }

    /// [`Config::load`], with the owners' `checks` too.
    pub fn load_with(path: &Path, checks: &[Check]) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => load::parse(&text, &origin, checks),
            Err(err) => Err(ConfigErrors::from(vec![ConfigError {
                origin,
                line: None,
                column: None,
                key: String::new(),
                message: format!("cannot read the configuration: {err}"),
            }])),
        }
    }

    /// Parses and validates TOML `text`; `origin` (a file name) prefixes every error.
    /// Reports every problem found, not just the first.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        load::parse(text, origin, &[])
    }

    /// [`Config::parse`], with the owners' `checks` too.
    pub fn parse_with(text: &str, origin: &str, checks: &[Check]) -> Result<Config, ConfigErrors> {
        load::parse(text, origin, checks)
    }

    /// The semantic rules (ranges, mode-specific keys, unreachable rules, ...). Errors
    /// carry keys but no origin or line: use [`ConfigErrors::with_origin`] to label them.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        self.validate_with(&[])
    }

    /// [`Config::validate`], with the owners' `checks` too.
    pub fn validate_with(&self, checks: &[Check]) -> Result<(), ConfigErrors> {
        let mut errors = validate::check(self);
        for check in checks {
            errors.extend(check(self).into_iter().map(|(k, m)| ConfigError::new(k, m)));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors::from(errors))
        }
    }
}
