//! cachet's own RESP commands, answered by the session before the command table is
//! consulted (`CACHET` is not a Redis command):
//!
//! - `CACHET INFO`: a bulk string of `key:value` lines (version, uptime, clients,
//!   upstream, keyspace rules, counters), in the manner of Redis's `INFO`.
//! - `CACHET KEYSPACE <key>`: the keyspace rule a key falls into: mode, rule index and
//!   pattern (`rule:none` for the implicit `strict` default).
//! - `CACHET RELOAD`: re-reads the configuration (`reload.rs`); `+OK …` naming what was
//!   applied and what needs a restart, or `-ERR` with the file's problems.
//! - `CACHET EXPLAIN <key>`: the key's rule and mode, its fill-protocol state upstream
//!   and what a `SET` of it would come to now (answered by the session: it asks Redis).
//! - `CACHET HELP`: these, in the manner of Redis's `… HELP`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use crate::context::Context;
use crate::engine::Engine;
use crate::metrics::Outcome;
use crate::resp::reply;

/// Whether `first` names cachet's own command.
pub fn is_cachet(first: &[u8]) -> bool {
    first.eq_ignore_ascii_case(b"cachet")
}

/// The reply to `CACHET …`.
pub fn answer(ctx: &Context, engine: &Engine, args: &[Bytes]) -> Bytes {
    let sub = args.get(1).map(|s| s.to_ascii_lowercase());
    match (sub.as_deref(), args.len()) {
        (Some(b"info"), 2) => bulk(&info(ctx, engine)),
        (Some(b"keyspace"), 3) => match args.get(2) {
            Some(key) => bulk(&keyspace(engine, key)),
            None => reply::wrong_arity("cachet|keyspace"),
        },
        (Some(b"reload"), 2) => match ctx.reload() {
            Ok(report) => {
                let mut out = BytesMut::new();
                // A status line cannot hold line breaks; the report has none.
                reply::push_simple(&mut out, &format!("OK {report}"));
                out.freeze()
            }
            Err(problems) => reply::error(&format!(
                "ERR configuration not reloaded: {}",
                problems.replace(['\r', '\n'], " | ")
            )),
        },
        (Some(b"help"), 2) => help(),
        (Some(b"info" | b"keyspace" | b"reload" | b"help" | b"explain"), _) => {
            let name = String::from_utf8_lossy(sub.as_deref().unwrap_or_default()).into_owned();
            reply::wrong_arity(&format!("cachet|{name}"))
        }
        (Some(_), _) => reply::error(&format!(
            "ERR unknown subcommand '{}'. Try CACHET HELP.",
            String::from_utf8_lossy(args.get(1).map_or(&b""[..], |a| &a[..]))
        )),
        (None, _) => reply::wrong_arity("cachet"),
    }
}

/// `CACHET HELP`: an array of status lines, as Redis's `… HELP` answers.
fn help() -> Bytes {
    const LINES: &[&str] = &[
        "CACHET <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "INFO",
        "    cachet's state: version, uptime, clients, upstream, keyspace rules, counters.",
        "KEYSPACE <key>",
        "    The keyspace rule <key> falls into, and its mode.",
        "EXPLAIN <key>",
        "    <key>'s rule and mode, its fill-protocol state in Redis, and what a SET of it",
        "    would come to now, with the reason.",
        "RELOAD",
        "    Re-read the configuration file; report what applied and what needs a restart.",
        "HELP",
        "    Print this help.",
    ];
    let mut out = BytesMut::new();
    reply::push_header(&mut out, b'*', LINES.len() as i64);
    for l in LINES {
        reply::push_simple(&mut out, l);
    }
    out.freeze()
}

/// What `CACHET EXPLAIN <key>` asks Redis: the key's existence, its state hash and the
/// clock; `None` when the key is not in a `cache` keyspace (nothing to ask).
pub fn explain_query(engine: &Engine, key: &Bytes) -> Option<Vec<Vec<Bytes>>> {
    let c = engine.cache_key_state(key)?;
    let mut hmget = vec![Bytes::from_static(b"HMGET"), c];
    hmget.extend(["m", "s", "t", "l", "w", "x"].map(|f| Bytes::from_static(f.as_bytes())));
    Some(vec![
        vec![Bytes::from_static(b"EXISTS"), key.clone()],
        hmget,
        vec![Bytes::from_static(b"TIME")],
    ])
}

/// `CACHET EXPLAIN <key>`'s text, from the replies to `explain_query` (none for a key
/// outside `cache` keyspaces).
pub fn explain(engine: &Engine, key: &[u8], replies: Option<&[Bytes]>) -> Bytes {
    let mut s = keyspace(engine, key);
    let Some([exists, fields, time]) = replies else {
        s.push_str("fills:not judged (only cache keyspaces judge fills)\r\n");
        return bulk(&s);
    };
    let state = crate::engine::explain::Snapshot::read(exists, fields, time);
    match state {
        Some(snap) => s.push_str(&engine.explain(key, &snap)),
        None => s.push_str("state:unreadable (Redis answered an error)\r\n"),
    }
    bulk(&s)
}

fn bulk(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 16);
    reply::push_bulk(&mut out, text.as_bytes());
    out.freeze()
}

fn keyspace(engine: &Engine, key: &[u8]) -> String {
    let m = engine.keyspaces().lookup(key);
    let mut s = String::new();
    let _ = write!(s, "mode:{}\r\n", m.mode);
    match m.rule {
        Some((index, rule)) => {
            let _ = write!(s, "rule:{index}\r\npattern:{}\r\n", rule.pattern);
        }
        None => s.push_str("rule:none\r\npattern:none\r\n"),
    }
    s
}

fn info(ctx: &Context, engine: &Engine) -> String {
    let config = ctx.config.load();
    let m = &ctx.metrics;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut s = String::new();
    // `# Section` headers, as in Redis's INFO, are written as their key alone.
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = if k.starts_with('#') {
            write!(s, "{k}\r\n")
        } else {
            write!(s, "{k}:{v}\r\n")
        };
    };
    line("# Server", &"");
    line("version", &env!("CARGO_PKG_VERSION"));
    line("uptime_in_seconds", &ctx.started.elapsed().as_secs());
    line("listen", &config.listen.address);
    line(
        "admin",
        &config
            .admin
            .address
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
    );
    line(
        "config_file",
        &ctx.source
            .get()
            .and_then(|s| s.path.as_ref())
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
    );
    line("config_reloads", &load(&m.reloads));
    line("config_reload_failures", &load(&m.reload_failures));
    line("# Clients", &"");
    line("connected_clients", &load(&m.clients_current));
    line("total_connections_received", &load(&m.clients_total));
    line("rejected_connections", &load(&m.clients_rejected));
    line("max_clients", &ctx.max_clients.load(Ordering::Relaxed));
    line("# Upstream", &"");
    line("upstream_address", &ctx.upstream.settings().address);
    line("upstream_db", &ctx.default_db);
    let up = crate::admin::ready(ctx);
    line("upstream_state", &if up { "up" } else { "down" });
    let (conns_up, conns) = ctx.upstream.connections_up();
    line("upstream_connections_up", &format!("{conns_up}/{conns}"));
    let _ = keyspaces_and_stats(&mut s, ctx, engine, &config);
    s
}

/// The `# Keyspaces` and `# Stats` sections of `CACHET INFO`.
fn keyspaces_and_stats(
    s: &mut String,
    ctx: &Context,
    engine: &Engine,
    config: &crate::config::Config,
) -> std::fmt::Result {
    let m = &ctx.metrics;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = if k.starts_with('#') {
            write!(s, "{k}\r\n")
        } else {
            write!(s, "{k}:{v}\r\n")
        };
    };
    line("# Keyspaces", &"");
    let rules: Vec<_> = engine.keyspaces().rules().collect();
    line("keyspaces", &rules.len());
    for (i, r) in rules.iter().enumerate() {
        line(
            &format!("keyspace{i}"),
            &format!("pattern={},mode={}", r.pattern, r.mode),
        );
    }
    let deny = &config.commands.deny;
    line("denied_commands", &deny.join(","));
    // How many, not which: a renamed command's new name is meant to stay unknown.
    line("renamed_commands", &config.commands.rename.len());
    let scripts = match config.commands.scripts {
        crate::config::ScriptPolicy::Allow => "allow",
        crate::config::ScriptPolicy::Refuse => "refuse",
    };
    line("scripts", &scripts);
    line(
        "client_auth",
        &match &config.auth {
            Some(auth) => format!("on,users={}", auth.users.len()),
            None => "off".to_owned(),
        },
    );
    line("# Stats", &"");
    let (mut ok, mut err) = (0u64, 0u64);
    for t in ctx.metrics.commands.all() {
        ok += t.get(Outcome::Ok);
        err += t.get(Outcome::Error);
    }
    line("commands_ok", &ok);
    line("commands_error", &err);
    line("client_received_bytes", &load(&m.bytes_in));
    line("client_sent_bytes", &load(&m.bytes_out));
    line("protocol_errors", &load(&m.protocol_errors));
    line("auth_failures", &load(&m.auth_failures));
    for (k, _, v) in engine.stats.each() {
        line(k, &v);
    }
    Ok(())
}
