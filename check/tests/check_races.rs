//! `cachet-check`'s logic in-process: the slow-fill race must show directly against
//! Redis (the checker has teeth) and never through cachet.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use cachet_check::db::Db;
use cachet_check::report::failures;
use cachet_check::{Options, Profile, Targets, Windows, run_suite};
use support::cachet::Cachet;
use support::redis::RedisServer;

/// cachet's default windows.
fn defaults() -> Windows {
    let c = cachet::config::ConsistencyConfig::default();
    Windows {
        hold_off: c.hold_off,
        lease: c.lease_ttl,
        fill: c.fill_window,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_fill_is_stale_directly_and_never_through_cachet() {
    let direct = RedisServer::start();
    let upstream = RedisServer::start();
    // Two sidecars in front of one Redis, workers spread over them, each sidecar's
    // workers sharing a connection pool.
    let (a, b) = (
        Cachet::start(&upstream.url()),
        Cachet::start(&upstream.url()),
    );
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::sqlite(&dir.path().join("items.sqlite")));
    let history = dir.path().join("history.jsonl");
    let targets = Targets {
        direct: direct.addr(),
        proxies: vec![a.addr, b.addr],
        direct_redis: None,
        redis: None,
        cachets: Vec::new(),
        faults: None,
        cluster: Vec::new(),
        sentinel: Vec::new(),
    };
    let opts = Options {
        profiles: vec![Profile::SlowFill],
        seconds: 1.5,
        seed: 7,
        windows: defaults(),
        pool: true,
        history: Some(history.clone()),
        progress: false,
    };
    let reports = run_suite(&opts, &targets, db).await;
    let p = &reports[0];
    let d = p.direct.as_ref().unwrap();
    let c = p.cachet.as_ref().unwrap();
    assert!(d.failed.is_none() && c.failed.is_none(), "{d:?}\n{c:?}");
    assert!(d.stale_reads > 0, "no stale read directly: {d:?}");
    assert!(d.stale_age_ms_max > 0.0);
    assert!(d.violations > 0);
    assert_eq!(
        c.stale_reads, 0,
        "stale reads through cachet: {:?}",
        c.examples
    );
    assert_eq!(c.violations, 0);
    // (Four keys, each written about once a second: through cachet most reads come
    // within hold_off of a write and wait for it to end.)
    assert!(
        c.reads > 50 && c.writes > 5,
        "the cachet run did work: {c:?}"
    );
    assert_eq!(c.audit_keys, 4);
    assert!(failures(&reports).is_empty(), "{:?}", failures(&reports));

    // The history has every operation of both runs, one JSON object per line.
    let text = std::fs::read_to_string(&history).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hits = |target: &str| {
        lines
            .iter()
            .filter(|l| l["target"] == target && l["op"] == "hit")
            .count() as u64
    };
    assert_eq!(hits("direct"), d.hits);
    assert_eq!(hits("cachet"), c.hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_without_teeth_fails_the_suite() {
    // Both "sides" are plain Redis: the cachet side shows stale reads, and the suite
    // must say so.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::sqlite(&dir.path().join("items.sqlite")));
    let targets = Targets {
        direct: redis.addr(),
        proxies: vec![redis.addr()],
        direct_redis: None,
        redis: None,
        cachets: Vec::new(),
        faults: None,
        cluster: Vec::new(),
        sentinel: Vec::new(),
    };
    let opts = Options {
        profiles: vec![Profile::WriteThrough, Profile::CachetRestart],
        seconds: 1.0,
        seed: 3,
        windows: Windows {
            hold_off: Duration::from_millis(100),
            ..defaults()
        },
        pool: false,
        history: None,
        progress: false,
    };
    let reports = run_suite(&opts, &targets, db).await;
    let f = failures(&reports);
    assert!(
        f.iter()
            .any(|m| m.contains("write-through") && m.contains("through cachet")),
        "{f:?}"
    );
    assert_eq!(reports[1].skipped.as_deref(), Some("needs --spawn"));
}
