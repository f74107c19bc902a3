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
//! | `[listen] max_clients` | read for every new client |
//! | `[log] level` | the `tracing_subscriber` reload handle |
//!
//! Everything else (listen and admin addresses, TLS settings and the contents of their
//! certificate files, the upstream, timeouts, the log format) is reported as needing a
//! restart and left as it runs.

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
        let new = match load(source) {
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
        diff(&old, &new, self.log_reloader.get().is_some(), &mut report);
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
        // What needs a restart keeps running as it was started: the stored
        // configuration says what runs, not what the file says.
        let mut running = new;
        running.listen.address = old.listen.address;
        running.listen.idle_timeout = old.listen.idle_timeout;
        running.listen.shutdown_grace = old.listen.shutdown_grace;
        running.listen.tls = old.listen.tls.clone();
        running.upstream = old.upstream.clone();
        running.admin = old.admin.clone();
        running.log.format = old.log.format;
        if self.log_reloader.get().is_none() {
            running.log.level = old.log.level.clone();
        }
        self.config.store(Arc::new(running));
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

/// Sorts the differences between `old` and `new` into applied and restart-required.
fn diff(old: &Config, new: &Config, log_live: bool, report: &mut ReloadReport) {
    let mut note = |changed: bool, name: &str, live: bool| {
        if changed {
            let list = if live {
                &mut report.applied
            } else {
                &mut report.restart_required
            };
            list.push(name.to_owned());
        }
    };
    note(new.keyspace != old.keyspace, "keyspace", true);
    note(new.consistency != old.consistency, "consistency", true);
    note(
        new.commands.deny != old.commands.deny,
        "commands.deny",
        true,
    );
    note(
        new.commands.rename != old.commands.rename,
        "commands.rename",
        true,
    );
    note(
        new.commands.scripts != old.commands.scripts,
        "commands.scripts",
        true,
    );
    note(new.auth != old.auth, "auth", true);
    note(new.limits != old.limits, "limits", true);
    note(
        new.listen.max_clients != old.listen.max_clients,
        "listen.max_clients",
        true,
    );
    note(new.log.level != old.log.level, "log.level", log_live);
    note(
        new.listen.address != old.listen.address,
        "listen.address",
        false,
    );
    note(
        new.listen.idle_timeout != old.listen.idle_timeout,
        "listen.idle_timeout",
        false,
    );
    note(
        new.listen.shutdown_grace != old.listen.shutdown_grace,
        "listen.shutdown_grace",
        false,
    );
    note(
        new.listen.drain_delay != old.listen.drain_delay,
        "listen.drain_delay",
        true,
    );
    note(new.listen.tls != old.listen.tls, "listen.tls", false);
    note(new.upstream != old.upstream, "upstream", false);
    note(new.admin != old.admin, "admin.address", false);
    note(new.log.format != old.log.format, "log.format", false);
}
