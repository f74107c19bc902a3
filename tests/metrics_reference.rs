//! The metrics reference in docs/operations.md ("Metrics") is `/metrics`: every metric
//! cachet exposes is listed there with the help text it is exposed with, and nothing
//! else is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::cachet::{Cachet, config_for};
use support::http::get;
use support::redis::RedisServer;

#[test]
fn the_operations_guide_lists_exactly_the_exposed_metrics() {
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.admin.address = Some("127.0.0.1:0".parse().unwrap());
    let cachet = Cachet::start_with(config);
    let (status, body) = get(cachet.admin.unwrap(), "/metrics");
    assert_eq!(status, 200);
    let exposed: Vec<(String, String)> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .map(|l| {
            let (name, help) = l.split_once(' ').unwrap();
            (name.to_owned(), help.to_owned())
        })
        .collect();
    assert!(exposed.len() > 20, "{body}");
    // The process's own figures are read, not placeholders.
    for name in [
        "cachet_process_resident_memory_bytes",
        "cachet_process_open_fds",
    ] {
        assert!(support::http::sample(&body, name) > 0.0, "{name}: {body}");
    }
    assert!(
        body.contains(&format!(
            "cachet_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
            .unwrap();
    let listed: Vec<(String, String)> = reference
        .lines()
        .filter_map(|l| l.strip_prefix("| `cachet_"))
        .map(|l| {
            let (name, rest) = l.split_once("` | ").unwrap();
            let help = rest.trim_end().trim_end_matches('|').trim_end();
            (format!("cachet_{name}"), help.to_owned())
        })
        .collect();
    // Both ways, with the exact help text, so that the reference cannot drift.
    let want: Vec<String> = exposed
        .iter()
        .map(|(n, h)| format!("| `{n}` | {h} |"))
        .collect();
    let missing: Vec<&String> = want
        .iter()
        .filter(|row| !reference.lines().any(|l| l == row.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md rows missing or different; expected:\n{}",
        want.join("\n")
    );
    let unknown: Vec<&String> = listed
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !exposed.iter().any(|(e, _)| e == *n))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/operations.md lists metrics not exposed: {unknown:?}"
    );
}
