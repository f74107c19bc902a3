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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/django_cache.py");
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
