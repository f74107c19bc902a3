//! Live configuration reload (SIGHUP, `CACHET RELOAD`): re-read the file given with
//! `--config`, apply the command-line overrides again, validate, and swap what can
//! change while running. A file that does not load or validate changes nothing.
//!
//! | changes live | how |
//! |---|---|
//! | `[[keyspace]]`, `[consistency]` | a new [`Engine`] sharing the old one's state |
//! | `[commands]` | swapped command policy, read per command batch |
//! | `[auth]` | swapped credentials: new `AUTH` attempts use them; sessions already
//! authenticated stay so (as in Redis) |
//! | `[limits]` | new sessions decode with the new limits |
//! | `[listen] max_clients`, `drain_delay` | read for every new client, at SIGTERM |
//! | `[log] level` | the `tracing_subscriber` reload handle |
//! | `[log] slow_command` | read for every command |
//!
//! Everything else (listen and admin addresses, TLS settings and the contents of their
//! certificate files, the upstream, timeouts, the log format) is reported as needing a
//! restart and left as it runs. [`merge`] says so for every field of the configuration
//! types, and the compiler makes a new field say it too.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::Config;
use crate::context::Context;
use crate::resp::Limits;

/// What the modules that own settings check beyond the configuration's own rules: the
/// TLS files, the command names of `[commands] rename`.
pub const CHECKS: [crate::config::Check; 3] =
    [crate::tls::check, crate::policy::check, crate::auth::check];

pub use crate::config::ConfigSource;
pub use crate::context::{LogReloader, SetLogFilter};

/// Loads `source` with every owner's checks ([`CHECKS`]): what a start and a reload
/// run.
pub fn load(source: &ConfigSource) -> Result<Config, String> {
    source.load_with(&CHECKS)
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Settings changed and applied (dotted names).
    pub applied: Vec<String>,
    /// Settings changed in the file that only a restart applies.
    pub restart_required: Vec<String>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "applied: {}; needs a restart: {}",
            list(&self.applied),
            list(&self.restart_required)
        )
    }
}

impl Context {
    /// Re-reads the configuration and swaps what can change live. `Err` carries every
    /// problem of the file; the running configuration is then untouched.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        let Some(source) = self.source.get() else {
            return Err("cachet was started without a configuration source to reload".into());
        };
        let mut new = match load(source) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(errors = %e, "configuration reload refused; the running configuration stays");
                return Err(e);
            }
        };
        let old = self.config.load_full();
        let mut report = ReloadReport::default();
        if let Some(reloader) = self.log_reloader.get()
            && new.log.level != old.log.level
        {
            // Validation has parsed the directive already; a failure here would be
            // the subscriber's, and leaves the old filter.
            if let Err(e) = (reloader.0)(&new.log.level) {
                self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
                return Err(format!("log.level: {e}"));
            }
        }
        merge(
            &old,
            &mut new,
            self.log_reloader.get().is_some(),
            &mut report,
        );
        if new.listen.tls == old.listen.tls
            && new.upstream.tls == old.upstream.tls
            && crate::tls::files_digest(&new) != self.tls_files
        {
            // Same paths, new contents (rotated certificates): loaded at start only.
            report
                .restart_required
                .push("TLS certificate files".to_owned());
        }
        if new.keyspace != old.keyspace || new.consistency != old.consistency {
            let engine = self
                .engine
                .load()
                .reconfigured(&new.consistency, &new.keyspace);
            self.engine.store(Arc::new(engine));
        }
        if new.commands != old.commands || new.auth != old.auth {
            self.set_access(&new);
        }
        if new.limits != old.limits {
            self.limits.store(Arc::new(limits_of(&new)));
        }
        self.max_clients
            .store(new.listen.max_clients, Ordering::Relaxed);
        // `merge` left what needs a restart as it was started: the stored configuration
        // says what runs, not what the file says.
        self.config.store(Arc::new(new));
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        if report.restart_required.is_empty() {
            tracing::info!(applied = ?report.applied, "configuration reloaded");
        } else {
            tracing::warn!(applied = ?report.applied, restart_required = ?report.restart_required, "configuration reloaded; some changes need a restart");
        }
        Ok(report)
    }
}

/// The decoder limits of a configuration.
pub fn limits_of(config: &Config) -> Limits {
    Limits {
        max_bulk_len: config.limits.max_bulk_len,
        max_multibulk_len: config.limits.max_multibulk_len,
        max_inline_len: config.limits.max_inline_len,
    }
}

/// When a setting takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applies {
    /// On reload.
    Live,
    /// At the next start: the change is reported, and the running value kept.
    Restart,
}

/// Sorts the differences between `old` and `new` into applied and restart-required,
/// and puts the running value back into `new` wherever only a restart applies, so that
/// `new` becomes what runs. Every field of every section is named here: the
/// destructuring is exhaustive, so a setting added to the configuration types does not
/// compile until it says when it applies (nothing is left to a hand-kept list).
fn merge(old: &Config, new: &mut Config, log_live: bool, report: &mut ReloadReport) {
    use Applies::{Live, Restart};
    let mut note = |name: &str, applies: Applies, changed: bool| {
        if changed {
            match applies {
                Live => report.applied.push(name.to_owned()),
                Restart => report.restart_required.push(name.to_owned()),
            }
        }
    };
    // Compares one setting, notes it, and keeps the running value if it needs a restart.
    macro_rules! setting {
        ($name:literal, $applies:expr, $old:expr, $new:expr) => {{
            let changed = $old != *$new;
            note($name, $applies, changed);
            if changed && $applies == Restart {
                *$new = $old.clone();
            }
        }};
    }
    let Config {
        listen,
        upstream,
        limits,
        consistency,
        keyspace,
        commands,
        auth,
        admin,
        log,
    } = new;
    let crate::config::ListenConfig {
        address,
        max_clients,
        idle_timeout,
        shutdown_grace,
        drain_delay,
        tls,
        unix_socket,
        unix_socket_perm,
    } = listen;
    setting!("listen.address", Restart, old.listen.address, address);
    setting!(
        "listen.max_clients",
        Live,
        old.listen.max_clients,
        max_clients
    );
    setting!(
        "listen.idle_timeout",
        Restart,
        old.listen.idle_timeout,
        idle_timeout
    );
    setting!(
        "listen.shutdown_grace",
        Restart,
        old.listen.shutdown_grace,
        shutdown_grace
    );
    setting!(
        "listen.drain_delay",
        Live,
        old.listen.drain_delay,
        drain_delay
    );
    setting!("listen.tls", Restart, old.listen.tls, tls);
    setting!(
        "listen.unix_socket",
        Restart,
        old.listen.unix_socket,
        unix_socket
    );
    setting!(
        "listen.unix_socket_perm",
        Restart,
        old.listen.unix_socket_perm,
        unix_socket_perm
    );
    // The upstream is one setting: connections, logins and the command table depend on
    // every part of it.
    setting!("upstream", Restart, old.upstream, upstream);
    setting!("limits", Live, old.limits, limits);
    setting!("consistency", Live, old.consistency, consistency);
    setting!("keyspace", Live, old.keyspace, keyspace);
    let crate::config::CommandsConfig {
        deny,
        rename,
        scripts,
    } = commands;
    setting!("commands.deny", Live, old.commands.deny, deny);
    setting!("commands.rename", Live, old.commands.rename, rename);
    setting!("commands.scripts", Live, old.commands.scripts, scripts);
    setting!("auth", Live, old.auth, auth);
    let crate::config::AdminConfig { address } = admin;
    setting!("admin.address", Restart, old.admin.address, address);
    let crate::config::LogConfig {
        level,
        format,
        slow_command,
    } = log;
    let level_applies = if log_live { Live } else { Restart };
    setting!("log.level", level_applies, old.log.level, level);
    setting!("log.format", Restart, old.log.format, format);
    setting!("log.slow_command", Live, old.log.slow_command, slow_command);
}
