//! Django's own Redis cache tests (`cache.tests.RedisCacheTests`, from the Django 5.2
//! source distribution on PyPI), run against a Redis directly and through cachet with
//! the shipped configuration (`config/cachet.toml`): the same tests must pass, and the
//! same tests fail, either way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::cachet::Cachet;
use support::redis::RedisServer;

const DJANGO: &str = "5.2";

fn pip(args: &[&str]) {
    let status = Command::new("python3")
        .args(["-m", "pip", "--disable-pip-version-check", "--quiet"])
        .args(args)
        .status()
        .expect("python3 with pip is needed for this test");
    assert!(status.success(), "pip {args:?} failed");
}

/// Django's source tree (its `tests/` included) and a directory with its
/// dependencies and redis-py, fetched from PyPI once into the target directory.
fn django() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("django-{DJANGO}"));
    let src = root.join(format!("django-{DJANGO}"));
    let deps = root.join("deps");
    if !src.join("tests/runtests.py").exists() {
        std::fs::create_dir_all(&root).unwrap();
        pip(&[
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            root.to_str().unwrap(),
            &format!("django=={DJANGO}"),
        ]);
        let archive = std::fs::read_dir(&root)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
            .expect("the Django source distribution");
        let status = Command::new("tar")
            .arg("xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&root)
            .status()
            .unwrap();
        assert!(status.success());
        // The archive's directory is named as PyPI names the distribution.
        for entry in std::fs::read_dir(&root).unwrap().filter_map(Result::ok) {
            let p = entry.path();
            if p.is_dir() && p.join("tests/runtests.py").exists() && p != src {
                std::fs::rename(&p, &src).unwrap();
            }
        }
    }
    if !deps.join("redis").exists() {
        pip(&[
            "install",
            "--target",
            deps.to_str().unwrap(),
            "redis>=5",
            "asgiref>=3.8.1",
            "sqlparse>=0.3.1",
        ]);
    }
    (src, deps)
}

/// Runs `RedisCacheTests` against `port`; each test's outcome by name.
fn run(src: &Path, deps: &Path, port: u16) -> BTreeMap<String, String> {
    let settings = tempfile::tempdir().unwrap();
    std::fs::write(
        settings.path().join("cachet_settings.py"),
        format!(
            "from test_sqlite import *\n\
             CACHES = {{'default': {{'BACKEND': 'django.core.cache.backends.redis.RedisCache', \
             'LOCATION': 'redis://127.0.0.1:{port}'}}}}\n"
        ),
    )
    .unwrap();
    let path = std::env::join_paths([settings.path(), src, &src.join("tests"), deps]).unwrap();
    let out = Command::new("python3")
        .current_dir(src.join("tests"))
        .env("PYTHONPATH", path)
        .args([
            "runtests.py",
            "cache.tests.RedisCacheTests",
            "--settings=cachet_settings",
            "--parallel=1",
            "-v",
            "2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    // `test_simple (cache.tests.RedisCacheTests.test_simple) ... ok`
    let outcomes: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| {
            let (name, outcome) = l.split_once(") ... ")?;
            let name = name.split_whitespace().next()?;
            Some((name.to_owned(), outcome.trim().to_owned()))
        })
        .collect();
    assert!(outcomes.len() > 50, "the suite did not run:\n{text}");
    outcomes
}

#[test]
fn djangos_redis_cache_tests_pass_through_cachet_as_they_pass_directly() {
    let (src, deps) = django();
    let direct = RedisServer::start();
    let upstream = RedisServer::start();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cachet.toml");
    let mut config = cachet::Config::load(&path).unwrap();
    config.listen.address = "127.0.0.1:0".parse().unwrap();
    config.upstream.url = cachet::config::UpstreamUrl::parse(&upstream.url()).unwrap();
    config.admin.address = None;
    let cachet = Cachet::start_with(config);

    let directly = run(&src, &deps, direct.port());
    let through = run(&src, &deps, cachet.addr.port());
    let differ: Vec<_> = directly
        .iter()
        .filter(|(name, outcome)| through.get(*name) != Some(outcome))
        .map(|(name, outcome)| {
            format!(
                "{name}: {outcome} directly, {:?} through cachet",
                through.get(name)
            )
        })
        .collect();
    assert!(differ.is_empty(), "{differ:#?}");
    assert_eq!(directly.len(), through.len());
    let passed = through.values().filter(|o| *o == "ok").count();
    println!("{passed} of {} passed either way", through.len());
}
