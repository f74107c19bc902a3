//! The admin side: `/metrics` after a scripted workload, `/healthz` and `/readyz`
//! across an upstream outage, `CACHET INFO`/`KEYSPACE`/`RELOAD`, live reload of the
//! configuration file (applied, refused, restart-required), and `[commands] deny`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use cachet::config::{Config, Overrides};
use cachet::reload::ConfigSource;
use support::cachet::{Cachet, config_for};
use support::http::{get, sample};
use support::raw::{Raw, cmd, words};
use support::redis::RedisServer;

fn with_admin(mut config: Config) -> Config {
    config.admin.address = Some("127.0.0.1:0".parse().unwrap());
    config
}

fn metrics(cachet: &Cachet) -> String {
    let (status, body) = get(cachet.admin.expect("admin enabled"), "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

fn commands(m: &str, command: &str, outcome: &str) -> f64 {
    sample(
        m,
        &format!("cachet_commands_total{{command=\"{command}\",outcome=\"{outcome}\"}}"),
    )
}

/// A RESP bulk string.
fn bulk(text: &str) -> Vec<u8> {
    format!("${}\r\n{text}\r\n", text.len()).into_bytes()
}

/// Polls `f` until it holds or 10 s pass.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_count_a_scripted_workload_exactly() {
    let redis = RedisServer::start();
    let cachet = Cachet::start_with(with_admin(config_for(&redis.url())));
    let mut c = Raw::connect(cachet.addr);
    let before = metrics(&cachet);
    for i in 0..10 {
        assert_eq!(c.call(&words(&format!("SET k{i} v{i}"))), b"+OK\r\n");
    }
    for i in 0..5 {
        assert_eq!(
            c.call(&words(&format!("GET k{i}"))),
            format!("$2\r\nv{i}\r\n").as_bytes()
        );
    }
    let m = metrics(&cachet);
    assert_eq!(commands(&m, "set", "ok"), 10.0, "{m}");
    assert_eq!(commands(&m, "get", "ok"), 5.0);
    let published = "cachet_invalidations_published_total";
    assert_eq!(sample(&m, published) - sample(&before, published), 10.0);

    // Errors: from the upstream, from an unknown command, and within a pipelined batch
    // of plain commands (one job upstream, replies split per command for counting).
    assert!(c.call(&words("INCR k0")).starts_with(b"-ERR"));
    assert!(c.call(&words("NOSUCHCOMMAND x")).starts_with(b"-ERR"));
    c.send(&[words("LLEN k1"), words("STRLEN k1"), words("LLEN k2")].concat());
    assert!(c.frame().starts_with(b"-WRONGTYPE"));
    assert_eq!(c.frame(), b":2\r\n");
    assert!(c.frame().starts_with(b"-WRONGTYPE"));

    let m = metrics(&cachet);
    assert_eq!(commands(&m, "set", "ok"), 10.0, "{m}");
    assert_eq!(commands(&m, "set", "error"), 0.0);
    assert_eq!(commands(&m, "get", "ok"), 5.0);
    assert_eq!(commands(&m, "incr", "error"), 1.0);
    assert_eq!(commands(&m, "unknown", "error"), 1.0);
    assert_eq!(commands(&m, "llen", "error"), 2.0);
    assert_eq!(commands(&m, "strlen", "ok"), 1.0);
    // The failed INCR is a write: its invalidation went out with it (harmless).
    assert_eq!(sample(&m, published) - sample(&before, published), 11.0);
    assert_eq!(sample(&m, "cachet_client_connections"), 1.0);
    assert_eq!(sample(&m, "cachet_client_connections_accepted_total"), 1.0);
    assert!(sample(&m, "cachet_client_received_bytes_total") > 200.0);
    assert!(sample(&m, "cachet_client_sent_bytes_total") > 100.0);
    // Handling time is sampled per read: 17 commands sent one by one, and the
    // 3-command pipeline once (more if the kernel split it).
    let handled = sample(&m, "cachet_command_handling_seconds_count");
    assert!((18.0..=20.0).contains(&handled), "{handled}\n{m}");
    // Every request that went over a shared connection had its round trip measured
    // (discovery and handshakes are not requests).
    let rtt = sample(&m, "cachet_upstream_round_trip_seconds_count");
    assert!((15.0..=25.0).contains(&rtt), "{rtt}\n{m}");
    assert_eq!(sample(&m, "cachet_key_lock_wait_seconds_count"), 0.0);
    assert_eq!(
        sample(&m, "cachet_command_handling_seconds_bucket{le=\"+Inf\"}"),
        handled
    );
    assert_eq!(sample(&m, "cachet_upstream_up"), 1.0);
    assert!(sample(&m, "cachet_upstream_connections_up") >= 1.0);
    assert!(m.contains("# TYPE cachet_leases_granted_total counter"));
    // Each way a coalesced wait ends is a counter of its own (no label mixes "started"
    // with outcomes).
    assert!(m.contains("cachet_coalesce_timed_out_total 0"), "{m}");
    assert!(m.contains("cachet_coalesce_waits_total 0"));

    // Pinned sessions: a transaction holds one while open.
    assert_eq!(c.call(&words("MULTI")), b"+OK\r\n");
    let m = metrics(&cachet);
    assert_eq!(
        sample(&m, "cachet_pinned_sessions{reason=\"transaction\"}"),
        1.0
    );
    assert_eq!(c.call(&words("DISCARD")), b"+OK\r\n");
    drop(c);
    eventually("the client to be gone", || {
        let m = metrics(&cachet);
        sample(&m, "cachet_client_connections") == 0.0
            && sample(&m, "cachet_pinned_sessions{reason=\"transaction\"}") == 0.0
    });
    let m = metrics(&cachet);
    assert_eq!(
        sample(&m, "cachet_pinnings_total{reason=\"transaction\"}"),
        1.0
    );
}

#[test]
fn a_protocol_error_is_counted() {
    let redis = RedisServer::start();
    let cachet = Cachet::start_with(with_admin(config_for(&redis.url())));
    let mut c = Raw::connect(cachet.addr);
    c.send(b"*1\r\n$x\r\n");
    assert!(c.frame().starts_with(b"-ERR Protocol error"));
    assert_eq!(
        sample(&metrics(&cachet), "cachet_protocol_errors_total"),
        1.0
    );
}

#[test]
fn readyz_follows_the_upstream_and_healthz_the_process() {
    let mut redis = RedisServer::start();
    let cachet = Cachet::start_with(with_admin(config_for(&redis.url())));
    let admin = cachet.admin.unwrap();
    eventually("ready", || get(admin, "/readyz").0 == 200);
    assert_eq!(get(admin, "/healthz").0, 200);
    redis.kill();
    eventually("not ready while the upstream is down", || {
        get(admin, "/readyz").0 == 503
    });
    assert_eq!(get(admin, "/healthz").0, 200);
    assert_eq!(sample(&metrics(&cachet), "cachet_upstream_up"), 0.0);
    redis.restart();
    eventually("ready again", || get(admin, "/readyz").0 == 200);
    assert_eq!(get(admin, "/nope").0, 404);
}

#[test]
fn admin_can_be_disabled() {
    let redis = RedisServer::start();
    let cachet = Cachet::start_with(config_for(&redis.url()));
    assert_eq!(cachet.admin, None);
}

#[test]
fn cachet_info_and_keyspace_and_unknown_subcommands() {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.keyspace = Config::parse(
        "[[keyspace]]\npattern = \"c:*\"\nmode = \"cache\"\n[[keyspace]]\npattern = \"p:*\"\nmode = \"passthrough\"\n",
        "test",
    )
    .unwrap()
    .keyspace;
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    // The shared connections come up in the background.
    let mut info = String::new();
    eventually("the upstream to be up", || {
        info = String::from_utf8(c.call(&words("cachet info"))).unwrap();
        info.contains("upstream_state:up")
    });
    assert!(info.starts_with('$'), "{info}");
    for line in [
        &format!("version:{}", env!("CARGO_PKG_VERSION")),
        "upstream_state:up",
        &format!("upstream_address:127.0.0.1:{}", redis.port()),
        "keyspaces:2",
        "keyspace0:pattern=c:*,mode=cache",
        "keyspace1:pattern=p:*,mode=passthrough",
        "connected_clients:1",
    ] {
        assert!(info.contains(&format!("{line}\r\n")), "{line} in {info}");
    }
    assert_eq!(
        c.call(&words("CACHET KEYSPACE c:1")),
        bulk("mode:cache\r\nrule:0\r\npattern:c:*\r\n")
    );
    assert_eq!(
        c.call(&words("CACHET KEYSPACE other")),
        bulk("mode:strict\r\nrule:none\r\npattern:none\r\n")
    );
    let unknown = c.call(&words("CACHET FROB"));
    assert!(
        unknown.starts_with(b"-ERR unknown subcommand 'FROB'"),
        "{}",
        String::from_utf8_lossy(&unknown)
    );
    assert!(
        c.call(&words("CACHET KEYSPACE"))
            .starts_with(b"-ERR wrong number")
    );
    // Without a configuration file there is nothing to reload.
    assert!(c.call(&words("CACHET RELOAD")).starts_with(b"-ERR"));
    // The connection still works.
    assert_eq!(c.call(&words("PING")), b"+PONG\r\n");
}

/// A configuration file for `redis`, with `keyspace_mode` for `k:*`.
fn config_text(redis: &RedisServer, keyspace_mode: &str, extra: &str) -> String {
    format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"{}\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[[keyspace]]\npattern = \"k:*\"\nmode = \"{keyspace_mode}\"\n\n[[keyspace]]\npattern = \"*\"\nmode = \"strict\"\n{extra}",
        redis.url()
    )
}

fn start_from_file(path: &Path) -> Cachet {
    let source = ConfigSource {
        path: Some(path.to_owned()),
        overrides: Overrides::default(),
    };
    let config = source.load().expect("the file loads");
    Cachet::start_from(config, Some(source))
}

fn published(cachet: &Cachet) -> f64 {
    sample(&metrics(cachet), "cachet_invalidations_published_total")
}

#[test]
fn reload_switches_a_keyspace_live_for_an_open_connection() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cachet.toml");
    std::fs::write(&path, config_text(&redis, "strict", "")).unwrap();
    let cachet = start_from_file(&path);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(
        c.call(&words("CACHET KEYSPACE k:1")),
        bulk("mode:strict\r\nrule:0\r\npattern:k:*\r\n")
    );
    let p0 = published(&cachet);
    assert_eq!(c.call(&words("SET k:1 a")), b"+OK\r\n");
    assert_eq!(published(&cachet), p0 + 1.0);

    // k:* becomes passthrough, KEYS is denied, and a setting that needs a restart
    // changes too.
    let text = config_text(&redis, "passthrough", "\n[commands]\ndeny = [\"KEYS\"]\n")
        .replace(
            "[admin]\n",
            "[limits]\nmax_inline_len = \"32KiB\"\n\n[admin]\n",
        )
        .replace(
            "address = \"127.0.0.1:0\"\n\n[upstream]",
            "address = \"127.0.0.1:1\"\n\n[upstream]",
        );
    std::fs::write(&path, text).unwrap();
    let r = String::from_utf8(c.call(&words("CACHET RELOAD"))).unwrap();
    assert!(
        r.starts_with("+OK applied: limits, keyspace, commands.deny"),
        "{r}"
    );
    assert!(r.contains("needs a restart: listen.address"), "{r}");

    // Same connection: the new keyspace, no invalidation any more, KEYS refused.
    assert_eq!(
        c.call(&words("CACHET KEYSPACE k:1")),
        bulk("mode:passthrough\r\nrule:0\r\npattern:k:*\r\n")
    );
    assert_eq!(c.call(&words("SET k:1 b")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET k:1")), b"$1\r\nb\r\n");
    assert_eq!(published(&cachet), p0 + 1.0);
    // Other keys still publish.
    assert_eq!(c.call(&words("SET other 1")), b"+OK\r\n");
    assert_eq!(published(&cachet), p0 + 2.0);
    assert_eq!(
        c.call(&words("KEYS *")),
        b"-ERR command 'KEYS' is denied by cachet configuration\r\n"
    );
    let info = String::from_utf8(c.call(&words("CACHET INFO"))).unwrap();
    assert!(info.contains("config_reloads:1\r\n"), "{info}");
    assert!(
        info.contains("keyspace0:pattern=k:*,mode=passthrough\r\n"),
        "{info}"
    );
    // The listen address that needs a restart still runs as it was.
    assert!(
        info.contains(&format!("listen:{}\r\n", "127.0.0.1:0")),
        "{info}"
    );
    assert_eq!(
        sample(&metrics(&cachet), "cachet_config_reloads_total"),
        1.0
    );
}

#[test]
fn a_broken_file_is_refused_and_changes_nothing() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cachet.toml");
    std::fs::write(&path, config_text(&redis, "strict", "")).unwrap();
    let cachet = start_from_file(&path);
    let mut c = Raw::connect(cachet.addr);
    std::fs::write(
        &path,
        config_text(&redis, "passthru", "\n[limits]\nmax_bulk_len = \"lots\"\n"),
    )
    .unwrap();
    let r = String::from_utf8(c.call(&words("CACHET RELOAD"))).unwrap();
    assert!(r.starts_with("-ERR configuration not reloaded: "), "{r}");
    assert!(r.contains("passthru"), "{r}");
    assert!(r.contains("max_bulk_len"), "{r}");
    assert!(r.contains("cachet.toml"), "{r}");
    assert_eq!(r.matches("\r\n").count(), 1, "one line: {r}");
    // Nothing changed: still strict, still publishing.
    assert_eq!(
        c.call(&words("CACHET KEYSPACE k:1")),
        bulk("mode:strict\r\nrule:0\r\npattern:k:*\r\n")
    );
    let p0 = published(&cachet);
    assert_eq!(c.call(&words("SET k:1 a")), b"+OK\r\n");
    assert_eq!(published(&cachet), p0 + 1.0);
    let m = metrics(&cachet);
    assert_eq!(sample(&m, "cachet_config_reload_failures_total"), 1.0);
    assert_eq!(sample(&m, "cachet_config_reloads_total"), 0.0);
    // A missing file is refused the same way.
    std::fs::remove_file(&path).unwrap();
    assert!(
        c.call(&words("CACHET RELOAD"))
            .starts_with(b"-ERR configuration not reloaded")
    );
    assert_eq!(c.call(&words("GET k:1")), b"$1\r\na\r\n");
}

#[test]
fn denied_commands_are_refused_also_inside_multi() {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.commands.deny = vec!["FLUSHALL".into(), "CONFIG|SET".into()];
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET a 1")), b"+OK\r\n");
    assert_eq!(
        c.call(&words("flushall")),
        b"-ERR command 'flushall' is denied by cachet configuration\r\n"
    );
    assert_eq!(
        c.call(&words("CONFIG SET maxmemory 1")),
        b"-ERR command 'CONFIG' is denied by cachet configuration\r\n"
    );
    // Another subcommand of the container is not denied.
    assert!(
        c.call(&words("CONFIG GET maxmemory"))
            .starts_with(b"*2\r\n")
    );
    // Inside a transaction the refusal aborts it, as a queueing error does in Redis.
    assert_eq!(c.call(&words("MULTI")), b"+OK\r\n");
    assert_eq!(c.call(&words("SET a 2")), b"+QUEUED\r\n");
    assert_eq!(
        c.call(&words("FLUSHALL")),
        b"-ERR command 'FLUSHALL' is denied by cachet configuration\r\n"
    );
    let exec = c.call(&words("EXEC"));
    assert!(
        exec.starts_with(b"-EXECABORT"),
        "{}",
        String::from_utf8_lossy(&exec)
    );
    assert_eq!(c.call(&words("GET a")), b"$1\r\n1\r\n");
    // The data is all still there.
    let mut direct = Raw::connect(redis.addr());
    assert_eq!(direct.call(&cmd(&[b"DBSIZE"])), b":1\r\n");
}

#[test]
fn a_lease_granted_before_a_reload_still_fills_after_it() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cachet.toml");
    std::fs::write(&path, config_text(&redis, "cache", "")).unwrap();
    let cachet = start_from_file(&path);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("GET k:1")), b"$-1\r\n");
    std::fs::write(
        &path,
        config_text(&redis, "cache", "\n[commands]\ndeny = [\"DEBUG\"]\n"),
    )
    .unwrap();
    assert!(
        c.call(&words("CACHET RELOAD"))
            .starts_with(b"+OK applied: commands.deny")
    );
    assert_eq!(c.call(&words("SET k:1 filled")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET k:1")), b"$6\r\nfilled\r\n");
    let m = metrics(&cachet);
    assert_eq!(sample(&m, "cachet_leases_granted_total"), 1.0);
    assert_eq!(sample(&m, "cachet_fills_stored_total"), 1.0);
    assert_eq!(sample(&m, "cachet_fills_rejected_total"), 0.0);
}

/// `CACHET EXPLAIN <key>` says why a key is (not) cached: its rule and mode, its state
/// in Redis, and what a `SET` of it would come to now. `CACHET HELP` lists the
/// subcommands as Redis's `… HELP` does.
#[test]
fn explain_says_what_a_set_would_come_to_and_why() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let mut c = Raw::connect(cachet.addr);
    let help = c.call(&words("CACHET HELP"));
    assert!(help.starts_with(b"*12\r\n+CACHET <subcommand>"), "{help:?}");
    let explain = |c: &mut Raw, key: &str| -> String {
        let r = c.call(&words(&format!("CACHET EXPLAIN {key}")));
        String::from_utf8(r).unwrap()
    };
    // Nobody missed it: a SET is a write.
    let text = explain(&mut c, ":1:abc");
    assert!(text.contains("mode:cache"), "{text}");
    assert!(text.contains("set_now:stored as a write"), "{text}");
    // A miss: a SET now is its fill.
    assert_eq!(c.call(&words("GET :1:abc")), b"$-1\r\n");
    let text = explain(&mut c, ":1:abc");
    assert!(text.contains("miss_horizon:in "), "{text}");
    assert!(text.contains("set_now:stored as a fill"), "{text}");
    // An invalidation since: refused, and how long for.
    assert_eq!(c.call(&words("DEL :1:abc")), b":0\r\n");
    let text = explain(&mut c, ":1:abc");
    assert!(text.contains("tombstone:in "), "{text}");
    assert!(text.contains("set_now:refused"), "{text}");
    assert!(
        text.contains("ms more no SET is trusted as a fill"),
        "{text}"
    );
    // A strict key is not judged.
    let text = explain(&mut c, "session:1");
    assert!(text.contains("mode:strict"), "{text}");
    assert!(text.contains("fills:not judged"), "{text}");
}

/// The upstream password may come from a file (and the URL from the environment); it is
/// used, and never shown: not by `/config`, `--print-config` or `CACHET INFO`.
#[test]
fn secrets_from_files_and_the_environment_are_used_and_never_shown() {
    let redis = RedisServer::start_with(&["--requirepass", "file-secret"]);
    let dir = std::env::temp_dir().join(format!("cachet-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("redis-password");
    std::fs::write(&file, "file-secret\n").unwrap();
    let mut config = with_admin(config_for(&redis.url()));
    config.upstream.password_file = Some(file.clone());
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("AUTH file-secret")), b"+OK\r\n");
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    // cachet's own work ran with the file's password (the command table was read).
    let info = String::from_utf8(c.call(&words("CACHET INFO"))).unwrap();
    assert!(!info.contains("file-secret"));
    let (status, body) = get(cachet.admin.unwrap(), "/config");
    assert_eq!(status, 200);
    assert!(body.contains("password_file"), "{body}");
    assert!(!body.contains("file-secret"), "{body}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cachet"))
        .arg("--print-config")
        .env("CACHET_UPSTREAM", "redis://:env-secret@127.0.0.1:6390/2")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("redis://:***@127.0.0.1:6390/2"), "{text}");
    assert!(!text.contains("env-secret"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each `cache` keyspace has its own hit, miss, stored-fill and refused-fill counts,
/// labelled with its pattern; the totals are their sums.
#[test]
fn reads_and_fills_are_counted_by_keyspace() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cachet.toml");
    let text = config_text(&redis, "cache", "\n[consistency]\ncoalesce_wait = \"3s\"\n").replace(
        "pattern = \"k:*\"",
        "pattern = \"a:*\"\nmode = \"cache\"\n\n[[keyspace]]\npattern = \"b:\\\"*\"",
    );
    std::fs::write(&path, text).unwrap();
    let cachet = start_from_file(&path);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("GET a:1")), b"$-1\r\n");
    assert_eq!(c.call(&words("SET a:1 v")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET a:1")), b"$1\r\nv\r\n");
    assert_eq!(c.call(&words("GET a:1")), b"$1\r\nv\r\n");
    // An MGET counts each key in its own keyspace: one hit, one miss.
    let b1 = "b:\"1";
    let mget = cmd(&[b"MGET", b1.as_bytes(), b"a:1"]);
    assert_eq!(c.call(&mget), b"*2\r\n$-1\r\n$1\r\nv\r\n");
    // An invalidation overtakes the miss: its fill is refused.
    assert_eq!(c.call(&cmd(&[b"DEL", b1.as_bytes()])), b":0\r\n");
    assert_eq!(c.call(&cmd(&[b"SET", b1.as_bytes(), b"old"])), b"+OK\r\n");
    // A strict key is not a keyspace's read.
    assert_eq!(c.call(&words("GET other")), b"$-1\r\n");
    // A reader that waits for another client's fill and gets it: a hit.
    assert_eq!(c.call(&words("GET a:2")), b"$-1\r\n");
    let mut waiter = Raw::connect(cachet.addr);
    waiter.send(&words("GET a:2"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.call(&words("SET a:2 w")), b"+OK\r\n");
    assert_eq!(waiter.frame(), b"$1\r\nw\r\n");
    let m = metrics(&cachet);
    let count = |family: &str, keyspace: &str, outcome: &str| {
        sample(
            &m,
            &format!(
                "cachet_keyspace_{family}_total{{keyspace=\"{keyspace}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(count("reads", "a:*", "hit"), 4.0, "{m}");
    assert_eq!(count("reads", "a:*", "miss"), 2.0);
    assert_eq!(count("fills", "a:*", "stored"), 2.0);
    assert_eq!(count("fills", "a:*", "refused"), 0.0);
    // The pattern's quote is escaped in the label, as the exposition format says.
    assert_eq!(count("reads", "b:\\\"*", "hit"), 0.0, "{m}");
    assert_eq!(count("reads", "b:\\\"*", "miss"), 1.0);
    assert_eq!(count("fills", "b:\\\"*", "stored"), 0.0);
    assert_eq!(count("fills", "b:\\\"*", "refused"), 1.0);
    assert!(!m.contains("keyspace=\"*\""), "{m}");
    assert_eq!(sample(&m, "cachet_coalesce_filled_total"), 1.0);
    assert_eq!(sample(&m, "cachet_cache_hits_total"), 4.0);
    assert_eq!(sample(&m, "cachet_cache_misses_total"), 3.0);
    assert_eq!(sample(&m, "cachet_fills_rejected_total"), 1.0);
}

/// `[auth]` digests may come from files (a mounted Secret); a reload reads them again,
/// so a rotated password applies to new logins without a restart.
#[test]
fn an_auth_digest_file_is_read_again_on_reload() {
    use sha2::Digest;
    let hex = |password: &str| -> String {
        sha2::Sha256::digest(password.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let digest = dir.path().join("digest");
    std::fs::write(&digest, format!("{}\n", hex("first"))).unwrap();
    let path = dir.path().join("cachet.toml");
    let extra = format!(
        "\n[auth]\npassword_sha256_file = \"{}\"\n",
        digest.display()
    );
    std::fs::write(&path, config_text(&redis, "cache", &extra)).unwrap();
    let cachet = start_from_file(&path);
    let mut c = Raw::connect(cachet.addr);
    assert!(c.call(&words("GET k")).starts_with(b"-NOAUTH"));
    assert_eq!(c.call(&words("AUTH first")), b"+OK\r\n");
    std::fs::write(&digest, hex("second")).unwrap();
    assert!(
        c.call(&words("CACHET RELOAD")).starts_with(b"+OK"),
        "the reload applies"
    );
    let mut d = Raw::connect(cachet.addr);
    assert!(d.call(&words("AUTH first")).starts_with(b"-WRONGPASS"));
    assert_eq!(d.call(&words("AUTH second")), b"+OK\r\n");
    // The digest is in no answer.
    let info = String::from_utf8(c.call(&words("CACHET INFO"))).unwrap();
    assert!(!info.contains(&hex("second")));
    let (_, body) = get(cachet.admin.unwrap(), "/config");
    assert!(body.contains("password_sha256_file"), "{body}");
    assert!(!body.contains(&hex("second")), "{body}");
}
