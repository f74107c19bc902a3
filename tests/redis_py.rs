//! redis-py 8, a real client that opens every connection with `HELLO 3` and
//! `CLIENT SETINFO`, running Django-cache-style traffic through cachet.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::cachet::Cachet;
use support::redis::RedisServer;

/// A directory holding redis-py 8, installed there from PyPI if it is not importable.
fn redis_py() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pydeps");
    let importable = |dir: &Path| {
        Command::new("python3")
            .env("PYTHONPATH", dir)
            .args([
                "-c",
                "import redis,sys; sys.exit(0 if int(redis.__version__.split('.')[0]) >= 8 else 1)",
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !importable(&dir) {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--target")
            .arg(&dir)
            .arg("redis>=8,<9")
            .status()
            .expect("python3 with pip is needed for this test");
        assert!(status.success(), "pip install redis>=8 failed");
        assert!(importable(&dir), "redis-py 8 not importable after install");
    }
    dir
}

fn run_script(port: u16, pydeps: &Path) -> String {
    run("django_cache.py", port, pydeps)
}

fn run(script: &str, port: u16, pydeps: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new("python3")
        .env("PYTHONPATH", pydeps)
        .arg(script)
        .args(["127.0.0.1", &port.to_string()])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "script failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn django_cache_traffic_with_redis_py_8() {
    let pydeps = redis_py();
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let through = run_script(cachet.addr.port(), &pydeps);
    // The same script straight at Redis must pass the same checks: the script
    // describes Redis, not cachet.
    let direct_redis = RedisServer::start();
    let direct = run_script(direct_redis.port(), &pydeps);
    assert!(through.starts_with("ok "), "{through}");
    assert_eq!(through, direct);
}

/// redis-py's `Lock` through cachet, on a `lock` keyspace (max_ttl 30 s, longer expiries
/// refused): a lock longer than max_ttl is refused and not held, one within it is held
/// for what it asked, `extend` past max_ttl is capped after its script, and every other
/// way to extend or remove the expiry is refused.
#[test]
fn redis_py_locks_keep_within_max_ttl() {
    let pydeps = redis_py();
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis.url());
    let out = run("locks.py", cachet.addr.port(), &pydeps);
    let refused = "refused: cachet: ";
    let expected = [
        format!(
            "timeout=120: {refused}a lock key may not expire in 120000 ms; this lock keyspace's max_ttl is 30000 ms (over_max_ttl = \"refuse\")"
        ),
        "held after refusal: 0".into(),
        "timeout=10: True".into(),
        "pttl within 10s: True".into(),
        "second holder: False".into(),
        "extend(100): True".into(),
        "pttl capped to max_ttl: True".into(),
        "extend(5, replace_ttl): True".into(),
        "pttl replaced: True".into(),
        "reacquire(): True".into(),
        "pttl reacquired: True".into(),
        format!(
            "EXPIRE 120: {refused}a lock key may not expire in 120000 ms; this lock keyspace's max_ttl is 30000 ms (over_max_ttl = \"refuse\")"
        ),
    ];
    let lines: Vec<&str> = out.lines().collect();
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(lines.get(i).copied(), Some(want.as_str()), "{out}");
    }
    for (i, name) in [
        "PEXPIREAT in an hour",
        "PERSIST",
        "GETEX EX 120",
        "GETEX PERSIST",
    ]
    .into_iter()
    .enumerate()
    {
        let line = lines.get(expected.len() + i).copied().unwrap_or_default();
        assert!(line.starts_with(&format!("{name}: {refused}")), "{out}");
    }
    let rest: Vec<&str> = lines[expected.len() + 4..].to_vec();
    assert_eq!(
        rest,
        [
            "SET KEEPTTL: True",
            "pttl unchanged: True",
            "EXPIRE 20: True",
            "release(): None",
            "held after release: 0",
            "timeout=None: True",
            "pttl given: True",
        ],
        "{out}"
    );
}
