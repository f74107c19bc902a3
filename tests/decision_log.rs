//! What an operator reads in the log at `debug`: a line for every fill cachet refused
//! and every lock expiry it refused or capped, naming the key and why; and never a
//! secret (the upstream password, given in the URL).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::process::spawn_listening;
use support::raw::{Raw, words};
use support::redis::RedisServer;

const PASSWORD: &str = "never-in-the-log-4711";

#[test]
fn refused_fills_and_lock_expiries_are_logged_with_their_key_and_no_secret() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    std::fs::write(
        &config,
        "[admin]\naddress = \"off\"\n\n\
         [[keyspace]]\npattern = \"page:*\"\nmode = \"cache\"\n\n\
         [[keyspace]]\npattern = \"lock:*\"\nmode = \"lock\"\nmax_ttl = \"30s\"\n\n\
         [[keyspace]]\npattern = \"capped:*\"\nmode = \"lock\"\nmax_ttl = \"30s\"\nover_max_ttl = \"cap\"\n",
    )
    .unwrap();
    let log = dir.path().join("cachet.log");
    let upstream = format!("redis://:{PASSWORD}@{}/0", redis.addr());
    let (mut child, addr) = spawn_listening(
        |addr| {
            let out = std::fs::File::create(&log).unwrap();
            Command::new(env!("CARGO_BIN_EXE_cachet"))
                .args(["--config", &config.to_string_lossy()])
                .args(["--listen", &addr.to_string()])
                .args(["--log-level", "cachet=debug"])
                .env("CACHET_UPSTREAM", &upstream)
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn cachet")
        },
        |addr| {
            let mut c = Raw::connect(addr);
            c.call(&words(&format!("AUTH {PASSWORD}"))) == b"+OK\r\n"
                && c.call(&words("PING")) == b"+PONG\r\n"
        },
    );
    let mut c = Raw::connect(addr);
    assert_eq!(c.call(&words(&format!("AUTH {PASSWORD}"))), b"+OK\r\n");
    // A miss, an invalidation, then the miss's fill: refused.
    assert_eq!(c.call(&words("GET page:home")), b"$-1\r\n");
    assert_eq!(c.call(&words("DEL page:home")), b":0\r\n");
    assert_eq!(c.call(&words("SET page:home stale")), b"+OK\r\n");
    // A lock asked to outlive max_ttl: refused; where the keyspace caps, capped.
    assert!(
        c.call(&words("SET lock:job me EX 3600"))
            .starts_with(b"-ERR cachet: a lock key may not expire")
    );
    assert_eq!(c.call(&words("SET capped:job me EX 3600")), b"+OK\r\n");

    let wanted = [
        ("page:home", "an invalidation may have overtaken it"),
        (
            "lock:job",
            "refused: a lock key may not expire in 3600000 ms",
        ),
        ("capped:job", "lock expiry capped to max_ttl (30000 ms)"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let all = wanted.iter().all(|(key, what)| {
            text.lines()
                .any(|l| l.contains("DEBUG") && l.contains(what) && l.contains(key))
        });
        if all || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for (key, what) in wanted {
        assert!(
            text.lines()
                .any(|l| l.contains("DEBUG") && l.contains(what) && l.contains(key)),
            "no debug line for {key} ({what}):\n{text}"
        );
    }
    assert!(
        !text.contains(PASSWORD),
        "the password reached the log:\n{text}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
