//! Semantic rules over a typed [`Config`]: ranges, combinations, unreachable keyspace
//! rules. What other modules own (the TLS files, command names) they check themselves,
//! through [`Check`](super::Check)s the loader is given. Runs after parsing and again
//! after command-line overrides, so it knows nothing of the configuration file; the
//! loader attaches lines by looking the keys up.

use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use super::{Config, ConfigError, KeyspaceMode, units};
use crate::glob::Matcher;

/// Leases and lock expiries are set with `PX`, whose unit is the millisecond.
const MIN_REDIS_TTL: Duration = Duration::from_millis(1);

/// Every rule violated by `config`, in schema order.
pub(super) fn check(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut fail = |key: String, message: String| errors.push(ConfigError::new(key, message));

    let listen = &config.listen;
    if listen.max_clients == 0 {
        fail("listen.max_clients".into(), "must be at least 1".into());
    }
    if let Some(admin) = config.admin.address {
        // Port 0 asks the OS for a fresh port each time, so two of them never clash.
        if admin == listen.address && admin.port() != 0 {
            fail(
                "admin.address".into(),
                format!("{admin} is already listen.address"),
            );
        }
    }

    if let Some(perm) = listen.unix_socket_perm
        && perm > 0o777
    {
        fail(
            "listen.unix_socket_perm".into(),
            format!("must be at most 0o777 (write it in octal, such as 0o660), not {perm:#o}"),
        );
    }
    if let Some(path) = &listen.unix_socket
        && config.upstream.url.is_unix()
        && path.as_os_str() == config.upstream.url.host.as_str()
    {
        fail(
            "listen.unix_socket".into(),
            "is the upstream's own socket (upstream.url)".into(),
        );
    }

    if let Some(tls) = &listen.tls {
        if tls.handshake_timeout.is_zero() {
            fail(
                "listen.tls.handshake_timeout".into(),
                "must be greater than 0s".into(),
            );
        }
        let missing: Vec<&str> = [("certificate", &tls.certificate), ("key", &tls.key)]
            .into_iter()
            .filter(|(_, path)| path.is_none())
            .map(|(name, _)| name)
            .collect();
        for name in &missing {
            fail(format!("listen.tls.{name}"), "missing required key".into());
        }
    }

    let upstream = &config.upstream;
    if upstream.url.host.is_empty() {
        fail("upstream.url".into(), "missing host".into());
    }
    if upstream.url.port == 0 && !upstream.url.is_unix() {
        fail("upstream.url".into(), "port must be 1 to 65535".into());
    }
    if upstream.username().is_some() && upstream.password().is_none() {
        // Redis's AUTH takes a user name only together with a password.
        let key = if upstream.username.is_some() {
            "upstream.username"
        } else {
            "upstream.url"
        };
        fail(
            key.into(),
            "a user name needs a password (upstream.password, or in the URL)".into(),
        );
    }
    for (key, value) in [
        ("upstream.connect_timeout", upstream.connect_timeout),
        ("upstream.command_timeout", upstream.command_timeout),
    ] {
        if value.is_zero() {
            fail(key.into(), "must be greater than 0s".into());
        }
    }
    if upstream.tls.is_some() && !upstream.url.tls {
        fail(
            "upstream.tls".into(),
            "set, but upstream.url is redis://; use rediss:// to connect with TLS".into(),
        );
    }
    if upstream.failover_replay > Duration::from_secs(600) {
        fail(
            "upstream.failover_replay".into(),
            "must be at most 10m (the writes of that long are kept in memory)".into(),
        );
    }
    if !(1..=100_000).contains(&upstream.max_users) {
        fail(
            "upstream.max_users".into(),
            format!("must be 1 to 100000, not {}", upstream.max_users),
        );
    }
    if !(1..=64).contains(&upstream.shared_connections) {
        fail(
            "upstream.shared_connections".into(),
            format!("must be 1 to 64, not {}", upstream.shared_connections),
        );
    }

    let limits = &config.limits;
    for (key, value) in [
        ("limits.max_bulk_len", limits.max_bulk_len),
        ("limits.max_multibulk_len", limits.max_multibulk_len),
        ("limits.max_inline_len", limits.max_inline_len),
        ("limits.client_output_buffer", limits.client_output_buffer),
    ] {
        if value == 0 {
            fail(key.into(), "must be greater than 0".into());
        }
    }
    if limits.max_inline_len > limits.max_bulk_len {
        fail(
            "limits.max_inline_len".into(),
            format!(
                "{} bytes is more than limits.max_bulk_len ({} bytes)",
                limits.max_inline_len, limits.max_bulk_len
            ),
        );
    }

    let consistency = &config.consistency;
    if consistency.invalidation_channel.is_empty() {
        fail(
            "consistency.invalidation_channel".into(),
            "must not be empty".into(),
        );
    }
    if consistency.reserved_prefix.is_empty() {
        // An empty prefix would make every client key look like cachet's own.
        fail(
            "consistency.reserved_prefix".into(),
            "must not be empty".into(),
        );
    } else if consistency.reserved_prefix.contains(['{', '}']) {
        // Reserved keys put a hash tag right after the prefix to share the data key's
        // slot; a brace in the prefix would become the tag instead.
        fail(
            "consistency.reserved_prefix".into(),
            "must not contain '{' or '}' (cachet places a hash tag after it)".into(),
        );
    }
    if consistency.lease_ttl < MIN_REDIS_TTL {
        fail(
            "consistency.lease_ttl".into(),
            "must be at least 1ms".into(),
        );
    }
    if consistency.fill_window < consistency.lease_ttl {
        // A fill that outlives its lease must still be judged by its miss.
        fail(
            "consistency.fill_window".into(),
            format!(
                "must be at least lease_ttl ({})",
                units::fmt_duration(consistency.lease_ttl)
            ),
        );
    }

    let matchers: Vec<Matcher> = config
        .keyspace
        .iter()
        .map(|rule| Matcher::compile(rule.pattern.as_bytes()))
        .collect();
    for (i, (rule, matcher)) in config.keyspace.iter().zip(&matchers).enumerate() {
        let key = |name: &str| format!("keyspace[{i}].{name}");
        if rule.pattern.is_empty() {
            fail(key("pattern"), "must not be empty".into());
        } else if let Some((j, (earlier, shadow))) = config
            .keyspace
            .iter()
            .zip(&matchers)
            .take(i)
            .enumerate()
            .find(|(_, (_, earlier))| earlier.shadows(matcher))
        {
            let what = if *shadow == Matcher::All {
                "every key"
            } else {
                "all of its keys"
            };
            fail(
                key("pattern"),
                format!(
                    "never matches: keyspace[{j}] pattern '{}' matches {what} first",
                    earlier.pattern
                ),
            );
        }
        match rule.max_ttl {
            Some(_) if rule.mode != KeyspaceMode::Lock => {
                fail(key("max_ttl"), only_for("lock", rule.mode));
            }
            Some(ttl) if ttl < MIN_REDIS_TTL => fail(key("max_ttl"), "must be at least 1ms".into()),
            _ => {}
        }
        if rule.over_max_ttl.is_some() && rule.mode != KeyspaceMode::Lock {
            fail(key("over_max_ttl"), only_for("lock", rule.mode));
        }
        if rule.mode != KeyspaceMode::Cache {
            if rule.hold_off.is_some() {
                fail(key("hold_off"), only_for("cache", rule.mode));
            }
            if rule.write_through.is_some() {
                fail(key("write_through"), only_for("cache", rule.mode));
            }
        }
    }

    for name in &config.commands.deny {
        if let Err(message) = units::command_name(name) {
            fail("commands.deny".into(), message);
        }
    }

    if let Some(auth) = &config.auth {
        // A digest read from a file was checked when it was read (`load.rs`).
        if auth.password_sha256.is_none()
            && auth.password_sha256_file.is_none()
            && auth.users.is_empty()
        {
            fail(
                "auth".into(),
                "sets no password: give password_sha256 (or password_sha256_file) or at least one [[auth.users]] \
                 (without an [auth] section clients are not asked to authenticate)"
                    .into(),
            );
        }
        if let Some(digest) = &auth.password_sha256
            && auth.password_sha256_file.is_none()
            && let Err(message) = check_sha256(digest)
        {
            fail("auth.password_sha256".into(), message);
        }
        let mut seen = std::collections::HashSet::new();
        for (i, user) in auth.users.iter().enumerate() {
            let key = |name: &str| format!("auth.users[{i}].{name}");
            if user.name.is_empty() || user.name.chars().any(|c| c.is_whitespace()) {
                fail(
                    key("name"),
                    "must be a non-empty name without spaces".into(),
                );
            } else if user.name == "default" {
                fail(
                    key("name"),
                    "the default user's password is auth.password_sha256".into(),
                );
            } else if !seen.insert(user.name.as_str()) {
                fail(key("name"), format!("user {:?} is listed twice", user.name));
            }
            if user.password_sha256_file.is_none()
                && let Err(message) = check_sha256(&user.password_sha256)
            {
                fail(key("password_sha256"), message);
            }
            if user.upstream_user.is_some() != user.upstream_password_file.is_some() {
                fail(
                    key("upstream_user"),
                    "upstream_user and upstream_password_file go together".into(),
                );
            }
        }
        if auth.upstream_user.is_some() != auth.upstream_password_file.is_some() {
            fail(
                "auth.upstream_user".into(),
                "upstream_user and upstream_password_file go together".into(),
            );
        }
    }

    if let Err(message) = check_log_level(&config.log.level) {
        fail("log.level".into(), message);
    }

    errors
}

/// The other keys a rule on `key` compares it with: the loader drops an error on
/// `key` when one of these could not be read (it was checked against a default).
pub(super) fn compared_with(key: &str) -> &'static [&'static str] {
    match key {
        "limits.max_inline_len" => &["limits.max_bulk_len"],
        "admin.address" => &["listen.address"],
        "upstream.url" | "upstream.username" => {
            &["upstream.url", "upstream.username", "upstream.password"]
        }
        "upstream.tls" => &["upstream.url"],
        _ => &[],
    }
}

/// A SHA-256 digest as 64 hex digits: passwords are never written in the file.
pub(super) fn check_sha256(digest: &str) -> Result<(), String> {
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "must be a SHA-256 digest written as 64 hex digits (not the password; \
             for example the output of `printf %s 'password' | sha256sum`), got {} characters",
            digest.chars().count()
        ))
    }
}

fn only_for(wanted: &str, mode: KeyspaceMode) -> String {
    format!("only applies to mode = \"{wanted}\", not \"{mode}\"")
}

/// A level, or an `EnvFilter` directive list. A bare word must be a level: `EnvFilter`
/// would read a typo such as `infoo` as "everything in target `infoo`" and silently
/// log nothing else.
fn check_log_level(level: &str) -> Result<(), String> {
    let expected = "expected trace, debug, info, warn, error or off, \
                    or a filter such as \"info,cachet=debug\"";
    if level.trim().is_empty() {
        return Err(format!("must not be empty: {expected}"));
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains(['=', '[']) && directive.parse::<LevelFilter>().is_err() {
            return Err(format!("unknown level {directive:?}: {expected}"));
        }
    }
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|err| format!("invalid filter {level:?}: {err}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn log_levels() {
        for ok in [
            "info",
            "INFO",
            "warn",
            "off",
            "trace",
            "info,cachet=debug",
            "cachet::session=trace",
            "debug,h2=off",
        ] {
            assert_eq!(check_log_level(ok), Ok(()), "{ok}");
        }
        for bad in ["", " ", "infoo", "verbose", "info,cachet", "cachet=loud"] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
    }
}
